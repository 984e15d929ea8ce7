"""The Kafka judgement on hand-made refreshes: Burrow's lag rules over a window, lag in time,
partitions as an operator must see them while a broker is down, and what `dbops check` says."""

from __future__ import annotations

from dbops.config import parse
from dbops.engines.kafka.assess import assess_cluster, partition_status
from dbops.engines.kafka.data import (
    Broker,
    Group,
    GroupPartition,
    KafkaData,
    LagSample,
    Member,
    Partition,
    Quorum,
    Topic,
    lag_seconds,
    with_inferred_ids,
)
from dbops.model import Reachability, Severity, Snapshot

NOW = 1_800_000_000.0
WINDOW = 4

CONFIG = """
[environments.prod.clusters.events]
engine = "kafka"
members = [{ name = "k1", host = "10.0.0.1" }, { name = "k2", host = "10.0.0.2" }, { name = "k3", host = "10.0.0.3" }]
[environments.prod.clusters.events.kafka]
thresholds = { lag_window = 4, lag_seconds_warn = 60, lag_seconds_crit = 600 }
"""


def ref():
    return parse(CONFIG).clusters()[0]


def gp(commits: list[int | None], ends: list[int], *, start: int = 0, secs: float | None = None) -> GroupPartition:
    window = tuple(LagSample(NOW - 2 * (len(ends) - 1 - i), c, e) for i, (c, e) in enumerate(zip(commits, ends)))
    return GroupPartition("orders", 0, commits[-1], start, ends[-1], secs, False, window)


def test_a_partition_is_not_judged_before_its_window_is_full() -> None:
    status, why = partition_status(gp([5, 5], [10, 12]), WINDOW, has_members=False)
    assert status is None and "after 4 refreshes (2 so far)" in why


def test_offset_standing_still_with_lag_is_stop_without_members_and_stall_with_them() -> None:
    p = gp([5, 5, 5, 5], [10, 12, 14, 16])
    assert partition_status(p, WINDOW, has_members=False)[0] == "STOP"
    status, why = partition_status(p, WINDOW, has_members=True)
    assert status == "STALL" and "stayed at 5" in why and "lag 11" in why


def test_lag_zero_anywhere_in_the_window_is_ok() -> None:
    assert partition_status(gp([5, 5, 5, 5], [5, 8, 9, 10]), WINDOW, has_members=False)[0] == "OK"


def test_consuming_while_lag_grows_every_refresh_is_warn_and_steady_consuming_is_ok() -> None:
    assert partition_status(gp([5, 6, 7, 8], [10, 13, 16, 19]), WINDOW, has_members=True)[0] == "WARN"
    assert partition_status(gp([5, 9, 12, 16], [10, 13, 16, 19]), WINDOW, has_members=True)[0] == "OK"


def test_an_offset_outside_the_log_is_err() -> None:
    status, why = partition_status(gp([3], [10], start=5), WINDOW, has_members=False)
    assert status == "ERR" and "before the log start 5" in why
    assert partition_status(gp([12], [10]), WINDOW, has_members=False)[0] == "ERR"


def test_lag_in_time_interpolates_the_observed_log_end() -> None:
    history = [(NOW - 10, 100), (NOW - 8, 120), (NOW - 6, 140)]
    # offset 110 was appended halfway between the first two refreshes: 9 s ago
    assert lag_seconds(110, history, NOW) == (9.0, False)
    assert lag_seconds(140, history, NOW) == (0.0, False)


def test_lag_in_time_behind_everything_seen_is_extrapolated_or_a_lower_bound() -> None:
    # 40 records in 10 s = 4/s; 60 behind the end -> 15 s
    assert lag_seconds(80, [(NOW - 10, 100), (NOW, 140)], NOW) == (15.0, False)
    # nothing produced while watched: at least as old as the oldest sample
    assert lag_seconds(80, [(NOW - 10, 100), (NOW, 100)], NOW) == (10.0, True)
    assert lag_seconds(80, [(NOW, 100)], NOW) == (None, False)


def test_a_stopped_broker_never_seen_gets_the_orphan_replica_id() -> None:
    brokers = [Broker(1, "a:9092", "k1", True), Broker(None, "b:9092", "k2", False), Broker(3, "c:9092", "k3", True)]
    topics = [Topic("t", False, (Partition("t", 0, 1, (1, 2, 3), (1, 3)),))]
    assert [b.node_id for b in with_inferred_ids(brokers, topics)] == [1, 2, 3]


def snapshot(data: KafkaData | None, reach: Reachability = Reachability.UP, error: str | None = None) -> dict[str, Snapshot]:
    return {"brokers": Snapshot("prod", "events", "brokers", "kafka", reach, NOW, data=data, error=error)}


def kafka_data(brokers_up: tuple[bool, bool, bool] = (True, True, True), isr: tuple[int, ...] = (1, 2, 3),
               groups: tuple[Group, ...] = ()) -> KafkaData:
    brokers = tuple(Broker(i + 1, f"10.0.0.{i + 1}:9092", f"k{i + 1}", up) for i, up in enumerate(brokers_up))
    parts = tuple(Partition("orders", n, leader=(n % 3) + 1, replicas=((n % 3) + 1, ((n + 1) % 3) + 1, ((n + 2) % 3) + 1),
                            isr=isr) for n in range(3))
    return KafkaData("cid", 1, brokers, (Topic("orders", False, parts, min_isr=2),), groups, NOW, window=WINDOW)


def test_a_broker_that_stopped_answering_makes_its_partitions_under_replicated_at_once() -> None:
    health = assess_cluster(ref(), snapshot(kafka_data(brokers_up=(True, True, False))))
    assert health.severity is Severity.CRIT
    text = "\n".join(health.problems)
    assert "1 of 3 brokers down: k3" in text
    assert "2 under-replicated partition(s): orders/0 (isr k1,k2 of k1,k2,k3)" in text
    # orders/2 is led by k3: nobody serves it until the controller elects another leader
    assert "1 partition(s) have no leader that answers: orders/2" in text
    assert [m.snapshot.reachability for m in health.members] == [Reachability.UP, Reachability.UP, Reachability.DOWN]


def test_a_broker_fenced_out_of_the_metadata_while_isrs_still_name_it_is_out_of_sync() -> None:
    # The controller dropped k3 from the brokers list; the partitions' ISRs name it a moment longer.
    data = kafka_data()
    k3 = Broker(None, "10.0.0.3:9092", "k3", False, error="not in the cluster's metadata")
    data = KafkaData(data.cluster_id, data.controller_id, (*data.brokers[:2], k3), data.topics, data.groups, NOW, window=WINDOW)
    text = "\n".join(assess_cluster(ref(), snapshot(data)).problems)
    assert "1 of 3 brokers down: k3" in text
    assert "under-replicated partition(s): orders/0 (isr k1,k2 of k1,k2," in text


def test_isr_below_min_insync_replicas_is_crit() -> None:
    health = assess_cluster(ref(), snapshot(kafka_data(isr=(1,))))
    assert any(m.name == "under_min_isr" and m.severity is Severity.CRIT for m in health.metrics)


def test_a_stopped_group_with_old_lag_is_crit_and_named_with_its_lag() -> None:
    g = Group("billing", "Empty", "consumer", 1, (), (gp([5, 5, 5, 5], [10, 12, 14, 16], secs=700.0),), (5, 7, 9, 11))
    health = assess_cluster(ref(), snapshot(kafka_data(groups=(g,))))
    metric = next(m for m in health.metrics if m.name == "group:billing")
    assert metric.severity is Severity.CRIT and metric.value == "STOP"
    assert "lag 11 records, 12m" in metric.message


def test_lag_in_time_alone_is_judged_before_the_window_is_full() -> None:
    member = Member("m-1", "billing-1", "10.1.1.1", (("orders", 0),))
    g = Group("billing", "Stable", "consumer", 1, (member,), (gp([5], [10], secs=120.0),))
    metric = next(m for m in assess_cluster(ref(), snapshot(kafka_data(groups=(g,)))).metrics if m.name == "group:billing")
    assert metric.severity is Severity.WARN and "judging" in metric.message


def test_no_broker_answering_lists_every_configured_broker_as_down() -> None:
    health = assess_cluster(ref(), snapshot(None, Reachability.DOWN, "no broker of events answers"))
    assert health.severity is Severity.CRIT
    assert [m.name for m in health.members] == ["k1", "k2", "k3"]
    assert all("no broker of events answers" in p for p in health.problems)


def test_the_quorum_leader_is_the_controller_and_a_leaderless_quorum_is_crit() -> None:
    from dataclasses import replace

    data = replace(kafka_data(), quorum=Quorum(leader_id=2, high_watermark=500, voters=((1, 500), (2, 500), (3, 420))))
    health = assess_cluster(ref(), snapshot(data))
    assert [m.role for m in health.members] == ["voter", "controller", "voter"]
    metric = next(m for m in health.metrics if m.name == "controller")
    assert metric.message == "active controller k2; quorum voters k1 (0 behind), k2 (0 behind), k3 (80 behind)"
    lost = assess_cluster(ref(), snapshot(replace(data, quorum=Quorum(-1, 500, data.quorum.voters))))
    assert next(m for m in lost.metrics if m.name == "controller").severity is Severity.CRIT


def test_the_timeline_tells_a_groups_rebalance() -> None:
    from dbops.recording import state_changes

    def told(before: KafkaData, after: KafkaData) -> list[str]:
        return [e.text for e in state_changes(assess_cluster(ref(), snapshot(before)), assess_cluster(ref(), snapshot(after)), NOW)]

    one, two = Member("m-1", "billing-1", "10.1.1.1", (("orders", 0),)), Member("m-2", "billing-2", "10.1.1.2", (("orders", 1),))
    caught_up = (gp([16, 16, 16, 16], [16, 16, 16, 16], secs=0.0),)
    stable = Group("billing", "Stable", "consumer", 1, (one, two), caught_up)
    rebalancing = Group("billing", "PreparingRebalance", "consumer", 1, (one,), caught_up)
    assert told(kafka_data(groups=(stable,)), kafka_data(groups=(rebalancing,))) == [
        "group billing Stable, 2 member(s) → PreparingRebalance, 1 member(s)"]
    assert told(kafka_data(groups=(stable,)), kafka_data(groups=(stable,))) == []
