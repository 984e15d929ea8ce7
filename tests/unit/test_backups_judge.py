"""The backups judgement (dbops.platform.backups.judge) with a frozen clock, and the audit
shipping's pure parts (object names sort newest first; a shipped copy against the local log)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dbops.audit_ship import compare, object_key
from dbops.config import Backups, S3Location
from dbops.model import Severity
from dbops.platform.backups import BackupEntry, Fetched, KindFetched, judge

NOW = 1_790_000_000.0
T = datetime.fromtimestamp(NOW, tz=UTC)
MiB = 1024 * 1024
TARGETS = Backups(max_age_seconds=26 * 3600, rpo_seconds=900)
VERSIONED = {"bucket": "b", "versioning": "Enabled", "mfa_delete": None, "object_lock": None}


def dumps(*ages_hours: float, size: int = 100 * MiB, sizes: list[int] | None = None) -> KindFetched:
    entries = tuple(BackupEntry(f"dumps/d{i}", T - timedelta(hours=h), sizes[i] if sizes else size)
                    for i, h in enumerate(ages_hours))
    return KindFetched("pg_dump", "s3://b/dumps/", entries, len(entries))


def judged(*kinds: KindFetched, protection=VERSIONED, errors=(), empty=()) -> tuple[Severity, list[str]]:
    state = judge(Fetched("prod/orders", NOW, kinds, ("s3://b/dumps/",), protection, errors, empty), TARGETS, NOW)
    return state.severity, state.problems


@pytest.mark.parametrize("hours, severity, shown", [(1, Severity.OK, ""), (25.9, Severity.OK, ""), (27, Severity.WARN, "27.0h"),
                                                    (51, Severity.WARN, "2.1d"), (53, Severity.CRIT, "2.2d")])
def test_newest_backup_age_against_the_target(hours, severity, shown):
    sev, problems = judged(dumps(hours, hours + 24))
    assert sev is severity
    if severity is not Severity.OK:
        assert problems == [f"prod/orders: newest pg_dump backup is {shown} old (target 26.0h)"]


def test_no_backup_at_all_is_crit_and_names_where_it_looked():
    sev, problems = judged(empty=("s3://b/dumps/",))
    assert sev is Severity.CRIT
    assert problems == ["prod/orders: no backups at all in s3://b/dumps/"]


def test_a_newest_manifest_whose_object_is_gone_falls_back_to_the_one_before():
    k = dumps(2, 30)
    gone = BackupEntry("dumps/d0", k.entries[0].created, k.entries[0].size, missing="its object is gone (the manifest remains): it cannot be restored")
    k = KindFetched("pg_dump", k.source, (gone, k.entries[1]), 2)
    state = judge(Fetched("prod/orders", NOW, (k,), (), VERSIONED), TARGETS, NOW)
    assert state.kinds[0].newest.name == "dumps/d1"
    assert state.severity is Severity.WARN
    assert "prod/orders: pg_dump dumps/d0: its object is gone (the manifest remains): it cannot be restored" in state.problems


def test_a_sudden_size_drop_is_flagged_a_small_one_is_not():
    sev, problems = judged(dumps(1, 25, 49, 73, sizes=[40 * MiB, 100 * MiB, 98 * MiB, 102 * MiB]))
    assert sev is Severity.WARN
    assert problems == ["prod/orders: newest pg_dump backup is 40.0 MiB, under half the median of the 3 before it "
                        "(100.0 MiB): partial, or data lost?"]
    assert judged(dumps(1, 25, 49, sizes=[60 * MiB, 100 * MiB, 98 * MiB])) == (Severity.OK, [])


def test_sizes_are_compared_within_one_series_only():
    """Redis RDBs, one per shard per backup: a small shard's newest dump is not a drop against a big one's."""
    t = [T - timedelta(hours=h) for h in (1, 1.01, 25, 25.01, 49, 49.01)]
    entries = tuple(BackupEntry(f"rdb/{i}", t[i], size, series=f"shard={shard}")
                    for i, (shard, size) in enumerate([("a", 10 * MiB), ("b", 100 * MiB)] * 3))
    k = KindFetched("redis_rdb", "s3://b/redis/", entries, 6)
    assert judged(k) == (Severity.OK, [])
    state = judge(Fetched("prod/orders", NOW, (k,), (), VERSIONED), TARGETS, NOW)
    assert state.kinds[0].sizes == (10 * MiB,) * 3
    shrunk = (BackupEntry("rdb/new", T, 4 * MiB, series="shard=a"), *entries)
    assert judged(KindFetched("redis_rdb", "s3://b/redis/", shrunk, 7))[0] is Severity.WARN


def test_a_pgbackrest_stanza_without_a_backup_is_crit():
    k = KindFetched("pgbackrest", "pgbackrest stanza s", (), 0, wal_segment=None, wal_checked=True)
    sev, problems = judged(k)
    assert sev is Severity.CRIT
    assert problems == ["prod/orders: no usable pgbackrest backup in pgbackrest stanza s",
                        "prod/orders: no WAL segment archived in pgbackrest stanza s"]


def test_wal_archive_age_against_the_rpo():
    def pgbackrest(wal_minutes: float | None) -> KindFetched:
        wal = None if wal_minutes is None else T - timedelta(minutes=wal_minutes)
        return KindFetched("pgbackrest", "pgbackrest stanza s", (BackupEntry("20261122-000000F", T - timedelta(hours=3), MiB, "full"),),
                           1, wal_segment="000000010000000000000042", wal_time=wal, wal_checked=True)

    assert judged(pgbackrest(5))[0] is Severity.OK
    assert judged(pgbackrest(20)) == (Severity.WARN, ["prod/orders: newest archived WAL 000000010000000000000042 is 20m old (RPO 15m)"])
    assert judged(pgbackrest(31))[0] is Severity.CRIT
    assert judged(pgbackrest(None)) == (Severity.CRIT, ["prod/orders: no WAL segment archived in pgbackrest stanza s"])


def test_unversioned_bucket_is_warn_and_an_unreadable_source_is_unknown():
    sev, problems = judged(dumps(1), protection={**VERSIONED, "versioning": None})
    assert sev is Severity.WARN
    assert problems == ["prod/orders: bucket b has versioning off: a deleted or overwritten backup is gone for good"]
    sev, problems = judged(protection=None, errors=("cannot reach S3 endpoint http://127.0.0.1:1: connection refused",))
    assert sev is Severity.UNKNOWN
    assert problems == ["prod/orders: cannot reach S3 endpoint http://127.0.0.1:1: connection refused"]


def test_shipped_object_names_sort_newest_first():
    loc = S3Location(bucket="audit", prefix="dbops/")
    keys = [object_key(loc, "bastion1", seq) for seq in (0, 9, 10, 1234)]
    assert sorted(keys) == list(reversed(keys))
    assert keys[0] == "dbops/bastion1/audit-999999999999-seq0.jsonl"


def test_compare_a_shipped_copy_with_the_local_log():
    shipped = b'{"seq":0}\n{"seq":1}\n'
    assert compare(shipped, shipped + b'{"seq":2}\n') == (
        True, "the local log begins with the shipped copy's 2 record(s) and has 1 newer record(s) not shipped yet")
    ok, why = compare(shipped, b'{"seq":0}\n')
    assert not ok and "records were removed from the local log after shipping" in why
    ok, why = compare(shipped, b'{"seq":0}\n{"seq":7}\n')
    assert not ok and why.startswith("line 2 differs between the local log and the shipped copy")
