"""qdrant.restore-from-s3: put a collection back from a snapshot set in S3, on every node.

The pre-check picks the newest complete set of the collection's snapshots (one per node, made by
one qdrant.snapshot-to-s3 run; --param snapshot= names another set by its run id, or by one of its
snapshots or object keys) and checks that every node of the set is in the config and answers.
Each object is streamed back and checked against its manifest's SHA-256 before anything changes.
Then every node is given a presigned GET URL of its own snapshot (valid one hour; never shown or
audited) in PUT /collections/{c}/snapshots/recover with the manifest's SHA-256 as `checksum` (the
node refuses a file that does not match) and `priority` (default snapshot: the snapshot's data wins
over what replicas hold now). The verification waits until the exact point count equals the one
recorded at snapshot time and every node reports the collection green, then the aliases recorded
at snapshot time are put back.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from dbops.engines.qdrant.client import QdrantError
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.qdrant import common
from dbops.runbooks.qdrant.common import ACTION_TIMEOUT, KIND

PRIORITIES = ("snapshot", "replica", "no_sync")
PRESIGN_SECONDS = 3600
SETTLE_SECONDS = 120.0


def _collection(ctx: Context) -> str:
    return str(ctx.params["collection"])


def _priority(ctx: Context) -> str:
    return str(ctx.params.get("priority") or "snapshot")


async def check_set(ctx: Context) -> Verdict:
    from dbops.platform import s3

    loc = common.location(ctx)
    if loc is None:
        return Verdict(False, f"no backup location for {ctx.ref.name}: add [...clusters.{ctx.ref.name}.backups] s3 = {{ bucket = ... }}")
    if _priority(ctx) not in PRIORITIES:
        return Verdict(False, f"--param priority: {_priority(ctx)!r} is not one of {', '.join(PRIORITIES)}")
    try:
        found = await asyncio.to_thread(s3.list_backups, loc, KIND)
    except s3.S3Error as exc:
        return Verdict(False, exc.message)
    name = _collection(ctx)
    mine = [m for m in found if m.meta.get("cluster") == ctx.ref.name and m.meta.get("collection") == name]
    if not mine:
        return Verdict(False, f"no snapshot of collection {name} of {ctx.ref.name} under {common.location_text(ctx)}")
    sets: dict[str, list[Any]] = {}
    for m in mine:  # newest first
        sets.setdefault(m.meta.get("run_id", m.key), []).append(m)
    wanted = str(ctx.params.get("snapshot") or "")
    if wanted:
        chosen = next((rid for rid, ms in sets.items()
                       if wanted == rid or any(wanted in (m.key, m.meta.get("snapshot"), m.key.rsplit("/", 1)[-1]) for m in ms)), None)
        if chosen is None:
            return Verdict(False, f"no snapshot set of {name} matches {wanted!r}; sets: {', '.join(list(sets)[:6])}")
    else:
        complete = [rid for rid, ms in sets.items() if len(ms) == int(ms[0].meta.get("set_size", len(ms)))]
        if not complete:
            return Verdict(False, f"no complete snapshot set of {name}: every set lacks a node's snapshot")
        chosen = complete[0]
    members = {m.name for m in ctx.ref.cluster.members}
    items = sets[chosen]
    if len(items) != int(items[0].meta.get("set_size", len(items))):
        return Verdict(False, f"set {chosen} holds {len(items)} of {items[0].meta.get('set_size')} node snapshots")
    unknown = [m.meta.get("node", "?") for m in items if m.meta.get("node") not in members]
    if unknown:
        return Verdict(False, f"set {chosen} has snapshots of node(s) not in the config: {', '.join(unknown)}")
    items.sort(key=lambda m: [x.name for x in ctx.ref.cluster.members].index(m.meta["node"]))
    ctx.state["set"] = [{"node": m.meta["node"], "key": m.key, "sha256": m.sha256, "size": m.size,
                         "snapshot": m.meta.get("snapshot", "")} for m in items]
    ctx.state["set_id"] = chosen
    ctx.state["points"] = int(items[0].meta.get("points", "-1"))
    ctx.state["aliases"] = [a for a in items[0].meta.get("aliases", "").split(",") if a]
    created = min(m.created for m in items)
    return Verdict(True, f"set {chosen} of {created:%Y-%m-%d %H:%M} UTC: {len(items)} snapshot(s) "
                         f"({', '.join(m.meta['node'] for m in items)}), {ctx.state['points']} points"
                         + (f", aliases {', '.join(ctx.state['aliases'])}" if ctx.state["aliases"] else ""))


async def check_nodes(ctx: Context) -> Verdict:
    try:
        data = await common.refresh(ctx)
    except QdrantError as exc:
        return Verdict(False, exc.message)
    wanted = [t["node"] for t in ctx.state.get("set", [])] or [m.name for m in ctx.ref.cluster.members]
    down = [n for n in data.nodes if n.name in wanted and not n.up]
    if down:
        return Verdict(False, "every node of the set must answer: " + "; ".join(f"{n.name}: {n.error}" for n in down))
    name = _collection(ctx)
    now = next((c for c in data.collections() if c.name == name), None)
    what = f"{name} now: {now.status}, {now.points if now.points is not None else '?'} points" if now else f"{name} does not exist now"
    return Verdict(True, f"{len(wanted)} node(s) answer; {what}")


async def do_verify_objects(ctx: Context) -> None:
    from dbops.platform import s3

    for t in ctx.state["set"]:
        m = await asyncio.to_thread(s3.verify_object, common.location(ctx), t["key"],
                                    lambda done, total: ctx.progress(done, total, "bytes"))
        ctx.log(f"{t['node']}: {m.key}: {m.size} bytes, SHA-256 matches the manifest")


def recover_commands(ctx: Context) -> list[str]:
    loc = common.location(ctx)
    lines = []
    for t in ctx.state.get("set", []):
        lines.append(f"PUT {common.base_url(ctx, t['node'])}/collections/{_collection(ctx)}/snapshots/recover?wait=true   # {t['node']}")
        lines.append(f"  {{location: <presigned GET of s3://{loc.bucket if loc else '?'}/{t['key']}, {PRESIGN_SECONDS // 60} min>, "
                     f"priority: {_priority(ctx)}, checksum: {t['sha256']}}}")
    return lines or ["# the snapshot set is chosen by the pre-check"]


def presigned_url(ctx: Context, key: str) -> str:
    from dbops.platform import s3

    loc = common.location(ctx)
    return s3.client(loc).generate_presigned_url("get_object", Params={"Bucket": loc.bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS)


async def do_recover(ctx: Context) -> None:
    from qdrant_client.http.models import SnapshotPriority

    name = _collection(ctx)
    priority = SnapshotPriority(_priority(ctx))
    for t in ctx.state["set"]:
        url = await asyncio.to_thread(presigned_url, ctx, t["key"])
        c = common.node(ctx, t["node"])
        try:
            await c.call(f"recovering {name} from {t['key']}",
                         lambda q, url=url, sha256=t["sha256"]: q.recover_snapshot(name, location=url, checksum=sha256,
                                                                                   priority=priority, wait=True),
                         timeout=ACTION_TIMEOUT)
        except QdrantError as exc:
            # The presigned URL carries a signature: it never reaches a message, the screen or the audit log.
            raise QdrantError(_without(exc.message, url), exc.reachability, exc.status) from None
        ctx.log(f"{t['node']}: recovered {name} from {t['snapshot'] or t['key']} (priority {priority.value})")


# A presigned URL's credentials, wherever they appear (a message may hold the URL cut short, or
# its query string alone): SigV4's X-Amz-Signature, -Credential and -Security-Token, SigV2's
# Signature and AWSAccessKeyId.
_PRESIGNED_PARAMS = re.compile(r"(?i)\b(X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId)=[^&\s\"'<>]*")


def _without(text: str, url: str) -> str:
    base, _, query = url.partition("?")
    text = text.replace(url, base + "?<signature removed>")
    if query:
        text = text.replace(query, "<signature removed>")
    return _PRESIGNED_PARAMS.sub(lambda m: f"{m.group(1)}=<removed>", text)


async def wait_restored(ctx: Context) -> Verdict:
    name = _collection(ctx)
    expected = ctx.state["points"]
    deadline = time.monotonic() + SETTLE_SECONDS
    last = "nothing read yet"
    while True:
        try:
            data = await common.refresh(ctx)
            first = common.node(ctx, next(n.name for n in data.nodes if n.up))
            counted = await first.call(f"counting {name}", lambda q: q.count(name, exact=True))
            statuses = {n.name: (n.collection(name).status if n.collection(name) else "missing") for n in data.nodes if n.up}
            down = [n.name for n in data.nodes if not n.up]
            last = f"{counted.count} points (snapshot: {expected}); status " + ", ".join(f"{k}: {v}" for k, v in statuses.items())
            if down:
                last += f"; not answering: {', '.join(down)}"
            if int(counted.count) == expected and all(s == "green" for s in statuses.values()) and not down:
                return Verdict(True, f"{name}: {counted.count} points, as at snapshot time; green on every node")
        except QdrantError as exc:
            last = exc.message
        if time.monotonic() > deadline:
            return Verdict(False, f"{name} not restored within {SETTLE_SECONDS:g}s: {last}")
        await asyncio.sleep(0.5)


async def do_wait(ctx: Context) -> None:
    verdict = await wait_restored(ctx)
    ctx.log(verdict.detail)
    if not verdict.ok:
        raise RuntimeError(verdict.detail)


def alias_commands(ctx: Context) -> list[str]:
    aliases = ctx.state.get("aliases", [])
    if not aliases:
        return ["# no alias recorded at snapshot time"]
    actions = ", ".join(f"{{create_alias: {{alias_name: {a}, collection_name: {_collection(ctx)}}}}}" for a in aliases)
    return [f"POST /collections/aliases {{actions: [{actions}]}}   # only those not already pointing at {_collection(ctx)}"]


async def do_aliases(ctx: Context) -> None:
    from qdrant_client.http.models import CreateAlias, CreateAliasOperation

    name = _collection(ctx)
    data = await common.refresh(ctx)
    c = common.node(ctx, next(n.name for n in data.nodes if n.up))
    now = await c.call(f"reading the aliases of {name}", lambda q: q.get_collection_aliases(name))
    present = {a.alias_name for a in now.aliases}
    missing = [a for a in ctx.state["aliases"] if a not in present]
    if not missing:
        ctx.log(f"every recorded alias already points at {name}: {', '.join(ctx.state['aliases'])}")
        return
    ops = [CreateAliasOperation(create_alias=CreateAlias(collection_name=name, alias_name=a)) for a in missing]
    await c.call("creating aliases", lambda q: q.update_collection_aliases(change_aliases_operations=ops), timeout=ACTION_TIMEOUT)
    ctx.log(f"aliases {', '.join(missing)} -> {name}")


async def verify_aliases(ctx: Context) -> Verdict:
    name = _collection(ctx)
    data = await common.refresh(ctx)
    c = common.node(ctx, next(n.name for n in data.nodes if n.up))
    now = await c.call(f"reading the aliases of {name}", lambda q: q.get_collection_aliases(name))
    missing = [a for a in ctx.state["aliases"] if a not in {x.alias_name for x in now.aliases}]
    if missing:
        return Verdict(False, f"alias(es) {', '.join(missing)} do not point at {name}")
    return Verdict(True, f"aliases {', '.join(ctx.state['aliases'])} point at {name}")


RUNBOOK = Runbook(
    id="qdrant.restore-from-s3",
    title="Restore a Qdrant collection from its snapshots in S3, on every node",
    params=(Param("collection", "the collection to restore", required=True),
            Param("snapshot", "the set to restore: a run id, a snapshot name or an object key (default: the newest complete set)",
                  default=""),
            Param("priority", "snapshot (the snapshot's data wins), replica (live replicas win) or no_sync", default="snapshot")),
    prechecks=(
        Check("key", "the runbook's API key may change the cluster", common.check_key),
        Check("set", "a complete snapshot set of the collection in S3", check_set),
        Check("nodes", "every node of the set answers", check_nodes),
    ),
    steps=(
        Step("verify-objects", "Check the snapshots in S3", "streams each back and compares its SHA-256 with its manifest, "
             "before anything changes", Kind.CHECK,
             lambda ctx: [f"GET s3://…/{t['key']}  -- SHA-256 compared with the manifest" for t in ctx.state.get("set", [])],
             run=do_verify_objects, timeout=6 * 3600.0),
        Step("recover", "Recover the collection on every node", "each node downloads its own snapshot through a presigned "
             "URL and replaces its copy of the collection with it (checked against the manifest's SHA-256)",
             Kind.ACTION, recover_commands, run=do_recover, destructive=True, confirm=Confirm.TYPE_CLUSTER,
             timeout=ACTION_TIMEOUT * 3, on_failure="nodes already recovered hold the snapshot's data; run again to "
                                                    "recover the rest (recovering twice is harmless)"),
        Step("wait", "Wait for the collection", f"until the exact point count is the snapshot's and every node reports "
             f"green (up to {SETTLE_SECONDS:g}s)", Kind.WAIT,
             lambda ctx: [f"POST /collections/{_collection(ctx)}/points/count {{exact: true}}  -- until {ctx.state.get('points', '?')}",
                          f"GET /collections/{_collection(ctx)}  -- on every node, until green"],
             run=do_wait, verify=wait_restored, timeout=SETTLE_SECONDS + 60),
        Step("aliases", "Recreate the aliases", "the aliases the collection had at snapshot time", Kind.ACTION, alias_commands,
             run=do_aliases, verify=verify_aliases, confirm=Confirm.YES_NO, timeout=ACTION_TIMEOUT,
             applies=lambda ctx: bool(ctx.state.get("aliases"))),
    ),
    teardown=common.teardown,
)

