"""redis.backup: RDB snapshots to S3, each with a SHA-256 manifest.

One snapshot per shard: the master of a standalone or Sentinel deployment, every master of a
Cluster (with its slot ranges in the manifest); each taken from a replica whose link is up when
there is one (the fork that writes a snapshot then costs the master nothing), else from the master.
`redis-cli --rdb` fetches it over the network (as a replica would: no access to the node's host
needed); `redis-check-rdb` checks it and counts its keys, which go into the manifest for
redis.restore-rdb to verify against. Then upload, stream back and compare, remove the staging files.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

from dbops.engines.redis import client as rc
from dbops.engines.redis import rdb
from dbops.engines.redis.data import parse_info
from dbops.engines.redis.topology import format_ranges
from dbops.runbook.model import Check, Confirm, Context, Kind, Runbook, Step, Verdict
from dbops.runbooks.redis import common

KIND = "redis_rdb"


def location(ctx: Context) -> Any:
    return ctx.ref.cluster.backups.s3


async def check_location(ctx: Context) -> Verdict:
    from dbops.platform import s3

    loc = location(ctx)
    if loc is None:
        return Verdict(False, f"no backup location for {ctx.ref.name}: add [...clusters.{ctx.ref.name}.backups] s3 = {{ bucket = ... }}")
    try:
        found = await asyncio.to_thread(s3.list_backups, loc, KIND)
    except s3.S3Error as exc:
        return Verdict(False, str(exc))
    newest = f"; newest {found[0].key} ({found[0].created:%Y-%m-%d %H:%M} UTC)" if found else "; none yet"
    return Verdict(True, f"s3://{loc.bucket}/{loc.prefix} answers: {len(found)} RDB backup(s){newest}")


async def check_tools(ctx: Context) -> Verdict:
    try:
        return Verdict(True, f"{rdb.tool(rdb.REDIS_CLI)}, {rdb.tool(rdb.CHECK_RDB)}")
    except rdb.RdbError as exc:
        return Verdict(False, str(exc))


async def _role(ctx: Context, address: str) -> dict[str, str]:
    client = rc.connect(ctx.ref, address)
    try:
        return parse_info(await asyncio.wait_for(client.execute_command("INFO", "replication", "server", "keyspace"),
                                                 timeout=ctx.ref.timeout))
    finally:
        await rc.close(client)


async def check_sources(ctx: Context) -> Verdict:
    """Which node each shard's snapshot comes from."""
    targets: list[dict[str, Any]] = []
    opts = ctx.ref.cluster.redis
    names = {f"{m.host}:{m.port}": m.name for m in ctx.ref.cluster.members}
    if opts is not None and opts.mode == "cluster":
        s = common.session(ctx)
        view = await s.refresh()
        for m in sorted((n for n in view.nodes if n.is_master and n.slots and not n.failed), key=lambda n: s.name(n.node_id)):
            replicas = [n for n in view.nodes if n.master_id == m.node_id and not n.failed and n.address not in s.unreachable]
            source = replicas[0] if replicas else m
            targets.append({"shard": s.name(m.node_id), "address": source.address, "from": s.name(source.node_id),
                            "slots": format_ranges(m.slots, 1000)})
    else:
        infos = {}
        for m in ctx.ref.cluster.members:
            address = f"{m.host}:{m.port}"
            try:
                infos[address] = await _role(ctx, address)
            except Exception as exc:  # a member that does not answer is named, and another is used
                ctx.log(f"{m.name}: {rc.classify(exc, address, ctx.ref.timeout)[1]}")
        master = next((a for a, i in infos.items() if i.get("role") == "master"), None)
        if master is None:
            return Verdict(False, "no member answers as master")
        replica = next((a for a, i in infos.items() if i.get("role") == "slave" and i.get("master_link_status") == "up"
                        and f"{i.get('master_host')}:{i.get('master_port')}" == master), None)
        source = replica or master
        targets.append({"shard": names.get(master, master), "address": source, "from": names.get(source, source), "slots": ""})
    ctx.state["targets"] = targets
    return Verdict(True, "; ".join(f"{t['shard']} from {t['from']} ({t['address']})" for t in targets))


def _file(ctx: Context, t: dict[str, Any]) -> Path:
    return ctx.staging_dir / f"{t['shard']}.rdb"


def fetch_commands(ctx: Context) -> list[str]:
    return [f"mkdir -p -m 0700 {ctx.staging_dir}"] + [rdb.describe_fetch(ctx.ref, t["address"], str(_file(ctx, t)))
                                                       for t in ctx.state.get("targets", [])]


async def do_fetch(ctx: Context) -> None:
    d = ctx.staging_dir
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    for t in ctx.state["targets"]:
        started = time.monotonic()
        size = await rdb.fetch(ctx.ref, t["address"], _file(ctx, t))
        t["size"] = size
        ctx.log(f"{t['shard']}: {size} bytes from {t['from']} in {time.monotonic() - started:.1f}s")


async def do_check(ctx: Context) -> None:
    for t in ctx.state["targets"]:
        c = await rdb.check(_file(ctx, t))
        if not c.ok:
            raise RuntimeError(f"{t['shard']}: {c.message}")
        t["keys"] = c.keys
        ctx.log(f"{t['shard']}: {c.message}")


def object_key(ctx: Context, t: dict[str, Any]) -> str:
    from dbops.platform import s3

    return s3.key_for(location(ctx), f"{ctx.ref.name}/{t['shard']}/{ctx.run_id}.rdb")


async def do_upload(ctx: Context) -> None:
    from dbops.platform import s3

    for t in ctx.state["targets"]:
        meta = {"cluster": ctx.ref.name, "environment": ctx.ref.environment, "shard": t["shard"], "source": t["from"],
                "keys": str(t["keys"]), "run_id": ctx.run_id}
        if t["slots"]:
            meta["slots"] = t["slots"]
        m = await asyncio.to_thread(s3.upload_with_manifest, location(ctx), _file(ctx, t), object_key(ctx, t), kind=KIND,
                                    meta=meta, progress=lambda done, total: ctx.progress(done, total, "bytes"))
        t["key"] = m.key
        t["sha256"] = m.sha256
        ctx.log(f"{t['shard']}: s3://{location(ctx).bucket}/{m.key} ({m.size} bytes, sha256 {m.sha256[:12]}…)")


async def do_verify(ctx: Context) -> None:
    from dbops.platform import s3

    for t in ctx.state["targets"]:
        m = await asyncio.to_thread(s3.verify_object, location(ctx), t["key"])
        ctx.log(f"{t['shard']}: streamed back, SHA-256 matches the manifest ({m.meta.get('keys')} keys)")
    await asyncio.to_thread(shutil.rmtree, ctx.staging_dir, True)
    ctx.state["verified"] = True


RUNBOOK = Runbook(
    id="redis.backup",
    title="Back up Redis: an RDB snapshot per shard to S3, with manifests",
    prechecks=(
        Check("location", "the cluster's S3 backup location answers", check_location),
        Check("tools", "redis-cli and redis-check-rdb are installed here", check_tools),
        Check("sources", "a node to snapshot for every shard (a replica when there is one)", check_sources),
    ),
    steps=(
        Step("fetch", "Take the snapshots", "redis-cli --rdb per shard (the node forks to write it, as for a replica's sync) "
             "into a staging directory on this host", Kind.ACTION, fetch_commands, run=do_fetch, confirm=Confirm.YES_NO,
             timeout=6 * 3600.0, on_failure="redis-cli's message says why; a node with `rdb-only` denied by an ACL needs +sync"),
        Step("check", "Check the snapshots", "redis-check-rdb reads each and counts its keys", Kind.CHECK,
             lambda ctx: [f"redis-check-rdb {_file(ctx, t)}" for t in ctx.state.get("targets", [])], run=do_check, timeout=3600.0),
        Step("upload", "Upload to S3 with manifests", "each snapshot, then its manifest (size, SHA-256, keys, shard)",
             Kind.ACTION, lambda ctx: [f"PUT s3://{location(ctx).bucket if location(ctx) else '?'}/{object_key(ctx, t)} (+ .manifest.json)"
                                       for t in ctx.state.get("targets", [])] if location(ctx) else ["# no S3 location"],
             run=do_upload, timeout=6 * 3600.0),
        Step("verify", "Verify the copies in S3", "streams each back and compares its SHA-256; removes the staging files",
             Kind.CHECK, lambda ctx: [f"GET s3://…/{t['shard']}/{ctx.run_id}.rdb  -- SHA-256 compared with the manifest"
                                      for t in ctx.state.get("targets", [])] + [f"rm -r {ctx.staging_dir}"],
             run=do_verify, timeout=6 * 3600.0, produces=("verified",)),
    ),
    setup=common.setup,
    teardown=common.teardown,
)
