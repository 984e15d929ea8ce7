"""How a Neo4j deployment is judged: the product brief's thresholds (a transaction over 500 ms,
a database not online, no writer), from rows shaped as Neo4j 5 and 4.4 return them."""

from __future__ import annotations

import time
from datetime import timedelta

from neo4j.time import Duration

from dbops.config import parse
from dbops.engines.neo4j.assess import assess_cluster
from dbops.engines.neo4j.data import (
    Neo4jMemberData,
    database_from_row,
    longest_first,
    terminate_statement,
    transaction_from_row,
)
from dbops.model import Reachability, Severity, Snapshot

REF = parse('[environments.e.clusters.graph]\nengine = "neo4j"\nmembers = [{ name = "n1", host = "10.0.0.1" }, '
            '{ name = "n2", host = "10.0.0.2" }]\n').clusters()[0]
STRICT = parse('[environments.e.clusters.graph]\nengine = "neo4j"\nmembers = [{ name = "n1", host = "10.0.0.1" }]\n'
               "[environments.e.clusters.graph.neo4j.thresholds]\ntransaction_ms_warn = 100\ntransaction_ms_crit = 1000\n").clusters()[0]


def db(name: str = "neo4j", **over: object) -> dict[str, object]:
    row = {"name": name, "type": "system" if name == "system" else "standard", "address": "localhost:7687",
           "role": "primary", "writer": True, "requestedStatus": "online", "currentStatus": "online",
           "statusMessage": "", "default": name == "neo4j", "access": "read-write", "lastCommittedTxn": None,
           "replicationLag": 0}
    row.update(over)
    return row


def tx(id: str, elapsed: timedelta | float, **over: object) -> dict[str, object]:
    seconds = elapsed.total_seconds() if isinstance(elapsed, timedelta) else elapsed
    row = {"transactionId": id, "database": "neo4j", "username": "alice", "clientAddress": "10.1.1.1:5000",
           "status": "Running", "elapsedTime": Duration(seconds=seconds), "cpuTime": None, "waitTime": Duration(),
           "idleTime": None, "estimatedUsedHeapMemory": 2 * 2**20, "activeLockCount": 0,
           "currentQuery": "MATCH (n) RETURN n", "metaData": {}, "parameters": {"secret": "hunter2"}}
    row.update(over)
    return row


def data(databases: list[dict[str, object]] | None = None, transactions: list[dict[str, object]] = ()) -> Neo4jMemberData:
    return Neo4jMemberData(
        version="5.26.2", edition="community",
        databases=tuple(database_from_row(r) for r in (databases if databases is not None else [db(), db("system")])),
        transactions=longest_first([transaction_from_row(r) for r in transactions]), servers=None)


def judge(*snaps: tuple[str, object], ref=REF):
    now = time.time()
    out = {}
    for name, d in snaps:
        if isinstance(d, Neo4jMemberData):
            out[name] = Snapshot("e", "graph", name, "neo4j", Reachability.UP, now, data=d)
        else:
            reach, error = d  # type: ignore[misc]
            out[name] = Snapshot("e", "graph", name, "neo4j", reach, now, error=error)
    return assess_cluster(ref, out)


def problems(ch) -> list[str]:
    return [f"{m.severity.name} {m.message}" for m in ch.metrics if m.severity is not Severity.OK] + \
        [f"{mh.name}: {m.severity.name} {m.message}" for mh in ch.members for m in mh.metrics if m.severity is not Severity.OK]


def test_a_healthy_single_server_is_ok_and_primary() -> None:
    ch = judge(("n1", data()), ("n2", data()))
    assert ch.severity is Severity.OK and problems(ch) == []
    assert [m.role for m in ch.members] == ["primary", "primary"]
    assert [m.message for m in ch.metrics if m.name == "database"] == ["database neo4j online on localhost:7687",
                                                                       "database system online on localhost:7687"]


def test_a_transaction_over_500_ms_warns_and_names_the_longest() -> None:
    ch = judge(("n1", data(transactions=[tx("neo4j-transaction-7", 0.4), tx("neo4j-transaction-8", 2.5, username="bob",
                                                                              currentQuery="UNWIND range(1, 10) AS x RETURN x"),
                                         tx("neo4j-transaction-9", 0.9)])), ("n2", data()))
    assert ch.severity is Severity.WARN
    assert problems(ch) == ["n1: WARN 2 transaction(s) over 500 ms; longest neo4j-transaction-8 (bob on neo4j) 2.5s: "
                            "UNWIND range(1, 10) AS x RETURN x"]


def test_exactly_the_threshold_is_fine_and_over_the_critical_one_is_crit() -> None:
    assert judge(("n1", data(transactions=[tx("neo4j-transaction-1", 0.5)]))).severity is Severity.OK
    ch = judge(("n1", data(transactions=[tx("neo4j-transaction-1", timedelta(minutes=2))])))
    assert ch.severity is Severity.CRIT
    assert problems(ch)[0].startswith("n1: CRIT 1 transaction(s) over 60000 ms; longest neo4j-transaction-1 (alice on neo4j) 2m")


def test_thresholds_come_from_the_config() -> None:
    assert judge(("n1", data(transactions=[tx("neo4j-transaction-1", 0.2)])), ref=STRICT).severity is Severity.WARN
    assert judge(("n1", data(transactions=[tx("neo4j-transaction-1", 1.5)])), ref=STRICT).severity is Severity.CRIT


def test_a_database_not_online_is_critical_with_the_servers_reason() -> None:
    ch = judge(("n1", data([db(currentStatus="quarantined", statusMessage="store corrupt", writer=False), db("system")])))
    assert ch.severity is Severity.CRIT
    assert problems(ch) == ["CRIT database neo4j is quarantined on localhost:7687 (requested online): store corrupt"]


def test_a_database_stopped_on_purpose_is_ok() -> None:
    ch = judge(("n1", data([db(requestedStatus="offline", currentStatus="offline", writer=False), db("system")])))
    assert ch.severity is Severity.OK
    assert "database neo4j is offline (requested offline)" in [m.message for m in ch.metrics]


def test_no_writer_among_the_online_copies_is_critical() -> None:
    rows = [db(address="a:7687", role="secondary", writer=False), db(address="b:7687", role="secondary", writer=False),
            db("system")]
    ch = judge(("n1", data(rows)))
    assert ch.severity is Severity.CRIT
    assert problems(ch) == ["CRIT database neo4j has no writer (no leader among a:7687, b:7687): writes to it fail"]
    assert ch.members[0].role == "member"  # two rows for its default database: a cluster member


def test_4_4_rows_a_leader_is_the_writer() -> None:
    rows = [{"name": "neo4j", "address": "a:7687", "role": "leader", "requestedStatus": "online", "currentStatus": "online",
             "error": "", "default": True}]
    assert judge(("n1", data(rows))).severity is Severity.OK
    rows[0]["role"] = "follower"
    assert "has no writer" in problems(judge(("n1", data(rows))))[0]
    row = transaction_from_row({"transactionId": "neo4j-transaction-3", "elapsedTimeMillis": 1200, "allocatedBytes": 64,
                                "currentQuery": "RETURN 1"})
    assert (row.elapsed_ms, row.allocated_bytes) == (1200.0, 64)


def test_an_unreachable_member_is_critical_and_the_others_still_judge_the_databases() -> None:
    ch = judge(("n1", (Reachability.AUTH, "10.0.0.1:7687 rejected user neo4j")), ("n2", data()))
    assert ch.severity is Severity.CRIT
    assert problems(ch) == ["n1: CRIT AUTH: 10.0.0.1:7687 rejected user neo4j"]
    assert any(m.message.startswith("database neo4j online") for m in ch.metrics)


def test_pending_is_unknown() -> None:
    ch = judge(("n1", (Reachability.PENDING, None)))
    assert ch.severity is Severity.UNKNOWN


def test_query_texts_are_scrubbed_and_cut_and_parameters_never_kept() -> None:
    t = transaction_from_row(tx("system-transaction-5", 1, currentQuery="ALTER USER bob SET PASSWORD 'hunter2' CHANGE NOT REQUIRED"))
    assert "hunter2" not in t.query and "ALTER USER bob SET PASSWORD '***'" in t.query
    assert "hunter2" not in repr(t)
    assert len(transaction_from_row(tx("neo4j-transaction-5", 1, currentQuery="RETURN " + "x" * 500)).query) == 200


def test_durations_cpu_wait_and_memory_are_read() -> None:
    t = transaction_from_row(tx("neo4j-transaction-5", 3.25, cpuTime=Duration(seconds=1.5), waitTime=Duration(seconds=0.25)))
    assert (t.elapsed_ms, t.cpu_ms, t.wait_ms, t.allocated_bytes) == (3250.0, 1500.0, 250.0, 2 * 2**20)


def test_terminate_statement_quotes_ids_and_refuses_anything_else() -> None:
    assert terminate_statement(["neo4j-transaction-12", "my.db-transaction-3"]) == \
        'TERMINATE TRANSACTIONS "neo4j-transaction-12", "my.db-transaction-3"'
    for bad in (['neo4j-transaction-1" OR 1=1'], [], ["query-4"]):
        try:
            terminate_statement(bad)
        except ValueError as exc:
            assert "not transaction ids" in str(exc)
        else:
            raise AssertionError(f"{bad} accepted")


def test_the_timeline_tells_a_database_stopped_on_purpose_and_started_again() -> None:
    from dbops.recording import state_changes

    online = data([db(), db("system")])
    stopped = data([db(requestedStatus="offline", currentStatus="offline", writer=False), db("system")])
    before, after = judge(("n1", online), ("n2", online)), judge(("n1", stopped), ("n2", stopped))
    assert after.severity is Severity.OK  # stopped on purpose: no severity changes...
    assert [e.text for e in state_changes(before, after, 1.0)] == ["database neo4j online, primary → offline, primary"]
    assert [e.text for e in state_changes(after, before, 2.0)] == ["database neo4j offline, primary → online, primary"]
