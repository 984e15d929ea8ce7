"""Keypress-to-paint latency of the fleet overview with 1000 clusters at 80x24, as a ratio
against the issue's goal (p99 <= 50 ms). Never a pass/fail.

    .venv/bin/python benchmarks/overview_latency.py [--clusters 1000] [--presses 100] [--gc-freeze]

The console runs headless under Textual's Pilot on a frozen fleet (tests/ui/frozen.py: four
environments, PostgreSQL and Redis, some members down or lagging). For each key, the time from
sending it (as Pilot does) to the first screen update written after it, that update rendered to
the terminal's bytes as a real terminal would get them (headless Textual skips that step).

Scenarios, each `--presses` keys:
  down          the cursor moves one row
  problems      `a`: problems only on / off (the table goes from every cluster to the 33 not OK)
  filter        typing into `/` and erasing again (each key narrows or widens the rows)
  sort          `s`: the sort cycles severity -> name -> engine (every row moves)
  fold          space: the cursor's environment folds / unfolds
  down, busy    `down` while the pollers report 25 changed clusters every 50 ms (1000 targets
                refreshed every 2 s), judged beforehand as the pollers' thread would

The slowest keys are those during which Python runs a full garbage collection (70-110 ms here
with a thousand clusters' snapshots in memory). --gc-freeze moves everything alive after start-up
out of the collector's reach (gc.freeze(), as a console could do after its first frame), to show
what that would change; the default measures the console as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import itertools
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.ui.frozen: the frozen fleet

from textual import events
from textual.widgets import Input

from dbops.model import Severity
from dbops.screens.app import DbopsApp, HealthChanged
from tests.ui.frozen import NOW, FleetHub

GOAL_P99_MS = 50.0


class PaintClock:
    """Wraps the app's _display (where Textual writes an update to the terminal) to render the
    update's bytes and note when each was written."""

    def __init__(self, app: DbopsApp) -> None:
        self.painted = asyncio.Event()
        self.last = 0.0
        self.last_cpu = 0.0
        self._app = app
        self._display = app._display
        app._display = self._paint  # type: ignore[method-assign]

    def _paint(self, screen, renderable) -> None:
        if renderable is not None and hasattr(renderable, "render_segments"):
            renderable.render_segments(self._app.console)
            self.last = time.perf_counter()
            self.last_cpu = time.process_time()
            self.painted.set()
        self._display(screen, renderable)


async def press_and_time(app: DbopsApp, clock: PaintClock, key: str, char: str | None) -> tuple[float, float]:
    """(wall ms, CPU ms of this process) from sending the key to the first paint after it."""
    await settle()
    clock.painted.clear()
    event = events.Key(key, char)
    event.set_sender(app)
    start, start_cpu = time.perf_counter(), time.process_time()
    app._driver.send_message(event)
    await asyncio.wait_for(clock.painted.wait(), timeout=10)
    return (clock.last - start) * 1000, (clock.last_cpu - start_cpu) * 1000


async def settle() -> None:
    """Let the previous key's work (and any coalesced layout it scheduled) finish first."""
    for _ in range(3):
        await asyncio.sleep(0.01)


def keys_for(scenario: str, presses: int) -> list[tuple[str, str | None]]:
    if scenario.startswith("down"):
        return [("down", None)] * presses
    if scenario == "problems":
        return [("a", "a")] * presses
    if scenario == "sort":
        return [("s", "s")] * presses
    if scenario == "fold":
        return [("space", " ")] * presses
    if scenario == "filter":
        word = "orders-pg-1"
        typing = [(c if c.isalnum() else "minus", c) for c in word] + [("backspace", None)] * len(word)
        return list(itertools.islice(itertools.cycle(typing), presses))
    raise ValueError(scenario)


async def busy_pollers(app: DbopsApp, hub: FleetHub, stop: asyncio.Event) -> None:
    """25 clusters' health changes every 50 ms, flipping between their judged health and a copy
    one severity worse, so rows change cells and, now and then, order."""
    rng = random.Random(17)
    healths = {f"{h.environment}/{h.name}": h for h in hub.health()}
    worse = {k: dataclasses.replace(h, severity=Severity.WARN if h.severity is Severity.OK else Severity.CRIT)
             for k, h in healths.items()}
    keys = sorted(healths)
    while not stop.is_set():
        for key in rng.sample(keys, 25):
            current = hub.cluster_health(key)
            hub.put(worse[key] if current is healths[key] else healths[key])
        app.post_message(HealthChanged())
        await asyncio.sleep(0.05)


async def run(scenario: str, clusters: int, presses: int, freeze: bool = False) -> list[tuple[float, float]]:
    hub = FleetHub(clusters)
    with tempfile.TemporaryDirectory() as state:
        app = DbopsApp(hub.config, state_dir=Path(state), hub=hub, clock=lambda: NOW)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            if freeze:
                gc.collect()
                gc.freeze()
            clock = PaintClock(app)
            if scenario == "filter":
                await pilot.press("slash")
                # The blinking cursor repaints by itself every half second: not a key's paint.
                app.screen.query_one("#fleet-prompt", Input).cursor_blink = False
            stop = asyncio.Event()
            pollers = asyncio.create_task(busy_pollers(app, hub, stop)) if scenario.endswith("busy") else None
            await pilot.pause()
            measured = [await press_and_time(app, clock, key, char) for key, char in keys_for(scenario, presses)]
            stop.set()
            if pollers is not None:
                await pollers
    gc.unfreeze()  # the next scenario starts from a console of its own
    return measured


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--presses", type=int, default=100)
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() once the console has started")
    parser.add_argument("--scenario", action="append", choices=["down", "problems", "filter", "sort", "fold", "down, busy"])
    args = parser.parse_args()
    scenarios = args.scenario or ["down", "problems", "filter", "sort", "fold", "down, busy"]
    print(f"overview keypress-to-paint, {args.clusters} clusters, 80x24, {args.presses} keys each; goal p99 <= {GOAL_P99_MS:.0f} ms"
          + ("; gc.freeze() after start-up" if args.gc_freeze else ""))
    print("wall: what the operator waits; CPU: this process's share of it (the same on a busy machine)")
    print(f"{'scenario':<12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p99/goal':>9}   {'CPU p50':>8} {'CPU p99':>8}")
    for scenario in scenarios:
        measured = asyncio.run(run(scenario, args.clusters, args.presses, args.gc_freeze))
        wall, cpu = [w for w, _ in measured], [c for _, c in measured]
        p99 = percentile(wall, 99)
        print(f"{scenario:<12} {statistics.median(wall):8.1f} {p99:8.1f} {max(wall):8.1f} {p99 / GOAL_P99_MS:8.2f}x"
              f"   {statistics.median(cpu):8.1f} {percentile(cpu, 99):8.1f}")


if __name__ == "__main__":
    main()
