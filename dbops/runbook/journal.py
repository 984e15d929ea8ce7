"""A run's journal: one JSON line per transition, fsynced, so `resume` can continue after a crash.

<state dir>/runs/<run_id>.jsonl holds, in order: a "start" line (runbook, cluster, params), then
per step "started" and "done" (with ctx.state as it stood after the step) or "failed", and an
end line ("finished", "failed", "aborted"). A step with "started" but no "done" was interrupted:
it is verified before anything else happens, and re-run only if its verification fails.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class JournalError(Exception):
    pass


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def runs_dir(state: Path) -> Path:
    return state / "runs"


@dataclass
class RunRecord:
    """What a journal says about a run, read back from disk."""

    run_id: str
    runbook: str
    environment: str
    cluster: str
    params: dict[str, Any]
    done: list[str] = field(default_factory=list)  # step ids completed, in order
    interrupted: str | None = None  # a step that started and never finished
    state: dict[str, Any] = field(default_factory=dict)
    end: str | None = None  # finished / failed / aborted; None while resumable
    overrides: dict[str, str] = field(default_factory=dict)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, state: Path, run_id: str) -> Journal:
        d = runs_dir(state)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = d / f"{run_id}.jsonl"
        if path.exists():
            raise JournalError(f"run {run_id} already has a journal at {path}")
        return cls(path)

    @classmethod
    def open(cls, state: Path, run_id: str) -> Journal:
        path = runs_dir(state) / f"{run_id}.jsonl"
        if not path.exists():
            known = sorted(p.stem for p in runs_dir(state).glob("*.jsonl"))[-5:] if runs_dir(state).exists() else []
            hint = f"; recent runs: {', '.join(known)}" if known else ""
            raise JournalError(f"no journal for run {run_id} in {runs_dir(state)}{hint}")
        return cls(path)

    def write(self, **entry: Any) -> None:
        entry = {"ts": time.time(), **entry}
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> RunRecord:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise JournalError(f"cannot read {self.path}: {exc}") from None
        entries = []
        for i, line in enumerate(lines, start=1):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines):
                    break  # a line cut short by the crash itself: the transition never happened
                raise JournalError(f"{self.path}:{i}: not a journal entry") from None
        if not entries or entries[0].get("event") != "start":
            raise JournalError(f"{self.path} does not begin with a start entry")
        s = entries[0]
        # What the pre-checks found (the primary, its timeline) is in the start entry, so a run
        # that dies during its first step resumes with it.
        rec = RunRecord(s["run_id"], s["runbook"], s["environment"], s["cluster"], s["params"],
                        overrides=s.get("overrides", {}), state=s.get("state", {}))
        for e in entries[1:]:
            ev = e.get("event")
            if ev == "step-started":
                rec.interrupted = e["step"]
            elif ev == "step-done":
                rec.done.append(e["step"])
                rec.state = e.get("state", rec.state)
                rec.interrupted = None
            elif ev in ("finished", "failed", "aborted"):
                rec.end = ev
            elif ev == "resumed":
                rec.end = None
        return rec
