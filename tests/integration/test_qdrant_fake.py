"""The fake Qdrant (dbops.sandbox.fake_qdrant) against Qdrant 1.19's OpenAPI spec, driven over
real HTTP by qdrant-client and plain requests. Every exchange below is validated (the fixture
fails the test on any violation), and the validation itself is shown able to fail."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient

from dbops.sandbox import free_ports
from dbops.sandbox.fake_qdrant import FakeQdrantCluster, SpecValidator
from tests.fakes.qdrant import API_KEY, READ_ONLY_API_KEY, SPEC_PATH, fake_qdrant

pytestmark = pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")


def call(url: str, method: str, path: str, body: Any = None, key: str | None = API_KEY, timeout: float = 10) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one request."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["api-key"] = key
    req = urllib.request.Request(url + path, method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, raw, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    if "json" in ctype:
        return status, json.loads(raw)
    if "octet-stream" in ctype:
        return status, raw
    return status, raw.decode()


@pytest.fixture
def qdrant_cluster() -> Iterator[FakeQdrantCluster]:
    """3 nodes, demo data, validation on: any exchange outside the spec fails the test."""
    with fake_qdrant() as cluster:
        yield cluster


@pytest.fixture
def client(qdrant_cluster: FakeQdrantCluster) -> Iterator[QdrantClient]:
    c = QdrantClient(url=qdrant_cluster.urls[0], api_key=API_KEY, timeout=10)
    yield c
    c.close()


def test_qdrant_client_reads_the_demo_cluster(qdrant_cluster: FakeQdrantCluster, client: QdrantClient) -> None:
    assert {c.name for c in client.get_collections().collections} == {"docs", "images"}
    info = client.get_collection("docs-live")  # an alias reads its collection
    assert (info.status.value, info.points_count, info.config.params.shard_number, info.config.params.replication_factor) == \
        ("green", 300, 3, 2)
    assert client.count("docs", exact=True).count == 300
    page, next_offset = client.scroll("docs", limit=5, with_payload=True)
    assert [p.id for p in page] == [1, 2, 3, 4, 5] and next_offset == 6 and page[0].payload["title"] == "doc 1"
    hits = client.query_points("images", query=[1.0, 1.0, 1.0, 1.0], limit=3, with_payload=True).points
    assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score
    assert [(a.alias_name, a.collection_name) for a in client.get_aliases().aliases] == [("docs-live", "docs")]
    client.upsert("docs", points=[{"id": 5000, "vector": [0.5] * 8, "payload": {"title": "new"}}], wait=True)
    assert client.count("docs", exact=True).count == 301


def test_each_node_sees_the_cluster_from_its_own_side(qdrant_cluster: FakeQdrantCluster) -> None:
    ids = qdrant_cluster.peer_ids
    seen_shards = []
    for i, url in enumerate(qdrant_cluster.urls):
        status, body = call(url, "GET", "/cluster")
        cl = body["result"]
        assert status == 200 and cl["peer_id"] == ids[i] and set(cl["peers"]) == {str(p) for p in ids}
        assert cl["raft_info"]["leader"] == ids[0] and cl["raft_info"]["role"] == ("Leader" if i == 0 else "Follower")
        _, body = call(url, "GET", "/collections/docs/cluster")
        info = body["result"]
        assert info["peer_id"] == ids[i] and info["shard_count"] == 3 and info["shard_transfers"] == []
        assert all(r["peer_id"] != ids[i] for r in info["remote_shards"])
        seen_shards.append(sorted(s["shard_id"] for s in info["local_shards"]))
        assert sum(s["points_count"] for s in info["local_shards"]) > 0
    # 3 shards x 2 replicas over 3 nodes: every node holds two shards, every shard is on two nodes
    assert seen_shards == [[0, 2], [0, 1], [1, 2]]


def test_api_keys_read_only_and_public_paths(qdrant_cluster: FakeQdrantCluster) -> None:
    url = qdrant_cluster.urls[1]
    assert call(url, "GET", "/collections", key=None)[0] == 401
    status, body = call(url, "GET", "/collections", key="wrong")
    assert status == 401 and "Invalid API key" in body["status"]["error"]
    assert call(url, "GET", "/collections", key=READ_ONLY_API_KEY)[0] == 200
    assert call(url, "POST", "/collections/docs/points/count", {"exact": True}, key=READ_ONLY_API_KEY)[1]["result"]["count"] == 300
    status, body = call(url, "DELETE", "/collections/docs", key=READ_ONLY_API_KEY)
    assert status == 403 and body["status"]["error"].startswith("Forbidden")
    assert call(url, "GET", "/collections/docs")[0] == 200  # still there
    assert call(url, "GET", "/readyz", key=None) == (200, "healthz check passed")
    status, body = call(url, "GET", "/", key=None)
    assert status == 200 and body["version"] == "1.19.0"
    # Bearer works as well as api-key
    req = urllib.request.Request(url + "/collections", headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def test_dead_replica_then_replicate_recovers_it(qdrant_cluster: FakeQdrantCluster) -> None:
    url, ids = qdrant_cluster.urls[0], qdrant_cluster.peer_ids
    qdrant_cluster.transfer_seconds = 3600  # the test ends the transfer itself
    # Shard 1 lives on nodes 2 and 3; node 3's replica dies (through the HTTP control, by node name).
    assert call(url, "POST", "/__fake__/replica-state", {"collection": "docs", "shard_id": 1, "peer_id": "q3", "state": "Dead"})[0] == 200
    assert call(url, "GET", "/collections/docs")[1]["result"]["status"] == "yellow"
    remote = call(url, "GET", "/collections/docs/cluster")[1]["result"]["remote_shards"]
    assert {"shard_id": 1, "peer_id": ids[2], "state": "Dead"} in remote
    # From a peer without an Active replica: refused as Qdrant does
    status, body = call(url, "POST", "/collections/docs/cluster",
                        {"replicate_shard": {"shard_id": 1, "from_peer_id": ids[2], "to_peer_id": ids[0]}})
    assert status == 400 and "not active" in body["status"]["error"]
    status, body = call(url, "POST", "/collections/docs/cluster",
                        {"replicate_shard": {"shard_id": 1, "from_peer_id": ids[1], "to_peer_id": ids[2]}})
    assert (status, body["result"]) == (200, True)
    info = call(qdrant_cluster.urls[2], "GET", "/collections/docs/cluster")[1]["result"]
    assert info["shard_transfers"] == [{"shard_id": 1, "from": ids[1], "to": ids[2], "sync": True,
                                        "method": "stream_records", "comment": "Transferring records (fake)"}]
    assert {"shard_id": 1, "points_count": 100, "state": "Partial"} in info["local_shards"]
    assert qdrant_cluster.complete_transfers() == 1
    info = call(qdrant_cluster.urls[2], "GET", "/collections/docs/cluster")[1]["result"]
    assert info["shard_transfers"] == [] and all(s["state"] == "Active" for s in info["local_shards"])
    assert call(url, "GET", "/collections/docs")[1]["result"]["status"] == "green"


def test_transfer_rules_follow_qdrants_validate_transfer_and_abort(qdrant_cluster: FakeQdrantCluster) -> None:
    """As Qdrant's source: a transfer conflicts only with one of the same shard involving either
    peer; an aborted replication leaves its target Dead; an unknown transfer is 404; a Dead
    replica on a node that is up recovers by itself (auto_recover, Collection::sync_local_state)."""
    url, ids = qdrant_cluster.urls[0], qdrant_cluster.peer_ids
    qdrant_cluster.transfer_seconds = 3600
    # Shard 0 lives on nodes 1 and 2: replicate it onto node 3 (no replica there yet).
    start = {"replicate_shard": {"shard_id": 0, "from_peer_id": ids[0], "to_peer_id": ids[2]}}
    assert call(url, "POST", "/collections/docs/cluster", start)[0] == 200
    status, body = call(url, "POST", "/collections/docs/cluster",
                        {"replicate_shard": {"shard_id": 0, "from_peer_id": ids[1], "to_peer_id": ids[2]}})
    assert status == 400 and f"Shard 0 is already involved in transfer {ids[0]} -> {ids[2]}" in body["status"]["error"]
    # Shard 2 (nodes 3 and 1) has no transfer: node 3 may send it while it receives shard 0.
    assert call(url, "POST", "/collections/docs/cluster",
                {"replicate_shard": {"shard_id": 2, "from_peer_id": ids[2], "to_peer_id": ids[1]}})[0] == 200
    assert call(url, "POST", "/collections/docs/cluster", {"abort_transfer": start["replicate_shard"]})[0] == 200
    remote = call(url, "GET", "/collections/docs/cluster")[1]["result"]["remote_shards"]
    assert {"shard_id": 0, "peer_id": ids[2], "state": "Dead"} in remote
    status, body = call(url, "POST", "/collections/docs/cluster", {"abort_transfer": start["replicate_shard"]})
    assert status == 404 and "does not exist" in body["status"]["error"]

    qdrant_cluster.state.auto_recover = True
    # Not while node 3 sends shard 2: an automatic transfer must not involve a busy peer at all.
    info = call(qdrant_cluster.urls[2], "GET", "/collections/docs/cluster")[1]["result"]
    assert [t["shard_id"] for t in info["shard_transfers"]] == [2]
    assert {"shard_id": 0, "points_count": 100, "state": "Dead"} in info["local_shards"]
    qdrant_cluster.complete_transfers()  # then node 3 asks node 1 for shard 0 by itself
    info = call(qdrant_cluster.urls[2], "GET", "/collections/docs/cluster")[1]["result"]
    assert {"shard_id": 0, "from": ids[0], "to": ids[2], "sync": True, "method": "wal_delta",
            "comment": "Transferring records (fake)"} in info["shard_transfers"]
    assert {"shard_id": 0, "points_count": 100, "state": "Recovery"} in info["local_shards"]
    qdrant_cluster.complete_transfers()
    info = call(qdrant_cluster.urls[2], "GET", "/collections/docs/cluster")[1]["result"]
    assert info["shard_transfers"] == [] and {"shard_id": 0, "points_count": 100, "state": "Active"} in info["local_shards"]


def test_no_active_replica_is_red_and_transfers_finish_on_their_own(qdrant_cluster: FakeQdrantCluster) -> None:
    url, ids = qdrant_cluster.urls[0], qdrant_cluster.peer_ids
    for peer in (ids[0], ids[1]):  # both replicas of shard 0
        qdrant_cluster.set_replica_state("docs", 0, peer, "Dead")
    assert call(url, "GET", "/collections/docs")[1]["result"]["status"] == "red"
    qdrant_cluster.set_replica_state("docs", 0, ids[0], "Active")
    qdrant_cluster.transfer_seconds = 0.0  # the next request finishes it
    assert call(url, "POST", "/collections/docs/cluster",
                {"move_shard": {"shard_id": 0, "from_peer_id": ids[0], "to_peer_id": ids[2]}})[0] == 200
    status, body = call(url, "POST", "/collections/docs/cluster", {"drop_replica": {"shard_id": 0, "peer_id": ids[1]}})
    assert status == 200
    info = call(qdrant_cluster.urls[2], "GET", "/collections/docs/cluster")[1]["result"]
    assert {"shard_id": 0, "points_count": 100, "state": "Active"} in info["local_shards"]
    assert not [r for r in info["remote_shards"] if r["shard_id"] == 0]  # moved away from node 1, dropped from node 2
    status, body = call(url, "POST", "/collections/docs/cluster", {"drop_replica": {"shard_id": 0, "peer_id": ids[2]}})
    assert status == 400 and "at least one replica" in body["status"]["error"]
    status, body = call(url, "POST", "/collections/docs/cluster", {"drop_replica": {"shard_id": 0, "peer_id": 1}})
    assert status == 400 and "Peer 1 does not exist" in body["status"]["error"]


def test_snapshots_round_trip_with_checksums(qdrant_cluster: FakeQdrantCluster, tmp_path: Path) -> None:
    urls = qdrant_cluster.urls
    files = []
    for i, url in enumerate(urls):
        status, body = call(url, "POST", "/collections/docs/snapshots?wait=true")
        snap = body["result"]
        assert status == 200 and snap["name"].startswith(f"docs-{qdrant_cluster.peer_ids[i]}-") and snap["name"].endswith(".snapshot")
        assert [s["name"] for s in call(url, "GET", "/collections/docs/snapshots")[1]["result"]] == [snap["name"]]
        status, data = call(url, "GET", f"/collections/docs/snapshots/{snap['name']}")
        assert status == 200 and hashlib.sha256(data).hexdigest() == snap["checksum"] and len(data) == snap["size"]
        path = tmp_path / snap["name"]
        path.write_bytes(data)
        files.append((path, snap["checksum"]))
        assert call(url, "DELETE", f"/collections/docs/snapshots/{snap['name']}")[0] == 200
    assert call(urls[0], "DELETE", "/collections/docs")[1]["result"] is True
    assert call(urls[0], "GET", "/aliases")[1]["result"]["aliases"] == []  # went with the collection
    status, body = call(urls[0], "PUT", "/collections/docs/snapshots/recover",
                        {"location": files[0][0].as_uri(), "checksum": "0" * 64, "priority": "snapshot"})
    assert status == 400 and "checksum" in body["status"]["error"] and files[0][1] in body["status"]["error"]
    for url, (path, checksum) in zip(urls, files):
        status, body = call(url, "PUT", "/collections/docs/snapshots/recover",
                            {"location": path.as_uri(), "checksum": checksum, "priority": "snapshot"})
        assert (status, body["result"]) == (200, True)
    assert call(urls[1], "POST", "/collections/docs/points/count", {"exact": True})[1]["result"]["count"] == 300
    assert call(urls[1], "GET", "/collections/docs")[1]["result"]["status"] == "green"


def test_recover_fetches_an_http_location(qdrant_cluster: FakeQdrantCluster) -> None:
    urls = qdrant_cluster.urls
    snap = call(urls[2], "POST", "/collections/images/snapshots")[1]["result"]
    # Any http(s) URL works (the runbook uses an S3 presigned one); here the fake's own download
    # URL, recovered into a collection that does not exist yet (recovery creates it).
    location = f"{urls[2]}/collections/images/snapshots/{snap['name']}"
    status, body = call(urls[0], "PUT", "/collections/images-copy/snapshots/recover",
                        {"location": location, "checksum": snap["checksum"], "api_key": API_KEY})
    assert (status, body["result"]) == (200, True)
    assert call(urls[0], "POST", "/collections/images-copy/points/count", {})[1]["result"]["count"] == 120
    status, body = call(urls[0], "PUT", "/collections/images-copy/snapshots/recover",
                        {"location": f"{urls[2]}/collections/images/snapshots/gone.snapshot?X-Amz-Signature=secret",
                         "api_key": API_KEY})
    assert status == 400 and "status 404" in body["status"]["error"] and "secret" not in body["status"]["error"]


def test_latency_shows_in_telemetry_and_metrics(qdrant_cluster: FakeQdrantCluster) -> None:
    slow, fast = qdrant_cluster.urls[1], qdrant_cluster.urls[0]
    assert call(fast, "POST", "/__fake__/latency", {"peer_id": qdrant_cluster.peer_ids[1], "ms": 300})[0] == 200
    for url in (slow, fast):
        call(url, "POST", "/collections/docs/points/query", {"query": [0.1] * 8, "limit": 3})
    stats = call(slow, "GET", "/telemetry?details_level=3")[1]["result"]["requests"]["rest"]["responses"]
    assert stats["POST /collections/{name}/points/query"]["200"]["max_duration_micros"] >= 300_000
    metrics = call(slow, "GET", "/metrics")[1]
    line = next(ln for ln in metrics.splitlines()
                if ln.startswith('rest_responses_max_duration_seconds{method="POST",endpoint="/collections/{name}/points/query"'))
    assert float(line.rsplit(" ", 1)[1]) >= 0.3
    fast_stats = call(fast, "GET", "/telemetry")[1]["result"]["requests"]["rest"]["responses"]
    assert fast_stats["POST /collections/{name}/points/query"]["200"]["max_duration_micros"] < 300_000


def test_node_down_refuses_then_comes_back(qdrant_cluster: FakeQdrantCluster) -> None:
    urls, ids = qdrant_cluster.urls, qdrant_cluster.peer_ids
    port = int(urls[2].rsplit(":", 1)[1])
    pooled = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # a client's keep-alive connection
    pooled.request("GET", "/readyz")
    assert pooled.getresponse().read() == b"healthz check passed"
    assert call(urls[0], "POST", "/__fake__/node-down", {"peer_id": ids[2]})[0] == 200
    pooled.request("GET", "/readyz")
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        pooled.getresponse()
    pooled.close()
    for _ in range(100):  # the port closes asynchronously (the node may be asked to close itself)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                break
    with pytest.raises(urllib.error.URLError):
        call(urls[2], "GET", "/readyz", timeout=2)
    failures = call(urls[0], "GET", "/cluster")[1]["result"]["message_send_failures"]
    assert list(failures) == ["http://fake-qdrant-3.internal:6335/"]
    # A write while it is down: its replica of the shard written to (point 2: shard 2, on nodes 3 and 1) is Dead
    assert call(urls[0], "PUT", "/collections/docs/points?wait=true", {"points": [{"id": 2, "vector": [0.3] * 8}]})[0] == 200
    remote = call(urls[0], "GET", "/collections/docs/cluster")[1]["result"]["remote_shards"]
    assert {"shard_id": 2, "peer_id": ids[2], "state": "Dead"} in remote
    assert {"shard_id": 1, "peer_id": ids[2], "state": "Active"} in remote
    assert call(urls[1], "POST", "/__fake__/node-up", {"peer_id": "q3"})[0] == 200
    assert call(urls[2], "GET", "/readyz")[0] == 200


def test_the_leader_down_elects_another(qdrant_cluster: FakeQdrantCluster) -> None:
    urls, ids = qdrant_cluster.urls, qdrant_cluster.peer_ids
    before = call(urls[1], "GET", "/cluster")[1]["result"]["raft_info"]
    assert (before["leader"], before["role"]) == (ids[0], "Follower")
    qdrant_cluster.node_down(ids[0], mode="hang")
    after = call(urls[1], "GET", "/cluster")[1]["result"]["raft_info"]
    assert (after["leader"], after["role"]) == (ids[1], "Leader") and after["term"] > before["term"]
    qdrant_cluster.node_up(ids[0])


def test_a_hung_node_accepts_and_does_not_answer(qdrant_cluster: FakeQdrantCluster) -> None:
    qdrant_cluster.node_down(qdrant_cluster.peer_ids[1], mode="hang")
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        call(qdrant_cluster.urls[1], "GET", "/cluster", timeout=0.5)
    qdrant_cluster.node_up(qdrant_cluster.peer_ids[1])
    assert call(qdrant_cluster.urls[1], "GET", "/cluster")[0] == 200


def test_state_file_keeps_the_cluster_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    ports = free_ports(3)
    first = FakeQdrantCluster(ports, API_KEY, None, SPEC_PATH, state_file=state)
    first.seed_demo()
    with first:
        first.set_replica_state("docs", 2, first.peer_ids[0], "Dead")
        snap = call(first.urls[0], "POST", "/collections/images/snapshots")[1]["result"]
    ids = first.peer_ids
    second = FakeQdrantCluster(ports, API_KEY, None, SPEC_PATH, state_file=state)
    with second:
        assert second.peer_ids == ids
        assert call(second.urls[0], "GET", "/collections/docs")[1]["result"]["status"] == "yellow"
        assert call(second.urls[0], "GET", "/collections/images/snapshots")[1]["result"][0]["name"] == snap["name"]
    assert first.violations == [] and second.violations == []


def test_validation_catches_what_the_spec_forbids(qdrant_cluster: FakeQdrantCluster) -> None:
    # Straight through the validator: a response missing required fields, and a correct one.
    validator = SpecValidator(SPEC_PATH)
    bad = json.dumps({"result": {"peer_id": 1, "shard_count": 3}, "status": "ok", "time": 0.001}).encode()
    problems = validator.check("GET", "/collections/docs/cluster", "", {}, None, 200, bad, "application/json")
    assert len(problems) == 1 and problems[0].startswith("response:") and "local_shards" in problems[0]
    good = json.dumps({"result": {"peer_id": 1, "shard_count": 3, "local_shards": [], "remote_shards": [],
                                  "shard_transfers": []}, "status": "ok", "time": 0.001}).encode()
    assert validator.check("GET", "/collections/docs/cluster", "", {}, None, 200, good, "application/json") == []
    wrong_state = json.dumps({"result": {"peer_id": 1, "shard_count": 1, "local_shards": [{"shard_id": 0, "points_count": 1,
                              "state": "Zombie"}], "remote_shards": [], "shard_transfers": []}, "status": "ok"}).encode()
    assert "Zombie" in validator.check("GET", "/collections/docs/cluster", "", {}, None, 200, wrong_state, "application/json")[0]
    # Through the running fake: a request the spec does not allow, and a path Qdrant does not have.
    url = qdrant_cluster.urls[0]
    call(url, "POST", "/collections/docs/cluster", {"replicate_shard": {"shard_id": 0, "from_peer_id": 1}})
    call(url, "POST", "/collections/docs/points/search", {"vector": [0.1] * 8, "limit": 1})  # gone from Qdrant 1.19
    # A recovery with a checksum that is not a string, carrying a key and a presigned URL: caught, and
    # the violation (it reaches test output and the sandbox log) shows neither secret.
    status, _ = call(url, "PUT", "/collections/docs/snapshots/recover",
                     {"location": "http://127.0.0.1:9/b/s.snapshot?X-Amz-Signature=deadbeef42", "checksum": 12345,
                      "api_key": API_KEY})
    assert status == 400
    found = qdrant_cluster.take_violations()
    recover = [v for v in found if "snapshots/recover" in v and "request:" in v]
    assert recover and "12345" in recover[0] and API_KEY not in " ".join(found) and "deadbeef42" not in " ".join(found)
    assert any("POST /collections/docs/cluster" in v and "request:" in v for v in found)
    assert any("POST /collections/docs/points/search" in v and "NotFound" in v for v in found), found


def test_the_fixture_fails_a_test_that_drifted() -> None:
    with pytest.raises(pytest.fail.Exception, match="(?s)2 OpenAPI violation.*aliases/extra"):
        with fake_qdrant(nodes=1, demo=False) as cluster:
            call(cluster.urls[0], "GET", "/collections/aliases/extra")  # no such path in Qdrant 1.19
