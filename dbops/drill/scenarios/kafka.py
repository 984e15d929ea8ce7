"""Kafka drill: a broker lost, triaged, restarted, leadership given back."""

from __future__ import annotations

from dbops.config import ClusterRef
from dbops.drill.model import DrillContext, DrillRefused, Fault, Recovery, Scenario, require_stopped
from dbops.runbook.hosts import HostOp, Verb
from dbops.runbook.model import Verdict


def _applies(ref: ClusterRef) -> str | None:
    if ref.cluster.engine != "kafka":
        return f"it is a {ref.cluster.engine} cluster"
    if len(ref.cluster.members) < 3:
        return "it has fewer than 3 brokers: losing one loses the data or the quorum"
    return None


def _victim(ctx: DrillContext) -> str:
    return str(ctx.facts.get("victim", "<a broker>"))


async def prepare(ctx: DrillContext) -> list[str]:
    # The last configured broker: the first is usually the one clients bootstrap from.
    ctx.facts["victim"] = ctx.ref.cluster.members[-1].name
    if not ctx.hosts.managed:
        raise DrillRefused("dbops cannot stop or start this cluster's brokers: run this drill's steps by hand")
    return [f"the drill stops broker {_victim(ctx)}"]


def commands(ctx: DrillContext) -> list[str]:
    victim = _victim(ctx)
    return ctx.hosts.render(HostOp(Verb.STOP, victim, ("kill",), manual=(
        f"# on broker {victim}'s host: the broker dies at once, as on a machine loss",
        "kill -9 <the broker's JVM pid>",
    )))


async def stop(ctx: DrillContext) -> str:
    r = await ctx.hosts.perform(HostOp(Verb.STOP, _victim(ctx), ("kill",)))
    if not r.ok:
        raise RuntimeError(r.detail)
    await require_stopped(ctx, _victim(ctx), f"killing broker {_victim(ctx)}")
    return f"broker {_victim(ctx)} killed"


async def start(ctx: DrillContext) -> str:
    r = await ctx.hosts.perform(HostOp(Verb.START, _victim(ctx)))
    if not r.ok:
        raise RuntimeError(r.detail)
    return r.detail


async def triage_params(ctx: DrillContext) -> dict[str, str]:
    return {"broker": _victim(ctx)}


async def verify(ctx: DrillContext) -> list[Verdict]:
    from dbops.poller import poll_once

    health = (await poll_once([ctx.ref]))[0]
    down = [m.name for m in health.members if m.snapshot.reachability.value != "UP"]
    return [Verdict(not down, f"every broker answers ({', '.join(m.name for m in health.members)})" if not down
                    else f"brokers still down: {', '.join(down)}")]


SCENARIOS = [
    Scenario(
        id="kafka-broker-loss",
        title="Lose a Kafka broker: triage, restart it, give leadership back",
        engine="kafka",
        description="A broker is killed; kafka.broker-down-triage says what it took with it; the broker is restarted; "
                    "kafka.preferred-leader-election gives each partition back to its preferred leader. The probe "
                    "produces with acks=all throughout.",
        fault=Fault("kill a broker", commands, stop, heal=start),
        recovery=(Recovery("kafka.broker-down-triage", triage_params, "what the broker took with it (read-only)"),
                  Recovery("", why="restart the broker", do=start),
                  Recovery("kafka.preferred-leader-election", None, "leadership back to the preferred replicas")),
        applies=_applies,
        prepare=prepare,
        verify=verify,
    ),
]
