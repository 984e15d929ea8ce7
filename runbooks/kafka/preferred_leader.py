"""kafka.preferred-leader-election: give leadership back to each partition's preferred replica.

After a broker restarts it leads nothing until an election (auto.leader.rebalance.enable runs
one every leader.imbalance.check.interval.seconds, 300 s by default, and only past a 10%
imbalance): the other brokers carry its load meanwhile. Pre-check: partitions whose leader is not
their preferred (first) replica, split into those that can be moved now (the preferred replica is
in the ISR) and those that cannot. One ElectLeaders request (type PREFERRED) for the movable ones,
then the metadata is read until every one of them is led by its preferred replica.
"""

from __future__ import annotations

import asyncio
import time

from dbops.engines.kafka import client as kc
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.kafka import common

SETTLE_SECONDS = 30.0


def _wanted(ctx: Context, topic: str) -> bool:
    only = ctx.params.get("topic")
    return not only or topic == only


async def check_candidates(ctx: Context) -> Verdict:
    brokers, topics, _ = await common.metadata(ctx)
    if ctx.params.get("topic") and not any(t.name == ctx.params["topic"] for t in topics):
        return Verdict(False, f"no topic {ctx.params['topic']!r} in {ctx.ref.name}")
    movable, stuck = [], []
    for t in topics:
        if not _wanted(ctx, t.name):
            continue
        for p in t.partitions:
            if p.leader_is_preferred:
                continue
            if p.preferred_leader in p.isr:
                movable.append([p.topic, p.partition, p.leader, p.preferred_leader])
            else:
                stuck.append(f"{common.tp(p)} (preferred {common.broker_label(brokers, p.preferred_leader or -1)} is not in the ISR)")
    ctx.state["movable"] = movable
    ctx.state["brokers"] = {str(b.node_id): b.name for b in brokers if b.node_id is not None}
    extra = f"; cannot move yet: {', '.join(stuck[:5])}{' …' if len(stuck) > 5 else ''}" if stuck else ""
    if not movable:
        return Verdict(True, "every partition is led by its preferred replica" + (" where it can be" if stuck else "") + extra)
    return Verdict(True, f"{len(movable)} partition(s) can move to their preferred leader{extra}")


def _name(ctx: Context, node: int) -> str:
    return ctx.state.get("brokers", {}).get(str(node), str(node))


def render(ctx: Context) -> list[str]:
    movable = ctx.state.get("movable")
    if movable is None:
        return ["# the partitions are found by the pre-check"]
    lines = [f"ElectLeaders type=PREFERRED for {len(movable)} partition(s)   # to the controller"]
    lines += [f"  {t}/{p}: leader {_name(ctx, old)} -> {_name(ctx, new)}" for t, p, old, new in movable]
    return lines


async def do_elect(ctx: Context) -> None:
    partitions: dict[str, list[int]] = {}
    for t, p, _old, _new in ctx.state["movable"]:
        partitions.setdefault(t, []).append(p)
    from aiokafka.errors import KafkaTimeoutError, RequestTimedOutError

    timeout_ms = int(ctx.ref.timeout * 1000)
    try:
        results = await asyncio.wait_for(kc.elect_preferred_leaders(await common.admin(ctx), partitions, timeout_ms),
                                         timeout=ctx.ref.timeout * 3)
    except (TimeoutError, KafkaTimeoutError, RequestTimedOutError):
        # The controller may still have moved them: the verification reads the metadata and says.
        ctx.log(f"no answer to ElectLeaders within {ctx.ref.timeout:g}s; reading the metadata to see what moved")
        return
    failed = {f"{t}/{p}": why for (t, p), why in results.items() if why is not None}
    ctx.state["elected"] = len(results) - len(failed)
    ctx.log(f"the controller elected {len(results) - len(failed)} preferred leader(s)")
    if failed:
        raise RuntimeError(f"{len(failed)} partition(s) not moved: " + "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:6]))


async def verify_elected(ctx: Context) -> Verdict:
    """Metadata propagates to every broker shortly after the election: read until it shows."""
    wanted = {(t, p): new for t, p, _old, new in ctx.state["movable"]}
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        _, topics, _ = await common.metadata(ctx)
        leaders = {(p.topic, p.partition): p.leader for t in topics for p in t.partitions}
        wrong = [f"{t}/{p}: led by {_name(ctx, leaders.get((t, p), -1))}" for (t, p), new in wanted.items() if leaders.get((t, p)) != new]
        if not wrong:
            return Verdict(True, f"all {len(wanted)} partition(s) are led by their preferred replica")
        if time.monotonic() > deadline:
            return Verdict(False, f"{len(wrong)} partition(s) still not led by their preferred replica: {'; '.join(wrong[:6])}")
        await asyncio.sleep(0.5)


RUNBOOK = Runbook(
    id="kafka.preferred-leader-election",
    title="Move partition leadership back to the preferred replicas",
    params=(Param("topic", "only this topic (default: every topic)", default=""),),
    prechecks=(Check("candidates", "partitions not led by their preferred replica", check_candidates),),
    steps=(
        Step("elect", "Elect the preferred leaders", "one ElectLeaders request (PREFERRED) for every movable partition",
             Kind.ACTION, render, run=do_elect, verify=verify_elected, confirm=Confirm.YES_NO, timeout=SETTLE_SECONDS + 30,
             applies=lambda ctx: bool(ctx.state.get("movable")),
             on_failure="a partition whose preferred replica fell out of the ISR meanwhile stays where it is; run again later"),
    ),
    teardown=common.teardown,
)
