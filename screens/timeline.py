"""The incident's timeline (T), the operator's note (n), and a replay's time bar.

The timeline merges, on one clock, what the recording derived from the pollers' snapshots
(members down and up, roles, timelines, metrics crossing a severity), the alerts, the audit
log's records (runbook steps, actions) and the notes. Live it reads the console's recording; in
replay, the recording being played, and enter goes to the selected moment.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Input, Static
from textual.worker import Worker, WorkerState

from dbops.recording import Event, clock_text

_SOURCE_LABEL = {"state": "seen", "alert": "alert", "audit": "action", "note": "note", "recording": "dbops"}
_STYLE = {"ok": "green", "info": "cyan", "warning": "yellow", "error": "bold red", "note": "bold magenta"}
# Live, the timeline re-reads the recording this often (it is read in a worker thread).
REFRESH_SECONDS = 2.0


def _cell(value: str, style: str = "") -> Text:
    return Text(value, style=style, no_wrap=True, overflow="ellipsis")


class TimelineScreen(Screen[None]):
    """Every event of the recording, oldest first; a cluster's (and the fleet's) when opened
    from its pane, `a` switches to every cluster's."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("a", "all_clusters", "All clusters"),
        Binding("enter", "go", "Go to", show=False),
    ]
    DEFAULT_CSS = """
    TimelineScreen #timeline-title { height: 1; padding: 0 1; background: $panel; }
    TimelineScreen DataTable { height: 1fr; }
    """

    def __init__(self, cluster: str | None) -> None:
        super().__init__()
        self.cluster = cluster
        self.shown: list[Event] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="timeline-title")
        table: DataTable[Any] = DataTable(cursor_type="row", zebra_stripes=True, id="timeline")
        table.add_column("Time", key="time", width=8)
        table.add_column("What", key="source", width=6)
        table.add_column("Cluster", key="cluster", width=16)
        table.add_column("Event", key="text")
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self._title()
        self.load()
        if self.app.hub.playback is None:  # type: ignore[attr-defined]
            self.set_interval(REFRESH_SECONDS, self.load)

    def _title(self, count: int | None = None) -> None:
        where = self.cluster or "every cluster"
        text = Text.assemble(("Timeline ", "bold"), (where, "bold cyan"))
        if count is not None:
            text.append(f"  {count} events", style="dim")
        playback = self.app.hub.playback  # type: ignore[attr-defined]
        text.append("  enter goes to the event · n adds a note" if playback is not None else "  n adds a note", style="dim")
        self.query_one("#timeline-title", Static).update(text)

    def load(self) -> None:
        timeline = self.app.hub.timeline  # type: ignore[attr-defined]
        if timeline is None:
            self.query_one("#timeline-title", Static).update(Text(
                "Nothing is recorded ([recording] enabled = false, or the recording stopped): no timeline", style="bold yellow"))
            return
        if any(w.group == "timeline-load" and w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in self.workers):
            return  # never two reads at once
        cluster = self.cluster
        self.run_worker(lambda: timeline.events(None, cluster), group="timeline-load", thread=True, exit_on_error=False,
                        description="read the timeline")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "timeline-load":
            return
        if event.state == WorkerState.SUCCESS:
            self.show(event.worker.result)
        elif event.state == WorkerState.ERROR:
            from dbops.secrets import scrub_text

            self.notify(f"the timeline cannot be read: {scrub_text(str(event.worker.error))}", severity="error")

    def show(self, events: list[Event]) -> None:
        table = self.query_one("#timeline", DataTable)
        if [(e.ts, e.text) for e in events] == [(e.ts, e.text) for e in self.shown]:
            return
        follow = not self.shown or table.cursor_row >= len(self.shown) - 1
        self.shown = events
        playback = self.app.hub.playback  # type: ignore[attr-defined]
        now = playback.position if playback is not None else None
        table.clear()
        for e in events:
            later = now is not None and e.ts > now
            dim = " dim" if later else ""
            table.add_row(_cell(clock_text(e.ts), "dim" if later else ""),
                          _cell(_SOURCE_LABEL.get(e.source, e.source), _STYLE.get(e.severity, "") + dim),
                          _cell(e.cluster.split("/")[-1] if e.cluster else "fleet", "dim" if later else ""),
                          _cell(e.text, "dim" if later else ("bold" if e.source == "note" else "")))
        self._title(len(events))
        if events:
            if now is not None:
                # The replay's moment: the last event at or before it.
                at = max((i for i, e in enumerate(events) if e.ts <= now), default=0)
                table.move_cursor(row=at)
            elif follow:
                table.move_cursor(row=len(events) - 1)

    def action_all_clusters(self) -> None:
        self.cluster = None
        self.shown = []
        self._title()
        self.load()

    def action_go(self) -> None:
        playback = self.app.hub.playback  # type: ignore[attr-defined]
        if playback is None:
            self.notify("live: the console already shows now (in a replay, enter goes to the event's moment)")
            return
        table = self.query_one("#timeline", DataTable)
        if not self.shown:
            return
        event = self.shown[table.cursor_row]
        playback.seek(event.ts)
        self.notify(f"replay at {clock_text(event.ts)}: {event.text}")
        self.app.pop_screen()

    def on_data_table_row_selected(self, _: DataTable.RowSelected) -> None:
        self.action_go()

    def action_back(self) -> None:
        self.app.pop_screen()

    def health_changed(self, _: Any) -> None:
        if self.app.hub.playback is not None:  # type: ignore[attr-defined]
            self.shown = []  # redraw: what is past and what is to come moved
            self.load()


class NoteModal(ModalScreen[str | None]):
    """One line for the timeline: what the operator saw or decided, kept with its time."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]
    DEFAULT_CSS = """
    NoteModal { align: center middle; }
    NoteModal #note-box { width: 90%; max-width: 100; height: auto; border: round $accent; background: $surface; padding: 0 1; }
    """

    def __init__(self, where: str, at: str) -> None:
        super().__init__()
        self.where, self.at = where, at

    def compose(self) -> ComposeResult:
        with Vertical(id="note-box"):
            yield Static(Text.assemble(("Note ", "bold"), (f"at {self.at} ", "bold cyan"), (f"on {self.where}", "dim")))
            yield Input(placeholder="what you saw, what you decided (goes on the timeline)", id="note-input")
            yield Static(Text("enter keeps it; escape cancels", style="dim"))

    def on_mount(self) -> None:
        self.set_focus(self.query_one("#note-input", Input))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)


class GoToTime(ModalScreen[str | None]):
    """A replay's typed time."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]
    DEFAULT_CSS = """
    GoToTime { align: center middle; }
    GoToTime #goto-box { width: 70; height: auto; border: round $accent; background: $surface; padding: 0 1; }
    """

    def __init__(self, first: float, last: float) -> None:
        super().__init__()
        self.first, self.last = first, last

    def compose(self) -> ComposeResult:
        with Vertical(id="goto-box"):
            yield Static(Text.assemble(("Go to ", "bold"), (f"the recording spans {clock_text(self.first, True)} – "
                                                             f"{clock_text(self.last)}", "dim")))
            yield Input(placeholder="14:03:20, +90s, -5m, 2026-12-07T14:03", id="goto-input")

    def on_mount(self) -> None:
        self.set_focus(self.query_one("#goto-input", Input))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)


class TimeBar(Static):
    """A replay's position, speed and span on one line, with a mark where each event is."""

    DEFAULT_CSS = """
    TimeBar { dock: bottom; height: 1; background: $boost; }
    """

    def on_mount(self) -> None:
        self.set_interval(0.25, self.draw)
        self.draw()

    def draw(self) -> None:
        playback = self.app.hub.playback  # type: ignore[attr-defined]
        if playback is None:
            return
        self.update(time_bar(playback.position, playback.first, playback.last, playback.playing, playback.speed,
                             playback.marks(), max(20, self.size.width or 80)))


def time_bar(position: float, first: float, last: float, playing: bool, speed: float, marks: list[float], width: int) -> Text:
    """`▶ 2x 14:03:20 ━━━━━●──┼──── 14:02–14:10`: played, the position, events to come."""
    head = Text.assemble((" REPLAY ", "bold black on magenta"), (" ▶ " if playing else " ⏸ ", "bold"),
                         (f"{speed:g}x ", "bold"), (clock_text(position), "bold"), " ")
    tail = Text(f" {clock_text(first)}–{clock_text(last)} ", style="dim")
    cells = max(4, width - head.cell_len - tail.cell_len)
    span = max(last - first, 1e-9)
    at = min(cells - 1, int((position - first) / span * cells))
    bar = ["━" if i < at else "─" for i in range(cells)]
    for m in marks:
        i = min(cells - 1, int((m - first) / span * cells))
        if i != at:
            bar[i] = "┃" if i < at else "┼"
    bar[at] = "●"
    text = head.copy()
    text.append("".join(bar[:at]), style="magenta")
    text.append(bar[at], style="bold magenta")
    text.append("".join(bar[at + 1:]), style="dim")
    text.append_text(tail)
    return text
