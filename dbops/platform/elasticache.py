"""Redis on AWS ElastiCache: a redis cluster's replication group (its [elasticache] section), its
members and its snapshots, for the AWS pane. Read-only; synchronous (the UI calls it in a
thread); boto3 imported lazily, credentials and errors handled as for RDS (dbops.platform.aws).

The Redis pane monitors the nodes themselves (TLS + the AUTH token as the cluster's password);
this adds what only the AWS API knows: the group's status, automatic failover and Multi-AZ, the
snapshot retention, and the snapshots.

Severity: the group not "available": WARN while ElastiCache works on it (creating, modifying,
snapshotting), CRIT when it failed or is being deleted; SnapshotRetentionLimit 0 (no automatic
backups) WARN; no available snapshot WARN; the newest snapshot older than the cluster's
backups.max_age_seconds WARN. A snapshot whose time ElastiCache does not report (NodeSnapshots
without SnapshotCreateTime: moto's answer) shows "not reported", and its age is not judged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dbops.model import Severity, human_seconds
from dbops.platform.aws import AwsError, AwsSession, Finding, Judged, as_utc

if TYPE_CHECKING:
    from dbops.config import AwsLocation, ClusterRef

__all__ = ["CacheMember", "CacheSnapshot", "CacheView", "collect", "judge", "read_snapshots"]

SNAPSHOT_PAGES = 5  # at most 5 x 50 snapshots per refresh
SNAPSHOT_PAGE_SIZE = 50  # DescribeSnapshots' MaxRecords (its maximum)

_WORKING = frozenset({"creating", "modifying", "snapshotting"})
_BROKEN = frozenset({"create-failed", "deleting"})


@dataclass(frozen=True)
class CacheMember:
    cluster_id: str  # the member cache cluster (one node each when cluster mode is off)
    node_group: str
    role: str  # primary / replica, as ElastiCache reports it ("" when it does not)
    az: str
    endpoint: str


@dataclass(frozen=True)
class CacheSnapshot:
    name: str
    source: str  # manual / automated
    status: str
    created: datetime | None  # None: not reported


@dataclass(frozen=True)
class CacheView(Judged):
    cluster: str  # the cluster's key, environment/name
    group: str  # the replication group id
    region: str
    status: str = ""
    engine: str = ""
    node_type: str = ""
    automatic_failover: str = ""
    multi_az: str = ""
    retention_days: int | None = None  # SnapshotRetentionLimit
    members: tuple[CacheMember, ...] = ()
    snapshots: tuple[CacheSnapshot, ...] = ()  # newest first, those without a time last
    findings: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = ()
    error: str | None = None
    read_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _members(group: dict[str, Any]) -> list[CacheMember]:
    out: list[CacheMember] = []
    for ng in group.get("NodeGroups") or []:
        for m in ng.get("NodeGroupMembers") or []:
            ep = m.get("ReadEndpoint") or {}
            out.append(CacheMember(
                cluster_id=str(m.get("CacheClusterId", "?")), node_group=str(ng.get("NodeGroupId", "")),
                role=str(m.get("CurrentRole", "")), az=str(m.get("PreferredAvailabilityZone", "")),
                endpoint=f"{ep['Address']}:{ep.get('Port', '')}" if ep.get("Address") else "",
            ))
    listed = {m.cluster_id for m in out}
    # Cluster mode on: NodeGroupMembers is empty, the member clusters are only named.
    out += [CacheMember(str(c), "", "", "", "") for c in group.get("MemberClusters") or [] if c not in listed]
    return out


def _snapshot(d: dict[str, Any]) -> CacheSnapshot:
    times = [as_utc(n.get("SnapshotCreateTime")) for n in d.get("NodeSnapshots") or []]
    known = [t for t in times if t is not None]
    return CacheSnapshot(name=str(d.get("SnapshotName", "?")), source=str(d.get("SnapshotSource", "")),
                         status=str(d.get("SnapshotStatus", "")), created=max(known) if known else None)


def _snapshots(session: AwsSession, group_id: str, pages: int) -> tuple[list[CacheSnapshot], bool]:
    """The group's snapshots, at most `pages` pages of SNAPSHOT_PAGE_SIZE, newest first (those
    whose time is not reported after them); and whether ElastiCache has more than were read."""
    from botocore.exceptions import ClientError

    client = session.client("elasticache")
    out: list[CacheSnapshot] = []
    target = f"snapshots of ElastiCache replication group {group_id}"
    with session.errors("elasticache", target):
        try:
            listing = client.get_paginator("describe_snapshots").paginate(
                ReplicationGroupId=group_id,
                PaginationConfig={"MaxItems": pages * SNAPSHOT_PAGE_SIZE, "PageSize": SNAPSHOT_PAGE_SIZE})
            for page in listing:
                out += [_snapshot(s) for s in page.get("Snapshots") or []]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("ReplicationGroupNotFoundFault", "ReplicationGroupNotFound"):
                raise AwsError(f"{target}: no such replication group in {session.aws.region} (check [elasticache] "
                               "replication_group and aws.region)", "ReplicationGroupNotFound") from None
            raise
    out.sort(key=lambda s: (s.created is None, -s.created.timestamp() if s.created else 0.0))
    return out, listing.resume_token is not None


def read_snapshots(aws: AwsLocation, group_id: str) -> tuple[list[CacheSnapshot], bool]:
    """What the Backups pane needs of a replication group: one DescribeSnapshots page
    (SNAPSHOT_PAGE_SIZE, its maximum), whatever the number of snapshots; newest first, those
    whose time ElastiCache does not report last; and whether there are more than were read.
    Raises AwsError (one line)."""
    return _snapshots(AwsSession(aws, f"ElastiCache replication group {group_id}"), group_id, pages=1)


def collect(ref: ClusterRef, now: datetime | None = None) -> CacheView:
    """Everything the AWS pane shows for a redis cluster with [elasticache]; never raises for
    what AWS says: a failed call is the view's `error` (nothing read) or one of its `notes`."""
    ec_ref = ref.cluster.elasticache
    assert ec_ref is not None, "collect() is for clusters with an [elasticache] section"
    now = now or datetime.now(UTC)
    group_id = ec_ref.replication_group
    # Nothing read yet: every return below fills in this view.
    base = CacheView(cluster=ref.key, group=group_id, region=ec_ref.aws.region, read_at=now)
    from botocore.exceptions import ClientError

    try:
        session = AwsSession(ec_ref.aws, f"ElastiCache replication group {group_id}")
        client = session.client("elasticache")
        with session.errors("elasticache"):
            try:
                groups = client.describe_replication_groups(ReplicationGroupId=group_id).get("ReplicationGroups") or []
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("ReplicationGroupNotFoundFault", "ReplicationGroupNotFound"):
                    groups = []
                else:
                    raise
    except AwsError as exc:
        return replace(base, error=exc.message)
    if not groups:
        return replace(base, error=f"ElastiCache replication group {group_id}: no such replication group in "
                                     f"{ec_ref.aws.region} (check [elasticache] replication_group and aws.region)")
    g = groups[0]
    notes: list[str] = []
    snapshots: list[CacheSnapshot] = []
    try:
        snapshots, _more = _snapshots(session, group_id, SNAPSHOT_PAGES)
    except AwsError as exc:
        notes.append(exc.message)
    retention = g.get("SnapshotRetentionLimit")
    view = replace(
        base, status=str(g.get("Status", "unknown")), engine=str(g.get("Engine", "redis")),
        node_type=str(g.get("CacheNodeType", "")), automatic_failover=str(g.get("AutomaticFailover", "")),
        multi_az=str(g.get("MultiAZ", "")), retention_days=int(retention) if isinstance(retention, int) else None,
        members=tuple(_members(g)), snapshots=tuple(snapshots), notes=tuple(notes),
    )
    return replace(view, findings=tuple(judge(view, ref, now)))


def status_severity(status: str) -> Severity:
    if status == "available":
        return Severity.OK
    return Severity.CRIT if status in _BROKEN else Severity.WARN


def judge(view: CacheView, ref: ClusterRef, now: datetime) -> list[Finding]:
    out: list[Finding] = []
    sev = status_severity(view.status)
    if sev is not Severity.OK:
        what = "ElastiCache is working on it" if view.status in _WORKING else "it will not recover by itself"
        out.append(Finding(sev, f"replication group {view.group} is {view.status}, not available ({what})"))
    if view.retention_days == 0:
        out.append(Finding(Severity.WARN, f"{view.group} takes no automatic snapshots (SnapshotRetentionLimit 0)"))
    done = [s for s in view.snapshots if s.status == "available"]
    if not done:
        out.append(Finding(Severity.WARN, f"{view.group} has no available snapshot"))
    else:
        timed = [s.created for s in done if s.created is not None]
        if timed:
            age = (now - max(timed)).total_seconds()
            limit = ref.cluster.backups.max_age_seconds
            if age > limit:
                out.append(Finding(Severity.WARN, f"newest snapshot is {human_seconds(age)} old, older than "
                                                  f"backups.max_age_seconds ({human_seconds(limit)})"))
    return sorted(out, key=lambda f: -f.severity.rank)
