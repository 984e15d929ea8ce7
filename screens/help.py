"""`?`: what every key does and what the colours mean."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = (
    ("Everywhere", [("?", "this help"), ("ctrl+p", "command palette: open a cluster, audit log, pause"), ("p", "pause / resume refresh"), ("A", "audit log (verifies the hash chain)"), ("B", "backups: newest per cluster and kind, age vs target"), ("R", "AWS: RDS instances, replicas, snapshots, PITR; ElastiCache"), ("K", "Kubernetes: pods, StatefulSets, backup CronJobs, Warning events, CNPG"), ("V", "approvals: runs waiting for a second operator"), ("D", "DR drill: pick one, run it, RTO/RPO and a report"), ("T", "timeline: state changes, alerts, actions, notes on one clock"), ("n", "a note on the timeline"), ("q", "quit")]),
    ("Replay (dbops replay)", [("p", "play / pause"), (". ,", "next / previous event"), ("+ -", "faster / slower"), ("g", "go to a typed time"),
                               ("enter", "on a timeline line: go to that moment")]),
    ("Approvals", [("↑ ↓", "pick a run: its plan shows below"), ("a", "approve the plan (as you; never your own run)"), ("r", "read again now"), ("escape", "back")]),
    ("Drill", [("↑ ↓", "pick a drill and a cluster; its plan shows below"), ("s", "start it (the fault asks its own confirmation)"),
               ("↑ ↓ / n or enter", "pick a phase / note on it (in the report)"),
               ("x", "abort: the fault is healed, the restore phase runs"), ("escape", "back (not while a drill runs)")]),
    ("Overview", [("↑ ↓", "move from cluster to cluster"), ("enter", "open the cluster's pane (on a folded group: unfold it)"),
                  ("space", "fold / unfold the cursor's environment"),
                  ("/", "filter as you type: name, environment or engine (enter keeps it, escape drops it)"),
                  (":", "command: :pg :redis :kafka :neo4j :qdrant, :env NAME (prod for production), "
                        ":cluster GLOB (orders-*), :problems, :all (clear every filter), :alerts"),
                  ("a", "problems only: every cluster not OK, or all again"), ("s", "sort: severity, name, engine"),
                  ("escape", "clear the / and : filters")]),
    ("Kubernetes pane", [("1-4", "tabs: pods, StatefulSets, backup CronJobs, Warning events"), ("r", "read the API again now"),
                         ("escape", "back")]),
    ("AWS pane", [("r", "read AWS again now (it refreshes itself, at most every 15 s)"), ("escape", "back")]),
    ("Backups pane", [("↑ ↓", "pick a row: its recent backups and findings show below"), ("r", "re-read the backup state now"),
                      ("escape", "back")]),
    (
        "PostgreSQL pane",
        [
            ("escape", "back to the overview (or close the filter)"),
            ("enter on a member", "show that member's activity, statements, slots"),
            ("m", "next member"),
            ("1-5", "tabs: activity, blocking, statements, slots, health"),
            ("/", "filter activity by pid, user, db, state or query text"),
            ("s", "sort activity: age, pid, state, user"),
            ("c", "cancel the selected query (pg_cancel_backend)"),
            ("k", "terminate the selected backend (pg_terminate_backend); production asks for the pid"),
        ],
    ),
    ("Redis pane", [("1-5", "tabs: slot map, slow log, commands, sentinels, health"), ("↑ ↓ / m", "pick the node shown"),
                    ("r", "runbooks")]),
    ("Kafka pane", [("1-3", "tabs: consumer groups (with the highlighted group's partitions), partitions, health"),
                    ("a", "partitions: all, or only those with a problem"), ("r", "runbooks")]),
    ("Kafka lag status", [("OK", "caught up in the window, or consuming"), ("WARN", "consuming, but lag grew at every refresh"),
                          ("STALL", "members present, offset not moving, lag"), ("STOP", "no member, offset not moving, lag"),
                          ("ERR", "committed offset outside the log"), ("…", "judged once the window is full")]),
    ("Neo4j pane", [("1-4", "tabs: transactions, databases, servers, health"), ("↑ ↓ / m", "pick the server shown"),
                    ("r", "runbooks")]),
    ("Qdrant pane", [("1-4", "tabs: collections, shard replicas (not Active first), transfers, health"),
                     ("a", "replicas: all, or only those not Active"), ("r", "runbooks")]),
)

COLOURS = (
    ("OK", "bold green", "within every threshold"),
    ("WARN", "bold yellow", "past a warning threshold: look soon"),
    ("CRIT", "bold white on red", "past a critical threshold, or a member is unreachable"),
    ("UNKNOWN", "bold magenta", "not polled yet, or a value could not be read"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "dismiss", "Close"), Binding("question_mark", "dismiss", "Close", show=False), Binding("q", "dismiss", "Close", show=False)]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen #help-dialog { width: 90%; max-width: 100; height: 90%; border: round $accent; background: $surface; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-dialog"):
            for title, rows in KEYS:
                t = Table(title=title, title_justify="left", show_header=False, box=None, expand=True)
                # Fixed key column so the three tables line up.
                t.add_column(style="bold cyan", width=20, min_width=20, max_width=20, no_wrap=True)
                t.add_column(ratio=1)
                for k, what in rows:
                    t.add_row(k, what)
                yield Static(t)
            legend = Text("\nSeverity: ")
            for name, style, what in COLOURS:
                legend.append(f" {name} ", style=style)
                legend.append(f" {what}\n          ")
            legend.append("\nRead-only environments grey out actions that change a server; start with --allow-writes\n"
                          "or set mode = \"operator\" for that environment. Every action is audited.", style="dim")
            yield Static(legend)

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
