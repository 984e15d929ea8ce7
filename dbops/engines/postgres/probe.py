"""PostgreSQL's drill probe (dbops.drill.probe.Probe): one row per write in a table the drill
creates and drops, written the way the cluster's clients write: through PgBouncer when the
cluster has one (so a drill measures the pooler's repointing too), otherwise to whichever member
answers as primary now.

PgBouncer pools by transaction, so the probe sends plain statements (the simple query protocol:
no prepared statements, which a transaction pool cannot keep) with the numbers written in.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from dbops.config import ClusterRef, Member
from dbops.engines.base import import_off_loop
from dbops.secrets import resolve

TABLE = "dbops_drill_probe"
APPLICATION_NAME = "dbops-drill-probe"
BATCH = 5000  # seqs per present() query


class PostgresProbe:
    def __init__(self, ref: ClusterRef, run_id: str, *, table: str = TABLE, member: Member | None = None):
        self.ref = ref
        self.run_id = run_id
        self.table = table
        pool = ref.cluster.pgbouncer
        # A given member (a scratch copy's): that server only. Otherwise the pooler, or the primary.
        self.member = member
        self.via_pooler = member is None and pool is not None
        if member is not None:
            self.target = f"table {table} on {member.host}:{member.port}"
        elif pool is not None:
            self.target = f"table {table} through PgBouncer {pool.host}:{pool.port}"
        else:
            self.target = f"table {table} on the primary"
        self._conn: Any = None
        self._run = f"'{_literal(run_id)}'"  # the run id as an SQL literal (simple query protocol)

    def commands(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.table} (run_id text NOT NULL, seq bigint NOT NULL, "
            "written_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (run_id, seq))",
            f"INSERT INTO {self.table} (run_id, seq) VALUES ('<run id>', <seq>)  -- every 0.1 s, autocommit",
            f"SELECT 1 FROM {self.table} WHERE run_id = '<run id>' AND seq = <seq>  -- read back",
            f"DELETE FROM {self.table} WHERE run_id = '<run id>'; DROP TABLE {self.table} when no other drill's rows "
            "are left  -- at the end of the drill",
        ]

    async def _connect_to(self, host: str, port: int) -> Any:
        asyncpg = await import_off_loop("asyncpg")
        cluster = self.ref.cluster
        secret = resolve(cluster.password)
        from dbops.engines.postgres.adapter import PostgresAdapter

        # The adapter's TLS settings, for the same member set-up as the console's own connections.
        ssl = PostgresAdapter(self.ref, Member(name="probe", host=host, port=port))._ssl()
        timeout = self.ref.timeout
        return await asyncpg.connect(
            host=host, port=port, user=cluster.user, database=cluster.database,
            password=secret.reveal() if secret is not None else None, ssl=ssl, timeout=timeout,
            statement_cache_size=0,
            server_settings={"application_name": APPLICATION_NAME,
                             "statement_timeout": str(int(timeout * 1000))} if not self.via_pooler else {},
        )

    async def _primary(self) -> Any:
        last: BaseException | None = None
        for m in self.ref.cluster.members:
            assert m.port is not None
            try:
                conn = await self._connect_to(m.host, m.port)
            except Exception as exc:  # the next member may be the primary now
                last = exc
                continue
            if not await conn.fetchval("SELECT pg_is_in_recovery()"):
                return conn
            await conn.close()
        raise ConnectionError(f"no member of {self.ref.key} answers as primary" + (f" (last error: {last})" if last else ""))

    async def _ensure(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            if self.member is not None:
                assert self.member.port is not None
                self._conn = await self._connect_to(self.member.host, self.member.port)
            elif self.via_pooler:
                pool = self.ref.cluster.pgbouncer
                assert pool is not None
                self._conn = await self._connect_to(pool.host, pool.port)
            else:
                self._conn = await self._primary()
        return self._conn

    async def open(self) -> None:
        conn = await self._ensure()
        await conn.execute(self.commands()[0])

    async def write(self, seq: int) -> None:
        conn = await self._ensure()
        await conn.execute(f"INSERT INTO {self.table} (run_id, seq) VALUES ({self._run}, {int(seq)})")

    async def read(self, seq: int) -> bool:
        conn = await self._ensure()
        return await conn.fetchval(f"SELECT count(*) FROM {self.table} WHERE run_id = {self._run} AND seq = {int(seq)}") == 1

    async def present(self, seqs: Sequence[int]) -> set[int]:
        conn = await self._ensure()
        found: set[int] = set()
        wanted = sorted(set(seqs))
        for i in range(0, len(wanted), BATCH):
            chunk = wanted[i:i + BATCH]
            rows = await conn.fetch(f"SELECT seq FROM {self.table} WHERE run_id = {self._run} "
                                    f"AND seq = ANY('{{{','.join(map(str, chunk))}}}'::bigint[])")
            found.update(int(r["seq"]) for r in rows)
        return found

    async def rows(self) -> int:
        conn = await self._ensure()
        return int(await conn.fetchval(f"SELECT count(*) FROM {self.table} WHERE run_id = {self._run}"))

    async def reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def close(self, drop: bool) -> None:
        try:
            if drop:
                deadline = time.monotonic() + self.ref.timeout * 3
                while True:  # right after a failover the pooler may still be reconnecting
                    try:
                        conn = await self._ensure()
                        await conn.execute(f"DELETE FROM {self.table} WHERE run_id = {self._run}")
                        # Another drill on this cluster may still be writing: its rows keep the table.
                        if not await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {self.table})"):
                            await conn.execute(f"DROP TABLE IF EXISTS {self.table}")
                        break
                    except Exception:
                        await self.reset()
                        if time.monotonic() > deadline:
                            raise
        finally:
            await self.reset()


def _literal(text: str) -> str:
    return text.replace("'", "''")
