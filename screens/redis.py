"""The Redis pane: every node's health in one table, then the cluster's slot map, the selected
node's slow log and command stats, the sentinels' view, and the judged problems."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable, Static, TabbedContent

from dbops.engines.redis.data import RedisNodeData, RedisTopology, SentinelData
from dbops.engines.redis.topology import SLOTS, ClusterView, format_ranges, ranges
from dbops.model import ClusterHealth, MemberHealth, Severity, human_bytes

from .pane import HEALTH_TAB, ClusterPane, scrolled, tab
from .render import SEVERITY_STYLE, first_problem, health_text, severity_text, state_text
from .tables import NodesTable, TabTable

OWNER_STYLES = ("bold cyan", "bold green", "bold magenta", "bold blue", "bold yellow", "bold white")
MAP_WIDTH = 64  # cells per row: 16384 slots / 256 cells = 64 slots a cell at 4 rows


def slot_map(view: ClusterView, names: dict[str, str], width: int = MAP_WIDTH, rows: int = 4) -> Text:
    """16384 slots as `rows` lines of `width` cells. A cell is the letter of the master owning all
    of its slots; `·` (red) some slot of it has no owner, `!` (yellow) one is open (migrating or
    importing), `#` (red) one is claimed by two masters, `+` several owners share it.
    A legend follows: letter, master, ranges and slot count."""
    cells = width * rows
    per = SLOTS // cells
    masters = sorted({o for o in view.owners if o is not None}, key=lambda nid: names.get(nid, nid))
    letter = {nid: chr(ord("A") + i) if i < 26 else "?" for i, nid in enumerate(masters)}
    style = {nid: OWNER_STYLES[i % len(OWNER_STYLES)] for i, nid in enumerate(masters)}
    open_slots = {o.slot for o in view.open_slots}
    out = Text()
    for r in range(rows):
        for c in range(width):
            lo = (r * width + c) * per
            span = range(lo, lo + per)
            owners = {view.owners[s] for s in span}
            if any(s in view.multiple_owners for s in span):
                out.append("#", style="bold white on red")
            elif None in owners:
                out.append("·", style="bold red")
            elif any(s in open_slots for s in span):
                out.append("!", style="bold black on yellow")
            elif len(owners) > 1:
                out.append("+", style="bold")
            else:
                nid = next(iter(owners))
                out.append(letter[nid], style=style[nid])  # type: ignore[index]
        out.append("\n")
    for nid in masters:
        mine = [s for s, o in enumerate(view.owners) if o == nid]
        out.append(f"{letter[nid]}", style=style[nid])
        out.append(f" {names.get(nid, nid[:8])}: {len(mine)} slots {format_ranges(ranges(mine), 4)}\n")
    if view.uncovered:
        n = sum(b - a + 1 for a, b in view.uncovered)
        out.append("·", style="bold red")
        out.append(f" no owner: {n} slots {format_ranges(view.uncovered, 4)}\n", style="red")
    return out


def cluster_text(view: ClusterView, names: dict[str, str]) -> Text:
    def name(nid: str) -> str:
        return names.get(nid, nid[:8])

    out = Text()
    if view.open_slots:
        out.append("Open slots\n", style="bold yellow")
        for o in view.open_slots[:8]:
            how = [f"{name(a)} MIGRATING to {name(b)}" for a, b in o.migrating] + \
                  [f"{name(a)} IMPORTING from {name(b)}" for a, b in o.importing]
            out.append(f"  {o.slot}: {'; '.join(how)}\n")
        if len(view.open_slots) > 8:
            out.append(f"  … {len(view.open_slots) - 8} more\n")
    if view.multiple_owners:
        out.append("Slots claimed by two masters\n", style="bold red")
        for s, owners in list(sorted(view.multiple_owners.items()))[:8]:
            out.append(f"  {s}: {', '.join(name(o) for o in owners)}\n")
    if view.disagreeing:
        out.append("Nodes whose slot map differs from the majority's: ", style="bold yellow")
        out.append(", ".join(name(n) for n in view.disagreeing) + "\n")
    if view.failed or view.pfail:
        out.append("Flagged: ", style="bold red")
        out.append(", ".join([f"{name(n)} fail" for n in view.failed] + [f"{name(n)} pfail" for n in view.pfail]) + "\n")
    return out


class NodeTable(NodesTable):
    COLUMNS = (
        ("node", "Node"),
        ("sev", "Sev"),
        ("role", "Role"),
        ("state", "State"),
        ("mem", "Mem"),
        ("ops", "Ops/s"),
        ("hit", "Hit%"),
        ("evict", "Evict"),
        ("clients", "Clients"),
        ("lag", "Lag"),
        ("persist", "Persist"),
    )


class SlowTable(TabTable):
    DEFAULT_ID = "slow-table"
    COLUMNS = (("id", "Id"), ("new", "New"), ("dur", "Duration"), ("cmd", "Command"), ("client", "Client"))


class RedisScreen(ClusterPane):
    TOP = (NodeTable,)
    TABS = (
        tab("slots", "Slots", scrolled("slot-map")),
        tab("slowlog", "Slow log", SlowTable),
        tab("commands", "Commands", scrolled("commands-text")),
        tab("sentinel", "Sentinel", scrolled("sentinel-text")),
        HEALTH_TAB,
    )
    FOCUS = "#nodes"
    MEMBER_WORD = "node"

    def __init__(self, key: str) -> None:
        super().__init__(key)
        # The node shown stays until it is gone or another is highlighted; nodes are discovered,
        # so the default (the primary) is only for the first refresh.
        self.member_pinned = True
        self._map_key: Any = None

    def _mode(self) -> str:
        return self.ref.cluster.redis.mode if self.ref.cluster.redis else "standalone"

    def engine_title(self) -> str:
        return f"Redis {self._mode()}"

    def prepare(self) -> None:
        mode = self._mode()
        if mode != "sentinel":
            self.query_one("#tabs", TabbedContent).hide_tab("sentinel")
        if mode != "cluster":
            self.query_one("#tabs", TabbedContent).active = "slowlog"
            self.query_one("#tabs", TabbedContent).hide_tab("slots")
        # Start on the primary: the cursor's first row would otherwise pick a sentinel or replica.
        self.call_after_refresh(self._cursor_to_node)

    def _cursor_to_node(self) -> None:
        nodes = self.query_one(NodeTable)
        if self.member is not None and self.member in {str(k.value) for k in nodes.rows}:
            nodes.move_cursor(row=nodes.get_row_index(self.member), animate=False)

    # -- updates -------------------------------------------------------------------------------

    def default_member(self, health: ClusterHealth) -> str | None:
        primary = next((m for m in health.members if m.role == "primary"), None)
        return (primary or health.members[0]).name if health.members else None

    def member_names(self) -> list[str]:
        # Every node the refresh found, sentinels included, not only the configured ones.
        return [m.name for m in self.hub.cluster_health(self.key).members]

    def redraw(self, health: ClusterHealth) -> None:
        topo = self.unit_values(RedisTopology)
        self.sync_members(self.query_one(NodeTable), health, self._node_row)
        mh = self.shown_member(health)
        if topo is not None and topo.cluster is not None:
            view = topo.cluster
            names = {n.node_id: self._node_name(topo, n.address) for n in view.nodes}
            # Redrawn only when something on it changed (the map is 16384 slots; refreshes are
            # usually identical).
            key = (view.owners, view.open_slots, tuple(view.multiple_owners.items()), view.disagreeing, view.failed,
                   view.pfail, tuple(sorted(names.items())))
            if key != self._map_key:
                self._map_key = key
                t = Text(f"slot owners and open slots as {len(view.nodes)} nodes report them\n", style="dim")
                t.append_text(slot_map(view, names))
                t.append_text(cluster_text(view, names))
                self.query_one("#slot-map", Static).update(t)
        elif topo is not None and topo.mode == "cluster":
            self.query_one("#slot-map", Static).update(Text("No node answered CLUSTER NODES: slot ownership unknown", style="bold red"))
        data = mh.snapshot.shown if mh else None
        self._draw_slowlog(data)
        self.query_one("#commands-text", Static).update(self._commands_text(data))
        if topo is not None and topo.mode == "sentinel":
            self.query_one("#sentinel-text", Static).update(self._sentinel_text(topo, health))
        self.show_health(health_text(health))
        self._draw_status(health, mh)

    @staticmethod
    def _node_name(topo: RedisTopology, address: str) -> str:
        n = next((x for x in topo.nodes if x.address == address), None)
        return n.name if n else address

    def _node_row(self, m: MemberHealth, now: float) -> tuple[Any, ...]:
        snap = m.snapshot
        state = state_text(snap, now)
        d = snap.shown
        worst = {mt.name: mt.severity for mt in m.metrics}

        def styled(text: str, metric: str) -> Text:
            sev = worst.get(metric, Severity.OK)
            return Text(text, style=SEVERITY_STYLE[sev] if sev in (Severity.WARN, Severity.CRIT) else "")

        if isinstance(d, SentinelData):
            return (m.name, severity_text(m.severity), "sentinel", state, "", "", "", "", "",
                    "", Text("q ok" if d.ckquorum_ok else "NO QUORUM", style="" if d.ckquorum_ok else "bold red"))
        if not isinstance(d, RedisNodeData):
            return (m.name, severity_text(m.severity), m.role, state, "-", "-", "-", "-", "-", "-", "-")
        mem = f"{d.memory_pct:.0f}%" if d.memory_pct is not None else human_bytes(d.used_memory)
        hit = f"{d.hit_rate_pct:.0f}" if d.hit_rate_pct is not None else "-"
        evict = str(d.evicted_since_last) if d.evicted_since_last is not None else "-"
        clients = f"{d.connected_clients}" + (f"/{d.blocked_clients}b" if d.blocked_clients else "")
        if m.role == "replica":
            lag = f"{human_bytes(m.lag_bytes)}" if m.lag_bytes is not None else (d.master_link_status or "-")
            if d.master_link_status != "up":
                lag = "link " + (d.master_link_status or "?")
        else:
            lag = f"{len(d.replicas)} repl" if d.replicas else "-"
        persist_ok = d.rdb_last_bgsave_status in (None, "ok") and (not d.aof_enabled or d.aof_last_write_status in (None, "ok"))
        persist = ("aof " if d.aof_enabled else "rdb ") + ("ok" if persist_ok else "FAIL")
        return (m.name, severity_text(m.severity), m.role, state, styled(mem, "memory"), str(d.ops_per_sec or 0),
                styled(hit, "hit_rate"), styled(evict, "evictions"), clients,
                styled(lag, "link" if m.role == "replica" else "replication"), styled(persist, "persistence"))

    def _draw_slowlog(self, data: Any) -> None:
        rows = {}
        if isinstance(data, RedisNodeData):
            new = {e.id for e in data.slowlog_new}
            for e in data.slowlog_recent:
                rows[str(e.id)] = (str(e.id), Text("new", style="bold yellow") if e.id in new else "",
                                   f"{e.duration_us / 1000:.1f} ms", e.command, e.client)
        self.query_one(SlowTable).sync(rows, order=lambda k: -int(k))

    def _commands_text(self, data: Any) -> Text:
        out = Text()
        if not isinstance(data, RedisNodeData):
            return Text("no values from this node yet", style="dim")
        out.append(f"{self.member}: top commands by total time since start\n", style="bold")
        for c in data.top_commands:
            out.append(f"  {c.command:<18} {c.calls:>12} calls {c.usec_per_call:>9.1f} µs/call"
                       + (f"  {c.failed} failed" if c.failed else "") + "\n")
        out.append("LATENCY LATEST\n", style="bold")
        if not data.latency:
            out.append("  no latency events (latency-monitor-threshold may be 0)\n", style="dim")
        for ev in data.latency:
            out.append(f"  {ev.event:<18} latest {ev.latest_ms} ms, max {ev.max_ms} ms\n")
        out.append("Clients\n", style="bold")
        out.append(f"  {data.connected_clients} connected, {data.blocked_clients} blocked, "
                   f"{data.rejected_connections} rejected since start (maxclients)\n")
        out.append("Memory and persistence\n", style="bold")
        out.append(f"  used {human_bytes(data.used_memory)} of {human_bytes(data.maxmemory) if data.maxmemory else 'no limit'}"
                   f" ({data.maxmemory_policy}), fragmentation {data.fragmentation or 0:.2f}, {data.keys} keys\n")
        out.append(f"  RDB last save {data.rdb_last_bgsave_status}, {data.rdb_changes_since_last_save} changes since;"
                   f" AOF {'on, writes ' + str(data.aof_last_write_status) if data.aof_enabled else 'off'}\n")
        return out

    def _sentinel_text(self, topo: RedisTopology, health: ClusterHealth) -> Text:
        out = Text()
        opts = self.ref.cluster.redis
        out.append(f"master {opts.master_name if opts else '?'}: {topo.sentinel_master or 'unknown'}\n", style="bold")
        for n in topo.nodes:
            if n.kind != "sentinel":
                continue
            d = n.data
            if isinstance(d, SentinelData):
                out.append(f"  {n.name:<4} ", style="bold")
                out.append(f"{d.master_address} [{d.master_flags}] {d.num_replicas} replicas, "
                           f"{d.num_other_sentinels + 1} sentinels, quorum {d.quorum}: ")
                out.append("CKQUORUM OK" if d.ckquorum_ok else f"CKQUORUM: {d.ckquorum_message}",
                           style="green" if d.ckquorum_ok else "bold red")
                out.append("\n")
                for addr, flags in d.replicas:
                    out.append(f"       replica {addr} [{flags}]\n", style="dim")
            else:
                out.append(f"  {n.name:<6} {n.reachability.value}: {n.error}\n", style="bold red")
        return out

    def _draw_status(self, health: ClusterHealth, mh: MemberHealth | None) -> None:
        parts = self.member_status(mh)
        self.show_status(parts, first_problem(health.metrics))

    # -- actions -------------------------------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "nodes" and event.row_key is not None and str(event.row_key.value) != self.member:
            self.pick_member(str(event.row_key.value))
