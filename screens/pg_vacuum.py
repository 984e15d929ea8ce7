"""The PostgreSQL pane's Vacuum, Connections and PgBouncer tabs: what each shows, drawn from one
refresh of the member (PgMemberData) and judged with the cluster's thresholds by the core
(dbops.engines.postgres.assess); nothing here reads a server."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.text import Text

from dbops.config import PostgresThresholds
from dbops.engines.postgres.assess import holder_age, holder_severity, human_count
from dbops.engines.postgres.data import PgBouncerData, PgMemberData, VacuumProgress
from dbops.model import Severity, human_seconds

from .render import SEVERITY_STYLE, one_line
from .tables import TabTable


class VacuumTable(TabTable):
    """Running VACUUMs, autovacuum's and clients'."""

    DEFAULT_ID = "vacuum-table"
    DEFAULT_CSS = """
    VacuumTable { height: auto; max-height: 6; }
    """
    COLUMNS = (("pid", "PID"), ("table", "Table"), ("phase", "Phase"), ("pct", "Scanned"), ("elapsed", "Elapsed"),
               ("kind", "By"), ("db", "DB"))


class ConnectionsTable(TabTable):
    DEFAULT_ID = "connections-table"
    COLUMNS = (("key", "#"), ("n", "Conns"), ("db", "Database"), ("user", "User"), ("app", "Application"), ("state", "State"))


class PoolTable(TabTable):
    DEFAULT_ID = "pools-table"
    COLUMNS = (("pool", "Pool"), ("cl_active", "Cl act"), ("cl_waiting", "Cl wait"), ("sv_active", "Sv act"),
               ("sv_idle", "Sv idle"), ("size", "Size"), ("maxwait", "Max wait"), ("mode", "Mode"))


# -- Vacuum ------------------------------------------------------------------------------------


def vacuum_kind(v: VacuumProgress) -> Text:
    if v.autovacuum and v.to_prevent_wraparound:
        return Text("auto (wraparound)", style="bold yellow")
    return Text("auto" if v.autovacuum else "client", style="dim" if v.autovacuum else "")


def vacuum_rows(data: PgMemberData) -> dict[str, tuple[Any, ...]]:
    rows = {}
    for v in data.vacuums:
        pct = v.percent_scanned
        rows[str(v.pid)] = (
            str(v.pid),
            one_line(v.table, 32),
            v.phase,
            f"{pct:.0f}%" if pct is not None else "-",
            human_seconds(v.elapsed_seconds),
            vacuum_kind(v),
            v.database or "",
        )
    return rows


def horizon_text(data: PgMemberData, t: PostgresThresholds, now: float, database: str) -> Text:
    """What holds the xmin horizon back, oldest first, each judged; then xid and multixact age
    and the tables nearest wraparound. `database`: the one dbops connects to (not repeated)."""
    out = Text()
    if not data.vacuums:
        out.append("no VACUUM running\n", style="dim")
    out.append("xmin horizon held back by (oldest first):\n", style="bold")
    if not data.horizon:
        out.append("  nothing: no open transaction, prepared transaction, slot or standby feedback holds it\n", style="green")
    for h in data.horizon:
        sev = holder_severity(t, h)
        style = SEVERITY_STYLE[sev] if sev is not Severity.OK else ""
        out.append(f"  {h.describe()}: {holder_age(h)}", style=style)
        if h.database and h.database != database:
            out.append(f" in {h.database}", style="dim")
        out.append("\n")
    ages = []
    if data.max_xid_age is not None:
        ages.append(f"xid age {human_count(data.max_xid_age)} ({data.max_xid_age_database})")
    if data.max_mxid_age is not None:
        ages.append(f"multixact age {human_count(data.max_mxid_age)} ({data.max_mxid_age_database})")
    if ages:
        out.append("wraparound: " + ", ".join(ages) + "\n", style="bold")
    if data.wraparound_tables is not None:
        read = f", read {human_seconds(max(0.0, now - data.wraparound_read_at))} ago" if data.wraparound_read_at else ""
        out.append(f"  nearest wraparound in this database (every minute{read}):\n", style="dim")
        for w in data.wraparound_tables:
            out.append(f"    {w.relation}: xid age {human_count(w.xid_age)}, multixact age {human_count(w.mxid_age)}\n")
    return out


# -- Connections -------------------------------------------------------------------------------


def connections_summary(data: PgMemberData, t: PostgresThresholds) -> Text:
    """Clients against what they may use, then by database and by user, then the limits."""
    out = Text()
    available = data.available_connections
    pct = 100.0 * data.connections_total / available if available else 0.0
    style = "bold red" if pct > t.connections_pct_crit else "bold yellow" if pct > t.connections_pct_warn else "bold"
    out.append(f"{data.connections_total}/{available} client connections ({pct:.0f}%)", style=style)
    out.append(f"  max_connections {data.max_connections}, {data.reserved_connections} reserved\n", style="dim")
    for word, key in (("by database", lambda g: g.database), ("by user", lambda g: g.user)):
        counts: Counter[str] = Counter()
        for g in data.connection_groups:
            counts[key(g) or "-"] += g.count
        out.append(f"{word}: " + ", ".join(f"{name} {n}" for name, n in counts.most_common(6)) + "\n")
    for word, limits in (("database", data.database_limits), ("role", data.role_limits)):
        for lim in limits:
            used = 100.0 * lim.used / lim.limit if lim.limit > 0 else 100.0
            lstyle = "bold red" if used > t.connections_pct_crit else "bold yellow" if used > t.connections_pct_warn else ""
            out.append(f"{word} {lim.name}: {lim.used}/{lim.limit} (CONNECTION LIMIT, {used:.0f}%)\n", style=lstyle)
    return out


def connection_rows(data: PgMemberData) -> tuple[dict[str, tuple[Any, ...]], dict[str, int]]:
    """One row per (database, user, application, state), busiest first: rows and their rank."""
    rows, rank = {}, {}
    for i, g in enumerate(data.connection_groups):
        key = f"{g.database}\x1f{g.user}\x1f{g.application}\x1f{g.state}"
        rows[key] = (str(i + 1), str(g.count), g.database or "-", g.user or "-", g.application or "-", g.state)
        rank[key] = i
    return rows, rank


# -- PgBouncer ---------------------------------------------------------------------------------


def pool_rows(pb: PgBouncerData, t: PostgresThresholds) -> dict[str, tuple[Any, ...]]:
    rows = {}
    for p in pb.pools:
        key = f"{p.database}/{p.user}"
        wait_style = ""
        if p.cl_waiting and p.maxwait_seconds >= t.pgbouncer_wait_seconds_crit:
            wait_style = "bold red"
        elif p.cl_waiting and p.maxwait_seconds >= t.pgbouncer_wait_seconds_warn:
            wait_style = "bold yellow"
        saturated = bool(p.pool_size) and p.sv_active >= (p.pool_size or 0)
        rows[key] = (
            key,
            str(p.cl_active),
            Text(str(p.cl_waiting), style="bold yellow" if p.cl_waiting else ""),
            Text(str(p.sv_active), style="bold yellow" if saturated and p.cl_waiting else ""),
            str(p.sv_idle),
            str(p.pool_size) if p.pool_size else "-",
            Text(f"{p.maxwait_seconds:.1f}s", style=wait_style),
            p.pool_mode or "-",
        )
    return rows


def pgbouncer_summary(pb: PgBouncerData | None, configured: bool) -> Text:
    if not configured:
        return Text("no PgBouncer configured for this cluster ([clusters.<name>.pgbouncer] in the config)", style="dim")
    if pb is None:
        return Text("PgBouncer not read yet: it is read with the primary's refresh", style="dim")
    if pb.error:
        return Text(f"PgBouncer unreadable: {pb.error}", style="bold red")
    out = Text()
    if not pb.pools:
        out.append("PgBouncer reachable, no pool in use yet (a pool appears with its first client)\n", style="bold")
        return out
    waiting = sum(p.cl_waiting for p in pb.pools)
    out.append(f"{len(pb.pools)} pools, {waiting} clients waiting\n", style="bold yellow" if waiting else "bold")
    for database, xacts, queries, avg_wait_us in pb.stats:
        out.append(f"{database}: {xacts} transactions, {queries} queries, avg wait {avg_wait_us / 1000:.1f} ms\n", style="dim")
    return out
