"""Kafka against the sandbox's three real KRaft brokers: what a refresh sees, consumer lag judged
STOP while the consumer is gone and reset to latest by the runbook, a killed broker's
under-replicated partitions on the pane and in `dbops check` and gone after its restart, the
triage report, and leadership given back by the preferred-leader election."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from dbops.config import load
from dbops.engines.kafka.adapter import KafkaAdapter
from dbops.engines.kafka.data import KafkaData
from dbops.sandbox.kafka import KafkaSandbox

from .conftest import running_sandbox

CLUSTER = "sandbox-kafka"
WINDOW = 4


@dataclass
class Env:
    kafka: KafkaSandbox
    state_dir: Path
    config: Path

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap()

    def dbops(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**os.environ, "DBOPS_STATE_DIR": str(self.state_dir)})

    def ref(self):
        return next(r for r in load(self.config).clusters() if r.name == CLUSTER)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with running_sandbox(("kafka",), "dbops-it-kpane-") as root:
        kafka = KafkaSandbox(root)
        # The sandbox's own cluster, refreshed faster and judged over a short window, so lag
        # rules are reached in seconds.
        members = ", ".join(f'{{ name = "{n}", host = "127.0.0.1", port = {v["port"]} }}' for n, v in kafka.state["nodes"].items())
        config = root.parent / "kafka-test.toml"
        config.write_text(f"""
[environments.sandbox]
sandbox = true
mode = "operator"
[environments.sandbox.clusters.{CLUSTER}]
engine = "kafka"
refresh_interval = 0.5
timeout = 5.0
members = [{members}]
[environments.sandbox.clusters.{CLUSTER}.kafka]
thresholds = {{ lag_window = {WINDOW} }}
""")
        e = Env(kafka, root.parent, config)
        asyncio.run(create_topic(e.bootstrap, "orders", 3))
        yield e


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 3)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, n: int) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await p.start()
    try:
        for i in range(n):
            await p.send(topic, f"record-{i}".encode(), partition=i % 3)
        await p.flush()
    finally:
        await p.stop()


async def consume(bootstrap: str, topic: str, group: str, n: int) -> list[tuple[int, int]]:
    """Read `n` records as `group`, commit, leave the group; (partition, offset) of each record."""
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                         enable_auto_commit=False)
    await c.start()
    got: list[tuple[int, int]] = []
    try:
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=500, max_records=n - len(got))
            got += [(r.partition, r.offset) for records in batch.values() for r in records]
        # Commit exactly what was handed out (a fetch may have buffered more).
        from aiokafka import TopicPartition

        ends: dict[int, int] = {}
        for partition, offset in got:
            ends[partition] = max(ends.get(partition, 0), offset + 1)
        if ends:
            await c.commit({TopicPartition(topic, p): o for p, o in ends.items()})
    finally:
        await c.stop()
    return got


def refreshes(env: Env, count: int) -> KafkaData:
    """`count` refreshes a refresh interval apart, as the poller makes them; the last one's data."""
    async def run() -> KafkaData:
        ref = env.ref()
        adapter = KafkaAdapter(ref, ref.poll_units[0])
        try:
            data = None
            for i in range(count):
                if i:
                    await asyncio.sleep(ref.refresh_interval)
                data = await asyncio.wait_for(adapter.collect(), timeout=ref.timeout)
            assert data is not None
            return data
        finally:
            await adapter.close()

    return asyncio.run(run())


def check_json(env: Env, *args: str) -> dict:
    r = env.dbops("check", "--json", *args)
    assert r.returncode in (0, 1, 2), r.stderr
    return json.loads(r.stdout)["clusters"][0]


def test_one_refresh_sees_brokers_partitions_and_a_group_with_its_lag(env: Env) -> None:
    asyncio.run(produce(env.bootstrap, "orders", 30))
    read = asyncio.run(consume(env.bootstrap, "orders", "audit-trail", 18))
    data = refreshes(env, 1)
    assert [(b.name, b.up) for b in data.brokers] == [("k1", True), ("k2", True), ("k3", True)]
    # The active controller is the KRaft quorum's leader, as Kafka's own tool reports it
    assert data.quorum is not None and str(data.quorum.leader_id) == env.kafka.quorum()["LeaderId"]
    assert sorted(v for v, _ in data.quorum.voters) == [1, 2, 3]
    orders = next(t for t in data.topics if t.name == "orders")
    assert orders.min_isr == 2
    assert all(len(p.replicas) == 3 and set(p.isr) == set(p.replicas) for p in orders.partitions)
    group = next(g for g in data.groups if g.group_id == "audit-trail")
    assert group.state == "Empty" and group.members == ()
    # 10 records per partition; a partition the group never committed has no lag to tell
    per_partition = {p: sum(1 for q, _ in read if q == p) for p, _ in read}
    assert {p.partition: p.lag for p in group.partitions} == {p: 10 - n for p, n in per_partition.items()}
    assert group.total_lag == 30 - len(read) - 10 * (3 - len(per_partition))
    # `dbops check --json` lists the group's metric, though it is no problem (not judged yet)
    metric = next(m for m in check_json(env)["metrics"] if m["name"] == "group:audit-trail")
    assert metric["severity"] == "OK" and f"lag {group.total_lag} records" in metric["message"]


def test_a_stopped_consumer_is_judged_stop_and_reset_to_latest_moves_it_past_the_backlog(env: Env) -> None:
    asyncio.run(create_topic(env.bootstrap, "payments", 3))
    asyncio.run(produce(env.bootstrap, "payments", 60))
    asyncio.run(consume(env.bootstrap, "payments", "billing", 30))  # then the consumer is gone

    async def keep_producing(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await produce(env.bootstrap, "payments", 9)
            await asyncio.sleep(0.2)

    async def judged_while_producing() -> tuple[dict, dict]:
        stop = asyncio.Event()
        producer = asyncio.create_task(keep_producing(stop))
        try:
            first = await asyncio.to_thread(check_json, env, "--refreshes", str(WINDOW + 1))
            second = await asyncio.to_thread(check_json, env, "--refreshes", str(WINDOW + 1))
        finally:
            stop.set()
            await producer
        return first, second

    first, second = asyncio.run(judged_while_producing())
    assert first["severity"] == "CRIT"
    problem = next(p for p in second["problems"] if p.startswith("group billing"))
    assert "(Empty, 0 member(s)): STOP" in problem and "no member consumes" in problem

    def lag_of(check: dict) -> int:
        text = next(p for p in check["problems"] if p.startswith("group billing"))
        return int(text.split("; lag ")[1].split(" records")[0])

    assert lag_of(second) > lag_of(first) > 30  # the backlog grows while nobody consumes
    assert any(ch.isdigit() for ch in problem.split(" records, ")[1].split(";")[0])  # lag in time, e.g. ">=5.2s"

    plan = env.dbops("runbook", "plan", "kafka.reset-consumer-offsets", "--cluster", CLUSTER,
                     "--param", "group=billing", "--param", "topic=payments", "--param", "to=latest")
    assert "payments/0: " in plan.stdout and " -> " in plan.stdout, plan.stdout
    run = env.dbops("runbook", "run", "kafka.reset-consumer-offsets", "--cluster", CLUSTER, "--param", "group=billing",
                    "--param", "topic=payments", "--param", "to=latest", "--confirm", CLUSTER)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "reads back the planned offset on every partition of payments" in run.stdout
    records = [json.loads(line) for line in (env.state_dir / "audit.jsonl").read_text().splitlines()]
    commits = [r for r in records if r["action"] == "kafka.reset-consumer-offsets:commit"]
    assert [r["outcome"] for r in commits] == [None, "ok"]  # the intent, then the result
    assert all(any(line.strip().startswith("payments/0: ") and " -> " in line for line in r["params"]["commands"])
               for r in commits)

    # Consuming confirms the new position: the group's next records are the first ones produced
    # after the reset, one per partition, at exactly the offsets it was reset to.
    group = next(g for g in refreshes(env, 1).groups if g.group_id == "billing")
    reset_to = {p.partition: p.committed for p in group.partitions}
    assert all(p.lag == 0 for p in group.partitions)
    asyncio.run(produce(env.bootstrap, "payments", 3))
    got = asyncio.run(consume(env.bootstrap, "payments", "billing", 3))
    assert sorted(got) == sorted(reset_to.items())


def test_reset_is_refused_while_the_group_has_a_member_and_commits_nothing(env: Env) -> None:
    async def with_member() -> subprocess.CompletedProcess[str]:
        c = AIOKafkaConsumer("orders", bootstrap_servers=env.bootstrap, group_id="live-group", auto_offset_reset="earliest",
                             enable_auto_commit=False)
        await c.start()
        try:
            await c.getmany(timeout_ms=2000)
            return await asyncio.to_thread(
                env.dbops, "runbook", "run", "kafka.reset-consumer-offsets", "--cluster", CLUSTER, "--param", "group=live-group",
                "--param", "topic=orders", "--param", "to=earliest", "--confirm", CLUSTER)
        finally:
            await c.stop()

    run = asyncio.run(with_member())
    assert run.returncode == 1, run.stdout
    assert "live-group is Stable with 1 member(s)" in run.stdout and "stop its consumers first" in run.stdout


def test_a_bad_to_value_or_a_mistyped_group_is_refused_with_the_reason(env: Env) -> None:
    run = env.dbops("runbook", "plan", "kafka.reset-consumer-offsets", "--cluster", CLUSTER, "--param", "group=billing",
                    "--param", "topic=payments", "--param", "to=yesterday")
    assert "expected earliest, latest, an ISO timestamp" in run.stdout
    run = env.dbops("runbook", "run", "kafka.reset-consumer-offsets", "--cluster", CLUSTER, "--param", "group=bil386",
                    "--param", "topic=payments", "--param", "to=latest", "--confirm", CLUSTER)
    assert run.returncode == 1 and "no group 'bil386'" in run.stdout and "committing would create it" in run.stdout


def test_a_runbook_on_a_cluster_nobody_answers_for_fails_its_check_with_the_reason(env: Env, tmp_path: Path) -> None:
    from dbops.sandbox import free_ports

    dead = tmp_path / "dead.toml"
    port = free_ports(1)[0]
    dead.write_text(f'[environments.sandbox]\nsandbox = true\nmode = "operator"\n[environments.sandbox.clusters.gone]\n'
                    f'engine = "kafka"\ntimeout = 2.0\nmembers = [{{ name = "x1", host = "127.0.0.1", port = {port} }}]\n')
    run = subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(dead), "runbook", "run", "kafka.broker-down-triage",
                          "--cluster", "gone"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                         env={**os.environ, "DBOPS_STATE_DIR": str(tmp_path)})
    assert run.returncode == 1, run.stdout + run.stderr
    assert "the cluster's metadata could not be read: no broker of gone" in run.stdout
    assert "Traceback" not in run.stdout + run.stderr and "crash" not in run.stdout + run.stderr


def test_a_killed_broker_is_under_replicated_within_two_refreshes_and_clears_after_restart(env: Env) -> None:
    env.kafka.stop_node("k3")  # SIGKILL
    try:
        data = refreshes(env, 2)
        assert [(b.name, b.up) for b in data.brokers] == [("k1", True), ("k2", True), ("k3", False)]
        check = check_json(env)
        assert check["severity"] == "CRIT"
        assert any(p == "1 of 3 brokers down: k3" for p in check["problems"])
        assert any("under-replicated partition(s): " in p for p in check["problems"]), check["problems"]
        assert next(m for m in check["members"] if m["name"] == "k3")["reachability"] == "DOWN"

        triage = env.dbops("runbook", "run", "kafka.broker-down-triage", "--cluster", CLUSTER)
        assert triage.returncode == 0, triage.stdout + triage.stderr
        assert "k3 (id 3) is down: replica of " in triage.stdout
        assert "lost from the ISR: " in triage.stdout and "when it returns:" in triage.stdout
    finally:
        env.kafka.start_node("k3")
    deadline = time.monotonic() + 120
    problems: list[str] = []
    while time.monotonic() < deadline:
        check = check_json(env)
        problems = check["problems"]
        if not any("under-replicated" in p or "brokers down" in p for p in problems):
            break
        time.sleep(1)
    assert not any("under-replicated" in p or "brokers down" in p for p in problems), problems


def test_preferred_leader_election_gives_a_restarted_broker_its_leadership_back(env: Env) -> None:
    env.kafka.stop_node("k1")
    env.kafka.start_node("k1")
    deadline = time.monotonic() + 120
    data = refreshes(env, 1)
    while time.monotonic() < deadline and any(p.under_replicated for p in data.partitions()):
        time.sleep(1)
        data = refreshes(env, 1)
    assert not any(p.under_replicated for p in data.partitions())
    assert not all(p.leader_is_preferred for p in data.partitions())  # k1 came back leading nothing
    run = env.dbops("runbook", "run", "kafka.preferred-leader-election", "--cluster", CLUSTER, "--yes")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "partition(s) are led by their preferred replica" in run.stdout
    # Every broker answers metadata; one that applies the controller's records a moment later
    # may still show an old leader: read until the cluster agrees.
    deadline = time.monotonic() + 30
    after = refreshes(env, 1)
    while time.monotonic() < deadline and not all(p.leader_is_preferred for p in after.partitions()):
        time.sleep(0.5)
        after = refreshes(env, 1)
    assert [f"{p.topic}/{p.partition}" for p in after.partitions() if not p.leader_is_preferred] == [], run.stdout
    assert sum(1 for p in after.partitions() if p.leader == 1) > 0


async def test_the_pane_shows_a_killed_broker_and_its_under_replicated_partitions_within_two_refreshes(env: Env, tmp_path: Path) -> None:
    from textual.widgets import DataTable, Static

    from dbops.screens.app import DbopsApp
    from dbops.screens.kafka import KafkaScreen

    from .test_ui_live import rows, settle

    app = DbopsApp(load(env.config), state_dir=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: CLUSTER in rows(app.screen.query_one("#clusters", DataTable)), "overview row")
        key = next(r.key for r in app.hub.refs if r.name == CLUSTER)
        app.open_cluster(key)
        await settle(pilot, lambda: isinstance(app.screen, KafkaScreen) and app.screen.is_mounted, "the Kafka pane")
        pane = app.screen
        brokers = pane.query_one("#nodes", DataTable)

        def state_of(name: str) -> str:
            return str(brokers.get_row(name)[4]) if name in {str(k.value) for k in brokers.rows} else ""

        def status() -> str:
            return str(pane.query_one("#status", Static).render())

        def seq() -> int:
            return max(s.seq for s in app.hub.snapshots(key).values())

        await settle(pilot, lambda: all(state_of(n) == "UP" for n in ("k1", "k2", "k3")), "every broker UP", show=lambda: rows(brokers))
        assert "under-replicated 0" in status()
        env.kafka.stop_node("k2")  # SIGKILL
        killed_at = seq()
        try:
            await settle(pilot, lambda: state_of("k2").startswith("DOWN") and "under-replicated 0" not in status(),
                         "k2 DOWN and under-replicated partitions", show=lambda: rows(brokers) + status())
            # A refresh may have been under way when k2 died: it and the next one are the two.
            assert seq() - killed_at <= 2
            assert state_of("k1") == "UP" and state_of("k3") == "UP"
            await pilot.press("2")
            parts = rows(pane.query_one("#parts-table", DataTable))
            assert "under-replicated" in parts or "OFFLINE" in parts
        finally:
            env.kafka.start_node("k2")
        await settle(pilot, lambda: state_of("k2") == "UP" and "under-replicated 0" in status(), "k2 back, nothing under-replicated",
                     show=lambda: rows(brokers) + status(), attempts=1200)


def test_a_hung_broker_is_one_down_row_not_a_cluster_timeout(env: Env) -> None:
    import signal

    pid = env.kafka.pid("k2")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # it accepts connections and answers nothing
    try:
        for _ in range(3):  # a fresh adapter each time: bootstrap included
            data = refreshes(env, 2)  # within the cluster's timeout, or this raises TimeoutError
            assert [(b.name, b.up) for b in data.brokers] == [("k1", True), ("k2", False), ("k3", True)]
            # not answering (TIMEOUT) at first; once the controller fences it, absent from the metadata
            assert next(b.error for b in data.brokers if b.name == "k2")
    finally:
        os.kill(pid, signal.SIGCONT)


def test_the_timeline_tells_a_consumer_group_losing_its_member(env: Env) -> None:
    """Two judgements of the real cluster, one with a consumer in its group and one after it
    left: the timeline's account names the group's state and member count on both sides."""
    from dbops.poller import poll_once
    from dbops.recording import state_changes

    asyncio.run(create_topic(env.bootstrap, "ledger", 3))
    asyncio.run(produce(env.bootstrap, "ledger", 6))

    def judged() -> Any:
        return asyncio.run(poll_once([env.ref()]))[0]

    def group_state(health: Any) -> tuple[str, int] | None:
        data = next(m.snapshot.data for m in health.members if isinstance(m.snapshot.data, KafkaData))
        g = next((g for g in data.groups if g.group_id == "ledger-writer"), None)
        return (g.state, len(g.members)) if g is not None else None

    async def with_a_member_then_without() -> tuple[Any, Any]:
        c = AIOKafkaConsumer("ledger", bootstrap_servers=env.bootstrap, group_id="ledger-writer",
                             auto_offset_reset="earliest", enable_auto_commit=True)
        await c.start()
        try:
            deadline = time.monotonic() + 60
            while True:  # joined, assigned, consuming: the group is Stable with this one member
                await c.getmany(timeout_ms=300)
                before = await asyncio.to_thread(judged)
                if group_state(before) == ("Stable", 1) or time.monotonic() > deadline:
                    break
        finally:
            await c.stop()  # leaves the group
        deadline = time.monotonic() + 60
        while True:
            after = await asyncio.to_thread(judged)
            if group_state(after) == ("Empty", 0) or time.monotonic() > deadline:
                return before, after
            await asyncio.sleep(0.3)

    before, after = asyncio.run(with_a_member_then_without())
    assert (group_state(before), group_state(after)) == (("Stable", 1), ("Empty", 0))
    told = [e.text for e in state_changes(before, after, time.time())]
    assert "group ledger-writer Stable, 1 member(s) → Empty, 0 member(s)" in told, told
