"""The pure parts of table health and the maintenance runbooks: names and quoting, what may be
dropped, ages, error lines, progress, a failed REINDEX's leftovers, the rendered plans."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from dbops.config import parse
from dbops.engines.postgres import maintenance as mt
from dbops.engines.postgres.tables import TableHealth, UnusedIndex, VacuumState, qualified, quote_ident, statement_error
from dbops.runbook.model import Context
from dbops.runbooks.postgres import reindex_concurrently as rx
from dbops.runbooks.postgres import relations as rel
from dbops.runbooks.postgres import vacuum as vac
from dbops.screens.pg_tables import render_health, rendered_text, stats_since, status_text


def test_identifiers_are_always_quoted_for_sql_and_shown_bare_when_that_is_unambiguous():
    assert quote_ident("orders") == '"orders"'
    assert quote_ident('we"ird') == '"we""ird"'
    assert qualified("public", "orders_2024") == "public.orders_2024"
    assert qualified("Sales", "my table") == '"Sales"."my table"'
    assert qualified("public", "a.b") == 'public."a.b"'


def unused(**kw: Any) -> UnusedIndex:
    base = {"schema": "public", "table": "t", "index": "i", "size_bytes": 8192, "unique": False, "primary": False,
            "replica_identity": False, "valid": True, "constraint": None}
    return UnusedIndex(**{**base, **kw})


@pytest.mark.parametrize(("kw", "kept"), [
    ({}, None),
    ({"unique": True, "primary": True, "constraint": "t_pkey"}, "primary key t_pkey"),
    ({"unique": True, "constraint": "t_ref_key"}, "backs constraint t_ref_key"),
    ({"constraint": "t_no_overlap"}, "backs constraint t_no_overlap"),  # an exclusion constraint's
    ({"unique": True}, "unique: enforces uniqueness"),
    ({"replica_identity": True}, "replica identity"),
])
def test_an_unused_index_is_droppable_only_when_it_enforces_nothing(kw, kept):
    u = unused(**kw)
    assert u.kept_because == kept and u.droppable is (kept is None)


def test_dead_share_and_the_newest_of_manual_and_automatic_runs():
    v = VacuumState("public", "t", 300, 100, 0, 50.0, 10.0, None, 3600.0, 2, True)
    assert v.dead_pct == 25.0 and v.vacuumed_age == 10.0 and v.analyzed_age == 3600.0
    empty = VacuumState("public", "t", 0, 0, 0, None, None, None, None, 0, True)
    assert empty.dead_pct is None and empty.vacuumed_age is None and empty.analyzed_age is None


def test_a_sections_error_says_what_it_means_in_one_line():
    lock = asyncpg.exceptions.LockNotAvailableError("canceling statement due to lock timeout")
    assert statement_error("sizes", lock, 10) == "table sizes: a relation is locked by another session (DDL?); gave up after lock_timeout"
    cancel = asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout")
    assert statement_error("bloat", cancel, 10) == "table bloat: did not finish within 10s (statement_timeout); not read"
    denied = asyncpg.exceptions.InsufficientPrivilegeError("permission denied for table secrets\nDETAIL: more")
    assert statement_error("unused", denied, 10) == "unused indexes: no permission: permission denied for table secrets"


def test_the_operators_list_of_names():
    assert mt.names(" public.a, b ,, a ,b,") == ["public.a", "b", "a"]
    assert mt.names(None) == [] and mt.names("") == []


def test_only_this_indexs_new_concurrent_copies_are_its_leftovers():
    index = {"name": "orders_created_at_idx"}
    invalid = ['"public"."orders_created_at_idx_ccnew"', '"public"."orders_created_at_idx_ccold1"',
               '"public"."orders_ref_idx_ccnew"', '"public"."orders_created_at_idx_broken"']
    assert rx.own_leftovers(index, invalid) == invalid[:2]
    assert rx.own_leftovers(index, invalid, before=[invalid[0]]) == [invalid[1]]  # there before this run: not its own
    long_name = "x" * 63
    cut = f'"public"."{"x" * 57}_ccnew"'  # 63 bytes: the name cut to make room for the suffix
    assert rx.own_leftovers({"name": long_name}, [cut]) == [cut]


def test_leftover_advice_names_the_statement_to_run():
    advice = mt.leftover_advice(['"public"."i_ccnew"'])
    assert 'DROP INDEX CONCURRENTLY "public"."i_ccnew"' in advice and "invalid" in advice


def test_progress_says_phase_share_and_wait():
    p = mt.Progress("VACUUM", "scanning heap", 250, 1000, "heap blocks", "public.t")
    assert p.percent == 25.0 and p.describe() == "public.t: VACUUM scanning heap, 250 of 1000 heap blocks (25%)"
    waiting = mt.Progress("VACUUM", "vacuuming indexes", 1000, 1000, "heap blocks", "public.t", "BufferPin: BufferPin")
    assert waiting.describe().endswith("(100%), waiting for BufferPin: BufferPin")
    assert mt.Progress("VACUUM", "initializing", 0, 0, "heap blocks", "").describe() == "VACUUM initializing"


def context(params: dict[str, Any], state: dict[str, Any] | None = None) -> Context:
    config = parse("""
[environments.staging]
mode = "operator"
[environments.staging.clusters.db]
engine = "postgres"
password = { env = "NO_SUCH_VAR_FOR_TESTS" }
members = [{ name = "m1", host = "127.0.0.1", port = 1, role = "primary" }]
""")
    return Context(config.clusters()[0], params, run_id="r", state=dict(state or {}))


def test_step_progress_logs_each_phase_once_and_reports_only_counted_phases():
    lines: list[str] = []
    reports: list[tuple[float, float | None, str]] = []
    ctx = context({})
    ctx.log = lines.append
    ctx.progress = lambda done, total, unit: reports.append((done, total, unit))
    sp = rel.StepProgress(ctx)
    for p in (mt.Progress("VACUUM", "initializing", 0, 0, "heap blocks", "t"),
              mt.Progress("VACUUM", "scanning heap", 10, 100, "heap blocks", "t"),
              mt.Progress("VACUUM", "scanning heap", 60, 100, "heap blocks", "t")):
        sp.report(p)
    assert lines == ["t: VACUUM initializing", "t: VACUUM scanning heap, 10 of 100 heap blocks (10%)"]
    assert reports == [(10.0, 100.0, "heap blocks"), (60.0, 100.0, "heap blocks")]


def test_the_vacuum_plan_is_the_statements_it_issues():
    tables = [{"quoted": '"public"."Orders"'}, {"quoted": '"s"."t"'}]
    ctx = context({"cost_delay_ms": 2.5, "cost_limit": 50}, {"tables": tables, "primary": "m1"})
    cmds = vac.vacuum_commands(ctx)
    assert cmds[1:6] == ["SET lock_timeout = '30s'", "SET vacuum_cost_delay = 2.5", "SET vacuum_cost_limit = 50",
                         'VACUUM (ANALYZE) "public"."Orders"', 'VACUUM (ANALYZE) "s"."t"']
    assert cmds[0].startswith("-- on m1 (the primary)") and cmds[-1].startswith("--")
    assert vac.settings(context({"cost_delay_ms": None, "cost_limit": None})) == ["SET lock_timeout = '30s'"]
    with pytest.raises(ValueError, match="cost_delay_ms must be between 0 and 100"):
        vac.settings(context({"cost_delay_ms": 500.0}))
    verdict = asyncio.run(vac.check_settings(context({"cost_limit": 0})))
    assert not verdict.ok and "cost_limit must be between 1 and 10000" in verdict.detail


def test_the_reindex_plan_is_the_statements_it_issues():
    ctx = context({"lock_wait": 60.0}, {"indexes": [{"quoted": '"public"."i"'}], "primary": "m1"})
    cmds = rx.reindex_commands(ctx)
    assert cmds[1:3] == ["SET lock_timeout = '60s'", 'REINDEX INDEX CONCURRENTLY "public"."i"']
    verdict = asyncio.run(rx.check_lock_wait(context({"lock_wait": 0.0})))
    assert not verdict.ok and "lock_wait must be" in verdict.detail


def test_a_failed_reindex_says_what_it_dropped_and_what_is_left_to_drop():
    index = {"quoted": '"public"."i"'}
    boom = RuntimeError("could not create unique index\nDETAIL: Key (id)=(1) is duplicated.")
    text = rx._failure(index, boom, ['"public"."i_ccnew"'], [])
    assert text == ('REINDEX INDEX CONCURRENTLY "public"."i" failed: could not create unique index; '
                    'dropped the invalid copy it left: "public"."i_ccnew"')
    text = rx._failure(index, boom, [], ['"public"."i_ccnew" (lock timeout)'])
    assert 'could not drop "public"."i_ccnew" (lock timeout)' in text and 'DROP INDEX CONCURRENTLY "public"."i_ccnew"' in text
    assert rx._failure(index, boom, [], []).endswith("it left no invalid copy")


def test_watched_returns_the_statements_outcome_and_says_when_progress_cannot_be_read():
    async def scenario() -> tuple[Any, list[Any], list[BaseException]]:
        release = asyncio.Event()
        seen: list[Any] = []
        failures: list[BaseException] = []
        reads = iter([mt.Progress("VACUUM", "scanning heap", 1, 2, "heap blocks", "t"), OSError("gone")])

        async def statement() -> str:
            await release.wait()
            return "VACUUM"

        async def watch() -> mt.Progress | None:
            item = next(reads, None)
            if item is None:
                release.set()
                return None
            if isinstance(item, BaseException):
                raise item
            return item

        out = await mt.watched(statement(), watch, seen.append, failures.append, interval=0.001)
        return out, seen, failures

    out, seen, failures = asyncio.run(scenario())
    assert out == "VACUUM" and [p.done for p in seen] == [1] and [str(f) for f in failures] == ["gone"]

    async def failing() -> None:
        raise asyncpg.exceptions.LockNotAvailableError("canceling statement due to lock timeout")

    async def nothing() -> None:
        return None

    with pytest.raises(asyncpg.exceptions.LockNotAvailableError):
        asyncio.run(mt.watched(failing(), nothing, print, print, interval=0.001))


def test_the_tab_says_what_it_is_reading_and_what_a_standby_counts():
    h = TableHealth(member="pg2", read_at=0.0, database="app", in_recovery=True, autovacuum=False, vacuum=(), bloat=(),
                    index_bloat=(), unused=(), sizes=())
    text = rendered_text(render_health(h, 0.0, 300), 300)
    assert "On a standby these are its own counters" in text and "Autovacuum is OFF for the whole server" in text
    assert "every index has been scanned" in text and "never reset" in text
    assert stats_since(h).startswith("the statistics were never reset")
    assert status_text(None, "pg2", None, None).plain == "reading pg2…"
    assert status_text(h, None, 3.0, None).plain == "pg2 · app · read 3.0s ago  r re-read"
