"""redis.sentinel-failover: move the master of a Sentinel group to a replica, on purpose.

Pre-checks: a majority of the configured sentinels answer and CKQUORUM passes on each; a
replica can take over (replica-priority not 0, link to the master up, offset within
lag_bytes_crit of the master's). Steps: SENTINEL FAILOVER on one sentinel -> wait until a
quorum of sentinels name a new master and it answers ROLE master -> a write probe (a key named
for the run, expiring in 60 s) on the new master.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from dbops.engines.redis import client as rc
from dbops.engines.redis.data import parse_info
from dbops.runbook.model import Check, Confirm, Context, Kind, Runbook, Step, Verdict
from dbops.runbooks.redis import common

WAIT_SECONDS = 60.0  # failover-timeout is usually 10-180 s; the wait step's own limit is longer


def master_name(ctx: Context) -> str:
    opts = ctx.ref.cluster.redis
    assert opts is not None and opts.master_name
    return opts.master_name


async def setup(ctx: Context) -> None:
    opts = ctx.ref.cluster.redis
    ctx.resources["creds"] = rc.Credentials(ctx.ref)
    ctx.resources["sentinels"] = {f"{m.host}:{m.port}": rc.connect(ctx.ref, f"{m.host}:{m.port}", sentinel=True,
                                                                    creds=ctx.resources["creds"])
                                  for m in (opts.sentinels if opts else [])}
    ctx.resources["nodes"] = {}


async def teardown(ctx: Context) -> None:
    clients = [*ctx.resources.get("sentinels", {}).values(), *ctx.resources.get("nodes", {}).values()]
    await asyncio.gather(*(rc.close(c) for c in clients))


def node(ctx: Context, address: str) -> Any:
    nodes = ctx.resources["nodes"]
    if address not in nodes:
        nodes[address] = rc.connect(ctx.ref, address, creds=ctx.resources["creds"])
    return nodes[address]


async def drop(ctx: Context, address: str) -> None:
    client = ctx.resources["nodes"].pop(address, None)
    if client is not None:
        await rc.close(client)


def names(ctx: Context) -> dict[str, str]:
    opts = ctx.ref.cluster.redis
    out = {f"{m.host}:{m.port}": m.name for m in ctx.ref.cluster.members}
    out.update({f"{m.host}:{m.port}": m.name for m in (opts.sentinels if opts else [])})
    return out


def label(ctx: Context, address: str) -> str:
    n = names(ctx).get(address)
    return f"{n} ({address})" if n else address


async def ask_sentinels(ctx: Context, *command: str) -> dict[str, Any]:
    """address -> reply (or the exception) from every configured sentinel, concurrently."""
    sentinels = ctx.resources["sentinels"]

    async def one(c: Any) -> Any:
        try:
            return await asyncio.wait_for(c.execute_command(*command), timeout=ctx.ref.timeout)
        except Exception as exc:  # a sentinel that does not answer is counted, not fatal
            return exc

    replies = await asyncio.gather(*(one(c) for c in sentinels.values()))
    return dict(zip(sentinels, replies))


async def master_votes(ctx: Context) -> dict[str, int]:
    votes: dict[str, int] = {}
    for reply in (await ask_sentinels(ctx, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name(ctx))).values():
        if isinstance(reply, list) and len(reply) == 2:
            addr = f"{common.text(reply[0])}:{common.text(reply[1])}"
            votes[addr] = votes.get(addr, 0) + 1
    return votes


# -- pre-checks ---------------------------------------------------------------------------------


async def check_quorum(ctx: Context) -> Verdict:
    opts = ctx.ref.cluster.redis
    if opts is None or opts.mode != "sentinel":
        return Verdict(False, f"{ctx.ref.name} is not a Sentinel group (redis.mode is {opts.mode if opts else '-'})")
    replies = await ask_sentinels(ctx, "SENTINEL", "CKQUORUM", master_name(ctx))
    ok = [a for a, r in replies.items() if not isinstance(r, Exception)]
    bad = {a: r for a, r in replies.items() if isinstance(r, Exception)}
    if len(ok) <= len(replies) // 2:
        return Verdict(False, f"only {len(ok)} of {len(replies)} sentinels answer CKQUORUM OK: " +
                       "; ".join(f"{label(ctx, a)}: {rc.classify(e, a, ctx.ref.timeout)[1]}" for a, e in bad.items()))
    votes = await master_votes(ctx)
    if not votes:
        return Verdict(False, "no sentinel names a master")
    master = max(votes, key=lambda a: votes[a])
    ctx.state["old_master"] = master
    extra = f"; {len(bad)} sentinel(s) do not: " + ", ".join(label(ctx, a) for a in bad) if bad else ""
    return Verdict(True, f"{len(ok)} of {len(replies)} sentinels: quorum reachable, master {label(ctx, master)}{extra}")


async def check_candidate(ctx: Context) -> Verdict:
    replies = await ask_sentinels(ctx, "SENTINEL", "REPLICAS", master_name(ctx))
    reply = next((r for r in replies.values() if isinstance(r, list)), None)
    if reply is None:
        return Verdict(False, "no sentinel lists the master's replicas")
    master = ctx.state.get("old_master")
    if master is None:
        return Verdict(False, "the master is unknown (see the quorum pre-check)")
    minfo = parse_info(common.text(await node(ctx, master).execute_command("INFO", "replication")))
    master_offset = int(minfo.get("master_repl_offset", 0))
    limit = ctx.ref.cluster.redis.thresholds.lag_bytes_crit  # type: ignore[union-attr]
    usable, why_not = [], []
    for r in reply:
        d = common.pairs(r)
        addr = f"{d.get('ip')}:{d.get('port')}"
        flags = d.get("flags", "")
        if "s_down" in flags or "o_down" in flags or "disconnected" in flags:
            why_not.append(f"{label(ctx, addr)} is down ({flags})")
            continue
        if d.get("slave-priority", d.get("replica-priority", "100")) == "0":
            why_not.append(f"{label(ctx, addr)} has replica-priority 0 (never promoted)")
            continue
        if d.get("master-link-status") != "ok":
            why_not.append(f"{label(ctx, addr)}: link to the master {d.get('master-link-status')}")
            continue
        info = parse_info(common.text(await node(ctx, addr).execute_command("INFO", "replication")))
        lag = max(0, master_offset - int(info.get("slave_repl_offset", 0)))
        if lag > limit:
            why_not.append(f"{label(ctx, addr)} is {lag} bytes behind (lag_bytes_crit {limit})")
            continue
        usable.append(f"{label(ctx, addr)} ({lag} bytes behind)")
    if not usable:
        return Verdict(False, "no replica can take over: " + "; ".join(why_not))
    return Verdict(True, "can take over: " + ", ".join(usable) + (f"; not: {'; '.join(why_not)}" if why_not else ""))


# -- steps --------------------------------------------------------------------------------------


async def do_failover(ctx: Context) -> None:
    replies = await ask_sentinels(ctx, "SENTINEL", "FAILOVER", master_name(ctx))
    for address, reply in replies.items():
        if not isinstance(reply, Exception):
            ctx.state["asked"] = address
            ctx.log(f"{label(ctx, address)} accepted SENTINEL FAILOVER {master_name(ctx)}")
            return
    # Each sentinel refused: say why the first did (INPROG: one is already under way).
    address, exc = next(iter(replies.items()))
    raise RuntimeError(f"no sentinel started the failover; {label(ctx, address)}: {rc.classify(exc, address, ctx.ref.timeout)[1]}")


async def verify_failover_started(ctx: Context) -> Verdict:
    return Verdict("asked" in ctx.state, f"asked {ctx.state.get('asked', 'no sentinel')}")


async def do_wait(ctx: Context) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    old = ctx.state["old_master"]
    quorum = len(ctx.resources["sentinels"]) // 2 + 1
    deadline = time.monotonic() + WAIT_SECONDS
    last = {}
    while time.monotonic() < deadline:
        last = await master_votes(ctx)
        new = next((a for a, n in last.items() if a != old and n >= quorum), None)
        if new is not None:
            try:
                role = await node(ctx, new).execute_command("ROLE")
            except (TimeoutError, RedisConnectionError, ConnectionError, OSError) as exc:
                # Sentinel closes the clients of a node it reconfigures (CLIENT KILL): reconnect.
                await drop(ctx, new)
                ctx.log(f"{label(ctx, new)}: {rc.classify(exc, new, ctx.ref.timeout)[1]}; asking again")
                await asyncio.sleep(0.25)
                continue
            if common.text(role[0]) == "master":
                ctx.state["new_master"] = new
                ctx.log(f"{sum(last.values())} sentinels answer; {last[new]} name {label(ctx, new)}, which answers ROLE master")
                return
        await asyncio.sleep(0.25)
    raise RuntimeError(f"no quorum of sentinels named a new master within {WAIT_SECONDS:g}s (they say: "
                       + ", ".join(f"{label(ctx, a)} x{n}" for a, n in last.items()) + ")")


async def do_probe(ctx: Context) -> None:
    new = ctx.state["new_master"]
    key = f"dbops:failover-probe:{ctx.run_id}"
    value = str(time.time())
    await drop(ctx, new)  # a connection from before the failover may have been closed by Sentinel
    c = node(ctx, new)
    await c.execute_command("SET", key, value, "PX", 60000)
    got = common.text(await c.execute_command("GET", key))
    if got != value:
        raise RuntimeError(f"wrote {key} on {label(ctx, new)} but read back {got!r}")
    ctx.state["probe"] = key
    ctx.log(f"write probe {key} written and read back on {label(ctx, new)} (expires in 60 s)")


RUNBOOK = Runbook(
    id="redis.sentinel-failover",
    title="Fail a Sentinel group's master over to a replica",
    prechecks=(
        Check("quorum", "a majority of sentinels answer and CKQUORUM passes", check_quorum),
        Check("candidate", "a replica can take over (priority, link, lag)", check_candidate, overridable=True),
    ),
    steps=(
        Step("failover", "Ask the sentinels to fail over", "SENTINEL FAILOVER on the first sentinel that accepts it",
             Kind.ACTION, lambda ctx: [f"SENTINEL FAILOVER {master_name(ctx)}   # on a sentinel"], run=do_failover,
             verify=verify_failover_started, confirm=Confirm.YES_NO, timeout=30.0,
             on_failure="INPROG means a failover is already running: wait for it (dbops check shows the master)"),
        Step("wait", "Wait for the new master", "until a quorum of sentinels names a new master and it answers ROLE master",
             Kind.WAIT, lambda ctx: [f"SENTINEL GET-MASTER-ADDR-BY-NAME {master_name(ctx)}   # on every sentinel",
                                     "ROLE   # on the named master"], run=do_wait, timeout=WAIT_SECONDS + 30,
             produces=("new_master",)),
        Step("probe", "Verify a write", "a key named for this run, expiring in 60 s, written and read back on the new master",
             Kind.CHECK, lambda ctx: [f"SET dbops:failover-probe:{ctx.run_id} <now> PX 60000; GET it   # on the new master"],
             run=do_probe, timeout=30.0, produces=("probe",)),
    ),
    setup=setup,
    teardown=teardown,
)
