"""The switchover operations (dbops.engines.postgres.switchover) against the real sandbox.

The sandbox is shared by the whole session: every test leaves pg1 primary with pg2 (slot pg2)
and pg3 streaming from it. The planned switchover goes pg1 -> pg2 and, in `finally`, back
pg2 -> pg1 the same way. Waits are bounded polls; durations are printed (run with -s), never
asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dbops import sandbox
from dbops.config import ClusterRef, load
from dbops.engines.postgres import switchover as so
from dbops.sandbox import postgres as sandbox_pg
from dbops.sandbox.postgres import PostgresSandbox

MEMBERS = ("pg1", "pg2", "pg3")
TABLE = "switchover_it"
CLIENT_APP = "switchover-it-client"  # not spared by the fence (dbops' own are 'dbops')


# ---------------------------------------------------------------------------------------------
# Helpers


def cluster_ref(pg_sandbox: Any) -> ClusterRef:
    cfg = load(pg_sandbox.config_path)
    return next(r for r in cfg.clusters() if {"pg1", "pg2", "pg3"} <= {m.name for m in r.cluster.members})


@contextlib.asynccontextmanager
async def member_conns(pg_sandbox: Any) -> AsyncIterator[dict[str, so.Conn]]:
    ref = cluster_ref(pg_sandbox)
    conns = {name: so.Conn.for_member(ref, name) for name in MEMBERS}
    try:
        yield conns
    finally:
        for c in conns.values():
            await c.close()


async def poll(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30.0) -> Any:
    """Await check until it returns something truthy; fail after `timeout` s (a bound, not a
    timing assertion)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await check()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            pytest.fail(f"gave up waiting for {what} (last: {last!r})")
        await asyncio.sleep(0.1)


async def in_recovery(pg_sandbox: Any, name: str) -> bool | None:
    """None when the member does not answer."""
    try:
        return bool((await pg_sandbox.fetch(name, "SELECT pg_is_in_recovery() AS r"))[0]["r"])
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None


async def rows_on(pg_sandbox: Any, name: str) -> list[int]:
    return [r["id"] for r in await pg_sandbox.fetch(name, f"SELECT id FROM {TABLE} ORDER BY id")]


async def streaming_from(pg_sandbox: Any, upstream: str) -> dict[str, str | None]:
    rows = await pg_sandbox.fetch(
        upstream,
        "SELECT r.application_name, r.state, s.slot_name FROM pg_stat_replication r "
        "LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE r.state = 'streaming'",
    )
    return {r["application_name"]: r["slot_name"] for r in rows}


def slot_of(pg_sandbox: Any, name: str) -> str | None:
    return pg_sandbox.pg.state["members"][name].get("slot")


@dataclasses.dataclass
class Timings:
    unavailable_s: float = 0.0  # fence start -> write probe on the new primary done
    switchover_s: float = 0.0  # precheck -> every replica streams from the new primary
    rejoin_s: float = 0.0  # the old primary's pg_rewind and restart
    terminated: int = 0
    timeline: int = 0
    probe_ms: float = 0.0


async def switchover(pg_sandbox: Any, conns: dict[str, so.Conn], old: str, new: str,
                     during_fence: Callable[[], Awaitable[None]] | None = None) -> Timings:
    """A planned switchover old -> new with the switchover functions only, in the order that
    keeps every replica able to follow (others repointed to the candidate before promote)."""
    t = Timings()
    t0 = time.monotonic()
    others = [m for m in MEMBERS if m not in (old, new)]
    pre = await so.precheck(conns, new, so.DEFAULT_MAX_LAG_BYTES)
    assert pre.ok, pre.failed
    assert (pre.mode, pre.primary, pre.candidate) == ("switchover", old, new)
    assert pre.timeline is not None

    await so.checkpoint(conns[old])
    for r in others:
        slot = slot_of(pg_sandbox, r)
        if slot:
            await so.ensure_slot(conns[new], slot)
        await so.repoint_replica(conns[r], "127.0.0.1", pg_sandbox.port(new), r, slot)
        await so.wait_streaming_from(conns[new], r)

    t_fence = time.monotonic()
    fence = await so.fence_primary(conns[old])
    t.terminated = fence.terminated
    assert fence.timeline == pre.timeline
    if during_fence is not None:
        await during_fence()
    await so.wait_replayed(conns[new], fence.final_lsn, timeout=60)
    promoted = await so.promote(conns[new], timeout=60)
    assert not promoted.already_primary and promoted.timeline == pre.timeline + 1
    verify = await so.verify_new_primary(conns[new], pre.timeline + 1)
    t.unavailable_s = time.monotonic() - t_fence
    t.timeline, t.probe_ms = verify.timeline, verify.probe_ms

    for r in others:
        await so.wait_streaming_from(conns[new], r, caught_up_to=verify.probe_lsn)

    t_rejoin = time.monotonic()
    old_slot = slot_of(pg_sandbox, old)
    if old_slot:
        await so.ensure_slot(conns[new], old_slot)
    await asyncio.to_thread(sandbox_pg.rejoin_as_replica, old, new, root=pg_sandbox.root)
    t.rejoin_s = time.monotonic() - t_rejoin
    await so.wait_streaming_from(conns[new], old, caught_up_to=verify.probe_lsn)
    t.switchover_s = time.monotonic() - t0
    return t


async def back_to_pg1(pg_sandbox: Any, conns: dict[str, so.Conn]) -> Timings | None:
    """Leave the shared sandbox as every module expects it, whatever state a failed switchover
    left: pg1 primary (not fenced), pg2 (slot pg2) and pg3 streaming from it."""
    roles = {m: await in_recovery(pg_sandbox, m) for m in MEMBERS}
    timings = None
    if roles["pg2"] is False and roles["pg1"] is not False:
        if roles["pg1"] is None:  # stopped during a failed rejoin
            await asyncio.to_thread(sandbox_pg.rejoin_as_replica, "pg1", "pg2", root=pg_sandbox.root)
        timings = await switchover(pg_sandbox, conns, "pg2", "pg1")
    else:
        # Not promoted (or promoted back already): give pg1 its writes and its replicas back.
        await so.unfence(conns["pg1"])
        for r in ("pg2", "pg3"):
            if roles[r] is not False:
                await so.repoint_replica(conns[r], "127.0.0.1", pg_sandbox.port("pg1"), r, slot_of(pg_sandbox, r))
    await asyncio.to_thread(pg_sandbox.wait_streaming)
    return timings


# ---------------------------------------------------------------------------------------------
# No server needed


def test_conninfo_rewrite_keeps_credentials_and_replaces_the_upstream() -> None:
    cur = "user=postgres password='p w\\'x' host=10.0.0.1 hostaddr=10.0.0.1 port=5432 sslmode=require application_name=old"
    new = so.rewrite_conninfo(cur, "db2.example", 5433, "pg3")
    assert so.parse_conninfo(new) == {
        "user": "postgres", "password": "p w'x", "host": "db2.example", "port": "5433", "sslmode": "require",
        "application_name": "pg3",
    }
    uri = so.parse_conninfo("postgresql://rep:s%40cret@h1:6000/postgres?sslmode=verify-full")
    assert uri == {"user": "rep", "password": "s@cret", "host": "h1", "port": "6000", "dbname": "postgres",
                   "sslmode": "verify-full"}
    with pytest.raises(so.SwitchoverError):
        so.parse_conninfo("host")


def test_described_plan_names_the_sql_and_no_secret() -> None:
    text = "\n".join(
        so.describe_precheck("pg2")
        + so.describe_checkpoint()
        + so.describe_ensure_slot("pg3")
        + so.describe_repoint("10.0.0.2", 5432, "pg3", "pg3")
        + so.describe_fence()
        + so.describe_wait_replayed("0/3000060")
        + so.describe_promote(60)
        + so.describe_verify(2)
        + so.describe_wait_streaming_from("pg3", "0/3000100")
        + so.describe_unfence()
        + so.rejoin_commands(data_dir="/var/lib/postgresql/15/main", new_primary_host="10.0.0.2",
                             new_primary_port=5432, application_name="pg1")
    )
    for sql in ("CHECKPOINT", "ALTER SYSTEM SET default_transaction_read_only = on", "pg_terminate_backend",
                "pg_promote(wait => true, wait_seconds => 60)", "pg_last_wal_replay_lsn() >= '0/3000060'",
                "pg_create_physical_replication_slot('pg3', true)", "primary_slot_name = 'pg3'",
                "pg_rewind --target-pgdata=/var/lib/postgresql/15/main", "dbops.write_probe"):
        assert sql in text, sql
    assert "password=***" in text and "$1" not in text


def test_sandbox_rejoin_commands_redact_the_password(pg_sandbox: Any) -> None:
    lines = sandbox_pg.show_rejoin_commands("pg2", "pg1", root=pg_sandbox.root)
    text = "\n".join(lines)
    assert "pg_rewind" in text and "standby.signal" in text and "primary_slot_name = 'pg2'" in text
    assert pg_sandbox.password not in text and "password=***" in text


# ---------------------------------------------------------------------------------------------
# Against the sandbox


async def test_planned_switchover_to_pg2_and_back(pg_sandbox: Any) -> None:
    await asyncio.to_thread(pg_sandbox.wait_streaming)
    await pg_sandbox.fetch("pg1", f"DROP TABLE IF EXISTS {TABLE}")
    await pg_sandbox.fetch("pg1", f"CREATE TABLE {TABLE} (id int PRIMARY KEY, at text NOT NULL)")
    for i in range(1, 6):  # committed one by one before the switch: none may be lost
        await pg_sandbox.fetch("pg1", f"INSERT INTO {TABLE} VALUES ($1, 'pg1')", i)

    fwd: Timings | None = None
    back: Timings | None = None
    failure: BaseException | None = None
    async with member_conns(pg_sandbox) as conns:
        client = await asyncpg.connect(pg_sandbox.dsn("pg1"), server_settings={"application_name": CLIENT_APP})

        async def fenced_pg1_refuses_writes() -> None:
            assert client.is_closed() or not await _alive(client), "the fence left a client session on pg1"
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await pg_sandbox.fetch("pg1", f"INSERT INTO {TABLE} VALUES (100, 'fenced')")

        try:
            fwd = await switchover(pg_sandbox, conns, "pg1", "pg2", during_fence=fenced_pg1_refuses_writes)
            assert fwd.terminated >= 1

            # pg2 is the primary on the next timeline; pg1 and pg3 stream from it
            assert await in_recovery(pg_sandbox, "pg2") is False
            assert await in_recovery(pg_sandbox, "pg1") is True and await in_recovery(pg_sandbox, "pg3") is True
            streams = await streaming_from(pg_sandbox, "pg2")
            assert {"pg1", "pg3"} <= set(streams), streams
            assert await rows_on(pg_sandbox, "pg2") == [1, 2, 3, 4, 5]

            # a row written on pg2 after the switch reaches pg1 and pg3
            await pg_sandbox.fetch("pg2", f"INSERT INTO {TABLE} VALUES (6, 'pg2')")
            for m in ("pg1", "pg3"):
                await poll(lambda m=m: _has(pg_sandbox, m, 6), f"row 6 on {m}")
                assert await rows_on(pg_sandbox, m) == [1, 2, 3, 4, 5, 6]

            assert (await so.can_follow(conns["pg3"], conns["pg2"])).ok
            assert (await so.can_follow(conns["pg1"], conns["pg2"])).ok

            # idempotent on a resumed run
            again = await so.promote(conns["pg2"])
            assert again.already_primary and again.timeline == fwd.timeline
            rep = await so.repoint_replica(conns["pg3"], "127.0.0.1", pg_sandbox.port("pg2"), "pg3", None)
            assert not rep.changed and "password=***" in rep.primary_conninfo
            assert pg_sandbox.password not in rep.primary_conninfo
            state = pg_sandbox.pg.state["members"]
            assert (state["pg1"]["role"], state["pg2"]["role"]) == ("replica", "primary")
        except BaseException as exc:
            failure = exc
            raise
        finally:
            await client.close()
            try:
                back = await back_to_pg1(pg_sandbox, conns)
            except Exception as exc:
                if failure is None:
                    raise
                failure.add_note(f"putting the sandbox back failed too: {exc!r}")  # keep the first error

    # back as before: pg1 primary on the next timeline again, pg2 through slot pg2, pg3 without
    assert fwd is not None and back is not None
    assert back.timeline == fwd.timeline + 1
    assert await in_recovery(pg_sandbox, "pg1") is False
    streams = await streaming_from(pg_sandbox, "pg1")
    assert streams.get("pg2") == "pg2" and "pg3" in streams and streams["pg3"] is None, streams
    await pg_sandbox.fetch("pg1", f"INSERT INTO {TABLE} VALUES (7, 'pg1')")
    for m in ("pg2", "pg3"):
        await poll(lambda m=m: _has(pg_sandbox, m, 7), f"row 7 on {m}")
        assert await rows_on(pg_sandbox, m) == [1, 2, 3, 4, 5, 6, 7]
    assert (await pg_sandbox.fetch("pg1", "SHOW default_transaction_read_only"))[0][0] == "off"
    state = pg_sandbox.pg.state["members"]
    assert (state["pg1"]["role"], state["pg2"]["role"], state["pg3"]["role"]) == ("primary", "replica", "replica")
    await pg_sandbox.fetch("pg1", f"DROP TABLE {TABLE}")
    for label, t in (("pg1 -> pg2", fwd), ("pg2 -> pg1", back)):  # shown with -s
        print(f"\n[switchover {label}] writes unavailable {t.unavailable_s:.2f} s (fence -> write probe), "
                  f"whole switchover {t.switchover_s:.2f} s, of which rejoin (pg_rewind) {t.rejoin_s:.2f} s; "
                  f"probe {t.probe_ms:.1f} ms; timeline {t.timeline}; sessions ended {t.terminated}")


async def _alive(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1", timeout=5)
        return True
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False


async def _has(pg_sandbox: Any, member: str, row_id: int) -> bool:
    return bool(await pg_sandbox.fetch(member, f"SELECT 1 FROM {TABLE} WHERE id = $1", row_id))


async def test_precheck_refuses_a_lagging_and_a_paused_candidate(pg_sandbox: Any) -> None:
    await asyncio.to_thread(pg_sandbox.wait_streaming)
    async with member_conns(pg_sandbox) as conns:
        healthy = await so.precheck(conns, "pg3", so.DEFAULT_MAX_LAG_BYTES)
        assert healthy.mode == "switchover" and healthy.primary == "pg1"
        assert not healthy.failed, healthy.failed
        assert (await so.precheck(conns, "pg1")).failed[0].name == "candidate-in-recovery"
        try:
            await pg_sandbox.fetch("pg3", "SELECT pg_wal_replay_pause()")
            await poll(lambda: _paused(pg_sandbox, "pg3"), "replay paused on pg3")
            async with _connect(pg_sandbox, "pg1") as c:  # ~256 KiB of WAL that pg3 receives but does not replay
                await c.execute("SELECT pg_logical_emit_message(false, 'dbops-it', repeat('x', 262144))")
            lagging = await so.precheck(conns, "pg3", max_lag_bytes=64 * 1024)
            verdicts = {v.name: v for v in lagging.verdicts}
            assert not lagging.ok
            assert not verdicts["lag"].ok and lagging.lag_bytes is not None and lagging.lag_bytes > 64 * 1024
            assert not verdicts["replay-not-paused"].ok and "paused" in verdicts["replay-not-paused"].detail

            paused = await so.precheck(conns, "pg3", max_lag_bytes=1 << 40)
            assert [v.name for v in paused.failed] == ["replay-not-paused"]

            # a step that waits for replay refuses at once rather than time out
            with pytest.raises(so.SwitchoverError, match="paused"):
                async with _connect(pg_sandbox, "pg1") as c:
                    lsn = await c.fetchval("SELECT pg_current_wal_lsn()::text")
                await so.wait_replayed(conns["pg3"], lsn, timeout=30)
        finally:
            await pg_sandbox.fetch("pg3", "SELECT pg_wal_replay_resume()")
    await asyncio.to_thread(pg_sandbox.wait_streaming)


@contextlib.asynccontextmanager
async def _connect(pg_sandbox: Any, member: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_sandbox.dsn(member), timeout=10, server_settings={"application_name": CLIENT_APP})
    try:
        yield conn
    finally:
        await conn.close(timeout=5)


async def _paused(pg_sandbox: Any, member: str) -> bool:
    rows = await pg_sandbox.fetch(member, "SELECT pg_get_wal_replay_pause_state() AS s")
    return rows[0]["s"] == "paused"


async def test_fence_then_unfence_gives_writes_back(pg_sandbox: Any) -> None:
    """An aborted switchover: pg1 fenced (client ended, new sessions read-only), then unfenced."""
    await asyncio.to_thread(pg_sandbox.wait_streaming)
    async with member_conns(pg_sandbox) as conns:
        client = await asyncpg.connect(pg_sandbox.dsn("pg1"), server_settings={"application_name": CLIENT_APP})
        try:
            fence = await so.fence_primary(conns["pg1"])
            assert fence.terminated >= 1 and any(CLIENT_APP in s for s in fence.terminated_sessions)
            assert not await _alive(client)
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await pg_sandbox.fetch("pg1", "CREATE TABLE switchover_it_fenced (i int)")
            again = await so.fence_primary(conns["pg1"])  # idempotent
            assert so.lsn_to_int(again.final_lsn) >= so.lsn_to_int(fence.final_lsn)
        finally:
            await client.close()
            res = await so.unfence(conns["pg1"])
        assert res.was_fenced
        await pg_sandbox.fetch("pg1", "CREATE TABLE switchover_it_fenced (i int)")
        await pg_sandbox.fetch("pg1", "DROP TABLE switchover_it_fenced")
        assert not (await so.unfence(conns["pg1"])).was_fenced


async def test_precheck_in_failover_mode_when_no_primary_answers(pg_sandbox: Any) -> None:
    await asyncio.to_thread(pg_sandbox.wait_streaming)
    async with member_conns(pg_sandbox) as conns:
        try:
            await asyncio.to_thread(pg_sandbox.stop_member, "pg1", "fast")
            pre = await so.precheck(conns, "pg2")
            verdicts = {v.name: v for v in pre.verdicts}
            assert pre.mode == "failover" and pre.primary is None
            assert verdicts["primary-unreachable"].ok and "pg1" in verdicts["primary-unreachable"].detail
            # pg1's shutdown checkpoint reached both replicas: pg2 is as advanced as pg3
            assert verdicts["most-advanced"].ok, verdicts["most-advanced"]
            assert "lag" not in verdicts and "candidate-streaming" not in verdicts
        finally:
            await asyncio.to_thread(pg_sandbox.start_member, "pg1")
    await asyncio.to_thread(pg_sandbox.wait_streaming)


async def test_a_streaming_standby_reads_as_not_promoting(pg_sandbox: Any) -> None:
    """What lets `promote` conclude "did not promote" (and nothing else): a standby streaming,
    with no promote signal file and no session in pg_promote."""
    await asyncio.to_thread(pg_sandbox.wait_streaming)
    async with member_conns(pg_sandbox) as conns:
        state = await so._promotion_state(conns["pg3"])
        assert state.in_recovery and state.idle_standby, state
        assert not (await so._promotion_state(conns["pg1"])).in_recovery
        with pytest.raises(so.SwitchoverError, match="not in recovery"):
            await so.repoint_replica(conns["pg1"], "127.0.0.1", pg_sandbox.port("pg2"), "pg1")
        with pytest.raises(so.SwitchoverError, match="in recovery, not a primary"):
            await so.fence_primary(conns["pg3"])


@contextlib.asynccontextmanager
async def private_sandbox(prefix: str) -> AsyncIterator[tuple[PostgresSandbox, dict[str, so.Conn]]]:
    """A sandbox of the test's own, for what must not touch the shared one."""
    state_dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    state_dir.chmod(0o755)
    root = state_dir / "sandbox"
    conns: dict[str, so.Conn] = {}
    try:
        up = await asyncio.to_thread(sandbox.up, ("postgres",), root=root)
        ref = next(r for r in load(up.config_path).clusters() if {"pg1", "pg2"} <= {m.name for m in r.cluster.members})
        conns = {n: so.Conn.for_member(ref, n) for n in MEMBERS}
        yield PostgresSandbox(root), conns
    finally:
        for c in conns.values():
            await c.close()
        await asyncio.to_thread(sandbox.down, root=root)
        shutil.rmtree(state_dir, ignore_errors=True)


async def test_promote_never_reports_failure_while_a_promotion_is_pending() -> None:
    """pg2's startup process is stopped (SIGSTOP), so the promote request stays pending: promote
    must report "in doubt" (never "failed"), and once the startup process runs again, calling
    promote again finishes the job. A private sandbox: a promotion outside a switchover would
    leave a stray timeline history file in the shared sandbox's archive for its replicas."""
    async with private_sandbox("dbops-it-promote-") as (pg, conns):
        rows = await _fetch(pg.dsn("pg2"), "SELECT pid FROM pg_stat_activity WHERE backend_type = 'startup'")
        startup = rows[0]["pid"]
        os.kill(startup, signal.SIGSTOP)
        try:
            with pytest.raises(so.PromotionInDoubt, match="do not promote another member") as info:
                await so.promote(conns["pg2"], timeout=2)
            assert "promote signal file present" in info.value.message
            assert (await _fetch(pg.dsn("pg2"), "SELECT pg_is_in_recovery() AS r"))[0]["r"] is True
        finally:
            os.kill(startup, signal.SIGCONT)
        done = await so.promote(conns["pg2"], timeout=30)
        assert done.timeline == 2
        assert (await _fetch(pg.dsn("pg2"), "SELECT pg_is_in_recovery() AS r"))[0]["r"] is False


async def test_a_replica_repointed_after_the_promotion_may_have_diverged() -> None:
    """Why the other replicas are repointed to the candidate BEFORE it is promoted: left on the
    fenced old primary, pg3 replays the WAL pg1 still writes (here a CHECKPOINT; in life the
    running-xacts record bgwriter logs every 15 s) and cannot follow pg2's new timeline.
    can_follow says so, and the sandbox's rejoin (pg_rewind) repairs it."""
    async with private_sandbox("dbops-it-diverge-") as (pg, conns):
        pre = await so.precheck(conns, "pg2")
        assert pre.ok, pre.failed
        assert (await so.can_follow(conns["pg3"], conns["pg2"])).ok  # same timeline, before the promotion
        fence = await so.fence_primary(conns["pg1"])
        await so.wait_replayed(conns["pg2"], fence.final_lsn)
        await so.promote(conns["pg2"])
        verify = await so.verify_new_primary(conns["pg2"], pre.timeline + 1)
        await conns["pg1"].execute("CHECKPOINT")  # WAL the old primary writes after the fork
        lsn = await conns["pg1"].fetchval("SELECT pg_current_wal_lsn()::text")
        await so.wait_replayed(conns["pg3"], lsn)
        check = await so.can_follow(conns["pg3"], conns["pg2"])
        assert check.ok is False and "pg_rewind" in check.detail, check
        await asyncio.to_thread(pg.rejoin_as_replica, "pg3", "pg2")
        await so.wait_streaming_from(conns["pg2"], "pg3", caught_up_to=verify.probe_lsn)
        assert (await so.can_follow(conns["pg3"], conns["pg2"])).ok


async def _fetch(dsn: str, sql: str) -> list[Any]:
    conn = await asyncpg.connect(dsn, timeout=10, server_settings={"application_name": CLIENT_APP})
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close(timeout=5)
