"""postgres.restore through `dbops runbook`, on the sandbox's real pgBackRest stanza.

Each test restores into a new copy under the sandbox's restores/ directory and removes it at the
end; the live cluster is only written to (rows to recover) and never restored over.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import pytest

from dbops.audit import verify
from dbops.engines.postgres import restore as rs

from .conftest import pg_exec
from .crash import resume, run_killed_after

STANZA = "sandbox-pg"


def dbops(pg_sandbox, *args):
    return subprocess.run(
        [sys.executable, "-m", "dbops.cli", *([] if "--config" in args else ["--config", str(pg_sandbox.config_path)]), *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, "DBOPS_STATE_DIR": str(pg_sandbox.state_dir)},
        stdin=subprocess.DEVNULL,
    )


def run_id(stdout: str) -> str:
    return next(line.split()[-1] for line in stdout.splitlines() if line.startswith("run id:"))


def copy_paths(pg_sandbox, rid: str) -> rs.CopyPaths:
    return rs.paths_for(pg_sandbox.root / "restores", STANZA, rid)


def copy_port(pg_sandbox, rid: str) -> int:
    text = (copy_paths(pg_sandbox, rid).data / "postgresql.auto.conf").read_text()
    return int(re.findall(r"^port = (\d+)$", text, re.M)[-1])


async def copy_fetch(pg_sandbox, rid: str, sql: str) -> list:
    dsn = f"postgresql://postgres:{pg_sandbox.password}@127.0.0.1:{copy_port(pg_sandbox, rid)}/postgres"
    return await pg_exec(dsn, sql)


async def remove_copy(pg_sandbox, rid: str) -> None:
    await rs.remove(pg_sandbox.pg.bindir, copy_paths(pg_sandbox, rid), pg_sandbox.pg.owner.name, rid)
    assert not copy_paths(pg_sandbox, rid).root.exists()


def audit_records(pg_sandbox) -> list[dict]:
    path = pg_sandbox.state_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def backed_up(pg_sandbox):
    """A full backup to restore from, and a table of rows with known commit times."""
    pg_sandbox.pg.pgbackrest("--type=full", "backup", timeout=600)
    pg_sandbox.psql("pg1", "CREATE TABLE IF NOT EXISTS restore_rows (id int PRIMARY KEY)")
    yield pg_sandbox
    pg_sandbox.psql("pg1", "DROP TABLE IF EXISTS restore_rows")


async def commit_archived(pg_sandbox, primary: str = "pg1") -> None:
    """Close the current WAL segment and wait until the primary has archived it."""
    seg = (await pg_sandbox.fetch(primary, "SELECT pg_walfile_name(pg_switch_wal())"))[0][0]
    for _ in range(300):
        done = (await pg_sandbox.fetch(primary, "SELECT last_archived_wal FROM pg_stat_archiver"))[0][0]
        if done is not None and done >= seg:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{seg} was not archived")


async def two_commits_with_a_time_between(pg_sandbox, first: int, second: int) -> str:
    """Commit row `first`, take the server's clock, commit row `second`; returns that time."""
    await pg_sandbox.fetch("pg1", f"INSERT INTO restore_rows VALUES ({first})")
    await asyncio.sleep(0.3)
    between = (await pg_sandbox.fetch("pg1", "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') || 'Z'"))[0][0]
    await asyncio.sleep(0.3)
    await pg_sandbox.fetch("pg1", f"INSERT INTO restore_rows VALUES ({second})")
    await commit_archived(pg_sandbox)
    return between


async def test_restore_to_a_time_between_two_commits_yields_exactly_the_rows_before_it(backed_up):
    sb = backed_up
    before = {r[0] for r in await sb.fetch("pg1", "SELECT id FROM restore_rows")}
    target = await two_commits_with_a_time_between(sb, 101, 102)
    r = dbops(sb, "runbook", "run", "postgres.restore", "--cluster", STANZA, "--param", f"target={target}",
              "--param", "canary=restore_rows", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    rid = run_id(r.stdout)
    try:
        rows = {row[0] for row in await copy_fetch(sb, rid, "SELECT id FROM restore_rows")}
        assert rows == before | {101}  # 101 committed before the target, 102 after it
        # `dbops sandbox down` finds the running copy (and stops it with the sandbox)
        running = {data: pid for data, pid in sb.pg.restored_copies()}
        assert running.get(copy_paths(sb, rid).data) is not None, running
        assert tuple((await copy_fetch(sb, rid, "SELECT current_setting('archive_mode'), pg_is_in_recovery()"))[0]) == ("off", False)
        assert "target reached: first commit after it" in r.stdout
        assert f"canary rows: restore_rows {len(before) + 1}" in r.stdout
        assert re.search(r"RTO: \d+\.\ds from the first step to a verified copy", r.stdout)
        # The live cluster still has both rows and was not touched otherwise.
        assert {101, 102} <= {row[0] for row in await sb.fetch("pg1", "SELECT id FROM restore_rows")}
        mine = [(x["phase"], x["step"], x.get("outcome")) for x in audit_records(sb) if x.get("run_id") == rid]
        for step in ("prepare", "restore", "configure", "start"):
            assert ("intent", step, None) in mine and ("result", step, "ok") in mine, mine
        assert verify(sb.state_dir / "audit.jsonl").ok
        assert sb.password not in r.stdout + r.stderr
    finally:
        await remove_copy(sb, rid)


async def test_restore_latest_has_every_archived_commit(backed_up):
    sb = backed_up
    await sb.fetch("pg1", "INSERT INTO restore_rows VALUES (201)")
    await commit_archived(sb)
    r = dbops(sb, "runbook", "run", "postgres.restore", "--cluster", STANZA, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    rid = run_id(r.stdout)
    try:
        assert 201 in {row[0] for row in await copy_fetch(sb, rid, "SELECT id FROM restore_rows")}
        assert "replayed all archived WAL" in r.stdout
    finally:
        await remove_copy(sb, rid)


async def test_target_past_the_archived_wal_is_refused_and_changes_nothing(backed_up):
    sb = backed_up
    await sb.fetch("pg1", "INSERT INTO restore_rows VALUES (301)")  # in the current, unarchived segment
    now = (await sb.fetch("pg1", "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') || 'Z'"))[0][0]
    copies = set((sb.root / "restores").iterdir())
    r = dbops(sb, "runbook", "run", "postgres.restore", "--cluster", STANZA, "--param", f"target={now}", "--yes")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "WAL after the target is not archived yet" in r.stdout and "pg_switch_wal()" in r.stdout
    assert set((sb.root / "restores").iterdir()) == copies


async def test_bad_targets_are_refused_with_a_clear_message(backed_up):
    r = dbops(backed_up, "runbook", "plan", "postgres.restore", "--cluster", STANZA, "--param", "target=2026-11-22 01:00")
    assert r.returncode == 1 and "has no UTC offset" in r.stdout, r.stdout
    r = dbops(backed_up, "runbook", "plan", "postgres.restore", "--cluster", STANZA, "--param", "target=yesterday")
    assert r.returncode == 1 and "neither 'latest' nor an ISO 8601 time" in r.stdout, r.stdout
    r = dbops(backed_up, "runbook", "plan", "postgres.restore", "--cluster", STANZA, "--param", "target=2000-01-01T00:00:00Z")
    assert r.returncode == 1 and "no backup ends before" in r.stdout, r.stdout


async def test_kill_9_between_every_pair_of_steps_then_resume(backed_up):
    """For each step boundary: kill -9 dbops as soon as the journal records that step as done,
    resume, and check the copy holds exactly the rows before the target; the audit chain verifies."""
    sb = backed_up
    for n, boundary in enumerate(("prepare", "restore", "configure", "start", "recover")):
        expected = {row[0] for row in await sb.fetch("pg1", "SELECT id FROM restore_rows")} | {400 + n}
        target = await two_commits_with_a_time_between(sb, 400 + n, 500 + n)
        journal, out = run_killed_after(sb.config_path, sb.state_dir, ["postgres.restore", "--cluster", STANZA,
                                        "--param", f"target={target}", "--yes"], boundary)
        rid = journal.stem
        try:
            resume(sb.config_path, sb.state_dir, rid, "--yes")
            rows = {row[0] for row in await copy_fetch(sb, rid, "SELECT id FROM restore_rows")}
            assert rows == expected, f"killed after {boundary}"
        finally:
            await remove_copy(sb, rid)
    assert verify(sb.state_dir / "audit.jsonl").ok


async def test_verify_backups_restores_a_scratch_copy_and_removes_it(backed_up):
    sb = backed_up
    await sb.fetch("pg1", "INSERT INTO restore_rows VALUES (601)")
    await commit_archived(sb)
    copies = set((sb.root / "restores").iterdir())
    r = dbops(sb, "runbook", "run", "postgres.verify-backups", "--cluster", STANZA, "--param", "canary=restore_rows", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = (await sb.fetch("pg1", "SELECT count(*) FROM restore_rows"))[0][0]
    assert f"canary rows: restore_rows {rows}" in r.stdout
    assert "[ok] the newest backup is recent enough" in r.stdout and "[ok] WAL archiving is within the RPO" in r.stdout
    assert "stopped and removed" in r.stdout
    assert set((sb.root / "restores").iterdir()) == copies  # nothing left behind


async def test_verify_backups_refuses_stale_backups(backed_up, tmp_path):
    sb = backed_up
    config = tmp_path / "stale.toml"
    text = sb.config_path.read_text()
    head = "[environments.sandbox.clusters.sandbox-pg.backups]"
    if head in text:  # the sandbox wrote one (its S3 location): tighten it in place
        text = text.replace(head, head + "\nmax_age_seconds = 1")
    else:
        text += f"\n{head}\nmax_age_seconds = 1\n"
    config.write_text(text)
    await asyncio.sleep(1.1)
    r = dbops(sb, "--config", str(config), "runbook", "run", "postgres.verify-backups", "--cluster", STANZA, "--yes")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "[FAIL] the newest backup is recent enough" in r.stdout and "limit 1s" in r.stdout, r.stdout
    assert "pre-checks refused" in r.stdout


async def test_restore_in_place_goes_back_to_the_target_and_rebuilds_the_replicas(backed_up):
    """Over the live cluster: after the run, pg1 (primary) and both replicas hold exactly the rows
    committed before the target, and the replicas stream from pg1 again."""
    sb = backed_up
    before = {r[0] for r in await sb.fetch("pg1", "SELECT id FROM restore_rows")}
    target = await two_commits_with_a_time_between(sb, 701, 702)
    args = ("runbook", "run", "postgres.restore-in-place", "--cluster", STANZA, "--param", f"target={target}",
            "--param", "canary=restore_rows", "--yes")
    r = dbops(sb, *args)  # without --confirm naming the cluster, a destructive step refuses
    assert r.returncode == 3, r.stdout + r.stderr
    assert {r[0] for r in await sb.fetch("pg1", "SELECT id FROM restore_rows")} == before | {701, 702}

    r = dbops(sb, *args, "--confirm", STANZA)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "target reached: first commit after it" in r.stdout
    sb.wait_streaming()
    for m in ("pg1", "pg2", "pg3"):
        for _ in range(100):
            rows = {row[0] for row in await sb.fetch(m, "SELECT id FROM restore_rows")}
            if rows == before | {701}:
                break
            await asyncio.sleep(0.1)
        assert rows == before | {701}, m
    assert [m for m in ("pg1", "pg2", "pg3") if not (await sb.fetch(m, "SELECT pg_is_in_recovery()"))[0][0]] == ["pg1"]
    left = await sb.fetch("pg1", "SELECT name FROM pg_file_settings WHERE name LIKE 'recovery_target%'")
    assert not left
    # The repository goes on: archiving of the new timeline works, and a backup can be taken.
    await commit_archived(sb)
    assert verify(sb.state_dir / "audit.jsonl").ok


async def test_restore_in_place_elsewhere_shows_manual_host_steps(backed_up, tmp_path):
    """Outside the sandbox dbops does not manage the database hosts: stop, restore, start and
    rejoin are manual steps with exact commands; the plan changes nothing."""
    sb = backed_up
    text = sb.config_path.read_text().replace("sandbox = true", "sandbox = false")
    text = re.sub(r'\{ value = "[^"]*" \}', '{ env = "DBOPS_IT_RESTORE_PW" }', text)  # every credential, S3's too
    config = tmp_path / "staging.toml"
    config.write_text(text)
    r = subprocess.run(
        [sys.executable, "-m", "dbops.cli", "--config", str(config), "runbook", "plan", "postgres.restore-in-place",
         "--cluster", STANZA],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        env={**os.environ, "DBOPS_STATE_DIR": str(sb.state_dir), "DBOPS_IT_RESTORE_PW": sb.password},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for text in ("Stop every member (manual)", "Restore the backup over the member (manual)", "pg_rewind",
                 f"--pg1-path={sb.pg.data_dir('pg1')}", "--delta restore", "nothing was changed"):
        assert text in r.stdout, text
    assert sb.password not in r.stdout
