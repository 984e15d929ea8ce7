"""The Neo4j pane, `dbops check` and the Neo4j runbooks against the sandbox's real Neo4j 5.26
Community server: what one refresh sees, a long-running Cypher transaction judged, shown at
80x24 and terminated through the runbook with its audit trail, the restore's verification
against a counts manifest, a wrong password, and Bolt over TLS (require, verify-ca, verify-full)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from neo4j import GraphDatabase
from neo4j.exceptions import ClientError

from dbops import sandbox
from dbops.audit import AuditLog
from dbops.config import ClusterRef, load, parse
from dbops.engines.neo4j.data import SERVERS_ENTERPRISE_ONLY, Neo4jMemberData
from dbops.model import ClusterHealth, Reachability, Severity
from dbops.poller import poll_once
from dbops.runbook.executor import Executor, ExitCode
from dbops.runbook.journal import Journal, new_run_id
from dbops.runbook.locks import lock_for
from dbops.runbook.model import Context
from dbops.runbook.registry import load as load_runbooks
from dbops.sandbox.neo4j import Neo4jSandbox

NAME = "sandbox-neo4j"
LONG_QUERY = "UNWIND range(1, 10000000000) AS x WITH x WHERE x < 0 RETURN count(*) AS never"


@dataclass
class Neo:
    state_dir: Path
    config: Path
    sb: Neo4jSandbox

    def ref(self) -> ClusterRef:
        return next(r for r in load(self.config).clusters() if r.name == NAME)

    def driver(self) -> Any:
        return GraphDatabase.driver(f"bolt://127.0.0.1:{self.sb.port}", auth=("neo4j", self.sb.password))

    def cypher(self, query: str, **params: Any) -> list[dict[str, Any]]:
        with self.driver() as d:
            records, _, _ = d.execute_query(query, params)
            return [r.data() for r in records]

    def dbops(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**os.environ, "DBOPS_STATE_DIR": str(self.state_dir)})

    def audit(self) -> list[dict[str, Any]]:
        path = self.state_dir / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def neo(neo4j_root: Path) -> Iterator[Neo]:
    sandbox.up(("neo4j",), root=neo4j_root)  # shared (conftest): up again if another module stopped it
    yield Neo(neo4j_root.parent, sandbox.config_path(root=neo4j_root), Neo4jSandbox(neo4j_root))


@dataclass
class LongTransaction:
    """A Cypher statement that runs until it is terminated, in a thread of its own."""

    neo: Neo
    error: list[BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None

    def __enter__(self) -> LongTransaction:
        def run() -> None:
            try:
                self.neo.cypher(LONG_QUERY)
            except BaseException as exc:  # the terminated statement's error, read by the test
                self.error.append(exc)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # Whatever the test did, the statement must not outlive it.
        if self.thread is not None and self.thread.is_alive():
            rows = self.neo.cypher("SHOW TRANSACTIONS YIELD transactionId, currentQuery")
            ids = [r["transactionId"] for r in rows if r["currentQuery"] == LONG_QUERY]
            if ids:
                self.neo.cypher("TERMINATE TRANSACTIONS $ids", ids=ids)
            self.thread.join(timeout=30)


def health(neo: Neo, ref: ClusterRef | None = None) -> ClusterHealth:
    """One refresh, as the pane and `dbops check` do it."""
    return asyncio.run(poll_once([ref or neo.ref()]))[0]


def wait_for(neo: Neo, predicate: Any, what: str, timeout: float = 60.0) -> ClusterHealth:
    deadline = time.monotonic() + timeout
    while True:
        ch = health(neo)
        if predicate(ch):
            return ch
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}; problems: {ch.problems}")
        time.sleep(0.3)


def long_ones(ch: ClusterHealth) -> list[Any]:
    data = ch.members[0].snapshot.data
    return [t for t in data.transactions if t.query.startswith("UNWIND range")] if isinstance(data, Neo4jMemberData) else []


def test_a_refresh_shows_version_databases_and_that_servers_are_enterprise_only(neo: Neo) -> None:
    ch = health(neo)
    assert ch.severity is Severity.OK, ch.problems
    n1 = ch.members[0]
    assert (n1.name, n1.role, n1.snapshot.reachability) == ("n1", "primary", Reachability.UP)
    data = n1.snapshot.data
    assert data.version.startswith("5.26.") and data.edition == "community"
    assert {(d.name, d.current_status, d.writer) for d in data.databases} == {("neo4j", "online", True), ("system", "online", True)}
    assert data.servers is None and data.servers_note == SERVERS_ENTERPRISE_ONLY
    # The refresh's own statements are never listed as transactions.
    assert not any("SHOW TRANSACTIONS" in t.query for t in data.transactions)


def test_a_long_transaction_is_judged_checked_terminated_by_the_runbook_and_audited(neo: Neo) -> None:
    with LongTransaction(neo) as long:
        ch = wait_for(neo, lambda c: any(t.elapsed_ms > 500 for t in long_ones(c)), "the long transaction past 500 ms")
        tx = long_ones(ch)[0]
        assert ch.severity is Severity.WARN
        assert any(p.startswith(f"n1: {len(long_ones(ch))} transaction(s) over 500 ms; longest {tx.id} (neo4j on neo4j)")
                   for p in ch.problems), ch.problems

        check = neo.dbops("check")
        assert check.returncode == 1, check.stdout + check.stderr
        assert "WARN" in check.stdout and tx.id in check.stdout and "UNWIND range" in check.stdout

        refused = neo.dbops("runbook", "run", "neo4j.terminate-transactions", "--cluster", NAME,
                            "--param", "user=nobody-like-this", "--yes")
        assert refused.returncode == int(ExitCode.REFUSED)
        assert "nothing to do: no transaction matches (user nobody-like-this)" in refused.stdout

        r = neo.dbops("runbook", "run", "neo4j.terminate-transactions", "--cluster", NAME,
                      "--param", "older_than=500ms", "--param", "query=unwind range", "--yes")
        assert r.returncode == 0, r.stdout + r.stderr
        # The plan named exactly this transaction and the statement that ends it.
        assert f'TERMINATE TRANSACTIONS "{tx.id}"' in r.stdout
        assert f"{tx.id}: Transaction terminated." in r.stdout
        assert f"verify: 1 transaction(s) gone: {tx.id}" in r.stdout
        assert long.thread is not None
        long.thread.join(timeout=30)
        assert isinstance(long.error[0], ClientError) and "Terminated" in (long.error[0].code or "")

    run_id = r.stdout.strip().splitlines()[-1].split()[-1]
    mine = [(x["phase"], x["step"], x.get("outcome")) for x in neo.audit() if x.get("run_id") == run_id]
    assert mine == [("intent", "terminate", None), ("result", "terminate", "ok")]
    intent = next(x for x in neo.audit() if x.get("run_id") == run_id and x["phase"] == "intent")
    assert f'TERMINATE TRANSACTIONS "{tx.id}"' in intent["params"]["commands"]
    assert neo.sb.password not in (neo.state_dir / "audit.jsonl").read_text()
    after = wait_for(neo, lambda c: not long_ones(c), "the transaction to be gone")
    assert after.severity is Severity.OK, after.problems


def test_a_selection_is_required(neo: Neo) -> None:
    r = neo.dbops("runbook", "run", "neo4j.terminate-transactions", "--cluster", NAME, "--yes")
    assert r.returncode == int(ExitCode.REFUSED)
    assert "give at least one of --param older_than=, user=, query=, database=, ids=" in r.stdout


class Operator:
    """Answers the runbook as an operator at a terminal would: yes, the cluster's name, and
    'done' after running the manual step's commands (here: `load`, which puts the data back)."""

    def __init__(self, load: Any) -> None:
        self.load = load
        self.shown: list[str] = []

    async def confirm(self, step: Any, commands: list[str], ctx: Context) -> bool:
        return True

    async def manual_done(self, step: Any, commands: list[str], ctx: Context) -> bool:
        self.shown += commands
        self.load()
        return True


def restore(neo: Neo, manifest: Path, load: Any) -> tuple[Any, Operator]:
    ref = neo.ref()
    book = load_runbooks()[0]["neo4j.restore"].for_cluster(ref)
    op = Operator(load)
    run_id = new_run_id()
    ctx = Context(ref, {"database": "neo4j", "dump": "/backups/graph-nightly.dump", "manifest": str(manifest)}, run_id=run_id)
    ex = Executor(book, ctx, audit=AuditLog(neo.state_dir / "audit.jsonl"), confirmer=op)

    async def go() -> Any:
        assert book.setup is not None and book.teardown is not None
        await book.setup(ctx)
        try:
            return await ex.run(Journal.create(neo.state_dir, run_id), lock_for(ref, run_id, neo.state_dir, lambda _: None))
        finally:
            await book.teardown(ctx)

    return asyncio.run(go()), op


def graph(neo: Neo, people: int) -> None:
    """What the dump holds: `people` nodes in a chain (people - 1 relationships)."""
    neo.cypher("MATCH (n) DETACH DELETE n")
    neo.cypher("UNWIND range(1, $n) AS i CREATE (:Person {i: i})", n=people)
    neo.cypher("MATCH (a:Person), (b:Person) WHERE b.i = a.i + 1 CREATE (a)-[:NEXT]->(b)")


def test_restore_verifies_counts_against_the_manifest(neo: Neo) -> None:
    graph(neo, 40)
    manifest = neo.state_dir / "graph-nightly.manifest.json"
    made = neo.dbops("runbook", "run", "neo4j.count-manifest", "--cluster", NAME, "--param", "database=neo4j",
                     "--param", f"out={manifest}")
    assert made.returncode == 0, made.stdout + made.stderr
    assert f"{manifest}: 40 nodes, 39 relationships" in made.stdout
    assert json.loads(manifest.read_text())["format"] == "dbops-neo4j-counts/1"

    result, op = restore(neo, manifest, load=lambda: graph(neo, 40))
    assert result.code is ExitCode.OK, result.message
    # The operator was shown the community commands, the dump linked under the database's name.
    assert "neo4j stop" in op.shown and "neo4j start" in op.shown
    assert any(c.startswith("neo4j-admin database load --from-path=/var/tmp/dbops-restore-") and
               c.endswith("--overwrite-destination=true neo4j") for c in op.shown)

    result, _ = restore(neo, manifest, load=lambda: graph(neo, 39))
    assert result.code is ExitCode.STEP_FAILED
    assert f"neo4j holds 39 nodes and 38 relationships; the manifest ({manifest}) says 40 nodes and 39 relationships" \
        in result.message
    audited = [(x["step"], x["phase"], x.get("outcome")) for x in neo.audit() if x.get("action", "").startswith("neo4j.restore")]
    assert ("load", "intent", None) in audited and ("load", "result", "ok") in audited


def test_a_wrong_password_is_auth_and_never_shown(neo: Neo, tmp_path: Path) -> None:
    wrong = "not-the-password-" + neo.sb.password[:6]
    ref = parse(f'[environments.sandbox]\nsandbox = true\n[environments.sandbox.clusters.g]\nengine = "neo4j"\n'
                f'password = {{ value = "{wrong}" }}\nmembers = [{{ name = "n1", host = "127.0.0.1", port = {neo.sb.port} }}]\n'
                ).clusters()[0]
    ch = health(neo, ref)
    snap = ch.members[0].snapshot
    assert snap.reachability is Reachability.AUTH and ch.severity is Severity.CRIT
    assert snap.error == f"127.0.0.1:{neo.sb.port} rejected user neo4j: The client is unauthorized due to authentication failure"
    assert wrong not in snap.error and neo.sb.password not in snap.error
    # A secret that cannot be read is an AUTH state too, not a crash.
    missing = parse(f'[environments.e.clusters.g]\nengine = "neo4j"\npassword = {{ env = "DBOPS_TEST_UNSET_NEO4J_PW" }}\n'
                    f'members = [{{ name = "n1", host = "127.0.0.1", port = {neo.sb.port} }}]\n').clusters()[0]
    snap = health(neo, missing).members[0].snapshot
    assert (snap.reachability, snap.error) == (Reachability.AUTH, "password for neo4j: environment variable DBOPS_TEST_UNSET_NEO4J_PW is not set")


def tls_ref(neo: Neo, tls: str, host: str = "127.0.0.1") -> ClusterRef:
    return parse(f'[environments.sandbox]\nsandbox = true\n[environments.sandbox.clusters.g]\nengine = "neo4j"\n'
                 f'password = {{ value = "{neo.sb.password}" }}\ntls = {tls}\n'
                 f'members = [{{ name = "n1", host = "{host}", port = {neo.sb.port} }}]\n').clusters()[0]


def test_bolt_over_tls_require_verify_ca_and_verify_full(neo: Neo, tmp_path: Path) -> None:
    ca = neo.sb.ca_file
    for tls in ('{ mode = "require" }', f'{{ mode = "verify-ca", ca_file = "{ca}" }}', f'{{ mode = "verify-full", ca_file = "{ca}" }}'):
        ch = health(neo, tls_ref(neo, tls))
        assert ch.members[0].snapshot.reachability is Reachability.UP, (tls, ch.problems)
        assert ch.members[0].snapshot.data.version.startswith("5.26.")
    # verify-full checks the name: the certificate is for 127.0.0.1, not localhost.
    snap = health(neo, tls_ref(neo, f'{{ mode = "verify-full", ca_file = "{ca}" }}', host="localhost")).members[0].snapshot
    assert snap.reachability is Reachability.TLS and "certificate is not valid for 'localhost'" in (snap.error or "")
    # Another CA (the system's, or one made here) does not vouch for the sandbox's certificate.
    other = tmp_path / "other.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "other.key"),
                    "-out", str(other), "-days", "2", "-subj", "/CN=other-ca"], check=True, capture_output=True)
    for tls in ('{ mode = "verify-full" }', f'{{ mode = "verify-ca", ca_file = "{other}" }}'):
        snap = health(neo, tls_ref(neo, tls)).members[0].snapshot
        assert snap.reachability is Reachability.TLS, (tls, snap.error)
        assert snap.error == f"TLS certificate of 127.0.0.1:{neo.sb.port} not trusted: self-signed certificate"
    snap = health(neo, tls_ref(neo, '{ mode = "verify-ca", ca_file = "/nonexistent/ca.pem" }')).members[0].snapshot
    assert (snap.reachability, snap.error) == (Reachability.TLS, "tls.ca_file /nonexistent/ca.pem does not exist")


async def test_the_pane_at_80x24_shows_the_long_transaction(neo: Neo, tmp_path: Path) -> None:
    from textual.widgets import DataTable, Static, TabbedContent

    from dbops.screens.app import DbopsApp
    from dbops.screens.neo4j import Neo4jScreen

    from .test_ui_live import rows, settle

    with LongTransaction(neo):
        app = DbopsApp(load(neo.config), state_dir=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot, lambda: NAME in rows(app.screen.query_one("#clusters", DataTable)), "overview row")
            app.open_cluster(next(r.key for r in app.hub.refs if r.name == NAME))
            await settle(pilot, lambda: isinstance(app.screen, Neo4jScreen), "the Neo4j pane")
            pane = app.screen
            members = pane.query_one("#n4j-members", DataTable)
            txs = pane.query_one("#n4j-tx", DataTable)
            await settle(pilot, lambda: "5.26.2 community" in rows(members), "n1 with its version", show=lambda: rows(members))
            await settle(pilot, lambda: "UNWIND range(1, 10000000000)" in rows(txs) and "WARN" in rows(members),
                         "the long transaction, judged WARN", show=lambda: rows(members) + "\n" + rows(txs))
            # What the operator reads on the 80-column screen: the id, its age and the query.
            row = txs.get_row_at(0)
            assert str(row[0]).startswith("neo4j-transaction-") and str(row[3]).startswith("UNWIND range")
            assert "transaction(s) over 500 ms" in str(pane.query_one("#status", Static).render())
            await pilot.press("3")
            assert pane.query_one("#tabs", TabbedContent).active == "servers"
            assert SERVERS_ENTERPRISE_ONLY in str(pane.query_one("#n4j-servers-note", Static).render())
            await pilot.press("2")
            assert "neo4j@localhost:7687 online" in rows(pane.query_one("#n4j-dbs", DataTable))
            await pilot.press("4")
            assert "WARN" in str(pane.query_one("#health-text", Static).render())
