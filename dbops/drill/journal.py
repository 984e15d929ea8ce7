"""A drill's journal: the run's state (phases, facts, markers, recovery runs, notes) rewritten
whole and fsynced after every change, so `dbops drill resume` continues after a crash and
`dbops drill report` renders a run from its files alone.

<state dir>/drills/<run id>/ holds journal.json, acks.jsonl (the probe's acknowledged writes),
attempts.jsonl (every probe attempt) and, at the end, report.json, report.md and report.html.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from dbops.drill.probe import Attempt


class DrillJournalError(Exception):
    pass


def drills_dir(state: Path) -> Path:
    return state / "drills"


def new_drill_id() -> str:
    return "drill-" + time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def write_atomic(path: Path, text: str) -> None:
    """`path` is either the old text or the new, never a torn mix (dbops killed mid-write)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class DrillJournal:
    def __init__(self, directory: Path, data: dict[str, Any]):
        self.dir = directory
        self.data = data
        self._attempts_fd: int | None = None

    @classmethod
    def create(cls, state: Path, run_id: str, header: dict[str, Any]) -> DrillJournal:
        directory = drills_dir(state) / run_id
        directory.mkdir(parents=True, exist_ok=False, mode=0o700)
        journal = cls(directory, {"run_id": run_id, **header, "phases": {}, "facts": {}, "marks": {},
                                  "recovery": [], "notes": {}, "verification": [], "end": None})
        journal.save()
        return journal

    @classmethod
    def open(cls, state: Path, run_id: str) -> DrillJournal:
        directory = drills_dir(state) / run_id
        path = directory / "journal.json"
        if not path.exists():
            known = sorted(p.name for p in drills_dir(state).glob("drill-*")) if drills_dir(state).is_dir() else []
            raise DrillJournalError(f"no drill {run_id!r} in {drills_dir(state)}" + (f"; recent: {', '.join(known[-5:])}" if known else ""))
        try:
            return cls(directory, json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise DrillJournalError(f"{path}: cannot be read: {exc}") from None

    @property
    def path(self) -> Path:
        return self.dir / "journal.json"

    @property
    def acks_path(self) -> Path:
        return self.dir / "acks.jsonl"

    @property
    def attempts_path(self) -> Path:
        return self.dir / "attempts.jsonl"

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.data, indent=1, default=str))

    def phase(self, name: str, **fields: Any) -> None:
        self.data["phases"].setdefault(name, {}).update(fields)
        self.save()

    def record_attempt(self, a: Attempt) -> None:
        # Appended, not fsynced one by one: the acks log (fsynced) is the evidence; attempts
        # draw the timeline.
        if self._attempts_fd is None:
            self._attempts_fd = os.open(self.attempts_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        line = {"t": round(a.t, 3), "seq": a.seq, "ok": a.ok, **({"error": a.error} if a.error else {})}
        os.write(self._attempts_fd, (json.dumps(line) + "\n").encode())

    def close(self) -> None:
        if self._attempts_fd is not None:
            os.close(self._attempts_fd)
            self._attempts_fd = None

    def attempts(self) -> list[Attempt]:
        out = []
        if self.attempts_path.exists():
            for line in self.attempts_path.read_text().splitlines():
                try:
                    d = json.loads(line)
                except ValueError:
                    continue  # a torn last line: dbops was killed while appending it
                ok = bool(d["ok"])
                out.append(Attempt(float(d["t"]), int(d["seq"]), ok, ok, d.get("error")))
        return out


def list_runs(state: Path) -> list[dict[str, Any]]:
    """Every drill's journal, oldest first; unreadable ones are skipped with their reason."""
    out: list[dict[str, Any]] = []
    root = drills_dir(state)
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        try:
            out.append(json.loads((d / "journal.json").read_text()))
        except (OSError, ValueError) as exc:
            out.append({"run_id": d.name, "unreadable": str(exc)})
    return out
