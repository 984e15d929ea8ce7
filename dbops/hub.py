"""What the console reads from and asks of the poller hub: one typed boundary.

dbops.poller.PollerHub implements it over live servers; the UI tests' frozen hub implements it
over fixed snapshots. Screens depend on this Protocol only, so a method either hub lacks is a
type error, not a runtime guard.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dbops.config import ClusterRef, Config
    from dbops.engines.base import Adapter
    from dbops.model import ClusterHealth, MemberHealth, Snapshot
    from dbops.platform.alertmanager import Alert
    from dbops.platform.backups import ClusterBackups
    from dbops.recording import Event


class HistoryPoint(Protocol):
    """One refresh of one member as kept for its trends. Each engine that keeps a history
    defines its own point (its named series) and the function that makes one from a refresh."""

    @property
    def ts(self) -> float: ...


# Makes a member's history point from a refresh it answered, judged; None keeps no point.
HistorySampler = Callable[["Snapshot", "MemberHealth"], "HistoryPoint | None"]


@dataclass(frozen=True)
class AlertsState:
    """Alertmanager's alerts as last read: `fetched_at` None means not read yet (or not
    configured: then `configured` is False); `error` says why the last read failed (the alerts
    shown are then the last good ones, `fetched_at` old)."""

    alerts: tuple[Alert, ...]
    fetched_at: float | None
    error: str | None
    configured: bool = True


class Timeline(Protocol):
    """The incident's story on one clock (dbops.recording): state changes, alerts, audit
    records, notes. The live console's is its recorder; a replay's is the recording."""

    def events(self, since: float | None = None, cluster: str | None = None) -> list[Event]: ...

    def note(self, text: str, operator: str, cluster: str | None = None) -> Event:
        """Keep an operator's note (live: now; in replay: at the replay's position)."""
        ...


class Playback(Protocol):
    """A replay's controls: where it is, how fast it plays, where the events are."""

    first: float
    last: float

    @property
    def position(self) -> float: ...

    @property
    def speed(self) -> float: ...

    @property
    def playing(self) -> bool: ...

    def faster(self, steps: int) -> float: ...

    def seek(self, at: float) -> float: ...

    def step(self, direction: int) -> float | None: ...

    def marks(self) -> list[float]: ...


class Hub(Protocol):
    config: Config
    refs: list[ClusterRef]
    # None: nothing is recorded (recording off, or a test's frozen hub).
    timeline: Timeline | None = None
    # None: live; a replay's controls otherwise (the console is then read-only).
    playback: Playback | None = None

    # -- lifecycle
    def start(self) -> None: ...

    def stop(self) -> None: ...

    @property
    def paused(self) -> bool: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    # -- reading (any thread)
    def drain(self) -> dict[str, ClusterHealth]:
        """Health of the clusters that changed since the last drain."""
        ...

    def drain_notices(self) -> list[tuple[str, str]]:
        """(severity, message) the operator must see, each once."""
        ...

    def health(self) -> list[ClusterHealth]: ...

    def cluster_health(self, key: str) -> ClusterHealth: ...

    def snapshots(self, key: str) -> dict[str, Snapshot]: ...

    def history(self, key: str, member: str) -> list[HistoryPoint]:
        """The member's HistoryPoints, oldest first, of the kind its engine keeps."""
        ...

    def ref(self, key: str) -> ClusterRef: ...

    def alerts(self, key: str | None = None) -> AlertsState:
        """Alertmanager's alerts (all, or one cluster's); configured=False without [alertmanager]."""
        ...

    def refresh_alerts(self) -> None: ...

    @property
    def watched(self) -> str | None:
        """The cluster the operator has open, as watch() last said."""
        ...

    def watch(self, key: str | None) -> None:
        """The cluster the operator has open (None: the overview)."""
        ...

    def interval_of(self, key: str) -> float:
        """How often the cluster is polled now (slower when unwatched, if configured)."""
        ...

    @property
    def fleet_mode(self) -> bool: ...

    def backup_state(self, key: str, now: float) -> ClusterBackups | None: ...

    def refresh_backups(self, key: str | None = None) -> None: ...

    # -- actions
    def submit(self, fn: Callable[[Adapter], Awaitable[Any]], key: str, member: str) -> concurrent.futures.Future[Any]: ...
