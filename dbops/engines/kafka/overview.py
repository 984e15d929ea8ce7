"""Kafka's overview row: the consumer group furthest behind stands where replication lag would."""

from __future__ import annotations

from dbops.config import ClusterRef
from dbops.engine_spec import OverviewRow, topology
from dbops.engines.kafka.data import KafkaData
from dbops.model import ClusterHealth, human_seconds


def overview_row(ref: ClusterRef, health: ClusterHealth) -> OverviewRow:
    return OverviewRow(topology=topology(health), lag=group_lag(health))


def group_lag(health: ClusterHealth) -> str:
    """The consumer group furthest behind in time: its records behind and how old."""
    data = next((m.snapshot.shown for m in health.members if isinstance(m.snapshot.shown, KafkaData)), None)
    groups = [g for g in data.groups if g.max_lag_seconds is not None] if data else []
    if not groups:
        return "-"
    g = max(groups, key=lambda g: g.max_lag_seconds or 0)
    return f"{g.total_lag} rec/{human_seconds(g.max_lag_seconds)}"
