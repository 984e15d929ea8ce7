"""The Qdrant judgement on hand-made refreshes: replicas merged from every node's point of view,
Dead is CRIT and other states WARN, collection statuses, latency thresholds, nodes down, and the
parsing of Qdrant's own answers (shapes from its OpenAPI spec)."""

from __future__ import annotations

from dbops.config import parse
from dbops.engines.qdrant.assess import assess_cluster
from dbops.engines.qdrant.data import (
    LocalShard,
    Node,
    NodeCollection,
    QdrantData,
    RemoteShard,
    Transfer,
    collection_cluster_from,
    raft_from,
    worst_latency,
)
from dbops.model import Reachability, Severity, Snapshot

NOW = 1_800_000_000.0
CONFIG = """
[environments.prod.clusters.vectors]
engine = "qdrant"
members = [{ name = "q1", host = "10.0.0.1" }, { name = "q2", host = "10.0.0.2" }, { name = "q3", host = "10.0.0.3" }]
[environments.prod.clusters.vectors.qdrant]
thresholds = { latency_ms_warn = 200, latency_ms_crit = 1000 }
"""
PEERS = {"q1": 11, "q2": 22, "q3": 33}


def ref():
    return parse(CONFIG).clusters()[0]


def raft(peer: int, leader: int = 11):
    return raft_from({
        "status": "enabled", "peer_id": peer, "peers": {str(p): {"uri": f"http://q{p // 11}:6335/"} for p in PEERS.values()},
        "raft_info": {"term": 4, "commit": 120, "pending_operations": 0, "leader": leader,
                      "role": "Leader" if peer == leader else "Follower", "is_voter": True},
        "consensus_thread_status": {"consensus_thread_status": "working", "last_update": "2026-11-22T09:00:00Z"},
        "message_send_failures": {},
    })


def node(name: str, states: dict[tuple[int, int], str], points: dict[int, int], *, status: str = "green",
         latency: float | None = 10.0, up: bool = True, transfers: tuple[Transfer, ...] = ()) -> Node:
    """A node of a 2-shard collection `docs`; `states` maps (shard, peer) -> state as this node sees it."""
    me = PEERS[name]
    if not up:
        return Node(name, f"{name}:6333", False, "DOWN", f"connection refused at {name}", last_up_at=NOW - 30)
    local = tuple(LocalShard(s, st, points.get(s, 0)) for (s, p), st in states.items() if p == me)
    remote = tuple(RemoteShard(s, p, st) for (s, p), st in states.items() if p != me)
    c = NodeCollection("docs", status, sum(points.values()), me, 2, local, remote, transfers)
    return Node(name, f"{name}:6333", True, raft=raft(me), clustered=True, ready=True, collections=(c,), latency_ms=latency,
                latency_endpoint="POST /collections/{name}/points/query (200)", last_up_at=NOW)


# shard 0 on q1 and q2, shard 1 on q2 and q3
HEALTHY = {(0, 11): "Active", (0, 22): "Active", (1, 22): "Active", (1, 33): "Active"}


def unit(data: QdrantData | None, reach: Reachability = Reachability.UP, error: str | None = None) -> dict[str, Snapshot]:
    return {"nodes": Snapshot("prod", "vectors", "nodes", "qdrant", reach, NOW, 5.0, data, error)}


def three(states=HEALTHY, **kw) -> QdrantData:
    return QdrantData((node("q1", states, {0: 100}, **kw.get("q1", {})), node("q2", states, {0: 100, 1: 50}, **kw.get("q2", {})),
                       node("q3", states, {1: 50}, **kw.get("q3", {}))))


def test_a_healthy_cluster_is_ok_with_one_row_per_node_and_points_summed_over_shards() -> None:
    data = three()
    h = assess_cluster(ref(), unit(data), now=NOW)
    assert h.severity is Severity.OK, h.problems
    assert [m.name for m in h.members] == ["q1", "q2", "q3"]
    assert [m.role for m in h.members] == ["leader", "follower", "follower"]
    [docs] = data.collections()
    assert (docs.points, docs.shards, docs.active, docs.replicas) == (150, 2, 4, 4)


def test_a_dead_replica_is_crit_named_by_node_and_points_to_the_runbook() -> None:
    states = dict(HEALTHY)
    states[(1, 33)] = "Dead"
    h = assess_cluster(ref(), unit(three(states)), now=NOW)
    assert h.severity is Severity.CRIT
    [problem] = [p for p in h.problems if "shard 1" in p]
    assert "collection docs shard 1 on q3 (peer 33) is Dead" in problem and "qdrant.recover-dead-replica" in problem


def test_other_states_are_warn_and_the_leaders_view_wins_over_a_lagging_node() -> None:
    leader_view = dict(HEALTHY, **{})
    leader_view[(0, 22)] = "Partial"
    lagging = dict(HEALTHY)  # q3 still believes every replica is Active
    data = QdrantData((node("q1", leader_view, {0: 100}), node("q2", leader_view, {0: 90, 1: 50}), node("q3", lagging, {1: 50})))
    h = assess_cluster(ref(), unit(data), now=NOW)
    assert h.severity is Severity.WARN
    assert any("shard 0 on q2 (peer 22) is Partial" in p for p in h.problems)
    # Points per shard come from an Active replica, not the one catching up.
    assert data.collections()[0].points == 150


def test_collection_status_red_is_crit_and_yellow_warn() -> None:
    red = assess_cluster(ref(), unit(three(q2={"status": "red"})), now=NOW)
    assert red.severity is Severity.CRIT and any("collection docs is red" in p and "q2: red" in p for p in red.problems)
    yellow = assess_cluster(ref(), unit(three(q3={"status": "yellow"})), now=NOW)
    assert yellow.severity is Severity.WARN


def test_latency_is_judged_against_the_configured_thresholds() -> None:
    h = assess_cluster(ref(), unit(three(q2={"latency": 350.0})), now=NOW)
    assert h.severity is Severity.WARN
    assert h.members[1].problems == ["requests slow: POST /collections/{name}/points/query (200) averages 350 ms (over 200 ms)"]
    h = assess_cluster(ref(), unit(three(q2={"latency": 1500.0})), now=NOW)
    assert h.members[1].severity is Severity.CRIT


def test_a_node_down_is_crit_and_its_replicas_say_so() -> None:
    states = dict(HEALTHY)
    states[(1, 33)] = "Dead"
    data = three(states, q3={"up": False})
    h = assess_cluster(ref(), unit(data), now=NOW)
    assert h.severity is Severity.CRIT
    q3 = h.members[2]
    assert q3.snapshot.reachability is Reachability.DOWN and q3.snapshot.last_good_at == NOW - 30
    assert any("1 of 3 nodes down: q3" in p for p in h.problems)
    # A node that does not answer is known by its peer URI in the others' raft view.
    assert any("shard 1 on q3 (peer 33) is Dead (its node does not answer)" in p for p in h.problems)


def test_no_node_answering_gives_one_crit_row_per_configured_node() -> None:
    h = assess_cluster(ref(), unit(None, Reachability.AUTH, "q1 (10.0.0.1:6333) rejected the API key (401 Unauthorized)"), now=NOW)
    assert h.severity is Severity.CRIT
    assert [m.snapshot.reachability for m in h.members] == [Reachability.AUTH] * 3
    assert "no node answers" in h.problems[0]


def test_transfers_are_listed_once_with_the_source_peers_progress() -> None:
    t_src = Transfer("docs", 1, 22, 33, True, "stream_records", "transferred 10 of 50 points")
    t_dst = Transfer("docs", 1, 22, 33, True, "stream_records", None)
    states = dict(HEALTHY)
    states[(1, 33)] = "Partial"
    data = three(states, q2={"transfers": (t_src,)}, q3={"transfers": (t_dst,)})
    assert data.transfers() == [t_src]
    h = assess_cluster(ref(), unit(data), now=NOW)
    assert any(m.name == "transfers" and "docs/1 q2 -> q3 (transferred 10 of 50 points)" in m.message for m in h.metrics)


def test_parsing_qdrants_answers() -> None:
    assert raft_from({"status": "disabled"}) is None
    peer, count, local, remote, transfers = collection_cluster_from("docs", {
        "peer_id": 7, "shard_count": 1, "local_shards": [{"shard_id": 0, "points_count": 3, "state": "Active"}],
        "remote_shards": [{"shard_id": 0, "peer_id": 8, "state": "Dead"}],
        "shard_transfers": [{"shard_id": 0, "from": 7, "to": 8, "sync": True}]})
    assert (peer, count, local, remote) == (7, 1, (LocalShard(0, "Active", 3),), (RemoteShard(0, 8, "Dead"),))
    assert transfers == (Transfer("docs", 0, 7, 8, True),)
    telemetry = {"requests": {"rest": {"responses": {
        "GET /collections": {"200": {"count": 5, "avg_duration_micros": 800.0}},
        "POST /collections/{name}/snapshots": {"200": {"count": 1, "avg_duration_micros": 9_000_000.0}},
        "POST /collections/{name}/points/query": {"200": {"count": 9, "avg_duration_micros": 42_000.0}, "500": {"count": 0}},
    }}}}
    assert worst_latency(telemetry) == (42.0, "POST /collections/{name}/points/query (200)")
    assert worst_latency({}) == (None, None)


def test_a_raft_peer_missing_from_the_config_is_warn() -> None:
    two = QdrantData(three().nodes[:2])  # q3 is in the raft view but not configured here
    h = assess_cluster(ref(), unit(two), now=NOW)
    assert "peer 33 (http://q3:6335/) is in the cluster but not in the config: its node is not polled (add it to members)" \
        in h.problems


def test_refusals_say_what_to_do_and_never_show_the_key() -> None:
    from dbops.engines.qdrant.client import NodeClient
    from dbops.secrets import Secret

    r = ref()
    c = NodeClient(r, r.cluster.members[0], Secret("s3cr3t-key-value"))
    # Real Qdrant answers its auth errors in plain text, the spec's shape is JSON: both are read.
    e401 = c.refused(401, b"Unauthorized: Invalid API key or JWT", "GET /cluster")
    assert e401.reachability is Reachability.AUTH
    assert e401.message == "q1 (10.0.0.1:6333) rejected the API key (401 Unauthorized) on GET /cluster: Invalid API key or JWT"
    e403 = c.refused(403, b'{"status": {"error": "Forbidden: Write access is required"}, "time": 0.0}', "replicate_shard docs/1")
    assert e403.message == ("q1 (10.0.0.1:6333) refused replicate_shard docs/1 (403 Forbidden): the API key is read-only; give "
                            "the runbook a key that may manage the cluster (qdrant.manage_api_key) (Forbidden: Write access is required)")
    echo = c.refused(400, b'{"status": {"error": "bad key s3cr3t-key-value"}}', "PUT /collections/docs/snapshots/recover")
    assert "s3cr3t-key-value" not in echo.message and "***" in echo.message
    assert c.error(ConnectionRefusedError(111, "Connection refused"), "GET /readyz").message == "connection refused at q1 (10.0.0.1:6333)"
    assert c.error(TimeoutError(), "GET /cluster").reachability is Reachability.TIMEOUT


def test_mixed_versions_are_named_without_raising_the_severity() -> None:
    from dataclasses import replace

    data = three()
    data = QdrantData(tuple(replace(n, version="1.18.2" if n.name == "q3" else "1.19.0") for n in data.nodes))
    h = assess_cluster(ref(), unit(data), now=NOW)
    assert h.severity is Severity.OK
    assert any(m.message == "nodes run different Qdrant versions (an upgrade under way?): q1 1.19.0, q2 1.19.0, q3 1.18.2"
               for m in h.metrics)


def test_a_presigned_urls_credentials_never_survive_in_a_message_even_cut_short() -> None:
    from dbops.runbooks.qdrant.restore_from_s3 import _without

    url = ("https://s3.example/b/vectors/docs.snapshot?X-Amz-Algorithm=AWS4-HMAC-SHA256"
           "&X-Amz-Credential=AKIAEXAMPLE%2F20261122&X-Amz-Security-Token=tok123&X-Amz-Signature=0123abcdef")
    whole = _without(f"q1: Failed to download snapshot from {url}", url)
    assert whole == "q1: Failed to download snapshot from https://s3.example/b/vectors/docs.snapshot?<signature removed>"
    cut = _without(f"q1: Failed to download snapshot from {url[:-4]}…", url)  # a message shortened mid-signature
    assert "AKIAEXAMPLE" not in cut and "tok123" not in cut and "0123ab" not in cut, cut
    assert cut.startswith("q1: Failed to download snapshot from https://s3.example/b/vectors/docs.snapshot?X-Amz-Algorithm=")


def test_a_runbooks_plan_names_https_when_the_cluster_uses_tls() -> None:
    from dbops.runbook.model import Context
    from dbops.runbooks.qdrant.recover_dead_replica import replicate_commands

    tls = parse(CONFIG.replace('[environments.prod.clusters.vectors.qdrant]',
                               'tls = { mode = "require" }\n[environments.prod.clusters.vectors.qdrant]')).clusters()[0]
    target = {"collection": "docs", "shard": 1, "to_peer": 22, "to": "q2", "from_peer": 11, "from": "q1", "via": "q1"}
    for r, scheme in ((ref(), "http"), (tls, "https")):
        plan = replicate_commands(Context(r, {}, "plan", state={"targets": [target]}))
        assert plan[0].startswith(f"POST {scheme}://10.0.0.1:6333/collections/docs/cluster "), plan


def test_the_timeline_tells_each_step_of_a_replicas_recovery() -> None:
    from dbops.recording import state_changes

    def told(before: dict, after: dict) -> list[str]:
        judged = [assess_cluster(ref(), unit(three(s)), now=NOW) for s in (before, after)]
        return [e.text for e in state_changes(judged[0], judged[1], NOW)]

    dead, recovery, partial = (dict(HEALTHY, **{}) for _ in range(3))
    dead[(1, 33)], recovery[(1, 33)], partial[(1, 33)] = "Dead", "Recovery", "Partial"
    went = told(HEALTHY, dead)
    assert "replica docs/1@33 Active → Dead" in went
    assert any(t.startswith("replica:docs/1@33 CRIT: collection docs shard 1 on q3 (peer 33) is Dead") for t in went), went
    assert "replica docs/1@33 Dead → Recovery" in told(dead, recovery)
    # Both WARN: no severity changed, the state did.
    assert told(recovery, partial) == ["replica docs/1@33 Recovery → Partial"]
    assert "replica docs/1@33 Partial → Active" in told(partial, HEALTHY)
