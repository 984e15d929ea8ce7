"""A recording played back behind the hub's interface: the console opens on it as on live servers.

ReplayHub serves, for any moment of a recording, exactly the values the live hub served then:
each cluster's snapshots and judged health as recorded (nothing is judged again), the alerts,
the backups, and the members' history rebuilt from the recorded snapshots by the engine's own
sampler. It is read-only by construction: it holds no adapter and no connection, `submit`
refuses, and the console it is given to refuses runbooks and drills.

A thread of its own reads the file (the UI never waits on it): seeking loads each cluster's
newest frame at or before the time; playing applies the frames between the last position and
the next, at the chosen speed. The position and the state it shows change together, under one
lock, so the console's clock (the position) always matches what it draws.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbops.hub import AlertsState, HistoryPoint, HistorySampler, Hub
from dbops.model import ClusterHealth, Snapshot
from dbops.recording import Event, Frame, Reading, RecordingError, note_event

if TYPE_CHECKING:
    from dbops.config import ClusterRef
    from dbops.engines.base import Adapter
    from dbops.platform.backups import ClusterBackups

SPEEDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# How often a playing replay moves on (its frames are applied in order in between).
TICK = 0.2


class ReplayReadOnly(Exception):
    """An action asked of a recording."""


class ReplayHub(Hub):
    def __init__(self, reading: Reading, on_change: Callable[[], None] | None = None, *, at: float | None = None) -> None:
        from dbops.health import assess_cluster
        from dbops.poller import history_sampler, pending_snapshot

        self.reading = reading
        # Every environment read-only and closed to drills: the panes then refuse their actions
        # the way they do on a read-only environment, and the banner says read-only.
        recorded = reading.config()
        self.config = replace(recorded, environments={
            name: replace(env, mode="read-only", drills=False) for name, env in recorded.environments.items()})
        self.refs = self.config.clusters()
        self._refs_by_key = {r.key: r for r in self.refs}
        self.first, self.last = reading.span()
        self.playback = self
        self.timeline = self
        self.on_change = on_change
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending = {r.key: {m.name: pending_snapshot(r, m) for m in r.poll_units} for r in self.refs}
        self._empty = {r.key: assess_cluster(r, self._pending[r.key]) for r in self.refs}
        self._snapshots: dict[str, dict[str, Snapshot]] = dict(self._pending)
        self._health: dict[str, ClusterHealth] = dict(self._empty)
        self._alerts = AlertsState((), None, None, configured=self.config.alertmanager is not None)
        self._backups: dict[str, Any] = {}
        self._samplers: dict[str, HistorySampler | None] = {r.key: history_sampler(r.cluster.engine) for r in self.refs}
        self._history: dict[str, deque[HistoryPoint]] = {}
        self._history_of: str | None = None
        self._dirty: set[str] = set()
        self._notices: list[tuple[str, str]] = []
        self._watched: str | None = None
        self._position = self._clamp(at if at is not None else self.first)
        self._target: float | None = self._position  # the first load is a seek
        self._playing = False
        self._speed = 1.0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._marks = reading.event_times()
        self.loaded = threading.Event()  # set after each seek is applied (tests, the CLI's --at)

    # -- lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dbops-replay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(2.0)
        self.reading.close()

    # -- playback (any thread)

    @property
    def position(self) -> float:
        with self._lock:
            return self._position

    def clock(self) -> float:
        return self.position

    @property
    def speed(self) -> float:
        return self._speed

    @property
    def playing(self) -> bool:
        return self._playing

    @property
    def paused(self) -> bool:
        return not self._playing

    def pause(self) -> None:
        with self._wake:
            self._playing = False
            self._wake.notify()

    def resume(self) -> None:
        with self._wake:
            if self._position >= self.last:
                self._target = self.first  # played to the end: from the start again
            self._playing = True
            self._wake.notify()

    def faster(self, steps: int) -> float:
        i = min(range(len(SPEEDS)), key=lambda j: abs(SPEEDS[j] - self._speed))
        self._speed = SPEEDS[max(0, min(len(SPEEDS) - 1, i + steps))]
        return self._speed

    def seek(self, at: float) -> float:
        """Show the recording as it was at `at` (clamped to its span); applied by the replay thread."""
        at = self._clamp(at)
        with self._wake:
            self.loaded.clear()
            self._target = at
            self._wake.notify()
        return at

    def step(self, direction: int) -> float | None:
        """Seek to the next (1) or previous (-1) event of the timeline; None when there is none."""
        now = self.position
        marks = self._marks
        if direction > 0:
            i = bisect.bisect_right(marks, now)
            at = marks[i] if i < len(marks) else None
        else:
            i = bisect.bisect_left(marks, now)
            at = marks[i - 1] if i > 0 else None
        if at is not None:
            self.seek(at)
        return at

    def marks(self) -> list[float]:
        return list(self._marks)

    def _clamp(self, at: float) -> float:
        return min(max(at, self.first), self.last)

    # -- the replay thread

    def _run(self) -> None:
        last_tick = time.monotonic()
        try:
            while True:
                with self._wake:
                    if not self._stopping and self._target is None:
                        self._wake.wait(TICK if self._playing else None)
                    if self._stopping:
                        return
                    target, self._target = self._target, None
                    playing, speed, position = self._playing, self._speed, self._position
                now = time.monotonic()
                if target is not None:
                    self._load(target)
                    self.loaded.set()
                elif playing:
                    until = min(self.last, position + (now - last_tick) * speed)
                    self._advance(position, until)
                    if until >= self.last:
                        with self._lock:
                            self._playing = False
                        self.notice("information", "end of the recording: p plays it again from the start")
                last_tick = now
                self._changed()
        except RecordingError as exc:
            self.notice("error", f"the recording cannot be read further: {exc}")
            self._changed()

    def _load(self, at: float) -> None:
        """Every cluster's newest frame at or before `at`."""
        snapshots: dict[str, dict[str, Snapshot]] = {}
        health: dict[str, ClusterHealth] = {}
        for ref in self.refs:
            frame = self.reading.latest("health", ref.key, at)
            if frame is None:
                snapshots[ref.key], health[ref.key] = self._pending[ref.key], self._empty[ref.key]
            else:
                snapshots[ref.key], health[ref.key] = frame.value
        alerts = self.reading.latest("alerts", "", at)
        backups = {k: f.value for k in self._refs_by_key if (f := self.reading.latest("backups", k, at)) is not None}
        watched = self._watched
        history = self._rebuild_history(watched, at) if watched is not None else {}
        with self._lock:
            self._snapshots, self._health = snapshots, health
            if alerts is not None:
                self._alerts = alerts.value
            else:
                self._alerts = AlertsState((), None, None, configured=self.config.alertmanager is not None)
            self._backups = backups
            self._history, self._history_of = history, watched
            self._position = at
            self._dirty |= set(health)

    def _advance(self, after: float, until: float) -> None:
        frames = self.reading.frames_between(after, until)
        with self._lock:
            for frame in frames:
                self._apply(frame)
            self._position = until

    def _apply(self, frame: Frame) -> None:
        if frame.kind == "health":
            if frame.cluster not in self._health:
                return  # a cluster the recording's config does not list (cannot happen in a file dbops wrote)
            before = self._snapshots[frame.cluster]
            snaps, health = frame.value
            self._snapshots[frame.cluster], self._health[frame.cluster] = snaps, health
            if frame.cluster == self._history_of:
                self._sample(frame.cluster, before, snaps, health, self._history)
            self._dirty.add(frame.cluster)
        elif frame.kind == "alerts":
            self._alerts = frame.value
            self._dirty |= set(self._health)
        elif frame.kind == "backups":
            self._backups[frame.cluster] = frame.value
            self._dirty.add(frame.cluster)

    def _sample(self, key: str, before: dict[str, Snapshot], snaps: dict[str, Snapshot], health: ClusterHealth,
                history: dict[str, deque[HistoryPoint]]) -> None:
        """As the live hub does for each snapshot that arrived (a new poll, not one carried)."""
        sampler = self._samplers.get(key)
        if sampler is None:
            return
        ref = self._refs_by_key[key]
        by_name = {m.name: m for m in health.members}
        for name, snap in snaps.items():
            old = before.get(name)
            if old is not None and (old.seq, old.taken_at) == (snap.seq, snap.taken_at):
                continue
            mh = by_name.get(name)
            if mh is None or not snap.reachable:
                continue
            point = sampler(snap, mh)
            if point is not None:
                points = max(1, int(ref.defaults.history_seconds / ref.refresh_interval))
                history.setdefault(name, deque(maxlen=points)).append(point)

    def _rebuild_history(self, key: str, at: float) -> dict[str, deque[HistoryPoint]]:
        ref = self._refs_by_key[key]
        history: dict[str, deque[HistoryPoint]] = {}
        if self._samplers.get(key) is None:
            return history
        since = at - ref.defaults.history_seconds - 2 * ref.refresh_interval
        before: dict[str, Snapshot] = {}
        for frame in self.reading.frames_between(since, at, "health", key):
            snaps, health = frame.value
            self._sample(key, before, snaps, health, history)
            before = snaps
        return history

    def _changed(self) -> None:
        with self._lock:
            dirty = bool(self._dirty) or bool(self._notices)
        if dirty and self.on_change is not None:
            self.on_change()

    # -- the Hub interface

    def notice(self, severity: str, message: str) -> None:
        with self._lock:
            self._notices.append((severity, message))

    def drain_notices(self) -> list[tuple[str, str]]:
        with self._lock:
            out, self._notices = self._notices, []
        return out

    def drain(self) -> dict[str, ClusterHealth]:
        with self._lock:
            changed = {k: self._health[k] for k in self._dirty}
            self._dirty.clear()
        return changed

    def health(self) -> list[ClusterHealth]:
        with self._lock:
            return list(self._health.values())

    def cluster_health(self, key: str) -> ClusterHealth:
        with self._lock:
            return self._health[key]

    def snapshots(self, key: str) -> dict[str, Snapshot]:
        with self._lock:
            return dict(self._snapshots[key])

    def history(self, key: str, member: str) -> list[HistoryPoint]:
        with self._lock:
            if key == self._history_of:
                return list(self._history.get(member, ()))
        return []

    def ref(self, key: str) -> ClusterRef:
        return self._refs_by_key[key]

    def alerts(self, key: str | None = None) -> AlertsState:
        with self._lock:
            state = self._alerts
        if key is None:
            return state
        return replace(state, alerts=tuple(a for a in state.alerts if a.cluster == key))

    def refresh_alerts(self) -> None:
        self.notice("warning", "this is a recording: the alerts shown are the ones recorded, nothing is read again")
        self._changed()

    @property
    def watched(self) -> str | None:
        return self._watched

    def watch(self, key: str | None) -> None:
        """The cluster opened: its history is rebuilt from the recording at the position."""
        with self._wake:
            if key == self._watched:
                return
            self._watched = key
            if key is not None:
                self._target = self._position
                self.loaded.clear()
                self._wake.notify()

    def interval_of(self, key: str) -> float:
        return self._refs_by_key[key].refresh_interval

    @property
    def fleet_mode(self) -> bool:
        return self.config.prometheus is not None and self.config.prometheus.fleet

    def backup_state(self, key: str, now: float) -> ClusterBackups | None:
        from dbops.platform import backups as platform_backups

        with self._lock:
            fetched = self._backups.get(key)
        if fetched is None:
            return None
        return platform_backups.judge(fetched, self.ref(key).cluster.backups, now)

    def refresh_backups(self, key: str | None = None) -> None:
        self.notice("warning", "this is a recording: the backups shown are the ones recorded, nothing is read again")
        self._changed()

    def submit(self, fn: Callable[[Adapter], Awaitable[Any]], key: str, member: str) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_exception(ReplayReadOnly("this is a replay of a recording: nothing runs against a server"))
        return future

    # -- the timeline (dbops.hub.Timeline)

    def events(self, since: float | None = None, cluster: str | None = None) -> list[Event]:
        return self.reading.events(since, None, cluster)

    def note(self, text: str, operator: str, cluster: str | None = None) -> Event:
        """A review note, at the replay's position, kept in the recording file itself."""
        event = note_event(text, operator, cluster, self.position, review=True)
        try:
            self.reading.add_note(event)
        except sqlite3.Error as exc:  # a read-only file, a full disk
            raise RecordingError(f"the note cannot be written into {self.reading.path}: {exc}") from None
        self._marks = self.reading.event_times()
        return event


def open_replay(path: Path, on_change: Callable[[], None] | None = None, at: float | None = None) -> ReplayHub:
    try:
        reading = Reading(path, writable=True)
    except RecordingError:
        reading = Reading(path)  # a read-only copy still replays; notes then say why they cannot be kept
    try:
        return ReplayHub(reading, on_change, at=at)
    except Exception:
        reading.close()
        raise
