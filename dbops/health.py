"""Severity of a cluster from its members' snapshots, dispatched by engine.

Severity is the core's job, not the widgets': the pane, the overview and `dbops check` all read
the same ClusterHealth.
"""

from __future__ import annotations

from typing import Any

from dbops.config import ClusterRef
from dbops.engine_spec import assessor
from dbops.model import ClusterHealth, Snapshot


# Each engine's spec names its assessment module: pure Python over the engine's data classes,
# so importing one never pulls in the engine's client library.
def _assessor(ref: ClusterRef) -> Any:
    return assessor(ref.cluster.engine)


def assess_cluster(
    ref: ClusterRef, snapshots: dict[str, Snapshot], baseline: dict[str, Any] | None = None, now: float | None = None
) -> ClusterHealth:
    """`baseline` holds what a long-running watcher saw first (e.g. archive failure counters);
    `now` is the clock ages are measured against (frozen in tests)."""
    return _assessor(ref).assess_cluster(ref, snapshots, baseline, now)


def update_baseline(ref: ClusterRef, baseline: dict[str, Any] | None, snapshots: dict[str, Snapshot]) -> dict[str, Any]:
    return _assessor(ref).update_baseline(baseline, snapshots)


def sort_worst_first(clusters: list[ClusterHealth]) -> list[ClusterHealth]:
    return sorted(clusters, key=lambda c: (-c.severity.rank, c.environment, c.name))
