"""Severity rules for PostgreSQL (dbops.engines.postgres.assess), on hand-built snapshots.

Thresholds are the product brief's defaults unless a test overrides them; every rule is
checked at its boundary (equal is fine, one past is not).
"""

from __future__ import annotations

import dataclasses

import pytest

from dbops.config import parse
from dbops.engines.postgres.adapter import WrittenWal, bound_standby_lag
from dbops.engines.postgres.assess import assess_cluster, human_count, update_baseline
from dbops.engines.postgres.data import (
    Archiver,
    ConnectionLimit,
    HorizonHolder,
    PgBouncerData,
    PgMemberData,
    PoolRow,
    ReplicaRow,
    Session,
    Slot,
    VacuumProgress,
    WalReceiver,
)
from dbops.engines.postgres.queries import CAUGHT_UP_AT, REPLAY_WAITING_FOR_WAL
from dbops.engines.postgres.switchover import int_to_lsn
from dbops.model import Reachability, Severity, Snapshot, human_seconds

MiB = 1024 * 1024
GiB = 1024 * MiB
NOW = 1_800_000_000.0

CONFIG = """
[environments.staging]
sandbox = true
[environments.staging.clusters.main]
engine = "postgres"
password = { value = "pw" }

[[environments.staging.clusters.main.members]]
name = "pg1"
host = "10.0.0.1"
role = "primary"

[[environments.staging.clusters.main.members]]
name = "pg2"
host = "10.0.0.2"
role = "replica"
application_name = "walrcv_pg2"

[[environments.staging.clusters.main.members]]
name = "pg3"
host = "10.0.0.3"
role = "replica"
"""


@pytest.fixture
def ref():
    return parse(CONFIG).clusters()[0]


def with_thresholds(ref, **kw):
    cluster = dataclasses.replace(ref.cluster, thresholds=dataclasses.replace(ref.cluster.thresholds, **kw))
    return dataclasses.replace(ref, cluster=cluster)


def archiver(**kw):
    base = dict(
        archived_count=10,
        failed_count=0,
        last_archived_wal="000000010000000000000009",
        last_archived_age_seconds=30.0,
        last_failed_wal=None,
        last_failed_age_seconds=None,
        archive_mode="on",
    )
    base.update(kw)
    return Archiver(**base)


def replica_row(app, replay_bytes=0, replay_seconds=None, **kw):
    base = dict(
        pid=100,
        application_name=app,
        client_addr="10.0.0.2",
        state="streaming",
        sync_state="async",
        sent_lsn="0/5000000",
        replay_lsn="0/5000000",
        write_lag_bytes=0,
        flush_lag_bytes=0,
        replay_lag_bytes=replay_bytes,
        write_lag_seconds=None,
        flush_lag_seconds=None,
        replay_lag_seconds=replay_seconds,
    )
    base.update(kw)
    return ReplicaRow(**base)


def primary(replicas=None, **kw):
    base = dict(
        server_version="15.18 (Debian 15.18-0+deb12u1)",
        in_recovery=False,
        timeline=1,
        current_lsn="0/5000000",
        max_connections=100,
        connections_by_state=(("active", 1), ("idle", 4)),
        connections_total=5,
        replicas=tuple(replicas if replicas is not None else (replica_row("walrcv_pg2"), replica_row("pg3"))),
        cache_hit_ratio=99.9,
        max_xid_age=1000,
        max_xid_age_database="app",
        archiver=archiver(),
    )
    base.update(kw)
    return PgMemberData(**base)


def receiver(**kw):
    base = dict(
        status="streaming",
        sender_host="10.0.0.1",
        sender_port=5432,
        slot_name=None,
        received_lsn="0/5000000",
        replayed_lsn="0/5000000",
        replay_lag_bytes=0,
        replay_lag_seconds=0.0,
        replay_paused=False,
        last_msg_age_seconds=0.5,
    )
    base.update(kw)
    return WalReceiver(**base)


def standby(**kw):
    wr = kw.pop("wal_receiver", receiver())
    return primary(in_recovery=True, replicas=(), wal_receiver=wr, **kw)


def snap(member, data=None, reach=Reachability.UP, error=None, last_good=None, last_good_at=None):
    return Snapshot(
        environment="staging",
        cluster="main",
        member=member,
        engine="postgres",
        reachability=reach,
        taken_at=NOW,
        data=data,
        error=error,
        last_good=last_good if data is None else None,
        last_good_at=last_good_at if data is None else NOW,
    )


def healthy(**overrides):
    snaps = {"pg1": snap("pg1", primary()), "pg2": snap("pg2", standby()), "pg3": snap("pg3", standby())}
    snaps.update(overrides)
    return snaps


def session(pid=200, state="active", query_age=1.0, state_age=1.0, **kw):
    base = dict(
        pid=pid,
        usename="app",
        application_name="api",
        client_addr="10.1.1.1",
        database="app",
        state=state,
        wait_event_type=None,
        wait_event=None,
        query="select 1",
        query_age_seconds=query_age,
        xact_age_seconds=query_age,
        state_age_seconds=state_age,
    )
    base.update(kw)
    return Session(**base)


def member(health, name):
    return next(m for m in health.members if m.name == name)


def metric(health, member_name, metric_name):
    found = [m for m in member(health, member_name).metrics if m.name == metric_name]
    assert found, f"{member_name} has no metric {metric_name}: {[m.name for m in member(health, member_name).metrics]}"
    return found[0]


# ---------------------------------------------------------------------------------------------


def test_healthy_cluster_is_ok(ref):
    h = assess_cluster(ref, healthy(), now=NOW)
    assert h.severity is Severity.OK, h.problems
    assert h.problems == []
    assert [m.role for m in h.members] == ["primary", "replica", "replica"]
    assert member(h, "pg1").lag_bytes is None and member(h, "pg1").lag_seconds is None
    assert member(h, "pg2").lag_bytes == 0 and member(h, "pg2").lag_seconds == 0.0
    assert h.metrics[0].name == "primary" and h.metrics[0].message == "primary pg1"


def test_unreachable_member_is_crit_with_last_seen(ref):
    down = snap(
        "pg2",
        reach=Reachability.DOWN,
        error="connection refused at 10.0.0.2:5432",
        last_good=standby(),
        last_good_at=NOW - 42,
    )
    h = assess_cluster(ref, healthy(pg2=down), now=NOW)
    m = member(h, "pg2")
    assert m.severity is Severity.CRIT
    assert m.role == "replica"  # from the last good data
    assert m.metrics[0].message == "DOWN: connection refused at 10.0.0.2:5432 (last seen 42s ago)"
    assert h.severity is Severity.CRIT
    assert "pg2: DOWN: connection refused at 10.0.0.2:5432 (last seen 42s ago)" in h.problems


def test_never_reached_member_uses_role_hint(ref):
    t = snap("pg3", reach=Reachability.TIMEOUT, error="no answer from 10.0.0.3:5432 within 3s")
    h = assess_cluster(ref, healthy(pg3=t), now=NOW)
    m = member(h, "pg3")
    assert m.severity is Severity.CRIT and m.role == "replica"
    assert m.metrics[0].message == "TIMEOUT: no answer from 10.0.0.3:5432 within 3s (never reached)"


@pytest.mark.parametrize("reach", [Reachability.AUTH, Reachability.TLS, Reachability.ERROR])
def test_every_failure_kind_is_crit(ref, reach):
    h = assess_cluster(ref, healthy(pg3=snap("pg3", reach=reach, error="x")), now=NOW)
    assert member(h, "pg3").severity is Severity.CRIT
    assert member(h, "pg3").metrics[0].message.startswith(f"{reach.value}: x")


def test_pending_member_is_unknown(ref):
    pending = snap("pg3", reach=Reachability.PENDING)
    h = assess_cluster(ref, healthy(pg3=pending), now=NOW)
    assert member(h, "pg3").severity is Severity.UNKNOWN
    assert h.severity is Severity.UNKNOWN  # UNKNOWN outranks OK


def test_missing_snapshot_counts_as_pending(ref):
    snaps = healthy()
    del snaps["pg3"]
    h = assess_cluster(ref, snaps, now=NOW)
    assert [m.name for m in h.members] == ["pg1", "pg2", "pg3"]
    assert member(h, "pg3").severity is Severity.UNKNOWN


def test_all_pending_waits_for_first_poll(ref):
    h = assess_cluster(ref, {}, now=NOW)
    assert h.severity is Severity.UNKNOWN
    assert h.metrics[0].message == "waiting for the first poll"


# -- replication ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lag, severity",
    [(16 * MiB, Severity.OK), (16 * MiB + 1, Severity.WARN), (100 * MiB, Severity.WARN), (100 * MiB + 1, Severity.CRIT)],
)
def test_replica_lag_bytes_thresholds(ref, lag, severity):
    h = assess_cluster(ref, healthy(pg3=snap("pg3", standby(wal_receiver=receiver(replay_lag_bytes=lag)))), now=NOW)
    m = metric(h, "pg3", "lag_bytes")
    assert m.severity is severity
    assert member(h, "pg3").lag_bytes == lag


def test_replica_lag_message(ref):
    h = assess_cluster(
        ref, healthy(pg3=snap("pg3", standby(wal_receiver=receiver(replay_lag_bytes=120 * MiB)))), now=NOW
    )
    assert metric(h, "pg3", "lag_bytes").message == "replay lag 120.0 MiB > crit 100.0 MiB"


@pytest.mark.parametrize(
    "lag, severity", [(10.0, Severity.OK), (10.5, Severity.WARN), (60.0, Severity.WARN), (60.5, Severity.CRIT)]
)
def test_replica_lag_seconds_thresholds(ref, lag, severity):
    p = primary(replicas=[replica_row("walrcv_pg2"), replica_row("pg3", replay_bytes=1000, replay_seconds=lag)])
    h = assess_cluster(ref, healthy(pg1=snap("pg1", p)), now=NOW)
    assert metric(h, "pg3", "lag_seconds").severity is severity
    assert member(h, "pg3").lag_seconds == lag


def test_replica_lag_bytes_is_worst_of_own_and_primary_view(ref):
    # pg2 reports itself caught up, but the primary's row for its application_name says 50 MiB / 70 s
    p = primary(replicas=[replica_row("walrcv_pg2", replay_bytes=50 * MiB, replay_seconds=70.0), replica_row("pg3")])
    h = assess_cluster(ref, healthy(pg1=snap("pg1", p)), now=NOW)
    pg2 = member(h, "pg2")
    assert pg2.lag_bytes == 50 * MiB and pg2.lag_seconds == 70.0
    assert metric(h, "pg2", "lag_bytes").severity is Severity.WARN
    assert metric(h, "pg2", "lag_seconds").severity is Severity.CRIT
    # pg3 is matched by member name (no application_name configured) and stays fine
    assert member(h, "pg3").lag_bytes == 0
    # and the standby's own byte view counts when it is the worse one
    s = snap("pg3", standby(wal_receiver=receiver(replay_lag_bytes=30 * MiB)))
    assert member(assess_cluster(ref, healthy(pg1=snap("pg1", p), pg3=s), now=NOW), "pg3").lag_bytes == 30 * MiB


def test_lag_seconds_comes_from_the_primary_not_the_standbys_last_commit(ref):
    # One long transaction on the primary: WAL flows, no commit is replayed, so the standby's
    # now() - pg_last_xact_replay_timestamp() says 700 s while the walsender measures 0.2 s.
    long_tx = snap("pg3", standby(wal_receiver=receiver(replay_lag_bytes=8192, replay_lag_seconds=700.0)))
    p = primary(replicas=[replica_row("walrcv_pg2"), replica_row("pg3", replay_bytes=8192, replay_seconds=0.2)])
    h = assess_cluster(ref, healthy(pg1=snap("pg1", p), pg3=long_tx), now=NOW)
    assert member(h, "pg3").lag_seconds == 0.2
    assert metric(h, "pg3", "lag_seconds").severity is Severity.OK
    assert member(h, "pg3").severity is Severity.OK


def test_null_replay_lag_on_the_primary_means_caught_up(ref):
    # The walsender clears replay_lag once the standby has replayed all it was sent (idle).
    p = primary(replicas=[replica_row("walrcv_pg2", replay_seconds=None), replica_row("pg3", replay_seconds=None)])
    own = snap("pg3", standby(wal_receiver=receiver(replay_lag_seconds=None)))
    h = assess_cluster(ref, healthy(pg1=snap("pg1", p), pg3=own), now=NOW)
    assert member(h, "pg2").lag_seconds == 0.0 and member(h, "pg3").lag_seconds == 0.0
    assert metric(h, "pg3", "lag_seconds").severity is Severity.OK


def test_lag_seconds_falls_back_to_the_standby_without_a_primary_view(ref):
    stuck = snap("pg3", standby(wal_receiver=receiver(replay_lag_bytes=MiB, replay_lag_seconds=75.0)))
    # the primary is down
    down = snap("pg1", reach=Reachability.DOWN, error="connection refused", last_good=primary(), last_good_at=NOW - 5)
    h = assess_cluster(ref, healthy(pg1=down, pg3=stuck), now=NOW)
    assert member(h, "pg3").lag_seconds == 75.0
    assert metric(h, "pg3", "lag_seconds").severity is Severity.CRIT
    # the primary is up but has no row for pg3 (pg3 is not connected to it)
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(replicas=[replica_row("walrcv_pg2")])), pg3=stuck), now=NOW)
    assert member(h, "pg3").lag_seconds == 75.0
    # the primary has not been polled yet
    h = assess_cluster(ref, healthy(pg1=snap("pg1", reach=Reachability.PENDING), pg3=stuck), now=NOW)
    assert member(h, "pg3").lag_seconds == 75.0


def waiting_for_wal(data, waiting=True):
    return dataclasses.replace(data, extra={REPLAY_WAITING_FOR_WAL: waiting})


def test_standby_waiting_for_wal_is_behind_by_its_flush_lag_only(ref):
    # A transaction wrote WAL and paused: the primary wrote out WAL up to a page boundary in the
    # middle of a record. pg3 replayed everything before that record and waits for the rest; the
    # walsender counts the record as unreplayed and replay_lag grows (12 s), flush_lag does not.
    row = replica_row("pg3", replay_bytes=3000, replay_seconds=12.0, flush_lag_seconds=0.0005)
    p = primary(replicas=[replica_row("walrcv_pg2"), row])
    pg3 = snap("pg3", waiting_for_wal(standby(wal_receiver=receiver(replay_lag_bytes=3000, replay_lag_seconds=0.0))))
    h = assess_cluster(ref, healthy(pg1=snap("pg1", p), pg3=pg3), now=NOW)
    assert member(h, "pg3").lag_seconds == 0.0005
    assert metric(h, "pg3", "lag_seconds").severity is Severity.OK
    assert member(h, "pg3").lag_bytes == 3000  # bytes still as the primary and the standby see them
    # a flush lag of its own (WAL slow to arrive) still counts, NULL is none
    slow = dataclasses.replace(row, flush_lag_seconds=42.0)
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(replicas=[slow])), pg3=pg3), now=NOW)
    assert member(h, "pg3").lag_seconds == 42.0 and metric(h, "pg3", "lag_seconds").severity is Severity.WARN
    idle = dataclasses.replace(row, flush_lag_seconds=None)
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(replicas=[idle])), pg3=pg3), now=NOW)
    assert member(h, "pg3").lag_seconds == 0.0


def test_standby_not_waiting_for_wal_keeps_the_replay_lag(ref):
    # paused (or blocked by a conflict): the startup process is not waiting for WAL
    row = replica_row("pg3", replay_bytes=3000, replay_seconds=12.0, flush_lag_seconds=0.0005)
    for data in (standby(), waiting_for_wal(standby(), waiting=False)):
        h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(replicas=[row])), pg3=snap("pg3", data)), now=NOW)
        assert member(h, "pg3").lag_seconds == 12.0
        assert metric(h, "pg3", "lag_seconds").severity is Severity.WARN


def test_bound_standby_lag_counts_waiting_for_wal_as_caught_up():
    data = waiting_for_wal(standby(wal_receiver=receiver(replay_lag_bytes=3000, replay_lag_seconds=0.0)))
    out, at = bound_standby_lag(data, 100.0, now=200.0)
    assert at == 200.0 and out.wal_receiver == data.wal_receiver and out.extra[CAUGHT_UP_AT] == 200.0
    busy = waiting_for_wal(standby(wal_receiver=receiver(replay_lag_bytes=3000, replay_lag_seconds=900.0)), waiting=False)
    out, at = bound_standby_lag(busy, 200.0, now=203.0)
    assert out.wal_receiver.replay_lag_seconds == 3.0 and at == 200.0 and out.extra[CAUGHT_UP_AT] == 200.0
    # Behind since before this adapter first saw it: not known, so nothing is bounded by it.
    out, at = bound_standby_lag(busy, None, now=203.0)
    assert at is None and CAUGHT_UP_AT not in out.extra and out.wal_receiver.replay_lag_seconds == 900.0


def test_the_primarys_replay_lag_is_bounded_by_how_long_the_standby_has_been_behind(ref):
    # pg3 was waiting for WAL (the rest of a record left unfinished by a 12 s pause) at the last
    # refresh, 0.5 s ago; now the record is whole and replayed, and for one status reply the
    # walsender times that replay from when it wrote the record's first page: 12 s. pg3 cannot be
    # more than 0.5 s (+ the flush lag, + the polls' skew) behind: OK, not a WARN at 3 a.m.
    row = replica_row("pg3", replay_bytes=3000, replay_seconds=12.0, flush_lag_seconds=0.02)
    replaying = waiting_for_wal(standby(wal_receiver=receiver(replay_lag_bytes=3000, replay_lag_seconds=0.3)), waiting=False)
    pg3, _ = bound_standby_lag(replaying, NOW - 0.5, now=NOW)
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(replicas=[row])), pg3=snap("pg3", pg3)), now=NOW)
    assert member(h, "pg3").lag_seconds == 0.02 + 0.5 + 1.0
    assert metric(h, "pg3", "lag_seconds").severity is Severity.OK
    # Replay paused 30 s ago (not caught up since): the bound is no lower than the truth.
    paused, _ = bound_standby_lag(replaying, NOW - 30.0, now=NOW)
    row = replica_row("pg3", replay_bytes=30 * MiB, replay_seconds=29.0, flush_lag_seconds=0.02)
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(replicas=[row])), pg3=snap("pg3", paused)), now=NOW)
    assert member(h, "pg3").lag_seconds == 29.0 and metric(h, "pg3", "lag_seconds").severity is Severity.WARN
    # The standby's own answer is 14 s old (its poll is slow: it is struggling) and said it was
    # caught up then; the primary's row is fresh and says 12 s. The bound runs to the judgement's
    # time, not to the standby's answer: the lag is not hidden.
    stale, _ = bound_standby_lag(replaying, NOW - 14.0, now=NOW - 14.0)
    row = replica_row("pg3", replay_bytes=30 * MiB, replay_seconds=12.0, flush_lag_seconds=0.02)
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(replicas=[row])), pg3=snap("pg3", stale)), now=NOW)
    assert member(h, "pg3").lag_seconds == 12.0 and metric(h, "pg3", "lag_seconds").severity is Severity.WARN


def test_the_primarys_replay_lag_is_bounded_by_when_it_had_written_what_the_standby_replayed(ref):
    # The case above seen by a dbops that has just started watching pg3 (no caught-up time for
    # it): the primary's adapter read the position pg3 has now replayed 1.5 s ago, so whatever pg3
    # has yet to replay was written less than 1.5 s ago, whatever the lag tracker says for a reply.
    replaying = waiting_for_wal(standby(wal_receiver=receiver(replay_lag_bytes=3000, replay_lag_seconds=13.0)), waiting=False)
    pg3, _ = bound_standby_lag(replaying, None, now=NOW)
    row = replica_row("pg3", replay_bytes=3000, replay_seconds=11.0, replayed_all_written_by=NOW - 1.5)
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(replicas=[row])), pg3=snap("pg3", pg3)), now=NOW)
    assert member(h, "pg3").lag_seconds == 1.5 and metric(h, "pg3", "lag_seconds").severity is Severity.OK
    # Replay paused: the last position it replayed was the primary's 40 s ago; its 29 s stands.
    row = replica_row("pg3", replay_bytes=30 * MiB, replay_seconds=29.0, replayed_all_written_by=NOW - 40.0)
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(replicas=[row])), pg3=snap("pg3", pg3)), now=NOW)
    assert member(h, "pg3").lag_seconds == 29.0 and metric(h, "pg3", "lag_seconds").severity is Severity.WARN
    # No sample low enough (behind since before dbops watched the primary): the tracker's figure.
    row = replica_row("pg3", replay_bytes=30 * MiB, replay_seconds=11.0, replayed_all_written_by=None)
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(replicas=[row])), pg3=snap("pg3", pg3)), now=NOW)
    assert member(h, "pg3").lag_seconds == 11.0 and metric(h, "pg3", "lag_seconds").severity is Severity.WARN


def test_a_standby_read_after_the_primarys_row_is_matched_against_the_positions_written_next(ref):
    # The primary's row was read while pg3's replay stood at the start of a record pg1 had not
    # written out whole (idle in a transaction for 12 s): replay_lsn is below every position
    # dbops saw pg1 write, and the lag tracker interpolates toward the position it timed when
    # the pause began: 11.8 s. pg3, read a moment later by a dbops that has just started
    # watching it, had received the rest and replayed past the position pg1 had written by its
    # poll 0.9 s ago: that is as far behind as it can be.
    start = 0x5000000
    row = replica_row("pg3", replay_bytes=3000, replay_seconds=11.8, replay_lsn=int_to_lsn(start - 200),
                      replayed_all_written_by=None, written_after=((start, NOW - 0.9), (start + 8 * MiB, NOW - 0.3)))
    pg1 = snap("pg1", primary(replicas=[row], current_lsn=int_to_lsn(start + 8 * MiB)))
    later = waiting_for_wal(standby(current_lsn=int_to_lsn(start + 100), wal_receiver=receiver(replay_lag_bytes=3000, replay_lag_seconds=12.6)), waiting=False)
    pg3, _ = bound_standby_lag(later, None, now=NOW)
    h = assess_cluster(ref, healthy(pg1=pg1, pg3=snap("pg3", pg3)), now=NOW)
    assert member(h, "pg3").lag_seconds == pytest.approx(0.9) and metric(h, "pg3", "lag_seconds").severity is Severity.OK
    # pg3 read at the same position as the row (its replay really stands still): the 11.8 s stands.
    still = waiting_for_wal(standby(current_lsn=int_to_lsn(start - 200), wal_receiver=receiver(replay_lag_bytes=3000, replay_lag_seconds=12.6)), waiting=False)
    pg3, _ = bound_standby_lag(still, None, now=NOW)
    h = assess_cluster(ref, healthy(pg1=pg1, pg3=snap("pg3", pg3)), now=NOW)
    assert member(h, "pg3").lag_seconds == 11.8 and metric(h, "pg3", "lag_seconds").severity is Severity.WARN


def test_written_wal_dates_each_replica_by_the_primarys_own_positions():
    wal = WrittenWal()
    start = 0x5000000
    # A write, a 12 s pause (the position stands still: the latest poll that read it counts), more writes.
    for at, pos in [(100.0, start), (101.0, start + 8192)] + [(102.0 + i, start + 8192) for i in range(12)]:
        wal.note(pos, at)
    assert wal.replayed_all_by(start - 1) is None  # behind the oldest position seen: unknown
    assert wal.replayed_all_by(start + 100) == 100.0
    assert wal.replayed_all_by(start + 8192) == 113.0  # the pause's last poll, not its first
    rows = (replica_row("pg2", replay_lsn=int_to_lsn(start + 4096)), replica_row("pg3", replay_lsn=int_to_lsn(start + 9000)))
    data = wal.date_replicas(primary(replicas=rows, current_lsn=int_to_lsn(start + 9000)), polled_at=114.0)
    assert [r.replayed_all_written_by for r in data.replicas] == [100.0, 114.0]
    # With each row, the positions written next (what a standby read later may have passed).
    assert [r.written_after for r in data.replicas] == [((start + 8192, 113.0), (start + 9000, 114.0)), ()]
    assert wal.written_after(start - 1, count=1) == ((start, 100.0),)
    # WAL that goes back (a restore, another server at the address) and a demotion forget the past.
    wal.note(start - 4096, 120.0)
    assert wal.replayed_all_by(start + 8192) == 120.0 and wal.replayed_all_by(start - 8192) is None
    out = wal.date_replicas(standby(), polled_at=121.0)
    assert out == standby() and wal.replayed_all_by(1 << 40) is None


def test_written_wal_keeps_a_bounded_number_of_positions():
    wal = WrittenWal(kept=10)
    for i in range(25):
        wal.note(1000 + i, float(i))
    assert wal.replayed_all_by(1024) == 24.0
    assert wal.replayed_all_by(1000) is None  # dropped: the oldest are forgotten in halves
    assert wal.replayed_all_by(1015) == 15.0


def test_split_brain_lag_seconds_is_the_worst_primary_row(ref):
    a = primary(replicas=[replica_row("pg3", replay_seconds=3.0)])
    b = primary(timeline=2, replicas=[replica_row("pg3", replay_seconds=None)])
    h = assess_cluster(ref, healthy(pg1=snap("pg1", a), pg2=snap("pg2", b)), now=NOW)
    assert member(h, "pg3").lag_seconds == 3.0


def test_primary_row_matched_by_member_name_too(ref):
    p = primary(replicas=[replica_row("pg2", replay_bytes=20 * MiB), replica_row("pg3")])
    h = assess_cluster(ref, healthy(pg1=snap("pg1", p)), now=NOW)
    assert member(h, "pg2").lag_bytes == 20 * MiB


def test_own_view_used_when_primary_is_down(ref):
    down = snap("pg1", reach=Reachability.DOWN, error="connection refused", last_good=primary(), last_good_at=NOW - 5)
    s = snap("pg2", standby(wal_receiver=receiver(replay_lag_bytes=17 * MiB)))
    h = assess_cluster(ref, healthy(pg1=down, pg2=s), now=NOW)
    assert member(h, "pg2").lag_bytes == 17 * MiB


@pytest.mark.parametrize("wr", [None, receiver(status=None), receiver(status="stopping")])
def test_replica_not_streaming_is_crit(ref, wr):
    data = primary(in_recovery=True, replicas=(), wal_receiver=wr)
    h = assess_cluster(ref, healthy(pg3=snap("pg3", data)), now=NOW)
    m = metric(h, "pg3", "streaming")
    assert m.severity is Severity.CRIT
    assert m.message.startswith("not streaming")


def test_replay_paused_is_warn_and_lag_still_judged(ref):
    wr = receiver(replay_paused=True, replay_lag_bytes=200 * MiB)
    h = assess_cluster(ref, healthy(pg3=snap("pg3", standby(wal_receiver=wr))), now=NOW)
    assert metric(h, "pg3", "replay_paused").severity is Severity.WARN
    assert metric(h, "pg3", "lag_bytes").severity is Severity.CRIT
    assert member(h, "pg3").severity is Severity.CRIT


def test_no_reachable_primary_is_crit(ref):
    down = snap("pg1", reach=Reachability.DOWN, error="connection refused", last_good=primary(), last_good_at=NOW - 30)
    h = assess_cluster(ref, healthy(pg1=down), now=NOW)
    assert h.metrics[0].severity is Severity.CRIT
    assert h.metrics[0].message == "no reachable primary (pg1 was primary, last seen 30s ago)"
    assert member(h, "pg1").role == "primary"


def test_split_brain_is_crit(ref):
    promoted = snap("pg3", primary(timeline=2, replicas=()))
    h = assess_cluster(ref, healthy(pg3=promoted), now=NOW)
    assert h.severity is Severity.CRIT
    assert h.metrics[0].message == "two primaries: pg1 (timeline 1) and pg3 (timeline 2)"


def test_two_writable_primaries_are_named_with_their_timelines(ref):
    # The old primary restarted by hand after pg2's promotion: writable on its old timeline.
    old = snap("pg1", primary(timeline=3, replicas=()))
    new = snap("pg2", primary(timeline=4, replicas=()))
    h = assess_cluster(ref, healthy(pg1=old, pg2=new), now=NOW)
    assert h.severity is Severity.CRIT
    assert [(m.name, m.severity, m.message) for m in h.metrics] == [
        ("primary", Severity.CRIT, "two primaries: pg1 (timeline 3) and pg2 (timeline 4)")
    ]
    # ... and that is what the overview, the pane and `dbops check` list first.
    assert h.problems[0] == "two primaries: pg1 (timeline 3) and pg2 (timeline 4)"


def test_split_brain_lists_members_by_name_whatever_the_order(ref):
    snaps = {
        "pg3": snap("pg3", primary(timeline=5, replicas=())),
        "pg1": snap("pg1", primary(timeline=3, replicas=())),
        "pg2": snap("pg2", primary(timeline=4, replicas=())),
    }
    h = assess_cluster(ref, snaps, now=NOW)
    assert h.metrics[0].message == "three primaries: pg1 (timeline 3), pg2 (timeline 4) and pg3 (timeline 5)"
    assert h.metrics[0].severity is Severity.CRIT


def test_split_brain_with_an_unknown_timeline_still_crit(ref):
    h = assess_cluster(ref, healthy(pg2=snap("pg2", primary(timeline=None, replicas=()))), now=NOW)
    assert h.metrics[0].message == "two primaries: pg1 (timeline 1) and pg2 (timeline unknown)"


@pytest.mark.parametrize("fenced", ["pg1", "pg2"])
def test_a_fenced_read_only_primary_is_no_split_brain(ref, fenced):
    # Mid-switchover: the old primary is fenced (default_transaction_read_only = on) before the
    # candidate is promoted, so for a moment both are out of recovery.
    data = {
        "pg1": primary(timeline=3, replicas=(), read_only_fence=fenced == "pg1"),
        "pg2": primary(timeline=4, replicas=(), read_only_fence=fenced == "pg2"),
    }
    h = assess_cluster(ref, healthy(pg1=snap("pg1", data["pg1"]), pg2=snap("pg2", data["pg2"])), now=NOW)
    writable = "pg2" if fenced == "pg1" else "pg1"
    assert [(m.severity, m.message) for m in h.metrics] == [(Severity.OK, f"primary {writable} ({fenced} fenced read-only)")]
    assert h.severity is Severity.OK
    assert metric(h, fenced, "reachability").message.startswith("up, primary, fenced read-only")
    assert not any("primaries" in p for p in h.problems)


def test_one_primary_is_no_split_brain(ref):
    h = assess_cluster(ref, healthy(), now=NOW)
    assert [(m.severity, m.message) for m in h.metrics] == [(Severity.OK, "primary pg1")]
    assert h.severity is Severity.OK


def test_a_fenced_standby_is_no_primary(ref):
    # default_transaction_read_only on a standby changes nothing: one primary.
    h = assess_cluster(ref, healthy(pg2=snap("pg2", standby(read_only_fence=True))), now=NOW)
    assert [(m.severity, m.message) for m in h.metrics] == [(Severity.OK, "primary pg1")]


# -- capacity and hygiene ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "total, severity", [(80, Severity.OK), (81, Severity.WARN), (95, Severity.WARN), (96, Severity.CRIT)]
)
def test_connections_thresholds(ref, total, severity):
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(connections_total=total))), now=NOW)
    m = metric(h, "pg1", "connections")
    assert m.severity is severity
    if severity is Severity.CRIT:
        assert m.message == "connections 96/100 (96%) > crit 95%"


@pytest.mark.parametrize(
    "ratio, severity", [(99.0, Severity.OK), (98.99, Severity.WARN), (None, Severity.OK), (100.0, Severity.OK)]
)
def test_cache_hit_ratio(ref, ratio, severity):
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(cache_hit_ratio=ratio))), now=NOW)
    m = metric(h, "pg1", "cache_hit_ratio")
    assert m.severity is severity
    if ratio is None:
        assert "too few block reads" in m.message


@pytest.mark.parametrize(
    "age, severity",
    [(500_000_000, Severity.OK), (500_000_001, Severity.WARN), (1_500_000_000, Severity.WARN), (1_500_000_001, Severity.CRIT)],
)
def test_xid_age(ref, age, severity):
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(max_xid_age=age))), now=NOW)
    m = metric(h, "pg1", "xid_age")
    assert m.severity is severity
    if severity is Severity.CRIT:
        assert m.message == "oldest xid age in database app 1.50B > crit 1.50B"


def test_human_count():
    assert human_count(999) == "999"
    assert human_count(612_000_000) == "612M"
    assert human_count(1_600_000_000) == "1.60B"


@pytest.mark.parametrize(
    "slot, severity",
    [
        (Slot("old", "physical", False, "extended", 1 * GiB), Severity.OK),
        (Slot("old", "physical", False, "extended", 1 * GiB + 1), Severity.WARN),
        (Slot("busy", "physical", True, "extended", 5 * GiB), Severity.OK),  # active: its consumer is catching up
        (Slot("gone", "physical", False, "lost", None), Severity.CRIT),
        (Slot("edge", "logical", True, "unreserved", 10 * MiB, "app"), Severity.WARN),
    ],
)
def test_slots(ref, slot, severity):
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(slots=(slot,)))), now=NOW)
    metrics = [m for m in member(h, "pg1").metrics if m.name in ("slots", f"slot:{slot.slot_name}")]
    assert len(metrics) == 1
    assert metrics[0].severity is severity
    if severity is Severity.WARN and not slot.active:
        assert metrics[0].message == "inactive slot old retains 1.0 GiB > warn 1.0 GiB"


@pytest.mark.parametrize(
    "age, state, severity",
    [
        (60.0, "active", Severity.OK),
        (61.0, "active", Severity.WARN),
        (3600.0, "idle in transaction", Severity.OK),  # not a running query (judged by its own rule below)
    ],
)
def test_long_queries(ref, age, state, severity):
    sessions = (session(pid=7, state=state, query_age=age, state_age=1.0),)
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(sessions=sessions))), now=NOW)
    m = metric(h, "pg1", "long_queries")
    assert m.severity is severity
    if severity is Severity.WARN:
        assert m.message == "1 query running > 60s (longest 61s, pid 7)"


@pytest.mark.parametrize(
    "age, severity",
    [(60.0, Severity.OK), (61.0, Severity.WARN), (600.0, Severity.WARN), (601.0, Severity.CRIT)],
)
def test_idle_in_transaction(ref, age, severity):
    sessions = (
        session(pid=8, state="idle in transaction", state_age=age),
        session(pid=9, state="idle in transaction (aborted)", state_age=min(age, 61.0)),
    )
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(sessions=sessions))), now=NOW)
    m = metric(h, "pg1", "idle_in_transaction")
    assert m.severity is severity
    if severity is Severity.CRIT:
        assert m.message == "2 sessions idle in transaction > crit 10m (longest 10m, pid 8)"


# -- archiving --------------------------------------------------------------------------------


def test_archiver_failing_when_last_failure_is_newer(ref):
    a = archiver(failed_count=3, last_failed_wal="00000001000000000000000A", last_failed_age_seconds=5.0)
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(archiver=a))), now=NOW)
    m = metric(h, "pg1", "archiver")
    assert m.severity is Severity.WARN
    assert m.message == "archiving failing: last failed 00000001000000000000000A 5.0s ago (3 failures)"


def test_archiver_recovered_when_success_is_newer(ref):
    a = archiver(failed_count=3, last_failed_wal="00000001000000000000000A", last_failed_age_seconds=500.0)
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(archiver=a))), now=NOW)
    assert metric(h, "pg1", "archiver").severity is Severity.OK


def hub_assess(ref, baseline, *archivers, **thresholds):
    """What the poller hub does on every poll: update_baseline, then assess_cluster, same snapshots.
    Returns the archiver metric of pg1 after each poll and the final baseline."""
    r = with_thresholds(ref, **thresholds) if thresholds else ref
    out = []
    for a in archivers:
        snaps = healthy(pg1=snap("pg1", primary(archiver=a)))
        baseline = update_baseline(baseline, snaps)
        out.append(metric(assess_cluster(r, snaps, baseline, now=NOW), "pg1", "archiver"))
    return out, baseline


FAILED_WAL = "00000001000000000000000A"


def test_archiver_baseline_is_taken_on_the_first_look(ref):
    baseline = update_baseline(None, {"pg1": snap("pg1", primary(archiver=archiver(failed_count=2)))})
    assert baseline["pg1"] == {"archiver_failed_count": 2}
    # counters that go backwards (pg_stat_reset_shared('archiver')) start a new baseline
    assert update_baseline(baseline, {"pg1": snap("pg1", primary(archiver=archiver(failed_count=0)))})["pg1"] == {
        "archiver_failed_count": 0
    }


def test_archiver_warn_clears_once_archiving_is_healthy_again(ref):
    healthy_before = archiver(failed_count=2)
    failing = archiver(failed_count=5, last_failed_wal=FAILED_WAL, last_failed_age_seconds=2.0, last_archived_age_seconds=90.0)
    # the retry archived the segment 1 s ago: the stateless rule is satisfied, the episode is not over
    just_recovered = archiver(failed_count=5, last_failed_wal=FAILED_WAL, last_failed_age_seconds=4.0, last_archived_age_seconds=1.0)
    quiet = archiver(failed_count=5, last_failed_wal=FAILED_WAL, last_failed_age_seconds=301.0, last_archived_age_seconds=20.0)
    later = archiver(failed_count=5, last_failed_wal=FAILED_WAL, last_failed_age_seconds=900.0, last_archived_age_seconds=20.0)
    metrics, baseline = hub_assess(ref, None, healthy_before, failing, just_recovered, quiet, later)
    assert [m.severity for m in metrics] == [Severity.OK, Severity.WARN, Severity.WARN, Severity.OK, Severity.OK]
    assert metrics[1].message.startswith(f"archiving failing: last failed {FAILED_WAL} 2.0s ago")
    assert metrics[2].message == f"archiving flaky: 3 failures since it was last healthy (last failed {FAILED_WAL} 4.0s ago)"
    assert metrics[3].message == "last archived 000000010000000000000009 20s ago"
    assert baseline["pg1"] == {"archiver_failed_count": 5}


def test_archiver_flapping_warns_while_it_lasts(ref):
    # Every failure is retried successfully before the next poll: the stateless rule never fires.
    def flap(count, failed_age):
        return archiver(failed_count=count, last_failed_wal=FAILED_WAL, last_failed_age_seconds=failed_age,
                        last_archived_age_seconds=0.5)

    metrics, baseline = hub_assess(ref, None, archiver(failed_count=0), flap(1, 1.0), flap(2, 60.0), flap(3, 2.0))
    assert [m.severity for m in metrics] == [Severity.OK, Severity.WARN, Severity.WARN, Severity.WARN]
    assert metrics[1].message.startswith("archiving flaky: 1 failure since it was last healthy")
    assert metrics[3].message.startswith("archiving flaky: 3 failures since")
    # five quiet minutes after the last failure: over
    metrics, baseline = hub_assess(ref, baseline, flap(3, 300.0))
    assert metrics[0].severity is Severity.OK and baseline["pg1"] == {"archiver_failed_count": 3}
    # and a new failure later is a new episode, counted from there
    metrics, _ = hub_assess(ref, baseline, flap(4, 1.0))
    assert metrics[0].message.startswith("archiving flaky: 1 failure since")


def test_archiver_failures_allowance(ref):
    # the configured allowance: archiver_failures_warn = 1 tolerates one failure
    flap = archiver(failed_count=1, last_failed_wal=FAILED_WAL, last_failed_age_seconds=5.0, last_archived_age_seconds=1.0)
    metrics, _ = hub_assess(ref, None, archiver(failed_count=0), flap, archiver_failures_warn=1)
    assert [m.severity for m in metrics] == [Severity.OK, Severity.OK]


def test_archiver_failing_with_nothing_archived_ever(ref):
    a = archiver(
        archived_count=0, failed_count=1, last_archived_wal=None, last_archived_age_seconds=None,
        last_failed_wal="000000010000000000000001", last_failed_age_seconds=2.0,
    )
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(archiver=a))), now=NOW)
    assert metric(h, "pg1", "archiver").severity is Severity.WARN


def test_archiving_off_is_ok(ref):
    a = archiver(archive_mode="off", failed_count=9, last_failed_age_seconds=1.0, last_failed_wal="x")
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(archiver=a))), now=NOW)
    assert metric(h, "pg1", "archiver").message == "archiving off"


# -- pgbouncer and custom thresholds ----------------------------------------------------------


def test_pgbouncer_error_is_warn(ref):
    pb = PgBouncerData(pools=(), stats=(), error="PgBouncer refused the connection at 10.0.0.9:6432")
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(pgbouncer=pb))), now=NOW)
    m = metric(h, "pg1", "pgbouncer")
    assert m.severity is Severity.WARN
    assert m.message == "PgBouncer unreadable: PgBouncer refused the connection at 10.0.0.9:6432"


def pool(database="app", user="app", cl_waiting=0, maxwait=0.0, sv_active=2, pool_size=20, **kw):
    base = dict(
        database=database, user=user, cl_active=5, cl_waiting=cl_waiting, sv_active=sv_active, sv_idle=0, sv_used=0,
        maxwait_seconds=maxwait, pool_size=pool_size, pool_mode="transaction",
    )
    base.update(kw)
    return PoolRow(**base)


def pool_metrics(ref, *pools):
    pb = PgBouncerData(pools=tuple(pools), stats=())
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(pgbouncer=pb))), now=NOW)
    return h, [m for m in member(h, "pg1").metrics if m.name.startswith("pgbouncer")]


def test_pgbouncer_healthy_pools_are_ok(ref):
    h, ms = pool_metrics(
        ref,
        pool(),
        pool(database="b", cl_waiting=3, maxwait=0.9),  # a short queue, capacity left
        pool(database="c", sv_active=20, pool_size=20),  # busy but nobody waits
        pool(database="d", cl_waiting=2, maxwait=0.5, sv_active=20, pool_size=None),  # size unknown
        pool(database="e", cl_waiting=2, maxwait=0.5, sv_active=5, pool_size=0),
    )
    assert [(m.name, m.severity) for m in ms] == [("pgbouncer", Severity.OK)]
    assert ms[0].message == "PgBouncer: 5 pools, 7 clients waiting"
    assert h.severity is Severity.OK


@pytest.mark.parametrize(
    "maxwait, severity",
    [(0.99, None), (1.0, Severity.WARN), (3.2, Severity.WARN), (9.99, Severity.WARN), (10.0, Severity.CRIT), (42.0, Severity.CRIT)],
)
def test_pgbouncer_clients_waiting(ref, maxwait, severity):
    h, ms = pool_metrics(ref, pool(database="shop", user="api", cl_waiting=4, maxwait=maxwait))
    found = [m for m in ms if m.name == "pgbouncer:shop/api"]
    if severity is None:
        assert found == [] and member(h, "pg1").severity is Severity.OK
        return
    (m,) = found
    assert m.severity is severity and member(h, "pg1").severity is severity
    assert m.message == f"pool shop/api: 4 clients waiting, longest {human_seconds(maxwait)}"
    assert m.value == maxwait


def test_pgbouncer_waiting_message(ref):
    _, ms = pool_metrics(ref, pool(cl_waiting=1, maxwait=3.2))
    assert ms[1].message == "pool app/app: 1 client waiting, longest 3.2s"


def test_pgbouncer_pool_saturated(ref):
    h, ms = pool_metrics(ref, pool(cl_waiting=5, maxwait=0.2, sv_active=20, pool_size=20))
    m = ms[1]
    assert (m.name, m.severity) == ("pgbouncer:app/app", Severity.WARN)
    assert m.message == "pool app/app saturated (20/20 server connections, 5 waiting)"
    assert h.severity is Severity.WARN
    # saturated and waiting long: one metric per pool, the wait decides between WARN and CRIT
    _, ms = pool_metrics(ref, pool(cl_waiting=5, maxwait=12.0, sv_active=20, pool_size=20))
    assert [m.name for m in ms] == ["pgbouncer", "pgbouncer:app/app"]
    assert ms[1].severity is Severity.CRIT
    assert ms[1].message == "pool app/app saturated (20/20 server connections), 5 clients waiting, longest 12s"


def test_pgbouncer_one_metric_per_troubled_pool(ref):
    h, ms = pool_metrics(
        ref, pool(database="a", cl_waiting=1, maxwait=2.0), pool(database="b"), pool(database="c", user="x", cl_waiting=9, maxwait=11.0)
    )
    assert [(m.name, m.severity) for m in ms] == [
        ("pgbouncer", Severity.OK), ("pgbouncer:a/app", Severity.WARN), ("pgbouncer:c/x", Severity.CRIT)
    ]
    assert member(h, "pg1").severity is Severity.CRIT
    assert "pg1: pool c/x: 9 clients waiting, longest 11s" in h.problems


def test_custom_thresholds_apply(ref):
    small = with_thresholds(ref, lag_bytes_warn=1000, lag_bytes_crit=2000)
    s = snap("pg3", standby(wal_receiver=receiver(replay_lag_bytes=1500)))
    assert metric(assess_cluster(small, healthy(pg3=s), now=NOW), "pg3", "lag_bytes").severity is Severity.WARN


def test_every_problem_message_is_one_short_line(ref):
    a = archiver(failed_count=3, last_failed_wal="00000001000000000000000A", last_failed_age_seconds=5.0)
    bad_primary = primary(
        connections_total=99, cache_hit_ratio=50.0, max_xid_age=2_000_000_000, archiver=a,
        slots=(Slot("old", "physical", False, "lost", None),),
        sessions=(session(query_age=999.0), session(pid=5, state="idle in transaction", state_age=9999.0)),
    )
    h = assess_cluster(ref, healthy(pg1=snap("pg1", bad_primary)), now=NOW)
    assert len(h.problems) >= 7
    for p in h.problems:
        assert "\n" not in p and len(p) < 140, p


# -- the xmin horizon, long transactions, multixacts, connection limits (issue 16) --------------


def holder(kind="session", name="4242", xmin_age=10, age_seconds=5.0, state="idle in transaction", **kw):
    base = dict(kind=kind, name=name, owner="alice", database="app", application="psql", state=state,
                xmin_age=xmin_age, age_seconds=age_seconds)
    base.update(kw)
    return HorizonHolder(**base)


def test_nothing_holding_the_horizon_is_said(ref):
    h = assess_cluster(ref, healthy(), now=NOW)
    m = metric(h, "pg1", "xmin_horizon")
    assert (m.severity, m.message) == (Severity.OK, "nothing holds the xmin horizon back")


def test_a_harmless_holder_is_named_but_ok(ref):
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(horizon=(holder(),)))), now=NOW)
    m = metric(h, "pg1", "xmin_horizon")
    assert m.severity is Severity.OK
    assert m.message == "oldest xmin: session pid 4242 (idle in transaction, psql, alice), 10 xids, 5.0s"


@pytest.mark.parametrize(
    "xmin_age, age_seconds, severity",
    [
        (50_000_000, 600.0, Severity.OK),  # equal to both warns: fine
        (50_000_001, 1.0, Severity.WARN),  # old by transactions
        (10, 600.5, Severity.WARN),  # old by time
        (10, 3601.0, Severity.CRIT),
        (200_000_001, None, Severity.CRIT),  # a slot: transactions only
    ],
)
def test_horizon_is_judged_by_transactions_and_time(ref, xmin_age, age_seconds, severity):
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(horizon=(holder(xmin_age=xmin_age, age_seconds=age_seconds),)))), now=NOW)
    assert metric(h, "pg1", "xmin_horizon").severity is severity
    assert member(h, "pg1").severity is severity


def test_every_holder_with_a_problem_is_named_worst_first(ref):
    horizon = (
        holder(kind="slot", name="pg2_slot", state="inactive", xmin_age=900, age_seconds=None),
        holder(name="4242", xmin_age=800, age_seconds=4000.0),  # younger in xids, but CRIT by its time
        holder(kind="prepared", name="tx1", state="prepared", xmin_age=700, age_seconds=700.0),
        holder(kind="replica", name="pg3", state="streaming", xmin_age=5, age_seconds=None),  # fine
    )
    ref = with_thresholds(ref, xmin_horizon_xid_age_warn=100)
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(horizon=horizon))), now=NOW)
    m = metric(h, "pg1", "xmin_horizon")
    assert m.severity is Severity.CRIT
    assert m.message == (
        "xmin horizon held back by session pid 4242 (idle in transaction, psql, alice): 800 xids, 67m; "
        "inactive slot pg2_slot: 900 xids; prepared transaction 'tx1' (alice): 700 xids, 12m"
    )


@pytest.mark.parametrize("xact_age, severity", [(300.0, Severity.OK), (300.5, Severity.WARN), (1800.5, Severity.CRIT)])
def test_long_transactions_judged_by_xact_start(ref, xact_age, severity):
    # Active, with a short query: a long transaction of many short statements is still one.
    s = session(pid=77, state="active", query_age=0.5, xact_age_seconds=xact_age)
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(sessions=(s,)))), now=NOW)
    m = metric(h, "pg1", "long_transactions")
    assert m.severity is severity
    assert metric(h, "pg1", "long_queries").severity is Severity.OK
    if severity is Severity.CRIT:
        assert m.message == "1 transaction open > crit 30m (longest 30m, pid 77, active)"


def test_an_autovacuum_worker_is_not_a_long_transaction(ref):
    s = session(pid=88, state="active", query_age=5000.0, backend_type="autovacuum worker",
                query="autovacuum: VACUUM public.orders (to prevent wraparound)")
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(sessions=(s,)))), now=NOW)
    assert metric(h, "pg1", "long_transactions").severity is Severity.OK


@pytest.mark.parametrize("age, severity", [(500_000_000, Severity.OK), (500_000_001, Severity.WARN), (1_500_000_001, Severity.CRIT)])
def test_multixact_age(ref, age, severity):
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(max_mxid_age=age, max_mxid_age_database="app"))), now=NOW)
    m = metric(h, "pg1", "mxid_age")
    assert m.severity is severity and "in database app" in m.message


def test_connections_count_against_what_is_left_after_reserved_slots(ref):
    # 90 of 100 is 90%, but with 5 reserved for superusers clients have 95: 94.7%: WARN, not CRIT.
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(connections_total=90, reserved_connections=5))), now=NOW)
    m = metric(h, "pg1", "connections")
    assert m.severity is Severity.WARN
    assert m.message == "connections 90/95 (95%, 5 more reserved for superusers) > warn 80%"


def test_a_role_or_database_near_its_connection_limit_is_named(ref):
    data = primary(
        role_limits=(ConnectionLimit("reporting", 10, 9), ConnectionLimit("api", 100, 3)),
        database_limits=(ConnectionLimit("shop", 20, 20), ConnectionLimit("frozen", 0, 2)),
    )
    h = assess_cluster(ref, healthy(pg1=snap("pg1", data)), now=NOW)
    got = {m.name: (m.severity, m.message) for m in member(h, "pg1").metrics if m.name.startswith("connections:")}
    assert got == {
        "connections:role:reporting": (Severity.WARN, "role reporting: 9/10 connections (90% of its CONNECTION LIMIT) > warn 80%"),
        "connections:database:shop": (Severity.CRIT, "database shop: 20/20 connections (100% of its CONNECTION LIMIT) > crit 95%"),
        "connections:database:frozen": (Severity.WARN, "database frozen has 2 connections and a limit of 0"),
    }


def test_pgbouncer_wait_limits_come_from_the_config(ref):
    ref = with_thresholds(ref, pgbouncer_wait_seconds_warn=5.0, pgbouncer_wait_seconds_crit=30.0)
    _, ms = pool_metrics(ref, pool(database="shop", user="api", cl_waiting=4, maxwait=3.0))
    assert [m.name for m in ms] == ["pgbouncer"]  # 3 s is under this cluster's 5 s
    _, ms = pool_metrics(ref, pool(database="shop", user="api", cl_waiting=4, maxwait=12.0))
    assert [(m.name, m.severity) for m in ms][1:] == [("pgbouncer:shop/api", Severity.WARN)]


def test_running_vacuums_are_said(ref):
    vac = VacuumProgress(pid=9, database="app", relation="public.orders", phase="scanning heap", heap_blks_total=1000,
                         heap_blks_scanned=250, heap_blks_vacuumed=0, index_vacuum_count=0, autovacuum=True,
                         query="autovacuum: VACUUM public.orders (to prevent wraparound)", elapsed_seconds=30.0)
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(vacuums=(vac,)))), now=NOW)
    m = metric(h, "pg1", "vacuum")
    assert (m.severity, m.message) == (Severity.OK, "1 VACUUM running, 1 to prevent wraparound: public.orders (scanning heap 25%)")
    other_db = dataclasses.replace(vac, relation=None, query="autovacuum: VACUUM ANALYZE public.items")
    assert other_db.table == "public.items" and not other_db.to_prevent_wraparound
