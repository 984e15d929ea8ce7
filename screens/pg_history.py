"""The PostgreSQL pane's History tab: the kept hour of a member as charts you can read at 80x24.

A replica: its replay lag in bytes and in seconds, and whether it is catching up (the core's
dbops.engines.postgres.catchup). The primary: its WAL throughput (bytes/s between successive
refreshes' current_lsn), and every replica's catch-up trend under it. `w` steps the window
through WINDOWS.

The charts are block bars in rich Text (eight levels a cell, the newest on the right), with the
scale's top on the left and a time axis under them: no plotting dependency, and what a test
reads is what the operator sees. A column is the worst lag (the mean throughput) of the
refreshes it covers; a column no refresh covers is blank (unanswered refreshes are gaps, not
zeros), unless the last refresh before it is recent enough to hold over it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget
from textual.widgets import TabbedContent, TabPane

from dbops.config import PostgresThresholds
from dbops.engines.postgres.catchup import CatchUp, Trend, from_history
from dbops.engines.postgres.history import GAP_INTERVALS, PgHistoryPoint, pg_points, typical_interval, wal_rates
from dbops.model import ClusterHealth, MemberHealth, human_bytes, human_seconds

# The windows `w` steps through: (seconds, label).
WINDOWS: tuple[tuple[int, str], ...] = ((60, "1m"), (300, "5m"), (900, "15m"), (3600, "60m"))
DEFAULT_WINDOW = 1  # 5m
# The time axis' ticks per window: seconds between labels.
TICKS = {60: 15, 300: 60, 900: 300, 3600: 900}

_BARS = "▁▂▃▄▅▆▇█"
LABEL_WIDTH = 9  # the scale's labels, right-aligned, then the axis line

TREND_STYLE = {
    Trend.CAUGHT_UP: "green",
    Trend.CATCHING_UP: "bold cyan",
    Trend.FALLING_BEHIND: "bold yellow",
    Trend.STEADY: "",
    Trend.UNKNOWN: "dim",
}


def trend_text(name: str, c: CatchUp) -> Text:
    """"pg3: catching up at 12.0 MiB/s, ETA 40s (over the last 45s, 23 refreshes)" in the
    trend's colour."""
    out = Text(f"{name}: ", style="bold")
    out.append(c.message, style=TREND_STYLE[c.trend])
    return out


def replica_trends(hub_history: Callable[[str], Sequence[object]], health: ClusterHealth, now: float) -> list[tuple[str, CatchUp]]:
    """Each replica's catch-up trend, in the health's member order."""
    return [(m.name, from_history(hub_history(m.name), now)) for m in health.members if m.role == "replica"]


def catchup_lines(hub_history: Callable[[str], Sequence[object]], health: ClusterHealth, now: float) -> Text:
    """The Health tab's lines: each lagging replica's trend (nothing for a caught-up one)."""
    out = Text()
    for name, c in replica_trends(hub_history, health, now):
        if c.trend is not Trend.CAUGHT_UP:
            out.append("  ")
            out.append_text(trend_text(name, c))
            out.append("\n")
    return out


# ---------------------------------------------------------------------------------------------
# Columns and charts (no Textual: a width and a height in, lines of Text out)


def columns(
    samples: Sequence[tuple[float, float | None]],
    end: float,
    window: float,
    width: int,
    combine: Callable[[list[float]], float],
    hold: float,
) -> list[float | None]:
    """`width` values over [end - window, end], oldest first: `combine` of the samples in each
    column; a column without one holds the newest sample before it when that is at most `hold`
    seconds older than the column's start, else None (a gap)."""
    start = end - window
    step = window / width
    known = [(t, v) for t, v in samples if v is not None and t <= end]
    times = [t for t, _ in known]
    out: list[float | None] = []
    for c in range(width):
        c0, c1 = start + c * step, start + (c + 1) * step
        lo = bisect_left(times, c0)
        hi = bisect_left(times, c1) if c < width - 1 else len(times)
        if hi > lo:
            out.append(combine([v for _, v in known[lo:hi]]))
        elif lo > 0 and c0 - times[lo - 1] <= hold:
            out.append(known[lo - 1][1])
        else:
            out.append(None)
    return out


def bar_rows(values: Sequence[float | None], height: int, top: float, style: Callable[[float], str]) -> list[Text]:
    """The chart's rows, top first: a column of eighths per value, scaled from zero to `top`.
    A known value shows at least its lowest eighth (a zero dim, so it reads as a floor, not a gap)."""
    rows = [Text() for _ in range(height)]
    for v in values:
        if v is None:
            for r in rows:
                r.append(" ")
            continue
        eighths = 0 if top <= 0 else round(max(0.0, v) / top * height * 8)
        cell_style = style(v) if v > 0 else "dim"
        eighths = max(1, eighths)
        for i, r in enumerate(rows):
            level = min(8, max(0, eighths - (height - 1 - i) * 8))
            r.append(_BARS[level - 1] if level else " ", style=cell_style)
    return rows


def _tick_label(seconds_ago: float) -> str:
    if seconds_ago <= 0:
        return "now"
    if seconds_ago < 60:
        return f"-{seconds_ago:.0f}s"
    return f"-{seconds_ago / 60:.0f}m"


def time_axis(window: int, width: int) -> Text:
    """Labels under the chart's columns: every TICKS[window] seconds back from "now" (right)."""
    line = [" "] * width
    every = TICKS.get(window, window // 4 or 1)
    ago = 0
    while ago <= window:
        label = _tick_label(ago)
        col = round((window - ago) / window * (width - 1))
        startc = min(max(0, col - len(label) + 1 if ago == 0 else col - len(label) // 2), width - len(label))
        if all(ch == " " for ch in line[max(0, startc - 1): startc + len(label) + 1]):
            line[startc: startc + len(label)] = list(label)
        ago += every
    return Text(" " * (LABEL_WIDTH + 1) + "".join(line), style="dim")


def chart(
    title: str,
    values: Sequence[float | None],
    height: int,
    fmt: Callable[[float], str],
    style: Callable[[float], str],
    latest: float | None,
) -> list[Text]:
    """A titled chart: its title, the latest figure (`latest`: the newest refresh's, not its
    column's worst) and the scale's top on the first line, then the bars with the scale's top
    and zero on the left."""
    known = [v for v in values if v is not None]
    top = max(known) if known else 0.0
    head = Text(title, style="bold")
    if known:
        head.append(f"  now {fmt(latest) if latest is not None else '-'}, max {fmt(top)}", style="dim")
    else:
        head.append("  no figures in this window", style="dim")
    rows = bar_rows(values, height, top, style)
    out = [head]
    for i, r in enumerate(rows):
        label = fmt(top) if i == 0 and known else ("0" if i == height - 1 else "")
        line = Text(label.rjust(LABEL_WIDTH)[-LABEL_WIDTH:] + "│", style="dim")
        line.append_text(r)
        out.append(line)
    return out


def _threshold_style(warn: float, crit: float | None) -> Callable[[float], str]:
    def style(v: float) -> str:
        if crit is not None and v > crit:
            return "red"
        if v > warn:
            return "yellow"
        return "green"

    return style


@dataclass(frozen=True)
class HistoryInput:
    """What one draw of the tab needs, read from the hub by the pane."""

    member: str
    role: str
    points: tuple[PgHistoryPoint, ...]
    thresholds: PostgresThresholds
    trends: tuple[tuple[str, CatchUp], ...]  # every replica's
    now: float


def render_history(inp: HistoryInput, window_index: int, width: int, height: int) -> Text:
    """The whole tab as lines of Text for a width x height area."""
    window, label = WINDOWS[window_index]
    points = inp.points
    end = inp.now
    chart_width = max(10, width - LABEL_WIDTH - 1)
    interval = typical_interval(points) or 0.0
    hold = GAP_INTERVALS * interval
    lines: list[Text] = []
    head = Text(f"{inp.member} ({inp.role})", style="bold")
    head.append("  window (w):", style="dim")
    for i, (_, lbl) in enumerate(WINDOWS):
        head.append(" ")
        head.append(f"[{lbl}]" if i == window_index else lbl, style="bold reverse" if i == window_index else "dim")
    kept = end - points[0].ts if points else 0.0
    if kept < window:
        head.append(f"  kept {human_seconds(kept) if points else 'nothing'} so far", style="dim")
    lines.append(head)
    t = inp.thresholds
    if inp.role == "replica":
        mine = dict(inp.trends).get(inp.member) or from_history(points, end)
        lines.append(trend_text("trend", mine))
        body = max(4, height - len(lines) - 3)  # two titles and the time axis
        hb = max(2, (body * 3 + 4) // 5)
        hs = max(2, body - hb)
        lag_b = columns([(p.ts, p.lag_bytes) for p in points], end, window, chart_width, max, hold)
        lag_s = columns([(p.ts, p.lag_seconds) for p in points], end, window, chart_width, max, hold)
        newest = points[-1] if points else None
        lines += chart("replay lag (bytes)", lag_b, hb, human_bytes, _threshold_style(t.lag_bytes_warn, t.lag_bytes_crit),
                       newest.lag_bytes if newest else None)
        lines += chart("replay lag (time)", lag_s, hs, human_seconds, _threshold_style(t.lag_seconds_warn, t.lag_seconds_crit),
                       newest.lag_seconds if newest else None)
        lines.append(time_axis(window, chart_width))
    else:
        # The primary (or a member whose role is unknown): the WAL it writes, then every
        # replica's trend, so the tab's first look answers "is anyone falling behind?".
        trends = [trend_text(name, c) for name, c in inp.trends]
        hw = max(2, height - len(lines) - 2 - len(trends))
        series = wal_rates(points)
        rates = columns(series, end, window, chart_width, lambda vs: sum(vs) / len(vs), hold)
        lines += chart("WAL written (bytes/s)", rates, hw, lambda v: f"{human_bytes(v)}/s", lambda v: "cyan",
                       series[-1][1] if series else None)
        lines.append(time_axis(window, chart_width))
        lines += trends
    out = Text("\n").join(lines)
    out.no_wrap = True
    out.overflow = "ellipsis"
    return out


# ---------------------------------------------------------------------------------------------
# The widget


class PgHistory(Widget):
    """The History tab's content: drawn from the last HistoryInput, at its own size."""

    DEFAULT_CSS = """
    PgHistory { height: 1fr; padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__(id="pg-history")
        self.window_index = DEFAULT_WINDOW
        self.input: HistoryInput | None = None

    @property
    def window_label(self) -> str:
        return WINDOWS[self.window_index][1]

    def draw(
        self,
        history: Callable[[str], Sequence[object]],
        thresholds: PostgresThresholds,
        health: ClusterHealth,
        shown: MemberHealth | None,
        now: float,
    ) -> None:
        """Keep what the tab shows of `shown` (the pane's member), read through `history`
        (the hub's, by member name), and repaint."""
        if shown is None:
            self.input = None
        else:
            self.input = HistoryInput(
                shown.name,
                shown.role,
                tuple(pg_points(history(shown.name))),
                thresholds,
                tuple(replica_trends(history, health, now)),
                now,
            )
        self.refresh()

    def next_window(self) -> None:
        self.window_index = (self.window_index + 1) % len(WINDOWS)
        self.refresh()

    def window_key(self) -> None:
        """`w`: shows the History tab; pressed on it, the next window."""
        tabs = self.screen.query_one(TabbedContent)
        here = self.query_ancestor(TabPane).id
        if tabs.active == here:
            self.next_window()
        elif here is not None:
            tabs.active = here

    def render(self) -> Text:
        if self.input is None:
            return Text("no member to show", style="dim")
        size = self.content_region.size
        return render_history(self.input, self.window_index, size.width, size.height)
