"""postgres.restore-dump: restore a pg_dump backup from S3 into a NEW database (pg_restore -j),
on the primary; existing databases are never touched.

Pre-checks (read-only): an S3 location is configured; the backup exists (the given key, or the
newest dump of the database) and its bytes in S3 match the SHA-256 of its manifest; the new
database's name is free on the primary; free local disk >= 1.2x the dump for the download;
pg_restore is installed. Steps: download (checked against the manifest again) -> CREATE DATABASE
-> pg_restore -j -> verify (every table of the archive holds rows as restored, canary row
counts); the staging file is removed and the RTO reported.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from dbops.engines.postgres import dump as dp
from dbops.engines.postgres import switchover as sw
from dbops.model import human_bytes
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.postgres import common
from dbops.runbooks.postgres import dump as dump_rb
from dbops.runbooks.postgres import restore as restore_rb

RESTORE_TIMEOUT = 12 * 3600.0
DISK_MARGIN = 1.2


def source_database(ctx: Context) -> str:
    return str(ctx.params.get("database") or ctx.ref.cluster.database)


def new_database(ctx: Context) -> str:
    return str(ctx.params.get("into") or ctx.state.get("into") or "")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def local_file(ctx: Context) -> Path:
    return ctx.staging_dir / "restore.dump"


def _target(ctx: Context) -> dp.Target:
    name = ctx.state.get("primary") or ctx.ref.cluster.members[0].name
    member = next(m for m in ctx.ref.cluster.members if m.name == name)
    return dp.Target.of(ctx.ref, member, new_database(ctx) or "<new database>")


def jobs(ctx: Context) -> int:
    return max(1, int(ctx.params.get("jobs") or 4))


# -- pre-checks ------------------------------------------------------------------------------


async def check_backup(ctx: Context) -> Verdict:
    from dbops.platform import s3

    loc = ctx.ref.cluster.backups.s3
    if loc is None:
        return Verdict(False, f"no S3 location for cluster {ctx.ref.name}: add backups.s3 = {{ bucket = ... }} to its config")
    key = str(ctx.params.get("key") or "")
    if not key:
        found = await asyncio.to_thread(s3.list_backups, loc, dump_rb.KIND)
        mine = [m for m in found if m.meta.get("cluster") == ctx.ref.name and m.meta.get("database") == source_database(ctx)]
        if not mine:
            return Verdict(False, f"no pg_dump backup of {source_database(ctx)} from cluster {ctx.ref.name} in "
                                  f"s3://{loc.bucket}/{loc.prefix}; give one with --param key=...")
        key = mine[0].key
    # Streams the whole object: "exists and matches its checksum" before anything is created.
    manifest = await asyncio.to_thread(s3.verify_object, loc, key)
    ctx.state.update(key=manifest.key, size=manifest.size, sha256=manifest.sha256, tables=manifest.meta.get("tables"))
    if not ctx.params.get("into"):
        ctx.state["into"] = f"{source_database(ctx)}_restored_{datetime.now(UTC):%Y%m%d%H%M}"
    return Verdict(True, f"{manifest.key} ({human_bytes(manifest.size)}, taken {manifest.created:%Y-%m-%d %H:%M:%S} UTC): "
                         "SHA-256 matches its manifest")


async def check_new_database(ctx: Context) -> Verdict:
    name = new_database(ctx)
    if not name:
        return Verdict(False, "the new database's name is unknown (see the backup pre-check)")
    primary = await common.primary(ctx)
    ctx.state["primary"] = primary.name
    if await primary.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
        return Verdict(False, f"database {name} already exists on {primary.name}; restore-dump only creates new "
                              "databases: choose another with --param into=NAME")
    ctx.state["into_absent"] = True
    return Verdict(True, f"restore into new database {name} on {primary.name}")


async def check_disk(ctx: Context) -> Verdict:
    size = int(ctx.state.get("size") or 0)
    where = ctx.staging_dir.parent
    free = await common.staging_free_bytes(ctx)
    need = int(size * DISK_MARGIN)
    return Verdict(free >= need, f"{free / 1048576:.0f} MiB free under {where}, {human_bytes(need)} needed "
                                 f"({DISK_MARGIN:g}x the dump)")


# -- steps -----------------------------------------------------------------------------------


async def do_download(ctx: Context) -> None:
    from dbops.platform import s3

    ctx.state.setdefault("rto_started", time.time())
    ctx.staging_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    manifest = await asyncio.to_thread(s3.download_verified, dump_rb.location(ctx), ctx.state["key"], local_file(ctx),
                                       lambda done, total: ctx.progress(done, total, "bytes"))
    ctx.log(f"downloaded {manifest.key}: {manifest.size} bytes, SHA-256 matches the manifest")


async def verify_downloaded(ctx: Context) -> Verdict:
    path = local_file(ctx)
    ok = path.exists() and path.stat().st_size == int(ctx.state.get("size", -1))
    return Verdict(ok, f"{path} holds the whole dump" if ok else f"{path} is missing or incomplete")


async def _exists(ctx: Context) -> bool:
    primary = ctx.resources["conns"][ctx.state["primary"]]
    return bool(await primary.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", new_database(ctx)))


def _marker(ctx: Context) -> str:
    return f"restored by dbops run {ctx.run_id} (postgres.restore-dump)"


async def _comment(ctx: Context) -> str | None:
    primary = ctx.resources["conns"][ctx.state["primary"]]
    return await primary.fetchval("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
                                  new_database(ctx))


async def do_create(ctx: Context) -> None:
    primary = ctx.resources["conns"][ctx.state["primary"]]
    name = _quote(new_database(ctx))
    if not await _exists(ctx):
        await primary.execute(f"CREATE DATABASE {name}")
    elif await _comment(ctx) == _marker(ctx):
        return  # made by this run, before a crash
    elif await _comment(ctx) is None and ctx.state.get("into_absent") and not await _user_tables(ctx):
        # dbops was killed between CREATE DATABASE and marking it: it did not exist at the
        # pre-check, is empty and unmarked, so it is this run's.
        ctx.log(f"database {new_database(ctx)} was created by this run's interrupted attempt; marking it")
    else:
        raise RuntimeError(f"database {new_database(ctx)} appeared since the pre-checks and is not this run's; it is left alone")
    # The marker is how a resumed run knows the database is its own to drop and recreate.
    await primary.execute(f"COMMENT ON DATABASE {name} IS '{_marker(ctx)}'")


async def verify_created(ctx: Context) -> Verdict:
    ok = await _exists(ctx) and await _comment(ctx) == _marker(ctx)
    return Verdict(ok, f"database {new_database(ctx)} exists, made by this run" if ok
                   else f"database {new_database(ctx)} does not exist, or is not this run's")


async def _user_tables(ctx: Context) -> int:
    conn = _new_db_conn(ctx)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                       "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"))
    finally:
        await conn.close()


async def do_restore(ctx: Context) -> None:
    conn = ctx.resources["conns"][ctx.state["primary"]]
    if await _comment(ctx) != _marker(ctx):
        raise RuntimeError(f"database {new_database(ctx)} is not marked as this run's; not restoring into it")
    if await _user_tables(ctx):
        # This run created the database (create step) and an earlier attempt was cut off
        # mid-restore: drop its half-restored contents with it and start from an empty one.
        await conn.execute(f"DROP DATABASE IF EXISTS {_quote(new_database(ctx))} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {_quote(new_database(ctx))}")
        await conn.execute(f"COMMENT ON DATABASE {_quote(new_database(ctx))} IS '{_marker(ctx)}'")
        ctx.log(f"database {new_database(ctx)} held a partial restore from an interrupted attempt: recreated it empty")
    await dp.restore(_target(ctx), str(local_file(ctx)), jobs(ctx), RESTORE_TIMEOUT)
    ctx.state["restored"] = True
    ctx.log(f"pg_restore -j {jobs(ctx)} into {new_database(ctx)} finished")


def _new_db_conn(ctx: Context) -> sw.Conn:
    """A connection to the new database on the primary, with the cluster's credentials and TLS."""
    ref = dataclasses.replace(ctx.ref, cluster=dataclasses.replace(ctx.ref.cluster, database=new_database(ctx)))
    member = next(m for m in ctx.ref.cluster.members if m.name == ctx.state["primary"])
    return sw.Conn.for_member(ref, member)


async def _findings(ctx: Context) -> tuple[list[str], list[str]]:
    conn = _new_db_conn(ctx)
    problems, facts = [], []
    try:
        toc = await dp.list_archive(str(local_file(ctx))) if local_file(ctx).exists() else []
        tables = dp.table_data_entries(toc)
        present = {f"{r['s']}.{r['t']}" for r in await conn.fetch(
            "SELECT n.nspname AS s, c.relname AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p')")}
        missing = [t for t in tables if t not in present]
        if missing:
            problems.append(f"tables of the archive missing after the restore: {', '.join(missing[:10])}")
        elif tables:
            facts.append(f"all {len(tables)} table(s) of the archive are present")
        more_problems, more_facts = await common.count_canaries(ctx, conn)
        problems += more_problems
        facts += more_facts
    finally:
        await conn.close()
    return problems, facts


async def do_verify(ctx: Context) -> None:
    problems, facts = await _findings(ctx)
    common.finish_verification(ctx, problems, facts, f"from the download to a verified database {new_database(ctx)} "
                                                     f"on {ctx.state['primary']}")
    await asyncio.to_thread(shutil.rmtree, ctx.staging_dir, True)


async def verify_verified(ctx: Context) -> Verdict:
    ok = "rto_seconds" in ctx.state and not ctx.staging_dir.exists()
    return Verdict(ok, f"database {new_database(ctx)} verified" if ok else "not verified yet")


def _create_cmds(ctx: Context) -> list[str]:
    name = _quote(new_database(ctx) or "<new database>")
    return [f"CREATE DATABASE {name}  -- on the primary", f"COMMENT ON DATABASE {name} IS '{_marker(ctx)}'"]


def _restore_cmds(ctx: Context) -> list[str]:
    try:
        return dp.describe_restore(_target(ctx), str(local_file(ctx)), jobs(ctx))
    except dp.DumpError as exc:
        return [f"# {exc}"]


STEPS = (
    Step("download", "Download the dump", "From S3 into a staging file on this host; its SHA-256 is checked against "
         "the manifest before it is used.", Kind.ACTION,
         lambda ctx: [f"GET s3://{dump_rb._bucket(ctx)}/{ctx.state.get('key', '<key>')} -> {local_file(ctx)}"],
         do_download, verify_downloaded, timeout=RESTORE_TIMEOUT),
    Step("create", "Create the new database", "A new, empty database on the primary; an existing one is never "
         "reused; marked as this run's (a comment), which is how a resumed run knows it may recreate it.", Kind.ACTION,
         _create_cmds, do_create, verify_created, confirm=Confirm.YES_NO, timeout=300),
    Step("restore", "Restore with pg_restore -j", "Parallel restore into the new database; stops at the first error.",
         Kind.ACTION, _restore_cmds, do_restore, None, timeout=RESTORE_TIMEOUT, produces=("restored",),
         on_failure="pg_restore's message says why; `dbops runbook resume` recreates the new database and restores again"),
    Step("verify", "Verify the new database", "Every table of the archive exists; canary row counts; removes the "
         "staging file and reports the RTO.", Kind.CHECK,
         lambda ctx: ["SELECT schema, table FROM pg_class ...  -- compared with pg_restore --list",
                      *(f"SELECT count(*) FROM {common.quote_table(t)}" for t in common.canary_tables(ctx))],
         do_verify, verify_verified, timeout=3600, produces=("rto_seconds",)),
)

RUNBOOK = Runbook(
    id="postgres.restore-dump",
    title="Restore a pg_dump backup from S3 into a new database (pg_restore -j)",
    params=(
        Param("database", "database whose newest dump to restore (default: the cluster's database)", default=""),
        Param("key", "S3 key of the dump (default: the newest dump of the database)", default=""),
        Param("into", "name of the new database (default: <database>_restored_<UTC time>)", default=""),
        Param("jobs", "parallel pg_restore jobs", type=int, default=4),
        Param("canary", "comma-separated tables whose rows are counted afterwards", default=""),
    ),
    prechecks=(
        Check("backup", "the backup exists and matches its checksum", check_backup, timeout=restore_rb.VERIFY_TIMEOUT),
        Check("new-database", "the new database's name is free", check_new_database),
        Check("disk", "free disk for the download", check_disk),
        Check("tools", "pg_dump and pg_restore are installed", dump_rb.check_tools),
    ),
    steps=STEPS,
    setup=common.setup,
    teardown=common.teardown,
)
