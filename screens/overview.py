"""Overview: every cluster on one line, worst severity first."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from dbops.engine_spec import TopologyEntry, overview_row
from dbops.health import sort_worst_first
from dbops.model import ClusterHealth, Reachability, Severity, human_seconds

from .render import SEVERITY_STYLE, severity_text
from .widgets import EnvBanner

# Most important first, since at 80 columns the last ones may not fit. The environment comes
# second because with several environments it is what tells two similarly named clusters apart;
# with one, the banner names it and the column is left out.
COLUMNS = (
    ("status", "Status"),
    ("env", "Env"),
    ("cluster", "Cluster"),
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


class OverviewScreen(Screen[None]):
    BINDINGS = [Binding("enter", "open", "Open cluster", show=True)]

    def compose(self) -> ComposeResult:
        yield Header()
        yield EnvBanner(id="banner")
        yield Static("", id="problems")
        yield DataTable(id="clusters", cursor_type="row", zebra_stripes=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#clusters", DataTable)
        several_envs = len(self.app.config.environments) > 1
        self._columns = [(i, key) for i, (key, _) in enumerate(COLUMNS) if key != "env" or several_envs]
        for _, key in self._columns:
            table.add_column(dict(COLUMNS)[key], key=key)
        self._refresh_banner()
        self.redraw(self.app.health())
        table.focus()

    def _refresh_banner(self) -> None:
        envs = []
        for name, env in self.app.config.environments.items():
            writable = self.app.allow_writes or env.mode == "operator"
            envs.append((name, env.is_production(name), writable))
        self.query_one(EnvBanner).show(envs, self.app.hub.paused, self.app.operator)

    def pause_changed(self, paused: bool) -> None:
        self._refresh_banner()

    def health_changed(self, changed: dict[str, ClusterHealth]) -> None:
        self.redraw(self.app.health())

    def on_screen_resume(self) -> None:
        self._refresh_banner()
        self.redraw(self.app.health())

    def redraw(self, clusters: list[ClusterHealth]) -> None:
        table = self.query_one("#clusters", DataTable)
        ordered = sort_worst_first(clusters)
        wanted = [f"{c.environment}/{c.name}" for c in ordered]
        current = [str(k.value) for k in table.rows]
        if current != wanted:
            # Order changed (a cluster got worse): rebuild, keeping the cursor on the same cluster.
            selected = current[table.cursor_row] if current and 0 <= table.cursor_row < len(current) else None
            table.clear()
            for c in ordered:
                cells = self._cells(c)
                table.add_row(*(cells[i] for i, _ in self._columns), key=f"{c.environment}/{c.name}")
            if selected in wanted:
                table.move_cursor(row=wanted.index(selected))
        else:
            for c in ordered:
                key = f"{c.environment}/{c.name}"
                cells = self._cells(c)
                for i, col in self._columns:
                    table.update_cell(key, col, cells[i], update_width=True)
        self.query_one("#problems", Static).update(problem_lines(ordered, limit=3, extra=self._backup_problems()))

    def _cells(self, c: ClusterHealth) -> list:
        ref = self.app.hub.ref(f"{c.environment}/{c.name}")
        row = overview_row(ref, c)
        return [
            severity_text(c.severity),
            Text(c.environment, style="bold red" if ref.production else ""),
            Text(c.name, style="bold"),
            topology_text(row.topology),
            row.lag,
            self._backup_cell(ref, row.backup_alert),
            row.connections,
            row.long,
        ]

    def _backup_problems(self) -> list[tuple[Severity, str]]:
        now = self.app.clock()
        states = [self.app.hub.backup_state(ref.key, now) for ref in self.app.refs()]
        # "orders-db: newest pg_dump ..." like the clusters' own lines (the key names the environment too).
        return [(m.severity, m.message.split("/", 1)[-1]) for st in states if st is not None
                for m in st.metrics if m.severity is not Severity.OK]

    def _backup_cell(self, ref, alert: str) -> Text:
        from dbops.platform.backups import has_backups

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

    def action_open(self) -> None:
        table = self.query_one("#clusters", DataTable)
        if table.row_count == 0:
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        self.app.open_cluster(str(key))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.app.open_cluster(str(event.row_key.value))
