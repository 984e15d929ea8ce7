"""Qdrant's overview row: shard replicas not Active stand where replication lag would."""

from __future__ import annotations

from dbops.config import ClusterRef
from dbops.engine_spec import OverviewRow, topology
from dbops.engines.qdrant.data import QdrantData
from dbops.model import ClusterHealth


def overview_row(ref: ClusterRef, health: ClusterHealth) -> OverviewRow:
    return OverviewRow(topology=topology(health), lag=replicas_state(health))


def replicas_state(health: ClusterHealth) -> str:
    """Shard replicas not Active (Qdrant's nearest thing to replication lag)."""
    data = next((m.snapshot.shown for m in health.members if isinstance(m.snapshot.shown, QdrantData)), None)
    if data is None:
        return "-"
    replicas = data.replicas()
    dead = sum(1 for r in replicas if r.state == "Dead")
    other = sum(1 for r in replicas if r.state not in ("Active", "Dead"))
    if not dead and not other:
        return f"{len(replicas)} repl ok"
    return ", ".join(p for p in (f"{dead} Dead" if dead else "", f"{other} not Active" if other else "") if p)
