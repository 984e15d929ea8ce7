"""Table and index health of one member's database, read on demand (the pane's Tables tab), never
by the poll: estimated table and btree index bloat, indexes never scanned, dead tuples and the
last (auto)vacuum/analyze, and the largest tables.

Bloat is estimated from the planner's statistics only (pg_class.relpages/reltuples and pg_stats'
average widths and null fractions: the statistics-based estimate of check_postgres and of
ioguix/pgsql-bloat-estimation), so reading it scans no table and needs no pgstattuple. It is an
estimate: a table or index whose columns have no statistics yet (never analyzed) gets none, and
it is only as fresh as the last ANALYZE.

Every statement runs on a short-lived connection of its own (application_name "dbops", the
cluster's credentials and TLS) with a statement_timeout, and every list has a LIMIT. A section
that fails (a timeout, a lock held by DDL, no permission) is reported by itself; the others are
still read.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dbops.config import ClusterRef, Member
from dbops.engines.postgres import queries as Q
from dbops.model import first_line
from dbops.secrets import scrub_text

# Rows per list, and how long one statement may run.
LIMIT = 20
STATEMENT_TIMEOUT = 10.0

def _age(ts: str) -> str:
    """Seconds from a timestamp to the server's now(), NULL when the timestamp is NULL."""
    return f"CASE WHEN {ts} IS NOT NULL THEN greatest(0, extract(epoch FROM now() - {ts}))::float8 END"


_USER_SCHEMAS = "{ns}.nspname NOT IN ('pg_catalog', 'information_schema') AND {ns}.nspname !~ '^pg_toast'"

# ioguix/pgsql-bloat-estimation's table_bloat.sql (BSD), for relkind r/m in user schemas: the
# size the live rows would take at the table's fillfactor (tuple header + the average width of
# each column from pg_stats, aligned, per page), compared with the pages the table has.
# Not estimable: never analyzed (reltuples < 0), a column without statistics, or a `name`
# column (whose pg_stats width is misleading).
TABLE_BLOAT = f"""
WITH t AS (
  SELECT n.nspname AS schema, c.relname AS tbl, c.reltuples::float8 AS reltuples,
         c.relpages::float8 AS heappages, coalesce(toast.relpages, 0)::float8 AS toastpages,
         coalesce(toast.reltuples, 0)::float8 AS toasttuples,
         coalesce(substring(array_to_string(c.reloptions, ' ') FROM 'fillfactor=([0-9]+)')::int, 100) AS fillfactor,
         current_setting('block_size')::float8 AS bs,
         CASE WHEN version() ~ 'mingw32|64-bit|x86_64|ppc64|ia64|amd64|aarch64' THEN 8 ELSE 4 END AS ma,
         24 AS page_hdr,
         23 + CASE WHEN max(coalesce(s.null_frac, 0)) > 0 THEN (7 + count(s.attname)::int) / 8 ELSE 0 END AS tpl_hdr_size,
         sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 0))::float8 AS tpl_data_size,
         c.reltuples < 0 OR bool_or(a.atttypid = 'pg_catalog.name'::regtype) OR count(*) <> count(s.attname) AS is_na
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = a.attname AND NOT s.inherited
  LEFT JOIN pg_class toast ON toast.oid = c.reltoastrelid
  WHERE c.relkind IN ('r', 'm') AND {_USER_SCHEMAS.format(ns="n")}
  GROUP BY c.oid, n.nspname, c.relname, c.reltuples, c.relpages, toast.relpages, toast.reltuples, c.reloptions
), sized AS (
  SELECT *, heappages + toastpages AS tblpages,
         4 + tpl_hdr_size + tpl_data_size + 2 * ma
           - CASE WHEN tpl_hdr_size % ma = 0 THEN ma ELSE tpl_hdr_size % ma END
           - CASE WHEN ceil(tpl_data_size)::int % ma = 0 THEN ma ELSE ceil(tpl_data_size)::int % ma END AS tpl_size
  FROM t
), est AS (
  SELECT *, ceil(reltuples / ((bs - page_hdr) * fillfactor / (tpl_size * 100))) + ceil(toasttuples / 4) AS est_pages
  FROM sized
)
SELECT schema, tbl, (tblpages * bs)::int8 AS size_bytes,
       CASE WHEN NOT is_na THEN (greatest(tblpages - est_pages, 0) * bs)::int8 END AS bloat_bytes,
       CASE WHEN NOT is_na AND tblpages > 0 THEN greatest(100 * (tblpages - est_pages) / tblpages, 0) END AS bloat_pct,
       fillfactor, NOT is_na AS estimable, count(*) FILTER (WHERE is_na) OVER () AS not_estimable
FROM est
ORDER BY is_na, bloat_bytes DESC NULLS LAST, size_bytes DESC, schema, tbl
LIMIT $1
"""

# ioguix/pgsql-bloat-estimation's btree_bloat.sql (BSD): per btree index, the leaf pages its
# tuples would fill at its fillfactor (index tuple header, null bitmap when a column has nulls,
# each key column's average width from pg_stats, aligned) against the pages it has. It does not
# know about deduplication (PostgreSQL 13+), so an index with many duplicate keys may be
# smaller than the estimate and its bloat under-reported, never over-reported.
INDEX_BLOAT = f"""
WITH idx AS (
  SELECT n.nspname AS schema, ct.relname AS tbl, ci.relname AS idx, ci.relpages::float8 AS relpages,
         ci.reltuples::float8 AS reltuples, i.indexrelid, i.indrelid,
         coalesce(substring(array_to_string(ci.reloptions, ' ') FROM 'fillfactor=([0-9]+)')::int, 90) AS fillfactor,
         string_to_array(i.indkey::text, ' ')::int[] AS keys, generate_series(1, i.indnatts) AS pos
  FROM pg_index i
  JOIN pg_class ci ON ci.oid = i.indexrelid
  JOIN pg_class ct ON ct.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = ci.relnamespace
  WHERE ci.relam = (SELECT oid FROM pg_am WHERE amname = 'btree') AND ci.relpages > 0 AND {_USER_SCHEMAS.format(ns="n")}
), cols AS (
  SELECT idx.schema, idx.tbl, idx.idx, idx.relpages, idx.reltuples, idx.fillfactor,
         coalesce(ta.atttypid, ia.atttypid) AS atttypid, s.attname AS stat_att, s.null_frac, s.avg_width
  FROM idx
  LEFT JOIN pg_attribute ta ON idx.keys[idx.pos] <> 0 AND ta.attrelid = idx.indrelid AND ta.attnum = idx.keys[idx.pos]
  LEFT JOIN pg_attribute ia ON idx.keys[idx.pos] = 0 AND ia.attrelid = idx.indexrelid AND ia.attnum = idx.pos
  LEFT JOIN pg_stats s ON s.schemaname = idx.schema AND NOT s.inherited
       AND s.tablename = CASE WHEN idx.keys[idx.pos] = 0 THEN idx.idx ELSE idx.tbl END
       AND s.attname = coalesce(ta.attname, ia.attname)
), agg AS (
  SELECT schema, tbl, idx, relpages, reltuples, fillfactor,
         current_setting('block_size')::float8 AS bs,
         CASE WHEN version() ~ 'mingw32|64-bit|x86_64|ppc64|ia64|amd64|aarch64' THEN 8 ELSE 4 END AS ma,
         24 AS pagehdr, 16 AS pageopqdata,
         CASE WHEN max(coalesce(null_frac, 0)) = 0 THEN 8 ELSE 8 + ((32 + 8 - 1) / 8) END AS tuple_hdr,
         sum((1 - coalesce(null_frac, 0)) * coalesce(avg_width, 1024))::float8 AS datawidth,
         reltuples < 0 OR bool_or(stat_att IS NULL) OR bool_or(atttypid = 'pg_catalog.name'::regtype) AS is_na
  FROM cols
  GROUP BY schema, tbl, idx, relpages, reltuples, fillfactor
), widths AS (
  SELECT *, tuple_hdr + ma - CASE WHEN tuple_hdr % ma = 0 THEN ma ELSE tuple_hdr % ma END
            + datawidth + ma - CASE WHEN datawidth = 0 THEN 0
                                    WHEN datawidth::int % ma = 0 THEN ma ELSE datawidth::int % ma END AS tuple_width
  FROM agg
), est AS (
  SELECT *, 1 + ceil(reltuples / floor((bs - pageopqdata - pagehdr) * fillfactor / (100 * (4 + tuple_width)))) AS est_pages
  FROM widths
)
SELECT schema, tbl, idx, (relpages * bs)::int8 AS size_bytes,
       CASE WHEN NOT is_na THEN (greatest(relpages - est_pages, 0) * bs)::int8 END AS bloat_bytes,
       CASE WHEN NOT is_na THEN greatest(100 * (relpages - est_pages) / relpages, 0) END AS bloat_pct,
       fillfactor, NOT is_na AS estimable
FROM est
ORDER BY is_na, bloat_bytes DESC NULLS LAST, size_bytes DESC, schema, idx
LIMIT $1
"""

# Indexes never scanned since the statistics were last reset, largest first. An index that
# enforces something (primary key, unique, exclusion constraint, replica identity) is listed
# but is not droppable, however unused: dropping it changes what the database accepts.
UNUSED_INDEXES = """
SELECT s.schemaname AS schema, s.relname AS tbl, s.indexrelname AS idx, pg_relation_size(s.indexrelid) AS size_bytes,
       i.indisunique AS is_unique, i.indisprimary AS is_primary, i.indisreplident AS replica_identity,
       i.indisvalid AS valid, con.conname AS constraint_name, con.contype::text AS constraint_type
FROM pg_stat_user_indexes s
JOIN pg_index i ON i.indexrelid = s.indexrelid
LEFT JOIN LATERAL (
  SELECT conname, contype FROM pg_constraint c
  WHERE c.conindid = s.indexrelid AND c.contype IN ('p', 'u', 'x') ORDER BY c.contype LIMIT 1
) con ON true
WHERE s.idx_scan = 0
ORDER BY size_bytes DESC, schema, idx
LIMIT $1
"""

# Ages in seconds by the server's clock (NULL: never).
VACUUM_STATE = f"""
SELECT s.schemaname AS schema, s.relname AS tbl, s.n_live_tup AS live, s.n_dead_tup AS dead,
       s.n_mod_since_analyze AS modified_since_analyze,
       {_age("s.last_vacuum")} AS last_vacuum_age, {_age("s.last_autovacuum")} AS last_autovacuum_age,
       {_age("s.last_analyze")} AS last_analyze_age, {_age("s.last_autoanalyze")} AS last_autoanalyze_age,
       s.vacuum_count + s.autovacuum_count AS vacuums,
       NOT coalesce(array_to_string(c.reloptions, ',') ~* 'autovacuum_enabled=(false|off|no|0)(,|$)', false) AS autovacuum_enabled
FROM pg_stat_user_tables s
JOIN pg_class c ON c.oid = s.relid
ORDER BY s.n_dead_tup DESC, s.n_live_tup DESC, schema, tbl
LIMIT $1
"""

# The largest tables by total size; the table's own part excludes its TOAST table and indexes.
TABLE_SIZES = f"""
SELECT schema, tbl, total_bytes - index_bytes - toast_bytes AS table_bytes, index_bytes, toast_bytes, total_bytes
FROM (
  SELECT n.nspname AS schema, c.relname AS tbl, pg_total_relation_size(c.oid) AS total_bytes,
         pg_indexes_size(c.oid) AS index_bytes, coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) AS toast_bytes
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'm') AND {_USER_SCHEMAS.format(ns="n")}
) sized
ORDER BY total_bytes DESC, schema, tbl
LIMIT $1
"""

META = """
SELECT current_database() AS database, d.stats_reset, pg_is_in_recovery() AS in_recovery,
       current_setting('autovacuum') = 'on' AS autovacuum
FROM pg_stat_database d
WHERE d.datname = current_database()
"""


# -- what is read --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableBloat:
    schema: str
    table: str
    size_bytes: int  # heap + TOAST pages, from pg_class.relpages
    bloat_bytes: int | None  # None: not estimable (no statistics)
    bloat_pct: float | None
    fillfactor: int

    @property
    def name(self) -> str:
        return qualified(self.schema, self.table)


@dataclass(frozen=True)
class IndexBloat:
    schema: str
    table: str
    index: str
    size_bytes: int
    bloat_bytes: int | None
    bloat_pct: float | None
    fillfactor: int

    @property
    def name(self) -> str:
        return qualified(self.schema, self.index)


@dataclass(frozen=True)
class UnusedIndex:
    schema: str
    table: str
    index: str
    size_bytes: int
    unique: bool
    primary: bool
    replica_identity: bool
    valid: bool
    constraint: str | None  # the constraint it backs (primary key, unique, exclusion)

    @property
    def name(self) -> str:
        return qualified(self.schema, self.index)

    @property
    def kept_because(self) -> str | None:
        """Why this index must stay although it is never scanned; None when it may be dropped."""
        if self.primary:
            return f"primary key {self.constraint}" if self.constraint else "primary key"
        if self.constraint:
            return f"backs constraint {self.constraint}"
        if self.unique:
            return "unique: enforces uniqueness"
        if self.replica_identity:
            return "replica identity"
        return None

    @property
    def droppable(self) -> bool:
        return self.kept_because is None


@dataclass(frozen=True)
class VacuumState:
    schema: str
    table: str
    live: int
    dead: int
    modified_since_analyze: int
    last_vacuum_age: float | None  # seconds before the read; None: never
    last_autovacuum_age: float | None
    last_analyze_age: float | None
    last_autoanalyze_age: float | None
    vacuums: int
    autovacuum_enabled: bool

    @property
    def name(self) -> str:
        return qualified(self.schema, self.table)

    @property
    def dead_pct(self) -> float | None:
        total = self.live + self.dead
        return 100.0 * self.dead / total if total else None

    @property
    def vacuumed_age(self) -> float | None:
        """Since the most recent VACUUM, manual or automatic."""
        return _newest(self.last_vacuum_age, self.last_autovacuum_age)

    @property
    def analyzed_age(self) -> float | None:
        return _newest(self.last_analyze_age, self.last_autoanalyze_age)


@dataclass(frozen=True)
class TableSize:
    schema: str
    table: str
    table_bytes: int
    index_bytes: int
    toast_bytes: int
    total_bytes: int

    @property
    def name(self) -> str:
        return qualified(self.schema, self.table)


SECTIONS = ("vacuum", "bloat", "index_bloat", "unused", "sizes")
SECTION_TITLES = {
    "meta": "database",
    "vacuum": "dead tuples",
    "bloat": "table bloat",
    "index_bloat": "index bloat",
    "unused": "unused indexes",
    "sizes": "table sizes",
}


@dataclass(frozen=True)
class TableHealth:
    """One read. A section is None when it could not be read: `errors` says why, by section."""

    member: str
    read_at: float  # epoch seconds, when the read finished
    database: str | None = None
    stats_reset: datetime | None = None  # None: the statistics were never reset
    in_recovery: bool | None = None
    autovacuum: bool | None = None  # the server's autovacuum setting
    vacuum: tuple[VacuumState, ...] | None = None
    bloat: tuple[TableBloat, ...] | None = None
    not_estimable: int = 0  # tables whose bloat cannot be estimated (no statistics)
    index_bloat: tuple[IndexBloat, ...] | None = None
    unused: tuple[UnusedIndex, ...] | None = None
    sizes: tuple[TableSize, ...] | None = None
    errors: tuple[tuple[str, str], ...] = ()
    error: str | None = None  # nothing could be read (no connection)
    limit: int = LIMIT

    def error_of(self, section: str) -> str | None:
        return next((msg for sec, msg in self.errors if sec == section), None)


# -- pure helpers --------------------------------------------------------------------------------


def quote_ident(name: str) -> str:
    """An identifier quoted as PostgreSQL's quote_ident does it, always (never SQL from text)."""
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    """schema.name as the operator types it: bare when that names it unambiguously, quoted
    where a part needs quoting (upper case, spaces, dots, quotes)."""
    return f"{_display_ident(schema)}.{_display_ident(name)}"


def _display_ident(part: str) -> str:
    plain = part and (part[0].isalpha() or part[0] == "_") and all(ch.islower() or ch.isdigit() or ch in "_$" for ch in part)
    return part if plain else quote_ident(part)


def _newest(*ages: float | None) -> float | None:
    known = [a for a in ages if a is not None]
    return min(known) if known else None


def table_bloat(row: Any) -> TableBloat:
    return TableBloat(row["schema"], row["tbl"], int(row["size_bytes"]),
                      None if row["bloat_bytes"] is None else int(row["bloat_bytes"]),
                      None if row["bloat_pct"] is None else float(row["bloat_pct"]), int(row["fillfactor"]))


def index_bloat(row: Any) -> IndexBloat:
    return IndexBloat(row["schema"], row["tbl"], row["idx"], int(row["size_bytes"]),
                      None if row["bloat_bytes"] is None else int(row["bloat_bytes"]),
                      None if row["bloat_pct"] is None else float(row["bloat_pct"]), int(row["fillfactor"]))


def unused_index(row: Any) -> UnusedIndex:
    return UnusedIndex(row["schema"], row["tbl"], row["idx"], int(row["size_bytes"]), bool(row["is_unique"]),
                       bool(row["is_primary"]), bool(row["replica_identity"]), bool(row["valid"]), row["constraint_name"])


def vacuum_state(row: Any) -> VacuumState:
    return VacuumState(row["schema"], row["tbl"], int(row["live"] or 0), int(row["dead"] or 0),
                       int(row["modified_since_analyze"] or 0), row["last_vacuum_age"], row["last_autovacuum_age"],
                       row["last_analyze_age"], row["last_autoanalyze_age"], int(row["vacuums"] or 0),
                       bool(row["autovacuum_enabled"]))


def table_size(row: Any) -> TableSize:
    return TableSize(row["schema"], row["tbl"], int(row["table_bytes"]), int(row["index_bytes"]), int(row["toast_bytes"]),
                     int(row["total_bytes"]))


def statement_error(section: str, exc: BaseException, statement_timeout: float) -> str:
    """A section's failure in one line: what it means for an operator, then the server's words."""
    asyncpg = sys.modules.get("asyncpg")
    title = SECTION_TITLES.get(section, section)
    if asyncpg is not None:
        if isinstance(exc, asyncpg.LockNotAvailableError):
            return f"{title}: a relation is locked by another session (DDL?); gave up after lock_timeout"
        if isinstance(exc, asyncpg.QueryCanceledError):
            return f"{title}: did not finish within {statement_timeout:g}s (statement_timeout); not read"
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            return f"{title}: no permission: {scrub_text(first_line(str(exc)))}"
        if isinstance(exc, asyncpg.PostgresError):
            return f"{title}: the server answered an error: {scrub_text(first_line(str(exc)))}"
    if isinstance(exc, TimeoutError):
        return f"{title}: no answer within {statement_timeout:g}s"
    return f"{title}: {type(exc).__name__}: {scrub_text(first_line(str(exc)))}"


# -- reading -------------------------------------------------------------------------------------

_READS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("vacuum", VACUUM_STATE, vacuum_state),
    ("bloat", TABLE_BLOAT, table_bloat),
    ("index_bloat", INDEX_BLOAT, index_bloat),
    ("unused", UNUSED_INDEXES, unused_index),
    ("sizes", TABLE_SIZES, table_size),
)


def _member(ref: ClusterRef, member: Member | str) -> Member:
    if isinstance(member, Member):
        return member
    found = next((m for m in ref.cluster.members if m.name == member), None)
    if found is None:
        raise ValueError(f"cluster {ref.name} has no member {member!r}")
    return found


async def read_table_health(ref: ClusterRef, member: Member | str, *, limit: int = LIMIT,
                            statement_timeout: float = STATEMENT_TIMEOUT,
                            now: Callable[[], float] = time.time) -> TableHealth:
    """Read every section on a connection of its own, closed before returning. Never raises for
    what a server does (refused, timed out, an error): that is in the result's error(s)."""
    from dbops.engines.postgres.adapter import PostgresAdapter

    m = _member(ref, member)
    adapter = PostgresAdapter(ref, m)
    try:
        conn = await adapter.open_connection(Q.APPLICATION_NAME, statement_timeout=statement_timeout)
    except Exception as exc:  # the member does not answer: said in the result, not raised
        return TableHealth(m.name, now(), error=adapter.classify(exc)[1], limit=limit)
    try:
        return await _read(conn, adapter, m.name, limit, statement_timeout, now)
    finally:
        await _close(conn)


async def _close(conn: Any) -> None:
    if conn.is_closed():
        return
    try:
        await conn.close(timeout=2.0)
    except Exception:  # a peer that cannot say goodbye: drop the socket instead
        conn.terminate()


async def _read(conn: Any, adapter: Any, member: str, limit: int, statement_timeout: float,
                now: Callable[[], float]) -> TableHealth:
    errors: list[tuple[str, str]] = []
    found: dict[str, Any] = {}
    client_timeout = statement_timeout + 2

    async def section(name: str, read: Callable[[], Awaitable[Any]]) -> None:
        if conn.is_closed():
            errors.append((name, f"{SECTION_TITLES[name]}: not read: the connection was lost"))
            return
        try:
            found[name] = await read()
        except Exception as exc:  # one section's failure is shown by itself; the others are read
            if conn.is_closed():
                errors.append((name, f"{SECTION_TITLES[name]}: {adapter.classify(exc)[1]}"))
            else:
                errors.append((name, statement_error(name, exc, statement_timeout)))

    await section("meta", lambda: conn.fetchrow(META, timeout=client_timeout))
    for name, sql, build in _READS:
        async def read(sql: str = sql, build: Callable[[Any], Any] = build) -> Any:
            return await conn.fetch(sql, limit, timeout=client_timeout)

        await section(name, read)
        if name in found:
            rows = found[name]
            found[name] = tuple(build(r) for r in rows)
            if name == "bloat":
                found["not_estimable"] = int(rows[0]["not_estimable"]) if rows else 0
    meta = found.get("meta")
    return TableHealth(
        member=member,
        read_at=now(),
        database=meta["database"] if meta else None,
        stats_reset=meta["stats_reset"] if meta else None,
        in_recovery=bool(meta["in_recovery"]) if meta else None,
        autovacuum=bool(meta["autovacuum"]) if meta else None,
        vacuum=found.get("vacuum"),
        bloat=found.get("bloat"),
        not_estimable=found.get("not_estimable", 0),
        index_bloat=found.get("index_bloat"),
        unused=found.get("unused"),
        sizes=found.get("sizes"),
        errors=tuple(errors),
        limit=limit,
    )
