"""Frozen refreshes of the other engines' panes (Redis, Kafka, Neo4j, Qdrant): one cluster each,
with something an on-call would have to look at, judged by the real assessment code.

Each `*_hub()` returns a FrozenHub serving that one cluster; the snapshot tests open its pane.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from dbops.config import parse
from dbops.engines.kafka.data import Broker, Group, GroupPartition, KafkaData, LagSample, Member, Partition, Quorum, Topic
from dbops.engines.neo4j.data import Database, Neo4jMemberData, Server, Transaction
from dbops.engines.qdrant.data import LocalShard, Node, NodeCollection, QdrantData, RemoteShard, Transfer, raft_from
from dbops.engines.redis.data import NodeResult, RedisTopology, SentinelData, node_data, parse_info
from dbops.model import Reachability, Severity, Snapshot
from dbops.platform.aws import Finding
from dbops.platform.kubernetes import CnpgStatus, CronJobRow, EventRow, KubernetesView, PodRow, StatefulSetRow
from dbops.platform.rds.data import DbInstance, DbSnapshot, RdsView

from .frozen import NOW, FrozenHub

MiB = 1024 * 1024


def unit_snapshot(ref, member: str, data: object) -> dict[str, Snapshot]:
    return {member: Snapshot(ref.environment, ref.name, member, ref.cluster.engine, Reachability.UP, NOW, 25.0, data=data, seq=5)}


# -- Redis: a sentinel deployment whose replica lags and one sentinel is down -----------------------

REDIS_CONFIG = """
[environments.production]
[environments.production.clusters.sessions]
engine = "redis"
members = [{ name = "r1", host = "10.2.0.1" }, { name = "r2", host = "10.2.0.2" }]
[environments.production.clusters.sessions.redis]
mode = "sentinel"
master_name = "sessions"
sentinels = [{ name = "s1", host = "10.2.0.8", port = 26379 }, { name = "s2", host = "10.2.0.9", port = 26379 }]
"""


def _info(**over: object) -> dict[str, str]:
    base: dict[str, object] = {
        "redis_version": "7.2.4", "role": "master", "used_memory": 61 * MiB, "maxmemory": 64 * MiB,
        "maxmemory_policy": "allkeys-lru", "mem_fragmentation_ratio": "1.3", "instantaneous_ops_per_sec": 4200,
        "keyspace_hits": 90_000, "keyspace_misses": 2_000, "evicted_keys": 120, "connected_clients": 48,
        "blocked_clients": 2, "rejected_connections": 0, "master_repl_offset": 50 * MiB, "rdb_last_bgsave_status": "ok",
        "rdb_changes_since_last_save": 310, "aof_enabled": 1, "aof_last_write_status": "ok", "db0": "keys=18211,expires=9000",
        "cmdstat_get": "calls=900000,usec=2700000,usec_per_call=3.00,rejected_calls=0,failed_calls=0",
        "cmdstat_hgetall": "calls=12000,usec=1800000,usec_per_call=150.00,rejected_calls=0,failed_calls=3",
    }
    base.update(over)
    return parse_info("# Server\r\n" + "".join(f"{k}:{v}\r\n" for k, v in base.items()))


def redis_hub() -> FrozenHub:
    config = parse(REDIS_CONFIG)
    ref = config.clusters()[0]
    slow = [[812, int(NOW) - 30, 48_000, ["HGETALL", "session:9f2"], "10.0.5.7:51234"],
            [811, int(NOW) - 400, 21_000, ["KEYS", "session:*"], "10.0.5.9:40022"]]
    master_info = _info(connected_slaves=1, slave0="ip=10.2.0.2,port=6379,state=online,offset=" + str(38 * MiB) + ",lag=1")
    first = node_data(_info(keyspace_hits=80_000, evicted_keys=100), None, [], [], None)
    master = node_data(master_info, first, slow, [["command", int(NOW) - 30, 48, 120]], 811)
    replica = node_data(_info(role="slave", master_host="10.2.0.1", master_port=6379, master_link_status="up",
                              slave_repl_offset=38 * MiB, used_memory=60 * MiB, evicted_keys=0), None, [], [], None)
    sentinel = SentinelData("10.2.0.1:6379", "master", 1, 0, 2, False, "NOQUORUM 1 usable Sentinels. Not enough available Sentinels to reach the specified quorum",
                            (("10.2.0.2:6379", "slave"),))
    nodes = (
        NodeResult("r1", "10.2.0.1:6379", "data", Reachability.UP, data=master),
        NodeResult("r2", "10.2.0.2:6379", "data", Reachability.UP, data=replica),
        NodeResult("s1", "10.2.0.8:26379", "sentinel", Reachability.UP, data=sentinel),
        NodeResult("s2", "10.2.0.9:26379", "sentinel", Reachability.DOWN, "connection refused at 10.2.0.9:26379"),
    )
    topology = RedisTopology("sentinel", nodes, sentinel_master="10.2.0.1:6379")
    return FrozenHub(config, {ref.key: unit_snapshot(ref, "nodes", topology)})


# -- Kafka: three brokers, one down; a consumer group falling behind -------------------------------

KAFKA_CONFIG = """
[environments.production]
[environments.production.clusters.events]
engine = "kafka"
members = [{ name = "k1", host = "10.3.0.1" }, { name = "k2", host = "10.3.0.2" }, { name = "k3", host = "10.3.0.3" }]
[environments.production.clusters.events.kafka]
thresholds = { lag_window = 4, lag_seconds_warn = 60, lag_seconds_crit = 600 }
"""


def _group_partition(topic: str, n: int, commits: list[int], ends: list[int], secs: float, owner: str | None) -> GroupPartition:
    window = tuple(LagSample(NOW - 2 * (len(ends) - 1 - i), c, e) for i, (c, e) in enumerate(zip(commits, ends)))
    return GroupPartition(topic, n, commits[-1], 0, ends[-1], secs, False, window, owner)


def kafka_hub() -> FrozenHub:
    config = parse(KAFKA_CONFIG)
    ref = config.clusters()[0]
    brokers = (Broker(1, "10.3.0.1:9092", "k1", True), Broker(2, "10.3.0.2:9092", "k2", True),
               Broker(3, "10.3.0.3:9092", "k3", False, error="connection refused", last_up_at=NOW - 90))
    orders = tuple(Partition("orders", n, leader=(n % 2) + 1, replicas=((n % 2) + 1, 3, ((n + 1) % 2) + 1), isr=((n % 2) + 1, ((n + 1) % 2) + 1))
                   for n in range(4))
    audit = tuple(Partition("audit", n, leader=1, replicas=(1, 2), isr=(1, 2)) for n in range(2))
    billing = Group("billing-writer", "Stable", "consumer", 1, (Member("m-1", "billing", "10.0.6.1", (("orders", 0), ("orders", 1))),),
                    (_group_partition("orders", 0, [100, 100, 100, 100], [180, 260, 340, 420], 140.0, "billing@10.0.6.1"),
                     _group_partition("orders", 1, [500, 520, 540, 560], [520, 540, 560, 580], 2.0, "billing@10.0.6.1")),
                    trend=(100, 180, 260, 340))
    search = Group("search-indexer", "Stable", "consumer", 2, (Member("m-2", "search", "10.0.6.2", (("audit", 0),)),),
                   (_group_partition("audit", 0, [10, 20, 30, 40], [10, 20, 30, 40], 0.0, "search@10.0.6.2"),), trend=(0, 0, 0, 0))
    data = KafkaData("Xk3-cluster", 1, brokers, (Topic("orders", False, orders, min_isr=2), Topic("audit", False, audit, min_isr=1)),
                     (billing, search), NOW, window=4, quorum=Quorum(1, 900, ((1, 900), (2, 900), (3, 850))))
    return FrozenHub(config, {ref.key: unit_snapshot(ref, "brokers", data)})


# -- Neo4j: two servers, a long transaction blocking another ---------------------------------------

NEO4J_CONFIG = """
[environments.production]
[environments.production.clusters.graph]
engine = "neo4j"
members = [{ name = "n1", host = "10.4.0.1" }, { name = "n2", host = "10.4.0.2" }]
"""


def _database(name: str, address: str, role: str, writer: bool, status: str = "online", message: str = "") -> Database:
    return Database(name, "system" if name == "system" else "standard", status, "online", message, role, writer, address,
                    "read-write", name == "neo4j", 4120, 0 if status == "online" else None)


def neo4j_hub() -> FrozenHub:
    config = parse(NEO4J_CONFIG)
    ref = config.clusters()[0]
    transactions = (
        Transaction("neo4j-transaction-811", "neo4j", "etl", "10.0.7.1:5000", "Running", 95_000.0, 80_000.0, 0.0, None, 512 * MiB, 14,
                    "MATCH (o:Order)-[:CONTAINS]->(l:Line) WHERE o.created < $cutoff SET l.archived = true"),
        Transaction("neo4j-transaction-812", "neo4j", "app", "10.0.7.2:5000", "Blocked by: [neo4j-transaction-811]", 4_200.0, 3.0,
                    4_100.0, None, 2 * MiB, 1, "MATCH (l:Line {id: $id}) SET l.qty = $qty"),
        Transaction("neo4j-transaction-815", "neo4j", "app", "10.0.7.3:5000", "Running", 40.0, 30.0, 0.0, None, MiB, 0,
                    "MATCH (c:Customer {id: $id}) RETURN c"),
    )
    servers = (Server("7f3a", "10.4.0.1:7687", "Enabled", "Available", ("neo4j", "system")),
               Server("91bc", "10.4.0.2:7687", "Enabled", "Available", ("neo4j", "system")))
    n1 = Neo4jMemberData("5.26.2", "enterprise",
                         (_database("neo4j", "10.4.0.1:7687", "primary", True), _database("neo4j", "10.4.0.2:7687", "secondary", False),
                          _database("system", "10.4.0.1:7687", "primary", True)),
                         transactions, servers, store_bytes={"neo4j": 12 * 1024 * MiB, "system": 40 * MiB})
    n2 = Neo4jMemberData("5.26.2", "enterprise", n1.databases, (), servers, store_bytes=n1.store_bytes)
    return FrozenHub(config, {ref.key: {
        "n1": Snapshot(ref.environment, ref.name, "n1", "neo4j", Reachability.UP, NOW, 30.0, data=n1, seq=5),
        "n2": Snapshot(ref.environment, ref.name, "n2", "neo4j", Reachability.UP, NOW, 28.0, data=n2, seq=5),
    }})


# -- Qdrant: three nodes, a dead replica being recovered by a transfer ------------------------------

QDRANT_CONFIG = """
[environments.production]
[environments.production.clusters.vectors]
engine = "qdrant"
members = [{ name = "q1", host = "10.5.0.1" }, { name = "q2", host = "10.5.0.2" }, { name = "q3", host = "10.5.0.3" }]
"""
PEERS = {"q1": 11, "q2": 22, "q3": 33}


def _raft(peer: int, leader: int = 11):
    return raft_from({
        "status": "enabled", "peer_id": peer, "peers": {str(p): {"uri": f"http://10.5.0.{p // 11}:6335/"} for p in PEERS.values()},
        "raft_info": {"term": 7, "commit": 4410, "pending_operations": 2 if peer == 33 else 0, "leader": leader,
                      "role": "Leader" if peer == leader else "Follower", "is_voter": True},
        "consensus_thread_status": {"consensus_thread_status": "working", "last_update": "2026-09-21T09:00:00Z"},
        "message_send_failures": {},
    })


def _qnode(name: str, states: dict[tuple[int, int], str], points: dict[int, int], latency: float,
           transfers: tuple[Transfer, ...] = ()) -> Node:
    me = PEERS[name]
    local = tuple(LocalShard(s, st, points.get(s, 0)) for (s, p), st in states.items() if p == me)
    remote = tuple(RemoteShard(s, p, st) for (s, p), st in states.items() if p != me)
    docs = NodeCollection("docs", "yellow", sum(points.values()), me, 2, local, remote, transfers)
    return Node(name, f"10.5.0.{me // 11}:6333", True, raft=_raft(me), clustered=True, ready=name != "q3", collections=(docs,),
                latency_ms=latency, latency_endpoint="POST /collections/{name}/points/query (200)", last_up_at=NOW)


def qdrant_hub() -> FrozenHub:
    config = parse(QDRANT_CONFIG)
    ref = config.clusters()[0]
    states = {(0, 11): "Active", (0, 22): "Active", (1, 22): "Active", (1, 33): "Dead"}
    transfer = (Transfer("docs", 1, 22, 33, False, "stream_records", "Transferring records (4800/12000)"),)
    data = QdrantData((_qnode("q1", states, {0: 24_000}, 12.0), _qnode("q2", states, {0: 24_000, 1: 12_000}, 380.0, transfer),
                       _qnode("q3", states, {1: 4_800}, 45.0)))
    return FrozenHub(config, {ref.key: unit_snapshot(ref, "nodes", data)})


# -- Kubernetes: a CloudNativePG cluster with a pod in CrashLoopBackOff -----------------------------

KUBERNETES_CONFIG = """
[environments.production]
[environments.production.clusters.orders-db]
engine = "postgres"
password = { env = "X" }
members = [{ name = "pg1", host = "10.0.0.1", role = "primary" }]
[environments.production.clusters.orders-db.kubernetes]
namespace = "orders"
selector = "app=orders-db"
cnpg_cluster = "orders-pg"
"""


def kubernetes_hub() -> FrozenHub:
    from .frozen import primary_data, snap

    config = parse(KUBERNETES_CONFIG)
    ref = config.clusters()[0]
    return FrozenHub(config, {ref.key: {"pg1": snap(ref, "pg1", primary_data())}})


def kubernetes_view(now: datetime) -> KubernetesView:
    """What the API would say of orders-db at `now`: pod 2 crash-looping, a backup CronJob whose
    last success is 30 h old (against the 26 h default), two Warning events."""
    hour = timedelta(hours=1)
    return KubernetesView(
        namespace="orders",
        pods=[PodRow("orders-pg-1", "Running", 1, 1, 0, "node-a", 86_400.0),
              PodRow("orders-pg-2", "Running", 0, 1, 14, "node-b", 86_400.0, "CrashLoopBackOff"),
              PodRow("orders-pg-3", "Running", 1, 1, 0, "node-c", 86_400.0)],
        statefulsets=[StatefulSetRow("orders-pgbouncer", 2, 2, 2, 172_800.0)],
        cronjobs=[CronJobRow("orders-backup", "0 2 * * *", False, now - 6 * hour, now - 30 * hour, 0)],
        events=[EventRow(40.0, "Pod", "orders-pg-2", "BackOff", "Back-off restarting failed container postgres", 14),
                EventRow(600.0, "Pod", "orders-pg-2", "Unhealthy", "Readiness probe failed: pg_isready: no response", 31)],
        cnpg=CnpgStatus("orders-pg", "Cluster in healthy state", "orders-pg-1", "orders-pg-1", 3, 2),
        taken_at=now.timestamp(),
    )


# -- AWS: an RDS primary with a lagging read replica and a day of snapshots -------------------------

RDS_CONFIG = """
[environments.production]
[environments.production.clusters.orders-db]
engine = "postgres"
password = { env = "X" }
members = [{ name = "pg1", host = "10.0.0.1", role = "primary" }]
[environments.production.clusters.orders-db.rds]
instance = "orders-prod"
"""


def rds_hub() -> FrozenHub:
    from .frozen import primary_data, snap

    config = parse(RDS_CONFIG)
    ref = config.clusters()[0]
    return FrozenHub(config, {ref.key: {"pg1": snap(ref, "pg1", primary_data())}})


def rds_view(now: datetime) -> RdsView:
    hour = timedelta(hours=1)
    primary = DbInstance("orders-prod", "available", "db.r6g.large", "postgres", "15.8", "eu-west-1a", True,
                         "orders-prod.abc.eu-west-1.rds.amazonaws.com:5432", None, ("orders-prod-ro",), 7, now - 0.1 * hour)
    replica = DbInstance("orders-prod-ro", "available", "db.r6g.large", "postgres", "15.8", "eu-west-1b", False,
                         "orders-prod-ro.abc.eu-west-1.rds.amazonaws.com:5432", "orders-prod", (), 0, None, lag_seconds=95.0)
    snapshots = tuple(DbSnapshot(f"rds:orders-prod-2026-09-{21 - i:02d}-02-10", "orders-prod", "automated", now - (12 + 24 * i) * hour,
                                 200, "available") for i in range(3))
    return RdsView(cluster="production/orders-db", instance="orders-prod", region="eu-west-1", instances=(primary, replica),
                   snapshots=(DbSnapshot("before-upgrade", "orders-prod", "manual", None, 200, "creating"), *snapshots),
                   earliest_restorable=now - 7 * 24 * hour, latest_restorable=now - 0.1 * hour,
                   findings=(Finding(Severity.WARN, "read replica orders-prod-ro lags 95s"),), error=None, read_at=now)
