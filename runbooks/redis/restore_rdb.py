"""redis.restore-rdb: put an RDB backup back into the master of a standalone or Sentinel deployment.

Pre-checks: the backup (the newest for this cluster, or `--param key=...`) downloads and matches
its manifest's SHA-256; redis-check-rdb reads it and counts the manifest's keys; the master is
known and answers. Steps: the sentinels stop judging the master down (down-after-milliseconds
raised, the old value kept) -> the master stops (SHUTDOWN NOSAVE) -> its RDB is replaced, the
old files kept beside it, and appendonly set to no (with AOF on, Redis would load the AOF and
ignore the RDB) -> start -> AOF back on (CONFIG SET appendonly yes rewrites it from the restored
data; CONFIG REWRITE keeps it) -> the sentinels' setting back -> verify: DBSIZE equals the
manifest's key count, and every replica resynchronised to the same count.

Where dbops runs the servers (the sandbox) the host steps (stop, replace, start) run automatically;
elsewhere they are manual steps with the exact commands, run by the operator on the master's host.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

from dbops.engines.redis import client as rc
from dbops.engines.redis import rdb
from dbops.engines.redis.data import parse_info
from dbops.runbook.hosts import HostOp, Verb
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict, host_variants
from dbops.runbooks.redis import common
from dbops.runbooks.redis.backup import KIND

HOLD_DOWN_AFTER_MS = 24 * 3600 * 1000  # sentinels do not fail over a master stopped on purpose
SENTINEL_DEFAULT_DOWN_AFTER_MS = 30000
WAIT_SECONDS = 120.0


def staging(ctx: Context) -> Path:
    return ctx.staging_dir / "restore.rdb"


async def setup(ctx: Context) -> None:
    ctx.resources["clients"] = {}


async def teardown(ctx: Context) -> None:
    await asyncio.gather(*(rc.close(c) for c in ctx.resources.get("clients", {}).values()))


def client(ctx: Context, address: str, sentinel: bool = False) -> Any:
    clients = ctx.resources["clients"]
    if (address, sentinel) not in clients:
        clients[(address, sentinel)] = rc.connect(ctx.ref, address, sentinel=sentinel, timeout=30.0)
    return clients[(address, sentinel)]


async def drop(ctx: Context, address: str) -> None:
    c = ctx.resources["clients"].pop((address, False), None)
    if c is not None:
        await rc.close(c)


def sentinels(ctx: Context) -> list[str]:
    opts = ctx.ref.cluster.redis
    return [f"{m.host}:{m.port}" for m in opts.sentinels] if opts and opts.mode == "sentinel" else []


def master_name(ctx: Context) -> str:
    opts = ctx.ref.cluster.redis
    return opts.master_name if opts and opts.master_name else ""


# -- pre-checks ---------------------------------------------------------------------------------


async def check_backup(ctx: Context) -> Verdict:
    from dbops.platform import s3

    opts = ctx.ref.cluster.redis
    if opts is None or opts.mode == "cluster":
        return Verdict(False, "restore-rdb restores standalone and Sentinel deployments; a Cluster shard is restored "
                              "node by node by hand (see the runbook's description)")
    loc = ctx.ref.cluster.backups.s3
    if loc is None:
        return Verdict(False, f"no backup location for {ctx.ref.name} (backups.s3)")
    key = str(ctx.params.get("key") or "")
    if not key:
        found = [m for m in await asyncio.to_thread(s3.list_backups, loc, KIND) if m.meta.get("cluster") == ctx.ref.name]
        if not found:
            return Verdict(False, f"no {KIND} backup of {ctx.ref.name} under s3://{loc.bucket}/{loc.prefix}")
        key = found[0].key
    path = staging(ctx)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        manifest = await asyncio.to_thread(s3.download_verified, loc, key, path)
    except s3.S3Error as exc:
        return Verdict(False, str(exc))
    c = await rdb.check(path)
    expected = int(manifest.meta.get("keys", "-1"))
    if not c.ok or c.keys != expected:
        return Verdict(False, f"{key}: {c.message}; the manifest says {expected} keys")
    ctx.state.update(key=key, keys=expected, sha256=manifest.sha256, created=manifest.created.isoformat())
    return Verdict(True, f"{key} ({manifest.created:%Y-%m-%d %H:%M} UTC, {manifest.size} bytes): SHA-256 matches, {c.message}")


async def check_master(ctx: Context) -> Verdict:
    names = {f"{m.host}:{m.port}": m.name for m in ctx.ref.cluster.members}
    master = None
    if sentinels(ctx):
        for s in sentinels(ctx):
            try:
                reply = await client(ctx, s, sentinel=True).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name(ctx))
                master = f"{common.text(reply[0])}:{common.text(reply[1])}"
                break
            except Exception as exc:  # the next sentinel may answer
                ctx.log(f"sentinel {s}: {rc.classify(exc, s, ctx.ref.timeout)[1]}")
    else:
        for address in names:
            try:
                info = parse_info(common.text(await client(ctx, address).execute_command("INFO", "replication")))
            except Exception as exc:  # a member that does not answer cannot be the one to restore
                ctx.log(f"{names[address]}: {rc.classify(exc, address, ctx.ref.timeout)[1]}")
                continue
            if info.get("role") == "master":
                master = address
                break
    if master is None:
        return Verdict(False, "the master is unknown: no sentinel or member answered")
    info = parse_info(common.text(await client(ctx, master).execute_command("INFO", "server", "persistence", "keyspace", "replication")))
    ctx.state["master"] = master
    ctx.state["master_name"] = names.get(master, master)
    ctx.state["replicas"] = int(info.get("connected_slaves", 0))
    cfg = await client(ctx, master).execute_command("CONFIG", "GET", "dir")
    ctx.state["data_dir"] = common.text(cfg[1]) if isinstance(cfg, list) else common.text(next(iter(cfg.values())))
    keys = sum(int(v.split("keys=")[1].split(",")[0]) for k, v in info.items() if k.startswith("db"))
    return Verdict(True, f"master {ctx.state['master_name']} ({master}) holds {keys} keys now; "
                         f"{ctx.state['replicas']} replica(s) will resynchronise from the restored data")


# -- automatic steps ----------------------------------------------------------------------------


async def hold_sentinels(ctx: Context) -> None:
    previous = {}
    for s in sentinels(ctx):
        reply = await client(ctx, s, sentinel=True).execute_command("SENTINEL", "MASTER", master_name(ctx))
        d = common.pairs(reply)
        previous[s] = int(d["down-after-milliseconds"])
        if previous[s] != HOLD_DOWN_AFTER_MS:
            await client(ctx, s, sentinel=True).execute_command("SENTINEL", "SET", master_name(ctx), "down-after-milliseconds",
                                                                 HOLD_DOWN_AFTER_MS)
    # Kept from the first run only: a resumed run must not record the held value as the old one.
    ctx.state.setdefault("down_after_ms", previous)
    ctx.log(f"{len(previous)} sentinels will not judge the master down while it is restored")


async def release_sentinels(ctx: Context) -> None:
    for s, ms in ctx.state.get("down_after_ms", {}).items():
        if ms == HOLD_DOWN_AFTER_MS:
            # Held already when this run began (an earlier run stopped half-way): Sentinel's default.
            ms = SENTINEL_DEFAULT_DOWN_AFTER_MS
            ctx.log(f"sentinel {s} was held before this run began; setting Sentinel's default {ms} ms")
        await client(ctx, s, sentinel=True).execute_command("SENTINEL", "SET", master_name(ctx), "down-after-milliseconds", ms)
    ctx.log("sentinels judge the master with their own down-after-milliseconds again")


async def stop_master(ctx: Context) -> None:
    await drop(ctx, ctx.state["master"])
    r = await ctx.hosts.perform(HostOp(Verb.STOP, ctx.state["master"], ("nosave",)))
    ctx.log(f"{r.detail} (SHUTDOWN NOSAVE)")


async def replace_rdb(ctx: Context) -> None:
    master, keep = ctx.state["master"], f"before-{ctx.run_id}"
    # The AOF directory goes aside too: an RDB restore must not be mixed with the old AOF's files.
    written = await ctx.hosts.perform(HostOp(Verb.WRITE_FILE, master, ("dump.rdb", str(staging(ctx)), keep, "appendonlydir")))
    # With AOF on, Redis would load the AOF at start and ignore the restored RDB.
    await ctx.hosts.perform(HostOp(Verb.RUN, master, ("config", "appendonly", "no")))
    ctx.log(f"{written.detail}; appendonly no for the start")


async def start_master(ctx: Context) -> None:
    await ctx.hosts.perform(HostOp(Verb.START, ctx.state["master"]))
    await _wait_loaded(ctx)


async def _wait_loaded(ctx: Context) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            info = parse_info(common.text(await client(ctx, ctx.state["master"]).execute_command("INFO", "persistence", "keyspace")))
            if info.get("loading") == "0":
                keys = sum(int(v.split("keys=")[1].split(",")[0]) for k, v in info.items() if k.startswith("db"))
                ctx.log(f"{ctx.state['master_name']} loaded the RDB: {keys} keys")
                return
        except Exception as exc:  # still starting, or loading (LOADING errors): ask again
            ctx.log(f"waiting for {ctx.state['master_name']}: {rc.classify(exc, ctx.state['master'], ctx.ref.timeout)[1]}")
            await drop(ctx, ctx.state["master"])
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{ctx.state['master_name']} did not finish loading within {WAIT_SECONDS:g}s")


async def enable_aof(ctx: Context) -> None:
    c = client(ctx, ctx.state["master"])
    await c.execute_command("CONFIG", "SET", "appendonly", "yes")
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        info = parse_info(common.text(await c.execute_command("INFO", "persistence")))
        if info.get("aof_enabled") == "1" and info.get("aof_rewrite_in_progress") == "0" and info.get("aof_rewrite_scheduled") == "0":
            if info.get("aof_last_bgrewrite_status") != "ok":
                raise RuntimeError(f"the AOF rewrite failed ({info.get('aof_last_bgrewrite_status')}); see the server's log")
            await c.execute_command("CONFIG", "REWRITE")
            ctx.log("AOF on again, rewritten from the restored data; CONFIG REWRITE saved appendonly yes")
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the AOF rewrite did not finish within {WAIT_SECONDS:g}s")


async def do_verify(ctx: Context) -> None:
    expected = ctx.state["keys"]
    c = client(ctx, ctx.state["master"])
    got = int(await c.execute_command("DBSIZE"))
    if got != expected:
        raise RuntimeError(f"{ctx.state['master_name']} holds {got} keys; the backup's manifest says {expected}")
    deadline = time.monotonic() + WAIT_SECONDS
    replicas: list[tuple[str, int]] = []
    while time.monotonic() < deadline:
        info = parse_info(common.text(await c.execute_command("INFO", "replication")))
        links = [v for k, v in info.items() if k.startswith("slave") and k[5:].isdigit()]
        addrs = [f"{dict(p.split('=') for p in v.split(','))['ip']}:{dict(p.split('=') for p in v.split(','))['port']}" for v in links]
        replicas = []
        for a in addrs:
            try:
                replicas.append((a, int(await client(ctx, a).execute_command("DBSIZE"))))
            except Exception:  # a replica still loading the new data answers LOADING: ask again
                replicas.append((a, -1))
        if len(replicas) >= ctx.state.get("replicas", 0) and all(n == expected for _, n in replicas):
            break
        await asyncio.sleep(0.5)
    else:
        raise RuntimeError(f"replicas not in step with the restored master after {WAIT_SECONDS:g}s: "
                           + ", ".join(f"{a} {n if n >= 0 else 'loading'} keys" for a, n in replicas))
    ctx.log(f"{ctx.state['master_name']}: {got} keys, as the manifest says; replicas: "
            + (", ".join(f"{a} {n}" for a, n in replicas) or "none"))
    await asyncio.to_thread(shutil.rmtree, staging(ctx).parent, True)


# -- rendering ----------------------------------------------------------------------------------


def _sentinel_cmds(ctx: Context, value: str) -> list[str]:
    return [f"SENTINEL SET {master_name(ctx)} down-after-milliseconds {value}   # on sentinel {s}" for s in sentinels(ctx)] \
        or ["# no sentinels"]


def host_commands(ctx: Context) -> list[str]:
    d = ctx.state.get("data_dir", "<dir>")
    m = ctx.state.get("master", "<master>")
    host, _, port = m.rpartition(":")
    return [
        f"# on {ctx.state.get('master_name', 'the master')}'s host ({m}), as the redis user:",
        f"redis-cli -h {host} -p {port} SHUTDOWN NOSAVE    # with REDISCLI_AUTH set",
        f"mv {d}/dump.rdb {d}/dump.rdb.before-{ctx.run_id}; mv {d}/appendonlydir {d}/appendonlydir.before-{ctx.run_id}",
        f"cp <this host>:{staging(ctx)} {d}/dump.rdb; chown redis: {d}/dump.rdb",
        "sed -i 's/^appendonly .*/appendonly no/' /etc/redis/redis.conf   # Redis loads the AOF instead of the RDB when it is on",
        "systemctl start redis-server",
    ]


def _steps(managed: bool) -> tuple[Step, ...]:
    head = (
        Step("hold", "Hold the sentinels", "raise down-after-milliseconds so the stopped master is not failed over "
             "(the old values are kept for the release step)", Kind.ACTION,
             # The restore's typed confirmation comes here, before the first change: declining it
             # leaves the sentinels as they were.
             lambda ctx: _sentinel_cmds(ctx, str(HOLD_DOWN_AFTER_MS)), run=hold_sentinels, confirm=Confirm.TYPE_CLUSTER,
             timeout=60.0, applies=lambda ctx: bool(sentinels(ctx)), produces=("down_after_ms",)),
    )
    if managed:
        host = (
            Step("stop", "Stop the master", "SHUTDOWN NOSAVE: its data in memory is discarded", Kind.ACTION,
                 lambda ctx: [f"SHUTDOWN NOSAVE   # on {ctx.state.get('master_name')} ({ctx.state.get('master')})"],
                 run=stop_master, destructive=True, confirm=Confirm.TYPE_CLUSTER, timeout=60.0),
            Step("replace", "Replace its RDB", "the old dump.rdb and appendonlydir kept beside it; appendonly no for the start",
                 Kind.ACTION, host_commands, run=replace_rdb, timeout=600.0),
            Step("start", "Start it", "it loads the restored RDB", Kind.ACTION,
                 lambda ctx: [f"redis-server {ctx.state.get('data_dir', '<dir>')}/redis.conf   # the sandbox starts it"],
                 run=start_master, timeout=WAIT_SECONDS + 30),
        )
    else:
        host = (
            Step("host", "Stop, replace the RDB, start (on the master's host)", "the exact commands for the operator",
                 Kind.MANUAL, host_commands, destructive=True, confirm=Confirm.TYPE_CLUSTER,
                 on_failure="the old files are beside the new one (*.before-<run id>): move them back to undo"),
            Step("loaded", "Wait for the master to load", "until INFO persistence says loading:0", Kind.WAIT,
                 lambda ctx: ["INFO persistence   # until loading:0"], run=_wait_loaded, timeout=WAIT_SECONDS + 30),
        )
    tail = (
        Step("aof", "Turn AOF back on", "CONFIG SET appendonly yes (rewrites the AOF from the restored data), then "
             "CONFIG REWRITE", Kind.ACTION, lambda ctx: ["CONFIG SET appendonly yes", "INFO persistence   # until the rewrite is done",
                                                          "CONFIG REWRITE"], run=enable_aof, timeout=WAIT_SECONDS + 30),
        Step("release", "Release the sentinels", "their down-after-milliseconds as before", Kind.ACTION,
             lambda ctx: _sentinel_cmds(ctx, "<the value before>"), run=release_sentinels, timeout=60.0,
             applies=lambda ctx: bool(sentinels(ctx))),
        Step("verify", "Verify", "DBSIZE equals the manifest's key count; every replica resynchronised to it", Kind.CHECK,
             lambda ctx: ["DBSIZE   # on the master, then on each replica"], run=do_verify, timeout=WAIT_SECONDS + 30),
    )
    return head + host + tail


def _book(steps: tuple[Step, ...]) -> Runbook:
    return Runbook(
        id="redis.restore-rdb",
        title="Restore an RDB backup into a Redis master",
        params=(Param("key", "the backup's S3 key (default: the newest of this cluster)", default=""),),
        prechecks=(
            Check("backup", "the backup downloads, matches its manifest and reads back", check_backup, timeout=3600),
            Check("master", "the master is known and answers", check_master),
        ),
        steps=steps,
        setup=setup,
        teardown=teardown,
    )


RUNBOOK = host_variants(lambda managed: _book(_steps(managed)))
