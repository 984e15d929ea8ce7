"""A FAKE Qdrant cluster: an HTTP stand-in for Qdrant 1.19's REST API, for tests and the sandbox only.

No Qdrant server can be installed where dbops is developed and tested, so its Qdrant pane and
runbooks talk to this instead. It is NOT Qdrant: it implements exactly the REST endpoints dbops
calls, with real state behind them (collections, shards spread over peers, replica states, shard
transfers, points, per-node snapshots, aliases), and simulates the rest (consensus is a counter,
search is a brute-force scan). One process serves every node; the nodes share one simulated
cluster state, each is a raft peer with its own (large, random) peer id, and node 1 is the leader
(while it is up: then the first node up takes over, and the raft term goes up).

Drift from real Qdrant is caught by validation: given an OpenAPI spec (``spec_path``; the tests
pass ``tests/fakes/qdrant-openapi-1.19.json``), every request the fake receives and every response
it sends is validated with openapi-core, and each mismatch is recorded in ``violations`` (an
unknown path or method counts too). Validation never changes what is answered.

Python::

    from dbops.sandbox.fake_qdrant import FakeQdrantCluster
    cluster = FakeQdrantCluster(ports=[p1, p2, p3], api_key="full-key", read_only_api_key="ro-key",
                                spec_path="tests/fakes/qdrant-openapi-1.19.json")  # None: no validation
    cluster.start(); cluster.urls  # ["http://127.0.0.1:p1", ...]
    cluster.peer_ids               # [peer id of node 1, ...]; node 1 is the raft leader
    cluster.violations             # list[str]
    cluster.stop()

plus helpers the tests and the sandbox use directly: ``create_collection``, ``upsert_points``,
``create_alias``, ``seed_demo``, ``set_replica_state``, ``set_latency``, ``node_down``,
``node_up``, ``complete_transfers``, ``transfer_seconds``.

Command line (the sandbox)::

    python -m dbops.sandbox.fake_qdrant --ports 6333,6334,6335 --api-key-file F \\
        --read-only-api-key-file F [--spec PATH] [--state-file F] [--seed-demo] [--transfer-seconds S]
        [--auto-recover]

``--state-file`` keeps the cluster state (and, beside it in ``snapshots/``, the snapshot files)
across restarts: it is loaded at start when it exists and rewritten after every change.

API keys (as Qdrant): header ``api-key: K`` or ``Authorization: Bearer K``. With no key configured
everything is open. ``/``, ``/healthz``, ``/livez``, ``/readyz`` need no key. A missing or
unknown key: 401. The read-only key may read (GET, and POST count/scroll/query); anything else
is answered 403 ``Forbidden: Write access is required``. Error bodies are Qdrant's JSON shape
``{"status": {"error": "..."}, "time": s}`` (the spec's; real Qdrant answers its auth errors
401/403 in plain text, so a client must not rely on a JSON body there).

Endpoints: ``GET / /healthz /livez /readyz /cluster /telemetry /metrics /collections /aliases``;
``GET PUT DELETE /collections/{c}``; ``GET POST /collections/{c}/cluster`` (replicate_shard,
move_shard, abort_transfer, drop_replica); ``GET /collections/{c}/aliases``; ``POST
/collections/aliases`` (create_alias, delete_alias, rename_alias); ``PUT
/collections/{c}/points``; ``POST /collections/{c}/points/count | scroll | query``; ``GET POST
/collections/{c}/snapshots``; ``GET DELETE /collections/{c}/snapshots/{name}``; ``PUT
/collections/{c}/snapshots/recover``. Note: Qdrant 1.19 has no ``GET /collections/aliases`` (that
path is ``GET /collections/{c}`` of a collection named "aliases") and no ``/points/search``: list
aliases with ``GET /aliases``, search with ``/points/query``.

Behaviour worth knowing:

- Shards: shard ``s`` of a collection has its replicas on peers ``s, s+1, ...`` (mod the node
  count), ``replication_factor`` of them; a point lives in shard ``id % shard_number`` (UUIDs:
  by their integer value).
- Collection status: red if a shard has no Active replica, yellow if a transfer runs or any
  replica is not Active, else green.
- Transfers (replicate_shard, move_shard) are asynchronous: the target replica is Partial
  (stream_records, the default) or Recovery (snapshot, wal_delta) and the transfer is listed
  until ``transfer_seconds`` (default 2 s) have passed, then the target is Active (move_shard:
  and the source replica is dropped). Replicating onto a Dead replica
  recovers it (Qdrant accepts that; no drop_replica first). Refused as Qdrant does: unknown shard
  or peer, a source without an Active replica, a transfer of the same shard involving either peer
  ("Shard s is already involved in transfer a -> b"). abort_transfer leaves a replication's target
  Dead and removes a move's; an unknown transfer is 404.
- Automatic recovery (``auto_recover=True``, ``--auto-recover``): real Qdrant's node notices its
  own Dead replica and asks for a transfer from an Active peer by itself
  (Collection::sync_local_state); the fake does so for a Dead replica on a node that is up. Off by
  default, like a Qdrant whose automatic transfers are held back (transfer limits, a failing
  source), so a Dead replica stays for the pane and the runbook to act on.
- Snapshots are per node: a JSON document of the collection's config and the points of the
  shards that node holds (Active replicas); name ``{c}-{peer_id}-{YYYY-MM-DD-HH-MM-SS}.snapshot``,
  checksum SHA-256. Recovery FETCHES the location (http(s) or file://), checks ``checksum``
  (mismatch: 400 naming both checksums), creates the collection if absent, and restores the
  snapshot's shards. With priority ``replica`` (Qdrant's default) a shard that still has an Active
  replica on another peer keeps that replica's points (Qdrant syncs from it); ``snapshot`` and
  ``no_sync`` take the snapshot's points.
- A node taken down misses the writes made meanwhile: its replicas of the shards written to turn
  Dead (as in Qdrant), and the other nodes' /cluster lists it under message_send_failures.
- A node's latency (``set_latency``) delays every request it answers; ``/telemetry`` and
  ``/metrics`` report the measured durations per endpoint, delay included.

Fault injection and control, on any node, OUTSIDE the spec (not validated, no API key needed)::

    POST /__fake__/replica-state  {"collection", "shard_id", "peer_id" (id, or node name "q2"), "state"}
    POST /__fake__/latency        {"ms": 800, "peer_id": optional (default: the node asked)}
    POST /__fake__/node-down      {"peer_id": optional, "mode": "refuse" | "hang"}
         refuse: the node's port is closed (connection refused); hang: it accepts and never
         answers until node-up (like SIGSTOP). Bring it back through another node.
    POST /__fake__/node-up        {"peer_id": ...}
    POST /__fake__/transfers      {"seconds": S} sets transfer_seconds; {"complete": true} ends them now
    GET  /__fake__/state          peers (id, name, url, down, latency), collections, transfers
    GET  /__fake__/violations     {"violations": [...]}

Only the stdlib is imported here; openapi-core (a test dependency) is imported when a spec is given.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import math
import os
import random
import re
import signal
import socketserver
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

QDRANT_VERSION = "1.19.0"
QDRANT_COMMIT = "fa4e1b3d2c0a9b8e7f6d5c4b3a29180706f5e4d3"  # a made-up commit id (it is a fake)
HOST = "127.0.0.1"
REPLICA_STATES = ("Active", "Dead", "Partial", "Initializing", "Listener", "PartialSnapshot", "Recovery",
                  "Resharding", "ReshardingScaleDown", "ActiveRead", "ManualRecovery")
SNAPSHOT_FORMAT = "dbops-fake-qdrant-snapshot/1"
STATE_FORMAT = "dbops-fake-qdrant-state/1"
HANG_LIMIT = 600.0  # a hung node answers after this many seconds at most, so nothing waits forever
DEFAULT_TRANSFER_SECONDS = 2.0


class ApiError(Exception):
    """An error answered in Qdrant's shape: {"status": {"error": message}, "time": ...}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _not_found(name: str) -> ApiError:
    return ApiError(404, f"Not found: Collection `{name}` doesn't exist!")


def _bad(message: str) -> ApiError:
    return ApiError(400, f"Bad request: {message}")


def _wrong(message: str) -> ApiError:
    return ApiError(400, f"Wrong input: {message}")


def _receiving_state(method: str) -> str:
    """The target replica's state while a transfer runs, as Collection::start_shard_transfer
    (lib/collection/src/collection/shard_transfer.rs) sets it: stream_records Partial; snapshot and
    wal_delta Recovery."""
    return "Partial" if method == "stream_records" else "Recovery"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------
# Validation against the OpenAPI spec

_SPEC_CACHE: dict[str, Any] = {}
_SPEC_LOCK = threading.Lock()


def load_spec(spec_path: str | os.PathLike[str]) -> Any:
    """The openapi-core OpenAPI object of `spec_path`, loaded once per process (it takes ~1 s)."""
    key = str(Path(spec_path).resolve())
    with _SPEC_LOCK:
        if key not in _SPEC_CACHE:
            from openapi_core import OpenAPI  # test dependency: only when validating

            _SPEC_CACHE[key] = OpenAPI.from_file_path(key)
        return _SPEC_CACHE[key]


class SpecValidator:
    """Validates one exchange (request and response) against the spec; returns the problems as
    one-line strings, [] when both conform."""

    def __init__(self, spec_path: str | os.PathLike[str]):
        self.spec_path = str(spec_path)
        self.api = load_spec(spec_path)
        self._lock = threading.Lock()  # openapi-core's validators are not documented thread-safe

    def check(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes | None,
              status: int, response_body: bytes, response_type: str) -> list[str]:
        from openapi_core.datatypes import RequestParameters
        from werkzeug.datastructures import Headers, ImmutableMultiDict

        class _Request:
            host_url = "http://localhost:6333"

            def __init__(self) -> None:
                self.path = path
                self.method = method.lower()
                self.parameters = RequestParameters(
                    query=ImmutableMultiDict(urllib.parse.parse_qsl(query, keep_blank_values=True)),
                    header=Headers(headers), cookie=ImmutableMultiDict(), path={})
                self.body = body or None
                self.content_type = headers.get("Content-Type", headers.get("content-type", "application/json")).lower()

        class _Response:
            def __init__(self) -> None:
                self.status_code = status
                self.data = response_body
                self.content_type = response_type.lower()
                self.headers = Headers({"Content-Type": response_type})

        problems: list[str] = []
        with self._lock:
            for what, run in (("request", lambda: self.api.validate_request(_Request())),
                              ("response", lambda: self.api.validate_response(_Request(), _Response()))):
                try:
                    run()
                except Exception as exc:  # every openapi-core error is a finding, recorded not raised
                    problems.append(f"{what}: {_describe(exc)}")
        return problems


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None and str(cause) not in text:
        text += f" ({cause})"
    for err in getattr(exc, "schema_errors", None) or []:
        text += f"; {getattr(err, 'message', err)}"
    text = " ".join(text.split())
    return text if len(text) <= 1500 else text[:1500] + " ..."


# ---------------------------------------------------------------------------------------------
# The simulated cluster state


@dataclass
class Peer:
    index: int  # 0-based position: node 1 is index 0
    peer_id: int
    port: int
    down: str | None = None  # None, "refuse" or "hang"
    latency_ms: float = 0.0

    @property
    def name(self) -> str:
        return f"q{self.index + 1}"

    @property
    def uri(self) -> str:
        # Qdrant reports a peer's internal p2p URI (port 6335 by default), not its REST address:
        # a client maps peers to nodes by asking each node's /cluster for its own peer_id.
        return f"http://fake-qdrant-{self.index + 1}.internal:6335/"


@dataclass
class Transfer:
    shard_id: int
    from_peer: int
    to_peer: int
    sync: bool  # True: replicate (the source keeps its replica); False: move
    method: str
    started: float
    created_target: bool  # the target replica did not exist before the transfer

    def info(self) -> dict[str, Any]:
        return {"shard_id": self.shard_id, "from": self.from_peer, "to": self.to_peer, "sync": self.sync,
                "method": self.method, "comment": "Transferring records (fake)"}


@dataclass
class Stat:
    count: int = 0
    fail_count: int = 0
    total_us: float = 0.0
    min_us: float = math.inf
    max_us: float = 0.0
    recent: list[float] = field(default_factory=list)  # the last 128 durations (Qdrant averages those)
    last: str = ""
    bucket_counts: list[int] = field(default_factory=list)


HISTOGRAM_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


def _point_key(pid: Any) -> str:
    return f"i{pid}" if isinstance(pid, int) else f"u{pid}"


def _sort_key(pid: Any) -> tuple[int, Any]:
    return (0, pid) if isinstance(pid, int) else (1, str(pid))


class ClusterState:
    """Everything the nodes share. Every method takes the lock; nothing here does I/O except
    `save` (the state file) and snapshot files."""

    def __init__(self, peers: list[Peer], transfer_seconds: float = DEFAULT_TRANSFER_SECONDS,
                 snapshot_dir: Path | None = None, auto_recover: bool = False):
        self.lock = threading.RLock()
        self.peers = peers
        self.transfer_seconds = transfer_seconds
        self.auto_recover = auto_recover
        self.collections: dict[str, dict[str, Any]] = {}
        self.aliases: dict[str, str] = {}
        self.transfers: dict[str, list[Transfer]] = {}
        self.term = 3
        self.commit = 40
        self.op_id = 0
        self.started = _now_iso()
        self.telemetry_id = str(uuid.uuid4())
        self.snapshot_dir = snapshot_dir
        self.stats: dict[int, dict[tuple[str, str, int], Stat]] = {p.peer_id: {} for p in peers}
        self.on_change: Callable[[], None] | None = None
        self._leader_id: int | None = None

    # -- peers -----------------------------------------------------------------------------

    def peer(self, ref: Any) -> Peer:
        """A peer by id or by node name ("q2") (test and sandbox controls)."""
        for p in self.peers:
            if ref == p.peer_id or str(ref) == str(p.peer_id) or str(ref) == p.name:
                return p
        raise _bad(f"Peer {ref} does not exist")

    def peer_by_id(self, peer_id: Any) -> Peer:
        """A peer by its id only, as the API takes it."""
        for p in self.peers:
            if p.peer_id == int(peer_id):
                return p
        raise _bad(f"Peer {peer_id} does not exist")

    @property
    def leader(self) -> Peer:
        """Node 1 at first; when the leader is down, the first node up (a new election: the term
        goes up), which stays leader while it is up."""
        up = [p for p in self.peers if not p.down]
        current = [p for p in up if p.peer_id == self._leader_id]
        leader = current[0] if current else up[0] if up else self.peers[0]
        if leader.peer_id != self._leader_id:
            if self._leader_id is not None:
                self.term += 1
            self._leader_id = leader.peer_id
        return leader

    def _changed(self) -> None:
        self.commit += 1
        if self.on_change is not None:
            self.on_change()

    # -- collections -----------------------------------------------------------------------

    def resolve(self, name: str) -> str:
        """A collection name, or the collection an alias points at."""
        if name in self.collections:
            return name
        if name in self.aliases and self.aliases[name] in self.collections:
            return self.aliases[name]
        raise _not_found(name)

    def create_collection(self, name: str, body: dict[str, Any]) -> None:
        with self.lock:
            if name in self.collections:
                raise _wrong(f"Collection `{name}` already exists!")
            vectors = body.get("vectors")
            if not isinstance(vectors, dict) or not vectors:
                raise _wrong("the fake needs `vectors` (size and distance) to create a collection")
            shard_number = int(body.get("shard_number") or len(self.peers))
            rf = int(body.get("replication_factor") or 1)
            if rf > len(self.peers):
                # Qdrant creates the collection with fewer replicas and warns; the fake refuses
                # so that a test never silently gets less than it asked for.
                raise _bad(f"replication_factor {rf} is above the number of peers ({len(self.peers)})")
            shards = {}
            for s in range(shard_number):
                replicas = {self.peers[(s + k) % len(self.peers)].peer_id: "Active" for k in range(rf)}
                shards[s] = {"replicas": replicas, "points": {}}
            self.collections[name] = {
                "vectors": vectors,
                "shard_number": shard_number,
                "replication_factor": rf,
                "write_consistency_factor": int(body.get("write_consistency_factor") or 1),
                "on_disk_payload": bool(body.get("on_disk_payload", True)),
                "shards": shards,
                "created": _now_iso(),
            }
            self.transfers[name] = []
            self._changed()

    def delete_collection(self, name: str) -> bool:
        with self.lock:
            if name not in self.collections:
                return False
            del self.collections[name]
            self.transfers.pop(name, None)
            for alias in [a for a, c in self.aliases.items() if c == name]:
                del self.aliases[alias]
            self._changed()
            return True

    def advance(self) -> None:
        """Finish the transfers whose time has come, and (auto_recover) start Qdrant's own
        recovery of Dead replicas (called on every request)."""
        with self.lock:
            now = time.monotonic()
            done = False
            for name, transfers in self.transfers.items():
                for t in list(transfers):
                    if now - t.started >= self.transfer_seconds:
                        self._finish(name, t)
                        done = True
            if self.auto_recover:
                done = self._recover_dead(now) or done
            if done:
                self._changed()

    def _recover_dead(self, now: float) -> bool:
        """As Qdrant's Collection::sync_local_state (lib/collection/src/collection/mod.rs): a node
        up with a Dead replica of a shard requests a replicate transfer to itself from the first
        Active replica on a peer that answers, unless a transfer already involves either peer
        (check_transfer_conflicts_strict: across the whole collection)."""
        started = False
        up = {p.peer_id for p in self.peers if not p.down}
        for name, col in self.collections.items():
            transfers = self.transfers[name]
            for shard_id, shard in col["shards"].items():
                replicas = shard["replicas"]
                for dead in [peer for peer, state in replicas.items() if state == "Dead" and peer in up]:
                    for src in [peer for peer, state in replicas.items() if state == "Active" and peer in up]:
                        if any({t.from_peer, t.to_peer} & {src, dead} for t in transfers):
                            continue
                        replicas[dead] = _receiving_state("wal_delta")
                        transfers.append(Transfer(shard_id, src, dead, True, "wal_delta", now, False))
                        started = True
                        break
        return started

    def complete_transfers(self) -> int:
        with self.lock:
            n = 0
            for name, transfers in self.transfers.items():
                for t in list(transfers):
                    self._finish(name, t)
                    n += 1
            if n:
                self._changed()
            return n

    def _finish(self, name: str, t: Transfer) -> None:
        replicas = self.collections[name]["shards"][t.shard_id]["replicas"]
        replicas[t.to_peer] = "Active"
        if not t.sync:
            replicas.pop(t.from_peer, None)
        self.transfers[name].remove(t)

    def status_of(self, name: str) -> str:
        col = self.collections[name]
        states = [list(sh["replicas"].values()) for sh in col["shards"].values()]
        if any("Active" not in st for st in states):
            return "red"
        if self.transfers.get(name) or any(s != "Active" for st in states for s in st):
            return "yellow"
        return "green"

    def points_count(self, name: str) -> int:
        return sum(len(sh["points"]) for sh in self.collections[name]["shards"].values())

    def shard_of(self, name: str, pid: Any) -> int:
        n = self.collections[name]["shard_number"]
        if isinstance(pid, int):
            return pid % n
        return uuid.UUID(str(pid)).int % n

    # -- cluster operations ----------------------------------------------------------------

    def cluster_op(self, name: str, body: dict[str, Any]) -> None:
        with self.lock:
            name = self.resolve(name)
            col = self.collections[name]
            transfers = self.transfers[name]
            (op, args), = body.items() if len(body) == 1 else [(None, None)]
            if op not in ("replicate_shard", "move_shard", "abort_transfer", "drop_replica") or not isinstance(args, dict):
                raise _bad(f"the fake implements replicate_shard, move_shard, abort_transfer and drop_replica, not {list(body)}")
            shard_id = int(args["shard_id"])
            if shard_id not in col["shards"]:
                raise _bad(f"Shard {shard_id} does not exist")
            replicas = col["shards"][shard_id]["replicas"]
            if op == "drop_replica":
                peer = self.peer_by_id(args["peer_id"]).peer_id
                if peer not in replicas:
                    raise _bad(f"Shard {shard_id} replica on peer {peer} does not exist")
                if len(replicas) == 1:
                    raise _bad(f"Shard {shard_id} must have at least one replica")
                if any(t.shard_id == shard_id and peer in (t.from_peer, t.to_peer) for t in transfers):
                    raise _bad(f"Shard {shard_id} on peer {peer} is involved in a transfer; abort it first")
                del replicas[peer]
                self._changed()
                return
            src = self.peer_by_id(args["from_peer_id"]).peer_id
            dst = self.peer_by_id(args["to_peer_id"]).peer_id
            if op == "abort_transfer":
                match = [t for t in transfers if t.shard_id == shard_id and t.from_peer == src and t.to_peer == dst]
                if not match:
                    # Qdrant (src/common/collections.rs, do_update_collection_cluster): NotFound.
                    raise ApiError(404, f"Not found: Shard transfer {src} -> {dst} for collection {name}:{shard_id} does not exist")
                t = match[0]
                transfers.remove(t)
                # Qdrant (lib/collection/src/collection/shard_transfer.rs, _abort_shard_transfer): an
                # aborted replication leaves its target Dead, an aborted move removes it.
                if t.sync:
                    replicas[dst] = "Dead"
                else:
                    replicas.pop(dst, None)
                self._changed()
                return
            if src == dst:
                raise _bad(f"Shard {shard_id} cannot be transferred from peer {src} to itself")
            # As Qdrant's validate_transfer (lib/collection/src/shards/transfer/helpers.rs): the source
            # must hold an Active replica, and no transfer of the same shard may involve either peer
            # (check_transfer_conflicts). The target's own state is not checked: a replicate_shard
            # onto a peer holding a Dead (or any) replica of the shard is accepted, and that replica
            # turns Partial while it is rebuilt (Collection::start_shard_transfer, shard_transfer.rs:
            # "Create local shard if it does not exist on receiver, or simply set replica state
            # otherwise"). No drop_replica is needed first.
            if replicas.get(src) != "Active":
                raise _bad(f"Shard {shard_id} is not active on peer {src}")
            conflict = next((t for t in transfers if t.shard_id == shard_id
                             and {t.from_peer, t.to_peer} & {src, dst}), None)
            if conflict is not None:
                raise _bad(f"Shard {shard_id} is already involved in transfer {conflict.from_peer} -> {conflict.to_peer}")
            if op == "move_shard" and dst in replicas:
                raise _bad(f"Shard {shard_id} already exists on peer {dst}")
            created = dst not in replicas
            method = args.get("method") or "stream_records"
            replicas[dst] = _receiving_state(method)
            transfers.append(Transfer(shard_id, src, dst, op == "replicate_shard", method, time.monotonic(), created))
            self._changed()

    # -- points ----------------------------------------------------------------------------

    def _vector_ok(self, name: str, vector: Any) -> None:
        cfg = self.collections[name]["vectors"]
        if "size" in cfg:  # one unnamed vector
            if not isinstance(vector, list):
                raise _wrong("the collection has one unnamed vector; send a list of floats")
            if len(vector) != int(cfg["size"]):
                raise _wrong(f"Vector dimension error: expected dim: {cfg['size']}, got {len(vector)}")
            return
        if not isinstance(vector, dict):
            raise _wrong("the collection has named vectors; send an object of name: vector")
        for vname, v in vector.items():
            if vname not in cfg:
                raise _wrong(f"Not existing vector name error: {vname}")
            if len(v) != int(cfg[vname]["size"]):
                raise _wrong(f"Vector dimension error: expected dim: {cfg[vname]['size']}, got {len(v)}")

    def upsert(self, name: str, body: dict[str, Any]) -> int:
        with self.lock:
            name = self.resolve(name)
            if "points" in body:
                points = [(p["id"], p["vector"], p.get("payload")) for p in body["points"]]
            elif "batch" in body:
                b = body["batch"]
                ids, vectors = b["ids"], b["vectors"]
                payloads = b.get("payloads") or [None] * len(ids)
                if isinstance(vectors, dict):
                    vectors = [{k: v[i] for k, v in vectors.items()} for i in range(len(ids))]
                points = list(zip(ids, vectors, payloads))
            else:
                raise _wrong("send `points` or `batch`")
            for _pid, vector, _ in points:
                self._vector_ok(name, vector)
            shards = self.collections[name]["shards"]
            for pid, _vector, _payload in points:
                sid = self.shard_of(name, pid)
                if "Active" not in shards[sid]["replicas"].values():
                    raise ApiError(500, f"Service internal error: No active replica of shard {sid} to apply the update to")
            down = {p.peer_id for p in self.peers if p.down}
            for pid, vector, payload in points:
                shard = shards[self.shard_of(name, pid)]
                shard["points"][_point_key(pid)] = {"id": pid, "vector": vector, "payload": payload or {}}
                for peer_id in shard["replicas"]:
                    if peer_id in down:
                        shard["replicas"][peer_id] = "Dead"  # as Qdrant: a replica that missed an update is Dead
            self.op_id += 1
            self._changed()
            return self.op_id

    def _matching(self, name: str, flt: Any) -> list[dict[str, Any]]:
        """Every point of the collection that passes `flt` (the fake knows `must` / `must_not` of
        {key, match: {value}} and {has_id}; anything else is refused, never ignored)."""
        points = [p for sh in self.collections[name]["shards"].values() for p in sh["points"].values()]
        if not flt:
            return points

        def cond(p: dict[str, Any], c: dict[str, Any]) -> bool:
            if "has_id" in c:
                return p["id"] in c["has_id"]
            if "key" in c and isinstance(c.get("match"), dict) and "value" in c["match"]:
                return (p["payload"] or {}).get(c["key"]) == c["match"]["value"]
            raise _bad(f"the fake does not implement this filter condition: {json.dumps(c)[:200]}")

        unknown = set(flt) - {"must", "must_not"}
        if unknown:
            raise _bad(f"the fake does not implement filter clauses {sorted(unknown)}")
        must, must_not = flt.get("must") or [], flt.get("must_not") or []
        if isinstance(must, dict):
            must = [must]
        if isinstance(must_not, dict):
            must_not = [must_not]
        return [p for p in points if all(cond(p, c) for c in must) and not any(cond(p, c) for c in must_not)]

    def count(self, name: str, body: dict[str, Any]) -> int:
        with self.lock:
            return len(self._matching(self.resolve(name), body.get("filter")))

    def scroll(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            name = self.resolve(name)
            points = sorted(self._matching(name, body.get("filter")), key=lambda p: _sort_key(p["id"]))
            offset = body.get("offset")
            if offset is not None:
                points = [p for p in points if _sort_key(p["id"]) >= _sort_key(offset)]
            limit = int(body.get("limit") or 10)
            page, rest = points[:limit], points[limit:]
            with_payload = body.get("with_payload", True)
            with_vector = body.get("with_vector", False)
            out = [self._record(p, with_payload, with_vector) for p in page]
            return {"points": out, "next_page_offset": rest[0]["id"] if rest else None}

    @staticmethod
    def _record(p: dict[str, Any], with_payload: Any, with_vector: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {"id": p["id"]}
        rec["payload"] = p["payload"] if with_payload not in (False, None) else None
        rec["vector"] = p["vector"] if with_vector not in (False, None) else None
        return rec

    def query(self, name: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        with self.lock:
            name = self.resolve(name)
            cfg = self.collections[name]["vectors"]
            points = self._matching(name, body.get("filter"))
            limit = int(body.get("limit") or 10)
            with_payload = body.get("with_payload", False)
            with_vector = body.get("with_vector", False)
            q = body.get("query")
            if isinstance(q, dict) and "nearest" in q:
                q = q["nearest"]
            if q is None:
                ranked = [(0.0, p) for p in sorted(points, key=lambda p: _sort_key(p["id"]))]
            elif isinstance(q, list) and all(isinstance(x, (int, float)) for x in q):
                using = body.get("using")
                vcfg = cfg if "size" in cfg else cfg.get(using or "", None)
                if vcfg is None:
                    raise _wrong(f"Not existing vector name error: {using or ''}")
                if len(q) != int(vcfg["size"]):
                    raise _wrong(f"Vector dimension error: expected dim: {vcfg['size']}, got {len(q)}")
                distance = vcfg["distance"]
                scored = []
                for p in points:
                    v = p["vector"] if "size" in cfg else (p["vector"] or {}).get(using)
                    if v is None:
                        continue
                    scored.append((_score(distance, q, v), p))
                # Euclid and Manhattan: smaller is closer; Cosine and Dot: larger is closer.
                scored.sort(key=lambda sp: sp[0], reverse=distance in ("Cosine", "Dot"))
                ranked = scored
            else:
                raise _bad("the fake implements `query` as a dense vector (or {nearest: vector}) only")
            out = []
            for score, p in ranked[:limit]:
                rec = self._record(p, with_payload, with_vector)
                rec.update(score=score, version=self.op_id)
                out.append(rec)
            return out

    # -- aliases ---------------------------------------------------------------------------

    def alias_ops(self, actions: list[dict[str, Any]]) -> None:
        with self.lock:
            new = dict(self.aliases)
            for action in actions:
                if "create_alias" in action:
                    a = action["create_alias"]
                    if a["collection_name"] not in self.collections:
                        raise _not_found(a["collection_name"])
                    new[a["alias_name"]] = a["collection_name"]
                elif "delete_alias" in action:
                    a = action["delete_alias"]
                    if a["alias_name"] not in new:
                        raise ApiError(404, f"Not found: Alias {a['alias_name']} does not exists!")
                    del new[a["alias_name"]]
                elif "rename_alias" in action:
                    a = action["rename_alias"]
                    if a["old_alias_name"] not in new:
                        raise ApiError(404, f"Not found: Alias {a['old_alias_name']} does not exists!")
                    new[a["new_alias_name"]] = new.pop(a["old_alias_name"])
                else:
                    raise _bad(f"unknown alias action {list(action)}")
            self.aliases = new  # all or nothing, as Qdrant's atomic alias changes
            self._changed()

    # -- snapshots -------------------------------------------------------------------------

    def _snap_dir(self, peer: Peer, name: str) -> Path:
        assert self.snapshot_dir is not None
        d = self.snapshot_dir / peer.name / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def create_snapshot(self, peer: Peer, name: str) -> dict[str, Any]:
        with self.lock:
            name = self.resolve(name)
            col = self.collections[name]
            shards = {str(s): sorted(sh["points"].values(), key=lambda p: _sort_key(p["id"]))
                      for s, sh in col["shards"].items() if sh["replicas"].get(peer.peer_id) == "Active"}
            doc = {"format": SNAPSHOT_FORMAT, "collection": name, "peer_id": peer.peer_id,
                   "config": {k: col[k] for k in ("vectors", "shard_number", "replication_factor",
                                                  "write_consistency_factor", "on_disk_payload")},
                   "shards": shards, "created": _now_iso()}
            data = json.dumps(doc, sort_keys=True).encode()
            stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H-%M-%S")
            d = self._snap_dir(peer, name)
            base = f"{name}-{peer.peer_id}-{stamp}"
            snap, n = f"{base}.snapshot", 1
            while (d / snap).exists():
                n += 1
                snap = f"{base}-{n}.snapshot"
            (d / snap).write_bytes(data)
            return self._describe_snapshot(d / snap)

    @staticmethod
    def _describe_snapshot(path: Path) -> dict[str, Any]:
        data = path.read_bytes()
        created = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return {"name": path.name, "creation_time": created, "size": len(data),
                "checksum": hashlib.sha256(data).hexdigest()}

    def list_snapshots(self, peer: Peer, name: str) -> list[dict[str, Any]]:
        with self.lock:
            name = self.resolve(name)
            d = self._snap_dir(peer, name)
            return [self._describe_snapshot(p) for p in sorted(d.glob("*.snapshot"))]

    def snapshot_path(self, peer: Peer, name: str, snap: str) -> Path:
        with self.lock:
            name = self.resolve(name)
            path = self._snap_dir(peer, name) / snap
            if "/" in snap or not path.is_file():
                raise ApiError(404, f"Not found: Snapshot {snap} not found")
            return path

    def recover(self, peer: Peer, name: str, body: dict[str, Any]) -> None:
        location = str(body["location"])
        shown = urllib.parse.urlsplit(location)._replace(query="", fragment="").geturl()  # no presigned secrets
        try:
            if location.startswith("file://"):
                data = Path(urllib.parse.unquote(urllib.parse.urlsplit(location).path)).read_bytes()
            elif location.startswith(("http://", "https://")):
                req = urllib.request.Request(location)
                if body.get("api_key"):
                    req.add_header("api-key", str(body["api_key"]))
                with urllib.request.urlopen(req, timeout=60) as resp:
                    data = resp.read()
            else:
                raise _bad(f"Snapshot location {shown} must be an http(s) URL or a file:// path")
        except urllib.error.HTTPError as exc:
            raise _bad(f"Failed to download snapshot from {shown}: status {exc.code}") from None
        except (OSError, ValueError) as exc:
            raise _bad(f"Failed to download snapshot from {shown}: {exc}") from None
        actual = hashlib.sha256(data).hexdigest()
        expected = body.get("checksum")
        if expected and expected.lower() != actual:
            raise _bad(f"Snapshot checksum mismatch: expected {expected}, got {actual}")
        try:
            doc = json.loads(data)
            if doc.get("format") != SNAPSHOT_FORMAT:
                raise ValueError("not a fake Qdrant snapshot")
            config, shards = doc["config"], doc["shards"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _bad(f"Snapshot {shown} cannot be read: {exc}") from None
        priority = body.get("priority") or "replica"
        with self.lock:
            created = name not in self.collections
            if created:
                self.create_collection(name, config)
            col = self.collections[name]
            if col["shard_number"] != int(config["shard_number"]):
                raise _bad(f"Snapshot has {config['shard_number']} shards, collection `{name}` has {col['shard_number']}")
            for sid_text, points in shards.items():
                sh = col["shards"][int(sid_text)]
                others_active = any(s == "Active" for p, s in sh["replicas"].items() if p != peer.peer_id)
                if priority == "replica" and others_active and not created:
                    continue  # Qdrant re-syncs this replica from the healthy one
                sh["points"] = {_point_key(p["id"]): p for p in points}
                if peer.peer_id in sh["replicas"]:
                    sh["replicas"][peer.peer_id] = "Active"
            self._changed()

    def delete_snapshot(self, peer: Peer, name: str, snap: str) -> None:
        self.snapshot_path(peer, name, snap).unlink()

    # -- telemetry ------------------------------------------------------------------------

    def record(self, peer: Peer, method: str, pattern: str, status: int, seconds: float) -> None:
        with self.lock:
            st = self.stats[peer.peer_id].setdefault((method, pattern, status), Stat(bucket_counts=[0] * len(HISTOGRAM_BUCKETS)))
            us = seconds * 1e6
            st.count += 1
            if status >= 400:
                st.fail_count += 1
            st.total_us += us
            st.min_us = min(st.min_us, us)
            st.max_us = max(st.max_us, us)
            st.recent = (st.recent + [us])[-128:]
            st.last = _now_iso()
            for i, b in enumerate(HISTOGRAM_BUCKETS):
                if seconds <= b:
                    st.bucket_counts[i] += 1

    # -- persistence ----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            cols = {}
            for name, col in self.collections.items():
                c = dict(col)
                c["shards"] = {str(s): {"replicas": {str(p): st for p, st in sh["replicas"].items()},
                                        "points": list(sh["points"].values())} for s, sh in col["shards"].items()}
                cols[name] = c
            return {"format": STATE_FORMAT, "peers": [{"peer_id": p.peer_id} for p in self.peers],
                    "collections": cols, "aliases": self.aliases, "term": self.term, "commit": self.commit,
                    "op_id": self.op_id, "transfer_seconds": self.transfer_seconds}

    def load_json(self, doc: dict[str, Any]) -> None:
        with self.lock:
            if doc.get("format") != STATE_FORMAT or len(doc.get("peers", [])) != len(self.peers):
                raise ValueError("the state file is not a fake Qdrant state of this many nodes")
            for p, saved in zip(self.peers, doc["peers"]):
                old = p.peer_id
                p.peer_id = int(saved["peer_id"])  # injected faults (latency, node-down) do not survive a restart
                self.stats[p.peer_id] = self.stats.pop(old, {})
            for name, c in doc["collections"].items():
                c["shards"] = {int(s): {"replicas": {int(p): st for p, st in sh["replicas"].items()},
                                        "points": {_point_key(p["id"]): p for p in sh["points"]}}
                               for s, sh in c["shards"].items()}
                self.collections[name] = c
                self.transfers[name] = []  # a transfer does not survive a restart (it finished)
            self.aliases = dict(doc.get("aliases", {}))
            self.term = int(doc.get("term", self.term)) + 1  # a restart is a new election
            self.commit = int(doc.get("commit", self.commit))
            self.op_id = int(doc.get("op_id", 0))
            self.transfer_seconds = float(doc.get("transfer_seconds", self.transfer_seconds))


def _score(distance: str, a: list[float], b: list[float]) -> float:
    if distance == "Dot":
        return sum(x * y for x, y in zip(a, b))
    if distance == "Euclid":
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))
    if distance == "Manhattan":
        return sum(abs(x - y) for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a)) or 1.0
    nb = math.sqrt(sum(y * y for y in b)) or 1.0
    return sum(x * y for x, y in zip(a, b)) / (na * nb)


# ---------------------------------------------------------------------------------------------
# HTTP: routes and the request handler

# (method, regex, Qdrant's route pattern (telemetry and metrics use it), handler name, needs write access)
_ROUTES: list[tuple[str, re.Pattern[str], str, str, bool]] = []


def _route(method: str, pattern: str, handler: str, write: bool = False) -> None:
    regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$"
    _ROUTES.append((method, re.compile(regex), pattern, handler, write))


_route("GET", "/", "h_root")
_route("GET", "/healthz", "h_health")
_route("GET", "/livez", "h_health")
_route("GET", "/readyz", "h_health")
_route("GET", "/cluster", "h_cluster")
_route("GET", "/telemetry", "h_telemetry")
_route("GET", "/metrics", "h_metrics")
_route("GET", "/collections", "h_collections")
_route("GET", "/aliases", "h_aliases")
_route("POST", "/collections/aliases", "h_update_aliases", write=True)
_route("GET", "/collections/{name}", "h_collection")
_route("PUT", "/collections/{name}", "h_create_collection", write=True)
_route("DELETE", "/collections/{name}", "h_delete_collection", write=True)
_route("GET", "/collections/{name}/aliases", "h_collection_aliases")
_route("GET", "/collections/{name}/cluster", "h_collection_cluster")
_route("POST", "/collections/{name}/cluster", "h_update_collection_cluster", write=True)
_route("PUT", "/collections/{name}/points", "h_upsert", write=True)
_route("POST", "/collections/{name}/points/count", "h_count")
_route("POST", "/collections/{name}/points/scroll", "h_scroll")
_route("POST", "/collections/{name}/points/query", "h_query")
_route("PUT", "/collections/{name}/snapshots/recover", "h_recover", write=True)
_route("GET", "/collections/{name}/snapshots", "h_list_snapshots")
_route("POST", "/collections/{name}/snapshots", "h_create_snapshot", write=True)
_route("GET", "/collections/{name}/snapshots/{snapshot_name}", "h_get_snapshot")
_route("DELETE", "/collections/{name}/snapshots/{snapshot_name}", "h_delete_snapshot", write=True)

_PUBLIC = ("/", "/healthz", "/livez", "/readyz")


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, addr: tuple[str, int], cluster: FakeQdrantCluster, peer: Peer):
        self.cluster = cluster
        self.peer = peer
        super().__init__(addr, _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "qdrant-fake"

    def log_message(self, format: str, *args: Any) -> None:  # `format`: the stdlib's signature
        """Quiet: the sandbox's log gets errors only (see log_error)."""

    def log_error(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"fake-qdrant {self.server.peer.name}: {format % args}\n")

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        cluster, peer = self.server.cluster, self.server.peer
        started = time.monotonic()
        split = urllib.parse.urlsplit(self.path)
        path, query = split.path or "/", split.query
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if path.startswith("/__fake__/"):
            self._send(cluster.control(peer, method, path, body))
            return
        if peer.down == "refuse":
            # A keep-alive connection opened before node-down: a dead server answers nothing.
            self.close_connection = True
            return
        if peer.down == "hang":
            cluster.wait_up(peer)
        if peer.latency_ms:
            time.sleep(peer.latency_ms / 1000.0)
        cluster.state.advance()
        pattern = path
        try:
            route = None
            for m, regex, pat, handler, write in _ROUTES:
                found = regex.match(path)
                if found and m == method:
                    route = (found, pat, handler, write)
                    break
            if route is None:
                raise ApiError(404, f"Not found: no route {method} {path} (the fake implements only what dbops calls)")
            found, pattern, handler, write = route
            cluster.authorize(self.headers, path, write)
            params = dict(urllib.parse.parse_qsl(query))
            payload = None
            if method in ("POST", "PUT") and handler not in ("h_create_snapshot",):
                try:
                    payload = json.loads(body or b"{}")
                except ValueError as exc:
                    raise ApiError(400, f"Json deserialize error: {exc}") from None
                if not isinstance(payload, dict):
                    raise ApiError(400, "Json deserialize error: expected a JSON object")
            args = {k: urllib.parse.unquote(v) for k, v in found.groupdict().items()}
            result = getattr(cluster, handler)(peer, params=params, body=payload, **args)
            if isinstance(result, Reply):
                reply = result
            else:
                reply = Reply(200, json.dumps({"result": result, "status": "ok", "time": time.monotonic() - started}).encode())
        except ApiError as exc:
            reply = Reply(exc.status, json.dumps({"status": {"error": exc.message}, "time": time.monotonic() - started}).encode())
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # A malformed request the spec may allow but the fake cannot use: Qdrant answers 400/422.
            reply = Reply(400, json.dumps({"status": {"error": f"Format error in JSON body: {type(exc).__name__}: {exc}"},
                                           "time": time.monotonic() - started}).encode())
        cluster.state.record(peer, method, pattern, reply.status, time.monotonic() - started)
        cluster.validate(peer, method, path, query, dict(self.headers.items()), body, reply)
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout in a test of a slow node): nothing to answer to


# ---------------------------------------------------------------------------------------------
# The cluster: servers, auth, handlers, control


class FakeQdrantCluster:
    """A FAKE Qdrant cluster of ``len(ports)`` nodes on 127.0.0.1 (see the module docstring)."""

    def __init__(self, ports: list[int], api_key: str | None = None, read_only_api_key: str | None = None,
                 spec_path: str | os.PathLike[str] | None = None, *, transfer_seconds: float = DEFAULT_TRANSFER_SECONDS,
                 peer_ids: list[int] | None = None, state_file: str | os.PathLike[str] | None = None,
                 snapshot_dir: str | os.PathLike[str] | None = None, host: str = HOST, auto_recover: bool = False):
        if not ports:
            raise ValueError("a fake Qdrant cluster needs at least one port")
        rng = random.Random()
        ids = list(peer_ids) if peer_ids else [rng.randrange(10**12, 10**16) for _ in ports]
        self.host = host
        self.api_key = api_key or None
        self.read_only_api_key = read_only_api_key or None
        self.state_file = Path(state_file) if state_file else None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if snapshot_dir is not None:
            snap_dir = Path(snapshot_dir)
        elif self.state_file is not None:
            snap_dir = self.state_file.parent / "snapshots"
        else:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="fake-qdrant-")
            snap_dir = Path(self._tmpdir.name)
        self.state = ClusterState([Peer(i, ids[i], port) for i, port in enumerate(ports)], transfer_seconds, snap_dir,
                                  auto_recover)
        if self.state_file is not None and self.state_file.exists():
            self.state.load_json(json.loads(self.state_file.read_text(encoding="utf-8")))
        if self.state_file is not None:
            self.state.on_change = self.save
        self.validator = SpecValidator(spec_path) if spec_path else None
        self._violations: list[str] = []
        self._vlock = threading.Lock()
        self._servers: dict[int, tuple[_Server, threading.Thread]] = {}
        self._up_events: dict[int, threading.Event] = {}

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def peers(self) -> list[Peer]:
        return self.state.peers

    @property
    def peer_ids(self) -> list[int]:
        return [p.peer_id for p in self.peers]

    @property
    def urls(self) -> list[str]:
        return [f"http://{self.host}:{p.port}" for p in self.peers]

    @property
    def violations(self) -> list[str]:
        with self._vlock:
            return list(self._violations)

    def take_violations(self) -> list[str]:
        """The violations recorded so far, forgetting them (a test that provokes one on purpose)."""
        with self._vlock:
            taken, self._violations = self._violations, []
            return taken

    def start(self) -> FakeQdrantCluster:
        for p in self.peers:
            if p.down != "refuse":
                self._serve(p)
        return self

    def _serve(self, peer: Peer) -> None:
        server = _Server((self.host, peer.port), self, peer)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                  name=f"fake-qdrant-{peer.name}", daemon=True)
        thread.start()
        self._servers[peer.peer_id] = (server, thread)

    def _unserve(self, peer: Peer) -> None:
        entry = self._servers.pop(peer.peer_id, None)
        if entry is None:
            return
        server, thread = entry
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    def stop(self) -> None:
        for p in self.peers:
            if p.down == "hang":
                self.node_up(p.peer_id)
        for p in self.peers:
            self._unserve(p)
        if self.state_file is not None:
            self.save()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> FakeQdrantCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def save(self) -> None:
        """Write the state file atomically (0600: it is only state, but it sits beside keys)."""
        if self.state_file is None:
            return
        doc = self.state.to_json()
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
        os.replace(tmp, self.state_file)

    # -- test and sandbox helpers -----------------------------------------------------------

    @property
    def transfer_seconds(self) -> float:
        return self.state.transfer_seconds

    @transfer_seconds.setter
    def transfer_seconds(self, seconds: float) -> None:
        self.state.transfer_seconds = float(seconds)

    def create_collection(self, name: str, *, size: int = 4, distance: str = "Cosine", shard_number: int | None = None,
                          replication_factor: int = 1) -> None:
        self.state.create_collection(name, {"vectors": {"size": size, "distance": distance},
                                            "shard_number": shard_number, "replication_factor": replication_factor})

    def upsert_points(self, name: str, points: list[dict[str, Any]]) -> None:
        self.state.upsert(name, {"points": points})

    def create_alias(self, alias: str, collection: str) -> None:
        self.state.alias_ops([{"create_alias": {"alias_name": alias, "collection_name": collection}}])

    def seed_demo(self) -> None:
        """The demo data: "docs" (3 shards x 2 replicas, 300 points, 8-d vectors, alias "docs-live")
        and "images" (1 shard, 3 replicas, 120 points, 4-d vectors)."""
        rng = random.Random(6)
        topics = ("billing", "search", "onboarding", "security", "api")
        self.create_collection("docs", size=8, distance="Cosine", shard_number=min(3, max(1, len(self.peers))),
                               replication_factor=min(2, len(self.peers)))
        self.upsert_points("docs", [{"id": i, "vector": [round(rng.uniform(-1, 1), 4) for _ in range(8)],
                                     "payload": {"title": f"doc {i}", "topic": topics[i % len(topics)]}}
                                    for i in range(1, 301)])
        self.create_alias("docs-live", "docs")
        self.create_collection("images", size=4, distance="Dot", shard_number=1, replication_factor=len(self.peers))
        self.upsert_points("images", [{"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                                       "vector": [round(rng.uniform(0, 1), 4) for _ in range(4)],
                                       "payload": {"camera": ("a", "b", "c")[i % 3]}} for i in range(120)])

    def set_replica_state(self, collection: str, shard_id: int, peer_id: Any, state: str) -> None:
        if state not in REPLICA_STATES:
            raise ValueError(f"unknown replica state {state!r}; one of {', '.join(REPLICA_STATES)}")
        with self.state.lock:
            name = self.state.resolve(collection)
            shards = self.state.collections[name]["shards"]
            if int(shard_id) not in shards:
                raise ValueError(f"collection {name} has no shard {shard_id}")
            peer = self.state.peer(peer_id)
            replicas = shards[int(shard_id)]["replicas"]
            if peer.peer_id not in replicas:
                raise ValueError(f"shard {shard_id} of {name} has no replica on peer {peer.peer_id} ({peer.name})")
            replicas[peer.peer_id] = state
            self.state._changed()

    def set_latency(self, peer_id: Any, ms: float) -> None:
        self.state.peer(peer_id).latency_ms = float(ms)
        self.state._changed()

    def complete_transfers(self) -> int:
        return self.state.complete_transfers()

    def node_down(self, peer_id: Any, mode: str = "refuse") -> None:
        """refuse: close the node's port; hang: accept and answer nothing until node_up."""
        if mode not in ("refuse", "hang"):
            raise ValueError("mode is refuse or hang")
        peer = self.state.peer(peer_id)
        if peer.down == mode:
            return
        if peer.down:
            self.node_up(peer.peer_id)
        if mode == "hang":
            self._up_events[peer.peer_id] = threading.Event()
            peer.down = "hang"
        else:
            peer.down = "refuse"
            # Shut the server down from another thread: node-down may be asked of this very node.
            threading.Thread(target=self._unserve, args=(peer,), daemon=True).start()

    def node_up(self, peer_id: Any) -> None:
        peer = self.state.peer(peer_id)
        was, peer.down = peer.down, None
        if was == "hang":
            self._up_events.pop(peer.peer_id, threading.Event()).set()
        elif was == "refuse":
            deadline = time.monotonic() + 5
            while peer.peer_id in self._servers and time.monotonic() < deadline:
                time.sleep(0.02)  # the shutdown thread is still closing the old socket
            self._serve(peer)

    def wait_up(self, peer: Peer) -> None:
        event = self._up_events.get(peer.peer_id)
        if event is not None:
            event.wait(HANG_LIMIT)

    # -- auth, validation, control -----------------------------------------------------------

    def authorize(self, headers: Any, path: str, write: bool) -> None:
        if not (self.api_key or self.read_only_api_key) or path in _PUBLIC:
            return
        key = headers.get("api-key")
        if key is None:
            auth = headers.get("Authorization") or ""
            key = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        if not key:
            raise ApiError(401, "Unauthorized: Must provide an API key or an Authorization bearer token")
        if self.api_key and key == self.api_key:
            return
        if self.read_only_api_key and key == self.read_only_api_key:
            if write:
                raise ApiError(403, "Forbidden: Write access is required")
            return
        raise ApiError(401, "Unauthorized: Invalid API key or JWT")

    def validate(self, peer: Peer, method: str, path: str, query: str, headers: dict[str, str], body: bytes,
                 reply: Reply) -> None:
        if self.validator is None:
            return
        problems = self.validator.check(method, path, query, headers, body, reply.status, reply.body, reply.content_type)
        if problems:
            with self._vlock:
                self._violations.extend(self._scrub(f"{peer.name} {method} {path} -> {reply.status}: {p}") for p in problems)

    def _scrub(self, text: str) -> str:
        """No key and no presigned URL's signature in a violation (they reach logs and test output)."""
        for key in (self.api_key, self.read_only_api_key):
            if key:
                text = text.replace(key, "***")
        return re.sub(r"(?i)((?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature)=)[^&'\" ]+", r"\1***", text)

    def control(self, peer: Peer, method: str, path: str, body: bytes) -> Reply:
        def ok(result: Any) -> Reply:
            return Reply(200, json.dumps(result).encode())

        try:
            args = json.loads(body or b"{}")
            what = path[len("/__fake__/"):]
            if method == "GET" and what == "violations":
                return ok({"violations": self.violations})
            if method == "GET" and what == "state":
                return ok(self.describe())
            if method != "POST":
                raise ValueError(f"unknown control {method} {path}")
            if what == "replica-state":
                self.set_replica_state(args["collection"], int(args["shard_id"]), _peer_ref(args["peer_id"]), args["state"])
            elif what == "latency":
                self.set_latency(_peer_ref(args.get("peer_id", peer.peer_id)), float(args["ms"]))
            elif what == "node-down":
                self.node_down(_peer_ref(args.get("peer_id", peer.peer_id)), args.get("mode", "refuse"))
            elif what == "node-up":
                self.node_up(_peer_ref(args["peer_id"]))
            elif what == "transfers":
                if "seconds" in args:
                    self.transfer_seconds = float(args["seconds"])
                if args.get("complete"):
                    self.complete_transfers()
            else:
                raise ValueError(f"unknown control {method} {path}")
            return ok({"ok": True})
        except ApiError as exc:
            return Reply(exc.status, json.dumps({"error": exc.message}).encode())
        except KeyError as exc:
            return Reply(400, json.dumps({"error": f"missing field {exc}"}).encode())
        except (ValueError, TypeError) as exc:
            return Reply(400, json.dumps({"error": str(exc)}).encode())

    def describe(self) -> dict[str, Any]:
        with self.state.lock:
            return {
                "peers": [{"name": p.name, "peer_id": p.peer_id, "url": f"http://{self.host}:{p.port}", "down": p.down,
                           "latency_ms": p.latency_ms} for p in self.peers],
                "collections": {name: {"status": self.state.status_of(name), "points": self.state.points_count(name),
                                       "shards": {str(s): {str(pid): st for pid, st in sh["replicas"].items()}
                                                  for s, sh in col["shards"].items()}}
                                for name, col in self.state.collections.items()},
                "transfers": {name: [t.info() for t in ts] for name, ts in self.state.transfers.items() if ts},
                "aliases": dict(self.state.aliases),
                "transfer_seconds": self.state.transfer_seconds,
            }

    # -- endpoint handlers (called by _Handler with the node asked) ----------------------------

    def h_root(self, peer: Peer, **_: Any) -> Reply:
        return Reply(200, json.dumps({"title": "qdrant - vector search engine", "version": QDRANT_VERSION,
                                      "commit": QDRANT_COMMIT}).encode())

    def h_health(self, peer: Peer, **_: Any) -> Reply:
        return Reply(200, b"healthz check passed", "text/plain; charset=utf-8")

    def _raft(self, peer: Peer) -> dict[str, Any]:
        leader = self.state.leader
        return {"term": self.state.term, "commit": self.state.commit, "pending_operations": 0,
                "leader": leader.peer_id, "role": "Leader" if peer is leader else "Follower", "is_voter": True}

    def h_cluster(self, peer: Peer, **_: Any) -> dict[str, Any]:
        with self.state.lock:
            failures = {}
            for other in self.peers:
                if other is not peer and other.down:
                    failures[other.uri] = {"count": 3, "latest_error": f"Failed to send message to {other.uri}: transport error",
                                           "latest_error_timestamp": _now_iso()}
            return {"status": "enabled", "peer_id": peer.peer_id,
                    "peers": {str(p.peer_id): {"uri": p.uri} for p in self.peers},
                    "raft_info": self._raft(peer),
                    "consensus_thread_status": {"consensus_thread_status": "working", "last_update": _now_iso()},
                    "message_send_failures": failures}

    def h_telemetry(self, peer: Peer, params: dict[str, str], **_: Any) -> dict[str, Any]:
        with self.state.lock:
            responses: dict[str, dict[str, Any]] = {}
            for (method, pattern, status), st in sorted(self.state.stats[peer.peer_id].items()):
                avg = sum(st.recent) / len(st.recent) if st.recent else 0.0
                responses.setdefault(f"{method} {pattern}", {})[str(status)] = {
                    "count": st.count, "fail_count": st.fail_count, "avg_duration_micros": avg,
                    "min_duration_micros": st.min_us, "max_duration_micros": st.max_us,
                    "total_duration_micros": int(st.total_us), "last_responded": st.last}
            raft = self._raft(peer)
            return {
                "id": self.state.telemetry_id,
                "app": {"name": "qdrant", "version": QDRANT_VERSION, "startup": self.state.started},
                "collections": {"number_of_collections": len(self.state.collections)},
                "cluster": {"enabled": True, "status": {
                    "number_of_peers": len(self.peers), "term": raft["term"], "commit": raft["commit"],
                    "pending_operations": 0, "role": raft["role"], "is_voter": True, "peer_id": peer.peer_id,
                    "consensus_thread_status": {"consensus_thread_status": "working", "last_update": _now_iso()}}},
                "requests": {"rest": {"responses": responses}, "grpc": {"responses": {}}},
            }

    def h_metrics(self, peer: Peer, **_: Any) -> Reply:
        """Prometheus text in the names Qdrant 1.19 exports (a subset)."""
        with self.state.lock:
            raft = self._raft(peer)
            lines = [
                "# HELP app_info information about qdrant server", "# TYPE app_info counter",
                f'app_info{{name="qdrant",version="{QDRANT_VERSION}"}} 1',
                "# HELP collections_total number of collections", "# TYPE collections_total gauge",
                f"collections_total {len(self.state.collections)}",
                "# HELP collections_vector_total total number of vectors in all collections", "# TYPE collections_vector_total gauge",
                f"collections_vector_total {sum(self.state.points_count(c) for c in self.state.collections)}",
                "# HELP cluster_enabled is cluster support enabled", "# TYPE cluster_enabled counter", "cluster_enabled 1",
                "# HELP cluster_peers_total total number of cluster peers", "# TYPE cluster_peers_total gauge",
                f"cluster_peers_total {len(self.peers)}",
                "# HELP cluster_term current cluster term", "# TYPE cluster_term counter", f"cluster_term {raft['term']}",
                "# HELP cluster_commit index of last committed (finalized) operation cluster peer is aware of",
                "# TYPE cluster_commit counter", f'cluster_commit{{peer_id="{peer.peer_id}"}} {raft["commit"]}',
                "# HELP cluster_pending_operations_total total number of pending operations for cluster peer",
                "# TYPE cluster_pending_operations_total gauge", "cluster_pending_operations_total 0",
                "# HELP cluster_voter is cluster peer a voter or learner", "# TYPE cluster_voter gauge", "cluster_voter 1",
            ]
            stats = sorted(self.state.stats[peer.peer_id].items())
            series = (
                ("rest_responses_total", "counter", "total number of responses", lambda s: s.count),
                ("rest_responses_fail_total", "counter", "total number of failed responses", lambda s: s.fail_count),
                ("rest_responses_avg_duration_seconds", "gauge", "average response duration",
                 lambda s: (sum(s.recent) / len(s.recent) / 1e6) if s.recent else 0.0),
                ("rest_responses_min_duration_seconds", "gauge", "minimum response duration", lambda s: s.min_us / 1e6),
                ("rest_responses_max_duration_seconds", "gauge", "maximum response duration", lambda s: s.max_us / 1e6),
            )
            for metric, kind, help_text, value in series:
                # As Qdrant: durations only of the 200 responses (counts of every status).
                rows = [(k, st) for k, st in stats if kind == "counter" or k[2] == 200]
                if not rows:
                    continue
                lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
                for (method, pattern, status), st in rows:
                    lines.append(f'{metric}{{method="{method}",endpoint="{pattern}",status="{status}"}} {value(st):.6f}')
            lines += ["# HELP rest_responses_duration_seconds response duration histogram",
                      "# TYPE rest_responses_duration_seconds histogram"]
            for (method, pattern, status), st in stats:
                labels = f'method="{method}",endpoint="{pattern}",status="{status}"'
                for b, n in zip(HISTOGRAM_BUCKETS, st.bucket_counts):
                    lines.append(f'rest_responses_duration_seconds_bucket{{{labels},le="{b}"}} {n}')
                lines.append(f'rest_responses_duration_seconds_bucket{{{labels},le="+Inf"}} {st.count}')
                lines.append(f"rest_responses_duration_seconds_sum{{{labels}}} {st.total_us / 1e6:.6f}")
                lines.append(f"rest_responses_duration_seconds_count{{{labels}}} {st.count}")
            return Reply(200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")

    def h_collections(self, peer: Peer, **_: Any) -> dict[str, Any]:
        with self.state.lock:
            return {"collections": [{"name": n} for n in sorted(self.state.collections)]}

    def h_aliases(self, peer: Peer, **_: Any) -> dict[str, Any]:
        with self.state.lock:
            return {"aliases": [{"alias_name": a, "collection_name": c} for a, c in sorted(self.state.aliases.items())]}

    def h_collection_aliases(self, peer: Peer, name: str, **_: Any) -> dict[str, Any]:
        with self.state.lock:
            name = self.state.resolve(name)
            return {"aliases": [{"alias_name": a, "collection_name": c} for a, c in sorted(self.state.aliases.items()) if c == name]}

    def h_update_aliases(self, peer: Peer, body: dict[str, Any], **_: Any) -> bool:
        self.state.alias_ops(list(body.get("actions") or []))
        return True

    def h_collection(self, peer: Peer, name: str, **_: Any) -> dict[str, Any]:
        with self.state.lock:
            name = self.state.resolve(name)
            col = self.state.collections[name]
            local = sum(1 for sh in col["shards"].values() if peer.peer_id in sh["replicas"])
            count = self.state.points_count(name)
            return {
                "status": self.state.status_of(name),
                "optimizer_status": "ok",
                "indexed_vectors_count": 0 if count < 10000 else count,  # below indexing_threshold: no HNSW index yet
                "points_count": count,
                "segments_count": 2 * local,
                "config": {
                    "params": {"vectors": col["vectors"], "shard_number": col["shard_number"], "sharding_method": "auto",
                               "replication_factor": col["replication_factor"],
                               "write_consistency_factor": col["write_consistency_factor"],
                               "on_disk_payload": col["on_disk_payload"]},
                    "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000, "max_indexing_threads": 0,
                                    "on_disk": False},
                    "optimizer_config": {"deleted_threshold": 0.2, "vacuum_min_vector_number": 1000, "default_segment_number": 0,
                                         "max_segment_size": None, "memmap_threshold": None, "indexing_threshold": 10000,
                                         "flush_interval_sec": 5, "max_optimization_threads": None},
                    "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
                    "quantization_config": None,
                },
                "payload_schema": {},
            }

    def h_create_collection(self, peer: Peer, name: str, body: dict[str, Any], **_: Any) -> bool:
        self.state.create_collection(name, body)
        return True

    def h_delete_collection(self, peer: Peer, name: str, **_: Any) -> bool:
        return self.state.delete_collection(name)

    def h_collection_cluster(self, peer: Peer, name: str, **_: Any) -> dict[str, Any]:
        with self.state.lock:
            name = self.state.resolve(name)
            col = self.state.collections[name]
            local, remote = [], []
            for sid, sh in sorted(col["shards"].items()):
                for pid, st in sh["replicas"].items():
                    if pid == peer.peer_id:
                        local.append({"shard_id": sid, "points_count": len(sh["points"]), "state": st})
                    else:
                        remote.append({"shard_id": sid, "peer_id": pid, "state": st})
            return {"peer_id": peer.peer_id, "shard_count": col["shard_number"], "local_shards": local,
                    "remote_shards": remote, "shard_transfers": [t.info() for t in self.state.transfers[name]]}

    def h_update_collection_cluster(self, peer: Peer, name: str, body: dict[str, Any], **_: Any) -> bool:
        self.state.cluster_op(name, body)
        return True

    def h_upsert(self, peer: Peer, name: str, body: dict[str, Any], params: dict[str, str], **_: Any) -> dict[str, Any]:
        op = self.state.upsert(name, body)
        wait = params.get("wait", "false").lower() == "true"
        return {"operation_id": op, "status": "completed" if wait else "acknowledged"}

    def h_count(self, peer: Peer, name: str, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        return {"count": self.state.count(name, body)}

    def h_scroll(self, peer: Peer, name: str, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        return self.state.scroll(name, body)

    def h_query(self, peer: Peer, name: str, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        return {"points": self.state.query(name, body)}

    def h_create_snapshot(self, peer: Peer, name: str, **_: Any) -> dict[str, Any]:
        return self.state.create_snapshot(peer, name)

    def h_list_snapshots(self, peer: Peer, name: str, **_: Any) -> list[dict[str, Any]]:
        return self.state.list_snapshots(peer, name)

    def h_get_snapshot(self, peer: Peer, name: str, snapshot_name: str, **_: Any) -> Reply:
        return Reply(200, self.state.snapshot_path(peer, name, snapshot_name).read_bytes(), "application/octet-stream")

    def h_delete_snapshot(self, peer: Peer, name: str, snapshot_name: str, **_: Any) -> bool:
        self.state.delete_snapshot(peer, name, snapshot_name)
        return True

    def h_recover(self, peer: Peer, name: str, body: dict[str, Any], **_: Any) -> bool:
        if not isinstance(body.get("location"), str) or not body["location"]:
            raise ApiError(400, "Json deserialize error: missing field `location`")
        if body.get("priority") not in (None, "replica", "snapshot", "no_sync"):
            raise ApiError(400, f"Json deserialize error: unknown variant `{body['priority']}`, "
                                "expected one of `no_sync`, `snapshot`, `replica`")
        if body.get("checksum") is not None and not isinstance(body["checksum"], str):
            raise ApiError(400, "Json deserialize error: invalid type for `checksum`, expected a string")
        self.state.recover(peer, name, body)
        return True


def _peer_ref(ref: Any) -> Any:
    """A peer reference from JSON or the command line: an int id or a node name ("q2")."""
    if isinstance(ref, str) and ref.isdigit():
        return int(ref)
    return ref


# ---------------------------------------------------------------------------------------------
# Command line (the sandbox runs this)


def _read_key(path: str | None) -> str | None:
    if not path:
        return None
    return Path(path).read_text(encoding="utf-8").strip() or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dbops.sandbox.fake_qdrant",
                                 description="A FAKE Qdrant cluster for dbops' tests and sandbox (not Qdrant).")
    ap.add_argument("--ports", required=True, help="comma-separated REST ports, one node each")
    ap.add_argument("--api-key-file")
    ap.add_argument("--read-only-api-key-file")
    ap.add_argument("--spec", help="validate every request and response against this OpenAPI spec")
    ap.add_argument("--state-file", help="keep the cluster state here (loaded at start, rewritten on change)")
    ap.add_argument("--seed-demo", action="store_true", help="create the demo collections when the state is empty")
    ap.add_argument("--transfer-seconds", type=float, default=DEFAULT_TRANSFER_SECONDS)
    ap.add_argument("--auto-recover", action="store_true",
                    help="recover Dead replicas on nodes that are up by themselves, as Qdrant does")
    args = ap.parse_args(argv)
    try:
        ports = [int(p) for p in args.ports.split(",") if p.strip()]
        cluster = FakeQdrantCluster(ports, _read_key(args.api_key_file), _read_key(args.read_only_api_key_file), args.spec,
                                    transfer_seconds=args.transfer_seconds, state_file=args.state_file,
                                    auto_recover=args.auto_recover)
        if args.seed_demo and not cluster.state.collections:
            cluster.seed_demo()
        cluster.start()
    except (OSError, ValueError) as exc:
        print(f"fake-qdrant: cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"fake-qdrant: {len(ports)} nodes up on {', '.join(cluster.urls)}; peer ids {cluster.peer_ids}", flush=True)
    while not stop.wait(0.25):
        cluster.state.advance()  # finish transfers even when nobody asks
    cluster.stop()
    problems = cluster.violations
    if problems:
        print(f"fake-qdrant: {len(problems)} spec violations:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
    print("fake-qdrant: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
