"""The Kafka sandbox is real: Apache Kafka 3.9 from Maven Central's jars, three KRaft nodes
(broker and controller each) that form a metadata quorum, survive the loss of one node, and a
`down` that leaves nothing running. (The Kafka pane is issue 5's; this is its sandbox.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dbops import sandbox
from dbops.sandbox import pid_alive, port_open
from dbops.sandbox.kafka import NODES, KafkaSandbox

from .conftest import running_sandbox


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaSandbox]:
    with running_sandbox(("kafka",), "dbops-it-kafka-") as root:
        yield KafkaSandbox(root)


def test_three_kraft_nodes_form_a_quorum(kafka: KafkaSandbox) -> None:
    q = kafka.quorum()
    assert q["ClusterId"] == kafka.state["cluster_id"]
    assert q["LeaderId"] in {"1", "2", "3"}
    assert all(f'"id": {i},' in q["CurrentVoters"] for i in (1, 2, 3))
    assert all(port_open(kafka.port(n)) for n in NODES)
    rows = sandbox.status(root=kafka.root)
    assert [(r.name, r.running) for r in rows] == [(n, True) for n in NODES]


def test_losing_one_node_keeps_a_leader_and_it_rejoins(kafka: KafkaSandbox) -> None:
    victim = next(n for n, v in kafka.state["nodes"].items() if str(v["node_id"]) == kafka.quorum()["LeaderId"])
    kafka.stop_node(victim)  # SIGKILL: the quorum's leader crashes
    assert kafka.pid(victim) is None
    q = kafka.wait_quorum_leader_other_than(kafka.state["nodes"][victim]["node_id"])
    assert q["LeaderId"] != str(kafka.state["nodes"][victim]["node_id"])
    kafka.start_node(victim)
    assert kafka.pid(victim) is not None and port_open(kafka.port(victim))


def test_up_again_is_a_no_op_and_down_stops_every_node(kafka: KafkaSandbox) -> None:
    pids = {n: kafka.pid(n) for n in NODES}
    result = sandbox.up(("kafka",), root=kafka.root)
    assert result.already_up and {n: kafka.pid(n) for n in NODES} == pids
    sandbox.down(root=kafka.root)
    assert not any(pid_alive(p) for p in pids.values())
    assert [r.running for r in sandbox.status(root=kafka.root)] == [False] * 3
    sandbox.down(root=kafka.root)  # again: nothing to do, no error


def test_without_maven_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("DBOPS_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(sandbox.SandboxError, match=r"need `mvn`, which is not installed; install Debian's openjdk-17-jdk-headless and maven"):
        sandbox.up(("kafka",), root=tmp_path / "sandbox")
