"""A runbook's connections to a Redis Cluster: every node found from the configured seeds, the
configuration as each node reports it, and helpers to name and resolve nodes.

Runbooks open their own connections (longer timeouts than the poller's, bytes not str) and
close them at teardown. The session's own reads (CLUSTER NODES, DBSIZE, CONFIG GET, INFO) and
batches go over the same lean connections as the slot mover (dbops.engines.redis.wire), one set
per node for the whole run: a runbook that only reads and moves slots never imports redis-py
(a tenth of a second of a command's start) nor connects twice to a node. `client()` still hands
out a redis-py client to the runbooks that use its API.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dbops.config import ClusterRef
from dbops.engines.base import names_by_address
from dbops.engines.redis import client as rc
from dbops.engines.redis.slots import GROUPS_IN_FLIGHT, Endpoint, Mover, masters
from dbops.engines.redis.topology import ClusterView, NodeLine, judge, parse_nodes
from dbops.engines.redis.wire import WirePool

OP_TIMEOUT = 120.0  # seconds for one command of a runbook (a MIGRATE of a big batch)


class ClusterUnavailable(Exception):
    pass


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


class ClusterSession:
    def __init__(self, ref: ClusterRef) -> None:
        self.ref = ref
        self.creds = rc.Credentials(ref)
        self.names = names_by_address(ref.cluster.members)
        self.clients: dict[str, Any] = {}  # address -> redis-py client (bytes replies)
        self.pools: dict[str, WirePool] = {}  # address -> the slot mover's connections
        self.views: dict[str, tuple[NodeLine, ...]] = {}  # node id -> its CLUSTER NODES
        self.unreachable: dict[str, str] = {}  # address -> why
        self.strangers: dict[str, str] = {}  # node id -> address: answering nodes that are not in the cluster
        self.view: ClusterView | None = None

    def client(self, address: str) -> Any:
        """A redis-py client for `address` (replies as bytes), opened on first use."""
        if address not in self.clients:
            self.clients[address] = rc.connect(self.ref, address, timeout=OP_TIMEOUT, creds=self.creds, decode=False)
        return self.clients[address]

    async def refresh(self) -> ClusterView:
        """Ask every known node (seeds, then whatever they report) for CLUSTER NODES."""
        addresses = list(dict.fromkeys([*self.names, *(n.address for n in (self.view.nodes if self.view else ()))]))
        self.views, self.unreachable, self.strangers = {}, {}, {}
        seen: set[str] = set()
        while addresses:
            batch = [a for a in addresses if a not in seen]
            seen.update(batch)
            results = await asyncio.gather(*(self._nodes_of(a) for a in batch))
            addresses = []
            for address, result in zip(batch, results):
                if isinstance(result, str):
                    self.unreachable[address] = result
                    continue
                me = next((n for n in result if n.myself), None)
                if me is not None:
                    self.views[me.node_id] = result
                addresses += [n.address for n in result if n.address and not n.address.startswith(":") and n.address not in seen]
        # A node that knows only itself while the others do not know it (a fresh node on a dead
        # one's address, a node reset by hand) is not part of the cluster: its view is not counted.
        known = {n.node_id for nid, lines in self.views.items() for n in lines if n.node_id != nid}
        strangers = [nid for nid, lines in self.views.items() if nid not in known and len(lines) == 1]
        if len(strangers) < len(self.views):
            for nid in strangers:
                self.strangers[nid] = next(n.address for n in self.views.pop(nid))
        if not self.views:
            raise ClusterUnavailable("no node of the cluster answered CLUSTER NODES: " +
                                     "; ".join(f"{a}: {why}" for a, why in self.unreachable.items()))
        self.view = judge(self.views)
        return self.view

    async def _nodes_of(self, address: str) -> tuple[NodeLine, ...] | str:
        try:
            raw = await asyncio.wait_for(self.wires(address).execute_command("CLUSTER", "NODES"), timeout=self.ref.timeout)
            return parse_nodes(_text(raw))
        except Exception as exc:  # an unreachable node is a finding for the pre-checks, not a crash
            # The pool drops a connection whose batch failed or was cancelled; the next use connects again.
            return rc.classify(exc, address, self.ref.timeout, self.creds.password)[1]

    def name(self, node_id: str) -> str:
        assert self.view is not None
        n = self.view.node(node_id)
        if n is None:
            return node_id[:10]
        return self.names.get(n.address, n.address)

    def resolve(self, text: str) -> str:
        """A member name from the config, a node id (or a unique prefix of 8+ characters), or
        host:port -> node id. Raises ValueError naming what is known."""
        assert self.view is not None
        for n in self.view.nodes:
            if self.names.get(n.address) == text or n.address == text or n.node_id == text:
                return n.node_id
        if len(text) >= 8:
            hits = [n.node_id for n in self.view.nodes if n.node_id.startswith(text)]
            if len(hits) == 1:
                return hits[0]
        known = ", ".join(f"{self.name(n.node_id)} ({n.node_id[:8]})" for n in self.view.nodes if n.is_master)
        raise ValueError(f"no node {text!r} in the cluster; masters: {known}")

    def wires(self, address: str) -> WirePool:
        if address not in self.pools:
            self.pools[address] = WirePool(self.ref, address, self.creds, OP_TIMEOUT, GROUPS_IN_FLIGHT + 1)
        return self.pools[address]

    def mover(self, **kw: Any) -> Mover:
        assert self.view is not None
        endpoints = {n.node_id: Endpoint(n.node_id, n.address, self.wires(n.address)) for n in masters(self.view)
                     if n.address not in self.unreachable}
        return Mover(endpoints=endpoints, auth=self.migrate_auth(), **kw)

    def migrate_auth(self) -> tuple[str, ...]:
        pw = self.creds.password
        if pw is None:
            return ()
        if self.creds.username:
            return ("AUTH2", self.creds.username, pw.reveal())
        return ("AUTH", pw.reveal())

    def unreachable_masters(self) -> list[str]:
        assert self.view is not None
        return [f"{self.name(n.node_id)} ({n.address}): {self.unreachable[n.address]}" for n in self.view.nodes
                if n.is_master and n.slots and n.address in self.unreachable]

    async def batch(self, address: str, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Commands sent to one node in one write, their replies in order (bytes; an error reply
        raises)."""
        return await self.wires(address).execute(commands)

    async def total_keys(self) -> int:
        """DBSIZE summed over the reachable masters (every key lives on exactly one master)."""
        assert self.view is not None
        ms = [n for n in masters(self.view) if n.address not in self.unreachable]
        sizes = await asyncio.gather(*(self.wires(n.address).execute_command("DBSIZE") for n in ms))
        return sum(int(s) for s in sizes)

    async def config_get(self, address: str, key: str) -> str | None:
        reply = await self.wires(address).execute_command("CONFIG", "GET", key)
        if isinstance(reply, dict):
            return _text(next(iter(reply.values()))) if reply else None
        return _text(reply[1]) if reply and len(reply) > 1 else None

    async def info(self, address: str, *sections: str) -> dict[str, str]:
        from dbops.engines.redis.data import parse_info

        return parse_info(_text(await self.wires(address).execute_command("INFO", *sections)))

    async def close(self) -> None:
        clients, self.clients = list(self.clients.values()), {}
        pools, self.pools = list(self.pools.values()), {}
        await asyncio.gather(*(rc.close(c) for c in clients), *(p.aclose() for p in pools))
