"""What the Redis Cluster runbooks share: the session, the per-slot journal, plan rendering,
and the checks every slot-moving runbook makes."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from dbops.config import state_dir
from dbops.engines.redis.session import ClusterSession
from dbops.engines.redis.slots import FETCH_KEYS, GROUP_SLOTS, MIGRATE_TIMEOUT_MS, Mover
from dbops.engines.redis.topology import SLOTS, ClusterView, format_ranges, ranges
from dbops.model import human_bytes
from dbops.runbook.journal import runs_dir
from dbops.runbook.model import Check, Context, Verdict

CONVERGE_SECONDS = 30.0  # how long verification waits for every node to agree
CONVERGE_FIRST_POLL, CONVERGE_MAX_POLL = 0.01, 0.2  # seconds between its looks: doubling from the first to the most
# MIGRATE of one key blocks both nodes; a key this many bytes per second of cluster-node-timeout
# is too big (a conservative copy rate, so the check errs on the side of warning).
MIGRATE_BYTES_PER_SECOND = 20 * 1024 * 1024
SAMPLE_KEYS_PER_SLOT = 2
HEADROOM = 0.9  # a target may fill to this share of maxmemory


def text(v: Any) -> str:
    """A reply's string: the client hands some replies back as bytes."""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def pairs(reply: Any) -> dict[str, str]:
    """A field-value reply (SENTINEL MASTER ...) as a dict: RESP3 sends a map, RESP2 a flat list."""
    if isinstance(reply, dict):
        return {text(k): text(v) for k, v in reply.items()}
    return {text(reply[i]): text(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}


async def setup(ctx: Context) -> None:
    ctx.resources["session"] = ClusterSession(ctx.ref)


async def teardown(ctx: Context) -> None:
    s = ctx.resources.get("session")
    if s is not None:
        await s.close()


def session(ctx: Context) -> ClusterSession:
    return ctx.resources["session"]


def not_cluster(ctx: Context) -> str | None:
    opts = ctx.ref.cluster.redis
    if ctx.ref.cluster.engine != "redis" or opts is None or opts.mode != "cluster":
        return f"{ctx.ref.name} is not a Redis Cluster (engine {ctx.ref.cluster.engine}, mode {opts.mode if opts else '-'})"
    return None


class SlotLog:
    """<state dir>/runs/<run id>.slots.log: one fsynced JSON line per slot group phase, so an
    operator (and a resumed run) can see exactly which slots were open when a run stopped."""

    def __init__(self, run_id: str) -> None:
        d = runs_dir(state_dir())
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = d / f"{run_id}.slots.log"

    def __call__(self, entry: dict[str, Any]) -> None:
        line = json.dumps({"ts": time.time(), **entry}, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def open_slots(self) -> list[int]:
        """Slots of groups opened and not closed (what a crash left in flight)."""
        if not Path(self.path).exists():
            return []
        opened: dict[tuple[int, ...], bool] = {}
        for line in Path(self.path).read_text().splitlines():
            e = json.loads(line)
            opened[tuple(e.get("slots", ()))] = e.get("event") == "open"
        return sorted(s for group, is_open in opened.items() if is_open for s in group)


def mover(ctx: Context, **kw: Any) -> Mover:
    def progress(keys: int, slots: int) -> None:
        # Keys when the plan counted them (the ETA follows the data); slots for empty slots.
        total_keys = sum(int(m.get("keys") or 0) for m in ctx.state.get("moves", []))
        if total_keys:
            ctx.progress(keys, max(total_keys, keys), "keys")
        else:
            ctx.progress(slots, ctx.state.get("total_slots"), "slots")

    return session(ctx).mover(journal=SlotLog(ctx.run_id), progress=progress,
                              replace_differing=bool(ctx.params.get("replace_differing", False)),
                              throttle_keys_per_second=float(ctx.params.get("throttle", 0) or 0), **kw)


def move_commands(ctx: Context, moves: list[dict[str, Any]]) -> list[str]:
    """The exact commands of a list of moves {source, target, slots, keys, bytes}, per pair."""
    if not moves:
        return ["# nothing to move"]
    names = ctx.state.get("names", {})
    addr = ctx.state.get("addresses", {})
    out = []
    for m in moves:
        src, dst = m["source"], m["target"]
        sn, dn = names.get(src, src[:8]), names.get(dst, dst[:8])
        out += [
            f"# {len(m['slots'])} slots {format_ranges(ranges(m['slots']), 4)}: {sn} -> {dn}, "
            f"{m.get('keys', '?')} keys, about {human_bytes(m.get('bytes'))}",
            f"# in groups of {GROUP_SLOTS} slots, each command pipelined for the whole group:",
            f"CLUSTER BUMPEPOCH   # on {dn}, until CLUSTER INFO shows its epoch above {sn}'s",
            f"CLUSTER SETSLOT <slot> IMPORTING {src}   # on {dn} ({addr.get(dst, '?')}), target first",
            f"CLUSTER SETSLOT <slot> MIGRATING {dst}   # on {sn} ({addr.get(src, '?')})",
            f"CLUSTER GETKEYSINSLOT <slot> {FETCH_KEYS}   # on {sn}, until every slot is empty",
            f'MIGRATE {addr.get(dst, "?").rpartition(":")[0]} {addr.get(dst, "?").rpartition(":")[2]} "" 0 '
            f"{MIGRATE_TIMEOUT_MS} AUTH *** KEYS <key> ...   # on {sn}, batches sized by bytes",
            f"CLUSTER SETSLOT <slot> STABLE, CLUSTER SETSLOT <slot> NODE {dst}   # on {dn}; the group's last slot NODE alone "
            "(still IMPORTING: the target tells every node, replicas too, at once)",
            f"CLUSTER SETSLOT <slot> NODE {dst}   # then on {sn} and every other master",
        ]
    return out


def remember_nodes(ctx: Context, view: ClusterView) -> None:
    s = session(ctx)
    ctx.state["names"] = {n.node_id: s.name(n.node_id) for n in view.nodes}
    ctx.state["addresses"] = {n.node_id: n.address for n in view.nodes}


async def check_reachable(ctx: Context) -> Verdict:
    why = not_cluster(ctx)
    if why:
        return Verdict(False, why)
    s = session(ctx)
    view = await s.refresh()
    remember_nodes(ctx, view)
    ctx.state["keys_before"] = await s.total_keys()
    down = s.unreachable_masters()
    if down:
        return Verdict(False, "masters that do not answer (their slots cannot be checked or moved): " + "; ".join(down))
    ms = [n for n in view.nodes if n.is_master and n.slots]
    return Verdict(True, f"{len(view.nodes)} nodes, {len(ms)} masters with slots, {ctx.state['keys_before']} keys")


def slot_problems(view: ClusterView) -> list[str]:
    """What is wrong with the slots themselves: uncovered, served by no node, open, claimed twice."""
    problems = []
    if view.uncovered:
        problems.append(f"{sum(b - a + 1 for a, b in view.uncovered)} slots have no owner ({format_ranges(view.uncovered)})")
    if view.unclaimed:
        problems.append(f"{len(view.unclaimed)} slots are served by no node ({format_ranges(ranges(list(view.unclaimed)))})")
    if view.open_slots:
        problems.append(f"{len(view.open_slots)} slots are open (migrating/importing): "
                        f"{', '.join(str(o.slot) for o in view.open_slots[:8])}")
    if view.multiple_owners:
        problems.append(f"{len(view.multiple_owners)} slots are claimed by two masters: "
                        f"{', '.join(map(str, list(view.multiple_owners)[:8]))}")
    return problems


async def check_healthy(ctx: Context) -> Verdict:
    view = session(ctx).view
    if view is None:
        return Verdict(False, "the cluster could not be read (see the first pre-check)")
    problems = slot_problems(view)
    if problems:
        return Verdict(False, "; ".join(problems) + ": run redis.cluster-fix first")
    return Verdict(True, f"all {SLOTS} slots covered, none open")


async def wait_converged(ctx: Context, expect: dict[int, str] | None = None) -> ClusterView:
    """Refresh until every node agrees (and owns what `expect` says), or CONVERGE_SECONDS pass;
    returns the last view either way (verification judges it). Polled with a short backoff: a
    move announces itself (see Mover.move_group), so the nodes usually agree at the first look,
    and a fixed pause would be most of the verification."""
    s = session(ctx)
    deadline = time.monotonic() + CONVERGE_SECONDS
    pause = CONVERGE_FIRST_POLL
    while True:
        view = await s.refresh()
        wrong = [slot for slot, owner in (expect or {}).items() if view.owners[slot] != owner]
        if (not view.disagreeing and not wrong) or time.monotonic() > deadline:
            return view
        await asyncio.sleep(pause)
        pause = min(pause * 2, CONVERGE_MAX_POLL)


async def verify_cluster(ctx: Context, expect: dict[int, str] | None = None) -> Verdict:
    view = await wait_converged(ctx, expect)
    s = session(ctx)
    problems = slot_problems(view)
    if view.disagreeing:
        problems.append("nodes disagree: " + ", ".join(s.name(n) for n in view.disagreeing))
    wrong = sorted(slot for slot, owner in (expect or {}).items() if view.owners[slot] != owner)
    if wrong:
        problems.append(f"{len(wrong)} slots not at their planned owner: {format_ranges(ranges(wrong))}")
    keys = await s.total_keys()
    before = ctx.state.get("keys_before")
    if before is not None and keys != before and not ctx.params.get("expect_writes"):
        problems.append(f"total keys {keys}, {before} before the run (pass --param expect_writes=true when clients write meanwhile)")
    if problems:
        return Verdict(False, "; ".join(problems))
    return Verdict(True, f"all {SLOTS} slots covered, none open, every node agrees, {keys} keys (before: {before})")


def rounds(moves: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Moves grouped so that no node is in two moves of one round: a round's moves run in
    parallel (disjoint source -> target pairs), rounds one after another."""
    out: list[list[dict[str, Any]]] = []
    for m in moves:
        for r in out:
            busy = {x for mv in r for x in (mv["source"], mv["target"])}
            if m["source"] not in busy and m["target"] not in busy:
                r.append(m)
                break
        else:
            out.append([m])
    return out


async def execute_moves(ctx: Context, moves: list[dict[str, Any]]) -> None:
    """Carry out `moves`, resuming from whatever the live cluster shows: a slot the target
    already owns (and nobody has open) is done; a slot the target claimed before a crash is
    drained and assigned; the rest are moved in pipelined groups."""
    s = session(ctx)
    view = await s.refresh()
    mv = mover(ctx)
    missing = sorted({ctx.state["names"].get(n, n) for m in moves for n in (m["source"], m["target"]) if n not in mv.endpoints})
    if missing:
        raise RuntimeError(f"{', '.join(missing)} do not answer (or are no longer masters): their slots cannot be moved; "
                           "see `dbops check` and resume when they are back")
    opened = {o.slot for o in view.open_slots}
    ctx.state["total_slots"] = sum(len(m["slots"]) for m in moves)
    done_before = 0
    work: list[tuple[dict[str, Any], list[int], list[int]]] = []
    for m in moves:
        target_line = next((n for n in view.nodes if n.node_id == m["target"]), None)
        claimed = {sl for a, b in (target_line.slots if target_line else ()) for sl in range(a, b + 1)}
        todo = [sl for sl in m["slots"] if not (view.owners[sl] == m["target"] and sl not in opened)]
        done_before += len(m["slots"]) - len(todo)
        work.append((m, [sl for sl in todo if sl in claimed], [sl for sl in todo if sl not in claimed]))
    if done_before:
        ctx.log(f"{done_before} slots were already at their target (an earlier, interrupted run moved them)")
    mv.stats.slots = done_before

    async def one(m: dict[str, Any], claimed: list[int], rest: list[int]) -> None:
        others = [n for n in mv.endpoints if n not in (m["source"], m["target"])]
        if claimed:
            ctx.log(f"finishing {len(claimed)} slots the target already claims: {format_ranges(ranges(claimed), 4)}")
            await mv.drain(m["source"], m["target"], claimed)
            await mv.assign(m["target"], claimed, first=[m["target"], m["source"]], then=others)
            mv.stats.slots += len(claimed)
        await mv.move(m["source"], m["target"], rest, others)

    started = time.monotonic()
    for r in rounds([w[0] for w in work]):
        await asyncio.gather(*(one(m, c, rest) for (m, c, rest) in work if m in r))
    st = mv.stats
    secs = time.monotonic() - started
    ctx.state["moved"] = {"slots": st.slots, "keys": st.keys, "seconds": round(secs, 3)}
    ctx.log(f"moved {st.keys} keys in {st.slots} slots in {secs:.2f}s ({st.batches} MIGRATE batches"
            + (f"; {st.replaced_equal} keys existed on the target with equal values" if st.replaced_equal else "")
            + (f"; {st.replaced_differing} differing keys replaced as asked" if st.replaced_differing else "") + ")")


# -- checks of a list of moves (ctx.state["moves"]) -----------------------------------------


def emptied_sources(ctx: Context) -> list[str]:
    """Sources that the moves leave without a slot."""
    s = session(ctx)
    assert s.view is not None
    leaving: dict[str, int] = {}
    for m in ctx.state.get("moves", []):
        leaving[m["source"]] = leaving.get(m["source"], 0) + len(m["slots"])
    return [nid for nid, n in leaving.items() if (line := s.view.node(nid)) is not None and n >= line.slot_count]


async def check_replica_migration(ctx: Context) -> Verdict:
    emptied = emptied_sources(ctx)
    if not emptied:
        return Verdict(True, "every source keeps some slots")
    s = session(ctx)
    turning = []
    for nid in emptied:
        if await s.config_get(ctx.state["addresses"][nid], "cluster-allow-replica-migration") == "yes":
            turning.append(s.name(nid))
    if turning:
        return Verdict(False, f"this empties {', '.join(turning)}, whose cluster-allow-replica-migration is yes: each would "
                              "turn into a replica. Set it to no first (CONFIG SET cluster-allow-replica-migration no), "
                              "or override if that is what you want")
    return Verdict(True, f"{', '.join(s.name(n) for n in emptied)} will stay master(s) with no slots "
                         "(cluster-allow-replica-migration no)")


async def check_big_keys(ctx: Context) -> Verdict:
    s = session(ctx)
    big: list[tuple[str, int]] = []
    for m in ctx.state.get("moves", []):
        address = ctx.state["addresses"][m["source"]]
        timeout_ms = int(await s.config_get(address, "cluster-node-timeout") or 15000)
        limit = int(MIGRATE_BYTES_PER_SECOND * timeout_ms / 1000)
        found = await s.batch(address, [("CLUSTER", "GETKEYSINSLOT", sl, SAMPLE_KEYS_PER_SLOT) for sl in m["slots"]])
        keys = [k for ks in found for k in ks]
        for k, size in zip(keys, await s.batch(address, [("MEMORY", "USAGE", k) for k in keys])):
            if size is not None and int(size) > limit:
                big.append((k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k), int(size)))
    if big:
        shown = ", ".join(f"{k} ({v // 1024 // 1024} MiB)" for k, v in big[:5])
        return Verdict(False, f"keys that may not MIGRATE within cluster-node-timeout (a blocked node looks dead): {shown}")
    sampled = sum(len(m["slots"]) for m in ctx.state.get("moves", [])) * SAMPLE_KEYS_PER_SLOT
    return Verdict(True, f"no big key among up to {sampled} sampled (MEMORY USAGE of {SAMPLE_KEYS_PER_SLOT} per slot)")


async def check_headroom(ctx: Context) -> Verdict:
    s = session(ctx)
    incoming: dict[str, int] = {}
    for m in ctx.state.get("moves", []):
        incoming[m["target"]] = incoming.get(m["target"], 0) + int(m.get("bytes") or 0)
    problems, notes = [], []
    for target, extra in incoming.items():
        info = await s.info(ctx.state["addresses"][target], "memory")
        used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0) or 0)
        if limit and used + extra > limit * HEADROOM:
            problems.append(f"{s.name(target)}: {used + extra} bytes after the move > {int(HEADROOM * 100)}% of maxmemory {limit}")
        notes.append(f"{s.name(target)} {used // 1024 // 1024} MiB + {extra // 1024 // 1024} MiB" + (f" of {limit // 1024 // 1024} MiB" if limit else ""))
    if problems:
        return Verdict(False, "; ".join(problems))
    return Verdict(True, "; ".join(notes) or "nothing moves")


MOVE_CHECKS = (
    Check("replica-migration", "an emptied source stays a master", check_replica_migration, overridable=True),
    Check("big-keys", "no key too big to MIGRATE within cluster-node-timeout", check_big_keys, overridable=True, timeout=120),
    Check("headroom", "each target has memory for the keys it receives", check_headroom, overridable=True),
)
