"""The Neo4j pane: every server's health in one table, then the selected server's transactions
(longest first), the databases, the servers (enterprise) and the judged problems.

Everything here is read from the snapshots the pollers deliver; nothing calls a server."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from dbops.engines.neo4j.data import Neo4jMemberData, Transaction
from dbops.model import ClusterHealth, MemberHealth, Reachability, Severity, human_bytes, human_seconds

from .pane import ClusterPane
from .render import SEVERITY_STYLE, health_text, one_line, severity_text, state_text
from .tables import sync_rows
from .widgets import EnvBanner

MEMBER_COLUMNS = (
    ("member", "Server"),
    ("sev", "Sev"),
    ("state", "State"),
    ("version", "Version"),
    ("edition", "Edition"),
    ("txns", "Txns"),
    ("longest", "Longest"),
    ("dbs", "DBs online"),
)
# At 80 columns the id (what the terminate runbook takes), the age and the query must be on
# screen; CPU, wait, memory and the rest follow to the right.
TX_COLUMNS = (
    ("id", "Transaction"),
    ("elapsed", "Elapsed"),
    ("user", "User"),
    ("query", "Query"),
    ("cpu", "CPU"),
    ("wait", "Wait"),
    ("mem", "Memory"),
    ("db", "DB"),
    ("status", "Status"),
)
DB_COLUMNS = (
    ("key", "Database@address"),
    ("status", "Status"),
    ("requested", "Requested"),
    ("role", "Role"),
    ("writer", "Writer"),
    ("lag", "Lag (txns)"),
    ("committed", "Last txn"),
    ("store", "Store"),
)
SERVER_COLUMNS = (("name", "Server"), ("address", "Address"), ("state", "State"), ("health", "Health"), ("hosting", "Hosting"))


def _ms(value: float | None) -> str:
    return human_seconds(value / 1000) if value is not None else "-"


class Neo4jScreen(ClusterPane):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("m", "next_member", "Server"),
        Binding("r", "runbooks", "Runbooks"),
        Binding("1", "tab('transactions')", "Transactions", show=False),
        Binding("2", "tab('databases')", "Databases", show=False),
        Binding("3", "tab('servers')", "Servers", show=False),
        Binding("4", "tab('health')", "Health", show=False),
    ]

    DEFAULT_CSS = """
    Neo4jScreen #n4j-members {
        height: auto;
        max-height: 6;
    }
    Neo4jScreen #n4j-tx, Neo4jScreen #n4j-dbs, Neo4jScreen #n4j-servers {
        height: 1fr;
    }
    Neo4jScreen #n4j-tx-note, Neo4jScreen #n4j-servers-note {
        height: auto;
    }
    """

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.member: str | None = None  # whose transactions are shown
        self.member_pinned = False  # True once the operator picked a server
        self._member_cells: dict[str, tuple[Any, ...]] = {}
        self._tx_cells: dict[str, tuple[Any, ...]] = {}
        self._db_cells: dict[str, tuple[Any, ...]] = {}
        self._server_cells: dict[str, tuple[Any, ...]] = {}
        self._order: dict[str, int] = {}
        self._tx_rank: dict[str, int] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield EnvBanner(id="banner")
        yield DataTable(id="n4j-members", cursor_type="row")
        with TabbedContent(id="tabs", initial="transactions"):
            with TabPane("1 Transactions", id="transactions"):
                yield Static(id="n4j-tx-note")
                yield DataTable(id="n4j-tx", cursor_type="row")
            with TabPane("2 Databases", id="databases"):
                yield DataTable(id="n4j-dbs", cursor_type="row")
            with TabPane("3 Servers", id="servers"):
                yield Static(id="n4j-servers-note")
                yield DataTable(id="n4j-servers", cursor_type="row")
            with TabPane("4 Health", id="health"):
                with VerticalScroll():
                    yield Static(id="health-text")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"{self.ref.name} · Neo4j"
        self.add_columns((("#n4j-members", MEMBER_COLUMNS), ("#n4j-tx", TX_COLUMNS), ("#n4j-dbs", DB_COLUMNS),
                          ("#n4j-servers", SERVER_COLUMNS)))
        self.show_banner()
        self.redraw(self.app.hub.cluster_health(self.key))
        self.query_one("#n4j-tx", DataTable).focus()

    # -- updates -------------------------------------------------------------------------------

    def _member_health(self, health: ClusterHealth) -> MemberHealth | None:
        if not self.member_pinned or self.member not in {m.name for m in health.members}:
            # Until the operator picks a server: the first that answers, else the first configured.
            live = next((m for m in health.members if m.snapshot.reachable), None)
            chosen = (live or (health.members[0] if health.members else None))
            if chosen is not None and chosen.name != self.member:
                self._reset_member_tables()
                self.member = chosen.name
        return next((m for m in health.members if m.name == self.member), None)

    def redraw(self, health: ClusterHealth) -> None:
        self._draw_members(health)
        mh = self._member_health(health)
        data = mh.snapshot.shown if mh else None
        view = next((m.snapshot.shown for m in health.members if isinstance(m.snapshot.data, Neo4jMemberData)), None) \
            or (data if isinstance(data, Neo4jMemberData) else None)
        self._draw_transactions(mh, data)
        self._draw_databases(view)
        self._draw_servers(view)
        self.query_one("#health-text", Static).update(self._health_text(health))
        self._draw_status(health, mh)

    def _draw_members(self, health: ClusterHealth) -> None:
        table = self.query_one("#n4j-members", DataTable)
        now = self.app.clock()
        rows = {}
        for i, m in enumerate(health.members):
            self._order[m.name] = i
            rows[m.name] = self._member_row(m, now)
        sync_rows(table, MEMBER_COLUMNS, rows, self._member_cells, order=lambda k: self._order.get(k, 0))

    def _member_row(self, m: MemberHealth, now: float) -> tuple[Any, ...]:
        snap = m.snapshot
        state = state_text(snap, now)
        d = snap.shown
        if not isinstance(d, Neo4jMemberData):
            return (m.name, severity_text(m.severity), state, "-", "-", "-", "-", "-")
        tx_sev = next((x.severity for x in m.metrics if x.name == "transactions"), Severity.OK)
        longest = Text(_ms(d.transactions[0].elapsed_ms) if d.transactions else "-",
                       style=SEVERITY_STYLE[tx_sev] if tx_sev in (Severity.WARN, Severity.CRIT) else "")
        names = {db.name for db in d.databases}
        online = {db.name for db in d.databases if db.current_status == "online"}
        return (m.name, severity_text(m.severity), state, d.version, d.edition, str(len(d.transactions)), longest,
                f"{len(online)}/{len(names)}")

    def _tx_row(self, t: Transaction) -> tuple[Any, ...]:
        th = self.ref.cluster.neo4j.thresholds if self.ref.cluster.neo4j else None
        style = ""
        if th is not None and t.elapsed_ms > th.transaction_ms_crit:
            style = SEVERITY_STYLE[Severity.CRIT]
        elif th is not None and t.elapsed_ms > th.transaction_ms_warn:
            style = "bold yellow"
        query_width = max(24, self.app.size.width - 46)
        status = Text(t.status, style="bold red" if t.blocked else "")
        return (t.id, Text(_ms(t.elapsed_ms), style=style), t.user, one_line(t.query, query_width), _ms(t.cpu_ms),
                _ms(t.wait_ms), human_bytes(t.allocated_bytes), t.database, status)

    def _draw_transactions(self, mh: MemberHealth | None, data: Any) -> None:
        table = self.query_one("#n4j-tx", DataTable)
        note = self.query_one("#n4j-tx-note", Static)
        if not isinstance(data, Neo4jMemberData):
            note.update(Text(f"no values from {self.member} yet", style="dim"))
            sync_rows(table, TX_COLUMNS, {}, self._tx_cells)
            return
        text = Text(f"{self.member}: {len(data.transactions)} open transaction(s), longest first", style="dim")
        if mh is not None and not mh.snapshot.reachable:
            age = mh.snapshot.age_of_shown(self.app.clock())
            text = Text(f"{self.member} is {mh.snapshot.reachability.value}: transactions as of "
                        f"{human_seconds(age)} ago", style="bold red")
        elif any(t.cpu_ms is None for t in data.transactions):
            text.append("  (CPU: db.track_query_cpu_time is off)", style="dim")
        note.update(text)
        self._tx_rank = {t.id: i for i, t in enumerate(data.transactions)}
        rows = {t.id: self._tx_row(t) for t in data.transactions}
        sync_rows(table, TX_COLUMNS, rows, self._tx_cells, order=lambda k: self._tx_rank.get(k, 0))

    def _draw_databases(self, view: Neo4jMemberData | None) -> None:
        table = self.query_one("#n4j-dbs", DataTable)
        rows = {}
        if view is not None:
            for db in view.databases:
                key = f"{db.name}@{db.address}"
                bad = db.requested_status == "online" and db.current_status != "online"
                status = Text(db.current_status + (f": {db.status_message}" if db.status_message else ""),
                              style="bold red" if bad else "green" if db.current_status == "online" else "dim")
                store = view.store_bytes.get(db.name) if view.store_bytes else None
                rows[key] = (key, status, db.requested_status, db.role, "yes" if db.writer else "no",
                             str(db.replication_lag) if db.replication_lag is not None else "-",
                             str(db.last_committed_txn) if db.last_committed_txn is not None else "-",
                             human_bytes(store) if store is not None else "-")
        sync_rows(table, DB_COLUMNS, rows, self._db_cells, order=lambda k: k)

    def _draw_servers(self, view: Neo4jMemberData | None) -> None:
        table = self.query_one("#n4j-servers", DataTable)
        note = self.query_one("#n4j-servers-note", Static)
        rows = {}
        if view is None:
            note.update(Text("no values yet", style="dim"))
        elif view.servers is None:
            note.update(Text(view.servers_note or "SHOW SERVERS: not available", style="yellow"))
        else:
            note.update(Text(f"{len(view.servers)} servers as SHOW SERVERS reports them", style="dim"))
            for s in view.servers:
                rows[s.name] = (s.name, s.address, s.state,
                                Text(s.health, style="green" if s.health == "Available" else "bold red"), ", ".join(s.hosting))
        table.display = bool(rows)
        sync_rows(table, SERVER_COLUMNS, rows, self._server_cells, order=lambda k: k)

    def _health_text(self, health: ClusterHealth) -> Text:
        out = health_text(health, all_member_metrics=True)
        notes = {n for m in health.members if isinstance(m.snapshot.shown, Neo4jMemberData)
                 for n in (m.snapshot.shown.servers_note, m.snapshot.shown.store_note) if n}
        for n in sorted(notes):
            out.append(f" {n}\n", style="dim")
        return out or Text("nothing to report", style="green")

    def _draw_status(self, health: ClusterHealth, mh: MemberHealth | None) -> None:
        parts = Text()
        parts.append(f"server {self.member} ", style="bold")
        if mh is not None and not mh.snapshot.reachable and mh.snapshot.reachability is not Reachability.PENDING:
            parts.append(f" {mh.snapshot.reachability.value}: {mh.snapshot.error}", style="bold red")
        problems = [mt for mt in health.metrics if mt.severity is not Severity.OK]
        problems += [mt for m in health.members if m.snapshot.reachable for mt in m.metrics if mt.severity is not Severity.OK]
        if problems:
            worst = max(problems, key=lambda mt: mt.severity.rank)
            parts.append(f"  {worst.message}", style=SEVERITY_STYLE[worst.severity])
        self.query_one("#status", Static).update(parts)

    def _reset_member_tables(self) -> None:
        # Another server: its transactions share no keys with the previous server's.
        self.query_one("#n4j-tx", DataTable).clear()
        self._tx_cells.clear()

    # -- actions -------------------------------------------------------------------------------

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_tab(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab

    def action_next_member(self) -> None:
        names = [m.name for m in self.ref.cluster.members]
        i = names.index(self.member) if self.member in names else -1
        self._pick(names[(i + 1) % len(names)])

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "n4j-members":
            self._pick(str(event.row_key.value))

    def _pick(self, name: str) -> None:
        if name != self.member:
            self._reset_member_tables()
        self.member = name
        self.member_pinned = True
        self.redraw(self.app.hub.cluster_health(self.key))

    def action_runbooks(self) -> None:
        self.app.open_runbooks(self.key)
