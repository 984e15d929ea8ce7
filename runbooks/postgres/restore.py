"""postgres.restore: restore a pgBackRest backup into a new data directory and port, to the
latest archived WAL or to a point in time, and prove what came back.

The live cluster is never touched: the copy goes to `<restore_root>/<cluster>-<run id>/` on the
host where dbops runs and starts on its own port, with archiving off (it must not push WAL into
the source's repository). It keeps running afterwards; the log says how to reach and stop it.

Pre-checks (read-only): pgBackRest settings; the target parses and is not in the future; a
backup exists that ends before the target; the PITR window covers the target (the primary has
archived WAL past it); `pgbackrest verify` finds every backup file and WAL segment matching its
checksum; free disk >= 1.2x the database size; the PostgreSQL binaries of the backup's version.
Steps: prepare the directory -> pgbackrest restore -> the copy's own settings -> start -> wait
until it has left recovery -> verify: out of recovery, archive_mode off, the recovery target
reached (the log names the first commit after the target, which was not applied, and the last
one before it, which was), canary row counts; the measured RTO (from the first step to a
verified copy) goes in the summary.
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime
from typing import Any

from dbops.config import Member
from dbops.engines.postgres import pgbackrest as pb
from dbops.engines.postgres import restore as rs
from dbops.engines.postgres import switchover as sw
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.postgres import common

RESTORE_TIMEOUT = 6 * 3600.0  # copying a production-sized backup takes hours
RECOVERY_TIMEOUT = 12 * 3600.0  # replaying a day of WAL can take longer than the copy
VERIFY_TIMEOUT = 4 * 3600.0  # `pgbackrest verify` re-reads the whole repository
LATEST = "latest"
PROGRESS_INTERVAL = 2.0  # seconds between progress reports of a restore


# -- parameters ------------------------------------------------------------------------------


def parse_target(raw: str) -> datetime | None:
    """None for "latest"; else an aware datetime. A time without a UTC offset is refused: at
    3 a.m. on a bastion in another time zone, a guess would restore the wrong hour."""
    text = raw.strip()
    if text.lower() == LATEST:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"target {raw!r} is neither 'latest' nor an ISO 8601 time such as 2026-11-22T01:47:03+00:00") from None
    if when.tzinfo is None:
        raise ValueError(f"target {raw!r} has no UTC offset; add one, e.g. {text}+00:00 or {text}Z")
    return when


def target(ctx: Context) -> datetime | None:
    return parse_target(str(ctx.params.get("target", LATEST)))


def _target_words(ctx: Context) -> str:
    try:
        t = target(ctx)
    except ValueError:
        return str(ctx.params.get("target"))
    return "the end of the archived WAL" if t is None else f"{t.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f} UTC"


def paths(ctx: Context) -> rs.CopyPaths:
    return rs.paths_for(common.settings(ctx).restore_root, ctx.ref.name, ctx.run_id)


def _bindir(ctx: Context) -> Any:
    return rs.bindir(common.settings(ctx).pg_bindir, ctx.state.get("pg_major"))


def _copy_member(ctx: Context) -> sw.Conn:
    conn = ctx.resources.get("copy")
    if conn is None:
        member = Member(name="restored copy", host="127.0.0.1", port=int(ctx.state["port"]))
        conn = ctx.resources["copy"] = sw.Conn.for_member(ctx.ref, member)
    return conn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def teardown(ctx: Context) -> None:
    copy = ctx.resources.pop("copy", None)
    if copy is not None:
        await copy.close()
    await common.teardown(ctx)


# -- pre-checks (read-only) ------------------------------------------------------------------


async def check_target(ctx: Context) -> Verdict:
    try:
        t = target(ctx)
    except ValueError as exc:
        return Verdict(False, str(exc))
    if t is not None and t > datetime.now(UTC):
        return Verdict(False, f"target {_target_words(ctx)} is in the future")
    return Verdict(True, f"recover to {_target_words(ctx)}")


async def check_backup(ctx: Context) -> Verdict:
    s = common.settings(ctx)
    info = await pb.info(s.config, s.stanza, **common.run_kw(ctx))
    ctx.resources["info"] = info
    if not info.backups:
        return Verdict(False, f"stanza {s.stanza} has no backup to restore")
    wanted = str(ctx.params.get("set") or "")
    try:
        t = target(ctx)
    except ValueError as exc:
        return Verdict(False, str(exc))
    if wanted:
        chosen = next((b for b in info.backups if b.label == wanted), None)
        if chosen is None:
            return Verdict(False, f"no backup {wanted} in stanza {s.stanza}; it has {', '.join(b.label for b in info.backups)}")
        if t is not None and chosen.stop > t:
            return Verdict(False, f"backup {wanted} ended at {chosen.stop:%Y-%m-%d %H:%M:%S} UTC, after the target: "
                                  "a backup can only be rolled forward")
    else:
        usable = [b for b in info.backups if t is None or b.stop <= t]
        if not usable:
            return Verdict(False, f"no backup ends before {_target_words(ctx)}; the oldest, {info.backups[0].label}, "
                                  f"ended at {info.backups[0].stop:%Y-%m-%d %H:%M:%S} UTC")
        chosen = usable[-1]
    if chosen.error:
        return Verdict(False, f"backup {chosen.label} is flagged with page checksum errors; pick another with --param set=LABEL")
    dbs = info.raw.get("db") or [{}]
    ctx.state.update(label=chosen.label, backup_size=chosen.size, backup_stop=chosen.stop.isoformat(),
                     pg_major=str(dbs[-1].get("version") or ""))
    return Verdict(True, f"backup {chosen.label} ({chosen.type}, ended {chosen.stop:%Y-%m-%d %H:%M:%S} UTC, "
                         f"{chosen.size / 1048576:.1f} MiB)")


async def check_window(ctx: Context) -> Verdict:
    t = target(ctx)
    info = ctx.resources.get("info")
    if info is None:
        return Verdict(False, "the repository could not be read (see the backup pre-check)")
    if info.wal_max is None:
        return Verdict(False, "the repository holds no WAL: no backup can be made consistent")
    if t is None:
        return Verdict(True, f"replays WAL up to {info.wal_max}, the newest in the repository")
    try:
        primary = await common.primary(ctx)
        archived = await primary.fetchval("SELECT last_archived_time FROM pg_stat_archiver")
    except Exception as exc:  # the cluster may be what is being recovered from
        return Verdict(True, f"the primary cannot say how far WAL is archived ({exc}); recovery will stop with a clear "
                             f"error if the repository's WAL (up to {info.wal_max}) ends before the target")
    if archived is None or archived < t:
        when = f"{archived:%Y-%m-%d %H:%M:%S} UTC" if archived else "never"
        return Verdict(False, f"WAL after the target is not archived yet (last archived {when}): a restore would end "
                              f"before {_target_words(ctx)}; run SELECT pg_switch_wal() on {primary.name} or wait for archive_timeout")
    return Verdict(True, f"{primary.name} archived WAL until {archived:%Y-%m-%d %H:%M:%S} UTC, past the target "
                         f"(repository WAL {info.wal_min} .. {info.wal_max})")


async def check_checksums(ctx: Context) -> Verdict:
    s = common.settings(ctx)
    report = await pb.verify(s.config, s.stanza, **common.run_kw(ctx))
    if report.ok:
        return Verdict(True, "pgbackrest verify: every backup file and archived WAL segment matches its checksum")
    label = ctx.state.get("label")
    mine = " (including the chosen backup)" if label in report.invalid_backups else ""
    return Verdict(False, f"pgbackrest verify found damage{mine}: {'; '.join(report.problems[-6:])}")


async def check_disk(ctx: Context) -> Verdict:
    size = int(ctx.state.get("backup_size") or 0)
    if not size:
        return Verdict(False, "the database size is unknown (see the backup pre-check)")
    root = common.settings(ctx).restore_root
    free = await asyncio.to_thread(rs.free_bytes, root)
    need = int(size * rs.DISK_MARGIN)
    verdict = f"{free / 1048576:.0f} MiB free under {root}, {need / 1048576:.0f} MiB needed ({rs.DISK_MARGIN:g}x the database)"
    return Verdict(free >= need, verdict)


async def check_copy_host(ctx: Context) -> Verdict:
    try:
        bin_dir = _bindir(ctx)
    except rs.RestoreError as exc:
        return Verdict(False, f"{exc} (see the backup pre-check)")
    if not (bin_dir / "pg_ctl").exists():
        return Verdict(False, f"{bin_dir}/pg_ctl not found: install PostgreSQL {ctx.state.get('pg_major')} "
                              "(Debian package postgresql-<major>) or set pg_bindir")
    wanted = int(ctx.params.get("port") or 0)
    port = wanted or int(ctx.state.get("port") or 0) or _free_port()
    if not _port_free(port):
        return Verdict(False, f"port {port} is in use on this host; pick another with --param port=N")
    ctx.state["port"] = port
    return Verdict(True, f"PostgreSQL {ctx.state.get('pg_major')} at {bin_dir}; the copy will listen on 127.0.0.1:{port} "
                         f"in {paths(ctx).root}")


# -- steps -----------------------------------------------------------------------------------


def _show(ctx: Context, fn: Any) -> list[str]:
    """Commands of a step for the plan; a placeholder while the pre-checks have not said enough."""
    if ctx.ref.cluster.pgbackrest is None:
        return [f"# {common.NO_SETTINGS.format(name=ctx.ref.name)}"]
    try:
        return fn()
    except (ValueError, KeyError, rs.RestoreError) as exc:
        return [f"# known once the pre-checks pass ({exc})"]


async def do_prepare(ctx: Context) -> None:
    # The RTO clock starts with the first step that does anything; a resumed run keeps it.
    ctx.state.setdefault("rto_started", time.time())
    p = paths(ctx)
    ctx.log(await asyncio.to_thread(rs.prepare, p, ctx.run_id, common.settings(ctx).os_user))


async def verify_prepared(ctx: Context) -> Verdict:
    p = paths(ctx)
    ok = p.data.is_dir() and rs.read_marker(p) == ctx.run_id
    return Verdict(ok, f"{p.data} exists, made by this run" if ok else f"{p.data} is not ready")


async def do_restore(ctx: Context) -> None:
    s = common.settings(ctx)
    p = paths(ctx)
    orphans = await rs.stop_orphaned_restores(p)
    if orphans:
        ctx.log(f"stopped pgBackRest (pid {', '.join(map(str, orphans))}) still restoring from the interrupted attempt")
    if any(p.data.iterdir()):
        # An attempt of this run was interrupted (dbops killed mid-copy): start from an empty directory.
        await asyncio.to_thread(rs.prepare, p, ctx.run_id, s.os_user)
        ctx.log("the data directory held a partial restore from an interrupted attempt; emptied it")
    ctx.log(f"restoring backup {ctx.state['label']} into {p.data} (pgBackRest log: its log-path, {s.stanza}-restore.log)")
    restoring = asyncio.ensure_future(pb.restore(s.config, s.stanza, str(p.data), label=ctx.state["label"],
                                                 target=target(ctx), timeout=RESTORE_TIMEOUT, **common.run_kw(ctx)))
    total = float(ctx.state.get("backup_size") or 0) or None
    try:
        # The copy fills up to the database's size: that is the progress (and the ETA) of hours of copying.
        while not restoring.done():
            await asyncio.wait({restoring}, timeout=PROGRESS_INTERVAL)
            ctx.progress(float(await asyncio.to_thread(rs.tree_bytes, p.data)), total, "bytes")
    finally:
        if not restoring.done():
            restoring.cancel()  # our own timeout or cancellation: pgBackRest is stopped with it
            await asyncio.gather(restoring, return_exceptions=True)
    warnings = restoring.result()
    for line in warnings.splitlines():
        ctx.log(f"pgBackRest: {line}")
    ctx.state["restored"] = True


async def verify_restored(ctx: Context) -> Verdict:
    p = paths(ctx)
    auto = p.data / "postgresql.auto.conf"
    try:
        ok = (p.data / "PG_VERSION").exists() and "generated by pgBackRest restore" in auto.read_text(encoding="utf-8")
    except OSError:
        ok = False
    return Verdict(ok, f"{p.data} holds the restored files and pgBackRest's recovery settings" if ok
                   else f"{p.data} does not hold a finished restore")


async def do_configure(ctx: Context) -> None:
    p = paths(ctx)
    added = await asyncio.to_thread(rs.configure, p, int(ctx.state["port"]), f"{ctx.ref.name}-restored",
                                    common.settings(ctx).os_user)
    if added:
        ctx.log(f"the backup held no {' or '.join(added)} (kept outside the data directory on this cluster); wrote minimal ones")


async def verify_configured(ctx: Context) -> Verdict:
    ok = rs.is_configured(paths(ctx), int(ctx.state["port"]))
    return Verdict(ok, "the copy's settings are in postgresql.auto.conf" if ok else "the copy's settings are missing")


async def do_start(ctx: Context) -> None:
    ctx.log(await rs.start(_bindir(ctx), paths(ctx), common.settings(ctx).os_user))


async def verify_started(ctx: Context) -> Verdict:
    p = paths(ctx)
    pid = rs.running_pid(p)
    if pid is not None:
        return Verdict(True, f"the copy runs (pid {pid})")
    outcome = rs.parse_recovery_log(rs.read_log(p))
    if outcome.completed:  # it already recovered and stopped (a crash between steps): start it again
        return Verdict(False, "the copy is not running")
    return Verdict(False, "the copy is not running" + (f": {outcome.fatal[-1]}" if outcome.fatal else ""))


def _stopped_reason(ctx: Context) -> str:
    outcome = rs.parse_recovery_log(rs.read_log(paths(ctx)))
    if outcome.ended_early:
        return (f"recovery ended before {_target_words(ctx)}: the archived WAL stops earlier (the newest segment was "
                "never archived, or a segment is missing); restore to an earlier time or to latest")
    detail = outcome.fatal[-1] if outcome.fatal else "no FATAL line in its log"
    return f"the restored copy stopped during recovery: {detail} (log: {paths(ctx).log})"


async def do_recover(ctx: Context) -> None:
    conn = _copy_member(ctx)
    last_report = 0.0
    while True:
        if rs.running_pid(paths(ctx)) is None:
            raise RuntimeError(_stopped_reason(ctx))
        try:
            row = (await conn.fetch("SELECT pg_is_in_recovery() AS recovering, pg_last_xact_replay_timestamp() AS replayed"))[0]
        except Exception as exc:  # still starting up (not consistent yet) or refusing us
            reach, message = conn.adapter.classify(exc)
            if reach.name in ("AUTH", "TLS"):
                raise RuntimeError(f"the restored copy refuses dbops: {message}") from None
            row = None
        if row is not None and not row["recovering"]:
            ctx.state["recovered_at"] = time.time()
            ctx.log("the copy has left recovery and accepts writes")
            return
        if time.monotonic() - last_report >= 10:
            last_report = time.monotonic()
            where = (f"replayed up to commits of {row['replayed']:%Y-%m-%d %H:%M:%S} UTC" if row and row["replayed"]
                     else "replaying WAL")
            ctx.log(f"recovering: {where}")
        await asyncio.sleep(1)


async def verify_recovered(ctx: Context) -> Verdict:
    try:
        recovering = await _copy_member(ctx).fetchval("SELECT pg_is_in_recovery()")
    except Exception as exc:
        return Verdict(False, f"the copy does not answer: {_copy_member(ctx).error(exc)}")
    return Verdict(not recovering, "out of recovery" if not recovering else "still in recovery")


async def _findings(ctx: Context) -> tuple[list[str], list[str]]:
    """(problems, facts) about the copy; no problems means verified."""
    conn = _copy_member(ctx)
    problems, facts = [], []
    row = (await conn.fetch("SELECT pg_is_in_recovery() AS recovering, current_setting('archive_mode') AS archive_mode"))[0]
    if row["recovering"]:
        problems.append("still in recovery")
    if row["archive_mode"] != "off":
        problems.append(f"archive_mode is {row['archive_mode']}: the copy could push WAL into the source's repository")
    outcome = rs.parse_recovery_log(rs.read_log(paths(ctx)))
    t = target(ctx)
    last = f"{outcome.last_commit:%Y-%m-%d %H:%M:%S.%f} UTC" if outcome.last_commit else "none after the backup"
    if t is None:
        if not outcome.completed:
            problems.append("its log does not show archive recovery completing")
        facts.append(f"replayed all archived WAL; last commit replayed: {last}")
    elif outcome.stop is None:
        problems.append(f"its log does not show recovery stopping at the target ({_target_words(ctx)})")
    elif outcome.last_commit is not None and outcome.last_commit > t:
        problems.append(f"a commit after the target was replayed ({last})")
    elif outcome.stop == "before" and outcome.stop_time is not None and outcome.stop_time <= t:
        problems.append(f"recovery stopped at a commit at {outcome.stop_time}, not after the target")
    else:
        facts.append(f"target reached: first commit after it (transaction {outcome.stop_xid}, "
                     f"{outcome.stop_time:%Y-%m-%d %H:%M:%S.%f} UTC) not applied; last commit applied: {last}")
    more_problems, more_facts = await common.count_canaries(ctx, conn)
    problems += more_problems
    facts += more_facts
    return problems, facts


async def do_verify(ctx: Context) -> None:
    problems, facts = await _findings(ctx)
    common.finish_verification(ctx, problems, facts, "from the first step to a verified copy")
    p = paths(ctx)
    s = common.settings(ctx)
    ctx.log(f"the copy runs on 127.0.0.1:{ctx.state['port']} ({ctx.ref.cluster.database}, as {ctx.ref.cluster.user}), data {p.data}")
    as_user = f" (as the {s.os_user} OS user)" if s.os_user else ""
    ctx.log(f"stop it{as_user} with: " + rs.describe_stop(_bindir(ctx), p, None)[-1])


async def verify_verified(ctx: Context) -> Verdict:
    problems, facts = await _findings(ctx)
    return Verdict(not problems, "; ".join(problems or facts) or "verified")


STEPS = (
    Step("prepare", "Create the copy's directory", "A new, empty data directory for the copy (and its socket "
         "directory), owned by the repository's OS user; an existing directory is never reused.", Kind.ACTION,
         lambda ctx: _show(ctx, lambda: rs.describe_prepare(paths(ctx), common.settings(ctx).os_user)),
         do_prepare, verify_prepared, timeout=60),
    Step("restore", "Restore the backup", "pgbackrest restore of the chosen backup into the new directory, set up "
         "to recover to the target and then promote, with archiving off.", Kind.ACTION,
         lambda ctx: _show(ctx, lambda: common.cmds(ctx, pb.describe_restore, str(paths(ctx).data),
                                                    label=ctx.state.get("label"), target=target(ctx))),
         do_restore, verify_restored, confirm=Confirm.YES_NO, timeout=RESTORE_TIMEOUT, produces=("restored",),
         on_failure="read pgBackRest's restore log (log-path in its configuration); the live cluster was not touched, "
                    "and `dbops runbook resume` restores into the same directory again"),
    Step("configure", "Give the copy its own settings", "Its own port, loopback only, no synchronous standbys, "
         "archiving off, logging to postgres.log in UTC.", Kind.ACTION,
         lambda ctx: _show(ctx, lambda: rs.describe_configure(paths(ctx), int(ctx.state["port"]), f"{ctx.ref.name}-restored")),
         do_configure, verify_configured, timeout=60),
    Step("start", "Start the copy", "pg_ctl start; recovery begins (the next step watches it).", Kind.ACTION,
         lambda ctx: _show(ctx, lambda: rs.describe_start(_bindir(ctx), paths(ctx), common.settings(ctx).os_user)),
         do_start, verify_started, timeout=120,
         on_failure="read postgres.log beside the data directory"),
    Step("recover", "Wait for recovery to reach the target", "Polls the copy every second until it has replayed "
         "WAL to the target and promoted itself; stops at once if the server exits.", Kind.WAIT,
         lambda ctx: ["SELECT pg_is_in_recovery(), pg_last_xact_replay_timestamp()  -- on the copy, every second"],
         do_recover, verify_recovered, timeout=RECOVERY_TIMEOUT, produces=("recovered_at",),
         on_failure="read postgres.log beside the data directory; a target past the archived WAL ends recovery early"),
    Step("verify", "Verify the copy", "Out of recovery, archive_mode off, the recovery target reached (from its "
         "log: the first commit after the target not applied, the last one before it applied), canary row counts; "
         "reports the RTO.", Kind.CHECK,
         lambda ctx: ["SELECT pg_is_in_recovery(), current_setting('archive_mode')  -- on the copy",
                      *(f"SELECT count(*) FROM {common.quote_table(t)}  -- canary, on the copy" for t in common.canary_tables(ctx))],
         do_verify, verify_verified, timeout=1800, produces=("rto_seconds",)),
)

RUNBOOK = Runbook(
    id="postgres.restore",
    title="Restore a pgBackRest backup into a new copy (latest or point in time)",
    params=(
        Param("target", "'latest', or a time with a UTC offset (2026-11-22T01:47:03+00:00) to recover to", default=LATEST),
        Param("set", "backup label to restore (default: the newest that ends before the target)", default=""),
        Param("port", "port of the copy on this host (default: a free one)", type=int, default=0),
        Param("canary", "comma-separated tables whose rows are counted on the copy", default=""),
    ),
    prechecks=(
        Check("settings", "pgBackRest settings are known for this cluster", common.check_settings),
        Check("target", "the recovery target is valid", check_target),
        Check("backup", "a backup exists that ends before the target", check_backup),
        Check("window", "archived WAL covers the target", check_window, overridable=True),
        Check("checksums", "backup files and WAL match their checksums", check_checksums, timeout=VERIFY_TIMEOUT),
        Check("disk", "free disk for the copy", check_disk),
        Check("copy-host", "PostgreSQL binaries and a free port for the copy", check_copy_host),
    ),
    steps=STEPS,
    setup=common.setup,
    teardown=teardown,
)
