"""The Kafka sandbox is real: Apache Kafka 3.9 from Maven Central's jars, three KRaft nodes
(broker and controller each) that form a metadata quorum, survive the loss of one node, and a
`down` that leaves nothing running. (The Kafka pane is issue 5's; this is its sandbox.) The drill
probe runs against the same brokers, plain and over SASL_SSL, and through a broker's loss."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dbops import sandbox
from dbops.config import ClusterRef, load
from dbops.drill.probe import CALL_TIMEOUT, AckLog, ProbeLoop
from dbops.engines.kafka.probe import KafkaProbe
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
    # Settled before the next test: registered again (a topic created now needs all three
    # brokers) and back in every ISR (an acks=all write right after a restart can time out).
    deadline = time.monotonic() + 90
    while not asyncio.run(settled(kafka)):
        assert time.monotonic() < deadline, "the restarted broker did not rejoin every ISR within 90 s"
        time.sleep(0.5)


# -- the drill probe (before the test that stops every node) -----------------------------------

def cluster_ref(kafka: KafkaSandbox, name: str = "sandbox-kafka") -> ClusterRef:
    return next(r for r in load(sandbox.config_path(root=kafka.root)).clusters() if r.name == name)


async def admin_of(kafka: KafkaSandbox) -> Any:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap(), request_timeout_ms=5000)
    await admin.start()
    return admin


async def partitions_of(kafka: KafkaSandbox, topic: str) -> list[dict[str, Any]]:
    """The topic's partitions once every one has a leader (a broker restarted a moment ago may
    answer metadata it has not caught up with yet)."""
    admin = await admin_of(kafka)
    try:
        deadline = time.monotonic() + 30
        while True:
            [meta] = await admin.describe_topics([topic])
            parts: list[dict[str, Any]] = meta["partitions"]
            if parts and all(p["leader"] >= 0 for p in parts):
                return parts
            assert time.monotonic() < deadline, meta
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


async def settled(kafka: KafkaSandbox) -> bool:
    """Every broker in the metadata, and every partition's ISR all of its replicas."""
    admin = await admin_of(kafka)
    try:
        await admin._client.force_metadata_update()
        if len(admin._client.cluster.brokers()) < len(NODES):
            return False
        topics = await admin.describe_topics(await admin.list_topics())
        return all(len(p["isr"]) == len(p["replicas"]) for t in topics for p in t["partitions"])
    finally:
        await admin.close()


async def topic_gone(kafka: KafkaSandbox, topic: str, timeout: float = 30.0) -> bool:
    """Whether `topic` disappears from the metadata within `timeout` (a deletion reaches every
    broker's metadata a moment after the controller accepted it)."""
    deadline = time.monotonic() + timeout
    while await topic_exists(kafka, topic):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.3)
    return True


async def topic_exists(kafka: KafkaSandbox, topic: str) -> bool:
    admin = await admin_of(kafka)
    try:
        return topic in await admin.list_topics()
    finally:
        await admin.close()


def timed(probe: KafkaProbe, calls: list[tuple[str, float]]) -> KafkaProbe:
    """The probe, each write, read and reset's duration appended to `calls`."""
    def wrap(name: str) -> Any:
        method = getattr(probe, name)

        async def call(*args: Any) -> Any:
            started = time.monotonic()
            try:
                return await method(*args)
            finally:
                calls.append((name, time.monotonic() - started))
        return call

    for name in ("write", "read", "reset"):
        setattr(probe, name, wrap(name))
    return probe


@pytest.mark.parametrize("cluster", ["sandbox-kafka", "sandbox-kafka-tls"])
async def test_probe_acks_read_back_and_present_is_exactly_the_written_seqs(kafka: KafkaSandbox, cluster: str) -> None:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    probe = KafkaProbe(cluster_ref(kafka, cluster), f"it-{uuid.uuid4().hex[:8]}")
    try:
        await probe.open()
        await probe.open()  # again: the topic is there, nothing to do
        for seq in range(1, 31):
            await probe.write(seq)
            assert await probe.read(seq)
        started = time.monotonic()
        assert not await probe.read(31)  # never written: no, within the loop's bound
        assert time.monotonic() - started < CALL_TIMEOUT
        await probe.reset()  # the next calls reconnect; the reader goes on where it stopped
        for seq in range(31, 41):
            await probe.write(seq)
            assert await probe.read(seq)
        assert await probe.present(range(1, 80)) == set(range(1, 41))
        # Replicated so that an acknowledged write survives one broker's loss.
        assert [len(p["replicas"]) for p in await partitions_of(kafka, probe.topic)] == [3]
        admin = await admin_of(kafka)
        try:
            [configs] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, probe.topic)])
            entries = {e[0]: e[1] for e in configs.resources[0][4]}
            assert entries["min.insync.replicas"] == "2"
        finally:
            await admin.close()
    finally:
        await probe.close(drop=True)
    deadline = time.monotonic() + 15
    while await topic_exists(kafka, probe.topic) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert await topic_gone(kafka, probe.topic)


async def test_probe_through_a_broker_loss_acks_continue_or_fail_within_the_bound_and_none_is_lost(
        kafka: KafkaSandbox, tmp_path: Path) -> None:
    calls: list[tuple[str, float]] = []
    probe = timed(KafkaProbe(cluster_ref(kafka), f"it-{uuid.uuid4().hex[:8]}"), calls)
    acks_path = tmp_path / "acks.jsonl"
    acks = AckLog(acks_path)
    loop = ProbeLoop(probe, acks)
    victim = None
    try:
        await probe.open()
        [partition] = await partitions_of(kafka, probe.topic)
        leader = partition["leader"]
        # The partition's leader: its writes stop until the controller moves the leadership.
        victim = next(n for n, v in kafka.state["nodes"].items() if v["node_id"] == leader)
        loop.start()
        deadline = time.monotonic() + 30
        while sum(a.ok for a in loop.attempts) < 10:
            assert time.monotonic() < deadline, loop.attempts[-3:]
            await asyncio.sleep(0.1)
        await asyncio.to_thread(kafka.stop_node, victim)  # SIGKILL
        fault = time.time()
        deadline = time.monotonic() + 90
        while not any(a.ok and a.t > fault + 1 for a in loop.attempts):
            assert time.monotonic() < deadline, f"no acknowledged write since {victim} was killed: {loop.attempts[-3:]}"
            await asyncio.sleep(0.2)
        # A few more on the two brokers left (min.insync.replicas 2 holds).
        after = len(loop.attempts)
        while len(loop.attempts) < after + 10:
            await asyncio.sleep(0.1)
    finally:
        await loop.stop()
        acks.close()
        if victim is not None:
            await asyncio.to_thread(kafka.start_node, victim)
            await asyncio.to_thread(kafka.wait_quorum)
    try:
        after_fault = [a for a in loop.attempts if a.t > fault]
        assert any(a.ok for a in after_fault)
        # Failures are the service's, one line each; no call ran past the loop's bound (its
        # cancellation's clean-up included), no reset past the clients' close.
        assert all(a.error and "\n" not in a.error for a in loop.attempts if not a.ok)
        assert max(d for name, d in calls if name in ("write", "read")) < CALL_TIMEOUT + 0.5, calls
        assert max((d for name, d in calls if name == "reset"), default=0) < 2.5, calls
        acked = {a.seq for a in AckLog.read(acks_path)}
        assert acked and acked == {a.seq for a in loop.attempts if a.wrote}
        assert await probe.present(sorted(acked)) == acked  # none acknowledged is missing
    finally:
        await probe.close(drop=True)


def test_drill_kafka_broker_loss_triages_restarts_and_loses_no_acknowledged_record(kafka: KafkaSandbox) -> None:
    from .drills import assert_met, run_drill

    kafka.wait_quorum()
    r, report = run_drill(sandbox.config_path(root=kafka.root), kafka.root.parent, "kafka-broker-loss", "sandbox-kafka")
    assert_met(r, report)
    victim = report["facts"]["victim"]
    assert [x["runbook"] for x in report["runbooks"]] == [
        "kafka.broker-down-triage", "(restart the broker)", "kafka.preferred-leader-election"]
    assert kafka.pid(victim) is not None  # restarted
    assert f"broker {victim} killed" in next(p for p in report["phases"] if p["name"] == "inject")["detail"]


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
