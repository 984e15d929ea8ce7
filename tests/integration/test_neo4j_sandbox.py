"""The Neo4j sandbox is real: Neo4j 5.26 Community from Maven Central's jars, embedded with the
Bolt connector and auth on by a launcher the sandbox compiles; the official Python driver talks
to it. (The Neo4j pane is issue 5's; this is its sandbox.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from neo4j import GraphDatabase
from neo4j.exceptions import AuthError

from dbops import sandbox
from dbops.sandbox import pid_alive
from dbops.sandbox.neo4j import Neo4jSandbox

from .conftest import running_sandbox


@pytest.fixture(scope="module")
def neo() -> Iterator[Neo4jSandbox]:
    with running_sandbox(("neo4j",), "dbops-it-neo4j-") as root:
        yield Neo4jSandbox(root)


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


def test_up_again_is_a_no_op_and_down_stops_it(neo: Neo4jSandbox) -> None:
    pid = neo.pid()
    assert sandbox.up(("neo4j",), root=neo.root).already_up and neo.pid() == pid
    sandbox.down(root=neo.root)
    assert not pid_alive(pid) and [r.running for r in sandbox.status(root=neo.root)] == [False]
