"""postgres.verify-backups: are the backups fresh enough, and do they restore? A test restore of
the newest backup into a scratch copy, verified, then removed.

Pre-checks (read-only): pgBackRest settings; the newest backup is younger than the cluster's
`backups.max_age_seconds`; the primary archived WAL within `backups.rpo_seconds` (the RPO: what
a disaster now would lose); then what postgres.restore checks (checksums of every backup file
and WAL segment, free disk, binaries, a port). A stale backup or archive refuses the run (exit 1,
the signal a scheduled drill wants), unless overridden with a reason to test-restore anyway.
Steps: postgres.restore's steps to the end of the archived WAL, then the scratch copy is
stopped and removed, and its absence verified. The live cluster is never touched.
"""

from __future__ import annotations

from datetime import UTC, datetime

from dbops.engines.postgres import restore as rs
from dbops.runbook.model import Check, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.postgres import common
from dbops.runbooks.postgres import restore as restore_rb


def _age(when: datetime) -> str:
    seconds = (datetime.now(UTC) - when).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _limit(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g}s"
    return f"{seconds / 3600:g} h" if seconds >= 7200 else f"{seconds / 60:g} min"


async def check_newest_backup_age(ctx: Context) -> Verdict:
    verdict = await restore_rb.check_backup(ctx)  # picks the newest backup, reads the repository
    if not verdict.ok:
        return verdict
    info = ctx.resources["info"]
    newest = info.newest
    limit = ctx.ref.cluster.backups.max_age_seconds
    age = (datetime.now(UTC) - newest.stop).total_seconds()
    ctx.state["newest_backup_age_seconds"] = round(age)
    text = f"newest backup {newest.label} ({newest.type}) ended {_age(newest.stop)} ago; limit {_limit(limit)}"
    return Verdict(age <= limit, text)


async def check_rpo(ctx: Context) -> Verdict:
    limit = ctx.ref.cluster.backups.rpo_seconds
    primary = await common.primary(ctx)
    row = (await primary.fetch("SELECT last_archived_wal, last_archived_time, last_failed_time FROM pg_stat_archiver"))[0]
    archived, failed = row["last_archived_time"], row["last_failed_time"]
    if archived is None:
        return Verdict(False, f"{primary.name} has never archived WAL: a disaster now would lose everything since the last backup")
    age = (datetime.now(UTC) - archived).total_seconds()
    ctx.state["wal_archive_age_seconds"] = round(age)
    text = f"{primary.name} last archived {row['last_archived_wal']} {_age(archived)} ago; RPO {_limit(limit)}"
    if failed is not None and failed > archived:
        text += f"; archiving has failed since {failed:%Y-%m-%d %H:%M:%S} UTC"
    # On a quiet database no segment fills up, so an old last archive is not by itself a loss:
    # only WAL written since then would be lost. Without archive_timeout it can grow unbounded.
    return Verdict(age <= limit and not (failed is not None and failed > archived), text)


async def do_remove(ctx: Context) -> None:
    s = common.settings(ctx)
    p = restore_rb.paths(ctx)
    await rs.remove(restore_rb._bindir(ctx), p, s.os_user, ctx.run_id)
    ctx.log(f"scratch copy {p.root} stopped and removed")


async def verify_removed(ctx: Context) -> Verdict:
    p = restore_rb.paths(ctx)
    gone = not p.root.exists()
    return Verdict(gone, f"{p.root} is gone" if gone else f"{p.root} still exists")


REMOVE = Step(
    "remove", "Remove the scratch copy", "Stops the scratch copy (fast shutdown) and deletes its directory; only a "
    "directory this run made.", Kind.ACTION,
    lambda ctx: restore_rb._show(ctx, lambda: rs.describe_remove(restore_rb._bindir(ctx), restore_rb.paths(ctx),
                                                                 common.settings(ctx).os_user)),
    do_remove, verify_removed, timeout=300,
)

RUNBOOK = Runbook(
    id="postgres.verify-backups",
    title="Verify backups: freshness against the RPO, then a test restore that is removed",
    params=(
        Param("port", "port of the scratch copy on this host (default: a free one)", type=int, default=0),
        Param("canary", "comma-separated tables whose rows are counted on the scratch copy", default=""),
    ),
    prechecks=(
        Check("settings", "pgBackRest settings are known for this cluster", common.check_settings),
        Check("backup-age", "the newest backup is recent enough", check_newest_backup_age, overridable=True),
        Check("rpo", "WAL archiving is within the RPO", check_rpo, overridable=True),
        Check("window", "archived WAL covers the target", restore_rb.check_window),
        Check("checksums", "backup files and WAL match their checksums", restore_rb.check_checksums,
              timeout=restore_rb.VERIFY_TIMEOUT),
        Check("disk", "free disk for the scratch copy", restore_rb.check_disk),
        Check("copy-host", "PostgreSQL binaries and a free port for the scratch copy", restore_rb.check_copy_host),
    ),
    steps=(*restore_rb.STEPS, REMOVE),
    setup=common.setup,
    teardown=restore_rb.teardown,
)
