"""The sandbox's Prometheus and Alertmanager are real (Debian's prometheus, alertmanager,
postgres_exporter and redis_exporter), and dbops reads them: series carry the cluster, environment
and member address; a replica stopped on purpose fires the rule, its alert is matched to its
cluster and member, a silence made by dbops suppresses it and expiring it ends it; the fleet's
health from PromQL shows the stopped member DOWN and the rest UP.

Every wait is bounded polling; nothing asserts how long anything took."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from dbops.config import Config, load
from dbops.model import Reachability, Severity
from dbops.platform import alertmanager as am
from dbops.platform import prometheus as prom
from dbops.sandbox.postgres import CLUSTER as PG_CLUSTER
from dbops.sandbox.redis import MASTER_NAME

from .conftest import MonitoringSandbox

T = TypeVar("T")
PG_KEY = f"sandbox/{PG_CLUSTER}"
SENTINEL_KEY = f"sandbox/{MASTER_NAME}"


async def wait_for(what: str, probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout: float = 90.0) -> T:
    """Poll `probe()` until `ok(result)`; fail with the last result after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if ok(result):
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not reached within {timeout:.0f} s; last: {result!r}")
        await asyncio.sleep(0.25)


@pytest.fixture(scope="module")
def mon(monitoring_sandbox: MonitoringSandbox) -> MonitoringSandbox:
    return monitoring_sandbox


@pytest.fixture(scope="module")
def cfg(mon: MonitoringSandbox) -> Config:
    return load(mon.config_path)


def _alerts_for(alerts: list[am.Alert], name: str, member: str) -> list[am.Alert]:
    return [a for a in alerts if a.name == name and a.member == member]


async def test_the_config_names_the_sandbox_prometheus_and_alertmanager(mon: MonitoringSandbox, cfg: Config) -> None:
    assert cfg.prometheus is not None and cfg.alertmanager is not None
    assert cfg.prometheus.url == mon.prometheus.url("prometheus")
    assert cfg.alertmanager.url == mon.prometheus.url("alertmanager")
    rows = {r.name: r for r in mon.prometheus.status()}
    assert {"prometheus", "alertmanager", "pg-exporter-pg1", "pg-exporter-pg2", "pg-exporter-pg3",
            "redis-exporter"} <= set(rows)
    assert all(r.running and r.pid for r in rows.values()), rows


async def test_every_target_is_up_and_its_series_carry_cluster_environment_and_member_address(
        mon: MonitoringSandbox, cfg: Config) -> None:
    assert cfg.prometheus is not None
    options = cfg.prometheus
    up = await wait_for("every target up", lambda: prom.query(options, "up"),
                        lambda samples: bool(samples) and all(v == 1 for _, v, _ in samples))
    jobs = {labels["job"] for labels, _, _ in up}
    assert {"postgres", "redis", "prometheus", "alertmanager"} <= jobs

    pg_up = await prom.query(options, "pg_up")
    by_member = {labels["member"]: labels for labels, _, _ in pg_up}
    assert set(by_member) == {"pg1", "pg2", "pg3"}
    for member, labels in by_member.items():
        assert labels["cluster"] == PG_CLUSTER
        assert labels["environment"] == "sandbox"
        # The database's address, not the exporter's.
        assert labels["instance"] == f"127.0.0.1:{mon.pg.port(member)}"

    redis_up = await prom.query(options, "redis_up")
    by_node = {labels["member"]: labels for labels, _, _ in redis_up}
    assert {"r1", "r2", "c1", "c2", "c3", "c4", "c5", "c6"} <= set(by_node)
    assert by_node["r2"]["cluster"] == MASTER_NAME
    assert by_node["r2"]["instance"] == f"127.0.0.1:{mon.redis.port('r2')}"
    assert by_node["c1"]["cluster"] == "sandbox-redis"


async def test_debian_exporters_metric_names(cfg: Config) -> None:
    """What fleet_health reads exists under these names with the exporters Debian ships."""
    assert cfg.prometheus is not None
    options = cfg.prometheus

    def ask(promql: str) -> Callable[[], Awaitable[list[prom.Sample]]]:
        return lambda: prom.query(options, promql)

    for promql in ("pg_replication_lag", "pg_stat_replication_pg_wal_lsn_diff", "redis_memory_used_bytes",
                   "redis_connected_slaves", "redis_memory_max_bytes"):
        await wait_for(f"series {promql}", ask(promql), bool)
    # The primary reports each standby's distance by its application_name.
    lsn = await prom.query(options, "pg_stat_replication_pg_wal_lsn_diff")
    assert {labels["application_name"] for labels, _, _ in lsn} == {"pg2", "pg3"}
    assert {labels["member"] for labels, _, _ in lsn} == {"pg1"}


async def test_fleet_health_of_a_whole_fleet(cfg: Config) -> None:
    assert cfg.prometheus is not None
    options, refs = cfg.prometheus, cfg.clusters()
    health = await wait_for("every member UP", lambda: prom.fleet_health(options, refs),
                            lambda h: all(m.snapshot.reachability is Reachability.UP for c in h.values() for m in c.members))
    assert set(health) == {ref.key for ref in refs}
    pg = health[PG_KEY]
    assert pg.source == "prometheus" and pg.observed_at is not None
    assert [m.name for m in pg.members] == ["pg1", "pg2", "pg3"]
    assert pg.severity is Severity.OK, pg.problems
    assert {m.name for m in health[SENTINEL_KEY].members} == {"r1", "r2"}


async def test_a_stopped_replica_fires_is_silenced_from_dbops_and_shows_down(mon: MonitoringSandbox, cfg: Config) -> None:
    assert cfg.alertmanager is not None and cfg.prometheus is not None
    amo, promo, refs = cfg.alertmanager, cfg.prometheus, cfg.clusters()
    await wait_for("no alert about pg2 before the stop", lambda: am.fetch_alerts(amo, refs),
                   lambda alerts: not _alerts_for(alerts, "DbopsPostgresDown", "pg2"))
    mon.pg.stop_member("pg2", "immediate")
    silence_id = None
    try:
        alerts = await wait_for("DbopsPostgresDown for pg2 in Alertmanager", lambda: am.fetch_alerts(amo, refs),
                                lambda alerts: any(a.state == "active" for a in _alerts_for(alerts, "DbopsPostgresDown", "pg2")))
        alert = _alerts_for(alerts, "DbopsPostgresDown", "pg2")[0]
        assert alert.cluster == PG_KEY
        assert alert.severity == "critical"
        assert "pg2" in alert.summary
        assert alert.label("instance") == f"127.0.0.1:{mon.pg.port('pg2')}"
        assert not _alerts_for(alerts, "DbopsPostgresDown", "pg1")

        health = await wait_for("pg2 DOWN in the fleet's health", lambda: prom.fleet_health(promo, refs),
                                lambda h: h[PG_KEY].members[1].snapshot.reachability is Reachability.DOWN)
        pg = health[PG_KEY]
        states = {m.name: (m.snapshot.reachability, m.severity) for m in pg.members}
        assert states["pg2"] == (Reachability.DOWN, Severity.CRIT)
        assert states["pg1"][0] is Reachability.UP and states["pg3"][0] is Reachability.UP
        assert pg.severity is Severity.CRIT
        assert any(p.startswith("pg2: pg_up = 0") for p in pg.problems), pg.problems
        assert all(m.snapshot.reachability is Reachability.UP for m in health[SENTINEL_KEY].members)

        matchers = am.silence_matchers_for(alert)
        assert ("alertname", "DbopsPostgresDown") in matchers and ("member", "pg2") in matchers
        silence_id = await am.create_silence(amo, matchers, 600, "integration test: pg2 stopped on purpose", "dbops-it")
        silences = {s.id: s for s in await am.list_silences(amo)}
        assert silences[silence_id].state == "active"
        assert silences[silence_id].created_by == "dbops-it"
        assert {(m.name, m.value) for m in silences[silence_id].matchers} == set(matchers)
        assert all(m.is_equal and not m.is_regex for m in silences[silence_id].matchers)

        suppressed = await wait_for("the alert suppressed by the silence", lambda: am.fetch_alerts(amo, refs),
                                    lambda alerts: any(a.state == "suppressed" for a in _alerts_for(alerts, "DbopsPostgresDown", "pg2")))
        assert silence_id in _alerts_for(suppressed, "DbopsPostgresDown", "pg2")[0].silenced_by

        await am.expire_silence(amo, silence_id)
        silences = {s.id: s for s in await am.list_silences(amo)}
        assert silences[silence_id].state == "expired"
        silence_id = None
        await wait_for("the alert active again once the silence expired", lambda: am.fetch_alerts(amo, refs),
                       lambda alerts: any(a.state == "active" and not a.silenced_by
                                          for a in _alerts_for(alerts, "DbopsPostgresDown", "pg2")))
    finally:
        if silence_id is not None:
            await am.expire_silence(amo, silence_id)
        mon.pg.start_member("pg2")
        mon.pg.wait_streaming(("pg2",))
    await wait_for("the alert resolved after the restart", lambda: am.fetch_alerts(amo, refs),
                   lambda alerts: not _alerts_for(alerts, "DbopsPostgresDown", "pg2"))


async def test_a_stopped_redis_replica_fires_and_is_matched(mon: MonitoringSandbox, cfg: Config) -> None:
    assert cfg.alertmanager is not None and cfg.prometheus is not None
    amo, promo, refs = cfg.alertmanager, cfg.prometheus, cfg.clusters()
    mon.redis.stop_node("r2", "kill")
    try:
        alerts = await wait_for("DbopsRedisDown for r2", lambda: am.fetch_alerts(amo, refs),
                                lambda alerts: bool(_alerts_for(alerts, "DbopsRedisDown", "r2")))
        assert _alerts_for(alerts, "DbopsRedisDown", "r2")[0].cluster == SENTINEL_KEY
        health = await wait_for("r2 DOWN", lambda: prom.fleet_health(promo, refs),
                                lambda h: {m.name: m.snapshot.reachability for m in h[SENTINEL_KEY].members}.get("r2")
                                is Reachability.DOWN)
        assert health[SENTINEL_KEY].severity is Severity.CRIT
        assert any("redis_up = 0" in p for p in health[SENTINEL_KEY].problems)
    finally:
        mon.redis.start_node("r2")
        mon.redis.wait_replicas_linked(("r2",))
    await wait_for("DbopsRedisDown for r2 resolved", lambda: am.fetch_alerts(amo, refs),
                   lambda alerts: not _alerts_for(alerts, "DbopsRedisDown", "r2"))


async def test_alertmanager_answers_a_bad_silence_with_a_clear_message(cfg: Config) -> None:
    assert cfg.alertmanager is not None
    with pytest.raises(am.MonitoringError) as err:
        await am.expire_silence(cfg.alertmanager, "00000000-0000-0000-0000-000000000000")
    assert err.value.message.startswith(f"alertmanager at {cfg.alertmanager.url}: HTTP ")
    assert "Traceback" not in err.value.message
