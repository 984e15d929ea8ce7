"""The audit screen, driven by Textual's Pilot."""

from __future__ import annotations

from pathlib import Path

from textual.app import App
from textual.widgets import DataTable

from dbops.audit import AuditLog
from dbops.screens.audit import AuditScreen


class _Host(App):
    def __init__(self, log_path: Path) -> None:
        super().__init__()
        self.log_path = log_path

    def on_mount(self) -> None:
        self.push_screen(AuditScreen(self.log_path))


async def _settle(app: App, pilot) -> AuditScreen:
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, AuditScreen)
    await screen.workers.wait_for_complete()
    await pilot.pause()
    return screen


def _write(path: Path, n: int) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        log.abort(action=f"act{i}", environment="prod", cluster="main", member="db1", reason="[bold]not markup[/]")
    return log


async def test_shows_records_newest_first_with_the_verdict(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 3)
    app = _Host(path)
    async with app.run_test() as pilot:
        screen = await _settle(app, pilot)
        table = screen.query_one(DataTable)
        assert table.row_count == 3
        first = table.get_row_at(0)
        assert str(first[0]) == "2" and str(first[5]) == "act2"  # newest first
        assert str(first[4]) == "prod/main/db1"
        assert screen.verdict == "chain intact: 3 records"

        # r reloads: new records appear
        _write(path, 2)
        await pilot.press("r")
        screen = await _settle(app, pilot)
        assert table.row_count == 5

        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, AuditScreen)


async def test_tampered_log_shows_the_first_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 3)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[2])
    app = _Host(path)
    async with app.run_test() as pilot:
        screen = await _settle(app, pilot)
        assert screen.verdict.startswith("TAMPERED at line 2 (seq 2): ")
        assert screen.query_one(DataTable).row_count == 2
        await pilot.press("q")
        await pilot.pause()
        assert not isinstance(app.screen, AuditScreen)


async def test_missing_and_unreadable_logs(tmp_path: Path) -> None:
    app = _Host(tmp_path / "none.jsonl")
    async with app.run_test() as pilot:
        screen = await _settle(app, pilot)
        assert screen.verdict.startswith("no audit log yet")
        assert screen.query_one(DataTable).row_count == 0

    app = _Host(tmp_path)  # a directory: reading fails in the worker, shown in the verdict
    async with app.run_test() as pilot:
        screen = await _settle(app, pilot)
        assert screen.verdict.startswith("cannot read audit log")
