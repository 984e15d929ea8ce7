"""Judge a Qdrant cluster from one refresh: pure functions, no I/O.

The poller polls a Qdrant cluster as one unit; this expands it into one MemberHealth per node,
so the overview, the pane and `dbops check` see nodes as members.

Per node: reachability (a node that does not answer: CRIT), /readyz (503: WARN), the consensus
thread (stopped: CRIT), request latency (the worst REST endpoint's recent average against
qdrant.thresholds.latency_ms_warn / _crit). Per cluster: nodes down, a raft leader, every
collection's status (red: CRIT, yellow: WARN, grey: OK with a note), every replica that is not
Active (Dead: CRIT, any other state: WARN), shard transfers in progress (OK, named).

Metric names: reachability, ready, consensus, latency (nodes); on the cluster: nodes, leader,
collection:<name>, replica:<collection>/<shard>@<peer>, transfers, notes.
"""

from __future__ import annotations

from typing import Any

from dbops.config import ClusterRef, QdrantThresholds
from dbops.engines.base import no_data_health, unit_data
from dbops.engines.qdrant.data import ACTIVE, DEAD, Node, QdrantData, Replica
from dbops.model import ClusterHealth, MemberHealth, Metric, Reachability, Severity, Snapshot

OK, WARN, CRIT, UNKNOWN = Severity.OK, Severity.WARN, Severity.CRIT, Severity.UNKNOWN
STATUS_SEVERITY = {"green": OK, "grey": OK, "yellow": WARN, "red": CRIT}


def update_baseline(baseline: dict[str, Any] | None, snapshots: dict[str, Snapshot]) -> dict[str, Any]:
    return dict(baseline or {})


def thresholds(ref: ClusterRef) -> QdrantThresholds:
    opts = ref.cluster.qdrant
    return opts.thresholds if opts is not None else QdrantThresholds()


def replica_severity(state: str) -> Severity:
    if state == ACTIVE:
        return OK
    return CRIT if state == DEAD else WARN


def role_of(n: Node) -> str:
    """leader / follower / candidate from raft; `single` for a node without clustering."""
    if n.raft is None:
        return "single" if n.clustered is False else "?"
    return (n.raft.role or "?").lower()


def latency_metric(t: QdrantThresholds, n: Node) -> Metric:
    if n.latency_ms is None:
        return Metric("latency", OK, "no request latency reported yet")
    ms = n.latency_ms
    sev = CRIT if ms > t.latency_ms_crit else WARN if ms > t.latency_ms_warn else OK
    if sev is OK:
        return Metric("latency", OK, f"worst endpoint average {ms:.0f} ms", ms)
    limit = t.latency_ms_crit if sev is CRIT else t.latency_ms_warn
    return Metric("latency", sev, f"requests slow: {n.latency_endpoint} averages {ms:.0f} ms (over {limit:g} ms)", ms)


def node_metrics(ref: ClusterRef, n: Node) -> list[Metric]:
    out = []
    if n.ready is False:
        out.append(Metric("ready", WARN, f"/readyz says not ready: {n.ready_text or '503'}"))
    if n.raft is not None and n.raft.consensus != "working":
        why = f": {n.raft.consensus_error}" if n.raft.consensus_error else ""
        out.append(Metric("consensus", CRIT, f"consensus thread {n.raft.consensus}{why}"))
    out.append(latency_metric(thresholds(ref), n))
    out += [Metric("notes", WARN, note) for note in n.notes]
    return out


def node_snapshot(unit: Snapshot, n: Node, data: QdrantData) -> Snapshot:
    """A node's own row: a down one shows when it last answered."""
    reach = Reachability.UP if n.up else Reachability(n.reachability)
    return Snapshot(
        environment=unit.environment, cluster=unit.cluster, member=n.name, engine=unit.engine,
        reachability=reach, taken_at=unit.taken_at, duration_ms=unit.duration_ms,
        data=data if n.up else None, error=n.error, last_good=data if n.last_up_at is not None else None,
        last_good_at=n.last_up_at, seq=unit.seq,
    )


def describe_replica(data: QdrantData, r: Replica) -> str:
    where = data.peer_name(r.peer_id)
    holder = data.node_of_peer(r.peer_id)
    down = " (its node does not answer)" if holder is not None and not holder.up else ""
    return f"collection {r.collection} shard {r.shard_id} on {where} (peer {r.peer_id}) is {r.state}{down}"


def replica_metrics(data: QdrantData) -> list[Metric]:
    replicas = data.replicas()
    bad = [r for r in replicas if r.state != ACTIVE]
    out = []
    for r in sorted(bad, key=lambda r: (-replica_severity(r.state).rank, r.collection, r.shard_id, r.peer_id)):
        hint = ": run qdrant.recover-dead-replica" if r.state == DEAD else ""
        out.append(Metric(f"replica:{r.key}", replica_severity(r.state), describe_replica(data, r) + hint, r.state))
    if not bad:
        out.append(Metric("replicas", OK, f"all {len(replicas)} replicas Active", len(replicas)))
    return out


def cluster_metrics(data: QdrantData) -> list[Metric]:
    out: list[Metric] = []
    up = data.up_nodes()
    clustered = [n for n in up if n.raft is not None]
    if clustered:
        leaders = {n.raft.leader for n in clustered if n.raft is not None and n.raft.leader is not None}
        if not leaders:
            out.append(Metric("leader", CRIT, "no raft leader: collections cannot be created, changed or moved"))
        else:
            out.append(Metric("leader", OK, f"raft leader {', '.join(data.peer_name(p) for p in sorted(leaders))}"))
        known = data.peer_names()
        strangers = sorted({(pid, uri) for n in clustered for pid, uri in n.raft.peers if pid not in known})  # type: ignore[union-attr]
        # A configured node that does not answer accounts for one unknown peer: only peers beyond
        # those are certainly missing from the config.
        silent = [n for n in data.nodes if n.name not in known.values()]
        if len(strangers) > len(silent):
            for pid, uri in strangers:
                out.append(Metric("peers", WARN, f"peer {pid} ({uri}) is in the cluster but not in the config: its node is "
                                                 "not polled (add it to members)" if not silent else
                                                 f"peer {pid} ({uri}) is not matched to a configured node", pid))
    for c in data.collections():
        sev = STATUS_SEVERITY.get(c.status or "", UNKNOWN if c.status is None else WARN)
        points = f"{c.points} points" if c.points is not None else "points unknown"
        text = f"collection {c.name} is {c.status or 'unknown'} ({points}, {c.active}/{c.replicas} replicas Active)"
        if sev is not OK and c.statuses:
            text += "; " + ", ".join(f"{node}: {s}" for node, s in c.statuses)
        if c.status == "grey":
            text += " (optimizations pending, not triggered)"
        out.append(Metric(f"collection:{c.name}", sev, text, c.status))
    versions = {n.name: n.version for n in up if n.version}
    if len(set(versions.values())) > 1:
        out.append(Metric("versions", OK, "nodes run different Qdrant versions (an upgrade under way?): "
                                          + ", ".join(f"{k} {v}" for k, v in versions.items())))
    out += replica_metrics(data)
    transfers = data.transfers()
    if transfers:
        shown = ", ".join(f"{t.collection}/{t.shard_id} {data.peer_name(t.from_peer)} -> {data.peer_name(t.to_peer)}"
                          f"{' (' + t.comment + ')' if t.comment else ''}" for t in transfers[:4])
        out.append(Metric("transfers", OK, f"{len(transfers)} shard transfer(s) in progress: {shown}", len(transfers)))
    out += [Metric("notes", WARN, n) for n in data.notes]
    return out


def assess_cluster(ref: ClusterRef, snapshots: dict[str, Snapshot], baseline: dict[str, Any] | None = None,
                   now: float | None = None) -> ClusterHealth:
    unit, data = unit_data(snapshots, QdrantData)
    if data is None:
        return no_data_health(ref, unit, "?", "nodes", "no node answers")
    members = []
    for n in data.nodes:
        snap = node_snapshot(unit, n, data)
        if n.up:
            ms = node_metrics(ref, n)
            members.append(MemberHealth(snap, role_of(n), Severity.worst([m.severity for m in ms], OK), tuple(ms)))
        else:
            members.append(MemberHealth(snap, "?", CRIT, (Metric("reachability", CRIT, f"{n.reachability}: {n.error or 'does not answer'}"),)))
    down = [n.name for n in data.nodes if not n.up]
    metrics = [Metric("nodes", CRIT if down else OK,
                      f"{len(down)} of {len(data.nodes)} nodes down: {', '.join(down)}" if down else f"all {len(data.nodes)} nodes up")]
    metrics += cluster_metrics(data)
    sev = Severity.worst([m.severity for m in members] + [m.severity for m in metrics], OK)
    return ClusterHealth(ref.environment, ref.name, "qdrant", sev, tuple(members), tuple(metrics))


def facts(health: ClusterHealth) -> dict[str, dict[str, str]]:
    """What the timeline reports when it changes: every replica's state (Partial → Recovery →
    Active is a recovery's progress, though only its first and last steps change a severity).
    Every up node's snapshot holds the same refresh: the first one is read."""
    data = next((m.snapshot.data for m in health.members if isinstance(m.snapshot.data, QdrantData)), None)
    if data is None:
        return {}
    # Named as the replica's metric is (collection/shard@peer): a node's name can change with
    # its reachability (a down node is "peer N" to the others), its peer id cannot.
    return {"": {f"replica {r.key}": r.state for r in data.replicas()}}
