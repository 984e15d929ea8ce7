"""The console on the sandbox's real servers: open the pane, filter, cancel a real query."""

from __future__ import annotations

import asyncio
import json

import asyncpg
from textual.widgets import DataTable, Input

from dbops.audit import verify
from dbops.config import load
from dbops.screens.app import DbopsApp
from dbops.screens.modals import ConfirmBackendModal
from dbops.screens.postgres import PostgresScreen


async def settle(pilot, predicate, what: str, attempts: int = 300, show=lambda: ""):
    for _ in range(attempts):
        await pilot.pause(0.1)
        if predicate():
            return
    raise AssertionError(f"gave up waiting for {what}; on screen: {show()}")


async def filter_activity(pilot, pane, text: str) -> DataTable:
    await pilot.press("slash")
    # As an operator does: type once the filter box is there, or the letters go to the pane's keys.
    await settle(pilot, lambda: pane.query_one("#filter", Input).has_focus, "the filter box")
    await pilot.press(*text, "enter")
    return pane.query_one("#activity-table", DataTable)


def rows(table: DataTable) -> str:
    return "\n".join(" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count))


async def open_pane(pilot, app) -> PostgresScreen:
    await settle(pilot, lambda: "sandbox-pg" in rows(app.screen.query_one("#clusters", DataTable)), "overview row")
    await pilot.press("enter")
    await settle(pilot, lambda: isinstance(app.screen, PostgresScreen) and app.screen.is_mounted, "the PostgreSQL pane")
    return app.screen


async def test_cancel_a_real_long_query_through_the_modal(pg_sandbox, tmp_path):
    victim = await asyncpg.connect(pg_sandbox.dsn("pg1"), server_settings={"application_name": "victim"})
    sleeper = asyncio.create_task(victim.fetch("SELECT pg_sleep(600) /* dbops-ui-victim */"))
    app = DbopsApp(load(pg_sandbox.config_path), state_dir=tmp_path)
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            pane = await open_pane(pilot, app)
            topo = pane.query_one("#topology", DataTable)
            await settle(pilot, lambda: rows(topo).count("streaming") == 2 or "replica" in rows(topo), "topology")
            assert "pg1" in rows(topo) and "primary" in rows(topo)
            table = await filter_activity(pilot, pane, "dbops-ui-victim")
            await settle(pilot, lambda: table.row_count == 1 and "pg_sleep" in rows(table), "the victim in activity",
                         show=lambda: f"filter {pane.filter_text!r}, member {pane.member}, rows {rows(table)!r}, screen {app.screen!r}")
            pid = int(str(table.get_row_at(0)[0]))
            await pilot.press("c")
            await settle(pilot, lambda: isinstance(app.screen, ConfirmBackendModal) and app.screen.is_mounted, "the confirm modal")
            modal = app.screen
            assert f"SELECT pg_cancel_backend({pid})" in modal.act.sql
            await pilot.press("y")
            await app.workers.wait_for_complete()
            result = await asyncio.wait_for(asyncio.gather(sleeper, return_exceptions=True), 30)
            assert isinstance(result[0], asyncpg.QueryCanceledError)
            await settle(pilot, lambda: table.row_count == 0, "the cancelled query to leave the activity table")
    finally:
        if not sleeper.done():
            sleeper.cancel()
        await victim.close()
    recs = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["action"], r["params"]["pid"]) for r in recs] == [
        ("intent", "postgres.cancel_backend", pid),
        ("result", "postgres.cancel_backend", pid),
    ]
    assert recs[1]["outcome"] == "ok" and recs[0]["environment"] == "sandbox" and recs[0]["member"] == "pg1"
    assert verify(tmp_path / "audit.jsonl").ok


async def test_decline_leaves_the_query_running_and_records_an_abort(pg_sandbox, tmp_path):
    victim = await asyncpg.connect(pg_sandbox.dsn("pg1"), server_settings={"application_name": "victim2"})
    sleeper = asyncio.create_task(victim.fetch("SELECT pg_sleep(600) /* dbops-ui-decline */"))
    app = DbopsApp(load(pg_sandbox.config_path), state_dir=tmp_path)
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            pane = await open_pane(pilot, app)
            table = await filter_activity(pilot, pane, "dbops-ui-decline")
            await settle(pilot, lambda: table.row_count == 1, "the query in activity",
                         show=lambda: f"filter {pane.filter_text!r}, member {pane.member}, rows {rows(table)!r}, screen {app.screen!r}")
            await pilot.press("k")
            await settle(pilot, lambda: isinstance(app.screen, ConfirmBackendModal) and app.screen.is_mounted, "the confirm modal")
            await pilot.press("n")
            await app.workers.wait_for_complete()
            await pilot.pause(0.5)
            assert not sleeper.done()
            still = await pg_sandbox.fetch("pg1", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%dbops-ui-decline%' AND state = 'active' AND pid <> pg_backend_pid()")
            assert still[0][0] == 1
    finally:
        sleeper.cancel()
        await victim.close()
    recs = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["outcome"], r["action"]) for r in recs] == [("abort", "declined", "postgres.terminate_backend")]
