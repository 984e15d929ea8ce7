"""postgres.dump and postgres.restore-dump through `dbops runbook`: real PostgreSQL, real
pg_dump/pg_restore, and S3 over HTTP (the sandbox's moto server)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dbops.audit import verify
from dbops.config import load
from dbops.platform import s3

from .crash import resume, run_killed_after

STANZA = "sandbox-pg"


def dbops(sb, *args, config: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "dbops.cli", "--config", str(config or sb.config_path), *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, "DBOPS_STATE_DIR": str(sb.state_dir)},
        stdin=subprocess.DEVNULL,
    )


def location(sb):
    (ref,) = [r for r in load(sb.config_path).clusters() if r.name == STANZA]
    assert ref.cluster.backups.s3 is not None, "the sandbox config names its S3 bucket"
    return ref.cluster.backups.s3


def run_id(stdout: str) -> str:
    return next(line.split()[-1] for line in stdout.splitlines() if line.startswith("run id:"))


async def databases(sb) -> set[str]:
    return {r[0] for r in await sb.fetch("pg1", "SELECT datname FROM pg_database")}


@pytest.fixture(scope="module")
def dumped(pg_sandbox):
    """Two tables with known rows, dumped to S3 by the runbook."""
    sb = pg_sandbox
    sb.psql("pg1", "DROP TABLE IF EXISTS dump_orders, dump_items; "
                   "CREATE TABLE dump_orders AS SELECT g AS id, md5(g::text) AS ref FROM generate_series(1, 5000) g; "
                   "CREATE TABLE dump_items AS SELECT g AS id, g % 97 AS order_id FROM generate_series(1, 20000) g")
    r = dbops(sb, "runbook", "run", "postgres.dump", "--cluster", STANZA, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    key = next(line.split("s3://sandbox-backups/")[1].split(" ")[0] for line in r.stdout.splitlines() if "uploaded s3://" in line)
    yield sb, key, r
    sb.psql("pg1", "DROP TABLE IF EXISTS dump_orders, dump_items")


async def test_dump_is_in_s3_with_a_manifest_matching_its_bytes(dumped):
    sb, key, r = dumped
    loc = location(sb)
    manifest = s3.read_manifest(loc, key)
    body = s3.client(loc).get_object(Bucket=loc.bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == manifest.sha256 and len(body) == manifest.size
    assert manifest.kind == "pg_dump" and manifest.meta["cluster"] == STANZA and manifest.meta["database"] == "postgres"
    assert "sha256 matches the manifest" in r.stdout
    assert not (sb.state_dir / "staging" / run_id(r.stdout)).exists()  # the staging file is gone
    rid = run_id(r.stdout)
    audit = [json.loads(line) for line in (sb.state_dir / "audit.jsonl").read_text().splitlines()]
    mine = [(x["phase"], x["step"], x.get("outcome")) for x in audit if x.get("run_id") == rid]
    for step in ("dump", "upload"):
        assert ("intent", step, None) in mine and ("result", step, "ok") in mine, mine
    assert sb.password not in r.stdout + r.stderr and loc.secret_access_key.value not in r.stdout + r.stderr


async def test_restore_dump_into_a_new_database_has_every_row(dumped):
    sb, key, _ = dumped
    before = await databases(sb)
    r = dbops(sb, "runbook", "run", "postgres.restore-dump", "--cluster", STANZA, "--param", f"key={key}",
              "--param", "into=dump_copy", "--param", "jobs=2", "--param", "canary=dump_orders,dump_items", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        assert "canary rows: dump_orders 5000, dump_items 20000" in r.stdout
        rows = await sb.fetch("pg1", "SELECT count(*), sum(length(ref)) FROM dump_orders", database="dump_copy")
        assert tuple(rows[0]) == (5000, 5000 * 32)
        assert "RTO:" in r.stdout
        assert await databases(sb) == before | {"dump_copy"}
    finally:
        sb.psql("pg1", "DROP DATABASE IF EXISTS dump_copy")


async def test_existing_database_is_never_restored_into(dumped):
    sb, key, _ = dumped
    r = dbops(sb, "runbook", "run", "postgres.restore-dump", "--cluster", STANZA, "--param", f"key={key}",
              "--param", "into=postgres", "--yes")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "database postgres already exists" in r.stdout


async def test_corrupted_dump_is_refused_before_anything_is_created(dumped):
    sb, key, _ = dumped
    loc = location(sb)
    client = s3.client(loc)
    good = client.get_object(Bucket=loc.bucket, Key=key)["Body"].read()
    bad_key = key.replace(".dump", "-corrupt.dump")
    client.put_object(Bucket=loc.bucket, Key=bad_key, Body=good[:-10] + b"0123456789")
    manifest = s3.read_manifest(loc, key)
    client.put_object(Bucket=loc.bucket, Key=bad_key + ".manifest.json",
                      Body=manifest.to_json().replace(key, bad_key).encode())
    before = await databases(sb)
    try:
        r = dbops(sb, "runbook", "run", "postgres.restore-dump", "--cluster", STANZA, "--param", f"key={bad_key}",
                  "--param", "into=dump_bad", "--yes")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "checksum mismatch" in r.stdout, r.stdout
        assert await databases(sb) == before
    finally:
        s3.delete_backup(loc, bad_key)


async def test_no_s3_location_is_a_clear_refusal(pg_sandbox, tmp_path):
    text = pg_sandbox.config_path.read_text()
    head = "[environments.sandbox.clusters.sandbox-pg.backups]"
    start = text.index(head)
    end = text.index("\n\n", start)
    config = tmp_path / "no-s3.toml"
    config.write_text(text[:start] + text[end + 2:])
    for book in ("postgres.dump", "postgres.restore-dump"):
        r = dbops(pg_sandbox, "runbook", "plan", book, "--cluster", STANZA, config=config)
        assert r.returncode == 1 and "no S3 location for cluster sandbox-pg" in r.stdout, r.stdout
        assert "Traceback" not in r.stdout + r.stderr


async def test_kill_9_between_every_pair_of_restore_dump_steps_then_resume(dumped):
    sb, key, _ = dumped
    for n, boundary in enumerate(("download", "create", "restore")):
        into = f"dump_kill_{n}"
        journal, out = run_killed_after(sb.config_path, sb.state_dir, ["postgres.restore-dump", "--cluster", STANZA,
                                        "--param", f"key={key}", "--param", f"into={into}", "--yes"], boundary)
        try:
            resume(sb.config_path, sb.state_dir, journal.stem, "--yes")
            rows = await sb.fetch("pg1", "SELECT (SELECT count(*) FROM dump_orders), (SELECT count(*) FROM dump_items)",
                                  database=into)
            assert tuple(rows[0]) == (5000, 20000), boundary
        finally:
            sb.psql("pg1", f"DROP DATABASE IF EXISTS {into}")
    assert verify(sb.state_dir / "audit.jsonl").ok
