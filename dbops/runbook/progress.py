"""Progress of a long step as a line of text: percent, amount, rate and ETA.

The CLI prints these; the TUI draws its own bar. Kept apart from both so the ETA arithmetic is
tested once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dbops.model import human_bytes, human_seconds


class ProgressLine:
    """Turns progress(done, total, unit) reports into at most one line every `every` seconds."""

    def __init__(self, emit: Callable[[str], None], every: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.emit, self.every, self.clock = emit, every, clock
        self._lock = threading.Lock()  # reports come from transfer threads too
        self._start: tuple[float, float] | None = None
        self._last = float("-inf")
        self._finished: tuple[float, float | None] | None = None  # (done, total) of the end last shown

    def report(self, done: float, total: float | None, unit: str) -> None:
        with self._lock:
            now = self.clock()
            if self._start is None or done < self._start[1]:
                self._start = (now, done)  # first report, or a new phase that restarted the count
            finished = total is not None and done >= total
            if now - self._last < self.every and not finished:
                return
            if finished and self._finished == (done, total):
                return  # the end, reported again (a transfer's last callback and its close): said once
            self._last = now
            self._finished = (done, total) if finished else None
            line = describe(done, total, unit, now - self._start[0], done - self._start[1])
        self.emit(line)


def _amount(value: float, unit: str) -> str:
    if unit == "bytes":
        return human_bytes(value)
    return f"{value:.0f} {unit}" if value >= 10 or value == int(value) else f"{value:.1f} {unit}"


def describe(done: float, total: float | None, unit: str, elapsed: float, gained: float) -> str:
    """'45% (120.0 MiB of 266.0 MiB), 12.0 MiB/s, ETA 12s' (rate and ETA once they are known)."""
    if total:
        text = f"{min(done / total, 1.0) * 100:.0f}% ({_amount(done, unit)} of {_amount(total, unit)})"
    else:
        text = _amount(done, unit)
    if elapsed > 0 and gained > 0:
        rate = gained / elapsed
        text += f", {_amount(rate, unit)}/s"
        if total and done < total:
            text += f", ETA {human_seconds((total - done) / rate)}"
    return f"progress: {text}"
