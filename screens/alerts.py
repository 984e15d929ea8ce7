"""Alertmanager's alerts: the overview's Alerts cell, a pane's alert lines, and the alerts view
(every firing alert, with the cluster and member it is about), where an alert is silenced and a
silence the console made is expired, each confirmed and audited (dbops.silences)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, Static

from dbops.actions import ReadOnly
from dbops.hub import AlertsState
from dbops.model import human_seconds
from dbops.platform.alertmanager import Alert
from dbops.silences import SilenceAlert, check_allowed, decline, decline_expire, expire, made_by_console, parse_duration, silence

from .render import one_line

SEVERITY_STYLES = {"critical": "bold white on red", "error": "bold red", "warning": "bold yellow"}


def alert_style(alert: Alert) -> str:
    if alert.state != "active":
        return "dim"
    return SEVERITY_STYLES.get(alert.severity.lower(), "yellow")


def alerts_cell(state: AlertsState) -> Text:
    """The overview's Alerts cell of one cluster: how many fire, in the worst one's colour;
    silenced ones counted apart (they still say something is wrong)."""
    if not state.configured:
        return Text("")
    active = [a for a in state.alerts if a.state == "active"]
    quiet = len(state.alerts) - len(active)
    if not state.alerts:
        return Text("?" if state.fetched_at is None else "-", style="dim")
    out = Text()
    if active:
        worst = min(active, key=lambda a: list(SEVERITY_STYLES).index(a.severity.lower()) if a.severity.lower() in SEVERITY_STYLES else 9)
        out.append(f"{len(active)} {worst.severity or 'firing'}", style=alert_style(worst))
    if quiet:
        out.append((" " if active else "") + f"{quiet} silenced", style="dim")
    return out


def alerts_lines(state: AlertsState, limit: int, now: float) -> Text:
    """A pane's alert lines: one per alert, worst first (Alertmanager's order), up to `limit`;
    empty when none fire. A failed read says so, with the age of the alerts still shown."""
    if not state.configured or (not state.alerts and state.error is None):
        return Text("")
    out = Text(no_wrap=True, overflow="ellipsis")
    if state.error is not None:
        age = f", alerts shown are {human_seconds(now - state.fetched_at)} old" if state.fetched_at else ""
        out.append(f"ALERTMANAGER {state.error}{age}", style="bold red")
    for a in state.alerts[:limit]:
        if out:
            out.append("\n")
        out.append(f"ALERT {a.name}", style=alert_style(a))
        out.append(f" {a.member or '-'}", style="bold")
        out.append(f" {a.severity or '-'} {a.state} since {human_seconds(max(0.0, now - a.starts_at))}")
        if a.summary:
            out.append(f"  {one_line(a.summary, 120)}", style="dim")
    if len(state.alerts) > limit:
        out.append(f"  (+{len(state.alerts) - limit} more: :alerts on the overview)", style="dim")
    return out


class SilenceModal(ModalScreen["SilenceAlert | None"]):
    """Silence one alert: for how long and why; shows the exact request before it is sent."""

    BINDINGS = [Binding("escape", "decline", "Decline")]
    DEFAULT_CSS = """
    SilenceModal { align: center middle; }
    SilenceModal #silence-plan { background: $panel; padding: 0 1; }
    """

    def __init__(self, alert: Alert, author: str, url: str) -> None:
        super().__init__()
        self.alert = alert
        self.author = author
        self.url = url

    def compose(self) -> ComposeResult:
        a = self.alert
        with Vertical(id="confirm-dialog"):
            yield Label(Text(f"Silence {a.name} on {a.cluster or 'no configured cluster'}" + (f"/{a.member}" if a.member else ""),
                             style="bold"))
            yield Static(Text("A silence hides this alert from everyone on call until it ends.", style="yellow"))
            yield Label("Duration (30m, 2h, 1d; at most 7d)")
            yield Input(value="2h", id="silence-duration")
            yield Label("Comment (why; who to ask)")
            yield Input(placeholder="e.g. pg2 rebuilt from backup, INC-1234", id="silence-comment")
            yield Static(id="silence-plan")
            yield Static(Text("enter in the comment sends it; escape declines (declining sends nothing and is audited)", style="dim"))
            with Horizontal(id="confirm-buttons"):
                yield Button("Silence", variant="warning", id="go")
                yield Button("Decline", id="decline")

    def on_mount(self) -> None:
        self.query_one("#silence-comment", Input).focus()
        self._show_plan()

    def _act(self) -> SilenceAlert:
        seconds = parse_duration(self.query_one("#silence-duration", Input).value)
        comment = self.query_one("#silence-comment", Input).value.strip()
        if not comment:
            raise ValueError("say why in the comment: Alertmanager keeps it with the silence")
        return SilenceAlert(self.alert, seconds, comment, self.author)

    def _show_plan(self) -> None:
        plan = self.query_one("#silence-plan", Static)
        try:
            act = self._act()
        except ValueError as exc:
            plan.update(Text(str(exc), style="yellow"))
            return
        from dbops.config import AlertmanagerOptions

        plan.update(Text("\n".join(act.plan(AlertmanagerOptions(url=self.url))), style="cyan"))

    def on_input_changed(self, event: Input.Changed) -> None:
        self._show_plan()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._go()

    def _go(self) -> None:
        try:
            act = self._act()
        except ValueError as exc:
            self.notify(str(exc), severity="warning")
            return
        self.dismiss(act)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "go":
            self._go()
        else:
            self.dismiss(None)

    def action_decline(self) -> None:
        self.dismiss(None)


class ConfirmExpireModal(ModalScreen[bool]):
    """Expire the console's silence(s) on an alert: the alert is shown to everyone again."""

    BINDINGS = [Binding("escape", "decline", "Decline"), Binding("n", "decline", "No", show=False), Binding("y", "go", "Yes")]
    DEFAULT_CSS = "ConfirmExpireModal { align: center middle; }"

    def __init__(self, alert: Alert, plan: list[str]) -> None:
        super().__init__()
        self.alert = alert
        self.plan = plan

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-dialog"):
            yield Label(Text(f"Expire the silence on {self.alert.name} ({self.alert.cluster or 'no cluster'})", style="bold"))
            yield Static(Text("\n".join(self.plan), style="cyan"))
            yield Static(Text("y expires it (the alert notifies again); n or escape declines", style="dim"))
            with Horizontal(id="confirm-buttons"):
                yield Button("Expire", variant="warning", id="go")
                yield Button("Decline", id="decline")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "go")

    def action_go(self) -> None:
        self.dismiss(True)

    def action_decline(self) -> None:
        self.dismiss(False)


class AlertsScreen(Screen[None]):
    """Every alert Alertmanager holds, worst first; `s` silences the one under the cursor, `e`
    expires the silence the console made on it."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("s", "silence", "Silence"),
        Binding("e", "expire", "Expire silence"),
        Binding("enter", "open", "Open cluster"),
        Binding("f5", "reload", "Re-read"),
    ]
    DEFAULT_CSS = """
    AlertsScreen #alerts-status { height: 1; background: $panel; }
    """

    def __init__(self, key: str | None = None) -> None:
        super().__init__()
        self.key = key  # one cluster's alerts, or (None) the fleet's
        self._alerts: dict[str, Alert] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="alerts-status")
        yield DataTable(id="alerts", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "Alerts" + (f" · {self.key}" if self.key else "")
        table = self.query_one("#alerts", DataTable)
        for label, key in (("State", "state"), ("Severity", "severity"), ("Alert", "alert"), ("Cluster", "cluster"),
                           ("Member", "member"), ("Since", "since"), ("Summary", "summary")):
            table.add_column(label, key=key)
        self.redraw()
        self.set_interval(1.0, self.redraw)
        table.focus()

    @property
    def hub(self) -> Any:
        return self.app.hub  # type: ignore[attr-defined]

    def health_changed(self, changed: dict[str, Any]) -> None:
        self.redraw()

    def redraw(self) -> None:
        state: AlertsState = self.hub.alerts(self.key)
        now = self.app.clock()  # type: ignore[attr-defined]
        status = Text()
        if not state.configured:
            status.append("no [alertmanager] is configured: add its url to the config", style="yellow")
        else:
            active = sum(1 for a in state.alerts if a.state == "active")
            status.append(f"{active} firing, {len(state.alerts) - active} silenced or inhibited", style="bold")
            if state.fetched_at is not None:
                status.append(f"  read {human_seconds(max(0.0, now - state.fetched_at))} ago", style="dim")
            if state.error:
                status.append(f"  {state.error}", style="bold red")
        self.query_one("#alerts-status", Static).update(status)
        table = self.query_one("#alerts", DataTable)
        wanted = {a.fingerprint: a for a in state.alerts}
        if list(wanted) != list(self._alerts):
            selected = self._selected()
            table.clear()
            for a in state.alerts:
                table.add_row(*self._cells(a, now), key=a.fingerprint)
            if selected is not None and selected.fingerprint in wanted:
                table.move_cursor(row=list(wanted).index(selected.fingerprint))
        else:
            for a in state.alerts:
                for col, cell in zip(("state", "severity", "alert", "cluster", "member", "since", "summary"), self._cells(a, now)):
                    table.update_cell(a.fingerprint, col, cell)
        self._alerts = wanted

    def _cells(self, a: Alert, now: float) -> tuple[Text, ...]:
        style = alert_style(a)
        return (Text(a.state, style=style), Text(a.severity or "-", style=style), Text(a.name, style="bold"),
                Text(a.cluster or "(no cluster)", style="" if a.cluster else "dim"), Text(a.member or "-"),
                Text(human_seconds(max(0.0, now - a.starts_at))), Text(one_line(a.summary, 80), style="dim"))

    def _selected(self) -> Alert | None:
        table = self.query_one("#alerts", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self._alerts.get(str(key))

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_reload(self) -> None:
        self.hub.refresh_alerts()

    def action_open(self) -> None:
        a = self._selected()
        if a is not None and a.cluster is not None:
            self.app.open_cluster(a.cluster)  # type: ignore[attr-defined]

    def action_silence(self) -> None:
        a = self._selected()
        options = self.app.config.alertmanager  # type: ignore[attr-defined]
        if a is None or options is None:
            self.notify("no alert to silence" if options is not None else "no [alertmanager] is configured", severity="warning")
            return
        try:
            check_allowed(self.app.config, a.cluster, self.app.allow_writes)  # type: ignore[attr-defined]
        except ReadOnly as exc:  # said before the operator types a comment, not after
            self.notify(str(exc), severity="error", timeout=10)
            return
        if a.state == "suppressed" and a.silenced_by:
            self.notify(f"{a.name} is already silenced ({', '.join(a.silenced_by)}); e expires a silence dbops made", severity="warning")
            return
        self.app.push_screen(SilenceModal(a, self.app.operator, options.url),  # type: ignore[attr-defined]
                             callback=lambda act, a=a: self._silence_confirmed(a, act))

    def _silence_confirmed(self, alert: Alert, act: SilenceAlert | None) -> None:
        self._run_silence(alert, act)

    @work(thread=True, exclusive=False, group="silences")
    def _run_silence(self, alert: Alert, act: SilenceAlert | None) -> None:
        # A thread: the audit fsync and the HTTP request must not stall the UI.
        app: Any = self.app
        try:
            if act is None:
                decline(app.audit, app.config, SilenceAlert(alert, 0.0, "", app.operator))
                app.call_from_thread(app.notify, "declined: no silence was made (recorded in the audit log)")
                return
            outcome = silence(app.audit, app.config, act, app.allow_writes)
        except ReadOnly as exc:
            app.call_from_thread(app.notify, str(exc), severity="error", timeout=10)
            return
        except Exception as exc:  # an audit write that failed and the like: shown, never swallowed
            app.call_from_thread(app.notify, f"silence not made: {exc}", severity="error", timeout=15)
            return
        app.hub.refresh_alerts()  # the app captured above: this screen may have been left meanwhile
        app.call_from_thread(app.notify, outcome.message, severity="information" if outcome.ok else "error", timeout=10)

    def action_expire(self) -> None:
        a = self._selected()
        if a is None or not a.silenced_by:
            self.notify("the alert under the cursor is not silenced", severity="warning")
            return
        try:
            check_allowed(self.app.config, a.cluster, self.app.allow_writes)  # type: ignore[attr-defined]
        except ReadOnly as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return
        self._run_expire(a)

    @work(thread=True, exclusive=False, group="silences")
    def _run_expire(self, alert: Alert) -> None:
        import asyncio

        from dbops.platform.alertmanager import list_silences
        from dbops.platform.monitoring_http import MonitoringError

        app: Any = self.app
        try:
            found = {s.id: s for s in asyncio.run(list_silences(app.config.alertmanager))}
        except MonitoringError as exc:
            app.call_from_thread(app.notify, f"could not read the silences: {exc.message}", severity="error", timeout=10)
            return
        except Exception as exc:  # shown, never a crash of the console
            app.call_from_thread(app.notify, f"could not read the silences: {type(exc).__name__}: {exc}", severity="error", timeout=10)
            return
        ours = [found[i] for i in alert.silenced_by if i in found and made_by_console(found[i])]
        if not ours:
            others = ", ".join(f"{found[i].id} by {found[i].created_by}" for i in alert.silenced_by if i in found)
            app.call_from_thread(app.notify, f"no silence on {alert.name} was made by dbops ({others or 'none found'}): "
                                             "expire it in Alertmanager if it must end", severity="warning", timeout=10)
            return
        from dbops.platform.monitoring_http import shown_url

        plan = [f"DELETE {shown_url(app.config.alertmanager.url)}/api/v2/silence/{s.id}  ({s.comment})" for s in ours]
        app.call_from_thread(app.push_screen, ConfirmExpireModal(alert, plan),
                             lambda ok: self._expire_confirmed(alert, ours, bool(ok)))

    def _expire_confirmed(self, alert: Alert, ours: list[Any], confirmed: bool) -> None:
        if not confirmed:
            self._audit_declined_expire(alert, ours)
            return
        self._run_expire_confirmed(alert, ours)

    @work(thread=True, exclusive=False, group="silences")
    def _audit_declined_expire(self, alert: Alert, ours: list[Any]) -> None:
        app: Any = self.app
        try:
            for s in ours:
                decline_expire(app.audit, app.config, s, alert.cluster)
        except Exception as exc:  # an audit write that failed: shown, never swallowed
            app.call_from_thread(app.notify, f"declined, but the audit record could not be written: {exc}", severity="error")
            return
        app.call_from_thread(app.notify, "declined: no silence was expired (recorded in the audit log)")

    @work(thread=True, exclusive=False, group="silences")
    def _run_expire_confirmed(self, alert: Alert, ours: list[Any]) -> None:
        app: Any = self.app
        for s in ours:
            try:
                outcome = expire(app.audit, app.config, s, alert.cluster, app.allow_writes)
            except ReadOnly as exc:
                app.call_from_thread(app.notify, str(exc), severity="error", timeout=10)
                return
            except Exception as exc:  # an audit write that failed and the like: shown, never swallowed
                app.call_from_thread(app.notify, f"silence not expired: {exc}", severity="error", timeout=15)
                return
            app.call_from_thread(app.notify, outcome.message, severity="information" if outcome.ok else "error", timeout=10)
        app.hub.refresh_alerts()
