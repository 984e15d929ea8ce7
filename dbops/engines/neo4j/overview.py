"""Neo4j's overview row: transactions running past the warning threshold, every server."""

from __future__ import annotations

from dbops.config import ClusterRef
from dbops.engine_spec import OverviewRow, topology, worst_lag
from dbops.engines.neo4j.data import Neo4jMemberData
from dbops.model import ClusterHealth


def overview_row(ref: ClusterRef, health: ClusterHealth) -> OverviewRow:
    assert ref.cluster.neo4j is not None  # filled with its defaults by the config
    limit = ref.cluster.neo4j.thresholds.transaction_ms_warn
    long = sum(1 for m in health.members if isinstance(m.snapshot.data, Neo4jMemberData)
               for t in m.snapshot.data.transactions if t.elapsed_ms > limit)
    return OverviewRow(topology=topology(health), lag=worst_lag(health), long=str(long))
