"""Judge a Kafka cluster from one refresh: pure functions, no I/O.

The poller polls a Kafka cluster as one unit; this expands it into one MemberHealth per broker,
so the overview, the pane and `dbops check` see brokers as members. Partitions and consumer
groups are cluster metrics.

Consumer lag follows Burrow's evaluation rules over a window of the last `lag_window` refreshes
of each group partition (https://github.com/linkedin/Burrow/wiki/Consumer-Lag-Evaluation-Rules),
with one difference: Burrow tells STOP from STALL by commit timestamps, which OffsetFetch no
longer returns; here STOP means the group has no member (nobody is consuming) and STALL that it
has members that do not move. Until a window is full only ERR and lag in time are judged.

Metric names: reachability (brokers); on the cluster: brokers, offline, under_replicated,
under_min_isr, partition_errors, preferred_leaders, group:<id> per group, notes.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from dbops.config import ClusterRef
from dbops.engines.base import no_data_health, unit_data
from dbops.engines.kafka.data import Broker, Group, GroupPartition, KafkaData, Partition
from dbops.model import ClusterHealth, MemberHealth, Metric, Reachability, Severity, Snapshot, human_seconds

OK, WARN, CRIT, UNKNOWN = Severity.OK, Severity.WARN, Severity.CRIT, Severity.UNKNOWN

# Burrow's statuses, and how each weighs in dbops' severities.
STATUS_SEVERITY = {"OK": OK, "WARN": WARN, "STALL": CRIT, "STOP": CRIT, "ERR": CRIT}
STATUS_ORDER = ("OK", "WARN", "STALL", "STOP", "ERR")


def update_baseline(baseline: dict[str, Any] | None, snapshots: dict[str, Snapshot]) -> dict[str, Any]:
    return dict(baseline or {})


def partition_status(p: GroupPartition, window: int, has_members: bool) -> tuple[str | None, str]:
    """(status, why) of one group partition; status None: not judged yet (window not full)."""
    if p.committed is not None and p.end is not None and p.committed > p.end:
        return "ERR", f"committed offset {p.committed} is past the log end {p.end}"
    if p.committed is not None and p.start is not None and p.committed < p.start:
        return "ERR", f"committed offset {p.committed} is before the log start {p.start} (those records were deleted)"
    samples = [s for s in p.window if s.lag is not None]
    if p.lag == 0 or any(s.lag == 0 for s in samples):
        return "OK", "caught up within the window"
    if len(samples) < window:
        return None, f"judged after {window} refreshes ({len(samples)} so far)"
    first, last = samples[0], samples[-1]
    if first.committed == last.committed:
        span = human_seconds(last.at - first.at)
        if has_members:
            return "STALL", f"members are in the group but the offset has stayed at {last.committed} for {span} with lag {last.lag}"
        return "STOP", f"no member consumes: the offset has stayed at {last.committed} for {span} with lag {last.lag}"
    lags = [s.lag for s in samples]
    if all(b > a for a, b in zip(lags, lags[1:])):  # type: ignore[operator]
        return "WARN", f"consuming, but the lag grew at every refresh ({lags[0]} -> {lags[-1]})"
    return "OK", "consuming"


def group_status(g: Group, window: int) -> tuple[str | None, list[tuple[GroupPartition, str | None, str]]]:
    """The group's status (its worst partition's) and every partition's (status, why)."""
    judged = [(p, *partition_status(p, window, bool(g.members))) for p in g.partitions]
    statuses = [s for _, s, _ in judged if s is not None]
    if g.error:
        return "ERR", judged
    if not statuses:
        return None, judged
    return max(statuses, key=STATUS_ORDER.index), judged


def _lag_metric(ref: ClusterRef, data: KafkaData, g: Group) -> Metric:
    t = ref.cluster.kafka.thresholds  # type: ignore[union-attr]
    status, judged = group_status(g, data.window)
    sev = STATUS_SEVERITY.get(status or "OK", OK)
    secs = g.max_lag_seconds
    if secs is not None:
        sev = Severity.worst([sev, CRIT if secs > t.lag_seconds_crit else WARN if secs > t.lag_seconds_warn else OK])
    lag = g.total_lag
    parts = [f"group {g.group_id} ({g.state}, {len(g.members)} member(s)): {status or 'judging'}"]
    if lag is not None:
        at_least = any(p.lag_seconds_at_least for p in g.partitions if p.lag_seconds == secs)
        parts.append(f"lag {lag} records" + (f", {'>=' if at_least else ''}{human_seconds(secs)}" if secs is not None else ""))
    if g.error:
        parts.append(g.error)
    worst = [(p, s, why) for p, s, why in judged if s == status and status not in (None, "OK")]
    if worst:
        p, _, why = worst[0]
        more = f" (+{len(worst) - 1} more partitions)" if len(worst) > 1 else ""
        parts.append(f"{p.topic}/{p.partition}: {why}{more}")
    return Metric(f"group:{g.group_id}", sev, "; ".join(parts), status)


def _names(data: KafkaData, ids: tuple[int, ...]) -> str:
    return ",".join(data.broker_name(i) for i in ids)


def _partition_list(data: KafkaData, parts: list[Partition], limit: int = 4) -> str:
    shown = [f"{p.topic}/{p.partition} (isr {_names(data, p.isr) or '-'} of {_names(data, p.replicas)})" for p in parts[:limit]]
    return ", ".join(shown) + (f" and {len(parts) - limit} more" if len(parts) > limit else "")


def as_seen(data: KafkaData) -> list[Partition]:
    """Partitions as they are now, not as the controller last recorded them: a broker that does
    not answer is taken out of the ISR, and a partition it leads has no leader. The controller
    does the same only after broker.session.timeout.ms (9 s) or replica.lag.time.max.ms (30 s)."""
    up = {b.node_id for b in data.brokers if b.up and b.node_id is not None}
    # Not answering, or already gone from the metadata's broker list (fenced) while a partition's
    # ISR still names it: both are out of sync now.
    if not up:
        return data.partitions()
    return [replace(p, isr=tuple(r for r in p.isr if r in up), leader=p.leader if p.leader < 0 or p.leader in up else -1)
            for p in data.partitions()]


def cluster_metrics(ref: ClusterRef, data: KafkaData) -> list[Metric]:
    out: list[Metric] = []
    parts = as_seen(data)
    offline = [p for p in parts if p.offline]
    if offline:
        out.append(Metric("offline", CRIT, f"{len(offline)} partition(s) have no leader that answers: "
                                           f"{_partition_list(data, offline)}", len(offline)))
    under = [p for p in parts if p.under_replicated and not p.offline]
    if under:
        out.append(Metric("under_replicated", WARN, f"{len(under)} under-replicated partition(s): {_partition_list(data, under)}", len(under)))
    else:
        out.append(Metric("under_replicated", OK, f"all {len(parts)} partitions fully replicated", 0))
    seen = {(p.topic, p.partition): p for p in parts}
    below = [(t, seen[(p.topic, p.partition)]) for t in data.topics for p in t.partitions
             if t.min_isr is not None and not seen[(p.topic, p.partition)].offline and len(seen[(p.topic, p.partition)].isr) < t.min_isr]
    if below:
        t0, p0 = below[0]
        out.append(Metric("under_min_isr", CRIT, f"{len(below)} partition(s) below min.insync.replicas: writes with acks=all fail, "
                                                 f"e.g. {p0.topic}/{p0.partition} isr {len(p0.isr)} < {t0.min_isr}", len(below)))
    errors = [p for p in parts if p.error and not p.offline]
    if errors:
        out.append(Metric("partition_errors", WARN, f"{len(errors)} partition(s) report errors, e.g. {errors[0].topic}/"
                                                    f"{errors[0].partition}: {errors[0].error}", len(errors)))
    misplaced = [p for p in parts if not p.leader_is_preferred]
    if misplaced:
        out.append(Metric("preferred_leaders", OK, f"{len(misplaced)} partition(s) led by a broker that is not their preferred "
                                                   "replica (kafka.preferred-leader-election moves them back)", len(misplaced)))
    for g in data.groups:
        out.append(_lag_metric(ref, data, g))
    out += [Metric("notes", WARN, n) for n in data.notes]
    return out


def _role(data: KafkaData, node_id: int | None) -> str:
    """controller (the active one), voter (a broker that is also a quorum voter: combined mode)
    or broker."""
    if node_id is not None and node_id == data.active_controller:
        return "controller"
    if node_id is not None and data.quorum is not None and any(v == node_id for v, _ in data.quorum.voters):
        return "voter"
    return "broker"


def quorum_metric(data: KafkaData) -> Metric | None:
    q = data.quorum
    if q is None:
        return None
    if q.leader_id < 0:
        return Metric("controller", CRIT, "the KRaft controller quorum has no leader: metadata cannot change")
    voters = ", ".join(f"{data.broker_name(v)} ({q.behind(v)} behind)" for v, _ in q.voters)
    return Metric("controller", OK, f"active controller {data.broker_name(q.leader_id)}; quorum voters {voters}", q.leader_id)


def broker_snapshot(unit: Snapshot, b: Broker, data: KafkaData) -> Snapshot:
    """A broker's own row: a down one shows when it last answered (the pane's "DOWN 42s")."""
    return Snapshot(
        environment=unit.environment, cluster=unit.cluster, member=b.name, engine=unit.engine,
        reachability=Reachability.UP if b.up else Reachability.DOWN, taken_at=unit.taken_at, duration_ms=unit.duration_ms,
        data=data if b.up else None, error=b.error, last_good=data if b.last_up_at is not None else None,
        last_good_at=b.last_up_at, seq=unit.seq,
    )


def assess_cluster(ref: ClusterRef, snapshots: dict[str, Snapshot], baseline: dict[str, Any] | None = None,
                   now: float | None = None) -> ClusterHealth:
    now = time.time() if now is None else now
    unit, data = unit_data(snapshots, KafkaData)
    if data is None:
        # Pending, or no broker answered: one row per configured broker says why.
        return no_data_health(ref, unit, "broker", "brokers", "no broker answers")
    members = []
    for b in data.brokers:
        snap = broker_snapshot(unit, b, data)
        role = _role(data, b.node_id)
        if b.up:
            leads = sum(1 for p in data.partitions() if p.leader == b.node_id)
            members.append(MemberHealth(snap, role, OK, (Metric("leaders", OK, f"leads {leads} partition(s)", leads),)))
        else:
            members.append(MemberHealth(snap, role, CRIT, (Metric("reachability", CRIT, f"DOWN: {b.error or 'does not answer'}"),)))
    down = [b.name for b in data.brokers if not b.up]
    metrics = [Metric("brokers", CRIT if down else OK,
                      f"{len(down)} of {len(data.brokers)} brokers down: {', '.join(down)}" if down else f"all {len(data.brokers)} brokers up")]
    metrics += [m for m in [quorum_metric(data)] if m is not None]
    metrics += cluster_metrics(ref, data)
    sev = Severity.worst([m.severity for m in members] + [m.severity for m in metrics], OK)
    return ClusterHealth(ref.environment, ref.name, "kafka", sev, tuple(members), tuple(metrics))


def facts(health: ClusterHealth) -> dict[str, dict[str, str]]:
    """What the timeline reports when it changes: each consumer group's state and member count
    (a rebalance, a consumer leaving); the lag's judgement and the brokers' roles are reported
    already. Every up broker's snapshot holds the same refresh: the first one is read."""
    data = next((m.snapshot.data for m in health.members if isinstance(m.snapshot.data, KafkaData)), None)
    if data is None:
        return {}
    return {"": {f"group {g.group_id}": f"{g.state}, {len(g.members)} member(s)" for g in data.groups}}
