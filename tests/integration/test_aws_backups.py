"""RDS and ElastiCache snapshots as a cluster's backups, against the sandbox's moto server (its
own process, real HTTP): the Backups pane (B) at 80x24 and `dbops check`.

An [rds] cluster's row "rds-snapshot" shows its newest available snapshot's age (the app's clock
frozen past the target turns it WARN, never a sleep), its size (the allocated storage, said so)
and the point-in-time window's LatestRestorableTime in the WAL column; deleting every snapshot
turns it CRIT, "none". An [elasticache] cluster's row shows its snapshot without an age, since
moto reports no SnapshotCreateTime: "time not reported". A missing instance and a dead endpoint
are one line each. The secret access key never shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dbops import sandbox
from dbops.config import load
from dbops.sandbox.s3 import S3Sandbox

from .conftest import running_sandbox

PANE_DB, CHECK_DB, NO_PITR_DB, CACHE = "bk-pane", "bk-check", "bk-nopitr", "bk-cache"
GIB = 1024**3


@dataclass
class Env:
    state: dict[str, Any]
    config: Path

    def aws(self, service: str) -> Any:
        """boto3 straight at the server, to set up and change what dbops itself only reads."""
        import boto3

        return boto3.session.Session().client(
            service, region_name=self.state["region"], endpoint_url=self.state["endpoint_url"],
            aws_access_key_id=self.state["access_key_id"], aws_secret_access_key=self.state["secret_access_key"])

    def delete_snapshots(self, instance: str) -> None:
        rds = self.aws("rds")
        for snap in rds.describe_db_snapshots(DBInstanceIdentifier=instance)["DBSnapshots"]:
            rds.delete_db_snapshot(DBSnapshotIdentifier=snap["DBSnapshotIdentifier"])
        assert rds.describe_db_snapshots(DBInstanceIdentifier=instance)["DBSnapshots"] == []

    def check(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(self.config), "check", "--json"],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env={**os.environ})


def _cluster(name: str, port: int, section: str, body: str, engine: str = "postgres") -> str:
    return f"""
[environments.sandbox.clusters.{name}]
engine = "{engine}"
timeout = 2.0
members = [{{ name = "node", host = "127.0.0.1", port = {port} }}]
[environments.sandbox.clusters.{name}.{section}]
{body}
"""


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with running_sandbox(("s3",), "dbops-it-awsbk-") as root:
        state = S3Sandbox(root).state
        e = Env(state, root.parent / "aws-backups.toml")
        rds = e.aws("rds")
        for ident, retention in ((PANE_DB, 7), (CHECK_DB, 7), (NO_PITR_DB, 0)):
            rds.create_db_instance(DBInstanceIdentifier=ident, DBInstanceClass="db.t3.micro", Engine="postgres",
                                   AllocatedStorage=20, MasterUsername="postgres", MasterUserPassword="not-used-by-dbops",
                                   BackupRetentionPeriod=retention)
            # moto takes an automated snapshot at creation; a manual one beside it.
            rds.create_db_snapshot(DBInstanceIdentifier=ident, DBSnapshotIdentifier=f"{ident}-manual")
        cache = e.aws("elasticache")
        cache.create_replication_group(ReplicationGroupId=CACHE, ReplicationGroupDescription="dbops test", Engine="redis",
                                       CacheNodeType="cache.t3.micro", NumCacheClusters=1, SnapshotRetentionLimit=3)
        cache.create_snapshot(ReplicationGroupId=CACHE, SnapshotName=f"{CACHE}-manual")
        aws = (f'aws = {{ region = "{state["region"]}", endpoint_url = "{state["endpoint_url"]}", '
               f'access_key_id = {{ value = "{state["access_key_id"]}" }}, '
               f'secret_access_key = {{ value = "{state["secret_access_key"]}" }} }}')
        dead_aws = aws.replace(state["endpoint_url"], f"http://127.0.0.1:{sandbox.free_ports(1)[0]}")
        # The members listen nowhere: these clusters are judged here by their AWS side only.
        port = sandbox.free_ports(1)[0]
        e.config.write_text(
            "[environments.sandbox]\nsandbox = true\n"
            + _cluster("pane-pg", port, "rds", f'instance = "{PANE_DB}"\n{aws}')
            + _cluster("check-pg", port, "rds", f'instance = "{CHECK_DB}"\n{aws}')
            + _cluster("nopitr-pg", port, "rds", f'instance = "{NO_PITR_DB}"\n{aws}')
            + _cluster("ghost-pg", port, "rds", f'instance = "no-such-db"\n{aws}')
            + _cluster("down-pg", port, "rds", f'instance = "{PANE_DB}"\n{dead_aws}')
            + _cluster("cache", port, "elasticache", f'replication_group = "{CACHE}"\n{aws}', engine="redis")
        )
        yield e


async def test_the_backups_pane_at_80x24_shows_rds_and_elasticache_snapshots_and_turns_crit_without_them(env: Env, tmp_path: Path) -> None:
    from textual.widgets import DataTable, Static

    from dbops.screens.app import DbopsApp
    from dbops.screens.backups import COLUMNS, BackupsScreen

    from .test_ui_live import rows, settle

    offset = [0.0]
    app = DbopsApp(load(env.config), state_dir=tmp_path, clock=lambda: time.time() + offset[0])
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("B")
        await settle(pilot, lambda: isinstance(app.screen, BackupsScreen) and app.screen.is_mounted, "the Backups pane")
        pane = app.screen
        table = pane.query_one("#backups-table", DataTable)
        title = pane.query_one("#backups-title", Static)
        detail = pane.query_one("#backups-detail", Static)

        def cells(key: str) -> dict[str, str]:
            for k in table.rows:
                if str(k.value) == key:
                    return {col: str(cell) for (col, _), cell in zip(COLUMNS, table.get_row(k))}
            return {}

        async def shown(key: str) -> str:
            """The detail below the table once the row of `key` is highlighted."""
            table.move_cursor(row=[str(k.value) for k in table.rows].index(key))
            await pilot.pause(0.1)
            return str(detail.render())

        await settle(pilot, lambda: "reading" not in rows(table) and table.row_count == 6, "every cluster read",
                     show=lambda: rows(table), attempts=600)
        pg = cells("sandbox/pane-pg|rds-snapshot")
        # Taken when the fixture ran: seconds or minutes old; 20 GiB allocated; PITR up to now.
        assert pg["age"].endswith(("s", "m")) and pg["wal"].endswith(("s", "m")), pg
        assert (pg["size"], pg["count"], pg["bucket"]) == ("20.0 GiB", "2", "aws"), pg
        # The whole row fits 80 columns: the last column is on screen.
        assert table.virtual_size.width <= 80, rows(table)
        text = await shown("sandbox/pane-pg|rds-snapshot")
        assert f"from RDS instance {PANE_DB}" in text
        assert "size: allocated storage (RDS reports no snapshot size)" in text, text
        assert f"manual {PANE_DB}-manual" in text and "automated" in text, text

        # ElastiCache on moto: the snapshot, without an age.
        ec = cells("sandbox/cache|elasticache-snapshot")
        assert (ec["age"], ec["size"], ec["count"], ec["bucket"]) == ("no time", "-", "1", "aws"), ec
        text = await shown("sandbox/cache|elasticache-snapshot")
        assert f"newest elasticache-snapshot {CACHE}-manual: time not reported, age not judged" in text, text
        assert f"time not reported          -  manual {CACHE}-manual" in text, text

        # Automated backups off: WARN, said why.
        assert "no point-in-time recovery" in await shown("sandbox/nopitr-pg|rds-snapshot")
        # Errors: one line per cluster, on the cluster's row.
        assert cells("sandbox/ghost-pg|-")["age"].strip() == "?"
        assert "RDS instance no-such-db: no such DB instance in us-east-1" in await shown("sandbox/ghost-pg|-")
        assert "RDS instance bk-pane: cannot reach http://127.0.0.1:" in await shown("sandbox/down-pg|-")
        assert env.state["secret_access_key"] not in rows(table) + str(detail.render())

        # A day and more later (frozen clock): the snapshot is past the 26 h target.
        offset[0] = 27 * 3600
        await pilot.press("r")
        await settle(pilot, lambda: cells("sandbox/pane-pg|rds-snapshot")["age"] == "27.0h", "the aged snapshot",
                     show=lambda: rows(table))
        text = await shown("sandbox/pane-pg|rds-snapshot")
        assert "WARN  newest rds-snapshot backup is 27.0h old (target 26.0h)" in text, text
        assert "CRIT  latest restorable time (point-in-time recovery) is 27.0h old (RPO 15m)" in text, text

        # Every snapshot deleted: none, CRIT.
        offset[0] = 0.0
        env.delete_snapshots(PANE_DB)
        await pilot.press("r")
        await settle(pilot, lambda: cells("sandbox/pane-pg|rds-snapshot")["age"] == "none", "no snapshot left",
                     show=lambda: rows(table))
        assert cells("sandbox/pane-pg|rds-snapshot")["count"] == "0"
        text = await shown("sandbox/pane-pg|rds-snapshot")
        assert f"CRIT  no usable rds-snapshot backup in RDS instance {PANE_DB}" in text, text
        assert str(title.render()).startswith("Backups  CRIT")


def test_check_reports_rds_and_elasticache_snapshots_and_their_loss(env: Env) -> None:
    r = env.check()
    assert "Traceback" not in r.stderr, r.stderr
    backups = {b["cluster"].split("/")[1]: b for b in json.loads(r.stdout)["backups"]}
    assert set(backups) == {"pane-pg", "check-pg", "nopitr-pg", "ghost-pg", "down-pg", "cache"}

    ok = backups["check-pg"]
    assert ok["severity"] == "OK" and ok["problems"] == [], ok
    [kind] = ok["kinds"]
    assert (kind["kind"], kind["source"], kind["count"], kind["size"]) == ("rds-snapshot", f"RDS instance {CHECK_DB}", 2, 20 * GIB)
    listed = env.aws("rds").describe_db_snapshots(DBInstanceIdentifier=CHECK_DB)["DBSnapshots"]
    assert kind["newest"] == max(listed, key=lambda s: s["SnapshotCreateTime"])["DBSnapshotIdentifier"]
    assert kind["age_seconds"] < 3600 and kind["wal_age_seconds"] < 900, kind
    messages = [m["message"] for m in ok["metrics"]]
    assert any(m.startswith("sandbox/check-pg: latest restorable time (point-in-time recovery) is ") for m in messages), messages

    assert backups["nopitr-pg"]["problems"] == [
        f"sandbox/nopitr-pg: {NO_PITR_DB} has automated backups off (BackupRetentionPeriod 0): no point-in-time "
        "recovery, only its snapshots"]
    cache = backups["cache"]
    assert cache["severity"] == "OK"
    assert [(k["kind"], k["newest"], k["newest_created"], k["age_seconds"]) for k in cache["kinds"]] == [
        ("elasticache-snapshot", f"{CACHE}-manual", None, None)]
    assert backups["ghost-pg"]["severity"] == "UNKNOWN"
    assert backups["ghost-pg"]["problems"] == [
        "sandbox/ghost-pg: RDS instance no-such-db: no such DB instance in us-east-1 (check [rds] instance and aws.region)"]
    assert env.state["secret_access_key"] not in r.stdout + r.stderr

    env.delete_snapshots(CHECK_DB)
    r = env.check()
    gone = next(b for b in json.loads(r.stdout)["backups"] if b["cluster"] == "sandbox/check-pg")
    assert gone["severity"] == "CRIT"
    assert gone["problems"] == [f"sandbox/check-pg: no usable rds-snapshot backup in RDS instance {CHECK_DB}"]
    assert r.returncode == 2

    text = subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(env.config), "check"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL).stdout
    assert "CRIT     sandbox/check-pg backups" in text
    assert f"  CRIT     no usable rds-snapshot backup in RDS instance {CHECK_DB}" in text
    assert f"  OK       newest elasticache-snapshot {CACHE}-manual: time not reported, age not judged" in text


async def test_a_slow_aws_api_is_never_read_twice_at_once(tmp_path: Path) -> None:
    # An endpoint that takes connections and never answers: the first read outlives its fetch;
    # the next fetch says so instead of starting a second read of the same instance beside it.
    import socket

    from dbops.platform.backups import fetch

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes the handshakes; nothing ever reads or replies
    port = silent.getsockname()[1]
    config = tmp_path / "dbops.toml"
    config.write_text("[environments.lab]\nsandbox = true\n" + _cluster(
        "slow-rds", port, "rds", f'instance = "orders-1"\naws = {{ region = "us-east-1", endpoint_url = "http://127.0.0.1:{port}", '
        'access_key_id = { value = "AKIDTEST" }, secret_access_key = { value = "not-a-real-secret-key" } }'
    ).replace("environments.sandbox.", "environments.lab."))
    [ref] = load(config).clusters()
    try:
        first = await fetch(ref, timeout=0.5)
        assert first.errors == ("reading the backups took longer than 0.5 s",)
        second = await fetch(ref, timeout=0.5)
        assert second.errors == ("RDS instance orders-1: the previous read has not finished yet (AWS answers slowly); "
                                 "it is not read again until it has",)
    finally:
        silent.close()  # the stuck read fails now, and its thread ends
