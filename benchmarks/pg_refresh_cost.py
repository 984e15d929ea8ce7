"""What watching costs a PostgreSQL server: statements and server execution time per refresh of
one member's poller, from the server's own pg_stat_statements, against a named baseline in the
same run: one bare `SELECT * FROM pg_stat_activity` (what any activity view reads at least).

    make bench      (or: python benchmarks/pg_refresh_cost.py [--config dbops.toml] [--refreshes N])

Without --config a private sandbox is started (PostgreSQL 15, two replicas, PgBouncer) and
stopped at the end. Each member (primary and replicas) is refreshed N times by the adapter the
console uses (connection kept open, as in the console); pg_stat_statements is reset on that
member after a warm-up refresh, and read at the end, leaving out the reset and the reading.
The budget (issue 16) is at most 3 statements and 1 ms of server time per member per refresh;
the tabs read on demand (table health) are not part of a refresh. Informational: never pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BUDGET_STATEMENTS = 3
BUDGET_MS = 1.0
MARK = "bench-measure"  # in the text of the benchmark's own statements, to leave them out


async def measure(conn, run) -> tuple[int, float]:
    """(statements, server ms) that `run` cost this server, from pg_stat_statements."""
    await conn.execute(f"SELECT /* {MARK} */ pg_stat_statements_reset()")
    await run()
    row = await conn.fetchrow(
        f"SELECT /* {MARK} */ coalesce(sum(calls), 0)::bigint AS calls, coalesce(sum(total_exec_time), 0)::float8 AS ms"
        f"  FROM pg_stat_statements WHERE query NOT LIKE '%{MARK}%'"
    )
    return int(row["calls"]), float(row["ms"])


async def bench(config_path: Path, refreshes: int) -> None:
    import asyncpg

    from dbops.config import load
    from dbops.engines.postgres.adapter import PostgresAdapter
    from dbops.secrets import resolve

    config = load(config_path)
    refs = [r for r in config.clusters() if r.cluster.engine == "postgres"]
    ref = refs[0]
    print(f"cluster {ref.key}: {refreshes} refreshes per member (pg_stat_statements on each member)")
    print(f"{'member':<8} {'role':<8} {'stmts/refresh':>13} {'ms/refresh':>11} {'baseline ms':>12} {'ratio':>7}  budget")
    for member in ref.cluster.members:
        adapter = PostgresAdapter(ref, member)
        secret = resolve(ref.cluster.password)
        # The measuring connection is not the adapter's: its statements carry MARK.
        conn = await asyncpg.connect(host=member.host, port=member.port, user=ref.cluster.user,
                                     database=ref.cluster.database, password=secret.reveal() if secret else None)
        try:
            role = "replica" if await conn.fetchval(f"SELECT /* {MARK} */ pg_is_in_recovery()") else "primary"
            await adapter.collect()  # connect, first statement texts: what happens once, not per refresh

            async def refresh_n(adapter: PostgresAdapter = adapter) -> None:
                for _ in range(refreshes):
                    await adapter.collect()

            baseline_conn = await asyncpg.connect(host=member.host, port=member.port, user=ref.cluster.user,
                                                  database=ref.cluster.database, password=secret.reveal() if secret else None)

            async def baseline_n(baseline_conn: asyncpg.Connection = baseline_conn) -> None:
                for _ in range(refreshes):
                    await baseline_conn.fetch("SELECT * FROM pg_stat_activity")

            calls, ms = await measure(conn, refresh_n)
            _, base_ms = await measure(conn, baseline_n)
            await baseline_conn.close()
        finally:
            await adapter.close()
            await conn.close()
        per_ms, per_calls, per_base = ms / refreshes, calls / refreshes, base_ms / refreshes
        within = "within" if per_calls <= BUDGET_STATEMENTS and per_ms <= BUDGET_MS else "OVER"
        print(f"{member.name:<8} {role:<8} {per_calls:>13.2f} {per_ms:>11.3f} {per_base:>12.3f} {per_ms / per_base:>6.1f}x  "
              f"{within} ({BUDGET_STATEMENTS} stmts, {BUDGET_MS:g} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="a running sandbox's dbops.toml (default: start a private one)")
    parser.add_argument("--refreshes", type=int, default=200)
    args = parser.parse_args()
    if args.config is not None:
        asyncio.run(bench(args.config, args.refreshes))
        return
    with tempfile.TemporaryDirectory(prefix="dbops-bench-pg-") as state:
        os.chmod(state, 0o755)  # the servers run as the postgres user, which must reach the sandbox below
        env = {**os.environ, "DBOPS_STATE_DIR": state}
        dbops = [sys.executable, "-m", "dbops.cli"]
        subprocess.run([*dbops, "sandbox", "up", "--engines", "postgres"], env=env, check=True, stdout=subprocess.DEVNULL)
        try:
            asyncio.run(bench(Path(state) / "sandbox" / "dbops.toml", args.refreshes))
        finally:
            subprocess.run([*dbops, "sandbox", "down"], env=env, check=False, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
