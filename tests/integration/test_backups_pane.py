"""The Backups pane (B), the overview's Backup column and `dbops check`'s backup verdict, against
the sandbox's real servers: pg_dump backups in moto's S3 (a prefix of this module's own) and the
sandbox's real pgBackRest repository (`pgbackrest info` and `repo-ls` of the WAL archive).

The done-when of the issue: deleting the newest backup turns the pane and `dbops check` WARN;
letting the rest age past the target (a frozen clock, never a sleep) turns it CRIT."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from dbops.config import load
from dbops.platform import s3
from dbops.screens.app import DbopsApp
from dbops.screens.backups import BackupsScreen

from .test_ui_live import rows, settle

CLUSTER = "sandbox/sandbox-pg"


def put_backup(loc, name: str, created: datetime, body: bytes) -> str:
    """A pg_dump backup as the runbook leaves one (object, then its manifest), made `created` ago."""
    key = s3.key_for(loc, name)
    digest = hashlib.sha256(body).hexdigest()
    client = s3.client(loc)
    client.put_object(Bucket=loc.bucket, Key=key, Body=body, Metadata={"sha256": digest, "dbops-kind": "pg_dump"})
    manifest = s3.Manifest(key, len(body), digest, created, "pg_dump",
                           {"cluster": "sandbox-pg", "environment": "sandbox", "database": "postgres"})
    client.put_object(Bucket=loc.bucket, Key=manifest.manifest_key, Body=manifest.to_json().encode())
    return key


@pytest.fixture(scope="module")
def backups(pg_sandbox, tmp_path_factory):
    """The sandbox's config with the cluster's pg_dump prefix made this module's own, two dumps
    there (2 h and 30 h old), and a fresh pgBackRest backup (so WAL was just archived)."""
    prefix = f"it-backups-{uuid.uuid4().hex[:8]}/"
    text = pg_sandbox.config_path.read_text()
    assert 'prefix = "dumps/"' in text
    config = tmp_path_factory.mktemp("backups") / "dbops.toml"
    config.write_text(text.replace('prefix = "dumps/"', f'prefix = "{prefix}"'))
    cfg = load(config)
    loc = next(r for r in cfg.clusters() if r.key == CLUSTER).cluster.backups.s3
    now = datetime.now(UTC)
    old = put_backup(loc, "sandbox-pg/old.dump", now - timedelta(hours=30), b"x" * 4000)
    new = put_backup(loc, "sandbox-pg/new.dump", now - timedelta(hours=2), b"y" * 4100)
    pg_sandbox.pg.pgbackrest("--type=incr", "backup", timeout=600)
    return {"config": config, "cfg": cfg, "loc": loc, "old": old, "new": new}


def run_check(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(config), "check", *extra],
                          capture_output=True, text=True, timeout=120, env={**os.environ})


def pane_cells(app, kind: str) -> dict[str, str]:
    """The pane's row for the sandbox cluster and `kind`, by column key ({} while absent)."""
    from dbops.screens.backups import COLUMNS

    table = app.screen.query_one("#backups-table", DataTable)
    for k in table.rows:
        if str(k.value) == f"{CLUSTER}|{kind}":
            return {col: str(cell) for (col, _), cell in zip(COLUMNS, table.get_row(k))}
    return {}


def pane_row(app, kind: str) -> str:
    return " ".join(pane_cells(app, kind).values())


async def test_deleting_the_newest_backup_then_time_passing_turns_the_pane_warn_then_crit(backups, pg_sandbox, tmp_path):
    offset = [0.0]
    app = DbopsApp(backups["cfg"], state_dir=tmp_path, clock=lambda: time.time() + offset[0])
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#clusters", DataTable)
        # The overview's Backup column: the stalest kind's newest backup (pg_dump 2 h, pgBackRest just now).
        await settle(pilot, lambda: "2.0h" in rows(table), "the overview's Backup column", show=lambda: rows(table))
        await pilot.press("B")
        await settle(pilot, lambda: isinstance(app.screen, BackupsScreen) and app.screen.is_mounted, "the Backups pane")
        title = app.screen.query_one("#backups-title", Static)
        await settle(pilot, lambda: pane_row(app, "pg_dump").startswith("sandbox-pg pg_dump 2.0h 4.0 KiB"), "the pg_dump row",
                     show=lambda: pane_row(app, "pg_dump"))
        dump = pane_cells(app, "pg_dump")
        assert (dump["count"], dump["wal"], dump["bucket"]) == ("2", "-", "ver")  # no WAL for dumps; a versioned bucket
        pgbr = pane_cells(app, "pgbackrest")
        assert pgbr["age"].endswith(("s", "m")) and pgbr["wal"].endswith(("s", "m")), pgbr  # a fresh backup, WAL just archived
        assert pgbr["bucket"] == "repo"
        assert str(title.render()).startswith("Backups  OK"), str(title.render())

        # The newest dump is deleted (manifest and object): the pane falls back to the 30 h one.
        s3.delete_backup(backups["loc"], backups["new"])
        await pilot.press("r")
        await settle(pilot, lambda: pane_row(app, "pg_dump").startswith("sandbox-pg pg_dump 30.0h"), "the older dump",
                     show=lambda: pane_row(app, "pg_dump"))
        assert str(title.render()).startswith("Backups  WARN"), str(title.render())
        app.screen.query_one("#backups-table", DataTable).move_cursor(row=0)
        await pilot.pause(0.1)
        detail = str(app.screen.query_one("#backups-detail", Static).render())
        assert "WARN  newest pg_dump backup is 30.0h old (target 26.0h)" in detail, detail
        assert "sandbox-pg/old.dump" in detail and "sandbox-pg/new.dump" not in detail

        # A day later (frozen clock): 54 h is past twice the target, and the WAL archive is past
        # twice the RPO: CRIT, with the findings named.
        offset[0] = 24 * 3600
        await pilot.press("r")
        await settle(pilot, lambda: str(title.render()).startswith("Backups  CRIT"), "CRIT",
                     show=lambda: str(title.render()) + pane_row(app, "pg_dump"))
        assert pane_row(app, "pg_dump").startswith("sandbox-pg pg_dump 2.3d")
        app.screen.query_one("#backups-table", DataTable).move_cursor(row=1)
        await pilot.pause(0.1)
        detail = str(app.screen.query_one("#backups-detail", Static).render())
        assert "CRIT  newest archived WAL" in detail and "(RPO 15m)" in detail, detail


def test_check_reports_the_backup_verdict_in_text_and_json(backups):
    # The newest dump is gone (as the pane test left it; deleting again is harmless): WARN, with
    # the reason, in both outputs.
    s3.delete_backup(backups["loc"], backups["new"])
    r = run_check(backups["config"], "--json")
    report = json.loads(r.stdout)
    [b] = [b for b in report["backups"] if b["cluster"] == CLUSTER]
    assert b["severity"] == "WARN", b
    assert b["problems"] == [f"{CLUSTER}: newest pg_dump backup is 30.0h old (target 26.0h)"]
    kinds = {k["kind"]: k for k in b["kinds"]}
    assert kinds["pg_dump"]["newest"] == backups["old"] and kinds["pg_dump"]["count"] == 1
    assert kinds["pgbackrest"]["severity"] == "OK" and kinds["pgbackrest"]["wal_age_seconds"] < 900
    assert b["bucket"]["versioning"] == "Enabled"
    # The sandbox cluster itself is healthy, so its backups decide the exit code.
    assert [c["severity"] for c in report["clusters"]] == ["OK"], report["clusters"]
    assert report["severity"] == "WARN" and r.returncode == 1

    r = run_check(backups["config"])
    assert f"WARN     {CLUSTER} backups" in r.stdout
    assert "  WARN     newest pg_dump backup is 30.0h old (target 26.0h)" in r.stdout

    # A newer dump whose object was deleted behind dbops's back (its manifest remains) is named,
    # and is not taken for a backup: the 30 h one is still the newest usable.
    loc = backups["loc"]
    orphan = put_backup(loc, "sandbox-pg/orphan.dump", datetime.now(UTC) - timedelta(hours=1), b"z" * 4200)
    s3.client(loc).delete_object(Bucket=loc.bucket, Key=orphan)
    r = run_check(backups["config"], "--json")
    [b] = [b for b in json.loads(r.stdout)["backups"] if b["cluster"] == CLUSTER]
    assert b["severity"] == "WARN", b
    assert f"{CLUSTER}: pg_dump {orphan}: its object is gone (the manifest remains): it cannot be restored" in b["problems"]
    assert {k["kind"]: k["newest"] for k in b["kinds"]}["pg_dump"] == backups["old"]
    s3.delete_backup(loc, orphan)

    # Nothing left in the location: CRIT, naming where it looked.
    s3.delete_backup(backups["loc"], backups["old"])
    r = run_check(backups["config"], "--json")
    [b] = [b for b in json.loads(r.stdout)["backups"] if b["cluster"] == CLUSTER]
    assert b["severity"] == "CRIT"
    assert b["problems"] == [f"{CLUSTER}: no backups at all in s3://{backups['loc'].bucket}/{backups['loc'].prefix}"]
    assert r.returncode == 2


def test_a_missing_bucket_and_a_dead_endpoint_are_clear_errors_not_crashes(backups, tmp_path):
    text = backups["config"].read_text()
    loc = backups["loc"]
    dead = tmp_path / "dead.toml"
    dead.write_text(text.replace(f'bucket = "{loc.bucket}", prefix', 'bucket = "no-such-bucket-here", prefix'))
    r = run_check(dead, "--json")
    [b] = [b for b in json.loads(r.stdout)["backups"] if b["cluster"] == CLUSTER]
    assert b["severity"] == "UNKNOWN"
    assert any("no-such-bucket-here: NoSuchBucket" in p for p in b["problems"]), b["problems"]
    assert "Traceback" not in r.stderr

    from dbops.sandbox import free_ports

    port = free_ports(1)[0]
    dead.write_text(text.replace(loc.endpoint_url, f"http://127.0.0.1:{port}"))
    r = run_check(dead)
    assert f"cannot reach S3 endpoint http://127.0.0.1:{port}: connection refused" in r.stdout
    assert "Traceback" not in r.stderr and loc.secret_access_key.value not in r.stdout + r.stderr


async def test_clusters_of_one_name_in_two_environments_are_told_apart_on_the_pane(tmp_path):
    # Nothing answers at either location: each row says it could not read, and which cluster it is.
    from dbops.sandbox import free_ports

    port = free_ports(1)[0]
    config = tmp_path / "dbops.toml"
    config.write_text("".join(f"""
[environments.{env}]
sandbox = true
[environments.{env}.clusters.orders]
engine = "redis"
members = [{{ name = "n1", host = "127.0.0.1", port = {port} }}]
backups = {{ s3 = {{ bucket = "dumps", region = "us-east-1", endpoint_url = "http://127.0.0.1:{port}", access_key_id = {{ value = "AKIDTEST" }}, secret_access_key = {{ value = "not-a-real-secret-key" }} }} }}
""" for env in ("production", "staging")))
    app = DbopsApp(load(config), state_dir=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("B")
        await settle(pilot, lambda: isinstance(app.screen, BackupsScreen) and app.screen.is_mounted, "the Backups pane")
        table = app.screen.query_one("#backups-table", DataTable)
        await settle(pilot, lambda: rows(table).count(" ? ") == 2, "both clusters' unreadable rows", show=lambda: rows(table))
        assert [str(table.get_row_at(i)[0]) for i in range(table.row_count)] == ["prod/orders", "stag/orders"]
        detail = str(app.screen.query_one("#backups-detail", Static).render())
        assert f"cannot reach S3 endpoint http://127.0.0.1:{port}: connection refused" in detail, detail
        assert "not-a-real-secret-key" not in detail


async def test_a_slow_s3_is_never_read_twice_at_once(tmp_path):
    # A server that takes connections and never answers: the first read outlives its fetch; the
    # next fetch says so instead of starting a second read of the same bucket beside it.
    import socket

    from dbops.platform.backups import fetch

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes the handshakes; nothing ever reads or replies
    port = silent.getsockname()[1]
    config = tmp_path / "dbops.toml"
    config.write_text(f"""
[environments.lab]
sandbox = true
[environments.lab.clusters.slow-s3]
engine = "redis"
members = [{{ name = "n1", host = "127.0.0.1", port = {port} }}]
backups = {{ s3 = {{ bucket = "dumps", region = "us-east-1", endpoint_url = "http://127.0.0.1:{port}", access_key_id = {{ value = "AKIDTEST" }}, secret_access_key = {{ value = "not-a-real-secret-key" }} }} }}
""")
    [ref] = load(config).clusters()
    try:
        first = await fetch(ref, timeout=0.5)
        assert first.errors == ("reading the backups took longer than 0.5 s",)
        second = await fetch(ref, timeout=0.5)
        assert second.errors == ("s3://dumps/: the previous read has not finished yet (S3 answers slowly); it is not "
                                 "read again until it has",)
    finally:
        silent.close()  # the stuck read fails now, and its thread ends
