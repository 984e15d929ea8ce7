"""The AWS pane (key R): for every cluster with an [rds] section, its DB instance and read
replicas, its snapshots and its point-in-time window; for every redis cluster with an
[elasticache] section, its replication group, members and snapshots; what is wrong on top.

AWS is read off the UI thread (dbops.platform.aws_views.collect_all, one daemon thread per cluster); a one-shot
timer starts the next refresh only after the previous one finished, so refreshes never overlap
however slow AWS is. AWS throttles Describe* calls per account, so this pane refreshes at most
every MIN_INTERVAL (15) seconds (r refreshes now).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from dbops.model import Severity, human_seconds

# The readers live in the core: `dbops check` reads and judges with the same ones.
from dbops.platform.aws_views import aws_refs, collect_all

from .periodic import PeriodicReads
from .render import SEVERITY_STYLE, severity_text
from .tables import sync_rows

SNAPSHOTS_SHOWN = 8  # newest first; the rest is counted

INSTANCE_COLUMNS = (("id", "Instance"), ("role", "Role"), ("status", "Status"), ("lag", "Lag"), ("class", "Class"),
                    ("az", "AZ"), ("maz", "Multi-AZ"), ("version", "Engine"), ("endpoint", "Endpoint"))
SNAPSHOT_COLUMNS = (("id", "Snapshot"), ("type", "Type"), ("created", "Created (UTC)"), ("age", "Age"),
                    ("size", "Size"), ("status", "Status"))
MEMBER_COLUMNS = (("id", "Member"), ("role", "Role"), ("group", "Node group"), ("az", "AZ"), ("endpoint", "Endpoint"))


def _is_cache(view: Any) -> bool:
    return hasattr(view, "group")


def _cell(value: Any, style: str = "") -> Text:
    # Text, not str: a DataTable parses str cells as markup, and these values are AWS's.
    return Text("" if value is None else str(value), style=style, no_wrap=True, overflow="ellipsis")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _status_style(status: str) -> str:
    from dbops.platform.rds import status_severity

    return SEVERITY_STYLE[status_severity(status)] if status != "available" else "green"


def _title(view: Any, what: str) -> Text:
    """A section's first line (cluster · what · region) and, when AWS could not be read, why."""
    out = Text()
    out.append(view.cluster, style="bold")
    out.append(f" · {what} · {view.region}\n")
    if view.error:
        out.append(" CRIT ", style=SEVERITY_STYLE[Severity.CRIT])
        out.append(f" {view.error}\n")
    return out


def _findings(out: Text, view: Any, all_well: str) -> Text:
    """A view's findings, worst first (or `all_well` when there are none), then its notes."""
    for f in view.findings:
        out.append(f" {f.severity.name:<4} ", style=SEVERITY_STYLE[f.severity])
        out.append(f" {f.text}\n")
    if not view.findings:
        out.append(" OK   ", style=SEVERITY_STYLE[Severity.OK])
        out.append(f" {all_well}\n")
    for note in view.notes:
        out.append(f" note: {note}\n", style="dim")
    return out


class AwsScreen(PeriodicReads, Screen[None]):
    """Everything on AWS around the configured clusters; `r` refreshes, `escape` goes back."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("q", "back", "Back", show=False),
        Binding("r", "refresh", "Refresh"),
    ]

    DEFAULT_CSS = """
    AwsScreen #aws-summary { height: auto; padding: 0 1; }
    AwsScreen .aws-head { height: auto; padding: 0 1; }
    AwsScreen .aws-table { height: auto; max-height: 12; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.views: list[Any] = []  # the newest RdsView per cluster, in config order
        self._aws_cells: dict[str, dict[str, tuple[Any, ...]]] = {}
        self._aws_sections: list[str] = []  # cluster keys with a mounted section, in order

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(Text("reading AWS ...", style="dim"), id="aws-summary")
        yield VerticalScroll(id="aws-body")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "AWS · RDS, ElastiCache"
        self.begin_reads(aws_refs(self.app.refs()),
                         "No cluster has an [rds] or [elasticache] section. Add one to a postgres cluster:\n"
                         "[environments.ENV.clusters.NAME.rds] instance = \"DB instance identifier\"\n"
                         "or to a redis cluster:\n"
                         "[environments.ENV.clusters.NAME.elasticache] replication_group = \"group id\"")

    # -- refresh -------------------------------------------------------------------------------

    READ_GROUP = "aws-refresh"
    READ_WHAT = "AWS"
    MIN_INTERVAL = 15.0
    SUMMARY_ID = "aws-summary"

    def start_read(self, refs: list[Any]) -> None:
        self.run_worker(collect_all(refs), name="aws-refresh", group=self.READ_GROUP,
                        description="read RDS instances, snapshots and restore windows", exit_on_error=False)

    def read_done(self, result: Any) -> None:
        self.views = list(result or [])
        self._show()

    def action_back(self) -> None:
        self.app.pop_screen()

    # -- drawing -------------------------------------------------------------------------------

    def _show(self) -> None:
        now = datetime.now(UTC)
        summary = Text()
        for view in self.views:
            summary.append_text(severity_text(view.severity))
            if _is_cache(view):
                counts = "" if view.error else f": {len(view.members)} member(s), {len(view.snapshots)} snapshot(s)"
                summary.append(f" {view.cluster} · {view.group}{counts}\n")
            else:
                counts = "" if view.error else f": {len(view.instances)} instance(s), {len(view.snapshots)} snapshot(s)"
                summary.append(f" {view.cluster} · {view.instance}{counts}\n")
        summary.append(f"read {now:%H:%M:%S} UTC · refresh every {self.read_interval():g}s · r refreshes now", style="dim")
        self.show_summary(summary)
        with self.app.batch_update():
            for i, view in enumerate(self.views):
                self._section(i, view)

    def _section(self, i: int, view: Any) -> None:
        body = self.query_one("#aws-body", VerticalScroll)
        if view.cluster not in self._aws_sections:
            self._aws_sections.append(view.cluster)
            inst = DataTable(id=f"aws-{i}-members", cursor_type="row", classes="aws-table")
            snaps = DataTable(id=f"aws-{i}-snapshots", cursor_type="row", classes="aws-table")
            body.mount(Static(id=f"aws-{i}-head", classes="aws-head"), inst,
                       Static(id=f"aws-{i}-snaphead", classes="aws-head"), snaps)
            for key, label in (MEMBER_COLUMNS if _is_cache(view) else INSTANCE_COLUMNS):
                inst.add_column(label, key=key)
            for key, label in SNAPSHOT_COLUMNS:
                snaps.add_column(label, key=key)
            self._aws_cells[f"{i}-members"] = {}
            self._aws_cells[f"{i}-snapshots"] = {}
        if _is_cache(view):
            self.query_one(f"#aws-{i}-head", Static).update(self._cache_head(view))
            self._cache_members(i, view)
            self._cache_snapshots(i, view)
        else:
            self.query_one(f"#aws-{i}-head", Static).update(self._head(view))
            self._instances(i, view)
            self._snapshots(i, view)

    def _head(self, view: Any) -> Text:
        out = _title(view, f"RDS {view.instance}")
        if view.error:
            return out
        earliest = _when(view.earliest_restorable) if view.earliest_restorable else "not reported"
        if view.latest_restorable is not None:
            ago = human_seconds(max(0.0, (view.read_at - view.latest_restorable).total_seconds()))
            latest = f"{_when(view.latest_restorable)} ({ago} ago)"
        else:
            latest = "not reported"
        out.append(f"point-in-time window: earliest {earliest} · latest {latest}\n")
        return _findings(out, view, "available, backed up, newest snapshot within backups.max_age_seconds")

    def _put_rows(self, table: str, columns: tuple[tuple[str, str], ...], rows: dict[str, tuple[Any, ...]]) -> None:
        """Rows keyed by AWS's identifiers into table `aws-<table>`, in the order given."""
        order = {k: n for n, k in enumerate(rows)}
        sync_rows(self.query_one(f"#aws-{table}", DataTable), columns, rows, self._aws_cells[table],
                  order=lambda k: order.get(k, len(order)))

    def _put_snapshots(self, i: int, view: Any, automated: Callable[[Any], bool],
                       row: Callable[[Any], tuple[str, tuple[Any, ...]]]) -> None:
        """The newest SNAPSHOTS_SHOWN of a view's snapshots (row(s): its key and cells), under a
        head that counts them all."""
        shown = view.snapshots[:SNAPSHOTS_SHOWN]
        total, auto = len(view.snapshots), sum(1 for s in view.snapshots if automated(s))
        head = Text(f"snapshots: {auto} automated, {total - auto} other", style="bold")
        if total > len(shown):
            head.append(f" · newest {len(shown)} shown", style="dim")
        self.query_one(f"#aws-{i}-snaphead", Static).update(head)
        self._put_rows(f"{i}-snapshots", SNAPSHOT_COLUMNS, dict(row(s) for s in shown))

    def _instances(self, i: int, view: Any) -> None:
        rows: dict[str, tuple[Any, ...]] = {}
        for inst in view.instances:
            if inst.is_replica:
                role = "replica" if inst.source == view.instance else f"replica of {inst.source}"
            else:
                role = "primary" if inst.id == view.instance else "standalone"
            rows[inst.id] = (
                _cell(inst.id), _cell(role), _cell(inst.status, _status_style(inst.status)),
                _cell(inst.lag_text, "dim" if inst.lag_seconds is None else ""), _cell(inst.instance_class), _cell(inst.az),
                _cell("yes" if inst.multi_az else "no"), _cell(f"{inst.engine} {inst.engine_version}".strip()),
                _cell(inst.endpoint or "-"),
            )
        self._put_rows(f"{i}-members", INSTANCE_COLUMNS, rows)

    def _snapshots(self, i: int, view: Any) -> None:
        def row(s: Any) -> tuple[str, tuple[Any, ...]]:
            age = human_seconds(max(0.0, (view.read_at - s.created).total_seconds())) if s.created else "in progress"
            return s.id, (_cell(s.id), _cell(s.type), _cell(_when(s.created)), _cell(age),
                          _cell(f"{s.size_gib} GiB" if s.size_gib is not None else "-"),
                          _cell(s.status, "green" if s.status == "available" else "yellow"))

        self._put_snapshots(i, view, lambda s: s.type == "automated", row)

    # -- ElastiCache -----------------------------------------------------------------------------

    def _cache_head(self, view: Any) -> Text:
        out = _title(view, f"ElastiCache {view.group}")
        if view.error:
            return out
        retention = "not reported" if view.retention_days is None else f"{view.retention_days} day(s)"
        out.append(f"{view.status} · {view.engine} {view.node_type} · automatic failover {view.automatic_failover or '-'} · "
                   f"Multi-AZ {view.multi_az or '-'} · snapshots kept {retention}\n")
        return _findings(out, view, "available, snapshotted, newest snapshot within backups.max_age_seconds")

    def _cache_members(self, i: int, view: Any) -> None:
        rows = {m.cluster_id: (_cell(m.cluster_id), _cell(m.role or "-"), _cell(m.node_group or "-"), _cell(m.az or "-"),
                               _cell(m.endpoint or "-")) for m in view.members}
        self._put_rows(f"{i}-members", MEMBER_COLUMNS, rows)

    def _cache_snapshots(self, i: int, view: Any) -> None:
        def row(s: Any) -> tuple[str, tuple[Any, ...]]:
            if s.created is not None:
                created, age = _when(s.created), human_seconds(max(0.0, (view.read_at - s.created).total_seconds()))
            else:
                created, age = "not reported", "-"
            return s.name, (_cell(s.name), _cell(s.source), _cell(created, "" if s.created else "dim"), _cell(age), _cell("-"),
                            _cell(s.status, "green" if s.status == "available" else "yellow"))

        self._put_snapshots(i, view, lambda s: s.source == "automated", row)
