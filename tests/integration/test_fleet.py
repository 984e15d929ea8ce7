"""A fleet on the sandbox's real servers: `dbops check` picks clusters by name, environment and
engine and speaks Prometheus' text format (checked by Debian's promtool); in fleet mode the
clusters' rows come from the sandbox's real Prometheus and only the cluster the operator opens
is polled directly (seen from PostgreSQL's own pg_stat_activity).

Every wait is bounded polling; nothing asserts how long anything took."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbops.config import load
from dbops.model import Reachability

from .conftest import MonitoringSandbox, pg_exec

FLEET_COPIES = 297  # with the sandbox's three clusters: 300


def run_check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(config), "check", "--no-backups", "--no-platform", *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ})


def fleet_config(mon: MonitoringSandbox, tmp_path: Path, *, fleet: bool) -> Path:
    """The sandbox's config plus FLEET_COPIES clusters in environment `fleet`, each a copy of
    sandbox-pg (the same three real members): 300 clusters."""
    text = mon.config_path.read_text()
    if fleet:
        text = re.sub(r"(\[prometheus\]\n)", r"\1fleet = true\n", text)
        assert "fleet = true" in text
    cfg = load(mon.config_path)
    pg = next(r for r in cfg.clusters() if r.name == "sandbox-pg")
    members = ", ".join(f'{{ name = "{m.name}", host = "{m.host}", port = {m.port}, role = "{m.role}" }}' for m in pg.cluster.members)
    password = pg.cluster.password.value if pg.cluster.password else None
    copies = ["[environments.fleet]\nsandbox = true\n"]
    for i in range(FLEET_COPIES):
        copies.append(f'[environments.fleet.clusters.orders-{i:03d}]\nengine = "postgres"\npassword = {{ value = "{password}" }}\n'
                      f"members = [{members}]\n")
    path = tmp_path / "fleet.toml"
    path.write_text(text + "\n" + "\n".join(copies))
    load(path)  # valid, or the test is wrong
    return path


def test_check_picks_clusters_by_name_environment_and_engine(monitoring_sandbox: MonitoringSandbox, tmp_path: Path) -> None:
    config = fleet_config(monitoring_sandbox, tmp_path, fleet=False)
    out = run_check(config, "--cluster", "sandbox-s*", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert [c["name"] for c in json.loads(out.stdout)["clusters"]] == ["sandbox-sentinel"]

    out = run_check(config, "--environment", "fleet", "--cluster", "orders-00[0-2]", "--engine", "pg", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert sorted(c["name"] for c in report["clusters"]) == ["orders-000", "orders-001", "orders-002"]
    assert all(c["environment"] == "fleet" and c["source"] == "poll" for c in report["clusters"])

    out = run_check(config, "--environment", "prod")
    assert out.returncode == 3
    assert "no cluster matches --environment 'prod'" in out.stderr and "no environment 'prod' (configured: fleet, sandbox)" in out.stderr
    out = run_check(config, "--engine", "mongodb")
    assert out.returncode == 3 and "no engine 'mongodb'" in out.stderr
    # A textfile collector still gets the verdict when nothing could be judged.
    out = run_check(config, "--environment", "prod", "--format", "prometheus")
    assert out.returncode == 3 and re.search(r"^dbops_check_severity 3$", out.stdout, re.M)


def test_check_in_prometheus_text_format_is_valid_for_promtool(monitoring_sandbox: MonitoringSandbox, tmp_path: Path) -> None:
    config = fleet_config(monitoring_sandbox, tmp_path, fleet=False)
    out = run_check(config, "--environment", "sandbox", "--format", "prometheus")
    assert out.returncode in (0, 1), out.stderr  # the sandbox may warn about something; it must not be down
    promtool = subprocess.run(["promtool", "check", "metrics"], input=out.stdout, capture_output=True, text=True, timeout=30)
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr
    assert 'dbops_member_up{environment="sandbox",cluster="sandbox-pg",engine="postgres",member="pg1",role="primary"} 1' in out.stdout
    assert re.search(r'^dbops_cluster_severity\{environment="sandbox",cluster="sandbox-sentinel",engine="redis",source="poll"\} [01]$',
                     out.stdout, re.M)
    assert re.search(r"^dbops_check_severity [01]$", out.stdout, re.M)
    assert 'environment="fleet"' not in out.stdout  # --environment sandbox picked the sandbox's alone


async def dbops_connections(mon: MonitoringSandbox) -> int:
    """Connections the console's pollers hold on pg1 (application_name dbops), from pg1 itself."""
    rows = await pg_exec(mon.pg.dsn("pg1"), "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'dbops'")
    return int(rows[0]["n"])


async def wait_until(what: str, probe, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.25)


async def test_fleet_mode_reads_300_clusters_from_prometheus_and_polls_only_the_one_opened(
        monitoring_sandbox: MonitoringSandbox, tmp_path: Path) -> None:
    from dbops.poller import PollerHub

    config = load(fleet_config(monitoring_sandbox, tmp_path, fleet=True))
    assert len(config.clusters()) == 300
    hub = PollerHub(config)
    hub.start()
    try:
        pg_key = "sandbox/sandbox-pg"

        async def from_prometheus():
            health = hub.cluster_health(pg_key)
            return health.source == "prometheus" and all(m.snapshot.reachability is Reachability.UP for m in health.members)

        await wait_until("sandbox-pg's row from Prometheus, every member up", from_prometheus)
        rows = hub.health()
        assert {h.source for h in rows} == {"prometheus"} and len(rows) == 300
        # The copies name no series Prometheus has (its series say cluster="sandbox-pg" in
        # environment sandbox): their rows say so instead of pretending.
        copy = hub.cluster_health("fleet/orders-000")
        assert copy.source == "prometheus" and "no series in Prometheus" in " ".join(m.message for m in copy.metrics)
        assert await dbops_connections(monitoring_sandbox) == 0  # 300 clusters, nothing polled directly

        hub.watch(pg_key)

        async def polled_directly():
            health = hub.cluster_health(pg_key)
            return health.source == "poll" and all(m.snapshot.reachable for m in health.members)

        await wait_until("sandbox-pg polled directly once opened", polled_directly)
        # One connection: sandbox-pg's poller of pg1; none of the 297 copies of the same member.
        assert await dbops_connections(monitoring_sandbox) == 1
        assert {h.source for h in hub.health() if f"{h.environment}/{h.name}" != pg_key} == {"prometheus"}

        hub.watch(None)
        await wait_until("the direct connection closed after leaving the cluster",
                         lambda: _is(dbops_connections(monitoring_sandbox), 0))
        await wait_until("sandbox-pg back on Prometheus' rows", lambda: _true(hub.cluster_health(pg_key).source == "prometheus"))
    finally:
        hub.stop(timeout=10)


async def _is(coro, value) -> bool:
    return await coro == value


async def _true(value: bool) -> bool:
    return value
