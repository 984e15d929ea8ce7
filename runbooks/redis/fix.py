"""redis.cluster-fix: repair slots left open, uncovered or claimed twice.

Check (every node's CLUSTER NODES; key counts with COUNTKEYSINSLOT on every master) -> a plan
of one line per slot: its problem, keys per node, and what will happen -> one confirmation per
class of problem, uncovered slots first (while a slot has no owner the cluster is down and no
key can move) -> repair -> verify (16384 slots covered, none open, every node agrees, the
total key count unchanged).

- open slot, both sides agreeing (owner MIGRATING to B, B IMPORTING from the owner): the
  migration is finished towards B: the keys left on the owner move to B, then B owns it.
- any other open slot (only one side marked, or the marks disagree): rolled back to the owner:
  keys found on the other nodes move back to the owner, and every node marks it stable.
- uncovered slot: given to the master holding its keys (most keys, when several do; the others'
  keys move there); a slot with no key anywhere goes to the master with the fewest slots.
- slot claimed by two masters: kept by the claimant with most keys (the others' keys move to
  it; they drop their claim), and that master bumps its epoch so every node follows.

A key on both sides of a move with equal values is replaced; differing values stop the run
unless `--param replace_differing=true`. A master that does not answer refuses the run: its
keys might be the ones to keep (override only if it is gone for good).
Each slot's phase is journaled (<run id>.slots.log); a resumed run re-reads the live state and
finishes what is left.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dbops.engines.redis.slots import Mover, masters
from dbops.engines.redis.topology import ClusterView
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.redis import common

CLASSES = ("uncovered", "open", "owners")  # the order of the steps: coverage first (see repair)


async def count_everywhere(ctx: Context, view: ClusterView, slots: list[int]) -> dict[int, dict[str, int]]:
    """slot -> {node id: keys} over every reachable master (and every node with the slot open)."""
    s = common.session(ctx)
    if not slots:
        return {}
    nodes = {n.node_id: n for n in masters(view) if n.address not in s.unreachable}
    for o in view.open_slots:
        for nid, _ in (*o.migrating, *o.importing):
            n = view.node(nid)
            if n is not None and n.address not in s.unreachable:
                nodes[nid] = n

    async def counts(nid: str) -> tuple[str, list[int]]:
        pipe = s.client(nodes[nid].address).pipeline(transaction=False)
        for sl in slots:
            pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", sl)
        return nid, [int(x) for x in await pipe.execute()]

    out: dict[int, dict[str, int]] = {sl: {} for sl in slots}
    for nid, cs in await asyncio.gather(*(counts(n) for n in nodes)):
        for sl, c in zip(slots, cs):
            if c:
                out[sl][nid] = c
    return out


def plan_fixes(view: ClusterView, keys: dict[int, dict[str, int]]) -> list[dict[str, Any]]:
    """One item per broken slot: {slot, class, action, target, sources, keys, detail}. Pure."""
    items: list[dict[str, Any]] = []
    handled: set[int] = set()
    load = {n.node_id: n.slot_count for n in view.nodes if n.is_master and not n.failed}

    def most_keys(candidates: list[str], slot: int, default: str | None) -> str | None:
        ranked = sorted(candidates, key=lambda nid: (-keys.get(slot, {}).get(nid, 0), nid != default, nid))
        return ranked[0] if ranked else default

    for o in view.open_slots:
        slot = o.slot
        handled.add(slot)
        owner = view.owners[slot]
        mig, imp = dict(o.migrating), dict(o.importing)
        involved = sorted({*mig, *imp, *mig.values(), *imp.values(), *keys.get(slot, {})})
        if owner is not None and list(mig) == [owner] and imp == {mig[owner]: owner}:
            target = mig[owner]
            items.append({"slot": slot, "class": "open", "action": "finish", "target": target, "sources": [owner],
                          "keys": keys.get(slot, {}), "open_on": involved})
            continue
        target = owner or most_keys([n for n in involved if n in load], slot, None)
        if target is None:
            continue  # nothing to anchor it to: reported by verification
        items.append({"slot": slot, "class": "open", "action": "rollback" if owner else "assign-and-rollback",
                      "target": target, "sources": [n for n in keys.get(slot, {}) if n != target],
                      "keys": keys.get(slot, {}), "open_on": involved})
    uncovered = sorted({sl for a, b in view.uncovered for sl in range(a, b + 1)} | set(view.unclaimed))
    for slot in uncovered:
        if slot in handled:
            continue
        holders = [n for n in keys.get(slot, {}) if n in load]
        if holders:
            target = most_keys(holders, slot, None)
        else:
            target = min(load, key=lambda nid: (load[nid], nid))
            load[target] += 1
        items.append({"slot": slot, "class": "uncovered", "action": "assign", "target": target,
                      "sources": [n for n in holders if n != target], "keys": keys.get(slot, {}), "open_on": []})
    for slot, claimants in sorted(view.multiple_owners.items()):
        if slot in handled:
            continue
        target = most_keys(list(claimants), slot, view.owners[slot])
        items.append({"slot": slot, "class": "owners", "action": "keep-one", "target": target,
                      "sources": [n for n in claimants if n != target], "keys": keys.get(slot, {}), "open_on": []})
    return items


# -- pre-checks ---------------------------------------------------------------------------------


async def check_survey(ctx: Context) -> Verdict:
    s = common.session(ctx)
    view = s.view
    if view is None:
        return Verdict(False, "the cluster could not be read (see the first pre-check)")
    broken = sorted({o.slot for o in view.open_slots} | {sl for a, b in view.uncovered for sl in range(a, b + 1)}
                    | set(view.multiple_owners) | set(view.unclaimed))
    keys = await count_everywhere(ctx, view, broken)
    items = plan_fixes(view, keys)
    ctx.state["fixes"] = items
    if not items:
        extra = f"; nodes disagree: {', '.join(s.name(n) for n in view.disagreeing)} (gossip usually settles this)" if view.disagreeing else ""
        return Verdict(True, f"nothing to repair: all slots covered, none open, none claimed twice{extra}")
    by = {c: sum(1 for i in items if i["class"] == c) for c in CLASSES}
    return Verdict(True, f"{by['open']} open, {by['uncovered']} uncovered, {by['owners']} claimed twice; "
                         f"{sum(sum(i['keys'].values()) for i in items)} keys in them")


# -- rendering ----------------------------------------------------------------------------------


def _items(ctx: Context, cls: str) -> list[dict[str, Any]]:
    return [i for i in ctx.state.get("fixes", []) if i["class"] == cls]


def _describe(ctx: Context, item: dict[str, Any]) -> str:
    names = ctx.state.get("names", {})

    def n(nid: str) -> str:
        return names.get(nid, nid[:8])

    keys = ", ".join(f"{n(k)} {v}" for k, v in sorted(item["keys"].items())) or "no keys"
    action, target, sources = item["action"], n(item["target"]), ", ".join(map(n, item["sources"]))
    if action == "finish":
        what = f"finish the migration: {sources} -> {target}"
    elif action == "rollback":
        what = f"roll back to the owner {target}" + (f" (keys from {sources})" if sources else "")
    elif action == "assign-and-rollback":
        what = f"no owner: give it to {target} (most keys), keys from others back to it"
    elif action == "assign":
        what = f"give it to {target}" + (f", moving keys from {sources}" if sources else
                                         (" (holds its keys)" if item["keys"] else " (no keys anywhere: fewest slots)"))
    else:
        what = f"keep {target}'s claim; {sources} move their keys to it and drop theirs"
    return f"# slot {item['slot']}: {keys}: {what}"


def _render(cls: str, commands: list[str]) -> Any:
    def render(ctx: Context) -> list[str]:
        items = _items(ctx, cls)
        if not items:
            return ["# nothing to do"]
        shown = [_describe(ctx, i) for i in items[:40]]
        if len(items) > 40:
            shown.append(f"# ... and {len(items) - 40} more slots of this class")
        return shown + commands
    return render


OPEN_CMDS = [
    "# finish: CLUSTER GETKEYSINSLOT <slot> 1000 + MIGRATE ... AUTH *** KEYS ... on the owner until empty;",
    "#         CLUSTER BUMPEPOCH on the target until its epoch is above the owner's;",
    "#         CLUSTER SETSLOT <slot> NODE <target> on the target, then every other master",
    "# roll back: MIGRATE the keys of every other node back to the owner; CLUSTER SETSLOT <slot> STABLE on each node",
    "#            that has it open; CLUSTER SETSLOT <slot> NODE <owner> on every master",
]
UNCOVERED_CMDS = [
    "CLUSTER BUMPEPOCH   # on the chosen master, until its epoch (CLUSTER INFO) is above the listed owner's",
    "CLUSTER SETSLOT <slot> NODE <master>   # on the chosen master",
    "# keys on other masters: MIGRATE ... AUTH *** KEYS ... to it",
    "CLUSTER SETSLOT <slot> NODE <master>   # on every other master",
]
OWNERS_CMDS = [
    "# keys of the other claimants: MIGRATE ... AUTH *** KEYS ... to the kept owner",
    "CLUSTER DELSLOTS <slot>   # on each other claimant",
    "CLUSTER BUMPEPOCH   # on the owner, until its epoch is above every other claimant's",
    "CLUSTER SETSLOT <slot> NODE <owner>   # on every master",
]


# -- repair -------------------------------------------------------------------------------------


def _own_slots(view: ClusterView, node_id: str) -> set[int]:
    n = view.node(node_id)
    return {sl for a, b in (n.slots if n else ()) for sl in range(a, b + 1)}


def _others(mv: Mover, *exclude: str) -> list[str]:
    return [n for n in mv.endpoints if n not in exclude]


async def repair(ctx: Context, cls: str) -> None:
    s = common.session(ctx)
    view = await s.refresh()
    mv = common.mover(ctx)
    log = mv.journal
    items = _items(ctx, cls)
    ctx.state["total_slots"] = len(items)
    done = 0
    if cls == "uncovered":
        # Coverage first, for every slot without an owner (open ones too): while one slot has
        # no owner the cluster is down (cluster-require-full-coverage) and refuses the
        # RESTOREs that MIGRATE sends, so no key could move yet.
        for item in ctx.state.get("fixes", []):
            if item["action"] in ("assign", "assign-and-rollback") and item["slot"] not in _own_slots(view, item["target"]) \
                    and item["target"] in mv.endpoints:
                # SETSLOT NODE rather than ADDSLOTS: it also takes a slot that the target's own
                # table gives to a node which does not claim it. The epoch first, so the claim wins.
                # Its epoch above the node the others' tables name (which may not claim it).
                await mv.outrank(item["target"], [n for n in (view.owners[item["slot"]],) if n])
                await mv.endpoints[item["target"]].client.execute_command("CLUSTER", "SETSLOT", item["slot"], "NODE", item["target"])
                log({"event": "slot", "slot": item["slot"], "phase": "claimed"})
        view = await s.refresh()
    for item in items:
        slot, target = item["slot"], item["target"]
        if target not in mv.endpoints:
            raise RuntimeError(f"slot {slot}: {ctx.state['names'].get(target, target)} does not answer; resume when it is back")
        sources = [n for n in item["sources"] if n in mv.endpoints]
        is_open = any(o.slot == slot for o in view.open_slots)
        fixed = view.owners[slot] == target and not is_open and slot not in view.multiple_owners
        if fixed and not any(item["keys"].get(n) for n in sources):
            log({"event": "slot", "slot": slot, "phase": "already-fixed"})
            done += 1
            continue
        log({"event": "slot", "slot": slot, "class": cls, "action": item["action"], "phase": "start"})
        dst = mv.endpoints[target]
        if item["action"] == "finish":
            await mv.drain(item["sources"][0], target, [slot])
            log({"event": "slot", "slot": slot, "phase": "keys-moved"})
            await mv.outrank(target, item["sources"])
            await mv.assign(target, [slot], first=[target], then=_others(mv, target))
        else:
            if item["action"] == "keep-one":
                await mv.outrank(target, sources)  # its claim must beat the other claimants'
                await dst.client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target)
            for src in sources:
                await mv.drain(src, target, [slot])
            log({"event": "slot", "slot": slot, "phase": "keys-moved"})
            for nid in item.get("open_on", []):
                if nid in mv.endpoints:
                    await mv.endpoints[nid].client.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
            if item["action"] == "keep-one":
                for src in sources:
                    if slot in _own_slots(view, src):
                        await mv.endpoints[src].client.execute_command("CLUSTER", "DELSLOTS", slot)
            await mv.assign(target, [slot], first=[target], then=_others(mv, target))
            await mv.outrank(target, sources)
        log({"event": "slot", "slot": slot, "phase": "done"})
        done += 1
        ctx.progress(done, len(items), "slots")
    ctx.log(f"{cls}: {done} slots repaired ({mv.stats.keys} keys moved"
            + (f", {mv.stats.replaced_equal} equal duplicates replaced" if mv.stats.replaced_equal else "")
            + (f", {mv.stats.replaced_differing} differing keys replaced as asked" if mv.stats.replaced_differing else "") + ")")


async def fix_open(ctx: Context) -> None:
    await repair(ctx, "open")


async def fix_uncovered(ctx: Context) -> None:
    await repair(ctx, "uncovered")


async def fix_owners(ctx: Context) -> None:
    await repair(ctx, "owners")


async def do_verify(ctx: Context) -> None:
    expect = {i["slot"]: i["target"] for i in ctx.state.get("fixes", [])}
    (await common.verify_cluster(ctx, expect)).require(ctx.log)


def _needs_coverage(ctx: Context) -> bool:
    return any(i["class"] == "uncovered" or i["action"] == "assign-and-rollback" for i in ctx.state.get("fixes", []))


def _has(cls: str) -> Any:
    return lambda ctx: bool(_items(ctx, cls))


RUNBOOK = Runbook(
    id="redis.cluster-fix",
    title="Repair Redis Cluster slots: open, uncovered, claimed twice",
    params=(
        Param("replace_differing", "a key on both sides with different values: keep the moving side's", type=bool, default=False),
        Param("expect_writes", "clients write meanwhile: report, do not require, an unchanged key count", type=bool, default=False),
    ),
    prechecks=(
        Check("reachable", "every master answers", common.check_reachable, overridable=True),
        Check("survey", "find open, uncovered and twice-claimed slots, and their keys", check_survey, timeout=120),
    ),
    steps=(
        Step("uncovered", "Cover slots without an owner", "the master holding their keys takes them; empty ones go to the "
             "master with the fewest slots", Kind.ACTION, _render("uncovered", UNCOVERED_CMDS), run=fix_uncovered,
             confirm=Confirm.YES_NO, timeout=3600.0, applies=_needs_coverage,
             on_failure="resume the run: slots already covered are skipped"),
        Step("open", "Close open slots", "finish migrations both sides agree on; roll back the others to the owner",
             Kind.ACTION, _render("open", OPEN_CMDS), run=fix_open, confirm=Confirm.YES_NO, timeout=3600.0,
             applies=_has("open"), on_failure="resume the run: each slot is re-read and finished from where it is"),
        Step("owners", "Resolve slots claimed twice", "the claimant with most keys keeps the slot; the others hand over "
             "their keys and drop their claim", Kind.ACTION, _render("owners", OWNERS_CMDS), run=fix_owners,
             confirm=Confirm.YES_NO, timeout=3600.0, applies=_has("owners"),
             on_failure="resume the run; a BUSYKEY with differing values needs --param replace_differing=true or a manual choice"),
        Step("verify", "Verify", "16384 slots covered, none open, every node agrees, total key count unchanged",
             Kind.CHECK, lambda ctx: ["CLUSTER NODES   # on every node", "DBSIZE   # on every master"], run=do_verify, timeout=120.0),
    ),
    setup=common.setup,
    teardown=common.teardown,
)
