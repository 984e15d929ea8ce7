"""qdrant.recover-dead-replica: copy a Dead shard replica back from a healthy peer.

A replica goes Dead when it misses updates (its node was down or slow during a write); it serves
nothing until it is rebuilt. The pre-check reads every node and finds the Dead replicas (or the
one named with --param collection=, shard=, peer= (a peer id or a node name)), each with an
Active replica of the same shard on a node that answers as the source. One replicate_shard
request per Dead replica (POST /collections/{c}/cluster) starts a transfer from the source to the
Dead replica's peer; the wait step follows the transfers until every target replica is Active,
and the verification compares its point count with the source's.

What Qdrant does (1.19's source): replicate_shard onto a peer that holds a Dead replica is
accepted as it is, no drop_replica first. The REST handler only checks that the shard and both
peers exist (src/common/collections.rs, do_update_collection_cluster); consensus' validate_transfer
(lib/collection/src/shards/transfer/helpers.rs) wants an Active source replica and no transfer of
the same shard involving either peer ("Shard s is already involved in transfer a -> b"); and
Collection::start_shard_transfer (lib/collection/src/collection/shard_transfer.rs) turns the
receiver's existing replica Partial and rebuilds it. Qdrant also recovers a Dead replica by itself:
its node asks for such a transfer from an Active peer (Collection::sync_local_state,
lib/collection/src/collection/mod.rs) unless transfer limits or a failing source hold it back. So
the replicate step reads the cluster again right before each request: a replica that is no longer
Dead (Qdrant recovered it, or its own transfer is running) is only waited for, never replicated
onto again (a replicate onto an Active replica is accepted too, and would take it out of reads
while it is copied again).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from dbops.engines.qdrant.client import QdrantError
from dbops.engines.qdrant.data import ACTIVE, DEAD, QdrantData
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.qdrant import common
from dbops.runbooks.qdrant.common import ACTION_TIMEOUT

TRANSFER_SECONDS = 1800.0


def _peer_wanted(ctx: Context, data: QdrantData, peer: int) -> bool:
    wanted = str(ctx.params.get("peer") or "")
    return not wanted or wanted == str(peer) or wanted == data.peer_names().get(peer)


async def check_dead(ctx: Context) -> Verdict:
    try:
        data = await common.refresh(ctx)
    except QdrantError as exc:
        return Verdict(False, exc.message)
    collection = str(ctx.params.get("collection") or "")
    shard = ctx.params.get("shard")
    if collection and collection not in data.collection_names():
        return Verdict(False, f"no collection {collection!r} (collections: {', '.join(data.collection_names()) or 'none'})")
    replicas = data.replicas()
    dead = [r for r in replicas if r.state == DEAD and (not collection or r.collection == collection)
            and (shard is None or r.shard_id == int(shard)) and _peer_wanted(ctx, data, r.peer_id)]
    targets, stuck = [], []
    for r in dead:
        holder = data.node_of_peer(r.peer_id)
        if holder is None or not holder.up:
            stuck.append(f"{r.collection}/{r.shard_id} on {data.peer_name(r.peer_id)}: its node does not answer; bring it back first")
            continue
        # Qdrant refuses a transfer of a shard whose running transfer involves either peer.
        busy = {p for t in data.transfers() if t.collection == r.collection and t.shard_id == r.shard_id
                for p in (t.from_peer, t.to_peer)}
        sources = [s for s in replicas if s.collection == r.collection and s.shard_id == r.shard_id and s.state == ACTIVE
                   and s.peer_id not in busy
                   and data.node_of_peer(s.peer_id) is not None and data.node_of_peer(s.peer_id).up]  # type: ignore[union-attr]
        if not sources:
            why = "every Active replica is in a transfer of that shard now: wait for it" if busy else \
                "no Active replica on a node that answers"
            stuck.append(f"{r.collection}/{r.shard_id} on {data.peer_name(r.peer_id)}: {why}")
            continue
        src = max(sources, key=lambda s: s.points or 0)
        targets.append({"collection": r.collection, "shard": r.shard_id, "to_peer": r.peer_id, "to": data.peer_name(r.peer_id),
                        "from_peer": src.peer_id, "from": data.peer_name(src.peer_id),
                        "via": data.peer_name(src.peer_id) if data.node_of_peer(src.peer_id) else data.up_nodes()[0].name})
    ctx.state["targets"] = targets
    chosen = " matching " + ", ".join(f"{k}={ctx.params[k]}" for k in ("collection", "shard", "peer") if ctx.params.get(k) not in (None, "")) \
        if any(ctx.params.get(k) not in (None, "") for k in ("collection", "shard", "peer")) else ""
    if stuck and not targets:
        return Verdict(False, "cannot recover: " + "; ".join(stuck))
    if not targets:
        return Verdict(True, f"no Dead replica{chosen}: nothing to do")
    extra = f"; cannot recover yet: {'; '.join(stuck)}" if stuck else ""
    return Verdict(True, "; ".join(f"{t['collection']}/{t['shard']} on {t['to']} is Dead: copy from {t['from']}" for t in targets) + extra)


def replicate_commands(ctx: Context) -> list[str]:
    targets = ctx.state.get("targets")
    if targets is None:
        return ["# the Dead replicas are found by the pre-check"]
    return [f"POST {common.base_url(ctx, t['via'])}/collections/{t['collection']}/cluster "
            f"{{replicate_shard: {{shard_id: {t['shard']}, from_peer_id: {t['from_peer']}, to_peer_id: {t['to_peer']}}}}}"
            f"   # {t['from']} -> {t['to']}" for t in targets]


def _already_recovering(data: QdrantData, t: dict[str, Any]) -> str | None:
    """Why the target gets no replicate_shard now (Qdrant recovered it or is recovering it, or it
    was dropped), or None while it is still Dead with no transfer to it."""
    state = next((r.state for r in data.replicas()
                  if (r.collection, r.shard_id, r.peer_id) == (t["collection"], t["shard"], t["to_peer"])), None)
    running = next((x for x in data.transfers()
                    if (x.collection, x.shard_id, x.to_peer) == (t["collection"], t["shard"], t["to_peer"])), None)
    if running is not None:
        return f"a transfer {data.peer_name(running.from_peer)} -> {t['to']} is already running (Qdrant's own recovery)"
    if state is None:
        return "the replica is gone (dropped meanwhile)"
    return None if state == DEAD else f"no longer Dead ({state})"


async def do_replicate(ctx: Context) -> None:
    data = await common.refresh(ctx)
    for t in ctx.state["targets"]:
        label = f"{t['collection']}/{t['shard']} on {t['to']}"
        why = _already_recovering(data, t)
        if why is not None:
            ctx.log(f"{label}: {why}; not replicated again, waited for")
            continue
        body = {"replicate_shard": {"shard_id": t["shard"], "from_peer_id": t["from_peer"], "to_peer_id": t["to_peer"]}}
        try:
            await common.node(ctx, t["via"]).request("POST", f"/collections/{t['collection']}/cluster", body=body,
                                                     doing=f"replicate_shard {t['collection']}/{t['shard']}", timeout=ACTION_TIMEOUT)
        except QdrantError as exc:
            # Qdrant's own recovery may have started between the read above and this request:
            # it refuses ours with "already involved in transfer"; that transfer is then waited for.
            if exc.status != 400 or "already involved in transfer" not in exc.message:
                raise
            why = _already_recovering(await common.refresh(ctx), t)
            if why is None:
                raise
            ctx.log(f"{label}: {why}; not replicated again, waited for")
            continue
        ctx.log(f"{t['collection']}/{t['shard']}: transfer {t['from']} -> {t['to']} started")


def _progress(ctx: Context, data: QdrantData) -> tuple[list[str], list[str]]:
    """(what is still on its way, what is wrong) for every target."""
    replicas = {(r.collection, r.shard_id, r.peer_id): r for r in data.replicas()}
    transfers = {(x.collection, x.shard_id, x.to_peer): x for x in data.transfers()}
    waiting, wrong = [], []
    for t in ctx.state["targets"]:
        r = replicas.get((t["collection"], t["shard"], t["to_peer"]))
        x = transfers.get((t["collection"], t["shard"], t["to_peer"]))
        label = f"{t['collection']}/{t['shard']} on {t['to']}"
        if x is not None:
            waiting.append(f"{label}: transfer running{' (' + x.comment + ')' if x.comment else ''}")
        elif r is None:
            wrong.append(f"{label}: the replica is gone")
        elif r.state == DEAD:
            wrong.append(f"{label}: Dead again, no transfer running (the transfer failed: see the source node's log)")
        elif r.state != ACTIVE:
            waiting.append(f"{label}: {r.state}")
    return waiting, wrong


async def do_wait(ctx: Context) -> None:
    deadline = time.monotonic() + TRANSFER_SECONDS
    said = ""
    while True:
        data = await common.refresh(ctx)
        waiting, wrong = _progress(ctx, data)
        if wrong:
            raise RuntimeError("; ".join(wrong))
        if not waiting:
            ctx.log("every transfer finished")
            return
        if "; ".join(waiting) != said:
            said = "; ".join(waiting)
            ctx.log(said)
        if time.monotonic() > deadline:
            raise RuntimeError(f"still not Active after {TRANSFER_SECONDS:g}s: {said}")
        await asyncio.sleep(0.5)


async def verify_active(ctx: Context) -> Verdict:
    data = await common.refresh(ctx)
    replicas = {(r.collection, r.shard_id, r.peer_id): r for r in data.replicas()}
    good, bad = [], []
    for t in ctx.state["targets"]:
        r = replicas.get((t["collection"], t["shard"], t["to_peer"]))
        src = replicas.get((t["collection"], t["shard"], t["from_peer"]))
        label = f"{t['collection']}/{t['shard']} on {t['to']}"
        if r is None or r.state != ACTIVE:
            bad.append(f"{label} is {r.state if r else 'gone'}")
        elif src is not None and r.points != src.points:
            bad.append(f"{label} holds {r.points} points, {t['from']} holds {src.points if src else '?'}")
        else:
            good.append(f"{label} Active with {r.points} points, as on {t['from']}")
    return Verdict(not bad, "; ".join(bad or good))


RUNBOOK = Runbook(
    id="qdrant.recover-dead-replica",
    title="Recover Dead Qdrant shard replicas from a healthy peer",
    params=(Param("collection", "only this collection (default: every collection)", default=""),
            Param("shard", "only this shard id", type=int, default=None),
            Param("peer", "only the replica on this peer (a peer id or a node name)", default="")),
    prechecks=(
        Check("key", "the runbook's API key may change the cluster", common.check_key),
        Check("dead", "Dead replicas, each with an Active source on a node that answers", check_dead),
    ),
    steps=(
        Step("replicate", "Start the transfers", "replicate_shard from the Active replica to each Dead one",
             Kind.ACTION, replicate_commands, run=do_replicate, confirm=Confirm.YES_NO, timeout=ACTION_TIMEOUT,
             applies=lambda ctx: bool(ctx.state.get("targets")),
             on_failure="Qdrant's message says why (a transfer of that shard involving another peer already "
                        "running: wait for it, or abort_transfer it, then run the runbook again)"),
        Step("wait", "Wait for the transfers", "until every recovered replica is Active, following the transfers' progress",
             Kind.WAIT, lambda ctx: [f"GET /collections/{t['collection']}/cluster  -- until {t['collection']}/{t['shard']} on "
                                     f"{t['to']} is Active" for t in ctx.state.get("targets", [])],
             run=do_wait, verify=verify_active, timeout=TRANSFER_SECONDS + 60,
             applies=lambda ctx: bool(ctx.state.get("targets"))),
    ),
    teardown=common.teardown,
)
