"""Neo4j's drill probe (dbops.drill.probe.Probe): one node (:DbopsDrillProbe {run_id, seq}) per
write, in the home database, each CREATE an auto-commit transaction that returns once the server
has committed it. The driver is set up like the engine's (bolt_target: the cluster's TLS; its
user and password; dbops' transaction metadata, so the pane leaves the probe's transactions out).

One member: Bolt straight to it, as the adapter connects. Several (a Neo4j cluster): the routing
driver (neo4j://, every member a seed), which is how the cluster's clients write: to the
database's leader of the moment, found again after a reset. Reads go to the leader too (write
access): a follower may not have applied the write yet, and a bookmark that chains them could name
a transaction a restored database never had, and hold every read until it timed out.

The index on (run_id, seq) keeps a read-back a seek however many probe nodes there are; it is
created by open() (Community has range indexes) and dropped by close(drop=True) when no probe node
is left. Without the privilege to create it (a user with no index management) the probe works
unindexed: a read then scans the label, which holds this drill's nodes only (a few thousand, one
per 0.1 s), as every run deletes its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from dbops.config import ClusterRef
from dbops.engines.base import import_off_loop
from dbops.engines.neo4j.adapter import METADATA, bolt_target
from dbops.secrets import resolve

LABEL = "DbopsDrillProbe"
INDEX = "dbops_drill_probe"
BATCH = 5000  # seqs per present() query, nodes per DETACH DELETE transaction
# One write or read, connecting included, ends within this (the drill loop gives each call 2 s,
# dbops.drill.probe.CALL_TIMEOUT: the difference is the clean-up's, after a failure).
CALL_BOUND = 1.5
CLOSE_BOUND = 2.0  # closing the driver (a dead server cannot say goodbye)


class Neo4jProbe:
    def __init__(self, ref: ClusterRef, run_id: str):
        self.ref = ref
        self.run_id = run_id
        members = ref.cluster.members
        self.routing = len(members) > 1
        where = f"routed over {', '.join(m.name for m in members)}" if self.routing else \
            f"on {members[0].name} ({members[0].host}:{members[0].port})"
        self.target = f"nodes :{LABEL} {{run_id: '{run_id}', seq}} in the home database, {where}"
        self._driver: Any = None
        self.index_note: str | None = None  # why the probe reads without its index, when it does
        self._index_created = False

    def commands(self) -> list[str]:
        return [
            f"CREATE INDEX {INDEX} IF NOT EXISTS FOR (p:{LABEL}) ON (p.run_id, p.seq)",
            f"CREATE (:{LABEL} {{run_id: $run_id, seq: <seq>}})  -- every 0.1 s, auto-commit",
            f"MATCH (p:{LABEL} {{run_id: $run_id, seq: <seq>}}) RETURN count(p)  -- read back",
            f"MATCH (p:{LABEL} {{run_id: $run_id}}) WITH p LIMIT {BATCH} DETACH DELETE p  -- at the end of the drill, "
            f"until none is left; then DROP INDEX {INDEX} if no probe node remains",
        ]

    async def _ensure(self) -> Any:
        if self._driver is None:
            neo4j = await import_off_loop("neo4j")
            cluster = self.ref.cluster
            secret = resolve(cluster.password)
            first = cluster.members[0]
            uri, tls = bolt_target(self.ref, first)
            extra: dict[str, Any] = {}
            if self.routing:
                # bolt://, bolt+ssc://, bolt+s:// -> neo4j://, neo4j+ssc://, neo4j+s://: the same TLS,
                # routed; the resolver makes every configured member a seed, not only the first.
                uri = "neo4j" + uri.removeprefix("bolt")
                seeds = [neo4j.Address((m.host, m.port)) for m in cluster.members]
                extra["resolver"] = lambda _address: seeds
            timeout = min(self.ref.timeout, CALL_BOUND)
            settings: dict[str, Any] = dict(
                auth=(cluster.user or "neo4j", secret.reveal() if secret is not None else ""),
                connection_timeout=timeout,
                connection_acquisition_timeout=timeout,
                max_connection_pool_size=2,
                user_agent="dbops-drill-probe",
                **tls,
                **extra,
            )
            try:
                # The loop never retries inside a call (a failed write is a failed attempt): the
                # driver's own retry of an auto-commit statement the server marks idempotent is off.
                self._driver = neo4j.AsyncGraphDatabase.driver(uri, disable_auto_commit_retries=True, **settings)
            except neo4j.exceptions.ConfigurationError as exc:
                if "disable_auto_commit_retries" not in str(exc):
                    raise
                # A driver from before that retry (dbops takes neo4j>=5) has no such option, and
                # no retry to turn off.
                self._driver = neo4j.AsyncGraphDatabase.driver(uri, **settings)
        return self._driver

    async def _run(self, query: str, timeout: float, **params: Any) -> list[dict[str, Any]]:
        """The rows of one auto-commit statement, fully read (so, for a write, committed)."""
        neo4j = await import_off_loop("neo4j")
        driver = await self._ensure()
        statement = neo4j.Query(query, metadata={**METADATA, "drill": self.run_id}, timeout=timeout)
        async with driver.session(default_access_mode=neo4j.WRITE_ACCESS, fetch_size=-1) as session:
            result = await session.run(statement, params)
            rows = [record.data() async for record in result]
            await result.consume()
            return rows

    async def open(self) -> None:
        neo4j = await import_off_loop("neo4j")
        try:
            await self._run(self.commands()[0], self.ref.timeout)
            self._index_created = True
        except neo4j.exceptions.Forbidden as exc:
            # No index management privilege: the probe still works, reading by label scan (see the
            # module's docstring), and says so.
            self.index_note = f"no index on :{LABEL} ({exc.code}): reads scan the label"
            self.target += f" ({self.index_note})"
            return
        # A new index is populated in the background: until it is online the planner scans.
        await self._run("CALL db.awaitIndex($name, $seconds)", self.ref.timeout * 4,
                        name=INDEX, seconds=int(self.ref.timeout * 3))

    async def write(self, seq: int) -> None:
        async with asyncio.timeout(CALL_BOUND):
            await self._run(f"CREATE (:{LABEL} {{run_id: $run_id, seq: $seq}})", CALL_BOUND, run_id=self.run_id, seq=int(seq))

    async def read(self, seq: int) -> bool:
        async with asyncio.timeout(CALL_BOUND):
            rows = await self._run(f"MATCH (p:{LABEL} {{run_id: $run_id, seq: $seq}}) RETURN count(p) AS n", CALL_BOUND,
                                   run_id=self.run_id, seq=int(seq))
        return bool(rows) and int(rows[0]["n"]) >= 1

    async def present(self, seqs: Sequence[int]) -> set[int]:
        found: set[int] = set()
        wanted = sorted({int(s) for s in seqs})
        for i in range(0, len(wanted), BATCH):
            rows = await self._run(f"MATCH (p:{LABEL} {{run_id: $run_id}}) WHERE p.seq IN $batch RETURN p.seq AS seq",
                                   self.ref.timeout * 2, run_id=self.run_id, batch=wanted[i:i + BATCH])
            found.update(int(r["seq"]) for r in rows)
        return found

    async def count(self) -> int:
        """This run's probe nodes."""
        rows = await self._run(f"MATCH (p:{LABEL} {{run_id: $run_id}}) RETURN count(p) AS n", self.ref.timeout,
                               run_id=self.run_id)
        return int(rows[0]["n"])

    async def reset(self) -> None:
        driver, self._driver = self._driver, None
        if driver is None:
            return
        try:
            await asyncio.wait_for(driver.close(), CLOSE_BOUND)
        except TimeoutError as exc:
            raise TimeoutError(f"the probe's Neo4j driver did not close within {CLOSE_BOUND:g}s") from exc

    async def close(self, drop: bool) -> None:
        try:
            if drop:
                await self._drop()
        finally:
            await self.reset()

    async def _drop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ref.timeout * 3
        while True:  # right after a fault the server (or the cluster's leader) may still be coming back
            try:
                # In batches: one transaction deleting every node of a long drill would need the
                # memory of all of them at once.
                deleted = BATCH
                while deleted:
                    rows = await self._run(f"MATCH (p:{LABEL} {{run_id: $run_id}}) WITH p LIMIT {BATCH} DETACH DELETE p "
                                           "RETURN count(*) AS n", self.ref.timeout * 2, run_id=self.run_id)
                    deleted = int(rows[0]["n"])
                if self._index_created:
                    left = await self._run(f"MATCH (p:{LABEL}) RETURN count(p) AS n", self.ref.timeout)
                    if not left[0]["n"]:  # another drill's nodes still use it otherwise
                        await self._run(f"DROP INDEX {INDEX} IF EXISTS", self.ref.timeout)
                return
            except Exception:
                await self.reset()
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.5)
