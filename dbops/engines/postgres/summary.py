"""PostgreSQL's overview row: one line of facts per cluster, for the overview and anything else
that lists clusters.

Pure: derived from ClusterHealth, which already holds every member's snapshot.
"""

from __future__ import annotations

from dbops.config import ClusterRef
from dbops.engine_spec import OverviewRow, topology, worst_lag
from dbops.engines.postgres.data import PgMemberData
from dbops.model import ClusterHealth


def overview_row(ref: ClusterRef, health: ClusterHealth) -> OverviewRow:
    """Topology and worst lag as every engine's; the primary's connections against
    max_connections; long-running queries and sessions idle in a transaction on any member; a
    failing WAL archiver beside the backups' age."""
    th = ref.cluster.thresholds
    conns_pct = None
    long_running = 0
    archiver = "unknown"
    for m in health.members:
        data = m.snapshot.shown
        if not isinstance(data, PgMemberData):
            continue
        for s in data.sessions:
            if s.state == "active" and (s.query_age_seconds or 0) > th.long_query_seconds:
                long_running += 1
            if s.state and s.state.startswith("idle in transaction") and (s.state_age_seconds or 0) > th.idle_in_transaction_seconds_warn:
                long_running += 1
        if not data.in_recovery:
            if data.max_connections:
                conns_pct = 100.0 * data.connections_total / data.max_connections
            if data.archiver is not None:
                archiver = _archiver_state(data)
    return OverviewRow(
        topology=topology(health),
        lag=worst_lag(health),
        connections=f"{conns_pct:.0f}%" if conns_pct is not None else "-",
        long=str(long_running),
        backup_alert="WAL✗" if archiver == "failing" else "",
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


def facts(health: ClusterHealth) -> dict[str, dict[str, str]]:
    """What the timeline reports when it changes: each member's timeline (a promotion starts a
    new one), and a standby's WAL receiver state (streaming, or which primary it follows)."""
    out: dict[str, dict[str, str]] = {}
    for m in health.members:
        data: PgMemberData | None = m.snapshot.data
        if data is None:
            continue
        mine = {"timeline": str(data.timeline) if data.timeline is not None else "?"}
        if data.in_recovery:
            wr = data.wal_receiver
            mine["WAL receiver"] = "none" if wr is None or wr.status is None else f"{wr.status} from {wr.sender_host}:{wr.sender_port}"
        out[m.name] = mine
    return out
