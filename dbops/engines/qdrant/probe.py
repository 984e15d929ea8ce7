"""Qdrant's drill probe (dbops.drill.probe.Probe): one point per write, id = seq, in a collection
the drill creates and drops (`dbops_drill_<run id>`: 4-d vectors).

The collection is replicated the way a collection worth drilling is: one shard per node (every
node holds some of it), each shard on min(nodes, 3) of them, and write_consistency_factor a
majority of those, so an upsert acknowledged with `wait=true` is applied on a majority of its
shard's replicas. Writes use Qdrant's default (weak) ordering, as clients do; reads ask a
majority of the replicas (`consistency=majority`), so a write acknowledged by a majority reads
back whichever replica answers.

Points are read with `/points/scroll` and a `has_id` filter: one request for a point or a batch
of ids, through an endpoint every Qdrant since 1.0 has (and the test stand-in implements).

A node is a way in, not a primary: every node forwards to the shards' replicas. The probe talks
to the first node to answer /readyz (every configured node asked at once: a dead node costs the
others nothing) and, after any failure (reset), asks again: a drill that kills that node sees
the probe move to another. Connections are the Qdrant engine's (dbops.engines.qdrant.client):
its API key (the managing key: the probe writes), TLS and messages that never hold the key.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from typing import Any

from dbops.config import ClusterRef
from dbops.engines.qdrant.client import NodeClient, QdrantError, runbook_key
from dbops.secrets import Secret

PREFIX = "dbops_drill_"
VECTOR_SIZE = 4
MAX_REPLICAS = 3
BATCH = 1000  # ids per present() request
VECTOR = [0.5] * VECTOR_SIZE  # the probe never searches: any vector of the right size will do


def collection_name(run_id: str) -> str:
    # Qdrant refuses some characters in a collection name (it is a path segment and a directory).
    return PREFIX + re.sub(r"[^A-Za-z0-9_-]", "_", run_id)


class QdrantProbe:
    def __init__(self, ref: ClusterRef, run_id: str):
        self.ref = ref
        self.run_id = run_id
        self.collection = collection_name(run_id)
        self.target = (f"collection {self.collection} (a shard per node, each on up to {MAX_REPLICAS} nodes, "
                       "writes acknowledged by a majority of its replicas)")
        self._node: NodeClient | None = None
        self._key: Secret | None = None
        self._key_read = False

    def commands(self) -> list[str]:
        c = self.collection
        scroll = f"POST /collections/{c}/points/scroll?consistency=majority"
        return [
            "GET /cluster  -- at open: the number of nodes",
            f"PUT /collections/{c}  {{vectors: {{size: {VECTOR_SIZE}, distance: Dot}}, shard_number: <nodes>, "
            f"replication_factor: <nodes, at most {MAX_REPLICAS}>, write_consistency_factor: <a majority of those>}}"
            "  -- at open, unless it exists",
            f"PUT /collections/{c}/points?wait=true  {{points: [{{id: <seq>, vector: [...], payload: {{seq: <seq>}}}}]}}"
            "  -- every 0.1 s",
            f"{scroll}  {{filter: {{must: [{{has_id: [<seq>]}}]}}, limit: 1}}  -- read back",
            f"{scroll}  {{filter: {{must: [{{has_id: [<up to {BATCH} seqs>]}}]}}, limit: {BATCH}}}  -- after recovery",
            f"DELETE /collections/{c}  -- at the end of the drill",
        ]

    # -- the node it talks to ------------------------------------------------------------------

    @property
    def via(self) -> str | None:
        """The configured name of the node it talks to now (None: it will ask at the next call)."""
        return self._node.member.name if self._node is not None else None

    async def _client(self) -> NodeClient:
        if self._node is None:
            if not self._key_read:
                self._key, self._key_read = runbook_key(self.ref), True
            self._node = await self._first_ready()
        return self._node

    async def _first_ready(self) -> NodeClient:
        """The first node to answer /readyz with 200 (every configured node asked at once)."""
        members = list(self.ref.cluster.members)
        clients = [NodeClient(self.ref, m, self._key) for m in members]

        async def ready(client: NodeClient) -> NodeClient:
            status, text = await client.status_text("/readyz")
            if status != 200:
                raise QdrantError(f"{client.what} is not ready: HTTP {status} {text}".strip())
            return client

        tasks = {asyncio.ensure_future(ready(c)): c for c in clients}
        pending = set(tasks)
        chosen: NodeClient | None = None
        reasons: list[str] = []
        try:
            while pending and chosen is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: clients.index(tasks[t])):
                    exc = task.exception()
                    if exc is None:
                        chosen = task.result()
                        break
                    reasons.append(exc.message if isinstance(exc, QdrantError) else tasks[task].error(exc, "GET /readyz").message)
        finally:
            for task in pending:
                task.cancel()
            # The others' answers no longer matter: the first ready node is used.
            await asyncio.gather(*pending, return_exceptions=True)
            await asyncio.gather(*(c.close() for c in clients if c is not chosen))
        if chosen is None:
            raise QdrantError(f"no node of {self.ref.key} is ready: " + "; ".join(reasons))
        return chosen

    async def _scroll(self, node: NodeClient, ids: Sequence[int]) -> set[int]:
        found: set[int] = set()
        offset: Any = None
        while True:
            body: dict[str, Any] = {"filter": {"must": [{"has_id": list(ids)}]}, "limit": len(ids),
                                    "with_payload": False, "with_vector": False}
            if offset is not None:
                body["offset"] = offset
            result = await node.request("POST", f"/collections/{self.collection}/points/scroll",
                                        params={"consistency": "majority"}, body=body)
            found.update(int(p["id"]) for p in result["points"])
            offset = result.get("next_page_offset")
            if offset is None:
                return found

    # -- the probe -------------------------------------------------------------------------------

    async def open(self) -> None:
        node = await self._client()
        path = f"/collections/{self.collection}"
        existing = await node.request("GET", path, ok=(200, 404))
        if existing is not None:
            config = existing["config"]["params"]
            rf, wcf = config.get("replication_factor", 1), config.get("write_consistency_factor", 1)
            shards = config.get("shard_number", 1)
        else:
            cluster = await node.request("GET", "/cluster")
            nodes = len(cluster.get("peers") or {}) if cluster.get("status") == "enabled" else 1
            nodes = max(nodes, 1)
            shards, rf = nodes, min(nodes, MAX_REPLICAS)
            wcf = rf // 2 + 1
            await node.request("PUT", path, body={
                "vectors": {"size": VECTOR_SIZE, "distance": "Dot"}, "shard_number": shards,
                "replication_factor": rf, "write_consistency_factor": wcf})
        self.target = (f"collection {self.collection} ({shards} shard{'s' if shards != 1 else ''} "
                       f"x {rf} replica{'s' if rf != 1 else ''}, writes acknowledged by {wcf})")

    async def write(self, seq: int) -> None:
        node = await self._client()
        result = await node.request("PUT", f"/collections/{self.collection}/points", params={"wait": "true"},
                                    body={"points": [{"id": int(seq), "vector": VECTOR, "payload": {"seq": int(seq)}}]})
        # With wait=true Qdrant answers once the update is applied: "completed". Anything else
        # ("acknowledged": only queued) is not the acknowledgement the drill counts.
        if not isinstance(result, dict) or result.get("status") != "completed":
            raise QdrantError(f"{node.what}: upsert of point {seq} answered {result!r}, not completed")

    async def read(self, seq: int) -> bool:
        node = await self._client()
        return int(seq) in await self._scroll(node, [int(seq)])

    async def present(self, seqs: Sequence[int]) -> set[int]:
        node = await self._client()
        wanted = sorted({int(s) for s in seqs if int(s) >= 0})  # point ids are unsigned
        found: set[int] = set()
        for i in range(0, len(wanted), BATCH):
            found |= await self._scroll(node, wanted[i:i + BATCH])
        return found

    async def reset(self) -> None:
        node, self._node = self._node, None
        if node is not None:
            await node.close()

    async def close(self, drop: bool) -> None:
        try:
            if drop:
                deadline = time.monotonic() + self.ref.timeout * 3
                while True:  # the node it talked to may be the one a drill stopped: another will do
                    try:
                        node = await self._client()
                        await node.request("DELETE", f"/collections/{self.collection}")
                        break
                    except Exception:
                        await self.reset()
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
        finally:
            await self.reset()
