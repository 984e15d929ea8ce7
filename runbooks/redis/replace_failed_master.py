"""redis.cluster-replace-failed-master: promote a replica of a failed master, forget the failed
node everywhere, and optionally attach a fresh node as the new master's replica.

The pre-check picks the replica with the most replicated data and the way to promote it:
CLUSTER FAILOVER when the master still answers (a coordinated hand-over), FORCE when it is dead
but a majority of masters answer (they vote), TAKEOVER when even that majority is gone (no
vote: the replica takes the slots with a new epoch). A replica the cluster already promoted is
noted and the promotion skipped. `--param attach=HOST:PORT` names an empty cluster-enabled node
that knows no other node; it is introduced with CLUSTER MEET and made a replica of the new master
(alone, without `failed`, of the master with the fewest replicas). Bring a replacement up on the
dead master's address only after the promotion: the dead master's replicas reconnect to that
address and would full-sync from the empty node (the pre-check refuses while that is possible).
"""

from __future__ import annotations

import asyncio
import time

from dbops.engines.redis.data import parse_info
from dbops.engines.redis.topology import NodeLine
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.redis import common

WAIT_SECONDS = 60.0


async def check_failed(ctx: Context) -> Verdict:
    s = common.session(ctx)
    view = s.view
    if view is None:
        return Verdict(False, "the cluster could not be read")
    common.remember_nodes(ctx, view)
    if not ctx.params.get("failed"):
        if not ctx.params.get("attach"):
            return Verdict(False, "name the failed master (--param failed=NODE), a node to attach (--param attach=HOST:PORT), or both")
        ctx.state["mode"] = "attach-only"
        ctx.state["failed_reachable"] = True
        ctx.state["candidate"] = _fewest_replicas(ctx)
        return Verdict(True, f"no failed master named: only attaching, as a replica of {s.name(ctx.state['candidate'])} "
                             "(the master with the fewest replicas)")
    try:
        failed = s.resolve(str(ctx.params["failed"]))
    except ValueError as exc:
        return Verdict(False, str(exc))
    line = view.node(failed)
    assert line is not None
    reachable = failed in s.views  # it answered as itself (another node may answer on its address)
    waiting = [n for n in view.nodes if n.master_id == failed and n.address not in s.unreachable]
    if not reachable and line.address in s.strangers.values() and waiting:
        return Verdict(False, f"{line.address}, the failed master's address, answers as another node: its replicas "
                              f"({', '.join(s.name(n.node_id) for n in waiting)}) reconnect to that address and would "
                              "full-sync from it, losing their data. Stop that node now; attach it after the promotion")
    ctx.state["failed"] = failed
    ctx.state["failed_reachable"] = reachable
    replicas = [n for n in view.nodes if n.master_id == failed and n.address not in s.unreachable]
    if not line.slots:
        # The cluster already failed it over (or it never held slots): only forgetting is left.
        ctx.state["mode"] = "already"
        ctx.state["candidate"] = _fewest_replicas(ctx)
        return Verdict(True, f"{s.name(failed)} holds no slots (the cluster failed it over already): only forgetting it "
                             f"is left; a replica to attach would follow {s.name(ctx.state['candidate'])}")
    if not replicas:
        return Verdict(False, f"{s.name(failed)} has no reachable replica: its slots can only come back with it "
                              "(or from a backup: redis.restore-rdb)")
    offsets = {}
    for r in replicas:
        info = parse_info(common.text(await s.client(r.address).execute_command("INFO", "replication")))
        offsets[r.node_id] = int(info.get("slave_repl_offset", 0) or 0)
    best = max(replicas, key=lambda r: offsets[r.node_id])
    ms = [n for n in view.nodes if n.is_master and n.slots]
    answering = [n for n in ms if n.address not in s.unreachable]
    if reachable and not line.failed:
        mode = ""  # a coordinated failover: the master hands over with no write lost
    elif len(answering) > len(ms) // 2:
        mode = "FORCE"
    else:
        mode = "TAKEOVER"
    ctx.state["mode"] = mode
    ctx.state["candidate"] = best.node_id
    how = {"": "CLUSTER FAILOVER (the master answers: coordinated, no write lost)",
           "FORCE": "CLUSTER FAILOVER FORCE (the master is dead; the other masters vote)",
           "TAKEOVER": f"CLUSTER FAILOVER TAKEOVER (only {len(answering)} of {len(ms)} masters answer: no vote possible)"}[mode]
    return Verdict(True, f"promote {s.name(best.node_id)} (replication offset {offsets[best.node_id]}"
                         + (f"; others {', '.join(f'{s.name(k)} {v}' for k, v in offsets.items() if k != best.node_id)}" if len(offsets) > 1 else "")
                         + f") with {how}")


def _fewest_replicas(ctx: Context) -> str:
    """The master a fresh replica helps most: the one with the fewest replicas."""
    s = common.session(ctx)
    assert s.view is not None
    masters = [n for n in s.view.nodes if n.is_master and not n.failed and n.slots and n.address not in s.unreachable]
    return min(masters, key=lambda m: (sum(1 for n in s.view.nodes if n.master_id == m.node_id), s.name(m.node_id))).node_id


async def check_attach(ctx: Context) -> Verdict:
    address = str(ctx.params.get("attach") or "")
    if not address:
        return Verdict(True, "no node to attach")
    s = common.session(ctx)
    try:
        info = await s.info(address, "cluster", "keyspace")
        known = parse_info(common.text(await s.client(address).execute_command("CLUSTER", "INFO")))
    except Exception as exc:  # the node to attach must answer: say why it does not
        from dbops.engines.redis import client as rc

        return Verdict(False, f"{address}: {rc.classify(exc, address, ctx.ref.timeout, s.creds.password)[1]}")
    if info.get("cluster_enabled") != "1":
        return Verdict(False, f"{address} is not a cluster node (cluster-enabled no)")
    keys = sum(1 for k in info if k.startswith("db"))
    if keys or known.get("cluster_known_nodes") != "1":
        return Verdict(False, f"{address} is not empty: {known.get('cluster_known_nodes')} known nodes, "
                              f"{'keys' if keys else 'no keys'}; attach only a fresh node (FLUSHALL + CLUSTER RESET HARD on it)")
    return Verdict(True, f"{address} is an empty cluster node that knows no other")


def _candidate(ctx: Context) -> str:
    return ctx.state["names"].get(ctx.state["candidate"], ctx.state["candidate"])


def _failed(ctx: Context) -> str:
    return ctx.state["names"].get(ctx.state["failed"], ctx.state["failed"])


async def do_promote(ctx: Context) -> None:
    s = common.session(ctx)
    cand = ctx.state["candidate"]
    address = ctx.state["addresses"][cand]
    mode = ctx.state["mode"]
    await s.client(address).execute_command("CLUSTER", "FAILOVER", *([mode] if mode else []))
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        view = await s.refresh()
        me = view.node(cand)
        if me is not None and me.is_master and me.slots:
            ctx.log(f"{_candidate(ctx)} is a master with {me.slot_count} slots")
            return
        await asyncio.sleep(0.25)
    raise RuntimeError(f"{_candidate(ctx)} did not become a master with the slots within {WAIT_SECONDS:g}s")


async def do_forget(ctx: Context) -> None:
    s = common.session(ctx)
    view = await s.refresh()
    failed = ctx.state["failed"]
    others = [n for n in view.nodes if n.node_id != failed and n.address not in s.unreachable]

    async def forget(n: NodeLine) -> str | None:
        try:
            await s.client(n.address).execute_command("CLUSTER", "FORGET", failed)
            return None
        except Exception as exc:  # one node refusing is reported by name; the others still forget
            return f"{s.name(n.node_id)}: {exc}"

    # All at once: a node that has not forgotten it yet would teach the others again after their
    # 60 s ban, so the whole cluster must forget within that window.
    problems = [p for p in await asyncio.gather(*(forget(n) for n in others)) if p and "Unknown node" not in p]
    if problems:
        raise RuntimeError("CLUSTER FORGET refused: " + "; ".join(problems))
    ctx.log(f"{len(others)} nodes forgot {_failed(ctx)}")


async def verify_forgotten(ctx: Context) -> Verdict:
    s = common.session(ctx)
    await s.refresh()
    knows = [s.name(nid) for nid, lines in s.views.items() if any(n.node_id == ctx.state["failed"] for n in lines)]
    return Verdict(not knows, f"still known to {', '.join(knows)}" if knows else f"no node knows {ctx.state['failed'][:8]} any more")


async def do_attach(ctx: Context) -> None:
    s = common.session(ctx)
    address = str(ctx.params["attach"])
    view = s.view or await s.refresh()
    line = view.node(ctx.state["candidate"])
    if line is None:
        raise RuntimeError(f"{_candidate(ctx)} is no longer in the cluster")
    host, _, port = line.address.rpartition(":")
    c = s.client(address)
    # The bus port too: it is not always port + 10000 (and cannot be above 55535).
    await c.execute_command("CLUSTER", "MEET", host, int(port), *([line.bus_port] if line.bus_port else []))
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        nodes = common.text(await c.execute_command("CLUSTER", "NODES"))
        if ctx.state["candidate"] in nodes:
            break
        await asyncio.sleep(0.2)
    else:
        raise RuntimeError(f"{address} did not learn of {_candidate(ctx)} within {WAIT_SECONDS:g}s after CLUSTER MEET")
    await c.execute_command("CLUSTER", "REPLICATE", ctx.state["candidate"])
    while time.monotonic() < deadline:
        info = parse_info(common.text(await c.execute_command("INFO", "replication")))
        if info.get("role") == "slave" and info.get("master_link_status") == "up":
            ctx.log(f"{address} replicates {_candidate(ctx)}, link up")
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{address} did not finish syncing from {_candidate(ctx)} within {WAIT_SECONDS:g}s")


async def do_verify(ctx: Context) -> None:
    (await common.verify_cluster(ctx)).require(ctx.log)


def _promote_cmds(ctx: Context) -> list[str]:
    if "candidate" not in ctx.state:
        return ["CLUSTER FAILOVER [FORCE|TAKEOVER]   # on the chosen replica"]
    mode = ctx.state.get("mode", "")
    return [f"CLUSTER FAILOVER{' ' + mode if mode else ''}   # on {_candidate(ctx)} "
            f"({ctx.state['addresses'][ctx.state['candidate']]})",
            "CLUSTER NODES   # until it is a master holding the slots"]


RUNBOOK = Runbook(
    id="redis.cluster-replace-failed-master",
    title="Replace a failed Redis Cluster master: promote a replica, forget the node",
    params=(
        Param("failed", "the failed master (member name, node id or host:port)", default=""),
        Param("attach", "HOST:PORT of an empty cluster node to make the new master's replica", default=""),
        Param("expect_writes", "clients write meanwhile: report, do not require, an unchanged key count", type=bool, default=True),
    ),
    prechecks=(
        Check("cluster", "the cluster answers", lambda ctx: _read(ctx)),
        Check("failed", "the failed master, its best replica and how to promote it", check_failed),
        Check("attach", "the node to attach is empty and alone", check_attach),
    ),
    steps=(
        Step("promote", "Promote the replica", "CLUSTER FAILOVER (FORCE or TAKEOVER when the master is dead) on the "
             "replica, then wait until it holds the slots", Kind.ACTION, _promote_cmds, run=do_promote,
             confirm=Confirm.YES_NO, timeout=WAIT_SECONDS + 30,
             applies=lambda ctx: ctx.state.get("mode") not in ("already", "attach-only"),
             on_failure="dbops check shows the cluster; a FORCE needs a majority of masters (TAKEOVER does not)"),
        Step("forget", "Forget the failed node", "CLUSTER FORGET on every node at once (within the 60 s ban window)",
             Kind.ACTION, lambda ctx: [f"CLUSTER FORGET {ctx.state.get('failed', '<failed node id>')}   # on every other node, concurrently"],
             run=do_forget, verify=verify_forgotten, confirm=Confirm.YES_NO, timeout=60.0,
             applies=lambda ctx: not ctx.state.get("failed_reachable")),
        Step("attach", "Attach a fresh replica", "CLUSTER MEET from the new node, then CLUSTER REPLICATE the new master",
             Kind.ACTION, lambda ctx: [f"CLUSTER MEET <new master host> <port> <bus port>   # on {ctx.params.get('attach')}",
                                       f"CLUSTER REPLICATE {ctx.state.get('candidate', '<new master id>')}   # on {ctx.params.get('attach')}"],
             run=do_attach, confirm=Confirm.YES_NO, timeout=2 * WAIT_SECONDS, applies=lambda ctx: bool(ctx.params.get("attach"))),
        Step("verify", "Verify", "all slots covered, none open, every node agrees", Kind.CHECK,
             lambda ctx: ["CLUSTER NODES   # on every node"], run=do_verify, timeout=120.0),
    ),
    setup=common.setup,
    teardown=common.teardown,
)


async def _read(ctx: Context) -> Verdict:
    s = common.session(ctx)
    view = await s.refresh()
    common.remember_nodes(ctx, view)
    ctx.state["keys_before"] = await s.total_keys()
    down = [s.name(n.node_id) for n in view.nodes if n.address in s.unreachable]
    return Verdict(True, f"{len(view.nodes)} nodes" + (f"; not answering: {', '.join(down)}" if down else ""))
