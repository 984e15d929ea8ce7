"""Redis drills: a Cluster master lost, a Sentinel group's master lost.

The faults stop a server through the cluster's managed hosts (the sandbox); elsewhere the plan
shows the command and the operator does it and confirms.
"""

from __future__ import annotations

import asyncio
import time

from dbops.config import ClusterRef
from dbops.drill.model import DrillContext, DrillRefused, Fault, Recovery, Scenario, require_stopped
from dbops.runbook.hosts import HostOp, Verb
from dbops.runbook.model import Verdict

WAIT = 60.0  # a restarted node's role settling (Sentinel reconfigures it within seconds)


def _mode(ref: ClusterRef, mode: str) -> str | None:
    if ref.cluster.engine != "redis":
        return f"it is a {ref.cluster.engine} cluster"
    options = ref.cluster.redis
    actual = options.mode if options is not None else "standalone"
    if actual != mode:
        return f"it is a Redis {actual} deployment, not {mode}"
    return None


async def _roles(ctx: DrillContext) -> dict[str, str]:
    """ROLE of every configured member now: master, slave, or down."""
    from dbops.engines.redis.client import close, connect

    async def one(address: str) -> str:
        client = connect(ctx.ref, address)
        try:
            role = await asyncio.wait_for(client.execute_command("ROLE"), ctx.ref.timeout + 1)
            return str(role[0])
        except Exception:  # a node that does not answer is what the drill expects to see
            return "down"
        finally:
            await close(client)

    members = ctx.ref.cluster.members
    found = await asyncio.gather(*(one(f"{m.host}:{m.port}") for m in members))
    return {m.name: r for m, r in zip(members, found, strict=True)}


def _victim(ctx: DrillContext) -> str:
    return str(ctx.facts.get("victim", "<a master>"))


def _address(ctx: DrillContext, name: str) -> str:
    m = next((m for m in ctx.ref.cluster.members if m.name == name), None)
    return f"{m.host}:{m.port}" if m is not None else name


def stop_commands(ctx: DrillContext) -> list[str]:
    victim = _victim(ctx)
    return ctx.hosts.render(HostOp(Verb.STOP, victim, ("kill",), manual=(
        f"# on {victim}'s host ({_address(ctx, victim)}): the server dies at once, as on a machine loss",
        "kill -9 $(pidof redis-server)  # the one listening on that port",
    ))) or [f"kill -9 the redis-server of {victim}"]


async def stop_victim(ctx: DrillContext) -> str:
    victim = _victim(ctx)
    result = await ctx.hosts.perform(HostOp(Verb.STOP, victim, ("kill",)))
    if not result.ok:
        raise RuntimeError(result.detail)
    await require_stopped(ctx, victim, f"killing {victim}")
    return f"{victim} killed ({_address(ctx, victim)})"


async def start_victim(ctx: DrillContext) -> str:
    result = await ctx.hosts.perform(HostOp(Verb.START, _victim(ctx)))
    return result.detail


async def _master_victim(ctx: DrillContext) -> list[str]:
    roles = await _roles(ctx)
    masters = [n for n, r in roles.items() if r == "master"]
    if not masters or "down" in roles.values():
        raise DrillRefused(f"{ctx.ref.key} is not whole: " + ", ".join(f"{n} {r}" for n, r in roles.items()))
    ctx.facts["victim"] = masters[0]
    return [f"masters {', '.join(masters)}; the drill kills {masters[0]}"]


# -- redis-sentinel-failover -------------------------------------------------------------------


async def sentinel_verify(ctx: DrillContext) -> list[Verdict]:
    roles = await _roles(ctx)
    masters = [n for n, r in roles.items() if r == "master"]
    ok = len(masters) == 1 and masters[0] != _victim(ctx)
    ctx.facts["new_master"] = masters[0] if masters else None
    return [Verdict(ok, f"Sentinel promoted {', '.join(masters) or 'nobody'} (the dead master was {_victim(ctx)})")]


async def sentinel_restore(ctx: DrillContext) -> list[str]:
    """The old master restarted: Sentinel makes it a replica of the new one."""
    line = await start_victim(ctx)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if (await _roles(ctx)).get(_victim(ctx)) == "slave":
            return [line, f"{_victim(ctx)} is a replica again (Sentinel reconfigured it)"]
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{_victim(ctx)} did not become a replica within {WAIT:.0f}s of its restart")


# -- redis-master-loss (Cluster) ---------------------------------------------------------------


async def cluster_params(ctx: DrillContext) -> dict[str, str]:
    return {"failed": _victim(ctx), "expect_writes": "true"}


async def fix_params(ctx: DrillContext) -> dict[str, str]:
    return {"expect_writes": "true"}


async def cluster_verify(ctx: DrillContext) -> list[Verdict]:
    roles = await _roles(ctx)
    masters = sorted(n for n, r in roles.items() if r == "master")
    return [Verdict(_victim(ctx) not in masters and len(masters) >= 3,
                    f"masters now {', '.join(masters)} (the dead one was {_victim(ctx)})")]


async def cluster_restore(ctx: DrillContext) -> list[str]:
    """A replacement on the dead master's address (its data and cluster state gone, as a new
    machine's would be), attached as a replica with the same runbook."""
    victim = _victim(ctx)
    if not ctx.hosts.managed:
        return [f"bring a replacement up on {_address(ctx, victim)} and attach it with redis.cluster-replace-failed-master "
                f"--param attach={_address(ctx, victim)}"]
    if (await _roles(ctx)).get(victim) != "down":
        # Healed before the recovery forgot it (an abort, or a declined promotion): the node is back
        # with its own data and cluster state and rejoins by itself. A wipe would not reach the
        # running server, and the attach runbook rightly refuses a node that is not empty.
        return [await _rejoined(ctx, victim)]
    wiped = await ctx.hosts.perform(HostOp(Verb.RUN, victim, ("wipe",)))
    started = await start_victim(ctx)
    await ctx.run_runbook("redis.cluster-replace-failed-master", {"attach": _address(ctx, victim), "expect_writes": "true"})
    return [wiped.detail, started, f"{victim} attached as a replica (redis.cluster-replace-failed-master)"]


async def _cluster_state(ctx: DrillContext, name: str) -> str:
    """CLUSTER INFO's cluster_state on that node, or why it could not be read."""
    from dbops.engines.redis.client import close, connect

    client = connect(ctx.ref, _address(ctx, name))
    try:
        text = await asyncio.wait_for(client.execute_command("CLUSTER", "INFO"), ctx.ref.timeout + 1)
    except Exception as exc:  # still starting, or not answering: the caller waits and says so
        return f"no answer ({type(exc).__name__})"
    finally:
        await close(client)
    lines = str(text).splitlines()
    return next((ln.partition(":")[2].strip() for ln in lines if ln.startswith("cluster_state:")), "unknown")


async def _rejoined(ctx: DrillContext, victim: str) -> str:
    deadline = time.monotonic() + WAIT
    role, state = "down", "unknown"
    while time.monotonic() < deadline:
        role = (await _roles(ctx)).get(victim, "down")
        state = await _cluster_state(ctx, victim)
        if role in ("master", "slave") and state == "ok":
            what = "a replica" if role == "slave" else "a master (no failover had happened)"
            return f"{victim} restarted with its own data and rejoined the cluster as {what}; cluster_state ok"
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{victim} restarted with its own data but is not back in the cluster after {WAIT:.0f}s "
                       f"(role {role}, cluster_state {state}): attach a fresh node on {_address(ctx, victim)} with "
                       f"redis.cluster-replace-failed-master --param attach={_address(ctx, victim)}")


SCENARIOS = [
    Scenario(
        id="redis-sentinel-failover",
        title="Lose a Sentinel group's master: Sentinel fails over, the old master returns as a replica",
        engine="redis",
        description="The master is killed; the sentinels agree it is down and promote a replica by themselves (no "
                    "runbook); the probe measures how long writes failed; the old master restarts as a replica.",
        fault=Fault("kill the master", stop_commands, stop_victim, heal=start_victim),
        recovery=(),
        applies=lambda ref: _mode(ref, "sentinel"),
        prepare=_master_victim,
        verify=sentinel_verify,
        restore=sentinel_restore,
    ),
    Scenario(
        id="redis-master-loss",
        title="Lose a Redis Cluster master: promote its replica, repair the slots, attach a replacement",
        engine="redis",
        description="A master is killed; redis.cluster-replace-failed-master promotes its replica and forgets the dead "
                    "node, redis.cluster-fix repairs any slot left open; a wiped replacement on the dead address is "
                    "attached as a replica.",
        fault=Fault("kill a master", stop_commands, stop_victim, heal=start_victim),
        recovery=(Recovery("redis.cluster-replace-failed-master", cluster_params, "promote the dead master's replica"),
                  Recovery("redis.cluster-fix", fix_params, "slots left open or uncovered")),
        applies=lambda ref: _mode(ref, "cluster"),
        prepare=_master_victim,
        verify=cluster_verify,
        restore=cluster_restore,
    ),
]
