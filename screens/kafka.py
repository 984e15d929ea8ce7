"""The Kafka pane: brokers, then consumer groups with their lag (offsets, time, trend and the
Burrow-style status), the selected group's partitions, the cluster's partitions with leader,
replicas and ISR (problems first), and the judged problems."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable, Static

from dbops.engines.kafka.assess import STATUS_SEVERITY, as_seen, group_status
from dbops.engines.kafka.data import Group, KafkaData, Partition
from dbops.model import ClusterHealth, MemberHealth, Severity, human_seconds

from .pane import HEALTH_TAB, ClusterPane, static, tab
from .render import append_count, first_problem, health_text, severity_text, sparkline, state_text
from .tables import NodesTable, PaneTable, TabTable

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


class BrokerTable(NodesTable):
    COLUMNS = (("broker", "Broker"), ("sev", "Sev"), ("id", "Id"), ("role", "Role"), ("state", "State"),
               ("leads", "Leads"), ("replicas", "Replicas"), ("address", "Address"))


class GroupTable(PaneTable):
    """The consumer groups, above the selected group's partitions: as tall as its rows, up to 7."""

    DEFAULT_ID = "groups-table"
    DEFAULT_CSS = """
    GroupTable { height: auto; max-height: 7; }
    """
    COLUMNS = (("group", "Group"), ("status", "Status"), ("state", "State"), ("members", "Memb"), ("lag", "Lag"),
               ("time", "Lag time"), ("trend", "Trend"))


class GroupPartitionTable(TabTable):
    DEFAULT_ID = "gparts-table"
    COLUMNS = (("tp", "Partition"), ("status", "Status"), ("committed", "Committed"), ("end", "End"), ("lag", "Lag"),
               ("time", "Lag time"), ("owner", "Consumer"))


class PartitionTable(TabTable):
    DEFAULT_ID = "parts-table"
    COLUMNS = (("tp", "Partition"), ("problem", "Problem"), ("leader", "Leader"), ("replicas", "Replicas"), ("isr", "ISR"))


class KafkaScreen(ClusterPane):
    ENGINE = "Kafka"
    TOP = (BrokerTable,)
    TABS = (
        tab("groups", "Consumer groups", GroupTable, GroupPartitionTable, key_label="Groups"),
        tab("partitions", "Partitions", static("parts-note"), PartitionTable),
        HEALTH_TAB,
    )
    FOCUS = "#groups-table"
    FOCUS_FOLLOWS_TAB = True
    SHOW_ALL = "All partitions"  # False: only partitions with a problem

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.group: str | None = None  # whose partitions are shown

    def _data(self) -> KafkaData | None:
        return self.unit_values(KafkaData)

    # -- updates -------------------------------------------------------------------------------

    def redraw(self, health: ClusterHealth) -> None:
        data = self._data()
        self.sync_members(self.query_one(BrokerTable), health, lambda m, now: self._broker_row(m, data, now))
        groups = {g.group_id: g for g in data.groups} if data else {}
        if self.group not in groups:
            self.group = next(iter(groups), None)
        self._draw_groups(data)
        self._draw_group_partitions(data, groups.get(self.group) if self.group else None)
        self._draw_partitions(data)
        self.show_health(health_text(health))
        self._draw_status(health, data)

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
        self.query_one(GroupTable).sync_ranked(rows, order)

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
        self.query_one(GroupPartitionTable).sync_ranked(rows, order)

    def _draw_partitions(self, data: KafkaData | None) -> None:
        rows, order = {}, {}
        if data is not None:
            # As the pane's judgement sees them: a broker that does not answer is out of every ISR.
            seen = {(p.topic, p.partition): p for p in as_seen(data)}
            for t in data.topics:
                for p in (seen[(x.topic, x.partition)] for x in t.partitions):
                    rank, problem = partition_problem(p, t.min_isr)
                    if not rank and not self.show_all:
                        continue
                    key = f"{p.topic}/{p.partition}"
                    order[key] = (-rank, t.internal, p.topic, p.partition)
                    names = data.broker_name
                    rows[key] = (key, Text(problem, style="bold red" if rank >= 3 else "yellow" if rank == 2 else "dim"),
                                 names(p.leader) if not p.offline else "none",
                                 ",".join(names(r) for r in p.replicas), ",".join(names(r) for r in p.isr))
        self.query_one(PartitionTable).sync_ranked(rows, order)
        if data is None:
            note = Text("no refresh yet", style="dim")
        elif self.show_all:
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
            append_count(out, "under-replicated", under, "bold yellow")
            append_count(out, "offline", offline, "bold red")
            if data.active_controller is not None:
                out.append(f"  controller {data.broker_name(data.active_controller)}")
        self.show_status(out, first_problem(health.metrics))

    # -- actions -------------------------------------------------------------------------------

    def draw_filtered(self) -> None:
        self._draw_partitions(self._data())

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "groups-table" and event.row_key is not None and str(event.row_key.value) != self.group:
            self.group = str(event.row_key.value)
            data = self._data()
            self._draw_group_partitions(data, next((g for g in data.groups if g.group_id == self.group), None) if data else None)
