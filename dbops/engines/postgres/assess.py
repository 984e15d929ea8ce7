"""Judge a PostgreSQL cluster from its members' snapshots: pure functions, no I/O.

Every rule compares with the cluster's PostgresThresholds and is strict: a value equal to a
threshold is still fine, one past it is not ("lag > warn", "cache hit ratio < warn"). The one
exception, PgBouncer's wait limits, says why where they are judged (_pool).
Each Metric.message is one short sentence for the engineer reading it at 3 a.m.

Metric names (stable, for panes and tests): reachability, streaming, replay_paused, lag_bytes,
lag_seconds, connections, connections:database:<name> / connections:role:<name> (a
CONNECTION LIMIT being approached; only with a problem), cache_hit_ratio, archiver, xid_age,
mxid_age, xmin_horizon (its oldest holder named), vacuum (running VACUUMs), slots /
slot:<name>, long_queries, long_transactions, idle_in_transaction, pgbouncer,
pgbouncer:<database>/<user> (one per pool with a problem); on the cluster: primary (CRIT with split_brain_message when two or more members answer
as writable primaries: out of recovery and not fenced read-only).

Replica lag: lag_bytes is the worst of the standby's own view and the primary's; lag_seconds
comes from the primary's pg_stat_replication row whenever the primary is reachable and has one
for the standby (replay_lag; flush_lag while the standby waits for WAL), and from the standby's
own estimate only without one (replica_lag says why). The archiver's "flaky" rule and
ARCHIVER_QUIET_SECONDS are module constants (PostgresThresholds has no field for them).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from dbops.config import ClusterRef, Member, PostgresThresholds
from dbops.engines.postgres.data import Archiver, HorizonHolder, PgMemberData, PoolRow, ReplicaRow, Session
from dbops.engines.postgres.history import lsn_bytes
from dbops.engines.postgres.queries import CAUGHT_UP_AT, REPLAY_WAITING_FOR_WAL
from dbops.model import (
    ClusterHealth,
    MemberHealth,
    Metric,
    Reachability,
    Severity,
    Snapshot,
    human_bytes,
    human_seconds,
)

OK, WARN, CRIT, UNKNOWN = Severity.OK, Severity.WARN, Severity.CRIT, Severity.UNKNOWN

IDLE_IN_TRANSACTION = ("idle in transaction", "idle in transaction (aborted)")


def human_count(n: int) -> str:
    if n >= 1_000_000_000:
        return f"{n / 1_000_000_000:.2f}B"
    if n >= 1_000_000:
        return f"{n / 1_000_000:.0f}M"
    if n >= 1_000:
        return f"{n / 1_000:.0f}k"
    return str(n)


def _pct(x: float) -> str:
    return f"{x:.1f}%" if x != int(x) else f"{x:.0f}%"


# ---------------------------------------------------------------------------------------------
# Baseline (the caller keeps it; assess only reads it)


# An archive failure followed by a success is history once no failure has happened for this
# long: the archiver's failure counter is then re-baselined and the "flaky" WARN clears. While
# failures keep coming closer together than this (a flaky archive_command whose retries
# succeed), the WARN stays. Seconds, compared with the server's own last_failed_time.
ARCHIVER_QUIET_SECONDS = 300.0


def _archiving_recovered(a: Archiver) -> bool:
    """The last archive attempt succeeded and the last failure is ARCHIVER_QUIET_SECONDS old."""
    if a.last_archived_age_seconds is None:
        return False
    if a.last_failed_age_seconds is None:
        return True
    return a.last_archived_age_seconds < a.last_failed_age_seconds and a.last_failed_age_seconds >= ARCHIVER_QUIET_SECONDS


def update_baseline(baseline: dict[str, dict[str, Any]] | None, snapshots: dict[str, Snapshot]) -> dict[str, dict[str, Any]]:
    """Return a copy of `baseline` updated from this poll's snapshots; keep the result and pass it
    to assess_cluster (the hub calls this, then assess_cluster, with the same snapshots).

    archiver_failed_count: pg_stat_archiver.failed_count when archiving was last seen healthy.
    Set on the first look at a member, and moved to the current count when archiving has
    recovered (see ARCHIVER_QUIET_SECONDS) or the counter went backwards (stats reset, restart).
    So the "flaky" rule counts failures of the current episode only and clears by itself.
    """
    out = {name: dict(values) for name, values in (baseline or {}).items()}
    for name, snap in snapshots.items():
        data = snap.data
        if not isinstance(data, PgMemberData) or data.archiver is None:
            continue
        a = data.archiver
        entry = out.setdefault(name, {})
        first = entry.get("archiver_failed_count")
        if first is None or a.failed_count < first or _archiving_recovered(a):
            entry["archiver_failed_count"] = a.failed_count
    return out


# ---------------------------------------------------------------------------------------------
# Member rules


def _role(member: Member, snap: Snapshot | None) -> str:
    data = snap.shown if snap is not None else None
    if isinstance(data, PgMemberData):
        return "replica" if data.in_recovery else "primary"
    if member.role in ("primary", "replica"):
        return member.role
    return "unknown"


def _threshold(name: str, value: float, warn: float, crit: float | None, text: str, fmt: Any) -> Metric:
    if crit is not None and value > crit:
        return Metric(name, CRIT, f"{text} {fmt(value)} > crit {fmt(crit)}", value)
    if value > warn:
        return Metric(name, WARN, f"{text} {fmt(value)} > warn {fmt(warn)}", value)
    return Metric(name, OK, f"{text} {fmt(value)}", value)


def _worst_of(values: Iterable[float | int | None]) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


# A refresh polls a cluster's members concurrently, each within its timeout: the primary's row
# and the standby's own answer are read up to about this far apart (replica_lag's bound).
POLL_SKEW_SECONDS = 1.0


def replica_lag(member: Member, data: PgMemberData, primaries: list[PgMemberData],
                now: float | None = None) -> tuple[int | None, float | None]:
    """(lag_bytes, lag_seconds) of a replica.

    Bytes: the worst of the standby's own view (received - replayed) and every reachable
    primary's pg_stat_replication row for it (matched by application_name, else member name).

    Seconds: from the primary's row whenever a reachable primary has one for this standby.
    The walsender times each WAL position it sends and reads the time back when the standby
    reports it replayed; with no position crossed it interpolates, so a stuck apply position
    (paused replay, replay blocked by a conflict) shows a lag that keeps growing with every
    status reply of the standby (wal_receiver_status_interval), while a standby that replays a
    long transaction's WAL as it arrives stays near zero. A NULL means the standby replayed all
    it was sent (caught up, or idle): 0.
    - replay_lag, normally.
    - flush_lag when the standby's startup process waits for WAL (extra[REPLAY_WAITING_FOR_WAL]):
      it has replayed every complete record it received, so it is behind only by the time the
      WAL takes to reach it. Here replay_lag would count the unfinished record at the end of
      what the primary has written out (see queries.REPLAY_WAITING_FOR_WAL) as growing lag.
    - several primaries (split brain): the worst of their rows.
    - bounded, row by row, by dbops' own samples of the primary's WAL position: a standby that
      has replayed everything the primary had written at a poll (by the row's replay_lsn, or by
      the standby's own replay position when its poll is the later one) is no further behind
      than the time since that poll (_replay_lag_by_evidence; the evidence survives a restart
      of dbops' view of the standby, which the bound below does not).
    - bounded, when the adapter saw the standby replay all it had received at some moment
      (extra[CAUGHT_UP_AT]), by the time since then (to `now`, the judgement's time, so a
      standby's snapshot older than the primary's only loosens the bound) plus the WAL's flush
      lag, plus a second for the primary's and the standby's polls not being at one instant.
      Nothing it had not replayed then can be older than that. The lag tracker can say more:
      when the WAL that completes a record left unfinished across a pause (see
      queries.REPLAY_WAITING_FOR_WAL) finally arrives, the standby replays past a position the
      primary timed seconds before, and for a status reply replay_lag reads the whole pause.

    The standby's own estimate, now() - last replayed commit, grows one-for-one with any long
    transaction (no commit to replay) on a replica a fraction of a second behind. It is used
    only without a primary view (primary down or not polled yet, or no row: the standby is not
    connected to it), capped by the adapter (bound_standby_lag) to how long the standby has
    been behind.
    """
    names = {n for n in (member.application_name, member.name) if n}
    rows = [r for p in primaries for r in p.replicas if r.application_name in names]
    wr = data.wal_receiver
    lag_bytes = _worst_of([wr.replay_lag_bytes if wr else None] + [r.replay_lag_bytes for r in rows])
    if rows and data.extra.get(REPLAY_WAITING_FOR_WAL) is True:
        # Replayed every complete record it has: behind only by what it has not received yet.
        lag_seconds: float | None = max(r.flush_lag_seconds or 0.0 for r in rows)
    elif rows:
        now = time.time() if now is None else now
        replayed = lsn_bytes(data.current_lsn) if data.in_recovery else None
        lag_seconds = max(_replay_lag_by_evidence(r, now, replayed) for r in rows)
        caught_up_at = data.extra.get(CAUGHT_UP_AT)
        if isinstance(caught_up_at, float):
            behind_for = max(0.0, now - caught_up_at)
            bound = max(r.flush_lag_seconds or 0.0 for r in rows) + behind_for + POLL_SKEW_SECONDS
            lag_seconds = min(lag_seconds, bound)
    else:
        lag_seconds = wr.replay_lag_seconds if wr else None
    return lag_bytes, lag_seconds


def _replay_lag_by_evidence(row: ReplicaRow, now: float, standby_replayed: int | None) -> float:
    """A primary's replay_lag for a standby, no more than dbops' own samples of the primary's
    WAL position allow: a standby that has replayed all the primary had written at time t is
    at most now - t behind (adapter.WrittenWal).

    What the standby has replayed: the row's replay_lsn (ReplicaRow.replayed_all_written_by),
    or the standby's own replay position from its latest poll, when that has passed one of the
    positions the primary wrote next (ReplicaRow.written_after). The two polls are not at one
    instant: a row read while the standby's replay stood at the start of a record the primary
    had not yet written out whole carries the lag tracker's interpolation toward a position
    timed when the pause began (growing with the pause), while the standby, read a moment
    later, has received the rest and replayed past it."""
    lag = row.replay_lag_seconds or 0.0
    written_by = row.replayed_all_written_by
    if standby_replayed is not None:
        passed = [at for position, at in row.written_after if position <= standby_replayed]
        if passed and (written_by is None or passed[-1] > written_by):
            written_by = passed[-1]
    if written_by is not None:
        lag = min(lag, max(0.0, now - written_by))
    return lag


def _replica_metrics(
    t: PostgresThresholds, member: Member, data: PgMemberData, primaries: list[PgMemberData], now: float | None
) -> tuple[list[Metric], int | None, float | None]:
    metrics = []
    wr = data.wal_receiver
    if wr is None or wr.status != "streaming":
        status = wr.status if wr is not None and wr.status else "no walreceiver running"
        metrics.append(Metric("streaming", CRIT, f"not streaming from the primary ({status})", status))
    else:
        source = f"{wr.sender_host}:{wr.sender_port}" if wr.sender_host else "the primary"
        metrics.append(Metric("streaming", OK, f"streaming from {source}", wr.status))
    if wr is not None and wr.replay_paused:
        metrics.append(Metric("replay_paused", WARN, "WAL replay is paused (SELECT pg_wal_replay_resume() resumes it)", True))
    lag_bytes, lag_seconds = replica_lag(member, data, primaries, now)
    if lag_bytes is not None:
        metrics.append(_threshold("lag_bytes", lag_bytes, t.lag_bytes_warn, t.lag_bytes_crit, "replay lag", human_bytes))
    if lag_seconds is not None:
        metrics.append(
            _threshold("lag_seconds", lag_seconds, t.lag_seconds_warn, t.lag_seconds_crit, "replay lag", human_seconds)
        )
    return metrics, lag_bytes, lag_seconds


def _connections(t: PostgresThresholds, data: PgMemberData) -> Metric:
    available = data.available_connections
    if available <= 0:
        return Metric("connections", UNKNOWN, "max_connections unknown", None)
    pct = 100.0 * data.connections_total / available
    reserved = f", {data.reserved_connections} more reserved for superusers" if data.reserved_connections else ""
    text = f"connections {data.connections_total}/{available} ({pct:.0f}%{reserved})"
    return _pct_metric(t, "connections", pct, text)


def _pct_metric(t: PostgresThresholds, name: str, pct: float, text: str) -> Metric:
    if pct > t.connections_pct_crit:
        return Metric(name, CRIT, f"{text} > crit {_pct(t.connections_pct_crit)}", pct)
    if pct > t.connections_pct_warn:
        return Metric(name, WARN, f"{text} > warn {_pct(t.connections_pct_warn)}", pct)
    return Metric(name, OK, text, pct)


def _connection_limits(t: PostgresThresholds, data: PgMemberData) -> list[Metric]:
    """A database's datconnlimit or a role's rolconnlimit being approached (only the ones with a
    problem: every limited role would otherwise be a line of its own)."""
    out = []
    for kind, word, limits in (("database", "database", data.database_limits), ("role", "role", data.role_limits)):
        for lim in limits:
            if lim.limit <= 0:
                if lim.used > 0:  # CONNECTION LIMIT 0: nobody new gets in, and these were let in before
                    out.append(Metric(f"connections:{kind}:{lim.name}", WARN,
                                      f"{word} {lim.name} has {lim.used} connections and a limit of 0", lim.used))
                continue
            pct = 100.0 * lim.used / lim.limit
            m = _pct_metric(t, f"connections:{kind}:{lim.name}", pct,
                            f"{word} {lim.name}: {lim.used}/{lim.limit} connections ({pct:.0f}% of its CONNECTION LIMIT)")
            if m.severity is not OK:
                out.append(m)
    return out


def _cache(t: PostgresThresholds, data: PgMemberData) -> Metric:
    ratio = data.cache_hit_ratio
    if ratio is None:
        return Metric("cache_hit_ratio", OK, "cache hit ratio: too few block reads since dbops started watching to judge", None)
    if ratio < t.cache_hit_ratio_warn:
        return Metric("cache_hit_ratio", WARN, f"cache hit ratio {ratio:.1f}% < warn {_pct(t.cache_hit_ratio_warn)}", ratio)
    return Metric("cache_hit_ratio", OK, f"cache hit ratio {ratio:.1f}%", ratio)


def _archiver(t: PostgresThresholds, data: PgMemberData, base: dict[str, Any] | None) -> Metric:
    a = data.archiver
    if a is None:
        if data.in_recovery:
            return Metric("archiver", OK, "standby: WAL is archived by the primary", None)
        return Metric("archiver", UNKNOWN, "archiver state unknown", None)
    if a.archive_mode == "off":
        return Metric("archiver", OK, "archiving off", a.failed_count)
    # Stateless signal: the latest attempt failed (its failure is newer than the last success).
    if a.last_failed_age_seconds is not None and (
        a.last_archived_age_seconds is None or a.last_failed_age_seconds < a.last_archived_age_seconds
    ):
        return Metric(
            "archiver",
            WARN,
            f"archiving failing: last failed {a.last_failed_wal} {human_seconds(a.last_failed_age_seconds)} ago "
            f"({a.failed_count} failures)",
            a.failed_count,
        )
    # Stateful signal (the baseline): failures whose retries succeeded between two polls, which
    # the stateless rule never sees. Counted since archiving was last healthy, so it clears once
    # no failure has happened for ARCHIVER_QUIET_SECONDS (update_baseline moves the baseline).
    first = base.get("archiver_failed_count") if base else None
    if first is not None and a.failed_count - first > t.archiver_failures_warn:
        n = a.failed_count - first
        return Metric(
            "archiver",
            WARN,
            f"archiving flaky: {n} failure{'s' if n != 1 else ''} since it was last healthy "
            f"(last failed {a.last_failed_wal} {human_seconds(a.last_failed_age_seconds)} ago)",
            a.failed_count,
        )
    if a.last_archived_wal is None:
        return Metric("archiver", OK, "nothing archived yet", a.failed_count)
    return Metric(
        "archiver", OK, f"last archived {a.last_archived_wal} {human_seconds(a.last_archived_age_seconds)} ago", a.failed_count
    )


def _wraparound_age(name: str, what: str, age: int | None, database: str | None, warn: float, crit: float) -> Metric | None:
    if age is None:
        return None
    where = f" in database {database}" if database else ""
    return _threshold(name, age, warn, crit, f"oldest {what} age{where}", human_count)


def _xid(t: PostgresThresholds, data: PgMemberData) -> Metric | None:
    return _wraparound_age("xid_age", "xid", data.max_xid_age, data.max_xid_age_database, t.xid_age_warn, t.xid_age_crit)


def _mxid(t: PostgresThresholds, data: PgMemberData) -> Metric | None:
    return _wraparound_age("mxid_age", "multixact", data.max_mxid_age, data.max_mxid_age_database, t.mxid_age_warn, t.mxid_age_crit)


def holder_severity(t: PostgresThresholds, h: HorizonHolder) -> Severity:
    """How far one holder holds the xmin horizon back: the worse of its age in transactions and
    in time (a slot or a standby's feedback has no start time: transactions only)."""
    out = OK
    if h.xmin_age is not None:
        out = CRIT if h.xmin_age > t.xmin_horizon_xid_age_crit else WARN if h.xmin_age > t.xmin_horizon_xid_age_warn else OK
    if h.age_seconds is not None and out is not CRIT:
        by_time = CRIT if h.age_seconds > t.xmin_horizon_seconds_crit else WARN if h.age_seconds > t.xmin_horizon_seconds_warn else OK
        out = Severity.worst([out, by_time])
    return out


def holder_age(h: HorizonHolder) -> str:
    """"1.2M xids, 23m": its age in transactions and, when it has one, in time."""
    parts = [f"{human_count(h.xmin_age)} xids" if h.xmin_age is not None else "age unknown"]
    if h.age_seconds is not None:
        parts.append(human_seconds(h.age_seconds))
    return ", ".join(parts)


NAMED_HOLDERS = 5  # in the xmin_horizon message (a replica's feedback often follows the primary's own holder); the Vacuum tab lists all


def _horizon(t: PostgresThresholds, data: PgMemberData) -> Metric:
    """What holds the xmin horizon back, named (the oldest holder first): VACUUM cannot remove
    what was deleted after it, so tables bloat and xid age climbs until it lets go."""
    if not data.horizon:
        return Metric("xmin_horizon", OK, "nothing holds the xmin horizon back", 0)
    judged = [(holder_severity(t, h), h) for h in data.horizon]
    worst = Severity.worst([sev for sev, _ in judged])
    bad = [h for sev, h in judged if sev is not OK]
    # The worst first (the oldest by transactions, unless a younger one is worse by its time),
    # then the others with a problem, oldest first: up to NAMED_HOLDERS of them by name.
    first = next(h for sev, h in judged if sev is worst)
    if worst is OK:
        return Metric("xmin_horizon", OK, f"oldest xmin: {first.describe()}, {holder_age(first)}", first.xmin_age)
    named = [first, *[h for h in bad if h is not first]][:NAMED_HOLDERS]
    text = "xmin horizon held back by " + "; ".join(f"{h.describe()}: {holder_age(h)}" for h in named)
    if len(bad) > len(named):
        text += f" (and {len(bad) - len(named)} more)"
    return Metric("xmin_horizon", worst, text, first.xmin_age)


def _vacuums(data: PgMemberData) -> Metric:
    """Running VACUUMs: not a problem in themselves, said so the Health tab and check show them."""
    n = len(data.vacuums)
    if not n:
        return Metric("vacuum", OK, "no VACUUM running", 0)
    wrap = sum(1 for v in data.vacuums if v.to_prevent_wraparound)
    parts = []
    for v in data.vacuums[:3]:
        pct = f" {v.percent_scanned:.0f}%" if v.percent_scanned is not None else ""
        parts.append(f"{v.table} ({v.phase}{pct})")
    more = f" and {n - 3} more" if n > 3 else ""
    wraps = f", {wrap} to prevent wraparound" if wrap else ""
    return Metric("vacuum", OK, f"{n} VACUUM{'s' if n != 1 else ''} running{wraps}: {', '.join(parts)}{more}", n)


def _slots(t: PostgresThresholds, data: PgMemberData) -> list[Metric]:
    out = []
    for s in data.slots:
        name = f"slot:{s.slot_name}"
        if s.wal_status == "lost":
            out.append(Metric(name, CRIT, f"slot {s.slot_name} lost WAL its consumer needs (wal_status lost)", s.wal_status))
        elif not s.active and s.retained_bytes is not None and s.retained_bytes > t.inactive_slot_retained_bytes_warn:
            out.append(
                Metric(
                    name,
                    WARN,
                    f"inactive slot {s.slot_name} retains {human_bytes(s.retained_bytes)} "
                    f"> warn {human_bytes(t.inactive_slot_retained_bytes_warn)}",
                    s.retained_bytes,
                )
            )
        elif s.wal_status == "unreserved":
            out.append(
                Metric(name, WARN, f"slot {s.slot_name} is past max_slot_wal_keep_size: its WAL may be removed", s.wal_status)
            )
    if not out:
        text = f"{len(data.slots)} replication slot{'s' if len(data.slots) != 1 else ''}, none retaining too much WAL"
        out.append(Metric("slots", OK, text if data.slots else "no replication slots", len(data.slots)))
    return out


def _longest(sessions: list[Session], age: Any) -> Session:
    return max(sessions, key=age)


def _long_queries(t: PostgresThresholds, data: PgMemberData) -> Metric:
    long = [
        s for s in data.sessions
        if s.state == "active" and s.query_age_seconds is not None and s.query_age_seconds > t.long_query_seconds
    ]
    if not long:
        return Metric("long_queries", OK, f"no query running > {human_seconds(t.long_query_seconds)}", 0)
    worst = _longest(long, lambda s: s.query_age_seconds)
    n = len(long)
    return Metric(
        "long_queries",
        WARN,
        f"{n} quer{'ies' if n != 1 else 'y'} running > {human_seconds(t.long_query_seconds)} "
        f"(longest {human_seconds(worst.query_age_seconds)}, pid {worst.pid})",
        n,
    )


def _long_transactions(t: PostgresThresholds, data: PgMemberData) -> Metric:
    """Transactions open long (xact_start), whatever they do now: a long query and an idle in
    transaction session are judged on their own too; this is the transaction that holds locks
    and its snapshot. Autovacuum workers are not transactions anyone can end."""
    warn = t.long_transaction_seconds_warn
    long = [
        s for s in data.sessions
        if not s.is_autovacuum and s.xact_age_seconds is not None and s.xact_age_seconds > warn
    ]
    if not long:
        return Metric("long_transactions", OK, f"no transaction open > {human_seconds(warn)}", 0)
    worst = _longest(long, lambda s: s.xact_age_seconds)
    n = len(long)
    crit = worst.xact_age_seconds is not None and worst.xact_age_seconds > t.long_transaction_seconds_crit
    limit = t.long_transaction_seconds_crit if crit else warn
    return Metric(
        "long_transactions",
        CRIT if crit else WARN,
        f"{n} transaction{'s' if n != 1 else ''} open > {'crit' if crit else 'warn'} {human_seconds(limit)} "
        f"(longest {human_seconds(worst.xact_age_seconds)}, pid {worst.pid}, {worst.state})",
        n,
    )


def _idle_in_transaction(t: PostgresThresholds, data: PgMemberData) -> Metric:
    idle = [
        s for s in data.sessions
        if s.state in IDLE_IN_TRANSACTION
        and s.state_age_seconds is not None
        and s.state_age_seconds > t.idle_in_transaction_seconds_warn
    ]
    if not idle:
        return Metric(
            "idle_in_transaction", OK, f"no session idle in transaction > {human_seconds(t.idle_in_transaction_seconds_warn)}", 0
        )
    worst = _longest(idle, lambda s: s.state_age_seconds)
    n = len(idle)
    crit = worst.state_age_seconds is not None and worst.state_age_seconds > t.idle_in_transaction_seconds_crit
    limit = t.idle_in_transaction_seconds_crit if crit else t.idle_in_transaction_seconds_warn
    return Metric(
        "idle_in_transaction",
        CRIT if crit else WARN,
        f"{n} session{'s' if n != 1 else ''} idle in transaction > {'crit' if crit else 'warn'} {human_seconds(limit)} "
        f"(longest {human_seconds(worst.state_age_seconds)}, pid {worst.pid})",
        n,
    )


def _pool(t: PostgresThresholds, p: PoolRow) -> Metric | None:
    """One pool's problem, or None when it has none.

    Waiting: clients queue (cl_waiting > 0) and the oldest has waited pgbouncer_wait_seconds_warn
    (WARN) or _crit (CRIT). Unlike the other threshold rules these are "at least" limits:
    PgBouncer before 1.8 reports maxwait in whole seconds, where 1 already means a client waited
    a second or more. Saturated: every server connection the pool may open is busy (sv_active >=
    pool_size, when the pool size is known) and clients queue: WARN even before the wait gets
    long, since the next burst has nowhere to go.
    """
    if p.cl_waiting <= 0:
        return None
    name = f"pgbouncer:{p.database}/{p.user}"
    where = f"pool {p.database}/{p.user}"
    wait = p.maxwait_seconds
    saturated = p.pool_size is not None and p.pool_size > 0 and p.sv_active >= p.pool_size
    waits_long = wait >= t.pgbouncer_wait_seconds_warn
    if not (saturated or waits_long):
        return None
    severity = CRIT if wait >= t.pgbouncer_wait_seconds_crit else WARN
    n = p.cl_waiting
    clients = f"{n} client{'s' if n != 1 else ''} waiting, longest {human_seconds(wait)}"
    if saturated and waits_long:
        text = f"{where} saturated ({p.sv_active}/{p.pool_size} server connections), {clients}"
    elif saturated:
        text = f"{where} saturated ({p.sv_active}/{p.pool_size} server connections, {n} waiting)"
    else:
        text = f"{where}: {clients}"
    return Metric(name, severity, text, wait)


def assess_member(
    ref: ClusterRef,
    member: Member,
    snap: Snapshot | None,
    primaries: list[PgMemberData],
    baseline: dict[str, dict[str, Any]] | None = None,
    now: float | None = None,
) -> MemberHealth:
    t = ref.cluster.thresholds
    if snap is None:
        snap = Snapshot(ref.environment, ref.name, member.name, "postgres", Reachability.PENDING, taken_at=0.0)
    role = _role(member, snap)
    if snap.reachability is Reachability.PENDING:
        return MemberHealth(snap, role, UNKNOWN, (Metric("reachability", UNKNOWN, "not polled yet", "PENDING"),))
    if snap.reachability is not Reachability.UP or not isinstance(snap.data, PgMemberData):
        now = time.time() if now is None else now
        seen = (
            f"last seen {human_seconds(max(0.0, now - snap.last_good_at))} ago"
            if snap.last_good_at is not None
            else "never reached"
        )
        error = snap.error or "no data"
        return MemberHealth(
            snap, role, CRIT, (Metric("reachability", CRIT, f"{snap.reachability.value}: {error} ({seen})", snap.reachability.value),)
        )

    data: PgMemberData = snap.data
    fenced = ", fenced read-only" if data.read_only_fence and not data.in_recovery else ""
    metrics: list[Metric] = [
        Metric("reachability", OK, f"up, {role}{fenced}, PostgreSQL {data.server_version.split()[0]}", "UP")
    ]
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    if data.in_recovery:
        replica, lag_bytes, lag_seconds = _replica_metrics(t, member, data, primaries, now)
        metrics.extend(replica)
    metrics.append(_connections(t, data))
    metrics.extend(_connection_limits(t, data))
    metrics.append(_cache(t, data))
    metrics.append(_archiver(t, data, (baseline or {}).get(member.name)))
    metrics.extend(m for m in (_xid(t, data), _mxid(t, data)) if m is not None)
    metrics.append(_horizon(t, data))
    metrics.append(_vacuums(data))
    metrics.extend(_slots(t, data))
    metrics.append(_long_queries(t, data))
    metrics.append(_long_transactions(t, data))
    metrics.append(_idle_in_transaction(t, data))
    if data.pgbouncer is not None and data.pgbouncer.error:
        metrics.append(Metric("pgbouncer", WARN, f"PgBouncer unreadable: {data.pgbouncer.error}", None))
    elif data.pgbouncer is not None:
        waiting = sum(p.cl_waiting for p in data.pgbouncer.pools)
        metrics.append(Metric("pgbouncer", OK, f"PgBouncer: {len(data.pgbouncer.pools)} pools, {waiting} clients waiting", waiting))
        metrics.extend(m for p in data.pgbouncer.pools if (m := _pool(t, p)) is not None)
    severity = Severity.worst([m.severity for m in metrics], default=OK)
    return MemberHealth(snap, role, severity, tuple(metrics), lag_bytes, lag_seconds)


# ---------------------------------------------------------------------------------------------
# Cluster

_COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}


def split_brain_message(primaries: list[tuple[str, PgMemberData]]) -> str:
    """"two primaries: pg1 (timeline 3) and pg2 (timeline 4)": every member that answers as a
    writable primary, by name."""
    parts = [
        f"{name} (timeline {d.timeline if d.timeline is not None else 'unknown'})"
        for name, d in sorted(primaries, key=lambda p: p[0])
    ]
    listed = ", ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else parts[0]
    return f"{_COUNT_WORDS.get(len(parts), str(len(parts)))} primaries: {listed}"



def assess_cluster(
    ref: ClusterRef,
    snapshots: dict[str, Snapshot],
    baseline: dict[str, dict[str, Any]] | None = None,
    now: float | None = None,
) -> ClusterHealth:
    """Judge every configured member (a member without a snapshot is PENDING) and the cluster."""
    now = time.time() if now is None else now
    members = ref.cluster.members
    up_primaries = [
        (m.name, s.data)
        for m in members
        if (s := snapshots.get(m.name)) is not None
        and s.reachability is Reachability.UP
        and isinstance(s.data, PgMemberData)
        and not s.data.in_recovery
    ]
    primaries_data = [d for _, d in up_primaries]
    healths = tuple(assess_member(ref, m, snapshots.get(m.name), primaries_data, baseline, now) for m in members)

    cluster_metrics: list[Metric] = []
    pending = all(
        (s := snapshots.get(m.name)) is None or s.reachability is Reachability.PENDING for m in members
    )
    if pending:
        cluster_metrics.append(Metric("primary", UNKNOWN, "waiting for the first poll", None))
    elif not up_primaries:
        last_known = [
            h for h in healths if h.role == "primary" and isinstance(h.snapshot.last_good, PgMemberData)
        ]
        detail = ""
        if last_known:
            h = last_known[0]
            age = h.snapshot.age_of_shown(now)
            detail = f" ({h.name} was primary, last seen {human_seconds(age)} ago)" if age is not None else f" ({h.name} was primary)"
        cluster_metrics.append(Metric("primary", CRIT, f"no reachable primary{detail}", None))
    elif len(writable := [(n, d) for n, d in up_primaries if not d.read_only_fence]) > 1:
        cluster_metrics.append(Metric("primary", CRIT, split_brain_message(writable), sorted(n for n, _ in writable)))
    else:
        # One writable primary (a switchover's fenced old primary, out of recovery but
        # read-only, is no second one), or only fenced ones.
        name = (writable or up_primaries)[0][0]
        fenced = sorted(n for n, d in up_primaries if d.read_only_fence and n != name)
        note = f" ({', '.join(fenced)} fenced read-only)" if fenced else ""
        cluster_metrics.append(Metric("primary", OK, f"primary {name}{note}", name))

    severity = Severity.worst([h.severity for h in healths] + [m.severity for m in cluster_metrics], default=OK)
    return ClusterHealth(
        environment=ref.environment,
        name=ref.name,
        engine="postgres",
        severity=severity,
        members=healths,
        metrics=tuple(cluster_metrics),
    )
