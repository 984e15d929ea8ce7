"""postgres.backup: a pgBackRest backup (full, incremental or differential), verified in the repository.

Pre-checks (read-only, so `plan` changes nothing): pgBackRest settings are known for the cluster,
the stanza exists and its repository answers (`pgbackrest info`), and WAL archiving works (the
primary's archiver has not failed since its last success, and the repository holds WAL).
Steps: `pgbackrest check` (proves end to end that archiving reaches the repository before a
long backup starts; it writes a restore point and switches WAL, so it is a step, not a
pre-check) -> backup -> verify that `pgbackrest info` lists a new backup of the requested type
(or full: pgBackRest turns the first incr/diff into a full) and record its label.

pgBackRest settings (configuration file, stanza, OS user) come from the cluster's `pgbackrest`
section of the config (the sandbox writes its own); a cluster without one is refused at the pre-check.
"""

from __future__ import annotations

import asyncio

from dbops.engines.postgres import pgbackrest as pb
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.postgres import common

BACKUP_TIMEOUT = 6 * 3600.0  # a production-sized full backup takes hours


def backup_type(ctx: Context) -> str:
    return str(ctx.params["type"])


# -- pre-checks (read-only) ------------------------------------------------------------------


async def check_stanza(ctx: Context) -> Verdict:
    s = common.settings(ctx)
    i = await pb.info(s.config, s.stanza, **common.run_kw(ctx))
    if not i.usable:
        return Verdict(False, f"stanza {s.stanza}: {i.status_message} (pgBackRest status {i.status_code}); "
                              "create it with `pgbackrest stanza-create` or fix the repository settings")
    if i.backup_running:
        return Verdict(False, f"stanza {s.stanza}: a backup is already running (pgBackRest holds its backup lock)")
    newest = i.newest
    # What "new" means for the verify step: newer than the newest backup seen here.
    ctx.state["before_label"] = newest.label if newest else None
    ctx.state["before_stop"] = newest.stop.timestamp() if newest else None
    ctx.resources["info_before"] = i
    if newest is None:
        return Verdict(True, f"stanza {s.stanza}: no backup yet (the first one will be full)")
    return Verdict(True, f"stanza {s.stanza}: {len(i.backups)} backup(s), newest {newest.label} ({newest.type}, {newest.stop:%Y-%m-%d %H:%M:%S} UTC)")


async def check_archiving(ctx: Context) -> Verdict:
    primary = await common.primary(ctx)
    row = (await primary.fetch(
        "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time, "
        "current_setting('archive_mode') AS mode FROM pg_stat_archiver"))[0]
    if row["mode"] == "off":
        return Verdict(False, f"archive_mode is off on {primary.name}: no WAL reaches the repository")
    failed, archived = row["last_failed_time"], row["last_archived_time"]
    if failed is not None and (archived is None or failed > archived):
        return Verdict(False, f"archiving fails on {primary.name}: {row['last_failed_wal']} failed at {failed:%Y-%m-%d %H:%M:%S%z} "
                              f"({row['failed_count']} failures), after the last success; see its server log")
    i = ctx.resources.get("info_before")
    if i is None:  # the stanza pre-check could not read the repository; it says why
        return Verdict(False, "the repository could not be read (see the stanza pre-check)")
    if i.wal_max is None:
        return Verdict(False, f"the repository holds no WAL for the current database ({primary.name} archives "
                              f"{row['last_archived_wal'] or 'nothing yet'})")
    return Verdict(True, f"{primary.name} last archived {row['last_archived_wal'] or '-'}; repository WAL {i.wal_min} .. {i.wal_max}")


# -- steps -----------------------------------------------------------------------------------


async def do_check(ctx: Context) -> None:
    s = common.settings(ctx)
    await pb.check(s.config, s.stanza, **common.run_kw(ctx))
    ctx.log(f"pgbackrest check: stanza {s.stanza} is configured and WAL archiving reaches the repository")


async def do_backup(ctx: Context) -> None:
    s = common.settings(ctx)
    orphans = pb.running_backups(s.stanza)
    if orphans:
        # dbops was killed while its pgBackRest went on: that backup is this run's work, so wait
        # for it (a second one would only fail on pgBackRest's lock) and let verify judge it.
        ctx.log(f"pgBackRest (pid {', '.join(map(str, orphans))}) is still backing up stanza {s.stanza} from the "
                "interrupted attempt; waiting for it to finish")
        while pb.running_backups(s.stanza):
            await asyncio.sleep(1)
        return
    ctx.log(f"{backup_type(ctx)} backup of stanza {s.stanza} started (pgBackRest log: its log-path, {s.stanza}-backup.log)")
    warnings = await pb.backup(s.config, s.stanza, backup_type(ctx), timeout=BACKUP_TIMEOUT, **common.run_kw(ctx))  # type: ignore[arg-type]
    for line in warnings.splitlines():
        ctx.log(f"pgBackRest: {line}")


async def _new_backup(ctx: Context) -> tuple[pb.Backup | None, str]:
    s = common.settings(ctx)
    newest = (await pb.info(s.config, s.stanza, **common.run_kw(ctx))).newest
    before_label, before_stop = ctx.state.get("before_label"), ctx.state.get("before_stop")
    if newest is None:
        return None, "pgbackrest info lists no backup"
    if newest.label == before_label or (before_stop is not None and newest.stop.timestamp() < before_stop):
        return None, f"the newest backup is still {newest.label}, from before this run"
    return newest, f"new backup {newest.label} ({newest.type})"


async def verify_backup_exists(ctx: Context) -> Verdict:
    found, detail = await _new_backup(ctx)
    return Verdict(found is not None, detail)


async def do_verify(ctx: Context) -> None:
    found, detail = await _new_backup(ctx)
    if found is None:
        raise RuntimeError(detail)
    wanted = backup_type(ctx)
    if found.type not in (wanted, "full"):
        raise RuntimeError(f"backup {found.label} is {found.type}, not {wanted} (or full)")
    if found.error:
        raise RuntimeError(f"backup {found.label} is flagged with errors (page checksum failures); see pgbackrest info")
    ctx.state.update(
        backup_label=found.label, backup_type=found.type, backup_start=found.start.isoformat(),
        backup_stop=found.stop.isoformat(), backup_size=found.size, backup_repo_size=found.repo_size,
        backup_wal_start=found.wal_start, backup_wal_stop=found.wal_stop,
    )
    became = " (pgBackRest made it full: there was no prior full)" if found.type != wanted else ""
    ctx.log(f"backup {found.label}: {found.type}{became}, {found.size / 1048576:.1f} MiB database, "
            f"{found.repo_size / 1048576:.1f} MiB in the repository, WAL {found.wal_start} .. {found.wal_stop}, "
            f"{(found.stop - found.start).total_seconds():.0f}s")


async def verify_recorded(ctx: Context) -> Verdict:
    label = ctx.state.get("backup_label")
    found, detail = await _new_backup(ctx)
    return Verdict(found is not None and label == found.label, detail if label else "no backup label recorded")


async def _types(ctx: Context) -> list[str]:
    return list(pb.BACKUP_TYPES)


STEPS = (
    Step("check", "Check the stanza end to end", "pgbackrest check: the configuration and repository, and that WAL "
         "archiving reaches the repository (it writes a restore point and switches WAL on the primary).", Kind.ACTION,
         lambda ctx: common.cmds(ctx, pb.describe_check), do_check, timeout=180,
         on_failure="fix archiving first (the primary's log shows archive_command failures); a backup would not be restorable"),
    Step("backup", "Take the backup", "pgbackrest backup of the requested type from the primary (a fast checkpoint "
         "starts it at once).", Kind.ACTION, lambda ctx: common.cmds(ctx, pb.describe_backup, backup_type(ctx)), do_backup,
         verify_backup_exists, confirm=Confirm.YES_NO, timeout=BACKUP_TIMEOUT,
         on_failure="read the pgBackRest backup log (log-path in its configuration); the next backup resumes or cleans up "
                    "a failed one, and nothing in the database changed"),
    Step("verify", "Verify the backup is in the repository", "pgbackrest info lists a new backup, of the requested "
         "type or full, without errors; its label is recorded.", Kind.CHECK,
         lambda ctx: common.cmds(ctx, pb.describe_info), do_verify, verify_recorded, timeout=120, produces=("backup_label",)),
)

RUNBOOK = Runbook(
    id="postgres.backup",
    title="Back up with pgBackRest (full, incremental or differential)",
    params=(Param("type", "backup type: full, incr or diff (pgBackRest makes the first incr or diff a full)",
                  default="incr", choices=_types),),
    prechecks=(
        Check("settings", "pgBackRest settings are known for this cluster", common.check_settings),
        Check("stanza", "the stanza exists and its repository answers", check_stanza),
        Check("archiving", "WAL archiving works", check_archiving),
    ),
    steps=STEPS,
    setup=common.setup,
    teardown=common.teardown,
)

