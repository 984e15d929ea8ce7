"""postgres.restore-in-place: restore a pgBackRest backup OVER the live cluster (replace), latest
or to a point in time. Everything written after the target is lost; prefer postgres.restore (a
new copy) unless the cluster itself must go back.

Pre-checks: those of postgres.restore (target, backup, archived WAL covering the target,
checksums), and which member becomes the primary (the current primary, or --param member=) with
its data directory. Steps: stop every member (replicas first) -> pgbackrest restore --delta over
the member's data directory (archiving kept on: the new timeline is archived like any other) ->
start it -> wait until it has left recovery -> verify (out of recovery, the recovery target
reached, canary rows) -> clear the recovery target from its settings (a later demotion must not
stop replay there) -> rebuild the other members as its replicas (pg_rewind).

Where dbops manages the servers (the sandbox) every step is automatic. Elsewhere the steps that
run on database hosts are manual: dbops shows the exact commands, waits for the operator's
confirmation, then verifies from its own connection.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from dbops.engines.postgres import pgbackrest as pb
from dbops.engines.postgres import restore as rs
from dbops.engines.postgres import switchover as sw
from dbops.runbook.hosts import HostOp, Verb
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict, host_variants
from dbops.runbooks.postgres import common
from dbops.runbooks.postgres import restore as restore_rb

PG_BIN = "/usr/lib/postgresql/{major}/bin"


def member(ctx: Context) -> str:
    return str(ctx.state["member"])


def others(ctx: Context) -> list[str]:
    return [m.name for m in ctx.ref.cluster.members if m.name != member(ctx)]


def _host(ctx: Context, name: str) -> str:
    m = next(m for m in ctx.ref.cluster.members if m.name == name)
    return f"{m.host}:{m.port}"


def _data_dir(ctx: Context, name: str) -> str:
    return str(ctx.state.get("data_dirs", {}).get(name) or f"<data directory of {name}>")


def _bin(ctx: Context) -> str:
    s = ctx.ref.cluster.pgbackrest
    return (s.pg_bindir if s and s.pg_bindir else PG_BIN.format(major=ctx.state.get("pg_major") or "<major>"))


# -- pre-checks ------------------------------------------------------------------------------


async def check_member(ctx: Context) -> Verdict:
    """Which member the backup goes over, and every member's data directory."""
    conns: dict[str, sw.Conn] = ctx.resources["conns"]
    wanted = str(ctx.params.get("member") or "")
    if wanted and wanted not in conns:
        return Verdict(False, f"cluster {ctx.ref.name} has no member {wanted!r}; members: {', '.join(conns)}")
    data_dirs, primary, problems = {}, None, []
    for name, c in conns.items():
        try:
            row = (await c.fetch("SELECT current_setting('data_directory') AS d, pg_is_in_recovery() AS r"))[0]
        except Exception as exc:  # a dead member is why one restores; say which and go on
            problems.append(f"{name}: {c.error(exc)}")
            continue
        data_dirs[name] = row["d"]
        if not row["r"]:
            primary = name
    for m in ctx.ref.cluster.members:  # where dbops runs the servers, it knows their directories even when down
        known = ctx.hosts.data_dir(m.name)
        if known is not None:
            data_dirs.setdefault(m.name, str(known))
    chosen = wanted or primary
    if chosen is None:
        return Verdict(False, "no member answers as primary; name the member to restore over with --param member=NAME"
                       + (f" ({'; '.join(problems)})" if problems else ""))
    if chosen not in data_dirs:
        return Verdict(False, f"{chosen} does not answer, so its data directory is unknown ({'; '.join(problems)})")
    ctx.state.update(member=chosen, data_dirs=data_dirs)
    return Verdict(True, f"{chosen} ({_host(ctx, chosen)}, data {data_dirs.get(chosen)}) becomes the primary; "
                         f"{', '.join(others(ctx)) or 'no other member'} will be rebuilt as its replicas")


# -- steps: automatic where dbops manages the servers ------------------------------------------


def _stops(ctx: Context) -> list[HostOp]:
    return [HostOp(Verb.STOP, name, ("fast",), manual=(f"# {name}, on {_host(ctx, name)}, as the postgres OS user:",
                                                       f"{_bin(ctx)}/pg_ctl -D {_data_dir(ctx, name)} -m fast -w stop"))
            for name in [*others(ctx), member(ctx)]]  # replicas first


def stop_cmds(ctx: Context) -> list[str]:
    if "member" not in ctx.state:
        return ["# known once the pre-checks pass"]
    return [line for op in _stops(ctx) for line in ctx.hosts.render(op)]


async def do_stop(ctx: Context) -> None:
    ctx.state.setdefault("rto_started", time.time())
    for op in _stops(ctx):
        ctx.log((await ctx.hosts.perform(op)).detail)


async def verify_stopped(ctx: Context) -> Verdict:
    up = []
    for name, c in ctx.resources["conns"].items():
        try:
            await c.fetchval("SELECT 1")
            up.append(name)
        except Exception:  # refused or timed out: that is what stopped looks like from here
            await c.close()
    return Verdict(not up, "every member is stopped" if not up else f"still answering: {', '.join(up)}")


def _restore(ctx: Context) -> HostOp:
    """pgbackrest restore --delta over the member's data directory, on its host."""
    args = pb.restore_args(_data_dir(ctx, member(ctx)), ctx.state.get("label"), restore_rb.target(ctx), delta=True)[1:]
    lines = common.cmds(ctx, pb.describe_restore, _data_dir(ctx, member(ctx)), label=ctx.state.get("label"),
                        target=restore_rb.target(ctx), delta=True)
    where = f"# on {_host(ctx, member(ctx))}, the host of {member(ctx)}, with the repository reachable"
    return HostOp(Verb.RUN, member(ctx), ("pgbackrest-restore", *args), manual=(where, *lines),
                  timeout=restore_rb.RESTORE_TIMEOUT)


def restore_cmds(ctx: Context) -> list[str]:
    if "member" not in ctx.state:
        return ["# known once the pre-checks pass"]
    return ctx.hosts.render(_restore(ctx))


async def do_restore(ctx: Context) -> None:
    ctx.log(f"restoring backup {ctx.state['label']} over {member(ctx)} ({_data_dir(ctx, member(ctx))})")
    await ctx.hosts.perform(_restore(ctx))
    ctx.state["restored"] = True


async def verify_restored(ctx: Context) -> Verdict:
    from pathlib import Path

    data = Path(_data_dir(ctx, member(ctx)))
    try:
        ok = (data / "recovery.signal").exists() or not (await _in_recovery(ctx))
    except Exception:  # not started yet: only the files can tell
        ok = (data / "recovery.signal").exists()
    return Verdict(ok, f"{data} holds the restored files, set up to recover" if ok else f"{data} is not set up to recover")


def _start(ctx: Context) -> HostOp:
    return HostOp(Verb.START, member(ctx), manual=(f"# on {_host(ctx, member(ctx))} as the postgres OS user",
                                                   f"{_bin(ctx)}/pg_ctl -D {_data_dir(ctx, member(ctx))} -l <its log file> start"))


def start_cmds(ctx: Context) -> list[str]:
    if "member" not in ctx.state:
        return ["# known once the pre-checks pass"]
    return ctx.hosts.render(_start(ctx))


async def do_start(ctx: Context) -> None:
    log = ctx.hosts.log_file(member(ctx))
    # Where recovery's messages begin: the verification reads the log from here.
    ctx.state["log_offset"] = log.stat().st_size if log is not None and log.exists() else 0
    await ctx.hosts.perform(_start(ctx))
    ctx.log(f"{member(ctx)} started; it replays WAL to the target")


async def verify_started(ctx: Context) -> Verdict:
    try:
        await ctx.resources["conns"][member(ctx)].fetchval("SELECT 1")
    except Exception as exc:
        return Verdict(False, f"{member(ctx)} does not answer: {ctx.resources['conns'][member(ctx)].error(exc)}")
    return Verdict(True, f"{member(ctx)} answers")


async def _in_recovery(ctx: Context) -> bool:
    return bool(await ctx.resources["conns"][member(ctx)].fetchval("SELECT pg_is_in_recovery()"))


async def do_recover(ctx: Context) -> None:
    conn = ctx.resources["conns"][member(ctx)]
    last = 0.0
    while True:
        try:
            if not await _in_recovery(ctx):
                ctx.state["recovered_at"] = time.time()
                ctx.log(f"{member(ctx)} has left recovery and accepts writes")
                return
            where = "replaying WAL"
        except Exception as exc:  # starting up, or it stopped: say which
            reach, message = conn.adapter.classify(exc)
            if reach.name in ("AUTH", "TLS"):
                raise RuntimeError(message) from None
            where = f"not answering yet ({message})"
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            ctx.log(f"{member(ctx)}: {where}")
        await asyncio.sleep(1)


async def verify_recovered(ctx: Context) -> Verdict:
    try:
        recovering = await _in_recovery(ctx)
    except Exception as exc:
        return Verdict(False, f"{member(ctx)} does not answer: {ctx.resources['conns'][member(ctx)].error(exc)}")
    return Verdict(not recovering, "out of recovery" if not recovering else "still in recovery")


async def _findings(ctx: Context) -> tuple[list[str], list[str]]:
    conn = ctx.resources["conns"][member(ctx)]
    problems, facts = [], []
    if await _in_recovery(ctx):
        problems.append(f"{member(ctx)} is still in recovery")
    log = ctx.hosts.log_file(member(ctx))
    if log is not None:
        text = log.read_text(encoding="utf-8", errors="replace")[int(ctx.state.get("log_offset", 0)):]
        outcome = rs.parse_recovery_log(text)
        t = restore_rb.target(ctx)
        if t is None:
            facts.append("replayed all archived WAL" if outcome.completed else "")
            if not outcome.completed:
                problems.append("its log does not show archive recovery completing")
        elif outcome.stop is None or (outcome.last_commit is not None and outcome.last_commit > t):
            problems.append(f"its log does not show recovery stopping at the target ({restore_rb._target_words(ctx)})")
        else:
            facts.append(f"target reached: first commit after it (transaction {outcome.stop_xid}) not applied")
    else:
        facts.append("the server log is on the database host: check there that recovery stopped at the target")
    more_problems, more_facts = await common.count_canaries(ctx, conn)
    problems += more_problems
    facts += more_facts
    return problems, [f for f in facts if f]


async def do_verify(ctx: Context) -> None:
    problems, facts = await _findings(ctx)
    common.finish_verification(ctx, problems, facts, "from stopping the cluster to a verified primary")


async def verify_verified(ctx: Context) -> Verdict:
    problems, facts = await _findings(ctx)
    return Verdict(not problems, "; ".join(problems or facts) or "verified")


CLEAR_SQL = [f"ALTER SYSTEM RESET {k}" for k in ("recovery_target", "recovery_target_action", "recovery_target_inclusive",
                                                 "recovery_target_lsn", "recovery_target_name", "recovery_target_time",
                                                 "recovery_target_timeline", "recovery_target_xid")] + ["SELECT pg_reload_conf()"]


async def do_clear(ctx: Context) -> None:
    conn = ctx.resources["conns"][member(ctx)]
    for sql in CLEAR_SQL:
        await conn.execute(sql)
    ctx.log("recovery target settings removed from postgresql.auto.conf")


async def verify_cleared(ctx: Context) -> Verdict:
    # The recovery target settings take effect only at server start, so current_setting() keeps
    # the old value until a restart; what the files say is what a later start would use.
    left = await ctx.resources["conns"][member(ctx)].fetch(
        "SELECT name, setting FROM pg_file_settings WHERE name LIKE 'recovery_target%' AND applied IS NOT NULL")
    if left:
        return Verdict(False, "still in the configuration files: " + ", ".join(f"{r['name']} = {r['setting']}" for r in left))
    return Verdict(True, "no recovery target left in the configuration files")


def _rejoins(ctx: Context) -> list[HostOp]:
    """pg_rewind of each other member against the restored primary, then started as its standby."""
    new = next(m for m in ctx.ref.cluster.members if m.name == member(ctx))
    ops = []
    for name in others(ctx):
        m = next(x for x in ctx.ref.cluster.members if x.name == name)
        ops.append(HostOp(Verb.RUN, name, ("rejoin", member(ctx)), manual=(f"# {name} ({m.host}:{m.port}):", *sw.rejoin_commands(
            data_dir=_data_dir(ctx, name), new_primary_host=new.host, new_primary_port=new.port,
            application_name=m.application_name or name, user=ctx.ref.cluster.user, bindir=_bin(ctx), port=m.port))))
    return ops


def rejoin_cmds(ctx: Context) -> list[str]:
    if "member" not in ctx.state:
        return ["# known once the pre-checks pass"]
    return [line for op in _rejoins(ctx) for line in ctx.hosts.render(op)]


async def do_rejoin(ctx: Context) -> None:
    for op in _rejoins(ctx):
        await ctx.hosts.perform(op)
        ctx.log(f"{op.member} streams from {member(ctx)}")


async def verify_rejoined(ctx: Context) -> Verdict:
    want = sorted((next(m for m in ctx.ref.cluster.members if m.name == n).application_name or n) for n in others(ctx))
    rows = await ctx.resources["conns"][member(ctx)].fetch(
        "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")
    seen = sorted(r["application_name"] for r in rows)
    ok = set(want) <= set(seen)
    return Verdict(ok, f"streaming from {member(ctx)}: {', '.join(seen) or 'none'}")


PRECHECKS = (
    Check("settings", "pgBackRest settings are known for this cluster", common.check_settings),
    Check("target", "the recovery target is valid", restore_rb.check_target),
    Check("backup", "a backup exists that ends before the target", restore_rb.check_backup),
    Check("window", "archived WAL covers the target", restore_rb.check_window, overridable=True),
    Check("checksums", "backup files and WAL match their checksums", restore_rb.check_checksums,
          timeout=restore_rb.VERIFY_TIMEOUT),
    Check("member", "the member to restore over, and every member's data directory", check_member),
)


def _steps(managed: bool) -> tuple[Step, ...]:
    manual = "" if managed else " (manual)"
    kind = Kind.ACTION if managed else Kind.MANUAL

    def run(fn: Any) -> Any:
        return fn if managed else None

    return (
        Step("stop", f"Stop every member{manual}", "Fast shutdown of the replicas, then the primary: clients are cut "
             "off until the restore is verified.", kind, stop_cmds, run(do_stop), verify_stopped, destructive=True,
             confirm=Confirm.TYPE_CLUSTER, timeout=600,
             on_failure="start the members again (pg_ctl start) if you abandon the restore; nothing was restored yet"),
        Step("restore", f"Restore the backup over the member{manual}", "pgbackrest restore --delta over its data "
             "directory: files that differ from the backup are replaced, everything written after the target is lost.",
             kind, restore_cmds, run(do_restore), verify_restored, destructive=True, confirm=Confirm.YES_NO,
             timeout=restore_rb.RESTORE_TIMEOUT, produces=("restored",) if managed else (),
             on_failure="read pgBackRest's restore log; `dbops runbook resume` runs the restore again (--delta)"),
        Step("start", f"Start the member{manual}", "It replays WAL to the target, then promotes itself.", kind,
             start_cmds, run(do_start), verify_started, timeout=300),
        Step("recover", "Wait for recovery to reach the target", "Polls it every second until it has left recovery.",
             Kind.WAIT, lambda ctx: ["SELECT pg_is_in_recovery()  -- every second"], do_recover, verify_recovered,
             timeout=restore_rb.RECOVERY_TIMEOUT, produces=("recovered_at",)),
        Step("verify", "Verify the restored primary", "Out of recovery, the recovery target reached (from its log, "
             "where dbops can read it), canary row counts; reports the RTO.", Kind.CHECK,
             lambda ctx: ["SELECT pg_is_in_recovery()",
                          *(f"SELECT count(*) FROM {common.quote_table(t)}" for t in common.canary_tables(ctx))],
             do_verify, verify_verified, timeout=1800, produces=("rto_seconds",)),
        Step("clear-target", "Clear the recovery target", "Removes the recovery target from postgresql.auto.conf, so "
             "that replay would not stop there if this member is ever demoted to a standby.", Kind.ACTION,
             lambda ctx: CLEAR_SQL, do_clear, verify_cleared, timeout=60),
        Step("rejoin", f"Rebuild the other members as replicas{manual}", "pg_rewind of each other member against the "
             "restored primary (they are ahead of it on the old timeline), then start them as its standbys.", kind,
             rejoin_cmds, run(do_rejoin), verify_rejoined, timeout=1800),
    )


def _book(steps: tuple[Step, ...]) -> Runbook:
    return Runbook(
        id="postgres.restore-in-place",
        title="Restore a pgBackRest backup over the live cluster (replace)",
        params=(
            Param("target", "'latest', or a time with a UTC offset (2026-11-22T01:47:03+00:00) to recover to",
                  default=restore_rb.LATEST),
            Param("set", "backup label to restore (default: the newest that ends before the target)", default=""),
            Param("member", "member to restore over, which becomes the primary (default: the current primary)", default=""),
            Param("canary", "comma-separated tables whose rows are counted afterwards", default=""),
        ),
        prechecks=PRECHECKS,
        steps=steps,
        setup=common.setup,
        teardown=common.teardown,
    )


# Manual host steps by default; where dbops runs the servers (the sandbox) they are automatic.
RUNBOOK = host_variants(lambda managed: _book(_steps(managed)))
