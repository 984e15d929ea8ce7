from dbops.runbook.progress import ProgressLine, describe


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_and_eta_from_the_reports_so_far() -> None:
    assert describe(50 * 2**20, 100 * 2**20, "bytes", 10.0, 50 * 2**20) == \
        "progress: 50% (50.0 MiB of 100.0 MiB), 5.0 MiB/s, ETA 10s"


def test_unknown_total_shows_the_amount_and_rate_only() -> None:
    assert describe(300, None, "rows", 3.0, 300) == "progress: 300 rows, 100 rows/s"


def test_lines_are_throttled_but_the_end_is_always_shown() -> None:
    clock, lines = Clock(), []
    p = ProgressLine(lines.append, every=5.0, clock=clock)
    p.report(0, 1000, "bytes")
    clock.now += 1
    p.report(100, 1000, "bytes")  # within 5 s of the last line: not shown
    clock.now += 5
    p.report(600, 1000, "bytes")
    clock.now += 1
    p.report(1000, 1000, "bytes")  # finished: shown at once
    clock.now += 1
    p.report(1000, 1000, "bytes")  # the end reported again: not said twice
    assert lines == [
        "progress: 0% (0 B of 1000 B)",
        "progress: 60% (600 B of 1000 B), 100 B/s, ETA 4.0s",
        "progress: 100% (1000 B of 1000 B), 143 B/s",
    ]


def test_a_count_that_starts_over_restarts_the_rate() -> None:
    clock, lines = Clock(), []
    p = ProgressLine(lines.append, every=0, clock=clock)
    p.report(900, 1000, "bytes")
    clock.now += 10
    p.report(100, 1000, "bytes")  # a second phase (download after a check) counts from 0 again
    clock.now += 1
    p.report(200, 1000, "bytes")
    assert lines[-1] == "progress: 20% (200 B of 1000 B), 100 B/s, ETA 8.0s"


def test_a_second_phase_that_ends_shows_its_own_end() -> None:
    clock, lines = Clock(), []
    p = ProgressLine(lines.append, every=5.0, clock=clock)
    p.report(1000, 1000, "bytes")
    clock.now += 1
    p.report(0, 500, "bytes")  # throttled
    clock.now += 1
    p.report(500, 500, "bytes")
    assert [line.split(" (")[0] for line in lines] == ["progress: 100%", "progress: 100%"]
    assert lines[-1].startswith("progress: 100% (500 B of 500 B)")
