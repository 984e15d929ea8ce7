"""What one refresh of a Neo4j server found: frozen values built by the adapter from the rows of
dbms.components(), SHOW DATABASES, SHOW SERVERS and SHOW TRANSACTIONS, read by the assessment,
the pane, `dbops check` and the runbooks. Pure Python (no driver here): rows come in as dicts.

Columns differ between Neo4j versions and editions (4.4 has elapsedTimeMillis, 5.x a Duration;
community has no SHOW SERVERS), so every row is read with YIELD * and whatever it holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dbops.secrets import scrub_text

QUERY_CHARS = 200  # a transaction's query text is kept this long: enough to recognise it
SERVERS_ENTERPRISE_ONLY = "SHOW SERVERS: enterprise only (this server is a single community instance)"


@dataclass(frozen=True, slots=True)
class Database:
    """One row of SHOW DATABASES: a database as one server hosts it (a clustered database has
    a row per hosting server)."""

    name: str
    type: str  # standard | system | composite
    current_status: str  # online, offline, starting, stopping, store copying, unknown, quarantined ...
    requested_status: str  # online | offline: what the operator asked for
    status_message: str
    role: str  # primary, secondary, unknown (4.4: leader, follower, read_replica, standalone)
    writer: bool  # this row's server accepts the database's writes
    address: str
    access: str  # read-write | read-only
    default: bool
    last_committed_txn: int | None = None  # enterprise clusters only
    replication_lag: int | None = None  # transactions behind the writer; 0 on a single server


@dataclass(frozen=True, slots=True)
class Server:
    """One row of SHOW SERVERS (enterprise)."""

    name: str
    address: str
    state: str  # Enabled, Free, Cordoned, Deallocating, Dropped
    health: str  # Available, Unavailable
    hosting: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Transaction:
    """One row of SHOW TRANSACTIONS. The query text is cut to QUERY_CHARS and scrubbed of
    passwords; the parameters are never read."""

    id: str  # e.g. neo4j-transaction-42; what TERMINATE TRANSACTIONS takes
    database: str
    user: str
    client: str
    status: str  # Running, Blocked by: [...], Terminated with reason: ..., Closing
    elapsed_ms: float
    cpu_ms: float | None  # None while db.track_query_cpu_time is off (the default)
    wait_ms: float | None
    idle_ms: float | None
    allocated_bytes: int | None  # the transaction's estimated heap use (5.x) or allocatedBytes (4.4)
    active_locks: int | None
    query: str

    @property
    def blocked(self) -> bool:
        return self.status.startswith("Blocked")


@dataclass(frozen=True)
class Neo4jMemberData:
    version: str
    edition: str  # community | enterprise
    databases: tuple[Database, ...]
    transactions: tuple[Transaction, ...]  # longest first; dbops' own refresh left out
    servers: tuple[Server, ...] | None  # None: SHOW SERVERS is not available (see servers_note)
    servers_note: str | None = None
    store_bytes: dict[str, int] | None = None  # database -> total store size, where APOC provides it
    store_note: str | None = None

    def database_rows(self, name: str) -> tuple[Database, ...]:
        return tuple(d for d in self.databases if d.name == name)


# -- row readers (pure) -------------------------------------------------------------------------


def duration_ms(value: Any) -> float | None:
    """A neo4j.time.Duration (5.x), milliseconds as a number (4.4) or None -> milliseconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if all(hasattr(value, a) for a in ("months", "days", "seconds", "nanoseconds")):
        # SHOW TRANSACTIONS' durations never span months; days and seconds are exact.
        return ((value.months * 30 + value.days) * 86400 + value.seconds) * 1000.0 + value.nanoseconds / 1e6
    return None


def _first(row: dict[str, Any], *keys: str) -> Any:
    return next((row[k] for k in keys if row.get(k) is not None), None)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def database_from_row(row: dict[str, Any]) -> Database:
    role = str(row.get("role") or "unknown")
    writer = row.get("writer")
    if writer is None:  # 4.4 has no writer column: its writer is the leader (or a standalone server)
        writer = role in ("leader", "standalone")
    return Database(
        name=str(row.get("name")),
        type=str(row.get("type") or ("system" if row.get("name") == "system" else "standard")),
        current_status=str(_first(row, "currentStatus", "status") or "unknown"),
        requested_status=str(row.get("requestedStatus") or "online"),
        status_message=str(_first(row, "statusMessage", "error") or ""),
        role=role,
        writer=bool(writer),
        address=str(row.get("address") or ""),
        access=str(row.get("access") or ""),
        default=bool(row.get("default")),
        last_committed_txn=_int(row.get("lastCommittedTxn")),
        replication_lag=_int(row.get("replicationLag")),
    )


def server_from_row(row: dict[str, Any]) -> Server:
    return Server(
        name=str(row.get("name") or row.get("serverId") or "?"),
        address=str(row.get("address") or ""),
        state=str(row.get("state") or "?"),
        health=str(row.get("health") or "?"),
        hosting=tuple(str(h) for h in (row.get("hosting") or ())),
    )


def transaction_from_row(row: dict[str, Any]) -> Transaction:
    query = " ".join(str(row.get("currentQuery") or "").split())
    return Transaction(
        id=str(row.get("transactionId")),
        database=str(row.get("database") or ""),
        user=str(row.get("username") or ""),
        client=str(row.get("clientAddress") or ""),
        status=str(row.get("status") or ""),
        elapsed_ms=duration_ms(_first(row, "elapsedTime", "elapsedTimeMillis")) or 0.0,
        cpu_ms=duration_ms(_first(row, "cpuTime", "cpuTimeMillis")),
        wait_ms=duration_ms(_first(row, "waitTime", "waitTimeMillis")),
        idle_ms=duration_ms(_first(row, "idleTime", "idleTimeMillis")),
        allocated_bytes=_int(_first(row, "estimatedUsedHeapMemory", "allocatedBytes", "currentQueryAllocatedBytes")),
        active_locks=_int(row.get("activeLockCount")),
        # Scrubbed before it is cut: a cut could leave half a password the scrubber no longer recognises.
        query=scrub_text(query)[:QUERY_CHARS],
    )


def longest_first(transactions: list[Transaction]) -> tuple[Transaction, ...]:
    return tuple(sorted(transactions, key=lambda t: (-t.elapsed_ms, t.id)))


# A transaction id as SHOW TRANSACTIONS gives it: <database>-transaction-<number>. Database names
# hold letters, digits, dots and dashes; anything else is refused rather than quoted.
TRANSACTION_ID = re.compile(r"^[A-Za-z0-9.\-_]+-transaction-\d+$")


def terminate_statement(ids: list[str]) -> str:
    """TERMINATE TRANSACTIONS "a", "b": the exact text the plan shows and the runbook runs."""
    bad = [i for i in ids if not TRANSACTION_ID.match(i)]
    if bad or not ids:
        raise ValueError(f"not transaction ids: {', '.join(map(repr, bad)) or 'none given'}")
    return "TERMINATE TRANSACTIONS " + ", ".join(f'"{i}"' for i in ids)
