"""Write unavailability during a planned switchover, measured with a 100 ms write probe.

    make bench      (runs this after the start-up benchmark)

Starts a private sandbox (real PostgreSQL 15 primary + 2 replicas), runs a client that inserts a
row every 100 ms into whichever member accepts writes (reconnecting the way an application with
a multi-host connection string would), and runs `dbops runbook run postgres.promote-replica`
pg1 -> pg2 in the middle. Reports the longest gap between two successful writes, against the
issue's goal (<= 3 s) and the ~10 s Patroni documents for a switchover. Informational: never a
pass/fail.

A second client writes through PgBouncer on one connection that it never reopens unless a write
fails: the runbook PAUSEs PgBouncer before the fence and RESUMEs it after repointing, so that
client's writes wait instead of failing; it reports its longest gap and how many writes failed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE_INTERVAL = 0.1
GOAL_SECONDS = 3.0
PATRONI_REPORTED_SECONDS = 10.0


async def writable(sb, members) -> tuple[str, object] | None:
    import asyncpg

    for name in members:
        try:
            conn = await asyncpg.connect(sb.dsn(name), timeout=1)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            continue
        ro = await conn.fetchval("SELECT pg_is_in_recovery() OR current_setting('default_transaction_read_only') = 'on'")
        if not ro:
            return name, conn
        await conn.close()
    return None


async def probe(sb, stop: asyncio.Event, successes: list[float]) -> None:
    import asyncpg

    current = None
    while not stop.is_set():
        started = time.monotonic()
        if current is None:
            current = await writable(sb, ("pg1", "pg2", "pg3"))
        if current is not None:
            try:
                await current[1].execute("INSERT INTO bench_probe VALUES (clock_timestamp())", timeout=1)
                successes.append(time.monotonic())
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                current[1].terminate()
                current = None
        await asyncio.sleep(max(0.0, PROBE_INTERVAL - (time.monotonic() - started)))
    if current is not None:
        await current[1].close()


async def probe_pooled(sb, stop: asyncio.Event, successes: list[float], failures: list[str]) -> None:
    """Writes through PgBouncer every 100 ms; a write may wait (PAUSE) up to 60 s, a failure is
    counted and the connection reopened."""
    import asyncpg

    conn = None
    while not stop.is_set():
        started = time.monotonic()
        try:
            if conn is None:
                conn = await asyncpg.connect(sb.dsn("pgbouncer"), timeout=5, statement_cache_size=0)
            await conn.execute("INSERT INTO bench_probe VALUES (clock_timestamp())", timeout=60)
            successes.append(time.monotonic())
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            failures.append(type(exc).__name__ + ": " + str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            if conn is not None:
                conn.terminate()
            conn = None
        await asyncio.sleep(max(0.0, PROBE_INTERVAL - (time.monotonic() - started)))
    if conn is not None:
        await conn.close()


def longest_gap(successes: list[float], started: float, finished: float) -> float:
    window = [t for t in successes if started - 1 <= t <= finished + 2]
    gaps = [b - a for a, b in zip(window, window[1:])]
    return max(gaps) if gaps else float("nan")


async def main() -> None:
    from dbops import sandbox
    from dbops.sandbox.postgres import PostgresSandbox

    state = Path(tempfile.mkdtemp(prefix="dbops-bench-", dir="/tmp"))
    state.chmod(0o755)
    root = state / "sandbox"
    try:
        result = sandbox.up(("postgres",), root=root)
        sb = PostgresSandbox(root)
        import asyncpg

        conn = await asyncpg.connect(sb.dsn("pg1"))
        await conn.execute("CREATE TABLE bench_probe (at timestamptz)")
        await conn.close()
        successes: list[float] = []
        pooled: list[float] = []
        pooled_failures: list[str] = []
        stop = asyncio.Event()
        task = asyncio.create_task(probe(sb, stop, successes))
        pooled_task = asyncio.create_task(probe_pooled(sb, stop, pooled, pooled_failures))
        await asyncio.sleep(2)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dbops.cli", "--config", str(result.config_path), "runbook", "run", "postgres.promote-replica",
            "--cluster", "sandbox-pg", "--param", "candidate=pg2", "--yes", "--confirm", "sandbox-pg",
            env={**os.environ, "DBOPS_STATE_DIR": str(state)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        finished = time.monotonic()
        await asyncio.sleep(2)
        stop.set()
        await task
        await pooled_task
        if proc.returncode != 0:
            print(out.decode())
            raise SystemExit(f"the switchover failed (exit {proc.returncode})")
        worst = longest_gap(successes, started, finished)
        worst_pooled = longest_gap(pooled, started, finished)
        print(f"switchover pg1 -> pg2 by the runbook: {finished - started:.1f} s end to end, {len(successes)} probe writes")
        print(f"  write unavailability (longest gap between 100 ms probe writes): {worst:.2f} s")
        print(f"  vs goal {GOAL_SECONDS:.0f} s: {worst / GOAL_SECONDS:.2f}x    vs Patroni's documented ~{PATRONI_REPORTED_SECONDS:.0f} s: {worst / PATRONI_REPORTED_SECONDS:.2f}x")
        print(f"  through PgBouncer (PAUSE before the fence, RESUME on the new primary): longest wait {worst_pooled:.2f} s, "
              f"{len(pooled_failures)} failed write(s) of {len(pooled) + len(pooled_failures)}")
        for f in sorted(set(pooled_failures))[:5]:
            print(f"    failed: {f}")
    finally:
        sandbox.down(root=root)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
