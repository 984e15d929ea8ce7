"""Start-up cost of dbops, as ratios against `python -c 'import textual.app'` measured in the same run.

    make bench            (installs the seven client libraries first: they must not be imported
                           before the first frame, so having them installed must cost nothing)

Prints medians over N runs of:
  baseline     python -c 'import textual.app'
  --help       dbops --help
  first frame  dbops on a config with one cluster per configured engine, headless, exiting right
               after the first screen has painted (DBOPS_EXIT_AFTER_FIRST_FRAME=1)
Goals from the issue: first frame <= 1.0 s median, --help <= 0.3 s. Never a pass/fail.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = int(os.environ.get("BENCH_RUNS", "9"))
CLIENTS = ("asyncpg", "redis", "neo4j", "qdrant_client", "aiokafka", "boto3", "kubernetes")

CONFIG = """
[environments.bench]
mode = "read-only"
[environments.bench.clusters.pg]
engine = "postgres"
password = { env = "BENCH_NO_SUCH_VAR" }
members = [{ name = "a", host = "127.0.0.1", port = 1, role = "primary" }]
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_of(cmd: list[str], env: dict[str, str]) -> float:
    timed(cmd, env)  # warm the page cache and .pyc files
    return statistics.median(timed(cmd, env) for _ in range(RUNS))


def main() -> None:
    py = sys.executable
    bindir = Path(py).parent
    installed = []
    for name in CLIENTS:
        r = subprocess.run([py, "-c", f"import importlib.util,sys; sys.exit(importlib.util.find_spec({name!r}) is None)"])
        installed.append(f"{name}:{'yes' if r.returncode == 0 else 'NO'}")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.toml"
        cfg.write_text(CONFIG)
        env = {**os.environ, "DBOPS_STATE_DIR": tmp, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
        baseline = median_of([py, "-c", "import textual.app"], env)
        help_t = median_of([str(bindir / "dbops"), "--help"], env)
        frame_env = {**env, "DBOPS_EXIT_AFTER_FIRST_FRAME": "1"}
        frame_t = median_of([str(bindir / "dbops"), "--config", str(cfg)], frame_env)
    print(f"client libraries installed: {' '.join(installed)}")
    print(f"median of {RUNS} runs")
    print(f"  baseline  python -c 'import textual.app'  {baseline * 1000:7.0f} ms   1.00x")
    print(f"  dbops --help                              {help_t * 1000:7.0f} ms   {help_t / baseline:.2f}x   (goal <= 300 ms)")
    print(f"  dbops first frame (headless)              {frame_t * 1000:7.0f} ms   {frame_t / baseline:.2f}x   (goal <= 1000 ms)")


if __name__ == "__main__":
    main()
