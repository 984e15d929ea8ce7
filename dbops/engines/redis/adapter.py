"""The Redis adapter: one refresh of a whole deployment (standalone, Sentinel or Cluster).

Every node is asked concurrently, each under its own timeout (a fraction of the cluster's), so a
stopped node shows TIMEOUT alone while the others report on time. Per node and refresh: one
pipelined round trip of INFO (the sections the pane reads), SLOWLOG GET and LATENCY LATEST (only
while the deployment's pane is open: `detailed`), and in a cluster CLUSTER INFO and CLUSTER
NODES; per sentinel SENTINEL MASTER/REPLICAS/CKQUORUM. Never KEYS, SCAN or MONITOR: nothing here
grows with the number of keys.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any

from dbops.config import ClusterRef, Member
from dbops.engines.base import Adapter, names_by_address
from dbops.engines.redis import client as rc
from dbops.engines.redis.data import NodeResult, RedisNodeData, RedisTopology, SentinelData, node_data, parse_info
from dbops.engines.redis.topology import NodeLine, judge, parse_nodes
from dbops.engines.redis.wire import Wire
from dbops.model import Reachability

INFO_SECTIONS = ("server", "clients", "memory", "persistence", "stats", "replication", "keyspace", "commandstats", "cluster")
# Without commandstats (only the pane's Commands tab shows it): a deployment nobody has open.
INFO_SECTIONS_BRIEF = tuple(s for s in INFO_SECTIONS if s != "commandstats")
SLOWLOG_ENTRIES = 10
CLIENT_NAME = "dbops"  # CLIENT LIST names the poller's connections
# A node's share of the refresh timeout: discovery may need a second round (nodes first seen in
# this refresh), and both rounds must fit in the poller's timeout.
NODE_TIMEOUT_SHARE = 0.4


@dataclass
class _NodeState:
    client: Any = None
    previous: RedisNodeData | None = None
    last_slow_id: int | None = None
    last_good: Any = None
    last_good_at: float | None = None
    cluster_lines: tuple[NodeLine, ...] = ()


class RedisAdapter(Adapter):
    kind = "redis"

    def __init__(self, cluster: ClusterRef, member: Member) -> None:
        super().__init__(cluster, member)
        opts = cluster.cluster.redis
        assert opts is not None
        self.opts = opts
        self.names = names_by_address(cluster.cluster.members)
        self.sentinel_names = names_by_address(opts.sentinels)
        self._nodes: dict[str, _NodeState] = {}
        self._known_data: list[str] = list(self.names)
        self._creds: rc.Credentials | None = None

    @property
    def node_timeout(self) -> float:
        return max(0.2, self.cluster.timeout * NODE_TIMEOUT_SHARE)

    def name_of(self, address: str) -> str:
        return self.names.get(address) or self.sentinel_names.get(address) or address

    # -- one refresh -----------------------------------------------------------------------------

    async def collect(self) -> RedisTopology:
        self._creds = rc.Credentials(self.cluster)  # a missing secret is an AUTH state, not a crash
        mode = self.opts.mode
        notes: list[str] = []
        sentinel_master = None
        if mode == "sentinel":
            first = await _together(
                [*(self._poll(a, sentinel=True) for a in self.sentinel_names),
                 *(self._poll(a) for a in self._known_data)])
            sentinels, data = list(first[:len(self.sentinel_names)]), list(first[len(self.sentinel_names):])
            sentinel_master, discovered = self._from_sentinels(sentinels, notes)
            results = sentinels + data
        else:
            data = await _together([self._poll(a) for a in self._known_data])
            discovered = self._discovered(data)
            results = data
        new = [a for a in discovered if a not in self._known_data]
        if new:
            self._known_data.extend(new)
            results += await _together([self._poll(a) for a in new])
        cluster = None
        if mode == "cluster":
            views = {}
            for r in results:
                st = self._nodes.get(r.address)
                if r.reachability is Reachability.UP and st is not None and st.cluster_lines:
                    me = next((n for n in st.cluster_lines if n.myself), None)
                    if me is not None:
                        views[me.node_id] = st.cluster_lines
            cluster = judge(views) if views else None
            if cluster is None:
                notes.append("no node answered CLUSTER NODES: slot ownership is unknown")
        order = {a: i for i, a in enumerate([*self.sentinel_names, *self._known_data])}
        # Data nodes first (what an operator reads first), sentinels after them.
        results.sort(key=lambda r: (r.kind == "sentinel", order.get(r.address, 1 << 30)))
        return RedisTopology(mode=mode, nodes=tuple(results), cluster=cluster, sentinel_master=sentinel_master,
                             notes=tuple(notes))

    def _discovered(self, results: list[NodeResult]) -> list[str]:
        out: list[str] = []
        for r in results:
            st = self._nodes.get(r.address)
            if st is None:
                continue
            for n in st.cluster_lines:
                # A node without an address yet (handshake/noaddr) cannot be polled.
                if n.address and not n.address.startswith(":") and "noaddr" not in n.flags and n.address not in out:
                    out.append(n.address)
            if isinstance(r.data, RedisNodeData):
                for link in r.data.replicas:
                    if link.address not in out:
                        out.append(link.address)
        return out

    def _from_sentinels(self, sentinels: list[NodeResult], notes: list[str]) -> tuple[str | None, list[str]]:
        masters = Counter(r.data.master_address for r in sentinels if isinstance(r.data, SentinelData) and r.data.master_address)
        if not masters:
            notes.append("no sentinel answered with the master's address")
            return None, []
        (master, votes), *others = masters.most_common()
        if others:
            notes.append("sentinels disagree about the master: " + ", ".join(f"{a} ({n})" for a, n in masters.most_common()))
        found = [master]
        for r in sentinels:
            if isinstance(r.data, SentinelData):
                found += [a for a, _ in r.data.replicas if a not in found]
        return master, found

    async def _poll(self, address: str, sentinel: bool = False) -> NodeResult:
        st = self._nodes.setdefault(address, _NodeState())
        started = time.monotonic()
        kind = "sentinel" if sentinel else "data"
        try:
            if st.client is None:
                # dbops' own lean connection, not redis-py's: a node's read is one write and one
                # wake-up, at about half the CPU (at a thousand targets, most of the poller's).
                # The bound is the node read's own, below: connect and batch included.
                assert self._creds is not None
                st.client = Wire(self.cluster, address, self._creds, None, name=CLIENT_NAME, encoding="utf-8",
                                 sentinel=sentinel)
            coro = self._sentinel(st) if sentinel else self._data(st)
            # asyncio.timeout, not wait_for: no task per node per refresh, and on Python 3.11 no
            # cancellation lost when it races the reply (see dbops.poller.Wake).
            async with asyncio.timeout(self.node_timeout):
                data = await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # each node's failure is its own state; the others still report
            creds = self._creds
            reach, message = rc.classify(exc, address, self.node_timeout, creds.password if creds else None,
                                         creds.sentinel_password if creds else None)
            # After a timeout the connection may still deliver the late reply: start afresh.
            if st.client is not None:
                client, st.client = st.client, None
                await client.close()
            st.cluster_lines = () if reach is not Reachability.TIMEOUT else st.cluster_lines
            return NodeResult(self.name_of(address), address, kind, reach, message, None,
                              (time.monotonic() - started) * 1000, st.last_good, st.last_good_at)
        st.last_good, st.last_good_at = data, time.time()
        return NodeResult(self.name_of(address), address, kind, Reachability.UP, None, data,
                          (time.monotonic() - started) * 1000)

    async def _data(self, st: _NodeState) -> RedisNodeData:
        cluster = self.opts.mode == "cluster"
        if self.detailed:
            commands = [("INFO", *INFO_SECTIONS), ("SLOWLOG", "GET", SLOWLOG_ENTRIES), ("LATENCY", "LATEST")]
        else:
            # Only the pane shows the slow log and latency events: a deployment nobody has open
            # is read without them. Its "new" slow entries count again from when it is opened.
            commands = [("INFO", *INFO_SECTIONS_BRIEF)]
            st.last_slow_id = None
        if cluster:
            commands += [("CLUSTER", "INFO"), ("CLUSTER", "NODES")]
        replies = await st.client.execute(commands, raise_on_error=False)
        info_text = replies[0]
        if isinstance(info_text, Exception):
            raise info_text
        info = parse_info(info_text)
        # SLOWLOG and LATENCY may be renamed or denied by an ACL (ElastiCache): shown as absent.
        slowlog = replies[1] if self.detailed and isinstance(replies[1], list) else []
        latency = replies[2] if self.detailed and isinstance(replies[2], list) else []
        data = node_data(info, st.previous, slowlog, latency, st.last_slow_id)
        if data.slowlog_recent:
            st.last_slow_id = max(e.id for e in data.slowlog_recent)
        elif st.last_slow_id is None:
            st.last_slow_id = -1
        if cluster:
            cluster_info, cluster_nodes = replies[-2:]
            if isinstance(cluster_nodes, Exception):
                raise cluster_nodes
            st.cluster_lines = parse_nodes(cluster_nodes)
            me = next((n for n in st.cluster_lines if n.myself), None)
            cinfo = parse_info(cluster_info) if isinstance(cluster_info, str) else {}
            data = replace(data, cluster_state=cinfo.get("cluster_state"), cluster_node_id=me.node_id if me else None)
        st.previous = data
        return data

    async def _sentinel(self, st: _NodeState) -> SentinelData:
        name = self.opts.master_name
        master, replicas, ckq = await st.client.execute(
            [("SENTINEL", "MASTER", name), ("SENTINEL", "REPLICAS", name), ("SENTINEL", "CKQUORUM", name)],
            raise_on_error=False)
        if isinstance(master, Exception):
            raise master
        m = _pairs(master)
        reps = []
        if isinstance(replicas, list):
            for r in replicas:
                d = _pairs(r)
                reps.append((f"{d.get('ip')}:{d.get('port')}", d.get("flags", "")))
        return SentinelData(
            master_address=f"{m.get('ip')}:{m.get('port')}" if m.get("ip") else None, master_flags=m.get("flags", ""),
            num_replicas=int(m.get("num-slaves", 0)), num_other_sentinels=int(m.get("num-other-sentinels", 0)),
            quorum=int(m["quorum"]) if "quorum" in m else None, ckquorum_ok=not isinstance(ckq, Exception),
            ckquorum_message=str(ckq), replicas=tuple(reps),
        )

    # -- contract --------------------------------------------------------------------------------

    async def close(self) -> None:
        clients = [st.client for st in self._nodes.values() if st.client is not None]
        for st in self._nodes.values():
            st.client = None
        await asyncio.gather(*(c.close() for c in clients))

    def classify(self, exc: BaseException) -> tuple[Reachability, str]:
        creds = self._creds
        return rc.classify(exc, self.cluster.name, self.cluster.timeout, creds.password if creds else None)


async def _together(polls: list[Coroutine[Any, Any, NodeResult]]) -> list[NodeResult]:
    """The nodes' polls at once, in order. asyncio.gather with the first run in this task
    rather than a task of its own: a standalone deployment's refresh is then one task, not three
    (two nodes and gather's), which at a thousand targets is a measurable share of the poller.
    A node's poll never raises but for cancellation (its failure is its NodeResult)."""
    if not polls:
        return []
    others = [asyncio.ensure_future(p) for p in polls[1:]]
    try:
        first = await polls[0]
        rest = [await t for t in others]
    except BaseException:
        for t in others:
            t.cancel()
        raise
    return [first, *rest]


def _pairs(reply: Any) -> dict[str, str]:
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    if isinstance(reply, list):
        return {str(reply[i]): str(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}
    return {}
