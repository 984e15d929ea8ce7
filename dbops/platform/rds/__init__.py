"""PostgreSQL on AWS RDS: a cluster's DB instance, its read replicas, snapshots and point-in-time
window, and the one call that changes anything here, PromoteReadReplica (made only by the
rds.promote-read-replica runbook).

What a cluster's [rds] section names is its primary DB instance; read replicas are found from it
(ReadReplicaDBInstanceIdentifiers). Everything is synchronous; the UI and the runbook call it
in a thread. boto3 is imported inside the functions (it costs a few hundred ms).
Every failure is an AwsError whose message is one line, safe to show: the instance or call and
the reason, never a credential.

Shaped like an engine: client (the AWS calls), data (frozen values read from AWS's answers),
assess (pure judgement: severities). Everything the rest of dbops uses is importable from here.

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

from dbops.platform.aws import AwsError, AwsSession, Finding, Judged
from dbops.platform.rds.assess import judge, status_severity
from dbops.platform.rds.client import (
    LAG_WINDOW,
    SNAPSHOT_PAGE_SIZE,
    SNAPSHOT_PAGES,
    collect,
    describe_instance,
    promote_read_replica,
    promote_request,
    read_backups,
)
from dbops.platform.rds.data import NOT_REPORTED, DbInstance, DbSnapshot, RdsView, as_utc

__all__ = [
    "LAG_WINDOW",
    "NOT_REPORTED",
    "SNAPSHOT_PAGES",
    "SNAPSHOT_PAGE_SIZE",
    "AwsError",
    "AwsSession",
    "DbInstance",
    "DbSnapshot",
    "Finding",
    "Judged",
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
