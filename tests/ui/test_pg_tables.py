"""The PostgreSQL pane's Tables tab on frozen data, driven with Pilot at 80x24: it reads when opened
(in a worker: "reading…" first), shows every section readably, how long ago it read, the errors in
one line each, and `r` re-reads only while the tab is on screen.

The tab's reader is replaced by one that returns a fixed read (the frozen hub's servers do not
exist); the sandbox's real servers drive it in tests/integration/test_pg_table_health.py."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime

from dbops.engines.postgres.tables import IndexBloat, TableBloat, TableHealth, TableSize, UnusedIndex, VacuumState
from dbops.screens.app import DbopsApp
from dbops.screens.pg_tables import TableHealthView, rendered_text
from dbops.screens.postgres import PostgresScreen
from dbops.screens.runbook import RunbookScreen

from .frozen import NOW, FrozenHub

MiB = 1024 * 1024


def health(member: str = "pg1", read_at: float = NOW, **changes) -> TableHealth:
    return dataclasses.replace(TableHealth(
        member=member, read_at=read_at, database="orders", stats_reset=datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
        in_recovery=False, autovacuum=True,
        vacuum=(VacuumState("public", "order_events_with_a_rather_long_name", 1_000_000, 400_000, 5, None, 7200.0, 60.0,
                            None, 3, False),),
        bloat=(TableBloat("public", "order_events_with_a_rather_long_name", 900 * MiB, 450 * MiB, 50.0, 100),
               TableBloat("public", "fresh", 8192, None, None, 100)),
        not_estimable=1,
        index_bloat=(IndexBloat("public", "order_events_with_a_rather_long_name", "order_events_created_idx", 300 * MiB,
                                120 * MiB, 40.0, 90),),
        unused=(UnusedIndex("public", "orders", "orders_legacy_ref_idx", 64 * MiB, False, False, False, True, None),
                UnusedIndex("public", "orders", "orders_pkey", 32 * MiB, True, True, False, True, "orders_pkey")),
        sizes=(TableSize("public", "order_events_with_a_rather_long_name", 900 * MiB, 300 * MiB, 8 * MiB, 1208 * MiB),),
    ), **changes)


class Reader:
    """Returns `results` in turn, each once the test lets it (`release`); records who was read."""

    def __init__(self, *results) -> None:
        self.results = list(results)
        self.asked: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    async def __call__(self, ref, member, now):
        self.asked.append(member)
        self.gate.wait(10)
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result


def make_app(tmp_path, clock) -> DbopsApp:
    hub = FrozenHub()
    return DbopsApp(hub.config, state_dir=tmp_path, hub=hub, clock=lambda: clock[0])


def tables_key() -> str:
    return next(b.key for b in PostgresScreen.BINDINGS if getattr(b, "action", "") == "tab('tables')")


async def settle(pilot, predicate, what: str, show=lambda: ""):
    for _ in range(200):
        await pilot.pause(0.02)
        if predicate():
            return
    raise AssertionError(f"gave up waiting for {what}; {show()}")


async def open_pane(pilot, app, reader: Reader) -> TableHealthView:
    app.open_cluster("production/orders-db")
    await settle(pilot, lambda: isinstance(app.screen, PostgresScreen) and app.screen.is_mounted, "the pane")
    view = app.screen.query_one(TableHealthView)
    view.read = reader
    return view


async def test_opening_the_tab_reads_once_in_a_worker_and_shows_every_section_at_80_columns(tmp_path):
    clock = [NOW]
    reader = Reader(health())
    reader.gate.clear()
    app = make_app(tmp_path, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        view = await open_pane(pilot, app, reader)
        assert reader.asked == []  # nothing is read until the tab is opened
        await pilot.press(tables_key())
        await settle(pilot, lambda: reader.asked == ["pg1"], "the read to start")
        assert "reading pg1…" in view.status().plain  # the UI is not waiting on the read
        reader.gate.set()
        await settle(pilot, lambda: view.health is not None, "the read to land")
        status = view.status().plain
        assert "pg1 · orders · read 0ms ago" in status and "r re-read" in status
        width = view.body_width()
        assert 70 <= width < 80  # the tab's width, less its scrollbar
        text = rendered_text(view.body(), width)
        assert all(len(line) <= width for line in text.splitlines())
        for expected in ("Dead tuples and vacuum", "400k", "29%", "never", "2.0h", "autovacuum off",
                         "Table bloat (estimate)", "900.0 MiB", "450.0 MiB", "50%", "n/a",
                         "1 table(s) have no statistics (n/a): ANALYZE them", "Index bloat (estimate)", "public.order_events_created_idx",
                         "120.0 MiB", "Unused indexes", "public.orders_legacy_ref_idx", "64.0 MiB", "droppable",
                         "keep: primary key", "reset 2026-01-02 03:04 UTC", "Largest tables", "1.2 GiB", "8.0 MiB"):
            assert expected in text, f"{expected!r} not in:\n{text}"
        assert "public.order_events_with" in text  # a long name gives way, its start stays readable
        clock[0] += 12
        await settle(pilot, lambda: "read 12s ago" in view.status().plain, "the age to move on")
        assert reader.asked == ["pg1"]  # shown for 12 s: still one read, no polling


async def test_r_rereads_inside_the_tab_and_opens_runbooks_elsewhere(tmp_path):
    clock = [NOW]
    reader = Reader(health(), health(read_at=NOW + 5))
    app = make_app(tmp_path, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        view = await open_pane(pilot, app, reader)
        await pilot.press(tables_key())
        await settle(pilot, lambda: view.health is not None, "the first read")
        clock[0] += 5
        await pilot.press("r")
        await settle(pilot, lambda: len(reader.asked) == 2 and view.reading is None, "the re-read")
        assert view.health.read_at == NOW + 5
        await pilot.press("1")
        await pilot.pause()
        assert app.screen.focused is app.screen.query_one("#activity-table")  # the keys are the pane's again
        await pilot.press("r")
        await settle(pilot, lambda: isinstance(app.screen, RunbookScreen) or app.screen is not view.screen, "runbooks")
        assert len(reader.asked) == 2


async def test_a_member_that_does_not_answer_is_one_red_line_and_the_previous_read_stays(tmp_path):
    clock = [NOW]
    down = TableHealth(member="pg1", read_at=NOW + 60, error="connection refused at 10.0.0.1:5432")
    reader = Reader(health(), down)
    app = make_app(tmp_path, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        view = await open_pane(pilot, app, reader)
        await pilot.press(tables_key())
        await settle(pilot, lambda: view.health is not None, "the first read")
        clock[0] += 60
        await pilot.press("r")
        await settle(pilot, lambda: view.failed is not None, "the failed read")
        status = view.status().plain
        assert "pg1: could not read: connection refused at 10.0.0.1:5432" in status
        assert "showing pg1's read from 60s ago" in status  # what is still shown, and how old it is
        assert "450.0 MiB" in rendered_text(view.body(), 80)


async def test_a_section_that_failed_says_why_in_its_place_and_the_others_show(tmp_path):
    clock = [NOW]
    partial = health(index_bloat=None, errors=(("index_bloat", "index bloat: did not finish within 10s (statement_timeout); not read"),))
    app = make_app(tmp_path, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        view = await open_pane(pilot, app, Reader(partial))
        await pilot.press(tables_key())
        await settle(pilot, lambda: view.health is not None, "the read")
        text = rendered_text(view.body(), 80)
        assert "did not finish within 10s (statement_timeout); not read" in text
        assert "450.0 MiB" in text and "droppable" in text
        assert "1 section(s) not read" in view.status().plain


async def test_a_bug_in_the_reader_is_one_line_and_a_crash_file_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("DBOPS_STATE_DIR", str(tmp_path))
    clock = [NOW]
    app = make_app(tmp_path, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        view = await open_pane(pilot, app, Reader(KeyError("relname")))
        await pilot.press(tables_key())
        await settle(pilot, lambda: view.failed is not None, "the failure")
        status = view.status().plain
        assert "pg1: could not read: unexpected KeyError; details in" in status and "Traceback" not in status
    assert "KeyError" in (tmp_path / "crash.log").read_text()


async def test_another_member_picked_while_the_tab_is_open_is_read(tmp_path):
    clock = [NOW]
    reader = Reader(health(), health(member="pg2"))
    app = make_app(tmp_path, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        view = await open_pane(pilot, app, reader)
        await pilot.press(tables_key())
        await settle(pilot, lambda: view.health is not None, "the first read")
        await pilot.press("m")
        await settle(pilot, lambda: view.health.member == "pg2", "pg2's read", show=lambda: f"asked {reader.asked}")
        assert reader.asked == ["pg1", "pg2"]
        assert view.status().plain.startswith("pg2 · orders")
