"""The audit log, newest first, under its verify verdict; in a replay, the recording's audit
records (as the log had them while it recorded), each one's hash recomputed.

The file (or the recording) is read and verified in a thread worker; the UI thread only fills
the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual.worker import Worker, WorkerState

from dbops.audit import VerifyResult, verify_and_read
from dbops.hub import Timeline
from dbops.recording import RecordedAudit, recorded_audit

_OUTCOME_STYLE = {"ok": "green", "failed": "red", "declined": "yellow", "refused": "yellow"}
_PHASE_STYLE = {"intent": "cyan", "result": "", "abort": "yellow"}
_WORKER_GROUP = "audit-load"


@dataclass(frozen=True)
class AuditView:
    """What the worker read: the verdict (None when there is no log yet) and the records."""

    path: Path
    result: VerifyResult | None
    records: list[dict[str, Any]] = field(default_factory=list)
    recorded: RecordedAudit | None = None  # a replay's: what the recording holds


def load_audit(path: Path) -> AuditView:
    """Blocking read + verify; runs in a worker thread. OSError propagates to the worker."""
    if not path.exists():
        return AuditView(path, None, [])
    result, records = verify_and_read(path)
    return AuditView(path, result, records)


def _load_recorded(path: Path, recording: Timeline) -> AuditView:
    """A replay's audit records, from the recording's timeline; runs in a worker thread."""
    recorded = recorded_audit(recording.events())
    return AuditView(path, None, recorded.records, recorded)


def _cell(value: Any, style: str = "") -> Text:
    # Text, not str: a DataTable parses str cells as markup, and these values are not ours.
    return Text("" if value is None else str(value), style=style, no_wrap=True, overflow="ellipsis")


class AuditScreen(Screen):
    """Audit records newest first; `r` reloads, `escape`/`q` go back."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("q", "back", "Back", show=False),
        Binding("r", "reload", "Reload"),
    ]

    DEFAULT_CSS = """
    AuditScreen #audit-verdict {
        height: auto;
        padding: 0 1;
    }
    AuditScreen #audit-table {
        height: 1fr;
    }
    """

    COLUMNS = ("seq", "ts (UTC)", "phase", "operator", "target", "action", "outcome", "error")

    def __init__(self, log_path: Path, recording: Timeline | None = None, *, name: str | None = None,
                 id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self.log_path = Path(log_path)
        # A replay's timeline: its audit records are shown, never this host's log of today.
        self.recording = recording
        self.verdict = ""  # the text of the verdict line, for tests and screen readers

    def compose(self) -> ComposeResult:
        what = "the recording's audit records" if self.recording is not None else self.log_path
        yield Static(Text(f"reading {what} ..."), id="audit-verdict", markup=False)
        yield DataTable(id="audit-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#audit-table", DataTable).add_columns(*self.COLUMNS)
        self.action_reload()

    # -- actions ---------------------------------------------------------------------------

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_reload(self) -> None:
        recording = self.recording
        self.run_worker(
            (lambda: load_audit(self.log_path)) if recording is None else (lambda: _load_recorded(self.log_path, recording)),
            name="audit-load",
            group=_WORKER_GROUP,
            description=f"read and verify {'the recording' if recording is not None else self.log_path}",
            exclusive=True,
            thread=True,
            exit_on_error=False,  # a read error is shown in the verdict line, not fatal
        )

    # -- worker results --------------------------------------------------------------------

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != _WORKER_GROUP:
            return
        if event.state == WorkerState.SUCCESS:
            view = event.worker.result
            assert isinstance(view, AuditView)
            self._show(view)
        elif event.state == WorkerState.ERROR:
            error = event.worker.error
            why = getattr(error, "strerror", None) or str(error) or type(error).__name__
            what = "the recording's audit records" if self.recording is not None else f"audit log {self.log_path}"
            self._set_verdict(f"cannot read {what}: {why}", "bold red")

    def _set_verdict(self, text: str, style: str) -> None:
        self.verdict = text
        self.query_one("#audit-verdict", Static).update(Text(text, style=style))

    def _show(self, view: AuditView) -> None:
        if view.recorded is not None:
            self._set_verdict(view.recorded.verdict(), "bold green" if view.recorded.ok else "bold red")
        elif view.result is None:
            self._set_verdict(f"no audit log yet at {view.path}", "dim")
        elif view.result.ok:
            self._set_verdict(view.result.summary(), "bold green")
        else:
            self._set_verdict(view.result.summary(), "bold red")
        table = self.query_one("#audit-table", DataTable)
        table.clear()
        for rec in reversed(view.records):
            op = rec.get("operator")
            login = op.get("login") if isinstance(op, dict) else None
            if isinstance(op, dict) and op.get("sudo_user"):
                login = f"{login} (sudo {op['sudo_user']})"
            target = "/".join(str(rec[k]) for k in ("environment", "cluster", "member") if rec.get(k))
            outcome = rec.get("outcome")
            phase = rec.get("phase")
            table.add_row(
                _cell(rec.get("seq")),
                _cell(rec.get("ts")),
                _cell(phase, _PHASE_STYLE.get(str(phase), "")),
                _cell(login),
                _cell(target),
                _cell(rec.get("action")),
                _cell(outcome, _OUTCOME_STYLE.get(str(outcome), "")),
                _cell(rec.get("error") or rec.get("reason"), "red" if rec.get("error") else ""),
            )
