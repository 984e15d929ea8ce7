"""Moving hash slots between Redis Cluster masters, fast and resumable.

What `redis-cli --cluster reshard` does one slot at a time (SETSLOT IMPORTING, SETSLOT
MIGRATING, GETKEYSINSLOT 10 / MIGRATE 10 keys until empty, SETSLOT NODE on every master),
this does for a group of slots at once, every phase pipelined:

1. the target marks every slot of the group IMPORTING, then the source marks them MIGRATING
   (target first: a key the source redirects with ASK must find the target ready);
2. GETKEYSINSLOT for every slot still holding keys, in one pipeline; MIGRATE the keys found in
   batches sized by bytes (the source's average value size sets the key count), the batches of
   one round pipelined on the source connection; repeat until no slot has keys;
3. SETSLOT NODE on the target first (its config epoch made greater than the source's before it
   claims anything: see Mover.outrank), then on the source and every other master concurrently,
   each a pipeline. An empty slot skips steps 1 and 2.

A group's slots are journaled before (open) and after (closed) each phase change, and a crash at
any point is repaired from the live state: a slot still MIGRATING/IMPORTING is finished in the
planned direction, a slot already owned by the target is done. MIGRATE's BUSYKEY (the target
already holds a key of that name) is resolved by comparing DUMPs: equal values are replaced
(nothing lost), differing values stop the run unless the operator allowed overwriting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dbops.engines.redis.topology import ClusterView, NodeLine

GROUP_SLOTS = 256  # slots per pipelined group: amortises round trips, keeps a crash's open set small
GROUPS_IN_FLIGHT = 3
EPOCH_WAIT_SECONDS = 15.0  # for the target to hear of the source's epoch (gossip: well under a second)
FETCH_KEYS = 1000  # GETKEYSINSLOT count per slot and round
BATCH_BYTES = 4 * 1024 * 1024  # aim for MIGRATE batches of about this many bytes
MAX_BATCH_KEYS = 1000
MIGRATE_TIMEOUT_MS = 60_000


class SlotMoveError(Exception):
    """A move that must stop; the message says which slot and why, never a value."""


class DifferingValues(SlotMoveError):
    pass


@dataclass
class MoveStats:
    slots: int = 0
    keys: int = 0
    batches: int = 0
    replaced_equal: int = 0
    replaced_differing: int = 0
    seconds: float = 0.0


Journal = Callable[[dict[str, Any]], None]


@dataclass
class Endpoint:
    """A master: its node id, announced address and its connections (a WirePool: replies are
    bytes, keys and DUMP payloads included; a key need not be UTF-8)."""

    node_id: str
    address: str
    client: Any

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


@dataclass
class Mover:
    """Moves slots between masters. `auth` is the MIGRATE authentication suffix (`AUTH pw` or
    `AUTH2 user pw`) as a tuple; it is sent, never logged or rendered."""

    endpoints: dict[str, Endpoint]  # node id -> endpoint, every master
    auth: tuple[str, ...] = ()
    batch_bytes: int = BATCH_BYTES
    replace_differing: bool = False
    throttle_keys_per_second: float = 0.0  # 0: as fast as the servers go
    journal: Journal = lambda entry: None
    progress: Callable[[int, int], None] = lambda keys, slots: None
    stats: MoveStats = field(default_factory=MoveStats)
    _avg_value: dict[str, float] = field(default_factory=dict)
    _outranked: set[tuple[str, str]] = field(default_factory=set)
    _outrank_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    # -- planning helpers ------------------------------------------------------------------------

    async def count_keys(self, node_id: str, slots: Sequence[int]) -> dict[int, int]:
        ep = self.endpoints[node_id]
        replies = await _pipeline(ep.client, [("CLUSTER", "COUNTKEYSINSLOT", s) for s in slots])
        return {s: int(r) for s, r in zip(slots, replies)}

    async def average_value_bytes(self, node_id: str) -> float:
        if node_id not in self._avg_value:
            ep = self.endpoints[node_id]
            info = _parse(_text(await ep.client.execute_command("INFO", "memory", "keyspace")))
            keys = sum(int(_fields(v).get("keys", 0)) for k, v in info.items() if k.startswith("db"))
            dataset = int(info.get("used_memory_dataset", 0) or 0)
            self._avg_value[node_id] = max(64.0, dataset / keys) if keys else 1024.0
        return self._avg_value[node_id]

    # -- moving ----------------------------------------------------------------------------------

    async def move(self, source: str, target: str, slots: Sequence[int], others: Iterable[str] | None = None) -> MoveStats:
        """Move `slots` (owned by `source`) to `target`, a group at a time."""
        started = time.monotonic()
        rest = [n for n in (others if others is not None else self.endpoints) if n not in (source, target)]
        groups = [list(slots[i:i + GROUP_SLOTS]) for i in range(0, len(slots), GROUP_SLOTS)]
        # A few groups in flight at once (each on its own connections): while the source runs
        # one group's MIGRATEs, the target takes another's SETSLOTs and the client encodes a
        # third's commands. Each node still executes one command at a time.
        gate = asyncio.Semaphore(GROUPS_IN_FLIGHT)

        async def one(group: list[int]) -> None:
            async with gate:
                await self.move_group(source, target, group, rest)

        results = await asyncio.gather(*(one(g) for g in groups), return_exceptions=True)
        self.stats.seconds += time.monotonic() - started
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]
        return self.stats

    async def outrank(self, target: str, rivals: Sequence[str]) -> int:
        """Make `target`'s config epoch greater than every rival's, before it claims their slots.

        A claim wins in gossip only with the greater epoch; a claim made with a lower one is
        taken back by the rival's next PONG, and once the rival has let go no node serves the
        slot. BUMPEPOCH alone is not enough: a node bumps only when it does not already hold the
        greatest epoch *it knows of*, and a rival's own recent bump reaches it only by gossip. So
        the epochs are read from the nodes themselves, and the bump repeated until the target's
        is greater. (Closing IMPORTING with SETSLOT NODE bumps too, once per slot: most of a
        slot's fixed cost, and subject to the same gossip lag.)"""
        dst = self.endpoints[target]
        deadline = time.monotonic() + EPOCH_WAIT_SECONDS
        while True:
            await _pipeline(dst.client, [("CLUSTER", "BUMPEPOCH")])
            mine = await _my_epoch(dst.client)
            theirs = [await _my_epoch(self.endpoints[r].client) for r in rivals if r in self.endpoints and r != target]
            if not theirs or mine > max(theirs):
                return mine
            if time.monotonic() > deadline:
                raise SlotMoveError(f"{dst.address} could not get a config epoch above {max(theirs)} (it has {mine}) within "
                                    f"{EPOCH_WAIT_SECONDS:g}s: it does not hear the other masters (cluster bus)")
            await asyncio.sleep(0.02)  # until gossip tells the target about the rival's epoch

    async def move_group(self, source: str, target: str, group: list[int], others: list[str]) -> None:
        src, dst = self.endpoints[source], self.endpoints[target]
        self.journal({"event": "open", "slots": group, "source": source, "target": target})
        counts = await _pipeline(src.client, [("CLUSTER", "COUNTKEYSINSLOT", s) for s in group])
        empty = [s for s, n in zip(group, counts) if int(n) == 0]
        full = [s for s, n in zip(group, counts) if int(n) > 0]
        if empty and not full:
            # One slot of every group goes the IMPORTING way, so that its close announces the
            # group to every node at once (see below); an empty slot costs two more commands.
            full = [empty.pop()]
        # Once per pair: the source never bumps during a move, so the target stays ahead.
        if (source, target) not in self._outranked:
            async with self._outrank_lock:
                if (source, target) not in self._outranked:
                    await self.outrank(target, [source])
                    self._outranked.add((source, target))
        if empty:
            # An empty slot has no key to protect: it is handed over directly, target first.
            # A key written to the source in between makes the source refuse; such a slot is
            # moved with its keys below.
            await _pipeline(dst.client, [("CLUSTER", "SETSLOT", s, "NODE", target) for s in empty])
            replies = await _pipeline(src.client, [("CLUSTER", "SETSLOT", s, "NODE", target) for s in empty], raise_on_error=False)
            refused = [s for s, r in zip(empty, replies) if isinstance(r, Exception)]
            if refused:
                await self.drain(source, target, refused)
                await self.assign(target, refused, first=[source], then=[])
            await self.assign(target, empty, first=[], then=others)
        if full:
            await _pipeline(dst.client, [("CLUSTER", "SETSLOT", s, "IMPORTING", source) for s in full])
            await _pipeline(src.client, [("CLUSTER", "SETSLOT", s, "MIGRATING", target) for s in full])
            await self.drain(source, target, full)
            # The target takes the slots first: STABLE + NODE per slot (its epoch is already the
            # greatest). Each pair is sent together, so no client command runs between them.
            # The last slot is closed from IMPORTING instead: on that NODE the target broadcasts
            # a PONG to every node (Redis does so "to let the other nodes know as soon as
            # possible"), carrying every slot it owns by then. Replicas, which SETSLOT cannot
            # reach, otherwise learn of the move only from gossip (up to cluster-node-timeout/2),
            # and verification waits for every node to agree.
            *quiet, announce = full
            await _pipeline(dst.client, [*(c for s in quiet for c in (("CLUSTER", "SETSLOT", s, "STABLE"),
                                                                       ("CLUSTER", "SETSLOT", s, "NODE", target))),
                                         ("CLUSTER", "SETSLOT", announce, "NODE", target)])
            await self.assign(target, full, first=[], then=[source, *others])
        self.journal({"event": "closed", "slots": group, "source": source, "target": target})
        self.stats.slots += len(group)
        self.progress(self.stats.keys, self.stats.slots)

    async def drain(self, source: str, target: str, slots: Sequence[int]) -> None:
        """MIGRATE every key of `slots` from source to target (both already opened, or target
        the owner). Returns when the source holds no key of those slots."""
        src, dst = self.endpoints[source], self.endpoints[target]
        per_key = await self.average_value_bytes(source)
        batch_keys = int(max(1, min(MAX_BATCH_KEYS, self.batch_bytes // per_key)))
        pending = list(slots)
        while pending:
            found = await _pipeline(src.client, [("CLUSTER", "GETKEYSINSLOT", s, FETCH_KEYS) for s in pending])
            keys = [k for ks in found for k in ks]
            # A slot that returned a full page may hold more; the others are empty once migrated.
            pending = [s for s, ks in zip(pending, found) if len(ks) >= FETCH_KEYS]
            if not keys:
                continue
            # In a cluster one MIGRATE takes keys of one slot only; the batches of every slot of
            # the round still go in one pipeline.
            batches = [ks[i:i + batch_keys] for ks in found for i in range(0, len(ks), batch_keys)]
            cmds = [("MIGRATE", dst.host, dst.port, "", 0, MIGRATE_TIMEOUT_MS, *self.auth, "KEYS", *b) for b in batches]
            replies = await _pipeline(src.client, cmds, raise_on_error=False)
            for batch, reply in zip(batches, replies):
                if isinstance(reply, Exception):
                    if "BUSYKEY" not in str(reply):
                        raise SlotMoveError(f"MIGRATE from {src.address} to {dst.address} failed: {_short(reply)}")
                    await self._busy(src, dst, batch)
                self.stats.batches += 1
            self.stats.keys += len(keys)
            self.progress(self.stats.keys, self.stats.slots)
            if self.throttle_keys_per_second > 0:
                await asyncio.sleep(len(keys) / self.throttle_keys_per_second)

    async def _busy(self, src: Endpoint, dst: Endpoint, batch: list[str]) -> None:
        """Some keys of `batch` exist on the target. Those still on the source are compared by
        DUMP: equal ones are replaced (same value), differing ones only with replace_differing."""
        # A key MIGRATE already moved is answered with ASK by the (migrating) source: gone from it.
        exists = await _pipeline(src.client, [("EXISTS", k) for k in batch], raise_on_error=False)
        asked = [e for e in exists if isinstance(e, Exception) and not str(e).startswith("ASK ")]
        if asked:
            raise SlotMoveError(f"EXISTS on {src.address} failed: {_short(asked[0])}")
        left = [k for k, e in zip(batch, exists) if not isinstance(e, Exception) and int(e)]
        if not left:
            return
        mine = await _pipeline(src.client, [("DUMP", k) for k in left])
        # The target may not own the slot yet: ASKING lets the next command read it.
        theirs_raw = await _pipeline(dst.client, [c for k in left for c in (("ASKING",), ("DUMP", k))])
        theirs = theirs_raw[1::2]
        differing = [k for k, a, b in zip(left, mine, theirs) if b is not None and a != b]
        if differing and not self.replace_differing:
            shown = ", ".join(_text(k) for k in differing[:5]) + (f" and {len(differing) - 5} more" if len(differing) > 5 else "")
            raise DifferingValues(
                f"{len(differing)} key(s) exist on both {src.address} and {dst.address} with different values: {shown}. "
                "Nothing was overwritten. Compare them, then rerun with --param replace_differing=true to keep the "
                "source's values, or delete the copy you do not want.")
        replies = await _pipeline(src.client, [("MIGRATE", dst.host, dst.port, "", 0, MIGRATE_TIMEOUT_MS, "REPLACE", *self.auth, "KEYS", *left)],
                                  raise_on_error=False)
        if isinstance(replies[0], Exception):
            raise SlotMoveError(f"MIGRATE REPLACE from {src.address} to {dst.address} failed: {_short(replies[0])}")
        self.stats.replaced_differing += len(differing)
        self.stats.replaced_equal += len(left) - len(differing)

    async def assign(self, owner: str, slots: Sequence[int], first: Sequence[str], then: Iterable[str]) -> None:
        """SETSLOT NODE owner on `first` in order (the target first), then on the rest
        concurrently (the source's and the other masters' views are independent)."""
        for node_id in first:
            ep = self.endpoints.get(node_id)
            if ep is not None:
                await _pipeline(ep.client, [("CLUSTER", "SETSLOT", s, "NODE", owner) for s in slots])
        await asyncio.gather(*(_pipeline(self.endpoints[n].client, [("CLUSTER", "SETSLOT", s, "NODE", owner) for s in slots])
                               for n in then if n in self.endpoints and n not in first))


async def _pipeline(client: Any, commands: Sequence[tuple[Any, ...]], raise_on_error: bool = True) -> list[Any]:
    """One batch on an endpoint's connections (a WirePool; see dbops.engines.redis.wire)."""
    return await client.execute(commands, raise_on_error)


async def _my_epoch(client: Any) -> int:
    info = _parse(_text((await _pipeline(client, [("CLUSTER", "INFO")]))[0]))
    return int(info.get("cluster_my_epoch", 0))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _short(exc: BaseException | str) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _parse(text: str) -> dict[str, str]:
    out = {}
    for line in str(text).splitlines():
        k, sep, v = line.partition(":")
        if sep and not line.startswith("#"):
            out[k] = v.strip()
    return out


def _fields(value: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in value.split(",") if "=" in p)


def masters(view: ClusterView) -> list[NodeLine]:
    return [n for n in view.nodes if n.is_master and not n.failed and "noaddr" not in n.flags]
