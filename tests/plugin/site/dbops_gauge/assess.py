"""Judges a gauge: its level against the [gauge] thresholds."""

from dbops.engine_spec import OverviewRow, topology
from dbops.model import ClusterHealth, MemberHealth, Metric, Severity, Snapshot


def assess_cluster(ref, snapshots: dict[str, Snapshot], baseline=None, now=None) -> ClusterHealth:
    options = ref.cluster.options["gauge"]
    members = []
    for snap in snapshots.values():
        if snap.data is None:
            members.append(MemberHealth(snap, "gauge", Severity.CRIT if snap.error else Severity.UNKNOWN,
                                        (Metric("reachable", Severity.CRIT, snap.error or "not polled yet"),)))
            continue
        level = snap.data.level
        t = options.thresholds
        sev = Severity.CRIT if level >= t.level_crit else Severity.WARN if level >= t.level_warn else Severity.OK
        members.append(MemberHealth(snap, "gauge", sev, (Metric("level", sev, f"level {level}{options.unit}", level),)))
    worst = Severity.worst([m.severity for m in members], Severity.OK)
    return ClusterHealth(ref.environment, ref.name, "gauge", worst, tuple(members))


def update_baseline(baseline, snapshots):
    return baseline or {}


def overview_row(ref, health: ClusterHealth) -> OverviewRow:
    levels = [m.snapshot.data.level for m in health.members if m.snapshot.data is not None]
    return OverviewRow(topology=topology(health), long=str(max(levels)) if levels else "-")
