"""The fleet overview's `:` command line, filters, sort orders and grouping, without Textual."""

from __future__ import annotations

import pytest

from dbops.model import ClusterHealth, Severity
from dbops.screens.fleet_filter import (
    FleetFilter,
    GroupRow,
    counts_text,
    layout,
    resolve_environment,
    run_command,
    severity_counts,
)

ENVIRONMENTS = ["production", "staging", "dev"]
ENGINES = {"postgres", "redis"}


def run(line: str, current: FleetFilter | None = None):
    return run_command(line, current or FleetFilter(), ENGINES, ENVIRONMENTS)


def cluster(env: str, name: str, engine: str = "postgres", sev: Severity = Severity.OK) -> ClusterHealth:
    return ClusterHealth(env, name, engine, sev)


@pytest.mark.parametrize(("line", "engine"), [(":pg", "postgres"), (":postgres", "postgres"), ("pg", "postgres"),
                                              (":redis", "redis"), (":kafka", "kafka"), (":neo4j", "neo4j"),
                                              (":qdrant", "qdrant"), (":  PG ", "postgres")])
def test_engine_commands_set_the_engine_filter(line, engine):
    result = run(line)
    assert result.error is None and result.filter == FleetFilter(engine=engine)


def test_a_plugin_engine_configured_is_a_command_too():
    assert run_command(":clickhouse", FleetFilter(), {"clickhouse"}, ENVIRONMENTS).filter.engine == "clickhouse"


def test_commands_narrow_together_and_all_clears_everything():
    flt = run(":redis").filter
    flt = run(":env prod", flt).filter
    flt = run(":cluster orders-*", flt).filter
    flt = run(":problems", flt).filter
    assert flt == FleetFilter(engine="redis", environment="production", cluster_glob="orders-*", problems_only=True)
    assert flt.describe() == ":redis :env production :cluster orders-* problems only"
    assert run(":all", FleetFilter(text="x", engine="redis", problems_only=True)).filter == FleetFilter()


def test_env_takes_the_only_environment_a_prefix_names():
    assert resolve_environment("prod", ENVIRONMENTS) == "production"
    assert resolve_environment("Staging", ENVIRONMENTS) == "staging"
    assert resolve_environment("d", ["dev", "dr"]) == ["dev", "dr"]
    assert resolve_environment("qa", ENVIRONMENTS) == []


@pytest.mark.parametrize(("line", "says"), [
    (":frobnicate", "unknown command :frobnicate; try :pg"),
    (":env", ":env takes one environment: production, staging, dev"),
    (":env qa", "no environment 'qa': there are production, staging, dev"),
    (":cluster", ":cluster takes one name or glob"),
    (":pg orders", ":pg takes nothing after it"),
])
def test_a_wrong_command_says_what_is_wrong_and_keeps_the_filter(line, says):
    current = FleetFilter(engine="redis")
    result = run(line, current)
    assert result.error is not None and result.error.startswith(says)
    assert result.filter == current


def test_ambiguous_environment_lists_the_candidates():
    result = run_command(":env d", FleetFilter(), ENGINES, ["dev", "dr"])
    assert result.error == "'d' could be dev, dr: type more of it"


def test_alerts_asks_for_its_view_and_an_empty_line_does_nothing():
    assert run(":alerts").view == "alerts" and run(":alerts").error is None
    assert run(":") == run("") == run_command("", FleetFilter(), ENGINES, ENVIRONMENTS)
    assert run(":").filter == FleetFilter() and run(":").error is None


def test_text_filter_needs_every_word_somewhere_in_name_environment_or_engine():
    c = cluster("production", "orders-db", "redis")
    assert FleetFilter(text="ORDERS").matches(c)
    assert FleetFilter(text="prod redis").matches(c)
    assert not FleetFilter(text="prod postgres").matches(c)
    assert FleetFilter(cluster_glob="orders-*").matches(c) and not FleetFilter(cluster_glob="orders").matches(c)
    assert not FleetFilter(problems_only=True).matches(c)
    assert FleetFilter(problems_only=True).matches(cluster("production", "x", sev=Severity.UNKNOWN))


FLEET = [
    cluster("production", "b-db", sev=Severity.OK),
    cluster("production", "a-db", "redis", sev=Severity.WARN),
    cluster("staging", "c-db", sev=Severity.CRIT),
    cluster("staging", "a-db", "redis", sev=Severity.OK),
    cluster("dev", "z-db", sev=Severity.OK),
]


def test_groups_are_worst_first_by_severity_and_in_config_order_otherwise():
    rows = layout(FLEET, FleetFilter(), "severity", ENVIRONMENTS, grouped=True)
    assert [r.environment if isinstance(r, GroupRow) else r for r in rows] == [
        "staging", "staging/c-db", "staging/a-db",
        "production", "production/a-db", "production/b-db",
        "dev", "dev/z-db",
    ]
    by_name = layout(FLEET, FleetFilter(), "name", ENVIRONMENTS, grouped=True)
    assert [r.environment if isinstance(r, GroupRow) else r for r in by_name][:3] == ["production", "production/a-db",
                                                                                      "production/b-db"]
    by_engine = [r for r in layout(FLEET, FleetFilter(), "engine", ENVIRONMENTS, grouped=True) if isinstance(r, str)]
    assert by_engine[:2] == ["production/b-db", "production/a-db"]  # postgres before redis


def test_a_folded_group_keeps_its_header_and_counts_and_hides_its_clusters():
    rows = layout(FLEET, FleetFilter(), "severity", ENVIRONMENTS, grouped=True, collapsed={"staging"})
    assert rows[0] == GroupRow("staging", 2, 2, ((Severity.CRIT, 1),), collapsed=True)
    assert rows[1] == GroupRow("production", 2, 2, ((Severity.WARN, 1),), collapsed=False)


def test_a_filter_leaves_out_empty_groups_and_counts_what_it_kept():
    rows = layout(FLEET, FleetFilter(engine="redis"), "severity", ENVIRONMENTS, grouped=True)
    assert rows == [GroupRow("production", 1, 2, ((Severity.WARN, 1),), False), "production/a-db",
                    GroupRow("staging", 1, 2, (), False), "staging/a-db"]


def test_without_groups_the_worst_come_first_across_environments():
    rows = layout(FLEET, FleetFilter(), "severity", ENVIRONMENTS, grouped=False)
    assert rows[:2] == ["staging/c-db", "production/a-db"]


def test_counts_are_worst_first_without_zeros():
    assert counts_text(severity_counts(FLEET)) == "1 CRIT, 1 WARN"
    assert counts_text(severity_counts([cluster("dev", "x")])) == "all OK"
