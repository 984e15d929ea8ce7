"""The Qdrant pane: nodes (raft role, readiness in State, term, commit with the pending raft
operations as "+N", latency, address) on top; tabs for collections (status, points, replicas
Active), shard replicas (problems first: Dead, then any other state not Active), shard transfers
in progress, and the judged problems."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from dbops.engines.qdrant.assess import STATUS_SEVERITY, replica_severity, role_of, thresholds
from dbops.engines.qdrant.data import ACTIVE, QdrantData
from dbops.model import ClusterHealth, MemberHealth, Severity

from .pane import ClusterPane
from .render import SEVERITY_STYLE, health_text, severity_text, state_text
from .tables import sync_rows
from .widgets import EnvBanner

# Fits 80 columns with followers, a TIMEOUT and a 5-digit port: /readyz is in State ("UP unready"),
# pending raft operations beside the commit they wait on ("46 +2", in yellow), and a long host name is
# shortened in its middle so that the port always shows (errors name the whole address).
NODE_COLUMNS = (("node", "Node"), ("sev", "Sev"), ("role", "Role"), ("state", "State"), ("term", "Term"),
                ("commit", "Commit"), ("latency", "Latency"), ("address", "Address"))
ADDRESS_WIDTH = 21
COLLECTION_COLUMNS = (("name", "Collection"), ("status", "Status"), ("points", "Points"), ("shards", "Shards"),
                      ("replicas", "Active"))
REPLICA_COLUMNS = (("replica", "Collection/shard@node"), ("state", "State"), ("points", "Points"), ("peer", "Peer id"))
TRANSFER_COLUMNS = (("transfer", "Collection/shard"), ("from", "From"), ("to", "To"), ("kind", "Kind"), ("progress", "Progress"))
STATUS_STYLE = {"green": "green", "grey": "dim", "yellow": "bold yellow", "red": "bold white on red"}
STATE_STYLE = {Severity.OK: "green", Severity.WARN: "bold yellow", Severity.CRIT: "bold white on red"}


def short_address(address: str, width: int = ADDRESS_WIDTH) -> str:
    """host:port in at most `width` characters: a longer host loses its middle, never the port."""
    if len(address) <= width:
        return address
    host, _, port = address.rpartition(":")
    keep = max(2, width - len(port) - 2)
    return f"{host[:keep // 2]}…{host[len(host) - (keep - keep // 2):]}:{port}"


class QdrantScreen(ClusterPane):
    DEFAULT_CSS = """
    QdrantScreen #collections-table, QdrantScreen #replicas-table, QdrantScreen #transfers-table { height: 1fr; }
    QdrantScreen #replicas-note { height: auto; }
    """
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("r", "runbooks", "Runbooks"),
        Binding("a", "all_replicas", "All replicas"),
        Binding("1", "tab('collections')", "Collections", show=False),
        Binding("2", "tab('replicas')", "Replicas", show=False),
        Binding("3", "tab('transfers')", "Transfers", show=False),
        Binding("4", "tab('health')", "Health", show=False),
    ]

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.all_replicas = False  # False: only replicas that are not Active
        self._cells: dict[str, dict[str, tuple[Any, ...]]] = {"nodes": {}, "collections": {}, "replicas": {}, "transfers": {}}

    def compose(self) -> ComposeResult:
        yield Header()
        yield EnvBanner(id="banner")
        yield DataTable(id="nodes", cursor_type="row")
        with TabbedContent(id="tabs", initial="replicas"):
            with TabPane("1 Collections", id="collections"):
                yield DataTable(id="collections-table", cursor_type="row")
            with TabPane("2 Replicas", id="replicas"):
                yield Static(id="replicas-note")
                yield DataTable(id="replicas-table", cursor_type="row")
            with TabPane("3 Transfers", id="transfers"):
                yield DataTable(id="transfers-table", cursor_type="row")
            with TabPane("4 Health", id="health"):
                with VerticalScroll():
                    yield Static(id="health-text")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"{self.ref.name} · Qdrant"
        self.add_columns((("#nodes", NODE_COLUMNS), ("#collections-table", COLLECTION_COLUMNS),
                          ("#replicas-table", REPLICA_COLUMNS), ("#transfers-table", TRANSFER_COLUMNS)))
        self.show_banner()
        self.redraw(self.app.hub.cluster_health(self.key))
        self.query_one("#replicas-table", DataTable).focus()

    def _data(self) -> QdrantData | None:
        return self.unit_values(QdrantData)

    # -- updates -------------------------------------------------------------------------------

    def redraw(self, health: ClusterHealth) -> None:
        data = self._data()
        self._draw_nodes(health, data)
        self._draw_collections(data)
        self._draw_replicas(data)
        self._draw_transfers(data)
        self.query_one("#health-text", Static).update(health_text(health) or Text("nothing to report", style="green"))
        self._draw_status(health, data)

    def _sync(self, name: str, table_id: str, columns: Any, rows: dict[str, tuple[Any, ...]], order: dict[str, Any]) -> None:
        sync_rows(self.query_one(table_id, DataTable), columns, rows, self._cells[name], order=lambda k: order.get(k, 0))

    def _draw_nodes(self, health: ClusterHealth, data: QdrantData | None) -> None:
        rows, order = {}, {}
        now = self.app.clock()
        for i, m in enumerate(health.members):
            order[m.name] = i
            rows[m.name] = self._node_row(m, data, now)
        self._sync("nodes", "#nodes", NODE_COLUMNS, rows, order)

    def _node_row(self, m: MemberHealth, data: QdrantData | None, now: float) -> tuple[Any, ...]:
        state = state_text(m.snapshot, now)
        n = next((n for n in data.nodes if n.name == m.name), None) if data else None
        if n is None:
            return (m.name, severity_text(m.severity), m.role, state, "-", "-", "-", "-")
        if not n.up:
            return (m.name, severity_text(m.severity), "?", state, "-", "-", "-", short_address(n.address))
        if n.ready is False:
            state.append(" unready", style="bold yellow")
        raft = n.raft
        limits = thresholds(self.ref)
        latency = Text("-", style="dim")
        if n.latency_ms is not None:
            style = "bold red" if n.latency_ms > limits.latency_ms_crit else "bold yellow" if n.latency_ms > limits.latency_ms_warn else ""
            latency = Text(f"{n.latency_ms:.0f}ms", style=style)
        role = Text(role_of(n), style="bold" if role_of(n) == "leader" else "")
        commit: Any = "-"
        if raft is not None:
            commit = Text(str(raft.commit))
            if raft.pending_operations:
                commit.append(f" +{raft.pending_operations}", style="bold yellow")
        return (m.name, severity_text(m.severity), role, state, str(raft.term) if raft else "-", commit, latency,
                short_address(n.address))

    def _draw_collections(self, data: QdrantData | None) -> None:
        rows, order = {}, {}
        for c in data.collections() if data else []:
            sev = STATUS_SEVERITY.get(c.status or "", Severity.UNKNOWN)
            order[c.name] = (-sev.rank, c.name)
            rows[c.name] = (c.name, Text(c.status or "?", style=STATUS_STYLE.get(c.status or "", "magenta")),
                            str(c.points) if c.points is not None else "?", str(c.shards),
                            Text(f"{c.active}/{c.replicas}", style="" if c.active == c.replicas else "bold yellow"))
        self._sync("collections", "#collections-table", COLLECTION_COLUMNS, rows, order)

    def _draw_replicas(self, data: QdrantData | None) -> None:
        rows, order = {}, {}
        replicas = data.replicas() if data else []
        bad = 0
        for r in replicas:
            sev = replica_severity(r.state)
            bad += r.state != ACTIVE
            if r.state == ACTIVE and not self.all_replicas:
                continue
            # Keyed by peer id (stable); shown by node name, which is what an operator knows.
            key = r.key
            label = f"{r.collection}/{r.shard_id}@{data.peer_name(r.peer_id)}"  # type: ignore[union-attr]
            order[key] = (-sev.rank, r.collection, r.shard_id, r.peer_id)
            rows[key] = (label, Text(r.state, style=STATE_STYLE.get(sev, "")), str(r.points) if r.points is not None else "?",
                         str(r.peer_id))
        self._sync_keyed("replicas", "#replicas-table", REPLICA_COLUMNS, rows, order)
        if data is None:
            note = Text("no refresh yet", style="dim")
        elif self.all_replicas:
            note = Text(f"all {len(replicas)} replicas, problems first (a: only those not Active)", style="dim")
        elif not bad:
            note = Text(f"all {len(replicas)} replicas Active (a: show all)", style="green")
        else:
            note = Text(f"{bad} of {len(replicas)} replicas not Active (a: show all)", style="bold yellow")
        self.query_one("#replicas-note", Static).update(note)

    def _sync_keyed(self, name: str, table_id: str, columns: Any, rows: dict[str, tuple[Any, ...]], order: dict[str, Any]) -> None:
        """sync_rows sorts by the first cell's text; these rows show a label, not their key, so
        they are ordered here and re-added when the order changes."""
        table = self.query_one(table_id, DataTable)
        cache = self._cells[name]
        wanted = sorted(rows, key=lambda k: order.get(k, 0))
        if list(cache) != wanted:
            table.clear()
            cache.clear()
            for k in wanted:
                table.add_row(*rows[k], key=k)
                cache[k] = rows[k]
            return
        sync_rows(table, columns, rows, cache)

    def _draw_transfers(self, data: QdrantData | None) -> None:
        rows, order = {}, {}
        for i, t in enumerate(data.transfers() if data else []):
            key = f"{t.collection}/{t.shard_id}:{t.from_peer}>{t.to_peer}"
            order[key] = i
            rows[key] = (f"{t.collection}/{t.shard_id}", data.peer_name(t.from_peer), data.peer_name(t.to_peer),  # type: ignore[union-attr]
                         ("replicate" if t.sync else "move") + (f" {t.method}" if t.method else ""), t.comment or "-")
        self._sync_keyed("transfers", "#transfers-table", TRANSFER_COLUMNS, rows, order)

    def _draw_status(self, health: ClusterHealth, data: QdrantData | None) -> None:
        out = Text()
        if data is not None:
            replicas = data.replicas()
            dead = sum(1 for r in replicas if r.state == "Dead")
            other = sum(1 for r in replicas if r.state not in (ACTIVE, "Dead"))
            out.append(f"{len(data.collection_names())} collections, {len(replicas)} replicas", style="bold")
            out.append(f"  Dead {dead}", style="bold red" if dead else "")
            out.append(f"  other {other}", style="bold yellow" if other else "")
            out.append(f"  transfers {len(data.transfers())}")
        problems = [mt for mt in health.metrics if mt.severity is not Severity.OK]
        if problems:
            worst = max(problems, key=lambda mt: mt.severity.rank)
            out.append(f"  {worst.message}", style=SEVERITY_STYLE[worst.severity])
        self.query_one("#status", Static).update(out)

    # -- actions -------------------------------------------------------------------------------

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_tab(self, tab: str) -> None:
        tabs = self.query_one("#tabs", TabbedContent)
        tabs.active = tab
        # Focus follows: a focused table left behind in a hidden pane would switch it back.
        self.set_focus(tabs.get_pane(tab).query("DataTable, VerticalScroll").first())

    def action_all_replicas(self) -> None:
        self.all_replicas = not self.all_replicas
        self._draw_replicas(self._data())

    def action_runbooks(self) -> None:
        self.app.open_runbooks(self.key)
