"""How a Redis deployment is judged from one refresh: the product brief's thresholds (memory
> 90%, any eviction, hit rate < 95%), replication, persistence, sentinels and cluster state,
from INFO text as the servers write it."""

from __future__ import annotations

import time

from dbops.config import parse
from dbops.engines.redis.assess import assess_cluster
from dbops.engines.redis.data import NodeResult, RedisTopology, SentinelData, node_data, parse_info
from dbops.engines.redis.topology import judge as judge_view
from dbops.engines.redis.topology import parse_nodes
from dbops.model import Reachability, Severity, Snapshot
from dbops.recording import state_changes

REF = parse('[environments.e.clusters.cache]\nengine = "redis"\nmembers = [{ name = "r1", host = "10.0.0.1" }]\n').clusters()[0]


def info(**over: object) -> str:
    base = {
        "redis_version": "7.0.15", "role": "master", "used_memory": 10 * 2**20, "maxmemory": 100 * 2**20,
        "maxmemory_policy": "allkeys-lru", "mem_fragmentation_ratio": "1.1", "instantaneous_ops_per_sec": 50,
        "keyspace_hits": 1000, "keyspace_misses": 0, "evicted_keys": 0, "connected_clients": 5, "blocked_clients": 0,
        "rejected_connections": 0, "master_repl_offset": 1000, "rdb_last_bgsave_status": "ok",
        "rdb_changes_since_last_save": 3, "aof_enabled": 1, "aof_last_write_status": "ok",
    }
    base.update(over)
    return "# Server\r\n" + "".join(f"{k}:{v}\r\n" for k, v in base.items())


def data(before: str, after: str | None = None):
    first = node_data(parse_info(before), None, [], [], None)
    return node_data(parse_info(after), first, [], [], -1) if after is not None else first


def judge(*nodes: NodeResult, mode: str = "standalone", sentinel_master: str | None = None, cluster=None):
    unit = Snapshot("e", "cache", "nodes", "redis", Reachability.UP, time.time(),
                    data=RedisTopology(mode, nodes, cluster=cluster, sentinel_master=sentinel_master))
    return assess_cluster(REF, {"nodes": unit})


def up(name: str, d: object, address: str = "10.0.0.1:6379", kind: str = "data") -> NodeResult:
    return NodeResult(name, address, kind, Reachability.UP, data=d)


def messages(ch, name: str) -> list[str]:
    m = next(m for m in ch.members if m.name == name)
    return [f"{x.severity.name} {x.message}" for x in m.metrics if x.severity is not Severity.OK]


def test_a_healthy_master_is_ok() -> None:
    ch = judge(up("r1", data(info(), info(keyspace_hits=1200))))
    assert ch.severity is Severity.OK and messages(ch, "r1") == []


def test_memory_above_90_percent_warns_above_98_is_critical() -> None:
    assert messages(judge(up("r1", data(info(used_memory=91 * 2**20)))), "r1") == \
        ["WARN memory 91.0% of maxmemory (91.0 MiB of 100.0 MiB)"]
    assert messages(judge(up("r1", data(info(used_memory=99 * 2**20)))), "r1")[0].startswith("CRIT memory 99.0%")
    assert messages(judge(up("r1", data(info(used_memory=90 * 2**20)))), "r1") == []  # equal is fine


def test_any_eviction_since_the_last_refresh_warns() -> None:
    ch = judge(up("r1", data(info(evicted_keys=10), info(evicted_keys=13))))
    assert messages(ch, "r1") == ["WARN 3 keys evicted since the last refresh (allkeys-lru)"]
    assert messages(judge(up("r1", data(info(evicted_keys=10), info(evicted_keys=10)))), "r1") == []


def test_hit_rate_below_95_percent_warns_only_over_enough_lookups() -> None:
    ch = judge(up("r1", data(info(), info(keyspace_hits=1090, keyspace_misses=10))))
    assert messages(ch, "r1") == ["WARN hit rate 90.0% over 100 lookups"]
    # Nine hits of ten is noise, not a cache problem.
    assert messages(judge(up("r1", data(info(), info(keyspace_hits=1009, keyspace_misses=1)))), "r1") == []


def test_persistence_failures_are_critical() -> None:
    ch = judge(up("r1", data(info(rdb_last_bgsave_status="err", aof_last_write_status="err"))))
    assert messages(ch, "r1") == ["CRIT last RDB save failed (err)", "CRIT AOF writes fail (err)"]


def test_replica_lag_comes_from_the_masters_view() -> None:
    master = info(master_repl_offset=100 * 2**20, connected_slaves=1,
                  slave0=f"ip=10.0.0.2,port=6379,state=online,offset={100 * 2**20 - 2 * 2**20},lag=1")
    replica = info(role="slave", master_host="10.0.0.1", master_port=6379, master_link_status="up",
                   master_last_io_seconds_ago=1, slave_repl_offset=98 * 2**20)
    ch = judge(up("r1", data(master)), up("r2", data(replica), "10.0.0.2:6379"))
    r2 = next(m for m in ch.members if m.name == "r2")
    assert (r2.role, r2.lag_bytes, r2.lag_seconds) == ("replica", 2 * 2**20, 1.0)
    assert messages(ch, "r1") == ["WARN replica 10.0.0.2:6379 online, 2.0 MiB behind, last ack 1s ago"]


def test_a_replica_whose_link_is_down_is_critical() -> None:
    replica = info(role="slave", master_host="10.0.0.1", master_port=6379, master_link_status="down")
    assert messages(judge(up("r2", data(replica))), "r2") == ["CRIT replication from 10.0.0.1:6379: link down"]


def test_an_unreachable_node_keeps_its_last_role_and_says_why() -> None:
    last = data(info(role="slave", master_host="10.0.0.1", master_port=6379, master_link_status="up"))
    node = NodeResult("r2", "10.0.0.2:6379", "data", Reachability.TIMEOUT, "no answer from 10.0.0.2:6379 within 1.2s",
                      last_good=last, last_good_at=time.time() - 5)
    ch = judge(node)
    r2 = ch.members[0]
    assert (r2.role, r2.severity) == ("replica", Severity.CRIT)
    assert messages(ch, "r2") == ["CRIT TIMEOUT: no answer from 10.0.0.2:6379 within 1.2s"]


def test_sentinels_without_quorum_and_a_master_that_is_not_one() -> None:
    ok = SentinelData("10.0.0.1:6379", "master", 1, 2, 2, True, "OK")
    down = NodeResult("s2", "10.0.0.9:26379", "sentinel", Reachability.DOWN, "connection refused at 10.0.0.9:26379")
    down3 = NodeResult("s3", "10.0.0.8:26379", "sentinel", Reachability.DOWN, "connection refused at 10.0.0.8:26379")
    replica = info(role="slave", master_host="10.0.0.2", master_port=6379, master_link_status="up")
    ch = judge(up("s1", ok, "10.0.0.7:26379", "sentinel"), down, down3, up("r1", data(replica)),
               mode="sentinel", sentinel_master="10.0.0.1:6379")
    problems = [m.message for m in ch.metrics if m.severity is not Severity.OK]
    assert "only 1 of 3 sentinels answer; quorum is 2" in problems
    assert "sentinels name 10.0.0.1:6379 as master but it is a slave" in problems
    assert ch.severity is Severity.CRIT


def timeline(before, after) -> list[str]:
    return [e.text for e in state_changes(before, after, 1.0)]


def test_the_timeline_tells_which_master_a_replica_and_the_sentinels_follow() -> None:
    def story(master: str):
        sentinel = SentinelData(master, "master", 1, 2, 2, True, "OK")
        replica = info(role="slave", master_host=master.split(":")[0], master_port=6379, master_link_status="up")
        return judge(up("s1", sentinel, "10.0.0.7:26379", "sentinel"), up("s2", sentinel, "10.0.0.8:26379", "sentinel"),
                     up("r3", data(replica), "10.0.0.3:6379"), mode="sentinel", sentinel_master=master)

    before, after = story("10.0.0.1:6379"), story("10.0.0.2:6379")
    told = timeline(before, after)
    assert "r3 replicates 10.0.0.1:6379 → 10.0.0.2:6379" in told
    assert "sentinels' master 10.0.0.1:6379 → 10.0.0.2:6379" in told
    assert timeline(after, story("10.0.0.2:6379")) == []  # the same again says nothing


def test_the_timeline_tells_slot_coverage_as_it_is_lost_and_rebuilt_step_by_step() -> None:
    a, b, c = "a" * 40, "b" * 40, "c" * 40

    def with_slots(**slots: str):
        def cluster_nodes(me: str) -> str:  # CLUSTER NODES as node `me` writes it
            return "\n".join(f"{nid} 127.0.0.1:{port}@17{port % 1000:03d} {'myself,' if nid == me else ''}master - 0 0 1 "
                             f"connected {slots.get(nid[0], '')}".rstrip() for nid, port in ((a, 7001), (b, 7002), (c, 7003)))

        view = judge_view({n: parse_nodes(cluster_nodes(n)) for n in (a, b, c)})
        node = info(cluster_enabled=1)
        return judge(up("m1", data(node), "127.0.0.1:7001"), up("m2", data(node), "127.0.0.1:7002"),
                     up("m3", data(node), "127.0.0.1:7003"), mode="cluster", cluster=view)

    whole = with_slots(a="0-5460", b="5461-10922", c="10923-16383")
    lost = with_slots(a="0-5460", b="5461-10922")
    half = with_slots(a="0-5460", b="5461-10922", c="10923-13000")
    told = timeline(whole, lost)
    assert "slots covered 16384 of 16384 → 10923 of 16384" in told
    assert any(t.startswith("coverage CRIT: 5461 of 16384 slots have no owner") for t in told), told
    # Half the rebuild: still CRIT, so no severity changed; the coverage did, and says so.
    assert timeline(lost, half) == ["slots covered 10923 of 16384 → 13001 of 16384"]
    told = timeline(half, whole)
    assert "slots covered 13001 of 16384 → 16384 of 16384" in told and "coverage OK again" in told
