"""The console on the sandbox's real servers: open the pane, filter, cancel a real query."""

from __future__ import annotations

import asyncio
import json
import re

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


def text_of(pane, selector: str) -> str:
    return str(pane.query_one(selector).render())


async def test_a_running_vacuum_and_what_holds_the_horizon_show_on_the_vacuum_tab(pg_sandbox, tmp_path):
    """A VACUUM of a large table (throttled, as autovacuum is) shows its phase and how far it has
    scanned; an open transaction is named as what holds the xmin horizon, with its age; the
    activity's Xact column shows how long that transaction has been open."""
    setup = await asyncpg.connect(pg_sandbox.dsn("pg1"))
    await setup.execute("DROP TABLE IF EXISTS ui_vacuum_big")
    await setup.execute("CREATE TABLE ui_vacuum_big WITH (autovacuum_enabled = off) AS "
                        "SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 200000) g")
    await setup.execute("DELETE FROM ui_vacuum_big WHERE id % 2 = 0")
    holder = await asyncpg.connect(pg_sandbox.dsn("pg1"), server_settings={"application_name": "ui-holder"})
    await holder.execute("BEGIN; INSERT INTO ui_vacuum_big VALUES (0, 'held')")
    vacuumer = await asyncpg.connect(pg_sandbox.dsn("pg1"), server_settings={"application_name": "ui-vacuum"})
    # Throttled like autovacuum: a sleep after every few pages, so the scan is seen under way.
    await vacuumer.execute("SET vacuum_cost_delay = '20ms'; SET vacuum_cost_limit = 20")
    vacuum = asyncio.create_task(vacuumer.execute("VACUUM ui_vacuum_big"))
    app = DbopsApp(load(pg_sandbox.config_path), state_dir=tmp_path)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            pane = await open_pane(pilot, app)
            await pilot.press("5")
            table = pane.query_one("#vacuum-table", DataTable)
            await settle(pilot, lambda: "ui_vacuum_big" in rows(table) and "%" in rows(table), "the VACUUM's progress",
                         show=lambda: rows(table))
            row = rows(table)
            assert "client" in row and re.search(r"\b\d{1,3}%", row), row
            assert any(phase in row for phase in ("scanning heap", "vacuuming heap", "vacuuming indexes", "cleaning up indexes")), row
            pid = holder.get_server_pid()
            await settle(pilot, lambda: f"session pid {pid} (idle in transaction, ui-holder" in text_of(pane, "#horizon-text"),
                         "the holder named", show=lambda: text_of(pane, "#horizon-text"))
            assert re.search(rf"session pid {pid} \(idle in transaction, ui-holder, postgres\): \d+ xids, [\d.]+(ms|s)",
                             text_of(pane, "#horizon-text"))
            await pilot.press("1")
            activity = pane.query_one("#activity-table", DataTable)
            await settle(pilot, lambda: str(pid) in rows(activity), "the holder in activity")
            cells = next(activity.get_row_at(i) for i in range(activity.row_count) if str(activity.get_row_at(i)[0]) == str(pid))
            assert [c.key.value for c in activity.columns.values()][:4] == ["pid", "age", "xact", "state"]
            assert re.fullmatch(r"[\d.]+(ms|s)", str(cells[2])), cells
    finally:
        vacuum.cancel()
        await asyncio.gather(vacuum, return_exceptions=True)
        await vacuumer.close()
        await holder.close()
        await setup.execute("DROP TABLE IF EXISTS ui_vacuum_big")
        await setup.close()
