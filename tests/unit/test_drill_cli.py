"""`dbops drill` without servers: what an operator is told before anything runs, and the
targets a drill is judged against. (The drills themselves run on the real sandbox: see
tests/integration/test_drill_postgres.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from dbops.cli import main

CONFIG = """
[drills]
rto_seconds = 600
[drills.targets.prod]
rpo_seconds = 300
[drills.targets."prod/orders"]
rto_seconds = 3600

[environments.lab]
sandbox = true
mode = "operator"
[environments.lab.clusters.pg-lab]
engine = "postgres"
password = { value = "s3cret-lab" }
members = [{ name = "a", host = "127.0.0.1", port = 1 }, { name = "b", host = "127.0.0.1", port = 2 }]

[environments.prod]
mode = "operator"
[environments.prod.clusters.orders]
engine = "postgres"
members = [{ name = "a", host = "db1.internal" }, { name = "b", host = "db2.internal" }]
[environments.prod.clusters.cache]
engine = "redis"
members = [{ name = "r1", host = "r1.internal" }]

[environments.staging]
drills = true
[environments.staging.clusters.orders-stg]
engine = "postgres"
members = [{ name = "a", host = "db1.stg" }, { name = "b", host = "db2.stg" }]
"""


def invoke(tmp_path: Path, *args: str, config: str = CONFIG):
    path = tmp_path / "dbops.toml"
    path.write_text(config)
    return CliRunner(env={"DBOPS_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "200"}).invoke(
        main, ["--config", str(path), "drill", *args])


def test_list_names_every_scenario_and_the_clusters_it_applies_to(tmp_path):
    res = invoke(tmp_path, "list", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["id"]: r for r in json.loads(res.output)}
    assert {"pg-primary-loss", "pg-accidental-delete", "pg-backup-restore", "redis-master-loss", "redis-sentinel-failover",
            "kafka-broker-loss", "qdrant-replica-loss"} <= set(rows)
    assert rows["pg-primary-loss"]["clusters"] == ["lab/pg-lab", "prod/orders", "staging/orders-stg"]
    assert rows["pg-primary-loss"]["recovery"] == ["postgres.promote-replica"]
    assert rows["redis-sentinel-failover"]["recovery"] == ["automatic (no runbook)"]
    # A standalone Redis is neither a Cluster nor a Sentinel group; no pgBackRest, no restore drill.
    assert rows["redis-master-loss"]["clusters"] == [] and rows["pg-accidental-delete"]["clusters"] == []


def test_plan_shows_the_fault_the_runbooks_and_the_targets_and_changes_nothing(tmp_path):
    res = invoke(tmp_path, "plan", "pg-primary-loss", "--cluster", "orders")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "targets: RTO 3600 s, RPO 300 s" in out  # the cluster's own over its environment's over the defaults
    assert "MANUAL: you do it, then confirm" in out and "type the cluster name" in out  # production, hosts not managed
    assert "pg_ctl -D \"$PGDATA\" -m immediate stop" in out
    assert "runbook postgres.promote-replica" in out
    assert "would be refused now: environment 'prod' does not allow drills" in out
    assert "nothing was changed" in out
    assert not (tmp_path / "state" / "drills").exists()


def test_a_production_environment_refuses_a_drill_unless_it_allows_them(tmp_path):
    res = invoke(tmp_path, "run", "pg-primary-loss", "--cluster", "orders", "--yes", "--confirm", "orders")
    assert res.exit_code == 2
    assert "does not allow drills: set drills = true under [environments.prod]" in res.output


def test_a_read_only_environment_that_allows_drills_still_refuses_the_fault(tmp_path):
    res = invoke(tmp_path, "run", "pg-primary-loss", "--cluster", "orders-stg", "--yes")
    assert res.exit_code == 2
    assert "environment 'staging' is read-only" in res.output


def test_unknown_names_are_refused_with_the_ones_that_exist(tmp_path):
    res = invoke(tmp_path, "run", "pg-primary-los", "--cluster", "pg-lab", "--yes")
    assert res.exit_code == 2 and "did you mean 'pg-primary-loss'" in res.output
    res = invoke(tmp_path, "run", "redis-master-loss", "--cluster", "pg-lab", "--yes")
    assert res.exit_code == 2
    assert "does not apply to lab/pg-lab: it is a postgres cluster" in res.output and "pg-primary-loss" in res.output
    res = invoke(tmp_path, "run", "pg-primary-loss", "--yes")
    assert res.exit_code == 2 and "needs --cluster" in res.output
    res = invoke(tmp_path, "run", "pg-primary-loss", "--cluster", "pg-lab", "--note", "nowhere=x")
    assert res.exit_code == 2 and "PHASE one of" in res.output


def test_a_drill_on_servers_that_do_not_answer_fails_at_the_steady_state_and_says_why(tmp_path):
    """Nothing is injected into a cluster that is not healthy to begin with; the report says so,
    and no credential reaches the output."""
    res = invoke(tmp_path, "run", "pg-primary-loss", "--cluster", "pg-lab", "--yes")
    assert res.exit_code == 2, res.output
    assert "not in a steady state" in res.output and "FAILED" in res.output
    assert "s3cret-lab" not in res.output
    run_dir = next((tmp_path / "state" / "drills").iterdir())
    report = json.loads((run_dir / "report.json").read_text())
    assert report["drill"]["outcome"] == "failed"
    assert [p["outcome"] for p in report["phases"]][:3] == ["done", "failed", "pending"]
    audit = [json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert not any(r["action"].endswith(".fault") for r in audit)  # never injected
    assert any(r["action"] == "drill.pg-primary-loss.report" for r in audit)
    res = invoke(tmp_path, "history")
    assert "pg-primary-loss on lab/pg-lab" in res.output and "failed" in res.output


def test_targets_must_name_a_configured_environment_or_cluster(tmp_path):
    res = invoke(tmp_path, "list", config=CONFIG.replace('[drills.targets.prod]', '[drills.targets.prdo]'))
    assert res.exit_code != 0
    assert "drills.targets.prdo: names no environment or environment/cluster" in res.output


def test_a_teams_scenarios_load_from_drill_dirs_and_a_broken_file_is_named(tmp_path):
    team = tmp_path / "drills"
    team.mkdir()
    (team / "ours.py").write_text('''
from dbops.drill.model import Fault, Scenario

async def _inject(ctx):
    return "nothing"

SCENARIO = Scenario(id="team-noop", title="A team's own drill", engine="postgres", description="d",
                    fault=Fault("nothing", lambda ctx: ["true"], _inject), recovery=(),
                    applies=lambda ref: None if ref.cluster.engine == "postgres" else "not postgres")
''')
    (team / "broken.py").write_text("raise RuntimeError('half written')\n")
    res = invoke(tmp_path, "list", "--json", config=f'drill_dirs = ["{team}"]\n' + CONFIG)
    assert res.exit_code == 0, res.output
    rows = {r["id"]: r for r in json.loads(res.stdout)}
    assert rows["team-noop"]["source"] == str(team / "ours.py")
    assert "pg-primary-loss" in rows  # the built-ins still load
    assert f"{team / 'broken.py'}: cannot be loaded: RuntimeError: half written" in res.stderr
