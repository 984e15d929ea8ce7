"""Catch-up ETA of a lagging replica from its lag trend (dbops.engines.postgres.catchup)."""

from __future__ import annotations

import random

import pytest

from dbops.engines.postgres.catchup import (
    CAUGHT_UP_BYTES,
    WINDOW_SECONDS,
    Trend,
    estimate,
    from_history,
)
from dbops.engines.postgres.history import PgHistoryPoint, lsn_bytes, wal_rates

MiB = 1024 * 1024


def series(f, seconds: float = 60.0, every: float = 2.0, start: float = 1000.0) -> list[tuple[float, int | None]]:
    """(ts, f(elapsed)) every `every` seconds over `seconds`, ending at start + seconds."""
    n = int(seconds / every) + 1
    return [(start + i * every, f(i * every)) for i in range(n)]


def test_falling_behind_gives_the_rate_and_no_eta():
    c = estimate(series(lambda t: int(10 * MiB + 3 * MiB * t)))
    assert c.trend is Trend.FALLING_BEHIND
    assert c.rate == pytest.approx(3 * MiB)
    assert c.eta_seconds is None
    assert c.points == 31 and c.window_seconds == 60.0
    assert c.message == "falling behind at 3.0 MiB/s, lag 190.0 MiB (last 60s, 31 refreshes)"


def test_catching_up_gives_an_eta_from_the_latest_lag_and_the_rate():
    # 200 MiB shrinking by 2 MiB/s for 40 s: 120 MiB left, so 60 s more
    c = estimate(series(lambda t: int(200 * MiB - 2 * MiB * t), seconds=40.0))
    assert c.trend is Trend.CATCHING_UP
    assert c.rate == pytest.approx(-2 * MiB)
    assert c.eta_seconds == pytest.approx(60.0)
    assert c.message == "catching up at 2.0 MiB/s, ETA 60s (last 40s, 21 refreshes)"


def test_catching_up_with_noise_still_finds_the_trend():
    rng = random.Random(7)
    c = estimate(series(lambda t: int(300 * MiB - 4 * MiB * t + rng.gauss(0, 3 * MiB))))
    assert c.trend is Trend.CATCHING_UP
    assert c.rate == pytest.approx(-4 * MiB, rel=0.15)
    assert c.eta_seconds == pytest.approx(c.lag_bytes / 4 / MiB, rel=0.15)


def test_noise_around_a_level_is_steady_with_no_eta():
    rng = random.Random(3)
    c = estimate(series(lambda t: int(50 * MiB + rng.gauss(0, 4 * MiB))))
    assert c.trend is Trend.STEADY
    assert c.eta_seconds is None
    assert c.message.startswith("steady at ") and "(no clear trend, last 60s, 31 refreshes)" in c.message


def test_a_clear_but_tiny_drift_is_steady():
    # a perfect line, but 1 KiB/s moves 100 MiB by 60 KiB in the window: nothing to act on
    c = estimate(series(lambda t: 100 * MiB + 1024 * int(t)))
    assert c.trend is Trend.STEADY


def test_caught_up_needs_one_figure():
    c = estimate([(1000.0, 4096)])
    assert c.trend is Trend.CAUGHT_UP and c.message == "caught up (lag 4.0 KiB)"
    # a replica that just replayed everything is caught up, whatever it was before
    c = estimate(series(lambda t: int(100 * MiB - 2 * MiB * t) if t < 50 else 0))
    assert c.trend is Trend.CAUGHT_UP
    assert estimate([(1000.0, CAUGHT_UP_BYTES + 1)]).trend is Trend.UNKNOWN


@pytest.mark.parametrize(
    "samples, words",
    [
        ([], "no lag figures yet"),
        ([(1000.0, None), (1002.0, None)], "no lag figures yet"),
        ([(1000.0, 40 * MiB), (1002.0, 44 * MiB)], "not enough history yet: 2 lag figures over 2.0s (needs 5 over 10s)"),
        # many figures, too short a span
        ([(1000.0 + 0.5 * i, (40 + i) * MiB) for i in range(10)], "not enough history yet: 10 lag figures over 4.5s"),
        # a long span, too few figures
        ([(1000.0 + 5 * i, (40 + i) * MiB) for i in range(4)], "not enough history yet: 4 lag figures over 15s"),
    ],
)
def test_too_little_history_gives_no_trend(samples, words):
    c = estimate(samples)
    assert c.trend is Trend.UNKNOWN and c.rate is None and c.eta_seconds is None
    assert c.message.startswith(words), c.message


def test_unanswered_refreshes_are_left_out():
    # every other refresh unanswered (None): the trend is the answered ones'
    samples = series(lambda t: int(200 * MiB - 2 * MiB * t))
    holes = [(t, v if i % 2 == 0 else None) for i, (t, v) in enumerate(samples)]
    c = estimate(holes)
    assert c.trend is Trend.CATCHING_UP and c.points == 16
    assert c.rate == pytest.approx(-2 * MiB)


def test_a_gap_restarts_the_trend_after_it():
    # falling behind, then 20 s with no refresh answered, then catching up for 20 s
    before = [(1000.0 + 2 * i, (50 + i) * MiB) for i in range(10)]
    after = [(1040.0 + 2 * i, int(200 * MiB - 3 * MiB * 2 * i)) for i in range(11)]
    c = estimate(before + after)
    assert c.trend is Trend.CATCHING_UP
    assert c.points == 11 and c.window_seconds == 20.0
    assert c.rate == pytest.approx(-3 * MiB)
    # too soon after the gap: said, not guessed
    c = estimate(before + after[:3])
    assert c.trend is Trend.UNKNOWN and "refreshes missing" in c.message


def test_a_jump_of_the_lag_is_not_read_as_a_trend():
    # steady at 10 MiB, then a burst: 200 MiB at once, then steady again
    samples = series(lambda t: 10 * MiB if t < 40 else 200 * MiB)
    c = estimate(samples)
    assert c.trend is Trend.STEADY, c.message  # a least-squares line through it all would say falling behind
    assert c.window_seconds == 20.0
    # right after the jump there is no trend to tell yet
    c = estimate(series(lambda t: 10 * MiB if t < 56 else 200 * MiB))
    assert c.trend is Trend.UNKNOWN
    assert "lag jumped from 10.0 MiB to 200.0 MiB 4.0s ago" in c.message
    # a jump, then catching up: the rate and ETA come from after the jump only
    c = estimate(series(lambda t: 10 * MiB if t < 30 else int(200 * MiB - 2 * MiB * (t - 30))))
    assert c.trend is Trend.CATCHING_UP and c.window_seconds == 30.0
    assert c.rate == pytest.approx(-2 * MiB)
    assert c.eta_seconds == pytest.approx(70.0)


def test_a_turn_from_falling_behind_to_catching_up_is_seen_in_the_window():
    # rising at 1 MiB/s for 36 s, then shrinking at 2 MiB/s for 24 s: one line through the
    # window would call it steady or falling behind
    def lag(t: float) -> int:
        return int(20 * MiB + MiB * min(t, 36) - 2 * MiB * max(0.0, t - 36))

    c = estimate(series(lag))
    assert c.trend is Trend.CATCHING_UP, c.message
    assert c.window_seconds == 24.0 and c.rate == pytest.approx(-2 * MiB)
    assert c.eta_seconds == pytest.approx(lag(60) / (2 * MiB))
    # 4 s after the turn: too soon to say
    c = estimate(series(lag, seconds=40.0))
    assert c.trend is Trend.UNKNOWN and "the lag turned from rising to falling 4.0s ago" in c.message


def test_a_turn_after_a_flat_start_and_one_too_recent_for_a_fit():
    # caught up for 10 s, falling behind for 30 s, then catching up at 1.25 MiB/s, every 2 s
    def lag(t: float) -> int:
        if t < 10:
            return 300 * 1024
        if t < 40:
            return int((t - 10) / 30 * 37 * MiB)
        return int(37 * MiB - (t - 40) * 1.25 * MiB)

    def at(end: int):
        return estimate([(1000.0 + t, lag(t)) for t in range(0, end + 1, 2)])

    c = at(40)
    assert c.trend is Trend.FALLING_BEHIND and c.window_seconds == 30.0  # the flat start left out
    # 8 s after the turn the fit over the window still leans to falling behind; the newest
    # figures, each lower than the one before, say it turned: no trend yet, not the old one
    c = at(48)
    assert c.trend is Trend.UNKNOWN and c.rate is None, c.message
    assert c.message == "not enough history yet: the lag turned from rising to falling 8.0s ago (needs 5 figures over 10s since)"
    c = at(50)
    assert c.trend is Trend.CATCHING_UP and c.window_seconds == 10.0
    assert c.eta_seconds == pytest.approx(19.6)  # 24.5 MiB left at 1.25 MiB/s


def test_only_the_recent_window_counts():
    # an hour ago it fell behind fast; over the last minute it has been steady
    old = [(1000.0 + 2 * i, (10 + 5 * i) * MiB) for i in range(30)]
    recent = series(lambda t: 400 * MiB, start=4000.0)
    c = estimate(old + recent)
    assert c.trend is Trend.STEADY and c.window_seconds <= WINDOW_SECONDS


def test_an_eta_far_beyond_what_was_seen_is_not_given():
    # 1 GiB left at 0.5 MiB/s is half an hour: from 60 s of history that is no ETA
    c = estimate(series(lambda t: int(1024 * MiB - MiB * t / 2)))
    assert c.trend is Trend.CATCHING_UP and c.eta_seconds is None
    assert "too slowly for an ETA" in c.message


def test_no_recent_figure_means_no_trend():
    samples = series(lambda t: int(200 * MiB - 2 * MiB * t))
    last = samples[-1][0]
    assert estimate(samples, now=last + 5).trend is Trend.CATCHING_UP
    c = estimate(samples, now=last + 60)
    assert c.trend is Trend.UNKNOWN and c.message == "no lag figure for 60s: no trend to tell"


def test_from_history_reads_the_kept_points_and_as_json():
    points = [PgHistoryPoint(ts, lag, None, 3) for ts, lag in series(lambda t: int(100 * MiB - MiB * t), seconds=30.0)]
    c = from_history([object(), *points])
    assert c.trend is Trend.CATCHING_UP
    assert c.as_json() == {
        "trend": "catching_up",
        "message": "catching up at 1.0 MiB/s, ETA 70s (last 30s, 16 refreshes)",
        "lag_bytes": 70 * MiB,
        "rate_bytes_per_second": -float(MiB),
        "eta_seconds": 70.0,
        "window_seconds": 30.0,
        "points": 16,
    }


# ---------------------------------------------------------------------------------------------
# WAL throughput from the kept positions


def test_lsn_bytes():
    assert lsn_bytes("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert lsn_bytes("0/0") == 0
    assert lsn_bytes(None) is None and lsn_bytes("") is None and lsn_bytes("nonsense") is None and lsn_bytes("x/y") is None


def test_wal_rates_between_successive_refreshes_and_none_across_gaps():
    def p(ts: float, lsn: int | None) -> PgHistoryPoint:
        return PgHistoryPoint(ts, None, None, None, lsn)

    points = [p(0, 0), p(2, 2 * MiB), p(4, 8 * MiB), p(6, None), p(8, 10 * MiB), p(30, 12 * MiB), p(32, 1 * MiB), p(34, 3 * MiB)]
    assert wal_rates(points) == [
        (2, MiB),
        (4, 3 * MiB),
        (6, None),  # no position at 6
        (8, None),  # nothing to subtract from
        (30, None),  # 22 s: unanswered refreshes between
        (32, None),  # went backwards: another server (a failover)
        (34, MiB),
    ]
