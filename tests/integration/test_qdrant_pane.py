"""The Qdrant pane and `dbops check` against the fake Qdrant (3 nodes, every request and answer
validated against Qdrant 1.19's OpenAPI spec): a replica marked Dead is seen within two refreshes
on the pane (at 80x24) and in `dbops check`; a read-only key is enough to read; a wrong key is
AUTH and never shown; a stopped, a hung and a slow node are judged without taking the others
with them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dbops.engines.qdrant.data import QdrantData
from dbops.model import Reachability, Severity
from tests.fakes.qdrant import READ_ONLY_API_KEY, fake_qdrant

from .qdrant_env import NAME, Env


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with fake_qdrant(transfer_seconds=0.5) as cluster:
        yield Env(cluster, tmp_path, tmp_path / "dbops.toml").write(READ_ONLY_API_KEY)


def test_a_dead_replica_is_crit_on_the_next_refreshes_and_in_dbops_check(env: Env) -> None:
    before = env.health()
    assert before.severity is Severity.OK, before.problems
    assert [(m.name, m.role) for m in before.members] == [("q1", "leader"), ("q2", "follower"), ("q3", "follower")]
    metrics = {m.name: m.message for m in before.metrics}
    assert metrics["collection:docs"] == "collection docs is green (300 points, 6/6 replicas Active)"
    assert metrics["collection:images"] == "collection images is green (120 points, 3/3 replicas Active)"

    env.cluster.set_replica_state("docs", 1, env.cluster.peer_ids[2], "Dead")
    seen = [env.health() for _ in range(2)]
    dead = f"collection docs shard 1 on q3 (peer {env.cluster.peer_ids[2]}) is Dead: run qdrant.recover-dead-replica"
    assert all(h.severity is Severity.CRIT and dead in h.problems for h in seen), [h.problems for h in seen]

    check = env.dbops("check")
    assert check.returncode == 2, check.stdout + check.stderr
    assert "CRIT" in check.stdout and "shard 1 on q3" in check.stdout and "is Dead" in check.stdout
    assert READ_ONLY_API_KEY not in check.stdout + check.stderr


def test_a_read_only_key_reads_everything_and_a_wrong_key_is_auth_and_never_shown(env: Env) -> None:
    h = env.health()  # the fixture's config reads with the read-only key
    assert h.severity is Severity.OK and all(m.snapshot.reachability is Reachability.UP for m in h.members)
    data = h.members[0].snapshot.data
    assert isinstance(data, QdrantData) and data.collection_names() == ["docs", "images"]

    env.write("not-the-key-1234")
    wrong = env.health()
    assert wrong.severity is Severity.CRIT
    assert [m.snapshot.reachability for m in wrong.members] == [Reachability.AUTH] * 3
    assert "rejected the API key (401 Unauthorized)" in wrong.members[0].snapshot.error
    check = env.dbops("check")
    assert check.returncode == 2 and "AUTH" in check.stdout and "rejected the API key" in check.stdout
    assert "not-the-key-1234" not in check.stdout + check.stderr + str(wrong)

    env.write(None)
    missing = env.health()
    assert missing.members[0].snapshot.reachability is Reachability.AUTH


def test_a_stopped_and_a_hung_node_cost_only_themselves(env: Env) -> None:
    ids = env.cluster.peer_ids
    env.cluster.node_down(ids[2])  # its port closes (from another thread: wait until it refuses)
    h = env.wait_for(lambda h: "connection refused" in (h.members[2].snapshot.error or ""), "q3 to refuse connections")
    assert [m.snapshot.reachability for m in h.members] == [Reachability.UP, Reachability.UP, Reachability.DOWN]
    assert h.members[2].snapshot.error.startswith("connection refused at q3 (127.0.0.1:")
    assert "1 of 3 nodes down: q3" in h.problems
    assert not any("config" in p for p in h.problems), h.problems  # a configured node that is down is not a stranger
    env.cluster.node_up(ids[2])

    env.write(READ_ONLY_API_KEY, timeout=1.5)
    env.cluster.node_down(ids[1], mode="hang")  # accepts, never answers
    h = env.health()
    assert [m.snapshot.reachability for m in h.members] == [Reachability.UP, Reachability.TIMEOUT, Reachability.UP]
    assert "no answer from q2" in h.members[1].snapshot.error
    env.cluster.node_up(ids[1])


def test_a_slow_node_is_warn_from_its_own_telemetry(env: Env) -> None:
    ids = env.cluster.peer_ids
    env.write(READ_ONLY_API_KEY, timeout=8)
    env.cluster.set_latency(ids[0], 700)  # before any request: every request it has answered is slow
    h = env.health()
    q1 = h.members[0]
    assert q1.snapshot.reachability is Reachability.UP and q1.severity is Severity.WARN, q1.metrics
    assert any(p.startswith("requests slow: ") and "(over 500 ms)" in p for p in q1.problems), q1.problems
    assert h.members[1].severity is Severity.OK and h.members[2].severity is Severity.OK


async def test_the_pane_at_80x24_shows_the_dead_replica(tmp_path: Path) -> None:
    from textual.widgets import DataTable, Static

    from dbops.config import load
    from dbops.screens.app import DbopsApp
    from dbops.screens.qdrant import QdrantScreen

    from .test_ui_live import rows, settle

    with fake_qdrant() as cluster:
        env = Env(cluster, tmp_path, tmp_path / "dbops.toml").write(READ_ONLY_API_KEY)
        app = DbopsApp(load(env.config), state_dir=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot, lambda: NAME in rows(app.screen.query_one("#clusters", DataTable)), "overview row")
            await settle(pilot, lambda: "9 repl ok" in rows(app.screen.query_one("#clusters", DataTable)), "replicas on the overview",
                         show=lambda: rows(app.screen.query_one("#clusters", DataTable)))
            app.open_cluster(next(r.key for r in app.hub.refs if r.name == NAME))
            await settle(pilot, lambda: isinstance(app.screen, QdrantScreen) and app.screen.is_mounted, "the Qdrant pane")
            pane = app.screen
            nodes = pane.query_one("#nodes", DataTable)
            replicas = pane.query_one("#replicas-table", DataTable)
            await settle(pilot, lambda: "follower" in rows(nodes), "q1 as raft leader", show=lambda: rows(nodes))
            assert "all 9 replicas Active" in str(pane.query_one("#replicas-note", Static).render())
            # Every node's whole address (the port too) within 80 columns, nothing scrolled off.
            assert nodes.virtual_size.width <= nodes.size.width <= 80, (nodes.virtual_size, nodes.size)
            for i, url in enumerate(cluster.urls):
                assert str(nodes.get_row_at(i)[-1]) == url.removeprefix("http://")

            cluster.set_replica_state("docs", 2, cluster.peer_ids[0], "Dead")
            await settle(pilot, lambda: "Dead" in rows(replicas), "the Dead replica", show=lambda: rows(replicas))
            row = replicas.get_row_at(0)
            assert (str(row[0]), str(row[1])) == ("docs/2@q1", "Dead")
            assert "1 of 9 replicas not Active" in str(pane.query_one("#replicas-note", Static).render())
            assert "Dead 1" in str(pane.query_one("#status", Static).render())
            await pilot.press("1")
            # The collection's status and its replicas' states are two requests, as on real Qdrant:
            # the refresh that first sees the Dead replica may have read the status just before it.
            collections = pane.query_one("#collections-table", DataTable)
            await settle(pilot, lambda: "docs yellow 300" in " ".join(rows(collections).split()), "docs yellow",
                         show=lambda: rows(collections))
            await pilot.press("4")
            assert "is Dead: run qdrant.recover-dead-replica" in str(pane.query_one("#health-text", Static).render())
            await pilot.press("escape")
            await settle(pilot, lambda: "1 Dead" in rows(app.screen.query_one("#clusters", DataTable)), "the overview's count",
                         show=lambda: rows(app.screen.query_one("#clusters", DataTable)))
