"""Judge a Neo4j deployment from its members' refreshes: pure functions, no I/O.

Per member: reachability, and transactions running longer than the thresholds (the product
brief's 500 ms; the longest is named). Per cluster, from the first member (in config order) that
answered, since every server of a cluster reports the whole cluster's SHOW DATABASES: a database
not online that should be (CRIT; one taken offline on purpose is OK), a database with no writer
(CRIT), and on enterprise a server that is not Available. Rules are strict (a value equal to a
threshold is fine).

Metric names: reachability, transactions; on the cluster: database, writer, servers.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from dbops.config import ClusterRef, Neo4jThresholds
from dbops.engines.neo4j.data import Database, Neo4jMemberData, Transaction
from dbops.model import ClusterHealth, MemberHealth, Metric, Reachability, Severity, Snapshot, human_seconds

OK, WARN, CRIT, UNKNOWN = Severity.OK, Severity.WARN, Severity.CRIT, Severity.UNKNOWN
QUERY_IN_MESSAGE = 60  # characters of the longest transaction's query in its metric's message


def update_baseline(baseline: dict[str, Any] | None, snapshots: dict[str, Snapshot]) -> dict[str, Any]:
    return dict(baseline or {})


def thresholds(ref: ClusterRef) -> Neo4jThresholds:
    opts = ref.cluster.neo4j
    return opts.thresholds if opts is not None else Neo4jThresholds()


def excerpt(query: str, width: int = QUERY_IN_MESSAGE) -> str:
    return query if len(query) <= width else query[: width - 1] + "…"


def describe(t: Transaction) -> str:
    """One transaction in a sentence: id, user, database, elapsed and what it runs."""
    return f"{t.id} ({t.user or '?'} on {t.database}) {human_seconds(t.elapsed_ms / 1000)}: {excerpt(t.query) or '(no query running)'}"


def transaction_metric(t: Neo4jThresholds, transactions: tuple[Transaction, ...]) -> Metric:
    long = [x for x in transactions if x.elapsed_ms > t.transaction_ms_warn]
    if not long:
        return Metric("transactions", OK, f"no transaction over {t.transaction_ms_warn:g} ms ({len(transactions)} open)", 0.0)
    longest = max(long, key=lambda x: x.elapsed_ms)
    sev = CRIT if longest.elapsed_ms > t.transaction_ms_crit else WARN
    limit = t.transaction_ms_crit if sev is CRIT else t.transaction_ms_warn
    return Metric("transactions", sev, f"{len(long)} transaction(s) over {limit:g} ms; longest {describe(longest)}",
                  longest.elapsed_ms)


def member_role(d: Neo4jMemberData) -> str:
    """A single server's role for its default database (primary on community); a cluster
    member's own row cannot be told from its peers' by address, so it is just a member."""
    default = next((db for db in d.databases if db.default), None)
    rows = d.database_rows(default.name) if default else ()
    return rows[0].role if len(rows) == 1 else "member"


def assess_member(ref: ClusterRef, snap: Snapshot) -> MemberHealth:
    if not snap.reachable:
        if snap.reachability is Reachability.PENDING:
            return MemberHealth(snap, "?", UNKNOWN, (Metric("reachability", UNKNOWN, "not polled yet"),))
        role = member_role(snap.last_good) if isinstance(snap.last_good, Neo4jMemberData) else "?"
        return MemberHealth(snap, role, CRIT, (Metric("reachability", CRIT, f"{snap.reachability.value}: {snap.error}"),))
    d = snap.data
    assert isinstance(d, Neo4jMemberData)
    ms = [transaction_metric(thresholds(ref), d.transactions)]
    return MemberHealth(snap, member_role(d), Severity.worst([m.severity for m in ms], OK), tuple(ms))


def _where(rows: list[Database]) -> str:
    return ", ".join(sorted({r.address for r in rows if r.address})) or "?"


def database_metrics(databases: tuple[Database, ...]) -> list[Metric]:
    by_name: dict[str, list[Database]] = {}
    for db in databases:
        by_name.setdefault(db.name, []).append(db)
    out = []
    for name, rows in by_name.items():
        wanted = [r for r in rows if r.requested_status == "online"]
        if not wanted:
            out.append(Metric("database", OK, f"database {name} is {rows[0].current_status} (requested offline)"))
            continue
        down = [r for r in wanted if r.current_status != "online"]
        for r in down:
            why = f": {r.status_message}" if r.status_message else ""
            out.append(Metric("database", CRIT, f"database {name} is {r.current_status} on {r.address or '?'} "
                                                f"(requested online){why}"))
        if not down:
            out.append(Metric("database", OK, f"database {name} online on {_where(wanted)}"))
        # A composite database has no store and so no writer of its own.
        online = [r for r in wanted if r.current_status == "online"]
        if rows[0].type != "composite" and online and not any(r.writer for r in online):
            out.append(Metric("writer", CRIT, f"database {name} has no writer (no leader among {_where(online)}): "
                                              "writes to it fail"))
    return out


def server_metrics(d: Neo4jMemberData) -> list[Metric]:
    if d.servers is None:
        return []
    bad = [s for s in d.servers if s.health != "Available"]
    if not bad:
        return [Metric("servers", OK, f"all {len(d.servers)} servers available")]
    return [Metric("servers", WARN, f"server {s.name} ({s.address}) is {s.health}, state {s.state}") for s in bad]


def assess_cluster(ref: ClusterRef, snapshots: dict[str, Snapshot], baseline: dict[str, Any] | None = None,
                   now: float | None = None) -> ClusterHealth:
    order = {m.name: i for i, m in enumerate(ref.cluster.members)}
    snaps = sorted(snapshots.values(), key=lambda s: order.get(s.member, len(order)))
    members = [assess_member(ref, s) for s in snaps]
    view = next((s.data for s in snaps if isinstance(s.data, Neo4jMemberData)), None)
    metrics: list[Metric] = []
    if view is not None:
        metrics += database_metrics(view.databases)
        metrics += server_metrics(view)
    sev = Severity.worst([m.severity for m in members] + [m.severity for m in metrics], OK)
    return ClusterHealth(ref.environment, ref.name, "neo4j", sev, tuple(members), tuple(metrics))


def facts(health: ClusterHealth) -> dict[str, dict[str, str]]:
    """What the timeline reports when it changes: each database's status and role on each
    server (a database stopped on purpose is not a severity change; a new writer is not a
    member's role), read from the first member that answered, as the judgement is."""
    view = next((m.snapshot.data for m in health.members if isinstance(m.snapshot.data, Neo4jMemberData)), None)
    if view is None:
        return {}
    rows = Counter(db.name for db in view.databases)
    out: dict[str, str] = {}
    for db in view.databases:
        where = f" on {db.address}" if rows[db.name] > 1 else ""
        out[f"database {db.name}{where}"] = f"{db.current_status}, {db.role}" + (", writer" if db.writer and where else "")
    return {"": out}
