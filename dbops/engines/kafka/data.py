"""What one refresh of a Kafka cluster found: frozen values, and the pure arithmetic of lag.

Lag in offsets is the log end offset minus the group's committed offset. Lag in time is how long
ago the log end was where the consumer is now: found by interpolating the end offsets this
process has seen (one sample a refresh), or, when the consumer is behind everything seen so far,
extrapolated from the observed produce rate (and at least the age of the oldest sample).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Samples of a partition's end offset kept for lag in time: 10 minutes at a 2 s refresh.
END_HISTORY = 300
# Total lag per group kept for the trend sparkline.
TREND_POINTS = 60


@dataclass(frozen=True, slots=True)
class Broker:
    node_id: int | None  # None: a configured broker never seen in the cluster's metadata
    address: str  # host:port
    name: str  # the config's member name, or the address
    up: bool
    rack: str | None = None
    error: str | None = None  # why it is not up (from the metadata, or from a connection)
    last_up_at: float | None = None  # when this process last saw it answer


@dataclass(frozen=True, slots=True)
class Partition:
    topic: str
    partition: int
    leader: int  # -1: no leader (offline)
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    offline_replicas: tuple[int, ...] = ()
    error: str | None = None

    @property
    def offline(self) -> bool:
        return self.leader < 0

    @property
    def under_replicated(self) -> bool:
        return len(self.isr) < len(self.replicas)

    @property
    def preferred_leader(self) -> int | None:
        return self.replicas[0] if self.replicas else None

    @property
    def leader_is_preferred(self) -> bool:
        return self.offline or self.preferred_leader is None or self.leader == self.preferred_leader


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    internal: bool
    partitions: tuple[Partition, ...]
    min_isr: int | None = None  # min.insync.replicas, when read


def records_behind(committed: int | None, end: int | None) -> int | None:
    """Lag in records: the log end offset less the committed offset (None when either is unknown)."""
    if committed is None or end is None:
        return None
    return max(0, end - committed)


@dataclass(frozen=True, slots=True)
class LagSample:
    at: float  # wall clock of the refresh
    committed: int | None
    end: int | None

    @property
    def lag(self) -> int | None:
        return records_behind(self.committed, self.end)


@dataclass(frozen=True, slots=True)
class GroupPartition:
    topic: str
    partition: int
    committed: int | None
    start: int | None  # log start offset
    end: int | None  # log end offset (high watermark)
    lag_seconds: float | None
    lag_seconds_at_least: bool  # lag_seconds is a lower bound (no produce rate observed)
    window: tuple[LagSample, ...]  # the newest `lag_window` samples, oldest first
    owner: str | None = None  # the member (client id @ host) it is assigned to, if any

    @property
    def lag(self) -> int | None:
        return records_behind(self.committed, self.end)


@dataclass(frozen=True, slots=True)
class Member:
    member_id: str
    client_id: str
    host: str
    assignment: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Group:
    group_id: str
    state: str  # Stable, Empty, PreparingRebalance, CompletingRebalance, Dead, or "?" when unknown
    protocol_type: str
    coordinator: int | None
    members: tuple[Member, ...]
    partitions: tuple[GroupPartition, ...]
    trend: tuple[int, ...] = ()  # total lag per refresh, oldest first
    error: str | None = None

    @property
    def total_lag(self) -> int | None:
        lags = [p.lag for p in self.partitions if p.lag is not None]
        return sum(lags) if lags else None

    @property
    def max_lag_seconds(self) -> float | None:
        secs = [p.lag_seconds for p in self.partitions if p.lag_seconds is not None]
        return max(secs) if secs else None


@dataclass(frozen=True, slots=True)
class Quorum:
    """The KRaft metadata quorum: its leader is the active controller."""

    leader_id: int  # -1: no leader
    high_watermark: int
    voters: tuple[tuple[int, int], ...]  # (voter id, log end offset)

    def behind(self, voter_id: int) -> int | None:
        leo = next((leo for v, leo in self.voters if v == voter_id), None)
        return None if leo is None else max(0, self.high_watermark - leo)


@dataclass(frozen=True, slots=True)
class KafkaData:
    cluster_id: str | None
    controller_id: int | None
    brokers: tuple[Broker, ...]
    topics: tuple[Topic, ...]
    groups: tuple[Group, ...]
    taken_at: float
    notes: tuple[str, ...] = ()
    configs_at: float | None = None  # when min.insync.replicas was last read
    window: int = field(default=10)  # the lag window this refresh was judged with
    # KRaft: the quorum (DescribeQuorum). None under ZooKeeper, where controller_id is the real
    # controller; under KRaft the metadata's controller_id is a random broker and means nothing.
    quorum: Quorum | None = None

    @property
    def active_controller(self) -> int | None:
        if self.quorum is not None:
            return self.quorum.leader_id if self.quorum.leader_id >= 0 else None
        return self.controller_id

    def broker_name(self, node_id: int) -> str:
        b = next((b for b in self.brokers if b.node_id == node_id), None)
        return b.name if b is not None else str(node_id)

    def partitions(self) -> list[Partition]:
        return [p for t in self.topics for p in t.partitions]


def with_inferred_ids(brokers: list[Broker], topics: list[Topic]) -> list[Broker]:
    """Give down brokers that were never seen in the metadata their node id, when it can be told:
    the replica ids no live broker has, one for one (a fresh process sees a stopped broker only
    as an id in the partitions' replica lists)."""
    known = {b.node_id for b in brokers if b.node_id is not None}
    orphans = sorted({r for t in topics for p in t.partitions for r in p.replicas} - known)
    missing = [i for i, b in enumerate(brokers) if b.node_id is None]
    if not missing or len(orphans) != len(missing):
        return brokers
    out = list(brokers)
    for i, node_id in zip(missing, orphans):
        out[i] = replace(out[i], node_id=node_id)
    return out


def lag_seconds(committed: int | None, history: list[tuple[float, int]], now: float) -> tuple[float | None, bool]:
    """How long ago the log end was at `committed`; (seconds, is_lower_bound).

    `history` is (wall clock, end offset) per refresh, oldest first, the newest being now's.
    """
    if committed is None or not history:
        return None, False
    end_now = history[-1][1]
    if committed >= end_now:
        return 0.0, False
    for (t0, e0), (t1, e1) in zip(history, history[1:]):
        if e0 <= committed < e1:
            # The record at `committed` was appended between these two refreshes.
            produced = t0 + (committed - e0) / (e1 - e0) * (t1 - t0)
            return max(0.0, now - produced), False
    # Behind everything seen: extrapolate from the produce rate over the history.
    t_old, e_old = history[0]
    span = now - t_old
    if span <= 0:
        return None, False
    if end_now > e_old and span > 0:
        rate = (end_now - e_old) / span
        return max(span, (end_now - committed) / rate), False
    return span, True
