"""The runbook wizard: pick a runbook, fill its parameters, see the plan with the pre-check
verdicts, run it step by step with confirmations, a live log and a summary.

Only presentation lives here: a RunbookSession (dbops.runbook.session) does the rest, as it does
for `dbops runbook ...`: parameters, live choices, scrubbed refusals, resources, locks, journal,
run, approvals, audit shipping. It runs in a thread with its own event loop: its steps wait on
servers and fsync the audit log, and the UI must not wait on either. It reaches the UI only
through TuiFrontEnd: modals for its prompts, and its events posted to this screen.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, OptionList, ProgressBar, RichLog, Static

from dbops.config import ClusterRef
from dbops.runbook.executor import ExitCode, Plan, RunResult
from dbops.runbook.model import Confirm, Context, Runbook, Step
from dbops.runbook.progress import ProgressLine
from dbops.runbook.session import MissingParam, RunbookSession, SessionError, unexpected

from .widgets import EnvBanner

ICONS = {"pending": "○", "running": "▶", "done": "✓", "failed": "✗", "skipped": "·", "declined": "⊘", "waiting": "◷"}
ICON_STYLE = {"pending": "dim", "running": "bold cyan", "done": "bold green", "failed": "bold red", "skipped": "dim", "declined": "bold yellow", "waiting": "bold yellow"}


class PickRunbook(ModalScreen[str | None]):
    """The runbooks for this cluster's engine."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(self, books: list[Runbook], problems: list[str]) -> None:
        super().__init__()
        self.books = books
        self.problems = problems

    def compose(self) -> ComposeResult:
        with Vertical(id="pick-dialog"):
            yield Label(Text("Runbooks (enter to open, escape to close)", style="bold"))
            if self.books:
                yield OptionList(*[f"{b.id}  {b.title}" for b in self.books], id="pick-list")
            else:
                yield Static("No runbook for this engine yet.")
            for p in self.problems:
                yield Static(Text(p, style="yellow"))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.books[event.option_index].id)


class ConfirmStep(ModalScreen[bool]):
    """A step's confirmation: what it does, its exact commands, yes/no or the cluster's name typed."""

    BINDINGS = [Binding("escape", "decline", "Decline")]

    def __init__(self, step: Step, commands: list[str], cluster: str, manual: bool = False, attest: str | None = None) -> None:
        super().__init__()
        self.step, self.commands, self.cluster, self.manual = step, commands, cluster, manual
        # An attestation: the operator types this member's name to say it is fenced.
        self.attest = attest

    @property
    def typed(self) -> bool:
        return self.attest is not None or self.step.confirm is Confirm.TYPE_CLUSTER

    @property
    def expected(self) -> str:
        return self.attest if self.attest is not None else self.cluster

    def compose(self) -> ComposeResult:
        s = self.step
        with Vertical(id="confirm-dialog"):
            if self.attest is not None:
                head = f"ATTEST: is {self.attest} fenced? dbops cannot check it; the audit log records your word"
            else:
                head = "MANUAL STEP: run these on the host, then confirm" if self.manual else f"Run step: {s.title}"
            yield Label(Text(head, style="bold red" if s.destructive else "bold"))
            yield Static(Text(s.description))  # plain text: "[fencing]" is a config section, not markup
            # Every command must be readable before it is confirmed: long plans scroll, never clip.
            with VerticalScroll(id="step-commands"):
                yield Static(Text("\n".join(f"$ {c}" for c in self.commands), style="bold cyan"))
            if s.destructive:
                yield Static(Text("Destructive.", style="bold red"))
            if self.typed:
                what = f"the member name {self.attest} to attest it is fenced" if self.attest is not None else f"the cluster name {self.cluster} to confirm"
                yield Label(Text(f"Type {what}", style="bold red"))
                yield Input(placeholder=self.expected, id="typed-name")
            hint = "type the name and press enter" if self.typed else "y confirms"
            yield Static(Text(f"{hint}; escape declines (the run stops; declining is audited)", style="dim"))
            with Horizontal(id="confirm-buttons"):
                yield Button("Done" if self.manual else "Run step", variant="error" if s.destructive else "primary", id="go", disabled=self.typed)
                yield Button("Decline", id="decline")

    def on_mount(self) -> None:
        (self.query_one("#typed-name", Input) if self.typed else self.query_one("#decline", Button)).focus()
        self.call_after_refresh(self._fit)

    def on_resize(self) -> None:
        self.query_one("#step-commands").styles.max_height = None  # the stylesheet's, until measured again
        self.call_after_refresh(self._fit)

    def _fit(self) -> None:
        """A long step at 80x24 (a drill's failover: long description, many commands) must not
        push the typed name, the hint or the buttons off the screen: the commands, which scroll,
        give up the lines the dialog lacks."""
        dialog, commands = self.query_one("#confirm-dialog"), self.query_one("#step-commands")
        over = dialog.outer_size.height - self.size.height
        if over > 0:
            commands.styles.max_height = max(3, commands.outer_size.height - over)

    def key_y(self) -> None:
        if not self.typed:
            self.dismiss(True)

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#go", Button).disabled = event.value.strip() != self.expected

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip() == self.expected:
            self.dismiss(True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "go")

    def action_decline(self) -> None:
        self.dismiss(False)


class ModalFrontEnd:
    """A runbook session's prompts in the console, for every screen that drives a session (the
    wizard, a drill). Called on the run's thread: a prompt shows ConfirmStep on the UI thread and
    waits for the answer. Where the events go is each screen's own (`event`)."""

    def __init__(self, screen: Screen[Any]) -> None:
        self.screen = screen
        self.pending: set[concurrent.futures.Future[bool]] = set()

    async def _ask(self, modal: ConfirmStep) -> bool:
        answer: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self.pending.add(answer)
        app = self.screen.app

        def answered(ok: bool | None) -> None:
            if not answer.done():
                answer.set_result(bool(ok))

        try:
            app.call_from_thread(app.push_screen, modal, answered)
            return await asyncio.wrap_future(answer)
        finally:
            self.pending.discard(answer)

    def decline_pending(self) -> None:
        """The console is closing with a confirmation open: that is a "no". Without this the
        run's thread would wait for an answer forever and the console could not exit."""
        for answer in list(self.pending):
            if not answer.done():
                answer.set_result(False)

    async def confirm(self, step: Step, commands: list[str], ctx: Context) -> bool:
        return await self._ask(ConfirmStep(step, commands, ctx.ref.name))

    async def manual_done(self, step: Step, commands: list[str], ctx: Context) -> bool:
        return await self._ask(ConfirmStep(step, commands, ctx.ref.name, manual=True))

    async def attest(self, step: Step, commands: list[str], ctx: Context, expected: str) -> bool:
        return await self._ask(ConfirmStep(step, commands, ctx.ref.name, attest=expected))

    def cannot_answer(self, step: Step, ref: ClusterRef) -> str | None:
        return None  # the operator is at the console: every confirmation is asked when it comes

    def event(self, event: str, **data: Any) -> None:
        raise NotImplementedError


class TuiFrontEnd(ModalFrontEnd):
    """The wizard's side of a runbook session: the prompts as modals, each event handed to the
    wizard on the UI thread."""

    screen: RunbookScreen

    def __init__(self, screen: RunbookScreen) -> None:
        super().__init__(screen)

    def event(self, event: str, **data: Any) -> None:
        if event == "progress":
            self.screen._from_thread(self.screen.on_step_progress, data["done"], data["total"], data["unit"])
        else:
            self.screen._from_thread(self.screen.on_runbook_event, event, data)


class RunbookScreen(Screen[None]):
    session: RunbookSession  # made on mount, once the app is there
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+l", "plan", "Plan"),
        Binding("ctrl+r", "run", "Run"),
    ]

    def __init__(self, book: Runbook, ref: ClusterRef) -> None:
        super().__init__()
        self.book = book
        self.ref = ref
        self.plan: Plan | None = None
        self.status: dict[str, str] = {s.id: "pending" for s in book.steps}
        self.running = False
        self.closing = False  # set when the screen goes: workers stop touching its widgets
        self.result: RunResult | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield EnvBanner(id="banner")
        with VerticalScroll(id="rb-params"):
            # The parameters scroll in a few lines at 80x24: say how many there are.
            n = len(self.book.params)
            more = f"  ({n} parameters: tab moves between them)" if n > 1 else ""
            yield Static(Text.assemble((f"{self.book.id}", "bold"), f": {self.book.title}", (more, "dim")))
            for p in self.book.params:
                label = f"{p.name}{' (required)' if p.required else ''}: {p.description}"
                yield Label(Text(label))
                yield Input(value="" if p.default is None else str(p.default), id=f"param-{p.name}")
        yield DataTable(id="rb-checks", cursor_type="none")
        yield DataTable(id="rb-steps", cursor_type="row")
        yield ProgressBar(id="rb-progress", total=len(self.book.steps), show_eta=True)
        # Within a long step (a restore, an upload): shown once the step reports progress.
        with Horizontal(id="rb-step-progress-row"):
            yield ProgressBar(id="rb-step-progress", show_eta=True)
            yield Static("", id="rb-step-progress-text")
        yield RichLog(id="rb-log", wrap=True, markup=False, max_lines=500)
        yield Footer()

    @property
    def run_done(self) -> threading.Event:
        if not hasattr(self, "_run_done"):
            self._run_done = threading.Event()
        return self._run_done

    @property
    def confirmer(self) -> TuiFrontEnd:
        if not hasattr(self, "_confirmer"):
            self._confirmer = TuiFrontEnd(self)
        return self._confirmer


    def _from_thread(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Run fn on the UI thread from a worker, unless the screen is closing (its widgets are
        going away; the run itself goes on to record its end)."""
        if not self.closing:
            self.app.call_from_thread(self._if_open, fn, *args, **kwargs)

    def _if_open(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        if not self.closing:
            fn(*args, **kwargs)

    async def on_unmount(self) -> None:
        self.closing = True
        self.confirmer.decline_pending()
        if self.running:
            # Let the run record the decline (audit abort, journal) before the console goes:
            # the executor writes both before it reports back.
            await asyncio.to_thread(self.run_done.wait, 10)

    def on_mount(self) -> None:
        # Before any worker starts: they all use this one session (the app's audit log, its state dir).
        self.session = RunbookSession(self.app.config, self.confirmer, state=self.app.state_dir, audit=self.app.audit,
                                      allow_writes=self.app.allow_writes)
        self.title = f"{self.ref.name} · runbook"
        self.query_one("#rb-step-progress-row").display = False
        from dbops.actions import writes_allowed

        self.query_one(EnvBanner).show([(self.ref.environment, self.ref.production, writes_allowed(self.ref, self.app.allow_writes))], self.app.hub.paused, self.app.operator)
        checks = self.query_one("#rb-checks", DataTable)
        checks.add_column("", key="icon")
        checks.add_column("Pre-check", key="title")
        checks.add_column("Verdict", key="detail")
        steps = self.query_one("#rb-steps", DataTable)
        steps.add_column("", key="icon")
        steps.add_column("Step", key="title")
        steps.add_column("Kind", key="kind")
        steps.add_column("Commands", key="commands")
        for s in self.book.steps:
            kind = s.kind.value + (" DESTRUCTIVE" if s.destructive else "")
            steps.add_row(self._icon(s.id), s.title, kind, "", key=s.id)
        self.log_line("Fill the parameters, then ctrl+l for the plan (read-only) and ctrl+r to run.")
        # Typing starts in the first parameter: a stray letter must not reach the app's bindings.
        inputs = self.query(Input)
        if inputs:
            inputs.first().focus()
        if any(p.choices is not None for p in self.book.params):
            self._offer_choices()

    @work(thread=True, group="choices")
    def _offer_choices(self) -> None:
        """Ask the cluster which values each parameter can take (e.g. its replicas) and show them."""
        try:
            found = asyncio.run(self.session.choices(self.book, self.ref))
        except SessionError as exc:
            self._from_thread(self.log_line, f"could not list the choices: {exc.message}", "yellow")
            return
        except Exception as exc:  # a bug of ours: the crash file has it, the wizard goes on
            self._from_thread(self.log_line, f"could not list the choices: {unexpected(exc, 'runbook choices')}", "yellow")
            return
        self._from_thread(self._show_choices, found)

    def _show_choices(self, found: dict[str, list[str]]) -> None:
        for name, values in found.items():
            field = self.query_one(f"#param-{name}", Input)
            field.placeholder = "one of: " + ", ".join(values) if values else "nothing available now"
            self.log_line(f"{name}: {', '.join(values) or 'nothing available now'}", "dim")

    def _icon(self, step_id: str) -> Text:
        st = self.status[step_id]
        return Text(ICONS[st], style=ICON_STYLE[st])

    def log_line(self, text: str, style: str = "") -> None:
        self.query_one("#rb-log", RichLog).write(Text(text, style=style))

    # -- parameters --------------------------------------------------------------------------

    def _params(self) -> dict[str, Any] | None:
        # An empty field is a parameter not given: its default, or "required" when it has none.
        given = {p.name: raw for p in self.book.params if (raw := self.query_one(f"#param-{p.name}", Input).value.strip())}
        try:
            return self.session.params(self.book, given)
        except MissingParam as exc:
            self.notify(f"{exc.param.name} is required: {exc.param.description}", severity="error")
        except SessionError as exc:
            self.notify(exc.message, severity="error")
        return None

    def _refused(self, message: str) -> None:
        """A refusal before anything ran, in the words `dbops runbook` uses (credentials scrubbed)."""
        self.log_line(message, "bold red")
        self.notify(message, severity="error", timeout=15)

    # -- plan --------------------------------------------------------------------------------

    def action_plan(self) -> None:
        if self.running:
            return
        params = self._params()
        if params is not None:
            self.log_line("planning: running the read-only pre-checks…", "dim")
            self._plan(params)

    @work(thread=True, exclusive=True, group="runbook")
    def _plan(self, params: dict[str, Any]) -> None:
        try:
            plan = asyncio.run(self.session.plan(self.book, self.ref, params))
        except SessionError as exc:
            self._from_thread(self._refused, exc.message)
            return
        except Exception as exc:  # a bug of ours: the crash file has it, the console goes on
            self._from_thread(self._refused, f"plan failed: {unexpected(exc, 'runbook plan')}")
            return
        self._from_thread(self._show_plan, plan)

    def _show_plan(self, plan: Plan) -> None:
        self.plan = plan
        checks = self.query_one("#rb-checks", DataTable)
        checks.clear()
        for c in plan.checks:
            icon = Text("✓", style="bold green") if c.verdict.ok else Text("✗", style="bold red")
            checks.add_row(icon, c.check.title, c.verdict.detail)
        steps = self.query_one("#rb-steps", DataTable)
        for p in plan.steps:
            # What runs first, not the comments around it ("# as the postgres OS user"): the
            # column is narrow at 80x24; the confirmation shows every line.
            runs = [c for c in p.commands if not c.lstrip().startswith("#")] or p.commands
            steps.update_cell(p.step.id, "commands", " ; ".join(runs), update_width=True)
        verdict = "pre-checks refused: the run would stop" if plan.refused else "all pre-checks pass"
        self.log_line(f"plan ready: {verdict}. Nothing was changed.", "bold red" if plan.refused else "bold green")

    # -- run ---------------------------------------------------------------------------------

    def action_run(self) -> None:
        if self.running:
            self.notify("a run is in progress", severity="warning")
            return
        if self.plan is None:
            self.notify("plan first (ctrl+l): see what will run before running it", severity="warning")
            return
        params = self._params()
        if params is not None:
            self.running = True
            self._run(params)

    @work(thread=True, exclusive=True, group="runbook")
    def _run(self, params: dict[str, Any]) -> None:
        self.run_done.clear()
        try:
            # Its outcome comes as an event (before the audit log is shipped): see on_runbook_event.
            asyncio.run(self.session.run(self.book, self.ref, params))
        except SessionError as exc:  # refused before it ran (live choices, a held lock ...)
            self._from_thread(self._finished, RunResult(exc.run_id or "", exc.code, exc.message))
        except Exception as exc:  # a bug of ours: the journal says where it stopped, the crash file why
            self._from_thread(self._finished, RunResult("", ExitCode.STEP_FAILED, f"the run stopped: {unexpected(exc, 'runbook run')}"))
        finally:
            self.run_done.set()

    def on_step_progress(self, done: float, total: float | None, unit: str) -> None:
        row = self.query_one("#rb-step-progress-row")
        if not row.display:
            row.display = True
            self._step_progress = ProgressLine(lambda line: self.query_one("#rb-step-progress-text", Static).update(line),
                                               every=0.5)
        self.query_one("#rb-step-progress", ProgressBar).update(total=total, progress=done)
        self._step_progress.report(done, total, unit)

    def on_runbook_event(self, event: str, data: dict[str, Any]) -> None:
        step: Step | None = data.get("step")
        if event == "outcome":
            self._finished(data["result"])
            return
        if event == "audit-shipped":
            # Shipped ([audit.ship]) at the end of every run; a failure never changes its outcome.
            self.log_line(f"audit: {data['message']}", "dim" if data["ok"] else "bold red")
            if not data["ok"]:
                self.notify(data["message"], severity="error", timeout=20)
            return
        if event == "log":
            self.log_line(f"    {data['line']}")
            return
        if event in ("note", "warning"):
            self.log_line(f"{event}: {data['line']}", "yellow")
            return
        if event == "started":
            self.query_one("#rb-step-progress-row").display = False  # until the new step reports
        steps = self.query_one("#rb-steps", DataTable)
        if step is not None and event in ("started", "done", "failed", "skipped", "aborted"):
            self.status[step.id] = {"started": "running", "aborted": "declined"}.get(event, event)
            steps.update_cell(step.id, "icon", self._icon(step.id))
            if event == "started":
                steps.move_cursor(row=steps.get_row_index(step.id))
        if event == "started" and step is not None:
            self.log_line(f"▶ {step.title}", "bold")
            for c in data.get("commands", []):
                self.log_line(f"    $ {c}", "cyan")
        elif event == "done" and step is not None:
            self.log_line(f"✓ {step.title} ({data['seconds']:.1f}s)", "green")
            self.query_one("#rb-progress", ProgressBar).advance(1)
        elif event == "skipped" and step is not None:
            self.log_line(f"· {step.title}: {data.get('reason') or 'skipped'}", "dim")
            self.query_one("#rb-progress", ProgressBar).advance(1)
        elif event == "verified":
            v = data["verdict"]
            self.log_line(f"    verify: {v.detail}", "green" if v.ok else "red")
        elif event == "failed" and step is not None:
            self.log_line(f"✗ {step.title}: {data['error']}", "bold red")
        elif event == "approval-waiting" and step is not None:
            # The two-person rule: the run waits here until a second operator approves this plan.
            self.status[step.id] = "waiting"
            steps.update_cell(step.id, "icon", self._icon(step.id))
            self.log_line(f"◷ waiting for a second operator's approval before '{step.title}'", "bold yellow")
            self.log_line(f"    run {data['run_id']}, plan {data['plan_hash'][:12]}, waits up to {data['ttl']}s", "yellow")
            self.log_line(f"    who may approve: {data['who']}", "yellow")
            self.notify(f"run {data['run_id']} waits for a second operator's approval", severity="warning", timeout=15)
        elif event == "approved" and step is not None:
            self.status[step.id] = "pending"
            steps.update_cell(step.id, "icon", self._icon(step.id))
            self.log_line(f"✓ {data['message']} (plan {data['plan_hash'][:12]})", "bold green")
        elif event == "approval-refused" and step is not None:
            self.status[step.id] = "declined"
            steps.update_cell(step.id, "icon", self._icon(step.id))
            self.log_line(f"✗ not approved: {data['reason']}", "bold red")
        elif event == "check":
            pass  # shown in the pre-check table by the plan

    def _finished(self, result: RunResult) -> None:
        self.running = False
        self.result = result
        style = "bold green" if result.code is ExitCode.OK else "bold red"
        self.log_line(f"\n{result.message}", style)
        if result.durations:
            total = sum(result.durations.values())
            self.log_line("summary: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.durations.items()) + f"; total {total:.1f}s")
        if result.run_id:  # none when the run was refused before it had one
            self.log_line(f"run id {result.run_id} (resume with `dbops runbook resume {result.run_id}`)", "dim")
        self.notify(result.message.splitlines()[0], severity="information" if result.code is ExitCode.OK else "error", timeout=10)

    def action_back(self) -> None:
        if self.running:
            self.notify("a run is in progress: wait for it to finish (or for a confirmation to decline)", severity="warning")
            return
        self.app.pop_screen()
