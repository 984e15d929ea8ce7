"""What recording a session costs: the poller's CPU with and without a recorder, how fast the
recording grows, and how long replay takes to open a one-hour recording.

    python benchmarks/recording_cost.py [--targets 300] [--rounds 4] [--seconds 30] [--state DIR]

The fleet is benchmarks/fleet.py's: poll targets (60% PostgreSQL members, 40% Redis deployments)
on the private sandbox's real servers, refreshed every 2 s by the poller hub as under the console.

CPU: rounds without a recorder, with one as configured by default (a cluster nobody has open kept
at each change of state and every 10 s: the headless recorder's case, and a fleet's under a
console), and with one keeping every refresh (unwatched_every_seconds = 0) alternate in one run (so
a drift of the machine falls on each), each a fresh hub measured over --seconds once every target
has answered and two intervals more; the process's CPU time (every thread: pollers, judging, the
recorder's writer) as a share of one core. The baseline is the poller without recording in the
same run; the goal (the issue) is that recording adds at most 5% to it. Beside that difference
(two noisy figures), the recorder's own work is measured on its threads: the writer thread's CPU
(/proc) and the thread CPU time of the recorder's calls on the hub's thread. What the difference
holds beyond these is the recorder's effect on the rest of the process (garbage collection,
caches) and the rounds' noise.

Growth: the recorded rounds' files, closed, with the bytes attributed to each measured window by
its rows' share of the file's rows (the file's fixed part, its schema and config, left out); as
MB (10^6 bytes) per hour per 100 targets.

Replay open: a 100-target fleet recorded for --replay-seconds, every refresh kept (the largest
hour), is copied, timestamps shifted, into
one hour (a full segment); each run is a fresh process (imports count, as at a user's start) that
calls open_replay(), asks for the start, middle or end, and waits until the hub has applied it. The
console's screens (textual) are not part of it. The goal is 1 s. Informational: never pass/fail.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).parent))
from fleet import fleet_config, on_sandbox, raise_max_connections  # a sibling script, not a package: found by the path above

if TYPE_CHECKING:
    from dbops.config import Config

GOAL_ADDED = 0.05  # recording's CPU over the poller's own
GOAL_OPEN = 1.0  # seconds, replay opening a one-hour recording
EVERY_REFRESH = "\n[recording]\nunwatched_every_seconds = 0\n"
POSITIONS = ("start", "middle", "end")
TICKS = os.sysconf("SC_CLK_TCK")

# Run in a fresh interpreter per open: prints the monotonic clock (system-wide on Linux, so
# comparable with the parent's) when open_replay() is called and when the position is applied.
OPEN_SCRIPT = """
import sys, time
from pathlib import Path
from dbops.replay import open_replay
t_open = time.monotonic()
hub = open_replay(Path(sys.argv[1]))
at = {"start": hub.first, "middle": (hub.first + hub.last) / 2, "end": hub.last}[sys.argv[2]]
# Seek before start(), as `dbops replay --at` does: the thread's first load is then the one
# asked for, and `loaded` is set once, after it (a seek after start() could see the load of
# the start set it first).
hub.seek(at)
hub.start()
ok = hub.loaded.wait(60)
t_loaded = time.monotonic()
shown = sum(1 for h in hub.health() if any(m.snapshot.reachability.value != "pending" for m in h.members))
print(t_open, t_loaded, int(ok), shown, len(hub.refs), abs(hub.position - at) < 1e-6)
hub.stop()
"""


@dataclass
class Round:
    recorded: bool
    targets: int
    core: float  # CPU seconds per wall second over the window
    seconds: float
    not_up: float  # share of targets not answering at the window's end
    window: tuple[float, float]  # wall clock (the recorder's clock), for attributing the file
    directory: Path | None = None
    frames_written: int = 0
    dropped: int = 0
    error: str | None = None
    writer: float = 0.0  # CPU seconds per wall second of the recorder's writer thread
    hub_side: float = 0.0  # ... of the recorder's calls on the hub's thread (each judgement's state, queueing)
    window_frames: int = 0  # frames the writer wrote during the window
    window_calls: int = 0  # recorder calls the hub made during the window


def thread_cpu(native_id: int) -> float:
    """CPU seconds (user + system) of one of this process's threads, from /proc (clock ticks)."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class TimedCalls:
    """A recorder method that adds its callers' thread CPU time to a sum: what the recorder
    costs the hub's thread, measured where it is spent (thread_time costs about 0.2 µs a call)."""

    def __init__(self, method: Callable[..., None]) -> None:
        self.method, self.seconds, self.calls = method, 0.0, 0

    def __call__(self, *args: Any) -> None:
        t = time.thread_time()
        try:
            self.method(*args)
        finally:
            self.seconds += time.thread_time() - t
            self.calls += 1


def file_bytes(directory: Path) -> int:
    """The recordings' bytes on disk: a still-open file's -wal and -shm count too."""
    return sum(p.stat().st_size for p in directory.iterdir() if ".dbrec" in p.name)


def run_round(config: Config, seconds: float, interval: float, directory: Path | None) -> Round:
    """One hub (and, with `directory`, a recorder) warmed up as in fleet.measure(), then measured."""
    from dbops.model import Reachability
    from dbops.poller import PollerHub
    from dbops.recording import Recorder

    rec = None
    timed: list[TimedCalls] = []
    if directory is not None:
        rec = Recorder(config, directory)
        timed = [TimedCalls(rec.health), TimedCalls(rec.alerts), TimedCalls(rec.backups)]
        rec.health, rec.alerts, rec.backups = timed  # type: ignore[method-assign,assignment]
        rec.start()
    hub = PollerHub(config, recorder=rec)
    keys = [ref.key for ref in hub.refs]
    targets = sum(len(ref.poll_units) for ref in hub.refs)
    hub.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pending = sum(1 for k in keys for s in hub.snapshots(k).values() if s.reachability is Reachability.PENDING)
            if not pending:
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"{pending} targets never answered within 120 s")
        time.sleep(interval * 2)  # past the first refreshes' connects
        # No sampling during the window: the probe's own work would be in both A and B.
        writer_id = rec._thread.native_id if rec is not None and rec._thread is not None else None
        writer0 = thread_cpu(writer_id) if writer_id else 0.0
        hub0 = sum(t.seconds for t in timed)
        calls0 = sum(t.calls for t in timed)
        frames0 = rec.frames_written if rec is not None else 0
        cpu0, wall0, t0 = time.process_time(), time.monotonic(), time.time()
        time.sleep(seconds)
        cpu, wall, t1 = time.process_time() - cpu0, time.monotonic() - wall0, time.time()
        writer = thread_cpu(writer_id) - writer0 if writer_id else 0.0
        hub_side = sum(t.seconds for t in timed) - hub0
        window_calls = sum(t.calls for t in timed) - calls0
        window_frames = (rec.frames_written if rec is not None else 0) - frames0
        down = sum(1 for k in keys for s in hub.snapshots(k).values() if not s.reachable)
    finally:
        hub.stop(timeout=10)
        if rec is not None:
            rec.flush()
            rec.stop()
    result = Round(directory is not None, targets, cpu / wall, wall, down / max(1, targets), (t0, t1), directory,
                   writer=writer / wall, hub_side=hub_side / wall, window_frames=window_frames, window_calls=window_calls)
    if rec is not None:
        result.frames_written, result.dropped, result.error = rec.frames_written, rec.dropped, rec.error
    return result


def window_share(directory: Path, window: tuple[float, float]) -> tuple[float, int]:
    """The share of the recordings' row bytes (frame payloads, event texts) inside `window`, and
    the frames there: the rest of the file (warm-up, SQLite's pages and indexes) is attributed
    in proportion."""
    inside = total = 0
    frames = 0
    for path in sorted(directory.glob("*.dbrec")):
        db = sqlite3.connect(path)
        try:
            for lo, hi in ((window[0], window[1]), (float("-inf"), float("inf"))):
                n, fb = db.execute("SELECT count(*), coalesce(sum(length(payload) + length(kind) + length(cluster)), 0) "
                                   "FROM frames WHERE ts >= ? AND ts < ?", (lo, hi)).fetchone()
                (eb,) = db.execute("SELECT coalesce(sum(length(source) + length(cluster) + length(member) + length(text) "
                                   "+ coalesce(length(detail), 0)), 0) FROM events WHERE ts >= ? AND ts < ?", (lo, hi)).fetchone()
                if lo == window[0]:
                    inside += fb + eb
                    frames += n
                else:
                    total += fb + eb
        finally:
            db.close()
    return (inside / total if total else 0.0), frames


def empty_recording_bytes(config: Config, directory: Path) -> int:
    """A closed recording of `config` holding no frames: its schema, meta and scrubbed config."""
    from dbops.recording import Recorder

    rec = Recorder(config, directory)
    rec.start()
    rec.flush()
    rec.stop()
    return file_bytes(directory)


def one_hour(source: Path, dest: Path, interval: float) -> tuple[float, int, int, int]:
    """`source`'s frames and events repeated, shifted by its span each time, to cover an hour.
    Returns (the source's span, copies, frames, events)."""
    shutil.copyfile(source, dest)
    db = sqlite3.connect(dest)
    try:
        lo, hi, top = db.execute("SELECT min(ts), max(ts), max(id) FROM frames").fetchone()
        (etop,) = db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
        # One interval more than first-to-last frame, so a copy's first refresh follows the
        # previous copy's last by a refresh, as live.
        span = hi - lo + interval
        copies = math.ceil(3600 / span)
        for k in range(1, copies):
            db.execute("INSERT INTO frames (ts, kind, cluster, keyframe, payload) "
                       "SELECT ts + ?, kind, cluster, keyframe, payload FROM frames WHERE id <= ? ORDER BY id", (k * span, top))
            db.execute("INSERT INTO events (ts, source, cluster, member, severity, text, detail) "
                       "SELECT ts + ?, source, cluster, member, severity, text, detail FROM events WHERE id <= ? ORDER BY id",
                       (k * span, etop))
        db.commit()
        (frames,) = db.execute("SELECT count(*) FROM frames").fetchone()
        (events,) = db.execute("SELECT count(*) FROM events").fetchone()
    finally:
        db.close()  # the last connection: SQLite checkpoints the WAL into the file and removes it
    return span, copies, frames, events


def time_open(path: Path, position: str) -> tuple[float, float, str]:
    """(seconds from the process's start, seconds from open_replay()) until `position` is shown."""
    spawned = time.monotonic()
    out = subprocess.run([sys.executable, "-c", OPEN_SCRIPT, str(path), position], check=True,
                         capture_output=True, text=True).stdout.split()
    t_open, t_loaded = float(out[0]), float(out[1])
    ok, shown, clusters, at = out[2] == "1", int(out[3]), int(out[4]), out[5] == "True"
    problem = "" if ok and at and shown == clusters else f"loaded={ok} at-position={at} clusters shown {shown}/{clusters}"
    return t_loaded - spawned, t_loaded - t_open, problem


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4, help="rounds each without and with a recorder (default 4)")
    parser.add_argument("--seconds", type=float, default=30.0, help="each round's measured window (default 30)")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--replay-targets", type=int, default=100)
    parser.add_argument("--replay-seconds", type=float, default=60.0, help="recorded, then copied into an hour (default 60)")
    parser.add_argument("--runs", type=int, default=5, help="replay opens per position (default 5)")
    parser.add_argument("--state", type=Path, help="a running private sandbox's DBOPS_STATE_DIR (default: start one)")
    args = parser.parse_args()
    # A socket per target, and the sandbox's servers, need more descriptors than the usual 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    def run(state: Path) -> None:
        from dbops.config import parse

        raise_max_connections(state, 1100)
        sandbox_config = state / "sandbox" / "dbops.toml"
        with tempfile.TemporaryDirectory(prefix="dbops-bench-recording-") as tmp:
            work = Path(tmp)
            text = fleet_config(sandbox_config, args.targets, args.interval)
            # The default (a cluster nobody has open: at each change of state and every 10 s; the
            # headless recorder's case, and the fleet's under a console) and every refresh kept.
            variants = {"without": None, "default": parse(text), "every": parse(text + EVERY_REFRESH)}
            print(f"CPU at {args.targets} targets, refresh every {args.interval:g}s, {args.rounds} x {args.seconds:g}s "
                  "without a recorder, with one (default), with one keeping every refresh; alternating", flush=True)
            rounds: dict[str, list[Round]] = {v: [] for v in variants}
            for i in range(args.rounds):
                for name, cfg in variants.items():
                    r = run_round(cfg or variants["default"], args.seconds, args.interval,
                                  work / f"round-{i}-{name}" if cfg is not None else None)
                    rounds[name].append(r)
                    extra = f"  {r.frames_written} frames, {r.dropped} dropped" if r.recorded else ""
                    extra += f"; recorder's own: writer {r.writer:.2%}, hub side {r.hub_side:.2%}" if r.recorded else ""
                    extra += f"  recorder error: {r.error}" if r.error else ""
                    print(f"  round {i + 1} {name:<8} {r.core:6.1%} of a core  {r.not_up:.0%} not up{extra}", flush=True)
            without = statistics.median(r.core for r in rounds["without"])

            # Growth: closed files; the fixed part of a file is not growth.
            fixed = empty_recording_bytes(variants["default"], work / "empty")
            growth: dict[str, tuple[float, float, int, float]] = {}
            open_left = []
            for name in ("default", "every"):
                grown = seconds = 0.0
                frames = 0
                for r in rounds[name]:
                    assert r.directory is not None
                    open_left += [p.name for p in r.directory.iterdir() if p.name.endswith(("-wal", "-shm"))]
                    size = file_bytes(r.directory)
                    share, n = window_share(r.directory, r.window)
                    grown += (size - fixed) * share
                    seconds += r.seconds
                    frames += n
                growth[name] = (grown / seconds * 3600 / 1e6 * 100 / args.targets, grown, frames, seconds)

            # Replay: an hour at --replay-targets, built from a real recording.
            # Every refresh kept: the largest hour a recording can hold at this size.
            small = parse(fleet_config(sandbox_config, args.replay_targets, args.interval) + EVERY_REFRESH)
            print(f"recording {args.replay_targets} targets for {args.replay_seconds:g}s for the one-hour file", flush=True)
            r = run_round(small, args.replay_seconds, args.interval, work / "replay-source")
            source = sorted((work / "replay-source").glob("*.dbrec"))
            hour = work / "one-hour.dbrec"
            span, copies, hour_frames, hour_events = one_hour(source[-1], hour, args.interval)
            opens: dict[str, list[tuple[float, float]]] = {p: [] for p in POSITIONS}
            problems: list[str] = []
            for _ in range(args.runs):
                for position in POSITIONS:  # interleaved: a drift of the machine falls on every position
                    total, from_open, problem = time_open(hour, position)
                    opens[position].append((total, from_open))
                    if problem:
                        problems.append(f"{position}: {problem}")

            print(f"\nCPU, median of {args.rounds} rounds (share of one core; baseline: the poller without recording)")
            print(f"  without recording   {without:6.1%}")
            for name, label in (("default", "default"), ("every", "every refresh")):
                with_ = statistics.median(r.core for r in rounds[name])
                print(f"  {label:<14}      {with_:6.1%}  added {(with_ - without) * 100:+5.2f} pp = {(with_ - without) / without:+.1%} "
                      f"of the poller's own (goal <= {GOAL_ADDED:.0%})")
                # Each round against the round without a recorder just before it: a drift of the
                # machine over the run (which moves both) falls out of the difference.
                paired = sorted((r.core - w.core) / w.core if w.core else 0.0 for w, r in zip(rounds["without"], rounds[name]))
                print(f"  {'':<14}      paired by round: {statistics.median(paired):+.1%} of the poller's own "
                      f"(min {paired[0]:+.1%}, max {paired[-1]:+.1%})")
                # What the recorder's own code costs, measured on its threads (no noise of the
                # servers' answers): the rest of the difference above is its effect on the rest of
                # the process (garbage collection, caches) and the rounds' noise.
                writer = statistics.median(r.writer for r in rounds[name])
                hub_side = statistics.median(r.hub_side for r in rounds[name])
                per_frame = statistics.median(r.writer * r.seconds / r.window_frames for r in rounds[name] if r.window_frames)
                per_call = statistics.median(r.hub_side * r.seconds / r.window_calls for r in rounds[name] if r.window_calls)
                print(f"  {'':<14}      the recorder's own work: writer thread {writer:.2%} + on the hub's thread "
                      f"{hub_side:.2%} of a core = {(writer + hub_side) / without:+.1%} of the poller's own")
                print(f"  {'':<14}      ({per_frame * 1e6:.0f} µs per frame written, "
                      f"{statistics.median(r.window_frames / r.seconds for r in rounds[name]):.1f} frames/s; "
                      f"{per_call * 1e6:.1f} µs per judgement given, "
                      f"{statistics.median(r.window_calls / r.seconds for r in rounds[name]):.0f}/s)")
            for name, label in (("default", "default"), ("every", "every refresh")):
                per_hour_100, grown, frames, seconds = growth[name]
                print(f"growth, {label:<13} {per_hour_100:6.1f} MB per hour per 100 targets, {frames / seconds:.1f} frames/s "
                      f"({grown:,.0f} bytes in {seconds:.1f} s at {args.targets} targets)")
            print(f"  (a file's fixed part, {fixed:,} bytes, left out)")
            if open_left:
                print(f"  NOTE: files left open after Recorder.stop(): {', '.join(open_left)}")
            print(f"one-hour recording    {args.replay_targets} targets: {hour.stat().st_size / 1e6:.1f} MB, "
                  f"{hour_frames} frames, {hour_events} events ({copies} copies of a {span:.1f} s recording, "
                  f"{r.frames_written} frames)")
            print(f"replay open, {args.runs} fresh processes each (min / median / max; goal <= {GOAL_OPEN:g} s)")
            print(f"  {'position':<10} {'from process start':>22} {'from open_replay()':>22}")
            for position in POSITIONS:
                print(f"  {position:<10} {spread([t for t, _ in opens[position]]):>22} {spread([o for _, o in opens[position]]):>22}")
            for problem in problems:
                print(f"  NOTE: {problem}")

    on_sandbox(args.state, "dbops-bench-recording-sb-", run)

if __name__ == "__main__":
    main()
