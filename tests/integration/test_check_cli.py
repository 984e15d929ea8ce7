"""`dbops check` and the pollers against the sandbox's real servers, as an on-call engineer sees them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dbops.config import load
from dbops.model import Reachability

# Byte thresholds small enough for a quick scenario on a small sandbox; the seconds thresholds
# stay at their defaults (a healthy replica must not trip them). Cache hit ratio is off because
# the scenarios' bulk inserts read from disk.
TEST_THRESHOLDS = """
[environments.sandbox.clusters.sandbox-pg.thresholds]
lag_bytes_warn = 2097152
lag_bytes_crit = 12582912
cache_hit_ratio_warn = 0.0
idle_in_transaction_seconds_warn = 1.0
idle_in_transaction_seconds_crit = 100000.0
inactive_slot_retained_bytes_warn = 1048576
"""


@pytest.fixture
def check_config(pg_sandbox, tmp_path) -> Path:
    text = pg_sandbox.config_path.read_text()
    p = tmp_path / "check.toml"
    p.write_text(text + TEST_THRESHOLDS)
    load(p)  # the test config itself must be valid
    return p


def run_check(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # The sandbox's cluster has an [rds] section (moto): its judgement is test_rds's, not these.
        [sys.executable, "-m", "dbops.cli", "--config", str(config), "check", "--no-backups", "--no-platform", *extra],
        capture_output=True, text=True, timeout=60, env={**os.environ},
    )


def member(report: dict, name: str) -> dict:
    return next(m for m in report["clusters"][0]["members"] if m["name"] == name)


async def generate_wal(pg_sandbox, mib: int) -> None:
    await pg_sandbox.fetch("pg1", "CREATE TABLE IF NOT EXISTS check_wal (v text)")
    # ~1 MiB of WAL per 1000 rows of 1 KiB
    await pg_sandbox.fetch("pg1", f"INSERT INTO check_wal SELECT repeat('x', 1024) FROM generate_series(1, {mib * 1000})")


async def wait_for(predicate, what: str, attempts: int = 60, delay: float = 0.5):
    for _ in range(attempts):
        value = predicate()
        if value:
            return value
        await asyncio.sleep(delay)
    raise AssertionError(f"gave up waiting for {what}")


async def test_check_json_shape_on_a_healthy_sandbox(check_config):
    r = run_check(check_config, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    (cluster,) = report["clusters"]
    assert cluster["name"] == "sandbox-pg" and cluster["engine"] == "postgres" and cluster["severity"] == "OK"
    assert [m["name"] for m in cluster["members"]] == ["pg1", "pg2", "pg3"]
    pg1 = member(report, "pg1")
    assert pg1["role"] == "primary" and pg1["reachable"] is True and pg1["lag_bytes"] is None and pg1["lag_seconds"] is None
    for name in ("pg2", "pg3"):
        m = member(report, name)
        assert m["role"] == "replica" and m["reachable"] and isinstance(m["lag_bytes"], int) and m["lag_seconds"] is not None
        assert m["problems"] == []


async def test_paused_replay_turns_warn_then_crit(pg_sandbox, check_config):
    await pg_sandbox.fetch("pg3", "SELECT pg_wal_replay_pause()")
    try:
        await generate_wal(pg_sandbox, 4)
        r = run_check(check_config, "--json")
        assert r.returncode == 1, r.stdout + r.stderr
        pg3 = member(json.loads(r.stdout), "pg3")
        assert pg3["severity"] == "WARN" and pg3["lag_bytes"] > 2 * 1024 * 1024
        assert any("lag" in p for p in pg3["problems"])
        await generate_wal(pg_sandbox, 12)
        r = run_check(check_config)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "CRIT" in r.stdout and "pg3" in r.stdout
    finally:
        await pg_sandbox.fetch("pg3", "SELECT pg_wal_replay_resume()")
        await pg_sandbox.fetch("pg1", "DROP TABLE IF EXISTS check_wal")
    # and it clears once replay resumes
    for _ in range(60):
        r = run_check(check_config)
        if r.returncode == 0:
            break
        await asyncio.sleep(0.5)
    assert r.returncode == 0, r.stdout


async def test_idle_in_transaction_and_inactive_slot_are_flagged_in_json(pg_sandbox, check_config):
    import asyncpg

    conn = await asyncpg.connect(pg_sandbox.dsn("pg1"), server_settings={"application_name": "forgotten-tx"})
    await pg_sandbox.fetch("pg1", "SELECT pg_create_physical_replication_slot('check_unused', true)")
    try:
        await conn.execute("BEGIN")
        await conn.execute("SELECT 1")
        await generate_wal(pg_sandbox, 2)
        await asyncio.sleep(1.5)  # past the 1 s idle-in-transaction threshold of this test config
        r = run_check(check_config, "--json")
        assert r.returncode in (1, 2), r.stdout + r.stderr
        problems = " | ".join(member(json.loads(r.stdout), "pg1")["problems"])
        assert "idle in transaction" in problems
        assert "check_unused" in problems
    finally:
        await conn.close()
        await pg_sandbox.fetch("pg1", "SELECT pg_drop_replication_slot('check_unused')")
        await pg_sandbox.fetch("pg1", "DROP TABLE IF EXISTS check_wal")


async def test_failing_archive_command_is_flagged_in_json_and_clears(pg_sandbox, check_config):
    await pg_sandbox.fetch("pg1", "ALTER SYSTEM SET archive_command = 'false'")
    await pg_sandbox.fetch("pg1", "SELECT pg_reload_conf()")
    try:
        await pg_sandbox.fetch("pg1", "CREATE TABLE IF NOT EXISTS check_wal (v text)")
        await pg_sandbox.fetch("pg1", "INSERT INTO check_wal VALUES ('x')")
        await pg_sandbox.fetch("pg1", "SELECT pg_switch_wal()")
        for _ in range(60):
            r = run_check(check_config, "--json")
            problems = " | ".join(member(json.loads(r.stdout), "pg1")["problems"])
            if "archiving failing" in problems:
                break
            await asyncio.sleep(0.5)
        assert "archiving failing" in problems, problems
        assert r.returncode == 1
    finally:
        await pg_sandbox.fetch("pg1", "ALTER SYSTEM RESET archive_command")
        await pg_sandbox.fetch("pg1", "SELECT pg_reload_conf()")
        await pg_sandbox.fetch("pg1", "DROP TABLE IF EXISTS check_wal")
    # the archiver retries the segment with the restored command, and the problem clears
    for _ in range(60):
        await pg_sandbox.fetch("pg1", "SELECT pg_switch_wal()")
        r = run_check(check_config, "--json")
        if not member(json.loads(r.stdout), "pg1")["problems"]:
            break
        await asyncio.sleep(1.0)
    assert member(json.loads(r.stdout), "pg1")["problems"] == []
    await pg_sandbox.fetch("pg1", "SELECT pg_stat_reset_shared('archiver')")


async def test_killed_primary_is_down_and_recovers_by_itself(pg_sandbox, check_config):
    from dbops.poller import PollerHub

    hub = PollerHub(load(check_config))
    hub.start()
    key = "sandbox/sandbox-pg"

    def pg1():
        return next(m for m in hub.cluster_health(key).members if m.name == "pg1")

    try:
        await wait_for(lambda: pg1().snapshot.reachable, "pg1 to be polled")
        pg_sandbox.stop_member("pg1", "immediate")
        down = await wait_for(lambda: pg1() if not pg1().snapshot.reachable else None, "pg1 to show DOWN")
        assert down.snapshot.reachability in (Reachability.DOWN, Reachability.TIMEOUT)
        assert down.snapshot.shown is not None  # last known values stay on screen
        assert down.snapshot.age_of_shown() is not None
        assert down.role == "primary"
        r = run_check(check_config, "--json")
        assert r.returncode == 2
        report_pg1 = member(json.loads(r.stdout), "pg1")
        assert report_pg1["reachable"] is False and report_pg1["severity"] == "CRIT"
    finally:
        pg_sandbox.start_member("pg1")
    await wait_for(lambda: pg1().snapshot.reachable, "pg1 to recover", attempts=120)
    hub.stop()
    pg_sandbox.wait_streaming()


def test_config_error_is_unknown_for_check(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[environments.x.clusters.c]\nengine = 'postgres'\nmembers = [{ name = 'a', hots = 'h' }]\n")
    r = run_check(bad)
    assert r.returncode == 3
    assert "did you mean 'host'" in r.stderr
    assert "Traceback" not in r.stderr


# What holds the xmin horizon back: judged after a second and a handful of transactions, so a
# quick scenario shows all three holders as problems (the defaults are 10 minutes and 50M).
HORIZON_THRESHOLDS = """
xmin_horizon_seconds_warn = 1.0
xmin_horizon_xid_age_warn = 5
long_transaction_seconds_warn = 1.0
"""


async def test_open_transaction_prepared_transaction_and_dead_replicas_slot_are_named_as_holding_the_horizon(
    pg_sandbox, check_config
):
    import asyncpg

    config = check_config.with_name("horizon.toml")
    config.write_text(check_config.read_text() + HORIZON_THRESHOLDS)
    await pg_sandbox.fetch("pg1", "CREATE TABLE IF NOT EXISTS horizon_t (i int)")
    writer = await asyncpg.connect(pg_sandbox.dsn("pg1"), server_settings={"application_name": "forgotten-writer"})
    preparer = await asyncpg.connect(pg_sandbox.dsn("pg1"))
    stopped = False
    try:
        # A transaction that wrote and was left open; a prepared transaction nobody committed;
        # the slot of a replica that went away (pg2's, holding the xmin its feedback last sent).
        await writer.execute("BEGIN; INSERT INTO horizon_t VALUES (1)")
        await preparer.execute("BEGIN; INSERT INTO horizon_t VALUES (2); PREPARE TRANSACTION 'dbops-horizon-test'")
        pg_sandbox.stop_member("pg2")
        stopped = True
        for i in range(20):  # transactions since: the holders' age in xids
            await pg_sandbox.fetch("pg1", "INSERT INTO horizon_t VALUES ($1)", i)
        await asyncio.sleep(1.5)  # past this config's 1 s
        r = run_check(config, "--json")
        assert r.returncode in (1, 2), r.stdout + r.stderr
        pg1 = member(json.loads(r.stdout), "pg1")
        horizon = next(m for m in pg1["metrics"] if m["name"] == "xmin_horizon")
        assert horizon["severity"] == "WARN", horizon
        pid = writer.get_server_pid()
        message = horizon["message"]
        assert f"session pid {pid} (idle in transaction, forgotten-writer, postgres)" in message, message
        assert "prepared transaction 'dbops-horizon-test'" in message, message
        assert "inactive slot pg2" in message, message
        # each with its age: transactions, and time where it has a start
        assert re.search(rf"session pid {pid} [^:]*: \d+ xids, \d+(\.\d)?s", message), message
        assert message in pg1["problems"]
        # The long transaction is judged on its own too.
        long_tx = next(m for m in pg1["metrics"] if m["name"] == "long_transactions")
        assert long_tx["severity"] == "WARN" and f"pid {pid}" in long_tx["message"], long_tx
    finally:
        await writer.close()
        await preparer.execute("ROLLBACK PREPARED 'dbops-horizon-test'")
        await preparer.close()
        await pg_sandbox.fetch("pg1", "DROP TABLE IF EXISTS horizon_t")
        if stopped:
            pg_sandbox.start_member("pg2")
            pg_sandbox.wait_streaming()
    # Let go of, the horizon is no longer a problem (pg2's slot moves on once it streams again).
    r = run_check(config, "--json")
    horizon = next(m for m in member(json.loads(r.stdout), "pg1")["metrics"] if m["name"] == "xmin_horizon")
    assert "dbops-horizon-test" not in horizon["message"] and "forgotten-writer" not in horizon["message"], horizon


async def test_a_role_at_its_connection_limit_is_named(pg_sandbox, check_config):
    import asyncpg

    await pg_sandbox.fetch("pg1", "DROP ROLE IF EXISTS dbops_limited")
    await pg_sandbox.fetch("pg1", f"CREATE ROLE dbops_limited LOGIN CONNECTION LIMIT 4 PASSWORD '{pg_sandbox.password}'")
    conns = []
    try:
        for _ in range(4):
            conns.append(await asyncpg.connect(host="127.0.0.1", port=pg_sandbox.port("pg1"), user="dbops_limited",
                                               password=pg_sandbox.password, database="postgres"))
        r = run_check(check_config, "--json")
        pg1 = member(json.loads(r.stdout), "pg1")
        assert "role dbops_limited: 4/4 connections (100% of its CONNECTION LIMIT) > crit 95%" in pg1["problems"], pg1["problems"]
        # A fifth is refused by the server: what the CRIT was about.
        with pytest.raises(asyncpg.TooManyConnectionsError):
            await asyncpg.connect(host="127.0.0.1", port=pg_sandbox.port("pg1"), user="dbops_limited",
                                  password=pg_sandbox.password, database="postgres")
    finally:
        for c in conns:
            await c.close()
        await pg_sandbox.fetch("pg1", "DROP ROLE IF EXISTS dbops_limited")
