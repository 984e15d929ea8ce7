"""One line of facts per PostgreSQL cluster, for the overview and anything else that lists clusters.

Pure: derived from ClusterHealth, which already holds every member's snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbops.config import ClusterRef
from dbops.engines.postgres.data import PgMemberData
from dbops.model import ClusterHealth, Reachability


@dataclass(frozen=True, slots=True)
class TopologyEntry:
    name: str
    role: str
    reachability: Reachability


@dataclass(frozen=True, slots=True)
class PgClusterSummary:
    topology: tuple[TopologyEntry, ...]
    worst_lag_bytes: int | None
    worst_lag_seconds: float | None
    connections_pct: float | None  # on the primary
    long_running: int  # active queries older than the threshold, all members
    idle_in_transaction: int
    archiver: str  # "ok", "failing", "off", "unknown"


def summarize(ref: ClusterRef, health: ClusterHealth) -> PgClusterSummary:
    th = ref.cluster.thresholds
    topology = []
    lag_b: list[int] = []
    lag_s: list[float] = []
    conns_pct = None
    long_running = 0
    idle_tx = 0
    archiver = "unknown"
    for m in health.members:
        topology.append(TopologyEntry(m.name, m.role, m.snapshot.reachability))
        if m.lag_bytes is not None:
            lag_b.append(m.lag_bytes)
        if m.lag_seconds is not None:
            lag_s.append(m.lag_seconds)
        data = m.snapshot.shown
        if not isinstance(data, PgMemberData):
            continue
        for s in data.sessions:
            if s.state == "active" and (s.query_age_seconds or 0) > th.long_query_seconds:
                long_running += 1
            if s.state and s.state.startswith("idle in transaction") and (s.state_age_seconds or 0) > th.idle_in_transaction_seconds_warn:
                idle_tx += 1
        if not data.in_recovery:
            if data.max_connections:
                conns_pct = 100.0 * data.connections_total / data.max_connections
            if data.archiver is not None:
                archiver = _archiver_state(data)
    # primaries first, then replicas, in config order within each
    topology.sort(key=lambda t: 0 if t.role == "primary" else 1)
    return PgClusterSummary(
        topology=tuple(topology),
        worst_lag_bytes=max(lag_b) if lag_b else None,
        worst_lag_seconds=max(lag_s) if lag_s else None,
        connections_pct=conns_pct,
        long_running=long_running,
        idle_in_transaction=idle_tx,
        archiver=archiver,
    )


def _archiver_state(data: PgMemberData) -> str:
    a = data.archiver
    assert a is not None
    if a.archive_mode == "off":
        return "off"
    if a.last_failed_age_seconds is not None and (
        a.last_archived_age_seconds is None or a.last_failed_age_seconds < a.last_archived_age_seconds
    ):
        return "failing"
    return "ok"
