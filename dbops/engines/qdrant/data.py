"""What one refresh of a Qdrant cluster holds: frozen values, no I/O.

Each node answers from its own point of view: /cluster with its raft state, and per collection
/collections/{c}/cluster with its local shards (with point counts) and the replicas it knows on
other peers (with their states, from consensus). `QdrantData` keeps every node's answer and
merges them into one list of replicas: a replica's state as the raft leader sees it (the
consensus' view; the first node that answered when the leader does not), its point count as the
node that holds it counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# Replica states (ReplicaState in Qdrant's OpenAPI). Active serves reads and writes; Dead lost
# updates and serves nothing until recovered; the rest are on their way somewhere.
ACTIVE = "Active"
DEAD = "Dead"
REPLICA_STATES = ("Active", "Dead", "Partial", "Initializing", "Listener", "PartialSnapshot", "Recovery",
                  "Resharding", "ReshardingScaleDown", "ActiveRead", "ManualRecovery")
# Collection statuses, worst last.
STATUS_ORDER = ("green", "grey", "yellow", "red")


@dataclass(frozen=True)
class Raft:
    """A node's /cluster answer when clustering is enabled."""

    peer_id: int
    role: str | None  # Leader, Follower, Candidate, PreCandidate; None when unknown
    term: int
    commit: int
    pending_operations: int
    leader: int | None
    is_voter: bool
    peers: tuple[tuple[int, str], ...]  # (peer id, uri) of every peer this node knows
    consensus: str  # working, stopped, stopped_with_err
    consensus_error: str | None = None
    send_failures: tuple[tuple[str, int], ...] = ()  # (peer uri, consecutive failures)


@dataclass(frozen=True)
class LocalShard:
    shard_id: int
    state: str
    points: int


@dataclass(frozen=True)
class RemoteShard:
    shard_id: int
    peer_id: int
    state: str


@dataclass(frozen=True)
class Transfer:
    collection: str
    shard_id: int
    from_peer: int
    to_peer: int
    sync: bool  # True: a replica is copied (replicate); False: the shard moves
    method: str | None = None
    comment: str | None = None


@dataclass(frozen=True)
class NodeCollection:
    """One collection as one node sees it."""

    name: str
    status: str | None  # green, yellow, grey, red; None: not read
    points: int | None  # the node's own (approximate) count
    peer_id: int | None = None
    shard_count: int | None = None
    local: tuple[LocalShard, ...] = ()
    remote: tuple[RemoteShard, ...] = ()
    transfers: tuple[Transfer, ...] = ()
    error: str | None = None  # this collection could not be read on this node


@dataclass(frozen=True)
class Node:
    name: str  # the configured member's name
    address: str  # host:port
    up: bool
    reachability: str = "UP"  # a Reachability value: why a node is not up
    error: str | None = None
    version: str | None = None
    ready: bool | None = None  # /readyz: 200 True, 503 False
    ready_text: str = ""
    raft: Raft | None = None  # None: clustering disabled, or the node did not answer
    clustered: bool | None = None  # False: /cluster says "disabled"
    collections: tuple[NodeCollection, ...] = ()
    latency_ms: float | None = None  # the worst REST endpoint's recent average, from /telemetry
    latency_endpoint: str | None = None
    rtt_ms: float | None = None  # how long this refresh's /cluster request took, seen from dbops
    last_up_at: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def peer_id(self) -> int | None:
        if self.raft is not None:
            return self.raft.peer_id
        return next((c.peer_id for c in self.collections if c.peer_id is not None), None)

    def collection(self, name: str) -> NodeCollection | None:
        return next((c for c in self.collections if c.name == name), None)


@dataclass(frozen=True)
class Replica:
    collection: str
    shard_id: int
    peer_id: int
    state: str
    points: int | None  # as the node holding it counts; None when that node did not answer
    node: str | None  # the configured name of the node holding it (None: a peer not in the config)

    @property
    def key(self) -> str:
        return f"{self.collection}/{self.shard_id}@{self.peer_id}"


@dataclass(frozen=True)
class CollectionSummary:
    name: str
    status: str | None  # the worst status any node reports
    points: int | None  # per shard the largest count of an Active replica, summed
    shards: int
    replicas: int
    active: int
    statuses: tuple[tuple[str, str], ...] = ()  # (node, status) of nodes not green


@dataclass(frozen=True)
class QdrantData:
    nodes: tuple[Node, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def up_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.up]

    def view(self) -> Node | None:
        """The node whose consensus view is trusted: the raft leader when it answered, else the
        first node (in config order) that answered."""
        up = self.up_nodes()
        leaders = {n.raft.leader for n in up if n.raft is not None and n.raft.leader is not None}
        for n in up:
            if n.peer_id is not None and n.peer_id in leaders:
                return n
        return up[0] if up else None

    def peer_names(self) -> dict[int, str]:
        """Peer id -> configured node name, from each node's own answer; a node that did not
        answer is found by the host of its peer URI in the others' raft view (when exactly one
        configured node has that host)."""
        names = {n.peer_id: n.name for n in self.nodes if n.peer_id is not None}
        hosts: dict[str, list[str]] = {}
        for n in self.nodes:
            hosts.setdefault(n.address.rsplit(":", 1)[0], []).append(n.name)
        for n in self.up_nodes():
            for pid, uri in n.raft.peers if n.raft is not None else ():
                host = urlsplit(uri).hostname or ""
                if pid not in names and len(hosts.get(host, ())) == 1 and hosts[host][0] not in names.values():
                    names[pid] = hosts[host][0]
        return names

    def peer_name(self, peer_id: int | None) -> str:
        if peer_id is None:
            return "?"
        return self.peer_names().get(peer_id, f"peer {peer_id}")

    def node_of_peer(self, peer_id: int) -> Node | None:
        name = self.peer_names().get(peer_id)
        return next((n for n in self.nodes if n.name == name), None)

    def collection_names(self) -> list[str]:
        names: dict[str, None] = {}
        for n in self.up_nodes():
            for c in n.collections:
                names.setdefault(c.name, None)
        return sorted(names)

    def replicas(self) -> list[Replica]:
        """Every replica of every collection, once: its state from the trusted view (falling back
        to the other nodes for a collection the view could not read), its point count from the
        node that holds it."""
        view = self.view()
        order = ([view] if view else []) + [n for n in self.up_nodes() if n is not view]
        names = self.peer_names()
        out: dict[tuple[str, int, int], Replica] = {}
        for name in self.collection_names():
            source = next((n.collection(name) for n in order
                           if n.collection(name) is not None and n.collection(name).error is None  # type: ignore[union-attr]
                           and n.collection(name).peer_id is not None), None)  # type: ignore[union-attr]
            states: dict[tuple[int, int], str] = {}
            if source is not None:
                for s in source.local:
                    states[(s.shard_id, source.peer_id)] = s.state  # type: ignore[index]
                for r in source.remote:
                    states[(r.shard_id, r.peer_id)] = r.state
            # Replicas only other nodes know of (a node whose view lags): added, never overriding.
            for n in order:
                c = n.collection(name)
                if c is None or c.peer_id is None:
                    continue
                for s in c.local:
                    states.setdefault((s.shard_id, c.peer_id), s.state)
                for r in c.remote:
                    states.setdefault((r.shard_id, r.peer_id), r.state)
            for (shard, peer), state in states.items():
                holder = self.node_of_peer(peer)
                points = None
                if holder is not None and holder.up:
                    hc = holder.collection(name)
                    local = next((s for s in hc.local if s.shard_id == shard), None) if hc else None
                    points = local.points if local is not None else None
                out[(name, shard, peer)] = Replica(name, shard, peer, state, points, names.get(peer))
        return sorted(out.values(), key=lambda r: (r.collection, r.shard_id, r.peer_id))

    def transfers(self) -> list[Transfer]:
        seen: dict[tuple[str, int, int, int], Transfer] = {}
        for n in self.up_nodes():
            for c in n.collections:
                for t in c.transfers:
                    key = (t.collection, t.shard_id, t.from_peer, t.to_peer)
                    # The source peer's answer carries the progress comment: keep the one that has it.
                    if key not in seen or (t.comment and not seen[key].comment):
                        seen[key] = t
        return sorted(seen.values(), key=lambda t: (t.collection, t.shard_id, t.to_peer))

    def collections(self) -> list[CollectionSummary]:
        replicas = self.replicas()
        out = []
        for name in self.collection_names():
            seen = [(n.name, n.collection(name)) for n in self.up_nodes() if n.collection(name) is not None]
            statuses = [c.status for _, c in seen if c is not None and c.status is not None]
            worst = max(statuses, key=lambda s: STATUS_ORDER.index(s) if s in STATUS_ORDER else len(STATUS_ORDER)) if statuses else None
            mine = [r for r in replicas if r.collection == name]
            shards = sorted({r.shard_id for r in mine})
            points: int | None = None
            if mine:
                total = 0
                for shard in shards:
                    counts = [r.points for r in mine if r.shard_id == shard and r.state == ACTIVE and r.points is not None]
                    if not counts:
                        total = -1
                        break
                    total += max(counts)
                points = total if total >= 0 else None
            elif seen:
                points = next((c.points for _, c in seen if c is not None and c.points is not None), None)
            shard_count = next((c.shard_count for _, c in seen if c is not None and c.shard_count is not None), len(shards))
            out.append(CollectionSummary(name, worst, points, shard_count, len(mine), sum(1 for r in mine if r.state == ACTIVE),
                                         tuple((node, c.status) for node, c in seen
                                               if c is not None and c.status not in (None, "green"))))
        return out


# -- parsing Qdrant's answers (plain JSON dicts, as the REST API returns them) --------------------


def raft_from(result: dict[str, Any]) -> Raft | None:
    """ClusterStatus -> Raft; None when clustering is disabled."""
    if result.get("status") != "enabled":
        return None
    info = result.get("raft_info") or {}
    thread = result.get("consensus_thread_status") or {}
    failures = result.get("message_send_failures") or {}
    return Raft(
        peer_id=int(result["peer_id"]),
        role=info.get("role"),
        term=int(info.get("term", 0)),
        commit=int(info.get("commit", 0)),
        pending_operations=int(info.get("pending_operations", 0)),
        leader=info.get("leader"),
        is_voter=bool(info.get("is_voter", True)),
        peers=tuple(sorted((int(k), str(v.get("uri", ""))) for k, v in (result.get("peers") or {}).items())),
        consensus=str(thread.get("consensus_thread_status", "?")),
        consensus_error=thread.get("err"),
        send_failures=tuple(sorted((str(k), int((v or {}).get("count", 0))) for k, v in failures.items())),
    )


def collection_cluster_from(name: str, result: dict[str, Any]) -> tuple[int, int, tuple[LocalShard, ...], tuple[RemoteShard, ...], tuple[Transfer, ...]]:
    """CollectionClusterInfo -> (peer id, shard count, local, remote, transfers)."""
    local = tuple(LocalShard(int(s["shard_id"]), str(s["state"]), int(s.get("points_count") or 0))
                  for s in result.get("local_shards") or ())
    remote = tuple(RemoteShard(int(s["shard_id"]), int(s["peer_id"]), str(s["state"])) for s in result.get("remote_shards") or ())
    transfers = tuple(Transfer(name, int(t["shard_id"]), int(t["from"]), int(t["to"]), bool(t.get("sync")), t.get("method"),
                               t.get("comment")) for t in result.get("shard_transfers") or ())
    return int(result["peer_id"]), int(result.get("shard_count") or 0), local, remote, transfers


# Snapshot endpoints are slow by nature (they write and stream whole collections): their average
# says nothing about how fast searches are answered.
SLOW_BY_NATURE = ("snapshot",)


def worst_latency(telemetry: dict[str, Any]) -> tuple[float | None, str | None]:
    """(ms, endpoint) of the REST endpoint with the worst recent average (Qdrant averages its
    last 128 calls), snapshot endpoints left out; (None, None) when nothing was answered yet."""
    rest = ((telemetry.get("requests") or {}).get("rest") or {}).get("responses") or {}
    worst: tuple[float | None, str | None] = (None, None)
    for endpoint, by_status in rest.items():
        if any(word in endpoint.lower() for word in SLOW_BY_NATURE):
            continue
        for status, stats in (by_status or {}).items():
            avg = (stats or {}).get("avg_duration_micros")
            if avg is None or not (stats or {}).get("count"):
                continue
            ms = float(avg) / 1000.0
            if worst[0] is None or ms > worst[0]:
                worst = (ms, f"{endpoint} ({status})")
    return worst
