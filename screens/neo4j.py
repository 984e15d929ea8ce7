"""The Neo4j pane: every server's health in one table, then the selected server's transactions
(longest first), the databases, the servers (enterprise) and the judged problems.

Everything here is read from the snapshots the pollers deliver; nothing calls a server."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable, Static

from dbops.engines.neo4j.data import Neo4jMemberData, Transaction
from dbops.model import ClusterHealth, MemberHealth, Severity, human_bytes, human_seconds

from .pane import HEALTH_TAB, ClusterPane, static, tab
from .render import SEVERITY_STYLE, health_text, one_line, severity_text, state_text, worst_problem
from .tables import PaneTable, TabTable


class MemberTable(PaneTable):
    DEFAULT_ID = "n4j-members"
    DEFAULT_CSS = """
    MemberTable { height: auto; max-height: 6; }
    """
    COLUMNS = (
        ("member", "Server"),
        ("sev", "Sev"),
        ("state", "State"),
        ("version", "Version"),
        ("edition", "Edition"),
        ("txns", "Txns"),
        ("longest", "Longest"),
        ("dbs", "DBs online"),
    )


class TransactionTable(TabTable):
    DEFAULT_ID = "n4j-tx"
    # At 80 columns the id (what the terminate runbook takes), the age and the query must be on
    # screen; CPU, wait, memory and the rest follow to the right.
    COLUMNS = (
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


class DatabaseTable(TabTable):
    DEFAULT_ID = "n4j-dbs"
    COLUMNS = (
        ("key", "Database@address"),
        ("status", "Status"),
        ("requested", "Requested"),
        ("role", "Role"),
        ("writer", "Writer"),
        ("lag", "Lag (txns)"),
        ("committed", "Last txn"),
        ("store", "Store"),
    )


class ServerTable(TabTable):
    DEFAULT_ID = "n4j-servers"
    COLUMNS = (("name", "Server"), ("address", "Address"), ("state", "State"), ("health", "Health"), ("hosting", "Hosting"))


def _ms(value: float | None) -> str:
    return human_seconds(value / 1000) if value is not None else "-"


class Neo4jScreen(ClusterPane):
    DEFAULT_CSS = """
    Neo4jScreen #n4j-tx-note, Neo4jScreen #n4j-servers-note {
        height: auto;
    }
    """
    ENGINE = "Neo4j"
    TOP = (MemberTable,)
    TABS = (
        tab("transactions", "Transactions", static("n4j-tx-note"), TransactionTable),
        tab("databases", "Databases", DatabaseTable),
        tab("servers", "Servers", static("n4j-servers-note"), ServerTable),
        HEALTH_TAB,
    )
    FOCUS = "#n4j-tx"
    MEMBER_WORD = "server"

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self._tx_rank: dict[str, int] = {}

    # -- updates -------------------------------------------------------------------------------

    def default_member(self, health: ClusterHealth) -> str | None:
        # The first server that answers, else the first configured.
        live = next((m for m in health.members if m.snapshot.reachable), None)
        chosen = live or (health.members[0] if health.members else None)
        return chosen.name if chosen is not None else None

    def redraw(self, health: ClusterHealth) -> None:
        self.sync_members(self.query_one(MemberTable), health, self._member_row)
        mh = self.shown_member(health)
        data = mh.snapshot.shown if mh else None
        view = next((m.snapshot.shown for m in health.members if isinstance(m.snapshot.data, Neo4jMemberData)), None) \
            or (data if isinstance(data, Neo4jMemberData) else None)
        self._draw_transactions(mh, data)
        self._draw_databases(view)
        self._draw_servers(view)
        self.show_health(self._health_text(health))
        self._draw_status(health, mh)

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
        table = self.query_one(TransactionTable)
        note = self.query_one("#n4j-tx-note", Static)
        if not isinstance(data, Neo4jMemberData):
            note.update(Text(f"no values from {self.member} yet", style="dim"))
            table.sync({})
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
        table.sync_ranked({t.id: self._tx_row(t) for t in data.transactions}, self._tx_rank)

    def _draw_databases(self, view: Neo4jMemberData | None) -> None:
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
        self.query_one(DatabaseTable).sync(rows, order=lambda k: k)

    def _draw_servers(self, view: Neo4jMemberData | None) -> None:
        table = self.query_one(ServerTable)
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
        table.sync(rows, order=lambda k: k)

    def _health_text(self, health: ClusterHealth) -> Text:
        out = health_text(health, all_member_metrics=True)
        notes = {n for m in health.members if isinstance(m.snapshot.shown, Neo4jMemberData)
                 for n in (m.snapshot.shown.servers_note, m.snapshot.shown.store_note) if n}
        for n in sorted(notes):
            out.append(f" {n}\n", style="dim")
        return out

    def _draw_status(self, health: ClusterHealth, mh: MemberHealth | None) -> None:
        parts = self.member_status(mh)
        problems = [*health.metrics, *(mt for m in health.members if m.snapshot.reachable for mt in m.metrics)]
        self.show_status(parts, worst_problem(problems))

    def forget_member_rows(self) -> None:
        self.query_one(TransactionTable).reset()

    # -- actions -------------------------------------------------------------------------------

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "n4j-members":
            self.pick_member(str(event.row_key.value))
