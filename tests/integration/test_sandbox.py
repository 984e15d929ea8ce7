"""The sandbox is real: streaming replicas, a slot, archiving, pg_stat_statements, PgBouncer,
a config dbops accepts, and a `down` that leaves nothing running."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from click.testing import CliRunner

from dbops import config as dbops_config
from dbops import sandbox
from dbops.sandbox.cli import sandbox as sandbox_cli

if TYPE_CHECKING:
    # tests/integration is not a package, so conftest is not importable by a stable name at
    # run time; the fixture hands us the object anyway.
    from tests.integration.conftest import PgSandbox


def _state_dir(prefix: str) -> Path:
    """A fresh /tmp directory the postgres OS user can traverse (as the conftest makes)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


async def apoll(predicate, timeout: float = 30.0, interval: float = 0.1):
    """Await `predicate` until it returns something truthy (returned) or the timeout passes
    (returns the last value): a bound on waiting, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Topology


async def test_primary_and_replicas_roles(pg_sandbox: PgSandbox) -> None:
    for member, recovering in (("pg1", False), ("pg2", True), ("pg3", True)):
        rows = await pg_sandbox.fetch(member, "SELECT pg_is_in_recovery() AS r")
        assert rows[0]["r"] is recovering, member


async def test_replicas_stream_from_pg1_by_application_name(pg_sandbox: PgSandbox) -> None:
    rows = await pg_sandbox.fetch("pg1", "SELECT application_name, state FROM pg_stat_replication")
    states = {r["application_name"]: r["state"] for r in rows}
    assert states == {"pg2": "streaming", "pg3": "streaming"}


async def test_pg2_uses_an_active_physical_slot_and_pg3_none(pg_sandbox: PgSandbox) -> None:
    # Other test modules may add slots of their own for a while; only pg2's matters here.
    slots = await pg_sandbox.fetch("pg1", "SELECT slot_name, slot_type, active FROM pg_replication_slots")
    assert {s["slot_name"]: (s["slot_type"], s["active"]) for s in slots}["pg2"] == ("physical", True)
    assert "pg3" not in {s["slot_name"] for s in slots}
    for member, slot in (("pg2", "pg2"), ("pg3", None)):
        rows = await pg_sandbox.fetch(member, "SELECT status, slot_name FROM pg_stat_wal_receiver")
        assert rows[0]["status"] == "streaming"
        assert rows[0]["slot_name"] == slot


async def test_pg_stat_statements_is_installed_and_collecting(pg_sandbox: PgSandbox) -> None:
    ext = await pg_sandbox.fetch("pg1", "SELECT extname FROM pg_extension WHERE extname = 'pg_stat_statements'")
    assert len(ext) == 1
    # Query texts are normalised and shared between statements of the same shape, so find our
    # statement by the query id the server gives it, not by its text.
    qid = (await pg_sandbox.fetch("pg1", "SELECT query_id AS q FROM pg_stat_activity WHERE pid = pg_backend_pid()"))[0]["q"]
    assert qid is not None  # compute_query_id = auto is switched on by the loaded library
    rows = await pg_sandbox.fetch("pg1", "SELECT calls FROM pg_stat_statements WHERE queryid = $1", qid)
    assert rows and rows[0]["calls"] >= 1


async def test_wal_archiving_copies_switched_segments(pg_sandbox: PgSandbox) -> None:
    before = (await pg_sandbox.fetch("pg1", "SELECT archived_count FROM pg_stat_archiver"))[0]["archived_count"]
    # A WAL record without creating a table, so the switch really closes a segment.
    await pg_sandbox.fetch("pg1", "SELECT pg_logical_emit_message(false, 'dbops-test', 'archive me')")
    segment = (await pg_sandbox.fetch("pg1", "SELECT pg_walfile_name(pg_switch_wal()) AS f"))[0]["f"]

    async def archived():
        row = (await pg_sandbox.fetch("pg1", "SELECT archived_count, failed_count FROM pg_stat_archiver"))[0]
        return row["archived_count"] > before and (pg_sandbox.archive_dir / segment).exists() and row

    row = await apoll(archived)
    assert row, f"segment {segment} not archived into {pg_sandbox.archive_dir}"
    assert row["failed_count"] == 0


async def test_password_auth_is_enforced_over_tcp(pg_sandbox: PgSandbox) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host="127.0.0.1", port=pg_sandbox.port("pg1"), user="postgres", password="wrong", database="postgres", timeout=10
        )


# ---------------------------------------------------------------------------------------------
# PgBouncer


def test_pgbouncer_admin_console_answers_show_pools_and_stats(pg_sandbox: PgSandbox) -> None:
    # Through PgBouncer to pg1 first, so the pool exists.
    assert pg_sandbox.psql("pgbouncer", "SELECT 41 + 1") == "42"
    pools = pg_sandbox.psql("pgbouncer", "SHOW POOLS", database="pgbouncer")
    assert any(line.split("|")[:2] == ["postgres", "postgres"] for line in pools.splitlines()), pools
    stats = pg_sandbox.psql("pgbouncer", "SHOW STATS", database="pgbouncer")
    assert any(line.startswith("postgres|") for line in stats.splitlines()), stats


async def test_asyncpg_through_pgbouncer_in_transaction_mode(pg_sandbox: PgSandbox) -> None:
    # Transaction pooling: asyncpg's prepared-statement cache must be off.
    conn = await asyncpg.connect(pg_sandbox.dsn("pgbouncer"), statement_cache_size=0, timeout=10)
    try:
        assert await conn.fetchval("SELECT inet_server_port()") == pg_sandbox.port("pg1")
    finally:
        await conn.close()


# ---------------------------------------------------------------------------------------------
# Config and idempotence


def test_written_config_validates_and_matches_the_servers(pg_sandbox: PgSandbox) -> None:
    cfg = dbops_config.load(pg_sandbox.config_path)
    env = cfg.environments["sandbox"]
    assert env.sandbox and env.mode == "operator"
    cluster = env.clusters["sandbox-pg"]
    assert cluster.engine == "postgres"
    assert cluster.password is not None and cluster.password.value == pg_sandbox.password
    assert [(m.name, m.role, m.port, m.application_name) for m in cluster.members] == [
        ("pg1", "primary", pg_sandbox.port("pg1"), "pg1"),
        ("pg2", "replica", pg_sandbox.port("pg2"), "pg2"),
        ("pg3", "replica", pg_sandbox.port("pg3"), "pg3"),
    ]
    assert cluster.pgbouncer is not None
    assert cluster.pgbouncer.port == pg_sandbox.pgbouncer_port
    assert cluster.pgbouncer.password is not None and cluster.pgbouncer.password.value == pg_sandbox.password
    # The file holds a password: nobody else may read it.
    assert pg_sandbox.config_path.stat().st_mode & 0o077 == 0


def test_config_path_uses_the_state_dir(pg_sandbox: PgSandbox) -> None:
    assert os.environ["DBOPS_STATE_DIR"] == str(pg_sandbox.state_dir)
    assert sandbox.config_path() == pg_sandbox.config_path


def test_up_again_reports_already_up_and_changes_nothing(pg_sandbox: PgSandbox) -> None:
    pids = {m: pg_sandbox.pid(m) for m in ("pg1", "pg2", "pg3", "pgbouncer", "coord")}
    result = sandbox.up(("postgres",), root=pg_sandbox.root)
    assert result.already_up
    assert {m: pg_sandbox.pid(m) for m in pids} == pids
    rows = sandbox.status(root=pg_sandbox.root)
    assert [(r.name, r.role, r.running, r.pid) for r in rows if r.engine == "postgres"] == [
        ("pg1", "primary", True, pids["pg1"]),
        ("pg2", "replica", True, pids["pg2"]),
        ("pg3", "replica", True, pids["pg3"]),
        ("pgbouncer", "pooler for pg1", True, pids["pgbouncer"]),
        ("coord", "coordination db (locks, approvals)", True, pids["coord"]),
    ]
    # The session's sandbox also runs S3 (moto), untouched by bringing postgres up again.
    assert [(r.engine, r.running) for r in rows if r.engine != "postgres"] == [("s3", True)]


def test_unknown_engine_is_refused_with_the_known_ones() -> None:
    with pytest.raises(sandbox.SandboxError, match=r"unknown sandbox engine 'nosuch'; known engines: postgres"):
        sandbox.up(("nosuch",))


# ---------------------------------------------------------------------------------------------
# Stopping and starting single members (each test restores the topology for later tests)


async def test_kill_and_restart_primary(pg_sandbox: PgSandbox) -> None:
    old_pid = pg_sandbox.pid("pg1")
    try:
        pg_sandbox.stop_member("pg1")  # immediate: a crash, as far as the server knows
        assert pg_sandbox.pid("pg1") is None
        assert not sandbox.pid_alive(old_pid)
        with pytest.raises(OSError):
            await asyncpg.connect(pg_sandbox.dsn("pg1"), timeout=5)
        pg_sandbox.stop_member("pg1")  # already stopped: a no-op
    finally:
        pg_sandbox.start_member("pg1")
        pg_sandbox.wait_streaming()
    assert pg_sandbox.pid("pg1") not in (None, old_pid)
    rows = await pg_sandbox.fetch("pg1", "SELECT pg_is_in_recovery() AS r")
    assert rows[0]["r"] is False
    assert await apoll(lambda: _slot_active(pg_sandbox)), "slot pg2 not active again after pg1 restarted"


async def _slot_active(pg_sandbox: PgSandbox) -> bool:
    rows = await pg_sandbox.fetch("pg1", "SELECT active FROM pg_replication_slots WHERE slot_name = 'pg2'")
    return bool(rows and rows[0]["active"])


async def test_stop_and_start_a_replica_and_pgbouncer(pg_sandbox: PgSandbox) -> None:
    try:
        pg_sandbox.stop_member("pg3", mode="fast")
        assert pg_sandbox.pid("pg3") is None
        rows = await pg_sandbox.fetch("pg1", "SELECT application_name FROM pg_stat_replication")
        assert "pg3" not in {r["application_name"] for r in rows}
        pg_sandbox.stop_member("pgbouncer")
        assert pg_sandbox.pid("pgbouncer") is None
        with pytest.raises(OSError):
            await asyncpg.connect(pg_sandbox.dsn("pgbouncer"), statement_cache_size=0, timeout=5)
    finally:
        pg_sandbox.start_member("pg3")
        pg_sandbox.start_member("pgbouncer")
        pg_sandbox.wait_streaming()
    assert pg_sandbox.psql("pgbouncer", "SELECT 1") == "1"


def test_unknown_member_is_refused(pg_sandbox: PgSandbox) -> None:
    with pytest.raises(sandbox.SandboxError, match="no sandbox member 'pg9'"):
        pg_sandbox.stop_member("pg9")


# ---------------------------------------------------------------------------------------------
# A second, private sandbox driven through the CLI: up, down, down again


def _descendants(pids: list[int]) -> dict[int, str]:
    """pid -> /proc start time for `pids` and all their descendants (start time tells a
    recycled pid from the original)."""
    stats: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
        fields = stat[stat.rindex(")") + 2 :].split()
        stats[int(entry.name)] = (int(fields[1]), fields[19])  # ppid, starttime
    found = {p: stats[p][1] for p in pids if p in stats}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, start) in stats.items():
            if ppid in found and pid not in found:
                found[pid] = start
                grew = True
    return found


def _still_running(procs: dict[int, str]) -> list[int]:
    alive = []
    for pid, start in procs.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[19] == start and fields[0] not in ("Z", "X"):
            alive.append(pid)
    return alive


def test_cli_up_status_config_down_twice_leaves_nothing_running() -> None:
    state_dir = _state_dir("dbops-it-cli-")
    env = {"DBOPS_STATE_DIR": str(state_dir)}
    runner = CliRunner()
    try:
        res = runner.invoke(sandbox_cli, ["config"], env=env)
        assert res.exit_code == 1 and "error: no sandbox is up" in res.output

        res = runner.invoke(sandbox_cli, ["up", "--engines", "postgres"], env=env)
        assert res.exit_code == 0, res.output
        config_path = state_dir / "sandbox" / "dbops.toml"
        dbops_config.load(config_path)

        res = runner.invoke(sandbox_cli, ["config"], env=env)
        assert res.exit_code == 0 and res.stdout.strip() == str(config_path)

        res = runner.invoke(sandbox_cli, ["status"], env=env)
        assert res.exit_code == 0
        assert sum(" up " in line for line in res.stdout.splitlines()) == 5, res.stdout

        from dbops.sandbox.postgres import PostgresSandbox

        pg = PostgresSandbox(state_dir / "sandbox")
        tops = [pg.pid(m) for m in ("pg1", "pg2", "pg3", "pgbouncer", "coord")]
        assert all(tops), tops
        procs = _descendants(tops)
        assert len(procs) > len(tops)  # postmasters have children

        for _ in range(2):
            res = runner.invoke(sandbox_cli, ["down"], env=env)
            assert res.exit_code == 0, res.output
            assert _still_running(procs) == []

        res = runner.invoke(sandbox_cli, ["status"], env=env)
        assert res.exit_code == 0 and " up " not in res.stdout and res.stdout.count(" down ") == 5, res.stdout
        res = runner.invoke(sandbox_cli, ["config"], env=env)
        assert res.exit_code == 1 and "error: no sandbox is up" in res.output
        res = runner.invoke(sandbox_cli, ["up", "--engines", "postgres,nosuch"], env=env)
        assert res.exit_code == 1 and "error: unknown sandbox engine 'nosuch'" in res.output
    finally:
        sandbox.down(root=state_dir / "sandbox")
        shutil.rmtree(state_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root has to hand the servers to the postgres user")
def test_unreachable_state_dir_is_a_clear_error() -> None:
    hidden = _state_dir("dbops-it-hidden-")
    try:
        hidden.chmod(0o700)  # like /root: postgres cannot traverse it
        with pytest.raises(sandbox.SandboxError, match="set DBOPS_STATE_DIR to a directory it can reach"):
            sandbox.up(("postgres",), root=hidden / "state" / "sandbox")
        assert not (hidden / "state" / "sandbox").exists()
    finally:
        shutil.rmtree(hidden)
