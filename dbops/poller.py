"""Pollers: one asyncio loop per member, all on one event loop in a background thread.

Why a thread of its own: the UI's event loop must never wait on a server, not even on a client
library that parses a large result or blocks in a DNS lookup. The hub's loop owns every adapter
(and so every connection); the UI reads immutable ClusterHealth values and submits actions to the
hub's loop with `submit()`.

Each member's loop is sequential (await collect, then sleep), so polls of one member never
overlap; a slow server delays only its own member.

The same loop runs the backup watcher (one sequential loop per cluster with a backup location,
[rds] or [elasticache] included, every backups.refresh_seconds: dbops.platform.backups.fetch,
whose boto3 and pgbackrest calls run in threads) and, when [audit.ship] is configured, audit shipping every audit.ship.every_seconds;
a failed shipping becomes a notice the console shows (drain_notices).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbops.config import AlertmanagerOptions, ClusterRef, Config, Member
from dbops.engine_spec import adapter_class, load_attr, spec_of
from dbops.engines.base import Adapter
from dbops.health import assess_cluster, update_baseline
from dbops.hub import AlertsState, HistoryPoint, HistorySampler, Hub
from dbops.model import ClusterHealth, Reachability, Snapshot
from dbops.platform import backups as platform_backups

if TYPE_CHECKING:
    from dbops.recording import Recorder

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 15.0
# A cluster's second poll is put off by up to this share of its interval, chosen at random.
JITTER_FRACTION = 0.5
# A cluster's members' snapshots arriving within this long of the first are judged together.
RECORD_WINDOW = 0.1


class PollSlots:
    """Bounds on the polls in flight: at most `overall` at once, and `per_engine` of one engine.

    A fleet's refresh is then a steady stream rather than hundreds of connections opened in the
    same millisecond (which a server, and this process, answer with timeouts that cost a
    reconnect each); a slow engine (every Kafka broker timing out) holds only its own slots.
    The engine's slot is taken first, so a poll waiting for a busy engine holds no overall slot.
    """

    def __init__(self, overall: int, per_engine: int) -> None:
        self._overall = asyncio.Semaphore(overall)
        self._per_engine_limit = per_engine
        self._engines: dict[str, asyncio.Semaphore] = {}

    @contextlib.asynccontextmanager
    async def slot(self, engine: str) -> AsyncIterator[None]:
        sem = self._engines.get(engine)
        if sem is None:
            sem = self._engines[engine] = asyncio.Semaphore(self._per_engine_limit)
        async with sem, self._overall:
            yield


def history_sampler(engine: str) -> HistorySampler | None:
    """The function making a history point of an engine's refresh (for the panes' trends), as its
    spec names it; None: the engine keeps no history. Imported when a configured cluster needs it."""
    target = spec_of(engine).history
    if target is None:
        return None
    sampler: HistorySampler = load_attr(target)
    return sampler


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The pollers' loop: uvloop's where it is installed (a dependency on Linux and macOS), else
    asyncio's own. At a thousand targets much of the pollers' CPU is the loop's own bookkeeping
    (a write, a read and a timer per node per refresh): uvloop's, in C, cost about 11% less CPU
    in benchmarks/fleet.py. The console's own loop (Textual's) is left as it is."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class Wake:
    """asyncio.Event's set/clear/is_set, with a wait that has a deadline and costs one future
    and one timer: no exception when the time is up. A thousand member loops sleep so between
    their polls, and asyncio.timeout() around Event.wait() cancels and raises every time (and
    asyncio.wait_for would, on Python 3.11, swallow a cancellation racing its timeout,
    cpython#86296: a hub with a thousand loops sleeping so would never stop)."""

    def __init__(self) -> None:
        self._flag = False
        self._waiters: list[asyncio.Future[None]] = []

    def set(self) -> None:
        self._flag = True
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def clear(self) -> None:
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    async def wait(self, seconds: float | None = None) -> None:
        """Until set, or `seconds` have passed (None: until set). Cancelling it cancels it."""
        if self._flag:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(max(0.0, seconds), _resolve, waiter) if seconds is not None else None
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if waiter in self._waiters:  # the time was up, or cancelled: not woken by set()
                self._waiters.remove(waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def monitoring_failure(exc: Exception, what: str, where: str) -> str:
    """What a failed read of Alertmanager or Prometheus says: the service's own message, or for
    a bug of ours its kind and the crash report that holds the details."""
    from dbops.platform.monitoring_http import MonitoringError

    if isinstance(exc, MonitoringError):
        return exc.message
    from dbops.crash import write_crash_report

    return f"dbops could not read {what} ({type(exc).__name__}); details in {write_crash_report(exc, where)}"


def backoff_delay(interval: float, failures: int) -> float:
    """Delay before the next poll after `failures` consecutive failures (0 = healthy).

    Doubles per failure but is capped so a member that comes back is seen within seconds.
    """
    if failures <= 0:
        return interval
    return min(interval * (2 ** (failures - 1)), max(interval, MAX_BACKOFF_SECONDS))


async def poll_member(adapter: Adapter, ref: ClusterRef, member: Member, previous: Snapshot | None) -> Snapshot:
    """Collect once under the cluster's timeout and turn the outcome into a Snapshot."""
    started = time.monotonic()
    taken_at = time.time()
    seq = previous.seq + 1 if previous else 1
    last_good = previous.shown if previous else None
    last_good_at = None
    if previous is not None:
        last_good_at = previous.taken_at if previous.data is not None else previous.last_good_at
    try:
        async with asyncio.timeout(ref.timeout):  # not wait_for: see Wake
            data = await adapter.collect()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # every failure becomes a visible state, never a crash
        reach, message = adapter.classify(exc)
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) and reach is Reachability.ERROR:
            reach, message = Reachability.TIMEOUT, f"no answer within {ref.timeout:g}s"
        # The connection is in an unknown state after a failure: drop it so the next poll reconnects.
        await close_quietly(adapter)
        return member_snapshot(ref, member, reach, taken_at, duration_ms=(time.monotonic() - started) * 1000,
                               error=message, last_good=last_good, last_good_at=last_good_at, seq=seq)
    return member_snapshot(ref, member, Reachability.UP, taken_at, duration_ms=(time.monotonic() - started) * 1000,
                           data=data, seq=seq)


async def close_quietly(adapter: Adapter) -> None:
    """Close an adapter, bounded in time. A failure to close is logged by the adapter's classify
    path on the next connect; closing a dead connection is expected to fail."""
    try:
        await asyncio.wait_for(adapter.close(), timeout=1.0)
    except (TimeoutError, OSError) as exc:
        # A hung or already-broken socket: expected after a failed poll, and the adapter drops
        # its reference either way. Logged, not shown: the member's state already says why.
        log.debug("closing %s/%s: %r", adapter.cluster.key, adapter.member.name, exc)


def member_snapshot(ref: ClusterRef, member: Member, reachability: Reachability, taken_at: float, **outcome: Any) -> Snapshot:
    """A snapshot of `member` of `ref`; `outcome`: the poll's data or error, duration, sequence."""
    return Snapshot(environment=ref.environment, cluster=ref.name, member=member.name, engine=ref.cluster.engine,
                    reachability=reachability, taken_at=taken_at, **outcome)


def pending_snapshot(ref: ClusterRef, member: Member) -> Snapshot:
    return member_snapshot(ref, member, Reachability.PENDING, time.time())


class PollerHub(Hub):
    """Owns the pollers of every configured member and the judged health of every cluster.

    `on_change` is called from the hub thread after a cluster's health changed; it must be cheap
    and thread-safe (the TUI passes a function that posts a Textual message). Changes are
    coalesced: one wake-up per batch, and the consumer reads everything with `drain()`.
    """

    def __init__(self, config: Config, on_change: Callable[[], None] | None = None, *,
                 audit_path: Path | None = None, recorder: Recorder | None = None) -> None:
        self.config = config
        # Gets every value the hub makes (dbops.recording), on the hub's thread: it only queues.
        self.recorder = recorder
        self.timeline = recorder
        self.refs = config.clusters()
        self._refs_by_key = {r.key: r for r in self.refs}
        self._watched: str | None = None
        # A member loop's wake-up, per cluster: set when the operator opens (or leaves) it.
        # (asyncio's primitives bind to the loop that first waits on them: the hub's.)
        self._wake: dict[str, Wake] = {r.key: Wake() for r in self.refs}
        # Each cluster's part of an interval by which its second poll is put off: one per
        # cluster, so its members are still polled together (and judged together: _arrived).
        jitter = random.Random()
        self._phase = {r.key: jitter.uniform(0, JITTER_FRACTION) for r in self.refs}
        self._arriving: dict[str, dict[str, Snapshot]] = {}
        self._arriving_timer: dict[str, asyncio.TimerHandle] = {}
        self._slots = PollSlots(config.defaults.max_concurrent_polls, config.defaults.max_concurrent_polls_per_engine)
        # Alertmanager's alerts for the whole fleet, when [alertmanager] is configured.
        self._alerts = AlertsState((), None, None, configured=config.alertmanager is not None)
        self._alerts_seen = 0
        self._alerts_wake = Wake()
        self._on_change = on_change
        # Backups: what the watcher last read per cluster (judged on reading, against the
        # reader's clock); a wake-up per cluster for an immediate refresh.
        self._backups: dict[str, platform_backups.Fetched] = {}
        self._backup_wake: dict[str, Wake] = {}
        # Audit shipping on a timer, when [audit.ship] is configured; its failures become notices.
        self.audit_path = audit_path
        self._notices: deque[tuple[str, str]] = deque(maxlen=20)
        self._lock = threading.Lock()
        self._snapshots: dict[str, dict[str, Snapshot]] = {}
        self._health: dict[str, ClusterHealth] = {}
        self._history: dict[tuple[str, str], deque[HistoryPoint]] = {}
        self._samplers: dict[str, HistorySampler] = {}
        self._dirty: set[str] = set()
        self._baseline: dict[str, dict[str, Any]] = {}
        self._adapters: dict[tuple[str, str], Adapter] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running = threading.Event()
        self._running.set()
        self._stopping: asyncio.Event | None = None
        for ref in self.refs:
            self._snapshots[ref.key] = {m.name: pending_snapshot(ref, m) for m in ref.poll_units}
            self._health[ref.key] = assess_cluster(ref, self._snapshots[ref.key])
            sampler = history_sampler(ref.cluster.engine)
            if sampler is None:
                continue
            self._samplers[ref.key] = sampler
            for m in ref.poll_units:
                points = max(1, int(ref.defaults.history_seconds / ref.refresh_interval))
                self._history[(ref.key, m.name)] = deque(maxlen=points)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._stopping = asyncio.Event()
            ready.set()
            try:
                loop.run_until_complete(self._main())
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="dbops-pollers", daemon=True)
        self._thread.start()
        ready.wait()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop polling, close every connection, end the thread. Bounded by `timeout`."""
        loop, stopping = self._loop, self._stopping
        if loop is None or stopping is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(stopping.set)
        except RuntimeError:
            # The loop closed between the check and the call: the thread has already ended.
            return
        if self._thread:
            # A server that does not let go within the timeout is abandoned with the daemon thread.
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("pollers did not stop within %.0fs; abandoning their connections", timeout)

    async def _main(self) -> None:
        assert self._stopping is not None
        for ref in self.refs:
            for member in ref.poll_units:
                self._tasks.append(asyncio.create_task(self._member_loop(ref, member), name=f"poll {ref.key}/{member.name}"))
            if platform_backups.has_backups(ref):
                self._backup_wake[ref.key] = Wake()
                self._tasks.append(asyncio.create_task(self._backup_loop(ref), name=f"backups {ref.key}"))
        if self.config.alertmanager is not None:
            self._tasks.append(asyncio.create_task(self._alerts_loop(self.config.alertmanager), name="alertmanager"))
        if self.fleet_mode:
            self._tasks.append(asyncio.create_task(self._prometheus_loop(), name="prometheus fleet"))
        if self.config.audit.ship is not None and self.audit_path is not None:
            self._tasks.append(asyncio.create_task(self._ship_loop(self.config.audit.ship, self.audit_path), name="audit shipping"))
        await self._stopping.wait()
        # Cleanup runs here, inside the loop's lifetime, so no close() is left pending when
        # the loop is closed.
        # Cancelled until they end: a library's own asyncio.wait_for may swallow one
        # cancellation on Python 3.11 (see Wake), and one loop left running would
        # keep stop() waiting for ever.
        pending = {t for t in self._tasks if not t.done()}
        while pending:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(close_quietly(a) for a in self._adapters.values()), return_exceptions=True)

    # -- polling -----------------------------------------------------------------------------

    def _adapter(self, ref: ClusterRef, member: Member) -> Adapter:
        key = (ref.key, member.name)
        adapter = self._adapters.get(key)
        if adapter is None:
            adapter = self._adapters[key] = adapter_class(ref.cluster.engine)(ref, member)
        # What only a pane shows is read for the cluster open alone.
        adapter.detailed = ref.key == self._watched
        return adapter

    async def _member_loop(self, ref: ClusterRef, member: Member) -> None:
        """Poll one member for ever, on a cadence: each poll starts `interval` after the last
        one started (not after it ended), so a slow answer does not stretch the period, and
        never while the last is still running. Every poll takes a slot (PollSlots) first."""
        loop = asyncio.get_running_loop()
        wake = self._wake[ref.key]
        slots = self._slots
        failures = 0
        first = True
        while True:
            if not self._running.is_set():
                await self._wait_resumed()
            if not self._polls_directly(ref.key):
                # Fleet mode and nobody has this cluster open: Prometheus' rows stand for it,
                # and its connections are closed until the operator opens it.
                await self._close_member(ref, member)
                # Checked again with no await before the wait: a watch() in between is not lost.
                if not self._polls_directly(ref.key):
                    wake.clear()
                    await wake.wait()
                continue
            started = loop.time()
            previous = self._snapshots[ref.key][member.name]
            try:
                adapter = self._adapter(ref, member)
                last = None if previous.reachability is Reachability.PENDING else previous
                if ref.key == self._watched:
                    # The cluster the operator has open never queues behind the fleet for a slot.
                    snap = await poll_member(adapter, ref, member, last)
                else:
                    async with slots.slot(ref.cluster.engine):
                        snap = await poll_member(adapter, ref, member, last)
                self._arrived(ref, snap)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A bug of ours (an engine that cannot load, an assessment that raised) must not
                # freeze the member looking healthy: show it, keep the details, keep polling.
                from dbops.crash import write_crash_report

                where = write_crash_report(exc, f"poller {ref.key}/{member.name}")
                snap = replace(
                    previous,
                    reachability=Reachability.ERROR,
                    taken_at=time.time(),
                    data=None,
                    error=f"dbops could not poll this member ({type(exc).__name__}: {exc}); details in {where}",
                    last_good=previous.shown,
                    last_good_at=previous.taken_at if previous.data is not None else previous.last_good_at,
                    seq=previous.seq + 1,
                )
                self._record_unassessed(ref, snap)
            failures = 0 if snap.reachable else failures + 1
            interval = self.interval_of(ref.key)
            delay = backoff_delay(interval, failures)
            if first:
                # Every member's first poll runs at once (the operator waits for it); spreading
                # the second over part of an interval keeps a fleet's later refreshes from
                # arriving in the same millisecond ever after.
                delay += self._phase[ref.key] * interval
                first = False
            wake.clear()
            await wake.wait(started + delay - loop.time())

    async def _close_member(self, ref: ClusterRef, member: Member) -> None:
        adapter = self._adapters.pop((ref.key, member.name), None)
        if adapter is not None:
            await close_quietly(adapter)

    # -- what the operator looks at (any thread) ---------------------------------------------

    def watch(self, key: str | None) -> None:
        """The cluster the operator has open (None: none, the overview). It is polled at its
        own refresh_interval even when unwatched clusters are polled less often, and in fleet
        mode it is the one polled directly. Its pollers run at once when it was waiting."""
        with self._lock:
            before, self._watched = self._watched, key
            if self.recorder is not None:
                self.recorder.watch(key)
        if before == key:
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # The cluster opened is polled at once (in detail); the one left only needs waking in
        # fleet mode, where its loops close their connections and wait.
        for k in (key, before if self.fleet_mode else None):
            if k is not None and k in self._wake:
                loop.call_soon_threadsafe(self._wake[k].set)

    @property
    def watched(self) -> str | None:
        return self._watched

    def _polls_directly(self, key: str) -> bool:
        return not self.fleet_mode or key == self._watched

    @property
    def fleet_mode(self) -> bool:
        """Prometheus is the fleet's source ([prometheus] fleet = true)."""
        return self.config.prometheus is not None and self.config.prometheus.fleet

    def interval_of(self, key: str) -> float:
        """How often the cluster is polled now: its refresh_interval, or when nobody has it
        open and [defaults] unwatched_refresh_interval is set, that (never faster)."""
        ref = self._refs_by_key[key]
        slow = self.config.defaults.unwatched_refresh_interval
        if slow is None or key == self._watched:
            return ref.refresh_interval
        return max(ref.refresh_interval, slow)

    def _record_unassessed(self, ref: ClusterRef, snap: Snapshot) -> None:
        """Record a snapshot when assessing it may be what failed: the cluster's health keeps its
        members but this one is marked ERROR/CRIT without running the engine's rules."""
        from dbops.model import MemberHealth, Metric, Severity

        with self._lock:
            self._snapshots[ref.key] = {**self._snapshots[ref.key], snap.member: snap}
            old = self._health[ref.key]
            broken = MemberHealth(snap, "unknown", Severity.CRIT, (Metric("internal", Severity.CRIT, snap.error or "internal error"),))
            members = tuple(broken if m.name == snap.member else m for m in old.members)
            self._health[ref.key] = replace(old, members=members, severity=Severity.CRIT)
            if self.recorder is not None:
                self.recorder.health(ref.key, self._snapshots[ref.key], self._health[ref.key])
            first = not self._dirty
            self._dirty.add(ref.key)
        if first and self._on_change is not None:
            self._on_change()

    async def _wait_resumed(self) -> None:
        while not self._running.is_set():
            await asyncio.sleep(0.2)

    def _arrived(self, ref: ClusterRef, snap: Snapshot) -> None:
        """A member's new snapshot: judged with its peers' that arrive within RECORD_WINDOW
        (a cluster's members are polled together), so a refresh of a three-member cluster is
        judged once, not three times, and a replica's lag against the same refresh's primary."""
        units = len(ref.poll_units)
        if units == 1:
            self._record(ref, snap)
            return
        batch = self._arriving.setdefault(ref.key, {})
        batch[snap.member] = snap
        if len(batch) == units:
            handle = self._arriving_timer.pop(ref.key, None)
            if handle is not None:
                handle.cancel()
            self._record(ref, *self._arriving.pop(ref.key).values())
        elif ref.key not in self._arriving_timer:
            self._arriving_timer[ref.key] = asyncio.get_running_loop().call_later(RECORD_WINDOW, self._record_arrived, ref)

    def _record_arrived(self, ref: ClusterRef) -> None:
        self._arriving_timer.pop(ref.key, None)
        batch = self._arriving.pop(ref.key, None)
        if not batch:
            return
        try:
            self._record(ref, *batch.values())
        except Exception as exc:
            # As in _member_loop: a bug in judging must not leave the cluster looking healthy
            # (this runs from a timer, outside the member loops' own guard).
            from dbops.crash import write_crash_report

            where = write_crash_report(exc, f"poller {ref.key}")
            for snap in batch.values():
                self._record_unassessed(ref, replace(
                    snap, reachability=Reachability.ERROR, data=None, last_good=snap.shown,
                    error=f"dbops could not judge this member ({type(exc).__name__}: {exc}); details in {where}"))

    def _record(self, ref: ClusterRef, *arrived: Snapshot) -> None:
        with self._lock:
            snaps = {**self._snapshots[ref.key], **{s.member: s for s in arrived}}
            self._snapshots[ref.key] = snaps
            self._baseline[ref.key] = update_baseline(ref, self._baseline.get(ref.key), snaps)
            health = assess_cluster(ref, snaps, self._baseline[ref.key])
            self._health[ref.key] = health
            if self.recorder is not None:
                self.recorder.health(ref.key, snaps, health)
            sampler = self._samplers.get(ref.key)
            if sampler is not None:
                by_name = {m.name: m for m in health.members}
                for snap in arrived:
                    mh = by_name.get(snap.member)
                    if mh is not None and snap.reachable:
                        point = sampler(snap, mh)
                        if point is not None:
                            self._history[(ref.key, snap.member)].append(point)
            first = not self._dirty
            self._dirty.add(ref.key)
        if first and self._on_change is not None:
            self._on_change()

    # -- Alertmanager and Prometheus: one request for the whole fleet per refresh ------------

    async def _alerts_loop(self, options: AlertmanagerOptions) -> None:
        """Read the fleet's alerts every alertmanager.refresh_interval (or at once when
        refresh_alerts() wakes it); the clusters whose alerts changed are redrawn."""
        from dbops.platform.alertmanager import fetch_alerts

        while True:
            if not self._running.is_set():
                await self._wait_resumed()
            self._alerts_wake.clear()
            try:
                alerts = await fetch_alerts(options, self.refs)
                state = AlertsState(tuple(alerts), time.time(), None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The last alerts stay, marked stale by the error and their age; a bug of ours
                # is said the same way (with a crash report), and the next read is tried.
                message = monitoring_failure(exc, "the alerts", "alertmanager")
                with self._lock:
                    last = self._alerts
                state = AlertsState(last.alerts, last.fetched_at, message)
            self._set_alerts(state)
            await self._alerts_wake.wait(options.refresh_interval)

    def _set_alerts(self, state: AlertsState) -> None:
        with self._lock:
            before = self._alerts
            self._alerts = state
            if self.recorder is not None:
                self.recorder.alerts(state)
            changed: set[str | None] = {a.cluster for a in set(before.alerts) ^ set(state.alerts)}
            changed.discard(None)
            if before.error != state.error or before.fetched_at is None:
                # The first read (every Alerts cell leaves "?") or a read that failed or recovered.
                changed |= set(self._health)
            keys = {k for k in changed if k in self._health}
            first = not self._dirty and bool(keys) or before.fetched_at is None
            self._dirty |= keys
            self._alerts_seen += 1
        if first and self._on_change is not None:
            self._on_change()

    def alerts(self, key: str | None = None) -> AlertsState:
        """The fleet's alerts as Alertmanager last gave them (of one cluster, with `key`)."""
        with self._lock:
            state = self._alerts
        if key is None:
            return state
        return replace(state, alerts=tuple(a for a in state.alerts if a.cluster == key))

    def refresh_alerts(self) -> None:
        """Re-read the alerts now (after a silence was made or expired), from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._alerts_wake.set)

    async def _prometheus_loop(self) -> None:
        """Fleet mode: every cluster nobody has open is judged from Prometheus' series (a few
        PromQL queries for the whole fleet per prometheus.refresh_interval)."""
        from dbops.platform.prometheus import fleet_health

        options = self.config.prometheus
        assert options is not None
        failing: str | None = None
        while True:
            if not self._running.is_set():
                await self._wait_resumed()
            try:
                found = await fleet_health(options, self.refs)
                if failing is not None:
                    self.notice("information", "fleet mode: Prometheus answers again")
                failing = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The rows keep their last values; their age (observed_at) shows they are old.
                # Said once per distinct failure, not at every refresh.
                message = monitoring_failure(exc, "Prometheus", "prometheus")
                if message != failing:
                    self.notice("error", f"fleet mode: {message}; the rows shown are as old as their Seen column says")
                failing = message
                found = {}
            with self._lock:
                for key, health in found.items():
                    if key in self._health and key != self._watched:
                        self._health[key] = health
                        self._dirty.add(key)
                        if self.recorder is not None:
                            self.recorder.health(key, self._snapshots[key], health)
                first = bool(found)
            if first and self._on_change is not None:
                self._on_change()
            await asyncio.sleep(options.refresh_interval)

    # -- backups and audit shipping (off the UI thread: boto3 and pgbackrest block) ----------

    async def _backup_loop(self, ref: ClusterRef) -> None:
        """Re-read one cluster's backup state every backups.refresh_seconds, or at once when
        refresh_backups() wakes it. Sequential, so two reads of one cluster never overlap."""
        wake = self._backup_wake[ref.key]
        while True:
            if not self._running.is_set():
                await self._wait_resumed()
            wake.clear()
            try:
                fetched = await platform_backups.fetch(ref)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A bug of ours: shown as the cluster's backup error, details in the crash file.
                from dbops.crash import write_crash_report

                where = write_crash_report(exc, f"backups {ref.key}")
                fetched = platform_backups.Fetched(ref.key, time.time(), errors=(
                    f"dbops could not read the backups ({type(exc).__name__}: {exc}); details in {where}",))
            with self._lock:
                self._backups[ref.key] = fetched
                if self.recorder is not None:
                    self.recorder.backups(ref.key, fetched)
                first = not self._dirty
                self._dirty.add(ref.key)
            if first and self._on_change is not None:
                self._on_change()
            await wake.wait(ref.cluster.backups.refresh_seconds)

    def refresh_backups(self, key: str | None = None) -> None:
        """Re-read the backup state now (of one cluster, or all), from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for k, event in self._backup_wake.items():
            if key is None or k == key:
                loop.call_soon_threadsafe(event.set)

    async def _ship_loop(self, shipping: Any, audit_path: Path) -> None:
        from dbops.audit_ship import ship_reporting

        while True:
            await asyncio.sleep(shipping.every_seconds)
            outcome = await platform_backups.in_daemon_thread(ship_reporting, audit_path, shipping)
            if outcome is not None and not outcome[0]:
                self.notice("error", outcome[1])

    def notice(self, severity: str, message: str) -> None:
        """Something the operator must see (a failed audit shipping), from any thread."""
        with self._lock:
            self._notices.append((severity, message))
        if self._on_change is not None:
            self._on_change()

    def drain_notices(self) -> list[tuple[str, str]]:
        with self._lock:
            out = list(self._notices)
            self._notices.clear()
        return out

    def backups(self, key: str) -> platform_backups.Fetched | None:
        """What the watcher last read of a cluster's backups (None: not read yet, or none configured)."""
        with self._lock:
            return self._backups.get(key)

    def backup_state(self, key: str, now: float) -> platform_backups.ClusterBackups | None:
        """The cluster's backups judged as of `now`."""
        fetched = self.backups(key)
        if fetched is None:
            return None
        return platform_backups.judge(fetched, self.ref(key).cluster.backups, now)

    # -- reading (any thread) ----------------------------------------------------------------

    def drain(self) -> dict[str, ClusterHealth]:
        """Health of the clusters that changed since the last drain."""
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
        """The latest snapshot of each poll unit of a cluster (a Redis deployment has one unit
        whose data is the whole refresh: topology and slot map)."""
        with self._lock:
            return dict(self._snapshots[key])

    def history(self, key: str, member: str) -> list[HistoryPoint]:
        """The member's points, oldest first, of the kind its engine's sampler makes (none for
        an engine that keeps no history)."""
        with self._lock:
            return list(self._history.get((key, member), ()))

    def ref(self, key: str) -> ClusterRef:
        return self._refs_by_key[key]

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    # -- actions -----------------------------------------------------------------------------

    def submit(self, fn: Callable[[Adapter], Awaitable[Any]], key: str, member: str) -> concurrent.futures.Future[Any]:
        """Run `fn(adapter)` on the hub's loop, where the member's connection lives."""
        if self._loop is None:
            raise RuntimeError("pollers are not running")
        ref = self.ref(key)
        m = next(x for x in ref.poll_units if x.name == member)

        async def call() -> Any:
            return await asyncio.wait_for(fn(self._adapter(ref, m)), timeout=ref.timeout * 2)

        return asyncio.run_coroutine_threadsafe(call(), self._loop)


async def poll_once(
    refs: Iterable[ClusterRef], refreshes: int = 1, history: dict[tuple[str, str], list[HistoryPoint]] | None = None
) -> list[ClusterHealth]:
    """One poll of every member of every cluster, concurrently (for `dbops check`); with
    refreshes > 1, that many, a refresh interval apart, judged after the last (what is judged
    over a window, like Kafka consumer lag, needs several). `history`, when given, gets each
    member's points, (cluster key, member) -> oldest first, as the hub keeps them: every
    refresh judged and sampled by the engine's history sampler (PostgreSQL's catch-up trend)."""
    refs = list(refs)

    async def cluster(ref: ClusterRef) -> ClusterHealth:
        try:
            cls = adapter_class(ref.cluster.engine)
        except Exception as exc:
            raise RuntimeError(f"{ref.key}: engine {ref.cluster.engine!r} cannot be loaded: {exc}") from None
        adapters = {m.name: cls(ref, m) for m in ref.poll_units}
        try:
            snaps: list[Snapshot] = []
            for i in range(refreshes):
                if i:
                    await asyncio.sleep(ref.refresh_interval)
                previous = dict(zip((m.name for m in ref.poll_units), snaps))
                snaps = list(await asyncio.gather(*(poll_member(adapters[m.name], ref, m, previous.get(m.name))
                                                    for m in ref.poll_units)))
                if history is not None:
                    keep_history(ref, snaps, history)
        finally:
            await asyncio.gather(*(close_quietly(a) for a in adapters.values()))
        return assess_cluster(ref, {s.member: s for s in snaps})

    return list(await asyncio.gather(*(cluster(r) for r in refs)))


def keep_history(ref: ClusterRef, snaps: list[Snapshot], history: dict[tuple[str, str], list[HistoryPoint]]) -> None:
    """Append one refresh's history points (its answered members', judged together) to
    `history`, as PollerHub keeps them; nothing for an engine that keeps no history."""
    sampler = history_sampler(ref.cluster.engine)
    if sampler is None:
        return
    health = assess_cluster(ref, {s.member: s for s in snaps})
    for mh in health.members:
        snap = next((s for s in snaps if s.member == mh.name), None)
        if snap is not None and snap.reachable and (point := sampler(snap, mh)) is not None:
            history.setdefault((ref.key, mh.name), []).append(point)
