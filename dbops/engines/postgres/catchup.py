"""When will a lagging replica catch up? Judged from its replay lag trend: pure, no I/O.

The input is the member's kept history (what the hub keeps of each answered refresh: the judged
lag in bytes). The answer is honest about what it knows:

- caught up: the latest lag is at most CAUGHT_UP_BYTES (one figure is enough to say so);
- not enough history: fewer than MIN_POINTS lag figures, or less than MIN_SPAN_SECONDS of them,
  in the window (after a gap of unanswered refreshes, a jump of the lag or a turn of its trend,
  only what came after it counts); no lag figure for a while (the replica or the primary
  stopped answering);
- steady: the least-squares slope over the window is not told apart from noise (its t-statistic
  below MIN_T) or moves the lag by too little to matter over the window;
- catching up at R/s, ETA lag / R: the slope is negative and clear; no ETA when it would lie
  far beyond what was seen (more than ETA_MAX_FACTOR times the window's span);
- falling behind at R/s: the slope is positive and clear.

Every message names the window it was judged over ("last 45s, 23 refreshes"): the span of the
figures used, which a gap, a jump or a turn may make shorter than WINDOW_SECONDS.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from dbops.engines.postgres.history import GAP_INTERVALS, PgHistoryPoint
from dbops.model import human_bytes, human_seconds

MiB = 1024 * 1024

WINDOW_SECONDS = 60.0  # the recent window the trend is judged over (the newest figures)
MIN_POINTS = 5  # lag figures needed in the window, after any gap or jump ...
MIN_SPAN_SECONDS = 10.0  # ... spanning at least this long
CAUGHT_UP_BYTES = 1 * MiB  # a latest lag at most this: caught up
MIN_T = 3.0  # |slope| / its standard error at least this: a trend, not noise
# The lag must move by at least this over the window, and by this share of its mean level.
MIN_CHANGE_BYTES = 256 * 1024
MIN_CHANGE_SHARE = 0.02
# A step between two successive figures is a jump (the lag's level changed at once: a burst of
# WAL, a restart) when it is JUMP_FACTOR times the typical step and JUMP_SHARE of the lag.
JUMP_FACTOR = 4.0
JUMP_SHARE = 0.5
# A turn of the trend (rising, then falling: a replica that fell behind and now catches up):
# two lines, before and after one figure, fitting with at most this share of one line's squared
# error. Only the newer line then tells the trend now.
TURN_SSR_SHARE = 0.25
# ... and a turn too recent for that: the last TURN_TAIL figures each moving against the trend.
TURN_TAIL = 3
ETA_MAX_FACTOR = 20.0  # no ETA further out than this many times the span seen
STALE_SECONDS = 10.0  # no lag figure for max(this, 3 refresh intervals): no trend to tell


class Trend(Enum):
    CAUGHT_UP = "caught_up"
    CATCHING_UP = "catching_up"
    FALLING_BEHIND = "falling_behind"
    STEADY = "steady"
    UNKNOWN = "unknown"  # not enough history (or none recent)


@dataclass(frozen=True, slots=True)
class CatchUp:
    trend: Trend
    message: str  # one short phrase: "catching up at 12.0 MiB/s, ETA 40s (last 45s, 23 refreshes)"
    lag_bytes: int | None  # the latest lag figure
    rate: float | None  # bytes/s the lag changes by (negative: shrinking); None without a trend
    eta_seconds: float | None  # catching up, when believable
    window_seconds: float  # span of the figures judged
    points: int  # how many figures were judged

    def as_json(self) -> dict[str, Any]:
        return {
            "trend": self.trend.value,
            "message": self.message,
            "lag_bytes": self.lag_bytes,
            "rate_bytes_per_second": None if self.rate is None else round(self.rate, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "window_seconds": round(self.window_seconds, 1),
            "points": self.points,
        }


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _over(span: float, n: int) -> str:
    return f"last {human_seconds(span)}, {n} refreshes"


def _fit(points: Sequence[tuple[float, int]]) -> tuple[float, float, float]:
    """Least squares line of lag on time: its slope, the slope's t-statistic (inf for an exact
    line) and the sum of squared residuals."""
    n = len(points)
    t0 = points[0][0]
    xs = [t - t0 for t, _ in points]
    ys = [float(v) for _, v in points]
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return 0.0, 0.0, 0.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ssr = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys))
    se = math.sqrt(ssr / (n - 2) / sxx) if n > 2 else math.inf
    if se == 0:
        return b, math.inf if b != 0 else 0.0, ssr
    return b, abs(b) / se, ssr


def _last_turn(points: Sequence[tuple[float, int]]) -> int | None:
    """Index where the newest of two lines starts, when two lines (each of 3 figures at least,
    sharing the figure between them) fit far better than one (TURN_SSR_SHARE); else None.
    Linear in the figures: each line's squared error comes from running sums."""
    n = len(points)
    if n < 5:
        return None
    # Centred (and in MiB) so the running sums keep their precision.
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    xs = [t - mt for t, _ in points]
    ys = [(v - mv) / MiB for _, v in points]
    sums = [(0.0, 0.0, 0.0, 0.0, 0.0)]
    for x, y in zip(xs, ys):
        a, b, c, d, e = sums[-1]
        sums.append((a + x, b + y, c + x * x, d + x * y, e + y * y))

    def ssr(i: int, j: int) -> float:  # figures i..j-1
        k = j - i
        sx, sy, sxx, sxy, syy = (hi - lo for hi, lo in zip(sums[j], sums[i]))
        vxx = sxx - sx * sx / k
        vyy = syy - sy * sy / k
        vxy = sxy - sx * sy / k
        return max(0.0, vyy - (vxy * vxy / vxx if vxx > 0 else 0.0))

    one = ssr(0, n)
    if one <= 1e-9 * n:  # a straight line: nothing turned
        return None
    best, best_k = one, None
    for k in range(2, n - 2):
        two = ssr(0, k + 1) + ssr(k, n)
        if two < best:
            best, best_k = two, k
    return best_k if best_k is not None and best < TURN_SSR_SHARE * one else None


def _last_jump(points: Sequence[tuple[float, int]]) -> int | None:
    """Index of the first figure after the newest jump of the lag, or None."""
    steps = [b - a for (_, a), (_, b) in zip(points, points[1:])]
    if not steps:
        return None
    typical = _median([abs(s) for s in steps])
    level = max(v for _, v in points)
    for i in range(len(steps) - 1, -1, -1):
        s = abs(steps[i])
        if s > JUMP_FACTOR * typical and s > JUMP_SHARE * level:
            return i + 1
    return None


def estimate(
    samples: Iterable[tuple[float, int | None]],
    now: float | None = None,
    window: float = WINDOW_SECONDS,
    caught_up_bytes: int = CAUGHT_UP_BYTES,
) -> CatchUp:
    """The catch-up trend of a replica from (ts, lag bytes) figures, oldest first; a None lag
    (an unanswered or unjudged refresh) is left out. `now`: the clock the figures are read at
    (defaults to the newest figure's time); a replica with no figure recent to it has no trend."""
    known = sorted((t, int(v)) for t, v in samples if v is not None)
    if not known:
        return CatchUp(Trend.UNKNOWN, "no lag figures yet", None, None, None, 0.0, 0)
    last_t, last = known[-1]
    end = last_t if now is None else max(now, last_t)
    steps = [b - a for (a, _), (b, _) in zip(known, known[1:]) if b > a]
    interval = _median(steps) if steps else None
    stale = max(STALE_SECONDS, 3 * interval) if interval else STALE_SECONDS
    if end - last_t > stale:
        return CatchUp(Trend.UNKNOWN, f"no lag figure for {human_seconds(end - last_t)}: no trend to tell", last, None, None, 0.0, 0)
    if last <= caught_up_bytes:
        return CatchUp(Trend.CAUGHT_UP, f"caught up (lag {human_bytes(last)})", last, None, None, 0.0, 1)

    recent = [(t, v) for t, v in known if t >= end - window]
    why = ""
    # A gap of unanswered refreshes: the trend starts again after it.
    if interval:
        for i in range(len(recent) - 1, 0, -1):
            if recent[i][0] - recent[i - 1][0] > GAP_INTERVALS * interval:
                why = f"; refreshes missing {human_seconds(end - recent[i][0])} ago"
                recent = recent[i:]
                break
    # A jump of the lag's level: only what came after it tells the trend now.
    jump = _last_jump(recent)
    if jump is not None:
        before, after = recent[jump - 1][1], recent[jump][1]
        why = f"; lag jumped from {human_bytes(before)} to {human_bytes(after)} {human_seconds(end - recent[jump][0])} ago"
        recent = recent[jump:]
    # A turn of the trend: only the newer line tells the trend now. Again within what is left
    # (flat, then rising, then falling: the newest turn is the one that counts).
    while (turn := _last_turn(recent)) is not None:
        before_slope, after_slope = _fit(recent[: turn + 1])[0], _fit(recent[turn:])[0]
        if before_slope > 0 >= after_slope:
            how = "turned from rising to falling"
        elif before_slope < 0 <= after_slope:
            how = "turned from falling to rising"
        else:
            how = "changed pace"
        why = f"; the lag {how} {human_seconds(end - recent[turn][0])} ago"
        recent = recent[turn:]
    n = len(recent)
    span = recent[-1][0] - recent[0][0] if n else 0.0
    if n < MIN_POINTS or span < MIN_SPAN_SECONDS:
        return CatchUp(
            Trend.UNKNOWN,
            f"not enough history yet: {n} lag figure{'s' if n != 1 else ''} over {human_seconds(span)} "
            f"(needs {MIN_POINTS} over {human_seconds(MIN_SPAN_SECONDS)}){why}",
            last, None, None, span, n,
        )

    slope, t_stat, _ = _fit(recent)
    mean = sum(v for _, v in recent) / n
    change = abs(slope) * span
    over = _over(span, n)
    if t_stat < MIN_T or change < max(MIN_CHANGE_BYTES, MIN_CHANGE_SHARE * mean):
        return CatchUp(Trend.STEADY, f"steady at {human_bytes(last)} (no clear trend, {over})", last, slope, None, span, n)
    # The newest figures already going the other way, each step, by more than noise: a turn
    # too recent for the fit to see. No trend until there is enough history since.
    tail = recent[-TURN_TAIL:]
    steps = [b - a for (_, a), (_, b) in zip(tail, tail[1:])]
    if all(d * slope < 0 for d in steps) and abs(tail[-1][1] - tail[0][1]) >= max(MIN_CHANGE_BYTES, MIN_CHANGE_SHARE * mean):
        how = "from rising to falling" if slope > 0 else "from falling to rising"
        start = len(recent) - 1
        while start > 0 and (recent[start][1] - recent[start - 1][1]) * slope < 0:
            start -= 1
        return CatchUp(
            Trend.UNKNOWN,
            f"not enough history yet: the lag turned {how} {human_seconds(end - recent[start][0])} ago "
            f"(needs {MIN_POINTS} figures over {human_seconds(MIN_SPAN_SECONDS)} since)",
            last, None, None, span, n,
        )
    rate = f"{human_bytes(abs(slope))}/s"
    if slope > 0:
        return CatchUp(Trend.FALLING_BEHIND, f"falling behind at {rate}, lag {human_bytes(last)} ({over})", last, slope, None, span, n)
    eta = last / -slope
    if eta > ETA_MAX_FACTOR * span:
        return CatchUp(
            Trend.CATCHING_UP,
            f"catching up at {rate}, too slowly for an ETA (lag {human_bytes(last)}, {over})",
            last, slope, None, span, n,
        )
    return CatchUp(Trend.CATCHING_UP, f"catching up at {rate}, ETA {human_seconds(eta)} ({over})", last, slope, eta, span, n)


def from_history(points: Iterable[object], now: float | None = None, window: float = WINDOW_SECONDS) -> CatchUp:
    """estimate() over a member's kept history (its PgHistoryPoints; others are left out)."""
    return estimate(((p.ts, p.lag_bytes) for p in points if isinstance(p, PgHistoryPoint)), now, window)
