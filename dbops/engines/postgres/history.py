"""PostgreSQL's history series: what the hub keeps of each member's refreshes for the pane's
trends (replication lag, connections)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dbops.engines.postgres.data import PgMemberData
from dbops.model import MemberHealth, Snapshot


@dataclass(frozen=True, slots=True)
class PgHistoryPoint:
    ts: float
    lag_bytes: int | None
    lag_seconds: float | None
    connections: int | None


def sample(snap: Snapshot, member: MemberHealth) -> PgHistoryPoint:
    """A refresh the member answered, as judged: its lag (a replica's, against the primary) and
    its client connections."""
    connections = snap.data.connections_total if isinstance(snap.data, PgMemberData) else None
    return PgHistoryPoint(snap.taken_at, member.lag_bytes, member.lag_seconds, connections)


def lag_bytes(points: Iterable[object]) -> list[int | None]:
    """The replay lag series of a member's history, oldest first (a point of another kind is a gap)."""
    return [p.lag_bytes if isinstance(p, PgHistoryPoint) else None for p in points]
