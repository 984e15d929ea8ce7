"""The Kafka pane: brokers, then consumer groups with their lag (offsets, time, trend and the
Burrow-style status), the selected group's partitions, the cluster's partitions with leader,
replicas and ISR (problems first), and the judged problems."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from dbops.engines.kafka.assess import STATUS_SEVERITY, as_seen, group_status
from dbops.engines.kafka.data import Group, KafkaData, Partition
from dbops.model import ClusterHealth, MemberHealth, Severity, human_seconds

from .pane import ClusterPane
from .render import SEVERITY_STYLE, health_text, severity_text, sparkline, state_text
from .tables import sync_rows
from .widgets import EnvBanner

BROKER_COLUMNS = (("broker", "Broker"), ("sev", "Sev"), ("id", "Id"), ("role", "Role"), ("state", "State"),
                  ("leads", "Leads"), ("replicas", "Replicas"), ("address", "Address"))
GROUP_COLUMNS = (("group", "Group"), ("status", "Status"), ("state", "State"), ("members", "Memb"), ("lag", "Lag"),
                 ("time", "Lag time"), ("trend", "Trend"))
GPART_COLUMNS = (("tp", "Partition"), ("status", "Status"), ("committed", "Committed"), ("end", "End"), ("lag", "Lag"),
                 ("time", "Lag time"), ("owner", "Consumer"))
PART_COLUMNS = (("tp", "Partition"), ("problem", "Problem"), ("leader", "Leader"), ("replicas", "Replicas"), ("isr", "ISR"))
STATUS_STYLE = {"OK": "green", "WARN": "bold yellow", "STALL": "bold white on red", "STOP": "bold white on red",
                "ERR": "bold white on red"}


def status_text(status: str | None) -> Text:
    return Text(status or "…", style=STATUS_STYLE.get(status or "", "dim"))


def partition_problem(p: Partition, min_isr: int | None) -> tuple[int, str]:
    """(rank, words) of a partition's worst problem: offline, below min ISR, under-replicated,
    not led by its preferred replica; rank 0 is fine."""
    if p.offline:
        return 4, "OFFLINE"
    if min_isr is not None and len(p.isr) < min_isr:
        return 3, f"ISR<{min_isr}"
    if p.under_replicated:
        return 2, "under-replicated"
    if p.error:
        return 2, p.error
    if not p.leader_is_preferred:
        return 1, "not preferred"
    return 0, ""


class KafkaScreen(ClusterPane):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("r", "runbooks", "Runbooks"),
        Binding("a", "all_partitions", "All partitions"),
        Binding("1", "tab('groups')", "Groups", show=False),
        Binding("2", "tab('partitions')", "Partitions", show=False),
        Binding("3", "tab('health')", "Health", show=False),
    ]

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.group: str | None = None  # whose partitions are shown
        self.all_partitions = False  # False: only partitions with a problem
        self._cells: dict[str, dict[str, tuple[Any, ...]]] = {"brokers": {}, "groups": {}, "gparts": {}, "parts": {}}
        self._order: dict[str, dict[str, Any]] = {"brokers": {}, "groups": {}, "gparts": {}, "parts": {}}

    def compose(self) -> ComposeResult:
        yield Header()
        yield EnvBanner(id="banner")
        yield DataTable(id="nodes", cursor_type="row")
        with TabbedContent(id="tabs", initial="groups"):
            with TabPane("1 Consumer groups", id="groups"):
                yield DataTable(id="groups-table", cursor_type="row")
                yield DataTable(id="gparts-table", cursor_type="row")
            with TabPane("2 Partitions", id="partitions"):
                yield Static(id="parts-note")
                yield DataTable(id="parts-table", cursor_type="row")
            with TabPane("3 Health", id="health"):
                with VerticalScroll():
                    yield Static(id="health-text")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"{self.ref.name} · Kafka"
        self.add_columns((("#nodes", BROKER_COLUMNS), ("#groups-table", GROUP_COLUMNS),
                          ("#gparts-table", GPART_COLUMNS), ("#parts-table", PART_COLUMNS)))
        self.show_banner()
        self.redraw(self.app.hub.cluster_health(self.key))
        self.query_one("#groups-table", DataTable).focus()

    def _data(self) -> KafkaData | None:
        return self.unit_values(KafkaData)

    # -- updates -------------------------------------------------------------------------------

    def redraw(self, health: ClusterHealth) -> None:
        data = self._data()
        self._draw_brokers(health, data)
        groups = {g.group_id: g for g in data.groups} if data else {}
        if self.group not in groups:
            self.group = next(iter(groups), None)
        self._draw_groups(data)
        self._draw_group_partitions(data, groups.get(self.group) if self.group else None)
        self._draw_partitions(data)
        self.query_one("#health-text", Static).update(health_text(health) or Text("nothing to report", style="green"))
        self._draw_status(health, data)

    def _sync(self, name: str, table_id: str, columns: Any, rows: dict[str, tuple[Any, ...]], order: dict[str, Any]) -> None:
        self._order[name] = order
        sync_rows(self.query_one(table_id, DataTable), columns, rows, self._cells[name], order=lambda k: order.get(k, 0))

    def _draw_brokers(self, health: ClusterHealth, data: KafkaData | None) -> None:
        rows, order = {}, {}
        now = self.app.clock()
        for i, m in enumerate(health.members):
            order[m.name] = i
            rows[m.name] = self._broker_row(m, data, now)
        self._sync("brokers", "#nodes", BROKER_COLUMNS, rows, order)

    @staticmethod
    def _broker_row(m: MemberHealth, data: KafkaData | None, now: float) -> tuple[Any, ...]:
        snap = m.snapshot
        state = state_text(snap, now)
        b = next((b for b in data.brokers if b.name == m.name), None) if data else None
        if data is None or b is None:
            return (m.name, severity_text(m.severity), "-", m.role, state, "-", "-", "-")
        parts = data.partitions()
        leads = sum(1 for p in parts if p.leader == b.node_id) if b.up else 0
        replicas = sum(1 for p in parts if b.node_id in p.replicas)
        return (m.name, severity_text(m.severity), str(b.node_id) if b.node_id is not None else "?", m.role, state,
                str(leads), str(replicas), b.address)

    def _draw_groups(self, data: KafkaData | None) -> None:
        rows, order = {}, {}
        for i, g in enumerate(data.groups if data else ()):
            status, _ = group_status(g, data.window)  # type: ignore[union-attr]
            # Worst first: an operator looks for the group in trouble.
            order[g.group_id] = (-STATUS_SEVERITY.get(status or "OK", Severity.OK).rank, i)
            lag = g.total_lag
            secs = g.max_lag_seconds
            at_least = any(p.lag_seconds_at_least for p in g.partitions if p.lag_seconds == secs)
            rows[g.group_id] = (g.group_id, status_text(status), g.state, str(len(g.members)),
                                str(lag) if lag is not None else "-",
                                (">=" if at_least else "") + human_seconds(secs) if secs is not None else "-",
                                Text(sparkline(list(g.trend), 12), style="cyan"))
        self._sync("groups", "#groups-table", GROUP_COLUMNS, rows, order)

    def _draw_group_partitions(self, data: KafkaData | None, g: Group | None) -> None:
        rows, order = {}, {}
        if data is not None and g is not None:
            _, judged = group_status(g, data.window)
            for i, (p, status, _why) in enumerate(judged):
                key = f"{p.topic}/{p.partition}"
                order[key] = i
                secs = human_seconds(p.lag_seconds) if p.lag_seconds is not None else "-"
                rows[key] = (key, status_text(status), str(p.committed) if p.committed is not None else "none",
                             str(p.end) if p.end is not None else "?", str(p.lag) if p.lag is not None else "-",
                             (">=" if p.lag_seconds_at_least else "") + secs, p.owner or "-")
        self._sync("gparts", "#gparts-table", GPART_COLUMNS, rows, order)

    def _draw_partitions(self, data: KafkaData | None) -> None:
        rows, order = {}, {}
        if data is not None:
            # As the pane's judgement sees them: a broker that does not answer is out of every ISR.
            seen = {(p.topic, p.partition): p for p in as_seen(data)}
            for t in data.topics:
                for p in (seen[(x.topic, x.partition)] for x in t.partitions):
                    rank, problem = partition_problem(p, t.min_isr)
                    if not rank and not self.all_partitions:
                        continue
                    key = f"{p.topic}/{p.partition}"
                    order[key] = (-rank, t.internal, p.topic, p.partition)
                    names = data.broker_name
                    rows[key] = (key, Text(problem, style="bold red" if rank >= 3 else "yellow" if rank == 2 else "dim"),
                                 names(p.leader) if not p.offline else "none",
                                 ",".join(names(r) for r in p.replicas), ",".join(names(r) for r in p.isr))
        self._sync("parts", "#parts-table", PART_COLUMNS, rows, order)
        if data is None:
            note = Text("no refresh yet", style="dim")
        elif self.all_partitions:
            note = Text("all partitions, problems first (a: only those with a problem)", style="dim")
        elif not rows:
            note = Text("all fully replicated and led by their preferred replica (a: show all)", style="green")
        else:
            note = Text("partitions with a problem (a: show all)", style="dim")
        self.query_one("#parts-note", Static).update(note)

    def _draw_status(self, health: ClusterHealth, data: KafkaData | None) -> None:
        out = Text()
        if data is not None:
            parts = as_seen(data)
            under = sum(1 for p in parts if p.under_replicated and not p.offline)
            offline = sum(1 for p in parts if p.offline)
            out.append(f"{len(data.topics)} topics, {len(parts)} partitions", style="bold")
            out.append(f"  under-replicated {under}", style="bold yellow" if under else "")
            out.append(f"  offline {offline}", style="bold red" if offline else "")
            if data.active_controller is not None:
                out.append(f"  controller {data.broker_name(data.active_controller)}")
        problems = [mt for mt in health.metrics if mt.severity is not Severity.OK]
        if problems:
            out.append(f"  {problems[0].message}", style=SEVERITY_STYLE[problems[0].severity])
        self.query_one("#status", Static).update(out)

    # -- actions -------------------------------------------------------------------------------

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_tab(self, tab: str) -> None:
        tabs = self.query_one("#tabs", TabbedContent)
        tabs.active = tab
        # Focus follows: a focused table left behind in a hidden pane would switch it back.
        self.set_focus(tabs.get_pane(tab).query("DataTable, VerticalScroll").first())

    def action_all_partitions(self) -> None:
        self.all_partitions = not self.all_partitions
        self._draw_partitions(self._data())

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "groups-table" and event.row_key is not None and str(event.row_key.value) != self.group:
            self.group = str(event.row_key.value)
            data = self._data()
            self._draw_group_partitions(data, next((g for g in data.groups if g.group_id == self.group), None) if data else None)

    def action_runbooks(self) -> None:
        self.app.open_runbooks(self.key)
