"""Redis's drill probe (dbops.drill.probe.Probe): one stream entry per write, `XADD <key> <seq>-1
seq <seq>`, on the master that clients write to now.

Groups: a cluster has one stream per master shard, its key holding a hash tag whose slot that
shard serves (`dbops:drill:{g7}:<run id>`), so that the writes go to every master in turn (write
`seq` goes to group `seq % groups`) and the loss of any one master shows in the probe. Sentinel
and standalone deployments have one stream on the master.

Finding the master is what clients do, redone after every failure (reset): a cluster's slot map
from CLUSTER SLOTS on any node that answers (each stream follows its tag's slot to whichever
master serves it now: a promoted replica after a failover); Sentinel's SENTINEL
GET-MASTER-ADDR-BY-NAME, then ROLE on that address, which must say master; standalone: the
member whose ROLE says master. The tags are chosen once, from the slot ranges, and kept: they
name the streams the RPO is read from after recovery.

Every command is O(1) or O(log n) in the stream (XADD, XRANGE by id), or pages through the
probe's own streams (XRANGE ... COUNT); never KEYS or SCAN. Connections come from the Redis
engine's client module: the cluster's credentials and TLS, no retries inside redis-py (a probe
call fails at once and the drill's loop tries again at its next tick). redis-py is imported on
the first call, off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from dbops.config import ClusterRef
from dbops.engines.base import import_off_loop
from dbops.engines.redis import client as rc
from dbops.engines.redis.topology import SLOTS, key_slot

PREFIX = "dbops:drill:"
BATCH = 1000  # stream entries per XRANGE of present()
# Hash tags tried for a shard's slots: g0, g1, ...; a shard that owns a single slot needs about
# 16384 tries on average, so this bound only stops a search for a shard that owns no slot at all.
TAG_TRIES = 500_000

T = TypeVar("T")


class NotServing(Exception):
    """A node that answered, but is not the one to write to (a replica, a sentinel that does not
    know the master): its message is the whole reason."""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def choose_tags(shards: Sequence[Sequence[tuple[int, int]]]) -> list[str]:
    """For each shard (its inclusive slot ranges), the first hash tag g0, g1, ... whose slot it
    owns. Deterministic: the same slot ranges give the same tags (and so the same stream keys)."""
    owner = [-1] * SLOTS
    for i, ranges in enumerate(shards):
        for a, b in ranges:
            for s in range(a, b + 1):
                owner[s] = i
    tags: list[str | None] = [None] * len(shards)
    left = len(shards)
    for k in range(TAG_TRIES):
        if not left:
            break
        tag = f"g{k}"
        i = owner[key_slot(tag)]
        if i >= 0 and tags[i] is None:
            tags[i] = tag
            left -= 1
    if left:
        raise ValueError(f"no hash tag found for {left} master shard(s): a master without slots cannot take probe writes")
    return [t for t in tags if t is not None]


def parse_cluster_slots(reply: Any, asked: str) -> list[tuple[str, str, list[tuple[int, int]]]]:
    """CLUSTER SLOTS -> [(master node id, master address, its slot ranges)], ordered by first
    slot. A master announced without an address ("" or "?") is the node that was asked."""
    asked_host = asked.rpartition(":")[0]
    by_id: dict[str, tuple[str, list[tuple[int, int]]]] = {}
    for entry in reply or ():
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        host = _text(master[0])
        if host in ("", "?"):
            host = asked_host
        address = f"{host}:{int(master[1])}"
        node_id = _text(master[2]) if len(master) > 2 else address
        by_id.setdefault(node_id, (address, []))[1].append((start, end))
    shards = [(nid, addr, sorted(ranges)) for nid, (addr, ranges) in by_id.items()]
    shards.sort(key=lambda s: s[2][0][0])
    return shards


class RedisProbe:
    def __init__(self, ref: ClusterRef, run_id: str):
        opts = ref.cluster.redis
        assert opts is not None
        self.ref = ref
        self.opts = opts
        self.run_id = run_id
        self.mode = opts.mode
        self.master_name = opts.master_name
        # Cluster: one hash tag per master shard, chosen at the first discovery and kept.
        self.tags: list[str] | None = None if self.mode == "cluster" else []
        # Per group: the address of the master that serves its stream now; None: find out.
        self._route: list[str] | None = None
        self._clients: dict[str, Any] = {}  # master address -> redis.asyncio.Redis
        self._creds: rc.Credentials | None = None
        self._known: list[str] = []  # cluster nodes seen in the last slot map (seeds besides the config's)
        if self.mode == "cluster":
            self.target = f"streams {PREFIX}{{<tag>}}:{run_id}, one on each master shard"
        elif self.mode == "sentinel":
            self.target = f"stream {PREFIX}{run_id} on the master of {self.master_name} (asked of the sentinels)"
        else:
            self.target = f"stream {PREFIX}{run_id} on the member that is master"

    # -- what it writes ----------------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        """The stream of each group (a cluster's: known once the slot map was read)."""
        if self.mode != "cluster":
            return [f"{PREFIX}{self.run_id}"]
        return [f"{PREFIX}{{{t}}}:{self.run_id}" for t in self.tags or ()]

    def commands(self) -> list[str]:
        key = f"{PREFIX}{{<tag>}}:{self.run_id}" if self.mode == "cluster" else f"{PREFIX}{self.run_id}"
        if self.mode == "cluster":
            find = ["CLUSTER SLOTS  -- on the configured nodes, at open and after any failure: which master serves each "
                    "shard; one hash tag per master shard, its stream on that master"]
            where = ", on the master serving its slot; write <seq> goes to the stream of shard <seq> % <shards>"
        elif self.mode == "sentinel":
            find = [f"SENTINEL GET-MASTER-ADDR-BY-NAME {self.master_name}  -- on the sentinels, at open and after any failure",
                    "ROLE  -- on the address they give: it must say master"]
            where = ", on the master"
        else:
            find = ["ROLE  -- on each member, at open and after any failure: the one that says master"]
            where = ", on the master"
        return [
            *find,
            f"XADD {key} <seq>-1 seq <seq>  -- every 0.1 s{where}",
            f"XRANGE {key} <seq>-1 <seq>-1  -- read back",
            f"XRANGE {key} <first seq>-1 + COUNT {BATCH}, then from (<last id>  -- after recovery: which writes are there",
            f"DEL {key}  -- each stream, at the end of the drill",
        ]

    # -- finding the master(s) -----------------------------------------------------------------

    async def _first(self, addresses: Sequence[str], ask: Callable[[str, Any], Awaitable[T]], what: str,
                     sentinel: bool = False) -> T:
        """`ask(address, client)` of every address at once, each on a connection of its own
        (closed after); the first answer wins (a dead node costs the others nothing). All
        failing: ConnectionError saying why for each."""
        assert self._creds is not None
        creds = self._creds
        timeout = self.ref.timeout

        async def one(address: str) -> T:
            client = rc.connect(self.ref, address, sentinel=sentinel, timeout=timeout, creds=creds)
            try:
                return await asyncio.wait_for(ask(address, client), timeout)
            finally:
                await rc.close(client)

        order = list(dict.fromkeys(addresses))
        tasks = {asyncio.ensure_future(one(a)): a for a in order}
        pending = set(tasks)
        reasons: list[str] = []
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: order.index(tasks[t])):
                    exc = task.exception()
                    if exc is None:
                        return task.result()
                    reasons.append(str(exc) if isinstance(exc, NotServing) else
                                   rc.classify(exc, tasks[task], timeout, creds.password, creds.sentinel_password)[1])
        finally:
            for task in pending:
                task.cancel()
            # The losers' answers (or failures) no longer matter: the winner's is used.
            await asyncio.gather(*pending, return_exceptions=True)
        raise ConnectionError(f"no usable answer from the {what} of {self.ref.key}: " + "; ".join(reasons))

    async def _discover(self) -> list[str]:
        """The address of the master serving each group's stream now."""
        members = [f"{m.host}:{m.port}" for m in self.ref.cluster.members]
        if self.mode == "cluster":
            shards = await self._first([*members, *(a for a in self._known if a not in members)], _cluster_slots, "nodes")
            self._known = [addr for _, addr, _ in shards]
            if self.tags is None:
                self.tags = choose_tags([ranges for _, _, ranges in shards])
                self.target = (f"streams {PREFIX}{{{'|'.join(self.tags)}}}:{self.run_id} on {len(self.tags)} master shards")
            route = []
            for key in self.keys:
                slot = key_slot(key)
                owner = next((addr for _, addr, ranges in shards if any(a <= slot <= b for a, b in ranges)), None)
                if owner is None:
                    raise ConnectionError(f"no master of {self.ref.key} serves slot {slot} (stream {key})")
                route.append(owner)
            return route
        if self.mode == "sentinel":
            assert self.master_name is not None
            name = self.master_name
            sentinels = [f"{s.host}:{s.port}" for s in self.opts.sentinels]

            async def master_of(address: str, client: Any) -> str:
                reply = await client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
                if not reply:
                    raise NotServing(f"sentinel {address} does not monitor {name}")
                return f"{_text(reply[0])}:{int(reply[1])}"

            master = await self._first(sentinels, master_of, "sentinels", sentinel=True)
            # A sentinel that has not yet heard of a failover names the old master: it must say so itself.
            await self._first([master], _must_be_master, f"master {master} named by the sentinels")
            return [master]
        master = await self._first(members, _must_be_master, "members")
        return [master]

    async def _routes(self) -> list[tuple[str, Any]]:
        """(stream key, client of its master) per group, discovering the masters when unknown."""
        if self._route is None:
            await import_off_loop("redis.asyncio")  # the first time: ~0.1 s of imports, not on the loop
            self._creds = self._creds or rc.Credentials(self.ref)
            self._route = await self._discover()
        assert self._creds is not None
        routes = []
        for key, address in zip(self.keys, self._route):
            if address not in self._clients:
                self._clients[address] = rc.connect(self.ref, address, timeout=self.ref.timeout, creds=self._creds)
            routes.append((key, self._clients[address]))
        return routes

    # -- the probe -------------------------------------------------------------------------------

    async def open(self) -> None:
        # The streams are created by their first XADD; EXISTS on each proves its master answers
        # for the key (a cluster node that does not serve the slot answers MOVED).
        for key, client in await self._routes():
            await client.execute_command("EXISTS", key)

    async def write(self, seq: int) -> None:
        routes = await self._routes()
        key, client = routes[seq % len(routes)]
        entry = f"{int(seq)}-1"
        reply = _text(await client.execute_command("XADD", key, entry, "seq", str(int(seq))))
        if reply != entry:
            raise RuntimeError(f"XADD to {key} answered id {reply}, not {entry}")

    async def read(self, seq: int) -> bool:
        routes = await self._routes()
        key, client = routes[seq % len(routes)]
        entry = f"{int(seq)}-1"
        return bool(await client.execute_command("XRANGE", key, entry, entry))

    async def present(self, seqs: Sequence[int]) -> set[int]:
        return await self._once_settled(lambda: self._present(seqs))

    async def _present(self, seqs: Sequence[int]) -> set[int]:
        routes = await self._routes()
        wanted = {int(s) for s in seqs}
        found: set[int] = set()
        for g, (key, client) in enumerate(routes):
            mine = [s for s in wanted if s % len(routes) == g]
            if not mine:
                continue
            start, last = f"{min(mine)}-1", max(mine)
            while True:
                entries = await client.execute_command("XRANGE", key, start, "+", "COUNT", str(BATCH))
                for entry_id, _fields in entries:
                    s = int(_text(entry_id).partition("-")[0])
                    if s in wanted:
                        found.add(s)
                if len(entries) < BATCH:
                    break
                tail = _text(entries[-1][0])
                if int(tail.partition("-")[0]) >= last:
                    break
                start = "(" + tail
        return found

    async def _once_settled(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call`, tried again (routes found afresh) for a bounded while: right after a failover a
        cluster's nodes learn of the new master by gossip, and one may still answer CLUSTERDOWN or
        MOVED to the dead master for a moment. The RPO read and the cleanup run then; the probe's
        own writes do not (a failure there is the measurement)."""
        deadline = time.monotonic() + self.ref.timeout * 3
        while True:
            try:
                return await call()
            except Exception:
                await self.reset()
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _drop(self) -> None:
        for key, client in await self._routes():
            await client.execute_command("DEL", key)

    async def reset(self) -> None:
        self._route = None
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(rc.close(c) for c in clients))

    async def close(self, drop: bool) -> None:
        try:
            if drop:
                await self._once_settled(self._drop)
        finally:
            await self.reset()


async def _cluster_slots(address: str, client: Any) -> list[tuple[str, str, list[tuple[int, int]]]]:
    shards = parse_cluster_slots(await client.execute_command("CLUSTER", "SLOTS"), address)
    if not shards:
        raise NotServing(f"{address} serves no slot (CLUSTER SLOTS is empty)")
    return shards


async def _must_be_master(address: str, client: Any) -> str:
    role = await client.execute_command("ROLE")
    said = _text(role[0]) if role else "?"
    if said != "master":
        raise NotServing(f"{address} is not the master (ROLE: {said})")
    return address
