"""Consumer lag of every group: dbops against Kafka's own `kafka-consumer-groups --describe
--all-groups` (ConsumerGroupCommand from the same Kafka 3.9 jars), on the same real cluster, side
by side in one run.

    make bench      (or: python benchmarks/kafka_lag.py [--groups N] [--partitions P] [--runs R])

Starts a private Kafka sandbox (three KRaft nodes), makes a topic of P partitions with records
and N consumer groups with committed offsets, then times, R times each (medians printed):
  - Kafka's tool, as an operator runs it (a JVM each time);
  - `dbops check` (a Python process each time; it reads every broker, topic and group);
  - one refresh of the pane's poller (what the console pays every refresh, connections open).
Both tools must report the same total lag, or the run says so. Informational: never pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOPIC = "bench-orders"


async def prepare(bootstrap: str, groups: int, partitions: int, records: int) -> int:
    """The topic, its records, and `groups` groups whose committed offsets leave a known total lag."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.structs import OffsetAndMetadata

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, partitions, 3)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        for i in range(records):
            await producer.send(TOPIC, b"x" * 100, partition=i % partitions)
        await producer.flush()
    finally:
        await producer.stop()
    per_partition = records // partitions
    total = 0
    for g in range(groups):
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"bench-group-{g:03d}", enable_auto_commit=False)
        await c.start()
        try:
            tps = [TopicPartition(TOPIC, p) for p in range(partitions)]
            c.assign(tps)
            offsets = {tp: (g * 7 + tp.partition * 13) % per_partition for tp in tps}
            await c.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
            total += sum(per_partition - o for o in offsets.values())
        finally:
            await c.stop()
    return total


def kafka_tool(lib: str, bootstrap: str) -> tuple[float, int]:
    cmd = ["java", "-Xmx256m", "-cp", f"{lib}/*", "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
           "--bootstrap-server", bootstrap, "--describe", "--all-groups"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"kafka-consumer-groups failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    lag = 0
    for line in out.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[1] == TOPIC and cols[5].isdigit():
            lag += int(cols[5])  # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
    return elapsed, lag


def dbops_check(config: Path, state: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(config), "check", "--json"],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, env={**os.environ, "DBOPS_STATE_DIR": str(state)})
    elapsed = time.perf_counter() - t0
    if out.returncode not in (0, 1, 2):
        raise SystemExit(f"dbops check failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    lag = 0
    for cluster in json.loads(out.stdout)["clusters"]:
        for m in cluster["metrics"]:
            if m["name"].startswith("group:bench-group-") and "; lag " in m["message"]:
                lag += int(m["message"].split("; lag ")[1].split(" records")[0])
    return elapsed, lag


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=50)
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--records", type=int, default=24_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    from dbops import sandbox
    from dbops.config import load
    from dbops.engines.kafka.adapter import KafkaAdapter
    from dbops.sandbox.kafka import KafkaSandbox

    state = Path(tempfile.mkdtemp(prefix="dbops-bench-kafka-", dir="/tmp"))
    root = state / "sandbox"
    print(f"starting a private Kafka sandbox in {root} ...", flush=True)
    sandbox.up(("kafka",), root=root)
    try:
        ks = KafkaSandbox(root)
        bootstrap = ks.bootstrap()
        # Lag of every group is CRIT-free only past thresholds; the judgement is not what is timed.
        config = state / "bench.toml"
        members = ", ".join(f'{{ name = "{n}", host = "127.0.0.1", port = {v["port"]} }}' for n, v in ks.state["nodes"].items())
        config.write_text(f'[environments.bench]\nsandbox = true\n[environments.bench.clusters.bench-kafka]\nengine = "kafka"\n'
                          f'timeout = 10.0\nmembers = [{members}]\n')
        want = asyncio.run(prepare(bootstrap, args.groups, args.partitions, args.records))
        print(f"{args.groups} groups x {args.partitions} partitions, total lag {want} records", flush=True)

        async def refreshes() -> list[tuple[float, int]]:
            ref = next(r for r in load(config).clusters())
            adapter = KafkaAdapter(ref, ref.poll_units[0])
            try:
                await adapter.collect()  # connections open, configs read: what every later refresh finds
                out = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    data = await adapter.collect()
                    out.append((time.perf_counter() - t0, sum(g.total_lag or 0 for g in data.groups if g.group_id.startswith("bench-group-"))))
                return out
            finally:
                await adapter.close()

        tool = [kafka_tool(ks.state["lib"], bootstrap) for _ in range(args.runs)]
        check = [dbops_check(config, state) for _ in range(args.runs)]
        warm = asyncio.run(refreshes())
        for name, runs in (("kafka-consumer-groups", tool), ("dbops check", check), ("dbops refresh (warm)", warm)):
            lags = {lag for _, lag in runs}
            note = "" if lags == {want} else f"   LAG MISMATCH: {sorted(lags)} != {want}"
            print(f"{name:<24} median {statistics.median(t for t, _ in runs) * 1000:8.1f} ms{note}")
        base = statistics.median(t for t, _ in tool)
        print(f"ratio: dbops check {base / statistics.median(t for t, _ in check):.1f}x faster, "
              f"a warm refresh {base / statistics.median(t for t, _ in warm):.0f}x faster than kafka-consumer-groups")
    finally:
        sandbox.down(root=root)


if __name__ == "__main__":
    main()
