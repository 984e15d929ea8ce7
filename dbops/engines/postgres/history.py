"""PostgreSQL's history series: what the hub keeps of each member's refreshes for the pane's
trends (replication lag, connections, WAL position), and the series derived from them.

Everything here is a cheap derivation from values every refresh already collects: no query of
its own. The WAL position is the member's current_lsn (pg_current_wal_lsn on a primary, the
last replayed position on a standby), kept as a byte position so a rate is a subtraction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dbops.engines.postgres.data import PgMemberData
from dbops.model import MemberHealth, Snapshot


@dataclass(frozen=True, slots=True)
class PgHistoryPoint:
    ts: float
    lag_bytes: int | None
    lag_seconds: float | None
    connections: int | None
    wal_lsn: int | None = None  # current_lsn as a byte position; None when the server gave none


def lsn_bytes(lsn: str | None) -> int | None:
    """'16/B374D848' -> its byte position; None for None or anything that is not an LSN."""
    if not lsn:
        return None
    hi, sep, lo = lsn.partition("/")
    if not sep:
        return None
    try:
        return (int(hi, 16) << 32) | int(lo, 16)
    except ValueError:
        return None


def sample(snap: Snapshot, member: MemberHealth) -> PgHistoryPoint:
    """A refresh the member answered, as judged: its lag (a replica's, against the primary), its
    client connections and its WAL position."""
    data = snap.data if isinstance(snap.data, PgMemberData) else None
    connections = data.connections_total if data is not None else None
    lsn = lsn_bytes(data.current_lsn) if data is not None else None
    return PgHistoryPoint(snap.taken_at, member.lag_bytes, member.lag_seconds, connections, lsn)


def pg_points(points: Iterable[object]) -> list[PgHistoryPoint]:
    """The PostgreSQL points of a member's history (a point of another kind is left out)."""
    return [p for p in points if isinstance(p, PgHistoryPoint)]


def lag_bytes(points: Iterable[object]) -> list[int | None]:
    """The replay lag series of a member's history, oldest first (a point of another kind is a gap)."""
    return [p.lag_bytes if isinstance(p, PgHistoryPoint) else None for p in points]


# Two successive points further apart than this many refresh intervals have unanswered
# refreshes between them: no rate is derived across the gap.
GAP_INTERVALS = 2.5


def typical_interval(points: Sequence[PgHistoryPoint]) -> float | None:
    """The median time between successive points (the refresh interval as kept), or None."""
    steps = sorted(b.ts - a.ts for a, b in zip(points, points[1:]) if b.ts > a.ts)
    return steps[len(steps) // 2] if steps else None


def wal_rates(points: Sequence[PgHistoryPoint]) -> list[tuple[float, float | None]]:
    """(ts, WAL bytes/s since the previous point) for each point after the first, oldest first.

    None where no rate can be told: a point without a WAL position, a gap of unanswered
    refreshes (more than GAP_INTERVALS typical intervals), or a position that went backwards
    (another server answered: a failover, a restore)."""
    interval = typical_interval(points)
    out: list[tuple[float, float | None]] = []
    for a, b in zip(points, points[1:]):
        dt = b.ts - a.ts
        rate: float | None = None
        if (
            a.wal_lsn is not None
            and b.wal_lsn is not None
            and dt > 0
            and b.wal_lsn >= a.wal_lsn
            and (interval is None or dt <= GAP_INTERVALS * interval)
        ):
            rate = (b.wal_lsn - a.wal_lsn) / dt
        out.append((b.ts, rate))
    return out
