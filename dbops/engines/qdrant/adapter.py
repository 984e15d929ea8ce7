"""The Qdrant adapter: one refresh of a whole cluster, every node asked concurrently.

A Qdrant node answers /cluster and /collections/{c}/cluster from its own point of view, so the
cluster is polled as one unit whose refresh asks every configured node at once, each under its
own time bound: a dead or slow node shows as DOWN or TIMEOUT and costs the others nothing.

Per node and refresh: GET /readyz, GET /cluster (raft role, term, commit, pending operations,
peers), GET /collections, per collection GET /collections/{c} (status, point count) and GET
/collections/{c}/cluster (local shards with their point counts, replicas on other peers with
their states, shard transfers), GET /telemetry (request latency; a node that refuses it still
reports the rest). GET / (the version) once per node.

The refresh speaks REST through httpx only: qdrant-client (which the runbooks use) takes
0.7-2 s to import, which on a busy host would eat a node's whole time bound on the first refresh
and show every node as TIMEOUT.
"""

from __future__ import annotations

import asyncio
import time

from dbops.config import ClusterRef, Member
from dbops.engines.base import Adapter, common_reachability, import_off_loop
from dbops.engines.qdrant.client import NodeClient, QdrantError, reading_key
from dbops.engines.qdrant.data import Node, NodeCollection, QdrantData, collection_cluster_from, raft_from, worst_latency
from dbops.model import Reachability, first_line
from dbops.secrets import Secret, redact

# A node's share of the refresh's time bound: the unit's collect() must finish before the
# poller's timeout even when a node never answers.
NODE_TIMEOUT_SHARE = 0.8
# Collections read per refresh and node (each costs two requests); more are named in a note.
MAX_COLLECTIONS = 100
PARALLEL_PER_NODE = 8


class NoNodeAnswers(Exception):
    def __init__(self, reachability: Reachability, message: str):
        super().__init__(message)
        self.reachability = reachability
        self.message = message


class QdrantAdapter(Adapter):
    kind = "qdrant"

    def __init__(self, cluster: ClusterRef, member: Member, key: Secret | None = None) -> None:
        """`key`: the API key to read with; default the cluster's `password` (runbooks pass
        their own, so the refresh they judge by is read with the key they act with)."""
        super().__init__(cluster, member)
        self._key: Secret | None = key
        self._clients: dict[str, NodeClient] = {}
        self._versions: dict[str, str] = {}
        self._last_up: dict[str, float] = {}

    @property
    def node_timeout(self) -> float:
        return max(0.2, self.cluster.timeout * NODE_TIMEOUT_SHARE)

    def client(self, name: str) -> NodeClient:
        """The node's client (one per node, reused across refreshes)."""
        m = next(x for x in self.cluster.cluster.members if x.name == name)
        return self._client(m)

    def _client(self, m: Member) -> NodeClient:
        if m.name not in self._clients:
            if self._key is None:
                self._key = reading_key(self.cluster)  # SecretError: AUTH, via classify
            self._clients[m.name] = NodeClient(self.cluster, m, self._key, timeout=self.node_timeout)
        return self._clients[m.name]

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        self._versions.clear()  # a node restarted meanwhile may run another version
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    async def collect(self) -> QdrantData:
        members = list(self.cluster.cluster.members)
        for m in members:
            self._client(m)
        await import_off_loop("httpx")  # once, before any node's time bound starts
        nodes = await asyncio.gather(*(self._poll_bounded(m) for m in members))
        up = [n for n in nodes if n.up]
        if not up:
            reaches = {n.reachability for n in nodes}
            reach = Reachability(reaches.pop()) if len(reaches) == 1 else Reachability.DOWN
            errors = list(dict.fromkeys(n.error or "" for n in nodes))
            message = errors[0] if len(errors) == 1 else "; ".join(errors)
            raise NoNodeAnswers(reach, message)
        return QdrantData(nodes=tuple(nodes))

    async def _poll_bounded(self, m: Member) -> Node:
        client = self._clients[m.name]
        try:
            return await asyncio.wait_for(self._poll(m, client), timeout=self.node_timeout)
        except QdrantError as exc:
            return Node(m.name, client.address, False, exc.reachability.value, exc.message, last_up_at=self._last_up.get(m.name))
        except TimeoutError:
            return Node(m.name, client.address, False, Reachability.TIMEOUT.value,
                        f"no answer from {client.what} within {self.node_timeout:.1f}s", last_up_at=self._last_up.get(m.name))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # An answer of a shape dbops does not know (another Qdrant version, a proxy's page):
            # this node is ERROR, the others still report.
            return Node(m.name, client.address, False, Reachability.ERROR.value,
                        client.safe(f"{client.what} answered something dbops cannot read: {type(exc).__name__}: {first_line(str(exc))}"),
                        last_up_at=self._last_up.get(m.name))

    async def _poll(self, m: Member, c: NodeClient) -> Node:
        notes: list[str] = []
        status, text = await c.status_text("/readyz")
        started = time.monotonic()
        cluster = await c.request("GET", "/cluster")
        rtt = (time.monotonic() - started) * 1000
        if m.name not in self._versions:
            root = await c.request("GET", "/", whole=True)
            self._versions[m.name] = str(root.get("version", "?")) if isinstance(root, dict) else "?"
        raft = raft_from(cluster) if isinstance(cluster, dict) else None
        listed = await c.request("GET", "/collections")
        names = sorted(str(d["name"]) for d in (listed or {}).get("collections", ()))
        if len(names) > MAX_COLLECTIONS:
            notes.append(f"{len(names)} collections: only the first {MAX_COLLECTIONS} (by name) are read each refresh")
            names = names[:MAX_COLLECTIONS]
        gate = asyncio.Semaphore(PARALLEL_PER_NODE)
        collections = await asyncio.gather(*(self._collection(c, name, gate) for name in names))
        latency, endpoint = None, None
        try:
            telemetry = await c.request("GET", "/telemetry", doing="GET /telemetry")
            latency, endpoint = worst_latency(telemetry if isinstance(telemetry, dict) else {})
        except QdrantError as exc:
            if exc.reachability in (Reachability.DOWN, Reachability.TIMEOUT):
                raise
            notes.append(f"latency unknown: {exc.message}")
        self._last_up[m.name] = time.time()
        return Node(m.name, c.address, True, Reachability.UP.value, None, self._versions.get(m.name), status == 200,
                    text, raft, cluster.get("status") == "enabled" if isinstance(cluster, dict) else None,
                    tuple(collections), latency, endpoint, rtt, self._last_up[m.name], tuple(notes))

    async def _collection(self, c: NodeClient, name: str, gate: asyncio.Semaphore) -> NodeCollection:
        async with gate:
            try:
                info = await c.request("GET", f"/collections/{name}")
                shards = await c.request("GET", f"/collections/{name}/cluster")
            except QdrantError as exc:
                if exc.reachability in (Reachability.DOWN, Reachability.TIMEOUT, Reachability.AUTH):
                    raise
                # Dropped between the listing and now, or unreadable: the rest of the refresh stands.
                return NodeCollection(name, None, None, error=exc.message)
        status = info.get("status")
        points = info.get("points_count")
        peer, count, local, remote, transfers = collection_cluster_from(name, shards)
        return NodeCollection(name, str(status) if status is not None else None, int(points) if points is not None else None,
                              peer, count, local, remote, transfers)

    def classify(self, exc: BaseException) -> tuple[Reachability, str]:
        if isinstance(exc, NoNodeAnswers):
            return exc.reachability, exc.message
        if isinstance(exc, QdrantError):
            return exc.reachability, exc.message
        common = common_reachability(exc, f"{self.cluster.name}'s nodes", self.cluster.timeout)
        if common is not None:
            reach, message = common
            if reach is Reachability.AUTH:
                message = message.replace("password", "API key (password)", 1)
            return reach, redact(message, self._key)
        return Reachability.ERROR, redact(f"{type(exc).__name__}: {first_line(str(exc))}", self._key)
