"""What one refresh of a Redis deployment found: frozen values built by the adapter, read by
the assessment, the pane and `dbops check`. Pure Python (no redis-py here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dbops.engines.redis.topology import ClusterView
from dbops.model import Reachability


def parse_info(text: str) -> dict[str, str]:
    """INFO's `key:value` lines (section headers and blanks skipped)."""
    out: dict[str, str] = {}
    # Runs for every node on every refresh (two hundred lines): one pass, as little per line as
    # can be (splitlines takes the \r\n in C). A section header ("# Server") has no colon.
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key[:1] != "#":
            out[key] = value
    return out


def parse_fields(value: str) -> dict[str, str]:
    """`ip=127.0.0.1,port=7002,state=online` -> dict."""
    out = {}
    for part in value.split(","):
        k, sep, v = part.partition("=")
        if sep:
            out[k] = v
    return out


def _int(info: dict[str, str], key: str) -> int | None:
    try:
        return int(info[key])
    except (KeyError, ValueError):
        return None


def _float(info: dict[str, str], key: str) -> float | None:
    try:
        return float(info[key])
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class ReplicaLink:
    """A replica as its master reports it (INFO replication slaveN)."""

    address: str
    state: str  # online, wait_bgsave, send_bulk ...
    offset: int
    lag_bytes: int  # master_repl_offset - the replica's acknowledged offset
    last_ack_seconds: int  # INFO's `lag`: seconds since the replica's last REPLCONF ACK


@dataclass(frozen=True, slots=True)
class SlowEntry:
    id: int
    started_at: int  # unix seconds
    duration_us: int
    command: str  # the command name and its first argument only: values may be private
    client: str


@dataclass(frozen=True, slots=True)
class LatencyEvent:
    event: str
    latest_at: int
    latest_ms: int
    max_ms: int


@dataclass(frozen=True, slots=True)
class CommandStat:
    command: str
    calls: int
    usec_per_call: float
    failed: int


@dataclass(frozen=True)
class RedisNodeData:
    role: str  # master, slave
    version: str
    uptime_seconds: int | None
    used_memory: int | None
    maxmemory: int | None  # 0: no limit
    maxmemory_policy: str
    fragmentation: float | None
    ops_per_sec: int | None
    keyspace_hits: int | None
    keyspace_misses: int | None
    hit_rate_pct: float | None  # over the lookups since the last refresh; None without enough of them
    lookups_since_last: int | None
    evicted_keys: int | None
    evicted_since_last: int | None
    connected_clients: int | None
    blocked_clients: int | None
    rejected_connections: int | None
    repl_offset: int | None
    replicas: tuple[ReplicaLink, ...] = ()
    master_address: str | None = None  # a replica's master
    master_link_status: str | None = None  # up / down
    master_last_io_seconds: int | None = None
    master_sync_in_progress: bool = False
    rdb_last_bgsave_status: str | None = None
    rdb_changes_since_last_save: int | None = None
    rdb_last_save_time: int | None = None
    aof_enabled: bool = False
    aof_last_write_status: str | None = None
    keys: int = 0
    slowlog_new: tuple[SlowEntry, ...] = ()  # entries since the previous refresh
    slowlog_recent: tuple[SlowEntry, ...] = ()
    latency: tuple[LatencyEvent, ...] = ()
    top_commands: tuple[CommandStat, ...] = ()
    cluster_enabled: bool = False
    cluster_state: str | None = None  # CLUSTER INFO cluster_state (ok / fail)
    cluster_node_id: str | None = None

    @property
    def memory_pct(self) -> float | None:
        if not self.maxmemory or self.used_memory is None:
            return None
        return 100.0 * self.used_memory / self.maxmemory


@dataclass(frozen=True)
class NodeResult:
    """One node's outcome in one refresh."""

    name: str  # the member name from the config, else host:port
    address: str
    kind: str  # data | sentinel
    reachability: Reachability
    error: str | None = None
    data: Any = None  # RedisNodeData, SentinelData, or None when the node did not answer
    duration_ms: float = 0.0
    last_good: Any = None
    last_good_at: float | None = None


@dataclass(frozen=True)
class SentinelData:
    """One sentinel's view of the monitored master."""

    master_address: str | None
    master_flags: str
    num_replicas: int
    num_other_sentinels: int
    quorum: int | None
    ckquorum_ok: bool
    ckquorum_message: str
    replicas: tuple[tuple[str, str], ...] = ()  # (address, flags)


@dataclass(frozen=True)
class RedisTopology:
    """One refresh of a whole deployment."""

    mode: str  # standalone | sentinel | cluster
    nodes: tuple[NodeResult, ...]
    cluster: ClusterView | None = None
    sentinel_master: str | None = None  # the address a majority of answering sentinels report
    notes: tuple[str, ...] = field(default_factory=tuple)  # discovery problems worth showing

    def node(self, name: str) -> NodeResult | None:
        return next((n for n in self.nodes if n.name == name), None)


_FAMILIES = frozenset({"db", "cm"})


def node_data(info: dict[str, str], previous: RedisNodeData | None, slowlog: list[Any], latency: list[Any],
              last_slow_id: int | None) -> RedisNodeData:
    hits, misses = _int(info, "keyspace_hits"), _int(info, "keyspace_misses")
    evicted = _int(info, "evicted_keys")
    lookups = hit_rate = evicted_delta = None
    if previous is not None and hits is not None and misses is not None and previous.keyspace_hits is not None \
            and previous.keyspace_misses is not None and hits >= previous.keyspace_hits:
        dh, dm = hits - previous.keyspace_hits, misses - previous.keyspace_misses
        lookups = dh + dm
        hit_rate = 100.0 * dh / lookups if lookups else None
    if previous is not None and evicted is not None and previous.evicted_keys is not None and evicted >= previous.evicted_keys:
        evicted_delta = evicted - previous.evicted_keys
    master_offset = _int(info, "master_repl_offset")
    replicas = []
    # slave0..slaveN-1, N = connected_slaves (Redis skips one whose address it cannot read).
    for i in range(_int(info, "connected_slaves") or 0):
        value = info.get(f"slave{i}")
        if value is None:
            continue
        f = parse_fields(value)
        off = int(f.get("offset", 0) or 0)
        replicas.append(ReplicaLink(f"{f.get('ip')}:{f.get('port')}", f.get("state", "?"), off,
                                    max(0, (master_offset or 0) - off), int(f.get("lag", 0) or 0)))
    # The keyspace's dbN lines and commandstats' cmdstat_ lines, in one pass over INFO's keys
    # (two hundred, hundreds more with commandstats).
    keys = 0
    cmds = []
    for key in [k for k in info if k[:2] in _FAMILIES]:
        if key[:2] == "db":
            if key[2:].isdigit():
                keys += int(parse_fields(info[key]).get("keys", 0) or 0)
        elif key.startswith("cmdstat_"):
            f = parse_fields(info[key])
            cmds.append(CommandStat(key[8:], int(f.get("calls", 0)), float(f.get("usec_per_call", 0.0)),
                                    int(f.get("failed_calls", 0)) + int(f.get("rejected_calls", 0))))
    cmds.sort(key=lambda c: c.calls * c.usec_per_call, reverse=True)
    # The slow log rarely changes between refreshes: its newest id unchanged, the entries are.
    if previous is not None and slowlog and previous.slowlog_recent and previous.slowlog_recent[0].id == slowlog[0][0] \
            and len(previous.slowlog_recent) == len(slowlog):
        slow = previous.slowlog_recent
    else:
        slow = tuple(_slow_entry(e) for e in slowlog)
    new = tuple(e for e in slow if last_slow_id is not None and e.id > last_slow_id)
    master_address = None
    if info.get("role") == "slave" and info.get("master_host"):
        master_address = f"{info['master_host']}:{info.get('master_port')}"
    return RedisNodeData(
        role=info.get("role", "?"), version=info.get("redis_version", "?"), uptime_seconds=_int(info, "uptime_in_seconds"),
        used_memory=_int(info, "used_memory"), maxmemory=_int(info, "maxmemory"),
        maxmemory_policy=info.get("maxmemory_policy", "?"), fragmentation=_float(info, "mem_fragmentation_ratio"),
        ops_per_sec=_int(info, "instantaneous_ops_per_sec"), keyspace_hits=hits, keyspace_misses=misses,
        hit_rate_pct=hit_rate, lookups_since_last=lookups, evicted_keys=evicted, evicted_since_last=evicted_delta,
        connected_clients=_int(info, "connected_clients"), blocked_clients=_int(info, "blocked_clients"),
        rejected_connections=_int(info, "rejected_connections"), repl_offset=master_offset or _int(info, "slave_repl_offset"),
        replicas=tuple(replicas), master_address=master_address, master_link_status=info.get("master_link_status"),
        master_last_io_seconds=_int(info, "master_last_io_seconds_ago"),
        master_sync_in_progress=info.get("master_sync_in_progress") == "1",
        rdb_last_bgsave_status=info.get("rdb_last_bgsave_status"),
        rdb_changes_since_last_save=_int(info, "rdb_changes_since_last_save"),
        rdb_last_save_time=_int(info, "rdb_last_save_time"), aof_enabled=info.get("aof_enabled") == "1",
        aof_last_write_status=info.get("aof_last_write_status"), keys=keys, slowlog_new=new, slowlog_recent=slow,
        latency=tuple(LatencyEvent(str(e[0]), int(e[1]), int(e[2]), int(e[3])) for e in latency if len(e) >= 4),
        top_commands=tuple(cmds[:5]), cluster_enabled=info.get("cluster_enabled") == "1",
    )


def _slow_entry(e: list[Any]) -> SlowEntry:
    # [id, timestamp, duration_us, [args...], client addr, client name] (Redis >= 4)
    args = [str(a) for a in (e[3] if len(e) > 3 else [])]
    shown = " ".join(args[:2]) if args else "?"
    if args and args[0].upper() in ("AUTH", "HELLO", "MIGRATE", "CONFIG", "ACL"):
        shown = args[0]  # arguments that may carry a password are never shown
    return SlowEntry(int(e[0]), int(e[1]), int(e[2]), shown[:60], str(e[4]) if len(e) > 4 else "")
