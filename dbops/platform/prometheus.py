"""Prometheus' HTTP API: instant queries, and the fleet's health from the usual exporters'
series, a few queries for every cluster at once (never one per cluster).

What is read (names as the exporters Debian ships write them; the sandbox runs those):

    postgres_exporter  pg_up (per member); pg_replication_lag (seconds, from the README's
                       example queries.yaml, which most deployments run; newer exporters call it
                       pg_replication_lag_seconds); pg_stat_replication_pg_wal_lsn_diff (bytes
                       each standby is behind, on the primary's exporter, by application_name)
    redis_exporter     redis_up, redis_memory_used_bytes, redis_memory_max_bytes,
                       redis_connected_slaves (per node)
    kafka_exporter     kafka_consumergroup_lag (messages, per group, summed over partitions and
                       topics), kafka_brokers

Each series is matched to a configured cluster and member by its labels
(dbops.platform.monitoring_labels). The judgement is the poller's, simplified: a member whose up
series is 0 is DOWN and CRIT; one without any series is PENDING and UNKNOWN; lag is judged with
the cluster's thresholds.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dbops.config import ClusterRef, Member, PrometheusOptions
from dbops.model import ClusterHealth, MemberHealth, Metric, Reachability, Severity, Snapshot, human_bytes
from dbops.platform.monitoring_http import MonitoringError, Service
from dbops.platform.monitoring_labels import LabelIndex, normalize_address

__all__ = ["NO_SERIES", "MonitoringError", "Sample", "fleet_health", "parse_vector", "query"]

Sample = tuple[dict[str, str], float, float]  # (labels, value, timestamp)

NO_SERIES = "no series in Prometheus for this cluster (check the exporters' labels)"

# name -> PromQL; each is one query for the whole fleet.
QUERIES: dict[str, str] = {
    "pg_up": "pg_up",
    "pg_lag_seconds": '{__name__=~"pg_replication_lag|pg_replication_lag_seconds"}',
    "pg_lag_bytes": "pg_stat_replication_pg_wal_lsn_diff",
    "redis_up": "redis_up",
    "redis_memory": "redis_memory_used_bytes",
    "redis_maxmemory": "redis_memory_max_bytes",
    "redis_replicas": "redis_connected_slaves",
    "kafka_lag": "sum without (partition, topic) (kafka_consumergroup_lag)",
    "kafka_brokers": "kafka_brokers",
}
# The up series of each engine with one per member, and the exporter that writes it.
UP_SERIES = {"postgres": ("pg_up", "postgres_exporter"), "redis": ("redis_up", "redis_exporter")}


def parse_vector(data: Any) -> list[Sample]:
    """/api/v1/query's answer -> samples; ValueError when it is not a success with a vector
    (or a scalar) of [timestamp, "value"] pairs."""
    if not isinstance(data, Mapping):
        raise ValueError(f"expected an object, got {type(data).__name__}")
    if data.get("status") != "success":
        raise ValueError(f"status is {data.get('status')!r}: {data.get('error', 'no error given')}")
    body = data.get("data")
    if not isinstance(body, Mapping):
        raise ValueError("no data object")
    kind, result = body.get("resultType"), body.get("result")
    if kind == "scalar":
        result = [{"metric": {}, "value": result}]
    elif kind != "vector":
        raise ValueError(f"resultType is {kind!r}, not a vector (an instant query of a range selector?)")
    if not isinstance(result, list):
        raise ValueError("data.result is not a list")
    out: list[Sample] = []
    for i, item in enumerate(result):
        metric = item.get("metric") if isinstance(item, Mapping) else None
        value = item.get("value") if isinstance(item, Mapping) else None
        if not isinstance(metric, Mapping) or not isinstance(value, list) or len(value) != 2:
            raise ValueError(f"result {i + 1} has no metric and [time, value]")
        try:
            ts, v = float(value[0]), float(value[1])
        except (TypeError, ValueError):
            raise ValueError(f"result {i + 1}: {value!r} is not [time, value]") from None
        out.append(({str(k): str(x) for k, x in metric.items()}, v, ts))
    return out


async def _query(service: Service, promql: str) -> list[Sample]:
    path = "/api/v1/query"
    data = await service.request("GET", path, params={"query": promql})
    try:
        return parse_vector(data)
    except ValueError as exc:
        raise service.bad_answer(f"GET {path}?query={promql}", str(exc)) from None


async def query(options: PrometheusOptions, promql: str) -> list[Sample]:
    """An instant query: (labels, value, timestamp) for each series of the result."""
    return await _query(Service("prometheus", options), promql)


# -- the fleet ----------------------------------------------------------------------------------


@dataclass
class _MemberSeen:
    up: float | None = None
    ts: float | None = None
    lag_seconds: float | None = None
    lag_bytes: float | None = None
    memory: float | None = None
    maxmemory: float | None = None
    replicas: float | None = None


@dataclass
class _ClusterSeen:
    members: dict[str, _MemberSeen] = field(default_factory=dict)
    newest: float | None = None
    kafka_lag: dict[str, float] = field(default_factory=dict)  # consumer group -> messages
    kafka_brokers: float | None = None

    def saw(self, ts: float) -> None:
        self.newest = ts if self.newest is None else max(self.newest, ts)

    def member(self, name: str) -> _MemberSeen:
        return self.members.setdefault(name, _MemberSeen())


async def fleet_health(options: PrometheusOptions, refs: list[ClusterRef]) -> dict[str, ClusterHealth]:
    """Every configured cluster's health from Prometheus, keyed "env/name". A cluster without a
    single series is UNKNOWN and says so (NO_SERIES)."""
    service = Service("prometheus", options)
    names = list(QUERIES)
    results = await asyncio.gather(*(_query(service, QUERIES[n]) for n in names))
    return judge_fleet(dict(zip(names, results, strict=True)), refs, LabelIndex(refs, options.labels))


def judge_fleet(results: Mapping[str, list[Sample]], refs: list[ClusterRef], index: LabelIndex,
                now: float | None = None) -> dict[str, ClusterHealth]:
    """The judgement of fleet_health over its queries' answers (`results`: QUERIES name ->
    samples): no I/O, so the unit tests feed it recorded answers."""
    seen: dict[str, _ClusterSeen] = {}

    def place(labels: dict[str, str]) -> tuple[_ClusterSeen, str | None] | None:
        match = index.match(labels)
        if match is None:
            return None
        return seen.setdefault(match[0], _ClusterSeen()), match[1]

    def member_name(member: str | None, labels: dict[str, str]) -> str | None:
        # A node the config does not list (a Redis Cluster's discovered nodes): named by address.
        if member is not None:
            return member
        instance = labels.get("instance")
        return normalize_address(instance) if instance else None

    per_member = {"pg_up": "up", "redis_up": "up", "pg_lag_seconds": "lag_seconds", "redis_memory": "memory",
                  "redis_maxmemory": "maxmemory", "redis_replicas": "replicas"}
    for query_name, attr in per_member.items():
        for labels, value, ts in results.get(query_name, []):
            placed = place(labels)
            if placed is None:
                continue
            cluster, member = placed
            cluster.saw(ts)
            name = member_name(member, labels)
            if name is None:
                continue
            m = cluster.member(name)
            setattr(m, attr, value)
            if attr == "up":
                m.ts = ts
    # The primary's exporter reports each standby's distance in bytes, by its application_name.
    for labels, value, ts in results.get("pg_lag_bytes", []):
        match = index.match(labels)
        if match is None:
            continue
        cluster = seen.setdefault(match[0], _ClusterSeen())
        cluster.saw(ts)
        standby = index.member_named(match[0], labels.get("application_name", ""))
        if standby is not None:
            cluster.member(standby).lag_bytes = value
    for labels, value, ts in results.get("kafka_lag", []):
        placed = place(labels)
        if placed is not None:
            placed[0].saw(ts)
            group = labels.get("consumergroup", "?")
            placed[0].kafka_lag[group] = max(value, placed[0].kafka_lag.get(group, 0.0))
    for labels, value, ts in results.get("kafka_brokers", []):
        placed = place(labels)
        if placed is not None:
            placed[0].saw(ts)
            placed[0].kafka_brokers = value

    now = time.time() if now is None else now
    return {ref.key: _judge_cluster(ref, seen.get(ref.key), now) for ref in refs}


def _judge_cluster(ref: ClusterRef, seen: _ClusterSeen | None, now: float) -> ClusterHealth:
    engine = ref.cluster.engine
    up = UP_SERIES.get(engine)
    members: list[MemberHealth] = []
    if up is not None:
        configured = {m.name: m for m in ref.cluster.members}
        names = list(configured) + [n for n in (seen.members if seen else {}) if n not in configured]
        for name in names:
            members.append(_judge_member(ref, configured.get(name), name, seen.members.get(name) if seen else None,
                                         up, now))
    if seen is None:
        return ClusterHealth(ref.environment, ref.name, engine, Severity.UNKNOWN, tuple(members),
                             (Metric("prometheus", Severity.UNKNOWN, NO_SERIES),), source="prometheus")
    metrics = _kafka_metrics(ref, seen) if engine == "kafka" else []
    severities = [m.severity for m in members] + [m.severity for m in metrics]
    return ClusterHealth(ref.environment, ref.name, engine, Severity.worst(severities, Severity.OK), tuple(members),
                         tuple(metrics), source="prometheus", observed_at=seen.newest)


def _judge_member(ref: ClusterRef, config: Member | None, name: str, seen: _MemberSeen | None,
                  up: tuple[str, str], now: float) -> MemberHealth:
    series, exporter = up
    role = config.role if config is not None and config.role != "any" else ""
    instance = f"{config.host}:{config.port}" if config is not None else name

    def snapshot(reachability: Reachability, error: str | None = None) -> Snapshot:
        taken = seen.ts if seen is not None and seen.ts is not None else now
        return Snapshot(ref.environment, ref.name, name, ref.cluster.engine, reachability, taken, error=error)

    if seen is None or seen.up is None:
        why = f"no {series} series in Prometheus for {instance} (is a {exporter} scraping it, with its labels?)"
        return MemberHealth(snapshot(Reachability.PENDING, why), role, Severity.UNKNOWN,
                            (Metric(series, Severity.UNKNOWN, why),))
    if seen.up != 1:
        why = f"{series} = {seen.up:g} ({exporter} cannot reach {instance})"
        return MemberHealth(snapshot(Reachability.DOWN, why), role, Severity.CRIT, (Metric(series, Severity.CRIT, why, seen.up),))
    metrics = [Metric(series, Severity.OK, f"{series} = 1 ({exporter})", 1.0)]
    if ref.cluster.engine == "postgres":
        metrics += _pg_lag_metrics(ref, seen)
    elif ref.cluster.engine == "redis":
        metrics += _redis_metrics(ref, seen)
    severity = Severity.worst([m.severity for m in metrics], Severity.OK)
    lag_bytes = int(seen.lag_bytes) if seen.lag_bytes is not None and math.isfinite(seen.lag_bytes) else None
    return MemberHealth(snapshot(Reachability.UP), role, severity, tuple(metrics), lag_bytes=lag_bytes,
                        lag_seconds=seen.lag_seconds if ref.cluster.engine == "postgres" else None)


def _level(value: float, warn: float, crit: float) -> Severity:
    return Severity.CRIT if value > crit else Severity.WARN if value > warn else Severity.OK


def _pg_lag_metrics(ref: ClusterRef, seen: _MemberSeen) -> list[Metric]:
    t = ref.cluster.thresholds
    out = []
    if seen.lag_bytes is not None:
        sev = _level(seen.lag_bytes, t.lag_bytes_warn, t.lag_bytes_crit)
        out.append(Metric("lag_bytes", sev, f"replication lag {human_bytes(seen.lag_bytes)} behind the primary "
                                            "(pg_stat_replication_pg_wal_lsn_diff)", seen.lag_bytes))
    if seen.lag_seconds is not None and seen.lag_seconds > 0:
        if seen.lag_bytes is not None and seen.lag_bytes <= 0:
            # pg_replication_lag is the time since the last replayed transaction: on a replica
            # that has replayed everything it only says the primary has been idle.
            out.append(Metric("lag_seconds", Severity.OK, f"replayed everything; last transaction "
                                                          f"{seen.lag_seconds:.0f} s ago (pg_replication_lag)", seen.lag_seconds))
        else:
            sev = _level(seen.lag_seconds, t.lag_seconds_warn, t.lag_seconds_crit)
            out.append(Metric("lag_seconds", sev, f"replication lag {seen.lag_seconds:.0f} s (pg_replication_lag)",
                              seen.lag_seconds))
    return out


def _redis_metrics(ref: ClusterRef, seen: _MemberSeen) -> list[Metric]:
    out = []
    if seen.memory is not None:
        if seen.maxmemory:
            pct = 100.0 * seen.memory / seen.maxmemory
            t = ref.cluster.redis.thresholds if ref.cluster.redis is not None else None
            sev = _level(pct, t.memory_pct_warn, t.memory_pct_crit) if t is not None else Severity.OK
            out.append(Metric("memory_pct", sev, f"memory {human_bytes(seen.memory)} of maxmemory "
                                                 f"{human_bytes(seen.maxmemory)} ({pct:.0f}%)", pct))
        else:
            out.append(Metric("memory", Severity.OK, f"memory {human_bytes(seen.memory)} (no maxmemory)", seen.memory))
    if seen.replicas is not None:
        out.append(Metric("replicas", Severity.OK, f"{seen.replicas:g} connected replicas", seen.replicas))
    return out


def _kafka_metrics(ref: ClusterRef, seen: _ClusterSeen) -> list[Metric]:
    out = []
    if seen.kafka_brokers is not None:
        want = len(ref.cluster.members)
        sev = Severity.WARN if seen.kafka_brokers < want else Severity.OK
        out.append(Metric("brokers", sev, f"{seen.kafka_brokers:g} of {want} configured brokers in the cluster's "
                                          "metadata (kafka_exporter)", seen.kafka_brokers))
    # kafka_exporter's lag is in messages; the thresholds are in seconds (lag in time needs the
    # poller's offsets): shown, not judged.
    for group, lag in sorted(seen.kafka_lag.items(), key=lambda kv: -kv[1]):
        out.append(Metric("consumer_lag", Severity.OK, f"consumer group {group}: lag {lag:,.0f} messages "
                                                       "(kafka_exporter)", lag))
    return out
