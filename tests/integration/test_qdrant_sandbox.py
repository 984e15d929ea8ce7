"""The Qdrant sandbox: three nodes of the FAKE Qdrant (dbops.sandbox.fake_qdrant) in one process,
API keys on, the demo data seeded, its config fragment loadable, its fault injection reachable
from the CLI, and nothing left running after `down`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from dbops import sandbox
from dbops.config import load
from dbops.sandbox import pid_alive, port_open
from dbops.sandbox.cli import sandbox as sandbox_cli
from dbops.sandbox.qdrant import QdrantSandbox

from .conftest import running_sandbox


@pytest.fixture(scope="module")
def qd() -> Iterator[QdrantSandbox]:
    with running_sandbox(("s3", "qdrant"), "dbops-it-qdrant-") as root:
        yield QdrantSandbox(root)


def get(url: str, path: str, key: str | None, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["api-key"] = key
    req = urllib.request.Request(url + path, method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_three_nodes_answer_as_one_cluster(qd: QdrantSandbox) -> None:
    peer_ids, leaders = [], set()
    for url in qd.urls:
        status, body = get(url, "/cluster", qd.read_only_api_key)
        assert status == 200
        peer_ids.append(body["result"]["peer_id"])
        leaders.add(body["result"]["raft_info"]["leader"])
        assert len(body["result"]["peers"]) == 3
    assert len(set(peer_ids)) == 3 and leaders == {peer_ids[0]}
    status, body = get(qd.urls[1], "/collections/docs-live", qd.read_only_api_key)
    assert status == 200 and body["result"]["points_count"] == 300 and body["result"]["status"] == "green"
    assert get(qd.urls[2], "/collections", None)[0] == 401
    status, body = get(qd.urls[0], "/collections/scratch", qd.read_only_api_key, "PUT", {"vectors": {"size": 2, "distance": "Dot"}})
    assert status == 403
    assert get(qd.urls[0], "/collections/scratch", qd.api_key, "PUT", {"vectors": {"size": 2, "distance": "Dot"}})[0] == 200
    assert get(qd.urls[0], "/collections/scratch", qd.api_key, "DELETE")[0] == 200


def test_config_fragment_reads_with_the_read_only_key_and_backs_up_to_s3(qd: QdrantSandbox) -> None:
    config = load(qd.root / sandbox.CONFIG_FILE)
    ref = next(c for c in config.clusters() if c.name == "sandbox-qdrant")
    cluster = ref.cluster
    assert cluster.engine == "qdrant" and [(m.name, m.port) for m in cluster.members] == list(qd.ports.items())
    assert cluster.password is not None and cluster.password.value == qd.read_only_api_key
    assert cluster.qdrant is not None and cluster.qdrant.manage_api_key is not None
    assert cluster.qdrant.manage_api_key.value == qd.api_key != qd.read_only_api_key
    assert cluster.backups.s3 is not None and cluster.backups.s3.prefix == "qdrant/"
    assert qd.api_key not in " ".join(open(f"/proc/{qd.pid()}/cmdline").read().split("\0"))  # keys travel in files


def test_mark_dead_from_the_cli_shows_on_the_node(qd: QdrantSandbox) -> None:
    env = {"DBOPS_STATE_DIR": str(qd.root.parent)}
    result = CliRunner().invoke(sandbox_cli, ["qdrant", "mark-dead", "--collection", "docs", "--shard", "2", "--peer", "q3"], env=env)
    assert result.exit_code == 0, result.output
    assert "shard 2 of docs on q3" in result.output and "Dead" in result.output
    body = get(qd.urls[2], "/collections/docs/cluster", qd.read_only_api_key)[1]["result"]
    assert {"shard_id": 2, "points_count": 100, "state": "Dead"} in body["local_shards"]
    # A replica that does not exist: one line, no traceback
    result = CliRunner().invoke(sandbox_cli, ["qdrant", "mark-dead", "--collection", "docs", "--shard", "1", "--peer", "q1"], env=env)
    assert result.exit_code == 1 and "has no replica on peer" in result.output and "Traceback" not in result.output
    # The manage key repairs it from q1's Active replica (what qdrant.recover-dead-replica does).
    q1, q3 = (get(url, "/cluster", qd.api_key)[1]["result"]["peer_id"] for url in (qd.urls[0], qd.urls[2]))
    status, _ = get(qd.urls[0], "/collections/docs/cluster", qd.api_key, "POST",
                    {"replicate_shard": {"shard_id": 2, "from_peer_id": q1, "to_peer_id": q3}})
    assert status == 200
    states = {s["shard_id"]: s["state"] for s in get(qd.urls[2], "/collections/docs/cluster", qd.read_only_api_key)[1]["result"]["local_shards"]}
    assert states[2] in ("Partial", "Active")
    with urllib.request.urlopen(f"{qd.urls[0]}/__fake__/violations", timeout=10) as resp:
        assert json.loads(resp.read()) == {"violations": []}  # the sandbox validates against the spec too


def test_drill_probe_writes_reads_back_follows_a_node_loss_and_drops_its_collection(qd: QdrantSandbox) -> None:
    import asyncio

    from dbops.engines.qdrant.client import QdrantError
    from dbops.engines.qdrant.probe import QdrantProbe

    ref = next(c for c in load(qd.root / sandbox.CONFIG_FILE).clusters() if c.name == "sandbox-qdrant")
    probe = QdrantProbe(ref, "it-probe")
    path = "/collections/dbops_drill_it-probe"
    commands = "\n".join(probe.commands())
    assert f"PUT {path}/points?wait=true" in commands
    assert qd.api_key not in commands and qd.read_only_api_key not in commands

    async def run() -> None:
        try:
            await probe.open()
            await probe.open()  # idempotent: the collection exists, it is kept
            for seq in range(1, 26):
                await probe.write(seq)
                assert await probe.read(seq), seq
            assert not await probe.read(26)
            assert await probe.present(range(0, 2500)) == set(range(1, 26))  # three batches
            status, body = get(qd.urls[2], path, qd.read_only_api_key)
            params = body["result"]["config"]["params"]
            # A shard per node, each on all three nodes; an acknowledged write is on two of them.
            assert (params["shard_number"], params["replication_factor"], params["write_consistency_factor"]) == (3, 3, 2)
            assert body["result"]["points_count"] == 25 and probe.target.endswith("(3 shards x 3 replicas, writes acknowledged by 2)")
            # The node the probe talks to (the first to answer /readyz) goes away; after a reset
            # it uses another.
            gone = probe.via
            assert gone in qd.ports
            qd.control("node-down", {"peer_id": gone})
            try:
                with pytest.raises(QdrantError) as failed:
                    await probe.write(26)
                assert gone in failed.value.message and qd.api_key not in failed.value.message
                await probe.reset()
                await probe.write(27)
                assert probe.via not in (None, gone) and await probe.read(27)
                assert await probe.present(range(1, 30)) == {*range(1, 26), 27}
            finally:
                qd.control("node-up", {"peer_id": gone})
        finally:
            await probe.close(drop=True)

    asyncio.run(run())
    assert get(qd.urls[0], path, qd.read_only_api_key)[0] == 404
    with urllib.request.urlopen(f"{qd.urls[1]}/__fake__/violations", timeout=10) as resp:
        assert json.loads(resp.read()) == {"violations": []}


def test_drill_qdrant_replica_loss_rebuilds_the_dead_replica_and_loses_no_point(qd: QdrantSandbox) -> None:
    from .drills import assert_met, run_drill

    r, report = run_drill(sandbox.config_path(root=qd.root), qd.root.parent, "qdrant-replica-loss", "sandbox-qdrant")
    assert_met(r, report)
    assert "is now Dead" in next(p for p in report["phases"] if p["name"] == "inject")["detail"]
    assert [x["runbook"] for x in report["runbooks"]] == ["qdrant.recover-dead-replica"]
    assert report["runbooks"][0]["outcome"] == "ok"
    with urllib.request.urlopen(f"{qd.urls[1]}/__fake__/violations", timeout=10) as resp:
        assert json.loads(resp.read()) == {"violations": []}


def test_up_again_is_a_no_op_and_down_stops_every_node(qd: QdrantSandbox) -> None:
    pid = qd.pid()
    assert pid is not None and [r.running for r in sandbox.status(root=qd.root) if r.engine == "qdrant"] == [True] * 3
    assert sandbox.up(("qdrant",), root=qd.root).already_up and qd.pid() == pid
    sandbox.down(root=qd.root)
    assert not pid_alive(pid) and not any(port_open(p) for p in qd.ports.values())
    assert [r.running for r in sandbox.status(root=qd.root) if r.engine == "qdrant"] == [False] * 3
