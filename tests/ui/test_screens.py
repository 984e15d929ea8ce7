"""The console on frozen data, driven with Pilot as a user drives it: keys in, screen text out."""

from __future__ import annotations

import dataclasses
import json

from textual import events
from textual.widgets import Button, DataTable, Input

from dbops.audit import verify
from dbops.screens.app import DbopsApp
from dbops.screens.modals import ConfirmBackendModal
from dbops.screens.postgres import PostgresScreen

from .frozen import NOW, FrozenHub


def make_app(tmp_path, allow_writes=False) -> DbopsApp:
    hub = FrozenHub()
    return DbopsApp(hub.config, allow_writes=allow_writes, state_dir=tmp_path, hub=hub, clock=lambda: NOW)


def table_text(table: DataTable) -> str:
    return "\n".join(" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count))


def audit_records(tmp_path):
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_overview_lists_worst_cluster_first_with_banner(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        table = app.screen.query_one("#clusters", DataTable)
        rows = table_text(table)
        first, second = (line for line in rows.splitlines() if not line.startswith(("▾", "▸")))
        assert "billing" in first and "CRIT" in first  # b1 is down
        assert "orders-db" in second and "WARN" in second  # pg3 lags 40 MiB / 14 s
        assert "40.0 MiB/14s" in second
        banner = str(app.screen.query_one("#banner").render())
        assert "PRODUCTION" in banner and "read-only" in banner and "staging" in banner


async def test_enter_opens_pane_with_topology_lag_and_blocking(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await pilot.press("down", "enter")
        await pilot.pause()
        assert isinstance(app.screen, PostgresScreen)
        topo = table_text(app.screen.query_one("#topology", DataTable))
        assert "pg1" in topo and "primary" in topo
        assert "pg3" in topo and "40.0 MiB" in topo and "14s" in topo
        activity = table_text(app.screen.query_one("#activity-table", DataTable))
        # pid, query age, transaction age, state
        assert "101 5m 5m idle in tx" in activity and "103 2m 2m active" in activity
        await pilot.press("2")
        await pilot.pause()
        tree = str(app.screen.query_one("#blocking-tree").render())
        assert "pid 101" in tree and "└─ pid 102" in tree
        await pilot.press(str(next(n for n, t in enumerate(PostgresScreen.TABS, 1) if t.id == "health")))
        await pilot.pause()
        health = str(app.screen.query_one("#health-text").render())
        assert "old_etl" in health  # inactive slot retaining 3 GiB
        assert "max xid age 210,000,000" in health
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, PostgresScreen)


async def test_filter_narrows_activity_and_escape_closes_it(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        app.open_cluster("production/orders-db")
        await pilot.pause()
        await pilot.press("slash")
        await pilot.press(*"region")
        await pilot.pause()
        table = app.screen.query_one("#activity-table", DataTable)
        assert table.row_count == 1 and "103" in table_text(table)
        await pilot.press("escape")
        await pilot.pause()
        assert not app.screen.query_one("#filter", Input).display


async def test_a_filter_typed_in_one_read_with_its_slash_never_reaches_the_panes_keys(tmp_path):
    """'/kc' arriving at once (typed fast, or in one read over a slow SSH link): the letters go
    into the filter, not to the pane's `k` (terminate) and `c` (cancel), whose dialogs would open."""
    app = make_app(tmp_path, allow_writes=True)
    async with app.run_test(size=(100, 30)) as pilot:
        app.open_cluster("production/orders-db")
        await pilot.pause()
        for key, char in [("slash", "/"), ("k", "k"), ("c", "c")]:
            event = events.Key(key, char)
            event.set_sender(app)
            app._driver.send_message(event)  # queued together, as a terminal's one read is
        await pilot.pause(0.3)
        assert isinstance(app.screen, PostgresScreen)  # no confirmation dialog opened
        assert app.screen.query_one("#filter", Input).value == "kc"

async def test_read_only_environment_greys_out_cancel_and_says_why(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        app.open_cluster("production/orders-db")
        await pilot.pause()
        assert app.screen.check_action("cancel_backend", ()) is None  # visible but disabled
        status = str(app.screen.query_one("#status").render())
        assert "read-only" in status
        await pilot.press("c")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmBackendModal)
        assert any("read-only" in n.message and "--allow-writes" in n.message for n in app._notifications)
        assert audit_records(tmp_path) == []


async def test_production_terminate_needs_the_pid_typed_and_is_audited(tmp_path):
    app = make_app(tmp_path, allow_writes=True)
    async with app.run_test(size=(120, 34)) as pilot:
        app.open_cluster("production/orders-db")
        await pilot.pause()
        # sorted by age: 101 (idle in transaction 300 s) is first, and it blocks 102
        await pilot.press("k")
        await pilot.pause()
        modal = app.screen
        assert isinstance(modal, ConfirmBackendModal)
        assert modal.act.pid == 101 and modal.act.blocks == (102,)
        go = modal.query_one("#go", Button)
        assert go.disabled
        await pilot.press("y")  # a reflex `y` does nothing here: it types into the pid box
        await pilot.pause()
        assert isinstance(app.screen, ConfirmBackendModal)
        await pilot.press("backspace", *"101")
        await pilot.pause()
        assert not go.disabled
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.hub.adapter.signalled == [("terminate", 101)]
        recs = audit_records(tmp_path)
        assert [r["phase"] for r in recs] == ["intent", "result"]
        assert recs[0]["action"] == "postgres.terminate_backend" and recs[0]["params"]["pid"] == 101
        assert recs[1]["outcome"] == "ok"
        assert verify(tmp_path / "audit.jsonl").ok


async def test_declined_cancel_sends_nothing_and_records_an_abort(tmp_path):
    app = make_app(tmp_path, allow_writes=True)
    async with app.run_test(size=(120, 34)) as pilot:
        app.open_cluster("production/orders-db")
        await pilot.pause()
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmBackendModal)
        await pilot.press("escape")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.hub.submitted == []
        recs = audit_records(tmp_path)
        assert [(r["phase"], r["outcome"]) for r in recs] == [("abort", "declined")]


async def test_backend_reused_for_another_query_is_not_signalled(tmp_path):
    app = make_app(tmp_path, allow_writes=True)
    async with app.run_test(size=(120, 34)) as pilot:
        app.open_cluster("production/orders-db")
        await pilot.pause()
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmBackendModal) and app.screen.act.pid == 101
        # between the refresh and the confirmation, pid 101 moved on to another query
        adapter = app.hub.adapter
        adapter.sessions[101] = dataclasses.replace(adapter.sessions[101], query="SELECT * FROM invoices")
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert adapter.signalled == []
        assert any("now running a different query" in n.message for n in app._notifications)
        recs = audit_records(tmp_path)
        assert [(r["phase"], r["outcome"]) for r in recs] == [("abort", "target-changed")]
        assert "SELECT * FROM invoices" in recs[0]["reason"]


async def test_help_and_pause(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert "HelpScreen" in type(app.screen).__name__
        await pilot.press("escape")
        await pilot.press("p")
        await pilot.pause()
        assert app.hub.paused
        assert "PAUSED" in str(app.screen.query_one("#banner").render())


async def test_an_unexpected_error_leaves_one_line_and_a_crash_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DBOPS_STATE_DIR", str(tmp_path))
    app = make_app(tmp_path)

    def boom() -> None:
        raise ZeroDivisionError("simulated bug")

    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            app.call_later(boom)
            await pilot.pause()
    except ZeroDivisionError:
        pass  # run_test re-raises the app's error for the test; `dbops` prints crash_message instead
    assert app.crash_message and "ZeroDivisionError" in app.crash_message and "crash.log" in app.crash_message
    assert "simulated bug" in (tmp_path / "crash.log").read_text()


async def test_pane_shows_the_primary_until_a_member_is_picked(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        app.open_cluster("production/orders-db")
        await pilot.pause()
        assert app.screen.member == "pg1"
        await pilot.press("m")
        await pilot.pause()
        assert app.screen.member == "pg2" and app.screen.member_pinned


def _header_and_rows(app) -> list[str]:
    """The overview's table as the terminal shows it: only what fits in the window's width."""
    table = app.screen.query_one("#clusters", DataTable)
    return [line.text for line in (table.render_line(y) for y in range(table.row_count + 1))]


async def test_overview_keeps_the_backup_column_on_an_80_column_screen(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        header, *_ = _header_and_rows(app)
        assert header.split() == ["Status", "Env", "Cluster", "Topology", "Worst", "lag", "Backup", "Conns", "Long"]


async def test_overview_leaves_out_the_env_column_with_a_single_environment(tmp_path):
    from dbops.config import parse

    from .frozen import CONFIG

    one_env = CONFIG.replace("[environments.staging]\nmode = \"operator\"\n", "").replace(
        "[environments.staging.clusters.billing]", "[environments.production.clusters.billing]")
    hub = FrozenHub(parse(one_env))
    app = DbopsApp(hub.config, state_dir=tmp_path, hub=hub, clock=lambda: NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        header, *rows = _header_and_rows(app)
        assert header.split()[:3] == ["Status", "Cluster", "Topology"]
        assert "production" not in " ".join(rows)  # the banner names it, once
        assert "PRODUCTION" in str(app.screen.query_one("#banner").render())
