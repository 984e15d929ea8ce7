"""Alerts and series are matched to clusters and members by their labels: a cluster's own
alert_labels, a cluster label (with the environment when given), or a member's address or name."""

from __future__ import annotations

import pytest

from dbops.config import AlertLabels, Config, parse
from dbops.platform.monitoring_labels import LabelIndex, match_labels, normalize_address

CONFIG = """
[environments.prod.clusters.orders]
engine = "postgres"
members = [
  { name = "pg1", host = "10.0.0.1" },
  { name = "pg2", host = "10.0.0.2", port = 5433, application_name = "orders_replica_b" },
]

[environments.staging.clusters.orders]
engine = "postgres"
members = [{ name = "pg1", host = "10.1.0.1" }, { name = "pg2", host = "10.1.0.2" }]

[environments.prod.clusters.sessions]
engine = "redis"
members = [{ name = "r1", host = "cache-1.internal" }, { name = "r2", host = "cache-2.internal", port = 6380 }]

[environments.prod.clusters.billing]
engine = "postgres"
alert_labels = { team = "billing", service = "ledger" }
members = [{ name = "ledger-0", host = "10.2.0.1" }]

[environments.prod.clusters.billing-archive]
engine = "postgres"
alert_labels = { team = "billing" }
members = [{ name = "archive-0", host = "10.3.0.1" }]
"""


@pytest.fixture(scope="module")
def cfg() -> Config:
    return parse(CONFIG)


def m(cfg: Config, **labels: str) -> tuple[str, str | None] | None:
    return match_labels(labels, cfg.clusters(), AlertLabels())


def test_cluster_and_environment_labels(cfg: Config) -> None:
    assert m(cfg, cluster="orders", environment="prod") == ("prod/orders", None)
    assert m(cfg, cluster="orders", env="staging", instance="10.1.0.2:5432") == ("staging/orders", "pg2")
    # A name in two environments without an environment label: the member's address decides.
    assert m(cfg, cluster="orders", instance="10.0.0.2:5433") == ("prod/orders", "pg2")
    assert m(cfg, cluster="orders") is None
    # The environment label must agree.
    assert m(cfg, cluster="sessions", environment="staging") is None
    assert m(cfg, cluster="no-such-cluster") is None


def test_member_found_by_address_with_the_engines_default_port(cfg: Config) -> None:
    # pg1 has no port in the config: PostgreSQL's 5432; r1: Redis' 6379.
    assert m(cfg, cluster="orders", environment="prod", instance="10.0.0.1:5432") == ("prod/orders", "pg1")
    assert m(cfg, cluster="sessions", addr="redis://cache-1.internal:6379") == ("prod/sessions", "r1")
    assert m(cfg, cluster="sessions", instance="10.9.9.9:9121", addr="redis://:secret@cache-2.internal:6380/0") \
        == ("prod/sessions", "r2")
    # A bare host names the member on it.
    assert m(cfg, cluster="sessions", instance="CACHE-2.internal") == ("prod/sessions", "r2")


def test_member_found_by_name_or_application_name_within_the_cluster(cfg: Config) -> None:
    assert m(cfg, cluster="orders", environment="prod", pod="pg2") == ("prod/orders", "pg2")
    assert m(cfg, cluster="orders", environment="prod", member="orders_replica_b") == ("prod/orders", "pg2")
    assert m(cfg, cluster="orders", environment="prod", instance="10.0.0.9:9187") == ("prod/orders", None)


def test_without_a_cluster_label_the_address_names_the_cluster(cfg: Config) -> None:
    assert m(cfg, instance="10.1.0.1:5432") == ("staging/orders", "pg1")
    assert m(cfg, server="postgresql://10.0.0.2:5433/postgres?sslmode=disable") == ("prod/orders", "pg2")
    # pg1 is a member's name in two clusters: it names neither.
    assert m(cfg, pod="pg1") is None
    assert m(cfg, pod="archive-0") == ("prod/billing-archive", "archive-0")
    assert m(cfg, instance="10.250.0.1:5432") is None


def test_alert_labels_win_and_the_most_specific_does(cfg: Config) -> None:
    assert m(cfg, team="billing", service="ledger", cluster="orders") == ("prod/billing", None)
    assert m(cfg, team="billing", service="other") == ("prod/billing-archive", None)
    assert m(cfg, team="billing", pod="ledger-0") == ("prod/billing-archive", None)
    assert m(cfg, team="billing", service="ledger", instance="10.2.0.1:5432") == ("prod/billing", "ledger-0")
    assert m(cfg, team="payments") is None


def test_configured_label_names_replace_the_defaults(cfg: Config) -> None:
    rules = AlertLabels(cluster=["db_cluster"], environment=["stage"], member=["node"])
    refs = cfg.clusters()
    assert match_labels({"db_cluster": "orders", "stage": "staging", "node": "pg2"}, refs, rules) == ("staging/orders", "pg2")
    # The default names mean nothing under these rules.
    assert match_labels({"cluster": "sessions"}, refs, rules) is None


@pytest.mark.parametrize(("value", "want"), [
    ("10.0.0.1:5432", "10.0.0.1:5432"),
    ("redis://user:pw@Cache-1:6379/0", "cache-1:6379"),
    ("postgresql://db:5432/postgres?sslmode=require", "db:5432"),
    ("  host  ", "host"),
])
def test_normalize_address(value: str, want: str) -> None:
    assert normalize_address(value) == want


def test_the_index_scales_to_a_thousand_clusters() -> None:
    text = "\n".join(
        f'[environments.e{i % 4}.clusters.c{i}]\nengine = "postgres"\n'
        f'members = [{{ name = "a", host = "10.{i // 256}.{i % 256}.1" }}, {{ name = "b", host = "10.{i // 256}.{i % 256}.2" }}]\n'
        for i in range(1000)
    )
    cfg = parse(text)
    index = LabelIndex(cfg.clusters(), AlertLabels())
    assert index.match({"cluster": "c999", "environment": "e3", "instance": "10.3.231.2:5432"}) == ("e3/c999", "b")
    assert index.match({"instance": "10.0.7.1:5432"}) == ("e3/c7", "a")
    assert len(index.clusters()) == 1000
