"""The fleet overview with 1000 clusters at 80x24, driven with Pilot: keys in, what the screen
shows out (the table's visible lines and the header line above it)."""

from __future__ import annotations

import dataclasses
import re

import pytest
from textual import events
from textual.widgets import DataTable, Input

from dbops.model import Reachability, Severity
from dbops.screens.app import DbopsApp, HealthChanged
from dbops.screens.overview import FleetTable, OverviewScreen
from dbops.screens.postgres import PostgresScreen

from .frozen import FLEET_ENVIRONMENTS, NOW, FleetHub, fleet_name, fleet_problem

N = 1000


@pytest.fixture(scope="module")
def fleet() -> FleetHub:
    """Built once (judging 1000 clusters takes a second); tests that change health build their own."""
    return FleetHub(N)


def make_app(tmp_path, hub: FleetHub) -> DbopsApp:
    return DbopsApp(hub.config, state_dir=tmp_path, hub=hub, clock=lambda: NOW)


def visible(app) -> list[str]:
    """The table's lines as the terminal shows them: its column header, then the rows in view."""
    table = app.screen.query_one("#clusters", DataTable)
    return [table.render_line(y).text.rstrip() for y in range(table.size.height)]


def cluster_lines(app) -> list[str]:
    """The visible rows that are clusters (a group's header starts with its fold mark)."""
    return [line for line in visible(app)[1:] if line and line.split()[0] in {s.name for s in Severity}]


def group_lines(app) -> list[str]:
    return [line for line in visible(app)[1:] if line.lstrip()[:1] in ("▾", "▸")]


def status(app) -> str:
    return str(app.screen.query_one("#fleet-status").render())


def expected_counts() -> tuple[int, int]:
    """CRIT and WARN clusters of the frozen fleet, from how it was built."""
    problems = [fleet_problem(i) for i in range(N)]
    return problems.count("down"), problems.count("lag")


async def test_header_counts_the_fleet_and_groups_show_worst_first(tmp_path, fleet):
    crit, warn = expected_counts()
    app = make_app(tmp_path, fleet)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert status(app).startswith(f"{N} clusters: {crit} CRIT, {warn} WARN · sort severity")
        lines = visible(app)
        assert lines[0].split()[:3] == ["Status", "Env", "Cluster"]
        # production is first in config and has a CRIT (as every group here): its header, then its worst.
        assert lines[1].split()[:3] == ["▾", "PRODUCTION", "250"]
        assert "CRIT" in lines[1] and "WARN" in lines[1]
        severities = [line.split()[0] for line in cluster_lines(app)]
        assert severities[0] == "CRIT" and severities == sorted(severities, key=lambda s: -Severity[s].rank)
        # The cursor starts on the first cluster, not on the header it passes over.
        table = app.screen.query_one(FleetTable)
        assert table.cursor_row == 1


async def test_typing_a_filter_narrows_the_rows_and_escape_drops_it(tmp_path, fleet):
    app = make_app(tmp_path, fleet)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("slash", *"ledger-pg-1")
        await pilot.pause()
        wanted = sorted(fleet_name(i) for i in range(N) if fleet_name(i).startswith("ledger-pg-1"))
        assert status(app).split(" · ")[1] == f"{len(wanted)} shown: /ledger-pg-1"
        shown = [line.split()[2] for line in cluster_lines(app)]
        assert shown and all(name.startswith("ledger-pg-1") for name in shown)
        await pilot.press("backspace", "backspace")  # "ledger-pg" widens it again, as typed
        await pilot.pause()
        assert " shown: /ledger-pg ·" in status(app)
        await pilot.press("escape")
        await pilot.pause()
        assert "shown" not in status(app)
        assert not app.screen.query_one("#fleet-prompt-bar").display
        assert len(cluster_lines(app)) > 10  # every cluster again, as many as fit


async def test_colon_commands_filter_by_engine_environment_and_name(tmp_path, fleet):
    app = make_app(tmp_path, fleet)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("colon", *"redis", "enter")
        await pilot.pause()
        assert all("-redis-" in line for line in cluster_lines(app)) and cluster_lines(app)
        assert ":redis" in status(app)
        await pilot.press("colon", *"env qa", "enter")
        await pilot.pause()
        assert [line.split()[1] for line in group_lines(app)] == ["qa"]
        assert all(line.split()[1] == "qa" and "-redis-" in line for line in cluster_lines(app))
        await pilot.press("colon", *"all", "enter", "colon", *"cluster orders-*", "enter")
        await pilot.pause()
        assert status(app).split(" · ")[1] == f"{sum(fleet_name(i).startswith('orders-') for i in range(N))} shown: :cluster orders-*"
        assert all(line.split()[2].startswith("orders-") for line in cluster_lines(app))
        await pilot.press("colon", *"all", "enter")
        await pilot.pause()
        assert "shown" not in status(app)
        await pilot.press("colon", *"problems", "enter")  # its p goes into the line, not to pause
        await pilot.pause()
        assert "problems only" in status(app) and not app.hub.paused


async def test_an_unknown_command_says_so_and_changes_nothing(tmp_path, fleet):
    app = make_app(tmp_path, fleet)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        before = visible(app)
        await pilot.press("colon", *"frobnicate now", "enter")
        await pilot.pause()
        assert any(n.message.startswith("unknown command :frobnicate; try :pg") for n in app._notifications)
        assert visible(app) == before and isinstance(app.screen, OverviewScreen)


async def test_colon_alerts_opens_the_alerts_view(tmp_path, fleet):
    from dbops.screens.alerts import AlertsScreen

    app = make_app(tmp_path, fleet)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("colon", *"alerts", "enter")
        await pilot.pause()
        assert isinstance(app.screen, AlertsScreen)


async def test_problems_only_shows_every_cluster_not_ok(tmp_path, fleet):
    crit, warn = expected_counts()
    app = make_app(tmp_path, fleet)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("a")
        await pilot.pause()
        assert status(app).split(" · ")[1] == f"{crit + warn} shown: problems only"
        assert {line.split()[0] for line in cluster_lines(app)} <= {"CRIT", "WARN"}
        assert "of 250" in group_lines(app)[0]
        # All of them fit at 80x24: every one of them is on screen.
        assert len(cluster_lines(app)) == crit + warn or len(visible(app)) == app.screen.query_one(FleetTable).size.height
        await pilot.press("a")
        await pilot.pause()
        assert "shown" not in status(app)
        assert "OK" in {line.split()[0] for line in cluster_lines(app)}


async def test_space_folds_the_cursors_group_and_enter_unfolds_it(tmp_path, fleet):
    app = make_app(tmp_path, fleet)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("space")
        await pilot.pause()
        groups = group_lines(app)
        assert groups[0].split()[:3] == ["▸", "PRODUCTION", "250"]
        # The next environment's header follows at once: production's clusters are folded away.
        assert visible(app)[2].lstrip().startswith("▾")
        assert all(line.split()[1] != "production" for line in cluster_lines(app))
        table = app.screen.query_one(FleetTable)
        assert table.cursor_row == 0  # on the folded header
        await pilot.press("down", "up")  # a folded header is a stop for the cursor
        assert table.cursor_row == 0
        await pilot.press("enter")
        await pilot.pause()
        assert group_lines(app)[0].split()[0] == "▾"
        assert table.cursor_row == 1 and cluster_lines(app)[0].split()[1] == "production"


def cursor_cluster(app) -> str:
    table = app.screen.query_one(FleetTable)
    return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)


async def test_s_cycles_the_sort_and_the_header_says_which(tmp_path, fleet):
    app = make_app(tmp_path, fleet)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("down", "down")
        selected = cursor_cluster(app)
        await pilot.press("s")
        await pilot.pause()
        assert status(app).endswith("sort name")
        assert cursor_cluster(app) == selected  # the rows moved, the cursor stayed on its cluster
        await pilot.press("ctrl+home")
        await pilot.pause()
        assert visible(app)[1].split()[:2] == ["▾", "PRODUCTION"]  # the top, its group's header in view
        names = [line.split()[2] for line in cluster_lines(app)]
        production = sorted(fleet_name(i) for i in range(N) if FLEET_ENVIRONMENTS[i % 4] == "production")
        assert names == production[:len(names)]
        await pilot.press("s")
        await pilot.pause()
        assert status(app).endswith("sort engine")
        await pilot.press("ctrl+home")
        await pilot.pause()
        assert all("pg1▲" in line for line in cluster_lines(app))  # PostgreSQL before Redis
        await pilot.press("s", "ctrl+home")
        await pilot.pause()
        assert status(app).endswith("sort severity") and cluster_lines(app)[0].split()[0] == "CRIT"


async def test_enter_opens_the_cluster_under_the_cursor(tmp_path, fleet):
    app = make_app(tmp_path, fleet)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("slash", *"orders-pg-000", "enter", "enter")
        await pilot.pause()
        assert isinstance(app.screen, PostgresScreen) and app.screen.key == "production/orders-pg-000"
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, OverviewScreen)
        assert cluster_lines(app)[0].split()[2] == "orders-pg-000"  # the filter stays


async def test_a_health_change_updates_only_its_row_and_a_new_order_waits_for_the_coalesced_layout(tmp_path, monkeypatch):
    hub = FleetHub(N)
    app = make_app(tmp_path, hub)
    updated: list[tuple[str, str]] = []
    refills: list[int] = []
    real_update, real_replace = FleetTable.update_cell, FleetTable.replace_rows

    def update_cell(self, row_key, column_key, value, **kw):
        updated.append((str(row_key), str(column_key)))
        return real_update(self, row_key, column_key, value, **kw)

    def replace_rows(self, rows, *args, **kw):
        refills.append(len(rows))
        return real_replace(self, rows, *args, **kw)

    monkeypatch.setattr(FleetTable, "update_cell", update_cell)
    monkeypatch.setattr(FleetTable, "replace_rows", replace_rows)
    # A window no machine's start-up outlasts: the changes below land inside it, however slow
    # the run (with 0.5 s a slow CI machine's start-up used it up, and the first change refilled).
    monkeypatch.setattr(OverviewScreen, "COALESCE_SECONDS", 3.0)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        refills.clear()
        # An OK cluster in view goes WARN: its own cells at once (one cell: the rest of the row
        # did not change), its place later.
        table = app.screen.query_one(FleetTable)
        in_view = [str(k.value) for k in list(table.rows)[: table.size.height - 1]]
        shown_ok = next(h for h in hub.health() if f"{h.environment}/{h.name}" in in_view and h.severity is Severity.OK)
        shown_key = f"{shown_ok.environment}/{shown_ok.name}"
        hub.put(dataclasses.replace(shown_ok, severity=Severity.WARN))
        app.post_message(HealthChanged())
        await pilot.pause()
        assert updated == [(shown_key, "status")]
        # An OK cluster far down the list goes CRIT: out of view, its cells wait for the refill
        # (an update anywhere repaints the whole table).
        updated.clear()
        healthy = [h for h in hub.health() if h.severity is Severity.OK and h.environment == "production"][-1]
        hub.put(dataclasses.replace(healthy, severity=Severity.CRIT))
        app.post_message(HealthChanged())
        await pilot.pause()
        assert updated == []
        assert refills == []  # not yet: coalesced
        await pilot.pause(OverviewScreen.COALESCE_SECONDS + 0.2)
        assert refills == [N + len(FLEET_ENVIRONMENTS)]  # once, every row and header
        # Now among production's three CRITs, at the top of the screen.
        assert healthy.name in [line.split()[2] for line in cluster_lines(app)[:3] if line.startswith("  CRIT")]
        crit, warn = expected_counts()
        assert status(app).startswith(f"{N} clusters: {crit + 1} CRIT, {warn + 1} WARN")


async def test_keys_are_answered_without_waiting_for_the_coalesced_layout(tmp_path):
    hub = FleetHub(N)
    app = make_app(tmp_path, hub)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        healthy = next(h for h in hub.health() if h.severity is Severity.OK)
        hub.put(dataclasses.replace(healthy, severity=Severity.WARN))
        app.post_message(HealthChanged())
        await pilot.press("a")  # right after a change from the pollers: no half-second wait
        assert "shown: problems only" in status(app)
        assert {line.split()[0] for line in cluster_lines(app)} <= {"CRIT", "WARN"}


def last_cluster_loses_a_member(hub: FleetHub, table: FleetTable):
    """The table's last cluster (far out of view) gets a member DOWN, at the same severity (so
    its place does not change); its key and that member."""
    key = [str(k.value) for k in table.rows if str(k.value) in hub._by_key][-1]
    health = hub.cluster_health(key)
    first = health.members[0]
    gone = dataclasses.replace(first, snapshot=dataclasses.replace(first.snapshot, reachability=Reachability.DOWN))
    hub.put(dataclasses.replace(health, members=(gone, *health.members[1:])))
    return key, first


async def assert_down_once_scrolled_to(pilot, app, table: FleetTable, key: str, member: str) -> None:
    table.move_cursor(row=table.row_count - 1)  # as ctrl+end does
    await pilot.pause()
    name = key.split("/", 1)[1]
    rows = [line for line in cluster_lines(app) if name in line]
    assert rows and re.search(rf"\b{member}▲?✗", rows[0]), cluster_lines(app)


async def test_a_row_out_of_view_shows_its_new_health_once_scrolled_to(tmp_path):
    """A change that keeps the order (no refill) to a cluster out of view: its row is brought up
    to date when it scrolls into view, not left showing the old values."""
    hub = FleetHub(N)
    app = make_app(tmp_path, hub)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        table = app.screen.query_one(FleetTable)
        key, first = last_cluster_loses_a_member(hub, table)
        app.post_message(HealthChanged())
        await pilot.pause(OverviewScreen.COALESCE_SECONDS + 0.2)
        await assert_down_once_scrolled_to(pilot, app, table, key, first.name)


async def test_a_row_out_of_view_when_the_order_changes_shows_its_new_health_once_scrolled_to(tmp_path):
    """A refill (the order changed) keeps the old cells of clusters far out of view whose health
    changed, and brings each up to date as it scrolls into view."""
    hub = FleetHub(N)
    app = make_app(tmp_path, hub)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        table = app.screen.query_one(FleetTable)
        key, first = last_cluster_loses_a_member(hub, table)
        # and a cluster in view changes place: the table is refilled
        healthy = [h for h in hub.health() if h.severity is Severity.OK and h.environment == "production"][-1]
        hub.put(dataclasses.replace(healthy, severity=Severity.CRIT))
        app.post_message(HealthChanged())
        await pilot.pause(OverviewScreen.COALESCE_SECONDS + 0.2)
        assert healthy.name in [line.split()[2] for line in cluster_lines(app)[:3] if line.startswith("  CRIT")]
        await assert_down_once_scrolled_to(pilot, app, table, key, first.name)


async def test_a_filter_typed_in_one_read_with_its_slash_fills_the_prompt(tmp_path, fleet):
    """'/ors' arriving at once (typed fast, or in one read over a slow SSH link): every key after
    the slash lands in the prompt; none reaches the table (whose `s` would sort)."""
    app = make_app(tmp_path, fleet)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        for key, char in [("slash", "/"), ("o", "o"), ("r", "r"), ("s", "s"), ("slash", "/")]:
            event = events.Key(key, char)
            event.set_sender(app)
            app._driver.send_message(event)  # queued together, as a terminal's one read is
        await pilot.pause(0.3)
        assert app.screen.query_one("#fleet-prompt", Input).value == "ors/"  # a slash in the prompt is text
        assert "sort severity" in status(app)
        assert "shown: /ors/" in status(app)
