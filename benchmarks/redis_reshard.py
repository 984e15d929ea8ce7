"""Slot migration speed: dbops' mover against `redis-cli --cluster reshard` (its defaults), on
the same real Redis 7 Cluster and the same keys, side by side in one run.

    make bench      (or: python benchmarks/redis_reshard.py [--keys N] [--slots S])

Starts a private sandbox (six redis-server nodes), and for each value size (100 B, 4 KiB):
fills the cluster with N keys, has redis-cli move S slots c1 -> c2, then dbops moves the same
slots (the same keys) back c2 -> c1, and prints both times and the ratio. Then it empties the
cluster and measures dbops' fixed cost per slot by moving empty slots. Informational: prints
the figures against the goals (>= 3x, <= 0.25 ms per slot); never a pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_RATIO = 3.0
GOAL_SLOT_MS = 0.25


def fill(rs, keys: int, size: int) -> None:
    from redis.cluster import ClusterNode, RedisCluster

    c = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", rs.port("c1"))], password=rs.password)
    value = b"v" * size
    pipe = c.pipeline()
    for i in range(keys):
        pipe.set(f"bench:{i}", value)
        if i % 2000 == 1999:
            pipe.execute()
            pipe = c.pipeline()
    pipe.execute()
    c.close()


def node_id(rs, name: str) -> str:
    return rs.cli(name, "CLUSTER", "MYID").strip()


def owned(rs, name: str) -> list[int]:
    from dbops.engines.redis.topology import parse_nodes

    me = next(n for n in parse_nodes(rs.cli(name, "CLUSTER", "NODES")) if n.myself)
    return [s for a, b in me.slots for s in range(a, b + 1)]


def redis_cli_reshard(rs, source: str, target: str, slots: int) -> float:
    env = {**os.environ, "REDISCLI_AUTH": rs.password}
    cmd = [str(rs.bindir / "redis-cli"), "--cluster", "reshard", f"127.0.0.1:{rs.port(source)}",
           "--cluster-from", node_id(rs, source), "--cluster-to", node_id(rs, target),
           "--cluster-slots", str(slots), "--cluster-yes"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"redis-cli --cluster reshard failed:\n{out.stdout[-2000:]}")
    return elapsed


async def dbops_move(ref, source: str, target: str, slots: list[int]) -> float:
    from dbops.engines.redis.session import ClusterSession

    s = ClusterSession(ref)
    try:
        await s.refresh()
        mover = s.mover()
        src, dst = s.resolve(source), s.resolve(target)
        await mover.average_value_bytes(src)  # what the runbook's pre-checks already did
        t0 = time.perf_counter()
        await mover.move(src, dst, slots)
        return time.perf_counter() - t0
    finally:
        await s.close()


def wait_agree(rs) -> None:
    rs.wait_cluster_ok()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100_000, help="keys of 100 B; 4 KiB values use a fifth (the sandbox's maxmemory is 64 MiB a node)")
    ap.add_argument("--slots", type=int, default=2000)
    args = ap.parse_args()
    from dbops import sandbox
    from dbops.config import load
    from dbops.sandbox.redis import RedisSandbox

    state = Path(tempfile.mkdtemp(prefix="dbops-bench-redis-", dir="/tmp"))
    state.chmod(0o711)  # the servers run as the redis user, which must reach the sandbox below
    os.environ["DBOPS_STATE_DIR"] = str(state)
    root = state / "sandbox"
    print(f"starting a private Redis Cluster sandbox in {root} ...", flush=True)
    result = sandbox.up(("redis",), root=root)
    try:
        rs = RedisSandbox(root)
        ref = next(r for r in load(result.config_path).clusters() if r.name == "sandbox-redis")
        print(f"{'values':>8} {'keys moved':>10} {'slots':>6} {'redis-cli':>10} {'dbops':>8} {'ratio':>6}  goal >= {GOAL_RATIO:g}x")
        for size in (100, 4096):
            for name in ("c1", "c2", "c3"):
                rs.cli(name, "FLUSHALL")
            fill(rs, args.keys if size < 1024 else args.keys // 5, size)
            before = set(owned(rs, "c1"))
            moved_keys = sum(int(rs.cli("c1", "CLUSTER", "COUNTKEYSINSLOT", str(s))) for s in sorted(before)[-args.slots:])
            t_cli = redis_cli_reshard(rs, "c1", "c2", args.slots)
            wait_agree(rs)
            slots = sorted(before - set(owned(rs, "c1")))
            t_dbops = asyncio.run(dbops_move(ref, "c2", "c1", slots))
            wait_agree(rs)
            assert set(owned(rs, "c1")) == before, "dbops did not move every slot back"
            label = f"{size} B" if size < 1024 else f"{size // 1024} KiB"
            print(f"{label:>8} {moved_keys:>10} {len(slots):>6} {t_cli:>9.2f}s {t_dbops:>7.2f}s {t_cli / t_dbops:>5.1f}x", flush=True)
        for name in ("c1", "c2", "c3"):
            rs.cli(name, "FLUSHALL")
        empty = owned(rs, "c1")[-args.slots:]
        t_empty = asyncio.run(dbops_move(ref, "c1", "c2", empty))
        wait_agree(rs)
        t_back = asyncio.run(dbops_move(ref, "c2", "c1", empty))
        per_slot = (t_empty + t_back) / (2 * len(empty)) * 1000
        print(f"fixed cost per slot (empty slots, {len(empty)} moved twice): {per_slot:.3f} ms   goal <= {GOAL_SLOT_MS} ms")
    finally:
        sandbox.down(root=root)


if __name__ == "__main__":
    main()
