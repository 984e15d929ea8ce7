"""PostgreSQL adapter: one asyncpg connection per member, a poll in two round trips, and the
backend actions runbooks and the sessions pane call.

asyncpg is imported on first connect, in a worker thread, so the UI's first paint never waits
for it. The connection is reused across polls and dropped after any failure that may have left
it unusable (lost connection, timeout, cancelled poll); the next poll reconnects.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import sys
import time
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any, TypeVar

from dbops.config import ClusterRef, Member
from dbops.engines.base import Adapter, import_off_loop, redacted, tls_reachability
from dbops.engines.postgres import queries as Q
from dbops.engines.postgres.data import (
    Archiver,
    ConnectionGroup,
    ConnectionLimit,
    HorizonHolder,
    PgBouncerData,
    PgMemberData,
    ReplicaRow,
    Session,
    Slot,
    Statement,
    VacuumProgress,
    WalReceiver,
    WraparoundTable,
)
from dbops.engines.postgres.history import lsn_bytes
from dbops.engines.postgres.pgbouncer import PgBouncerReader
from dbops.model import Reachability, first_line
from dbops.secrets import CredentialRejected, Secret, SecretError, resolve, scrub_text, with_reread
from dbops.tls import TLSConfigError, client_context

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger(__name__)

_Row = TypeVar("_Row", bound="DataclassInstance")

TOP_STATEMENTS = 20
STATEMENTS_MISSING = (
    "pg_stat_statements not installed (add it to shared_preload_libraries and CREATE EXTENSION pg_stat_statements)"
)
STATEMENTS_WHEN_OPEN = "top statements are read while the cluster is open"

# The tables nearest wraparound are read from pg_class, whole: once a minute, not every refresh.
WRAPAROUND_TABLES_EVERY = 60.0


def _pgbouncer_member(cluster: ClusterRef) -> Member:
    members = cluster.cluster.members
    return next((m for m in members if m.role == "primary"), members[0])


class PostgresAdapter(Adapter):
    kind = "postgres"

    def __init__(self, cluster: ClusterRef, member: Member) -> None:
        super().__init__(cluster, member)
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._secret: Secret | None = None
        self._prev_statements: dict[int, tuple[int, float, int]] | None = None
        self._texts: dict[int, str] = {}
        self._pgbouncer: PgBouncerReader | None = None
        self._caught_up_at: float | None = None  # last poll at which this standby had replayed all it received
        self._written = WrittenWal()  # when this member, as a primary, had written which WAL position
        self._cache = CacheHitWindow()
        self._wraparound: tuple[tuple[WraparoundTable, ...], float] | None = None  # (tables, read at)
        self.collects_pgbouncer = cluster.cluster.pgbouncer is not None and _pgbouncer_member(cluster).name == member.name

    # -- connection ------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        return f"{self.member.host}:{self.member.port}"

    @property
    def backend_pid(self) -> int | None:
        """The server pid of dbops' own connection, when connected."""
        return self._conn.get_server_pid() if self._conn is not None and not self._conn.is_closed() else None

    def _ssl(self) -> Any:
        tls = self.cluster.cluster.tls
        if tls.mode == "disable":
            return False
        if tls.mode in ("prefer", "require"):
            return tls.mode
        return client_context(tls)  # verify-ca / verify-full

    async def _connect(self) -> Any:
        return await self.open_connection()

    async def open_connection(self, application_name: str = Q.APPLICATION_NAME, statement_timeout: float | None = None) -> Any:
        """A new asyncpg connection to this member with the cluster's credentials and TLS, not
        managed by the adapter (runbooks own theirs: another application_name, longer timeouts).
        The caller closes it.

        A password kept in a service (aws_secret, k8s_secret, rds_iam) comes from the in-memory
        cache of dbops.platform.credentials; when the server refuses it, it is read again once
        (rotated since it was cached) and the connect retried once (dbops.secrets.with_reread)."""
        asyncpg = await import_off_loop("asyncpg")
        from dbops.platform.credentials import credential

        cluster = self.cluster.cluster
        timeout = self.cluster.timeout
        ssl = self._ssl()

        async def attempt(secret: Secret | None) -> Any:
            self._secret = secret
            return await asyncpg.connect(
                host=self.member.host,
                port=self.member.port,
                user=cluster.user,
                database=cluster.database,
                password=secret.reveal() if secret is not None else None,
                ssl=ssl,
                timeout=timeout,
                server_settings={
                    "application_name": application_name,
                    "statement_timeout": str(int((statement_timeout or timeout) * 1000)),
                    "lock_timeout": "1000",
                    "idle_in_transaction_session_timeout": "60000",
                },
            )

        def refused(exc: BaseException) -> bool:
            return isinstance(exc, (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError))

        return await with_reread(credential(self.cluster, self.member), attempt, refused)

    async def _ensure(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            self._conn = await self._connect()
        return self._conn

    def _keeps_connection(self, exc: BaseException) -> bool:
        """True when the server answered with an error and the connection is still usable."""
        asyncpg = sys.modules.get("asyncpg")
        if asyncpg is None or self._conn is None or self._conn.is_closed():
            return False
        if not isinstance(exc, asyncpg.PostgresError):
            return False
        if isinstance(exc, asyncpg.QueryCanceledError):  # statement_timeout or a cancel: still usable
            return True
        return not isinstance(exc, (asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError))

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def _run(self, fn: Any) -> Any:
        """Run fn(conn) on the member's connection, one operation at a time."""
        async with self._lock:
            return await self._run_locked(fn)

    async def _run_locked(self, fn: Any) -> Any:
        try:
            conn = await self._ensure()
            return await fn(conn)
        except BaseException as exc:
            if not self._keeps_connection(exc):
                self._drop()
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            if self._lock.locked():
                conn.terminate()  # a poll or action is using it: do not wait for it
            else:
                try:
                    await conn.close(timeout=1.0)
                except Exception as exc:  # a dead peer cannot say goodbye; drop the socket
                    log.debug("closing the connection to %s failed, terminating it: %r", self.where, exc)
                    conn.terminate()
        bouncer, self._pgbouncer = self._pgbouncer, None
        if bouncer is not None:
            await bouncer.close()

    # -- collect ---------------------------------------------------------------------------------

    async def collect(self) -> PgMemberData:
        async with self._lock:
            bouncer_task: asyncio.Task[PgBouncerData] | None = None
            if self.collects_pgbouncer:
                # PgBouncer is read on its own connection, beside the member's queries.
                bouncer_task = asyncio.create_task(self._bouncer().read())
            try:
                data = await self._run_locked(self._collect)
            except BaseException:
                if bouncer_task is not None:
                    bouncer_task.cancel()
                    await asyncio.wait([bouncer_task])
                raise
            if bouncer_task is not None:
                data = replace(data, pgbouncer=await bouncer_task)
            return data

    def _bouncer(self) -> PgBouncerReader | _FailedReader:
        if self._pgbouncer is None:
            pb = self.cluster.cluster.pgbouncer
            assert pb is not None
            try:
                password = resolve(pb.password)
            except SecretError as exc:
                return _FailedReader(f"PgBouncer password: {exc}")
            # Half the poll timeout: PgBouncer runs beside the member's queries and a slow
            # PgBouncer must not make the member's poll time out.
            self._pgbouncer = PgBouncerReader(pb.host, pb.port, pb.user, password, self.cluster.timeout / 2)
        return self._pgbouncer

    async def _collect(self, conn: Any) -> PgMemberData:
        now = time.time()  # before the query: the WAL position it reads was written by then at the latest
        read_wraparound = self._wraparound is None or now - self._wraparound[1] >= WRAPAROUND_TABLES_EVERY
        row = await conn.fetchrow(Q.OVERVIEW, read_wraparound)
        if read_wraparound:
            self._wraparound = (wraparound_tables(row), now)
        statements: tuple[Statement, ...] | None
        note: str | None
        if not self.detailed:
            # Only the pane shows them: one statement fewer per refresh for a cluster not open.
            # Their deltas start again from the first refresh after it is opened.
            self._prev_statements = None
            statements, note = None, STATEMENTS_WHEN_OPEN
        elif row["has_pg_stat_statements"]:
            statements, note = await self._statements(conn)
        else:
            self._prev_statements, self._texts = None, {}
            statements, note = None, STATEMENTS_MISSING
        data = build_member_data(row, statements, note)
        data = replace(data, cache_hit_ratio=self._cache.update(row["blks_hit"], row["blks_read"]))
        if self._wraparound is not None:
            data = replace(data, wraparound_tables=self._wraparound[0], wraparound_read_at=self._wraparound[1])
        data, self._caught_up_at = bound_standby_lag(data, self._caught_up_at, time.time())
        return self._written.date_replicas(data, now)

    async def _statements(self, conn: Any) -> tuple[tuple[Statement, ...] | None, str | None]:
        asyncpg = await import_off_loop("asyncpg")
        try:
            totals = await conn.fetch(Q.STATEMENT_TOTALS)
        except asyncpg.ObjectNotInPrerequisiteStateError:
            self._prev_statements = None
            return None, "pg_stat_statements is installed but not loaded (add it to shared_preload_libraries and restart)"
        except asyncpg.InsufficientPrivilegeError:
            self._prev_statements = None
            return None, f"no permission to read pg_stat_statements (GRANT pg_read_all_stats TO {self.cluster.cluster.user})"
        current = {r["queryid"]: (r["calls"], r["total_ms"], r["rows"]) for r in totals}
        ranked = rank_statements(current, self._prev_statements)[:TOP_STATEMENTS]
        self._prev_statements = current
        missing = [qid for qid, *_ in ranked if qid not in self._texts]
        if missing:
            for r in await conn.fetch(Q.STATEMENT_TEXTS, ",".join(str(qid) for qid in missing)):
                # Utility statements are kept verbatim (ALTER ROLE ... PASSWORD '...'): scrubbed
                # here, before the text is cached, so no consumer ever holds the literal.
                self._texts[r["queryid"]] = scrub_text(r["query"] or "")
        # Keep texts only for statements that still exist, so the cache stays bounded.
        self._texts = {qid: text for qid, text in self._texts.items() if qid in current}
        out = []
        for qid, calls, total_ms, rows, calls_delta, total_ms_delta in ranked:
            out.append(
                Statement(
                    queryid=qid,
                    query=self._texts.get(qid, ""),
                    calls=calls,
                    total_ms=total_ms,
                    mean_ms=total_ms / calls if calls else 0.0,
                    rows=rows,
                    calls_delta=calls_delta,
                    total_ms_delta=total_ms_delta,
                )
            )
        return tuple(out), None

    # -- actions ---------------------------------------------------------------------------------

    async def session(self, pid: int) -> Session | None:
        """Re-read one backend (any state) just before acting on it; None when it is gone."""
        raw = await self._run(lambda conn: conn.fetchval(Q.SESSION, pid))
        return _session(json.loads(raw)) if raw is not None else None

    async def cancel_backend(self, pid: int) -> bool:
        return bool(await self._run(lambda conn: conn.fetchval(Q.CANCEL_BACKEND, pid)))

    async def terminate_backend(self, pid: int) -> bool:
        return bool(await self._run(lambda conn: conn.fetchval(Q.TERMINATE_BACKEND, pid)))

    # -- errors ----------------------------------------------------------------------------------

    def classify(self, exc: BaseException) -> tuple[Reachability, str]:
        return redacted(self._classify(exc), self._secret)

    def _classify(self, exc: BaseException) -> tuple[Reachability, str]:
        where = self.where
        user = self.cluster.cluster.user
        if isinstance(exc, CredentialRejected):
            return Reachability.AUTH, f"{where} rejected user {user}: {first_line(str(exc.cause))}; {exc}"
        if isinstance(exc, SecretError):
            return Reachability.AUTH, f"password for {user}: {exc}"
        if isinstance(exc, TLSConfigError):
            return Reachability.TLS, str(exc)
        tls = tls_reachability([exc], where)
        if tls is not None:
            return tls
        asyncpg = sys.modules.get("asyncpg")
        if asyncpg is not None:
            exs = asyncpg.exceptions
            if isinstance(exc, (exs.InvalidPasswordError, exs.InvalidAuthorizationSpecificationError)):
                return Reachability.AUTH, f"{where} rejected user {user}: {first_line(str(exc))}"
            if isinstance(exc, exs.QueryCanceledError):
                return Reachability.TIMEOUT, f"{where} did not finish the poll within {self.cluster.timeout:g}s"
            if isinstance(exc, exs.CannotConnectNowError):
                return Reachability.DOWN, f"{where} is not accepting connections: {first_line(str(exc))}"
            if isinstance(exc, (exs.PostgresConnectionError, exs.OperatorInterventionError)):
                return Reachability.DOWN, f"connection to {where} lost: {first_line(str(exc))}"
            if isinstance(exc, (exs.ConnectionDoesNotExistError, exs.InterfaceError)) and "closed" in str(exc).lower():
                return Reachability.DOWN, f"connection to {where} was closed"
            if isinstance(exc, exs.TooManyConnectionsError):
                return Reachability.ERROR, f"{where} has no free connection slot: {first_line(str(exc))}"
            if isinstance(exc, exs.InvalidCatalogNameError):
                return Reachability.ERROR, f"{where}: {first_line(str(exc))}"
            if isinstance(exc, exs.PostgresError):
                return Reachability.ERROR, f"{where} answered an error: {first_line(str(exc))}"
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            return Reachability.TIMEOUT, f"no answer from {where} within {self.cluster.timeout:g}s"
        if isinstance(exc, ConnectionRefusedError):
            return Reachability.DOWN, f"connection refused at {where}"
        if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
            return Reachability.TLS, f"{where} does not accept TLS (tls.mode = {self.cluster.cluster.tls.mode})"
        if isinstance(exc, (ConnectionError, asyncio.IncompleteReadError)):
            return Reachability.DOWN, f"connection to {where} lost: {first_line(str(exc)) or type(exc).__name__}"
        if isinstance(exc, OSError):
            text = str(exc)
            if text.startswith("Multiple exceptions") and text.count("[Errno 111]") == text.count("[Errno"):
                # every address of the host name refused (e.g. localhost -> ::1 and 127.0.0.1)
                return Reachability.DOWN, f"connection refused at {where}"
            if exc.__class__.__name__ == "gaierror":
                return Reachability.DOWN, f"cannot resolve host {self.member.host}: {exc.strerror or exc}"
            return Reachability.DOWN, f"cannot reach {where}: {exc.strerror or first_line(str(exc)) or type(exc).__name__}"
        return Reachability.ERROR, f"{where}: {type(exc).__name__}: {first_line(str(exc))}"


class _FailedReader:
    """Stands in for a PgBouncerReader whose credentials cannot be resolved."""

    def __init__(self, error: str) -> None:
        self.error = error

    async def read(self) -> PgBouncerData:
        return PgBouncerData(pools=(), stats=(), error=self.error)

    async def close(self) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# Row -> dataclasses (pure)


def rank_statements(
    current: dict[int, tuple[int, float, int]], previous: dict[int, tuple[int, float, int]] | None
) -> list[tuple[int, int, float, int, int, float]]:
    """(queryid, calls, total_ms, rows, calls_delta, total_ms_delta), busiest first.

    First poll (previous is None): every delta is 0. A statement new since the last poll, or one
    whose counters went backwards (pg_stat_statements_reset), counts its whole total as delta.
    """
    out = []
    for qid, (calls, total_ms, rows) in current.items():
        if previous is None:
            dc, dt = 0, 0.0
        else:
            prev = previous.get(qid)
            if prev is None or calls < prev[0] or total_ms < prev[1]:
                dc, dt = calls, total_ms
            else:
                dc, dt = calls - prev[0], total_ms - prev[1]
        out.append((qid, calls, total_ms, rows, dc, dt))
    out.sort(key=lambda r: (r[5], r[2]), reverse=True)
    return out


def _from_json(cls: type[_Row], d: dict[str, Any], **converted: Any) -> _Row:
    """A dataclass from one JSON object of the poll's query: the query names its keys after the
    dataclass' fields, so each field not `converted` by the caller is read under its own name (a
    key missing from the object raises KeyError, as an explicit d["name"] would)."""
    return cls(**{f.name: d[f.name] for f in fields(cls) if f.name not in converted}, **converted)


def _session(d: dict[str, Any]) -> Session:
    return _from_json(
        Session, d,
        application_name=d["application_name"] or "",
        # pg_stat_activity shows a statement as the client sent it, passwords included.
        query=scrub_text(d["query"] or ""),
        query_age_seconds=d["query_age"],
        xact_age_seconds=d["xact_age"],
        state_age_seconds=d["state_age"],
        blocked_by=tuple(d["blocked_by"] or ()),
        backend_type=d.get("backend_type") or "client backend",
    )


def wraparound_tables(row: Any) -> tuple[WraparoundTable, ...]:
    return tuple(_from_json(WraparoundTable, t) for t in json.loads(row["wraparound_tables"] or "[]"))


def _limits(raw: str | None) -> tuple[ConnectionLimit, ...]:
    return tuple(ConnectionLimit(name, int(limit), int(used)) for name, limit, used in json.loads(raw or "[]"))


def build_member_data(row: Any, statements: tuple[Statement, ...] | None, note: str | None) -> PgMemberData:
    in_recovery = bool(row["in_recovery"])
    replicas = tuple(_from_json(ReplicaRow, r, application_name=r["application_name"] or "",
                                replayed_all_written_by=None, written_after=())  # not the server's: WrittenWal dates it
                     for r in json.loads(row["replicas"]))
    wal_receiver = None
    if in_recovery:
        w = json.loads(row["wal_receiver"]) if row["wal_receiver"] is not None else {}
        wal_receiver = WalReceiver(
            status=w.get("status"),
            sender_host=w.get("sender_host"),
            sender_port=w.get("sender_port"),
            slot_name=w.get("slot_name"),
            received_lsn=row["received_lsn"],
            replayed_lsn=row["replayed_lsn"],
            replay_lag_bytes=row["standby_replay_lag_bytes"],
            replay_lag_seconds=row["standby_replay_lag_seconds"],
            replay_paused=bool(row["replay_paused"]),
            last_msg_age_seconds=w.get("last_msg_age"),
        )
    slots = tuple(_from_json(Slot, s, active=bool(s["active"])) for s in json.loads(row["slots"]))
    archiver = Archiver(
        archived_count=row["archived_count"],
        failed_count=row["failed_count"],
        last_archived_wal=row["last_archived_wal"],
        last_archived_age_seconds=row["last_archived_age"],
        last_failed_wal=row["last_failed_wal"],
        last_failed_age_seconds=row["last_failed_age"],
        archive_mode=row["archive_mode"],
    )
    return PgMemberData(
        server_version=row["server_version"],
        in_recovery=in_recovery,
        timeline=row["timeline"],
        current_lsn=row["current_lsn"],
        max_connections=row["max_connections"],
        connections_by_state=tuple((state, n) for state, n in json.loads(row["connections_by_state"])),
        connections_total=row["connections_total"],
        replicas=replicas,
        wal_receiver=wal_receiver,
        slots=slots,
        sessions=tuple(_session(s) for s in json.loads(row["sessions"])),
        statements=statements,
        statements_note=note,
        cache_hit_ratio=None,  # a rate over the last polls, filled in by CacheHitWindow
        max_xid_age=row["max_xid_age"],
        max_xid_age_database=row["max_xid_age_database"],
        archiver=archiver,
        read_only_fence=bool(row[Q.READ_ONLY_FENCE]),
        vacuums=tuple(
            _from_json(VacuumProgress, v, query=scrub_text(v["query"] or ""), autovacuum=bool(v["autovacuum"]),
                       elapsed_seconds=v["elapsed"])
            for v in json.loads(row["vacuums"])
        ),
        horizon=tuple(_from_json(HorizonHolder, h, application=h["application"] or "") for h in json.loads(row["horizon"])),
        max_mxid_age=row["max_mxid_age"],
        max_mxid_age_database=row["max_mxid_age_database"],
        connection_groups=tuple(
            ConnectionGroup(db, user, app or "", state, int(n)) for db, user, app, state, n in json.loads(row["connection_groups"])
        ),
        reserved_connections=int(row["reserved_connections"] or 0),
        database_limits=_limits(row["database_limits"]),
        role_limits=_limits(row["role_limits"]),
        # (data.py's WalReceiver has no field for it yet; assess.replica_lag reads it from here)
        extra={Q.REPLAY_WAITING_FOR_WAL: bool(row[Q.REPLAY_WAITING_FOR_WAL])} if in_recovery else {},
    )


def bound_standby_lag(data: PgMemberData, caught_up_at: float | None, now: float) -> tuple[PgMemberData, float | None]:
    """Cap a standby's own replay lag in seconds by how long it has been behind.

    The assessment judges a standby's seconds lag from the primary's pg_stat_replication when
    it has it (assess.replica_lag); this own estimate counts only without a primary view.

    "now - last replayed commit" alone cries wolf after a quiet spell: the first few KB of WAL
    after an hour without commits would read as an hour of lag. A standby that this adapter saw
    fully caught up at `caught_up_at` cannot be further behind than `now - caught_up_at`, so
    the smaller of the two is reported. A standby that has been behind since before dbops
    started keeps the server's figure. Returns the data and the new caught-up time.

    The caught-up time is kept in `extra[CAUGHT_UP_AT]` too: the primary's replay_lag is bounded
    by it when the cluster is judged (assess.replica_lag).
    """
    w = data.wal_receiver
    if w is None:
        return data, None
    if not w.replay_lag_bytes or data.extra.get(Q.REPLAY_WAITING_FOR_WAL) is True:
        # Nothing left it could replay: caught up.
        return replace(data, extra={**data.extra, Q.CAUGHT_UP_AT: now}), now
    if caught_up_at is None:
        return data, caught_up_at
    data = replace(data, extra={**data.extra, Q.CAUGHT_UP_AT: caught_up_at})
    behind_for = max(0.0, now - caught_up_at)
    if w.replay_lag_seconds is not None and w.replay_lag_seconds > behind_for:
        data = replace(data, wal_receiver=replace(w, replay_lag_seconds=behind_for))
    return data, caught_up_at


# Distinct WAL positions a primary's adapter keeps (one per refresh that saw WAL written: 20
# minutes of a busy primary at a 2 s refresh). A standby further behind than the oldest goes
# unbounded: the walsender's replay_lag stands.
WRITTEN_WAL_KEPT = 600
# Positions past a standby's replay_lsn given with its row (ReplicaRow.written_after): the ones
# a standby read a moment later than its row may have replayed past.
WRITTEN_AFTER_GIVEN = 8


class WrittenWal:
    """When a primary had written which WAL position, from this adapter's own polls: evidence of
    a standby's replay lag that does not go through the walsender's lag tracker.

    A standby whose replay_lsn has reached the position the primary had written at time t has
    replayed everything written by then: nothing it has yet to replay is older than now - t.
    The lag tracker can say more: when the WAL that completes a record left unfinished across a
    pause arrives (see queries.REPLAY_WAITING_FOR_WAL), the standby replays past a position the
    walsender timed when the pause began, and for a status reply replay_lag reads the whole
    pause. assess.replica_lag takes the smaller of the two.
    """

    def __init__(self, kept: int = WRITTEN_WAL_KEPT) -> None:
        self._kept = kept
        self._positions: list[int] = []  # ascending
        self._seen_at: list[float] = []  # the last poll (its start) that read each position

    def note(self, position: int, at: float) -> None:
        """The primary's WAL position read by a poll that started at `at`."""
        if self._positions and position < self._positions[-1]:
            # WAL went back (restored from a backup, rewound, another server at this address):
            # what was written when no longer says anything.
            self.forget()
        if self._positions and position == self._positions[-1]:
            self._seen_at[-1] = at
            return
        self._positions.append(position)
        self._seen_at.append(at)
        if len(self._positions) > 2 * self._kept:  # trimmed in halves: one list copy per `kept` polls
            del self._positions[: self._kept], self._seen_at[: self._kept]

    def forget(self) -> None:
        self._positions.clear()
        self._seen_at.clear()

    def replayed_all_by(self, replayed: int) -> float | None:
        """The latest poll start by which the primary had written nothing beyond `replayed`."""
        i = bisect.bisect_right(self._positions, replayed)
        return self._seen_at[i - 1] if i else None

    def written_after(self, replayed: int, count: int = WRITTEN_AFTER_GIVEN) -> tuple[tuple[int, float], ...]:
        """The first `count` positions past `replayed`, each with the latest poll start that read it."""
        i = bisect.bisect_right(self._positions, replayed)
        return tuple(zip(self._positions[i:i + count], self._seen_at[i:i + count]))

    def date_replicas(self, data: PgMemberData, polled_at: float) -> PgMemberData:
        """Note a primary's position and give each of its replica rows replayed_all_written_by
        and written_after."""
        position = None if data.in_recovery else lsn_bytes(data.current_lsn)
        if position is None:
            self.forget()  # a standby now (or no position): a later promotion starts afresh
            return data
        self.note(position, polled_at)
        if not data.replicas:
            return data
        rows = []
        for r in data.replicas:
            replayed = lsn_bytes(r.replay_lsn)
            rows.append(r if replayed is None else replace(r, replayed_all_written_by=self.replayed_all_by(replayed),
                                                            written_after=self.written_after(replayed)))
        return replace(data, replicas=tuple(rows))


class CacheHitWindow:
    """Cache hit ratio over recent activity, not since the last stats reset.

    The cumulative ratio in pg_stat_database remembers a cold start for months and hides a
    working set that stopped fitting in memory an hour ago. This measures the blocks accessed
    since the window opened and judges only once MIN_BLOCKS have been accessed, so a nearly idle
    server is not judged on a handful of reads; the last judged ratio is kept meanwhile.
    """

    MIN_BLOCKS = 10_000

    def __init__(self) -> None:
        self._start: tuple[float, float] | None = None
        self.ratio: float | None = None

    def update(self, hit: float | None, read: float | None) -> float | None:
        if hit is None or read is None:
            return self.ratio
        if self._start is None or hit < self._start[0] or read < self._start[1]:
            self._start = (hit, read)  # first poll, or the counters were reset
            return self.ratio
        d_hit, d_read = hit - self._start[0], read - self._start[1]
        if d_hit + d_read >= self.MIN_BLOCKS:
            self.ratio = 100.0 * d_hit / (d_hit + d_read)
            self._start = (hit, read)
        return self.ratio


async def connect_primary(ref: ClusterRef, application_name: str) -> Any | None:
    """A connection to whichever member is primary right now (asked, not taken from the config's
    role hints, which go stale after a switchover); None when no member answers as primary."""
    for member in ref.cluster.members:
        try:
            conn = await PostgresAdapter(ref, member).open_connection(application_name)
        except Exception as exc:  # an unreachable member is expected here: try the next one
            log.debug("connect_primary: %s unreachable: %s", member.name, type(exc).__name__)
            continue
        if not await conn.fetchval("SELECT pg_is_in_recovery()"):
            return conn
        await conn.close()
    return None
