"""Credential references: where a secret lives, never the secret itself.

A config names a secret as `{ env = "VAR" }`, `{ file = "/path" }`, or (sandbox environments
only) `{ value = "literal" }`. The value is read when a connection is made, wrapped in `Secret`
so that str(), repr(), f-strings and logging print `***` instead of the value.

Secrets kept in a service, `{ aws_secret = ... }`, `{ k8s_secret = ... }` and `{ rds_iam = true }`,
are read by dbops.platform.credentials (it needs boto3, the kubernetes client and the cluster
the reference belongs to) and cached in memory there. What every kind shares is here:
`with_reread`, which re-reads a cached credential once when a server refuses it (a rotation)
and retries once; any engine's connect can use it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol, TypeVar

log = logging.getLogger(__name__)
_T = TypeVar("_T")

REDACTED = "***"


class SecretError(Exception):
    """A reference that cannot be resolved. The message names the reference, never a value."""


class CredentialRejected(SecretError):
    """A server refused a credential read from a service, and re-reading it did not help (the
    value was unchanged, or the fresh one was refused too). `cause` is the server's refusal."""

    def __init__(self, message: str, cause: BaseException) -> None:
        super().__init__(message)
        self.cause = cause


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


def resolve(ref: SecretRefLike | None) -> Secret | None:
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
    remote = next((k for k in REMOTE_KINDS if getattr(ref, k, None) is not None), None)
    if remote is not None:
        # dbops.platform.credentials reads these, knowing the cluster and member they are for.
        raise SecretError(f"{remote} reference: this connection reads only env, file or value references "
                          "(aws_secret, k8s_secret and rds_iam are read for PostgreSQL clusters' connections)")
    raise SecretError("credential reference names neither env, file nor value")


# Reference kinds read from a service (dbops.platform.credentials), not from this host.
REMOTE_KINDS = ("aws_secret", "k8s_secret", "rds_iam")


class CredentialSource(Protocol):
    """Where one connection's credential comes from (dbops.platform.credentials.Credential)."""

    def describe(self) -> str:
        """The reference as a message names it: never a value."""
        ...

    @property
    def rereadable(self) -> bool:
        """Whether reading it again may give another value (a cached value from a service)."""
        ...

    async def get(self) -> Secret | None:
        """The credential: cached, or read (raises SecretError naming the reference)."""
        ...

    def invalidate(self, rejected: Secret | None) -> None:
        """Drop the cached value if it is still `rejected`: the next get() reads it again."""
        ...


async def with_reread(source: CredentialSource, attempt: Callable[[Secret | None], Awaitable[_T]],
                      refused: Callable[[BaseException], bool]) -> _T:
    """`attempt(credential)` (a connect), re-reading the credential once when the server refuses it.

    A credential kept in a service is cached; after a rotation the cached value is stale and the
    server refuses it. On a refusal (`refused(exc)`: the driver's authentication error) the
    cached value is dropped and read again; if it changed the attempt is made once more. A
    refusal that re-reading cannot fix (the value is unchanged, or the new one is refused as
    well) raises CredentialRejected, naming the reference, with the server's error as `cause`.
    Anything else the attempt raises goes up as it is."""
    secret = await source.get()
    try:
        return await attempt(secret)
    except Exception as exc:
        if not (source.rereadable and refused(exc)):
            raise
        first = exc
    source.invalidate(secret)
    fresh = await source.get()
    if _same(fresh, secret):
        raise CredentialRejected(f"{source.describe()} was refused; read again, it is unchanged", first) from first
    log.info("%s was refused; read it again (it changed: rotated) and retrying once", source.describe())
    try:
        return await attempt(fresh)
    except Exception as exc:
        if refused(exc):
            raise CredentialRejected(f"{source.describe()} was refused, and again after reading it anew", exc) from exc
        raise


def _same(a: Secret | None, b: Secret | None) -> bool:
    return (a.reveal() if a is not None else None) == (b.reveal() if b is not None else None)


def redact(text: str, *secrets: Secret | None) -> str:
    """Remove every given secret's value from text (error messages from client libraries)."""
    for s in secrets:
        if s is not None and s.reveal():
            text = text.replace(s.reveal(), "***")
    return text


# The one list of words that say a name holds a credential, as regex fragments matched
# case-insensitively anywhere in the name. Every redaction that judges a name uses it, each
# word where its scope says:
#   TEXT  also inside free text (messages, query texts, a command line): NAME=value and
#         NAME: value are scrubbed (scrub_text);
#   NAME  in a name that stands alone: a container's environment variable or a flag
#         (SECRET_NAME: dbops.platform.kubernetes), and a params key of the audit log. Too
#         common in prose to act on inside free text ("pass: 2 of 3", "credentials: none");
#   KEY   only in a params key of the audit log (is_secret_key): keys are ours, and a value
#         under any *key, a DSN or a cookie is better hidden; in a Job's environment they name
#         paths and prefixes (S3_KEY_PREFIX) the plan must show.
TEXT, NAME, KEY = "text", "name", "key"
SECRET_WORDS: tuple[tuple[str, str], ...] = (
    ("password", TEXT), ("passwd", TEXT), ("pwd", TEXT), ("secret", TEXT), ("token", TEXT), ("api[_-]?key", TEXT),
    ("pass", NAME), ("credential", NAME), ("private[_-]?key", NAME), ("access[_-]?key", NAME),
    ("key", KEY), ("private", KEY), ("cookie", KEY), ("authorization", KEY), ("dsn", KEY), ("conninfo", KEY),
)


def _words(*scopes: str) -> tuple[str, ...]:
    return tuple(w for w, scope in SECRET_WORDS if scope in scopes)


# A name (an environment variable, a flag) that holds a credential: any TEXT or NAME word in it.
SECRET_NAME = re.compile("(?i)" + "|".join(_words(TEXT, NAME)))
_SECRET_KEY = re.compile("(?i)" + "|".join(_words(TEXT, NAME, KEY)))


def is_secret_key(key: str) -> bool:
    """Whether a params key of the audit log names a credential: any word of the list in it."""
    return _SECRET_KEY.search(key) is not None


# Credentials embedded in strings: URL userinfo (postgresql://user:pw@host) and libpq
# key=value connection strings (password=pw). Both match greedily to the end of the
# whitespace-delimited token: a password may contain '@', '/' or '&', and cutting too much
# from a message is better than leaving half a password in it. A quoted value (libpq's
# password='a b\'c', or '' doubled inside SQL) is removed up to its closing quote.
# (The scheme starts where no scheme character precedes it: trying every position inside a
# long word would make the scan quadratic, and a query text is untrusted and can be as long as
# track_activity_query_size, up to 1 MB.)
_URL_PASSWORD = re.compile(r"(?<![A-Za-z0-9+.\-])([A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)(\S*)@")
# Where a _KV_PASSWORD match can start: each free-text word's leading letters ("api" of api[_-]?key).
_KV_WORDS = tuple(re.sub(r"[^a-z].*", "", w) for w in _words(TEXT))
# The word may close a longer name, as environment variables on a command line are written:
# PGPASSWORD, REDIS_PASSWORD, AWS_SECRET_ACCESS_KEY (after "pg" or "_", a "_key" or
# "_access_key" tail); not password_encryption, a setting.
_KV_PASSWORD = re.compile(
    rf"(?is)(?:\b|(?<=pg)|(?<=_))((?:{'|'.join(_words(TEXT))})(?:_access_key|_key)?)(\s*[=:]\s*)"
    r"('(?:[^'\\]|\\.|'')*(?:'|\\?\Z)|\"(?:[^\"\\]|\\.)*(?:\"|\\?\Z)|\S+)"
)

# SQL text (pg_stat_activity.query, pg_stat_statements keep utility statements verbatim):
# [ENCRYPTED] PASSWORD <literal> in CREATE/ALTER ROLE, and `password '<x>'` in the OPTIONS of
# CREATE/ALTER USER MAPPING and SERVER. The literal may follow the keyword with no space at all
# (PASSWORD'x' is valid SQL) or after comments. Literal forms:
#   '...' / E'...' / U&'...'  quotes doubled ('') or, in E'' strings (and in plain ones under
#                             standard_conforming_strings = off), escaped with a backslash:
#                             both escapes are honoured everywhere, so a literal is never cut
#                             short (over-redacting is the safe side);
#   $$...$$ / $tag$...$tag$   dollar quoting;
#   "..."                     an identifier, not a valid password, but the failed statement's
#                             text stays in pg_stat_activity all the same.
# An unterminated literal (query text truncated at track_activity_query_size) is removed up
# to the end of the text. `'password'` (the word inside a string) is not a keyword: a quote
# right before it leaves it alone, so `WHERE method = 'password'` stays readable.
_SQL_LITERAL = (
    r"(?:[Ee]|[Uu]&)?'(?:[^'\\]|\\.|'')*(?:'|\\?\Z)"
    r"|\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*|)\$(?:.*?\$(?P=tag)\$|.*\Z)"
    r'|"(?:[^"]|"")*(?:"|\Z)'
)
_SQL_PASSWORD = re.compile(
    rf"(?is)(?<!['\w])(password)((?:\s|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*)(?:{_SQL_LITERAL})"
)


def _sub_at_words(
    pattern: re.Pattern[str], words: tuple[str, ...], text: str, lowered: str, repl: Callable[[re.Match[str]], str]
) -> str:
    """pattern.sub(repl, text) for a pattern whose every match starts with one of `words`
    (case-insensitive): the pattern is tried only where a word occurs. Query texts are scrubbed
    on every poll, and Python's regex engine tries a case-insensitive pattern at every position
    of the text, at many times the cost of str.find over the lowered text."""
    if len(lowered) != len(text):  # a character whose lower case is longer: positions differ
        return pattern.sub(repl, text)
    starts = sorted({i for w in words for i in _find_all(lowered, w)})
    out: list[str] = []
    last = 0
    for i in starts:
        if i < last:
            continue
        m = pattern.match(text, i)  # lookbehinds and \b still see text[i - 1]
        if m is not None:
            out += (text[last:i], repl(m))
            last = m.end()
    return "".join(out) + text[last:] if out else text


def _find_all(haystack: str, needle: str) -> list[int]:
    found, i = [], haystack.find(needle)
    while i != -1:
        found.append(i)
        i = haystack.find(needle, i + 1)
    return found


def _sql_repl(m: re.Match[str]) -> str:
    return m.group(1) + (m.group(2) or " ") + "'" + REDACTED + "'"


def _kv_repl(m: re.Match[str]) -> str:
    return m.group(1) + m.group(2) + REDACTED


def scrub_text(text: str) -> str:
    """Remove credentials written inside a string: connection URLs, ``password=...``, and SQL
    ``[ENCRYPTED] PASSWORD '...'`` (query texts from pg_stat_activity / pg_stat_statements,
    audit messages). Every removed value becomes ``***`` (in SQL: the literal ``'***'``)."""
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", text)
    text = _sub_at_words(_SQL_PASSWORD, ("password",), text, text.lower(), _sql_repl)
    return _sub_at_words(_KV_PASSWORD, _KV_WORDS, text, text.lower(), _kv_repl)


class SecretRefLike(Protocol):  # pragma: no cover - typing aid only
    # Read-only properties, so that the config's SecretRef (a frozen dataclass) satisfies it.
    @property
    def env(self) -> str | None: ...
    @property
    def file(self) -> str | None: ...
    @property
    def value(self) -> str | None: ...
    # (The remote kinds, aws_secret, k8s_secret and rds_iam, are read with getattr: an object
    # without them names none.)
