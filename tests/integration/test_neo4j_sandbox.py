"""The Neo4j sandbox is real: Neo4j 5.26 Community from Maven Central's jars, embedded with the
Bolt connector and auth on by a launcher the sandbox compiles; the official Python driver talks
to it. (The Neo4j pane is issue 5's; this is its sandbox.) The drill probe runs against the
same server, and against it hung."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from neo4j import GraphDatabase
from neo4j.exceptions import AuthError

from dbops import sandbox
from dbops.config import ClusterRef, load
from dbops.drill.probe import CALL_TIMEOUT, AckLog, ProbeLoop
from dbops.engines.neo4j.probe import INDEX, LABEL, Neo4jProbe
from dbops.sandbox import pid_alive
from dbops.sandbox.neo4j import Neo4jSandbox


@pytest.fixture(scope="module")
def neo(neo4j_root: Path) -> Iterator[Neo4jSandbox]:
    sandbox.up(("neo4j",), root=neo4j_root)  # shared (conftest): up again if another module stopped it
    yield Neo4jSandbox(neo4j_root)


def test_bolt_with_the_password_reaches_neo4j_5_26_community(neo: Neo4jSandbox) -> None:
    with GraphDatabase.driver(f"bolt://127.0.0.1:{neo.port}", auth=("neo4j", neo.password)) as driver:
        records, _, _ = driver.execute_query("CALL dbms.components() YIELD versions, edition RETURN versions[0] AS v, edition")
        assert (records[0]["v"], records[0]["edition"]) == ("5.26.2", "community")
        driver.execute_query("CREATE (:Probe {n: 1})")
        records, _, _ = driver.execute_query("MATCH (p:Probe) RETURN count(p) AS c")
        assert records[0]["c"] == 1


def test_auth_is_on(neo: Neo4jSandbox) -> None:
    with GraphDatabase.driver(f"bolt://127.0.0.1:{neo.port}", auth=("neo4j", "not-the-password")) as driver:
        with pytest.raises(AuthError):
            driver.verify_connectivity()
    assert neo.password not in (neo.root / "neo4j" / "Launcher.java").read_text()  # the password travels in the environment


# -- the drill probe (before the test that stops the server) ------------------------------------

def cluster_ref(neo: Neo4jSandbox) -> ClusterRef:
    return next(r for r in load(sandbox.config_path(root=neo.root)).clusters() if r.name == "sandbox-neo4j")


def cypher(neo: Neo4jSandbox, query: str, **params: Any) -> list[dict[str, Any]]:
    with GraphDatabase.driver(f"bolt://127.0.0.1:{neo.port}", auth=("neo4j", neo.password)) as driver:
        records, _, _ = driver.execute_query(query, params)
        return [r.data() for r in records]


async def test_probe_commits_read_back_and_present_is_exactly_the_written_seqs(neo: Neo4jSandbox, tmp_path: Path) -> None:
    ref = cluster_ref(neo)
    probe, other = Neo4jProbe(ref, f"it-{uuid.uuid4().hex[:8]}"), Neo4jProbe(ref, f"it-{uuid.uuid4().hex[:8]}")
    try:
        await probe.open()
        await probe.open()  # again: the index is there, nothing to do
        await other.open()
        assert probe.index_note is None
        assert cypher(neo, "SHOW INDEXES YIELD name, state, labelsOrTypes, properties WHERE name = $n", n=INDEX) == [
            {"name": INDEX, "state": "ONLINE", "labelsOrTypes": [LABEL], "properties": ["run_id", "seq"]}]
        for seq in range(1, 31):
            await probe.write(seq)
            assert await probe.read(seq)
        assert not await probe.read(31)
        for seq in range(1, 6):  # another run's nodes, with the same numbers
            await other.write(seq)
        await probe.reset()  # the next calls reconnect
        # The drill's own loop: every attempt acknowledged and read back.
        acks = AckLog(tmp_path / "acks.jsonl")
        loop = ProbeLoop(probe, acks, first_seq=31)
        for _ in range(10):
            assert (await loop.tick()).ok, loop.attempts[-1]
        acks.close()
        assert [a.seq for a in AckLog.read(tmp_path / "acks.jsonl")] == list(range(31, 41))
        assert await probe.present(range(1, 100)) == set(range(1, 41))
        assert await other.present(range(1, 100)) == set(range(1, 6))
        assert cypher(neo, f"MATCH (p:{LABEL} {{run_id: $r}}) RETURN count(p) AS n", r=probe.run_id) == [{"n": 40}]
    finally:
        await probe.close(drop=True)
    assert cypher(neo, f"MATCH (p:{LABEL} {{run_id: $r}}) RETURN count(p) AS n", r=probe.run_id) == [{"n": 0}]
    # The other run's nodes still use the index: it stays until the last probe node is gone.
    assert cypher(neo, "SHOW INDEXES YIELD name WHERE name = $n", n=INDEX) == [{"name": INDEX}]
    await other.close(drop=True)
    assert cypher(neo, f"MATCH (p:{LABEL}) RETURN count(p) AS n") == [{"n": 0}]
    assert cypher(neo, "SHOW INDEXES YIELD name WHERE name = $n", n=INDEX) == []


async def test_probe_against_a_hung_server_fails_within_the_bound_and_reconnects(neo: Neo4jSandbox) -> None:
    probe = Neo4jProbe(cluster_ref(neo), f"it-{uuid.uuid4().hex[:8]}")
    pid = neo.pid()
    assert pid is not None
    try:
        await probe.open()
        await probe.write(1)
        os.kill(pid, signal.SIGSTOP)  # it accepts connections and answers nothing
        try:
            for seq in (2, 3):  # on the connection it had, then on a new one after the reset
                started = time.monotonic()
                with pytest.raises(TimeoutError):
                    await probe.write(seq)
                assert time.monotonic() - started < CALL_TIMEOUT
                started = time.monotonic()
                await probe.reset()
                assert time.monotonic() - started < CALL_TIMEOUT + 0.5
        finally:
            os.kill(pid, signal.SIGCONT)
        await probe.write(4)
        assert await probe.read(4)
        # Committed is committed; a write that timed out may or may not have been.
        assert {1, 4} <= await probe.present(range(1, 5)) <= {1, 2, 3, 4}
    finally:
        await probe.close(drop=True)
    assert cypher(neo, f"MATCH (p:{LABEL} {{run_id: $r}}) RETURN count(p) AS n", r=probe.run_id) == [{"n": 0}]


def test_up_again_is_a_no_op_and_down_stops_it(neo: Neo4jSandbox) -> None:
    pid = neo.pid()
    assert sandbox.up(("neo4j",), root=neo.root).already_up and neo.pid() == pid
    sandbox.down(root=neo.root)
    assert not pid_alive(pid) and [r.running for r in sandbox.status(root=neo.root)] == [False]
