"""Running a drill as a user does (`dbops drill run`, a subprocess) on a test module's sandbox,
and reading what its report says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_drill(config: Path, state_dir: Path, scenario: str, cluster: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """The drill's process (answers given: --yes --confirm CLUSTER) and its report.json."""
    r = subprocess.run(
        [sys.executable, "-m", "dbops.cli", "--config", str(config), "drill", "run", scenario, "--cluster", cluster,
         "--yes", "--confirm", cluster],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        env={**os.environ, "DBOPS_STATE_DIR": str(state_dir)})
    ids = [line.split()[-1] for line in r.stdout.splitlines() if line.strip().startswith("drill id:")]
    assert ids, r.stdout + r.stderr
    return r, json.loads((state_dir / "drills" / ids[-1] / "report.json").read_text())


def assert_met(r: subprocess.CompletedProcess[str], report: dict[str, Any]) -> None:
    """Targets met, every phase done, nothing acknowledged lost, the probe's data removed."""
    assert r.returncode == 0, r.stdout + r.stderr
    assert report["drill"]["outcome"] == "met"
    assert [p["outcome"] for p in report["phases"]] == ["done"] * 8, report["phases"]
    m = report["measured"]
    assert m["rpo_lost"] == 0 and m["acked"] > 0 and m["rto_seconds"] is not None
    restore = next(p for p in report["phases"] if p["name"] == "restore")
    assert "probe data removed" in restore["detail"]
