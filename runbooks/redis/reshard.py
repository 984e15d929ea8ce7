"""redis.cluster-reshard: move slots from one master to another.

`--param slots=N` moves N slots (the source's highest-numbered), `--param slots=0-999,2000`
moves exactly those (a single slot is written as a range: 2000-2000). `source` and `target` are
member names from the config, node ids (or 8+ character prefixes) or host:port.

Pre-checks: every master answers, the cluster is healthy (no open or uncovered slot), the slots
belong to the source, an emptied source will not turn into a replica
(cluster-allow-replica-migration), no sampled key is too big to MIGRATE within
cluster-node-timeout, and the target has memory for what it receives.
"""

from __future__ import annotations

from dbops.engines.redis.topology import format_ranges, parse_slot_list, ranges
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.redis import common


async def check_plan(ctx: Context) -> Verdict:
    s = common.session(ctx)
    if s.view is None:
        return Verdict(False, "the cluster could not be read")
    try:
        source = s.resolve(str(ctx.params["source"]))
        target = s.resolve(str(ctx.params["target"]))
    except ValueError as exc:
        return Verdict(False, str(exc))
    if source == target:
        return Verdict(False, "source and target are the same node")
    src, dst = s.view.node(source), s.view.node(target)
    assert src is not None and dst is not None
    if not dst.is_master:
        return Verdict(False, f"the target {s.name(target)} is a replica; slots go to masters")
    owned = [sl for sl, o in enumerate(s.view.owners) if o == source]
    raw = str(ctx.params["slots"]).strip()
    if raw.isdigit():
        n = int(raw)
        if n < 1 or n > len(owned):
            return Verdict(False, f"{s.name(source)} owns {len(owned)} slots; cannot move {n}")
        slots = owned[-n:]
    else:
        try:
            slots = parse_slot_list(raw)
        except ValueError as exc:
            return Verdict(False, f"--param slots: {exc}")
        foreign = [sl for sl in slots if s.view.owners[sl] != source]
        if foreign:
            return Verdict(False, f"{len(foreign)} of the slots are not {s.name(source)}'s: {format_ranges(ranges(foreign))}")
    counts = await s.mover().count_keys(source, slots)
    keys = sum(counts.values())
    avg = await s.mover().average_value_bytes(source)
    ctx.state["moves"] = [{"source": source, "target": target, "slots": slots, "keys": keys, "bytes": int(keys * avg)}]
    return Verdict(True, f"{len(slots)} slots {format_ranges(ranges(slots), 4)} from {s.name(source)} to {s.name(target)}: "
                         f"{keys} keys")


def commands(ctx: Context) -> list[str]:
    return common.move_commands(ctx, ctx.state.get("moves", []))


async def migrate(ctx: Context) -> None:
    await common.execute_moves(ctx, ctx.state["moves"])


async def verify(ctx: Context) -> Verdict:
    expect = {sl: m["target"] for m in ctx.state["moves"] for sl in m["slots"]}
    return await common.verify_cluster(ctx, expect)


async def do_verify(ctx: Context) -> None:
    (await verify(ctx)).require(ctx.log)


def verify_commands(ctx: Context) -> list[str]:
    return ["CLUSTER NODES   # on every node: the slots at the target, none open, every node agreeing",
            "DBSIZE   # on every master: the total key count unchanged"]


PARAMS = (
    Param("slots", "how many slots (N), or which: ranges like 0-999,2000-2000", required=True),
    Param("source", "the master giving slots (member name, node id or host:port)", required=True),
    Param("target", "the master receiving them (member name, node id or host:port)", required=True),
    Param("throttle", "at most this many keys per second (0: as fast as the servers go)", type=float, default=0.0),
    Param("replace_differing", "overwrite a target key whose value differs (BUSYKEY)", type=bool, default=False),
    Param("expect_writes", "clients write meanwhile: report, do not require, an unchanged key count", type=bool, default=False),
)

RUNBOOK = Runbook(
    id="redis.cluster-reshard",
    title="Move slots from one Redis Cluster master to another",
    params=PARAMS,
    prechecks=(
        Check("reachable", "every master answers", common.check_reachable),
        Check("healthy", "every slot covered, none open", common.check_healthy),
        Check("plan", "the slots belong to the source; the target is a master", check_plan),
        *common.MOVE_CHECKS,
    ),
    steps=(
        Step("migrate", "Move the slots", "target IMPORTING, source MIGRATING, keys moved with MIGRATE, then the new "
             "owner set on the target, the source and every other master; group by group, journaled",
             Kind.ACTION, commands, run=migrate, confirm=Confirm.YES_NO, timeout=6 * 3600.0,
             on_failure="run `dbops runbook resume <run id>`: slots left open are finished in the planned direction"),
        Step("verify", "Verify", "every node agrees the slots are at the target; no slot open or uncovered; key count unchanged",
             Kind.CHECK, verify_commands, run=do_verify, timeout=120.0),
    ),
    setup=common.setup,
    teardown=common.teardown,
)
