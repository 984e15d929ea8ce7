"""Severity of a cluster from its members' snapshots, dispatched by engine.

Severity is the core's job, not the widgets': the pane, the overview and `dbops check` all read
the same ClusterHealth.
"""

from __future__ import annotations

import importlib

from dbops.config import ClusterRef
from dbops.model import ClusterHealth, Snapshot

# Assessment modules are pure Python over the engine's data classes: importing one never pulls
# in the engine's client library.
_ASSESSORS = {"postgres": "dbops.engines.postgres.assess"}


def assess_cluster(ref: ClusterRef, snapshots: dict[str, Snapshot]) -> ClusterHealth:
    module = importlib.import_module(_ASSESSORS[ref.cluster.engine])
    return module.assess_cluster(ref, snapshots)


def sort_worst_first(clusters: list[ClusterHealth]) -> list[ClusterHealth]:
    return sorted(clusters, key=lambda c: (-c.severity.rank, c.environment, c.name))
