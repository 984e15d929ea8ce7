"""The Kafka adapter: one refresh of a whole cluster through one admin client and one consumer.

Per refresh: cluster metadata (brokers, controller, every partition's leader, replicas and ISR);
ListGroups on every live broker; DescribeGroups and OffsetFetch per group (from its coordinator); the
watched groups' partitions' end and start offsets in batched ListOffsets through one consumer
(one request per partition leader, never a client per partition). Topic configs
(min.insync.replicas) are re-read every `config_refresh_seconds`. A broker that does not answer
costs its own short timeout and shows as down; the others still report.

State kept between refreshes: each partition's end offsets (lag in time), each group partition's
window of (committed, end) samples (the Burrow-style judgement) and each group's lag trend.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections import deque
from dataclasses import replace
from typing import Any

from dbops.config import ClusterRef
from dbops.config import Member as ConfigMember
from dbops.engines.base import Adapter, import_off_loop, names_by_address
from dbops.engines.kafka import client as kc
from dbops.engines.kafka.data import (
    END_HISTORY,
    TREND_POINTS,
    Broker,
    Group,
    GroupPartition,
    KafkaData,
    LagSample,
    Member,
    Partition,
    Quorum,
    Topic,
    lag_seconds,
    with_inferred_ids,
)
from dbops.model import Reachability

# One broker's or one group's share of the refresh timeout: a stopped broker must leave time
# for the rest of the refresh.
NODE_TIMEOUT_SHARE = 0.3


def decode_assignment(raw: bytes) -> tuple[tuple[str, int], ...]:
    """A consumer-protocol member assignment as (topic, partition) pairs; () for other protocols."""
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    if not raw:
        return ()
    try:
        decoded = ConsumerProtocolMemberAssignment.decode(raw)
    except (ValueError, EOFError, IndexError, TypeError):
        # Kafka Connect and other protocols encode assignments their own way.
        return ()
    return tuple((topic, p) for topic, parts in decoded.assignment for p in parts)


async def _same(client: Any) -> Any:
    return client


def topic_from_metadata(raw: dict[str, Any]) -> Topic:
    """A topic of a MetadataResponse (as aiokafka's describe_topics returns it)."""
    parts = tuple(sorted((
        Partition(raw["topic"], p["partition"], p["leader"], tuple(p["replicas"]), tuple(p["isr"]),
                  tuple(p.get("offline_replicas") or ()), kc.error_name(p["error_code"]) if p["error_code"] else None)
        for p in raw["partitions"]), key=lambda p: p.partition))
    return Topic(raw["topic"], bool(raw.get("is_internal")), parts)


class KafkaAdapter(Adapter):
    kind = "kafka"

    def __init__(self, cluster: ClusterRef, member: ConfigMember) -> None:
        super().__init__(cluster, member)
        opts = cluster.cluster.kafka
        assert opts is not None
        self.opts = opts
        self.names = names_by_address(cluster.cluster.members)
        self._admin: Any = None
        self._consumer: Any = None
        self._creds: kc.Credentials | None = None
        self._coordinators: dict[str, int] = {}
        self._ends: dict[tuple[str, int], deque[tuple[float, int]]] = {}
        self._windows: dict[tuple[str, str, int], deque[LagSample]] = {}
        self._trends: dict[str, deque[int]] = {}
        self._min_isr: dict[str, int] = {}
        self._configs_at: float | None = None
        self._seen: dict[str, int] = {}  # address -> node id, for brokers that have gone
        self._zookeeper = False  # learnt from a broker that does not know DescribeQuorum
        self._last_up: dict[str, float] = {}  # address -> when it last answered
        self._asked: set[str] = set()  # brokers _answering_node() chose in this refresh
        self._asked_ids: set[int] = set()  # their node ids, and those it chose before any answered
        self._connects = 0  # rotates the bootstrap order when nothing answered lately
        self._deadline: float | None = None  # loop time by which this refresh must be done
        self._closing: set[asyncio.Task[None]] = set()
        self._probes: dict[str, Any] = {}  # address -> a connection of its own, for ListGroups

    @property
    def node_timeout(self) -> float:
        """One request's bound: its share of the refresh timeout, and never past the refresh's
        own deadline (a silent broker costs its share once, not once per step)."""
        share = max(0.5, self.cluster.timeout * NODE_TIMEOUT_SHARE)
        if self._deadline is None:
            return share
        return max(0.05, min(share, self._deadline - asyncio.get_running_loop().time()))

    def _bootstrap_order(self) -> list[str]:
        """Brokers that answered lately first (aiokafka bootstraps from the list in order, each
        for up to the request timeout); with none known, a different one first at each connect,
        so one dead first broker cannot hold every refresh."""
        configured = list(self.names)
        known = sorted((a for a in configured if a in self._last_up), key=lambda a: -self._last_up[a])
        if known:
            return known + [a for a in configured if a not in known]
        k = self._connects % len(configured)
        return configured[k:] + configured[:k]

    @property
    def where(self) -> str:
        return f"{self.cluster.name} ({', '.join(kc.bootstrap(self.cluster))})"

    async def _connect(self) -> None:
        await import_off_loop("aiokafka.admin")  # ~0.2 s of imports, the first time
        if self._admin is not None and self._consumer is not None:
            return
        self._connects += 1
        servers = self._bootstrap_order()
        self._creds = kc.Credentials(self.cluster)
        # Concurrently, and each bootstrap attempt bounded by a broker's share of the timeout: a
        # hung broker first in the list costs that share once, not the refresh.
        share = max(0.5, self.cluster.timeout * NODE_TIMEOUT_SHARE)
        admin: Any  # a client, or the exception that stopped it starting
        consumer: Any
        admin, consumer = await asyncio.gather(
            kc.admin(self.cluster, self._creds.password, servers, share) if self._admin is None else _same(self._admin),
            kc.consumer(self.cluster, self._creds.password, servers=servers, request_timeout=share)
            if self._consumer is None else _same(self._consumer),
            return_exceptions=True)
        for client in (admin, consumer):
            if isinstance(client, BaseException):
                await asyncio.gather(*(kc.close(c) for c in (admin, consumer) if not isinstance(c, BaseException)))
                raise client
        self._admin, self._consumer = admin, consumer

    async def _bounded(self, coro: Any) -> Any:
        return await asyncio.wait_for(coro, timeout=self.node_timeout)

    async def _from_any_broker(self, call: Any) -> Any:
        return await kc.from_any_broker(call, max(2, len(self.names)), lambda: self.node_timeout)

    # -- one refresh -----------------------------------------------------------------------------

    async def collect(self) -> KafkaData:
        # The poller cancels a refresh at the cluster's timeout; ending a little before it leaves
        # the steps that did answer (a broker that did not is a row, not a cluster TIMEOUT).
        self._deadline = asyncio.get_running_loop().time() + self.cluster.timeout * 0.9
        self._asked.clear()
        self._asked_ids.clear()
        try:
            return await self._collect()
        except asyncio.CancelledError:
            # Cancelled by the poller's timeout: closing must not add to the wait it enforces.
            task = asyncio.ensure_future(self.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            raise
        except BaseException:
            # Reconnect next time: a half-started client or one failed mid-request is not reused.
            await self.close()
            raise
        finally:
            self._deadline = None

    async def _collect(self) -> KafkaData:
        await self._connect()
        now = time.time()
        notes: list[str] = []
        meta = await self._from_any_broker(lambda: kc.metadata(self._admin, self._answering_node()))
        topics = [topic_from_metadata(t) for t in meta["topics"]]
        brokers = with_inferred_ids(self._brokers(meta), topics)
        group_ids = await self._probe(brokers)
        live = next((b.node_id for b in brokers if b.up), None)
        partitions = {(p.topic, p.partition): p for t in topics for p in t.partitions}
        # Independent of each other, and each only asks brokers that just answered: together they
        # cost the slowest of them, not the sum.
        _, groups, quorum = await asyncio.gather(
            self._refresh_configs([t.name for t in topics], now, notes),
            self._groups(group_ids, brokers, partitions, now, notes),
            self._quorum(notes, live))
        topics = [Topic(t.name, t.internal, t.partitions, self._min_isr.get(t.name)) for t in topics]
        for b in brokers:
            if b.up:
                self._last_up[b.address] = now
        brokers = [replace(b, last_up_at=self._last_up.get(b.address)) for b in brokers]
        return KafkaData(
            cluster_id=meta.get("cluster_id"), controller_id=meta.get("controller_id"), brokers=tuple(brokers),
            topics=tuple(sorted(topics, key=lambda t: (t.internal, t.name))), groups=tuple(groups), taken_at=now,
            notes=tuple(notes), configs_at=self._configs_at, window=self.opts.thresholds.lag_window, quorum=quorum)

    def _answering_node(self) -> int | None:
        """The node id of the broker that answered most recently (None: let aiokafka pick). The
        chosen one is not chosen again in this refresh: the retry of a call it failed (it died
        since its last answer) goes to the next most recent, not to it again."""
        recent = sorted((a for a in self._last_up if a in self._seen and a not in self._asked), key=lambda a: -self._last_up[a])
        if recent:
            self._asked.add(recent[0])
            self._asked_ids.add(self._seen[recent[0]])
            return self._seen[recent[0]]
        # None has answered yet (a new connection): a broker of the bootstrap's metadata not asked
        # in this refresh, in turn. aiokafka's own pick is random and can land twice on the one
        # that accepts connections and answers nothing, which costs the whole refresh.
        known = sorted(b.nodeId for b in self._admin._client.cluster.brokers()) if self._admin is not None else []
        node = next((n for n in known if n not in self._asked_ids), None)
        if node is not None:
            self._asked_ids.add(node)
        return node

    async def _probe(self, brokers: list[Broker]) -> set[str]:
        """ListGroups on every broker the metadata names, concurrently: the groups, and each
        broker's liveness. One that does not answer is marked down (in `brokers`) at once, before
        the controller fences it, and no later step of this refresh waits for it."""
        live = [(i, b) for i, b in enumerate(brokers) if b.up and b.node_id is not None]
        listed = await asyncio.gather(*(self._bounded(self._list_groups(b.address)) for _, b in live), return_exceptions=True)
        ids: set[str] = set()
        for (i, b), result in zip(live, listed):
            if isinstance(result, BaseException):
                probe = self._probes.pop(b.address, None)
                if probe is not None:
                    probe.close()
                reach = self.classify(result)[0]
                brokers[i] = replace(b, up=False, error=f"in the metadata but not answering ({reach.value}): {self._why(result)}")
            else:
                ids.update(result)
        return ids

    async def _list_groups(self, address: str) -> list[str]:
        """ListGroups on the probe connection to `address` (kept across refreshes)."""
        conn = self._probes.get(address)
        if conn is None or not conn.connected():
            kw = kc.client_kwargs(self.cluster, self._creds.password if self._creds else None,
                                  request_timeout=max(0.5, self.cluster.timeout * NODE_TIMEOUT_SHARE))
            conn = self._probes[address] = await kc.connection(kw, address)
        return await kc.list_groups(conn)

    async def _quorum(self, notes: list[str], node_id: int | None) -> Quorum | None:
        """The KRaft controller quorum, asked of a broker that just answered (it forwards the
        request to the active controller); None (and no note) on a ZooKeeper cluster, which does
        not know DescribeQuorum."""
        from aiokafka.errors import IncompatibleBrokerVersion

        if self._zookeeper:
            return None
        try:
            leader, hw, voters = await self._bounded(kc.describe_quorum(self._admin, node_id))
        except IncompatibleBrokerVersion:
            self._zookeeper = True
            return None
        except Exception as exc:  # the rest of the refresh is still worth showing
            notes.append(f"controller quorum not read: {self._why(exc)}")
            return None
        return Quorum(leader, hw, voters)

    def _brokers(self, cluster: dict[str, Any]) -> list[Broker]:
        """Configured brokers first (a missing one is down), then any others the cluster names."""
        found = {f"{b['host']}:{b['port']}": b for b in cluster.get("brokers", [])}
        up_ids = {b["node_id"] for b in found.values()}
        for address in [a for a, node_id in self._seen.items() if a not in found and node_id in up_ids]:
            del self._seen[address]  # the broker came back at another address (a pod's new IP)
        for address, b in found.items():
            self._seen[address] = b["node_id"]
        out = []
        for address in [*self.names, *(a for a in self._seen if a not in self.names)]:
            b = found.get(address)
            if b is not None:
                out.append(Broker(b["node_id"], address, self.names.get(address, address), True, b.get("rack")))
            else:
                out.append(Broker(self._seen.get(address), address, self.names.get(address, address), False,
                                  error="not in the cluster's metadata (stopped, fenced or unreachable)"))
        for address, b in found.items():
            if address not in self.names and address not in self._seen:
                out.append(Broker(b["node_id"], address, address, True, b.get("rack")))
        return out

    async def _refresh_configs(self, topics: list[str], now: float, notes: list[str]) -> None:
        """min.insync.replicas per topic, read in one DescribeConfigs now and then."""
        fresh = self._configs_at is not None and now - self._configs_at < self.opts.config_refresh_seconds
        if fresh and all(t in self._min_isr for t in topics):
            return
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        try:
            # One attempt (to a random broker): on failure the old values stay, and the next
            # refresh asks again.
            responses = await self._bounded(self._admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, t, {"min.insync.replicas": None}) for t in topics]))
        except Exception as exc:  # the rest of the refresh is still worth showing
            notes.append(f"topic configs not read: {self._why(exc)}")
            return
        for response in responses:
            for resource in response.resources:
                error_code, _, _, name, entries = resource[:5]
                if error_code:
                    continue
                for entry in entries:
                    if entry[0] == "min.insync.replicas" and entry[1] is not None:
                        self._min_isr[name] = int(entry[1])
        self._configs_at = now

    async def _groups(self, ids: set[str], brokers: list[Broker], partitions: dict[tuple[str, int], Partition],
                      now: float, notes: list[str]) -> list[Group]:
        patterns = self.opts.groups
        ids = {g for g in ids if not patterns or any(fnmatch.fnmatchcase(g, p) for p in patterns)}
        if not ids:
            return []
        down = {b.node_id for b in brokers if not b.up} - {b.node_id for b in brokers if b.up}
        described, offsets = await self._describe_and_fetch(sorted(ids), down)
        wanted = sorted({tp for offs in offsets.values() if isinstance(offs, dict) for tp in offs}
                        | {tp for d in described.values() for m in d["members"] for tp in m.assignment})
        # A partition without a leader, or led by a broker that does not answer (the controller
        # has not moved it yet), cannot answer ListOffsets: asking would stall the whole batch.
        askable = [tp for tp in wanted if tp in partitions and not partitions[tp].offline and partitions[tp].leader not in down]
        ends, starts = await self._offsets(askable, notes)
        for tp in askable:
            if tp in ends:
                hist = self._ends.setdefault(tp, deque(maxlen=END_HISTORY))
                hist.append((now, ends[tp]))
        window = self.opts.thresholds.lag_window
        out = []
        for gid in sorted(ids):
            d = described.get(gid, {"state": "?", "protocol_type": "", "members": (), "error": None})
            offs = offsets.get(gid)
            error = d.get("error")
            if isinstance(offs, BaseException):
                error = error or f"offsets not read: {self._why(offs)}"
                offs = {}
            owners = {tp: f"{m.client_id}@{m.host}" for m in d["members"] for tp in m.assignment}
            gparts = []
            for tp in sorted(set(offs or {}) | set(owners)):
                committed = offs.get(tp) if offs else None
                end, start = ends.get(tp), starts.get(tp)
                win = self._windows.setdefault((gid, *tp), deque(maxlen=window))
                if committed is not None and end is not None:
                    # A refresh that could not read an offset says nothing about the trend: it
                    # must not push a STOP out of the window and reset the judgement.
                    win.append(LagSample(now, committed, end))
                secs, at_least = lag_seconds(committed, list(self._ends.get(tp, ())), now) if end is not None else (None, False)
                gparts.append(GroupPartition(tp[0], tp[1], committed, start, end, secs, at_least, tuple(win), owners.get(tp)))
            lags = [p.lag for p in gparts if p.lag is not None]
            trend = self._trends.setdefault(gid, deque(maxlen=TREND_POINTS))
            if lags:
                trend.append(sum(lags))
            out.append(Group(gid, d["state"], d["protocol_type"], self._coordinators.get(gid), tuple(d["members"]),
                             tuple(gparts), tuple(trend), error))
        return out

    async def _describe_and_fetch(self, ids: list[str], down: set[int | None]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """DescribeGroups and OffsetFetch per group from its coordinator, concurrently.
        Coordinators are remembered and looked up again after an error."""
        missing = [g for g in ids if g not in self._coordinators]
        found = await asyncio.gather(*(self._bounded(self._admin.find_coordinator(g)) for g in missing), return_exceptions=True)
        described: dict[str, dict[str, Any]] = {}
        for gid, node in zip(missing, found):
            if isinstance(node, BaseException):
                described[gid] = {"state": "?", "protocol_type": "", "members": (),
                                  "error": f"no coordinator: {self._why(node)}"}
            else:
                self._coordinators[gid] = node
        async def describe(node: int, gid: str) -> None:
            # One group per DescribeGroups request: aiokafka 0.14 decodes a v3 response with the
            # v2 schema (DescribeGroupsRequest_v3.RESPONSE_TYPE), which only goes unnoticed when
            # the response holds a single group (the extra authorized_operations field is last).
            try:
                responses = await self._bounded(self._admin.describe_consumer_groups([gid], group_coordinator_id=node))
            except Exception as exc:
                self._coordinators.pop(gid, None)
                described[gid] = {"state": "?", "protocol_type": "", "members": (),
                                  "error": f"not described by broker {node}: {self._why(exc)}"}
                return
            for response in responses:
                for g in response.to_object()["groups"]:
                    error = kc.error_name(g["error_code"]) if g["error_code"] else None
                    if error:
                        self._coordinators.pop(g["group"], None)  # NOT_COORDINATOR after a move: ask again
                    members = tuple(Member(m["member_id"], m["client_id"], m["client_host"].lstrip("/"),
                                           decode_assignment(m["member_assignment"]) if g["protocol_type"] == "consumer" else ())
                                    for m in g["members"])
                    described[g["group"]] = {"state": g["state"] or "?", "protocol_type": g["protocol_type"],
                                             "members": members, "error": error}

        async def fetch(gid: str) -> Any:
            offs = await self._bounded(self._admin.list_consumer_group_offsets(gid, group_coordinator_id=self._coordinators[gid]))
            return {(tp.topic, tp.partition): o.offset for tp, o in offs.items() if o.offset >= 0}

        for gid in [g for g in ids if self._coordinators.get(g) in down]:
            # Its coordinator does not answer: asking would wait for nothing. The group moves to
            # another coordinator once the controller fences that broker.
            described[gid] = {"state": "?", "protocol_type": "", "members": (),
                              "error": f"its coordinator, broker {self._coordinators.pop(gid)}, does not answer"}
        located = [g for g in ids if g in self._coordinators]
        fetched = await asyncio.gather(*(describe(self._coordinators[g], g) for g in located),
                                       *(fetch(g) for g in located), return_exceptions=True)
        offsets = dict(zip(located, fetched[len(located):]))
        for gid, result in offsets.items():
            if isinstance(result, BaseException):
                self._coordinators.pop(gid, None)
        return described, offsets

    async def _offsets(self, tps: list[tuple[str, int]], notes: list[str]) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
        """End and start offsets in batched ListOffsets (aiokafka groups them per leader)."""
        if not tps:
            return {}, {}
        from aiokafka import TopicPartition

        parts = [TopicPartition(t, p) for t, p in tps]
        try:
            ends, starts = await asyncio.gather(self._bounded(self._consumer.end_offsets(parts)),
                                                self._bounded(self._consumer.beginning_offsets(parts)))
        except Exception as exc:
            notes.append(f"end offsets not read: {self._why(exc)}")
            return {}, {}
        return ({(tp.topic, tp.partition): o for tp, o in ends.items()},
                {(tp.topic, tp.partition): o for tp, o in starts.items()})

    async def close(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        probes, self._probes = self._probes, {}
        for conn in probes.values():
            conn.close()
        await asyncio.gather(kc.close(admin), kc.close(consumer))

    def classify(self, exc: BaseException) -> tuple[Reachability, str]:
        return kc.classify(exc, self.where, self.cluster.timeout, self._creds.password if self._creds else None)

    def _why(self, exc: BaseException) -> str:
        """Why one bounded request of a refresh failed (its bound is the node timeout)."""
        return kc.classify(exc, self.where, self.node_timeout, self._creds.password if self._creds else None)[1]
