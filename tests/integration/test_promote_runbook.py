"""postgres.promote-replica through `dbops runbook`, on the sandbox's real servers.

The sandbox is shared by the whole session: the switchover test switches back to pg1 at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from dbops.audit import verify


def dbops(pg_sandbox, *args):
    return subprocess.run(
        [sys.executable, "-m", "dbops.cli", "--config", str(pg_sandbox.config_path), *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, "DBOPS_STATE_DIR": str(pg_sandbox.state_dir)},
        stdin=subprocess.DEVNULL,
    )


async def role_and_timeline(pg_sandbox, member):
    row = (await pg_sandbox.fetch(member, "SELECT pg_is_in_recovery() AS r, ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int AS tl "
                                          "WHERE NOT pg_is_in_recovery() UNION ALL SELECT true, NULL WHERE pg_is_in_recovery()"))[0]
    return ("replica" if row["r"] else "primary"), row["tl"]


def audit_intents(pg_sandbox):
    path = pg_sandbox.state_dir / "audit.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["phase"] == "intent"]


async def streaming_from(pg_sandbox, member):
    rows = await pg_sandbox.fetch(member, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1")
    return [r["application_name"] for r in rows]


async def test_plan_changes_nothing(pg_sandbox):
    before = await role_and_timeline(pg_sandbox, "pg1")
    intents = len(audit_intents(pg_sandbox))
    r = dbops(pg_sandbox, "runbook", "plan", "postgres.promote-replica", "--cluster", "sandbox-pg", "--param", "candidate=pg2")
    assert r.returncode == 0, r.stdout + r.stderr
    for text in ("Fence the old primary", "pg_promote(wait => true", "pg_rewind", "nothing was changed", "[ok  ] candidate lag within"):
        assert text in r.stdout
    assert "password=***" in r.stdout and pg_sandbox.password not in r.stdout
    assert await role_and_timeline(pg_sandbox, "pg1") == before
    assert len(audit_intents(pg_sandbox)) == intents


async def test_plan_elsewhere_has_manual_pooler_and_rejoin_steps(pg_sandbox, tmp_path):
    """Outside the sandbox dbops cannot edit PgBouncer's configuration or reach the old primary's
    host: those steps are manual, with the exact commands."""
    import re

    text = pg_sandbox.config_path.read_text().replace("sandbox = true", "sandbox = false")
    text = re.sub(r'\{ value = "[^"]*" \}', '{ env = "DBOPS_IT_PROMOTE_PW" }', text)
    config = tmp_path / "staging.toml"
    config.write_text(text)
    r = subprocess.run(
        [sys.executable, "-m", "dbops.cli", "--config", str(config), "runbook", "plan", "postgres.promote-replica",
         "--cluster", "sandbox-pg", "--param", "candidate=pg2"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        env={**os.environ, "DBOPS_STATE_DIR": str(pg_sandbox.state_dir), "DBOPS_IT_PROMOTE_PW": pg_sandbox.password},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Point PgBouncer at the new primary (manual)" in r.stdout
    assert f"postgres = host=127.0.0.1 port={pg_sandbox.port('pg2')} dbname=postgres" in r.stdout
    assert "Rejoin the old primary as a replica (manual)" in r.stdout
    assert pg_sandbox.password not in r.stdout


async def test_lagging_candidate_is_refused_without_override(pg_sandbox):
    await pg_sandbox.fetch("pg3", "SELECT pg_wal_replay_pause()")
    try:
        await pg_sandbox.fetch("pg1", "CREATE TABLE IF NOT EXISTS promote_lag (v text)")
        await pg_sandbox.fetch("pg1", "INSERT INTO promote_lag SELECT repeat('x', 1024) FROM generate_series(1, 3000)")
        r = dbops(pg_sandbox, "runbook", "run", "postgres.promote-replica", "--cluster", "sandbox-pg", "--param", "candidate=pg3",
                  "--yes", "--confirm", "sandbox-pg")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "pre-checks refused" in r.stdout and "paused" in r.stdout
        assert (await role_and_timeline(pg_sandbox, "pg1"))[0] == "primary"
    finally:
        await pg_sandbox.fetch("pg3", "SELECT pg_wal_replay_resume()")
        await pg_sandbox.fetch("pg1", "DROP TABLE IF EXISTS promote_lag")
    pg_sandbox.wait_streaming()


async def test_switchover_to_pg2_and_back(pg_sandbox):
    await pg_sandbox.fetch("pg1", "CREATE TABLE IF NOT EXISTS promote_rows (id int PRIMARY KEY)")
    await pg_sandbox.fetch("pg1", "INSERT INTO promote_rows SELECT generate_series(1, 100) ON CONFLICT DO NOTHING")
    _, timeline = await role_and_timeline(pg_sandbox, "pg1")
    try:
        r = dbops(pg_sandbox, "runbook", "run", "postgres.promote-replica", "--cluster", "sandbox-pg", "--param", "candidate=pg2",
                  "--yes", "--confirm", "sandbox-pg")
        assert r.returncode == 0, r.stdout + r.stderr
        assert await role_and_timeline(pg_sandbox, "pg2") == ("primary", timeline + 1)
        assert await streaming_from(pg_sandbox, "pg2") == ["pg1", "pg3"]
        assert (await pg_sandbox.fetch("pg2", "SELECT count(*) FROM promote_rows"))[0][0] == 100  # nothing lost
        await pg_sandbox.fetch("pg2", "INSERT INTO promote_rows VALUES (101)")
        check = subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(pg_sandbox.config_path), "check", "--json"],
                               capture_output=True, text=True, timeout=60)
        roles = {m["name"]: m["role"] for m in json.loads(check.stdout)["clusters"][0]["members"]}
        assert roles == {"pg1": "replica", "pg2": "primary", "pg3": "replica"}, check.stdout
        assert verify(pg_sandbox.state_dir / "audit.jsonl").ok
        steps = [x["step"] for x in audit_intents(pg_sandbox) if x["action"].startswith("postgres.promote-replica")]
        assert steps[-6:] == ["checkpoint", "repoint", "fence", "promote", "pooler", "rejoin"]
        # Clients of PgBouncer write to the new primary without reconnecting anywhere else.
        via_pooler = pg_sandbox.psql("pgbouncer", "INSERT INTO promote_rows VALUES (102) RETURNING inet_server_port()")
        assert via_pooler.splitlines()[0] == str(pg_sandbox.port("pg2"))
    finally:
        # back to the shared sandbox's shape: pg1 primary, pg2 and pg3 streaming from it
        r = dbops(pg_sandbox, "runbook", "run", "postgres.promote-replica", "--cluster", "sandbox-pg", "--param", "candidate=pg1",
                  "--yes", "--confirm", "sandbox-pg")
        assert r.returncode == 0, r.stdout + r.stderr
    assert (await role_and_timeline(pg_sandbox, "pg1"))[0] == "primary"
    assert (await pg_sandbox.fetch("pg1", "SELECT count(*) FROM promote_rows"))[0][0] == 102
    assert pg_sandbox.psql("pgbouncer", "SELECT inet_server_port()") == str(pg_sandbox.port("pg1"))
    pg_sandbox.wait_streaming()
    await pg_sandbox.fetch("pg1", "DROP TABLE promote_rows")


async def test_kill_9_after_every_step_then_resume_ends_consistent(pg_sandbox):
    """For each step boundary: start a switchover, kill -9 dbops as soon as the journal records that
    step as done, resume, and check the cluster: one primary, everyone else streaming from it,
    no committed row lost, the audit chain intact."""
    import asyncio

    from .crash import resume, run_killed_after

    await pg_sandbox.fetch("pg1", "CREATE TABLE IF NOT EXISTS crash_rows (id int PRIMARY KEY)")
    primary, rows = "pg1", 0
    for boundary in ("checkpoint", "repoint", "fence", "wait-replayed", "promote", "verify", "follow"):
        rows += 1
        await pg_sandbox.fetch(primary, f"INSERT INTO crash_rows VALUES ({rows})")
        candidate = "pg2" if primary == "pg1" else "pg1"
        journal, _ = run_killed_after(pg_sandbox.config_path, pg_sandbox.state_dir,
                                      ["postgres.promote-replica", "--cluster", "sandbox-pg", "--param", f"candidate={candidate}",
                                       "--yes", "--confirm", "sandbox-pg"], boundary)
        r = resume(pg_sandbox.config_path, pg_sandbox.state_dir, journal.stem, "--yes", "--confirm", "sandbox-pg")
        primaries = [m for m in ("pg1", "pg2", "pg3") if (await role_and_timeline(pg_sandbox, m))[0] == "primary"]
        assert primaries == [candidate], f"after a kill at {boundary}: primaries {primaries}\n{r.stdout}"
        for _ in range(100):
            if await streaming_from(pg_sandbox, candidate) == sorted({"pg1", "pg2", "pg3"} - {candidate}):
                break
            await asyncio.sleep(0.1)
        assert await streaming_from(pg_sandbox, candidate) == sorted({"pg1", "pg2", "pg3"} - {candidate}), boundary
        assert (await pg_sandbox.fetch(candidate, "SELECT count(*) FROM crash_rows"))[0][0] == rows, boundary
        primary = candidate
    if primary != "pg1":  # back to the shared sandbox's shape
        r = dbops(pg_sandbox, "runbook", "run", "postgres.promote-replica", "--cluster", "sandbox-pg", "--param", "candidate=pg1",
                  "--yes", "--confirm", "sandbox-pg")
        assert r.returncode == 0, r.stdout + r.stderr
    assert verify(pg_sandbox.state_dir / "audit.jsonl").ok
    pg_sandbox.wait_streaming()
    await pg_sandbox.fetch("pg1", "DROP TABLE crash_rows")


async def test_candidate_must_be_a_live_replica(pg_sandbox):
    r = dbops(pg_sandbox, "runbook", "plan", "postgres.promote-replica", "--cluster", "sandbox-pg", "--param", "candidate=pg1")
    assert r.returncode == 1
    assert "--param candidate=pg1: not one of pg2, pg3" in r.stderr


async def test_failover_when_the_primary_is_dead(pg_sandbox):
    """pg1 killed: promote pg2 (the most advanced replica), pg3 follows it; then pg1 is rewound
    into a replica and a switchover puts the shared sandbox back as it was."""
    from dbops.sandbox import postgres as sandbox

    await pg_sandbox.fetch("pg1", "CREATE TABLE IF NOT EXISTS failover_rows (id int PRIMARY KEY)")
    await pg_sandbox.fetch("pg1", "INSERT INTO failover_rows SELECT generate_series(1, 50) ON CONFLICT DO NOTHING")
    pg_sandbox.wait_streaming()
    for _ in range(100):  # both replicas have replayed the rows before the primary dies
        counts = [(await pg_sandbox.fetch(m, "SELECT count(*) FROM failover_rows"))[0][0] for m in ("pg2", "pg3")]
        if counts == [50, 50]:
            break
        await asyncio.sleep(0.1)
    pg_sandbox.stop_member("pg1", "immediate")
    try:
        r = dbops(pg_sandbox, "runbook", "run", "postgres.promote-replica", "--cluster", "sandbox-pg", "--param", "candidate=pg2",
                  "--yes", "--confirm", "sandbox-pg")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "failover" in r.stdout
        assert (await role_and_timeline(pg_sandbox, "pg2"))[0] == "primary"
        assert await streaming_from(pg_sandbox, "pg2") == ["pg3"]
        assert (await pg_sandbox.fetch("pg2", "SELECT count(*) FROM failover_rows"))[0][0] == 50
    finally:
        if (await role_and_timeline(pg_sandbox, "pg2"))[0] == "primary":
            # pg1 must never come back as a second primary: rewind it into a replica of pg2 first
            await asyncio.to_thread(sandbox.rejoin_as_replica, "pg1", "pg2", root=pg_sandbox.root)
        else:  # the run failed before promoting: pg1 is still the only primary
            pg_sandbox.start_member("pg1")
    assert sorted(await streaming_from(pg_sandbox, "pg2")) == ["pg1", "pg3"]
    r = dbops(pg_sandbox, "runbook", "run", "postgres.promote-replica", "--cluster", "sandbox-pg", "--param", "candidate=pg1",
              "--yes", "--confirm", "sandbox-pg")
    assert r.returncode == 0, r.stdout + r.stderr
    pg_sandbox.wait_streaming()
    assert (await pg_sandbox.fetch("pg1", "SELECT count(*) FROM failover_rows"))[0][0] == 50
    await pg_sandbox.fetch("pg1", "DROP TABLE failover_rows")
