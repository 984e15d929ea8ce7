"""redis.cluster-rebalance: even out slots across masters by weight.

Each master should hold 16384 x its weight / the sum of weights (`--param weights=c1=2,c2=1`;
unnamed masters weigh 1, weight 0 empties a master). Nothing moves while every master is within
`threshold` percent of its share (default 2, as redis-cli). Masters without slots join only with
`--param use_empty_masters=true`. The plan lists every move (source -> target, slots, keys); moves
between disjoint pairs run in parallel. Same pre-checks and resumability as cluster-reshard.
"""

from __future__ import annotations

from typing import Any

from dbops.engines.redis.topology import SLOTS
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.redis import common


def parse_weights(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in (text or "").replace(" ", "").split(","):
        if not part:
            continue
        name, sep, value = part.partition("=")
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"--param weights: {part!r} is not NODE=NUMBER") from None
        if not sep or not name or w < 0:
            raise ValueError(f"--param weights: {part!r} is not NODE=NUMBER (a number >= 0)")
        out[name] = w
    return out


def plan_moves(owned: dict[str, list[int]], weights: dict[str, float], threshold_pct: float) -> list[dict[str, Any]]:
    """Slot moves from over- to under-weight masters. Pure: `owned` is master -> its slots (every
    master taking part, empty ones included), `weights` master -> weight."""
    total_w = sum(weights[m] for m in owned)
    if total_w <= 0:
        raise ValueError("every weight is 0: the slots would have nowhere to go")
    # Shares by largest remainder, so they add up to exactly 16384.
    exact = {m: SLOTS * weights[m] / total_w for m in owned}
    share = {m: int(exact[m]) for m in owned}
    for m in sorted(owned, key=lambda m: (-(exact[m] - share[m]), m))[: SLOTS - sum(share.values())]:
        share[m] += 1
    over = [m for m in owned if share[m] == 0 and owned[m]] + \
           [m for m in owned if share[m] and abs(len(owned[m]) - share[m]) / share[m] * 100 > threshold_pct]
    if not over:
        return []
    balance = {m: len(owned[m]) - share[m] for m in owned}
    givers = sorted((m for m in owned if balance[m] > 0), key=lambda m: -balance[m])
    takers = sorted((m for m in owned if balance[m] < 0), key=lambda m: balance[m])
    pool = {m: sorted(owned[m]) for m in givers}
    moves: dict[tuple[str, str], list[int]] = {}
    for t in takers:
        need = -balance[t]
        for g in givers:
            while need and balance[g] > 0:
                slot = pool[g].pop()  # the giver's highest slots: contiguous ranges stay contiguous
                moves.setdefault((g, t), []).append(slot)
                balance[g] -= 1
                need -= 1
            if not need:
                break
    return [{"source": g, "target": t, "slots": sorted(sl)} for (g, t), sl in moves.items()]


async def check_plan(ctx: Context) -> Verdict:
    s = common.session(ctx)
    view = s.view
    if view is None:
        return Verdict(False, "the cluster could not be read")
    try:
        named = {s.resolve(k): v for k, v in parse_weights(str(ctx.params.get("weights") or "")).items()}
    except ValueError as exc:
        return Verdict(False, str(exc))
    owned: dict[str, list[int]] = {n.node_id: [] for n in view.nodes if n.is_master and not n.failed and
                                   (n.slots or ctx.params.get("use_empty_masters") or n.node_id in named)}
    for slot, o in enumerate(view.owners):
        if o in owned:
            owned[o].append(slot)
    unknown = [nid for nid in named if nid not in owned]
    if unknown:
        return Verdict(False, f"weights for nodes that are not masters: {', '.join(s.name(n) for n in unknown)}")
    weights = {m: named.get(m, 1.0) for m in owned}
    try:
        moves = plan_moves(owned, weights, float(ctx.params["threshold"]))
    except ValueError as exc:
        return Verdict(False, str(exc))
    mover = s.mover()
    for m in moves:
        counts = await mover.count_keys(m["source"], m["slots"])
        m["keys"] = sum(counts.values())
        m["bytes"] = int(m["keys"] * await mover.average_value_bytes(m["source"]))
    ctx.state["moves"] = moves
    shares = ", ".join(f"{s.name(m)} {len(owned[m])}" for m in sorted(owned, key=s.name))
    if not moves:
        return Verdict(True, f"balanced within {ctx.params['threshold']}%: {shares}; nothing to move")
    return Verdict(True, f"{len(moves)} moves, {sum(len(m['slots']) for m in moves)} slots, "
                         f"{sum(m['keys'] for m in moves)} keys (slots now: {shares})")


def commands(ctx: Context) -> list[str]:
    moves = ctx.state.get("moves", [])
    rounds = common.rounds(moves)
    head = [f"# {len(moves)} moves in {len(rounds)} round(s); the moves of a round run in parallel"] if moves else []
    return head + common.move_commands(ctx, moves)


async def migrate(ctx: Context) -> None:
    await common.execute_moves(ctx, ctx.state["moves"])


async def do_verify(ctx: Context) -> None:
    expect = {sl: m["target"] for m in ctx.state["moves"] for sl in m["slots"]}
    (await common.verify_cluster(ctx, expect)).require(ctx.log)


RUNBOOK = Runbook(
    id="redis.cluster-rebalance",
    title="Rebalance Redis Cluster slots across masters by weight",
    params=(
        Param("weights", "NODE=WEIGHT,... (others weigh 1; 0 empties a master)", default=""),
        Param("threshold", "move nothing while every master is within this percent of its share", type=float, default=2.0),
        Param("use_empty_masters", "give slots to masters that have none", type=bool, default=False),
        Param("throttle", "at most this many keys per second (0: as fast as the servers go)", type=float, default=0.0),
        Param("replace_differing", "overwrite a target key whose value differs (BUSYKEY)", type=bool, default=False),
        Param("expect_writes", "clients write meanwhile: report, do not require, an unchanged key count", type=bool, default=False),
    ),
    prechecks=(
        Check("reachable", "every master answers", common.check_reachable),
        Check("healthy", "every slot covered, none open", common.check_healthy),
        Check("plan", "the moves that bring every master to its share", check_plan),
        *common.MOVE_CHECKS,
    ),
    steps=(
        Step("migrate", "Move the slots", "each move as in cluster-reshard; moves between disjoint pairs in parallel",
             Kind.ACTION, commands, run=migrate, confirm=Confirm.YES_NO, timeout=6 * 3600.0,
             applies=lambda ctx: bool(ctx.state.get("moves")),
             on_failure="run `dbops runbook resume <run id>`: slots left open are finished in the planned direction"),
        Step("verify", "Verify", "every slot at its planned owner, none open or uncovered, every node agrees, key count unchanged",
             Kind.CHECK, lambda ctx: ["CLUSTER NODES   # on every node", "DBSIZE   # on every master"], run=do_verify,
             timeout=120.0),
    ),
    setup=common.setup,
    teardown=common.teardown,
)
