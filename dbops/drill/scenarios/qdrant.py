"""Qdrant drill: a shard replica goes Dead (its node missed updates), and is rebuilt."""

from __future__ import annotations

from typing import Any

from dbops.config import ClusterRef
from dbops.drill.model import DrillContext, Fault, Recovery, Scenario
from dbops.runbook.hosts import HostOp, Verb
from dbops.runbook.model import Verdict


def _applies(ref: ClusterRef) -> str | None:
    if ref.cluster.engine != "qdrant":
        return f"it is a {ref.cluster.engine} cluster"
    if len(ref.cluster.members) < 2:
        return "it has one node: there is no replica to lose"
    return None


def _collection(ctx: DrillContext) -> str:
    probe: Any = ctx.probe
    return str(getattr(probe, "collection", "<the drill's probe collection>"))


def _victim(ctx: DrillContext) -> str:
    return ctx.ref.cluster.members[-1].name


def commands(ctx: DrillContext) -> list[str]:
    return ctx.hosts.render(HostOp(Verb.RUN, _victim(ctx), ("replica-state", _collection(ctx), "0", "Dead"), manual=(
        f"# {_victim(ctx)} misses updates to shard 0 of {_collection(ctx)}: stop its Qdrant while the probe writes,",
        "# start it again, and check GET /collections/<collection>/cluster shows its replica Dead",
    ))) or [f"the sandbox's Qdrant marks shard 0 of {_collection(ctx)} on {_victim(ctx)} Dead"]


async def inject(ctx: DrillContext) -> str:
    r = await ctx.hosts.perform(HostOp(Verb.RUN, _victim(ctx), ("replica-state", _collection(ctx), "0", "Dead")))
    if not r.ok:
        raise RuntimeError(r.detail)
    return r.detail


async def heal(ctx: DrillContext) -> str:
    r = await ctx.hosts.perform(HostOp(Verb.RUN, _victim(ctx), ("replica-state", _collection(ctx), "0", "Active")))
    return r.detail


async def params(ctx: DrillContext) -> dict[str, str]:
    return {"collection": _collection(ctx)}


async def verify(ctx: DrillContext) -> list[Verdict]:
    from dbops.poller import poll_once

    health = (await poll_once([ctx.ref]))[0]
    dead = [p for p in health.problems if "Dead" in p or "dead" in p]
    return [Verdict(not dead, "no Dead replica left" if not dead else "; ".join(dead[:3]))]


SCENARIOS = [
    Scenario(
        id="qdrant-replica-loss",
        title="Lose a Qdrant shard replica: rebuild it from a healthy peer",
        engine="qdrant",
        description="A replica of the probe's collection goes Dead (its node missed updates); qdrant.recover-dead-replica "
                    "copies it back from an Active peer; the probe upserts throughout.",
        fault=Fault("a shard replica goes Dead", commands, inject, heal=heal),
        recovery=(Recovery("qdrant.recover-dead-replica", params, "copy the Dead replica back from an Active peer"),),
        applies=_applies,
        verify=verify,
    ),
]
