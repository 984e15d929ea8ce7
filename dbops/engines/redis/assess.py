"""Judge a Redis deployment from one refresh: pure functions, no I/O.

The poller polls a Redis deployment as one unit; this expands it into one MemberHealth per node
(data nodes and sentinels), each with a Snapshot of its own, so the overview, the pane and
`dbops check` see nodes as members. Rules are strict (a value equal to a threshold is fine).

Metric names: reachability, memory, evictions, hit_rate, fragmentation, replication, link,
persistence, clients; on the cluster: cluster_state, coverage, open_slots, multiple_owners,
agreement, failed_nodes, sentinel_master, ckquorum, topology.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from dbops.config import ClusterRef
from dbops.engines.base import unit_data
from dbops.engines.redis.data import NodeResult, RedisNodeData, RedisTopology, SentinelData
from dbops.engines.redis.topology import SLOTS, format_ranges, ranges
from dbops.model import ClusterHealth, MemberHealth, Metric, Reachability, Severity, Snapshot, human_bytes

OK, WARN, CRIT, UNKNOWN = Severity.OK, Severity.WARN, Severity.CRIT, Severity.UNKNOWN


def update_baseline(baseline: dict[str, Any] | None, snapshots: dict[str, Snapshot]) -> dict[str, Any]:
    return dict(baseline or {})


def node_snapshot(unit: Snapshot, node: NodeResult) -> Snapshot:
    return Snapshot(
        environment=unit.environment, cluster=unit.cluster, member=node.name, engine=unit.engine,
        reachability=node.reachability, taken_at=unit.taken_at, duration_ms=node.duration_ms, data=node.data,
        error=node.error, last_good=node.last_good, last_good_at=node.last_good_at, seq=unit.seq,
    )


def _pct(x: float) -> str:
    return f"{x:.1f}%"


def assess_node(ref: ClusterRef, snap: Snapshot) -> MemberHealth:
    t = ref.cluster.redis.thresholds  # type: ignore[union-attr]
    if not snap.reachable:
        if snap.reachability is Reachability.PENDING:
            return MemberHealth(snap, "?", UNKNOWN, (Metric("reachability", UNKNOWN, "not polled yet"),))
        last = snap.last_good
        role = "sentinel" if isinstance(last, SentinelData) else ({"master": "primary", "slave": "replica"}.get(last.role, "?")
                                                                  if isinstance(last, RedisNodeData) else "?")
        return MemberHealth(snap, role, CRIT, (Metric("reachability", CRIT, f"{snap.reachability.value}: {snap.error}"),))
    d = snap.data
    if isinstance(d, SentinelData):
        ms: list[Metric] = []
        if not d.ckquorum_ok:
            ms.append(Metric("ckquorum", CRIT, f"CKQUORUM: {d.ckquorum_message}"))
        if "down" in d.master_flags:
            ms.append(Metric("sentinel_master", CRIT, f"this sentinel flags the master {d.master_flags}"))
        return MemberHealth(snap, "sentinel", Severity.worst([m.severity for m in ms], OK), tuple(ms))
    assert isinstance(d, RedisNodeData)
    ms = []
    pct = d.memory_pct
    if pct is not None:
        sev = CRIT if pct > t.memory_pct_crit else WARN if pct > t.memory_pct_warn else OK
        ms.append(Metric("memory", sev, f"memory {_pct(pct)} of maxmemory ({human_bytes(d.used_memory)} of {human_bytes(d.maxmemory)})", pct))
    if d.evicted_since_last is not None and d.evicted_since_last > t.evictions_warn:
        ms.append(Metric("evictions", WARN, f"{d.evicted_since_last} keys evicted since the last refresh ({d.maxmemory_policy})", d.evicted_since_last))
    if d.hit_rate_pct is not None and (d.lookups_since_last or 0) >= t.hit_rate_min_lookups:
        sev = WARN if d.hit_rate_pct < t.hit_rate_pct_warn else OK
        ms.append(Metric("hit_rate", sev, f"hit rate {_pct(d.hit_rate_pct)} over {d.lookups_since_last} lookups", d.hit_rate_pct))
    if d.fragmentation is not None and d.used_memory and d.used_memory > 64 * 1024 * 1024 and d.fragmentation > t.fragmentation_warn:
        ms.append(Metric("fragmentation", WARN, f"fragmentation ratio {d.fragmentation:.2f}", d.fragmentation))
    if d.rdb_last_bgsave_status not in (None, "ok"):
        ms.append(Metric("persistence", CRIT, f"last RDB save failed ({d.rdb_last_bgsave_status})"))
    if d.aof_enabled and d.aof_last_write_status not in (None, "ok"):
        ms.append(Metric("persistence", CRIT, f"AOF writes fail ({d.aof_last_write_status})"))
    if d.rejected_connections:
        ms.append(Metric("clients", OK, f"{d.rejected_connections} connections rejected since start", d.rejected_connections))
    lag_bytes = None
    lag_seconds = None
    if d.role == "slave":
        if d.master_link_status != "up":
            why = "initial sync in progress" if d.master_sync_in_progress else "link down"
            ms.append(Metric("link", CRIT, f"replication from {d.master_address}: {why}"))
        elif d.master_last_io_seconds is not None and d.master_last_io_seconds > t.last_ack_seconds_crit:
            # A master pings its replicas every repl-ping-replica-period (10 s): only a silence
            # well past that means something; the lag itself is judged from the master's side.
            ms.append(Metric("link", CRIT, f"nothing heard from master {d.master_address} for {d.master_last_io_seconds}s"))
    for link in d.replicas:
        sev = CRIT if link.lag_bytes > t.lag_bytes_crit or link.last_ack_seconds > t.last_ack_seconds_crit else \
            WARN if link.lag_bytes > t.lag_bytes_warn or link.last_ack_seconds > t.last_ack_seconds_warn or link.state != "online" else OK
        if sev is not OK:
            ms.append(Metric("replication", sev, f"replica {link.address} {link.state}, {human_bytes(link.lag_bytes)} behind, "
                                                 f"last ack {link.last_ack_seconds}s ago", link.lag_bytes))
    role = "primary" if d.role == "master" else "replica"
    return MemberHealth(snap, role, Severity.worst([m.severity for m in ms], OK), tuple(ms), lag_bytes, lag_seconds)


def _replica_lag(members: list[MemberHealth], address_of: dict[str, str]) -> list[MemberHealth]:
    """A replica's lag in bytes as its master reports it (the replica cannot know it)."""
    by_addr: dict[str, tuple[int, int]] = {}
    for m in members:
        d = m.snapshot.data
        if isinstance(d, RedisNodeData):
            for link in d.replicas:
                by_addr[link.address] = (link.lag_bytes, link.last_ack_seconds)
    out = []
    for m in members:
        addr = address_of.get(m.name, "")
        if m.role == "replica" and addr in by_addr:
            out.append(replace(m, lag_bytes=by_addr[addr][0], lag_seconds=float(by_addr[addr][1])))
        else:
            out.append(m)
    return out


def assess_cluster(ref: ClusterRef, snapshots: dict[str, Snapshot], baseline: dict[str, Any] | None = None,
                   now: float | None = None) -> ClusterHealth:
    now = time.time() if now is None else now
    unit, topo = unit_data(snapshots, RedisTopology)
    if topo is None:
        # Pending, or the refresh as a whole failed (a secret that cannot be read): one row says why.
        mh = assess_node(ref, unit)
        return ClusterHealth(ref.environment, ref.name, "redis", mh.severity, (mh,))
    members = [assess_node(ref, node_snapshot(unit, node)) for node in topo.nodes]
    members = _replica_lag(members, {n.name: n.address for n in topo.nodes})
    metrics = [Metric("topology", WARN, n) for n in topo.notes]
    if topo.mode == "cluster" and topo.cluster is not None:
        metrics += cluster_metrics(topo)
    if topo.mode == "sentinel":
        metrics += sentinel_metrics(ref, topo)
    sev = Severity.worst([m.severity for m in members] + [m.severity for m in metrics], OK)
    return ClusterHealth(ref.environment, ref.name, "redis", sev, tuple(members), tuple(metrics))


def cluster_metrics(topo: RedisTopology) -> list[Metric]:
    view = topo.cluster
    assert view is not None
    names = {n.address: n.name for n in topo.nodes}

    def name(node_id: str) -> str:
        line = view.node(node_id)
        return names.get(line.address, line.address) if line else node_id[:8]

    out = []
    states = {n.name: n.data.cluster_state for n in topo.nodes if isinstance(n.data, RedisNodeData) and n.data.cluster_state}
    bad = sorted(k for k, v in states.items() if v != "ok")
    out.append(Metric("cluster_state", CRIT if bad else OK,
                      f"cluster_state:fail on {', '.join(bad)}" if bad else "cluster_state:ok on every node"))
    if view.uncovered:
        missing = sum(b - a + 1 for a, b in view.uncovered)
        out.append(Metric("coverage", CRIT, f"{missing} of {SLOTS} slots have no owner: {format_ranges(view.uncovered)}", missing))
    else:
        out.append(Metric("coverage", OK, f"all {SLOTS} slots covered"))
    if view.unclaimed:
        out.append(Metric("coverage", CRIT, f"{len(view.unclaimed)} slots are served by no node: their owner in the other "
                                             f"nodes' tables does not claim them ({format_ranges(ranges(list(view.unclaimed)))})",
                          len(view.unclaimed)))
    if view.open_slots:
        parts = []
        for o in view.open_slots[:4]:
            how = [f"{name(a)} migrating to {name(b)}" for a, b in o.migrating] + [f"{name(a)} importing from {name(b)}" for a, b in o.importing]
            parts.append(f"{o.slot} ({'; '.join(how)})")
        more = f" and {len(view.open_slots) - 4} more" if len(view.open_slots) > 4 else ""
        out.append(Metric("open_slots", WARN, f"{len(view.open_slots)} open slot(s): {', '.join(parts)}{more}", len(view.open_slots)))
    if view.multiple_owners:
        s, owners = next(iter(sorted(view.multiple_owners.items())))
        out.append(Metric("multiple_owners", CRIT, f"{len(view.multiple_owners)} slot(s) claimed by more than one master, "
                                                    f"e.g. {s} by {', '.join(name(o) for o in owners)}", len(view.multiple_owners)))
    if view.disagreeing:
        out.append(Metric("agreement", WARN, "nodes disagree about slot ownership: " + ", ".join(name(n) for n in view.disagreeing)))
    if view.failed or view.pfail:
        parts = [f"{name(n)} fail" for n in view.failed] + [f"{name(n)} pfail" for n in view.pfail]
        out.append(Metric("failed_nodes", CRIT if view.failed else WARN, "flagged by the cluster: " + ", ".join(parts)))
    return out


def sentinel_metrics(ref: ClusterRef, topo: RedisTopology) -> list[Metric]:
    out = []
    sentinels = [n for n in topo.nodes if n.kind == "sentinel"]
    up = [n for n in sentinels if isinstance(n.data, SentinelData)]
    quorum = next((n.data.quorum for n in up if n.data.quorum), None)
    if quorum is not None and len(up) < quorum:
        out.append(Metric("ckquorum", CRIT, f"only {len(up)} of {len(sentinels)} sentinels answer; quorum is {quorum}"))
    if topo.sentinel_master:
        master = next((n for n in topo.nodes if n.address == topo.sentinel_master and n.kind == "data"), None)
        role = master.data.role if master and isinstance(master.data, RedisNodeData) else None
        if role is not None and role != "master":
            out.append(Metric("sentinel_master", CRIT, f"sentinels name {topo.sentinel_master} as master but it is a {role}"))
        else:
            out.append(Metric("sentinel_master", OK, f"master {ref.cluster.redis.master_name} at {topo.sentinel_master}"))  # type: ignore[union-attr]
    return out


def facts(health: ClusterHealth) -> dict[str, dict[str, str]]:
    """What the timeline reports when it changes (severities and roles are reported already):
    which master each replica follows, the master the sentinels name, and how many of the
    16384 slots have an owner (a rebuild that covers half the missing slots is a change while
    the coverage stays CRIT)."""
    out: dict[str, dict[str, str]] = {}
    named: dict[str, int] = {}
    for m in health.members:
        d = m.snapshot.data
        if isinstance(d, RedisNodeData) and d.role == "slave":
            out[m.name] = {"replicates": d.master_address or "?"}
        elif isinstance(d, SentinelData) and d.master_address:
            named[d.master_address] = named.get(d.master_address, 0) + 1
    cluster: dict[str, str] = {}
    if named:
        cluster["sentinels' master"] = max(named, key=lambda a: named[a])
    # The first coverage metric is the slots without an owner (cluster_metrics): its value is
    # their number when there are any.
    coverage = next((x for x in health.metrics if x.name == "coverage"), None)
    if coverage is not None:
        missing = int(coverage.value or 0) if coverage.severity is not OK else 0
        cluster["slots covered"] = f"{SLOTS - missing} of {SLOTS}"
    if cluster:
        out[""] = cluster
    return out
