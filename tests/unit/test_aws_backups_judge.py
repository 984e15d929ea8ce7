"""RDS and ElastiCache snapshots in the backups judgement (dbops.platform.backups.judge), with a
frozen clock: a snapshot without a time is shown, never aged; the point-in-time window's end is
judged against the RPO; a size that is not reported is not compared; and clusters with [rds] or
[elasticache] have backups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dbops.config import Backups, load
from dbops.model import Severity
from dbops.platform.backups import (
    ELASTICACHE_KIND,
    RDS_KIND,
    BackupEntry,
    Fetched,
    KindFetched,
    has_backups,
    judge,
)

NOW = 1_790_000_000.0
T = datetime.fromtimestamp(NOW, tz=UTC)
GIB = 1024**3
TARGETS = Backups(max_age_seconds=26 * 3600, rpo_seconds=900)


def judged(kind: KindFetched):
    return judge(Fetched("prod/sessions", NOW, (kind,), (kind.source,)), TARGETS, NOW)


def test_a_snapshot_without_a_time_is_shown_without_an_age_and_not_judged():
    kind = KindFetched(ELASTICACHE_KIND, "ElastiCache group sessions", (BackupEntry("sessions-manual", None, None, detail="manual"),), 1)
    state = judged(kind)
    [k] = state.kinds
    assert k.newest is not None and k.newest.name == "sessions-manual"
    assert k.age_seconds is None and k.sizes == ()
    assert state.severity is Severity.OK and state.newest_age_seconds is None
    assert [m.message for m in k.metrics] == [
        "prod/sessions: newest elasticache-snapshot sessions-manual: time not reported, age not judged"]


def test_the_newest_timed_snapshot_is_judged_before_those_without_a_time():
    entries = (BackupEntry("nightly", T - timedelta(hours=30), None), BackupEntry("untimed", None, None))
    state = judged(KindFetched(ELASTICACHE_KIND, "ElastiCache group sessions", entries, 2))
    assert state.kinds[0].newest.name == "nightly"
    assert state.severity is Severity.WARN
    assert state.problems == ["prod/sessions: newest elasticache-snapshot backup is 30.0h old (target 26.0h)"]


@pytest.mark.parametrize("minutes, severity", [(5, Severity.OK), (20, Severity.WARN), (31, Severity.CRIT)])
def test_the_latest_restorable_time_is_judged_against_the_rpo(minutes, severity):
    kind = KindFetched(RDS_KIND, "RDS instance orders", (BackupEntry("rds:orders-1", T - timedelta(hours=3), 20 * GIB),), 1,
                       wal_time=T - timedelta(minutes=minutes), wal_checked=True, pitr=True)
    state = judged(kind)
    assert state.severity is severity
    assert state.kinds[0].wal_age_seconds == minutes * 60
    [pitr] = [m for m in state.metrics if m.name == "backup.wal.age"]
    assert pitr.message.startswith(f"prod/sessions: latest restorable time (point-in-time recovery) is {minutes}m old")
    assert pitr.message.endswith("(RPO 15m)") == (severity is not Severity.OK)


def test_what_the_reader_found_wrong_is_warn_and_its_notes_are_said_not_judged():
    kind = KindFetched(RDS_KIND, "RDS instance orders", (BackupEntry("rds:orders-1", T - timedelta(hours=1), 20 * GIB),), 1,
                       warnings=("orders has automated backups off",), notes=("size: allocated storage",))
    state = judged(kind)
    assert state.severity is Severity.WARN
    assert state.problems == ["prod/sessions: orders has automated backups off"]
    assert "prod/sessions: size: allocated storage" in [m.message for m in state.metrics if m.severity is Severity.OK]


def test_no_snapshot_is_crit():
    state = judged(KindFetched(RDS_KIND, "RDS instance orders", (), 0, wal_time=T, wal_checked=True, pitr=True))
    assert state.severity is Severity.CRIT
    assert "prod/sessions: no usable rds-snapshot backup in RDS instance orders" in state.problems


def test_clusters_with_rds_or_elasticache_have_backups(tmp_path: Path):
    config = tmp_path / "dbops.toml"
    config.write_text("""
[environments.prod.clusters.orders]
engine = "postgres"
members = [{ name = "n1", host = "10.0.0.1" }]
rds = { instance = "orders-1" }
[environments.prod.clusters.sessions]
engine = "redis"
members = [{ name = "n1", host = "10.0.0.2" }]
elasticache = { replication_group = "sessions" }
[environments.prod.clusters.plain]
engine = "redis"
members = [{ name = "n1", host = "10.0.0.3" }]
""")
    assert {r.name: has_backups(r) for r in load(config).clusters()} == {"orders": True, "sessions": True, "plain": False}
