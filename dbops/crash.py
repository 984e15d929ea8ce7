"""Unexpected errors go to a crash file in the state dir, never as a traceback on the terminal.

Textual's own crash screen prints local variables, which can hold a connection's parameters;
the console prints one line naming this file instead.
"""

from __future__ import annotations

import logging
import os
import time
import traceback

log = logging.getLogger("dbops")


def write_crash_report(exc: BaseException, where: str = "") -> str:
    """Append the traceback (no local variables) to <state dir>/crash.log; return its path, or
    why it could not be written."""
    from dbops.config import state_dir
    from dbops.secrets import scrub_text

    text = "".join(traceback.format_exception(exc))
    try:
        path = state_dir() / "crash.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {where}\n{scrub_text(text)}\n")
        return str(path)
    except OSError as err:
        log.error("could not write the crash report: %s", err)
        return f"(could not write crash log: {err})"
