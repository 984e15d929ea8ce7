"""The PostgreSQL pane's Tables tab: table and index health of the member shown, read on demand.

Nothing here is polled. The tab reads (dbops.engines.postgres.tables) when it is opened, when the
member shown changes while it is open, and on `r` inside it; in a worker thread, so the console
never waits on the server. Until the first read lands it says "reading…"; a failed read says why in
one line and keeps the previous read on screen, saying how old it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC
from typing import Any, ClassVar

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Static

from dbops.config import ClusterRef
from dbops.engines.postgres.assess import human_count
from dbops.engines.postgres.tables import TableHealth, UnusedIndex, read_table_health
from dbops.model import human_bytes, human_seconds

from .pane import ClusterPane

Reader = Callable[..., Coroutine[Any, Any, TableHealth]]


NA = Text("n/a", style="dim")  # no estimate: the relation has no statistics


def _short(name: str, width: int = 16) -> str:
    """A secondary name column's cell: cut, so the main name keeps the room."""
    return name if len(name) <= width else name[: width - 1] + "…"


def _kept(u: UnusedIndex) -> str:
    """Why an unused index stays, in a word or two (the note above the table says the rule)."""
    if u.primary:
        return "primary key"
    if u.constraint:
        return "constraint"
    return "unique" if u.unique else "replica identity"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _ago(age: float | None, since_read: float) -> str:
    return "never" if age is None else human_seconds(age + since_read)


def _cells(value: Any) -> int:
    return value.cell_len if isinstance(value, Text) else Text(str(value)).cell_len


def _table(columns: tuple[tuple[str, str], ...], rows: list[tuple[Any, ...]], width: int) -> Table:
    """A borderless table `width` columns wide at most, whose first column (a name) is the one
    that gives way (cut with an ellipsis): every other column keeps the width of its widest cell."""
    t = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold", pad_edge=False)
    widths = [max([_cells(label), *(_cells(r[i]) for r in rows)]) for i, (label, _) in enumerate(columns)]
    room = width - sum(widths[1:]) - 2 * (len(columns) - 1)
    for i, (label, justify) in enumerate(columns):
        if i == 0:
            t.add_column(label, no_wrap=True, overflow="ellipsis", max_width=max(12, min(widths[0], room)))
        else:
            t.add_column(label, justify=justify, no_wrap=True, min_width=widths[i])  # type: ignore[arg-type]
    for r in rows:
        t.add_row(*r)
    return t


def _section(title: str, note: str | None, body: RenderableType | None, error: str | None, empty: str) -> list[RenderableType]:
    out: list[RenderableType] = [Text(title, style="bold underline")]
    if note:
        out.append(Text(note, style="dim"))
    if error is not None:
        out.append(Text(error, style="bold red"))
    elif body is None:
        out.append(Text(empty, style="green"))
    else:
        out.append(body)
    out.append(Text(""))
    return out


def stats_since(h: TableHealth) -> str:
    if h.stats_reset is None:
        return "the statistics were never reset (they count since they began; a crash or an immediate shutdown discards them)"
    return f"the statistics were reset {h.stats_reset.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def render_health(h: TableHealth, since_read: float, width: int = 80) -> RenderableType:
    """Every section of one read, `width` columns wide; `since_read`: seconds since it was read
    (the ages shown move on with it)."""
    standby = " On a standby these are its own counters, not the primary's." if h.in_recovery else ""
    out: list[RenderableType] = []

    body: Table | None = None
    if h.vacuum:
        body = _table((("Table", "left"), ("Live", "right"), ("Dead", "right"), ("Dead%", "right"), ("Vacuumed", "right"),
                       ("Analyzed", "right"), ("", "left")),
                      [(v.name, human_count(v.live), human_count(v.dead), _pct(v.dead_pct), _ago(v.vacuumed_age, since_read),
                        _ago(v.analyzed_age, since_read), Text("autovacuum off", style="yellow") if not v.autovacuum_enabled else "")
                       for v in h.vacuum], width)
    note = f"Top {h.limit} by dead tuples; ages of the last VACUUM and ANALYZE, manual or automatic.{standby}"
    if h.autovacuum is False:
        note += " Autovacuum is OFF for the whole server."
    out += _section("Dead tuples and vacuum", note, body, h.error_of("vacuum"), "no user tables")

    body = None
    if h.bloat:
        body = _table((("Table", "left"), ("Size", "right"), ("Bloat", "right"), ("%", "right")),
                      [(b.name, human_bytes(b.size_bytes), human_bytes(b.bloat_bytes) if b.bloat_bytes is not None else NA,
                        _pct(b.bloat_pct)) for b in h.bloat], width)
    note = "Estimated from the statistics (pg_class pages, pg_stats widths) as of the last ANALYZE; no table is read."
    if h.not_estimable:
        note += f" {h.not_estimable} table(s) have no statistics (n/a): ANALYZE them for an estimate."
    out += _section("Table bloat (estimate)", note, body, h.error_of("bloat"), "no user tables")

    body = None
    if h.index_bloat:
        body = _table((("Index", "left"), ("Size", "right"), ("Bloat", "right"), ("%", "right"), ("Table", "left")),
                      [(i.name, human_bytes(i.size_bytes), human_bytes(i.bloat_bytes) if i.bloat_bytes is not None else NA,
                        _pct(i.bloat_pct), _short(i.table)) for i in h.index_bloat], width)
    note = ("B-tree indexes only. The estimate ignores deduplication (PostgreSQL 13+): an index with many duplicate keys "
            "may have more bloat than shown, never less.")
    out += _section("Index bloat (estimate)", note, body, h.error_of("index_bloat"), "no b-tree index with pages")

    body = None
    if h.unused:
        rows = []
        for u in h.unused:
            verdict = Text("droppable", style="green") if u.droppable else Text(f"keep: {_kept(u)}", style="dim")
            if not u.valid:
                verdict = Text("INVALID (failed build): drop or rebuild", style="bold yellow")
            rows.append((u.name, human_bytes(u.size_bytes), verdict, _short(u.table)))
        body = _table((("Index", "left"), ("Size", "right"), ("Drop?", "left"), ("Table", "left")), rows, width)
    note = (f"Never scanned (idx_scan = 0) on {h.member} since {stats_since(h).removeprefix('the statistics were ')}. "
            "Scans on other members are not counted here: check the replicas before dropping. An index "
            "that enforces a key, a constraint or uniqueness stays, however unused.")
    out += _section("Unused indexes", note, body, h.error_of("unused"), "every index has been scanned")

    body = None
    if h.sizes:
        body = _table((("Table", "left"), ("Total", "right"), ("Heap", "right"), ("Indexes", "right"), ("TOAST", "right")),
                      [(t.name, human_bytes(t.total_bytes), human_bytes(t.table_bytes), human_bytes(t.index_bytes),
                        human_bytes(t.toast_bytes)) for t in h.sizes], width)
    out += _section("Largest tables", f"Top {h.limit} by total size on disk.", body, h.error_of("sizes"), "no user tables")
    return Group(*out)


def status_text(h: TableHealth | None, reading: str | None, since_read: float | None, failed: str | None) -> Text:
    """The line above the sections: what is shown, from when, and what is going on."""
    out = Text(no_wrap=True, overflow="ellipsis")
    if reading is not None:
        out.append(f"reading {reading}…", style="bold")
    if failed is not None:
        out.append(("  " if len(out) else "") + failed, style="bold red")
    age = human_seconds(max(0.0, since_read or 0.0))
    if h is not None and failed is not None:
        out.append(f"  showing {h.member}'s read from {age} ago", style="bold yellow")
    elif h is not None:
        out.append(("  " if len(out) else "") + h.member + (f" · {h.database}" if h.database else ""), style="bold")
        out.append(f" · read {age} ago", style="dim")
        if h.errors:
            out.append(f" · {len(h.errors)} section(s) not read", style="red")
    if reading is None:
        out.append("  r re-read", style="dim")
    return out


class TableHealthView(Vertical):
    """The Tables tab's content: a status line, then the sections, scrolled."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("r", "reread", "Re-read tables")]
    DEFAULT_CSS = """
    TableHealthView { height: 1fr; }
    TableHealthView #pg-tables-status { height: 1; }
    TableHealthView #pg-tables-scroll { height: 1fr; }
    """

    class Done(Message):
        """A read finished (on the worker's thread): its result, or the line that says why not."""

        def __init__(self, member: str, health: TableHealth | None, failed: str | None) -> None:
            self.member, self.health, self.failed = member, health, failed
            super().__init__()

    def __init__(self) -> None:
        super().__init__(id="pg-tables")
        self.read: Reader = read_table_health  # what reads a member (the UI tests give their own)
        self.health: TableHealth | None = None
        self.reading: str | None = None  # the member being read
        self.failed: str | None = None  # why the last read failed (the previous one stays shown)
        self.shown = False  # the tab is the one on screen

    def compose(self) -> ComposeResult:
        yield Static(Text("open this tab to read the member's tables", style="dim"), id="pg-tables-status")
        with VerticalScroll(id="pg-tables-scroll"):
            yield Static(id="pg-tables-body")

    def on_mount(self) -> None:
        self.set_interval(1.0, self._tick)

    # -- what the pane calls ------------------------------------------------------------------

    def tab_shown(self, shown: bool) -> None:
        """The pane's tab switched: to this one (read, and take the keys) or away from it."""
        self.shown = shown
        pane = self.screen
        if shown:
            self.query_one("#pg-tables-scroll").focus()
            self.reread()
        elif self.has_focus_within and isinstance(pane, ClusterPane) and pane.FOCUS:
            pane.query_one(pane.FOCUS).focus()  # the keys go back where the pane keeps them

    # -- reading ----------------------------------------------------------------------------

    def _target(self) -> tuple[ClusterRef, str] | None:
        pane = self.screen
        if not isinstance(pane, ClusterPane) or pane.member is None:
            return None
        return pane.ref, pane.member

    def reread(self) -> None:
        if self.reading is not None:
            return  # one read at a time: its result is on its way
        target = self._target()
        if target is None:
            self.failed = "no member to read"
            self._draw_status()
            return
        ref, member = target
        self.reading, self.failed = member, None
        self._draw_status()
        self._read(ref, member)

    @work(thread=True, group="pg-tables")
    def _read(self, ref: ClusterRef, member: str) -> None:
        # A thread with its own loop, as the runbook wizard's reads: the UI's loop never waits.
        try:
            clock: Callable[[], float] = self.app.clock  # type: ignore[attr-defined]
            health: TableHealth = asyncio.run(self.read(ref, member, now=clock))
        except Exception as exc:  # a bug of ours: the crash file has the traceback, the tab one line
            from dbops.runbook.session import unexpected

            self.post_message(self.Done(member, None, f"{member}: could not read: {unexpected(exc, 'the Tables tab')}"))
            return
        failed = f"{member}: could not read: {health.error}" if health.error else None
        self.post_message(self.Done(member, health, failed))

    def on_table_health_view_done(self, message: Done) -> None:
        message.stop()
        self.reading = None
        self.failed = message.failed
        if message.health is not None and message.health.error is None:
            self.health = message.health
        self._draw()
        target = self._target()
        if self.shown and target is not None and target[1] != message.member:
            self.reread()  # the member shown changed while this one was read

    def action_reread(self) -> None:
        self.reread()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # `r` re-reads only while the tab is on screen; elsewhere the pane's `r` (runbooks) has it.
        if action == "reread":
            return self.shown
        return True

    # -- drawing ----------------------------------------------------------------------------

    def _since_read(self) -> float | None:
        return None if self.health is None else self.app.clock() - self.health.read_at  # type: ignore[attr-defined]

    def _tick(self) -> None:
        if not self.shown:
            return
        target = self._target()
        if target is not None and self.reading is None and self.health is not None and target[1] != self.health.member:
            self.reread()  # another member was picked (m, or the topology table)
            return
        self._draw()

    def _draw_status(self) -> None:
        self.query_one("#pg-tables-status", Static).update(status_text(self.health, self.reading, self._since_read(), self.failed))

    def _draw(self) -> None:
        self._draw_status()
        if self.health is not None:
            since = self._since_read() or 0.0
            self.query_one("#pg-tables-body", Static).update(render_health(self.health, since, self.body_width()))

    def body(self) -> RenderableType | None:
        """What the sections show now (for a test to render)."""
        if self.health is None:
            return None
        return render_health(self.health, self._since_read() or 0.0, self.body_width())

    def body_width(self) -> int:
        """The columns the sections may use: the scrolled area's, less its scrollbar (the read of a
        real database is longer than the tab, so the bar is there)."""
        scroll = self.query_one("#pg-tables-scroll")
        return max(40, (scroll.size.width or 80) - scroll.styles.scrollbar_size_vertical)

    def status(self) -> Text:
        return status_text(self.health, self.reading, self._since_read(), self.failed)


def rendered_text(renderable: Any, width: int) -> str:
    """A renderable as the plain text a terminal `width` columns wide shows."""
    import io

    from rich.console import Console

    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()
