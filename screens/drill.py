"""`D`: a DR drill, guided. Pick a scenario and a cluster (only the pairs that apply), read the
plan, start; then watch the eight phases, the RTO clock, the probe's strip and the recovery
runbook's own log; answer its confirmations; note what you saw per phase; abort if you must.

Only presentation lives here: a DrillRunner (dbops.drill.runner) does the drill, and its
recovery runbooks run through the same RunbookSession as the wizard's, with the wizard's
confirmation modals (ModalFrontEnd). The drill runs in a thread with its own event loop, as the
wizard's runs do: its probe fsyncs every acknowledged write (ten a second) and its journal every
change, and the UI must never wait on the disk or on a server. Its events reach the screen as
posted messages (thread-safe, and they never hold the drill's loop while the UI draws, which
would delay the probe and so bend what it measures).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, OptionList, RichLog, Static

from dbops.drill.model import PHASES, Phase, Scenario
from dbops.runbook.events import event_lines
from dbops.runbook.executor import ExitCode
from dbops.runbook.progress import ProgressLine
from dbops.runbook.session import unexpected

from .runbook import ConfirmStep, ModalFrontEnd
from .widgets import EnvBanner

if TYPE_CHECKING:
    from dbops.config import ClusterRef
    from dbops.drill.probe import Attempt
    from dbops.drill.runner import DrillResult, DrillRunner
    from dbops.model import ClusterHealth

    from .app import DbopsApp

LABELS = {Phase.ANNOUNCE: "announce", Phase.STEADY: "steady state", Phase.INJECT: "inject", Phase.DETECT: "detect",
          Phase.RECOVER: "recover", Phase.VERIFY: "verify", Phase.RESTORE: "restore", Phase.REPORT: "report"}
ICONS = {"pending": "○", "running": "▶", "done": "✓", "failed": "✗", "aborted": "■", "skipped": "·", "not run": "·"}
STYLES = {"pending": "dim", "running": "bold cyan", "done": "bold green", "failed": "bold red", "aborted": "bold yellow",
          "skipped": "dim", "not run": "dim"}
VERDICTS = {"met": ("MET", "bold green"), "missed": ("MISSED", "bold yellow"), "failed": ("FAILED", "bold red"),
            "declined": ("DECLINED", "bold yellow"), "aborted": ("ABORTED", "bold yellow")}
STRIP = 60  # probe attempts shown: six seconds at the runner's 0.1 s interval, and 80 columns hold them
# A write acknowledged late (held by the service, not refused) is part of the outage: not green.
STRIP_CELLS = {"ok": ("█", "green"), "held": ("▒", "bold yellow"), "failed": ("╳", "bold red")}
NOTE_WIDTH = 28  # the checklist's note column at 80 columns; the modal shows the whole note


def _duration(seconds: float) -> str:
    """At most six characters: the checklist's column."""
    return f"{seconds:.1f}s" if seconds < 100 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class DrillEvent(Message):
    """One event of the drill (its own or its runbook session's), posted from the drill's thread."""

    def __init__(self, event: str, data: dict[str, Any], at: float) -> None:
        super().__init__()
        self.event, self.data, self.at = event, data, at


class DrillFront(ModalFrontEnd):
    """The drill's front end: the wizard's confirmation modals; events posted to the screen."""

    screen: DrillScreen

    def __init__(self, screen: DrillScreen) -> None:
        super().__init__(screen)

    async def _ask(self, modal: ConfirmStep) -> bool:
        if self.screen.closing:  # the console is going: nobody is there to say yes
            return False
        if self.screen.abort_requested:
            # The operator chose to stop: a recovery runbook under way asks for nothing more
            # and stops at this step (its session audits the decline).
            self.event("drill-log", line=f"'{modal.step.title}' declined: the drill is being aborted")
            return False
        return await super()._ask(modal)

    def event(self, event: str, **data: Any) -> None:
        # Stamped here, on the drill's thread: a phase's times are when it happened, not when
        # the UI got round to drawing it.
        self.screen.post_message(DrillEvent(event, data, time.time()))


class AbortDrill(ModalScreen[bool]):
    """Abort: what happens next, and a yes."""

    BINDINGS = [Binding("escape", "dismiss(False)", "Keep running"), Binding("n", "dismiss(False)", "No", show=False)]
    DEFAULT_CSS = "AbortDrill { align: center middle; }"

    def __init__(self, what: str, injected: bool) -> None:
        super().__init__()
        self.what, self.injected = what, injected

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-dialog"):
            yield Label(Text(f"Abort the drill {self.what}?", style="bold red"))
            heal = ("The fault is healed (unless the recovery already did it), then the restore phase runs"
                    if self.injected else "No fault was injected yet: none will be; the restore phase runs")
            yield Static(f"{heal} and the report is written. A recovery runbook under way is not cut mid-step: "
                         "its next confirmation is declined for you (audited), and the drill stops at its next phase.")
            yield Static(Text("y aborts; n or escape keeps the drill running", style="dim"))
            with Horizontal(id="confirm-buttons"):
                yield Button("Abort drill", variant="error", id="go")
                yield Button("Keep running", id="decline")

    def on_mount(self) -> None:
        self.query_one("#decline", Button).focus()

    def key_y(self) -> None:
        self.dismiss(True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "go")


class PhaseNote(ModalScreen[str | None]):
    """The operator's note on one phase: it goes into the report's line for that phase."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]
    DEFAULT_CSS = """
    PhaseNote { align: center middle; }
    PhaseNote #note-dialog { width: 90%; max-width: 100; height: auto; border: round $accent; background: $surface; padding: 0 1; }
    """

    def __init__(self, phase: Phase, note: str) -> None:
        super().__init__()
        self.phase, self.note = phase, note

    def compose(self) -> ComposeResult:
        with Vertical(id="note-dialog"):
            yield Label(Text(f"Note on {LABELS[self.phase]}: {self.phase.heading}", style="bold"))
            yield Input(value=self.note, placeholder="what you saw, what you did (in the report)", id="note-text")
            yield Static(Text("enter saves (empty removes the note); escape cancels", style="dim"))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())


class DrillScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("s", "start", "Start"),
        Binding("n", "note", "Note"),
        Binding("x", "abort", "Abort"),
        # The console's q, kept from ending it while a fault may be injected.
        Binding("q", "quit", "Quit"),
    ]
    DEFAULT_CSS = """
    DrillScreen #drill-hint { height: 1; padding: 0 1; }
    DrillScreen #drill-pairs { height: auto; max-height: 6; }
    DrillScreen #drill-refusal { height: auto; padding: 0 1; }
    DrillScreen #drill-plan { height: 1fr; padding: 0 1; }
    DrillScreen #drill-clock, DrillScreen #drill-strip { height: 1; padding: 0 1; }
    DrillScreen #drill-phases { height: auto; }
    DrillScreen #drill-log { height: 1fr; min-height: 3; }
    DrillScreen #drill-outcome { height: auto; padding: 0 1; background: $panel; }
    """

    def __init__(self, prefer: str | None = None) -> None:
        super().__init__()
        self.prefer = prefer  # the cluster on screen when D was pressed: its drills come first
        self.pairs: list[tuple[Scenario, ClusterRef]] = []
        self.chosen: tuple[Scenario, ClusterRef] | None = None
        self.started = False  # a drill was started on this screen (one per screen)
        self.running = False
        self.closing = False
        self.abort_requested = False
        self.injected = False
        self.result: DrillResult | None = None
        self.phases: dict[Phase, dict[str, Any]] = {p: {"state": "pending"} for p in PHASES}
        self.marks: dict[str, float] = {}
        self.attempts: list[tuple[float, bool]] = []
        self.strip: deque[str] = deque(maxlen=STRIP)  # per attempt: ok, held (acknowledged late) or failed
        self.begun: float | None = None  # the first phase's start: the checklist's times are from it
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probe_ok: bool | None = None
        self._progress: ProgressLine | None = None

    @property
    def console(self) -> DbopsApp:
        app: DbopsApp = self.app  # type: ignore[assignment]
        return app

    # -- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield EnvBanner(id="banner")
        with Vertical(id="drill-pick"):
            yield Static(Text("Pick a drill and a cluster (↑ ↓); its plan is below; s starts it", style="bold"), id="drill-hint")
            yield OptionList(id="drill-pairs")
            yield Static("", id="drill-refusal")
            with VerticalScroll(id="drill-plan"):
                yield Static("", id="drill-plan-text")
        with Vertical(id="drill-run"):
            yield Static("", id="drill-clock")
            yield Static("", id="drill-strip")
            yield DataTable(id="drill-phases", cursor_type="row")
            yield RichLog(id="drill-log", wrap=True, markup=False, max_lines=2000)
            yield Static("", id="drill-outcome")
        yield Footer()

    def on_mount(self) -> None:
        from dbops.drill.runner import DrillRunner

        app = self.console
        self._hub = app.hub  # read from the drill's thread (the hub is read from any thread)
        self.front = DrillFront(self)
        self.runner: DrillRunner = DrillRunner(app.config, self.front, app.state_dir, allow_writes=app.allow_writes,
                                               config_hash=self._config_hash(), health=self._health)
        self.title = "drill"
        self.query_one("#drill-run").display = False
        self.query_one("#drill-outcome").display = False
        table = self.query_one("#drill-phases", DataTable)
        # Fixed widths: a cell updated later never widens its column, and at 80 columns the
        # note gets what is left.
        for key, label, width in (("icon", "", 1), ("phase", "Phase", 12), ("state", "State", 7), ("at", "At", 7),
                                  ("took", "Took", 6), ("note", "Note (n)", NOTE_WIDTH)):
            table.add_column(label, key=key, width=width)
        for p in PHASES:
            table.add_row(*self._row(p), key=p.value)
        self._load_pairs()
        self.set_interval(0.25, self._tick)

    def _config_hash(self) -> str:
        path = getattr(self.console, "config_path", None)
        if path is None:
            return "not known to the console (opened without a config path)"
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            return f"unreadable ({exc.strerror})"

    async def _health(self, ref: ClusterRef) -> ClusterHealth:
        """The console's own view (the hub's): detection is when the operator's screen showed the
        fault. A paused console, or one that has not polled every member yet, asks the servers."""
        from dbops.drill.runner import poll_health
        from dbops.model import Reachability

        hub = self._hub
        if not hub.paused:
            h = hub.cluster_health(ref.key)
            if all(m.snapshot.reachability is not Reachability.PENDING for m in h.members):
                return h
        return await poll_health(ref)

    # -- picking -----------------------------------------------------------------------------

    def _load_pairs(self) -> None:
        scenarios = self.runner.scenarios()  # problems come back as "warning" events
        refs = self.console.config.clusters()
        pairs = [(s, r) for r in refs for s in sorted(scenarios.values(), key=lambda s: s.id) if s.applies(r) is None]
        # The cluster on screen when D was pressed first; then by cluster and drill.
        pairs.sort(key=lambda p: (p[1].key != self.prefer, p[1].key, p[0].id))
        self.pairs = pairs
        options = self.query_one("#drill-pairs", OptionList)
        for s, r in pairs:
            refused = " (refused here)" if self.runner.refusal(r) is not None else ""
            options.add_option(Text.assemble((s.id, "bold"), f" on {r.key}", (refused, "yellow")))
        if pairs:
            options.highlighted = 0
            options.focus()
            self._show_plan(0)
        else:
            self.query_one("#drill-plan-text", Static).update(
                "No drill applies to a configured cluster (see `dbops drill list`).")

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_list.id == "drill-pairs" and not self.started:
            self._show_plan(event.option_index)

    def _show_plan(self, index: int) -> None:
        from dbops.actions import writes_allowed

        s, ref = self.pairs[index]
        self.query_one(EnvBanner).show([(ref.environment, ref.production, writes_allowed(ref, self.console.allow_writes))],
                                       self.console.hub.paused, self.console.operator)
        why = self.runner.refusal(ref)
        self.query_one("#drill-refusal", Static).update(
            Text(f"refused: {why}", style="bold red") if why else Text(f"{ref.environment} allows drills: s starts this one", style="green"))
        try:
            lines = self.runner.plan(s, ref)
        except Exception as exc:  # a scenario's bug: the crash file has it, the picker goes on
            lines = [f"the plan cannot be shown: {unexpected(exc, 'drill plan')}"]
        self.query_one("#drill-plan-text", Static).update(Text("\n".join(lines)))
        self.query_one("#drill-plan", VerticalScroll).scroll_home(animate=False)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Each stage's keys only, so the footer fits 80 columns and says what can be done now.
        if action == "start":
            return not self.started
        if action == "note":
            return self.started
        if action == "abort":
            return self.running
        return True  # escape while a drill runs says how to stop it

    # -- starting ----------------------------------------------------------------------------

    def action_start(self) -> None:
        if self.started:
            return
        index = self.query_one("#drill-pairs", OptionList).highlighted
        if index is None or not self.pairs:
            self.notify("no drill to start here", severity="warning")
            return
        s, ref = self.pairs[index]
        why = self.runner.refusal(ref)
        if why is not None:
            self.notify(f"refused: {why}", severity="error", timeout=15)
            return
        self.chosen = (s, ref)
        self.started = self.running = True
        self.sub_title = f"{s.id} on {ref.key}"
        self.query_one("#drill-pick").display = False
        self.query_one("#drill-run").display = True
        self.query_one("#drill-phases", DataTable).focus()
        rto, rpo = self.runner.targets(ref)
        self.log_line(f"drill {s.id} on {ref.key}: targets RTO {rto:g}s, RPO {rpo:g}s", "bold")
        self.log_line("n notes the selected phase (↑ ↓); x aborts (the fault is healed, the restore runs)", "dim")
        self.refresh_bindings()
        self._tick()
        self._run(s.id, ref.key)

    @property
    def run_done(self) -> threading.Event:
        if not hasattr(self, "_run_done"):
            self._run_done = threading.Event()
        return self._run_done

    @work(thread=True, exclusive=True, group="drill")
    def _run(self, scenario_id: str, cluster: str) -> None:
        from dbops.drill.runner import DrillResult, Outcome

        self.run_done.clear()
        try:
            result = asyncio.run(self._drive(scenario_id, cluster))
        except Exception as exc:  # a bug of ours: the journal says where it stopped, the crash file why
            result = DrillResult("", Outcome.FAILED, f"the drill stopped: {unexpected(exc, 'drill run')}")
        finally:
            self._loop = None
            self.run_done.set()
        # Not "finished": that name is the runbook executor's own event.
        self.post_message(DrillEvent("drill-ended", {"result": result}, time.time()))

    async def _drive(self, scenario_id: str, cluster: str) -> DrillResult:
        self._loop = asyncio.get_running_loop()
        return await self.runner.run(scenario_id, cluster)

    # -- events ------------------------------------------------------------------------------

    def log_line(self, text: str, style: str = "") -> None:
        self.query_one("#drill-log", RichLog).write(Text(text, style=style))

    def _since(self, t: float) -> str:
        base = self.begun if self.begun is not None else t
        s = max(0.0, t - base)
        return f"+{int(s // 60)}:{s % 60:04.1f}"

    def on_drill_event(self, message: DrillEvent) -> None:
        if self.closing:
            return
        try:
            self._event(message.event, message.data, message.at)
        except Exception as exc:  # a bug of ours must not end the console with a fault injected
            self.log_line(f"cannot show {message.event}: {unexpected(exc, 'drill screen')}", "bold red")

    def _event(self, event: str, data: dict[str, Any], at: float) -> None:
        if event == "drill-attempt":
            self._attempt(data["attempt"])
        elif event == "drill-phase":
            self._phase(data["phase"], data["state"], data.get("detail", ""), at)
        elif event == "drill-mark":
            name, t = data["name"], data["t"]
            self.marks[name] = t
            if name == "fault":
                self.injected = True
            after = f" ({t - self.marks['fault']:.1f}s after the fault)" if name != "fault" and "fault" in self.marks else ""
            self.log_line(f"◆ {name} at {self._since(t)}{after}", "bold magenta")
            self._tick()
        elif event == "drill-log":
            self.log_line(f"  {data['line']}")
        elif event in ("drill-over", "drill-ended"):
            self._finished(data["result"])
        elif event == "audit-shipped":
            self.log_line(f"audit: {data['message']}", "dim" if data["ok"] else "bold red")
            if not data["ok"]:
                self.notify(data["message"], severity="error", timeout=20)
        elif event in ("warning", "note"):
            self.log_line(f"{event}: {data['line']}", "yellow")
            if event == "warning" and not self.started:  # a drill module that did not load: the log is not shown yet
                self.notify(data["line"], severity="warning", timeout=10)
        elif event == "progress":
            if self._progress is None:
                self._progress = ProgressLine(lambda line: self.log_line(f"    {line}", "dim"), every=5.0)
            self._progress.report(data["done"], data["total"], data["unit"])
        elif event == "outcome":  # a recovery runbook's end
            r = data["result"]
            self.log_line(f"  runbook: {r.message}", "green" if r.code is ExitCode.OK else "bold red")
        else:
            self._session_event(event, data)

    def _session_event(self, event: str, data: dict[str, Any]) -> None:
        """A recovery runbook's event, in the words `dbops runbook` uses."""
        style = {"started": "bold", "done": "green", "failed": "bold red", "skipped": "dim", "overridden": "bold red",
                 "approval-waiting": "bold yellow", "approval-refused": "bold red"}.get(event, "")
        if event == "check":
            style = "green" if data["verdict"].ok else ("yellow" if data.get("overridden_by") else "bold red")
        if event == "started":
            self._progress = None  # a new step starts its own count
        for text in event_lines(event, data):
            for line in text.split("\n"):
                if line:
                    self.log_line(line, style)

    def _attempt(self, a: Attempt) -> None:
        from dbops.drill.measure import held

        late = held(a)
        self.attempts.append((a.t, a.ok))
        self.strip.append("held" if late else "ok" if a.ok else "failed")
        if late and a.started is not None:
            # Not refused, but clients waited (a paused pooler during a failover): part of the outage.
            self.log_line(f"probe write held {a.t - a.started:.1f}s before it was acknowledged, at {self._since(a.t)}", "yellow")
        if a.ok != self._probe_ok:
            # One line per change, not per write (the strip shows every write).
            if a.ok:
                self.log_line(f"probe writes and reads{' again' if self._probe_ok is False else ''} at {self._since(a.t)}", "green")
            else:
                self.log_line(f"probe FAILING at {self._since(a.t)}: {a.error}", "bold red")
            self._probe_ok = a.ok
        self._draw_strip()

    def _phase(self, phase: Phase, state: str, detail: str, at: float) -> None:
        p = self.phases[phase]
        if self.begun is None:
            self.begun = at
        if state == "running":
            p.update(state="running", started=at)
            self.log_line(f"== {phase.heading}", "bold cyan")
        else:
            p.update(state=state, finished=at, detail=detail)
            p.setdefault("started", at)  # the report phase says only that it is done
            mark = ICONS.get(state, state)
            self.log_line(f"{mark} {LABELS[phase]}" + (f": {detail}" if detail else ""), STYLES.get(state, ""))
        self._draw_phase(phase)
        if phase is Phase.INJECT and state == "done":
            self.injected = True

    # -- drawing -----------------------------------------------------------------------------

    def _row(self, phase: Phase) -> tuple[Text, str, Text, str, str, str]:
        p = self.phases[phase]
        state = p["state"]
        if state == "pending" and self.result is not None:
            state = "not run"
        style = STYLES.get(state, "")
        at = took = ""
        if "started" in p:
            base = self.begun if self.begun is not None else p["started"]
            since = max(0.0, p["started"] - base)
            at = f"+{int(since // 60)}:{int(since % 60):02d}"
            end = p.get("finished")
            took = _duration((end if end is not None else time.time()) - p["started"])
        note = self.runner.notes.get(phase.value, "")
        if len(note) > NOTE_WIDTH:
            note = note[: NOTE_WIDTH - 1] + "…"
        return Text(ICONS.get(state, "?"), style=style), LABELS[phase], Text(state, style=style), at, took, note

    def _draw_phase(self, phase: Phase) -> None:
        table = self.query_one("#drill-phases", DataTable)
        for key, value in zip(("icon", "phase", "state", "at", "took", "note"), self._row(phase)):
            table.update_cell(phase.value, key, value)

    def _draw_strip(self) -> None:
        text = Text("probe ", style="bold")
        if not self.strip:
            text.append("starts with the steady state phase", style="dim")
        for state in self.strip:
            text.append(*STRIP_CELLS[state])
        good = sum(1 for _, ok in self.attempts if ok)
        text.append(f" {good}✓ {len(self.attempts) - good}✗", style="dim")
        self.query_one("#drill-strip", Static).update(text)

    def _back_at(self, fault: float) -> float | None:
        """When the probe wrote and read again for good after failing since the fault (what the
        RTO will be measured to), while the drill has not yet marked "recovered"."""
        after = [(t, ok) for t, ok in self.attempts if t >= fault]
        if not any(not ok for _, ok in after) or len(after) < 3 or not all(ok for _, ok in after[-3:]):
            return None
        last_failed = max(i for i, (_, ok) in enumerate(after) if not ok)
        return after[last_failed + 1][0]

    def _clock(self) -> Text:
        assert self.chosen is not None
        s, ref = self.chosen
        rto_target = self.runner.targets(ref)[0]
        text = Text()
        fault = self.marks.get("fault")
        if fault is None:
            text.append("RTO clock: starts at the fault", style="dim")
        else:
            recovered = self.marks.get("recovered")
            back = self._back_at(fault) if recovered is None and s.rto == "availability" else None
            if recovered is not None:
                seconds, state, style = recovered - fault, "recovered", "bold green"
            elif back is not None:
                seconds, state, style = back - fault, "probe back, verifying", "bold green"
            elif self.running:
                seconds, state, style = time.time() - fault, "counting", "bold yellow"
            else:
                seconds, state, style = time.time() - fault, "not recovered", "bold red"
                if self.result is not None:  # stopped at the drill's end
                    seconds = self.result.report.get("drill", {}).get("finished", time.time()) - fault
            over = seconds > rto_target
            text.append(f"RTO {seconds:.1f}s ", style="bold red" if over else style)
            text.append(f"{state} (target {rto_target:g}s)")
            for name in ("detected", "decision"):
                if name in self.marks:
                    text.append(f" · {name} +{self.marks[name] - fault:.1f}s", style="dim" if name == "decision" else "")
        if self.abort_requested and self.result is None:
            text.append("  ABORTING", style="bold yellow")
        return text

    def _tick(self) -> None:
        if self.chosen is None or self.closing:
            return
        self.query_one("#drill-clock", Static).update(self._clock())
        for phase, p in self.phases.items():
            if p["state"] == "running":
                self._draw_phase(phase)

    def _finished(self, result: DrillResult) -> None:
        if self.result is not None:  # drill-over, then the worker's own drill-ended: shown once
            return
        self.result = result
        self.running = False
        for phase in PHASES:
            self._draw_phase(phase)
        self._tick()
        word, style = VERDICTS.get(result.outcome, (result.outcome.upper(), "bold"))
        lines = Text()
        lines.append(f"{word}: ", style=style)
        lines.append(result.message)
        m = result.report.get("measured", {})
        if result.outcome not in ("met", "missed") and m.get("rto_seconds") is not None:
            lines.append(f"\nmeasured as far as it went: RTO {m['rto_seconds']:.1f}s; {m.get('rpo_note') or ''}".rstrip("; "))
        for kind in ("md", "html"):
            if kind in result.files:
                lines.append(f"\nreport: {result.files[kind]}", style="bold")
        if result.run_id:
            lines.append(f"\ndrill id: {result.run_id}", style="dim")
        outcome = self.query_one("#drill-outcome", Static)
        outcome.update(lines)
        outcome.display = True
        self.log_line(f"{word}: {result.message}", style)
        # No toast: at 80x24 it would cover the report's paths, which are the point of the end.
        self.refresh_bindings()

    # -- notes, abort, leaving ---------------------------------------------------------------

    def _selected_phase(self) -> Phase:
        table = self.query_one("#drill-phases", DataTable)
        return PHASES[max(0, min(table.cursor_row, len(PHASES) - 1))]

    def action_note(self) -> None:
        if not self.started:
            self.notify("notes go into the drill's report: start a drill first", severity="warning")
            return
        phase = self._selected_phase()

        def saved(text: str | None) -> None:
            if text is None:
                return
            if text:
                self.runner.notes[phase.value] = text  # read by the report phase, on the drill's thread
            else:
                self.runner.notes.pop(phase.value, None)
            self._draw_phase(phase)
            if self.result is not None and self.result.run_id:
                # Written after the drill's end (as often as during it): the report is written again.
                self._amend(self.result)

        self.app.push_screen(PhaseNote(phase, self.runner.notes.get(phase.value, "")), saved)

    @work(thread=True, group="drill-amend")
    def _amend(self, result: DrillResult) -> None:
        from dbops.drill.journal import DrillJournalError

        try:
            amended = asyncio.run(self.runner.amend_notes(result))
        except (DrillJournalError, OSError) as exc:  # the note stays on screen; the report keeps what it had
            self.app.call_from_thread(self.notify, f"the report could not be written again: {exc}", severity="error")
            return
        except Exception as exc:  # a bug of ours: the crash file says where
            message = unexpected(exc, "drill note")
            self.app.call_from_thread(self.notify, f"the report could not be written again: {message}", severity="error")
            return
        self.app.call_from_thread(self._amended, amended)

    def _amended(self, amended: DrillResult) -> None:
        self.result = amended
        self.log_line(f"note saved: report written again ({amended.files['md']}; its new SHA-256 is in the audit log)", "green")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "drill-phases":
            self.action_note()

    def action_abort(self) -> None:
        if not self.running:
            return
        if self.abort_requested:
            self.notify("abort already requested: the drill stops at its next phase boundary", severity="warning")
            return
        assert self.chosen is not None
        s, ref = self.chosen

        def answered(yes: bool | None) -> None:
            if yes and self.running:
                self._request_abort()

        self.app.push_screen(AbortDrill(f"{s.id} on {ref.key}", self.injected), answered)

    def _request_abort(self) -> bool:
        loop = self._loop
        if loop is None:
            self.notify("the drill is still starting: press x again in a moment", severity="warning")
            return False
        try:
            # asyncio.Event is not thread-safe: set it on the drill's own loop.
            loop.call_soon_threadsafe(self.runner.abort)
        except RuntimeError:  # its loop closed meanwhile: the drill is over anyway
            return False
        self.abort_requested = True
        if not self.closing:
            self.log_line("abort requested: the drill stops at its next phase (a runbook's next confirmation is "
                          "declined); the fault is healed and the restore phase runs", "bold yellow")
            self._tick()
        return True

    def action_back(self) -> None:
        if self.running:
            self.notify("a drill is running: x aborts it (the fault is healed, the restore runs)", severity="warning")
            return
        self.app.pop_screen()

    def action_quit(self) -> None:
        if self.running:
            self.notify("a drill is running: x aborts it first (the fault is healed, the restore runs)", severity="warning")
            return
        self.app.exit()

    async def on_unmount(self) -> None:
        self.closing = True
        if not hasattr(self, "front"):
            return
        self.front.decline_pending()
        if self.running:
            # The console is going with a drill under way (ctrl+q): stop it and let its restore
            # run, so no fault is left behind. A declined confirmation ends the drill too.
            self._request_abort()
            await asyncio.to_thread(self.run_done.wait, 300)
