"""Overview: the fleet, one cluster a line, grouped by environment, worst first.

Filters (`/` as you type, `:` commands in k9s' manner, problems only), sort orders and folded
groups are decided by the pure functions of fleet_filter; this screen renders them. With a
thousand clusters the table is rebuilt only when its rows' order or set changes, at most every
COALESCE_SECONDS for changes that come from the pollers; a cluster's new health updates its own
cells at once."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from rich.style import Style
from rich.text import Text
from textual._two_way_dict import TwoWayDict
from textual.app import ComposeResult
from textual.binding import Binding
from textual.cache import LRUCache
from textual.containers import Horizontal
from textual.coordinate import Coordinate
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Input, Static
from textual.widgets.data_table import ColumnKey, Row, RowKey

from dbops.engine_spec import TopologyEntry, overview_row
from dbops.health import sort_worst_first
from dbops.model import ClusterHealth, Reachability, Severity, human_seconds
from dbops.platform.backups import has_backups

from .alerts import alerts_cell
from .fleet_filter import SORTS, FleetFilter, FleetRow, GroupRow, counts_text, layout, run_command, severity_counts
from .render import SEVERITY_STYLE, severity_text
from .widgets import EnvBanner, typed_into_prompt

# Most important first, since at 80 columns the last ones may not fit. The environment comes
# second because with several environments it is what tells two similarly named clusters apart;
# with one, the banner names it and the column is left out.
COLUMNS = (
    ("status", "Status"),
    ("env", "Env"),
    ("cluster", "Cluster"),
    # Alertmanager's firing alerts about the cluster (only with [alertmanager] configured).
    ("alerts", "Alerts"),
    # Fleet mode only: where the row came from (Prometheus, and how old its newest sample is,
    # or dbops' own poll of the cluster open).
    ("source", "Seen"),
    ("topology", "Topology"),
    ("lag", "Worst lag"),
    # Age of the cluster's stalest newest backup, coloured by the backups' verdict (the Backups
    # pane, B, has the detail); a failing PostgreSQL WAL archiver is folded in as "WAL✗".
    ("backup", "Backup"),
    ("conns", "Conns"),
    ("long", "Long"),
)


def topology_text(entries: tuple[TopologyEntry, ...]) -> Text:
    t = Text()
    for i, entry in enumerate(entries):
        if i:
            t.append(" ")
        if entry.reachability is Reachability.UP:
            style = "bold" if entry.role == "primary" else ""
        elif entry.reachability is Reachability.PENDING:
            style = "dim"
        else:
            style = "bold red"
        mark = "▲" if entry.role == "primary" else ""
        if entry.reachability not in (Reachability.UP, Reachability.PENDING):
            mark += "✗"
        t.append(f"{entry.name}{mark}", style=style)
    return t


def problem_lines(clusters: list[ClusterHealth], limit: int, extra: list[tuple[Severity, str]] | None = None) -> Text:
    """The worst problems across all clusters, one line each, worst first; `extra` adds judged
    problems from outside the pollers (the backups'), after the live ones of equal severity."""
    found: list[tuple[Severity, str]] = []
    for c in clusters:
        found += [(m.severity, f"{c.name}: {m.message}") for m in c.metrics if m.severity is not Severity.OK]
        for mh in c.members:
            found += [(x.severity, f"{c.name}/{mh.name}: {x.message}") for x in mh.metrics if x.severity is not Severity.OK]
    found += extra or []
    if not found:
        return Text("no problems", style="green")
    found.sort(key=lambda p: -p[0].rank)
    out = Text(no_wrap=True, overflow="ellipsis")
    for i, (sev, msg) in enumerate(found[:limit]):
        out.append(("\n" if i else "") + f"{sev.name:<5} ", style=SEVERITY_STYLE[sev])
        out.append(msg)
    if len(found) > limit:
        out.append(f"  (+{len(found) - limit} more: open the cluster, tab 5)", style="dim")
    return out



def group_key(environment: str) -> str:
    """A group header's row key: the environment and a slash, which no cluster's key
    ("environment/name", the name never empty) can be."""
    return f"{environment}/"


def row_key(row: FleetRow) -> str:
    return group_key(row.environment) if isinstance(row, GroupRow) else row


def as_text(value: Text | str) -> Text:
    """A cell as Text: a str cell would be read as Rich markup by the DataTable (a value with
    brackets in it would lose them) and measured again at each render."""
    return value if isinstance(value, Text) else Text(value)


class FleetTable(DataTable[Any]):
    """The clusters' table. The cursor passes over an expanded group's header (up and down go
    from cluster to cluster); a folded group's header is where the cursor stops, for enter or
    space to unfold it."""

    passable: frozenset[int] = frozenset()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Kept across refills, so that a refill allocates almost nothing that outlives it (each
        # object that survives brings Python's next full garbage collection nearer, and with a
        # thousand clusters' snapshots in memory one costs 70-100 ms: a key's paint waits for it).
        self._row_objects: dict[str, Row] = {}  # one per key ever shown
        self._row_data: dict[str, tuple[Sequence[Text], dict[ColumnKey, Text]]] = {}  # by the cells they hold
        # Rendered cells by what they show (see _render_cell).
        self._rendered_cells: LRUCache[tuple[Any, ...], tuple[Text, Any]] = LRUCache(20_000)

    def replace_rows(self, rows: Sequence[tuple[str, Sequence[Text]]], widths: Sequence[int], passable: Iterable[int]) -> None:
        """Every row at once, in order; the columns' content widths (at least as wide as every
        cell); the rows the cursor passes over.

        add_row() costs about 60 µs a row and measures each new cell with Rich at the next idle
        (about 25 µs a cell): a thousand clusters took 400 ms to show again after a filter key.
        Here the rows are stored as add_row() stores them, and the columns take the widths the
        caller kept as it rendered the cells (every cell is a single-line Text), so a refill
        costs a few ms. It sets DataTable's internal maps (Textual 8); the UI tests read rows
        and cursor back through the public API, so a change there fails them."""
        self._clear_caches()
        self._data.clear()
        self.rows.clear()
        self._new_rows.clear()
        self._updated_cells.clear()
        columns = self.ordered_columns
        column_keys = [column.key for column in columns]
        locations: dict[RowKey, int] = {}
        for index, (key, cells) in enumerate(rows):
            table_row = self._row_objects.get(key)
            if table_row is None:
                table_row = self._row_objects[key] = Row(RowKey(key), 1)
            kept = self._row_data.get(key)
            if kept is None or kept[0] is not cells:  # new cells: update_cell() edits the dict in place
                kept = self._row_data[key] = (cells, dict(zip(column_keys, cells)))
            self._data[table_row.key] = kept[1]
            self.rows[table_row.key] = table_row
            locations[table_row.key] = index
        self._row_locations = TwoWayDict(locations)
        for column, width in zip(columns, widths):
            column.content_width = max(column.content_width, width)
        self.passable = frozenset(passable)
        self._update_count += 1
        self._require_update_dimensions = True  # the new height, at the next idle
        self.cursor_coordinate = self.cursor_coordinate  # clamped to the new rows
        self.hover_coordinate = self.hover_coordinate
        self.check_idle()
        self.refresh()

    def _render_cell(self, row_index: int, column_index: int, base_style: Style, width: int,
                     cursor: bool = False, hover: bool = False) -> Any:
        """A body cell's lines, kept by what they show: the cell itself (its Text, kept with the
        lines and compared by identity), its row and column, width and styles. DataTable keys
        its own cache on a count every update bumps, so one changed cell, or a refill to the
        same rows, renders every cell in view again through Rich (most of a key's paint with a
        fleet's changes streaming in)."""
        if row_index < 0 or column_index < 0:  # the header and row labels: DataTable's own cache
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        row_key = self._row_locations.get_key(row_index)
        column_key = self._column_locations.get_key(column_index)
        cell = self._data[row_key][column_key]
        # The row index is in the key: the lines carry it as the mouse's meta.
        key = (row_key, column_key, row_index, width, base_style, cursor, hover, self._show_hover_cursor,
               self._pseudo_class_state)
        kept = self._rendered_cells.get(key)
        if kept is not None and kept[0] is cell:
            return kept[1]
        lines = super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        self._rendered_cells[key] = (cell, lines)
        return lines

    def validate_cursor_coordinate(self, value: Coordinate) -> Coordinate:
        value = super().validate_cursor_coordinate(value)
        if value.row not in self.passable or not 0 <= value.row < self.row_count:
            return value
        step = -1 if value.row < self.cursor_coordinate.row else 1
        for candidate in (range(value.row + step, self.row_count if step > 0 else -1, step),
                          range(value.row - step, -1 if step > 0 else self.row_count, -step)):
            row = next((r for r in candidate if r not in self.passable), None)
            if row is not None:
                return Coordinate(row, value.column)
        return value  # every row is a header: nothing else to stand on

    def watch_cursor_coordinate(self, old: Coordinate, new: Coordinate) -> None:
        super().watch_cursor_coordinate(old, new)
        # The first cluster of a group shows its group's header with it (home, page up, or up
        # to the top would otherwise scroll the header just out of sight).
        header = new.row - 1
        if header in self.passable and header < self.scroll_y and not self._require_update_dimensions:
            self.scroll_to(y=header, animate=False, immediate=True)


class OverviewScreen(Screen[None]):
    BINDINGS = [
        Binding("enter", "open", "Open cluster", show=True),
        # Priority, and the prompt focused at once: see screens.widgets.typed_into_prompt.
        Binding("slash", "prompt('filter')", "Filter", key_display="/", priority=True),
        Binding("colon", "prompt('command')", "Cmd", key_display=":", priority=True),
        Binding("a", "problems", "Problems"),
        Binding("s", "sort", "Sort"),
        Binding("space", "fold", "Fold", show=False),
        Binding("escape", "clear", "Clear filters", show=False),
    ]
    # Changes that come from the pollers rebuild the table's order and recount the fleet at most
    # this often; the changed clusters' own cells are updated at once, and keys never wait.
    COALESCE_SECONDS = 0.5

    def compose(self) -> ComposeResult:
        yield Header()
        yield EnvBanner(id="banner")
        yield Static("", id="fleet-status")
        yield Static("", id="problems")
        yield FleetTable(id="clusters", cursor_type="row", zebra_stripes=False)
        with Horizontal(id="fleet-prompt-bar"):
            yield Static("/", id="fleet-prompt-label")
            yield Input(id="fleet-prompt")
        # Compact: the overview's keys and the console's fit in 80 columns.
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(FleetTable)
        config = self.app.config
        self._environments: list[str] = list(config.environments)
        # One environment: the banner names it, so neither a column nor a group header repeats it.
        self._grouped = len(self._environments) > 1
        shown = {"env": self._grouped, "alerts": self.app.hub.alerts().configured, "source": self.app.hub.fleet_mode}
        self._columns = [(i, key) for i, (key, _) in enumerate(COLUMNS) if shown.get(key, True)]
        for _, key in self._columns:
            table.add_column(dict(COLUMNS)[key], key=key)
        self._refs = {ref.key: ref for ref in self.app.refs()}
        self._with_backups = [key for key, ref in self._refs.items() if has_backups(ref)]
        self._health: dict[str, ClusterHealth] = {f"{c.environment}/{c.name}": c for c in self.app.health()}
        self._cells: dict[str, list[Text]] = {}  # clusters' cells, for their current health
        self._last_cells: dict[str, list[Text]] = {}  # the cells last rendered, current or not (see _rebuild)
        self._rows: list[FleetRow] = []  # the table's rows, top to bottom
        self._shown: set[str] = set()  # the clusters that have a row
        self._widths = [0] * len(self._columns)  # see _widen
        self._shown_text: dict[str, Text] = {}  # see _show
        self._filter = FleetFilter()
        self._sort = 0  # index in SORTS
        self._collapsed: set[str] = set()
        self._prompt_mode = "filter"
        self._last_layout = float("-inf")
        self._layout_timer: Timer | None = None
        self._stale = False  # the fleet changed since the last layout
        self.query_one("#fleet-prompt-bar").display = False
        self._offscreen: dict[str, list[Text]] = {}  # rows out of view whose cells are behind (see health_changed)
        self._refresh_banner()
        self._relayout()
        self.watch(table, "scroll_y", self._flush_offscreen, init=False)
        table.focus()

    # -- what changes the rows -----------------------------------------------------------------

    def health_changed(self, changed: dict[str, ClusterHealth]) -> None:
        table = self.query_one(FleetTable)
        top, height = table.scroll_offset.y, table.size.height
        for key, health in changed.items():
            self._health[key] = health
            before = self._cells.pop(key, None)
            if key not in self._shown or before is None:
                continue
            # Only rows in view are updated now: any cell update repaints the whole table and
            # makes Textual recount every row's offset, which with 1000 rows and a fleet's
            # stream of changes would be most of what a key waits for. The others are updated
            # when they scroll into view (or by the next refill).
            if top <= table.get_row_index(key) < top + height:
                self._set_row_cells(table, key, self._cells_of(key), self._offscreen.pop(key, before))
            else:
                self._offscreen.setdefault(key, before)
        self._stale = True
        self._schedule_layout()

    def _flush_offscreen(self) -> None:
        """Rows that scrolled into view get the cells their clusters' health now gives."""
        if not self._offscreen:
            return
        table = self.query_one(FleetTable)
        top, height = table.scroll_offset.y, table.size.height
        for key in [k for k in self._offscreen if k in self._shown and top <= table.get_row_index(k) < top + height]:
            self._set_row_cells(table, key, self._cells_of(key), self._offscreen.pop(key))

    def on_screen_resume(self) -> None:
        self._refresh_banner()
        # Backup ages moved on while a pane was open (the fleet's health changes were applied
        # meanwhile, but laid out only now).
        table = self.query_one(FleetTable)
        for key in self._with_backups:
            before = self._cells.pop(key, None)
            if key in self._shown and before is not None:
                self._set_row_cells(table, key, self._cells_of(key), before)
        self._stale = True
        self._relayout()

    def _schedule_layout(self) -> None:
        """A layout soon, coalesced: at most one per COALESCE_SECONDS, and none while another
        screen covers this one (resuming lays out)."""
        if self._layout_timer is not None or self.app.screen is not self:
            return
        wait = self._last_layout + self.COALESCE_SECONDS - time.monotonic()
        # (Textual's Timer divides by its delay: never zero.)
        self._layout_timer = self.set_timer(max(wait, 0.001), self._timed_layout)

    def _timed_layout(self) -> None:
        self._layout_timer = None
        if self._stale:
            self._relayout()

    def _relayout(self) -> None:
        """Rows, group headers, counts and problem lines from the current health, filter, sort
        and folds. The table is rebuilt only when its rows' keys or order differ."""
        if self._layout_timer is not None:
            self._layout_timer.stop()
            self._layout_timer = None
        self._last_layout = time.monotonic()
        self._stale = False
        table = self.query_one(FleetTable)
        rows = layout(self._health.values(), self._filter, SORTS[self._sort], self._environments, self._grouped,
                      self._collapsed)
        # What the filter keeps (folded groups' clusters included), for the status line.
        self._kept = sum(r.shown for r in rows if isinstance(r, GroupRow)) if self._grouped else len(rows)
        if [row_key(r) for r in rows] == [row_key(r) for r in self._rows]:
            for old, new in zip(self._rows, rows):
                if isinstance(new, GroupRow) and new != old:
                    self._set_row_cells(table, group_key(new.environment), self._group_cells(new))
            self._rows = rows
        else:
            self._rebuild(table, rows)
        self._refresh_status()
        self._refresh_problems()

    def _rebuild(self, table: FleetTable, rows: list[FleetRow]) -> None:
        """Refill the table with `rows`, keeping the cursor on the same cluster (or the header
        of the group it was folded into) at the same height on the screen."""
        selected = row_key(self._rows[table.cursor_row]) if 0 <= table.cursor_row < len(self._rows) else None
        height_on_screen = table.cursor_row - round(table.scroll_y)
        keys = [row_key(r) for r in rows]
        target = self._cursor_target(selected, keys)
        top = max(0, target - height_on_screen) if selected is not None else round(table.scroll_y)
        # Rows near the view get their clusters' current cells. Further away, a cluster whose
        # health changed since its cells were rendered keeps them until it scrolls into view (as
        # in health_changed): with a fleet's changes streaming in, rendering a few hundred of
        # them on every reorder was most of a key's wait.
        near = range(top - table.size.height, top + 2 * table.size.height + 1)
        self._offscreen = {}
        filled = []
        for index, (key, row) in enumerate(zip(keys, rows)):
            if isinstance(row, GroupRow):
                filled.append(self._group_cells(row))
            elif index not in near and key not in self._cells and key in self._last_cells:
                filled.append(self._offscreen.setdefault(key, self._last_cells[key]))
            else:
                filled.append(self._cells_of(key))
        with self.app.batch_update():
            table.replace_rows(list(zip(keys, filled)), self._widths,
                               passable={i for i, r in enumerate(rows) if isinstance(r, GroupRow) and not r.collapsed})
            self._rows = rows
            self._shown = {k for k, r in zip(keys, rows) if not isinstance(r, GroupRow)}
            table.move_cursor(row=target, scroll=False)
        if selected is not None:
            # The table's height is known once it has measured the new rows (after this refresh).
            self.call_after_refresh(lambda: table.scroll_to(y=top, animate=False, immediate=True))
        # Whatever ends up in view has its current cells, wherever the table scrolled to.
        self.call_after_refresh(self._flush_offscreen)

    def _cursor_target(self, selected: str | None, keys: list[str]) -> int:
        if selected is None:
            return 0
        if selected in keys:
            return keys.index(selected)
        environment = selected.split("/", 1)[0]
        if group_key(environment) in keys:  # folded away (or its group filtered down): stay near it
            return keys.index(group_key(environment))
        return 0

    # -- cells -----------------------------------------------------------------------------------

    def _cells_of(self, key: str) -> list[Text]:
        """A cluster's cells as of its current health, rendered once per health."""
        cells = self._cells.get(key)
        if cells is None:
            cells = self._cells[key] = self._last_cells[key] = self._cluster_cells(self._health[key])
            self._widen(cells)
        return cells

    def _widen(self, cells: Sequence[Text]) -> None:
        """Columns widen for the widest cell ever rendered and never narrow: a filter that
        hides the longest name keeps the layout still, and a refill need not measure."""
        self._widths = [max(width, cell.cell_len) for width, cell in zip(self._widths, cells)]

    def _set_row_cells(self, table: FleetTable, key: str, cells: Sequence[Text], old: Sequence[Text] | None = None) -> None:
        """Only the cells that differ; a column widens for a wider value and never narrows (a
        narrowing would measure the whole column, and a table that jitters is harder to read)."""
        for index, ((_, column), value) in enumerate(zip(self._columns, cells)):
            if old is not None and value == old[index]:
                continue
            wider = value.cell_len > table.columns[ColumnKey(column)].content_width
            table.update_cell(key, column, value, update_width=wider)

    def _cluster_cells(self, c: ClusterHealth) -> list[Text]:
        ref = self._refs[f"{c.environment}/{c.name}"]
        row = overview_row(ref, c)
        cells = [
            severity_text(c.severity),
            Text(c.environment, style="bold red" if ref.production else ""),
            Text(c.name, style="bold"),
            alerts_cell(self.app.hub.alerts(ref.key)),
            self._source_cell(c),
            topology_text(row.topology),
            as_text(row.lag),
            self._backup_cell(ref, row.backup_alert),
            as_text(row.connections),
            as_text(row.long),
        ]
        return [cells[i] for i, _ in self._columns]

    def _group_cells(self, group: GroupRow) -> list[Text]:
        """An environment's header: fold mark, name, how many clusters, their counts."""
        production = self._refs_production(group.environment)
        counts = Text()
        for i, (sev, n) in enumerate(group.counts):
            counts.append(", " if i else "")
            counts.append(f"{n} {sev.name}", style=SEVERITY_STYLE[sev].replace(" on red", "").replace("white", "red"))
        if not group.counts:
            counts.append("all OK", style="green")
        size = f"{group.total} cluster{'s' if group.total != 1 else ''}" if group.shown == group.total \
            else f"{group.shown} of {group.total}"
        cells = [
            Text("▸" if group.collapsed else "▾", style="bold"),
            Text(group.environment.upper() if production else group.environment, style="bold red" if production else "bold"),
            Text(size, style="bold"),
            Text(), Text(),
            counts,
            Text(), Text(), Text(), Text(),
        ]
        shown = [cells[i] for i, _ in self._columns]
        self._widen(shown)
        return shown

    def _source_cell(self, c: ClusterHealth) -> Text:
        if c.source == "prometheus":
            if c.observed_at is None:
                return Text("prom -", style="dim")
            # The age as of this health: the row is re-rendered at each Prometheus refresh.
            return Text(f"prom {human_seconds(max(0.0, time.time() - c.observed_at))}", style="dim")
        return Text("direct", style="bold")

    def _refs_production(self, environment: str) -> bool:
        env = self.app.config.environments[environment]
        return bool(env.is_production(environment))

    # -- the lines above the table -------------------------------------------------------------

    def _refresh_banner(self) -> None:
        envs = []
        for name, env in self.app.config.environments.items():
            writable = self.app.allow_writes or env.mode == "operator"
            envs.append((name, env.is_production(name), writable))
        self.query_one(EnvBanner).show(envs, self.app.hub.paused, self.app.operator)

    def pause_changed(self, paused: bool) -> None:
        self._refresh_banner()

    def _refresh_status(self) -> None:
        """"1000 clusters: 2 CRIT, 5 WARN", how many are shown and why, and the sort."""
        counts = severity_counts(self._health.values())
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(f"{len(self._health)} clusters: ", style="bold")
        for i, (sev, n) in enumerate(counts):
            line.append(", " if i else "")
            line.append(f"{n} {sev.name}", style=SEVERITY_STYLE[sev])
        if not counts:
            line.append(counts_text(counts), style="green")
        if self._filter.narrows:
            shown = self._kept
            line.append(f" · {shown} shown: ", style="bold")
            line.append(self._filter.describe(), style="yellow")
            if not shown:
                line.append(" (escape or :all clears)", style="dim")
        line.append(f" · sort {SORTS[self._sort]}", style="dim")
        hub = self.app.hub
        if hub.fleet_mode:
            line.append(" · fleet mode: rows from Prometheus, the cluster open polled directly", style="dim")
        elif self.app.config.defaults.unwatched_refresh_interval is not None:
            line.append(f" · clusters not open polled every {self.app.config.defaults.unwatched_refresh_interval:g}s", style="dim")
        self._show(self.query_one("#fleet-status", Static), line)

    def _refresh_problems(self) -> None:
        # Fleet-wide whatever the filter: a CRIT elsewhere must stay in sight while the
        # operator looks at one part of the fleet. Only clusters not OK can have problems.
        troubled = sort_worst_first([c for c in self._health.values() if c.severity is not Severity.OK])
        self._show(self.query_one("#problems", Static), problem_lines(troubled, limit=3, extra=self._backup_problems()))

    def _show(self, line: Static, text: Text) -> None:
        """Update a line above the table only when its text changed, and lay the screen out
        again only when its height did: a layout costs as much as painting the table."""
        before = self._shown_text.get(line.id or "")
        if before == text:
            return
        self._shown_text[line.id or ""] = text
        line.update(text, layout=before is None or len(before.split()) != len(text.split()))

    def _backup_problems(self) -> list[tuple[Severity, str]]:
        now = self.app.clock()
        states = [self.app.hub.backup_state(key, now) for key in self._with_backups]
        # "orders-db: newest pg_dump ..." like the clusters' own lines (the key names the environment too).
        return [(m.severity, m.message.split("/", 1)[-1]) for st in states if st is not None
                for m in st.metrics if m.severity is not Severity.OK]

    def _backup_cell(self, ref, alert: str) -> Text:
        state = self.app.hub.backup_state(ref.key, self.app.clock()) if has_backups(ref) else None
        if not has_backups(ref):
            text, style = "-", "dim"
        elif state is None:
            text, style = "…", "dim"
        else:
            age = state.newest_age_seconds
            text = human_seconds(age) if age is not None else ("none" if state.severity is Severity.CRIT else "?")
            style = SEVERITY_STYLE[state.severity].replace(" on red", "").replace("white", "red")
        if alert:  # e.g. WAL archiving is failing: the point-in-time recovery window stops growing
            return Text.assemble((f"{alert} ", "bold red"), (text, style))
        return Text(text, style=style)

    # -- keys --------------------------------------------------------------------------------------

    def _cursor_row(self) -> FleetRow | None:
        table = self.query_one(FleetTable)
        return self._rows[table.cursor_row] if 0 <= table.cursor_row < len(self._rows) else None

    def action_open(self) -> None:
        row = self._cursor_row()
        if isinstance(row, GroupRow):
            self._toggle_group(row.environment)
        elif row is not None:
            self.app.open_cluster(row)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        key = str(event.row_key.value)
        if key.endswith("/"):
            self._toggle_group(key[:-1])
        else:
            self.app.open_cluster(key)

    def action_fold(self) -> None:
        row = self._cursor_row()
        if row is None or not self._grouped:
            return
        self._toggle_group(row.environment if isinstance(row, GroupRow) else row.split("/", 1)[0])

    def _toggle_group(self, environment: str) -> None:
        if environment in self._collapsed:
            self._collapsed.discard(environment)
            self._relayout()
            # Unfolded: onto the group's first cluster, the header being passed over now.
            table = self.query_one(FleetTable)
            index = next(i for i, r in enumerate(self._rows) if isinstance(r, GroupRow) and r.environment == environment)
            table.move_cursor(row=min(index + 1, table.row_count - 1))
        else:
            self._collapsed.add(environment)
            self._relayout()

    def action_problems(self) -> None:
        self._set_filter(replace(self._filter, problems_only=not self._filter.problems_only))

    def action_sort(self) -> None:
        self._sort = (self._sort + 1) % len(SORTS)
        self._relayout()

    def action_clear(self) -> None:
        """escape: close the prompt (a filter being typed is dropped), else drop the `/` and `:`
        filters (problems only stays: `a` turns it off, `:all` clears everything)."""
        bar = self.query_one("#fleet-prompt-bar")
        if bar.display:
            if self._prompt_mode == "filter":
                self._set_filter(replace(self._filter, text=""))
            self._close_prompt()
        elif self._filter.narrows:
            self._set_filter(FleetFilter(problems_only=self._filter.problems_only))

    def _set_filter(self, flt: FleetFilter) -> None:
        if flt != self._filter:
            self._filter = flt
            self._relayout()

    # -- the prompt: `/` filter as you type, `:` command --------------------------------------

    def action_prompt(self, mode: str) -> None:
        prompt = self.query_one("#fleet-prompt", Input)
        if typed_into_prompt(self, prompt, "/" if mode == "filter" else ":"):
            return
        self._prompt_mode = mode
        self.query_one("#fleet-prompt-label", Static).update("/" if mode == "filter" else ":")
        prompt.placeholder = ("name, environment or engine" if mode == "filter"
                              else "pg redis kafka neo4j qdrant · env NAME · cluster GLOB · problems · all · alerts")
        prompt.value = self._filter.text if mode == "filter" else ""
        self.query_one("#fleet-prompt-bar").display = True
        self.set_focus(prompt)  # at once (see typed_into_prompt)

    def _close_prompt(self) -> None:
        self.query_one("#fleet-prompt-bar").display = False
        self.query_one(FleetTable).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "fleet-prompt" and self._prompt_mode == "filter":
            self._set_filter(replace(self._filter, text=event.value.strip()))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "fleet-prompt":
            return
        self._close_prompt()
        if self._prompt_mode == "command":
            self.run_command_line(event.value)

    def run_command_line(self, line: str) -> None:
        engines = {ref.cluster.engine for ref in self._refs.values()}
        result = run_command(line, self._filter, engines, self._environments)
        if result.error:
            self.app.notify(result.error, severity="error", timeout=8)
            return
        if result.view == "alerts":
            self._open_alerts()
        self._set_filter(result.filter)

    def _open_alerts(self) -> None:
        opener = getattr(self.app, "action_alerts", None)
        if getattr(self.app.hub, "alerts", None) is None or opener is None:
            self.app.notify("no [alertmanager] configured: set [alertmanager] url in the config to see firing alerts",
                            severity="warning", timeout=8)
            return
        opener()
