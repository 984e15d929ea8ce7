"""What watching a fleet costs dbops: CPU of the console's pollers and the age of what it shows,
for hundreds of targets built on the sandbox's real servers, refreshed every 2 s.

    make bench      (or: python benchmarks/fleet.py [--targets 300,1000] [--seconds 30])

A target is one poll unit: a PostgreSQL member (three per cluster) or a Redis deployment (a
standalone primary and its replica, one unit). The fleet is 60% PostgreSQL members and 40% Redis
deployments, spread over five environments; every target points at the private sandbox's real
servers (PostgreSQL 15 pg1..pg3 with max_connections raised for the benchmark, Redis r1/r2), so
each poll is a real connection's real refresh. The poller hub runs exactly as under the console.

Measured over --seconds after every target has answered once: the process's CPU time (every
thread: pollers, judging, history, this probe's own sampling) as a share of one core, and, every
0.5 s, the age of each target's newest snapshot; its p99 against the goal of twice the refresh
interval. The baseline is one core: the goal (issue 17) is at most 35% of one core for 1000
targets. Informational: never pass/fail.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

GOAL_CORE = 0.35
ENVIRONMENTS = ("prod-eu", "prod-us", "staging", "qa", "dev")


def fleet_config(sandbox_config: Path, targets: int, interval: float, pg_share: float = 0.6) -> str:
    """A config of `targets` poll units on the sandbox's servers (`pg_share` of them PostgreSQL
    members, three per cluster; the rest Redis deployments)."""
    import tomllib

    sandbox = tomllib.loads(sandbox_config.read_text())["environments"]["sandbox"]["clusters"]
    pg, sentinel = sandbox["sandbox-pg"], sandbox["sandbox-sentinel"]
    pg_clusters = int(targets * pg_share) // 3
    redis_deployments = targets - pg_clusters * 3
    out = [f"[defaults]\nrefresh_interval = {interval}\ntimeout = 3.0\n"]
    for env in ENVIRONMENTS:
        out.append(f'[environments.{env}]\nsandbox = true\n')
    for i in range(pg_clusters):
        env = ENVIRONMENTS[i % len(ENVIRONMENTS)]
        members = ", ".join(f'{{ name = "{m["name"]}", host = "{m["host"]}", port = {m["port"]}, role = "{m["role"]}" }}'
                            for m in pg["members"])
        out.append(f'[environments.{env}.clusters.orders-{i:04d}]\nengine = "postgres"\nuser = "{pg["user"]}"\n'
                   f'password = {{ value = "{pg["password"]["value"]}" }}\nmembers = [{members}]\n')
    for i in range(redis_deployments):
        env = ENVIRONMENTS[i % len(ENVIRONMENTS)]
        members = ", ".join(f'{{ name = "{m["name"]}", host = "{m["host"]}", port = {m["port"]} }}' for m in sentinel["members"])
        out.append(f'[environments.{env}.clusters.cache-{i:04d}]\nengine = "redis"\n'
                   f'password = {{ value = "{sentinel["password"]["value"]}" }}\nmembers = [{members}]\n')
    return "\n".join(out)


def raise_max_connections(state: Path, connections: int) -> None:
    """Room for a connection per target on each PostgreSQL member (the sandbox keeps 50)."""
    from dbops.sandbox.postgres import PostgresSandbox

    pg = PostgresSandbox(state / "sandbox")
    if all(int(pg.psql(n, "SHOW max_connections").strip()) >= connections for n in ("pg1", "pg2", "pg3")):
        return
    pg.psql("pg1", f"ALTER SYSTEM SET max_connections = {connections}")
    # A standby needs max_connections at least the primary's: write the replicas' own setting
    # (ALTER SYSTEM cannot run on a standby), restart them first, then the primary.
    for name in ("pg2", "pg3"):
        auto = pg.data_dir(name) / "postgresql.auto.conf"
        auto.write_text(auto.read_text() + f"\nmax_connections = {connections}\n")
        pg.stop_member(name, "fast")
        pg.start_member(name)
    pg.stop_member("pg1", "fast")
    pg.start_member("pg1")
    pg.wait_streaming()


def measure(config_text: str, seconds: float, interval: float) -> dict[str, float]:
    from dbops.config import parse
    from dbops.model import Reachability
    from dbops.poller import PollerHub

    config = parse(config_text)
    hub = PollerHub(config)
    units = [(ref.key, m.name) for ref in hub.refs for m in ref.poll_units]
    hub.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pending = sum(1 for key, _ in units for s in hub.snapshots(key).values() if s.reachability is Reachability.PENDING)
            if not pending:
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"{pending} targets never answered within 120 s")
        time.sleep(interval * 2)  # past the first refreshes' connects
        cpu0, wall0 = time.process_time(), time.monotonic()
        ages: list[float] = []
        down = 0
        while time.monotonic() - wall0 < seconds:
            now = time.time()
            for key in {k for k, _ in units}:
                for snap in hub.snapshots(key).values():
                    ages.append(now - snap.taken_at)
                    down += not snap.reachable
            time.sleep(0.5)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    finally:
        hub.stop(timeout=10)
    ages.sort()
    return {
        "targets": len(units),
        "core": cpu / wall,
        "p50": statistics.median(ages),
        "p99": ages[min(len(ages) - 1, int(len(ages) * 0.99))],
        "not_up": down / max(1, len(ages)),
    }


def report(interval: float, results: list[dict[str, float]]) -> None:
    print(f"\nrefresh every {interval:g}s; goal: <= {GOAL_CORE:.0%} of one core, p99 age <= {2 * interval:g}s")
    print(f"{'targets':>8} {'core':>7} {'vs goal':>8} {'age p50':>8} {'age p99':>8} {'p99/interval':>13} {'not up':>7}")
    for r in results:
        print(f"{int(r['targets']):>8} {r['core']:>6.1%} {r['core'] / GOAL_CORE:>7.2f}x {r['p50']:>7.2f}s {r['p99']:>7.2f}s "
              f"{r['p99'] / interval:>12.2f}x {r['not_up']:>6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="300,1000", help="comma-separated fleet sizes (default 300,1000)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--pg-share", type=float, default=0.6,
                        help="share of the targets that are PostgreSQL members (the rest Redis deployments; default 0.6)")
    parser.add_argument("--state", type=Path, help="a running private sandbox's DBOPS_STATE_DIR (default: start one)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.targets.split(",")]
    # A socket per target, and the sandbox's servers, need more descriptors than the usual 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    def run(state: Path) -> None:
        raise_max_connections(state, 1100)
        results = []
        for n in sizes:
            text = fleet_config(state / "sandbox" / "dbops.toml", n, args.interval, args.pg_share)
            results.append(measure(text, args.seconds, args.interval))
            report(args.interval, results[-1:])
        report(args.interval, results)

    on_sandbox(args.state, "dbops-bench-fleet-", run)


def on_sandbox(state: Path | None, prefix: str, run: Callable[[Path], None]) -> None:
    """`run(state dir)` on a running private sandbox (`state`), or on one of PostgreSQL and Redis
    started in a temporary directory and stopped afterwards."""
    if state is not None:
        run(state)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.chmod(tmp, 0o755)  # the servers run as the postgres and redis users, which must reach the sandbox below
        env = {**os.environ, "DBOPS_STATE_DIR": tmp}
        dbops = [sys.executable, "-m", "dbops.cli"]
        subprocess.run([*dbops, "sandbox", "up", "--engines", "postgres,redis"], env=env, check=True, stdout=subprocess.DEVNULL)
        os.environ["DBOPS_STATE_DIR"] = tmp
        try:
            run(Path(tmp))
        finally:
            subprocess.run([*dbops, "sandbox", "down"], env=env, check=False, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
