"""What one poll of a PostgreSQL member returns. Frozen: the UI diffs these, never edits them.

Byte lags are in bytes, ages and lags in seconds (float), None where the server gave no value
or the value does not apply to this member's role.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ReplicaRow:
    """One row of pg_stat_replication, seen from the primary."""

    pid: int
    application_name: str
    client_addr: str | None
    state: str  # streaming, catchup, backup, startup, stopping
    sync_state: str  # async, sync, potential, quorum
    sent_lsn: str | None
    replay_lsn: str | None
    write_lag_bytes: int | None
    flush_lag_bytes: int | None
    replay_lag_bytes: int | None
    write_lag_seconds: float | None
    flush_lag_seconds: float | None
    replay_lag_seconds: float | None
    slot_name: str | None = None
    # Wall-clock time by which everything the primary had written is replayed by this standby,
    # from dbops' own samples of the primary's WAL position (adapter.WrittenWal); None when no
    # sample is old enough or low enough to tell. The judgement bounds replay_lag by it.
    replayed_all_written_by: float | None = None
    # The primary's next few positions past replay_lsn, each with the latest poll start by which
    # it had been written (oldest first, from the same samples): the standby's own replay
    # position, read at another moment than this row, is matched against them.
    written_after: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class WalReceiver:
    """pg_stat_wal_receiver plus the standby's LSN functions, seen from a standby."""

    status: str | None  # streaming, stopping, ... ; None when no walreceiver runs
    sender_host: str | None
    sender_port: int | None
    slot_name: str | None
    received_lsn: str | None
    replayed_lsn: str | None
    replay_lag_bytes: int | None  # received - replayed
    replay_lag_seconds: float | None  # 0 when caught up, else now() - last replayed xact time
    replay_paused: bool
    last_msg_age_seconds: float | None


@dataclass(frozen=True, slots=True)
class Slot:
    slot_name: str
    slot_type: str
    active: bool
    wal_status: str | None  # reserved, extended, unreserved, lost
    retained_bytes: int | None
    database: str | None = None


@dataclass(frozen=True, slots=True)
class Session:
    """A client backend from pg_stat_activity (dbops' own sessions excluded)."""

    pid: int
    usename: str | None
    application_name: str
    client_addr: str | None
    database: str | None
    state: str | None  # active, idle, idle in transaction, ...
    wait_event_type: str | None
    wait_event: str | None
    query: str
    query_age_seconds: float | None
    xact_age_seconds: float | None
    state_age_seconds: float | None
    blocked_by: tuple[int, ...] = ()  # pg_blocking_pids, only computed for waiting sessions
    backend_type: str = "client backend"  # or "autovacuum worker"

    @property
    def is_autovacuum(self) -> bool:
        return self.backend_type == "autovacuum worker"


@dataclass(frozen=True, slots=True)
class VacuumProgress:
    """A running VACUUM (autovacuum's or a client's): pg_stat_progress_vacuum with its backend."""

    pid: int
    database: str | None
    relation: str | None  # schema-qualified when in the connection's database, else None (see query)
    phase: str
    heap_blks_total: int | None
    heap_blks_scanned: int | None
    heap_blks_vacuumed: int | None
    index_vacuum_count: int | None
    autovacuum: bool
    query: str  # "autovacuum: VACUUM public.t (to prevent wraparound)", "VACUUM t"
    elapsed_seconds: float | None

    @property
    def percent_scanned(self) -> float | None:
        if not self.heap_blks_total or self.heap_blks_scanned is None:
            return None
        return min(100.0, 100.0 * self.heap_blks_scanned / self.heap_blks_total)

    @property
    def table(self) -> str:
        """The table's name: the relation when resolvable, else what the worker's query names."""
        if self.relation:
            return self.relation
        q = self.query.removeprefix("autovacuum: ").removesuffix(" (to prevent wraparound)")
        for verb in ("VACUUM ANALYZE ", "VACUUM "):
            if q.upper().startswith(verb):
                return q[len(verb):].strip() or "?"
        return "?"

    @property
    def to_prevent_wraparound(self) -> bool:
        return self.query.endswith("(to prevent wraparound)")


@dataclass(frozen=True, slots=True)
class HorizonHolder:
    """Something that holds the xmin horizon back: VACUUM cannot remove a row version deleted
    after the oldest of these began."""

    kind: str  # session, prepared (transaction), slot, replica (hot_standby_feedback)
    name: str  # the pid, the prepared transaction's gid, the slot's or the standby's name
    owner: str | None
    database: str | None
    application: str
    state: str | None  # a session's state; "prepared"; a slot's active/inactive; a replica's state
    xmin_age: int | None  # transactions since its xmin (or xid) was current
    age_seconds: float | None  # since its transaction began (sessions) or was prepared; None for slots, replicas

    def describe(self) -> str:
        """"session pid 4242 (idle in transaction, psql, alice)", "prepared transaction 'tx1'",
        "inactive slot s1", "replica pg2 (hot_standby_feedback)"."""
        if self.kind == "session":
            detail = ", ".join(x for x in (self.state, self.application, self.owner) if x)
            return f"session pid {self.name}" + (f" ({detail})" if detail else "")
        if self.kind == "prepared":
            return f"prepared transaction '{self.name}'" + (f" ({self.owner})" if self.owner else "")
        if self.kind == "slot":
            return f"{self.state or ''} slot {self.name}".strip()
        return f"replica {self.name} (hot_standby_feedback)"


@dataclass(frozen=True, slots=True)
class ConnectionGroup:
    """Client connections sharing a database, user, application and state."""

    database: str | None
    user: str | None
    application: str
    state: str
    count: int


@dataclass(frozen=True, slots=True)
class ConnectionLimit:
    """A database's datconnlimit or a role's rolconnlimit, and the client connections counting against it."""

    name: str
    limit: int
    used: int


@dataclass(frozen=True, slots=True)
class WraparoundTable:
    relation: str
    xid_age: int
    mxid_age: int


@dataclass(frozen=True, slots=True)
class Statement:
    """pg_stat_statements row with deltas since the previous poll."""

    queryid: int
    query: str
    calls: int
    total_ms: float
    mean_ms: float
    rows: int
    calls_delta: int
    total_ms_delta: float


@dataclass(frozen=True, slots=True)
class Archiver:
    archived_count: int
    failed_count: int
    last_archived_wal: str | None
    last_archived_age_seconds: float | None
    last_failed_wal: str | None
    last_failed_age_seconds: float | None
    archive_mode: str  # on, off, always


@dataclass(frozen=True, slots=True)
class PoolRow:
    """PgBouncer SHOW POOLS joined with the pool size from SHOW DATABASES/CONFIG."""

    database: str
    user: str
    cl_active: int
    cl_waiting: int
    sv_active: int
    sv_idle: int
    sv_used: int
    maxwait_seconds: float
    pool_size: int | None
    pool_mode: str | None


@dataclass(frozen=True, slots=True)
class PgBouncerData:
    pools: tuple[PoolRow, ...]
    stats: tuple[tuple[str, int, int, int], ...]  # (database, total_xact_count, total_query_count, avg_wait_time_us)
    error: str | None = None  # set when PgBouncer could not be read; the member data stays valid


@dataclass(frozen=True, slots=True)
class PgMemberData:
    server_version: str
    in_recovery: bool
    timeline: int | None
    current_lsn: str | None  # pg_current_wal_lsn on a primary, last replayed on a standby
    max_connections: int
    connections_by_state: tuple[tuple[str, int], ...]  # (state, count), dbops' own excluded
    connections_total: int  # all backends counted against max_connections
    replicas: tuple[ReplicaRow, ...] = ()
    wal_receiver: WalReceiver | None = None
    slots: tuple[Slot, ...] = ()
    sessions: tuple[Session, ...] = ()  # non-idle client sessions
    statements: tuple[Statement, ...] | None = None  # None: pg_stat_statements not installed
    statements_note: str | None = None  # why statements is None, for the pane
    cache_hit_ratio: float | None = None  # percent, over blks_hit / (hit + read)
    max_xid_age: int | None = None
    max_xid_age_database: str | None = None
    archiver: Archiver | None = None
    pgbouncer: PgBouncerData | None = None
    # default_transaction_read_only = on server-wide (a switchover's fence): a primary that
    # takes no writes from well-behaved clients, so not a second writable primary.
    read_only_fence: bool = False
    vacuums: tuple[VacuumProgress, ...] = ()
    horizon: tuple[HorizonHolder, ...] = ()  # oldest first, at most queries.HORIZON_ROWS
    max_mxid_age: int | None = None
    max_mxid_age_database: str | None = None
    # The connection's database's tables nearest wraparound, oldest first: read every
    # adapter.WRAPAROUND_TABLES_EVERY seconds (pg_class is read whole), kept in between;
    # None until first read. wraparound_read_at: when (epoch seconds).
    wraparound_tables: tuple[WraparoundTable, ...] | None = None
    wraparound_read_at: float | None = None
    connection_groups: tuple[ConnectionGroup, ...] = ()  # busiest first, at most queries.CONNECTION_GROUPS
    reserved_connections: int = 0  # superuser_reserved_connections (+ reserved_connections, PG 16)
    database_limits: tuple[ConnectionLimit, ...] = ()  # databases with a datconnlimit
    role_limits: tuple[ConnectionLimit, ...] = ()  # login roles with a rolconnlimit
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def available_connections(self) -> int:
        """What clients may use: max_connections less the slots reserved for superusers (and
        pg_use_reserved_connections)."""
        return max(0, self.max_connections - self.reserved_connections)
