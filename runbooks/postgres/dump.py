"""postgres.dump: a logical backup (pg_dump, custom format) of one database, uploaded to the
cluster's S3 location with a SHA-256 manifest, and verified there.

Pre-checks (read-only): an S3 location is configured and its bucket answers; the member to dump
from answers (default: the primary; a replica spares the primary the read load); free local
disk for the staging file (the database's size). Steps: pg_dump into a staging file on this host
-> pg_restore --list proves it is a whole, readable archive -> upload it and its manifest ->
stream it back from S3 and check it against the manifest; the staging file is then removed.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
from datetime import UTC, datetime
from pathlib import Path

from dbops.config import S3Location
from dbops.engines.postgres import dump as dp
from dbops.engines.postgres import switchover as sw
from dbops.model import human_bytes
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.postgres import common

DUMP_TIMEOUT = 6 * 3600.0
KIND = "pg_dump"


def location(ctx: Context) -> S3Location:
    loc = ctx.ref.cluster.backups.s3
    if loc is None:
        raise RuntimeError(f"no S3 location for cluster {ctx.ref.name}: add backups.s3 = {{ bucket = ... }} to its config")
    return loc


def database(ctx: Context) -> str:
    return str(ctx.params.get("database") or ctx.ref.cluster.database)


def staging_file(ctx: Context) -> Path:
    return ctx.staging_dir / f"{database(ctx)}.dump"


def object_key(ctx: Context) -> str:
    from dbops.platform import s3

    stamp = ctx.state.get("stamp") or "<time of the run>"
    return s3.key_for(location(ctx), f"{ctx.ref.name}/{database(ctx)}/{stamp}.dump")


async def _source(ctx: Context) -> sw.Conn:
    wanted = str(ctx.params.get("member") or "")
    conns = ctx.resources["conns"]
    if wanted:
        if wanted not in conns:
            raise RuntimeError(f"cluster {ctx.ref.name} has no member {wanted!r}; members: {', '.join(conns)}")
        return conns[wanted]
    return await common.primary(ctx)


def target(ctx: Context) -> dp.Target:
    name = ctx.state.get("source") or next(iter(m.name for m in ctx.ref.cluster.members))
    member = next(m for m in ctx.ref.cluster.members if m.name == name)
    return dp.Target.of(ctx.ref, member, database(ctx))


# -- pre-checks ------------------------------------------------------------------------------


async def check_location(ctx: Context) -> Verdict:
    from dbops.platform import s3

    loc = ctx.ref.cluster.backups.s3
    if loc is None:
        return Verdict(False, f"no S3 location for cluster {ctx.ref.name}: add backups.s3 = {{ bucket = ... }} to its config")
    found = await asyncio.to_thread(s3.list_backups, loc, KIND)
    mine = [m for m in found if m.meta.get("cluster") == ctx.ref.name and m.meta.get("database") == database(ctx)]
    newest = f"; newest dump of {database(ctx)}: {mine[0].created:%Y-%m-%d %H:%M:%S} UTC" if mine else "; no dump of it yet"
    return Verdict(True, f"s3://{loc.bucket}/{loc.prefix} answers{newest}")


async def check_source(ctx: Context) -> Verdict:
    conn = await _source(ctx)
    size = await conn.fetchval("SELECT pg_database_size($1)", database(ctx))
    if size is None:
        return Verdict(False, f"{conn.name} has no database {database(ctx)!r}")
    ctx.state.update(source=conn.name, database_size=int(size),
                     stamp=datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))
    return Verdict(True, f"dump {database(ctx)} ({human_bytes(int(size))}) from {conn.name}")


async def check_disk(ctx: Context) -> Verdict:
    size = int(ctx.state.get("database_size") or 0)
    where = ctx.staging_dir.parent
    free = await common.staging_free_bytes(ctx)
    # The custom format is compressed; the database's size bounds the file from above.
    return Verdict(free >= size, f"{free / 1048576:.0f} MiB free under {where}, up to {size / 1048576:.0f} MiB needed")


async def check_tools(ctx: Context) -> Verdict:
    try:
        return Verdict(True, f"{dp.tool('pg_dump')}, {dp.tool('pg_restore')}")
    except dp.DumpError as exc:
        return Verdict(False, str(exc))


# -- steps -----------------------------------------------------------------------------------


def _cmds_dump(ctx: Context) -> list[str]:
    try:
        return [f"mkdir -p -m 0700 {ctx.staging_dir}", *dp.describe_dump(target(ctx), str(staging_file(ctx)))]
    except dp.DumpError as exc:
        return [f"# {exc}"]


async def do_dump(ctx: Context) -> None:
    d = ctx.staging_dir
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = staging_file(ctx)
    # Into a temporary name first: a dump cut short (crash, timeout) never looks like a whole one.
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    await dp.dump(target(ctx), str(partial), DUMP_TIMEOUT)
    os.replace(partial, path)
    ctx.state["dump_size"] = path.stat().st_size
    ctx.log(f"pg_dump of {database(ctx)} from {ctx.state['source']}: {human_bytes(ctx.state['dump_size'])}")


async def verify_dumped(ctx: Context) -> Verdict:
    path = staging_file(ctx)
    return Verdict(path.exists(), f"{path} exists" if path.exists() else f"{path} is missing")


async def do_check_archive(ctx: Context) -> None:
    toc = await dp.list_archive(str(staging_file(ctx)))
    tables = dp.table_data_entries(toc)
    ctx.state["tables"] = len(tables)
    ctx.log(f"archive readable: {len(toc)} entries, data of {len(tables)} table(s)")


async def do_upload(ctx: Context) -> None:
    from dbops.platform import s3

    key = object_key(ctx)
    meta = {"cluster": ctx.ref.name, "environment": ctx.ref.environment, "database": database(ctx),
            "source": str(ctx.state["source"]), "format": "custom", "tables": str(ctx.state.get("tables", ""))}
    manifest = await asyncio.to_thread(s3.upload_with_manifest, location(ctx), staging_file(ctx), key, kind=KIND, meta=meta,
                                       progress=lambda done, total: ctx.progress(done, total, "bytes"))
    ctx.state.update(key=manifest.key, sha256=manifest.sha256)
    ctx.log(f"uploaded s3://{location(ctx).bucket}/{manifest.key} ({human_bytes(manifest.size)}, sha256 {manifest.sha256[:16]}...)")


async def verify_uploaded(ctx: Context) -> Verdict:
    from dbops.platform import s3

    try:
        manifest = await asyncio.to_thread(s3.read_manifest, location(ctx), object_key(ctx))
    except s3.S3Error as exc:
        return Verdict(False, str(exc))
    return Verdict(True, f"manifest of {manifest.key} is in S3")


async def do_verify(ctx: Context) -> None:
    from dbops.platform import s3

    manifest = await asyncio.to_thread(s3.verify_object, location(ctx), object_key(ctx),
                                       lambda done, total: ctx.progress(done, total, "bytes"))
    if manifest.sha256 != ctx.state.get("sha256", manifest.sha256):
        raise RuntimeError(f"the manifest in S3 names sha256 {manifest.sha256}, the upload recorded {ctx.state['sha256']}")
    ctx.log(f"s3://{location(ctx).bucket}/{manifest.key} read back: {manifest.size} bytes, sha256 matches the manifest")
    await asyncio.to_thread(shutil.rmtree, ctx.staging_dir, True)
    ctx.state["verified"] = True


async def verify_verified(ctx: Context) -> Verdict:
    ok = bool(ctx.state.get("verified")) and not ctx.staging_dir.exists()
    return Verdict(ok, "verified in S3; staging file removed" if ok else "not verified yet")


STEPS = (
    Step("dump", "Dump the database", "pg_dump in custom format (compressed, restorable in parallel) into a staging "
         "file on this host; read-only on the server.", Kind.ACTION, _cmds_dump, do_dump, verify_dumped,
         confirm=Confirm.YES_NO, timeout=DUMP_TIMEOUT, produces=("dump_size",),
         on_failure="pg_dump's message says why (permissions: the cluster's user needs to read every table)"),
    Step("check-archive", "Check the archive is readable", "pg_restore --list reads its table of contents.", Kind.CHECK,
         lambda ctx: [shlex.join(dp.list_args(str(staging_file(ctx))))], do_check_archive, timeout=600,
         produces=("tables",)),
    Step("upload", "Upload to S3 with its manifest", "The file, then a manifest with its size and SHA-256 (written "
         "only once S3 holds the whole object).", Kind.ACTION,
         lambda ctx: [f"PUT s3://{_bucket(ctx)}/{_key_or_placeholder(ctx)}",
                      f"PUT s3://{_bucket(ctx)}/{_key_or_placeholder(ctx)}.manifest.json"],
         do_upload, verify_uploaded, timeout=DUMP_TIMEOUT, produces=("key", "sha256")),
    Step("verify", "Verify the copy in S3", "Streams the object back and checks its SHA-256 against the manifest; "
         "removes the staging file.", Kind.CHECK,
         lambda ctx: [f"GET s3://{_bucket(ctx)}/{_key_or_placeholder(ctx)}  -- SHA-256 compared with the manifest",
                      f"rm -r {ctx.staging_dir}"],
         do_verify, verify_verified, timeout=DUMP_TIMEOUT, produces=("verified",)),
)


def _bucket(ctx: Context) -> str:
    loc = ctx.ref.cluster.backups.s3
    return loc.bucket if loc else "<no S3 location configured>"


def _key_or_placeholder(ctx: Context) -> str:
    try:
        return object_key(ctx)
    except RuntimeError:
        return "<key>"


RUNBOOK = Runbook(
    id="postgres.dump",
    title="Dump a database to S3 (pg_dump, custom format, SHA-256 manifest)",
    params=(
        Param("database", "database to dump (default: the cluster's database)", default=""),
        Param("member", "member to dump from (default: the primary)", default=""),
    ),
    prechecks=(
        Check("location", "an S3 location is configured and answers", check_location),
        Check("source", "the member to dump from answers", check_source),
        Check("disk", "free disk for the staging file", check_disk),
        Check("tools", "pg_dump and pg_restore are installed", check_tools),
    ),
    steps=STEPS,
    setup=common.setup,
    teardown=common.teardown,
)
