"""The dbops Textual application: owns the poller hub and routes health updates to screens."""

from __future__ import annotations

import gc
import getpass
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from textual import events
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen

from dbops.audit import AuditLog
from dbops.config import ClusterRef, Config
from dbops.hub import Hub
from dbops.model import ClusterHealth


class HealthChanged(Message):
    """Posted from the pollers' thread (post_message is thread-safe); carries nothing, the
    handler drains the hub, so a burst of polls costs one UI update."""


PANE_GROUP = "dbops.panes"


def pane_for(kind: str) -> type[Screen[None]] | None:
    """An engine's pane, from the `dbops.panes` entry-point group: the one table of kinds to
    panes. Built-ins register there as a third party's engine does (pyproject.toml); read when a
    cluster is opened, so the first frame never pays for it."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=PANE_GROUP, name=kind):
        pane: type[Screen[None]] = ep.load()
        return pane
    return None


def operator_name() -> str:
    user = getpass.getuser()
    sudo = os.environ.get("SUDO_USER")
    return f"{sudo} (as {user})" if sudo and sudo != user else user


class DbopsApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "dbops"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("p", "toggle_pause", "Pause"),
        Binding("A", "audit", "Audit log", key_display="A"),
        # Not in the footer (full at 80 columns); listed in help (?) and the command palette.
        Binding("B", "backups", "Backups", key_display="B", show=False),
        Binding("R", "aws", "AWS (RDS)", key_display="R", show=False),
        Binding("K", "kubernetes", "Kubernetes", key_display="K", show=False),
        Binding("V", "approvals", "Approvals", key_display="V", show=False),
        Binding("D", "drill", "Drill", key_display="D", show=False),
        # Alertmanager's alerts (the fleet's from the overview, the cluster's from its pane).
        Binding("exclamation_mark", "alerts", "Alerts", key_display="!", show=False),
        # The incident's timeline, and a note on it (live or in replay).
        Binding("T", "timeline", "Timeline", key_display="T", show=False),
        Binding("n", "note", "Note", show=False),
        # A replay's controls (dbops replay); p plays and pauses it.
        Binding("full_stop", "step(1)", "Next event", key_display=".", show=False),
        Binding("comma", "step(-1)", "Previous event", key_display=",", show=False),
        Binding("plus,equals_sign", "speed(1)", "Faster", key_display="+", show=False),
        Binding("minus", "speed(-1)", "Slower", key_display="-", show=False),
        Binding("g", "goto", "Go to time", show=False),
    ]
    REPLAY_ACTIONS = frozenset({"step", "speed", "goto"})
    # How often a console looks for runs waiting for its operator's approval (two-person rule).
    APPROVALS_EVERY = 10.0

    def __init__(
        self,
        config: Config,
        *,
        allow_writes: bool = False,
        state_dir: Path,
        hub: Hub | None = None,
        clock: Callable[[], float] = time.time,
        exit_after_first_frame: bool = False,
        config_path: Path | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        # The file it was read from, when known: a drill's report names the config by its SHA-256.
        self.config_path = config_path
        self.allow_writes = allow_writes
        self.state_dir = state_dir
        self.clock = clock
        self.audit = AuditLog(state_dir / "audit.jsonl")
        self.operator = config.operator or operator_name()
        self._last_input = time.monotonic()  # the operator's last key (see _collect_when_idle)
        self._last_full_collection = float("-inf")
        self._hub = hub
        self._exit_after_first_frame = exit_after_first_frame  # benchmarks/startup.py
        self._crash: BaseException | None = None
        self.crash_message: str | None = None
        self.waiting_approvals: list[Any] = []  # requests this operator may approve (dbops.runbook.approvals)
        self._approvals_error: str | None = None
        self._recorder: Any = None  # dbops.recording.Recorder, made with the live hub

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def hub(self) -> Hub:
        assert self._hub is not None, "the hub is made on mount"
        return self._hub

    def on_mount(self) -> None:
        from .overview import OverviewScreen

        if self._hub is None:
            # Imported here: the poller pulls in the engine registry, which the first frame does not need.
            from dbops.poller import PollerHub

            hub = PollerHub(self.config, on_change=lambda: self.post_message(HealthChanged()), audit_path=self.audit.path)
            self._hub = hub
            # Pollers start after the first frame: their thread imports the client libraries, and
            # holding the GIL for that would delay the first paint. So does the recording.
            self.call_after_refresh(self._record_and_poll, hub)
        else:
            self.call_after_refresh(self._hub.start)
        self.sub_title = f"operator {self.operator}"
        if self._hub.playback is not None:
            # A replay: every screen gets the time bar; nothing is read from or done to a server.
            self.sub_title = f"replay · operator {self.operator}"
            self.screen_change_signal.subscribe(self, self._add_time_bar)
        self.push_screen(OverviewScreen())
        if self._watches_approvals() and self._hub.playback is None:
            self.call_after_refresh(self._look_for_approvals)
            self.set_interval(self.APPROVALS_EVERY, self._look_for_approvals)
        if self._exit_after_first_frame:
            self.call_after_refresh(self.exit)
        self.call_after_refresh(self._tame_the_collector)

    def _record_and_poll(self, hub: Any) -> None:
        """The session is recorded (dbops replay, the incident bundle) unless the config says
        not; a recording that cannot start is said, and the console runs without it."""
        from dbops.recording import open_recorder

        self._recorder, error = open_recorder(self.config, self.state_dir, self.audit.path)
        hub.recorder = hub.timeline = self._recorder
        if self._recorder is not None:
            self._recorder.watch(hub.watched)
        if error is not None:
            self.notify(error, severity="error", timeout=20)
        hub.start()

    # -- garbage collection out of the keys' way ----------------------------------------------

    # A full collection runs when the operator has not pressed a key for this long, and at the
    # latest this often.
    COLLECT_WHEN_IDLE_FOR = 2.0
    COLLECT_AT_LEAST_EVERY = 300.0

    def _tame_the_collector(self) -> None:
        """With a fleet in memory (1000 clusters' snapshots), CPython's automatic full
        collections take 70-110 ms and land under whatever key is being answered. What start-up
        made lives for the session: frozen out of the collector's reach. Full collections then
        run only when the operator pauses (young generations still collect as usual); the
        snapshots themselves are freed by reference counting, as they hold no cycles."""
        gc.collect()
        gc.freeze()
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, 1_000_000)
        self._last_full_collection = time.monotonic()
        self.set_interval(self.COLLECT_WHEN_IDLE_FOR, self._collect_when_idle)

    def _collect_when_idle(self) -> None:
        now = time.monotonic()
        # Once per pause (not every tick of a long one), and at least every few minutes.
        paused = now - self._last_input >= self.COLLECT_WHEN_IDLE_FOR and self._last_full_collection < self._last_input
        if paused or now - self._last_full_collection >= self.COLLECT_AT_LEAST_EVERY:
            gc.collect()
            self._last_full_collection = now

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            self._last_input = time.monotonic()
        await super().on_event(event)

    def on_unmount(self) -> None:
        if self._hub is not None:
            self._hub.stop()
        if self._recorder is not None:
            self._recorder.stop()

    def on_health_changed(self, _: HealthChanged) -> None:
        if not self.is_running:
            # Shutting down: the screens are being taken apart, and one whose widgets are gone
            # must not be asked to redraw (a message queued by the hub before it stopped).
            return
        # Notices from the hub's thread (a failed audit shipping): seen, never lost in a log.
        for severity, message in self._hub.drain_notices():
            self.notify(message, severity=severity, timeout=20)
        changed = self._hub.drain()
        if not changed:
            return
        with self.batch_update():
            for screen in self.screen_stack:
                # A screen pushed but not yet composed has no widgets to update; it reads the
                # whole state in its own on_mount, so it misses nothing by being skipped here.
                handler = getattr(screen, "health_changed", None)
                if handler is not None and screen.is_mounted:
                    handler(changed)

    # -- the two-person rule: runs waiting for this operator -----------------------------------

    def _watches_approvals(self) -> bool:
        return self.config.locks.postgres is not None and any(e.approvals >= 2 for e in self.config.environments.values())

    def _look_for_approvals(self) -> None:
        from textual.worker import WorkerState

        if any(w.group == "approvals-watch" and w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in self.workers):
            return  # the last look has not answered yet: never two at once
        from dbops.runbook.approvals import ApprovalStore

        from .approvals import read_waiting

        store = ApprovalStore(self.config.locks.postgres)
        self.run_worker(lambda: read_waiting(store), name="approvals-watch", group="approvals-watch",
                        description="look for runs waiting for an approval", thread=True, exit_on_error=False)

    def on_worker_state_changed(self, event: Any) -> None:
        if event.worker.group == "note":
            self._note_kept(event)
            return
        if event.worker.group != "approvals-watch":
            return
        from textual.worker import WorkerState

        if event.state == WorkerState.SUCCESS:
            seen = {r.run_id for r in self.waiting_approvals}
            self.waiting_approvals = list(event.worker.result)
            for r in self.waiting_approvals:
                if r.run_id not in seen:
                    self.notify(f"run {r.run_id} ({r.runbook} on {r.environment}/{r.cluster}) by {r.requester.name} "
                                "waits for a second operator's approval: press V", severity="warning", timeout=30)
            self._approvals_error = None
            count = len(self.waiting_approvals)
            self.sub_title = f"operator {self.operator}" + (f" · {count} approval(s) waiting (V)" if count else "")
        elif event.state == WorkerState.ERROR:
            from dbops.secrets import scrub_text

            message = scrub_text(str(event.worker.error)) or type(event.worker.error).__name__
            if message != self._approvals_error:  # once per new failure, not every ten seconds
                self.notify(f"cannot look for waiting approvals: {message}", severity="error", timeout=20)
            self._approvals_error = message

    def _handle_exception(self, error: Exception) -> None:
        self._crash = error
        super()._handle_exception(error)

    def _fatal_error(self) -> None:
        # Textual's crash output is a traceback with local variables, which can include a
        # connection's parameters. Write the traceback to the crash file instead and leave one
        # line for the terminal (printed by the CLI after the screen is restored).
        from dbops.crash import write_crash_report

        error = self._crash or RuntimeError("unknown error")
        where = write_crash_report(error, "console")
        self.crash_message = f"the console stopped on an unexpected {type(error).__name__}; details in {where}"
        self.bell()
        self._close_messages_no_wait()

    # -- helpers for screens -----------------------------------------------------------------

    def refs(self) -> list[ClusterRef]:
        return self._hub.refs

    def health(self) -> list[ClusterHealth]:
        return self._hub.health()

    # -- actions -----------------------------------------------------------------------------

    def action_help(self) -> None:
        from .help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_toggle_pause(self) -> None:
        playback = self._hub.playback
        if self._hub.paused:
            self._hub.resume()
            self.notify(f"Replay playing at {playback.speed:g}x" if playback is not None else "Refresh resumed")
        else:
            self._hub.pause()
            self.notify("Replay paused" if playback is not None else "Refresh paused: values are frozen until you press p again",
                        severity="warning")
        for screen in self.screen_stack:
            handler = getattr(screen, "pause_changed", None)
            if handler is not None and screen.is_mounted:
                handler(self._hub.paused)

    def _show_once(self, module: str, name: str, *args: Any) -> None:
        """Open a console-wide screen unless it is the one showing; its module is imported on
        first use, so the first frame never pays for it."""
        import importlib

        screen_class = getattr(importlib.import_module(f"dbops.screens.{module}"), name)
        if not isinstance(self.screen, screen_class):
            self.push_screen(screen_class(*args))

    def action_audit(self) -> None:
        # A replay shows the recording's audit records: this host's log is of another time (or host).
        self._show_once("audit", "AuditScreen", self.audit.path, self._hub.timeline if self._hub.playback is not None else None)

    def action_aws(self) -> None:
        self._show_once("rds", "AwsScreen")

    def action_kubernetes(self) -> None:
        self._show_once("kubernetes", "KubernetesScreen")

    def action_approvals(self) -> None:
        self._show_once("approvals", "ApprovalsScreen")

    def action_alerts(self) -> None:
        from .alerts import AlertsScreen

        if isinstance(self.screen, AlertsScreen):
            return
        key = getattr(self.screen, "key", None)
        self.push_screen(AlertsScreen(key if isinstance(key, str) else None))

    def action_backups(self) -> None:
        self._show_once("backups", "BackupsScreen")

    def action_drill(self) -> None:
        from .drill import DrillScreen

        if self.refuse_in_replay("drills"):
            return
        # One drill screen at a time (a second could start a drill while one runs), even when a
        # confirmation or another screen is on top of it.
        if any(isinstance(s, DrillScreen) for s in self.screen_stack):
            if not isinstance(self.screen, DrillScreen):
                self.notify("the drill screen is open below this one", severity="warning")
            return
        # From a cluster's pane, that cluster's drills are listed first.
        key = getattr(self.screen, "key", None)
        self.push_screen(DrillScreen(key if isinstance(key, str) else None))

    def open_cluster(self, key: str) -> None:
        kind = self._hub.ref(key).cluster.engine
        try:
            pane = pane_for(kind)
        except Exception as exc:  # a plugin's pane that cannot load: say so, keep the console
            self.notify(f"the {kind} pane cannot be loaded: {type(exc).__name__}: {exc}", severity="error")
            return
        if pane is None:
            self.notify(f"no pane for engine {kind!r} yet: its clusters are on the overview and in `dbops check`",
                        severity="error")
            return
        self.push_screen(pane(key))

    def refuse_in_replay(self, what: str) -> bool:
        """True (and says so) when the console is a replay, where `what` cannot happen."""
        if self._hub.playback is None:
            return False
        self.notify(f"this is a replay of a recording: {what} cannot run here (open the live console)", severity="warning")
        return True

    def open_runbooks(self, key: str) -> None:
        """Pick a runbook for this cluster's engine, then open the wizard on it."""
        if self.refuse_in_replay("runbooks"):
            return
        from dbops.runbook.registry import applies_to, load

        from .runbook import PickRunbook, RunbookScreen

        ref = self._hub.ref(key)
        books, problems = load(self.config.runbook_dirs)
        mine = sorted((b for b in books.values() if applies_to(b, ref)), key=lambda b: b.id)

        def picked(book_id: str | None) -> None:
            if book_id is not None:
                self.push_screen(RunbookScreen(books[book_id].for_cluster(ref), ref))

        self.push_screen(PickRunbook(mine, problems), callback=picked)

    # -- the timeline and notes; a replay's controls --------------------------------------------

    def _screen_cluster(self) -> str | None:
        key = getattr(self.screen, "key", None)
        return key if isinstance(key, str) else None

    def action_timeline(self) -> None:
        from .timeline import TimelineScreen

        if not isinstance(self.screen, TimelineScreen):
            self.push_screen(TimelineScreen(self._screen_cluster()))

    def action_note(self) -> None:
        from dbops.recording import clock_text

        from .timeline import NoteModal

        timeline = self._hub.timeline
        if timeline is None:
            self.notify("nothing is recorded ([recording] enabled = false, or the recording stopped): a note has nowhere to go",
                        severity="error")
            return
        cluster = self._screen_cluster()
        at = clock_text(self.clock())

        def keep(text: str | None) -> None:
            if text is None:
                return
            # In a worker thread: the note waits for the file's commit (a few ms, or a slow disk).
            self.run_worker(lambda: timeline.note(text, self.operator, cluster), group="note", thread=True,
                            exit_on_error=False, description="keep a note")

        self.push_screen(NoteModal(cluster or "the fleet", at), callback=keep)

    def _note_kept(self, event: Any) -> None:
        from textual.worker import WorkerState

        if event.state == WorkerState.SUCCESS:
            from dbops.recording import clock_text

            self.notify(f"note kept at {clock_text(event.worker.result.ts)}: {event.worker.result.text}")
        elif event.state == WorkerState.ERROR:
            from dbops.secrets import scrub_text

            self.notify(f"the note was NOT kept: {scrub_text(str(event.worker.error))}", severity="error", timeout=30)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.REPLAY_ACTIONS and (self._hub is None or self._hub.playback is None):
            return False
        return True

    def action_step(self, direction: int) -> None:
        from dbops.recording import clock_text

        playback = self._hub.playback
        assert playback is not None
        at = playback.step(direction)
        if at is None:
            self.notify("no later event" if direction > 0 else "no earlier event", severity="warning")
        else:
            self.notify(f"at {clock_text(at)}", timeout=2)

    def action_speed(self, steps: int) -> None:
        playback = self._hub.playback
        assert playback is not None
        self.notify(f"replay speed {playback.faster(steps):g}x", timeout=2)

    def action_goto(self) -> None:
        from dbops.recording import parse_time

        from .timeline import GoToTime

        playback = self._hub.playback
        assert playback is not None

        def go(text: str | None) -> None:
            if text is None:
                return
            try:
                at = parse_time(text, playback.position)
            except ValueError as exc:
                self.notify(str(exc), severity="error")
                return
            if not playback.first <= at <= playback.last:
                self.notify("that time is outside the recording: showing its nearest end", severity="warning")
            playback.seek(at)

        self.push_screen(GoToTime(playback.first, playback.last), callback=go)

    def _add_time_bar(self, screen: Screen[Any]) -> None:
        from textual.screen import ModalScreen
        from textual.widgets import Footer

        from .timeline import TimeBar

        if isinstance(screen, ModalScreen) or screen.query(TimeBar):
            return
        bar = TimeBar()
        if screen.query(Footer):
            bar.styles.margin = (0, 0, 1, 0)  # above the footer, not over it
        screen.mount(bar)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for ref in self._hub.refs if self._hub else ():
            yield SystemCommand(
                f"Open {ref.name}", f"{ref.cluster.engine} cluster in {ref.environment}", lambda k=ref.key: self.open_cluster(k)
            )
            yield SystemCommand(
                f"Runbooks for {ref.name}", "Promote, restore, back up … with a plan first", lambda k=ref.key: self.open_runbooks(k)
            )
        yield SystemCommand("Audit log", "Show the audit log and verify its hash chain", self.action_audit)
        yield SystemCommand("AWS", "RDS instances and read replicas, snapshots, PITR window; ElastiCache groups", self.action_aws)
        yield SystemCommand("Approvals", "Runs waiting for a second operator's approval (two-person rule)", self.action_approvals)
        yield SystemCommand("Drill", "A guided DR drill: a fault, the recovery runbooks, RTO and RPO measured", self.action_drill)
        yield SystemCommand("Backups", "Newest backup of every cluster, its age, size trend, WAL archive, bucket", self.action_backups)
        yield SystemCommand("Pause / resume refresh", "Freeze or unfreeze the live values", self.action_toggle_pause)
        yield SystemCommand("Help", "Keys and what the colours mean", self.action_help)
