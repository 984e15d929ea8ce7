"""The operations of a planned PostgreSQL switchover (and of a failover), one small async
function each, for the runbook engine to call step by step.

Every function does one thing, returns a small frozen result, raises `SwitchoverError` with a
message safe to show (no secret) when it cannot do it, and is safe to call again after a crash
(a resumed runbook repeats the step it was in). Each has a `describe_*` twin that renders the
exact SQL for the plan shown to the operator, secrets redacted; both read the same constants.

Members are `Conn` objects: a connection opened on first use with application_name 'dbops' and
the cluster's statement_timeout (PostgresAdapter's connection), reopened after a loss. Steps
that may run long (CHECKPOINT, pg_promote) raise statement_timeout for that one statement.

The order that keeps every replica able to follow the new timeline (see `repoint_replica`):

    precheck -> checkpoint -> ensure_slot + repoint_replica(other replicas -> candidate) ->
    wait_streaming_from(candidate) -> fence_primary -> wait_replayed(final LSN) -> promote ->
    verify_new_primary -> wait_streaming_from(new primary, caught_up_to=probe LSN) ->
    rejoin the old primary (pg_rewind: sandbox.postgres.rejoin_as_replica, or the manual
    commands of `rejoin_commands`)

Replicas repointed only after the promotion may have replayed WAL the fenced old primary wrote
after the candidate's switch point, and then cannot follow: `can_follow` tells (pg_rewind them).

`unfence` gives writes back to the old primary when a switchover is aborted before promote.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import re
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

from dbops.config import ClusterRef, Member
from dbops.engines.postgres.adapter import PostgresAdapter
from dbops.engines.postgres.queries import APPLICATION_NAME
from dbops.secrets import scrub_text

MiB = 1024 * 1024
DEFAULT_MAX_LAG_BYTES = 1 * MiB
POLL_INTERVAL = 0.1  # seconds between polls of the waits

# Client sessions the fence leaves alone: dbops' own (application_name 'dbops': the console's
# pollers and these steps) and the runbook lock's connection (dbops.runbook.locks names it
# 'dbops-lock <run> <operator>@<host>'); every other client backend is ended.
SPARED_APPLICATION_NAME = APPLICATION_NAME
SPARED_APPLICATION_PREFIX = "dbops-lock "

PROBE_SCHEMA = "dbops"
PROBE_TABLE = "dbops.write_probe"


class SwitchoverError(Exception):
    """A step could not do what it says. The message names the member and is safe to show."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class PromotionInDoubt(SwitchoverError):
    """pg_promote was sent and, within the time allowed, the candidate neither left recovery nor
    showed that no promotion is pending. It may still promote: never promote another member
    while this stands; poll the candidate again (calling `promote` again is safe)."""


# ---------------------------------------------------------------------------------------------
# SQL (the functions run these; the describe_* functions render them)

SQL_STATUS = """\
SELECT pg_is_in_recovery() AS in_recovery,
       CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()::text END AS current_lsn,
       pg_last_wal_receive_lsn()::text AS receive_lsn,
       pg_last_wal_replay_lsn()::text AS replay_lsn,
       CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END AS pause_state,
       w.status AS receiver_status, w.sender_host, w.sender_port,
       CASE WHEN NOT pg_is_in_recovery()
            THEN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
            WHEN w.received_tli > 0 THEN w.received_tli
            WHEN has_function_privilege('pg_ls_waldir()', 'EXECUTE')
            THEN (SELECT max(('x' || substr(name, 1, 8))::bit(32)::int) FROM pg_ls_waldir()
                   WHERE name ~ '^[0-9A-F]{24}(\\.partial)?$')
       END AS standby_timeline,
       (SELECT timeline_id FROM pg_control_checkpoint()) AS checkpoint_timeline
  FROM (SELECT 1) one LEFT JOIN pg_stat_wal_receiver w ON true"""
# A standby's timeline: its walreceiver's while it streams; otherwise the newest timeline of the
# WAL segments in pg_wal (needs pg_monitor or superuser); last, its last restartpoint's (stale:
# a standby that followed a promotion keeps the old one there until its next restartpoint).

# Another promotion under way: a session running pg_promote, or the promote signal file that
# pg_promote()/pg_ctl promote leave in the data directory until the startup process takes it.
SQL_PROMOTION_RUNNING = r"""SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                WHERE pid <> pg_backend_pid() AND state = 'active' AND query ~* 'pg_promote\s*\(') AS promoting_session,
       (pg_stat_file('promote', true)).size IS NOT NULL AS promote_signal"""

SQL_IN_RECOVERY = "SELECT pg_is_in_recovery()"
SQL_CHECKPOINT = "CHECKPOINT"
SQL_CURRENT_LSN = "SELECT pg_current_wal_lsn()::text"

SQL_FENCE_SET = "ALTER SYSTEM SET default_transaction_read_only = on"
SQL_RELOAD = "SELECT pg_reload_conf()"
SQL_SHOW_READ_ONLY = "SELECT current_setting('default_transaction_read_only'), clock_timestamp()"
_CLIENTS_WHERE = f"""backend_type = 'client backend'
   AND pid <> pg_backend_pid()
   AND application_name IS DISTINCT FROM '{SPARED_APPLICATION_NAME}'
   AND application_name NOT LIKE '{SPARED_APPLICATION_PREFIX}%'"""
SQL_CLIENTS = f"""SELECT pid, usename, application_name, host(client_addr) AS client_addr
  FROM pg_stat_activity
 WHERE {_CLIENTS_WHERE}"""
SQL_TERMINATE = "SELECT pg_terminate_backend($1, $2)"  # $2: ms to wait for the backend to exit
SQL_CLIENTS_BEFORE = SQL_CLIENTS + "\n   AND backend_start <= $1"
SQL_FINAL_LSN = """SELECT pg_current_wal_flush_lsn()::text AS lsn,
       ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int AS timeline"""
SQL_FENCE_RESET = "ALTER SYSTEM RESET default_transaction_read_only"
SQL_FENCE_SOURCE = """SELECT setting, source, sourcefile
  FROM pg_settings WHERE name = 'default_transaction_read_only'"""

SQL_REPLAY = """SELECT pg_last_wal_replay_lsn()::text AS replay_lsn,
       coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false) AS replayed,
       pg_is_in_recovery() AS in_recovery,
       CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END AS pause_state"""

SQL_PROMOTE = "SELECT pg_promote(wait => true, wait_seconds => $1)"
SQL_PROMOTION_STATE = """SELECT pg_is_in_recovery() AS in_recovery,
       (SELECT status FROM pg_stat_wal_receiver) AS receiver_status,
       (SELECT wait_event FROM pg_stat_activity WHERE backend_type = 'startup' LIMIT 1) AS startup_wait,
       EXISTS (SELECT 1 FROM pg_stat_activity
                WHERE pid <> pg_backend_pid() AND state = 'active' AND query ~* 'pg_promote\\s*\\(') AS promoting_session"""
SQL_PROMOTE_SIGNAL = "SELECT (pg_stat_file('promote', true)).size IS NOT NULL"
SQL_TIMELINE = "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"

SQL_PROBE_SCHEMA = f"CREATE SCHEMA IF NOT EXISTS {PROBE_SCHEMA}"
SQL_PROBE_TABLE = f"""CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (
    member text PRIMARY KEY,
    written_at timestamptz NOT NULL,
    timeline int NOT NULL
)"""
SQL_PROBE_WRITE = f"""INSERT INTO {PROBE_TABLE} (member, written_at, timeline) VALUES ($1, clock_timestamp(), $2)
ON CONFLICT (member) DO UPDATE SET written_at = excluded.written_at, timeline = excluded.timeline"""

SQL_SLOT = "SELECT slot_type FROM pg_replication_slots WHERE slot_name = $1"
SQL_CREATE_SLOT = "SELECT pg_create_physical_replication_slot($1, true)"  # true: reserve WAL now

SQL_SHOW_CONNINFO = "SELECT current_setting('primary_conninfo'), current_setting('primary_slot_name')"
SQL_RENDER_CONNINFO = "SELECT 'ALTER SYSTEM SET primary_conninfo = ' || quote_literal($1)"
SQL_SET_SLOT = "ALTER SYSTEM SET primary_slot_name = {slot}"
SQL_RESET_SLOT = "ALTER SYSTEM RESET primary_slot_name"

SQL_STREAMING = """SELECT coalesce(bool_or(state = 'streaming'), false) AS streaming,
       coalesce(bool_or(state = 'streaming' AND ($2::text::pg_lsn IS NULL OR replay_lsn >= $2::text::pg_lsn)), false) AS caught_up,
       max(replay_lsn)::text AS replay_lsn,
       string_agg(DISTINCT state, ',') AS states
  FROM pg_stat_replication WHERE application_name = $1"""

_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")


# ---------------------------------------------------------------------------------------------
# LSNs


def lsn_to_int(lsn: str) -> int:
    """'16/B374D848' -> its byte position."""
    hi, _, lo = lsn.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def int_to_lsn(pos: int) -> str:
    return f"{pos >> 32:X}/{pos & 0xFFFFFFFF:X}"


# ---------------------------------------------------------------------------------------------
# Connections


class Conn:
    """One member for the switchover steps: PostgresAdapter's connection (application_name
    'dbops', statement_timeout = the cluster's timeout), opened on first use and reopened on the
    next call after it was lost. Calls on one Conn run one at a time."""

    def __init__(self, adapter: PostgresAdapter) -> None:
        self.adapter = adapter

    @classmethod
    def for_member(cls, ref: ClusterRef, member: Member | str) -> Conn:
        if isinstance(member, str):
            found = next((m for m in ref.cluster.members if m.name == member), None)
            if found is None:
                raise SwitchoverError(f"cluster {ref.name} has no member {member!r}")
            member = found
        return cls(PostgresAdapter(ref, member))

    @property
    def name(self) -> str:
        return self.adapter.member.name

    @property
    def host(self) -> str:
        return self.adapter.member.host

    @property
    def port(self) -> int:
        port = self.adapter.member.port
        assert port is not None  # a loaded config's Cluster fills in the engine's default port
        return port

    @property
    def timeout(self) -> float:
        return self.adapter.cluster.timeout

    @property
    def backend_pid(self) -> int | None:
        return self.adapter.backend_pid

    async def close(self) -> None:
        await self.adapter.close()

    def error(self, exc: BaseException) -> str:
        """A message for an exception from this member, safe to show."""
        asyncpg = sys.modules.get("asyncpg")
        if asyncpg is not None and isinstance(exc, asyncpg.QueryCanceledError):
            return f"{self.adapter.where} cancelled the statement: {scrub_text(str(exc).strip())}"
        return scrub_text(self.adapter.classify(exc)[1])

    async def _call(self, method: str, sql: str, args: tuple[Any, ...], timeout: float | None) -> Any:
        """conn.<method>(sql, *args); with `timeout`, statement_timeout is raised to it for this
        one statement. A client-side timeout a little past the server's bounds every call,
        so a server that stopped answering (SIGSTOP, a dead network) cannot hang a step."""
        limit = timeout if timeout is not None else self.timeout

        async def fn(conn: Any) -> Any:
            if timeout is None:
                return await getattr(conn, method)(sql, *args, timeout=limit + 2)
            await conn.execute(f"SET statement_timeout = {max(1, int(timeout * 1000))}", timeout=self.timeout + 2)
            try:
                result = await getattr(conn, method)(sql, *args, timeout=limit + 2)
            except BaseException:
                # Keep the statement's own error; a connection that cannot RESET is dropped anyway.
                if not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.execute("RESET statement_timeout", timeout=self.timeout + 2)
                raise
            # Back to the connection's own value (RESET returns to the startup packet's).
            await conn.execute("RESET statement_timeout", timeout=self.timeout + 2)
            return result

        return await self.adapter._run(fn)

    async def fetchrow(self, sql: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._call("fetchrow", sql, args, timeout)

    async def fetchval(self, sql: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._call("fetchval", sql, args, timeout)

    async def fetch(self, sql: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._call("fetch", sql, args, timeout)

    async def execute(self, sql: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._call("execute", sql, args, timeout)


def _asyncpg_error(name: str) -> type[BaseException] | tuple[()]:
    asyncpg = sys.modules.get("asyncpg")
    return getattr(asyncpg, name, ()) if asyncpg is not None else ()


def _transient(exc: BaseException) -> bool:
    """A failure worth polling through: the member is (re)starting, the connection was lost or
    the statement timed out. Anything else (a wrong argument, no permission) will not heal."""
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError)):
        return True
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is None:
        return False
    exs = asyncpg.exceptions
    return isinstance(exc, (exs.PostgresConnectionError, exs.InterfaceError, exs.CannotConnectNowError,
                            exs.OperatorInterventionError, exs.QueryCanceledError, exs.TooManyConnectionsError))


async def _step(conn: Conn, what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run one statement of a step; any failure becomes a SwitchoverError naming the member."""
    try:
        return await fn()
    except SwitchoverError:
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # every driver/network error is reported the same way
        raise SwitchoverError(f"{what} on {conn.name} failed: {conn.error(exc)}") from None


# ---------------------------------------------------------------------------------------------
# Results


class CheckVerdict(NamedTuple):
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class MemberStatus:
    """What precheck read from one member (None fields: unreachable or not applicable)."""

    name: str
    reachable: bool
    error: str | None = None
    in_recovery: bool | None = None
    current_lsn: str | None = None
    receive_lsn: str | None = None
    replay_lsn: str | None = None
    pause_state: str | None = None
    receiver_status: str | None = None
    sender: str | None = None
    timeline: int | None = None

    @property
    def furthest_lsn(self) -> str | None:
        """The most WAL this standby holds: received or replayed, whichever is further."""
        known = [lsn for lsn in (self.receive_lsn, self.replay_lsn) if lsn]
        return max(known, key=lsn_to_int) if known else None


@dataclass(frozen=True)
class PromotionPrecheck:
    mode: str  # "switchover" (a primary answers) or "failover" (none does)
    candidate: str
    primary: str | None
    primary_lsn: str | None
    timeline: int | None  # the primary's (failover: the candidate's)
    candidate_replay_lsn: str | None
    lag_bytes: int | None  # primary current LSN - candidate replay LSN
    max_lag_bytes: int
    verdicts: tuple[CheckVerdict, ...]
    members: tuple[MemberStatus, ...]

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    @property
    def failed(self) -> tuple[CheckVerdict, ...]:
        return tuple(v for v in self.verdicts if not v.ok)


@dataclass(frozen=True)
class CheckpointResult:
    member: str
    lsn: str  # pg_current_wal_lsn() after the checkpoint
    seconds: float


@dataclass(frozen=True)
class FenceResult:
    member: str
    terminated: int
    terminated_sessions: tuple[str, ...]  # "pid user application client" of each ended session
    final_lsn: str  # wait until the candidate has replayed this
    timeline: int
    seconds: float


@dataclass(frozen=True)
class ReplayResult:
    member: str
    target_lsn: str
    replay_lsn: str
    seconds: float


@dataclass(frozen=True)
class PromoteResult:
    member: str
    timeline: int
    already_primary: bool  # it was out of recovery before this call (a resumed run)
    pg_promote_returned: bool | None  # None: not sent, or no answer (connection lost, timeout)
    seconds: float


@dataclass(frozen=True)
class VerifyResult:
    member: str
    timeline: int
    probe_ms: float  # the write probe's INSERT round trip
    probe_lsn: str  # pg_current_wal_lsn() after the probe: a replica past it follows this primary


@dataclass(frozen=True)
class SlotResult:
    member: str
    slot_name: str
    created: bool


@dataclass(frozen=True)
class RepointResult:
    member: str
    primary_conninfo: str  # the new value, password redacted
    slot_name: str | None
    changed: bool


@dataclass(frozen=True)
class StreamingResult:
    member: str  # the upstream whose pg_stat_replication was read
    application_name: str
    replay_lsn: str | None
    seconds: float


@dataclass(frozen=True)
class UnfenceResult:
    member: str
    was_fenced: bool  # default_transaction_read_only came from ALTER SYSTEM before this call


# ---------------------------------------------------------------------------------------------
# precheck


async def _status(conn: Conn) -> MemberStatus:
    try:
        row = await conn.fetchrow(SQL_STATUS)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # unreachable is a verdict, not an error
        return MemberStatus(conn.name, False, error=conn.error(exc))
    sender = f"{row['sender_host']}:{row['sender_port']}" if row["sender_host"] else None
    return MemberStatus(
        conn.name, True,
        in_recovery=bool(row["in_recovery"]),
        current_lsn=row["current_lsn"],
        receive_lsn=row["receive_lsn"],
        replay_lsn=row["replay_lsn"],
        pause_state=row["pause_state"],
        receiver_status=row["receiver_status"],
        sender=sender,
        timeline=row["standby_timeline"] or row["checkpoint_timeline"],
    )


async def _promotion_running(conn: Conn) -> CheckVerdict:
    try:
        row = await conn.fetchrow(SQL_PROMOTION_RUNNING)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return CheckVerdict(f"no-promotion-running:{conn.name}", False, f"cannot tell on {conn.name}: {conn.error(exc)}")
    if row["promoting_session"] or row["promote_signal"]:
        why = "a session is running pg_promote" if row["promoting_session"] else "the promote signal file is present"
        return CheckVerdict(f"no-promotion-running:{conn.name}", False, f"{conn.name}: {why}")
    return CheckVerdict(f"no-promotion-running:{conn.name}", True, f"{conn.name}: no promotion under way")


async def precheck(
    conn_by_member: Mapping[str, Conn], candidate: str, max_lag_bytes: int = DEFAULT_MAX_LAG_BYTES
) -> PromotionPrecheck:
    """Read-only checks before promoting `candidate`; never raises for a failed check.

    Runs on every member (concurrently): SQL_STATUS (pg_is_in_recovery(), pg_current_wal_lsn(),
    pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), pg_get_wal_replay_pause_state(),
    pg_stat_wal_receiver status/sender/received_tli, the timeline from
    pg_walfile_name(pg_current_wal_lsn()) on a primary) and SQL_PROMOTION_RUNNING (a session in
    pg_promote, pg_stat_file('promote', true)).

    Switchover (a member answers out of recovery): exactly one primary; the candidate is in
    recovery, its walreceiver is 'streaming', replay is not paused, it is on the primary's
    timeline, and primary current LSN - candidate replay LSN <= max_lag_bytes.
    Failover (no member answers as primary): the candidate is in recovery, not paused, and the
    most advanced reachable replica by received (or replayed) LSN on the same timeline.
    """
    verdicts: list[CheckVerdict] = []
    if candidate not in conn_by_member:
        verdicts.append(CheckVerdict("candidate-known", False, f"{candidate} is not a member ({', '.join(conn_by_member)})"))
        return PromotionPrecheck("switchover", candidate, None, None, None, None, None, max_lag_bytes, tuple(verdicts), ())
    conns = list(conn_by_member.values())
    statuses = await asyncio.gather(*(_status(c) for c in conns))
    by_name = {s.name: s for s in statuses}
    cand = by_name[conn_by_member[candidate].name]
    primaries = [s for s in statuses if s.reachable and s.in_recovery is False and s.name != cand.name]
    unreachable = [s for s in statuses if not s.reachable]
    mode = "switchover" if primaries else "failover"

    if not cand.reachable:
        verdicts.append(CheckVerdict("candidate-reachable", False, f"{cand.name}: {cand.error}"))
    if cand.reachable:
        verdicts.append(CheckVerdict(
            "candidate-in-recovery", bool(cand.in_recovery),
            f"{cand.name} is a standby" if cand.in_recovery else f"{cand.name} is not in recovery: it is a primary already",
        ))
    if cand.reachable and cand.in_recovery:
        paused = cand.pause_state not in (None, "not paused")
        verdicts.append(CheckVerdict(
            "replay-not-paused", not paused,
            f"replay on {cand.name} is {cand.pause_state}" + (" (SELECT pg_wal_replay_resume())" if paused else ""),
        ))

    primary: MemberStatus | None = None
    lag: int | None = None
    timeline = cand.timeline
    if mode == "switchover":
        names = ", ".join(p.name for p in primaries)
        verdicts.append(CheckVerdict(
            "single-primary", len(primaries) == 1,
            f"primary: {names}" if len(primaries) == 1 else f"more than one member is out of recovery: {names}",
        ))
        primary = primaries[0]
        timeline = primary.timeline
        if cand.reachable and cand.in_recovery:
            streaming = cand.receiver_status == "streaming"
            verdicts.append(CheckVerdict(
                "candidate-streaming", streaming,
                f"{cand.name} streams from {cand.sender}" if streaming
                else f"{cand.name}'s walreceiver is {cand.receiver_status or 'not running'}",
            ))
            same = cand.timeline == primary.timeline
            verdicts.append(CheckVerdict(
                "same-timeline", same,
                f"timeline {primary.timeline} on {primary.name} and {cand.name}" if same
                else f"{cand.name} is on timeline {cand.timeline}, {primary.name} on {primary.timeline}",
            ))
            if primary.current_lsn and cand.replay_lsn:
                lag = max(0, lsn_to_int(primary.current_lsn) - lsn_to_int(cand.replay_lsn))
                verdicts.append(CheckVerdict(
                    "lag", lag <= max_lag_bytes,
                    f"{cand.name} has replayed up to {cand.replay_lsn}, {lag} bytes behind {primary.name} "
                    f"({primary.current_lsn}); limit {max_lag_bytes}",
                ))
            else:
                verdicts.append(CheckVerdict("lag", False, f"no replay position on {cand.name}"))
    else:
        gone = ", ".join(f"{s.name} ({s.error})" for s in unreachable) or "none"
        verdicts.append(CheckVerdict(
            "primary-unreachable", True, f"no member answers as primary; unreachable: {gone}",
        ))
        if cand.reachable and cand.in_recovery:
            others = [s for s in statuses if s.reachable and s.in_recovery and s.name != cand.name]
            mine = cand.furthest_lsn
            ahead = [
                s for s in others
                if s.furthest_lsn and (mine is None or s.timeline != cand.timeline
                                       or lsn_to_int(s.furthest_lsn) > lsn_to_int(mine))
            ]
            detail = f"{cand.name} holds WAL up to {mine} on timeline {cand.timeline}"
            if ahead:
                detail += "; " + ", ".join(
                    f"{s.name} holds up to {s.furthest_lsn} on timeline {s.timeline}" for s in ahead
                )
            verdicts.append(CheckVerdict("most-advanced", not ahead, detail))

    reachable = [c for c in conns if by_name[c.name].reachable]
    verdicts.extend(await asyncio.gather(*(_promotion_running(c) for c in reachable)))
    return PromotionPrecheck(
        mode=mode,
        candidate=cand.name,
        primary=primary.name if primary else None,
        primary_lsn=primary.current_lsn if primary else None,
        timeline=timeline,
        candidate_replay_lsn=cand.replay_lsn,
        lag_bytes=lag,
        max_lag_bytes=max_lag_bytes,
        verdicts=tuple(verdicts),
        members=tuple(statuses),
    )


def describe_precheck(candidate: str, max_lag_bytes: int = DEFAULT_MAX_LAG_BYTES) -> list[str]:
    return [
        f"-- on every member (read only; candidate {candidate}, max lag {max_lag_bytes} bytes):",
        SQL_STATUS + ";",
        SQL_PROMOTION_RUNNING + ";",
    ]


# ---------------------------------------------------------------------------------------------
# checkpoint


async def _require_primary(conn: Conn, what: str) -> None:
    rec = await _step(conn, what, lambda: conn.fetchval(SQL_IN_RECOVERY))
    if rec:
        raise SwitchoverError(f"{what}: {conn.name} is in recovery, not a primary")


async def checkpoint(primary: Conn, timeout: float = 600.0) -> CheckpointResult:
    """CHECKPOINT on the primary, then SELECT pg_current_wal_lsn().

    Done before fencing so that the checkpoint inside `fence_primary`, while writes are
    refused, has little left to flush. Needs superuser or the pg_checkpoint role.
    """
    t0 = time.monotonic()
    await _require_primary(primary, "checkpoint")
    await _step(primary, "CHECKPOINT", lambda: primary.execute(SQL_CHECKPOINT, timeout=timeout))
    lsn = await _step(primary, "reading the WAL position", lambda: primary.fetchval(SQL_CURRENT_LSN))
    return CheckpointResult(primary.name, lsn, time.monotonic() - t0)


def describe_checkpoint() -> list[str]:
    return [SQL_CHECKPOINT + ";", SQL_CURRENT_LSN + ";"]


# ---------------------------------------------------------------------------------------------
# fence / unfence


async def _wait_read_only(conn: Conn, want: str, timeout: float) -> Any:
    """Poll this session's default_transaction_read_only until it reads `want`: the postmaster
    re-reads the configuration on SIGHUP and then signals its children, so once our own backend
    shows the new value, every session started from then on starts with it too. Returns the
    server's clock_timestamp() at that moment."""
    deadline = time.monotonic() + timeout
    while True:
        row = await _step(conn, "reading default_transaction_read_only", lambda: conn.fetchrow(SQL_SHOW_READ_ONLY))
        if row[0] == want:
            return row[1]
        if time.monotonic() >= deadline:
            raise SwitchoverError(
                f"default_transaction_read_only on {conn.name} is still {row[0]} {timeout:g} s after "
                f"pg_reload_conf(); is it set in postgresql.conf, for the role or the database?"
            )
        await asyncio.sleep(POLL_INTERVAL)


async def fence_primary(primary: Conn, *, terminate_wait: float = 5.0, checkpoint_timeout: float = 600.0) -> FenceResult:
    """Stop the old primary taking writes, and return the final LSN the candidate must replay.

    1. ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf(); then poll
       SELECT current_setting('default_transaction_read_only') in this session until 'on' (the
       reload has reached the postmaster: new sessions start read-only).
    2. SELECT pg_terminate_backend(pid, 5000) for every client backend of SQL_CLIENTS (not dbops'
       own: application_name 'dbops' or 'dbops-lock ...'; walsenders are not client backends),
       so no session that started read-write keeps writing; then refuse (raise) if any client
       session older than the fence is still there (e.g. no permission to end it).
    3. CHECKPOINT, then SELECT pg_current_wal_flush_lsn() (and the timeline).

    Why that LSN: every transaction that committed before the sessions were ended has its commit
    record below the WAL insert position of that moment. CHECKPOINT inserts its record after
    that and flushes WAL up to its end, so the flush LSN read afterwards is at or past every
    commit, and -- being flushed -- the walsenders can send it (they send only flushed WAL;
    pg_current_wal_insert_lsn() may still be in WAL buffers, and pg_switch_wal() would only
    matter to replicas fed from the archive). A candidate that has replayed it has every
    committed transaction. The old primary keeps writing a little WAL of its own (running-xacts
    records, autovacuum); none of it is a client's commit, and it is why the old primary is
    rewound before it rejoins.

    Caveat: the fence stops well-behaved clients; a session may still SET
    default_transaction_read_only = off. When dbops manages the node, a fast stop is the hard
    fence. Idempotent: calling it again re-reads the final LSN.
    """
    t0 = time.monotonic()
    await _require_primary(primary, "fence")
    await _step(primary, SQL_FENCE_SET, lambda: primary.execute(SQL_FENCE_SET))
    await _step(primary, "pg_reload_conf()", lambda: primary.fetchval(SQL_RELOAD))
    fenced_at = await _wait_read_only(primary, "on", timeout=10.0)

    ended: list[str] = []
    refused: list[str] = []
    left: list[Any] = []
    # Up to three rounds: a session still authenticating when the list was read shows up in the
    # next one (and it may have started before the fence took effect).
    for _ in range(3):
        sessions = await _step(primary, "listing client sessions", lambda: primary.fetch(SQL_CLIENTS))
        refused = []
        for s in sessions:
            label = f"{s['pid']} {s['usename']} {s['application_name'] or '-'} {s['client_addr'] or 'local'}"
            try:
                ok = await primary.fetchval(SQL_TERMINATE, s["pid"], int(terminate_wait * 1000),
                                            timeout=terminate_wait + primary.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. no permission to end a superuser's session
                refused.append(f"{label}: {primary.error(exc)}")
                continue
            if ok:
                ended.append(label)
        left = await _step(primary, "listing client sessions", lambda: primary.fetch(SQL_CLIENTS_BEFORE, fenced_at))
        if not left:
            break
    if left:
        names = "; ".join(f"{r['pid']} {r['usename']} {r['application_name'] or '-'}" for r in left)
        why = f" ({'; '.join(refused)})" if refused else ""
        raise SwitchoverError(
            f"fence on {primary.name}: client sessions that started before the fence are still there and may "
            f"write: {names}{why}; end them (pg_terminate_backend) or abort and unfence"
        )
    await _step(primary, SQL_CHECKPOINT, lambda: primary.execute(SQL_CHECKPOINT, timeout=checkpoint_timeout))
    row = await _step(primary, "reading the final LSN", lambda: primary.fetchrow(SQL_FINAL_LSN))
    return FenceResult(primary.name, len(ended), tuple(ended), row["lsn"], row["timeline"], time.monotonic() - t0)


def describe_fence(terminate_wait: float = 5.0) -> list[str]:
    return [
        SQL_FENCE_SET + ";",
        SQL_RELOAD + ";",
        SQL_SHOW_READ_ONLY + ";  -- repeated until 'on'",
        SQL_CLIENTS + ";",
        SQL_TERMINATE.replace("$1", "<pid>").replace("$2", str(int(terminate_wait * 1000))) + ";  -- for each pid above",
        SQL_CLIENTS_BEFORE.replace("$1", "<time the fence took effect>") + ";  -- must be empty",
        SQL_CHECKPOINT + ";",
        SQL_FINAL_LSN + ";",
    ]


async def unfence(member: Conn) -> UnfenceResult:
    """Give writes back (an aborted switchover): ALTER SYSTEM RESET default_transaction_read_only;
    SELECT pg_reload_conf(); then poll SELECT current_setting('default_transaction_read_only')
    until 'off'. Reads pg_settings first to tell whether the fence was set. Idempotent."""
    row = await _step(member, "reading pg_settings", lambda: member.fetchrow(SQL_FENCE_SOURCE))
    was = row["setting"] == "on" and (row["sourcefile"] or "").endswith("postgresql.auto.conf")
    await _step(member, SQL_FENCE_RESET, lambda: member.execute(SQL_FENCE_RESET))
    await _step(member, "pg_reload_conf()", lambda: member.fetchval(SQL_RELOAD))
    await _wait_read_only(member, "off", timeout=10.0)
    return UnfenceResult(member.name, was)


def describe_unfence() -> list[str]:
    return [SQL_FENCE_SOURCE + ";", SQL_FENCE_RESET + ";", SQL_RELOAD + ";",
            SQL_SHOW_READ_ONLY + ";  -- repeated until 'off'"]


# ---------------------------------------------------------------------------------------------
# wait_replayed


async def wait_replayed(candidate: Conn, lsn: str, timeout: float = 60.0) -> ReplayResult:
    """Poll SELECT pg_last_wal_replay_lsn() >= '<lsn>'::pg_lsn on the candidate (every 0.1 s,
    at most `timeout` s). Fails at once if replay is paused; connection errors are retried until
    the deadline."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    last = "no answer yet"
    while True:
        try:
            row = await candidate.fetchrow(SQL_REPLAY, lsn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # retried until the deadline when transient
            if not _transient(exc):
                raise SwitchoverError(f"waiting for replay on {candidate.name} failed: {candidate.error(exc)}") from None
            last = candidate.error(exc)
        else:
            if row["replayed"]:
                return ReplayResult(candidate.name, lsn, row["replay_lsn"], time.monotonic() - t0)
            if row["pause_state"] not in (None, "not paused"):
                raise SwitchoverError(
                    f"replay on {candidate.name} is {row['pause_state']} at {row['replay_lsn']}, before {lsn}; "
                    "resume it (SELECT pg_wal_replay_resume()) or abort"
                )
            last = f"replayed up to {row['replay_lsn']}"
        if time.monotonic() >= deadline:
            raise SwitchoverError(f"{candidate.name} has not replayed {lsn} within {timeout:g} s ({last})")
        await asyncio.sleep(POLL_INTERVAL)


def describe_wait_replayed(lsn: str = "<final LSN from the fence>") -> list[str]:
    return [SQL_REPLAY.replace("$1", f"'{lsn}'") + ";  -- repeated until replayed"]


# ---------------------------------------------------------------------------------------------
# promote


@dataclass(frozen=True)
class _PromotionState:
    in_recovery: bool
    # True: the candidate is back to normal standby work with no promotion pending (walreceiver
    # streaming or the startup process waiting for WAL / paused, no promote signal file, no
    # session in pg_promote). Once the startup process takes the signal file it stops the
    # walreceiver and stops waiting for WAL, so this cannot be seen during a promotion.
    idle_standby: bool
    detail: str


async def _promotion_state(conn: Conn) -> _PromotionState:
    row = await conn.fetchrow(SQL_PROMOTION_STATE)
    if not row["in_recovery"]:
        return _PromotionState(False, False, "out of recovery")
    try:
        signal: bool | None = bool(await conn.fetchval(SQL_PROMOTE_SIGNAL))
    except _asyncpg_error("InsufficientPrivilegeError"):
        signal = None  # cannot tell: never conclude "not promoting"
    working = row["receiver_status"] == "streaming" or row["startup_wait"] in (
        "RecoveryWalStream", "RecoveryRetrieveRetryInterval", "RecoveryPause")
    idle = working and signal is False and not row["promoting_session"]
    detail = (f"in recovery; walreceiver {row['receiver_status'] or 'not running'}, startup process "
              f"{row['startup_wait'] or 'busy'}, promote signal file "
              f"{'unknown' if signal is None else ('present' if signal else 'absent')}")
    return _PromotionState(True, idle, detail)


async def promote(candidate: Conn, timeout: float = 60.0) -> PromoteResult:
    """SELECT pg_promote(wait => true, wait_seconds => ceil(timeout)), then poll SQL_PROMOTION_STATE
    (pg_is_in_recovery(), pg_stat_wal_receiver.status, the startup process's wait event, a
    session in pg_promote, pg_stat_file('promote', true)) until the outcome is definite.

    Never reports failure while a promotion may still be in progress. pg_promote returning
    false (not finished within wait_seconds), the connection dropping, or a statement timeout
    are not outcomes: the candidate is polled (reconnecting) for up to `timeout` more seconds.
    Outcomes: out of recovery -> PromoteResult; in recovery and idle as a standby with no
    promotion pending on three polls -> SwitchoverError (it did not promote); neither within
    the time -> PromotionInDoubt. Already out of recovery -> already_primary (a resumed run).
    Needs superuser or EXECUTE on pg_promote (and pg_stat_file to conclude "did not promote").
    """
    t0 = time.monotonic()
    try:
        state = await _promotion_state(candidate)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise SwitchoverError(f"cannot reach {candidate.name} to promote it (pg_promote was not sent): "
                              f"{candidate.error(exc)}") from None
    if not state.in_recovery:
        tl = await _step(candidate, "reading the timeline", lambda: candidate.fetchval(SQL_TIMELINE))
        return PromoteResult(candidate.name, tl, True, None, time.monotonic() - t0)

    wait_seconds = max(1, math.ceil(timeout))
    returned: bool | None = None
    note = ""
    try:
        returned = bool(await candidate.fetchval(SQL_PROMOTE, wait_seconds, timeout=wait_seconds + 10))
        if not returned:
            note = f"pg_promote returned false (not promoted within {wait_seconds} s)"
    except asyncio.CancelledError:
        raise
    except _asyncpg_error("InsufficientPrivilegeError") as exc:
        raise SwitchoverError(f"pg_promote on {candidate.name} refused, nothing was promoted: "
                              f"{candidate.error(exc)}") from None
    except Exception as exc:  # lost connection, timeout, "recovery is not in progress": poll
        note = f"pg_promote gave no answer: {candidate.error(exc)}"

    deadline = time.monotonic() + timeout
    idle_polls = 0
    last = note or "pg_promote returned true"
    while True:
        try:
            state = await _promotion_state(candidate)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the candidate may be restarting its processes
            last = f"{candidate.error(exc)}"
            idle_polls = 0
        else:
            if not state.in_recovery:
                tl = await _step(candidate, "reading the timeline", lambda: candidate.fetchval(SQL_TIMELINE))
                return PromoteResult(candidate.name, tl, False, returned, time.monotonic() - t0)
            last = state.detail
            idle_polls = idle_polls + 1 if state.idle_standby else 0
            if idle_polls >= 3:
                raise SwitchoverError(
                    f"{candidate.name} did not promote: it is still a standby and no promotion is pending "
                    f"({state.detail}; {note or 'pg_promote returned true'}); see its server log"
                )
        if time.monotonic() >= deadline:
            raise PromotionInDoubt(
                f"promotion of {candidate.name} in doubt after {time.monotonic() - t0:.0f} s: {last}. "
                "It may still complete: do not promote another member; check its server log and poll "
                "SELECT pg_is_in_recovery() (running this step again is safe)"
            )
        await asyncio.sleep(max(POLL_INTERVAL, 0.2))


def describe_promote(timeout: float = 60.0) -> list[str]:
    return [
        SQL_IN_RECOVERY + ";  -- already out of recovery: nothing to do",
        SQL_PROMOTE.replace("$1", str(max(1, math.ceil(timeout)))) + ";",
        SQL_PROMOTION_STATE + ";  -- repeated until out of recovery, or idle as a standby",
        SQL_PROMOTE_SIGNAL + ";",
    ]


# ---------------------------------------------------------------------------------------------
# verify_new_primary


async def verify_new_primary(candidate: Conn, expected_timeline: int) -> VerifyResult:
    """The promoted member is a working primary: out of recovery, on `expected_timeline` (the old
    primary's timeline + 1), and it takes a write.

    SELECT pg_is_in_recovery(); the timeline from pg_walfile_name(pg_current_wal_lsn());
    CREATE SCHEMA IF NOT EXISTS dbops; CREATE TABLE IF NOT EXISTS dbops.write_probe (member text
    PRIMARY KEY, written_at timestamptz, timeline int); INSERT INTO dbops.write_probe ... ON
    CONFLICT (member) DO UPDATE ... (one row per member, timed); SELECT pg_current_wal_lsn().
    """
    if await _step(candidate, "checking recovery", lambda: candidate.fetchval(SQL_IN_RECOVERY)):
        raise SwitchoverError(f"{candidate.name} is still in recovery: it is not a primary")
    tl = await _step(candidate, "reading the timeline", lambda: candidate.fetchval(SQL_TIMELINE))
    if tl != expected_timeline:
        raise SwitchoverError(
            f"{candidate.name} is on timeline {tl}, expected {expected_timeline} (the old primary's + 1); "
            "a higher one means another promotion happened (or history files of one are in the archive)"
        )
    for sql in (SQL_PROBE_SCHEMA, SQL_PROBE_TABLE):
        try:
            await candidate.execute(sql)
        except _asyncpg_error("UniqueViolationError"):
            await _step(candidate, sql.split("(")[0].strip(), functools.partial(candidate.execute, sql))  # lost a race: exists now
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise SwitchoverError(_probe_error(candidate, exc)) from None
    t0 = time.perf_counter()
    try:
        await candidate.execute(SQL_PROBE_WRITE, candidate.name, tl)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise SwitchoverError(_probe_error(candidate, exc)) from None
    probe_ms = (time.perf_counter() - t0) * 1000
    lsn = await _step(candidate, "reading the WAL position", lambda: candidate.fetchval(SQL_CURRENT_LSN))
    return VerifyResult(candidate.name, tl, probe_ms, lsn)


def _probe_error(conn: Conn, exc: BaseException) -> str:
    msg = f"write probe on {conn.name} failed: {conn.error(exc)}"
    if isinstance(exc, _asyncpg_error("ReadOnlySQLTransactionError")):
        msg += " (default_transaction_read_only is on: a fence left over? see unfence)"
    return msg


def describe_verify(expected_timeline: int | str = "<old timeline + 1>") -> list[str]:
    return [
        SQL_IN_RECOVERY + ";  -- must be false",
        SQL_TIMELINE + f";  -- must be {expected_timeline}",
        SQL_PROBE_SCHEMA + ";",
        SQL_PROBE_TABLE + ";",
        SQL_PROBE_WRITE.replace("$1", "'<member>'").replace("$2", "<timeline>") + ";",
        SQL_CURRENT_LSN + ";",
    ]


# ---------------------------------------------------------------------------------------------
# slots


def _check_slot_name(slot: str) -> None:
    if not _SLOT_NAME.fullmatch(slot):
        raise SwitchoverError(f"invalid replication slot name {slot!r}: lower-case letters, digits and _ only")


async def ensure_slot(member: Conn, slot_name: str) -> SlotResult:
    """The physical slot a replica streams through, on its (new) upstream, created if missing:
    SELECT slot_type FROM pg_replication_slots WHERE slot_name = $1; if none,
    SELECT pg_create_physical_replication_slot($1, true) (reserving WAL from now). Works on a
    standby too (a cascading upstream); a slot created there survives its promotion."""
    _check_slot_name(slot_name)
    kind = await _step(member, "reading pg_replication_slots", lambda: member.fetchval(SQL_SLOT, slot_name))
    if kind is not None:
        if kind != "physical":
            raise SwitchoverError(f"slot {slot_name} on {member.name} is a {kind} slot, not physical")
        return SlotResult(member.name, slot_name, False)
    try:
        await member.fetchval(SQL_CREATE_SLOT, slot_name)
    except _asyncpg_error("DuplicateObjectError"):
        return SlotResult(member.name, slot_name, False)  # created meanwhile (a concurrent call)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise SwitchoverError(f"creating slot {slot_name} on {member.name} failed: {member.error(exc)}") from None
    return SlotResult(member.name, slot_name, True)


def describe_ensure_slot(slot_name: str) -> list[str]:
    return [
        SQL_SLOT.replace("$1", f"'{slot_name}'") + ";",
        SQL_CREATE_SLOT.replace("$1", f"'{slot_name}'") + ";  -- only if missing",
    ]


# ---------------------------------------------------------------------------------------------
# conninfo (libpq key=value strings)


def parse_conninfo(text: str) -> dict[str, str]:
    """A libpq connection string (key=value pairs, or a postgresql:// URI) as an ordered dict."""
    text = text.strip()
    if text.startswith(("postgresql://", "postgres://")):
        return _parse_uri(text)
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        start = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[start:i]
        while i < n and text[i].isspace():
            i += 1
        if i >= n or text[i] != "=" or not key:
            raise SwitchoverError(f"cannot parse primary_conninfo near {scrub_text(text[start:start + 20])!r}")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        buf: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise SwitchoverError("cannot parse primary_conninfo: unterminated quoted value")
                c = text[i]
                if c == "\\" and i + 1 < n:
                    buf.append(text[i + 1])
                    i += 2
                elif c == "'":
                    i += 1
                    break
                else:
                    buf.append(c)
                    i += 1
        else:
            while i < n and not text[i].isspace():
                if text[i] == "\\" and i + 1 < n:
                    buf.append(text[i + 1])
                    i += 2
                else:
                    buf.append(text[i])
                    i += 1
        out[key] = "".join(buf)
    return out


def _parse_uri(text: str) -> dict[str, str]:
    u = urlsplit(text)
    out: dict[str, str] = {}
    netloc = u.netloc
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        if user:
            out["user"] = unquote(user)
        if password:
            out["password"] = unquote(password)
    if "," in netloc:
        raise SwitchoverError("primary_conninfo is a URI with several hosts; rewrite it as key=value by hand")
    if netloc:
        host, sep, port = netloc.rpartition(":") if not netloc.endswith("]") else (netloc, "", "")
        if not sep:
            host, port = netloc, ""
        if host:
            out["host"] = unquote(host.strip("[]"))
        if port:
            out["port"] = port
    if u.path.strip("/"):
        out["dbname"] = unquote(u.path.lstrip("/"))
    out.update(parse_qsl(u.query))
    return out


def format_conninfo(params: Mapping[str, str]) -> str:
    parts = []
    for key, value in params.items():
        if value and re.fullmatch(r"[\w.,:/@+\-]+", value):
            parts.append(f"{key}={value}")
        else:
            parts.append(f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'")
    return " ".join(parts)


def rewrite_conninfo(current: str, host: str, port: int, application_name: str) -> str:
    """`current` with host, port and application_name replaced; everything else (user,
    password or passfile, sslmode ...) kept. hostaddr is dropped: it would override host."""
    params = parse_conninfo(current)
    params.pop("hostaddr", None)
    params["host"] = host
    params["port"] = str(port)
    params["application_name"] = application_name
    return format_conninfo(params)


# ---------------------------------------------------------------------------------------------
# repoint_replica / wait_streaming_from


async def repoint_replica(
    replica: Conn, new_primary_host: str, new_primary_port: int, application_name: str, slot_name: str | None = None
) -> RepointResult:
    """Make a standby stream from another upstream, without a restart (PostgreSQL 13+ reloads
    primary_conninfo and primary_slot_name):

    SELECT pg_is_in_recovery() (must be true);
    SELECT current_setting('primary_conninfo'), current_setting('primary_slot_name');
    ALTER SYSTEM SET primary_conninfo = '<the current value with host, port and application_name
    replaced: the password or passfile, user, sslmode ... are kept>' (quoted by the server's
    quote_literal); ALTER SYSTEM SET primary_slot_name = '<slot>' (or RESET when None);
    SELECT pg_reload_conf().

    Call it BEFORE promoting, with the candidate as the new upstream (cascading replication):
    the replica then only ever has WAL the candidate has, and follows it onto the new timeline
    by itself when it is promoted. Repointed after the promotion instead, a replica may already
    have replayed WAL the old primary wrote after the candidate's switch point (the running-xacts
    record bgwriter logs every 15 s is enough) and can then no longer follow: it needs pg_rewind
    (`can_follow` checks).
    Idempotent (changed=False when already set; the reload is sent anyway). Reading
    primary_conninfo needs superuser or pg_read_all_settings.
    """
    if slot_name is not None:
        _check_slot_name(slot_name)
    if not await _step(replica, "checking recovery", lambda: replica.fetchval(SQL_IN_RECOVERY)):
        raise SwitchoverError(f"{replica.name} is not in recovery: it is a primary, not a replica to repoint")
    row = await _step(replica, "reading primary_conninfo", lambda: replica.fetchrow(SQL_SHOW_CONNINFO))
    current, current_slot = row[0] or "", row[1] or ""
    if not current.strip():
        raise SwitchoverError(
            f"{replica.name} has no primary_conninfo to rewrite (dbops keeps its user and password from it); "
            "set one first"
        )
    new = rewrite_conninfo(current, new_primary_host, new_primary_port, application_name)
    changed = parse_conninfo(current) != parse_conninfo(new) or current_slot != (slot_name or "")
    stmt = await _step(replica, "quoting primary_conninfo", lambda: replica.fetchval(SQL_RENDER_CONNINFO, new))
    try:
        await replica.execute(stmt)
        if slot_name:
            await replica.execute(SQL_SET_SLOT.format(slot=f"'{slot_name}'"))
        else:
            await replica.execute(SQL_RESET_SLOT)
        await replica.fetchval(SQL_RELOAD)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise SwitchoverError(f"repointing {replica.name} failed: {replica.error(exc)}") from None
    return RepointResult(replica.name, scrub_text(new), slot_name, changed)


def describe_repoint(new_primary_host: str, new_primary_port: int, application_name: str,
                     slot_name: str | None = None) -> list[str]:
    conninfo = format_conninfo({"host": new_primary_host, "port": str(new_primary_port),
                                "application_name": application_name})
    return [
        SQL_IN_RECOVERY + ";  -- must be true",
        SQL_SHOW_CONNINFO + ";",
        f"ALTER SYSTEM SET primary_conninfo = '{conninfo} <other keys kept from the current value; password=***>';",
        (SQL_SET_SLOT.format(slot=f"'{slot_name}'") if slot_name else SQL_RESET_SLOT) + ";",
        SQL_RELOAD + ";",
    ]


@dataclass(frozen=True)
class FollowCheck:
    replica: str
    upstream: str
    ok: bool | None  # None: cannot tell (the history file is not readable)
    detail: str


SQL_HISTORY = "SELECT pg_read_file('pg_wal/' || lpad(upper(to_hex($1::int)), 8, '0') || '.history')"


async def can_follow(replica: Conn, upstream: Conn) -> FollowCheck:
    """Whether `replica` can stream from `upstream` as it is, or has diverged and needs pg_rewind.

    Reads SQL_STATUS on both (timelines; the replica's pg_last_wal_replay_lsn()) and, when the
    upstream is on a later timeline, its history file (SELECT pg_read_file('pg_wal/<TLI>.history'),
    superuser or pg_read_server_files): the replica can follow only if it has not replayed past
    the point where the upstream's timeline forked off its own. A replica left streaming from a
    fenced old primary after the promotion typically has (the old primary's background WAL).
    """
    r, u = await asyncio.gather(_status(replica), _status(upstream))
    for s in (r, u):
        if not s.reachable:
            return FollowCheck(replica.name, upstream.name, None, f"{s.name}: {s.error}")
    if not r.in_recovery:
        return FollowCheck(replica.name, upstream.name, False, f"{replica.name} is not in recovery")
    if r.timeline is None or u.timeline is None or r.replay_lsn is None:
        return FollowCheck(replica.name, upstream.name, None, "timelines or replay position unknown")
    if r.timeline == u.timeline:
        return FollowCheck(replica.name, upstream.name, True, f"both on timeline {u.timeline}")
    if r.timeline > u.timeline:
        return FollowCheck(replica.name, upstream.name, False,
                           f"{replica.name} is on timeline {r.timeline}, ahead of {upstream.name}'s {u.timeline}")
    try:
        text = await upstream.fetchval(SQL_HISTORY, u.timeline)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # no permission, or the file is gone: cannot tell
        return FollowCheck(replica.name, upstream.name, None,
                           f"cannot read {upstream.name}'s timeline history: {upstream.error(exc)}")
    fork = None
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and int(parts[0]) == r.timeline:
            fork = parts[1]
    if fork is None:
        return FollowCheck(replica.name, upstream.name, False,
                           f"timeline {r.timeline} of {replica.name} is not in the history of {upstream.name}'s "
                           f"timeline {u.timeline}")
    if lsn_to_int(r.replay_lsn) > lsn_to_int(fork):
        return FollowCheck(replica.name, upstream.name, False,
                           f"{replica.name} has replayed {r.replay_lsn} on timeline {r.timeline}, past {fork} where "
                           f"{upstream.name}'s timeline {u.timeline} forked off: it must be rewound (pg_rewind) or re-cloned")
    return FollowCheck(replica.name, upstream.name, True,
                       f"{replica.name} replayed {r.replay_lsn}, before the fork at {fork}: it will follow "
                       f"timeline {u.timeline}")


def describe_can_follow() -> list[str]:
    return ["-- on the replica and its new upstream:", SQL_STATUS + ";",
            SQL_HISTORY.replace("$1::int", "<upstream timeline>") + ";  -- on the upstream, when on a later timeline"]


async def wait_streaming_from(
    new_primary: Conn, application_name: str, timeout: float = 30.0, *, caught_up_to: str | None = None
) -> StreamingResult:
    """Poll pg_stat_replication on the upstream (every 0.1 s, at most `timeout` s) until a walsender
    for `application_name` is 'streaming' and, with `caught_up_to`, its replay_lsn has reached it.
    Pass the new primary's LSN after the promotion (VerifyResult.probe_lsn) to prove the replica
    follows the new timeline, not a walsender still winding down."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    last = "no answer yet"
    while True:
        try:
            row = await new_primary.fetchrow(SQL_STREAMING, application_name, caught_up_to)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # retried until the deadline when transient
            if not _transient(exc):
                raise SwitchoverError(f"reading pg_stat_replication on {new_primary.name} failed: "
                                      f"{new_primary.error(exc)}") from None
            last = new_primary.error(exc)
        else:
            if row["streaming"] and row["caught_up"]:
                return StreamingResult(new_primary.name, application_name, row["replay_lsn"], time.monotonic() - t0)
            last = (f"walsender state {row['states']}, replayed {row['replay_lsn']}" if row["states"]
                    else "no walsender for it")
        if time.monotonic() >= deadline:
            target = f" past {caught_up_to}" if caught_up_to else ""
            raise SwitchoverError(
                f"{application_name} is not streaming from {new_primary.name}{target} after {timeout:g} s ({last}); "
                "see the replica's server log"
            )
        await asyncio.sleep(POLL_INTERVAL)


def describe_wait_streaming_from(application_name: str, caught_up_to: str | None = None) -> list[str]:
    sql = SQL_STREAMING.replace("$1", f"'{application_name}'").replace(
        "$2", f"'{caught_up_to}'" if caught_up_to else "NULL")
    return [sql + ";  -- repeated until streaming"]


# ---------------------------------------------------------------------------------------------
# rejoin of the old primary on a host dbops does not manage (a manual step)


def rejoin_commands(
    *,
    data_dir: str,
    new_primary_host: str,
    new_primary_port: int,
    application_name: str,
    user: str = "postgres",
    slot_name: str | None = None,
    bindir: str = "/usr/lib/postgresql/15/bin",
    port: int = 5432,
) -> list[str]:
    """The shell commands that turn the old primary into a replica of the new one, to run as the
    postgres OS user on its host. The password is never shown: pg_rewind and the walreceiver
    read it from ~/.pgpass of the postgres OS user (host:port:*:user:password and
    host:port:replication:user:password). Needs wal_log_hints = on or data checksums."""
    source = format_conninfo({"host": new_primary_host, "port": str(new_primary_port), "user": user,
                              "dbname": "postgres"})
    conninfo = format_conninfo({"host": new_primary_host, "port": str(new_primary_port), "user": user,
                                "application_name": application_name})
    save = f"{data_dir}.conf-before-rewind"
    confs = " ".join(f"{data_dir}/{f}" for f in ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf"))
    slot = f"ALTER SYSTEM SET primary_slot_name = '{slot_name}'" if slot_name else "ALTER SYSTEM RESET primary_slot_name"
    psql = f"{bindir}/psql -X -p {port} -d postgres -c"
    return [
        "# as the postgres OS user on the old primary's host; the password comes from ~/.pgpass",
        "# the new timeline must be in the new primary's pg_control, where pg_rewind reads it:",
        f"{bindir}/psql -X -h {new_primary_host} -p {new_primary_port} -U {user} -d postgres -c CHECKPOINT",
        f"{bindir}/pg_ctl -D {data_dir} -m fast -w stop",
        "# pg_rewind copies the configuration files of the new primary: keep this member's own",
        f"mkdir -p {save} && cp -p {confs} {save}/ 2>/dev/null || true",
        f"{bindir}/pg_rewind --target-pgdata={data_dir} --source-server=\"{source}\" --restore-target-wal --progress",
        f"cp -p {save}/* {data_dir}/",
        f"touch {data_dir}/standby.signal",
        f"{bindir}/pg_ctl -D {data_dir} -w start",
        f"{psql} \"ALTER SYSTEM RESET default_transaction_read_only\"",
        f"{psql} \"ALTER SYSTEM SET primary_conninfo = '{conninfo}'\"",
        f"{psql} \"{slot}\"",
        f"{psql} \"SELECT pg_reload_conf()\"",
        f"{psql} \"SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver\"  # expect streaming",
    ]
