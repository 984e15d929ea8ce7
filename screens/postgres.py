"""The PostgreSQL pane: topology and lag, activity, blocking tree, statements, slots, health."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import events, work
from textual.binding import Binding
from textual.widgets import DataTable, Input, Static, TabbedContent

from dbops.actions import BackendAction, ReadOnly, decline, perform, read_only_reason, writes_allowed
from dbops.engines.postgres.data import PgMemberData, Session
from dbops.engines.postgres.history import lag_bytes
from dbops.model import ClusterHealth, MemberHealth, Severity, human_bytes, human_seconds

from .modals import ConfirmBackendModal
from .pane import ClusterPane, scrolled, static, tab, unreachable
from .pg_history import PgHistory, catchup_lines
from .pg_tables import TableHealthView
from .pg_vacuum import (
    ConnectionsTable,
    PoolTable,
    VacuumTable,
    connection_rows,
    connections_summary,
    horizon_text,
    pgbouncer_summary,
    pool_rows,
    vacuum_rows,
)
from .render import SEVERITY_STYLE, one_line, severity_text, sparkline, state_text
from .tables import PaneTable, TabTable, cursor_key
from .widgets import typed_into_prompt


class TopologyTable(PaneTable):
    """Every member's role, state and lag, above the tabs: as tall as its rows, up to 7."""

    DEFAULT_ID = "topology"
    DEFAULT_CSS = """
    TopologyTable { height: auto; max-height: 7; }
    """
    COLUMNS = (
        ("sev", "Sev"),
        ("member", "Member"),
        ("role", "Role"),
        ("state", "State"),
        ("lag_b", "Lag"),
        ("lag_s", "Lag time"),
        ("trend", "Trend"),
        ("sync", "Sync"),
        ("conns", "Conns"),
    )


class ActivityTable(TabTable):
    DEFAULT_ID = "activity-table"
    # What an on-call reads first comes first: at 80 columns the query must be on screen, so the
    # wait event and database go to the right of it.
    COLUMNS = (
        ("pid", "PID"),
        ("age", "Age"),
        ("xact", "Xact"),
        ("state", "State"),
        ("blocked", "Blocked by"),
        ("user", "User"),
        ("query", "Query"),
        ("wait", "Wait"),
        ("db", "DB"),
    )


class StatementTable(TabTable):
    DEFAULT_ID = "statements-table"
    COLUMNS = (("queryid", "Query id"), ("calls_d", "Calls Δ"), ("total_d", "Time Δ ms"), ("mean", "Mean ms"), ("calls", "Calls"),
               ("query", "Query"))


class SlotTable(TabTable):
    DEFAULT_ID = "slots-table"
    COLUMNS = (("name", "Slot"), ("type", "Type"), ("active", "Active"), ("wal", "WAL status"), ("retained", "Retained"))


class SessionFilter(Input):
    """The Activity tab's filter (`/`): hidden until asked for."""

    DEFAULT_CSS = """
    SessionFilter { height: 3; }
    """

    def __init__(self) -> None:
        super().__init__(placeholder="filter: pid, user, db, state, query…", id="filter")
        self.display = False


SHORT_STATES = {"idle in transaction": "idle in tx", "idle in transaction (aborted)": "idle in tx (aborted)"}
SORTS = ("age", "pid", "state", "user")


def session_matches(s: Session, needle: str) -> bool:
    if not needle:
        return True
    hay = " ".join(
        str(x) for x in (s.pid, s.usename, s.database, s.state, s.application_name, s.wait_event, s.query) if x
    ).lower()
    return needle.lower() in hay


def blocking_tree(sessions: tuple[Session, ...]) -> Text:
    """Roots are sessions that block others and wait on no one; children indented below."""
    by_pid = {s.pid: s for s in sessions}
    children: dict[int, list[int]] = {}
    for s in sessions:
        for b in s.blocked_by:
            children.setdefault(b, []).append(s.pid)
    if not children:
        return Text("No session is waiting on a lock held by another.", style="green")
    waiting = {s.pid for s in sessions if s.blocked_by}
    roots = [pid for pid in children if pid not in waiting] or list(children)
    out = Text()

    def line(pid: int, depth: int, seen: set[int]) -> None:
        s = by_pid.get(pid)
        prefix = "  " * depth + ("└─ " if depth else "")
        if s is None:
            out.append(f"{prefix}pid {pid} (not visible: another user's or an ended backend)\n", style="dim")
        else:
            age = human_seconds(s.xact_age_seconds if depth == 0 else s.query_age_seconds)
            style = "bold red" if depth == 0 else ""
            out.append(f"{prefix}pid {pid} ", style=style)
            out.append(f"[{s.state or '-'} {age}] {s.usename or '-'}@{s.database or '-'}: ", style="dim")
            out.append(one_line(s.query, 70) + "\n")
        if pid in seen:
            return
        for child in sorted(children.get(pid, [])):
            line(child, depth + 1, seen | {pid})

    for root in sorted(roots):
        line(root, 0, set())
    return out


class PostgresScreen(ClusterPane):
    BINDINGS = [
        # Priority, and the filter focused at once: see screens.widgets.typed_into_prompt.
        Binding("slash", "filter", "Filter", key_display="/", priority=True),
        Binding("s", "sort", "Sort"),
        Binding("c", "cancel_backend", "Cancel query"),
        Binding("k", "terminate_backend", "Terminate"),
        Binding("w", "history_window", "Window", show=False),
    ]

    # The cluster's own problems (two primaries, no reachable primary) in a bar above the
    # topology, on every tab: hidden while there are none.
    DEFAULT_CSS = """
    PostgresScreen #cluster-alert {
        height: auto;
        max-height: 3;
        padding: 0 1;
    }
    PostgresScreen #cluster-alert.-crit {
        background: red;
    }
    """
    ENGINE = "PostgreSQL"
    TOP = (static("cluster-alert"), TopologyTable)
    TABS = (
        tab("activity", "Activity", SessionFilter, ActivityTable),
        tab("blocking", "Blocking", static("blocking-tree")),
        tab("statements", "Statements", static("statements-note"), StatementTable),
        tab("slots", "Slots", SlotTable),
        tab("vacuum", "Vacuum", VacuumTable, scrolled("horizon-text")),
        tab("connections", "Conns", static("connections-summary"), ConnectionsTable),
        tab("pgbouncer", "PgBouncer", static("pgbouncer-summary"), PoolTable),
        tab("health", "Health", static("health-text")),
        tab("history", "History", PgHistory),
        tab("tables", "Tables", TableHealthView),
    )
    FOCUS = "#activity-table"
    MEMBER_WORD = "member"
    RESET_WHEN_REPICKED = True

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.filter_text = ""
        self.sort_index = 0
        self._sessions: dict[int, Session] = {}

    # -- updates -----------------------------------------------------------------------------

    def default_member(self, health: ClusterHealth) -> str | None:
        # The primary: the one answering as primary now (it follows a switchover), else the one
        # the config names, never whichever replica's first poll happened to land first.
        live = next((m for m in health.members if m.role == "primary" and m.snapshot.reachable), None)
        hinted = next((m for m in health.members if m.role == "primary"), None)
        return (live or hinted or health.members[0]).name

    def redraw(self, health: ClusterHealth) -> None:
        self._draw_alert(health)
        self._draw_topology(health)
        mh = self.shown_member(health)
        data = mh.snapshot.shown if mh else None
        if isinstance(data, PgMemberData):
            self._draw_activity(data)
            self.query_one("#blocking-tree", Static).update(blocking_tree(data.sessions))
            self._draw_statements(data)
            self._draw_slots(data)
            self._draw_vacuum(data)
            self._draw_connections(data)
        self._draw_pgbouncer(health)
        self.query_one(PgHistory).draw(lambda name: self.hub.history(self.key, name), self.ref.cluster.thresholds, health, mh, self.app.clock())
        self.show_health(self._health_text(health, mh))
        self._draw_status(mh)

    def _draw_alert(self, health: ClusterHealth) -> None:
        """The cluster-level problems the core judged (assess_cluster's metrics), one line each,
        in their severity's colours across the pane's width."""
        bad = [m for m in health.metrics if m.severity is not Severity.OK]
        alert = self.query_one("#cluster-alert", Static)
        alert.display = bool(bad)
        if not bad:
            return
        worst = Severity.worst([m.severity for m in bad])
        text = Text(no_wrap=True, overflow="ellipsis", style=SEVERITY_STYLE[worst])
        for i, m in enumerate(bad):
            text.append(("\n" if i else "") + f"{m.severity.name}: {m.message}")
        alert.set_class(worst is Severity.CRIT, "-crit")
        alert.update(text)

    def _draw_topology(self, health: ClusterHealth) -> None:
        table = self.query_one(TopologyTable)
        now = self.app.clock()
        for m in health.members:
            data = m.snapshot.shown
            sync = "-"
            conns = "-"
            if isinstance(data, PgMemberData):
                conns = f"{data.connections_total}/{data.available_connections}"
            primary = next((x.snapshot.shown for x in health.members if x.role == "primary" and isinstance(x.snapshot.shown, PgMemberData)), None)
            if primary is not None and m.role == "replica":
                row = next((r for r in primary.replicas if r.application_name in (m.name, self._app_name(m.name))), None)
                if row is not None:
                    sync = row.sync_state
            state = state_text(m.snapshot, now)
            history = self.hub.history(self.key, m.name)
            cells = [
                severity_text(m.severity),
                Text(m.name, style="bold" if m.role == "primary" else ""),
                m.role,
                state,
                human_bytes(m.lag_bytes) if m.lag_bytes is not None else "-",
                human_seconds(m.lag_seconds) if m.lag_seconds is not None else "-",
                sparkline(lag_bytes(history), width=8) if m.role == "replica" else "",
                sync,
                conns,
            ]
            if m.name in {str(k.value) for k in table.rows}:
                for (col, _), value in zip(TopologyTable.COLUMNS, cells):
                    table.update_cell(m.name, col, value, update_width=True)
            else:
                table.add_row(*cells, key=m.name)

    def _app_name(self, member: str) -> str:
        m = next((x for x in self.ref.cluster.members if x.name == member), None)
        return (m.application_name or m.name) if m else member

    def _activity_row(self, s: Session) -> tuple[Any, ...]:
        age = s.query_age_seconds if s.state == "active" else s.state_age_seconds
        th = self.ref.cluster.thresholds
        state_style = ""
        if s.state and s.state.startswith("idle in transaction"):
            state_style = "bold yellow" if (s.state_age_seconds or 0) > th.idle_in_transaction_seconds_warn else "yellow"
        age_style = "bold yellow" if s.state == "active" and (age or 0) > th.long_query_seconds else ""
        xact = s.xact_age_seconds
        xact_style = ""
        if xact is not None and not s.is_autovacuum:
            if xact > th.long_transaction_seconds_crit:
                xact_style = "bold red"
            elif xact > th.long_transaction_seconds_warn:
                xact_style = "bold yellow"
        state = "autovacuum" if s.is_autovacuum else SHORT_STATES.get(s.state or "", s.state or "")
        if s.is_autovacuum:
            state_style = "dim"
        wait = f"{s.wait_event_type}:{s.wait_event}" if s.wait_event_type else ""
        query_width = max(30, self.app.size.width - 54)
        return (
            s.pid,
            Text(human_seconds(age), style=age_style),
            Text(human_seconds(xact) if xact is not None else "-", style=xact_style),
            Text(state, style=state_style),
            Text(",".join(map(str, s.blocked_by)), style="bold red") if s.blocked_by else "",
            s.usename or "",
            one_line(s.query, query_width),
            wait,
            s.database or "",
        )

    def _draw_activity(self, data: PgMemberData) -> None:
        self._sessions = {s.pid: s for s in data.sessions}
        rows = {str(s.pid): self._activity_row(s) for s in data.sessions if session_matches(s, self.filter_text)}
        self.query_one(ActivityTable).sync(rows, order=self._activity_order)

    def _activity_order(self, key: str) -> Any:
        s = self._sessions.get(int(key))
        how = SORTS[self.sort_index]
        if s is None:
            return (0, 0)
        if how == "age":
            return (-(self._age(s.pid) or 0), s.pid)
        if how == "pid":
            return (s.pid, 0)
        if how == "state":
            return (s.state or "", s.pid)
        return (s.usename or "", s.pid)

    def _age(self, pid: int) -> float | None:
        s = self._sessions.get(pid)
        if s is None:
            return None
        return s.query_age_seconds if s.state == "active" else s.state_age_seconds

    def _draw_statements(self, data: PgMemberData) -> None:
        table = self.query_one(StatementTable)
        note = self.query_one("#statements-note", Static)
        if data.statements is None:
            note.update(Text(data.statements_note or "pg_stat_statements not installed", style="yellow"))
            table.sync({})
            return
        note.update(Text(f"top statements on {self.member} by time since the previous refresh", style="dim"))
        rank = {str(st.queryid): i for i, st in enumerate(data.statements)}
        rows = {
            str(st.queryid): (
                str(st.queryid), str(st.calls_delta), f"{st.total_ms_delta:.1f}", f"{st.mean_ms:.2f}", str(st.calls), one_line(st.query, 200)
            )
            for st in data.statements
        }
        table.sync_ranked(rows, rank)

    def _draw_slots(self, data: PgMemberData) -> None:
        th = self.ref.cluster.thresholds
        rows = {}
        for sl in data.slots:
            retained_style = ""
            if not sl.active and (sl.retained_bytes or 0) > th.inactive_slot_retained_bytes_warn:
                retained_style = "bold yellow"
            if sl.wal_status == "lost":
                retained_style = "bold red"
            rows[sl.slot_name] = (
                sl.slot_name,
                sl.slot_type,
                Text("yes" if sl.active else "no", style="" if sl.active else "yellow"),
                sl.wal_status or "-",
                Text(human_bytes(sl.retained_bytes), style=retained_style),
            )
        self.query_one(SlotTable).sync(rows, order=lambda k: k)

    def _draw_vacuum(self, data: PgMemberData) -> None:
        table = self.query_one(VacuumTable)
        table.sync(vacuum_rows(data), order=lambda k: int(k))
        table.display = bool(data.vacuums)  # an empty table's header would only push the horizon down
        self.query_one("#horizon-text", Static).update(
            horizon_text(data, self.ref.cluster.thresholds, self.app.clock(), self.ref.cluster.database))

    def _draw_connections(self, data: PgMemberData) -> None:
        self.query_one("#connections-summary", Static).update(connections_summary(data, self.ref.cluster.thresholds))
        rows, rank = connection_rows(data)
        self.query_one(ConnectionsTable).sync_ranked(rows, rank)

    def _draw_pgbouncer(self, health: ClusterHealth) -> None:
        # PgBouncer is read with one member's refresh (the primary's), whichever member is shown.
        pb = next((m.snapshot.shown.pgbouncer for m in health.members
                   if isinstance(m.snapshot.shown, PgMemberData) and m.snapshot.shown.pgbouncer is not None), None)
        configured = self.ref.cluster.pgbouncer is not None
        self.query_one("#pgbouncer-summary", Static).update(pgbouncer_summary(pb, configured))
        self.query_one(PoolTable).sync(pool_rows(pb, self.ref.cluster.thresholds) if pb is not None else {}, order=lambda k: k)

    def _health_text(self, health: ClusterHealth, mh: MemberHealth | None) -> Text:
        out = Text()
        out.append(f"{health.name}: ", style="bold")
        out.append_text(severity_text(health.severity))
        out.append("\n")
        for metric in health.metrics:
            if metric.severity is not Severity.OK:
                out.append(f"  {metric.message}\n", style=SEVERITY_STYLE[metric.severity])
        for m in health.members:
            bad = [x for x in m.metrics if x.severity is not Severity.OK]
            for x in bad:
                out.append(f"  {m.name}: {x.message}\n", style=SEVERITY_STYLE[x.severity])
        out.append_text(catchup_lines(lambda name: self.hub.history(self.key, name), health, self.app.clock()))
        data = mh.snapshot.shown if mh else None
        if isinstance(data, PgMemberData):
            out.append(f"\n{self.member} (PostgreSQL {data.server_version}, timeline {data.timeline})\n", style="bold")
            a = data.archiver
            # A standby archives only with archive_mode = always; otherwise its counters are noise.
            if a is not None and (not data.in_recovery or a.archive_mode == "always"):
                out.append(
                    f"  archiver: mode {a.archive_mode}, archived {a.archived_count}, failed {a.failed_count}, "
                    f"last archived {human_seconds(a.last_archived_age_seconds)} ago"
                )
                if a.last_failed_wal:
                    out.append(f", last failed {a.last_failed_wal} {human_seconds(a.last_failed_age_seconds)} ago", style="red")
                out.append("\n")
            if data.max_xid_age is not None:
                out.append(f"  wraparound: max xid age {data.max_xid_age:,} ({data.max_xid_age_database})\n")
            if data.cache_hit_ratio is not None:
                out.append(f"  cache hit ratio {data.cache_hit_ratio:.2f}%\n")
            states = ", ".join(f"{state} {n}" for state, n in data.connections_by_state) or "no clients besides dbops"
            out.append(f"  connections {data.connections_total}/{data.available_connections}: {states}\n")
            for r in data.replicas:
                out.append(
                    f"  replica {r.application_name} ({r.state}, {r.sync_state}): lag write {human_bytes(r.write_lag_bytes)}/"
                    f"{human_seconds(r.write_lag_seconds)} flush {human_bytes(r.flush_lag_bytes)}/{human_seconds(r.flush_lag_seconds)} "
                    f"replay {human_bytes(r.replay_lag_bytes)}/{human_seconds(r.replay_lag_seconds)}\n"
                )
            if data.wal_receiver is not None:
                w = data.wal_receiver
                source = f" from {w.sender_host}:{w.sender_port}" if w.sender_host else ""
                out.append(f"  wal receiver: {w.status or 'NOT RUNNING'}{source}, received {w.received_lsn} replayed {w.replayed_lsn}")
                out.append(" REPLAY PAUSED\n" if w.replay_paused else "\n", style="bold yellow")
            if data.pgbouncer is not None:
                pb = data.pgbouncer
                if pb.error:
                    out.append(f"  pgbouncer: {pb.error}\n", style="red")
                elif not pb.pools:
                    out.append("  pgbouncer: reachable, no pool in use yet\n")
                for database, xacts, queries, avg_wait_us in pb.stats:
                    out.append(f"  pgbouncer stats {database}: {xacts} transactions, {queries} queries, avg wait {avg_wait_us / 1000:.1f} ms\n", style="dim")
                for p in pb.pools:
                    size = f"/{p.pool_size}" if p.pool_size else ""
                    style = "bold yellow" if p.cl_waiting else ""
                    out.append(
                        f"  pgbouncer {p.database}/{p.user}: clients active {p.cl_active} waiting {p.cl_waiting}, "
                        f"servers active {p.sv_active}{size} idle {p.sv_idle}, maxwait {p.maxwait_seconds:.1f}s\n",
                        style=style,
                    )
        return out

    def _draw_status(self, mh: MemberHealth | None) -> None:
        parts = self.member_status(mh, gap="  ")
        age = mh.snapshot.age_of_shown(self.app.clock()) if mh is not None and unreachable(mh) else None
        if age is not None:
            parts.append(f" (values from {human_seconds(age)} ago)", style="red")
        parts.append(f" sort: {SORTS[self.sort_index]}", style="dim")
        if self.filter_text:
            parts.append(f"  filter: {self.filter_text!r}", style="yellow")
        if not writes_allowed(self.ref, self.app.allow_writes):
            parts.append("  read-only: c/k disabled", style="dim italic")
        self.show_status(parts)

    # -- actions -----------------------------------------------------------------------------

    def on_key(self, event: events.Key) -> None:
        # Greyed-out bindings do not run their action, so a press would otherwise be silent:
        # say why instead.
        if event.key in ("c", "k") and not writes_allowed(self.ref, self.app.allow_writes):
            event.stop()
            self.notify(read_only_reason(self.ref), severity="error")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("cancel_backend", "terminate_backend"):
            # Shown greyed out, never hidden: the operator should see the action exists and why not.
            return True if writes_allowed(self.ref, self.app.allow_writes) else None
        return True

    def action_back(self) -> None:
        inp = self.query_one(SessionFilter)
        if inp.display and inp.has_focus:
            inp.display = False
            self.query_one(ActivityTable).focus()
            return
        super().action_back()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "topology":
            self.pick_member(str(event.row_key.value))

    def forget_member_rows(self) -> None:
        for table in (self.query_one(ActivityTable), self.query_one(StatementTable), self.query_one(SlotTable)):
            table.reset()

    def action_filter(self) -> None:
        inp = self.query_one(SessionFilter)
        if typed_into_prompt(self, inp, "/"):
            return
        self.action_tab("activity")
        inp.display = True
        self.set_focus(inp)  # at once (see typed_into_prompt)

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.filter_text = event.value.strip()
            self.redraw_now()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self.query_one(ActivityTable).focus()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        # The Tables tab reads when it is opened (and takes the keys while it is shown).
        self.query_one(TableHealthView).tab_shown(event.pane.id == "tables")

    def action_history_window(self) -> None:
        self.query_one(PgHistory).window_key()

    def action_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(SORTS)
        self.redraw_now()

    def action_cancel_backend(self) -> None:
        self._signal(terminate=False)

    def action_terminate_backend(self) -> None:
        self._signal(terminate=True)

    def _selected_session(self) -> Session | None:
        key = cursor_key(self.query_one(ActivityTable))
        return self._sessions.get(int(key)) if key is not None else None

    def _signal(self, terminate: bool) -> None:
        ref = self.ref
        if not writes_allowed(ref, self.app.allow_writes):
            self.notify(read_only_reason(ref), severity="error")
            return
        mh = self.shown_member(self.hub.cluster_health(self.key))
        if mh is None or not mh.snapshot.reachable:
            state = mh.snapshot.reachability.value if mh else "unknown"
            self.notify(f"{self.member} is {state}: the sessions shown are old values; nothing can be signalled", severity="error")
            return
        session = self._selected_session()
        if session is None:
            self.notify("select a session in the Activity tab first", severity="warning")
            return
        blocks = tuple(sorted(s.pid for s in self._sessions.values() if session.pid in s.blocked_by))
        act = BackendAction(ref, self.member or "", session.pid, terminate, session.query, blocks)
        self.app.push_screen(ConfirmBackendModal(act, session), callback=lambda ok: self._after_confirm(act, bool(ok)))

    def _after_confirm(self, act: BackendAction, confirmed: bool) -> None:
        self._run_action(act, confirmed)

    @work(thread=True, exclusive=False, group="actions")
    def _run_action(self, act: BackendAction, confirmed: bool) -> None:
        # A thread: the audit fsync and the wait on the pollers' loop must not stall the UI.
        app = self.app
        try:
            if not confirmed:
                decline(app.audit, act)
                app.call_from_thread(app.notify, f"declined: nothing was sent to {act.member} (recorded in the audit log)")
                return
            outcome = perform(app.audit, app.hub, act, app.allow_writes)
        except ReadOnly as exc:
            app.call_from_thread(app.notify, str(exc), severity="error")
            return
        except Exception as exc:  # audit write failures and the like: shown, never swallowed
            app.call_from_thread(app.notify, f"{act.action} not done: {exc}", severity="error", timeout=15)
            return
        app.call_from_thread(app.notify, outcome.message, severity="information" if outcome.ok else "error", timeout=10)
