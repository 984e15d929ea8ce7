"""The Qdrant pane: nodes (raft role, readiness in State, term, commit with the pending raft
operations as "+N", latency, address) on top; tabs for collections (status, points, replicas
Active), shard replicas (problems first: Dead, then any other state not Active), shard transfers
in progress, and the judged problems."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import Static

from dbops.engines.qdrant.assess import STATUS_SEVERITY, replica_severity, role_of, thresholds
from dbops.engines.qdrant.data import ACTIVE, QdrantData
from dbops.model import ClusterHealth, MemberHealth, Severity

from .pane import HEALTH_TAB, ClusterPane, static, tab
from .render import append_count, health_text, severity_text, state_text, worst_problem
from .tables import NodesTable, TabTable

# Fits 80 columns with followers, a TIMEOUT and a 5-digit port: /readyz is in State ("UP unready"),
# pending raft operations beside the commit they wait on ("46 +2", in yellow), and a long host name is
# shortened in its middle so that the port always shows (errors name the whole address).
ADDRESS_WIDTH = 21
STATUS_STYLE = {"green": "green", "grey": "dim", "yellow": "bold yellow", "red": "bold white on red"}
STATE_STYLE = {Severity.OK: "green", Severity.WARN: "bold yellow", Severity.CRIT: "bold white on red"}


def short_address(address: str, width: int = ADDRESS_WIDTH) -> str:
    """host:port in at most `width` characters: a longer host loses its middle, never the port."""
    if len(address) <= width:
        return address
    host, _, port = address.rpartition(":")
    keep = max(2, width - len(port) - 2)
    return f"{host[:keep // 2]}…{host[len(host) - (keep - keep // 2):]}:{port}"


class NodeTable(NodesTable):
    COLUMNS = (("node", "Node"), ("sev", "Sev"), ("role", "Role"), ("state", "State"), ("term", "Term"),
               ("commit", "Commit"), ("latency", "Latency"), ("address", "Address"))


class CollectionTable(TabTable):
    DEFAULT_ID = "collections-table"
    COLUMNS = (("name", "Collection"), ("status", "Status"), ("points", "Points"), ("shards", "Shards"), ("replicas", "Active"))


class ReplicaTable(TabTable):
    DEFAULT_ID = "replicas-table"
    COLUMNS = (("replica", "Collection/shard@node"), ("state", "State"), ("points", "Points"), ("peer", "Peer id"))


class TransferTable(TabTable):
    DEFAULT_ID = "transfers-table"
    COLUMNS = (("transfer", "Collection/shard"), ("from", "From"), ("to", "To"), ("kind", "Kind"), ("progress", "Progress"))


class QdrantScreen(ClusterPane):
    DEFAULT_CSS = """
    QdrantScreen #replicas-note { height: auto; }
    """
    ENGINE = "Qdrant"
    TOP = (NodeTable,)
    TABS = (
        tab("collections", "Collections", CollectionTable),
        tab("replicas", "Replicas", static("replicas-note"), ReplicaTable),
        tab("transfers", "Transfers", TransferTable),
        HEALTH_TAB,
    )
    INITIAL_TAB = "replicas"
    FOCUS = "#replicas-table"
    FOCUS_FOLLOWS_TAB = True
    SHOW_ALL = "All replicas"  # False: only replicas that are not Active

    def _data(self) -> QdrantData | None:
        return self.unit_values(QdrantData)

    # -- updates -------------------------------------------------------------------------------

    def redraw(self, health: ClusterHealth) -> None:
        data = self._data()
        self.sync_members(self.query_one(NodeTable), health, lambda m, now: self._node_row(m, data, now))
        self._draw_collections(data)
        self._draw_replicas(data)
        self._draw_transfers(data)
        self.show_health(health_text(health))
        self._draw_status(health, data)

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
        self.query_one(CollectionTable).sync_ranked(rows, order)

    def _draw_replicas(self, data: QdrantData | None) -> None:
        rows, order = {}, {}
        replicas = data.replicas() if data else []
        bad = 0
        for r in replicas:
            sev = replica_severity(r.state)
            bad += r.state != ACTIVE
            if r.state == ACTIVE and not self.show_all:
                continue
            # Keyed by peer id (stable); shown by node name, which is what an operator knows.
            key = r.key
            label = f"{r.collection}/{r.shard_id}@{data.peer_name(r.peer_id)}"  # type: ignore[union-attr]
            order[key] = (-sev.rank, r.collection, r.shard_id, r.peer_id)
            rows[key] = (label, Text(r.state, style=STATE_STYLE.get(sev, "")), str(r.points) if r.points is not None else "?",
                         str(r.peer_id))
        self.query_one(ReplicaTable).sync_labelled(rows, order)
        if data is None:
            note = Text("no refresh yet", style="dim")
        elif self.show_all:
            note = Text(f"all {len(replicas)} replicas, problems first (a: only those not Active)", style="dim")
        elif not bad:
            note = Text(f"all {len(replicas)} replicas Active (a: show all)", style="green")
        else:
            note = Text(f"{bad} of {len(replicas)} replicas not Active (a: show all)", style="bold yellow")
        self.query_one("#replicas-note", Static).update(note)

    def _draw_transfers(self, data: QdrantData | None) -> None:
        rows, order = {}, {}
        for i, t in enumerate(data.transfers() if data else []):
            key = f"{t.collection}/{t.shard_id}:{t.from_peer}>{t.to_peer}"
            order[key] = i
            rows[key] = (f"{t.collection}/{t.shard_id}", data.peer_name(t.from_peer), data.peer_name(t.to_peer),  # type: ignore[union-attr]
                         ("replicate" if t.sync else "move") + (f" {t.method}" if t.method else ""), t.comment or "-")
        self.query_one(TransferTable).sync_labelled(rows, order)

    def _draw_status(self, health: ClusterHealth, data: QdrantData | None) -> None:
        out = Text()
        if data is not None:
            replicas = data.replicas()
            dead = sum(1 for r in replicas if r.state == "Dead")
            other = sum(1 for r in replicas if r.state not in (ACTIVE, "Dead"))
            out.append(f"{len(data.collection_names())} collections, {len(replicas)} replicas", style="bold")
            append_count(out, "Dead", dead, "bold red")
            append_count(out, "other", other, "bold yellow")
            out.append(f"  transfers {len(data.transfers())}")
        self.show_status(out, worst_problem(health.metrics))

    # -- actions -------------------------------------------------------------------------------

    def draw_filtered(self) -> None:
        self._draw_replicas(self._data())
