"""qdrant.snapshot-to-s3: a collection snapshot from every node, to S3 with SHA-256 manifests.

A Qdrant collection snapshot holds the shards of the node that takes it, so one is taken on every
node: together they are the collection (a set; one manifest per node, linked by the run id). The
pre-check reads the collection on every node (a node that does not answer would leave its shards
out, so it refuses) and records what a restore verifies against: the exact point count, every
node's shards, and the collection's aliases. Each snapshot is streamed down to a staging
directory, its size and SHA-256 compared with what the node reported, uploaded with its manifest
(kind qdrant-snapshot), streamed back from S3 and compared again; then the node-local snapshots
are deleted (--param delete_local=false keeps them).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from dbops.engines.qdrant.client import QdrantError
from dbops.engines.qdrant.data import ACTIVE
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.qdrant import common
from dbops.runbooks.qdrant.common import ACTION_TIMEOUT, KIND


def _collection(ctx: Context) -> str:
    return str(ctx.params["collection"])


async def check_collection(ctx: Context) -> Verdict:
    name = _collection(ctx)
    try:
        data = await common.refresh(ctx)
    except QdrantError as exc:
        return Verdict(False, exc.message)
    down = [n for n in data.nodes if not n.up]
    if down:
        return Verdict(False, "every node must answer (a snapshot holds only its own node's shards): "
                              + "; ".join(f"{n.name}: {n.error}" for n in down))
    missing = [n.name for n in data.nodes if n.collection(name) is None]
    if missing:
        known = ", ".join(data.collection_names()) or "none"
        return Verdict(False, f"no collection {name!r} on {', '.join(missing)} (collections: {known})")
    replicas = [r for r in data.replicas() if r.collection == name]
    uncovered = sorted({r.shard_id for r in replicas} - {r.shard_id for r in replicas if r.state == ACTIVE})
    if uncovered:
        return Verdict(False, f"shard(s) {', '.join(map(str, uncovered))} of {name} have no Active replica: "
                              "a snapshot would miss their points")
    first = common.node(ctx, data.nodes[0].name)
    try:
        counted = await first.call(f"counting {name}", lambda q: q.count(name, exact=True))
        aliases = await first.call(f"reading the aliases of {name}", lambda q: q.get_collection_aliases(name))
    except QdrantError as exc:
        return Verdict(False, exc.message)
    ctx.state["points"] = int(counted.count)
    ctx.state["aliases"] = sorted(a.alias_name for a in aliases.aliases)
    ctx.state["nodes"] = [
        {"node": n.name, "peer_id": n.peer_id,
         "shards": sorted(s.shard_id for s in n.collection(name).local if s.state == ACTIVE),  # type: ignore[union-attr]
         "points": sum(s.points for s in n.collection(name).local if s.state == ACTIVE)}  # type: ignore[union-attr]
        for n in data.nodes]
    aliases_text = f", aliases {', '.join(ctx.state['aliases'])}" if ctx.state["aliases"] else ", no aliases"
    holders = "; ".join(f"{t['node']}: shard(s) {','.join(map(str, t['shards'])) or 'none'}" for t in ctx.state["nodes"])
    return Verdict(True, f"{name}: {ctx.state['points']} points{aliases_text}; {holders}")


def _file(ctx: Context, t: dict[str, Any]) -> Path:
    return ctx.staging_dir / f"{t['node']}.snapshot"


def object_key(ctx: Context, t: dict[str, Any]) -> str:
    from dbops.platform import s3

    return s3.key_for(common.location(ctx), f"{ctx.ref.name}/{_collection(ctx)}/{ctx.run_id}/{t['node']}.snapshot")


def snapshot_commands(ctx: Context) -> list[str]:
    return [f"POST {common.base_url(ctx, t['node'])}/collections/{_collection(ctx)}/snapshots?wait=true   # {t['node']}"
            for t in ctx.state.get("nodes", [])] or ["# the nodes are found by the pre-check"]


async def do_snapshot(ctx: Context) -> None:
    name = _collection(ctx)
    taken = {}
    for t in ctx.state["nodes"]:
        c = common.node(ctx, t["node"])
        d = await c.call(f"creating a snapshot of {name}", lambda q: q.create_snapshot(name, wait=True), timeout=ACTION_TIMEOUT)
        taken[t["node"]] = {"name": d.name, "size": int(d.size), "checksum": d.checksum}
        ctx.log(f"{t['node']}: snapshot {d.name} ({d.size} bytes)")
    ctx.state["snapshots"] = taken


def download_commands(ctx: Context) -> list[str]:
    return [f"mkdir -p -m 0700 {ctx.staging_dir}"] + [
        f"GET {common.base_url(ctx, t['node'])}/collections/{_collection(ctx)}/snapshots/<{t['node']}'s snapshot> "
        f"> {_file(ctx, t)}" for t in ctx.state.get("nodes", [])]


async def do_download(ctx: Context) -> None:
    name = _collection(ctx)
    d = ctx.staging_dir
    await asyncio.to_thread(lambda: d.mkdir(parents=True, exist_ok=True, mode=0o700))
    for t in ctx.state["nodes"]:
        snap = ctx.state["snapshots"][t["node"]]
        size, digest = await common.node(ctx, t["node"]).download(
            f"/collections/{name}/snapshots/{snap['name']}", _file(ctx, t),
            progress=lambda done, total: ctx.progress(done, total, "bytes"))
        if size != snap["size"]:
            raise RuntimeError(f"{t['node']}: downloaded {size} bytes of {snap['name']}, the node reported {snap['size']}")
        if snap["checksum"] and snap["checksum"].lower() != digest:
            raise RuntimeError(f"{t['node']}: {snap['name']} has SHA-256 {digest}, the node reported {snap['checksum']}")
        snap["sha256"] = digest
        ctx.log(f"{t['node']}: {size} bytes, SHA-256 {digest[:12]}… matches the node's checksum")


def upload_commands(ctx: Context) -> list[str]:
    loc = common.location(ctx)
    if loc is None:
        return ["# no S3 location"]
    return [f"PUT s3://{loc.bucket}/{object_key(ctx, t)} (+ .manifest.json, kind {KIND})" for t in ctx.state.get("nodes", [])]


async def do_upload(ctx: Context) -> None:
    from dbops.platform import s3

    uploaded = {}
    for t in ctx.state["nodes"]:
        snap = ctx.state["snapshots"][t["node"]]
        meta = {"cluster": ctx.ref.name, "environment": ctx.ref.environment, "collection": _collection(ctx),
                "node": t["node"], "peer_id": str(t["peer_id"]), "snapshot": snap["name"], "run_id": ctx.run_id,
                "set_size": str(len(ctx.state["nodes"])), "points": str(ctx.state["points"]),
                "node_points": str(t["points"]), "shards": ",".join(map(str, t["shards"])),
                "aliases": ",".join(ctx.state["aliases"])}
        m = await asyncio.to_thread(s3.upload_with_manifest, common.location(ctx), _file(ctx, t), object_key(ctx, t), kind=KIND,
                                    meta=meta, progress=lambda done, total: ctx.progress(done, total, "bytes"))
        if m.sha256 != snap["sha256"]:
            raise RuntimeError(f"{t['node']}: the file changed between download and upload (SHA-256 {m.sha256})")
        uploaded[t["node"]] = m.key
        ctx.log(f"{t['node']}: s3://{common.location(ctx).bucket}/{m.key} ({m.size} bytes, sha256 {m.sha256[:12]}…)")
    ctx.state["keys"] = uploaded


async def do_verify(ctx: Context) -> None:
    from dbops.platform import s3

    for t in ctx.state["nodes"]:
        m = await asyncio.to_thread(s3.verify_object, common.location(ctx), ctx.state["keys"][t["node"]])
        ctx.log(f"{t['node']}: streamed back from S3, SHA-256 matches the manifest ({m.size} bytes)")
    await asyncio.to_thread(shutil.rmtree, ctx.staging_dir, True)
    ctx.state["verified"] = True


def cleanup_commands(ctx: Context) -> list[str]:
    return [f"DELETE {common.base_url(ctx, t['node'])}/collections/{_collection(ctx)}/snapshots/<{t['node']}'s snapshot>"
            for t in ctx.state.get("nodes", [])]


async def do_cleanup(ctx: Context) -> None:
    name = _collection(ctx)
    for t in ctx.state["nodes"]:
        snap = ctx.state["snapshots"][t["node"]]["name"]
        await common.node(ctx, t["node"]).call(f"deleting snapshot {snap}", lambda q, snap=snap: q.delete_snapshot(name, snap, wait=True),
                                               timeout=ACTION_TIMEOUT)
        ctx.log(f"{t['node']}: deleted the node-local {snap} (the copy in S3 is verified)")


RUNBOOK = Runbook(
    id="qdrant.snapshot-to-s3",
    title="Snapshot a Qdrant collection on every node to S3, with manifests",
    params=(Param("collection", "the collection to snapshot", required=True),
            Param("delete_local", "delete the node-local snapshots once the S3 copies are verified", type=bool, default=True)),
    prechecks=(
        Check("location", "the cluster's S3 backup location answers", common.check_location),
        Check("key", "the runbook's API key may change the cluster", common.check_key),
        Check("collection", "every node answers and holds the collection; its points and aliases", check_collection),
    ),
    steps=(
        Step("snapshot", "Create the snapshots", "a collection snapshot on every node (each holds that node's shards)",
             Kind.ACTION, snapshot_commands, run=do_snapshot, confirm=Confirm.YES_NO, timeout=ACTION_TIMEOUT * 3,
             produces=("snapshots",), on_failure="the node's message says why (disk full on the node, a read-only key ...); "
                                                 "snapshots already made stay on their nodes: list them with GET "
                                                 "/collections/<c>/snapshots"),
        Step("download", "Download the snapshots", "streams each to a staging directory here; size and SHA-256 are "
             "compared with what the node reported", Kind.CHECK, download_commands, run=do_download, timeout=6 * 3600.0),
        Step("upload", "Upload to S3 with manifests", "each snapshot, then its manifest (size, SHA-256, node, peer, "
             "points, shards, aliases)", Kind.ACTION, upload_commands, run=do_upload, timeout=6 * 3600.0, produces=("keys",)),
        Step("verify", "Verify the copies in S3", "streams each back and compares its SHA-256; removes the staging files",
             Kind.CHECK, lambda ctx: [f"GET s3://…/{ctx.run_id}/{t['node']}.snapshot  -- SHA-256 compared with the manifest"
                                      for t in ctx.state.get("nodes", [])] + [f"rm -r {ctx.staging_dir}"],
             run=do_verify, timeout=6 * 3600.0, produces=("verified",)),
        Step("cleanup", "Delete the node-local snapshots", "frees the nodes' snapshot space; the verified copies stay in S3",
             Kind.ACTION, cleanup_commands, run=do_cleanup, timeout=ACTION_TIMEOUT,
             applies=lambda ctx: bool(ctx.params.get("delete_local", True))),
    ),
    teardown=common.teardown,
)
