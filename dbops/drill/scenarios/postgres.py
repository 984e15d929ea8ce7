"""PostgreSQL drills: losing the primary, an accidental DELETE, restoring the newest backup.

The fault is dbops' own doing only where it can be: a member's server stopped through the
cluster's managed hosts (the sandbox), or a statement through the database's own API (the
DELETE). Elsewhere the plan shows the commands and the operator does it and confirms.
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime
from typing import Any

from dbops.config import ClusterRef, Member
from dbops.drill.model import DrillContext, DrillRefused, Fault, Recovery, Scenario, require_stopped
from dbops.drill.probe import Ack
from dbops.runbook.hosts import HostOp, Verb
from dbops.runbook.model import Verdict

# -- the members, asked (the config's role hints go stale after a failover) --------------------


async def _ask(ref: ClusterRef, m: Member, sql: str) -> Any:
    from dbops.engines.postgres.adapter import PostgresAdapter

    conn = await PostgresAdapter(ref, m).open_connection("dbops-drill")
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def roles(ref: ClusterRef) -> dict[str, str]:
    """Each member's role now: primary, replica or down (did not answer)."""

    async def one(m: Member) -> str:
        try:
            return "replica" if await asyncio.wait_for(_ask(ref, m, "SELECT pg_is_in_recovery()"), ref.timeout + 2) else "primary"
        except Exception:  # a member that does not answer is what a drill expects to see
            return "down"

    found = await asyncio.gather(*(one(m) for m in ref.cluster.members))
    return {m.name: r for m, r in zip(ref.cluster.members, found, strict=True)}


def _member(ref: ClusterRef, name: str) -> Member:
    return next(m for m in ref.cluster.members if m.name == name)


def _replicated(ref: ClusterRef) -> str | None:
    if ref.cluster.engine != "postgres":
        return f"it is a {ref.cluster.engine} cluster"
    if len(ref.cluster.members) < 2:
        return "it has one member: there is no replica to fail over to"
    return None


# -- pg-primary-loss ---------------------------------------------------------------------------


async def primary_loss_prepare(ctx: DrillContext) -> list[str]:
    now = await roles(ctx.ref)
    primaries = [n for n, r in now.items() if r == "primary"]
    replicas = [n for n, r in now.items() if r == "replica"]
    if len(primaries) != 1 or not replicas:
        raise DrillRefused(f"{ctx.ref.key} needs one primary and a live replica for this drill; now: "
                           + ", ".join(f"{n} {r}" for n, r in now.items()))
    ctx.facts["victim"] = primaries[0]
    return [f"the primary is {primaries[0]}; replicas {', '.join(replicas)}"]


def _victim(ctx: DrillContext) -> str:
    return str(ctx.facts.get("victim", "<the primary>"))


def primary_loss_commands(ctx: DrillContext) -> list[str]:
    victim = _victim(ctx)
    where = f"{victim}'s host" if victim in {m.name for m in ctx.ref.cluster.members} else "the primary's host"
    return ctx.hosts.render(HostOp(Verb.STOP, victim, ("immediate",), manual=(
        f"# on {where}, as the postgres OS user: a crash (no checkpoint, clients cut off at once)",
        "pg_ctl -D \"$PGDATA\" -m immediate stop",
    ))) or [f"pg_ctl -m immediate stop of {victim}"]


async def primary_loss_inject(ctx: DrillContext) -> str:
    victim = _victim(ctx)
    result = await ctx.hosts.perform(HostOp(Verb.STOP, victim, ("immediate",)))
    if not result.ok:
        raise RuntimeError(f"stopping {victim}: {result.detail}")
    await require_stopped(ctx, victim, f"stopping {victim}")
    return f"{victim} crashed (immediate stop: no checkpoint, every client cut off)"


async def primary_loss_heal(ctx: DrillContext) -> str:
    victim = _victim(ctx)
    result = await ctx.hosts.perform(HostOp(Verb.START, victim))
    if not result.ok:
        return f"{victim}: {result.detail}"
    line = f"{victim} started again (the drill was aborted before the failover)"
    if ctx.ref.cluster.pgbouncer is None:
        return line
    from dbops.engines.postgres.fencing import first_login_now

    # PgBouncer's logins to the crashed primary failed: without this its clients would wait out
    # server_login_retry although the primary is back.
    try:
        return "; ".join([line, *(f"PgBouncer: {x}" for x in await first_login_now(ctx.ref))])
    except Exception as exc:  # PgBouncer unreachable, or reaching a server in recovery: said; the primary is back
        from dbops.drill.probe import one_line

        return f"{line}; PgBouncer: {one_line(exc)}"


async def most_advanced_replica(ctx: DrillContext) -> str:
    """The live replica that received the most WAL: the one a failover must promote."""
    lsns: dict[str, int] = {}
    for m in ctx.ref.cluster.members:
        if m.name == _victim(ctx):
            continue
        try:
            lsn = await asyncio.wait_for(_ask(ctx.ref, m, "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint "
                                                       "WHERE pg_is_in_recovery()"), ctx.ref.timeout + 2)
        except Exception:  # a replica that does not answer cannot be promoted
            continue
        if lsn is not None:
            lsns[m.name] = int(lsn)
    if not lsns:
        raise DrillRefused("no live replica answers: nothing to promote")
    best = max(lsns, key=lambda n: lsns[n])
    ctx.facts["candidate"] = best
    ctx.log(f"the most advanced replica is {best} (received LSN {', '.join(f'{n} {v}' for n, v in lsns.items())})")
    return best


async def primary_loss_params(ctx: DrillContext) -> dict[str, str]:
    return {"candidate": await most_advanced_replica(ctx)}


async def primary_loss_verify(ctx: DrillContext) -> list[Verdict]:
    now = await roles(ctx.ref)
    candidate = ctx.facts.get("candidate")
    primaries = [n for n, r in now.items() if r == "primary"]
    return [Verdict(primaries == [candidate], f"one primary: {', '.join(primaries) or 'none'} (promoted: {candidate})")]


async def _upstream_port(ref: ClusterRef, m: Member) -> int | None:
    """The port a replica streams from now (None when its walreceiver is not streaming)."""
    try:
        return await asyncio.wait_for(_ask(ref, m, "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'"),
                                      ref.timeout + 2)
    except Exception:  # down or not answering: it is rejoined below
        return None


async def primary_loss_restore(ctx: DrillContext) -> list[str]:
    """Back to one primary with every other member streaming from it: the old primary rewound
    and rejoined (after a failover), and any replica a half-run failover left pointing at the
    candidate (an abort, a declined fence) rejoined to whichever member is primary now. The new
    primary is not switched back: a team decides that."""
    now = await roles(ctx.ref)
    primaries = [n for n, r in now.items() if r == "primary"]
    if len(primaries) != 1:
        raise RuntimeError(f"{ctx.ref.key} does not have one primary now ({', '.join(f'{n} {r}' for n, r in now.items())}): "
                           "the way back needs an operator")
    primary = _member(ctx.ref, primaries[0])
    lines = []
    for m in ctx.ref.cluster.members:
        if m.name == primary.name:
            continue
        if now[m.name] == "replica" and await _upstream_port(ctx.ref, m) == primary.port:
            continue
        why = "down" if now[m.name] == "down" else "not streaming from it"
        if not ctx.hosts.managed:
            lines.append(f"{m.name} is {why}: rejoin it as a replica of {primary.name} (postgres.promote-replica's rejoin commands)")
            continue
        result = await ctx.hosts.perform(HostOp(Verb.RUN, m.name, ("rejoin", primary.name)))
        if not result.ok:
            raise RuntimeError(f"rejoining {m.name}: {result.detail}")
        lines.append(f"{m.name} was {why}: {result.detail}")
    return lines or [f"every member streams from {primary.name}"]


# -- pg-accidental-delete ----------------------------------------------------------------------


def _pgbackrest(ref: ClusterRef) -> str | None:
    return _replicated(ref) if ref.cluster.engine != "postgres" else (
        None if ref.cluster.pgbackrest is not None else "it has no [pgbackrest] settings: there is no backup to restore from")


async def _primary_conn(ctx: DrillContext) -> Any:
    from dbops.engines.postgres.adapter import connect_primary

    conn = await connect_primary(ctx.ref, "dbops-drill")
    if conn is None:
        raise RuntimeError(f"no member of {ctx.ref.key} answers as primary")
    return conn


async def _backups(ctx: DrillContext) -> list[Any]:
    from dbops.engines.postgres import pgbackrest as pb

    s = ctx.ref.cluster.pgbackrest
    assert s is not None
    info = await pb.info(s.config, s.stanza, os_user=s.os_user, binary=s.bin)
    return list(info.backups)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def delete_prepare(ctx: DrillContext) -> list[str]:
    lines = await _ensure_backup(ctx)
    ctx.facts["port"] = _free_port()
    return [*lines, f"the copy will listen on 127.0.0.1:{ctx.facts['port']}"]


def delete_commands(ctx: DrillContext) -> list[str]:
    return [
        "-- the probe holds its next write while these run, so every write is either before T or after the DELETE",
        "SELECT clock_timestamp()  -- T, the time to restore to",
        "DELETE FROM dbops_drill_probe WHERE run_id = '<run id>'  -- the accident: every probe row written so far",
        "SELECT pg_switch_wal()  -- the WAL holding T goes to the archive now (the restore needs it)",
    ]


async def delete_inject(ctx: DrillContext) -> str:
    conn = await _primary_conn(ctx)
    try:
        async with ctx.hold_probe():
            t = await conn.fetchval("SELECT clock_timestamp()")
            status = await conn.execute("DELETE FROM dbops_drill_probe WHERE run_id = $1", ctx.run_id)
        ctx.facts["deleted_at"] = t.timestamp()
        ctx.facts["deleted_rows"] = int(status.split()[-1])
        ctx.marks["fault"] = t.timestamp()
        segment = await conn.fetchval("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + 60
        while True:  # the restore's pre-check wants WAL archived past T
            last = await conn.fetchval("SELECT last_archived_wal FROM pg_stat_archiver")
            if last is not None and last >= segment:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"WAL segment {segment} was not archived within 60s: the restore could not reach T")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    return f"DELETE of {ctx.facts['deleted_rows']} probe rows at {datetime.fromtimestamp(ctx.facts['deleted_at'], UTC):%H:%M:%S.%f} UTC"


async def delete_params(ctx: DrillContext) -> dict[str, str]:
    t = datetime.fromtimestamp(float(ctx.facts["deleted_at"]), UTC)
    return {"target": t.isoformat(timespec="microseconds"), "port": str(ctx.facts["port"])}


def _copy(ctx: DrillContext) -> Member:
    return Member(name="restored copy", host="127.0.0.1", port=int(ctx.facts["port"]))


async def copy_probe(ctx: DrillContext) -> Any:
    from dbops.engines.postgres.probe import PostgresProbe

    return PostgresProbe(ctx.ref, ctx.run_id, member=_copy(ctx))


async def delete_verify(ctx: DrillContext) -> list[Verdict]:
    probe = await copy_probe(ctx)
    try:
        before = [a.seq for a in ctx.acks() if a.t < float(ctx.facts["deleted_at"])]
        back = await probe.present(before)
        ctx.marks["verified"] = time.time()
        rows = await probe.rows()
    finally:
        await probe.close(drop=False)
    missing = len(before) - len(back)
    return [Verdict(missing == 0, f"deleted rows back in the copy: {len(back)} of the {len(before)} acknowledged before T "
                                  f"({rows} rows in the copy)")]


def before_delete(ctx: DrillContext, acks: list[Ack]) -> list[Ack]:
    return [a for a in acks if a.t < float(ctx.facts["deleted_at"])]


def after_delete(ctx: DrillContext, acks: list[Ack]) -> list[Ack]:
    return [a for a in acks if a.t >= float(ctx.facts["deleted_at"])]


async def delete_restore(ctx: DrillContext) -> list[str]:
    """The scratch copy stopped and removed: the drill leaves nothing running."""
    from dbops.engines.postgres import restore as rs

    s = ctx.ref.cluster.pgbackrest
    from dbops.runbook.journal import Journal

    run_id = next((r.get("run_id") for r in ctx.recovery_runs if r.get("run_id")), None)
    if s is None or run_id is None:
        return []
    paths = rs.paths_for(s.restore_root, ctx.ref.name, run_id)
    if not paths.root.exists():
        return []
    # The restore journaled the backup's PostgreSQL version: its binaries stop the copy.
    major = Journal.open(ctx.state_dir, run_id).read().state.get("pg_major")
    await rs.remove(rs.bindir(s.pg_bindir, major), paths, s.os_user, run_id)
    return [f"the scratch copy {paths.root} stopped and removed"]


# -- pg-backup-restore -------------------------------------------------------------------------


async def _ensure_backup(ctx: DrillContext) -> list[str]:
    """A pgBackRest backup to restore: the newest, or one taken now (postgres.backup, with its
    own plan and confirmation) when the stanza has none."""
    backups = await _backups(ctx)
    if backups:
        newest = max(b.stop for b in backups)
        return [f"newest backup ended {newest:%Y-%m-%d %H:%M:%S} UTC"]
    ctx.log(f"{ctx.ref.key} has no pgBackRest backup: taking one (postgres.backup) before the drill")
    await ctx.run_runbook("postgres.backup", {"type": "full"})
    return ["no backup existed: postgres.backup took a full one"]


async def _has_dump(ctx: DrillContext) -> bool:
    from dbops.platform import s3

    loc = ctx.ref.cluster.backups.s3
    if loc is None:
        return False
    found = await asyncio.to_thread(s3.list_backups, loc, "pg_dump")
    return any(m.meta.get("cluster") == ctx.ref.name and m.meta.get("database") == ctx.ref.cluster.database for m in found)


async def backup_prepare(ctx: DrillContext) -> list[str]:
    lines = await _ensure_backup(ctx)
    if ctx.ref.cluster.backups.s3 is not None:
        if not await _has_dump(ctx):
            ctx.log(f"{ctx.ref.key} has no pg_dump backup in S3: taking one (postgres.dump) before the drill")
            await ctx.run_runbook("postgres.dump", {})
            lines.append("no dump existed: postgres.dump took one")
        ctx.facts["dump_into"] = f"{ctx.ref.cluster.database}_drill_{ctx.run_id.replace('-', '_')}"
    ctx.facts["port"] = _free_port()
    return lines


def backup_commands(ctx: DrillContext) -> list[str]:
    return [
        "-- nothing is stopped or changed: the cluster is declared lost at T, and restored beside itself",
        "SELECT clock_timestamp()  -- T",
        "SELECT last_archived_wal, last_archived_time FROM pg_stat_archiver  -- what a disaster at T would leave",
    ]


async def backup_inject(ctx: DrillContext) -> str:
    conn = await _primary_conn(ctx)
    try:
        row = await conn.fetchrow("SELECT clock_timestamp() AS t, last_archived_wal, last_archived_time FROM pg_stat_archiver")
    finally:
        await conn.close()
    if row["last_archived_time"] is None:
        raise RuntimeError("the primary has never archived WAL: a disaster now would leave only the base backups")
    ctx.facts["lost_at"] = row["t"].timestamp()
    ctx.facts["archived_until"] = row["last_archived_time"].timestamp()
    ctx.facts["archived_wal"] = row["last_archived_wal"]
    ctx.marks["fault"] = row["t"].timestamp()
    behind = row["t"].timestamp() - row["last_archived_time"].timestamp()
    return (f"declared lost at {row['t']:%H:%M:%S} UTC; the archive's newest segment {row['last_archived_wal']} was archived "
            f"{behind:.1f}s before: everything after it exists only on the lost servers")


async def backup_params(ctx: DrillContext) -> dict[str, str]:
    # To the end of the archive: what a disaster at T leaves is the WAL archived by T. A time
    # target cannot say that (recovery fails when the archive ends before it), so the verify
    # step checks that the archive did not grow between T and the restore.
    return {"target": "latest", "port": str(ctx.facts["port"])}


async def _archive_unchanged(ctx: DrillContext) -> Verdict:
    conn = await _primary_conn(ctx)
    try:
        now = await conn.fetchval("SELECT last_archived_wal FROM pg_stat_archiver")
    finally:
        await conn.close()
    if now == ctx.facts["archived_wal"]:
        age = float(ctx.facts["lost_at"]) - float(ctx.facts["archived_until"])
        return Verdict(True, f"the archive ended at {now} at T and still does: the copy holds what a disaster at T would "
                             f"leave; that segment was archived {age:.0f}s before T, and every write since then was lost "
                             "(without archive_timeout a quiet primary archives rarely)")
    return Verdict(False, f"the archive grew after T ({ctx.facts['archived_wal']} then, {now} at the restore): the copy may "
                          "hold writes a disaster at T would have lost, so its RPO would be understated")


async def dump_params(ctx: DrillContext) -> dict[str, str]:
    return {"into": str(ctx.facts["dump_into"])}


async def _counts(ref: ClusterRef, member: Member, database: str | None = None) -> dict[str, int]:
    """Exact row counts of every user table (the probe's excluded): a restore drill compares
    them, and sandbox-sized tables make count(*) cheap."""
    from dbops.engines.postgres.adapter import PostgresAdapter

    conn = await PostgresAdapter(ref, member).open_connection("dbops-drill", statement_timeout=60)
    try:
        if database is not None:
            await conn.close()
            import dataclasses

            other = dataclasses.replace(ref.cluster, database=database)
            conn = await PostgresAdapter(dataclasses.replace(ref, cluster=other), member).open_connection("dbops-drill", statement_timeout=60)
        tables = await conn.fetch("SELECT format('%I.%I', schemaname, relname) AS t FROM pg_stat_user_tables "
                                  "WHERE relname <> 'dbops_drill_probe' ORDER BY 1 LIMIT 200")
        return {r["t"]: int(await conn.fetchval(f"SELECT count(*) FROM {r['t']}")) for r in tables}
    finally:
        await conn.close()


def _compare(what: str, restored: dict[str, int], live: dict[str, int]) -> Verdict:
    missing = sorted(set(live) - set(restored))
    differ = sorted(t for t in set(live) & set(restored) if live[t] != restored[t])
    detail = (f"{what}: {len(restored)} tables, {sum(restored.values())} rows; live {len(live)} tables, "
              f"{sum(live.values())} rows")
    if differ:
        detail += "; counts differ (written since the backup): " + ", ".join(f"{t} {restored[t]} vs {live[t]}" for t in differ[:5])
    if missing:
        detail += "; missing: " + ", ".join(missing[:5])
    return Verdict(not missing, detail)


async def _live_primary(ctx: DrillContext) -> Member:
    now = await roles(ctx.ref)
    return _member(ctx.ref, next(n for n, r in now.items() if r == "primary"))


async def backup_verify(ctx: DrillContext) -> list[Verdict]:
    primary = await _live_primary(ctx)
    live = await _counts(ctx.ref, primary)
    copy = await _counts(ctx.ref, _copy(ctx))
    verdicts = [await _archive_unchanged(ctx), _compare("pgBackRest copy", copy, live)]
    probe = await copy_probe(ctx)
    try:
        back = await probe.present([a.seq for a in ctx.acks()])
    finally:
        await probe.close(drop=False)
    ctx.marks["verified"] = time.time()
    verdicts.append(Verdict(True, f"probe rows in the copy: {len(back)} (those archived before T)"))
    if ctx.facts.get("dump_into"):
        verdicts.append(_compare(f"dump restored into {ctx.facts['dump_into']}",
                                 await _counts(ctx.ref, primary, str(ctx.facts["dump_into"])), live))
    return verdicts


async def backup_restore(ctx: DrillContext) -> list[str]:
    lines = await delete_restore(ctx)
    into = ctx.facts.get("dump_into")
    if into and any(r.get("runbook") == "postgres.restore-dump" and r.get("outcome") == "ok" for r in ctx.recovery_runs):
        conn = await _primary_conn(ctx)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{into}" WITH (FORCE)')
        finally:
            await conn.close()
        lines.append(f"the restored database {into} dropped")
    return lines


SCENARIOS = [
    Scenario(
        id="pg-primary-loss",
        title="Lose the primary: crash it, fail over with fencing, rejoin it",
        engine="postgres",
        description="The primary crashes (immediate stop); postgres.promote-replica promotes the most advanced replica "
                    "(fencing included) and repoints PgBouncer; the old primary is rewound and rejoined as a replica.",
        fault=Fault("crash the primary (immediate stop)", primary_loss_commands, primary_loss_inject, heal=primary_loss_heal),
        recovery=(Recovery("postgres.promote-replica", primary_loss_params, "promote the most advanced replica"),),
        applies=_replicated,
        prepare=primary_loss_prepare,
        verify=primary_loss_verify,
        restore=primary_loss_restore,
    ),
    Scenario(
        id="pg-accidental-delete",
        title="An accidental DELETE: restore to just before it into a scratch copy",
        engine="postgres",
        description="Every probe row is DELETEd at T; postgres.restore recovers the newest backup to T into a scratch "
                    "copy; the rows acknowledged before T must be there and none written after T.",
        fault=Fault("DELETE every probe row", delete_commands, delete_inject, performed=lambda ctx: True),
        recovery=(Recovery("postgres.restore", delete_params, "the newest backup, recovered to just before the DELETE"),),
        applies=_pgbackrest,
        prepare=delete_prepare,
        verify=delete_verify,
        restore=delete_restore,
        rto="data",
        detectable=False,
        recovered=copy_probe,
        expected=before_delete,
        unexpected=after_delete,
    ),
    Scenario(
        id="pg-backup-restore",
        title="Lose everything but the backups: restore the newest backup and dump beside the cluster",
        engine="postgres",
        description="The cluster is declared lost at T (nothing is stopped): postgres.restore recovers the newest "
                    "pgBackRest backup with the WAL archived by T into a scratch copy, postgres.restore-dump the newest "
                    "dump into a new database; table counts are compared with the live cluster, and the RPO is what the "
                    "archive lacked at T.",
        fault=Fault("declare the cluster lost (nothing is touched)", backup_commands, backup_inject, performed=lambda ctx: True),
        recovery=(Recovery("postgres.restore", backup_params, "the newest backup with the WAL archived by T"),
                  Recovery("postgres.restore-dump", dump_params, "the newest dump into a new database",
                           when=lambda ctx: bool(ctx.facts.get("dump_into")))),
        applies=_pgbackrest,
        prepare=backup_prepare,
        verify=backup_verify,
        restore=backup_restore,
        rto="data",
        detectable=False,
        recovered=copy_probe,
        expected=lambda ctx, acks: [a for a in acks if a.t < float(ctx.facts["lost_at"])],
    ),
]
