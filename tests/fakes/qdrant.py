"""A fake Qdrant cluster for tests, with OpenAPI validation on: a test that makes the fake
receive or send anything Qdrant 1.19's spec does not allow FAILS, listing the violations.

Use the context manager (e.g. in a fixture of your own) or the fixture ``qdrant_cluster``
(import it into the test module, where pytest finds it)::

    from tests.fakes.qdrant import API_KEY, READ_ONLY_API_KEY, fake_qdrant, qdrant_cluster

    def test_pane(qdrant_cluster):             # 3 nodes, demo data, keys API_KEY / READ_ONLY_API_KEY
        qdrant_cluster.urls                    # ["http://127.0.0.1:p1", ...]
        qdrant_cluster.peer_ids                # node 1 is the raft leader
        qdrant_cluster.set_replica_state("docs", 0, qdrant_cluster.peer_ids[1], "Dead")
        qdrant_cluster.set_latency(qdrant_cluster.peer_ids[0], 800)
        qdrant_cluster.node_down(qdrant_cluster.peer_ids[2])        # "refuse" (default) or "hang"
        qdrant_cluster.transfer_seconds = 3600; ...; qdrant_cluster.complete_transfers()

    with fake_qdrant(nodes=3, demo=False, transfer_seconds=0.5) as cluster:
        cluster.create_collection("c", size=4, shard_number=2, replication_factor=2)

Demo data (``demo=True``): collection "docs" (3 shards, replication factor 2, 300 points with
8-d Cosine vectors and payload {title, topic}; alias "docs-live") and "images" (1 shard on every
node, 120 points with UUID ids, 4-d Dot vectors). Shard s's replicas are on nodes s+1, s+2 (mod 3).

The HTTP fault controls under /__fake__/ and the endpoints are described in
dbops.sandbox.fake_qdrant's docstring. A test that provokes a violation on purpose takes it with
``cluster.take_violations()`` before the context ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dbops.sandbox import free_ports
from dbops.sandbox.fake_qdrant import FakeQdrantCluster

SPEC_PATH = Path(__file__).with_name("qdrant-openapi-1.19.json")
API_KEY = "fake-manage-key-4f1c"
READ_ONLY_API_KEY = "fake-read-only-key-9b2e"


@contextmanager
def fake_qdrant(nodes: int = 3, *, api_key: str | None = API_KEY, read_only_api_key: str | None = READ_ONLY_API_KEY,
                demo: bool = True, transfer_seconds: float = 2.0, validate: bool = True) -> Iterator[FakeQdrantCluster]:
    """A started fake cluster of `nodes` nodes on free ports; stopped at exit, and the test fails
    if any request or response violated the spec (validate=False: no validation at all)."""
    cluster = FakeQdrantCluster(free_ports(nodes), api_key, read_only_api_key, SPEC_PATH if validate else None,
                                transfer_seconds=transfer_seconds)
    if demo:
        cluster.seed_demo()
    cluster.start()
    try:
        yield cluster
    except BaseException as exc:
        cluster.stop()
        if cluster.violations:
            exc.add_note(_report(cluster.violations))
        raise
    cluster.stop()
    if cluster.violations:
        pytest.fail(_report(cluster.violations), pytrace=False)


def _report(problems: list[str]) -> str:
    return f"the fake Qdrant saw {len(problems)} OpenAPI violation(s):\n  " + "\n  ".join(problems)


@pytest.fixture
def qdrant_cluster() -> Iterator[FakeQdrantCluster]:
    """A 3-node fake Qdrant with the demo data, API keys API_KEY and READ_ONLY_API_KEY, validation on."""
    with fake_qdrant() as cluster:
        yield cluster
