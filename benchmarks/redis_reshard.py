"""Slot migration speed: dbops' mover against `redis-cli --cluster reshard` (its defaults), on
the same real Redis 7 Cluster and the same keys, side by side in one run.

    make bench      (or: python benchmarks/redis_reshard.py [--keys N] [--slots S])

Starts a private sandbox (six redis-server nodes), and for each value size (100 B, 4 KiB):
fills the cluster with N keys, has redis-cli move S slots c1 -> c2, then dbops moves the same
slots (the same keys) back c2 -> c1, and prints both times and the ratio. Then it empties the
cluster and measures dbops' fixed cost per slot by moving empty slots.

End to end: with E2E_KEYS keys over the 16384 slots (about 5,500 in 1500 slots), the whole
`redis-cli --cluster reshard` command (c1 -> c2) against the whole `dbops runbook run
redis.cluster-reshard` command moving the same slots back (a subprocess: process start, config,
lock, pre-checks, plan, audit, the move, verify), with the sandbox's generated config and --yes.
Prints the move phase ratio (redis-cli's command against dbops' migrate step) and the end-to-end
ratio, and when each of dbops' output lines came, so the time outside the move is visible. dbops
runs from compiled bytecode, as an installed copy does (--no-bytecode: as this environment runs it).

    python benchmarks/redis_reshard.py --end-to-end-only --repeat 3     (only the end-to-end runs)

Informational: prints the figures against the goals (>= 3x, <= 0.25 ms per slot); never a pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_RATIO = 3.0
GOAL_SLOT_MS = 0.25
E2E_KEYS = 60_000  # over 16384 slots: about 5,500 keys in 1500 slots
E2E_SLOTS = 1500


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


def count_keys(rs, name: str, slots: list[int]) -> int:
    import redis

    r = redis.Redis(host="127.0.0.1", port=rs.port(name), password=rs.password)
    try:
        pipe = r.pipeline(transaction=False)
        for s in slots:
            pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", s)
        return sum(int(n) for n in pipe.execute())
    finally:
        r.close()


def dbops_command() -> list[str]:
    """The installed console script beside this interpreter (what an operator runs), else -m."""
    script = Path(sys.executable).parent / "dbops"
    return [str(script)] if script.exists() else [sys.executable, "-m", "dbops.cli"]


def installed_env(state: Path, bytecode: bool) -> dict[str, str]:
    """The environment of the timed dbops commands. With `bytecode`, dbops runs from compiled
    bytecode as pip and pipx leave an install (they compile at install time): a working tree run
    with PYTHONDONTWRITEBYTECODE=1 compiles each of its modules again at every start, a cost of
    the checkout, not of dbops. The bytecode goes to a cache of the benchmark's own, never into
    the tree; a plan (read-only) fills it with whatever else the command imports."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each line's arrival time says when dbops got there
    if not bytecode:
        return env
    import dbops
    import dbops.runbooks

    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(state / "pycache")
    dirs = sorted({d for d in [*dbops.__path__, *dbops.runbooks.__path__] if Path(d).is_dir()})
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], env=env, check=True, stdout=subprocess.DEVNULL)
    return env


def dbops_runbook_reshard(config: Path, source: str, target: str, slots: list[int], env: dict[str, str],
                          verb: str = "run") -> tuple[float, float, list[tuple[float, str]]]:
    """The whole `dbops runbook run redis.cluster-reshard` command: (seconds end to end, seconds of
    its migrate step as it reports them, (seconds since start, line) for every line it printed)."""
    from dbops.engines.redis.topology import format_ranges, ranges

    spec = format_ranges(ranges(slots), limit=len(slots))
    cmd = [*dbops_command(), "--config", str(config), "runbook", verb, "redis.cluster-reshard", "--cluster", "sandbox-redis",
           "--param", f"slots={spec}", "--param", f"source={source}", "--param", f"target={target}", *(["--yes"] if verb == "run" else [])]
    lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.perf_counter() - t0, line.rstrip("\n")))
    code = proc.wait()
    elapsed = time.perf_counter() - t0
    out = "\n".join(text for _, text in lines)
    if code != 0:
        sys.exit(f"dbops runbook {verb} redis.cluster-reshard failed (exit {code}):\n{out[-3000:]}")
    if verb != "run":
        return elapsed, 0.0, lines
    moved = re.search(r"moved \d+ keys in \d+ slots in ([0-9.]+)s", out)
    if moved is None:
        sys.exit(f"dbops did not report its move:\n{out[-3000:]}")
    return elapsed, float(moved.group(1)), lines


def end_to_end(rs, config: Path, repeat: int, env: dict[str, str]) -> None:
    """redis-cli's whole reshard of E2E_SLOTS slots c1 -> c2, then dbops' whole runbook run moving
    the same slots back, `repeat` times; the ratios of each run and their medians."""
    for name in ("c1", "c2", "c3"):
        rs.cli(name, "FLUSHALL")
    fill(rs, E2E_KEYS, 100)
    wait_agree(rs)
    dbops_runbook_reshard(config, "c1", "c2", owned(rs, "c1")[:E2E_SLOTS], env, verb="plan")  # warms the bytecode cache
    bytecode = "from compiled bytecode" if "PYTHONPYCACHEPREFIX" in env else "without compiled bytecode (as this environment runs it)"
    print(f"\nend to end: {E2E_SLOTS} slots of a cluster holding {E2E_KEYS} keys of 100 B; whole commands, {repeat} run(s); "
          f"dbops {bytecode}")
    print(f"{'run':>4} {'keys moved':>10} {'redis-cli':>10} {'dbops':>8} {'its move':>9} {'move ratio':>11} {'end-to-end ratio':>17}")
    runs = []
    for i in range(repeat):
        before = set(owned(rs, "c1"))
        t_cli = redis_cli_reshard(rs, "c1", "c2", E2E_SLOTS)
        wait_agree(rs)
        slots = sorted(before - set(owned(rs, "c1")))
        keys = count_keys(rs, "c2", slots)
        t_all, t_move, lines = dbops_runbook_reshard(config, "c2", "c1", slots, env)
        wait_agree(rs)
        assert set(owned(rs, "c1")) == before, "dbops did not move every slot back"
        runs.append((t_cli, t_all, t_move, lines))
        print(f"{i + 1:>4} {keys:>10} {t_cli:>9.2f}s {t_all:>7.2f}s {t_move:>8.2f}s {t_cli / t_move:>10.1f}x {t_cli / t_all:>16.1f}x", flush=True)
    median = sorted(runs, key=lambda r: r[0] / r[1])[len(runs) // 2]
    print(f"median: redis-cli {statistics.median(r[0] for r in runs):.2f}s, dbops {statistics.median(r[1] for r in runs):.2f}s "
          f"(its move {statistics.median(r[2] for r in runs):.2f}s); move ratio {statistics.median(r[0] / r[2] for r in runs):.1f}x, "
          f"end-to-end ratio {statistics.median(r[0] / r[1] for r in runs):.1f}x   goal >= {GOAL_RATIO:g}x end to end")
    print("the median run's dbops output, with when each line came (seconds since the command started):")
    for at, text in median[3]:
        if text.strip() and not text.lstrip().startswith("$ "):
            print(f"  {at:6.2f}  {text[:150]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100_000, help="keys of 100 B; 4 KiB values use a fifth (the sandbox's maxmemory is 64 MiB a node)")
    ap.add_argument("--slots", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3, help="end-to-end runs (the median is printed)")
    ap.add_argument("--end-to-end-only", action="store_true", help="skip the move-only measurements")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="run dbops as this environment does (PYTHONDONTWRITEBYTECODE kept: every module compiled at each start)")
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
        if args.end_to_end_only:
            end_to_end(rs, result.config_path, args.repeat, installed_env(state, not args.no_bytecode))
            return
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
        wait_agree(rs)
        end_to_end(rs, result.config_path, args.repeat, installed_env(state, not args.no_bytecode))
    finally:
        sandbox.down(root=root)


if __name__ == "__main__":
    main()
