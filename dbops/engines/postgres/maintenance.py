"""What the maintenance runbooks (postgres.vacuum, postgres.reindex-concurrently) ask of a
server: resolving the names an operator typed to relations (never interpolating the text),
watching a long statement's progress from pg_stat_progress_* on a second connection, and finding
the invalid indexes a failed REINDEX CONCURRENTLY leaves behind.

No runbook or UI code here; the runbooks own their connections and call these.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dbops.engines.postgres.tables import quote_ident
from dbops.model import first_line
from dbops.secrets import scrub_text

# A relation the operator named, as the server resolved it (search_path applies to a bare name).
RESOLVE = """
SELECT c.oid::int8 AS oid, n.nspname AS schema, c.relname AS name, c.relkind::text AS kind, c.relpages::int8 AS pages,
       i.indrelid::int8 AS table_oid, t.relname AS table_name,
       pg_relation_size(c.oid) AS size_bytes,
       pg_stat_get_dead_tuples(c.oid) AS dead,
       n.nspname IN ('pg_catalog', 'information_schema') OR n.nspname ~ '^pg_toast' AS system,
       coalesce(i.indisvalid, true) AS valid,
       EXISTS (SELECT 1 FROM pg_constraint x WHERE x.conindid = c.oid AND x.contype = 'x') AS exclusion,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR pg_has_role(c.relowner, 'USAGE') AS owned
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_index i ON i.indexrelid = c.oid
LEFT JOIN pg_class t ON t.oid = i.indrelid
WHERE c.oid = to_regclass($1)
"""

# The invalid indexes of one table (by oid): where a failed REINDEX/CREATE INDEX CONCURRENTLY's
# leftovers are.
INVALID_INDEXES = """
SELECT n.nspname AS schema, c.relname AS name
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.indrelid = $1 AND NOT i.indisvalid
ORDER BY 1, 2
"""

INDEX_VALID = """
SELECT i.indisvalid AND i.indisready AS valid, pg_relation_size(i.indexrelid) AS size_bytes
FROM pg_index i WHERE i.indexrelid = to_regclass($1)
"""

# What one backend is doing now, from whichever progress view has it. `done`/`total` are the
# blocks of the table the phase walks through (heap blocks for VACUUM: scanned, or vacuumed while
# vacuuming the heap); tuples when CREATE INDEX counts tuples; total 0 when the phase counts
# nothing. `waiting` names a lock or buffer pin it waits for (not I/O: that is working).
PROGRESS = """
WITH p AS (
  SELECT 'VACUUM' AS command, phase,
         CASE WHEN phase = 'vacuuming heap' THEN heap_blks_vacuumed ELSE heap_blks_scanned END AS done,
         heap_blks_total AS total, 'heap blocks' AS unit, relid
  FROM pg_stat_progress_vacuum WHERE pid = $1
  UNION ALL
  SELECT 'ANALYZE', phase, sample_blks_scanned, sample_blks_total, 'sample blocks', relid
  FROM pg_stat_progress_analyze WHERE pid = $1
  UNION ALL
  SELECT command, phase,
         CASE WHEN blocks_total > 0 THEN blocks_done ELSE tuples_done END,
         CASE WHEN blocks_total > 0 THEN blocks_total ELSE tuples_total END,
         CASE WHEN blocks_total > 0 THEN 'blocks' ELSE 'tuples' END, relid
  FROM pg_stat_progress_create_index WHERE pid = $1
)
SELECT p.command, p.phase, p.done, p.total, p.unit, coalesce(n.nspname || '.' || c.relname, '') AS relation,
       (SELECT a.wait_event_type || ': ' || a.wait_event FROM pg_stat_activity a
        WHERE a.pid = $1 AND a.wait_event_type IN ('Lock', 'BufferPin')) AS waiting
FROM p
LEFT JOIN pg_class c ON c.oid = p.relid
LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
LIMIT 1
"""

# A failed REINDEX INDEX CONCURRENTLY leaves <index>_ccnew[N] (the new copy, before the swap)
# or <index>_ccold[N] (the old one, after it); both invalid. Names may be cut to fit 63 bytes.
CONCURRENT_LEFTOVER = re.compile(r"_cc(new|old)[0-9]*$")


@dataclass(frozen=True)
class Relation:
    """A relation an operator named, resolved by the server."""

    given: str  # what the operator typed
    oid: int
    schema: str
    name: str
    kind: str  # pg_class.relkind
    pages: int
    size_bytes: int
    dead: int
    system: bool
    valid: bool  # an index: pg_index.indisvalid
    exclusion: bool  # an index backing an exclusion constraint
    owned: bool  # the user may VACUUM/REINDEX it (owner, member of the owner, or superuser)
    table_oid: int | None = None  # an index: its table
    table_name: str | None = None

    @property
    def quoted(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Progress:
    command: str  # VACUUM, ANALYZE, REINDEX CONCURRENTLY ...
    phase: str
    done: int
    total: int
    unit: str
    relation: str
    waiting: str | None = None  # the lock or buffer pin it waits for

    @property
    def percent(self) -> float | None:
        return 100.0 * min(self.done, self.total) / self.total if self.total > 0 else None

    def describe(self) -> str:
        pct = self.percent
        where = f"{self.relation}: " if self.relation else ""
        amount = f", {self.done} of {self.total} {self.unit} ({pct:.0f}%)" if pct is not None else ""
        wait = f", waiting for {self.waiting}" if self.waiting else ""
        return f"{where}{self.command} {self.phase}{amount}{wait}"


def names(raw: object) -> list[str]:
    """The operator's comma-separated list: trimmed, empty entries and repeats dropped, in order.
    (A name with a comma in it cannot be given; quoting rules are the server's, via to_regclass.)"""
    out: list[str] = []
    for part in str(raw or "").split(","):
        part = part.strip()
        if part and part not in out:
            out.append(part)
    return out


def relation(given: str, row: Any) -> Relation:
    return Relation(
        given=given, oid=int(row["oid"]), schema=row["schema"], name=row["name"], kind=row["kind"], pages=int(row["pages"]),
        size_bytes=int(row["size_bytes"] or 0), dead=int(row["dead"] or 0), system=bool(row["system"]),
        valid=bool(row["valid"]), exclusion=bool(row["exclusion"]), owned=bool(row["owned"]),
        table_oid=None if row["table_oid"] is None else int(row["table_oid"]), table_name=row["table_name"],
    )


def progress(row: Any) -> Progress:
    return Progress(row["command"], row["phase"], int(row["done"] or 0), int(row["total"] or 0), row["unit"],
                    row["relation"] or "", row["waiting"])


def leftovers(before: list[str], after: list[str]) -> list[str]:
    """Invalid indexes present now that were not before and are named as REINDEX CONCURRENTLY
    names its temporary copies: what a failed run of it left."""
    return [name for name in after if name not in before and CONCURRENT_LEFTOVER.search(name.rsplit(".", 1)[-1].strip('"'))]


def leftover_advice(left: list[str]) -> str:
    """What an operator does about leftovers dbops could not drop."""
    drops = "; ".join(f"DROP INDEX CONCURRENTLY {name}" for name in left)
    return (f"left behind (invalid, not used by queries, but updated by every write): {', '.join(left)}; "
            f"drop them once nothing blocks them (a long transaction on the table): {drops}")


async def resolve(conn: Any, given: str, timeout: float | None) -> Relation | str:
    """The relation `given` names, or why it names none (one line)."""
    asyncpg = sys.modules.get("asyncpg")
    try:
        row = await conn.fetchrow(RESOLVE, given, timeout=timeout)
    except Exception as exc:
        if asyncpg is not None and isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, asyncpg.QueryCanceledError):
            return f"{given!r} is not a valid name: {scrub_text(first_line(str(exc)))}"
        raise
    if row is None:
        return f"{given!r}: no such relation (a bare name is looked up in the search_path; give schema.name)"
    return relation(given, row)


async def invalid_indexes(conn: Any, table_oid: int, timeout: float | None) -> list[str]:
    rows = await conn.fetch(INVALID_INDEXES, table_oid, timeout=timeout)
    return [f"{quote_ident(r['schema'])}.{quote_ident(r['name'])}" for r in rows]


async def read_progress(conn: Any, pid: int, timeout: float) -> Progress | None:
    row = await conn.fetchrow(PROGRESS, pid, timeout=timeout)
    return progress(row) if row is not None else None


async def watched(statement: Awaitable[Any], watch: Callable[[], Awaitable[Progress | None]],
                  report: Callable[[Progress], None], failed: Callable[[BaseException], None],
                  interval: float = 0.5) -> Any:
    """Run `statement` (on its own connection) and, until it ends, read its progress with
    `watch` (on another) every `interval` seconds, handing each reading to `report`. The
    statement's result or error is returned or raised as is; a failed progress read goes to
    `failed` and never stops the statement (the next read is tried)."""
    task = asyncio.ensure_future(statement)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval)
            if done:
                return task.result()
            try:
                seen = await watch()
            except Exception as exc:  # progress is advisory: said, and the statement goes on
                failed(exc)
                continue
            if seen is not None:
                report(seen)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
