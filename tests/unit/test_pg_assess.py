"""Severity rules for PostgreSQL (dbops.engines.postgres.assess), on hand-built snapshots.

Thresholds are the product brief's defaults unless a test overrides them; every rule is
checked at its boundary (equal is fine, one past is not).
"""

from __future__ import annotations

import dataclasses

import pytest

from dbops.config import parse
from dbops.engines.postgres.assess import assess_cluster, human_count, update_baseline
from dbops.engines.postgres.data import (
    Archiver,
    PgBouncerData,
    PgMemberData,
    ReplicaRow,
    Session,
    Slot,
    WalReceiver,
)
from dbops.model import Reachability, Severity, Snapshot

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
    h = assess_cluster(ref, healthy(pg3=snap("pg3", standby(wal_receiver=receiver(replay_lag_seconds=lag)))), now=NOW)
    assert metric(h, "pg3", "lag_seconds").severity is severity
    assert member(h, "pg3").lag_seconds == lag


def test_replica_lag_is_worst_of_own_and_primary_view(ref):
    # pg2 reports itself caught up, but the primary's row for its application_name says 50 MiB / 70 s
    p = primary(replicas=[replica_row("walrcv_pg2", replay_bytes=50 * MiB, replay_seconds=70.0), replica_row("pg3")])
    h = assess_cluster(ref, healthy(pg1=snap("pg1", p)), now=NOW)
    pg2 = member(h, "pg2")
    assert pg2.lag_bytes == 50 * MiB and pg2.lag_seconds == 70.0
    assert metric(h, "pg2", "lag_bytes").severity is Severity.WARN
    assert metric(h, "pg2", "lag_seconds").severity is Severity.CRIT
    # pg3 is matched by member name (no application_name configured) and stays fine
    assert member(h, "pg3").lag_bytes == 0


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
    assert h.metrics[0].message == "split brain: pg1, pg3 are all primaries (timelines 1, 2)"


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


def test_archiver_failures_since_baseline(ref):
    recovered = archiver(failed_count=3, last_failed_wal="00000001000000000000000A", last_failed_age_seconds=500.0)
    first = {"pg1": snap("pg1", primary(archiver=archiver(failed_count=2)))}
    baseline = update_baseline(None, first)
    assert baseline["pg1"] == {"archiver_failed_count": 2}
    # a later poll does not move the baseline
    assert update_baseline(baseline, {"pg1": snap("pg1", primary(archiver=recovered))}) == baseline
    h = assess_cluster(ref, healthy(pg1=snap("pg1", primary(archiver=recovered))), baseline, now=NOW)
    m = metric(h, "pg1", "archiver")
    assert m.severity is Severity.WARN
    assert m.message.startswith("1 archive failures since dbops started watching")
    # the configured allowance: archiver_failures_warn = 1 tolerates one failure
    h = assess_cluster(
        with_thresholds(ref, archiver_failures_warn=1), healthy(pg1=snap("pg1", primary(archiver=recovered))), baseline, now=NOW
    )
    assert metric(h, "pg1", "archiver").severity is Severity.OK


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
