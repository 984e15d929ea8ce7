"""Judging one refresh of a cluster's RDS side: pure functions, no AWS calls (the rules are in
the package's docstring)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from dbops.model import Severity, human_seconds
from dbops.platform.aws import Finding
from dbops.platform.rds.data import RdsView

if TYPE_CHECKING:
    from dbops.config import ClusterRef

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


def status_severity(status: str) -> Severity:
    if status == "available":
        return Severity.OK
    if status in _BROKEN:
        return Severity.CRIT
    return Severity.WARN  # _WORKING, and any status this module does not know


def judge(view: RdsView, ref: ClusterRef, now: datetime) -> list[Finding]:
    """What is wrong, worst first (see the package's docstring for the rules)."""
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
