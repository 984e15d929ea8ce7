"""How the AWS pane judges an RDS cluster (dbops.platform.rds.judge): instance states, replication
reported broken, replica lag against the RPO, no automated backups, snapshots missing or old."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from dbops.config import parse
from dbops.model import Severity
from dbops.platform.rds import DbInstance, DbSnapshot, RdsView, judge, status_severity

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
CONFIG = """
[environments.prod.clusters.orders]
engine = "postgres"
members = [{ name = "db", host = "orders.example" }]
backups = { max_age_seconds = 86400, rpo_seconds = 300 }
[environments.prod.clusters.orders.rds]
instance = "orders-1"
"""


def ref():
    return parse(CONFIG).clusters()[0]


def inst(ident: str = "orders-1", status: str = "available", source: str | None = None, **kw) -> DbInstance:
    base = dict(id=ident, status=status, instance_class="db.r6g.large", engine="postgres", engine_version="15.4",
                az="eu-west-1a", multi_az=True, endpoint=f"{ident}.example:5432", source=source, replicas=(),
                backup_retention_days=7, latest_restorable=NOW)
    return DbInstance(**{**base, **kw})


def snap(age: timedelta | None, status: str = "available", ident: str = "s1") -> DbSnapshot:
    return DbSnapshot(ident, "orders-1", "automated", None if age is None else NOW - age, 100, status)


def view(*instances: DbInstance, snapshots: tuple[DbSnapshot, ...] = (snap(timedelta(hours=2)),)) -> RdsView:
    return RdsView("prod/orders", "orders-1", "eu-west-1", instances=instances, snapshots=snapshots, read_at=NOW)


def findings(v: RdsView) -> list[tuple[Severity, str]]:
    return [(f.severity, f.text) for f in judge(v, ref(), NOW)]


def test_an_available_primary_with_a_fresh_snapshot_is_ok() -> None:
    v = view(inst(), inst("orders-2", source="orders-1"))
    assert findings(v) == []
    assert dataclasses.replace(v, findings=()).severity is Severity.OK


def test_an_instance_rds_is_working_on_is_warn_and_one_that_will_not_recover_is_crit() -> None:
    assert status_severity("available") is Severity.OK
    assert status_severity("modifying") is Severity.WARN
    assert status_severity("backing-up") is Severity.WARN
    assert status_severity("a-status-aws-adds-later") is Severity.WARN
    for broken in ("failed", "stopped", "storage-full", "inaccessible-encryption-credentials", "incompatible-parameters"):
        assert status_severity(broken) is Severity.CRIT, broken
    got = findings(view(inst(status="storage-full"), inst("orders-2", status="rebooting", source="orders-1")))
    assert got[0] == (Severity.CRIT, "instance orders-1 is storage-full, not available (it will not recover by itself)")
    assert got[1] == (Severity.WARN, "replica orders-2 is rebooting, not available (RDS is working on it)")


def test_replication_rds_reports_broken_is_judged_by_how_broken() -> None:
    error = inst("orders-2", source="orders-1", replication=(("error", False, "WAL stream ended"),))
    stopped = inst("orders-3", source="orders-1", replication=(("stopped", False, ""),))
    fine = inst("orders-4", source="orders-1", replication=(("replicating", True, ""),))
    assert findings(view(inst(), error, stopped, fine)) == [
        (Severity.CRIT, "replica orders-2: replication error: WAL stream ended"),
        (Severity.WARN, "replica orders-3: replication stopped"),
    ]


def test_replica_lag_over_the_rpo_is_warn_and_lag_not_reported_judges_nothing() -> None:
    behind = inst("orders-2", source="orders-1", lag_seconds=301.0)
    unknown = inst("orders-3", source="orders-1", lag_seconds=None)
    assert findings(view(inst(), behind, unknown)) == [(Severity.WARN, "replica orders-2 lags 301 s, more than the RPO (300 s)")]
    assert unknown.lag_text == "not reported" and behind.lag_text == "301 s" and inst().lag_text == "-"


def test_no_automated_backups_is_warn() -> None:
    assert findings(view(inst(backup_retention_days=0))) == [
        (Severity.WARN, "orders-1 has no automated backups (BackupRetentionPeriod 0): no point-in-time recovery")]


def test_snapshots_missing_unfinished_or_older_than_max_age_are_warn() -> None:
    assert findings(view(inst(), snapshots=())) == [(Severity.WARN, "orders-1 has no available snapshot")]
    # One still being taken (no time yet) and one that failed count for nothing.
    assert findings(view(inst(), snapshots=(snap(None, "creating"), snap(timedelta(hours=1), "failed", "s2")))) == [
        (Severity.WARN, "orders-1 has no available snapshot")]
    old = findings(view(inst(), snapshots=(snap(timedelta(hours=30)), snap(timedelta(hours=50), ident="s2"))))
    assert old == [(Severity.WARN, "newest snapshot is 30.0h old, older than backups.max_age_seconds (24.0h)")]
    assert findings(view(inst(), snapshots=(snap(timedelta(hours=30)), snap(timedelta(hours=1), ident="s2")))) == []


def test_a_view_that_could_not_be_read_is_crit() -> None:
    v = RdsView("prod/orders", "orders-1", "eu-west-1", error="RDS instance orders-1: cannot reach ...", read_at=NOW)
    assert v.severity is Severity.CRIT and v.primary is None


def test_rds_and_elasticache_sections_belong_on_their_engines_and_want_both_keys() -> None:
    import pytest

    from dbops.config import ConfigError

    with pytest.raises(ConfigError) as exc:
        parse("""
[environments.p.clusters.cache]
engine = "redis"
members = [{ name = "a", host = "h" }]
rds = { instance = "db-1" }
[environments.p.clusters.db]
engine = "postgres"
members = [{ name = "a", host = "h" }]
[environments.p.clusters.db.elasticache]
replication_group = "g"
aws = { access_key_id = { env = "KEY_ID" } }
""")
    text = str(exc.value)
    assert "an [rds] section belongs on an engine = \"postgres\" cluster" in text
    assert "an [elasticache] section belongs on an engine = \"redis\" cluster" in text
    assert "elasticache.aws: give both access_key_id and secret_access_key, or neither" in text


def test_an_elasticache_group_is_judged_by_status_retention_and_snapshot_age() -> None:
    from dbops.platform.elasticache import CacheSnapshot, CacheView
    from dbops.platform.elasticache import judge as judge_cache

    cache_ref = parse("""
[environments.p.clusters.sessions]
engine = "redis"
members = [{ name = "a", host = "h" }]
backups = { max_age_seconds = 3600 }
[environments.p.clusters.sessions.elasticache]
replication_group = "sessions"
""").clusters()[0]

    def cv(status: str = "available", retention: int | None = 1, *snaps: CacheSnapshot) -> list[tuple[Severity, str]]:
        v = CacheView("p/sessions", "sessions", "eu-west-1", status=status, retention_days=retention, snapshots=snaps)
        return [(f.severity, f.text) for f in judge_cache(v, cache_ref, NOW)]

    fresh = CacheSnapshot("s1", "automated", "available", NOW - timedelta(minutes=30))
    untimed = CacheSnapshot("s2", "manual", "available", None)
    assert cv("available", 1, fresh) == []
    assert cv("available", 1, untimed) == []  # its time is not reported: nothing to judge it by
    assert cv("modifying", 1, fresh) == [(Severity.WARN, "replication group sessions is modifying, not available "
                                                         "(ElastiCache is working on it)")]
    assert cv("create-failed", 1, fresh)[0][0] is Severity.CRIT
    assert cv("available", 0) == [(Severity.WARN, "sessions takes no automatic snapshots (SnapshotRetentionLimit 0)"),
                                  (Severity.WARN, "sessions has no available snapshot")]
    old = CacheSnapshot("s0", "automated", "available", NOW - timedelta(hours=2))
    assert cv("available", 1, old) == [(Severity.WARN, "newest snapshot is 2.0h old, older than backups.max_age_seconds (60m)")]
