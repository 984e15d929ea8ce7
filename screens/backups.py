"""`B`: the Backups pane. One row per cluster and kind of backup: how old the newest is against
the cluster's target (severity coloured), its size and the size trend, how many, the WAL archive's
age (pgBackRest) or how far back point-in-time recovery falls short (RDS's LatestRestorableTime),
the bucket's versioning / Object Lock; below, the highlighted row's findings and recent backups.
RDS and ElastiCache snapshots are rows like any other ("rds-snapshot", "elasticache-snapshot");
a snapshot whose time AWS does not report shows "no time", never an invented age.

It reads the poller hub's backup watcher (dbops.platform.backups, refreshed off the UI thread
every backups.refresh_seconds) and judges that against the app's clock; `r` asks the watcher to
re-read now. Nothing here calls a server.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from dbops.model import ClusterHealth, Severity, human_bytes, human_seconds
from dbops.platform.backups import (
    ELASTICACHE_KIND,
    PGBACKREST_KIND,
    RDS_KIND,
    ClusterBackups,
    KindState,
    has_backups,
)

from .render import SEVERITY_STYLE, sparkline
from .tables import PaneTable, cursor_key

COLUMNS = (("cluster", "Cluster"), ("kind", "Kind"), ("age", "Newest"), ("size", "Size"), ("trend", "Trend"),
           ("count", "#"), ("wal", "WAL"), ("bucket", "Bucket"))
TREND_WIDTH = 6
# What is left of 80 columns once the other columns have their widest usual values.
CLUSTER_WIDTH = 16
DETAIL_LINES = 9
# Kinds whose backups are not in the [backups] s3 bucket: the Bucket column says where they are.
NOT_IN_BUCKET = {PGBACKREST_KIND: "repo", RDS_KIND: "aws", ELASTICACHE_KIND: "aws"}


class BackupTable(PaneTable):
    DEFAULT_ID = "backups-table"
    DEFAULT_CSS = """
    BackupTable { height: 1fr; min-height: 5; }
    """
    COLUMNS = COLUMNS


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def cluster_labels(refs: list[Any]) -> dict[str, str]:
    """The Cluster column's text per cluster key: its name, or, when another environment has a
    cluster of that name too, the environment's first letters before it ("prod/orders",
    "stag/orders"): two rows that read the same would hide which one has no backup."""
    names = [r.name for r in refs]
    return {r.key: _short(r.name if names.count(r.name) == 1 else f"{r.environment[:4]}/{r.name}", CLUSTER_WIDTH) for r in refs}


def bucket_cell(protection: dict[str, Any] | None) -> Text:
    if protection is None:
        return Text("-", style="dim")
    versioned = protection.get("versioning") == "Enabled"
    lock = protection.get("object_lock")
    locked = bool(lock and lock.get("enabled"))
    text = ("ver" if versioned else "UNVER") + (" lock" if locked else "")
    return Text(text, style="green" if versioned else "bold yellow")


class BackupsScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("q", "back", "Back", show=False),
        Binding("r", "refresh", "Re-read now"),
    ]

    DEFAULT_CSS = """
    BackupsScreen #backups-title { height: 1; padding: 0 1; }
    BackupsScreen #backups-detail { height: auto; max-height: 10; padding: 0 1; border-top: solid $primary; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._detail: dict[str, Text] = {}

    def compose(self) -> ComposeResult:
        yield Static("", id="backups-title")
        yield BackupTable()
        yield Static("", id="backups-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.redraw()
        self.query_one(BackupTable).focus()

    # -- updates -----------------------------------------------------------------------------

    def health_changed(self, changed: dict[str, ClusterHealth]) -> None:
        self.redraw()

    def on_screen_resume(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        hub = self.app.hub
        now = self.app.clock()
        rows: dict[str, tuple[Any, ...]] = {}
        detail: dict[str, Text] = {}
        worst: list[Severity] = []
        labels = cluster_labels(hub.refs)
        for ref in hub.refs:
            if not has_backups(ref):
                key = f"{ref.key}|-"
                # Not "none": nobody told dbops where this cluster's backups are, which is not
                # the same as there being none.
                rows[key] = (Text(labels[ref.key]), Text("not set up", style="dim"), Text("-", style="dim"),
                             "", "", "", "", Text("-", style="dim"))
                detail[key] = Text(f"{ref.key}: no [backups] s3, [pgbackrest], [rds] or [elasticache] configured: "
                                   "dbops cannot see its backups", style="dim")
                continue
            state = hub.backup_state(ref.key, now)
            if state is None:
                key = f"{ref.key}|…"
                rows[key] = (Text(labels[ref.key]), Text("…", style="dim"), Text("reading", style="dim"),
                             "", "", "", "", Text("…", style="dim"))
                detail[key] = Text(f"{ref.key}: reading the backup state …", style="dim")
                continue
            worst.append(state.severity)
            if not state.kinds:
                key = f"{ref.key}|-"
                sev = state.severity
                rows[key] = (Text(labels[ref.key]), Text("-"), Text(" none " if sev is Severity.CRIT else " ? ",
                             style=SEVERITY_STYLE[sev]), "", "", "0", "", bucket_cell(state.protection))
                detail[key] = self._detail_text(ref.key, None, state)
            for k in state.kinds:
                key = f"{ref.key}|{k.kind}"
                rows[key] = self._cells(labels[ref.key], k, state)
                detail[key] = self._detail_text(ref.key, k, state)
        self._sync(rows)
        self._detail = detail
        overall = Severity.worst(worst, Severity.OK) if worst else None
        title = Text("Backups ", style="bold")
        if overall is not None:
            title.append(f" {overall.name} ", style=SEVERITY_STYLE[overall])
        title.append("  newest per cluster and kind · r re-reads", style="dim")
        self.query_one("#backups-title", Static).update(title)
        self._show_detail()

    def _cells(self, cluster: str, k: KindState, state: ClusterBackups) -> tuple[Any, ...]:
        age_sev = next((m.severity for m in k.metrics if m.name.endswith(".age") and not m.name.startswith("backup.wal")),
                       k.severity)
        if k.age_seconds is not None:
            age = Text(human_seconds(k.age_seconds), style=SEVERITY_STYLE[age_sev])
        elif k.newest is not None:  # there is one, and its source does not say when it was taken
            age = Text("no time", style="dim")
        else:
            age = Text("none", style=SEVERITY_STYLE[age_sev])
        size = human_bytes(k.newest.size) if k.newest else "-"
        size_sev = next((m.severity for m in k.metrics if m.name.endswith(".size")), Severity.OK)
        wal = Text("-", style="dim")
        if k.wal_checked:
            wal_sev = next((m.severity for m in k.metrics if m.name == "backup.wal.age"), Severity.OK)
            wal = Text(human_seconds(k.wal_age_seconds) if k.wal_age_seconds is not None else "none",
                       style=SEVERITY_STYLE[wal_sev])
        bucket = bucket_cell(state.protection) if k.kind not in NOT_IN_BUCKET else Text(NOT_IN_BUCKET[k.kind], style="dim")
        return (
            Text(cluster),
            Text(_short(k.kind, 11)),
            age,
            Text(size, style="" if size_sev is Severity.OK else SEVERITY_STYLE[size_sev]),
            sparkline(list(k.sizes), TREND_WIDTH),
            f"{k.count}{'+' if k.more else ''}",
            wal,
            bucket,
        )

    @staticmethod
    def _detail_text(key: str, k: KindState | None, state: ClusterBackups) -> Text:
        out = Text()
        if k is not None:
            out.append(f"{key} {k.kind} ", style="bold")
            out.append(f"from {k.source}\n", style="dim")
            metrics = list(k.metrics)
        else:
            out.append(f"{key}\n", style="bold")
            metrics = []
        # The cluster's own findings too: a source that cannot be read, the bucket (not for
        # pgBackRest or AWS snapshots, which are not in that bucket).
        metrics += [m for m in state.metrics if m.name in ("backup.source", "backup.none")
                    or (m.name == "backup.bucket" and (k is None or k.kind not in NOT_IN_BUCKET))]
        for m in sorted(metrics, key=lambda m: -m.severity.rank):
            out.append(f" {m.severity.name:<4} ", style=SEVERITY_STYLE[m.severity])
            out.append(f" {m.message.split(': ', 1)[-1]}\n")
        if k is not None:
            for e in k.recent:
                when = e.created.strftime("%Y-%m-%d %H:%MZ") if e.created else "time not reported"
                line = f"  {when}  {human_bytes(e.size):>9}  {e.detail + ' ' if e.detail else ''}{e.name}"
                out.append(line + (f"  ({e.missing})" if e.missing else "") + "\n", style="red" if e.missing else "")
        out.rstrip()
        return out

    def _sync(self, rows: dict[str, tuple[Any, ...]]) -> None:
        table = self.query_one(BackupTable)
        if list(rows) != list(table.shown):
            selected = self._selected()
            table.clear()
            for key, cells in rows.items():
                table.add_row(*cells, key=key)
            if selected in rows:
                table.move_cursor(row=list(rows).index(selected), animate=False)
        else:
            for key, cells in rows.items():
                for (col, _), new, old in zip(COLUMNS, cells, table.shown[key]):
                    if new != old:
                        table.update_cell(key, col, new, update_width=True)
        table.shown = rows

    def _selected(self) -> str | None:
        return cursor_key(self.query_one(BackupTable))

    def _show_detail(self) -> None:
        key = self._selected()
        text = self._detail.get(key, Text("")) if key else Text("no clusters configured", style="dim")
        lines = text.split("\n")
        if len(lines) > DETAIL_LINES:
            text = Text("\n").join(lines[:DETAIL_LINES])
        self.query_one("#backups-detail", Static).update(text)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    # -- actions -----------------------------------------------------------------------------

    def action_refresh(self) -> None:
        self.app.hub.refresh_backups()
        self.notify("re-reading the backup state …", timeout=3)

    def action_back(self) -> None:
        self.app.pop_screen()
