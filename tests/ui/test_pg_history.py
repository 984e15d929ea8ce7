"""The PostgreSQL pane's History tab on frozen history, at 80x24: the charts, the window key and
the catch-up trend (also on the Health tab); and the chart's columns and axis on their own."""

from __future__ import annotations

from rich.text import Text

from dbops.engines.postgres.history import PgHistoryPoint
from dbops.hub import HistoryPoint
from dbops.screens.app import DbopsApp
from dbops.screens.pg_history import LABEL_WIDTH, bar_rows, columns, time_axis
from dbops.screens.postgres import PostgresScreen

from .frozen import NOW, FrozenHub

MiB = 1024 * 1024
WIDTH, HEIGHT = 80, 24
GAP = (-200.0, -170.0)  # no refresh answered in between


def pg3_lag(ago: float) -> int:
    """pg3: caught up until 5 minutes ago, then falling behind to 100 MiB 30 s ago, then
    catching up at 2 MiB/s: 40 MiB now (the lag its frozen snapshot shows)."""
    if ago < -300:
        return 0
    if ago < -30:
        return int((ago + 300) / 270 * 100 * MiB)
    return int(100 * MiB - (ago + 30) * 2 * MiB)


class HistoryHub(FrozenHub):
    """The frozen cluster with ten minutes of history every 2 s: pg1 writes WAL at 1 MiB/s,
    5 MiB/s between 6 and 4 minutes ago; pg2 steady at 2 MiB; pg3 as pg3_lag; nobody answered
    between GAP."""

    def history(self, key: str, member: str) -> list[HistoryPoint]:
        if key != "production/orders-db":
            return []
        out: list[HistoryPoint] = []
        lsn = 0x9000000 - 700 * MiB
        for i in range(301):
            ago = -600.0 + 2 * i
            lsn += (5 if -360 <= ago < -240 else 1) * 2 * MiB
            if GAP[0] < ago < GAP[1]:
                continue
            if member == "pg1":
                out.append(PgHistoryPoint(NOW + ago, None, None, 17, lsn))
            elif member == "pg2":
                out.append(PgHistoryPoint(NOW + ago, 2 * MiB, 0.4, 6, lsn - 2 * MiB))
            else:
                lag = pg3_lag(ago)
                out.append(PgHistoryPoint(NOW + ago, lag, lag / MiB * 0.35, 6, lsn - lag))
        return out


def make_app(tmp_path, hub: FrozenHub | None = None) -> DbopsApp:
    hub = hub or HistoryHub()
    return DbopsApp(hub.config, state_dir=tmp_path, hub=hub, clock=lambda: NOW)


def history_lines(app: DbopsApp) -> list[str]:
    widget = app.screen.query_one("#pg-history")
    text = widget.render()
    assert isinstance(text, Text)
    lines = text.plain.splitlines()
    # Everything fits the tab: no line wider than the widget, no more lines than its height.
    size = widget.content_region.size
    assert size.width >= WIDTH - 4 and size.height >= 12, size
    assert len(lines) <= size.height, (len(lines), size.height, lines)
    assert all(len(line) <= size.width for line in lines), [line for line in lines if len(line) > size.width]
    return lines


async def open_history(pilot) -> None:
    await pilot.pause()
    await pilot.press("down", "enter")
    await pilot.pause()
    assert isinstance(pilot.app.screen, PostgresScreen)
    await pilot.press("w")  # the first press shows the tab, in its default window
    await pilot.pause()


async def test_primary_history_shows_wal_throughput_and_every_replicas_trend(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(WIDTH, HEIGHT)) as pilot:
        await open_history(pilot)
        lines = history_lines(app)
        assert lines[0].startswith("pg1 (primary)  window (w): 1m [5m] 15m 60m"), lines[0]
        assert "kept" not in lines[0]  # ten minutes kept: the 5m window is full
        assert lines[1].startswith("WAL written (bytes/s)  now 1.0 MiB/s, max 5.0 MiB/s"), lines[1]
        # the scale on the left: its top, then zero at the bottom row of bars
        assert lines[2].startswith("5.0 MiB/s│")
        axis = next(i for i, line in enumerate(lines) if line.rstrip().endswith("now"))
        assert lines[axis - 1].startswith("        0│")
        assert "-5m" in lines[axis] and "-1m" in lines[axis]
        # 6 to 4 minutes ago pg1 wrote 5 MiB/s: in the 5m window, a full bar at its left edge
        # (the burst ended 4 minutes ago), 1 MiB/s bars after it
        bars = lines[2][LABEL_WIDTH + 1:]
        assert bars[:5] == "█████" and set(bars[-20:]) == {" "}, bars
        assert lines[axis + 1] == "pg2: steady at 2.0 MiB (no clear trend, last 60s, 31 refreshes)"
        assert lines[axis + 2] == "pg3: catching up at 2.0 MiB/s, ETA 20s (last 30s, 16 refreshes)"

        await pilot.press("w")  # 15m
        await pilot.pause()
        lines = history_lines(app)
        assert "[15m]" in lines[0] and "kept 10m so far" in lines[0]
        axis = next(i for i, line in enumerate(lines) if line.rstrip().endswith("now"))
        assert "-15m" in lines[axis] and "-10m" in lines[axis] and "-5m" in lines[axis]
        await pilot.press("w", "w")  # 60m, then back to 1m
        await pilot.pause()
        lines = history_lines(app)
        assert "[1m]" in lines[0]
        assert "-45s" in lines[next(i for i, line in enumerate(lines) if line.rstrip().endswith("now"))]


async def test_replica_history_charts_its_lag_and_says_when_it_catches_up(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(WIDTH, HEIGHT)) as pilot:
        await open_history(pilot)
        await pilot.press("m", "m")  # pg2, then pg3
        await pilot.pause()
        lines = history_lines(app)
        assert lines[0].startswith("pg3 (replica)"), lines[0]
        assert lines[1] == "trend: catching up at 2.0 MiB/s, ETA 20s (last 30s, 16 refreshes)"
        assert lines[2].startswith("replay lag (bytes)  now 40.0 MiB, max 100.0 MiB"), lines[2]
        assert lines[3].startswith("100.0 MiB│")
        seconds = next(i for i, line in enumerate(lines) if line.startswith("replay lag (time)"))
        assert "now 14s, max 35s" in lines[seconds]
        bytes_rows = lines[3:seconds]
        assert len(bytes_rows) >= 4 and len(lines) - seconds - 2 >= 2  # bytes get the taller chart
        # the newest column (40 MiB of 100) stands under half the bytes chart; the top row holds
        # the peak 30 s ago, a fifth of the way from the right in the 5m window
        top = bytes_rows[0][LABEL_WIDTH + 1:]
        assert top[-1] == " " and "█" in top[-10:-4], top
        # the unanswered refreshes between 200 and 170 s ago: blank columns in every row of
        # both charts (no bar drawn where nothing was seen)
        width = len(top)
        gap_cols = [c for c in range(width) if -300 + (c + 1) * 300 / width < GAP[1] - 5 and -300 + c * 300 / width > GAP[0] + 5]
        assert gap_cols
        for row in lines[3:seconds] + lines[seconds + 1:-1]:
            assert all(row[LABEL_WIDTH + 1 + c] == " " for c in gap_cols), row


async def test_health_tab_names_the_catch_up_of_a_lagging_replica(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(WIDTH, HEIGHT)) as pilot:
        await pilot.pause()
        await pilot.press("down", "enter")
        await pilot.pause()
        pane = app.screen
        assert isinstance(pane, PostgresScreen)
        await pilot.press(str(next(n for n, t in enumerate(pane.TABS, 1) if t.id == "health")))
        await pilot.pause()
        health = str(pane.query_one("#health-text").render())
        assert "pg3: catching up at 2.0 MiB/s, ETA 20s (last 30s, 16 refreshes)" in health
        assert "pg2: steady at 2.0 MiB" in health


async def test_too_little_history_is_said_not_guessed(tmp_path):
    """The plain frozen hub keeps 22 s of pg3 (a trend: falling behind); with only its last two
    figures nothing is guessed."""

    class Short(FrozenHub):
        def history(self, key, member):
            return super().history(key, member)[-2:]

    app = make_app(tmp_path, Short())
    async with app.run_test(size=(WIDTH, HEIGHT)) as pilot:
        await open_history(pilot)
        lines = history_lines(app)
        assert "kept 4.0s so far" in lines[0]
        assert lines[1].startswith("WAL written (bytes/s)  no figures in this window")
        assert lines[-1] == "pg3: not enough history yet: 2 lag figures over 2.0s (needs 5 over 10s)"


# ---------------------------------------------------------------------------------------------
# The chart's parts


def test_columns_take_the_worst_hold_briefly_and_leave_gaps_blank():
    samples = [(0.0, 1.0), (1.0, 5.0), (2.0, 3.0), (4.0, 2.0), (20.0, 7.0)]
    # ten 2-second columns over [0, 20]; a sample may hold over 4 s
    cols = columns(samples, end=20.0, window=20.0, width=10, combine=max, hold=4.0)
    assert cols[:3] == [5.0, 3.0, 2.0]  # worst of 0 and 1 s; 2 s; 4 s
    assert cols[3] == 2.0  # 6 s: held from 4 s (2 s old)
    assert cols[4] == 2.0  # 8 s: held (4 s old)
    assert cols[5:9] == [None] * 4  # 10-18 s: nothing seen
    assert cols[9] == 7.0  # the sample at the window's end lands in the last column
    assert columns([], end=20.0, window=20.0, width=4, combine=max, hold=4.0) == [None] * 4


def test_bars_scale_from_zero_in_eighths():
    rows = bar_rows([8.0, 4.0, 0.0, None, 1.0], height=2, top=8.0, style=lambda v: "red" if v > 5 else "green")
    assert [r.plain for r in rows] == ["█    ", "██▁ ▂"]  # a zero is a floor, a gap is blank
    # each column in its value's style; the zero dim, so it reads as a floor, not as a value
    assert [(s.start, s.style) for s in rows[1].spans] == [(0, "red"), (1, "green"), (2, "dim"), (4, "green")]


def test_time_axis_ends_at_now_with_window_ticks():
    axis = time_axis(300, 60).plain[LABEL_WIDTH + 1:]
    assert axis.endswith("now") and axis.startswith("-5m") and len(axis) == 60
    assert [w for w in axis.split()] == ["-5m", "-4m", "-3m", "-2m", "-1m", "now"]
