"""PostgreSQL on AWS RDS: a cluster's DB instance, its read replicas, snapshots and point-in-time
window, and the one call that changes anything here, PromoteReadReplica (made only by the
rds.promote-read-replica runbook).

What a cluster's [rds] section names is its primary DB instance; read replicas are found from it
(ReadReplicaDBInstanceIdentifiers). Everything is synchronous; the UI and the runbook call it
in a thread. boto3 is imported inside the functions (it costs a few hundred ms).
Every failure is an AwsError whose message is one line, safe to show: the instance or call and
the reason, never a credential.

Severity (judge()), decided here because the issue is silent on it:

- an instance whose status is not "available": WARN while RDS is working on it (backing-up,
  modifying, rebooting, upgrading, maintenance ...: it comes back by itself), CRIT when it is
  failed, stopped, out of storage, or cannot reach its encryption key (it will not come back by
  itself); a status this module does not know is WARN.
- a replica whose replication RDS reports as not normal (StatusInfos "read replication"): CRIT
  for error/terminated, WARN otherwise.
- the primary without automated backups (BackupRetentionPeriod 0: no point-in-time recovery):
  WARN.
- no snapshot at all, or the newest available snapshot older than the cluster's
  backups.max_age_seconds: WARN.
- a replica whose CloudWatch ReplicaLag exceeds the cluster's backups.rpo_seconds (failing over
  to it would lose more than the recovery point objective): WARN. No datapoint: "not reported",
  judged nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from dbops.model import Severity, human_seconds
from dbops.platform.s3 import os_reason
from dbops.secrets import Secret, SecretError, redact, resolve, scrub_text

if TYPE_CHECKING:
    from dbops.config import AwsLocation, ClusterRef

__all__ = [
    "AwsError",
    "AwsSession",
    "DbInstance",
    "DbSnapshot",
    "Finding",
    "RdsView",
    "as_utc",
    "collect",
    "describe_instance",
    "judge",
    "promote_read_replica",
    "promote_request",
    "read_backups",
    "status_severity",
]

CONNECT_TIMEOUT = 5.0  # an unreachable endpoint must fail fast: an operator is waiting
READ_TIMEOUT = 20.0
TOTAL_ATTEMPTS = 2  # the first try and one retry: the pane refreshes again anyway
SNAPSHOT_PAGES = 5  # at most 5 x 100 snapshots per refresh: a bound, not O(everything)
SNAPSHOT_PAGE_SIZE = 100  # DescribeDBSnapshots' MaxRecords (its maximum)
LAG_WINDOW = timedelta(minutes=10)  # ReplicaLag datapoints older than this say nothing about now

NOT_REPORTED = "not reported"

# RDS instance statuses (DescribeDBInstances DBInstanceStatus), see the RDS user guide's
# "Viewing Amazon RDS DB instance status".
_WORKING = frozenset({
    "backing-up", "configuring-enhanced-monitoring", "configuring-iam-database-auth", "configuring-log-exports",
    "converting-to-vpc", "creating", "delete-precheck", "maintenance", "modifying", "moving-to-vpc", "rebooting",
    "renaming", "resetting-master-credentials", "starting", "storage-config-upgrade", "storage-initialization",
    "storage-optimization", "upgrading",
})
_BROKEN = frozenset({
    "deleting", "failed", "inaccessible-encryption-credentials", "inaccessible-encryption-credentials-recoverable",
    "incompatible-network", "incompatible-option-group", "incompatible-parameters", "incompatible-restore",
    "insufficient-capacity", "restore-error", "stopped", "stopping", "storage-full",
})


class AwsError(Exception):
    """A failed AWS call. `message` is one line, safe to show; `code` is AWS's error code when
    AWS answered with one (DBInstanceNotFound, AccessDenied ...), else one of ours:
    unreachable, timeout, credentials, config, error."""

    def __init__(self, message: str, code: str = "error"):
        super().__init__(message)
        self.message = message
        self.code = code


# ---------------------------------------------------------------------------------------------
# What is read


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
class Finding:
    severity: Severity
    text: str


class Judged:
    """What an AWS view's severity is: CRIT when AWS could not be read, else its worst finding.
    (The AWS pane, the Backups pane and `dbops check` all read it.)"""

    error: str | None
    findings: tuple[Finding, ...]

    @property
    def severity(self) -> Severity:
        if self.error is not None:
            return Severity.CRIT
        return Severity.worst([f.severity for f in self.findings], default=Severity.OK)


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
    read_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def primary(self) -> DbInstance | None:
        return next((i for i in self.instances if i.id == self.instance), None)


# ---------------------------------------------------------------------------------------------
# Clients and errors


def _endpoint_shown(aws: AwsLocation, service: str) -> str:
    if aws.endpoint_url:
        return scrub_text(aws.endpoint_url)  # a URL may carry user:password@
    return f"https://{service}.{aws.region}.amazonaws.com"


def _safe(text: str, secrets: tuple[Secret | None, ...]) -> str:
    """One line without any credential in it."""
    return " ".join(scrub_text(redact(text, *secrets)).split())


_HINTS = {
    "AccessDenied": "check the credentials and their IAM policy",
    "AccessDeniedException": "check the credentials and their IAM policy",
    "UnauthorizedOperation": "check the credentials and their IAM policy",
    "InvalidClientTokenId": "check access_key_id",
    "SignatureDoesNotMatch": "check secret_access_key",
    "ExpiredToken": "the session token has expired",
}


def _translate(exc: BaseException, aws: AwsLocation, service: str, secrets: tuple[Secret | None, ...], target: str) -> AwsError:
    from botocore import exceptions as bx

    endpoint = _endpoint_shown(aws, service)
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "") or "error")
        detail = [m for m in (str(err.get("Message") or ""), _HINTS.get(code)) if m and m != code]
        return AwsError(_safe(f"{target}: {code}" + (f" ({'; '.join(detail)})" if detail else ""), secrets), code)
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return AwsError(
            f"{target}: no AWS credentials found; give access_key_id and secret_access_key in the cluster's "
            "aws = { ... }, or provide them the usual AWS way (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, "
            "an instance profile)",
            "credentials",
        )
    reason = os_reason(exc) or _safe(str(exc), secrets)
    if isinstance(exc, bx.ConnectTimeoutError):
        return AwsError(_safe(f"{target}: cannot reach {endpoint}: no answer within {CONNECT_TIMEOUT:g} s", secrets), "unreachable")
    if isinstance(exc, bx.ReadTimeoutError):
        return AwsError(_safe(f"{target}: {endpoint} sent nothing for {READ_TIMEOUT:g} s", secrets), "timeout")
    if isinstance(exc, bx.SSLError):
        return AwsError(_safe(f"{target}: TLS error with {endpoint}: {reason}", secrets), "unreachable")
    if isinstance(exc, bx.ConnectionError):  # EndpointConnectionError, ProxyConnectionError ...
        return AwsError(_safe(f"{target}: cannot reach {endpoint}: {reason}", secrets), "unreachable")
    if isinstance(exc, bx.HTTPClientError):
        return AwsError(_safe(f"{target}: the connection to {endpoint} broke: {reason}", secrets), "unreachable")
    return AwsError(_safe(f"{target}: {type(exc).__name__}: {exc}", secrets))


class AwsSession:
    """boto3 clients for one AwsLocation, and the secrets their messages must never show."""

    def __init__(self, aws: AwsLocation, target: str):
        self.aws = aws
        self.target = target
        try:
            key_id = resolve(aws.access_key_id)
            secret_key = resolve(aws.secret_access_key)
        except SecretError as exc:
            raise AwsError(f"{target}: AWS credentials: {exc}", "credentials") from None
        self.secrets = (key_id, secret_key)
        import boto3.session

        # A session per use: boto3's default session is shared and not thread-safe, and these
        # functions run in worker threads.
        self._session = boto3.session.Session()
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            from botocore.config import Config

            key_id, secret_key = self.secrets
            try:
                self._clients[service] = self._session.client(
                    service,
                    region_name=self.aws.region,
                    endpoint_url=self.aws.endpoint_url or None,
                    aws_access_key_id=key_id.reveal() if key_id else None,
                    aws_secret_access_key=secret_key.reveal() if secret_key else None,
                    config=Config(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                                  retries={"mode": "standard", "total_max_attempts": TOTAL_ATTEMPTS},
                                  user_agent_extra="dbops"),
                )
            except ValueError as exc:  # botocore's "Invalid endpoint: ..."
                raise AwsError(f"{self.target}: endpoint {_endpoint_shown(self.aws, service)}: "
                               f"{_safe(str(exc), self.secrets)}", "config") from None
        return self._clients[service]

    @contextlib.contextmanager
    def errors(self, service: str, target: str | None = None) -> Iterator[None]:
        """Turn botocore's exceptions raised inside into AwsError (one line, no credentials)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, self.aws, service, self.secrets, target or self.target) from None


# ---------------------------------------------------------------------------------------------
# Parsing AWS's answers (tolerant: a field AWS leaves out is "not reported", never a crash)


def as_utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _instance(d: dict[str, Any]) -> DbInstance:
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


def _snapshot(d: dict[str, Any]) -> DbSnapshot:
    size = d.get("AllocatedStorage")
    return DbSnapshot(
        id=str(d.get("DBSnapshotIdentifier", "?")),
        instance=str(d.get("DBInstanceIdentifier", "")),
        type=str(d.get("SnapshotType", "")),
        created=as_utc(d.get("SnapshotCreateTime")),
        size_gib=int(size) if isinstance(size, int) else None,
        status=str(d.get("Status", "")),
    )


def _same_region_id(ident: str) -> str | None:
    """A replica named by ARN lives in another region (a cross-region replica): not described
    here. Same-region replicas are named by their identifier."""
    return None if ident.startswith("arn:") else ident


# ---------------------------------------------------------------------------------------------
# Reading


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
    return _instance(found[0]) if found else None


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
    newest = max(points, key=lambda p: as_utc(p.get("Timestamp")) or datetime.min.replace(tzinfo=timezone.utc))
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
            out += [_snapshot(s) for s in page.get("DBSnapshots") or []]
    # Newest first; one still being taken (no time yet) on top.
    newest_first = sorted(out, key=lambda s: s.created or datetime.max.replace(tzinfo=timezone.utc), reverse=True)
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
    snapshots.sort(key=lambda s: s.created or datetime.max.replace(tzinfo=timezone.utc), reverse=True)
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
        e, l = as_utc(window.get("EarliestTime")), as_utc(window.get("LatestTime"))
        earliest = e if e is not None and (earliest is None or e < earliest) else earliest
        latest = l if l is not None and (latest is None or l > latest) else latest
    return earliest, latest


def collect(ref: ClusterRef, now: datetime | None = None) -> RdsView:
    """Everything the AWS pane shows for a cluster with [rds]. Never raises for what AWS says:
    a call that fails is the view's `error` (nothing read) or one of its `notes`."""
    rds_ref = ref.cluster.rds
    assert rds_ref is not None, "collect() is for clusters with an [rds] section"
    now = now or datetime.now(timezone.utc)
    base = dict(cluster=ref.key, instance=rds_ref.instance, region=rds_ref.aws.region, read_at=now)
    try:
        session = AwsSession(rds_ref.aws, f"RDS instance {rds_ref.instance}")
        primary = _describe(session, rds_ref.instance)
    except AwsError as exc:
        return RdsView(**base, error=exc.message)
    if primary is None:
        return RdsView(**base, error=f"RDS instance {rds_ref.instance}: no such DB instance in {rds_ref.aws.region} "
                                     f"(check [rds] instance and aws.region)")
    notes: list[str] = []
    instances = [primary]
    for ident in primary.replicas:
        local = _same_region_id(ident)
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
    view = RdsView(**base, instances=tuple(instances), snapshots=tuple(snapshots), earliest_restorable=earliest,
                   latest_restorable=latest, notes=tuple(notes))
    return replace(view, findings=tuple(judge(view, ref, now)))


# ---------------------------------------------------------------------------------------------
# Judging


def status_severity(status: str) -> Severity:
    if status == "available":
        return Severity.OK
    if status in _BROKEN:
        return Severity.CRIT
    return Severity.WARN  # _WORKING, and any status this module does not know


def judge(view: RdsView, ref: ClusterRef, now: datetime) -> list[Finding]:
    """What is wrong, worst first (see the module's docstring for the rules)."""
    out: list[Finding] = []
    backups = ref.cluster.backups
    for inst in view.instances:
        role = "replica" if inst.is_replica else "instance"
        sev = status_severity(inst.status)
        if sev is not Severity.OK:
            what = "RDS is working on it" if inst.status in _WORKING else "it will not recover by itself"
            out.append(Finding(sev, f"{role} {inst.id} is {inst.status}, not available ({what})"))
        for status, normal, message in inst.replication:
            if not normal:
                bad = Severity.CRIT if status in ("error", "terminated") else Severity.WARN
                out.append(Finding(bad, f"replica {inst.id}: replication {status}" + (f": {message}" if message else "")))
        if inst.lag_seconds is not None and inst.lag_seconds > backups.rpo_seconds:
            out.append(Finding(Severity.WARN, f"replica {inst.id} lags {inst.lag_seconds:g} s, more than the RPO "
                                              f"({backups.rpo_seconds:g} s)"))
    primary = view.primary
    if primary is not None and primary.backup_retention_days == 0:
        out.append(Finding(Severity.WARN, f"{primary.id} has no automated backups (BackupRetentionPeriod 0): "
                                          "no point-in-time recovery"))
    done = [s for s in view.snapshots if s.created is not None and s.status == "available"]
    if not done:
        out.append(Finding(Severity.WARN, f"{view.instance} has no available snapshot"))
    else:
        age = (now - max(s.created for s in done if s.created)).total_seconds()
        if age > backups.max_age_seconds:
            out.append(Finding(Severity.WARN, f"newest snapshot is {human_seconds(age)} old, older than backups.max_age_seconds "
                                              f"({human_seconds(backups.max_age_seconds)})"))
    return sorted(out, key=lambda f: -f.severity.rank)


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
    return _instance(answer.get("DBInstance") or {"DBInstanceIdentifier": replica})
