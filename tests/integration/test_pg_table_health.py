"""Table and index health on the sandbox's real PostgreSQL 15: the reader (and the pane's Tables tab)
on a table bloated on purpose, then postgres.vacuum and postgres.reindex-concurrently through the
runbook session, as the console's wizard and `dbops runbook` drive them.

Everything here lives in public.th_* on the shared sandbox's primary and is dropped at the end.
The VACUUM is held, deterministically, in its index phase by a cursor that pins a leaf page of the
table's primary key (an index-only scan keeps its pin), so its progress is seen without any
assumption about how long a VACUUM takes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dbops.audit import verify
from dbops.config import load
from dbops.engines.postgres.tables import read_table_health
from dbops.runbook.executor import ExitCode
from dbops.runbook.model import Step
from dbops.runbook.session import RunbookSession
from dbops.screens.app import DbopsApp
from dbops.screens.pg_tables import TableHealthView, rendered_text
from dbops.screens.postgres import PostgresScreen

ROWS = 5000  # small indexes (< min_parallel_index_scan_size): the VACUUM's leader vacuums them itself
TABLE = "th_orders"
UNUSED = "th_orders_unused_idx"


def sandbox_ref(sb):
    return next(r for r in load(sb.config_path).clusters() if r.name == "sandbox-pg")


async def fetchval(sb, sql: str, *args: Any) -> Any:
    return (await sb.fetch("pg1", sql, *args))[0][0]


async def bloat(sb) -> int:
    """Every row updated once with autovacuum off: as many dead tuples as live ones. Returns the
    UPDATE's transaction id."""
    conn = await asyncpg.connect(sb.dsn("pg1"))
    try:
        async with conn.transaction():
            await conn.execute(f"UPDATE {TABLE} SET n = n + 1")
            xid = await conn.fetchval("SELECT txid_current()")
        await conn.execute(f"ANALYZE {TABLE}")  # the estimate reads the statistics
    finally:
        await conn.close()
    return int(xid)


async def wait_removable(sb, xid: int) -> None:
    """Until no snapshot can still see what transaction `xid` deleted: the standbys' feedback
    (hot_standby_feedback, pg2's slot) reaches the primary every few seconds."""
    sql = """
    SELECT coalesce(bool_and(age(x) < age($1::text::xid)), true) FROM (
      SELECT xmin AS x FROM pg_replication_slots WHERE xmin IS NOT NULL
      UNION ALL SELECT backend_xmin FROM pg_stat_replication WHERE backend_xmin IS NOT NULL
      UNION ALL SELECT backend_xmin FROM pg_stat_activity WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()) h
    """
    for _ in range(600):
        if await fetchval(sb, sql, str(xid % 2**32)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the xmin horizon never passed transaction {xid}")


@pytest.fixture(scope="module")
def bloated(pg_sandbox):
    sb = pg_sandbox
    sb.psql("pg1", f"DROP TABLE IF EXISTS {TABLE}, th_boom_flag; DROP FUNCTION IF EXISTS th_boom(int); "
                   f"CREATE TABLE {TABLE} (id int PRIMARY KEY, n int, pad text) WITH (autovacuum_enabled = off); "
                   f"INSERT INTO {TABLE} SELECT g, g, repeat('x', 200) FROM generate_series(1, {ROWS}) g; "
                   f"CREATE INDEX {UNUSED} ON {TABLE} (n)")
    asyncio.run(bloat(sb))
    yield sb
    sb.psql("pg1", f"DROP TABLE IF EXISTS {TABLE}, th_boom_flag; DROP FUNCTION IF EXISTS th_boom(int)")


def row(rows, name: str):
    found = [r for r in rows or () if r.name == name]
    assert found, f"{name} not among {[r.name for r in rows or ()]}"
    return found[0]


async def test_the_reader_shows_the_bloat_the_dead_tuples_and_the_unused_index(bloated):
    sb = bloated
    health = await read_table_health(sandbox_ref(sb), "pg1", limit=500)
    assert health.error is None and health.errors == ()
    assert health.database == "postgres" and health.in_recovery is False
    assert health.stats_reset == await fetchval(sb, "SELECT stats_reset FROM pg_stat_database WHERE datname = 'postgres'")
    vac = row(health.vacuum, f"public.{TABLE}")
    assert vac.dead >= ROWS * 0.9 and vac.live >= ROWS * 0.9 and not vac.autovacuum_enabled
    assert vac.vacuumed_age is None and vac.analyzed_age is not None  # never vacuumed, just analyzed
    est = row(health.bloat, f"public.{TABLE}")
    assert est.bloat_pct is not None and 30 <= est.bloat_pct <= 70, est  # every row has a dead copy
    assert est.bloat_bytes is not None and est.bloat_bytes > 0
    unused = row(health.unused, f"public.{UNUSED}")
    assert unused.droppable and unused.size_bytes == await fetchval(sb, f"SELECT pg_relation_size('{UNUSED}')") > 0
    pkey = row(health.unused, f"public.{TABLE}_pkey")
    assert not pkey.droppable and pkey.kept_because == f"primary key {TABLE}_pkey"
    size = row(health.sizes, f"public.{TABLE}")
    assert size.total_bytes == await fetchval(sb, f"SELECT pg_total_relation_size('{TABLE}')")
    assert size.index_bytes == await fetchval(sb, f"SELECT pg_indexes_size('{TABLE}')")
    ibloat = row(health.index_bloat, f"public.{UNUSED}")
    assert ibloat.size_bytes > 0 and ibloat.bloat_bytes is not None


async def test_a_locked_table_fails_only_the_section_that_needs_its_lock(bloated):
    """Sizes take the table's lock and wait lock_timeout; the bloat estimate reads only statistics."""
    sb = bloated
    holder = await asyncpg.connect(sb.dsn("pg1"))
    try:
        async with holder.transaction():
            await holder.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
            health = await read_table_health(sandbox_ref(sb), "pg1", limit=500)
    finally:
        await holder.close()
    assert health.sizes is None
    assert "table sizes: a relation is locked by another session" in (health.error_of("sizes") or "")
    assert row(health.bloat, f"public.{TABLE}").bloat_bytes
    assert row(health.vacuum, f"public.{TABLE}").dead > 0


async def test_a_standby_is_read_and_a_member_that_refuses_is_one_line(bloated):
    sb = bloated
    ref = sandbox_ref(sb)
    standby = await read_table_health(ref, "pg2")
    assert standby.in_recovery is True and standby.error is None and standby.errors == ()
    closed = dataclasses.replace(next(m for m in ref.cluster.members if m.name == "pg1"), port=1)
    down = await read_table_health(ref, closed)
    assert down.error == "connection refused at 127.0.0.1:1" and down.vacuum is None
    assert sb.password not in repr(down)


async def settle(pilot, predicate, what: str, attempts: int = 300, show=lambda: ""):
    for _ in range(attempts):
        await pilot.pause(0.1)
        if predicate():
            return
    raise AssertionError(f"gave up waiting for {what}; {show()}")


async def test_the_tables_tab_reads_the_member_when_opened(bloated, tmp_path):
    sb = bloated
    app = DbopsApp(load(sb.config_path), state_dir=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_cluster("sandbox/sandbox-pg")
        await settle(pilot, lambda: isinstance(app.screen, PostgresScreen) and app.screen.is_mounted, "the pane")
        pane = app.screen
        await settle(pilot, lambda: pane.member == "pg1", "the primary shown")
        view = pane.query_one(TableHealthView)
        view.read = functools.partial(read_table_health, limit=500)  # the real reader; the sandbox holds others' tables too
        key = next(b.key for b in PostgresScreen.BINDINGS if getattr(b, "action", "") == "tab('tables')")
        await pilot.press(key)
        await settle(pilot, lambda: view.health is not None or view.failed is not None, "the read",
                     show=lambda: view.status().plain)
        assert view.failed is None and view.health.errors == ()
        assert view.status().plain.startswith("pg1 · postgres · read ")
        text = rendered_text(view.body(), view.body_width())
        vacuum_line = next(line for line in text.splitlines() if line.startswith(f"public.{TABLE} ") and "autovacuum off" in line)
        assert f"{ROWS // 1000}k" in vacuum_line.split()  # its dead tuples
        assert any(line.startswith(f"public.{UNUSED} ") and "droppable" in line for line in text.splitlines()), text
        assert all(len(line) <= view.body_width() for line in text.splitlines())


class Recorder:
    """A front end that says yes to every confirmation and keeps every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def confirm(self, step: Step, commands: list[str], ctx: Any) -> bool:
        return True

    async def manual_done(self, step: Step, commands: list[str], ctx: Any) -> bool:
        return False

    async def attest(self, step: Step, commands: list[str], ctx: Any, expected: str) -> bool:
        return False

    def cannot_answer(self, step: Step, ref: Any) -> str | None:
        return None

    def event(self, event: str, **data: Any) -> None:
        self.events.append((event, data))

    def logs(self) -> list[str]:
        return [d["line"] for e, d in self.events if e == "log"]


def session(sb, front: Recorder, state: Path, config_path: Path | None = None) -> RunbookSession:
    return RunbookSession(load(config_path or sb.config_path), front, state=state)


async def run(sb, front: Recorder, state: Path, book_id: str, **params: str):
    s = session(sb, front, state)
    ref = s.cluster("sandbox-pg")
    book = s.runbook(book_id, ref)
    return await s.run(book, ref, s.params(book, params))


def audit_of(state: Path, run_id: str) -> list[tuple[str, str | None, str | None]]:
    records = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    assert verify(state / "audit.jsonl").ok
    return [(r["phase"], r.get("step"), r.get("outcome")) for r in records if r.get("run_id") == run_id]


async def test_the_plan_names_exactly_the_statements_and_a_read_only_environment_refuses(bloated, tmp_path):
    sb = bloated
    front = Recorder()
    s = session(sb, front, tmp_path)
    ref = s.cluster("sandbox-pg")
    book = s.runbook("postgres.vacuum", ref)
    plan = await s.plan(book, ref, s.params(book, {"tables": f"{TABLE}, public.{TABLE}", "cost_limit": "500"}))
    assert plan.refused == []
    assert plan.steps[0].commands[1:4] == ["SET lock_timeout = '30s'", "SET vacuum_cost_limit = 500",
                                           f'VACUUM (ANALYZE) "public"."{TABLE}"']  # named twice, vacuumed once
    plan = await s.plan(book, ref, s.params(book, {"tables": f"{TABLE}; DROP TABLE {TABLE},th_nope,pg_stat_activity"}))
    assert [c.check.id for c in plan.refused] == ["tables"]
    assert plan.refused[0].verdict.detail == (
        f"'{TABLE}; DROP TABLE {TABLE}' is not a valid name: invalid name syntax; "
        "'th_nope': no such relation (a bare name is looked up in the search_path; give schema.name); "
        "pg_catalog.pg_stat_activity: a view, not a table")
    assert await fetchval(sb, f"SELECT count(*) FROM pg_class WHERE relname = '{TABLE}'") == 1
    config = tmp_path / "read-only.toml"
    config.write_text(sb.config_path.read_text().replace('mode = "operator"', 'mode = "read-only"'))
    ro = session(sb, front, tmp_path, config)
    ref = ro.cluster("sandbox-pg")
    book = ro.runbook("postgres.vacuum", ref)
    result = await ro.run(book, ref, ro.params(book, {"tables": TABLE}))
    assert result.code is ExitCode.REFUSED and "read-only" in result.message
    assert not (tmp_path / "audit.jsonl").exists() or audit_of(tmp_path, result.run_id) == []
    assert await fetchval(sb, f"SELECT pg_stat_get_dead_tuples('{TABLE}'::regclass)") > 0  # nothing was vacuumed


async def test_vacuum_reports_its_progress_and_removes_the_dead_tuples(bloated, tmp_path):
    sb = bloated
    await wait_removable(sb, await bloat(sb))
    before = await fetchval(sb, f"SELECT pg_stat_get_dead_tuples('{TABLE}'::regclass)")
    pages = await fetchval(sb, f"SELECT pg_relation_size('{TABLE}') / current_setting('block_size')::int")
    assert before >= ROWS * 0.9
    pinner = await asyncpg.connect(sb.dsn("pg1"))
    front = Recorder()
    try:
        tx = pinner.transaction()
        await tx.start()
        await pinner.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
        query = f"SELECT id FROM {TABLE} ORDER BY id"
        assert "Index Only Scan" in (await pinner.fetchval(f"EXPLAIN {query}"))
        await pinner.execute(f"DECLARE pin CURSOR FOR {query}")
        await pinner.fetch("FETCH 1 FROM pin")  # its leaf page stays pinned: VACUUM waits there
        running = asyncio.create_task(run(sb, front, tmp_path, "postgres.vacuum", tables=TABLE))
        for _ in range(600):
            if any("vacuuming indexes" in line and "BufferPin" in line for line in front.logs()) or running.done():
                break
            await asyncio.sleep(0.1)
        assert not running.done(), f"the VACUUM ended while a leaf page was pinned: {front.logs()}"
        assert any("VACUUM vacuuming indexes" in line for line in front.logs()), front.logs()
        progress = [d for e, d in front.events if e == "progress"]
        assert progress and progress[-1] == {"done": pages, "total": pages, "unit": "heap blocks"}, progress
        await tx.rollback()
        result = await asyncio.wait_for(running, 120)
    finally:
        await pinner.close()
    assert result.code is ExitCode.OK, result.message
    after = await fetchval(sb, f"SELECT pg_stat_get_dead_tuples('{TABLE}'::regclass)")
    assert after == 0 and f"public.{TABLE}: done in" in "\n".join(front.logs())
    assert ("intent", "vacuum", None) in audit_of(tmp_path, result.run_id)
    assert ("result", "vacuum", "ok") in audit_of(tmp_path, result.run_id)


async def indexes_of(sb) -> dict[str, bool]:
    rows = await sb.fetch("pg1", "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                 f"WHERE i.indrelid = '{TABLE}'::regclass")
    return {r[0]: r[1] for r in rows}


async def test_reindex_concurrently_leaves_a_valid_index_and_an_audit_record(bloated, tmp_path):
    sb = bloated
    oid = await fetchval(sb, f"SELECT '{UNUSED}'::regclass::oid")
    front = Recorder()
    result = await run(sb, front, tmp_path, "postgres.reindex-concurrently", indexes=f"public.{UNUSED}")
    assert result.code is ExitCode.OK, result.message
    assert await fetchval(sb, f"SELECT '{UNUSED}'::regclass::oid") != oid  # a new index took its name
    assert (await indexes_of(sb))[UNUSED] is True and not any("_cc" in name for name in await indexes_of(sb))
    assert [(p, s, o) for p, s, o in audit_of(tmp_path, result.run_id)] == [("intent", "reindex", None), ("result", "reindex", "ok")]


async def test_a_failed_reindex_drops_the_invalid_copy_it_left(bloated, tmp_path):
    """An expression index whose function starts failing: the REINDEX fails building its copy."""
    sb = bloated
    sb.psql("pg1", "CREATE TABLE th_boom_flag (x int); "
                   "CREATE FUNCTION th_boom(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN "
                   "IF EXISTS (SELECT 1 FROM th_boom_flag) THEN RAISE EXCEPTION 'th_boom refuses %', i; END IF; RETURN i; END $$; "
                   f"CREATE INDEX th_boom_idx ON {TABLE} (th_boom(id)); INSERT INTO th_boom_flag VALUES (1)")
    try:
        front = Recorder()
        result = await run(sb, front, tmp_path, "postgres.reindex-concurrently", indexes="th_boom_idx")
        assert result.code is ExitCode.STEP_FAILED
        assert 'th_boom refuses' in result.message
        assert 'dropped the invalid copy it left: "public"."th_boom_idx_ccnew"' in result.message, result.message
        assert (await indexes_of(sb))["th_boom_idx"] is True
        assert not any("_cc" in name for name in await indexes_of(sb))
        assert audit_of(tmp_path, result.run_id) == [("intent", "reindex", None), ("result", "reindex", "failed")]
    finally:
        sb.psql("pg1", "DROP INDEX IF EXISTS th_boom_idx; DROP TABLE IF EXISTS th_boom_flag; DROP FUNCTION IF EXISTS th_boom(int)")
