"""AWS RDS and ElastiCache against the sandbox's moto server (its own process, real HTTP): the AWS
pane at 80x24 (RDS instances and read replicas, snapshots, the point-in-time window; ElastiCache
replication groups, members and snapshots; what is wrong, and one clear line for each error an
operator can meet), and rds.promote-read-replica through the CLI:
promoted, verified, audited, and the audit chain verifies; refused for an unknown replica, a
replica of another instance, a cluster without [rds], and a read-only environment. The secret
access key never shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dbops import sandbox
from dbops.config import load
from dbops.sandbox.s3 import S3Sandbox

from .conftest import running_sandbox

PROMO_PRIMARY, PROMO_REPLICA = "promo-primary", "promo-replica"
OTHER_PRIMARY, OTHER_REPLICA = "other-primary", "other-replica"
BARE = "bare-primary"  # no automated backups, no snapshot, stopped
CACHE, BARE_CACHE = "it-cache", "bare-cache"  # ElastiCache replication groups
UNSET_KEY = '{ env = "DBOPS_IT_RDS_UNSET_KEY" }'


@dataclass
class Env:
    state: dict[str, Any]
    state_dir: Path
    config: Path

    def dbops(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**os.environ, "DBOPS_STATE_DIR": str(self.state_dir)})

    def aws(self, service: str) -> Any:
        """boto3 straight at the server, to set up and inspect what dbops itself never does."""
        import boto3

        return boto3.session.Session().client(
            service, region_name=self.state["region"], endpoint_url=self.state["endpoint_url"],
            aws_access_key_id=self.state["access_key_id"], aws_secret_access_key=self.state["secret_access_key"])

    def rds(self) -> Any:
        return self.aws("rds")

    def instance(self, ident: str) -> dict[str, Any]:
        return self.rds().describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"][0]

    @property
    def secret(self) -> str:
        return self.state["secret_access_key"]


def _aws(state: dict[str, Any], endpoint: str | None = None, key_ref: str | None = None) -> str:
    key = key_ref or f'{{ value = "{state["access_key_id"]}" }}'
    return (f'aws = {{ region = "{state["region"]}", endpoint_url = "{endpoint or state["endpoint_url"]}", '
            f'access_key_id = {key}, secret_access_key = {{ value = "{state["secret_access_key"]}" }} }}')


def _cluster(env: str, name: str, port: int, rds: str | None, extra: str = "", engine: str = "postgres") -> str:
    text = f"""
[environments.{env}.clusters.{name}]
engine = "{engine}"
timeout = 2.0
refresh_interval = 30.0
members = [{{ name = "node", host = "127.0.0.1", port = {port} }}]
{extra}"""
    section = "rds" if engine == "postgres" else "elasticache"
    return text + (f"[environments.{env}.clusters.{name}.{section}]\n{rds}\n" if rds else "")


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with running_sandbox(("s3",), "dbops-it-rds-") as root:
        state = S3Sandbox(root).state
        e = Env(state, root.parent, root.parent / "rds-test.toml")
        rds = e.rds()
        for primary, replica in ((PROMO_PRIMARY, PROMO_REPLICA), (OTHER_PRIMARY, OTHER_REPLICA)):
            rds.create_db_instance(DBInstanceIdentifier=primary, DBInstanceClass="db.t3.micro", Engine="postgres",
                                   EngineVersion="15.4", AllocatedStorage=20, MasterUsername="postgres",
                                   MasterUserPassword="not-used-by-dbops", BackupRetentionPeriod=7)
            rds.create_db_instance_read_replica(DBInstanceIdentifier=replica, SourceDBInstanceIdentifier=primary)
        rds.create_db_instance(DBInstanceIdentifier=BARE, DBInstanceClass="db.t3.micro", Engine="postgres",
                               AllocatedStorage=20, MasterUsername="postgres", MasterUserPassword="not-used-by-dbops",
                               BackupRetentionPeriod=0)
        rds.stop_db_instance(DBInstanceIdentifier=BARE)
        cache = e.aws("elasticache")
        for group, retention in ((CACHE, 3), (BARE_CACHE, 0)):
            cache.create_replication_group(ReplicationGroupId=group, ReplicationGroupDescription="dbops test",
                                           Engine="redis", CacheNodeType="cache.t3.micro", NumCacheClusters=2,
                                           AutomaticFailoverEnabled=True, SnapshotRetentionLimit=retention)
        cache.create_snapshot(ReplicationGroupId=CACHE, SnapshotName=f"{CACHE}-manual")
        # moto takes an automated snapshot at creation even with BackupRetentionPeriod 0 (RDS does
        # not): remove it, as RDS would never have had it.
        for snap in rds.describe_db_snapshots(DBInstanceIdentifier=BARE)["DBSnapshots"]:
            rds.delete_db_snapshot(DBSnapshotIdentifier=snap["DBSnapshotIdentifier"])
        # Every member points at a port nothing listens on: these clusters are judged by their AWS
        # side only (the runbook's lock falls back to a lock file, as it says).
        port = sandbox.free_ports(1)[0]
        dead = f"http://127.0.0.1:{sandbox.free_ports(1)[0]}"
        e.config.write_text(
            "[environments.sandbox]\nsandbox = true\nmode = \"operator\"\n"
            + _cluster("sandbox", "rds-pg", port, f'instance = "sandbox-pg-primary"\n{_aws(state)}')
            + _cluster("sandbox", "promo-pg", port, f'instance = "{PROMO_PRIMARY}"\n{_aws(state)}')
            + _cluster("sandbox", "bare-pg", port, f'instance = "{BARE}"\n{_aws(state)}')
            + _cluster("sandbox", "strict-pg", port, f'instance = "sandbox-pg-primary"\n{_aws(state)}',
                       extra="backups = { max_age_seconds = 0.001 }\n")
            + _cluster("sandbox", "ghost-pg", port, f'instance = "no-such-db"\n{_aws(state)}')
            + _cluster("sandbox", "down-pg", port, f'instance = "sandbox-pg-primary"\n{_aws(state, endpoint=dead)}')
            + _cluster("sandbox", "nokey-pg", port, 'instance = "sandbox-pg-primary"\n' + _aws(state, key_ref=UNSET_KEY))
            + _cluster("sandbox", "plain-pg", port, None)
            + _cluster("sandbox", "cache", port, f'replication_group = "{CACHE}"\n{_aws(state)}', engine="redis")
            + _cluster("sandbox", "bare-cache", port, f'replication_group = "{BARE_CACHE}"\n{_aws(state)}', engine="redis")
            + _cluster("sandbox", "ghost-cache", port, f'replication_group = "no-such-group"\n{_aws(state)}', engine="redis")
            + "\n[environments.lab]\nsandbox = true\nmode = \"read-only\"\n"
            + _cluster("lab", "lab-pg", port, f'instance = "{OTHER_PRIMARY}"\n{_aws(state)}')
        )
        yield e


# ---------------------------------------------------------------------------------------------
# The sandbox


def test_the_sandbox_seeds_a_primary_and_its_replica(env: Env) -> None:
    assert env.state["rds"] == {"primary": "sandbox-pg-primary", "replica": "sandbox-pg-replica"}
    assert env.instance("sandbox-pg-replica")["ReadReplicaSourceDBInstanceIdentifier"] == "sandbox-pg-primary"
    assert "sandbox-pg-replica" in env.instance("sandbox-pg-primary")["ReadReplicaDBInstanceIdentifiers"]


def test_the_sandbox_pg_cluster_describes_the_moto_primary_in_its_rds_section(pg_sandbox: Any) -> None:
    """`make demo`'s config: sandbox-pg (the real PostgreSQL) carries an [rds] section that reads."""
    from dbops.platform import rds

    ref = next(r for r in load(pg_sandbox.config_path).clusters() if r.name == "sandbox-pg")
    assert ref.cluster.rds is not None and ref.cluster.rds.instance == "sandbox-pg-primary"
    view = rds.collect(ref)
    assert view.error is None, view.error
    assert [(i.id, i.source) for i in view.instances] == [("sandbox-pg-primary", None), ("sandbox-pg-replica", "sandbox-pg-primary")]


# ---------------------------------------------------------------------------------------------
# The pane


def _text(widget: Any) -> str:
    return str(widget.render())


async def test_the_aws_pane_at_80x24_shows_instances_replicas_snapshots_the_pitr_window_and_each_error(env: Env, tmp_path: Path) -> None:
    from textual.widgets import DataTable, Static

    from dbops.screens.app import DbopsApp
    from dbops.screens.rds import AwsScreen

    from .test_ui_live import rows, settle

    app = DbopsApp(load(env.config), state_dir=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("R")
        await settle(pilot, lambda: isinstance(app.screen, AwsScreen) and app.screen.is_mounted, "the AWS pane")
        pane = app.screen
        await settle(pilot, lambda: len(pane.views) == 11, "every [rds] and [elasticache] cluster read", attempts=600)
        keys = [v.cluster for v in pane.views]
        section = {k.split("/")[1]: i for i, k in enumerate(keys)}

        def head(name: str) -> str:
            return _text(pane.query_one(f"#aws-{section[name]}-head", Static))

        def table(name: str, what: str) -> str:
            return rows(pane.query_one(f"#aws-{section[name]}-{what}", DataTable))

        # The sandbox's primary and its replica, with what RDS says about them.
        instances = table("rds-pg", "members")
        assert "sandbox-pg-primary" in instances and "primary" in instances
        assert "sandbox-pg-replica" in instances and "replica" in instances
        assert "available" in instances and "db.t3.micro" in instances and "postgres 15.4" in instances
        assert "not reported" in instances  # no ReplicaLag datapoint in CloudWatch
        snapshots = table("rds-pg", "snapshots")
        assert "sandbox-pg-primary-manual" in snapshots and "manual" in snapshots and "automated" in snapshots
        assert "20 GiB" in snapshots
        pitr = head("rds-pg")
        assert "point-in-time window: earliest not reported" in pitr  # moto has no RestoreWindow
        assert f"latest {datetime.now(UTC):%Y-%m-%d}" in pitr
        assert "OK" in pitr and "WARN" not in pitr

        # What is wrong, one line each.
        assert "newest snapshot is" in head("strict-pg") and "older than backups.max_age_seconds" in head("strict-pg")
        bare = head("bare-pg")
        assert f"instance {BARE} is stopped, not available" in bare and "CRIT" in bare
        assert "no automated backups (BackupRetentionPeriod 0)" in bare
        assert f"{BARE} has no available snapshot" in bare
        assert "no such DB instance" in head("ghost-pg")
        assert "cannot reach http://127.0.0.1:" in head("down-pg") and "connection refused" in head("down-pg")
        assert "environment variable DBOPS_IT_RDS_UNSET_KEY is not set" in head("nokey-pg")
        summary = _text(pane.query_one("#aws-summary", Static))
        assert "CRIT" in summary and "sandbox/rds-pg" in summary
        every = summary + "".join(head(n) + table(n, "members") + table(n, "snapshots") for n in section)
        assert env.secret not in every

        # ElastiCache: the group, its members, its snapshots (moto reports no snapshot times).
        cache = head("cache")
        assert f"ElastiCache {CACHE}" in cache and "available · redis cache.t3.micro · automatic failover enabled" in cache
        assert "snapshots kept 3 day(s)" in cache and "WARN" not in cache
        members = table("cache", "members")
        assert f"{CACHE}-001" in members and "primary" in members
        cache_snapshots = table("cache", "snapshots")
        assert f"{CACHE}-manual" in cache_snapshots and "manual" in cache_snapshots and "not reported" in cache_snapshots
        bare_cache = head("bare-cache")
        assert f"{BARE_CACHE} takes no automatic snapshots (SnapshotRetentionLimit 0)" in bare_cache
        assert f"{BARE_CACHE} has no available snapshot" in bare_cache
        assert "no-such-group: no such replication group" in head("ghost-cache")

        # A ReplicaLag datapoint in CloudWatch shows on the next refresh (r).
        import boto3

        boto3.session.Session().client(
            "cloudwatch", region_name=env.state["region"], endpoint_url=env.state["endpoint_url"],
            aws_access_key_id=env.state["access_key_id"], aws_secret_access_key=env.secret,
        ).put_metric_data(Namespace="AWS/RDS", MetricData=[{
            "MetricName": "ReplicaLag", "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": "sandbox-pg-replica"}],
            "Value": 42.0, "Unit": "Seconds"}])
        await pilot.press("r")
        await settle(pilot, lambda: "42 s" in table("rds-pg", "members"), "the replica's lag",
                     show=lambda: table("rds-pg", "members"), attempts=600)
        await pilot.press("escape")
        await settle(pilot, lambda: not isinstance(app.screen, AwsScreen), "back to the overview")


# ---------------------------------------------------------------------------------------------
# dbops check: what the pane judges, on the command line


def test_check_reports_what_the_pane_judges_in_text_and_json_and_no_platform_leaves_it_out(env: Env) -> None:
    text = env.dbops("check", "--no-backups")
    lines = text.stdout.splitlines()
    assert "Traceback" not in text.stderr and env.secret not in text.stdout + text.stderr

    def section(head: str) -> list[str]:
        """The head line and the indented lines under it."""
        assert head in lines, text.stdout
        start = lines.index(head)
        end = next((n for n in range(start + 1, len(lines)) if not lines[n].startswith("  ")), len(lines))
        return lines[start:end]

    # A stopped instance, no automated backups, no snapshot: worst first, one line each.
    assert section(f"CRIT     sandbox/bare-pg rds (instance {BARE})") == [
        f"CRIT     sandbox/bare-pg rds (instance {BARE})",
        f"  CRIT     instance {BARE} is stopped, not available (it will not recover by itself)",
        f"  WARN     {BARE} has no automated backups (BackupRetentionPeriod 0): no point-in-time recovery",
        f"  WARN     {BARE} has no available snapshot",
    ]
    assert section(f"WARN     sandbox/bare-cache elasticache (replication group {BARE_CACHE})")[1:] == [
        f"  WARN     {BARE_CACHE} takes no automatic snapshots (SnapshotRetentionLimit 0)",
        f"  WARN     {BARE_CACHE} has no available snapshot",
    ]
    assert section("OK       sandbox/cache elasticache (replication group it-cache)") == [
        "OK       sandbox/cache elasticache (replication group it-cache)"]
    # An endpoint that cannot be reached, and a missing key: CRIT, one line each.
    [_, down] = section("CRIT     sandbox/down-pg rds (instance sandbox-pg-primary)")
    assert down.startswith("  CRIT     RDS instance sandbox-pg-primary: cannot reach http://127.0.0.1:") and "connection refused" in down
    [_, nokey] = section("CRIT     sandbox/nokey-pg rds (instance sandbox-pg-primary)")
    assert "environment variable DBOPS_IT_RDS_UNSET_KEY is not set" in nokey
    assert not any("plain-pg rds" in line for line in lines)  # no [rds] section, nothing to say
    assert text.returncode == 2

    run = env.dbops("check", "--no-backups", "--json")
    report = json.loads(run.stdout)
    checks = {p["cluster"]: p for p in report["platform"]}
    assert len(checks) == 11 and "sandbox/plain-pg" not in checks
    bare = checks["sandbox/bare-pg"]
    assert (bare["kind"], bare["severity"], bare["error"]) == ("rds", "CRIT", None)
    assert bare["findings"][0] == {"severity": "CRIT", "message": f"instance {BARE} is stopped, not available (it will not recover by itself)"}
    assert checks["sandbox/down-pg"]["severity"] == "CRIT" and "cannot reach http://127.0.0.1:" in checks["sandbox/down-pg"]["error"]
    assert checks["sandbox/ghost-cache"]["error"].endswith("no-such-group: no such replication group in "
                                                           f"{env.state['region']} (check [elasticache] replication_group and aws.region)")
    assert checks["sandbox/cache"]["severity"] == "OK" and checks["sandbox/cache"]["findings"] == []
    assert env.secret not in run.stdout and run.returncode == 2

    left_out = env.dbops("check", "--no-backups", "--no-platform")
    assert " rds (" not in left_out.stdout and " elasticache (" not in left_out.stdout and BARE not in left_out.stdout
    assert json.loads(env.dbops("check", "--no-backups", "--no-platform", "--json").stdout)["platform"] == []


def test_check_counts_a_stopped_rds_instance_toward_its_exit_code(env: Env, pg_sandbox: Any, tmp_path: Path) -> None:
    """The sandbox's real PostgreSQL, healthy, its [rds] section naming a stopped instance: CRIT
    because of RDS alone."""
    import re

    text = re.sub(r"\[environments\.sandbox\.clusters\.sandbox-pg\.rds\]\n(?:.+\n)*", "", pg_sandbox.config_path.read_text())
    cfg = tmp_path / "pg-on-rds.toml"
    cfg.write_text(text + f"\n[environments.sandbox.clusters.sandbox-pg.rds]\ninstance = \"{BARE}\"\n{_aws(env.state)}\n")

    def check(*args: str) -> tuple[int, dict[str, Any]]:
        r = subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(cfg), "check", "--no-backups", "--json", *args],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                           env={**os.environ, "DBOPS_STATE_DIR": str(tmp_path / "state")})
        assert "Traceback" not in r.stderr and env.secret not in r.stdout + r.stderr, r.stderr
        return r.returncode, json.loads(r.stdout)

    code, report = check("--no-platform")
    assert code < 2 and code == {"OK": 0, "WARN": 1}[report["severity"]], report  # the engine alone: not CRIT
    code, report = check()
    [aws] = report["platform"]
    assert (aws["cluster"], aws["target"], aws["severity"]) == ("sandbox/sandbox-pg", f"instance {BARE}", "CRIT")
    assert code == 2 and report["severity"] == "CRIT"


# ---------------------------------------------------------------------------------------------
# rds.promote-read-replica


def _audit(env: Env) -> list[dict[str, Any]]:
    path = env.state_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_promote_read_replica_promotes_verifies_audits_and_the_chain_verifies(env: Env) -> None:
    plan = env.dbops("runbook", "plan", "rds.promote-read-replica", "--cluster", "promo-pg", "--param", f"replica={PROMO_REPLICA}")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert f"PromoteReadReplica DBInstanceIdentifier={PROMO_REPLICA} BackupRetentionPeriod=7" in plan.stdout
    assert "IRREVERSIBLE" in plan.stdout and "confirm: type-cluster" in plan.stdout
    # An optional parameter left out is named as such, not shown as "=None".
    assert f"parameters: replica={PROMO_REPLICA}, wait_timeout=1800" in plan.stdout
    assert "not given: backup_retention" in plan.stdout and "None" not in plan.stdout

    # Without the cluster's name typed, nothing is promoted.
    declined = env.dbops("runbook", "run", "rds.promote-read-replica", "--cluster", "promo-pg", "--param", f"replica={PROMO_REPLICA}")
    assert declined.returncode == 3, declined.stdout + declined.stderr
    assert "needs --confirm promo-pg" in declined.stderr
    assert env.instance(PROMO_REPLICA)["ReadReplicaSourceDBInstanceIdentifier"] == PROMO_PRIMARY

    run = env.dbops("runbook", "run", "rds.promote-read-replica", "--cluster", "promo-pg", "--param", f"replica={PROMO_REPLICA}",
                    "--confirm", "promo-pg")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"verify: {PROMO_REPLICA} is available and standalone" in run.stdout
    assert f"{PROMO_PRIMARY} no longer lists it as a replica" in run.stdout

    # What the server says now.
    promoted = env.instance(PROMO_REPLICA)
    assert promoted["DBInstanceStatus"] == "available"
    assert not promoted.get("ReadReplicaSourceDBInstanceIdentifier")
    assert PROMO_REPLICA not in env.instance(PROMO_PRIMARY).get("ReadReplicaDBInstanceIdentifiers", [])

    records = _audit(env)
    promote = [r for r in records if r.get("action") == "rds.promote-read-replica:promote"]
    assert [r["phase"] for r in promote] == ["intent", "result"]
    assert promote[1]["outcome"] == "ok"
    assert any("PromoteReadReplica" in c for c in promote[0]["params"]["commands"])
    verify = env.dbops("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "intact" in verify.stdout
    for text in (plan.stdout, plan.stderr, run.stdout, run.stderr, (env.state_dir / "audit.jsonl").read_text()):
        assert env.secret not in text

    # Promoted once: a second run is refused (it is no longer a replica), and says why.
    again = env.dbops("runbook", "run", "rds.promote-read-replica", "--cluster", "promo-pg", "--param", f"replica={PROMO_REPLICA}",
                      "--confirm", "promo-pg")
    assert again.returncode == 1
    assert f"{PROMO_REPLICA} is not a read replica" in again.stdout


@pytest.mark.parametrize(("cluster", "replica", "said"), [
    ("rds-pg", "no-such-replica", "no RDS instance 'no-such-replica'"),
    ("rds-pg", OTHER_REPLICA, f"{OTHER_REPLICA} is a read replica of {OTHER_PRIMARY}, not of this cluster's instance sandbox-pg-primary"),
    ("plain-pg", OTHER_REPLICA, "plain-pg has no [rds] section"),
    ("lab-pg", OTHER_REPLICA, "environment 'lab' is read-only"),
    ("down-pg", "sandbox-pg-replica", "cannot reach http://127.0.0.1:"),
])
def test_promote_is_refused_with_the_reason_and_changes_nothing(env: Env, cluster: str, replica: str, said: str) -> None:
    run = env.dbops("runbook", "run", "rds.promote-read-replica", "--cluster", cluster, "--param", f"replica={replica}",
                    "--confirm", cluster)
    assert run.returncode == 1, run.stdout + run.stderr
    assert said in run.stdout + run.stderr
    assert env.secret not in run.stdout + run.stderr
    assert env.instance(OTHER_REPLICA)["ReadReplicaSourceDBInstanceIdentifier"] == OTHER_PRIMARY
    assert env.instance("sandbox-pg-replica")["ReadReplicaSourceDBInstanceIdentifier"] == "sandbox-pg-primary"


async def test_the_wait_reads_again_after_a_failed_read_until_its_own_deadline(env: Env) -> None:
    # down-pg's AWS endpoint is dead: every read fails. The wait shows it and keeps reading
    # until wait_timeout, instead of ending a promotion's wait on the first failed read.
    from dbops.platform import rds
    from dbops.runbook.model import Context
    from dbops.runbooks.rds.promote_read_replica import wait_promoted

    ref = next(r for r in load(env.config).clusters() if r.key == "sandbox/down-pg")
    lines: list[str] = []
    ctx = Context(ref, {"replica": "sandbox-pg-replica", "wait_timeout": 2.0}, run_id="t", log=lines.append)
    with pytest.raises(RuntimeError) as ended:
        await wait_promoted(ctx)
    assert not isinstance(ended.value, rds.AwsError)
    assert str(ended.value).startswith("sandbox-pg-replica is in a state not known (the last read failed: "
                                       "RDS instance sandbox-pg-replica: cannot reach http://127.0.0.1:")
    assert "after 2s (wait_timeout)" in str(ended.value)
    assert lines and lines[0].startswith("sandbox-pg-replica: in a state not known (the last read failed: ")
    assert env.secret not in str(ended.value) + "\n".join(lines)
