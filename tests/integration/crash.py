"""kill -9 of a running `dbops runbook run` at a step boundary, then `dbops runbook resume`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def steps_done(journal: Path) -> list[str]:
    done = []
    for line in journal.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # the line being written when the process was killed
        if entry.get("event") == "step-done":
            done.append(entry["step"])
    return done


def run_killed_after(config: Path, state_dir: Path, args: list[str], step: str,
                     until: Callable[[], bool] | None = None) -> tuple[Path, str]:
    """Start `dbops --config CONFIG runbook run ARGS`, SIGKILL it as soon as its journal records
    `step` as done and `until()` holds (or when it exits by itself); returns its journal and output."""
    env = {**os.environ, "DBOPS_STATE_DIR": str(state_dir)}
    runs = state_dir / "runs"
    before = set(runs.glob("*.jsonl")) if runs.exists() else set()
    proc = subprocess.Popen([sys.executable, "-m", "dbops.cli", "--config", str(config), "runbook", "run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, stdin=subprocess.DEVNULL)
    journal = None
    for _ in range(6000):
        new = set(runs.glob("*.jsonl")) - before if runs.exists() else set()
        if new:
            journal = next(iter(new))
            if step in steps_done(journal) and (until is None or until()):
                break
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    out = proc.communicate()[0]
    assert journal is not None, out
    return journal, out


def resume(config: Path, state_dir: Path, run_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`dbops runbook resume RUN_ID`; exit 1 is accepted only when the run had finished already."""
    r = subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(config), "runbook", "resume", run_id, *extra],
                       capture_output=True, text=True, env={**os.environ, "DBOPS_STATE_DIR": str(state_dir)},
                       timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 or (r.returncode == 1 and "already finished" in r.stdout + r.stderr), r.stdout + r.stderr
    return r
