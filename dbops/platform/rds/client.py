"""Calling RDS (and CloudWatch for ReplicaLag): describing a cluster's DB instance, its read
replicas, snapshots and point-in-time window, and PromoteReadReplica. Synchronous: the UI and the
runbook call it in a thread. boto3 is imported inside dbops.platform.aws's functions; every
failure is an AwsError (one line, safe to show)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dbops.platform.aws import AwsError, AwsSession
from dbops.platform.rds.assess import judge
from dbops.platform.rds.data import DbInstance, DbSnapshot, RdsView, as_utc, instance_from, same_region_id, snapshot_from

if TYPE_CHECKING:
    from dbops.config import AwsLocation, ClusterRef

SNAPSHOT_PAGES = 5  # at most 5 x 100 snapshots per refresh: a bound, not O(everything)
SNAPSHOT_PAGE_SIZE = 100  # DescribeDBSnapshots' MaxRecords (its maximum)
LAG_WINDOW = timedelta(minutes=10)  # ReplicaLag datapoints older than this say nothing about now


def _describe(session: AwsSession, ident: str) -> DbInstance | None:
    rds = session.client("rds")
    from botocore.exceptions import ClientError

    with session.errors("rds", f"RDS instance {ident}"):
        try:
            answer = rds.describe_db_instances(DBInstanceIdentifier=ident)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("DBInstanceNotFound", "DBInstanceNotFoundFault"):
                return None
            raise
    found = answer.get("DBInstances") or []
    return instance_from(found[0]) if found else None


def describe_instance(aws: AwsLocation, ident: str) -> DbInstance | None:
    """One DB instance, None if RDS has none by that identifier."""
    return _describe(AwsSession(aws, f"RDS instance {ident}"), ident)


def _replica_lag(session: AwsSession, ident: str, now: datetime) -> float | None:
    """The newest CloudWatch ReplicaLag datapoint (seconds) of the last LAG_WINDOW, or None."""
    cw = session.client("cloudwatch")
    with session.errors("cloudwatch", f"CloudWatch ReplicaLag of {ident}"):
        answer = cw.get_metric_statistics(
            Namespace="AWS/RDS", MetricName="ReplicaLag",
            Dimensions=[{"Name": "DBInstanceIdentifier", "Value": ident}],
            StartTime=now - LAG_WINDOW, EndTime=now + timedelta(minutes=1), Period=60, Statistics=["Maximum"],
        )
    points = [p for p in answer.get("Datapoints") or [] if isinstance(p.get("Maximum"), (int, float))]
    if not points:
        return None
    newest = max(points, key=lambda p: as_utc(p.get("Timestamp")) or datetime.min.replace(tzinfo=UTC))
    return float(newest["Maximum"])


def _snapshots(session: AwsSession, ident: str, pages: int = SNAPSHOT_PAGES,
               snapshot_type: str | None = None) -> tuple[list[DbSnapshot], bool]:
    """The instance's snapshots (of `snapshot_type`, or automated and manual), at most `pages`
    pages of SNAPSHOT_PAGE_SIZE, newest first; and whether RDS has more than were read."""
    rds = session.client("rds")
    out: list[DbSnapshot] = []
    params: dict[str, Any] = {"DBInstanceIdentifier": ident}
    if snapshot_type:
        params["SnapshotType"] = snapshot_type
    with session.errors("rds", f"snapshots of RDS instance {ident}"):
        listing = rds.get_paginator("describe_db_snapshots").paginate(
            **params, PaginationConfig={"MaxItems": pages * SNAPSHOT_PAGE_SIZE, "PageSize": SNAPSHOT_PAGE_SIZE})
        for page in listing:
            out += [snapshot_from(s) for s in page.get("DBSnapshots") or []]
    # Newest first; one still being taken (no time yet) on top.
    newest_first = sorted(out, key=lambda s: s.created or datetime.max.replace(tzinfo=UTC), reverse=True)
    return newest_first, listing.resume_token is not None


def read_backups(aws: AwsLocation, ident: str) -> tuple[DbInstance, list[DbSnapshot], bool]:
    """What the Backups pane needs of a DB instance, in three calls whatever the number of
    snapshots: the instance (its LatestRestorableTime and BackupRetentionPeriod), then one page
    (SNAPSHOT_PAGE_SIZE) of its automated snapshots and one of its manual ones. Automated ones
    always fit (RDS keeps at most 35 days of them); more manual ones than a page are not read,
    and the third value says so. Snapshots newest first. Raises AwsError (one line)."""
    session = AwsSession(aws, f"RDS instance {ident}")
    instance = _describe(session, ident)
    if instance is None:
        raise AwsError(f"RDS instance {ident}: no such DB instance in {aws.region} (check [rds] instance and "
                       "aws.region)", "DBInstanceNotFound")
    snapshots: list[DbSnapshot] = []
    more = False
    for snapshot_type in ("automated", "manual"):
        found, truncated = _snapshots(session, ident, pages=1, snapshot_type=snapshot_type)
        snapshots += found
        more = more or truncated
    snapshots.sort(key=lambda s: s.created or datetime.max.replace(tzinfo=UTC), reverse=True)
    return instance, snapshots, more


def _restore_window(session: AwsSession, ident: str) -> tuple[datetime | None, datetime | None]:
    """RestoreWindow (EarliestTime, LatestTime) of the instance's automated backups."""
    rds = session.client("rds")
    with session.errors("rds", f"automated backups of RDS instance {ident}"):
        answer = rds.describe_db_instance_automated_backups(DBInstanceIdentifier=ident)
    earliest: datetime | None = None
    latest: datetime | None = None
    for b in answer.get("DBInstanceAutomatedBackups") or []:
        window = b.get("RestoreWindow") or {}
        first, last = as_utc(window.get("EarliestTime")), as_utc(window.get("LatestTime"))
        earliest = first if first is not None and (earliest is None or first < earliest) else earliest
        latest = last if last is not None and (latest is None or last > latest) else latest
    return earliest, latest


def collect(ref: ClusterRef, now: datetime | None = None) -> RdsView:
    """Everything the AWS pane shows for a cluster with [rds]. Never raises for what AWS says:
    a call that fails is the view's `error` (nothing read) or one of its `notes`."""
    rds_ref = ref.cluster.rds
    assert rds_ref is not None, "collect() is for clusters with an [rds] section"
    now = now or datetime.now(UTC)
    # Nothing read yet: every return below fills in this view.
    base = RdsView(cluster=ref.key, instance=rds_ref.instance, region=rds_ref.aws.region, read_at=now)
    try:
        session = AwsSession(rds_ref.aws, f"RDS instance {rds_ref.instance}")
        primary = _describe(session, rds_ref.instance)
    except AwsError as exc:
        return replace(base, error=exc.message)
    if primary is None:
        return replace(base, error=f"RDS instance {rds_ref.instance}: no such DB instance in {rds_ref.aws.region} "
                                    f"(check [rds] instance and aws.region)")
    notes: list[str] = []
    instances = [primary]
    for ident in primary.replicas:
        local = same_region_id(ident)
        if local is None:
            notes.append(f"cross-region replica {ident}: not described (another region)")
            continue
        try:
            replica = _describe(session, local)
        except AwsError as exc:
            notes.append(exc.message)
            continue
        if replica is None:
            notes.append(f"replica {local}: listed by {primary.id} but RDS has no such instance (being deleted?)")
            continue
        instances.append(replica)
    lags: dict[str, float | None] = {}
    for inst in instances:
        if inst.is_replica:
            try:
                lags[inst.id] = _replica_lag(session, inst.id, now)
            except AwsError as exc:
                notes.append(exc.message)
    instances = [replace(i, lag_seconds=lags.get(i.id)) for i in instances]
    snapshots: list[DbSnapshot] = []
    try:
        snapshots, _more = _snapshots(session, primary.id)
    except AwsError as exc:
        notes.append(exc.message)
    earliest = latest = None
    try:
        earliest, latest = _restore_window(session, primary.id)
    except AwsError as exc:
        notes.append(exc.message)
    latest = latest or primary.latest_restorable
    view = replace(base, instances=tuple(instances), snapshots=tuple(snapshots), earliest_restorable=earliest,
                   latest_restorable=latest, notes=tuple(notes))
    return replace(view, findings=tuple(judge(view, ref, now)))


# ---------------------------------------------------------------------------------------------
# Promotion (the runbook's only write)


def promote_request(replica: str, backup_retention_days: int | None) -> dict[str, Any]:
    """The PromoteReadReplica parameters, exactly as sent (and shown in the plan)."""
    params: dict[str, Any] = {"DBInstanceIdentifier": replica}
    if backup_retention_days is not None:
        params["BackupRetentionPeriod"] = backup_retention_days
    return params


def promote_read_replica(aws: AwsLocation, replica: str, backup_retention_days: int | None) -> DbInstance:
    """Send PromoteReadReplica; the instance as RDS answers (usually "modifying" at first)."""
    session = AwsSession(aws, f"RDS instance {replica}")
    rds = session.client("rds")
    with session.errors("rds", f"PromoteReadReplica {replica}"):
        answer = rds.promote_read_replica(**promote_request(replica, backup_retention_days))
    return instance_from(answer.get("DBInstance") or {"DBInstanceIdentifier": replica})
