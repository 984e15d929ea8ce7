"""Confirmation modals. They show exactly what will run and return True (go) or False (declined)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from dbops.actions import BackendAction
from dbops.engines.postgres.data import Session
from dbops.model import human_seconds

from .render import one_line


class ConfirmBackendModal(ModalScreen[bool]):
    """Cancel or terminate one backend: the query, its age, what it blocks, the exact SQL.

    On a production environment, terminate needs the pid typed: a reflexive `y` must not end a
    client's connection.
    """

    BINDINGS = [Binding("escape", "decline", "Decline"), Binding("n", "decline", "No", show=False)]
    # The dialog's frame (#confirm-dialog, #confirm-buttons) is in app.tcss: the runbook wizard's
    # step confirmation shares it.
    DEFAULT_CSS = """
    ConfirmBackendModal { align: center middle; }
    ConfirmBackendModal #confirm-query { background: $panel; padding: 0 1; max-height: 6; }
    """

    def __init__(self, act: BackendAction, session: Session) -> None:
        super().__init__()
        self.act = act
        self.session = session

    def compose(self) -> ComposeResult:
        a, s = self.act, self.session
        verb = "Terminate" if a.terminate else "Cancel"
        with Vertical(id="confirm-dialog"):
            yield Label(Text(f"{verb} backend {a.pid} on {a.member} ({a.ref.environment}/{a.ref.name})", style="bold"))
            details = Text()
            details.append("user ", style="dim")
            details.append(f"{s.usename or '-'}@{s.database or '-'}  ")
            details.append("state ", style="dim")
            details.append(f"{s.state or '-'}  ")
            details.append("query age ", style="dim")
            details.append(human_seconds(s.query_age_seconds))
            if s.xact_age_seconds is not None:
                details.append("  transaction age ", style="dim")
                details.append(human_seconds(s.xact_age_seconds))
            yield Static(details)
            yield Static(Text(one_line(s.query, 400)), id="confirm-query")
            if a.blocks:
                yield Static(Text(f"It blocks {len(a.blocks)} other session{'s' if len(a.blocks) != 1 else ''}: pid {', '.join(map(str, a.blocks))}", style="yellow"))
            else:
                yield Static(Text("It blocks no other session.", style="dim"))
            yield Static(Text.assemble(("Will run: ", "dim"), (a.sql, "bold cyan")))
            if a.terminate:
                yield Static(Text("Terminate ends the client's connection; its open transaction rolls back.", style="yellow"))
            if a.needs_typed_pid:
                yield Label(Text(f"Production: type the pid {a.pid} to confirm", style="bold red"))
                yield Input(placeholder=str(a.pid), id="typed-pid")
            keys = "type the pid and press enter; escape declines" if a.needs_typed_pid else "y confirms; n or escape declines"
            yield Static(Text(f"{keys} (declining sends nothing and is audited)", style="dim"))
            with Horizontal(id="confirm-buttons"):
                yield Button(f"{verb} {a.pid}", variant="error" if a.terminate else "warning", id="go", disabled=a.needs_typed_pid)
                yield Button("Decline", id="decline")

    def on_mount(self) -> None:
        if self.act.needs_typed_pid:
            self.query_one("#typed-pid", Input).focus()
        else:
            self.query_one("#decline", Button).focus()

    def key_y(self) -> None:
        if not self.act.needs_typed_pid:
            self.dismiss(True)

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#go", Button).disabled = event.value.strip() != str(self.act.pid)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip() == str(self.act.pid):
            self.dismiss(True)
        else:
            self.notify(f"type {self.act.pid} exactly to confirm", severity="warning")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "go")

    def action_decline(self) -> None:
        self.dismiss(False)
