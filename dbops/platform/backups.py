"""Backup state per cluster: "when did it last back up, and could we restore it?"

Two halves, kept apart so the judgement can be tested with a frozen clock:

* ``fetch(ref)`` (async, I/O) reads what is there: the manifests under the cluster's
  ``[backups] s3`` location, the bucket's versioning / Object Lock state, and, for a cluster with
  ``[pgbackrest]``, ``pgbackrest info --output=json`` plus the time of the newest archived WAL
  segment (``pgbackrest repo-ls`` of that one archive directory, so S3 repositories work too);
  for a cluster with ``[rds]``, its DB instance's snapshots and point-in-time window; for one
  with ``[elasticache]``, its replication group's snapshots (both through the readers of
  dbops.platform.rds and dbops.platform.elasticache, the ones the AWS pane uses).
  It returns a ``Fetched`` and never raises for a server's answer: a dead endpoint, a missing
  bucket or a failing pgBackRest becomes an ``error`` line of that source.
* ``judge(fetched, targets, now)`` (pure) turns that into severities and sentences.

What one ``fetch`` costs, per cluster with an S3 location (the cost does not grow with the
number of backups beyond the caps):

* LIST: ``ceil(keys under the prefix / 1000)`` ListObjectsV2 requests, at most
  ``MAX_LIST_PAGES`` (20 000 keys); beyond that the rest is not listed and the result says so.
* GET: the newest ``MAX_MANIFEST_READS`` manifests (by their LastModified), one small GET each.
* HEAD: for each kind, the newest backup objects until one is present with its manifest's size,
  at most ``MAX_HEADS_PER_KIND``: a manifest whose object was deleted is not a backup.
* 2 requests for the bucket's versioning and Object Lock configuration.

and per cluster with pgBackRest: one ``pgbackrest info`` and one ``repo-ls`` of a single
archive directory (at most 256 WAL segments); per cluster with [rds]: DescribeDBInstances and one
page (100) each of its automated and manual snapshots; per cluster with [elasticache]: one page
(50) of DescribeSnapshots. More snapshots than a page are not read, and the count says so ("100+").

RDS and ElastiCache (kinds "rds-snapshot" and "elasticache-snapshot"): the newest *available*
snapshot, automated or manual, judged like any backup. Their sizes are not byte sizes: RDS
reports only the instance's allocated storage at snapshot time (shown, and said so), ElastiCache
none. ElastiCache snapshots whose time is not reported (no SnapshotCreateTime: moto's answer)
are listed with "time not reported" and no age; their age is not judged (never invented). An RDS
instance's LatestRestorableTime plays the WAL archive's part: how much point-in-time recovery
would lose, against ``rpo_seconds``; automated backups off (BackupRetentionPeriod 0: no
point-in-time recovery at all) is WARN, as on the AWS pane.

Judgement (``judge``), per kind of backup (pg_dump, redis_rdb, pgbackrest, qdrant-snapshot ...):

* age of the newest usable backup: OK up to ``max_age_seconds``; WARN past it; CRIT past twice
  it, or when there is none (an S3 location with no backup of the cluster at all, a kind whose
  listed backups all lost their objects, a pgBackRest stanza without a backup);
* size, within the newest backup's series (its shard, collection and node, or database: see
  SERIES_KEYS): the last ``TREND`` sizes are kept for a sparkline; the newest is flagged WARN
  when it is under ``SIZE_DROP_RATIO`` (half) of the median of the ones before it (up to 5, at
  least 2):
  a dump that shrank by half overnight is more often a failed or partial dump, or lost data,
  than a cleanup;
* a newest manifest whose object is gone (or has another size): WARN, naming it;
* pgBackRest: a backup with page checksum errors is WARN; the newest archived WAL segment's age
  against ``rpo_seconds``: WARN past it, CRIT past twice it or when nothing is archived. (An idle
  database archives nothing: set ``archive_timeout`` at or below the RPO so that the age means
  "writes that could be lost".)
* the bucket: versioning not enabled is WARN (a deleted or overwritten backup is gone for
  good); Object Lock is shown, not judged.
* a source that cannot be read (S3 unreachable, no such bucket, pgBackRest failing): UNKNOWN,
  with the reason.

Core: no textual; boto3 is imported by dbops.platform.s3, .rds and .elasticache inside their
functions (this module imports them only inside its readers).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dbops.model import Metric, Severity, human_bytes, human_seconds

if TYPE_CHECKING:
    from dbops.config import Backups, ClusterRef, S3Location

log = logging.getLogger(__name__)

MAX_LIST_PAGES = 20
MAX_MANIFEST_READS = 40
MAX_HEADS_PER_KIND = 3
TREND = 10  # sizes kept per kind for the sparkline
RECENT = 8  # backups kept per kind for the detail list
SIZE_DROP_RATIO = 0.5
# Manifest meta keys that tell apart backups of one kind taken together (one per shard, per
# collection and node, per database).
SERIES_KEYS = ("database", "shard", "collection", "node")
PGBACKREST_KIND = "pgbackrest"
RDS_KIND = "rds-snapshot"
ELASTICACHE_KIND = "elasticache-snapshot"
GIB = 1024**3
TIMEOUT = 60.0  # seconds for one cluster's whole fetch


@dataclass(frozen=True)
class BackupEntry:
    """One backup as listed: its name (S3 key, pgBackRest label, snapshot id), when it completed,
    its size."""

    name: str
    created: datetime | None  # aware, UTC; None: the source does not report it (never invented)
    size: int | None  # bytes; None: not reported
    detail: str = ""  # pgBackRest: full / incr / diff
    missing: str | None = None  # why the listed backup is not usable (its object is gone ...)
    # What the backup is of, within its kind ("shard=0-5460", "collection=docs node=q1"): sizes
    # are compared only within one series, never a small shard's dump with a large one's.
    series: str = ""


@dataclass(frozen=True)
class KindFetched:
    kind: str
    source: str  # "s3://bucket/prefix" or "pgbackrest stanza NAME"
    entries: tuple[BackupEntry, ...]  # newest first, at most RECENT + TREND
    count: int  # backups of this kind found
    more: bool = False  # there may be more than `count` (a cap was reached)
    checksum_errors: tuple[str, ...] = ()  # pgBackRest labels with page checksum errors
    wal_segment: str | None = None  # pgBackRest: the newest archived WAL segment
    wal_time: datetime | None = None  # when it reached the repository
    wal_checked: bool = False  # this kind carries a WAL archive judgement
    # wal_time is RDS's LatestRestorableTime (the point-in-time window's end), not a WAL segment
    pitr: bool = False
    # What the reader found that is WARN whatever the time (automated backups off ...).
    warnings: tuple[str, ...] = ()
    # What the reader wants said, not judged (a size that is not a byte size ...).
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fetched:
    """What fetch() read for one cluster, unjudged."""

    key: str
    fetched_at: float  # epoch seconds
    kinds: tuple[KindFetched, ...] = ()
    locations: tuple[str, ...] = ()  # every source that was read, for "no backups at <where>"
    protection: dict[str, Any] | None = None
    errors: tuple[str, ...] = ()  # a source that could not be read, one line each
    empty: tuple[str, ...] = ()  # a source that was read and holds no backup of this cluster


@dataclass(frozen=True)
class KindState:
    """One row of the Backups pane: a cluster's backups of one kind, judged."""

    kind: str
    source: str
    severity: Severity
    newest: BackupEntry | None
    age_seconds: float | None
    sizes: tuple[int, ...]  # oldest first, for the sparkline
    count: int
    more: bool
    recent: tuple[BackupEntry, ...]  # newest first
    wal_age_seconds: float | None
    wal_segment: str | None
    wal_checked: bool
    metrics: tuple[Metric, ...]


@dataclass(frozen=True)
class ClusterBackups:
    """A cluster's judged backup state: one KindState per kind, the bucket, errors."""

    key: str
    severity: Severity
    kinds: tuple[KindState, ...]
    protection: dict[str, Any] | None
    metrics: tuple[Metric, ...]  # every judged value: the kinds', the bucket's, the errors
    fetched_at: float

    @property
    def problems(self) -> list[str]:
        return [m.message for m in self.metrics if m.severity is not Severity.OK]

    @property
    def newest_age_seconds(self) -> float | None:
        """The age of the stalest kind's newest backup (what the overview shows)."""
        ages = [k.age_seconds for k in self.kinds if k.age_seconds is not None]
        return max(ages) if ages else None


async def in_daemon_thread(fn: Any, *args: Any) -> Any:
    """fn(*args) in a daemon thread of its own, awaited. Not asyncio.to_thread: the default
    executor's threads are joined at interpreter exit, so an S3 call stuck in its timeouts and
    retries would hold the console open after `q`; a daemon thread is abandoned instead."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if done.done():  # cancelled meanwhile (the watcher stopped): nobody waits for it
            return
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)

    def run() -> None:
        try:
            outcome = (True, fn(*args))
        except BaseException as exc:  # handed to the awaiting coroutine, which reports it
            outcome = (False, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: the console quit while this ran
            log.debug("%s finished after its event loop closed; its result is dropped", getattr(fn, "__name__", fn))

    threading.Thread(target=run, name=f"dbops {getattr(fn, '__name__', 'io')}", daemon=True).start()
    return await done


def has_backups(ref: ClusterRef) -> bool:
    """Whether the cluster names anywhere its backups live (an RDS instance's and an ElastiCache
    group's snapshots are its backups)."""
    c = ref.cluster
    return c.backups.s3 is not None or c.pgbackrest is not None or c.rds is not None or c.elasticache is not None


# ---------------------------------------------------------------------------------------------
# Judgement (pure)


def _age_severity(age: float, limit: float) -> Severity:
    if age > 2 * limit:
        return Severity.CRIT
    if age > limit:
        return Severity.WARN
    return Severity.OK


def protection_text(protection: dict[str, Any] | None) -> str:
    """'versioned, lock COMPLIANCE 30d' and the like; '?' when it could not be read."""
    if protection is None:
        return "?"
    parts = ["versioned" if protection.get("versioning") == "Enabled" else "unversioned"]
    lock = protection.get("object_lock")
    if lock and lock.get("enabled"):
        term = f"{lock['days']}d" if lock.get("days") else (f"{lock['years']}y" if lock.get("years") else "")
        parts.append(" ".join(p for p in ("lock", (lock.get("mode") or "").lower()[:5], term) if p))
    else:
        parts.append("no lock")
    return ", ".join(parts)


def _judge_kind(k: KindFetched, cluster: str, targets: Backups, now: datetime) -> KindState:
    metrics: list[Metric] = []
    usable = [e for e in k.entries if e.missing is None]
    for e in k.entries:
        newer = not usable or (e.created is not None and (usable[0].created is None or e.created >= usable[0].created))
        if e.missing is not None and newer:
            metrics.append(Metric(f"backup.{k.kind}.missing", Severity.WARN, f"{cluster}: {k.kind} {e.name}: {e.missing}"))
    # Readers list the backups whose time is not reported after the others: usable[0] has a
    # time unless none has.
    newest = usable[0] if usable else None
    age = max(0.0, (now - newest.created).total_seconds()) if newest and newest.created else None
    if newest is None:
        metrics.append(Metric(f"backup.{k.kind}.age", Severity.CRIT, f"{cluster}: no usable {k.kind} backup in {k.source}"))
    elif age is None:
        metrics.append(Metric(f"backup.{k.kind}.age", Severity.OK,
                              f"{cluster}: newest {k.kind} {newest.name}: time not reported, age not judged"))
    else:
        sev = _age_severity(age, targets.max_age_seconds)
        metrics.append(Metric(
            f"backup.{k.kind}.age", sev,
            f"{cluster}: newest {k.kind} backup is {human_seconds(age)} old"
            + ("" if sev is Severity.OK else f" (target {human_seconds(targets.max_age_seconds)})"),
            age,
        ))
    # Sizes of the newest backup's own series (its shard, collection, database ...).
    series = [e for e in usable if newest is not None and e.series == newest.series and e.size is not None]
    sizes = tuple(e.size for e in reversed(series[:TREND]) if e.size is not None)
    if newest is not None and newest.size is not None:
        before = [e.size for e in series[1:6] if e.size is not None]
        if newest.size == 0:
            metrics.append(Metric(f"backup.{k.kind}.size", Severity.WARN, f"{cluster}: newest {k.kind} backup {newest.name} is empty (0 bytes)"))
        elif len(before) >= 2:
            median = statistics.median(before)
            if median > 0 and newest.size < SIZE_DROP_RATIO * median:
                metrics.append(Metric(
                    f"backup.{k.kind}.size", Severity.WARN,
                    f"{cluster}: newest {k.kind} backup is {human_bytes(newest.size)}, under half the median of the "
                    f"{len(before)} before it ({human_bytes(median)}): partial, or data lost?",
                    newest.size,
                ))
    for label in k.checksum_errors:
        metrics.append(Metric(f"backup.{k.kind}.checksum", Severity.WARN, f"{cluster}: pgBackRest backup {label} found page checksum errors"))
    for warning in k.warnings:
        metrics.append(Metric(f"backup.{k.kind}.setup", Severity.WARN, f"{cluster}: {warning}"))
    for note in k.notes:
        metrics.append(Metric(f"backup.{k.kind}.note", Severity.OK, f"{cluster}: {note}"))
    wal_age = None
    if k.wal_checked:
        if k.wal_time is None:
            metrics.append(Metric("backup.wal.age", Severity.CRIT, f"{cluster}: no WAL segment archived in {k.source}"))
        else:
            wal_age = max(0.0, (now - k.wal_time).total_seconds())
            sev = _age_severity(wal_age, targets.rpo_seconds)
            what = ("latest restorable time (point-in-time recovery)" if k.pitr
                    else f"newest archived WAL {k.wal_segment}")
            metrics.append(Metric(
                "backup.wal.age", sev,
                f"{cluster}: {what} is {human_seconds(wal_age)} old"
                + ("" if sev is Severity.OK else f" (RPO {human_seconds(targets.rpo_seconds)})"),
                wal_age,
            ))
    return KindState(
        kind=k.kind, source=k.source, severity=Severity.worst([m.severity for m in metrics], Severity.OK),
        newest=newest, age_seconds=age, sizes=sizes, count=k.count, more=k.more, recent=k.entries[:RECENT],
        wal_age_seconds=wal_age, wal_segment=k.wal_segment, wal_checked=k.wal_checked, metrics=tuple(metrics),
    )


def judge(fetched: Fetched, targets: Backups, now: float) -> ClusterBackups:
    """Severities and sentences for what fetch() read, as of `now` (epoch seconds)."""
    when = datetime.fromtimestamp(now, tz=UTC)
    cluster = fetched.key
    kinds = tuple(_judge_kind(k, cluster, targets, when) for k in sorted(fetched.kinds, key=lambda k: k.kind))
    metrics: list[Metric] = [m for k in kinds for m in k.metrics]
    for error in fetched.errors:
        metrics.append(Metric("backup.source", Severity.UNKNOWN, f"{cluster}: {error}"))
    for where in fetched.empty:
        metrics.append(Metric("backup.none", Severity.CRIT, f"{cluster}: no backups at all in {where}"))
    p = fetched.protection
    if p is not None:
        if p.get("versioning") != "Enabled":
            metrics.append(Metric("backup.bucket", Severity.WARN,
                                  f"{cluster}: bucket {p.get('bucket')} has versioning off: a deleted or overwritten backup is gone for good"))
        else:
            metrics.append(Metric("backup.bucket", Severity.OK, f"{cluster}: bucket {p.get('bucket')}: {protection_text(p)}"))
    return ClusterBackups(
        key=fetched.key, severity=Severity.worst([m.severity for m in metrics], Severity.OK), kinds=kinds,
        protection=p, metrics=tuple(metrics), fetched_at=fetched.fetched_at,
    )


# ---------------------------------------------------------------------------------------------
# Reading (I/O)


def _prefix(location: S3Location) -> str:
    p = location.prefix.strip("/")
    return p + "/" if p else ""


def read_s3(location: S3Location, cluster: str, environment: str) -> tuple[list[KindFetched], dict[str, Any] | None, list[str]]:
    """The backups of `cluster` under the location, grouped by kind; the bucket's protection;
    errors. Synchronous (boto3): call it in a thread. See the module docstring for its cost."""
    from dbops.platform import s3 as s3ops

    source = f"s3://{location.bucket}/{_prefix(location)}"
    errors: list[str] = []
    manifests: list[tuple[datetime, str]] = []
    truncated = False
    try:
        bucket = s3ops.Bucket(location)
        with bucket.errors(f"listing {source}"):
            pages = bucket.client.get_paginator("list_objects_v2").paginate(
                Bucket=location.bucket, Prefix=_prefix(location), PaginationConfig={"PageSize": 1000})
            for n, page in enumerate(pages):
                if n >= MAX_LIST_PAGES:
                    truncated = True
                    break
                manifests += [(o["LastModified"], o["Key"]) for o in page.get("Contents", [])
                              if o["Key"].endswith(s3ops.MANIFEST_SUFFIX)]
    except s3ops.S3Error as exc:
        return [], None, [exc.message]
    if truncated:
        errors.append(f"more than {MAX_LIST_PAGES * 1000} objects under {source}: only the first "
                      f"{MAX_LIST_PAGES * 1000} listed were judged")

    manifests.sort(reverse=True)
    by_kind: dict[str, list[s3ops.Manifest]] = {}
    for _modified, manifest_key in manifests[:MAX_MANIFEST_READS]:
        try:
            m = bucket.read_manifest(manifest_key[: -len(s3ops.MANIFEST_SUFFIX)])
        except s3ops.S3Error as exc:
            if exc.code == "no_manifest":  # deleted between the listing and now
                continue
            if exc.code == "bad_manifest":
                errors.append(exc.message)
                continue
            return [], None, [exc.message]
        # Several clusters may share a prefix: a manifest that names another cluster is theirs.
        if m.meta.get("cluster") not in (None, cluster) or m.meta.get("environment") not in (None, environment):
            continue
        by_kind.setdefault(m.kind, []).append(m)
    more = truncated or len(manifests) > MAX_MANIFEST_READS

    kinds: list[KindFetched] = []
    for kind, found in by_kind.items():
        found.sort(key=lambda m: (m.created, m.key), reverse=True)
        entries: list[BackupEntry] = []
        heads = 0
        usable_seen = False
        for m in found[: RECENT + TREND]:
            missing = None
            if not usable_seen and heads < MAX_HEADS_PER_KIND:
                heads += 1
                try:
                    missing = _object_missing(bucket, m)
                except s3ops.S3Error as exc:  # the HEAD itself failed: say so, keep the entry
                    errors.append(exc.message)
                if missing is None:
                    usable_seen = True
            series = " ".join(f"{k}={m.meta[k]}" for k in SERIES_KEYS if k in m.meta)
            entries.append(BackupEntry(m.key, m.created, m.size, missing=missing, series=series))
        kinds.append(KindFetched(kind, source, tuple(entries), len(found), more))

    protection = None
    try:
        protection = s3ops.bucket_protection(location)
    except s3ops.S3Error as exc:
        errors.append(f"bucket protection: {exc.message}")
    return kinds, protection, errors


def _object_missing(bucket: Any, m: Any) -> str | None:
    """None when backup `m`'s object is there with its manifest's size; otherwise why not.
    S3Error when the HEAD itself fails (not a 404)."""
    head = bucket.head(m.key)
    if head is None:
        return "its object is gone (the manifest remains): it cannot be restored"
    size = int(head.get("ContentLength", -1))
    if size != m.size:
        return f"its object holds {size} bytes, its manifest says {m.size}: it cannot be restored"
    return None


async def read_pgbackrest(ref: ClusterRef) -> tuple[KindFetched | None, str | None]:
    """The cluster's pgBackRest backups and newest archived WAL segment, or an error line."""
    from dbops.engines.postgres import pgbackrest as pgb

    cfg = ref.cluster.pgbackrest
    assert cfg is not None
    source = f"pgbackrest stanza {cfg.stanza}"
    try:
        info = await pgb.info(cfg.config, cfg.stanza, os_user=cfg.os_user, binary=cfg.bin, timeout=TIMEOUT / 2)
    except pgb.PgBackRestError as exc:
        return None, f"{source}: {exc}"
    except TimeoutError:
        return None, f"{source}: pgbackrest info gave no answer within {TIMEOUT / 2:g} s"
    if not info.usable:
        return None, f"{source}: {info.status_message or f'status {info.status_code}'}"
    backups = sorted(info.backups, key=lambda b: b.stop, reverse=True)
    entries = tuple(BackupEntry(b.label, b.stop, b.size, detail=b.type) for b in backups[: RECENT + TREND])
    wal_time = None
    error = None
    archive_id = _archive_id(info.raw)
    if info.wal_max and archive_id:
        # One archive directory (the first 16 hex digits of a segment name: at most 256 segments).
        path = f"archive/{cfg.stanza}/{archive_id}/{info.wal_max[:16]}"
        try:
            listing = await pgb.repo_ls(cfg.config, cfg.stanza, path, filter=f"^{info.wal_max}",
                                        os_user=cfg.os_user, binary=cfg.bin, timeout=TIMEOUT / 2)
        except pgb.PgBackRestError as exc:
            error = f"{source}: reading the WAL archive: {exc}"
        except TimeoutError:
            error = f"{source}: reading the WAL archive: pgbackrest repo-ls gave no answer within {TIMEOUT / 2:g} s"
        else:
            stamps = [v.get("time") for v in listing.values() if isinstance(v, dict)]
            times = [t for t in stamps if isinstance(t, int)]
            if times:
                wal_time = datetime.fromtimestamp(max(times), tz=UTC)
    kind = KindFetched(
        PGBACKREST_KIND, source, entries, len(backups),
        checksum_errors=tuple(b.label for b in backups[:RECENT] if b.error),
        wal_segment=info.wal_max, wal_time=wal_time, wal_checked=error is None,
    )
    return kind, error


def _archive_id(stanza: dict[str, Any]) -> str | None:
    """The archive id ("15-1") of the current database: the WAL archive the cluster writes now."""
    dbs = stanza.get("db", [])
    current = dbs[-1].get("id") if dbs else None
    ids = [a.get("id") for a in stanza.get("archive", []) if a.get("database", {}).get("id") == current]
    return str(ids[-1]) if ids and ids[-1] else None


def read_rds(ref: ClusterRef) -> tuple[KindFetched | None, str | None]:
    """The cluster's RDS instance's snapshots and point-in-time window, or an error line.
    Synchronous (boto3, through dbops.platform.rds.read_backups): call it in a thread."""
    from dbops.platform import rds

    rds_ref = ref.cluster.rds
    assert rds_ref is not None
    try:
        instance, snapshots, more = rds.read_backups(rds_ref.aws, rds_ref.instance)
    except rds.AwsError as exc:
        return None, exc.message
    available = [s for s in snapshots if s.status == "available" and s.created is not None]
    entries = tuple(
        BackupEntry(s.id, s.created, s.size_gib * GIB if s.size_gib is not None else None, detail=s.type)
        for s in available[: RECENT + TREND]
    )
    notes = ["size: allocated storage (RDS reports no snapshot size)"]
    listed = {s.id for s in available}
    pending = [s for s in snapshots if s.id not in listed]
    if pending:
        notes.append("not available yet or any more: " + ", ".join(f"{s.id} ({s.status or 'no status'})" for s in pending[:3])
                     + (f" and {len(pending) - 3} more" if len(pending) > 3 else ""))
    if more:
        notes.append(f"more than {rds.SNAPSHOT_PAGE_SIZE} snapshots of one type: only the first page RDS listed was "
                     "read, a newer one may be among the rest")
    warnings: list[str] = []
    pitr_reported = instance.backup_retention_days > 0 and instance.latest_restorable is not None
    if instance.backup_retention_days == 0:
        warnings.append(f"{instance.id} has automated backups off (BackupRetentionPeriod 0): no point-in-time "
                        "recovery, only its snapshots")
    elif instance.latest_restorable is None:
        notes.append("latest restorable time not reported: the point-in-time window is not judged")
    kind = KindFetched(
        RDS_KIND, f"RDS instance {instance.id}", entries, len(available), more,
        wal_time=instance.latest_restorable if pitr_reported else None, wal_checked=pitr_reported, pitr=True,
        warnings=tuple(warnings), notes=tuple(notes),
    )
    return kind, None


def read_elasticache(ref: ClusterRef) -> tuple[KindFetched | None, str | None]:
    """The cluster's ElastiCache replication group's snapshots, or an error line. Synchronous
    (boto3, through dbops.platform.elasticache.read_snapshots): call it in a thread."""
    from dbops.platform import elasticache
    from dbops.platform.aws import AwsError

    ec_ref = ref.cluster.elasticache
    assert ec_ref is not None
    try:
        snapshots, more = elasticache.read_snapshots(ec_ref.aws, ec_ref.replication_group)
    except AwsError as exc:
        return None, exc.message
    available = [s for s in snapshots if s.status == "available"]
    entries = tuple(BackupEntry(s.name, s.created, None, detail=s.source) for s in available[: RECENT + TREND])
    notes = ["size not reported by ElastiCache"]
    if available and available[0].created is not None and any(s.created is None for s in available):
        # The newest timed one is judged; say why the others show no time.
        notes.append("time not reported for some snapshots (no SnapshotCreateTime): shown without an age")
    if more:
        notes.append(f"more than {elasticache.SNAPSHOT_PAGE_SIZE} snapshots: only the first page ElastiCache listed was read")
    kind = KindFetched(ELASTICACHE_KIND, f"ElastiCache group {ec_ref.replication_group}", entries, len(available), more,
                       notes=tuple(notes))
    return kind, None


# (cluster, source) pairs whose read is still running in its thread after fetch() stopped
# waiting for it (a slow S3 or AWS API answers within botocore's timeouts, just barely, call after
# call): the next fetch does not start a second read of the same source beside it, so reads of
# one cluster never overlap.
_READING: set[tuple[str, str]] = set()
_READING_LOCK = threading.Lock()


def _read_alone(key: str, source: str, fn: Any, *args: Any) -> Any:
    """fn(*args), or None when this cluster's previous read of `source` is still running."""
    with _READING_LOCK:
        if (key, source) in _READING:
            return None
        _READING.add((key, source))
    try:
        return fn(*args)
    finally:
        with _READING_LOCK:
            _READING.discard((key, source))


async def fetch(ref: ClusterRef, timeout: float = TIMEOUT) -> Fetched:
    """Read a cluster's backup state (see the module docstring for what it costs). Never
    raises for what a server answers; waits at most `timeout` seconds."""
    kinds: list[KindFetched] = []
    errors: list[str] = []
    locations: list[str] = []
    empty: list[str] = []
    protection = None
    backups = ref.cluster.backups

    async def s3_part() -> None:
        nonlocal protection
        loc = backups.s3
        assert loc is not None
        got = await in_daemon_thread(_read_alone, ref.key, "s3", read_s3, loc, ref.name, ref.environment)
        if got is None:
            errors.append(f"s3://{loc.bucket}/{_prefix(loc)}: the previous read has not finished yet (S3 answers "
                          "slowly); it is not read again until it has")
            return
        found, protection, errs = got
        kinds.extend(found)
        errors.extend(errs)
        if not found and protection is not None:  # read (the bucket answered), and nothing there
            empty.append(f"s3://{loc.bucket}/{_prefix(loc)}")

    async def pgbackrest_part() -> None:
        kind, error = await read_pgbackrest(ref)
        if kind is not None:
            kinds.append(kind)
        if error:
            errors.append(error)

    async def aws_part(source: str, reader: Any, where: str) -> None:
        got = await in_daemon_thread(_read_alone, ref.key, source, reader, ref)
        if got is None:
            errors.append(f"{where}: the previous read has not finished yet (AWS answers slowly); it is not read "
                          "again until it has")
            return
        kind, error = got
        if kind is not None:
            kinds.append(kind)
        if error:
            errors.append(error)

    parts = []
    if ref.cluster.rds is not None:
        where = f"RDS instance {ref.cluster.rds.instance}"
        locations.append(where)
        parts.append(aws_part("rds", read_rds, where))
    if ref.cluster.elasticache is not None:
        where = f"ElastiCache group {ref.cluster.elasticache.replication_group}"
        locations.append(where)
        parts.append(aws_part("elasticache", read_elasticache, where))
    if backups.s3 is not None:
        locations.append(f"s3://{backups.s3.bucket}/{_prefix(backups.s3)}")
        parts.append(s3_part())
    if ref.cluster.pgbackrest is not None:
        locations.append(f"pgbackrest stanza {ref.cluster.pgbackrest.stanza}")
        parts.append(pgbackrest_part())
    try:
        await asyncio.wait_for(asyncio.gather(*parts), timeout=timeout)
    except TimeoutError:
        errors.append(f"reading the backups took longer than {timeout:g} s")
    return Fetched(ref.key, time.time(), tuple(kinds), tuple(locations), protection, tuple(errors), tuple(empty))


async def fetch_all(refs: list[ClusterRef]) -> list[Fetched]:
    """fetch() of every cluster with a backup location, concurrently (for `dbops check`)."""
    return list(await asyncio.gather(*(fetch(r) for r in refs if has_backups(r))))
