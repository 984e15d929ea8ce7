"""The Kubernetes pane (key K): for every cluster with a [kubernetes] section, its pods and
StatefulSets, its backup CronJobs (last run, last success), recent Warning events and its
CloudNativePG Cluster's state, with what is wrong on top.

The API is read by a thread worker (dbops.platform.kubernetes.read_all, one cluster per thread);
a one-shot timer starts the next refresh only after the previous one finished, so refreshes
never overlap however slow the API is. A cluster whose API cannot be read keeps its last values
on screen, with their age and the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from dbops.config import ClusterRef
from dbops.model import Severity, human_seconds

# The readers and the verdict live in the core: `dbops check` judges with the same ones.
from dbops.platform.kubernetes import k8s_refs, read_all, verdict

from .periodic import PeriodicReads
from .render import SEVERITY_STYLE
from .tables import sync_rows

# The cluster goes last: with one cluster configured it says nothing new, and at 80 columns
# what is cut off should be that.
POD_COLUMNS = (("key", "Pod"), ("phase", "Phase"), ("ready", "Ready"), ("restarts", "Restarts"), ("node", "Node"),
               ("age", "Age"), ("cluster", "Cluster"))
SET_COLUMNS = (("key", "StatefulSet"), ("ready", "Ready"), ("updated", "Updated"), ("age", "Age"), ("cluster", "Cluster"))
CRON_COLUMNS = (("key", "CronJob"), ("schedule", "Schedule"), ("suspend", "Suspended"), ("scheduled", "Last run"),
                ("success", "Last success"), ("active", "Active"), ("cluster", "Cluster"))
EVENT_COLUMNS = (("key", "Object: reason"), ("age", "Age"), ("count", "Count"), ("message", "Message"), ("cluster", "Cluster"))
TABLES = {"pods": POD_COLUMNS, "sets": SET_COLUMNS, "cronjobs": CRON_COLUMNS, "events": EVENT_COLUMNS}


@dataclass
class ClusterK8s:
    """The newest good view of a cluster and the newest error (None once a read succeeds)."""

    ref: ClusterRef
    view: Any = None  # dbops.platform.kubernetes.KubernetesView
    error: str | None = None
    error_at: float = 0.0


def _cell(value: Any, style: str = "") -> Text:
    # Text, not str: a DataTable parses str cells as markup, and these values are the cluster's.
    return Text("" if value is None else str(value), style=style, no_wrap=True, overflow="ellipsis")


def _ago(t: datetime | None, now: datetime) -> str:
    return "never" if t is None else f"{human_seconds(max(0.0, (now - t).total_seconds()))} ago"


class KubernetesScreen(PeriodicReads, Screen[None]):
    """Pods, StatefulSets, backup CronJobs and Warning events of the clusters on Kubernetes;
    `1`-`4` switch tabs, `r` refreshes, `escape` goes back."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("q", "back", "Back", show=False),
        Binding("r", "refresh", "Refresh"),
        Binding("1", "tab('k8s-pods')", "Pods", show=False),
        Binding("2", "tab('k8s-sets')", "StatefulSets", show=False),
        Binding("3", "tab('k8s-cronjobs')", "CronJobs", show=False),
        Binding("4", "tab('k8s-events')", "Events", show=False),
    ]

    DEFAULT_CSS = """
    KubernetesScreen #k8s-summary { height: auto; max-height: 9; padding: 0 1; }
    KubernetesScreen TabbedContent { height: 1fr; }
    KubernetesScreen DataTable { height: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.clusters: dict[str, ClusterK8s] = {}
        self._cells: dict[str, dict[str, tuple[Any, ...]]] = {name: {} for name in TABLES}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(Text("reading the Kubernetes API ...", style="dim"), id="k8s-summary")
        with TabbedContent(initial="k8s-pods"):
            with TabPane("1 Pods", id="k8s-pods"):
                yield DataTable(id="k8s-pods-table", cursor_type="row", zebra_stripes=True)
            with TabPane("2 StatefulSets", id="k8s-sets"):
                yield DataTable(id="k8s-sets-table", cursor_type="row", zebra_stripes=True)
            with TabPane("3 Backup CronJobs", id="k8s-cronjobs"):
                yield DataTable(id="k8s-cronjobs-table", cursor_type="row", zebra_stripes=True)
            with TabPane("4 Warnings", id="k8s-events"):
                yield DataTable(id="k8s-events-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "Kubernetes"
        for name, columns in TABLES.items():
            table = self.query_one(f"#k8s-{name}-table", DataTable)
            for key, label in columns:
                table.add_column(label, key=key)
        refs = k8s_refs(self.app.refs())
        self.clusters = {r.key: ClusterK8s(r) for r in refs}
        self.begin_reads(refs, "No cluster has a [kubernetes] section. Add one to a cluster:\n"
                               "[environments.ENV.clusters.NAME.kubernetes] namespace = \"...\", selector = \"app=...\"")

    # -- refresh -------------------------------------------------------------------------------

    READ_GROUP = "k8s-refresh"
    READ_WHAT = "the Kubernetes API"
    MIN_INTERVAL = 10.0
    SUMMARY_ID = "k8s-summary"

    def start_read(self, refs: list[ClusterRef]) -> None:
        self.run_worker(lambda: read_all(refs), name="k8s-refresh", group=self.READ_GROUP,
                        description="read pods, StatefulSets, CronJobs and events", thread=True, exit_on_error=False)

    def read_done(self, result: Any) -> None:
        for key, view, error in result or []:
            state = self.clusters[key]
            if view is not None:
                state.view, state.error = view, None
            else:
                state.error, state.error_at = error, time.time()
        self._show()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_back(self) -> None:
        self.app.pop_screen()

    # -- drawing -------------------------------------------------------------------------------

    def _show(self) -> None:
        now = datetime.now(UTC)
        summary = Text()
        rows: dict[str, dict[str, tuple[Any, ...]]] = {name: {} for name in TABLES}
        for state in self.clusters.values():
            ref, view = state.ref, state.view
            kube = ref.cluster.kubernetes
            assert kube is not None
            worst, findings = verdict(ref, view, state.error)
            summary.append(f" {worst.name:<4} ", style=SEVERITY_STYLE[worst])
            summary.append(f" {ref.key}", style="bold")
            summary.append(f"  ns {kube.namespace}")
            if view is not None:
                ready = sum(1 for p in view.pods if p.phase == "Running" and p.ready == p.containers)
                summary.append(f" · pods {ready}/{len(view.pods)} ready")
                if view.cnpg is not None:
                    summary.append(f" · CNPG {view.cnpg.name}: primary {view.cnpg.current_primary or '?'}"
                                   f", {view.cnpg.ready_instances}/{view.cnpg.instances} ready")
            summary.append("\n")
            if state.error:
                shown = f"; showing values from {human_seconds(time.time() - view.taken_at)} ago" if view is not None else ""
                summary.append(f"   {state.error}{shown}\n", style="red")
            # At 80x24 the summary has about nine lines for every cluster together.
            room = max(2, 6 // len(self.clusters))
            for severity, line in findings[:room]:
                summary.append(f"   {line}\n", style="yellow" if severity is Severity.WARN else ("red" if severity is Severity.CRIT else "magenta"))
            if len(findings) > room:
                summary.append(f"   … and {len(findings) - room} more\n", style="dim")
            if view is not None:
                self._rows(ref.key, view, now, rows)
        summary.append(f"read {now:%H:%M:%S} UTC · refresh every {self.read_interval():g}s · r refreshes now · 1-4 tabs", style="dim")
        self.show_summary(summary)
        with self.app.batch_update():
            for name, columns in TABLES.items():
                order = {k: n for n, k in enumerate(rows[name])}
                sync_rows(self.query_one(f"#k8s-{name}-table", DataTable), columns, rows[name], self._cells[name],
                          order=lambda k, order=order: order.get(k, len(order)))  # type: ignore[misc]

    def _rows(self, cluster: str, view: Any, now: datetime, rows: dict[str, dict[str, tuple[Any, ...]]]) -> None:
        # Row keys are the object's name (the first column), prefixed by the cluster only when
        # several clusters are shown, so that two clusters' "orders-1" pods stay two rows.
        prefix = f"{cluster}:" if len(self.clusters) > 1 else ""
        for p in view.pods:
            ok = p.phase in ("Running", "Succeeded") and (p.ready == p.containers or p.phase == "Succeeded")
            rows["pods"][prefix + p.name] = (
                _cell(prefix + p.name), _cell(p.phase + (f" ({p.reason})" if p.reason else ""), "green" if ok else "bold red"),
                _cell(f"{p.ready}/{p.containers}", "" if ok else "red"), _cell(p.restarts, "yellow" if p.restarts else ""),
                _cell(p.node or "-"), _cell(human_seconds(p.age)), _cell(cluster))
        for s in view.statefulsets:
            rows["sets"][prefix + s.name] = (
                _cell(prefix + s.name), _cell(f"{s.ready}/{s.replicas}", "" if s.ready >= s.replicas else "bold red"),
                _cell(s.updated), _cell(human_seconds(s.age)), _cell(cluster))
        for c in view.cronjobs:
            rows["cronjobs"][prefix + c.name] = (
                _cell(prefix + c.name), _cell(c.schedule), _cell("yes" if c.suspend else "no", "yellow" if c.suspend else ""),
                _cell(_ago(c.last_schedule, now)), _cell(_ago(c.last_success, now), "" if c.last_success else "yellow"), _cell(c.active),
                _cell(cluster))
        for e in view.events:
            # Kubernetes folds repeats of one reason on one object into one event (its count);
            # the newest comes first and wins.
            key = f"{prefix}{e.kind}/{e.name}: {e.reason}"
            if key in rows["events"]:
                continue
            rows["events"][key] = (_cell(key, "yellow"), _cell(human_seconds(e.age)), _cell(e.count), _cell(e.message), _cell(cluster))
