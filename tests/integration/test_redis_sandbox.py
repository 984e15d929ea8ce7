"""The Redis sandbox is real: Redis 7 servers with a password, a replica that replicates, three
sentinels that agree, a six-node cluster that serves every slot and fails over, and a `down`
that leaves nothing running."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dbops import config as dbops_config
from dbops import sandbox
from dbops.sandbox import redis as redis_sandbox
from dbops.sandbox.cli import sandbox as sandbox_cli
from dbops.sandbox.redis import CLUSTER_NODES, NODE_NAMES, SENTINELS, RedisSandbox

from .conftest import make_state_dir


@dataclass
class RedisHandle:
    """What tests get from the `redis_sb` fixture."""

    state_dir: Path
    root: Path
    rs: RedisSandbox
    result: sandbox.UpResult
    progress: list[str]  # what `up` said

    def cli(self, name: str, *args: str, **kwargs: Any) -> str:
        return self.rs.cli(name, *args, **kwargs)

    def pids(self) -> dict[str, int | None]:
        return {n: self.rs.pid(n) for n in NODE_NAMES}


@pytest.fixture(scope="module")
def redis_sb() -> Iterator[RedisHandle]:
    state_dir = make_state_dir("dbops-it-redis-")
    root = state_dir / "sandbox"
    progress: list[str] = []
    ok = False
    try:
        result = sandbox.up(("redis",), root=root, progress=progress.append)
        yield RedisHandle(state_dir, root, RedisSandbox(root), result, progress)
        ok = True
    finally:
        try:
            sandbox.down(root=root)
        finally:
            # Keep the directory (logs) when the sandbox failed to start, or when asked to
            # (DBOPS_KEEP_SANDBOX=1).
            if ok and not os.environ.get("DBOPS_KEEP_SANDBOX"):
                shutil.rmtree(state_dir)


def poll(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Call `predicate` until it returns something truthy (returned) or the timeout passes
    (returns the last value): a bound on waiting, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def config_get(h: RedisHandle, name: str, parameter: str) -> str:
    lines = h.cli(name, "CONFIG", "GET", parameter).splitlines()
    assert lines[0] == parameter, lines
    return lines[1]


def key_served_by(h: RedisHandle, name: str, served: bool, prefix: str) -> str:
    """A key whose slot node `name` serves (served=True) or does not (False), found by asking it:
    a node answers MOVED for a slot it does not serve."""
    for i in range(1000):
        key = f"{prefix}-{i}"
        moved = h.cli(name, "EXISTS", key).startswith("MOVED")
        if moved is not served:
            return key
    raise AssertionError(f"no key {'served' if served else 'not served'} by {name} among 1000")


# ---------------------------------------------------------------------------------------------
# Errors the user can act on (no sandbox needed)


def test_missing_binary_is_a_sandbox_error_with_the_apt_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    state_dir = make_state_dir("dbops-it-redis-nobin-")
    try:
        monkeypatch.setattr(redis_sandbox, "REDIS_BINDIR", state_dir / "no-such-bindir")
        monkeypatch.delenv("DBOPS_REDIS_BINDIR", raising=False)
        with pytest.raises(sandbox.SandboxError, match=r"install the Debian package redis-server \(apt-get install redis-server\)"):
            sandbox.up(("redis",), root=state_dir / "sandbox")
        assert sandbox.engine_state(state_dir / "sandbox", "redis") is None

        # Through the CLI: one line on stderr, exit 1, no traceback.
        monkeypatch.setenv("DBOPS_STATE_DIR", str(state_dir))
        result = CliRunner().invoke(sandbox_cli, ["up", "--engines", "redis"])
        assert result.exit_code == 1
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "apt-get install redis-server" in errors[0], result.stderr
        assert "Traceback" not in result.output
    finally:
        shutil.rmtree(state_dir)


def test_a_redis_older_than_7_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real binary, a raised bar: the check reads the version redis-server reports.
    monkeypatch.setattr(redis_sandbox, "MIN_VERSION", (99, 0))
    state_dir = make_state_dir("dbops-it-redis-old-")
    try:
        with pytest.raises(sandbox.SandboxError, match=r"is Redis 7\.\d+\.\d+; the Redis sandbox needs Redis 99\.0 or newer"):
            sandbox.up(("redis",), root=state_dir / "sandbox")
        assert sandbox.engine_state(state_dir / "sandbox", "redis") is None
    finally:
        shutil.rmtree(state_dir)


def live_processes_under(path: Path) -> list[int]:
    """Pids of live (non-zombie) processes whose command line names something under `path`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and sandbox.pid_alive(int(proc.name), str(path)):
            found.append(int(proc.name))
    return found


def test_a_node_that_cannot_start_fails_up_with_its_log_and_leaves_nothing_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state_dir = make_state_dir("dbops-it-redis-fail-")
    root = state_dir / "sandbox"
    # r1 gets a port something else already listens on (redis-server is real; only the port
    # choice is steered).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        real_free_ports = redis_sandbox.free_ports
        monkeypatch.setattr(redis_sandbox, "free_ports", lambda count: [port, *real_free_ports(count - 1)])
        try:
            with pytest.raises(sandbox.SandboxError) as caught:
                sandbox.up(("redis",), root=root)
            message = caught.value.message
            assert message.startswith(f"r1 (redis-server on 127.0.0.1:{port}) exited right after starting"), message
            assert "Address already in use" in message  # the tail of r1's log
            st = sandbox.engine_state(root, "redis")
            assert st is not None and st["password"] not in message
            # The nodes started alongside r1 were stopped again; `down` finds nothing more.
            assert live_processes_under(root) == []
            assert not RedisSandbox(root).is_running()
            sandbox.down(root=root)
        finally:
            sandbox.down(root=root)
            shutil.rmtree(state_dir)


# ---------------------------------------------------------------------------------------------
# What `up` built


def test_up_says_what_it_does_and_never_the_password(redis_sb: RedisHandle) -> None:
    assert not redis_sb.result.already_up
    assert redis_sb.result.engines == ("redis",)
    assert any("redis sandbox up in" in m for m in redis_sb.progress), redis_sb.progress
    password = redis_sb.rs.password
    assert not [m for m in redis_sb.progress if password in m]
    # The written config is one dbops accepts, and the sandbox counts as up.
    dbops_config.load(redis_sb.result.config_path)
    assert sandbox.config_path(root=redis_sb.root) == redis_sb.result.config_path


def test_state_records_the_topology_for_config_wiring(redis_sb: RedisHandle) -> None:
    st = sandbox.engine_state(redis_sb.root, "redis")
    assert st is not None
    port = redis_sb.rs.port
    assert len(st["password"]) >= 16
    assert st["standalone"] == {
        "master_name": "sandbox-sentinel",
        "quorum": 2,
        "primary": {"name": "r1", "port": port("r1")},
        "replicas": [{"name": "r2", "port": port("r2")}],
        "sentinels": [{"name": s, "port": port(s)} for s in SENTINELS],
    }
    assert [(n["name"], n["port"]) for n in st["cluster"]["nodes"]] == [(c, port(c)) for c in CLUSTER_NODES]
    ports = [port(n) for n in NODE_NAMES] + [n["bus_port"] for n in st["cluster"]["nodes"]]
    assert len(set(ports)) == len(ports)
    assert all(sandbox.port_open(p) for p in ports)
    # The state holds the password: nobody else may read it.
    assert stat.S_IMODE((redis_sb.root / sandbox.STATE_FILE).stat().st_mode) == 0o600


def test_every_node_answers_with_the_password_and_refuses_without(redis_sb: RedisHandle) -> None:
    for name in NODE_NAMES:
        assert redis_sb.cli(name, "PING") == "PONG", name
        refused = redis_sb.cli(name, "PING", auth=False)
        assert refused.startswith("NOAUTH"), (name, refused)


def listening_addresses(port: int) -> list[str]:
    """The local addresses of the sockets listening on TCP `port` (IPv4 and IPv6), from /proc."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, port_hex = local.partition(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.append("127.0.0.1" if addr == "0100007F" else addr)
    return found


def test_every_node_and_cluster_bus_listens_on_loopback_only(redis_sb: RedisHandle) -> None:
    st = sandbox.engine_state(redis_sb.root, "redis")
    assert st is not None
    ports = {n: redis_sb.rs.port(n) for n in NODE_NAMES}
    ports.update({f"{n['name']} bus": n["bus_port"] for n in st["cluster"]["nodes"]})
    for what, port in ports.items():
        assert listening_addresses(port) == ["127.0.0.1"], what


def test_r2_replicates_r1(redis_sb: RedisHandle) -> None:
    repl = redis_sb.rs.info("r2", "replication")
    assert (repl["role"], repl["master_port"], repl["master_link_status"]) == ("slave", str(redis_sb.rs.port("r1")), "up")
    key, value = "dbops-it-replicated", f"v{time.monotonic_ns()}"
    assert redis_sb.cli("r1", "SET", key, value) == "OK"
    assert redis_sb.cli("r1", "WAIT", "1", "5000") == "1"  # r2 acknowledged the write
    assert poll(lambda: redis_sb.cli("r2", "GET", key) == value), "the key written on r1 did not reach r2"
    assert redis_sb.cli("r2", "SET", key, "x").startswith("READONLY")


def test_persistence_and_memory_settings_are_on(redis_sb: RedisHandle) -> None:
    for name in ("r1", "r2", *CLUSTER_NODES):
        assert config_get(redis_sb, name, "appendonly") == "yes", name
        assert config_get(redis_sb, name, "save") == "60 1000", name
        assert config_get(redis_sb, name, "maxmemory") == str(64 * 1024 * 1024), name
        assert config_get(redis_sb, name, "maxmemory-policy") == "allkeys-lru", name
        assert redis_sb.rs.info(name, "persistence")["aof_enabled"] == "1", name


def test_sentinels_name_r1_and_have_a_quorum(redis_sb: RedisHandle) -> None:
    for name in SENTINELS:
        addr = redis_sb.cli(name, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "sandbox-sentinel").splitlines()
        assert addr == ["127.0.0.1", str(redis_sb.rs.port("r1"))], name
        quorum = redis_sb.cli(name, "SENTINEL", "CKQUORUM", "sandbox-sentinel")
        assert quorum.startswith("OK 3 usable Sentinels"), (name, quorum)


def test_cluster_serves_every_slot_with_three_masters_and_three_replicas(redis_sb: RedisHandle) -> None:
    for name in CLUSTER_NODES:
        info = redis_sandbox._parse_info(redis_sb.cli(name, "CLUSTER", "INFO"))
        assert (info["cluster_state"], info["cluster_slots_assigned"], info["cluster_slots_ok"],
                info["cluster_known_nodes"]) == ("ok", "16384", "16384", "6"), name
    # CLUSTER NODES: id addr flags master-id ping pong epoch link slot-ranges...
    nodes = [line.split() for line in redis_sb.cli("c1", "CLUSTER", "NODES").splitlines()]
    masters = {n[0]: n for n in nodes if "master" in n[2].split(",")}
    replicas = [n for n in nodes if "slave" in n[2].split(",")]
    assert len(masters) == 3 and len(replicas) == 3, nodes
    assert sorted(r[3] for r in replicas) == sorted(masters), "each master should have one replica"
    slots: set[int] = set()
    for m in masters.values():
        for rng in m[8:]:
            lo, _, hi = rng.partition("-")
            slots.update(range(int(lo), int(hi or lo) + 1))
    assert slots == set(range(16384))


def test_cluster_key_set_with_redirects_is_readable_anywhere(redis_sb: RedisHandle) -> None:
    key = key_served_by(redis_sb, "c1", served=False, prefix="dbops-it-elsewhere")
    value = f"v{time.monotonic_ns()}"
    assert redis_sb.cli("c1", "SET", key, value).startswith("MOVED")  # without -c: not here
    assert redis_sb.cli("c1", "SET", key, value, follow_redirects=True) == "OK"
    for name in CLUSTER_NODES:
        assert redis_sb.cli(name, "GET", key, follow_redirects=True) == value, name


def test_status_reads_roles_live(redis_sb: RedisHandle) -> None:
    rows = sandbox.status(root=redis_sb.root)
    assert [r.name for r in rows] == list(NODE_NAMES)
    assert all(r.engine == "redis" and r.running and r.pid == redis_sb.rs.pid(r.name) for r in rows)
    roles = {r.name: r.role for r in rows}
    assert (roles["r1"], roles["r2"]) == ("master", "replica")
    assert {roles[s] for s in SENTINELS} == {"sentinel"}
    assert sorted(roles[c] for c in CLUSTER_NODES) == ["master"] * 3 + ["replica"] * 3
    assert next(r for r in rows if r.name == "r2").detail == "replica of r1 (connected)"
    assert not [r for r in rows if redis_sb.rs.password in r.detail]


def test_up_again_reports_already_up_and_changes_nothing(redis_sb: RedisHandle) -> None:
    pids = redis_sb.pids()
    assert None not in pids.values()
    result = sandbox.up(("redis",), root=redis_sb.root)
    assert result.already_up
    assert redis_sb.pids() == pids


# ---------------------------------------------------------------------------------------------
# Stopping and starting single nodes (each test restores the topology for later tests)


def test_stop_and_start_a_replica_and_a_sentinel(redis_sb: RedisHandle) -> None:
    rs = redis_sb.rs
    old_r2, old_s1 = rs.pid("r2"), rs.pid("s1")
    try:
        rs.stop_node("r2", "shutdown")
        assert rs.pid("r2") is None and not sandbox.pid_alive(old_r2)
        assert not sandbox.port_open(rs.port("r2"))
        assert poll(lambda: rs.info("r1", "replication")["connected_slaves"] == "0")
        rs.stop_node("r2", "kill")  # already stopped: a no-op
        rs.stop_node("s1", "term")
        assert rs.pid("s1") is None and not sandbox.pid_alive(old_s1)
    finally:
        rs.start_node("r2")
        rs.start_node("s1")
    assert rs.pid("r2") not in (None, old_r2) and rs.pid("s1") not in (None, old_s1)
    rs.wait_replicas_linked(["r2"])
    rs.wait_sentinels_ready()
    assert redis_sb.cli("s1", "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "sandbox-sentinel").splitlines()[1] == str(rs.port("r1"))


def test_unknown_node_or_stop_mode_is_refused(redis_sb: RedisHandle) -> None:
    with pytest.raises(sandbox.SandboxError, match=r"no Redis sandbox node 'r9'; nodes: r1, r2, s1"):
        redis_sb.rs.stop_node("r9")
    with pytest.raises(sandbox.SandboxError, match=r"unknown stop mode 'gently'; use kill, term, shutdown"):
        redis_sb.rs.stop_node("r1", "gently")  # type: ignore[arg-type]


def test_killed_cluster_master_fails_over_and_rejoins_as_replica(redis_sb: RedisHandle) -> None:
    rs = redis_sb.rs
    port_names = {rs.port(n): n for n in CLUSTER_NODES}
    role = rs.role("c1")
    assert role[0] == "master", role
    replica = port_names[int(role[3])]  # master, offset, then host, port, offset of its replica
    key = key_served_by(redis_sb, "c1", served=True, prefix="dbops-it-failover")
    assert redis_sb.cli("c1", "SET", key, "survives") == "OK"
    assert redis_sb.cli("c1", "WAIT", "1", "5000") == "1"  # on the replica before the crash

    old_pid = rs.pid("c1")
    try:
        rs.stop_node("c1", "kill")
        assert rs.pid("c1") is None and not sandbox.pid_alive(old_pid)
        others = [n for n in CLUSTER_NODES if n != "c1"]
        # Bounded poll: ok again on the five live nodes with three masters, so c1's replica took over.
        rs.wait_cluster_ok(others)
        assert rs.role(replica)[0] == "master"
        assert redis_sb.cli("c2", "GET", key, follow_redirects=True) == "survives"
    finally:
        rs.start_node("c1")
    rs.wait_replicas_linked(["c1"])
    assert rs.role("c1")[:4] == ["slave", "127.0.0.1", str(rs.port(replica)), "connected"]
    rs.wait_cluster_ok()
    assert redis_sb.cli("c1", "GET", key, follow_redirects=True) == "survives"


# ---------------------------------------------------------------------------------------------
# The drill probe (dbops.engines.redis.probe) against the real servers. The failover tests kill a
# master and leave every node running again, replicating, with the sentinels agreeing on r1.


def probe_ref(h: RedisHandle, name: str) -> dbops_config.ClusterRef:
    return next(r for r in dbops_config.load(h.result.config_path).clusters() if r.name == name)


def cluster_masters(h: RedisHandle) -> list[str]:
    return [n for n in CLUSTER_NODES if h.rs.pid(n) is not None and h.rs.role(n)[0] == "master"]


def serves(h: RedisHandle, node: str, key: str) -> bool:
    """Whether `node` serves `key`'s slot (a node that does not answers MOVED)."""
    return not h.cli(node, "XLEN", key).startswith("MOVED")


async def write_until_ok(probe: Any, first: int, step: int = 1, timeout: float = 60.0) -> tuple[int, list[str]]:
    """Write `first`, `first + step`, ... as the drill's loop does (a failure: reset, the next seq
    at the next tick) until one is acknowledged and reads back; (that seq, the failures seen)."""
    from dbops.drill.probe import CALL_TIMEOUT, one_line

    failures: list[str] = []
    deadline = time.monotonic() + timeout
    seq = first
    while True:
        try:
            await asyncio.wait_for(probe.write(seq), CALL_TIMEOUT)
            if await asyncio.wait_for(probe.read(seq), CALL_TIMEOUT):
                return seq, failures
            failures.append(f"{seq} does not read back")
        except Exception as exc:  # a failure is what the test watches for; each one is kept
            failures.append(one_line(exc))
        await probe.reset()
        assert time.monotonic() < deadline, f"no write acknowledged within {timeout:.0f}s: {failures[-3:]}"
        seq += step
        await asyncio.sleep(0.1)


def test_probe_writes_every_cluster_master_shard_and_reads_back(redis_sb: RedisHandle) -> None:
    from dbops.engines.redis.probe import RedisProbe

    probe = RedisProbe(probe_ref(redis_sb, "sandbox-redis"), "it-probe-shards")
    assert "<tag>" in probe.target  # before open: nothing read yet
    commands = "\n".join(probe.commands())
    assert "XADD dbops:drill:{<tag>}:it-probe-shards <seq>-1 seq <seq>" in commands and redis_sb.rs.password not in commands

    async def run() -> None:
        try:
            await probe.open()
            for seq in range(1, 31):
                await probe.write(seq)
                assert await probe.read(seq), seq
            assert not await probe.read(31)
            assert await probe.present(range(0, 41)) == set(range(1, 31))
            assert await probe.present([5, 7, 99]) == {5, 7}
            masters = cluster_masters(redis_sb)
            assert len(masters) == 3 and len(probe.keys) == 3 and probe.target.endswith("on 3 master shards")
            # Each master serves exactly one of the streams and holds its ten entries (seq % 3 == g).
            for m in masters:
                mine = [k for k in probe.keys if serves(redis_sb, m, k)]
                assert len(mine) == 1, (m, mine)
                assert redis_sb.cli(m, "XLEN", mine[0]) == "10", m
                g = probe.keys.index(mine[0])
                assert redis_sb.cli(m, "XRANGE", mine[0], "-", "+", "COUNT", "1").splitlines()[0] == f"{g or 3}-1", m
        finally:
            await probe.close(drop=True)

    asyncio.run(run())
    for key in probe.keys:
        assert redis_sb.cli("c1", "EXISTS", key, follow_redirects=True) == "0", key


def test_probe_follows_a_cluster_failover_to_the_promoted_replica(redis_sb: RedisHandle) -> None:
    from dbops.engines.redis.probe import RedisProbe

    rs = redis_sb.rs
    rs.wait_cluster_ok()
    probe = RedisProbe(probe_ref(redis_sb, "sandbox-redis"), "it-probe-failover")

    async def run() -> None:
        victim = None
        try:
            await probe.open()
            for seq in range(1, 7):
                await probe.write(seq)
            # Group 0's stream (seqs 3, 6, 9, ...): kill its master; that shard's replica takes over.
            key = probe.keys[0]
            victim = next(m for m in cluster_masters(redis_sb) if serves(redis_sb, m, key))
            promoted = next(n for n in CLUSTER_NODES if rs.port(n) == int(rs.role(victim)[3]))
            assert redis_sb.cli(victim, "WAIT", "1", "5000") == "1"  # seqs 3 and 6 are on the replica too
            rs.stop_node(victim, "kill")
            with pytest.raises(Exception):  # noqa: B017 - any failure: the master is gone
                await asyncio.wait_for(probe.write(9), 2.0)
            await probe.reset()
            ok, failures = await write_until_ok(probe, 12, step=3)  # group 0 again: 12, 15, ...
            assert failures, "writes to the killed master's stream should fail until the failover"
            assert not [f for f in failures if rs.password in f]
            assert rs.role(promoted)[0] == "master"
            assert redis_sb.cli(promoted, "XRANGE", key, f"{ok}-1", f"{ok}-1").splitlines()[0] == f"{ok}-1"
            # The refused writes are not there; everything acknowledged is.
            assert await probe.present(range(1, ok + 1)) == {1, 2, 3, 4, 5, 6, ok}
        finally:
            if victim is not None:  # back as the promoted node's replica
                rs.start_node(victim)
                rs.wait_replicas_linked([victim])
            rs.wait_cluster_ok()
            await probe.close(drop=True)

    asyncio.run(run())
    for key in probe.keys:
        assert redis_sb.cli("c1", "EXISTS", key, follow_redirects=True) == "0", key


def restore_sentinel_r1(h: RedisHandle) -> None:
    """r1 running again and the sentinels' master, r2 its replica: the module's topology."""
    rs = h.rs
    rs.start_node("r1")

    def master() -> str | None:
        addr = h.cli("s1", "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "sandbox-sentinel").splitlines()
        name = next((n for n in ("r1", "r2") if addr[-1:] == [str(rs.port(n))]), None)
        return name if name is not None and rs.role(name)[0] == "master" else None

    if poll(master) == "r2":
        rs.wait_replicas_linked(["r1"])
        rs.wait_sentinels_ready(master="r2")
        # Sentinel may refuse (NOGOODSLAVE) or abort the failover while its view of the freshly
        # reattached r1 is older than its INFO period: ask again until r1 is the master.
        said = []
        deadline = time.monotonic() + 90
        while master() != "r1":
            assert time.monotonic() < deadline, f"r1 not promoted back; SENTINEL FAILOVER said {said[-3:]}"
            said.append(h.cli("s1", "SENTINEL", "FAILOVER", "sandbox-sentinel"))
            poll(lambda: master() == "r1", timeout=15)
    rs.wait_sentinels_ready(master="r1")
    rs.wait_replicas_linked(["r2"])


def test_probe_follows_a_sentinel_failover_and_back(redis_sb: RedisHandle) -> None:
    from dbops.engines.redis.probe import RedisProbe

    rs = redis_sb.rs
    rs.wait_sentinels_ready()  # r1 is the master
    probe = RedisProbe(probe_ref(redis_sb, "sandbox-sentinel"), "it-probe-sentinel")
    key = probe.keys[0]
    assert "SENTINEL GET-MASTER-ADDR-BY-NAME sandbox-sentinel" in "\n".join(probe.commands())

    async def run() -> None:
        killed = False
        try:
            await probe.open()
            for seq in range(1, 6):
                await probe.write(seq)
                assert await probe.read(seq)
            assert redis_sb.cli("r1", "XLEN", key) == "5"
            assert redis_sb.cli("r1", "WAIT", "1", "5000") == "1"
            killed = True
            rs.stop_node("r1", "kill")
            with pytest.raises(Exception):  # noqa: B017 - any failure: the master is gone
                await asyncio.wait_for(probe.write(6), 2.0)
            await probe.reset()
            # The sentinels promote r2 (down-after 2 s); the probe asks them again and writes there.
            ok, failures = await write_until_ok(probe, 7)
            assert failures, "writes should fail until the sentinels promote r2"
            assert not [f for f in failures if rs.password in f]
            assert rs.role("r2")[0] == "master" and redis_sb.cli("r2", "XLEN", key) == "6"
            assert await probe.present(range(1, ok + 1)) == {1, 2, 3, 4, 5, ok}
            restore_sentinel_r1(redis_sb)
            killed = False
            # r2 is a replica again (READONLY): the probe asks the sentinels again and finds r1.
            back, _ = await write_until_ok(probe, 1000)
            assert rs.role("r1")[0] == "master" and redis_sb.cli("r1", "XLEN", key) == "7"
            assert await probe.present(range(1, back + 1)) == {1, 2, 3, 4, 5, ok, back}
        finally:
            if killed:
                restore_sentinel_r1(redis_sb)
            await probe.close(drop=True)

    asyncio.run(run())
    assert redis_sb.cli("r1", "EXISTS", key) == "0"
    assert poll(lambda: redis_sb.cli("r2", "EXISTS", key) == "0")


def test_probe_in_standalone_mode_writes_to_the_member_that_is_master(redis_sb: RedisHandle) -> None:
    import dataclasses

    from dbops.engines.redis.probe import RedisProbe

    ref = probe_ref(redis_sb, "sandbox-sentinel")
    opts = dataclasses.replace(ref.cluster.redis, mode="standalone", master_name=None, sentinels=[])
    # r2 listed first: the probe must pick r1 by its ROLE, not by its place in the list.
    members = list(reversed(ref.cluster.members))
    cluster = dataclasses.replace(ref.cluster, options={**ref.cluster.options, "redis": opts}, members=members)
    ref = dataclasses.replace(ref, cluster=cluster)
    probe = RedisProbe(ref, "it-probe-standalone")

    async def run() -> None:
        try:
            await probe.open()
            for seq in (1, 2, 3):
                await probe.write(seq)
            assert await probe.present([1, 2, 3, 4]) == {1, 2, 3}
            assert redis_sb.cli("r1", "XLEN", probe.keys[0]) == "3"
        finally:
            await probe.close(drop=True)

    asyncio.run(run())
    assert redis_sb.cli("r1", "EXISTS", probe.keys[0]) == "0"


# ---------------------------------------------------------------------------------------------
# Down (last: it stops the module's sandbox)


def test_down_stops_every_server_and_is_safe_to_repeat(redis_sb: RedisHandle) -> None:
    pids = redis_sb.pids()
    ports = [redis_sb.rs.port(n) for n in NODE_NAMES]
    assert None not in pids.values()
    sandbox.down(root=redis_sb.root)
    assert [n for n, pid in pids.items() if sandbox.pid_alive(pid)] == []
    assert [p for p in ports if sandbox.port_open(p)] == []
    assert not redis_sb.rs.is_running()
    assert [r.name for r in sandbox.status(root=redis_sb.root) if r.running] == []
    sandbox.down(root=redis_sb.root)  # again: nothing to do, no error
    with pytest.raises(sandbox.SandboxError, match="no sandbox is up"):
        sandbox.config_path(root=redis_sb.root)
