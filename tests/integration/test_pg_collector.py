"""The PostgreSQL collector, actions, PgBouncer reader and assessment against real servers.

Uses the shared sandbox (conftest.pg_sandbox: pg1 primary, pg2 with slot pg2 and pg3
streaming, PgBouncer in front of pg1). Every test restores what it changes; waits are bounded
polling loops and nothing asserts a wall-clock duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from dbops.config import ClusterRef, Member, SecretRef, load, parse
from dbops.engine_spec import adapter_class
from dbops.engines.postgres.adapter import STATEMENTS_MISSING, PostgresAdapter, rank_statements
from dbops.engines.postgres.assess import assess_cluster, update_baseline
from dbops.engines.postgres.data import PgMemberData
from dbops.engines.postgres.queries import REPLAY_WAITING_FOR_WAL
from dbops.model import Reachability, Severity, Snapshot
from dbops.secrets import Secret, SecretError

KiB = 1024
MiB = 1024 * KiB
TEST_APP = "dbops-it"  # application_name of the tests' own connections (dbops' are "dbops")


# ---------------------------------------------------------------------------------------------
# Helpers


def cluster_ref(pg_sandbox: Any, **thresholds: Any) -> ClusterRef:
    cfg = load(pg_sandbox.config_path)
    ref = next(
        r for r in cfg.clusters()
        if r.cluster.engine == "postgres" and {"pg1", "pg2", "pg3"} <= {m.name for m in r.cluster.members}
    )
    if thresholds:
        ref = with_cluster(ref, thresholds=dataclasses.replace(ref.cluster.thresholds, **thresholds))
    return ref


def with_cluster(ref: ClusterRef, **update: Any) -> ClusterRef:
    return dataclasses.replace(ref, cluster=dataclasses.replace(ref.cluster, **update))


def member(ref: ClusterRef, name: str) -> Member:
    return next(m for m in ref.cluster.members if m.name == name)


@contextlib.asynccontextmanager
async def adapters(ref: ClusterRef, *names: str) -> AsyncIterator[list[PostgresAdapter]]:
    made = [PostgresAdapter(ref, member(ref, n)) for n in names]
    try:
        yield made
    finally:
        for a in made:
            await a.close()


@contextlib.asynccontextmanager
async def connection(pg_sandbox: Any, name: str = "pg1", **kw: Any) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(pg_sandbox.dsn(name), timeout=10, server_settings={"application_name": TEST_APP}, **kw)
    try:
        yield conn
    finally:
        await conn.close(timeout=5)


def snapshot(ref: ClusterRef, name: str, data: PgMemberData) -> Snapshot:
    return Snapshot(ref.environment, ref.name, name, "postgres", Reachability.UP, time.time(), data=data)


async def collect_all(ref: ClusterRef, ads: list[PostgresAdapter]) -> dict[str, Snapshot]:
    return {a.member.name: snapshot(ref, a.member.name, await a.collect()) for a in ads}


def metric(health: Any, member_name: str, name: str) -> Any:
    m = next(h for h in health.members if h.name == member_name)
    found = [x for x in m.metrics if x.name == name]
    assert found, f"{member_name} has no metric {name}: {[(x.name, x.message) for x in m.metrics]}"
    return found[0]


async def wait_until(check: Callable[[], Awaitable[Any]], what: str, attempts: int = 150, delay: float = 0.1) -> Any:
    """Call check until it returns something truthy; fail after a bounded number of attempts."""
    last = None
    for _ in range(attempts):
        last = await check()
        if last:
            return last
        await asyncio.sleep(delay)
    pytest.fail(f"gave up waiting for {what} (last value: {last!r})")


async def emit_wal(pg_sandbox: Any, total_bytes: int, chunk: int = MiB) -> None:
    """Write about total_bytes of WAL on pg1 without touching any table."""
    async with connection(pg_sandbox) as conn:
        left = total_bytes
        while left > 0:
            n = min(chunk, left)
            await conn.execute(f"SELECT pg_logical_emit_message(false, 'dbops-it', repeat('x', {n}))")
            left -= n


async def ready(pg_sandbox: Any) -> None:
    """pg1 primary with both replicas streaming (another module may have restarted members)."""
    await asyncio.to_thread(pg_sandbox.wait_streaming)


# ---------------------------------------------------------------------------------------------
# No server needed


def test_adapter_module_does_not_import_asyncpg() -> None:
    code = (
        "import sys, dbops.engines.postgres.adapter, dbops.engines.postgres.assess;"
        "assert 'asyncpg' not in sys.modules, 'asyncpg imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registry_finds_the_adapter() -> None:
    assert adapter_class("postgres") is PostgresAdapter
    assert PostgresAdapter.kind == "postgres"


def test_rank_statements_deltas() -> None:
    first = rank_statements({1: (10, 100.0, 10), 2: (1, 500.0, 1)}, None)
    assert [(r[0], r[4], r[5]) for r in first] == [(2, 0, 0.0), (1, 0, 0.0)]  # by total when no deltas
    second = rank_statements({1: (15, 160.0, 15), 2: (1, 500.0, 1), 3: (2, 20.0, 2)}, {1: (10, 100.0, 10), 2: (1, 500.0, 1)})
    assert [(r[0], r[4], r[5]) for r in second] == [(1, 5, 60.0), (3, 2, 20.0), (2, 0, 0.0)]
    reset = rank_statements({1: (2, 3.0, 2)}, {1: (10, 100.0, 10)})  # pg_stat_statements_reset()
    assert reset[0][4:] == (2, 3.0)


CLASSIFY_CONFIG = """
[environments.prod.clusters.db]
engine = "postgres"
password = { env = "DBOPS_IT_UNSET_PASSWORD_VAR" }
[[environments.prod.clusters.db.members]]
name = "db1"
host = "10.9.9.9"
port = 5433
"""


@pytest.fixture
def offline_adapter() -> PostgresAdapter:
    ref = parse(CLASSIFY_CONFIG).clusters()[0]
    return PostgresAdapter(ref, ref.cluster.members[0])


@pytest.mark.parametrize(
    "exc, reach, text",
    [
        (ConnectionRefusedError(111, "Connect call failed"), Reachability.DOWN, "connection refused at 10.9.9.9:5433"),
        (
            OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 5433, 0, 0), "
                    "[Errno 111] Connect call failed ('127.0.0.1', 5433)"),
            Reachability.DOWN,
            "connection refused at 10.9.9.9:5433",
        ),
        (OSError(113, "No route to host"), Reachability.DOWN, "cannot reach 10.9.9.9:5433: No route to host"),
        (socket.gaierror(-2, "Name or service not known"), Reachability.DOWN, "cannot resolve host 10.9.9.9"),
        (TimeoutError(), Reachability.TIMEOUT, "no answer from 10.9.9.9:5433 within 3s"),
        (TimeoutError(), Reachability.TIMEOUT, "no answer from 10.9.9.9:5433 within 3s"),
        (SecretError("environment variable X is not set"), Reachability.AUTH, "password for postgres: environment variable X"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), Reachability.TLS, "TLS certificate of 10.9.9.9:5433"),
        (ssl.SSLError(1, "wrong version number"), Reachability.TLS, "TLS handshake with 10.9.9.9:5433 failed"),
        (ConnectionError('PostgreSQL server at "10.9.9.9:5433" rejected SSL upgrade'), Reachability.TLS, "does not accept TLS"),
        (asyncpg.InvalidPasswordError("password authentication failed for user \"postgres\""), Reachability.AUTH,
         "10.9.9.9:5433 rejected user postgres: password authentication failed"),
        (asyncpg.InvalidAuthorizationSpecificationError("no pg_hba.conf entry for host"), Reachability.AUTH,
         "rejected user postgres: no pg_hba.conf entry"),
        (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), Reachability.DOWN,
         "connection to 10.9.9.9:5433 lost"),
        (asyncpg.CannotConnectNowError("the database system is starting up"), Reachability.DOWN, "not accepting connections"),
        (asyncpg.AdminShutdownError("terminating connection due to administrator command"), Reachability.DOWN,
         "connection to 10.9.9.9:5433 lost"),
        (asyncpg.QueryCanceledError("canceling statement due to statement timeout"), Reachability.TIMEOUT,
         "did not finish the poll within 3s"),
        (asyncpg.UndefinedFunctionError("function foo() does not exist"), Reachability.ERROR, "answered an error"),
        (ValueError("odd\nsecond line"), Reachability.ERROR, "10.9.9.9:5433: ValueError: odd"),
    ],
)
def test_classify(offline_adapter: PostgresAdapter, exc: BaseException, reach: Reachability, text: str) -> None:
    got, message = offline_adapter.classify(exc)
    assert got is reach, message
    assert message.startswith(text) or text in message, message
    assert "\n" not in message and "Traceback" not in message


def test_classify_never_shows_the_password(offline_adapter: PostgresAdapter) -> None:
    offline_adapter._secret = Secret("hunter2-secret")
    _, message = offline_adapter.classify(asyncpg.PostgresError("bad value hunter2-secret in dsn"))
    assert "hunter2-secret" not in message and "***" in message


async def test_unresolvable_password_is_auth(offline_adapter: PostgresAdapter) -> None:
    with pytest.raises(SecretError) as ei:
        await offline_adapter.collect()
    assert offline_adapter.classify(ei.value) == (
        Reachability.AUTH,
        "password for postgres: environment variable DBOPS_IT_UNSET_PASSWORD_VAR is not set",
    )
    await offline_adapter.close()


# ---------------------------------------------------------------------------------------------
# Collect


async def test_primary_sees_streaming_replicas(pg_sandbox: Any) -> None:
    await ready(pg_sandbox)
    ref = cluster_ref(pg_sandbox)
    async with adapters(ref, "pg1") as (a,):
        d = await a.collect()
    assert not d.in_recovery and d.wal_receiver is None
    assert d.server_version.startswith("15")
    assert isinstance(d.timeline, int) and d.current_lsn and "/" in d.current_lsn
    rows = {r.application_name: r for r in d.replicas}
    assert {"pg2", "pg3"} <= set(rows), rows
    for name in ("pg2", "pg3"):
        r = rows[name]
        assert r.state == "streaming" and r.sync_state == "async"
        for v in (r.write_lag_bytes, r.flush_lag_bytes, r.replay_lag_bytes):
            assert isinstance(v, int) and v >= 0
        for v in (r.write_lag_seconds, r.flush_lag_seconds, r.replay_lag_seconds):
            assert v is None or (isinstance(v, float) and v >= 0)
        assert r.sent_lsn and r.replay_lsn
    assert rows["pg2"].slot_name == "pg2" and rows["pg3"].slot_name is None
    slot = next(s for s in d.slots if s.slot_name == "pg2")
    assert slot.active and slot.slot_type == "physical" and slot.wal_status in ("reserved", "extended")
    assert isinstance(slot.retained_bytes, int)
    assert d.max_connections == 50 and d.connections_total >= 1
    assert d.archiver is not None and d.archiver.archive_mode == "on"
    assert d.max_xid_age is not None and d.max_xid_age > 0 and d.max_xid_age_database
    assert d.cache_hit_ratio is None or 0 <= d.cache_hit_ratio <= 100
    assert d.statements is not None and d.statements_note is None


async def test_standby_sees_its_walreceiver(pg_sandbox: Any) -> None:
    await ready(pg_sandbox)
    ref = cluster_ref(pg_sandbox)
    async with adapters(ref, "pg3") as (a,):
        d = await a.collect()
    assert d.in_recovery
    wr = d.wal_receiver
    assert wr is not None and wr.status == "streaming"
    assert wr.sender_port == pg_sandbox.port("pg1") and wr.slot_name is None
    assert wr.received_lsn and wr.replayed_lsn and d.current_lsn == wr.replayed_lsn
    assert isinstance(wr.replay_lag_bytes, int) and wr.replay_lag_bytes >= 0
    # None until this standby has replayed a commit (pg_last_xact_replay_timestamp() is NULL)
    assert (wr.replay_lag_seconds is None or wr.replay_lag_seconds >= 0) and not wr.replay_paused
    assert d.replicas == () and d.pgbouncer is None  # PgBouncer is read on pg1 only
    assert d.archiver is not None


async def test_statements_report_deltas_between_polls(pg_sandbox: Any) -> None:
    ref = cluster_ref(pg_sandbox)
    async with adapters(ref, "pg1") as (a,), connection(pg_sandbox) as conn:
        first = await a.collect()
        assert first.statements is not None
        assert all(s.calls_delta == 0 and s.total_ms_delta == 0 for s in first.statements)
        for _ in range(5):
            await conn.execute("SELECT pg_sleep(0.02), 'dbops-it statements', 4242")
        second = await a.collect()
    assert second.statements is not None and len(second.statements) <= 20
    deltas = [s.total_ms_delta for s in second.statements]
    assert deltas == sorted(deltas, reverse=True)
    ours = [s for s in second.statements if "pg_sleep" in s.query and s.calls_delta >= 5]
    assert ours, [(s.query[:60], s.calls_delta) for s in second.statements]
    assert ours[0].total_ms_delta >= 5 * 20 * 0.9 and ours[0].mean_ms > 0


async def test_statements_note_when_extension_missing(pg_sandbox: Any) -> None:
    # template1 has no pg_stat_statements extension (it is created in "postgres" only)
    ref = with_cluster(cluster_ref(pg_sandbox), database="template1")
    async with adapters(ref, "pg1") as (a,):
        d = await a.collect()
    assert d.statements is None and d.statements_note == STATEMENTS_MISSING


async def test_password_in_query_text_never_reaches_the_data(pg_sandbox: Any) -> None:
    """pg_stat_activity and pg_stat_statements keep `ALTER ROLE ... PASSWORD '...'` verbatim: the
    adapter scrubs every query text, so no screen, check or audit record gets the literal."""
    ref = cluster_ref(pg_sandbox)
    role, secret = "dbops_it_pw_role", "TopSecret-123"
    await pg_sandbox.fetch("pg1", f"DROP ROLE IF EXISTS {role}")  # a leftover of an interrupted run
    await pg_sandbox.fetch("pg1", f"CREATE ROLE {role}")
    try:
        async with adapters(ref, "pg1") as (a,), connection(pg_sandbox) as conn:
            await a.collect()  # the statements' previous totals: the ALTER is then a fresh delta
            tx = conn.transaction()
            await tx.start()
            try:
                for _ in range(3):  # a busy statement ranks among the top ones
                    await conn.execute(f"ALTER ROLE {role} PASSWORD '{secret}'")
                pid = conn.get_server_pid()

                async def both_seen() -> Any:
                    d = await a.collect()
                    session = next((s for s in d.sessions if s.pid == pid), None)
                    statement = next((s for s in d.statements or () if role in s.query), None)
                    return (d, session, statement) if session is not None and statement is not None else None

                # idle in transaction: pg_stat_activity keeps the ALTER as the session's query
                d, session, statement = await wait_until(both_seen, "the ALTER ROLE in sessions and statements")
                assert session.query == f"ALTER ROLE {role} PASSWORD '***'", session.query
                assert statement.query == f"ALTER ROLE {role} PASSWORD '***'", statement.query
                assert secret not in repr(d)
                again = await a.session(pid)  # the re-read before an action goes the same way
                assert again is not None and secret not in repr(again)
            finally:
                await tx.rollback()
    finally:
        await pg_sandbox.fetch("pg1", f"DROP ROLE IF EXISTS {role}")
        # pg_stat_statements would keep the literal on the server: forget that entry only
        await pg_sandbox.fetch(
            "pg1",
            "SELECT pg_stat_statements_reset(0, 0, queryid) FROM pg_stat_statements WHERE query LIKE $1",
            f"%{role}%PASSWORD%",
        )


async def test_dbops_own_sessions_never_listed(pg_sandbox: Any) -> None:
    ref = cluster_ref(pg_sandbox)
    async with adapters(ref, "pg1", "pg1") as (a, b):
        await b.collect()  # a second dbops instance, connected
        d = await a.collect()
        own = {a.backend_pid, b.backend_pid}
    assert None not in own
    assert not own & {s.pid for s in d.sessions}
    assert all(s.application_name != "dbops" for s in d.sessions)
    # ...nor counted by state, though they count against max_connections
    assert sum(n for _, n in d.connections_by_state) <= d.connections_total - 2


async def test_replay_pause_turns_lag_warn_then_crit(pg_sandbox: Any) -> None:
    await ready(pg_sandbox)
    await settled(pg_sandbox)
    # Small byte thresholds so a few MiB of WAL cross them; the seconds thresholds keep their
    # defaults (the paused standby's seconds lag grows too: judged in the next test).
    ref = cluster_ref(pg_sandbox, lag_bytes_warn=256 * KiB, lag_bytes_crit=8 * MiB)
    async with adapters(ref, "pg1", "pg2", "pg3") as ads:
        health = assess_cluster(ref, await collect_all(ref, ads))
        assert metric(health, "pg3", "lag_bytes").severity is Severity.OK

        async def lag_metric(minimum: int) -> Any:
            h = assess_cluster(ref, await collect_all(ref, ads))
            m = metric(h, "pg3", "lag_bytes")
            return (h, m) if m.value > minimum else None

        await pg_sandbox.fetch("pg3", "SELECT pg_wal_replay_pause()")
        try:
            await emit_wal(pg_sandbox, 1 * MiB)
            health, m = await wait_until(lambda: lag_metric(256 * KiB), "pg3 lag past 256 KiB")
            assert m.severity is Severity.WARN, m.message
            assert metric(health, "pg3", "replay_paused").severity is Severity.WARN
            pg3 = next(h for h in health.members if h.name == "pg3")
            assert pg3.lag_bytes == m.value and pg3.severity.rank >= Severity.WARN.rank

            # pg2 keeps replaying: once pg1 has pg2's next status reply, pg2 is fine, pg3 still WARN.
            async def pg2_fine() -> Any:
                h = assess_cluster(ref, await collect_all(ref, ads))
                return h if metric(h, "pg2", "lag_bytes").severity is Severity.OK else None

            health = await wait_until(pg2_fine, "pg2 to report it replayed the WAL")
            assert metric(health, "pg3", "lag_bytes").severity is Severity.WARN

            await emit_wal(pg_sandbox, 10 * MiB)
            health, m = await wait_until(lambda: lag_metric(8 * MiB), "pg3 lag past 8 MiB")
            assert m.severity is Severity.CRIT and m.message.startswith("replay lag ") and "> crit 8.0 MiB" in m.message
            assert health.severity is Severity.CRIT
        finally:
            await pg_sandbox.fetch("pg3", "SELECT pg_wal_replay_resume()")

        async def caught_up() -> bool:
            d = await ads[2].collect()
            return d.wal_receiver is not None and not d.wal_receiver.replay_paused and d.wal_receiver.replay_lag_bytes == 0

        await wait_until(caught_up, "pg3 to replay what it received")


def replica_row(data: PgMemberData, name: str) -> Any:
    return next((r for r in data.replicas if r.application_name == name), None)


async def settled(pg_sandbox: Any) -> None:
    """Both replicas replayed all pg1 sent, and pg1's walsenders forgot the lag they measured
    during an earlier test (replay_lag turns NULL after two caught-up status replies)."""

    async def quiet() -> bool:
        rows = await pg_sandbox.fetch(
            "pg1",
            "SELECT application_name, replay_lsn = sent_lsn AS caught_up, replay_lag FROM pg_stat_replication",
        )
        by_name = {r["application_name"]: r for r in rows}
        return all(n in by_name and by_name[n]["caught_up"] and by_name[n]["replay_lag"] is None for n in ("pg2", "pg3"))

    await wait_until(quiet, "pg2 and pg3 to be caught up and idle", attempts=300)


async def test_paused_replay_lag_seconds_come_from_the_primary_and_grow(pg_sandbox: Any) -> None:
    """A stuck apply position reads as a growing lag in the primary's pg_stat_replication (the
    walsender interpolates between its WAL timing samples on every status reply of the standby),
    so the primary's view, which dbops uses, turns WARN and then CRIT."""
    await ready(pg_sandbox)
    await settled(pg_sandbox)
    ref = cluster_ref(pg_sandbox, lag_seconds_warn=2.0, lag_seconds_crit=5.0)
    async with adapters(ref, "pg1", "pg3") as ads:

        async def lag(severity: Severity) -> Any:
            snaps = await collect_all(ref, ads)
            h = assess_cluster(ref, snaps)
            m = metric(h, "pg3", "lag_seconds")
            if m.severity.rank > severity.rank:
                pytest.fail(f"lag_seconds went past {severity.name} without being seen there: {m.message}")
            if m.severity is not severity:
                return None
            # paused with WAL to replay: not waiting for WAL, and the figure judged is the
            # primary's replay_lag, whatever the standby thinks of itself
            assert snaps["pg3"].data.extra[REPLAY_WAITING_FOR_WAL] is False
            row = replica_row(snaps["pg1"].data, "pg3")
            assert row is not None and m.value == row.replay_lag_seconds, (m.value, row)
            return h, m

        await pg_sandbox.fetch("pg3", "SELECT pg_wal_replay_pause()")
        try:
            await emit_wal(pg_sandbox, 64 * KiB)  # one burst; nothing more is written
            h, m = await wait_until(lambda: lag(Severity.WARN), "pg3 lag_seconds past 2s", attempts=300)
            assert m.message.startswith("replay lag ") and m.message.endswith("> warn 2.0s"), m.message
            assert metric(h, "pg3", "replay_paused").severity is Severity.WARN
            h, m = await wait_until(lambda: lag(Severity.CRIT), "pg3 lag_seconds past 5s", attempts=300)
            assert m.message.endswith("> crit 5.0s") and m.value > 5.0, m.message
            assert next(x for x in h.members if x.name == "pg3").lag_seconds == m.value
        finally:
            await pg_sandbox.fetch("pg3", "SELECT pg_wal_replay_resume()")
    await settled(pg_sandbox)


async def test_long_transaction_on_the_primary_is_not_replica_lag(pg_sandbox: Any) -> None:
    """One transaction writes WAL, sleeps 12 s, writes more: no commit reaches the replicas for
    12 s+, so `now() - pg_last_xact_replay_timestamp()` on them keeps growing, but they replay
    the WAL as it arrives. With the default thresholds (10 s / 60 s) pg3 must stay OK."""
    await ready(pg_sandbox)
    await settled(pg_sandbox)
    ref = cluster_ref(pg_sandbox)
    t = ref.cluster.thresholds
    assert (t.lag_seconds_warn, t.lag_seconds_crit) == (10, 60), "the sandbox must keep the default thresholds"
    table = "dbops_it_long_tx"
    insert = f"INSERT INTO {table} (pad) SELECT repeat(md5(g::text), 32) FROM generate_series(1, 5000) g"  # ~6 MiB WAL
    await pg_sandbox.fetch("pg1", f"CREATE TABLE IF NOT EXISTS {table} (id bigserial, pad text)")
    seen: list[tuple[str, float | None, Any]] = []  # (phase, lag_seconds, lag_seconds metric)
    standby_cries_wolf = 0  # polls where the standby's own estimate alone would have been WARN

    waiting: list[bool] = []  # pg3's startup process waiting for WAL, per poll of the sleep

    def judge(phase: str, snaps: dict[str, Snapshot]) -> None:
        h = assess_cluster(ref, snaps)
        pg3 = next(x for x in h.members if x.name == "pg3")
        seen.append((phase, pg3.lag_seconds, metric(h, "pg3", "lag_seconds")))
        if phase == "sleep":
            waiting.append(snaps["pg3"].data.extra[REPLAY_WAITING_FOR_WAL])

    try:
        async with adapters(ref, "pg1", "pg3") as ads, connection(pg_sandbox) as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.execute(insert)
                sleeper = asyncio.create_task(conn.execute("SELECT pg_sleep(12)"))
                try:
                    for _ in range(1000):  # bounded: ends when pg_sleep does
                        judge("sleep", await collect_all(ref, ads))
                        if sleeper.done():
                            break
                        await asyncio.sleep(0.2)
                    await asyncio.wait_for(sleeper, 30)
                finally:
                    if not sleeper.done():
                        sleeper.cancel()
                        await asyncio.wait([sleeper])
                # Writes again, and meanwhile polls: the long-running adapters, and each round a
                # freshly started one (dbops started, or reconnected, during the load job), which
                # has not seen the standby caught up and so cannot bound the standby's estimate.
                # Rounds go on until such a poll caught pg3 with WAL not yet replayed a few times:
                # then the standby's estimate is now() - its last replayed commit (> 12 s), the
                # figure that used to turn a healthy replica WARN.
                for _ in range(30):
                    writer = asyncio.create_task(conn.execute(insert))
                    try:
                        snaps = await collect_all(ref, ads)
                        judge("writes", snaps)
                        async with adapters(ref, "pg3") as (fresh,):
                            late = snapshot(ref, "pg3", await fresh.collect())
                        judge("writes, new dbops", {**snaps, "pg3": late})
                        wr = late.data.wal_receiver
                        if wr is not None and (wr.replay_lag_seconds or 0.0) > t.lag_seconds_warn:
                            standby_cries_wolf += 1
                    finally:
                        await asyncio.wait_for(writer, 30)
                    if standby_cries_wolf >= 3:
                        break
            finally:
                await tx.rollback()
    finally:
        await pg_sandbox.fetch("pg1", f"DROP TABLE IF EXISTS {table}")
    assert {p for p, _, _ in seen} == {"sleep", "writes", "writes, new dbops"}
    assert standby_cries_wolf, "no poll caught pg3 with WAL not yet replayed: the case was not exercised"
    # Idle in the transaction, pg3 has replayed all it can: the signal that keeps the primary's
    # replay_lag from counting a record pg1 has not finished writing out (the WAL of the insert
    # before the sleep ends mid-record at a page boundary, which pg1 flushed).
    assert any(waiting), waiting
    bad = [(p, m.message) for p, _, m in seen if m.severity is not Severity.OK]
    assert not bad, bad
    worst = max(v for _, v, _ in seen if v is not None)
    assert worst < 5.0, [(p, v) for p, v, _ in seen]


async def test_idle_in_transaction_is_flagged(pg_sandbox: Any) -> None:
    ref = cluster_ref(pg_sandbox, idle_in_transaction_seconds_warn=0.3, idle_in_transaction_seconds_crit=3600)
    async with adapters(ref, "pg1") as (a,), connection(pg_sandbox) as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.fetchval("SELECT 1")
            pid = conn.get_server_pid()

            async def flagged() -> Any:
                d = await a.collect()
                mine = [s for s in d.sessions if s.pid == pid]
                if mine and mine[0].state == "idle in transaction" and (mine[0].state_age_seconds or 0) > 0.3:
                    return d, mine[0]
                return None

            d, s = await wait_until(flagged, "the session to be idle in transaction for 0.3 s")
            assert s.application_name == TEST_APP and s.xact_age_seconds is not None and s.blocked_by == ()
            m = metric(assess_cluster(ref, {"pg1": snapshot(ref, "pg1", d)}), "pg1", "idle_in_transaction")
            assert m.severity is Severity.WARN and f"pid {pid}" in m.message
        finally:
            await tx.rollback()


async def test_inactive_slot_retaining_wal_is_flagged(pg_sandbox: Any) -> None:
    ref = cluster_ref(pg_sandbox, inactive_slot_retained_bytes_warn=1 * MiB)
    slot = "dbops_it_inactive"
    drop = "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1"
    await pg_sandbox.fetch("pg1", drop, slot)  # a leftover of an interrupted run
    await pg_sandbox.fetch("pg1", "SELECT pg_create_physical_replication_slot($1, true)", slot)
    try:
        await emit_wal(pg_sandbox, 2 * MiB)
        async with adapters(ref, "pg1") as (a,):

            async def retained() -> Any:
                d = await a.collect()
                s = next(s for s in d.slots if s.slot_name == slot)
                return d if s.retained_bytes is not None and s.retained_bytes > MiB else None

            d = await wait_until(retained, f"slot {slot} to retain more than 1 MiB")
        s = next(s for s in d.slots if s.slot_name == slot)
        assert not s.active and s.wal_status in ("reserved", "extended")
        m = metric(assess_cluster(ref, {"pg1": snapshot(ref, "pg1", d)}), "pg1", f"slot:{slot}")
        assert m.severity is Severity.WARN and m.message.startswith(f"inactive slot {slot} retains ")
    finally:
        await pg_sandbox.fetch("pg1", drop, slot)


async def test_failing_archive_command_is_flagged(pg_sandbox: Any) -> None:
    ref = cluster_ref(pg_sandbox)
    (setting,) = await pg_sandbox.fetch("pg1", "SELECT setting, sourcefile FROM pg_settings WHERE name = 'archive_command'")
    async with adapters(ref, "pg1") as (a,):
        first = await a.collect()
        assert first.archiver is not None
        baseline = update_baseline(None, {"pg1": snapshot(ref, "pg1", first)})
        await pg_sandbox.fetch("pg1", "ALTER SYSTEM SET archive_command = 'false'")
        await pg_sandbox.fetch("pg1", "SELECT pg_reload_conf()")
        try:
            switched_at = -1

            async def failing() -> Any:
                nonlocal switched_at
                d = await a.collect()
                if d.archiver.failed_count > first.archiver.failed_count:
                    return d
                tick = int(time.monotonic() // 5)  # the reload may land after a switch: switch again, rarely
                if tick != switched_at:
                    switched_at = tick
                    await emit_wal(pg_sandbox, 64 * KiB)
                    await pg_sandbox.fetch("pg1", "SELECT pg_switch_wal()")
                return None

            d = await wait_until(failing, "archive_command 'false' to fail", attempts=300)
            health = assess_cluster(ref, {"pg1": snapshot(ref, "pg1", d)}, baseline)
            m = metric(health, "pg1", "archiver")
            assert m.severity is Severity.WARN
            assert m.message.startswith(f"archiving failing: last failed {d.archiver.last_failed_wal} ")
        finally:
            if setting["sourcefile"] and setting["sourcefile"].endswith("postgresql.auto.conf"):
                (stmt,) = await pg_sandbox.fetch("pg1", "SELECT format('ALTER SYSTEM SET archive_command = %L', $1::text)",
                                                 setting["setting"])
                await pg_sandbox.fetch("pg1", stmt[0])
            else:
                await pg_sandbox.fetch("pg1", "ALTER SYSTEM RESET archive_command")
            await pg_sandbox.fetch("pg1", "SELECT pg_reload_conf()")

        # The restored command archives the segment that failed; the stateless rule clears.
        async def recovered() -> Any:
            d = await a.collect()
            return metric(assess_cluster(ref, {"pg1": snapshot(ref, "pg1", d)}), "pg1", "archiver").severity is Severity.OK

        try:
            await wait_until(recovered, "archiving to recover", attempts=600)
        finally:
            # failed_count is cumulative: zero the archiver's counters so other modules start clean
            await pg_sandbox.fetch("pg1", "SELECT pg_stat_reset_shared('archiver')")
    (now,) = await pg_sandbox.fetch("pg1", "SELECT setting FROM pg_settings WHERE name = 'archive_command'")
    assert now["setting"] == setting["setting"]


# ---------------------------------------------------------------------------------------------
# Sessions and actions


async def test_long_query_visible_and_cancel_ends_it(pg_sandbox: Any) -> None:
    ref = cluster_ref(pg_sandbox, long_query_seconds=0.2)
    async with adapters(ref, "pg1") as (a,), connection(pg_sandbox) as conn:
        pid = conn.get_server_pid()
        task = asyncio.create_task(conn.fetchval("SELECT pg_sleep(60)"))
        try:

            async def running() -> Any:
                d = await a.collect()
                s = next((s for s in d.sessions if s.pid == pid), None)
                ok = s is not None and s.state == "active" and "pg_sleep" in s.query and (s.query_age_seconds or 0) > 0.2
                return (d, s) if ok else None

            d, s = await wait_until(running, "pg_sleep to show as a long-running query")
            assert s.wait_event == "PgSleep" and s.blocked_by == ()
            m = metric(assess_cluster(ref, {"pg1": snapshot(ref, "pg1", d)}), "pg1", "long_queries")
            assert m.severity is Severity.WARN and f"pid {pid}" in m.message

            again = await a.session(pid)
            assert again is not None and again.pid == pid and again.state == "active"
            assert await a.cancel_backend(pid) is True
            with pytest.raises(asyncpg.QueryCanceledError):
                await asyncio.wait_for(task, 10)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait([task])
        after = await a.session(pid)
        assert after is not None and after.state == "idle"  # cancelled, not disconnected


async def test_terminate_backend(pg_sandbox: Any) -> None:
    ref = cluster_ref(pg_sandbox)
    async with adapters(ref, "pg1") as (a,):
        conn = await asyncpg.connect(pg_sandbox.dsn("pg1"), timeout=10, server_settings={"application_name": TEST_APP})
        try:
            pid = conn.get_server_pid()
            assert await a.terminate_backend(pid) is True

            async def gone() -> bool:
                return await a.session(pid) is None

            await wait_until(gone, f"backend {pid} to exit")
            # The terminated session is unusable; which error says so depends on when asyncpg reads
            # the server's FATAL (InternalClientError: it arrived while the client's state expected none).
            with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.AdminShutdownError, asyncpg.InterfaceError,
                                asyncpg.InternalClientError)):
                await conn.fetchval("SELECT 1")
            assert await a.cancel_backend(pid) is False  # no such backend any more (the server warns, returns false)
        finally:
            conn.terminate()


async def test_blocked_session_names_its_blocker(pg_sandbox: Any) -> None:
    ref = cluster_ref(pg_sandbox)
    table = "dbops_it_lock"
    await pg_sandbox.fetch("pg1", f"CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY, v int)")
    try:
        await pg_sandbox.fetch("pg1", f"INSERT INTO {table} VALUES (1, 0) ON CONFLICT (id) DO NOTHING")
        async with adapters(ref, "pg1") as (a,), connection(pg_sandbox) as holder, connection(pg_sandbox) as waiter:
            tx = holder.transaction()
            await tx.start()
            waiting: asyncio.Task[Any] | None = None
            try:
                await holder.fetch(f"SELECT * FROM {table} WHERE id = 1 FOR UPDATE")
                waiting = asyncio.create_task(waiter.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1"))

                async def blocked() -> Any:
                    d = await a.collect()
                    s = next((s for s in d.sessions if s.pid == waiter.get_server_pid()), None)
                    return d if s is not None and s.blocked_by else None

                d = await wait_until(blocked, "the UPDATE to wait on the row lock")
                by_pid = {s.pid: s for s in d.sessions}
                b = by_pid[waiter.get_server_pid()]
                assert b.blocked_by == (holder.get_server_pid(),)
                assert b.wait_event_type == "Lock" and b.state == "active"
                assert by_pid[holder.get_server_pid()].blocked_by == ()  # not waiting on a lock
            finally:
                await tx.rollback()
                if waiting is not None:
                    await asyncio.wait_for(waiting, 10)
    finally:
        await pg_sandbox.fetch("pg1", f"DROP TABLE IF EXISTS {table}")


# ---------------------------------------------------------------------------------------------
# PgBouncer


async def test_pgbouncer_pools_are_read(pg_sandbox: Any) -> None:
    ref = cluster_ref(pg_sandbox)
    assert ref.cluster.pgbouncer is not None
    # A client through PgBouncer (transaction pooling: no named prepared statements).
    client = await asyncpg.connect(pg_sandbox.dsn("pgbouncer"), timeout=10, statement_cache_size=0)
    try:
        assert await client.fetchval("SELECT 1") == 1
        async with adapters(ref, "pg1", "pg2") as (pg1, pg2):
            assert pg1.collects_pgbouncer and not pg2.collects_pgbouncer
            d = await pg1.collect()
            assert (await pg2.collect()).pgbouncer is None
    finally:
        await client.close()
    pb = d.pgbouncer
    assert pb is not None and pb.error is None, pb
    pool = next(p for p in pb.pools if p.database == "postgres" and p.user == "postgres")
    assert pool.cl_active >= 1 and pool.cl_waiting == 0
    assert pool.pool_size == 10 and pool.pool_mode == "transaction"
    assert pool.maxwait_seconds >= 0
    assert all(p.database != "pgbouncer" for p in pb.pools)  # the admin console (dbops itself) is left out
    stats = {s[0]: s for s in pb.stats}
    assert stats["postgres"][1] >= 1 and stats["postgres"][2] >= 1


async def test_pgbouncer_failure_does_not_fail_the_poll(pg_sandbox: Any) -> None:
    ref = cluster_ref(pg_sandbox)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ref = with_cluster(ref, pgbouncer=dataclasses.replace(ref.cluster.pgbouncer, **{"port": port}))
    async with adapters(ref, "pg1") as (a,):
        d = await a.collect()
    assert not d.in_recovery
    assert d.pgbouncer is not None and d.pgbouncer.pools == ()
    assert d.pgbouncer.error == f"PgBouncer refused the connection at 127.0.0.1:{port}"

    bad = cluster_ref(pg_sandbox)
    bad = with_cluster(bad, pgbouncer=dataclasses.replace(bad.cluster.pgbouncer, **{"password": SecretRef(value="wrong-pw")}))
    async with adapters(bad, "pg1") as (a,):
        d = await a.collect()
    assert d.pgbouncer is not None and d.pgbouncer.error is not None
    assert "rejected user" in d.pgbouncer.error and "wrong-pw" not in d.pgbouncer.error


# ---------------------------------------------------------------------------------------------
# Faults


async def test_stopped_member_is_down(pg_sandbox: Any) -> None:
    await ready(pg_sandbox)
    ref = cluster_ref(pg_sandbox)
    port = pg_sandbox.port("pg3")
    async with adapters(ref, "pg3") as (a,):
        await a.collect()  # connected
        await asyncio.to_thread(pg_sandbox.stop_member, "pg3")
        try:
            with pytest.raises(Exception) as ei:
                await a.collect()
            reach, message = a.classify(ei.value)
            assert reach is Reachability.DOWN, message
            # the next poll reconnects, and is refused
            with pytest.raises(Exception) as ei:
                await a.collect()
            assert a.classify(ei.value) == (Reachability.DOWN, f"connection refused at 127.0.0.1:{port}")
        finally:
            await asyncio.to_thread(pg_sandbox.start_member, "pg3")
            await asyncio.to_thread(pg_sandbox.wait_streaming, ("pg3",))
        d = await a.collect()  # and recovers once the server is back
        assert d.in_recovery


async def test_wrong_password_is_auth(pg_sandbox: Any) -> None:
    ref = with_cluster(cluster_ref(pg_sandbox), password=SecretRef(value="definitely-wrong"))
    async with adapters(ref, "pg1") as (a,):
        with pytest.raises(Exception) as ei:
            await a.collect()
        reach, message = a.classify(ei.value)
    assert reach is Reachability.AUTH, message
    assert message.startswith(f"127.0.0.1:{pg_sandbox.port('pg1')} rejected user postgres: password authentication failed")
    assert "definitely-wrong" not in message


async def test_tls_required_but_server_has_none(pg_sandbox: Any) -> None:
    (ssl_on,) = await pg_sandbox.fetch("pg1", "SELECT setting FROM pg_settings WHERE name = 'ssl'")
    if ssl_on["setting"] == "on":
        pytest.fail("the sandbox now serves TLS: this test needs a server without it")
    ref = cluster_ref(pg_sandbox)
    ref = with_cluster(ref, tls=dataclasses.replace(ref.cluster.tls, **{"mode": "require"}))
    async with adapters(ref, "pg1") as (a,):
        with pytest.raises(Exception) as ei:
            await a.collect()
        assert a.classify(ei.value)[0] is Reachability.TLS

    ref = with_cluster(ref, tls=dataclasses.replace(ref.cluster.tls, **{"mode": "verify-full", "ca_file": "/nonexistent/ca.pem"}))
    async with adapters(ref, "pg1") as (a,):
        with pytest.raises(Exception) as ei:
            await a.collect()
        assert a.classify(ei.value) == (Reachability.TLS, "tls.ca_file /nonexistent/ca.pem does not exist")


async def test_blackholed_port_times_out() -> None:
    release = asyncio.Event()
    writers = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await release.wait()  # accept, then never answer

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        ref = parse(CLASSIFY_CONFIG).clusters()[0]
        ref = with_cluster(
            ref,
            password=SecretRef(value="x"),
            timeout=0.5,
            members=[dataclasses.replace(ref.cluster.members[0], **{"host": "127.0.0.1", "port": port})],
        )
        async with adapters(ref, "db1") as (a,):
            with pytest.raises((asyncio.TimeoutError, TimeoutError)) as ei:
                await asyncio.wait_for(a.collect(), timeout=2.0)
            assert a.classify(ei.value) == (Reachability.TIMEOUT, f"no answer from 127.0.0.1:{port} within 0.5s")
        assert writers, "the adapter never connected to the blackhole"
    finally:
        release.set()
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------------------------------------
# Catch-up trend from the hub's history, on real polls


async def test_delayed_replica_falls_behind_then_catches_up_with_an_eta(pg_sandbox: Any, tmp_path: Any) -> None:
    """pg3 applies each commit only APPLY_DELAY s after it was made (recovery_min_apply_delay)
    while pg1 writes steadily for as long: its lag grows (falling behind); when the writes stop
    it shrinks at the rate it was written (catching up, with an ETA); then it is caught up.
    The hub polls the real servers; the trend is judged from its kept history. `dbops check
    --json --refreshes` during the writes names the trend for pg3 too."""
    import json
    import os

    from dbops.engines.postgres.catchup import Trend, from_history
    from dbops.poller import PollerHub

    # Long enough for `dbops check --refreshes 60` (about 30 s, started with the writes) to end
    # while the lag still grows.
    apply_delay = 45
    await ready(pg_sandbox)
    await settled(pg_sandbox)
    text = pg_sandbox.config_path.read_text()
    assert "refresh_interval = 2.0" in text
    config = tmp_path / "catchup.toml"
    config.write_text(text.replace("refresh_interval = 2.0", "refresh_interval = 0.5", 1))
    hub = PollerHub(load(config))
    key = cluster_ref(pg_sandbox).key
    seen: list[tuple[Trend, str]] = []  # each trend judged on the way, once in a row

    async def trend(want: Trend, need_eta: bool = False, attempts: int = 600) -> Any:
        async def check() -> Any:
            c = from_history(hub.history(key, "pg3"))
            if not seen or seen[-1][1] != c.message:
                seen.append((c.trend, c.message))
            return c if c.trend is want and (c.eta_seconds is not None or not need_eta) else None

        return await wait_until(check, f"pg3 {want.value} (seen: {seen[-6:]})", attempts=attempts, delay=0.2)

    writing = True

    async def writer() -> None:
        # about 1.3 MiB/s of WAL, each message its own transaction (a commit for the delay to hold)
        async with connection(pg_sandbox) as conn:
            while writing:
                await conn.execute("SELECT pg_logical_emit_message(true, 'dbops-it', repeat('x', 131072))")
                await asyncio.sleep(0.1)

    def run_check() -> subprocess.CompletedProcess[str]:
        # 60 refreshes (about 30 s of the 45 s of writes): the trend needs 10 s after any change of
        # pace, and under load the lag's first seconds can turn once, late (CI: with 25 refreshes
        # 9.1 s were left after it, with 40 9.2 s)
        return subprocess.run(
            [sys.executable, "-m", "dbops.cli", "--config", str(config), "check", "--json", "--refreshes", "60",
             "--no-backups", "--no-platform"],
            capture_output=True, text=True, timeout=120, env={**os.environ},
        )

    hub.start()
    task = None
    try:
        await wait_until(lambda: asyncio.sleep(0, result=len(hub.history(key, "pg3")) >= 3), "the hub's first refreshes")
        assert from_history(hub.history(key, "pg3")).trend is Trend.CAUGHT_UP
        await pg_sandbox.fetch("pg3", f"ALTER SYSTEM SET recovery_min_apply_delay = '{apply_delay}s'")
        await pg_sandbox.fetch("pg3", "SELECT pg_reload_conf()")
        task = asyncio.create_task(writer())
        started = time.monotonic()
        checked = asyncio.create_task(asyncio.to_thread(run_check))
        behind = await trend(Trend.FALLING_BEHIND)
        assert behind.rate is not None and behind.rate > 0 and behind.eta_seconds is None
        assert behind.message.startswith("falling behind at ") and "refreshes)" in behind.message, behind.message

        r = await checked
        report = json.loads(r.stdout)
        members = {m["name"]: m for m in report["clusters"][0]["members"]}
        assert members["pg1"]["catchup"] is None
        assert members["pg3"]["catchup"]["trend"] == "falling_behind", members["pg3"]["catchup"]
        assert members["pg3"]["catchup"]["points"] >= 5 and members["pg3"]["catchup"]["rate_bytes_per_second"] > 0
        assert members["pg2"]["catchup"]["trend"] == "caught_up", members["pg2"]["catchup"]

        # keep writing until the first delayed commit is due (the lag's peak), then stop
        await asyncio.sleep(max(0.0, apply_delay - (time.monotonic() - started)))
        writing = False
        await task
        catching = await trend(Trend.CATCHING_UP, need_eta=True)
        assert catching.rate is not None and catching.rate < 0
        assert catching.eta_seconds == pytest.approx(catching.lag_bytes / -catching.rate)
        assert ", ETA " in catching.message and "refreshes)" in catching.message, catching.message
        # judged from after the turn only: never more than the window since it
        assert catching.window_seconds <= 60
        await trend(Trend.CAUGHT_UP)
        # never caught up between falling behind and catching up: the ETA came from a replica
        # really working off its backlog
        trends = [t for t, _ in seen]
        between = trends[trends.index(Trend.FALLING_BEHIND): trends.index(Trend.CATCHING_UP)]
        assert Trend.CAUGHT_UP not in between, seen
    finally:
        writing = False
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        hub.stop()
        await pg_sandbox.fetch("pg3", "ALTER SYSTEM RESET recovery_min_apply_delay")
        await pg_sandbox.fetch("pg3", "SELECT pg_reload_conf()")
    await settled(pg_sandbox)
