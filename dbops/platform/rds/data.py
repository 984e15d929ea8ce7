"""What one refresh of a cluster's RDS side found: frozen values read from AWS's answers (tolerant:
a field AWS leaves out is "not reported", never a crash). No boto3 here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dbops.platform.aws import Finding, Judged, as_utc

NOT_REPORTED = "not reported"


@dataclass(frozen=True)
class DbInstance:
    id: str
    status: str
    instance_class: str
    engine: str
    engine_version: str
    az: str
    multi_az: bool
    endpoint: str  # host:port, "" while RDS has not assigned one
    source: str | None  # ReadReplicaSourceDBInstanceIdentifier: set on a read replica
    replicas: tuple[str, ...]  # ReadReplicaDBInstanceIdentifiers
    backup_retention_days: int
    latest_restorable: datetime | None
    # StatusInfos of type "read replication": (status, normal, message)
    replication: tuple[tuple[str, bool, str], ...] = ()
    lag_seconds: float | None = None  # CloudWatch ReplicaLag, newest datapoint; None: not reported

    @property
    def is_replica(self) -> bool:
        return bool(self.source)

    @property
    def lag_text(self) -> str:
        if not self.is_replica:
            return "-"
        return NOT_REPORTED if self.lag_seconds is None else f"{self.lag_seconds:g} s"


@dataclass(frozen=True)
class DbSnapshot:
    id: str
    instance: str
    type: str  # automated, manual, awsbackup ...
    created: datetime | None  # None while RDS is still taking it
    size_gib: int | None  # AllocatedStorage of the snapshot (RDS reports no byte size)
    status: str


@dataclass(frozen=True)
class RdsView(Judged):
    """One refresh of a cluster's RDS side. `error` set: nothing could be read (and the lists
    are empty); `notes` are parts that could not be read while the rest was."""

    cluster: str  # the cluster's key, environment/name
    instance: str  # the configured primary
    region: str
    instances: tuple[DbInstance, ...] = ()
    snapshots: tuple[DbSnapshot, ...] = ()  # newest first
    earliest_restorable: datetime | None = None
    latest_restorable: datetime | None = None
    findings: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = ()
    error: str | None = None
    read_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def primary(self) -> DbInstance | None:
        return next((i for i in self.instances if i.id == self.instance), None)


def instance_from(d: dict[str, Any]) -> DbInstance:
    """A DBInstance of DescribeDBInstances' (or PromoteReadReplica's) answer."""
    ep = d.get("Endpoint") or {}
    endpoint = f"{ep['Address']}:{ep.get('Port', '')}" if ep.get("Address") else ""
    replication = tuple(
        (str(s.get("Status", "")), bool(s.get("Normal", True)), str(s.get("Message", "")))
        for s in d.get("StatusInfos") or [] if s.get("StatusType") == "read replication"
    )
    return DbInstance(
        id=str(d.get("DBInstanceIdentifier", "?")),
        status=str(d.get("DBInstanceStatus", "unknown")),
        instance_class=str(d.get("DBInstanceClass", "")),
        engine=str(d.get("Engine", "")),
        engine_version=str(d.get("EngineVersion", "")),
        az=str(d.get("AvailabilityZone", "")),
        multi_az=bool(d.get("MultiAZ", False)),
        endpoint=endpoint,
        source=d.get("ReadReplicaSourceDBInstanceIdentifier") or None,
        replicas=tuple(d.get("ReadReplicaDBInstanceIdentifiers") or ()),
        backup_retention_days=int(d.get("BackupRetentionPeriod") or 0),
        latest_restorable=as_utc(d.get("LatestRestorableTime")),
        replication=replication,
    )


def snapshot_from(d: dict[str, Any]) -> DbSnapshot:
    """A DBSnapshot of DescribeDBSnapshots' answer."""
    size = d.get("AllocatedStorage")
    return DbSnapshot(
        id=str(d.get("DBSnapshotIdentifier", "?")),
        instance=str(d.get("DBInstanceIdentifier", "")),
        type=str(d.get("SnapshotType", "")),
        created=as_utc(d.get("SnapshotCreateTime")),
        size_gib=int(size) if isinstance(size, int) else None,
        status=str(d.get("Status", "")),
    )


def same_region_id(ident: str) -> str | None:
    """A replica named by ARN lives in another region (a cross-region replica): not described
    here. Same-region replicas are named by their identifier."""
    return None if ident.startswith("arn:") else ident
