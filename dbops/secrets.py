"""Credential references: where a secret lives, never the secret itself.

A config names a secret as `{ env = "VAR" }`, `{ file = "/path" }`, or (sandbox environments
only) `{ value = "literal" }`. The value is read when a connection is made, wrapped in `Secret`
so that str(), repr(), f-strings and logging print `***` instead of the value.
"""

from __future__ import annotations

import os
from pathlib import Path


class SecretError(Exception):
    """A reference that cannot be resolved. The message names the reference, never a value."""


class Secret:
    """A resolved secret. Use `.reveal()` at the single point where a client library needs it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self._value)


def resolve(ref: "SecretRefLike | None") -> Secret | None:
    """Read the secret a reference points at. Raises SecretError with a message safe to show."""
    if ref is None:
        return None
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if value is None:
            raise SecretError(f"environment variable {ref.env} is not set")
        return Secret(value)
    if ref.file is not None:
        path = Path(ref.file).expanduser()
        try:
            # A trailing newline is what `echo pw > file` leaves; it is never part of a password.
            return Secret(path.read_text(encoding="utf-8").rstrip("\r\n"))
        except FileNotFoundError:
            raise SecretError(f"secret file {path} does not exist") from None
        except PermissionError:
            raise SecretError(f"secret file {path} is not readable by this user") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretError(f"secret file {path} cannot be read: {type(exc).__name__}") from None
    if ref.value is not None:
        return Secret(ref.value)
    raise SecretError("credential reference names neither env, file nor value")


def redact(text: str, *secrets: Secret | None) -> str:
    """Remove every given secret's value from text (error messages from client libraries)."""
    for s in secrets:
        if s is not None and s.reveal():
            text = text.replace(s.reveal(), "***")
    return text


class SecretRefLike:  # pragma: no cover - typing aid only
    env: str | None
    file: str | None
    value: str | None
