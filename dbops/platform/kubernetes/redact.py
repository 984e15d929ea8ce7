"""A Job as the plan and the audit log show it: secrets in its containers' environment, command
and args replaced by ***. Which names are secrets' is dbops.secrets.SECRET_NAME, the one list
every redaction uses."""

from __future__ import annotations

import json
import re
from typing import Any

from dbops.secrets import REDACTED, SECRET_NAME, scrub_text

# In a command line: NAME=value (PGPASSWORD=x pg_dump ..., --password=x) and a flag followed by
# its value (--token x); redacted when NAME or the flag says it is a secret.
_ASSIGNMENT = re.compile(r"(?<![\w.-])([\w.-]+)=(\"[^\"]*\"?|'[^']*'?|[^\s;&|]+)")
_FLAG_VALUE = re.compile(r"(?<![\w.-])(--?[\w.-]+)(\s+)([^\s;&|-]\S*)")
_FLAG = re.compile(r"--?[\w.-]+")


def _redact_line(text: str) -> str:
    def hide(m: re.Match[str]) -> str:
        return m.group(0) if not SECRET_NAME.search(m.group(1)) else m.group(1) + ("=" if m.re is _ASSIGNMENT else m.group(2)) + REDACTED

    return _FLAG_VALUE.sub(hide, _ASSIGNMENT.sub(hide, scrub_text(text)))


def _redact_words(words: list[Any]) -> list[Any]:
    """A container's command or args: secrets inside each word, and the word after a flag that
    names a secret (["--token", "x"])."""
    out: list[Any] = []
    for word in words:
        if out and isinstance(out[-1], str) and _FLAG.fullmatch(out[-1]) and SECRET_NAME.search(out[-1]):
            out.append(REDACTED)
        else:
            out.append(_redact_line(word) if isinstance(word, str) else word)
    return out


def redacted_job(job: dict[str, Any]) -> dict[str, Any]:
    """`job` as the plan and the audit log show it: the literal value of every container
    environment variable whose name says it is a secret replaced by ***, and in its command and
    args what looks like a secret (PGPASSWORD=..., --password=..., --token ..., a password in a
    URL). (A valueFrom a Secret is only a reference and is shown as it is.)"""
    shown = json.loads(json.dumps(job))
    pod = ((shown.get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in (pod.get("containers") or []) + (pod.get("initContainers") or []):
        for env in container.get("env") or []:
            if "value" in env and SECRET_NAME.search(str(env.get("name", ""))):
                env["value"] = REDACTED
        for key in ("command", "args"):
            if isinstance(container.get(key), list):
                container[key] = _redact_words(container[key])
    return shown
