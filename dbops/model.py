"""Immutable values that flow from pollers to the UI and to `dbops check`.

Nothing here does I/O. A Snapshot is built once per poll and never changed: panes diff
snapshots, they never mutate them.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any


class Severity(enum.IntEnum):
    """Nagios-compatible values, so `int(severity)` is the check exit code."""

    OK = 0
    WARN = 1
    CRIT = 2
    UNKNOWN = 3

    @property
    def rank(self) -> int:
        """Order for "worst first": CRIT > WARN > UNKNOWN > OK.

        UNKNOWN ranks below WARN because an unknown metric is a gap in what we see, while a
        WARN is a thing we know is wrong; an unreachable member is CRIT, not UNKNOWN.
        """
        return _RANK[self]

    @staticmethod
    def worst(items: list[Severity] | tuple[Severity, ...], default: Severity | None = None) -> Severity:
        if not items:
            return default if default is not None else Severity.UNKNOWN
        return max(items, key=lambda s: s.rank)


_RANK = {Severity.OK: 0, Severity.UNKNOWN: 1, Severity.WARN: 2, Severity.CRIT: 3}


class Reachability(str, enum.Enum):
    """How the last poll of a member ended."""

    UP = "UP"
    DOWN = "DOWN"  # connection refused, host unreachable, server closed the connection
    TIMEOUT = "TIMEOUT"  # no answer within the poll timeout
    AUTH = "AUTH"  # wrong password, no such role, pg_hba rejected us
    TLS = "TLS"  # certificate or TLS negotiation failure
    ERROR = "ERROR"  # the server answered something we could not use
    PENDING = "PENDING"  # not polled yet


@dataclass(frozen=True, slots=True)
class Metric:
    """One judged value: what it is, its severity, and a sentence for a human."""

    name: str
    severity: Severity
    message: str
    value: Any = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The result of one poll of one member.

    `data` is the engine's own frozen dataclass (e.g. PgMemberData) from this poll, or None when
    the poll failed; `last_good`/`last_good_at` carry the most recent successful data so a DOWN
    member still shows what it looked like and how old that is.
    """

    environment: str
    cluster: str
    member: str
    engine: str
    reachability: Reachability
    taken_at: float  # wall clock, seconds since the epoch
    duration_ms: float = 0.0
    data: Any = None
    error: str | None = None
    last_good: Any = None
    last_good_at: float | None = None
    seq: int = 0

    @property
    def reachable(self) -> bool:
        return self.reachability is Reachability.UP

    @property
    def shown(self) -> Any:
        """The data to display: this poll's, or the last good one when this poll failed."""
        return self.data if self.data is not None else self.last_good

    def age_of_shown(self, now: float | None = None) -> float | None:
        """Seconds since the shown values were collected; None when nothing was ever collected."""
        now = time.time() if now is None else now
        if self.data is not None:
            return max(0.0, now - self.taken_at)
        if self.last_good_at is not None:
            return max(0.0, now - self.last_good_at)
        return None


@dataclass(frozen=True, slots=True)
class MemberHealth:
    """A member's judged state: derived from its Snapshot (and its cluster peers) by dbops.health."""

    snapshot: Snapshot
    role: str
    severity: Severity
    metrics: tuple[Metric, ...] = ()
    lag_bytes: int | None = None
    lag_seconds: float | None = None

    @property
    def name(self) -> str:
        return self.snapshot.member

    @property
    def problems(self) -> list[str]:
        return [m.message for m in self.metrics if m.severity is not Severity.OK]


@dataclass(frozen=True, slots=True)
class ClusterHealth:
    environment: str
    name: str
    engine: str
    severity: Severity
    members: tuple[MemberHealth, ...] = field(default_factory=tuple)
    metrics: tuple[Metric, ...] = ()
    # Where this judgement came from: "poll" (dbops' own pollers, each member's snapshot has its
    # time) or "prometheus" (fleet mode: the exporters' series, newest sample at `observed_at`).
    source: str = "poll"
    observed_at: float | None = None

    @property
    def problems(self) -> list[str]:
        out = [m.message for m in self.metrics if m.severity is not Severity.OK]
        for m in self.members:
            out.extend(f"{m.name}: {p}" for p in m.problems)
        return out


def first_line(text: str, limit: int = 200) -> str:
    """The first line of a server's or library's message, without a trailing period: what fits
    in a table cell or a one-line error."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.rstrip(".")[:limit]


def human_bytes(n: float | int | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    return f"{sign}{n:.1f} TiB"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 120:
        return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    if s < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"
