"""The Redis pane's collector, cluster-fix and cluster-reshard against the real six-node Redis 7
Cluster of the sandbox: broken states built the way Redis' own cluster tests build them (SETSLOT
MIGRATING/IMPORTING with keys on both sides, DELSLOTS everywhere, a master stopped or killed),
seen by one refresh, repaired with every key and value kept."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.cluster import ClusterNode, RedisCluster

from dbops import sandbox
from dbops.config import ClusterRef, load
from dbops.engines.redis.topology import key_slot, parse_nodes
from dbops.model import ClusterHealth, Reachability, Severity
from dbops.poller import poll_once
from dbops.recording import state_changes
from dbops.sandbox.redis import RedisSandbox

from .conftest import running_sandbox
from .crash import resume

MASTERS = ("c1", "c2", "c3")
TAGS = ("open", "rollback", "uncovered", "conflict")


@dataclass
class Cluster:
    state_dir: Path
    config: Path
    rs: RedisSandbox

    def ref(self, name: str = "sandbox-redis") -> ClusterRef:
        return next(r for r in load(self.config).clusters() if r.name == name)

    def cli(self, node: str, *args: str) -> str:
        return self.rs.cli(node, *args)

    def node_id(self, node: str) -> str:
        return self.cli(node, "CLUSTER", "MYID").strip()

    def owner(self, slot: int) -> str:
        """The master that claims `slot` in its own CLUSTER NODES line."""
        for n in self.rs.state["cluster"]["nodes"]:
            if self.rs.pid(n["name"]) is None:
                continue
            me = next(x for x in parse_nodes(self.cli(n["name"], "CLUSTER", "NODES")) if x.myself)
            if me.is_master and any(a <= slot <= b for a, b in me.slots):
                return n["name"]
        raise AssertionError(f"no master claims slot {slot}")

    def client(self) -> RedisCluster:
        live = next(n for n in MASTERS + ("c4", "c5", "c6") if self.rs.pid(n) is not None)
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", self.rs.port(live))], password=self.rs.password)

    def data(self) -> dict[bytes, bytes]:
        """Every key and its value, read through a cluster client (the cluster must be healthy)."""
        c = self.client()
        try:
            keys = list(c.scan_iter(count=1000, target_nodes=RedisCluster.PRIMARIES))
            pipe = c.pipeline()
            for k in keys:
                pipe.get(k)
            return dict(zip(keys, pipe.execute()))
        finally:
            c.close()

    def dbops(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**os.environ, "DBOPS_STATE_DIR": str(self.state_dir)})


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_sandbox(("s3", "redis"), "dbops-it-rcluster-") as root:
        h = Cluster(root.parent, sandbox.config_path(root=root), RedisSandbox(root))
        c = h.client()
        pipe = c.pipeline()
        for i in range(20000):
            pipe.set(f"t:{i}", f"value-{i}-" + "x" * (i % 50))
        # Ten keys in each slot a test breaks (a hash tag puts them in one slot).
        for tag in TAGS:
            for i in range(10):
                pipe.set(f"{{{tag}}}:{i}", f"{tag}-{i}")
        pipe.execute()
        c.close()
        yield h


def health(h: Cluster, name: str = "sandbox-redis") -> ClusterHealth:
    """One refresh, as the pane and `dbops check` do it."""
    return asyncio.run(poll_once([h.ref(name)]))[0]


def metric(ch: ClusterHealth, name: str) -> list[str]:
    return [f"{m.severity.name} {m.message}" for m in ch.metrics if m.name == name]


def wait_healthy(h: Cluster, timeout: float = 30.0) -> ClusterHealth:
    """Refresh until the cluster judges OK (gossip settles in a few PONGs) or give up: the
    caller asserts on what it returned."""
    deadline = time.monotonic() + timeout
    while True:
        ch = health(h)
        if ch.severity is Severity.OK or time.monotonic() > deadline:
            return ch
        time.sleep(0.2)


def slot_with_keys(h: Cluster, tag: str) -> int:
    slot = key_slot(f"{{{tag}}}")
    assert int(h.cli(h.owner(slot), "CLUSTER", "COUNTKEYSINSLOT", str(slot))) >= 10
    return slot


# ---------------------------------------------------------------------------------------------
# The pane's view of a healthy cluster and of the Sentinel group


def test_one_refresh_sees_every_node_and_the_whole_slot_map(cluster: Cluster) -> None:
    ch = wait_healthy(cluster)
    assert ch.severity is Severity.OK, ch.problems
    roles = {m.name: m.role for m in ch.members}
    assert sorted(roles) == ["c1", "c2", "c3", "c4", "c5", "c6"]
    assert sorted(roles.values()) == ["primary"] * 3 + ["replica"] * 3
    assert metric(ch, "coverage") == ["OK all 16384 slots covered"]
    assert metric(ch, "cluster_state") == ["OK cluster_state:ok on every node"]
    c1 = next(m for m in ch.members if m.name == "c1").snapshot.data
    assert c1.maxmemory == 64 * 1024 * 1024 and c1.keys > 0 and c1.aof_enabled and c1.rdb_last_bgsave_status == "ok"
    assert any(c.command == "set" for c in c1.top_commands)


def test_sentinel_group_shows_master_quorum_and_replica(cluster: Cluster) -> None:
    ch = health(cluster, "sandbox-sentinel")
    assert ch.severity is Severity.OK, ch.problems
    by = {m.name: m for m in ch.members}
    assert [by[s].role for s in ("s1", "s2", "s3")] == ["sentinel"] * 3
    assert all(by[s].snapshot.data.ckquorum_ok for s in ("s1", "s2", "s3"))
    assert by["r1"].role == "primary" and by["r2"].role == "replica" and by["r2"].lag_bytes is not None
    assert metric(ch, "sentinel_master") == [f"OK master sandbox-sentinel at 127.0.0.1:{cluster.rs.port('r1')}"]


def test_sentinel_failover_moves_the_master_and_a_write_lands_on_the_new_one(cluster: Cluster) -> None:
    h = cluster
    h.rs.wait_sentinels_ready()
    before = health(h, "sandbox-sentinel")
    old = next(m.name for m in before.members if m.role == "primary")
    r = h.dbops("runbook", "run", "redis.sentinel-failover", "--cluster", "sandbox-sentinel", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    new = "r2" if old == "r1" else "r1"
    # The runbook moves on once a quorum (2 of 3) names the new master; the third sentinel may
    # take another moment (CI saw "2 name r2" as often as "3 name r2").
    named = re.search(rf"(\d) name {new} \(127\.0\.0\.1:{h.rs.port(new)}\), which answers ROLE master", r.stdout)
    assert named is not None and int(named.group(1)) >= 2, r.stdout
    probe = r.stdout.split("write probe ")[1].split()[0]
    assert probe.startswith("dbops:failover-probe:") and 0 < int(h.cli(new, "PTTL", probe)) <= 60000
    deadline = time.monotonic() + 30
    while True:
        named_by = [h.cli(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "sandbox-sentinel").splitlines()[1] for s in ("s1", "s2", "s3")]
        if named_by == [str(h.rs.port(new))] * 3 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert named_by == [str(h.rs.port(new))] * 3
    deadline = time.monotonic() + 30
    while True:
        ch = health(h, "sandbox-sentinel")
        roles = {m.name: m.role for m in ch.members}
        if (roles.get(new), roles.get(old)) == ("primary", "replica") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert (roles[new], roles[old]) == ("primary", "replica"), ch.problems
    assert metric(ch, "sentinel_master") == [f"OK master sandbox-sentinel at 127.0.0.1:{h.rs.port(new)}"]
    # The timeline's account of the two judgements: the sentinels' new master and both roles.
    told = [e.text for e in state_changes(before, ch, time.time())]
    was, now = f"127.0.0.1:{h.rs.port(old)}", f"127.0.0.1:{h.rs.port(new)}"
    assert f"sentinels' master {was} → {now}" in told, told
    assert f"{old} role primary → replica" in told and f"{new} role replica → primary" in told, told


def test_sentinel_failover_is_refused_without_a_replica_that_can_take_over(cluster: Cluster) -> None:
    h = cluster
    replica = next(m.name for m in health(h, "sandbox-sentinel").members if m.role == "replica")
    assert h.cli(replica, "CONFIG", "SET", "replica-priority", "0") == "OK"
    try:
        deadline = time.monotonic() + 30  # the sentinels read INFO from replicas every 10 s
        while True:
            r = h.dbops("runbook", "plan", "redis.sentinel-failover", "--cluster", "sandbox-sentinel")
            if "replica-priority 0" in r.stdout or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert r.returncode != 0
        assert f"no replica can take over: {replica} (127.0.0.1:{h.rs.port(replica)}) has replica-priority 0" in r.stdout
    finally:
        h.cli(replica, "CONFIG", "SET", "replica-priority", "100")


def test_backup_then_restore_rdb_brings_the_sentinel_master_back_to_the_backup(cluster: Cluster) -> None:
    import redis as redis_py

    h = cluster
    master = next(m.name for m in health(h, "sandbox-sentinel").members if m.role == "primary")
    c = redis_py.Redis(port=h.rs.port(master), password=h.rs.password)
    pipe = c.pipeline()
    for i in range(500):
        pipe.set(f"b:{i}", f"backed-up-{i}")
    pipe.execute()
    r = h.dbops("runbook", "run", "redis.backup", "--cluster", "sandbox-sentinel", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "streamed back, SHA-256 matches the manifest" in r.stdout
    backed_up = {k: c.get(k) for k in c.scan_iter(count=1000)}
    c.delete("b:1")
    c.set("after-backup", "x")

    r = h.dbops("runbook", "run", "redis.restore-rdb", "--cluster", "sandbox-sentinel", "--yes")
    assert r.returncode != 0 and "needs --confirm sandbox-sentinel (it is destructive); refusing" in r.stderr  # stopping the master
    r = h.dbops("runbook", "run", "redis.restore-rdb", "--cluster", "sandbox-sentinel", "--yes", "--confirm", "sandbox-sentinel")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(backed_up)} keys, as the manifest says" in r.stdout
    c = redis_py.Redis(port=h.rs.port(master), password=h.rs.password)
    assert {k: c.get(k) for k in c.scan_iter(count=1000)} == backed_up
    assert c.info("replication")["role"] == "master"  # the sentinels did not fail it over meanwhile
    assert c.config_get("appendonly") == {"appendonly": "yes"}
    for s in ("s1", "s2", "s3"):
        fields = h.cli(s, "SENTINEL", "MASTER", "sandbox-sentinel").splitlines()
        assert dict(zip(fields[::2], fields[1::2]))["down-after-milliseconds"] == "2000"  # released as it was


def test_cluster_backup_writes_one_verified_snapshot_per_master(cluster: Cluster) -> None:
    h = cluster
    r = h.dbops("runbook", "run", "redis.backup", "--cluster", "sandbox-redis", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    counts = [int(x.split(" keys)")[0].split("(")[-1]) for x in r.stdout.splitlines() if "SHA-256 matches the manifest" in x]
    assert len(counts) == 3 and sum(counts) == sum(int(h.cli(n, "DBSIZE")) for n in MASTERS)


# The least an ACL user needs for the pane (README: "A read-only ACL user for the Redis pane").
PANE_ACL = ["+ping", "+info", "+slowlog|get", "+latency|latest", "+cluster|info", "+cluster|nodes", "+client|setname"]


def acl_config(h: Cluster, tmp_path: Path, password_env: str) -> Path:
    sa = h.rs.state["standalone"]
    members = ", ".join(f'{{ name = "{n["name"]}", host = "127.0.0.1", port = {n["port"]} }}' for n in [sa["primary"], *sa["replicas"]])
    sentinels = ", ".join(f'{{ name = "{n["name"]}", host = "127.0.0.1", port = {n["port"]} }}' for n in sa["sentinels"])
    path = tmp_path / "acl.toml"
    path.write_text(
        "[environments.staging.clusters.cache]\n"
        'engine = "redis"\n'
        f'password = {{ env = "{password_env}" }}\n'
        f"members = [{members}]\n"
        "[environments.staging.clusters.cache.redis]\n"
        'mode = "sentinel"\nmaster_name = "sandbox-sentinel"\nusername = "pane"\n'
        'sentinel_password = { env = "DBOPS_IT_SENTINEL_PW" }\n'
        f"sentinels = [{sentinels}]\n")
    return path


def test_an_acl_user_with_only_the_pane_commands_sees_everything(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = cluster
    for n in ("r1", "r2"):
        assert h.cli(n, "ACL", "SETUSER", "pane", "reset", "on", ">pane-secret-1", *PANE_ACL) == "OK"
    monkeypatch.setenv("DBOPS_IT_PANE_PW", "pane-secret-1")
    monkeypatch.setenv("DBOPS_IT_SENTINEL_PW", h.rs.password)
    ref = load(acl_config(h, tmp_path, "DBOPS_IT_PANE_PW")).clusters()[0]
    ch = asyncio.run(poll_once([ref]))[0]
    assert ch.severity is Severity.OK, ch.problems
    assert sorted(m.role for m in ch.members) == ["primary", "replica", "sentinel", "sentinel", "sentinel"]
    primary = next(m for m in ch.members if m.role == "primary").snapshot.data
    assert primary.used_memory and primary.top_commands  # INFO reached it


def test_a_wrong_password_is_an_auth_state_that_never_shows_the_password(cluster: Cluster, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    h = cluster
    monkeypatch.setenv("DBOPS_IT_PANE_PW", "not-the-password-7")
    monkeypatch.setenv("DBOPS_IT_SENTINEL_PW", h.rs.password)
    ref = load(acl_config(h, tmp_path, "DBOPS_IT_PANE_PW")).clusters()[0]
    ch = asyncio.run(poll_once([ref]))[0]
    data_nodes = [m for m in ch.members if m.name in ("r1", "r2")]
    assert [m.snapshot.reachability for m in data_nodes] == [Reachability.AUTH, Reachability.AUTH]
    assert all("rejected the credentials" in (m.snapshot.error or "") for m in data_nodes)
    assert "not-the-password-7" not in repr(ch)
    assert [m.snapshot.reachability for m in ch.members if m.role == "sentinel"] == [Reachability.UP] * 3


def test_a_refresh_sends_no_keyspace_walk(cluster: Cluster) -> None:
    before = {n: cluster.cli(n, "INFO", "commandstats") for n in MASTERS}
    health(cluster)
    for n in MASTERS:
        after = cluster.cli(n, "INFO", "commandstats")
        for cmd in ("keys", "scan", "monitor"):
            assert before[n].count(f"cmdstat_{cmd}:") == after.count(f"cmdstat_{cmd}:") and \
                   _calls(before[n], cmd) == _calls(after, cmd), cmd


def _calls(text: str, cmd: str) -> int:
    for line in text.splitlines():
        if line.startswith(f"cmdstat_{cmd}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


# ---------------------------------------------------------------------------------------------
# Broken states, seen and repaired


def test_open_slot_with_keys_on_both_sides_is_finished_towards_the_importing_node(cluster: Cluster) -> None:
    h = cluster
    before = h.data()
    slot = slot_with_keys(h, "open")
    src = h.owner(slot)
    dst = next(m for m in MASTERS if m != src)
    keys = h.cli(src, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
    assert h.cli(dst, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", h.node_id(src)) == "OK"
    assert h.cli(src, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", h.node_id(dst)) == "OK"
    half = keys[: len(keys) // 2]
    assert h.cli(src, "MIGRATE", "127.0.0.1", str(h.rs.port(dst)), "", "0", "5000", "AUTH", h.rs.password, "KEYS", *half) == "OK"

    seen = metric(health(h), "open_slots")
    assert seen and seen[0].startswith("WARN 1 open slot(s)") and f"{slot} ({src} migrating to {dst}; {dst} importing from {src})" in seen[0]

    r = h.dbops("runbook", "run", "redis.cluster-fix", "--cluster", "sandbox-redis", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"# slot {slot}: " in r.stdout and f"finish the migration: {src} -> {dst}" in r.stdout
    assert "Cover slots without an owner: nothing to do" in r.stdout
    assert wait_healthy(h).severity is Severity.OK
    assert h.owner(slot) == dst
    assert h.data() == before


def test_slot_marked_on_one_side_only_is_rolled_back_to_its_owner(cluster: Cluster) -> None:
    h = cluster
    before = h.data()
    slot = slot_with_keys(h, "rollback")
    src = h.owner(slot)
    dst = next(m for m in MASTERS if m != src)
    keys = h.cli(src, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
    h.cli(dst, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", h.node_id(src))
    h.cli(src, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", h.node_id(dst))
    h.cli(src, "MIGRATE", "127.0.0.1", str(h.rs.port(dst)), "", "0", "5000", "AUTH", h.rs.password, "KEYS", keys[0])
    # The owner forgets it was migrating: only the importing side is still marked.
    assert h.cli(src, "CLUSTER", "SETSLOT", str(slot), "STABLE") == "OK"
    assert f"{slot} ({dst} importing from {src})" in metric(health(h), "open_slots")[0]

    r = h.dbops("runbook", "run", "redis.cluster-fix", "--cluster", "sandbox-redis", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"roll back to the owner {src} (keys from {dst})" in r.stdout
    assert wait_healthy(h).severity is Severity.OK
    assert h.owner(slot) == src
    assert h.data() == before


def test_slot_with_keys_but_no_owner_goes_to_the_node_holding_them(cluster: Cluster) -> None:
    h = cluster
    before = h.data()
    slot = slot_with_keys(h, "uncovered")
    holder = h.owner(slot)
    empty_slot = next(s for s in range(16384) if int(h.cli(h.owner(s), "CLUSTER", "COUNTKEYSINSLOT", str(s))) == 0)
    for n in ("c1", "c2", "c3", "c4", "c5", "c6"):
        assert h.cli(n, "CLUSTER", "DELSLOTS", str(slot), str(empty_slot)) == "OK"

    ch = health(h)
    assert ch.severity is Severity.CRIT
    assert any(m.startswith("CRIT 2 of 16384 slots have no owner") for m in metric(ch, "coverage")), ch.problems
    assert any("cluster_state:fail" in m for m in metric(ch, "cluster_state"))

    r = h.dbops("runbook", "run", "redis.cluster-fix", "--cluster", "sandbox-redis", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"# slot {slot}: {holder} " in r.stdout and f"give it to {holder} (holds its keys)" in r.stdout
    assert f"# slot {empty_slot}: no keys: give it to " in r.stdout and "(no keys anywhere: fewest slots)" in r.stdout
    assert wait_healthy(h).severity is Severity.OK
    assert h.owner(slot) == holder
    assert h.data() == before


def test_differing_values_on_both_sides_are_never_overwritten_without_the_flag(cluster: Cluster) -> None:
    h = cluster
    slot = slot_with_keys(h, "conflict")
    src = h.owner(slot)
    dst = next(m for m in MASTERS if m != src)
    key = h.cli(src, "CLUSTER", "GETKEYSINSLOT", str(slot), "1").split()[0]
    source_value = h.cli(src, "GET", key)
    h.cli(dst, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", h.node_id(src))
    h.cli(src, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", h.node_id(dst))
    # Another copy of the key, with another value, already on the importing side.
    r = subprocess.run([str(h.rs.bindir / "redis-cli"), "-p", str(h.rs.port(dst))], input=f"ASKING\nSET {key} other\n",
                       capture_output=True, text=True, env={**os.environ, "REDISCLI_AUTH": h.rs.password})
    assert r.stdout.split() == ["OK", "OK"], r.stdout + r.stderr

    r = h.dbops("runbook", "run", "redis.cluster-fix", "--cluster", "sandbox-redis", "--yes")
    assert r.returncode != 0
    assert "exist on both" in r.stdout and key in r.stdout and "Nothing was overwritten" in r.stdout, r.stdout
    assert h.cli(src, "GET", key) == source_value  # the source still holds its value

    run_id = r.stdout.split("run id: ")[1].split()[0]
    r = h.dbops("runbook", "resume", run_id, "--yes")
    assert r.returncode != 0 and "Nothing was overwritten" in r.stdout
    r = h.dbops("runbook", "run", "redis.cluster-fix", "--cluster", "sandbox-redis", "--yes", "--param", "replace_differing=true",
                "--param", "expect_writes=true")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 differing keys replaced as asked" in r.stdout
    assert wait_healthy(h).severity is Severity.OK
    c = h.client()
    assert c.get(key).decode() == source_value
    c.close()


# ---------------------------------------------------------------------------------------------
# Reshard, and kill -9 in the middle of one


def test_reshard_moves_the_given_slots_with_every_key(cluster: Cluster) -> None:
    h = cluster
    before = h.data()
    src, dst = "c1", "c3"
    r = h.dbops("runbook", "run", "redis.cluster-reshard", "--cluster", "sandbox-redis", "--param", "slots=300",
                "--param", f"source={src}", "--param", f"target={dst}", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "300 slots" in r.stdout and "moved " in r.stdout
    assert wait_healthy(h).severity is Severity.OK
    assert h.data() == before


def test_slots_moved_back_and_forth_at_once_stay_served(cluster: Cluster) -> None:
    """A target that claims slots before it hears of the source's newer epoch loses them again
    to the source's next PONG, and once the source lets go no node serves them: the mover must
    give the target the greater epoch first, whatever gossip has delivered so far."""
    from dbops.engines.redis.session import ClusterSession

    h = cluster
    before = h.data()

    async def back_and_forth() -> None:
        for _ in range(3):
            for src, dst in (("c2", "c3"), ("c3", "c2")):
                s = ClusterSession(h.ref())
                try:
                    view = await s.refresh()
                    a, b = s.resolve(src), s.resolve(dst)
                    slots = [sl for sl, o in enumerate(view.owners) if o == a][-1000:]
                    await s.mover().move(a, b, slots)
                finally:
                    await s.close()

    asyncio.run(back_and_forth())
    ch = wait_healthy(h)
    assert ch.severity is Severity.OK, ch.problems
    assert h.data() == before


def test_a_target_outranks_a_source_that_has_just_bumped_its_epoch(cluster: Cluster) -> None:
    """BUMPEPOCH on the target right after the source's own bump, before gossip carried it: the
    target still believes it holds the greatest epoch and does not bump (or bumps too little).
    Mover.outrank must read the epochs from both nodes and wait for the target to be ahead."""
    from dbops.engines.redis.session import ClusterSession

    h = cluster

    def epoch(n: str) -> int:
        return int(next(x for x in h.cli(n, "CLUSTER", "INFO").splitlines() if x.startswith("cluster_my_epoch:")).split(":")[1])

    async def race() -> list[tuple[int, int]]:
        s = ClusterSession(h.ref())
        try:
            await s.refresh()
            mover = s.mover()
            out = []
            for src, dst in (("c2", "c3"), ("c3", "c2")) * 3:
                a, b = s.resolve(src), s.resolve(dst)
                await mover.endpoints[a].client.execute_command("CLUSTER", "BUMPEPOCH")
                await mover.outrank(b, [a])
                out.append((epoch(dst), epoch(src)))
            return out
        finally:
            await s.close()

    pairs = asyncio.run(race())
    assert all(target > source for target, source in pairs), pairs


def test_reshard_refuses_slots_the_source_does_not_own(cluster: Cluster) -> None:
    h = cluster
    slot = next(s for s in range(16384) if h.owner(s) == "c2")
    r = h.dbops("runbook", "plan", "redis.cluster-reshard", "--cluster", "sandbox-redis", "--param", f"slots={slot}-{slot}",
                "--param", "source=c1", "--param", "target=c3")
    assert r.returncode != 0
    assert f"1 of the slots are not c1's: {slot}" in r.stdout


def test_kill_9_in_the_middle_of_a_reshard_then_resume_loses_no_key(cluster: Cluster) -> None:
    h = cluster
    before = h.data()
    runs = h.state_dir / "runs"
    old = set(runs.glob("*.slots.log")) if runs.exists() else set()
    env = {**os.environ, "DBOPS_STATE_DIR": str(h.state_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "dbops.cli", "--config", str(h.config), "runbook", "run",
                             "redis.cluster-reshard", "--cluster", "sandbox-redis", "--param", "slots=1200",
                             "--param", "source=c2", "--param", "target=c1", "--param", "throttle=400", "--yes"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, stdin=subprocess.DEVNULL)
    log = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        new = set(runs.glob("*.slots.log")) - old if runs.exists() else set()
        if new:
            log = next(iter(new))
            if '"open"' in log.read_text():
                time.sleep(0.5)  # keys are moving now (at most 400 a second)
                break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    out = proc.communicate()[0]
    assert log is not None, out
    run_id = log.name.split(".")[0]
    events = [json.loads(x)["event"] for x in log.read_text().splitlines() if x.strip().endswith("}")]
    assert events.count("open") > events.count("closed"), f"the kill did not land mid-migration: {events} {out}"
    assert metric(health(h), "open_slots"), "a slot should be left open by the kill"

    r = resume(h.config, h.state_dir, run_id, "--yes")
    assert "slots were already at their target" in r.stdout or "moved " in r.stdout, r.stdout
    assert wait_healthy(h).severity is Severity.OK
    assert h.data() == before


def slot_counts(h: Cluster) -> dict[str, int]:
    out = {}
    for n in MASTERS:
        me = next(x for x in parse_nodes(h.cli(n, "CLUSTER", "NODES")) if x.myself)
        out[n] = me.slot_count
    return out


def test_rebalance_plans_every_move_then_evens_out_the_masters(cluster: Cluster) -> None:
    h = cluster
    before = h.data()
    counts = slot_counts(h)
    assert max(counts.values()) - min(counts.values()) > 1000, counts  # the reshards above left it uneven
    plan = h.dbops("runbook", "plan", "redis.cluster-rebalance", "--cluster", "sandbox-redis")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "moves in" in plan.stdout and " -> " in plan.stdout and "nothing was changed" in plan.stdout
    assert slot_counts(h) == counts  # a plan moves nothing

    r = h.dbops("runbook", "run", "redis.cluster-rebalance", "--cluster", "sandbox-redis", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    after = slot_counts(h)
    assert all(abs(n - 16384 / 3) / (16384 / 3) * 100 <= 2 for n in after.values()), after
    assert wait_healthy(h).severity is Severity.OK
    assert h.data() == before
    again = h.dbops("runbook", "plan", "redis.cluster-rebalance", "--cluster", "sandbox-redis")
    assert "nothing to move" in again.stdout and "Move the slots: nothing to do" not in again.stdout


def test_emptying_a_master_is_refused_while_it_would_turn_into_a_replica(cluster: Cluster) -> None:
    h = cluster
    r = h.dbops("runbook", "plan", "redis.cluster-rebalance", "--cluster", "sandbox-redis", "--param", "weights=c3=0")
    assert r.returncode != 0
    assert "this empties c3, whose cluster-allow-replica-migration is yes" in r.stdout


# ---------------------------------------------------------------------------------------------
# A stopped master, a dead master (these change the topology: last in the module)


def test_a_stopped_master_times_out_alone_and_recovers(cluster: Cluster) -> None:
    h = cluster
    pid = h.rs.pid("c3")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        ch = health(h)
        by = {m.name: m.snapshot for m in ch.members}
        assert by["c3"].reachability is Reachability.TIMEOUT and "no answer" in (by["c3"].error or "")
        assert all(by[n].reachability is Reachability.UP for n in ("c1", "c2", "c4", "c5", "c6"))
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while True:
        by = {m.name: m.snapshot.reachability for m in health(h).members}
        if by["c3"] is Reachability.UP or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert by["c3"] is Reachability.UP


async def test_the_pane_shows_timeout_for_a_stopped_master_only_and_stays_responsive(cluster: Cluster, tmp_path: Path) -> None:
    from textual.widgets import DataTable, TabbedContent

    from dbops.screens.app import DbopsApp
    from dbops.screens.redis import RedisScreen

    from .test_ui_live import rows, settle

    h = cluster
    app = DbopsApp(load(h.config), state_dir=tmp_path)
    pid = h.rs.pid("c2")
    assert pid is not None
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: "sandbox-redis" in rows(app.screen.query_one("#clusters", DataTable)), "overview row")
        app.open_cluster(next(r.key for r in app.hub.refs if r.name == "sandbox-redis"))
        await settle(pilot, lambda: isinstance(app.screen, RedisScreen) and app.screen.is_mounted, "the Redis pane")
        pane = app.screen
        nodes = pane.query_one("#nodes", DataTable)

        def state_of(name: str) -> str:
            return str(nodes.get_row(name)[3]) if name in {str(k.value) for k in nodes.rows} else ""

        await settle(pilot, lambda: all(state_of(n) == "UP" for n in ("c1", "c2", "c3", "c4", "c5", "c6")), "every node UP",
                     show=lambda: rows(nodes))
        assert "A c1: " in str(pane.query_one("#slot-map").render())
        os.kill(pid, signal.SIGSTOP)
        try:
            await settle(pilot, lambda: state_of("c2").startswith("TIMEOUT"), "c2 TIMEOUT", show=lambda: rows(nodes))
            assert all(state_of(n) == "UP" for n in ("c1", "c3", "c4", "c5", "c6")), rows(nodes)
            # The console answers keys while the node hangs.
            await pilot.press("5")
            assert pane.query_one("#tabs", TabbedContent).active == "health"
            await pilot.press("1")
            assert pane.query_one("#tabs", TabbedContent).active == "slots"
        finally:
            os.kill(pid, signal.SIGCONT)
        await settle(pilot, lambda: state_of("c2") == "UP", "c2 UP again", show=lambda: rows(nodes))


def test_replace_a_dead_master_whose_replica_may_not_fail_over_by_itself(cluster: Cluster) -> None:
    h = cluster
    h.rs.wait_cluster_ok()
    before = h.data()
    victim = h.owner(1)
    victim_id = h.node_id(victim)
    lines = parse_nodes(h.cli(victim, "CLUSTER", "NODES"))
    by_port = {h.rs.port(n): n for n in ("c1", "c2", "c3", "c4", "c5", "c6")}
    replica = by_port[int(next(n for n in lines if n.master_id == victim_id).address.rpartition(":")[2])]
    # As when automatic failover is off (or its replica cannot win a vote in time): the master
    # stays dead with its slots until an operator acts.
    assert h.cli(replica, "CONFIG", "SET", "cluster-replica-no-failover", "yes") == "OK"
    h.rs.stop_node(victim, "kill")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ch = health(h)
        if any(f"{victim} fail" in m for m in metric(ch, "failed_nodes")):
            break
        time.sleep(0.3)
    assert any(f"{victim} fail" in m for m in metric(ch, "failed_nodes")), ch.problems
    assert any("cluster_state:fail" in m for m in metric(ch, "cluster_state")), ch.problems

    r = h.dbops("runbook", "run", "redis.cluster-replace-failed-master", "--cluster", "sandbox-redis",
                "--param", f"failed={victim}", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"CLUSTER FAILOVER FORCE   # on {replica}" in r.stdout and "nodes forgot" in r.stdout
    assert "Attach a fresh replica: nothing to do" in r.stdout
    ch = wait_healthy(h, timeout=10)
    # The cluster is whole again; only the configured seed on the dead address stays DOWN.
    assert all(m.severity is Severity.OK for m in ch.metrics), ch.problems
    assert [m.name for m in ch.members if m.severity is not Severity.OK] == [victim]
    assert {m.name: m.role for m in ch.members}[replica] == "primary"
    assert all(victim_id not in h.cli(n, "CLUSTER", "NODES") for n in by_port.values() if n != victim)
    assert h.data() == before

    # A replacement on the dead one's address: its files gone, as a new machine's would be.
    node_dir = h.rs.node_dir(victim)
    for name in ("nodes.conf", "dump.rdb"):
        (node_dir / name).unlink(missing_ok=True)
    shutil.rmtree(node_dir / "appendonlydir", ignore_errors=True)
    h.rs.start_node(victim)
    fresh = f"127.0.0.1:{h.rs.port(victim)}"
    assert h.node_id(victim) != victim_id
    r = h.dbops("runbook", "run", "redis.cluster-replace-failed-master", "--cluster", "sandbox-redis",
                "--param", f"attach={fresh}", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{fresh} replicates {replica}, link up" in r.stdout
    assert wait_healthy(h).severity is Severity.OK
    assert h.data() == before
    h.cli(replica, "CONFIG", "SET", "cluster-replica-no-failover", "no")


def test_a_dead_master_shows_down_and_cluster_fix_verifies_every_key_kept(cluster: Cluster) -> None:
    h = cluster
    h.rs.wait_cluster_ok()
    before = h.data()
    victim = h.owner(0)
    h.rs.stop_node(victim, "kill")
    ch = health(h)
    assert next(m for m in ch.members if m.name == victim).snapshot.reachability is Reachability.DOWN
    assert ch.severity is Severity.CRIT
    # The replica takes over within cluster-node-timeout; the pane shows the failed node.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ch = health(h)
        if any(f"{victim} fail" in m for m in metric(ch, "failed_nodes")) and metric(ch, "coverage") == ["OK all 16384 slots covered"] \
                and not any("cluster_state:fail" in m for m in metric(ch, "cluster_state")):
            break
        time.sleep(0.3)
    assert any(f"{victim} fail" in m for m in metric(ch, "failed_nodes")), ch.problems
    r = h.dbops("runbook", "run", "redis.cluster-fix", "--cluster", "sandbox-redis", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing to repair" in r.stdout and "every node agrees" in r.stdout
    assert h.data() == before
    h.rs.start_node(victim)


def test_drill_redis_master_loss_measures_the_failover_and_attaches_a_replacement(cluster: Cluster) -> None:
    from .drills import assert_met, run_drill

    h = cluster
    h.rs.wait_cluster_ok()
    assert wait_healthy(h, timeout=60).severity is Severity.OK
    before = h.data()
    r, report = run_drill(h.config, h.state_dir, "redis-master-loss", "sandbox-redis")
    assert_met(r, report)
    victim = report["facts"]["victim"]
    assert [x["runbook"] for x in report["runbooks"]] == [
        "redis.cluster-replace-failed-master", "redis.cluster-fix", "redis.cluster-replace-failed-master"]
    # The killed master's replacement is a replica, the cluster whole, every key kept.
    h.rs.wait_cluster_ok()
    assert wait_healthy(h, timeout=60).severity is Severity.OK
    assert h.cli(victim, "ROLE").split()[0] == "slave"
    assert h.data() == before


def test_drill_redis_master_loss_declined_at_the_promotion_heals_the_node_and_says_it_rejoined(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator says no to the runbook's promotion: the killed master is restarted with its
    own data and rejoins by itself, and the way back says so (not 'failed' on a whole cluster)."""
    import asyncio

    from dbops.drill.runner import DrillRunner

    h = cluster
    h.rs.wait_cluster_ok()
    assert wait_healthy(h, timeout=60).severity is Severity.OK
    before = h.data()
    asked: list[str] = []

    class DeclinesThePromotion:
        async def confirm(self, step, commands, ctx) -> bool:
            asked.append(step.id)
            return step.id == "fault"

        async def attest(self, step, commands, ctx, expected) -> bool:
            asked.append(step.id)  # the promotion asks for the cluster's name: not given
            return False

        async def manual_done(self, step, commands, ctx) -> bool:
            return False

        def cannot_answer(self, step, ref):
            return None

        def event(self, event: str, **data) -> None:
            pass

    monkeypatch.setenv("DBOPS_STATE_DIR", str(h.state_dir))  # where the drill's sandbox hosts find the servers
    runner = DrillRunner(load(h.config), DeclinesThePromotion(), h.state_dir, config_hash="test")
    result = asyncio.run(runner.run("redis-master-loss", "sandbox-redis"))
    assert asked[:2] == ["fault", "promote"], (asked, result.message)
    assert result.outcome == "declined" and result.exit_code == 3, result.message
    assert "declined at 'Promote the replica'" in result.message
    phases = {p["name"]: p for p in result.report["phases"]}
    victim = result.report["facts"]["victim"]
    assert phases["restore"]["outcome"] == "done", phases["restore"]
    assert f"{victim} restarted with its own data and rejoined the cluster" in phases["restore"]["detail"]
    assert "probe data removed" in phases["restore"]["detail"]
    h.rs.wait_cluster_ok()
    assert wait_healthy(h, timeout=60).severity is Severity.OK
    assert h.data() == before


def test_drill_redis_sentinel_failover_is_sentinels_own_and_the_old_master_returns_as_a_replica(cluster: Cluster) -> None:
    from .drills import assert_met, run_drill

    h = cluster
    # The tests before may have left either data node the master: the drill takes it as it is.
    master = next(m.name for m in health(h, "sandbox-sentinel").members if m.role == "primary")
    h.rs.wait_sentinels_ready(master)
    r, report = run_drill(h.config, h.state_dir, "redis-sentinel-failover", "sandbox-sentinel")
    assert_met(r, report)
    assert report["runbooks"] == []  # Sentinel recovers by itself
    m = report["measured"]
    assert m["rto_seconds"] > 0 and m["detection_seconds"] is not None
    victim = report["facts"]["victim"]
    assert h.cli(victim, "ROLE").split()[0] == "slave"
