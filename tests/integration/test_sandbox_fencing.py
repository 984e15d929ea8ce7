"""Issue 13 on the sandbox's real servers: the coordination server ([locks.postgres]), the
sandbox's own fence for an old primary, and PgBouncer PAUSE/RESUME around a repoint.

The coordination and PgBouncer tests use the session's shared sandbox and leave it as they found
it; the fence tests kill primaries, so they run on a private sandbox of their own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dbops import config as dbconfig
from dbops.sandbox import SandboxError
from dbops.sandbox.postgres import COORD, PGBOUNCER, PostgresSandbox

from .conftest import running_sandbox


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Call `check` until it returns something truthy; fail after `timeout` s (a bound only)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except SandboxError as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not reached within {timeout:.0f} s (last: {last!r})")
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# The coordination server


async def test_coord_server_takes_dbops_logins_and_is_in_the_config(pg_sandbox: Any) -> None:
    pg: PostgresSandbox = pg_sandbox.pg
    assert pg.pid(COORD) is not None
    port = pg.port(COORD)
    assert port not in {pg.port(n) for n in ("pg1", "pg2", "pg3", PGBOUNCER)}

    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="dbops", password=pg.password,
                                 database="dbops", timeout=10)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS fence_probe (k text PRIMARY KEY)")
        await conn.execute("INSERT INTO fence_probe VALUES ('x') ON CONFLICT DO NOTHING")
        assert await conn.fetchval("SELECT count(*) FROM fence_probe") == 1
        assert await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
        assert await conn.fetchval("SELECT pg_try_advisory_lock(13)") is True
        # Not a replication cluster member: no standby, no archiving.
        assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
        assert await conn.fetchval("SHOW archive_mode") == "off"
        await conn.execute("DROP TABLE fence_probe")
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(pg.coord_dsn().replace(pg.password, pg.password + "x"), timeout=10)

    cfg = dbconfig.load(pg_sandbox.config_path)
    lp = cfg.locks.postgres
    assert lp is not None
    assert (lp.host, lp.port, lp.database, lp.user) == ("127.0.0.1", port, "dbops", "dbops")
    assert lp.password is not None and lp.password.value == pg.password
    members = [m.name for m in cfg.environments["sandbox"].clusters["sandbox-pg"].members]
    assert members == ["pg1", "pg2", "pg3"]
    assert any(r.name == COORD and r.running for r in pg.status())


def test_coord_stops_and_starts_like_a_member(pg_sandbox: Any) -> None:
    pg: PostgresSandbox = pg_sandbox.pg
    assert pg._running_map()[COORD]
    pg.stop_member(COORD, "fast")
    try:
        assert pg.pid(COORD) is None and not pg._running_map()[COORD]
    finally:
        pg.start_member(COORD)
    assert pg.pid(COORD) is not None
    assert pg.psql(COORD, "SELECT current_database()", database="dbops") == "dbops"
    with pytest.raises(SandboxError, match="not a member of sandbox-pg"):
        pg.repoint_pgbouncer(COORD)


# ---------------------------------------------------------------------------------------------
# PgBouncer PAUSE / RESUME


async def _cl_waiting(pg: PostgresSandbox) -> int:
    rows = await asyncio.to_thread(pg._bouncer_show, "POOLS")
    return sum(int(r.get("cl_waiting", "0")) for r in rows if r.get("database") == "postgres")


async def _until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not reached within {timeout:.0f} s (last: {last!r})")
        await asyncio.sleep(0.05)


async def test_pause_waits_for_the_transaction_in_flight_and_holds_new_queries(pg_sandbox: Any) -> None:
    pg: PostgresSandbox = pg_sandbox.pg
    upstream = pg.state["pgbouncer"].get("upstream", "pg1")
    pg.psql("pg1", "CREATE TABLE IF NOT EXISTS fence_pause_t (x int)")
    held: asyncpg.Connection = await asyncpg.connect(pg.dsn(PGBOUNCER), statement_cache_size=0, timeout=10)
    other: asyncpg.Connection | None = None
    try:
        assert not pg.pgbouncer_paused()
        tx = held.transaction()
        await tx.start()
        await held.execute("INSERT INTO fence_pause_t VALUES (1)")
        # PAUSE cannot complete while that transaction holds its server connection.
        pause = asyncio.create_task(asyncio.to_thread(pg.pause_pgbouncer, 60))
        await _until(lambda: asyncio.to_thread(pg.pgbouncer_paused), "PAUSE issued")
        assert not pause.done()
        await tx.commit()  # the transaction in flight finishes instead of failing
        await asyncio.wait_for(pause, 30)
        assert pg.pgbouncer_paused()

        # A new query waits in PgBouncer...
        other = await asyncpg.connect(pg.dsn(PGBOUNCER), statement_cache_size=0, timeout=30)
        query = asyncio.create_task(other.fetchval("SELECT count(*) FROM fence_pause_t"))
        await _until(lambda: _cl_waiting(pg), "the new query waiting in PgBouncer")
        assert not query.done()
        # ... across a repoint (RELOAD while paused) ...
        await asyncio.to_thread(pg.repoint_pgbouncer, upstream)
        assert not query.done()
        # ... and runs on RESUME.
        await asyncio.to_thread(pg.resume_pgbouncer)
        assert await asyncio.wait_for(query, 30) == 1
        assert not pg.pgbouncer_paused()
        pg.resume_pgbouncer()  # "database is not paused" is tolerated
    finally:
        pg.resume_pgbouncer()
        await held.close()
        if other is not None:
            await other.close()
        pg.psql("pg1", "DROP TABLE IF EXISTS fence_pause_t")


def test_pause_and_resume_commands_are_shown(pg_sandbox: Any) -> None:
    pg: PostgresSandbox = pg_sandbox.pg
    pause, = pg.show_pause_pgbouncer()
    resume, = pg.show_resume_pgbouncer()
    assert "-d pgbouncer" in pause and "'PAUSE postgres'" in pause and str(pg.port(PGBOUNCER)) in pause
    assert "'RESUME postgres'" in resume
    assert pg.password not in pause + resume


# ---------------------------------------------------------------------------------------------
# The sandbox's own fence (private sandbox: it kills primaries)


@pytest.fixture(scope="module")
def fence_root() -> Iterator[Path]:
    with running_sandbox(("postgres",), "dbops-fence-") as root:
        yield root


def _kill9(pg: PostgresSandbox, name: str) -> None:
    pid = pg.pid(name)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pg.pid(name) is None, f"{name}'s postmaster gone")


def _in_recovery(pg: PostgresSandbox, name: str) -> bool:
    return pg.psql(name, "SELECT pg_is_in_recovery()") == "t"


def test_fence_commands_are_shown_redacted(fence_root: Path) -> None:
    pg = PostgresSandbox(fence_root)
    lines = pg.show_fence_commands("pg1", "pg2")
    text = "\n".join(lines)
    assert pg.password not in text and "password=***" in text
    assert "-m immediate" in text and "standby.signal" in text and "application_name=pg1" in text
    assert f"port={pg.port('pg2')}" in text
    with pytest.raises(SandboxError):
        pg.show_fence_commands("pg1", "pg1")
    with pytest.raises(SandboxError):
        pg.fence_member("pg1", COORD)


def test_killed_primary_fenced_comes_back_only_as_a_standby(fence_root: Path) -> None:
    pg = PostgresSandbox(fence_root)
    assert pg.fence_state("pg1")[0] is False  # a running primary is no fence
    pg.psql("pg1", "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
    wait_for(lambda: pg.psql("pg2", "SELECT count(*) FROM t") == "1", "the row on pg2")
    # Diverge for certain: pg1 writes what pg2 never receives, then dies.
    pg.stop_member("pg2", "fast")
    pg.psql("pg1", "INSERT INTO t SELECT generate_series(2, 1000)")
    _kill9(pg, "pg1")
    pg.start_member("pg2")
    assert pg.psql("pg2", "SELECT pg_promote(wait => true)") == "t"
    assert not _in_recovery(pg, "pg2")

    pg.fence_member("pg1", "pg2")
    ok, why = pg.fence_state("pg1")
    assert ok, why
    assert why == "pg1 is stopped and will start only as a standby of pg2"

    pg.start_member("pg1")  # what an operator restarting the old host would do
    assert _in_recovery(pg, "pg1")
    with pytest.raises(SandboxError, match="read-only transaction"):
        pg.psql("pg1", "INSERT INTO t VALUES (-1)")
    ok, why = pg.fence_state("pg1")
    assert ok and "standby of pg2" in why, why

    pg.rejoin_as_replica("pg1", "pg2")
    assert "pg1" in pg.psql("pg2", "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'").split()
    assert _in_recovery(pg, "pg1")
    pg.psql("pg2", "INSERT INTO t VALUES (2000)")
    # pg1's divergent rows are gone: it now holds exactly pg2's history.
    wait_for(lambda: pg.psql("pg1", "SELECT count(*) FROM t") == "2", "pg1 replaying pg2's row")


def test_fenced_member_that_never_restarted_can_be_rewound(fence_root: Path) -> None:
    """A fence left on a crashed data directory (standby.signal, never started): pg_rewind's
    own crash recovery runs single-user, which refuses standby.signal; rejoin copes."""
    pg = PostgresSandbox(fence_root)
    assert not _in_recovery(pg, "pg2")  # after the previous test pg2 is the primary
    pg.psql("pg2", "CREATE TABLE t2 (x int); INSERT INTO t2 VALUES (1)")
    wait_for(lambda: pg.psql("pg1", "SELECT count(*) FROM t2") == "1", "the row on pg1")
    pg.stop_member("pg1", "fast")
    pg.psql("pg2", "INSERT INTO t2 VALUES (2)")
    _kill9(pg, "pg2")
    pg.start_member("pg1")
    assert pg.psql("pg1", "SELECT pg_promote(wait => true)") == "t"

    pg.fence_member("pg2", "pg1")
    pg.fence_member("pg2", "pg1")  # safe to repeat
    assert pg.fence_state("pg2") == (True, "pg2 is stopped and will start only as a standby of pg1")
    assert pg._controldata("pg2")["Database cluster state"] == "in production"  # crashed, never restarted
    pg.rejoin_as_replica("pg2", "pg1")
    assert _in_recovery(pg, "pg2")
    wait_for(lambda: pg.psql("pg2", "SELECT count(*) FROM t2") == "1", "pg2 holding pg1's history")


def test_fence_of_a_running_primary_stops_it(fence_root: Path) -> None:
    pg = PostgresSandbox(fence_root)
    # pg1 is the primary now, pg2 its replica; fence pg1 for pg2 while it runs.
    assert not _in_recovery(pg, "pg1")
    pg.psql("pg2", "SELECT pg_promote(wait => true)")
    pg.fence_member("pg1", "pg2")
    assert pg.pid("pg1") is None
    assert pg.fence_state("pg1") == (True, "pg1 is stopped and will start only as a standby of pg2")
    (pg.data_dir("pg1") / "standby.signal").unlink()
    ok, why = pg.fence_state("pg1")
    assert not ok and "writable primary" in why


def test_a_member_killed_with_a_client_connected_rejoins_at_once(fence_root: Path) -> None:
    """kill -9 leaves a postmaster that nothing has reaped yet (a container's PID 1 reaps late)
    and the backend of a connected client (a pooler's idle server connection): rejoin clears
    both rather than failing to start the member, or pg_rewind's crash recovery, on them."""
    import subprocess

    pg = PostgresSandbox(fence_root)
    running = [n for n in ("pg1", "pg2", "pg3") if pg.pid(n) is not None]
    primary = next(n for n in running if not _in_recovery(pg, n))
    victim = next(n for n in reversed(running) if n != primary)
    client = subprocess.Popen([str(pg.bindir / "psql"), pg.dsn(victim), "-c", "SELECT pg_sleep(60)"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: pg.psql(victim, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'") == "1",
                 "the client's session")
        _kill9(pg, victim)
        pg.rejoin_as_replica(victim, primary)
    finally:
        client.kill()
        client.wait()
    assert _in_recovery(pg, victim)
