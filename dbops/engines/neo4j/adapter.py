"""Neo4j adapter: one async Bolt driver per member, reused across refreshes, and the reads and
actions the runbooks use.

The neo4j driver is imported on first connect, in a worker thread, so the UI's first paint never
waits for it. One refresh, on the system database: CALL dbms.components() (version, edition),
SHOW DATABASES YIELD *, SHOW SERVERS YIELD * (enterprise; on community a note, not an error),
SHOW TRANSACTIONS. Every statement carries dbops' transaction metadata (so dbops' own statements
are left out of the transactions shown) and a server-side timeout.

TLS: Bolt has no in-band negotiation, so `disable` and `prefer` are bolt://, `require` is
bolt+ssc:// (encrypted, certificate not checked), `verify-full` is bolt+s://. `verify-ca`, a
custom CA (tls.ca_file) and a client certificate need an SSL context of dbops' own, which the
driver takes only with bolt:// and encrypted=True.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from dbops.config import ClusterRef, Member
from dbops.engines.base import Adapter, common_reachability, import_off_loop, redacted, tls_reachability
from dbops.engines.neo4j.data import (
    SERVERS_ENTERPRISE_ONLY,
    Database,
    Neo4jMemberData,
    Transaction,
    database_from_row,
    longest_first,
    server_from_row,
    terminate_statement,
    transaction_from_row,
)
from dbops.model import Reachability, first_line
from dbops.secrets import Secret, resolve
from dbops.tls import client_context

# Marks every statement dbops runs, so SHOW TRANSACTIONS can leave dbops' own out and an
# operator can tell them apart in the server's query log.
METADATA = {"app": "dbops"}
# SHOW TRANSACTIONS with named columns on 5.x: `parameters` (which may hold passwords) is never
# fetched. 4.4 names its columns differently and is read with YIELD *, its parameters ignored.
TRANSACTION_COLUMNS = ("transactionId", "database", "username", "clientAddress", "status", "elapsedTime", "cpuTime",
                       "waitTime", "idleTime", "estimatedUsedHeapMemory", "activeLockCount", "currentQuery", "metaData")
SHOW_TRANSACTIONS = "SHOW TRANSACTIONS YIELD " + ", ".join(TRANSACTION_COLUMNS)
STORE_PROCEDURE = "apoc.monitor.store"
STORE_MISSING = f"store size: not available (needs APOC Extended's {STORE_PROCEDURE}())"

def scheme(ref: ClusterRef) -> str:
    """The Bolt URI scheme the cluster's tls.mode stands for (what the docs and messages name)."""
    return {"disable": "bolt", "prefer": "bolt", "require": "bolt+ssc"}.get(ref.cluster.tls.mode, "bolt+s")


def bolt_target(ref: ClusterRef, member: Member) -> tuple[str, dict[str, Any]]:
    """The URI and the driver's TLS keyword arguments for one member."""
    tls = ref.cluster.tls
    address = f"{member.host}:{member.port}"
    custom = tls.mode == "verify-ca" or (tls.mode in ("require", "verify-full") and (tls.ca_file or tls.cert_file))
    if not custom:
        return f"{scheme(ref)}://{address}", {}
    ctx = client_context(tls)
    return f"bolt://{address}", {"encrypted": True, "ssl_context": ctx}


class Neo4jAdapter(Adapter):
    kind = "neo4j"

    def __init__(self, cluster: ClusterRef, member: Member) -> None:
        super().__init__(cluster, member)
        self._driver: Any = None
        self._secret: Secret | None = None
        self._lock = asyncio.Lock()
        self._has_store_procedure: bool | None = None  # asked once per connection

    @property
    def where(self) -> str:
        return f"{self.member.host}:{self.member.port}"

    # -- connection ------------------------------------------------------------------------------

    async def open_driver(self) -> Any:
        """A new AsyncDriver for this member with the cluster's credentials and TLS, not managed
        by the adapter (runbooks own theirs). The caller closes it."""
        neo4j = await import_off_loop("neo4j")
        cluster = self.cluster.cluster
        self._secret = resolve(cluster.password)  # SecretError: an AUTH state, never a crash
        uri, tls_kwargs = bolt_target(self.cluster, self.member)
        timeout = self.cluster.timeout
        return neo4j.AsyncGraphDatabase.driver(
            uri,
            auth=(cluster.user or "neo4j", self._secret.reveal() if self._secret is not None else ""),
            connection_timeout=timeout,
            connection_acquisition_timeout=timeout,
            max_connection_pool_size=4,
            user_agent="dbops",
            **tls_kwargs,
        )

    async def _ensure(self) -> Any:
        if self._driver is None:
            self._driver = await self.open_driver()
            self._has_store_procedure = None
        return self._driver

    async def close(self) -> None:
        driver, self._driver = self._driver, None
        if driver is not None:
            # A dead server cannot say goodbye: the poller bounds this, and the sockets go with the driver.
            await driver.close()

    async def run(self, query: str, database: str = "system", timeout: float | None = None, **params: Any) -> list[dict[str, Any]]:
        """The rows of one auto-commit statement on this member, as dicts, under a server-side
        timeout (the cluster's, unless given)."""
        async with self._lock:
            return await self._run(query, database, timeout, params)

    async def _run(self, query: str, database: str, timeout: float | None, params: dict[str, Any]) -> list[dict[str, Any]]:
        neo4j = await import_off_loop("neo4j")
        driver = await self._ensure()
        statement = neo4j.Query(query, metadata=METADATA, timeout=timeout or self.cluster.timeout)
        async with driver.session(database=database, fetch_size=-1) as session:
            result = await session.run(statement, params)
            return [record.data() async for record in result]

    # -- collect ---------------------------------------------------------------------------------

    async def collect(self) -> Neo4jMemberData:
        async with self._lock:
            neo4j = await import_off_loop("neo4j")
            components = await self._run("CALL dbms.components() YIELD name, versions, edition", "system", None, {})
            kernel = next((c for c in components if c.get("name") == "Neo4j Kernel"), components[0] if components else {})
            version = str((kernel.get("versions") or ["?"])[0])
            edition = str(kernel.get("edition") or "?")
            databases = tuple(database_from_row(r) for r in await self._run("SHOW DATABASES YIELD *", "system", None, {}))
            servers = None
            servers_note = None
            try:
                servers = tuple(server_from_row(r) for r in await self._run("SHOW SERVERS YIELD *", "system", None, {}))
            except neo4j.exceptions.ClientError as exc:
                # Community answers "Unsupported administration command: SHOW SERVERS"; 4.4 has
                # no such command at all. Either way a fact about the edition, not a failure.
                if edition == "community" or version.startswith("4."):
                    servers_note = SERVERS_ENTERPRISE_ONLY if edition == "community" else "SHOW SERVERS: needs Neo4j 5"
                else:
                    servers_note = f"SHOW SERVERS failed: {exc.code}: {first_line(exc.message or '')}"
            query = "SHOW TRANSACTIONS YIELD *" if version.startswith("4.") else SHOW_TRANSACTIONS
            rows = await self._run(query, "system", None, {})
            transactions = longest_first([transaction_from_row(r) for r in rows if not _is_ours(r)])
            store, store_note = await self._store_sizes(databases)
            return Neo4jMemberData(version=version, edition=edition, databases=databases, transactions=transactions,
                                   servers=servers, servers_note=servers_note, store_bytes=store, store_note=store_note)

    async def _store_sizes(self, databases: tuple[Database, ...]) -> tuple[dict[str, int] | None, str | None]:
        if self._has_store_procedure is None:
            found = await self._run("SHOW PROCEDURES YIELD name WHERE name = $name RETURN name", "system", None,
                                    {"name": STORE_PROCEDURE})
            self._has_store_procedure = bool(found)
        if not self._has_store_procedure:
            return None, STORE_MISSING
        neo4j = await import_off_loop("neo4j")
        sizes: dict[str, int] = {}
        unread: list[str] = []
        for name in sorted({d.name for d in databases if d.type == "standard" and d.current_status == "online"}):
            try:
                rows = await self._run(f"CALL {STORE_PROCEDURE}() YIELD totalStoreSize", name, None, {})
            except neo4j.exceptions.Neo4jError as exc:
                # A database this server does not host (a cluster) or one stopping meanwhile: its
                # size is unknown; the rest of the refresh stands.
                unread.append(f"{name} ({exc.code})")
                continue
            if rows and rows[0].get("totalStoreSize") is not None:
                sizes[name] = int(rows[0]["totalStoreSize"])
        return sizes, (f"store size not read for {', '.join(unread)}" if unread else None)

    # -- runbook actions -------------------------------------------------------------------------

    async def transactions(self) -> tuple[Transaction, ...]:
        """Every transaction on this member now (dbops' own left out), longest first."""
        return (await self.collect()).transactions

    async def terminate(self, ids: list[str]) -> dict[str, str]:
        """Run terminate_statement(ids), the text the runbook's plan shows: transaction id -> the
        server's answer ("Transaction terminated.", "Transaction not found." ...)."""
        rows = await self.run(terminate_statement(ids) + " YIELD transactionId, message")
        return {str(r["transactionId"]): str(r["message"]) for r in rows}

    async def counts(self, database: str) -> tuple[int, int]:
        """(nodes, relationships) of a database, from the count store (constant time)."""
        nodes = await self.run("MATCH (n) RETURN count(n) AS c", database=database)
        rels = await self.run("MATCH ()-[r]->() RETURN count(r) AS c", database=database)
        return int(nodes[0]["c"]), int(rels[0]["c"])

    # -- errors ----------------------------------------------------------------------------------

    def classify(self, exc: BaseException) -> tuple[Reachability, str]:
        return redacted(classify(exc, self.where, self.cluster.cluster.user or "neo4j", self.cluster.timeout,
                                 self.cluster.cluster.tls.mode), self._secret)


def _is_ours(row: dict[str, Any]) -> bool:
    meta = row.get("metaData") or {}
    return isinstance(meta, dict) and meta.get("app") == METADATA["app"]


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out and len(out) < 10:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def classify(exc: BaseException, where: str, user: str, timeout: float, tls_mode: str) -> tuple[Reachability, str]:
    """Map an exception from the driver (or from resolving the secret) to a reachability and a
    sentence for an operator. The caller redacts the password."""
    common = common_reachability(exc, where, timeout, user)
    if common is not None:
        return common
    chain = _chain(exc)
    tls = tls_reachability(chain, where)
    if tls is not None:
        return tls
    neo4j = sys.modules.get("neo4j")
    if neo4j is None:  # the failure came before the driver was imported (it may not be installed)
        return Reachability.ERROR, f"{where}: {type(exc).__name__}: {first_line(str(exc))}"
    exs = neo4j.exceptions
    if isinstance(exc, exs.AuthError):
        return Reachability.AUTH, f"{where} rejected user {user}: {first_line(exc.message or str(exc))}"
    if isinstance(exc, exs.Forbidden):
        return Reachability.ERROR, f"{where}: user {user} lacks a privilege: {first_line(exc.message or str(exc))}"
    if isinstance(exc, exs.Neo4jError):
        if exc.code and "TransactionTimedOut" in exc.code:
            return Reachability.TIMEOUT, f"{where} did not finish the refresh within {timeout:g}s"
        return Reachability.ERROR, f"{where} answered an error: {exc.code}: {first_line(exc.message or str(exc))}"
    if any(type(e).__name__ == "BoltSecurityError" for e in chain):
        # The server closed the connection during the TLS handshake: it speaks plain Bolt only.
        return Reachability.TLS, f"{where} does not accept TLS (tls.mode = {tls_mode}: Bolt over TLS)"
    if isinstance(exc, (exs.ServiceUnavailable, exs.SessionExpired, OSError)):
        text = " ".join(str(e) for e in chain)
        if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Errno 111" in text or "refused" in text.lower():
            return Reachability.DOWN, f"connection refused at {where}"
        if any(isinstance(e, (TimeoutError, asyncio.TimeoutError)) for e in chain) or "timed out" in text.lower():
            return Reachability.TIMEOUT, f"no answer from {where} within {timeout:g}s"
        if tls_mode in ("disable", "prefer") and any(type(e).__name__ == "BoltHandshakeError" for e in chain):
            return Reachability.TLS, f"{where} did not answer plain Bolt: it may require TLS (set tls.mode = require or verify-*)"
        return Reachability.DOWN, f"cannot reach {where}: {first_line(str(exc)) or type(exc).__name__}"
    if isinstance(exc, exs.DriverError):
        return Reachability.ERROR, f"{where}: {type(exc).__name__}: {first_line(str(exc))}"
    return Reachability.ERROR, f"{where}: {type(exc).__name__}: {first_line(str(exc))}"
