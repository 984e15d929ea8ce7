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


REJOIN_TIMEOUT = 180.0  # a restarted broker fetching up to every leader it follows


async def _rejoined(ctx: DrillContext) -> str | None:
    """None once every broker answers and every partition is fully replicated again; otherwise
    what is still missing."""
    from dbops.poller import poll_once

    health = (await poll_once([ctx.ref]))[0]
    down = [m.name for m in health.members if m.snapshot.reachability.value != "UP"]
    if down:
        return f"brokers not answering: {', '.join(down)}"
    under = [m.message for m in health.metrics if m.name in ("under_replicated", "under_min_isr", "offline") and m.severity.name != "OK"]
    return "; ".join(under) or None


async def start(ctx: DrillContext) -> str:
    """The broker started, and back in every ISR: a preferred-leader election before that
    finds nothing it may move (its replica is not in the ISR yet)."""
    import asyncio
    import time

    r = await ctx.hosts.perform(HostOp(Verb.START, _victim(ctx)))
    if not r.ok:
        raise RuntimeError(r.detail)
    started = time.monotonic()
    while True:
        missing = await _rejoined(ctx)
        if missing is None:
            return f"{r.detail}; back in every ISR after {time.monotonic() - started:.1f}s"
        if time.monotonic() - started > REJOIN_TIMEOUT:
            raise RuntimeError(f"{r.detail}, but not back after {REJOIN_TIMEOUT:.0f}s: {missing}")
        ctx.log(f"waiting for {_victim(ctx)} to rejoin: {missing}")
        await asyncio.sleep(1.0)


async def triage_params(ctx: DrillContext) -> dict[str, str]:
    return {"broker": _victim(ctx)}


async def verify(ctx: DrillContext) -> list[Verdict]:
    """Every broker answering and every partition fully replicated, within REJOIN_TIMEOUT: the
    metadata a broker answers with can lag a moment behind the ISR the restart step saw."""
    import asyncio
    import time

    deadline = time.monotonic() + REJOIN_TIMEOUT
    missing = await _rejoined(ctx)
    while missing is not None and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        missing = await _rejoined(ctx)
    return [Verdict(missing is None, "every broker answers and every partition is fully replicated" if missing is None
                    else missing)]


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
