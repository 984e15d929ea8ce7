"""`dbops record` (headless recording), `dbops replay` (the console on a recording) and
`dbops incident bundle` (what the incident review needs, in one file)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import NoReturn

import click

from dbops.cli_common import load_config


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.command()
@click.option("--duration", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="Stop after this many seconds (default: until interrupted or SIGTERM).")
@click.pass_context
def record(ctx: click.Context, duration: float | None) -> None:
    """Record every cluster of the config without a console (for a bastion that records all
    the time): the files `dbops replay` opens, cut and kept as [recording] says."""
    import signal

    from dbops.config import state_dir
    from dbops.poller import PollerHub
    from dbops.recording import Recorder, recordings_dir

    cfg = load_config(ctx.obj["config_path"])
    if not cfg.recording.enabled:
        _fail("recording is disabled in the config ([recording] enabled = false)", 2)
    directory = recordings_dir(cfg.recording, state_dir())
    # The audit log of this state directory: runbooks run from any console on this host are
    # on the recording's timeline.
    recorder = Recorder(cfg, directory, audit_path=state_dir() / "audit.jsonl")
    try:
        recorder.start()
    except OSError as exc:
        _fail(f"cannot record into {directory}: {exc}")
    hub = PollerHub(cfg, recorder=recorder)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    hub.start()
    click.echo(f"recording {len(hub.refs)} cluster(s) into {directory} (a new file every {cfg.recording.segment_minutes:g} min, "
               f"kept {cfg.recording.keep_hours:g} h or {cfg.recording.max_mb:g} MB); ctrl-c or SIGTERM stops")
    click.echo(f"file: {recorder.path}")
    stop.wait(duration)
    hub.stop()
    recorder.stop()
    if recorder.error is not None:
        _fail(f"recording stopped early: {recorder.error}")
    click.echo(f"recorded {recorder.frames_written} frames; last file: {recorder.path}")


def _default_recording(config_path: str | None) -> Path:
    """The newest recording of this host's recordings directory."""
    from dbops.config import ConfigError, find_config, load, state_dir
    from dbops.recording import recording_files, recordings_dir

    try:
        options = load(find_config(config_path)).recording
        directory = recordings_dir(options, state_dir())
    except ConfigError:
        from dbops.config import RecordingOptions

        directory = recordings_dir(RecordingOptions(), state_dir())
    files = recording_files(directory)
    if not files:
        _fail(f"no recording in {directory}: name one (dbops replay FILE), or record one (the console records by default)")
    return files[-1]


@click.command()
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--at", "at", metavar="TIME", default=None,
              help="Open at this moment: HH:MM[:SS] (that day of the recording), an ISO date-time, or +N[s|m|h] from its start.")
@click.option("--list", "list_only", is_flag=True, help="List the recordings of this host and their spans, then exit.")
@click.option("--since", "since", metavar="AGE|TIME", default=None,
              help="Instead of one file: this host's recordings from this long ago (90m, 2h) or this time, merged into one "
                   "replay (kept under <state dir>/replays/, with the review notes made in it).")
@click.option("--until", "until", metavar="TIME", default=None, help="With --since: up to this time (default: now).")
@click.pass_context
def replay(ctx: click.Context, file: Path | None, at: str | None, list_only: bool, since: str | None, until: str | None) -> None:
    """Open the console on a recording (default: this host's newest), read-only: every pane as
    it was, a time bar, p plays/pauses, . and , step to the next/previous event, + and - change
    the speed, g goes to a typed time, T shows the timeline, n adds a review note."""
    from dbops.config import state_dir
    from dbops.recording import Reading, RecordingError, clock_text, parse_time, recording_files

    if since is not None or until is not None:
        if file is not None or since is None:
            _fail("--since (and --until) replay this host's recordings of a window: give them without FILE, and --until only with --since", 2)
        assert since is not None
        file = _window(ctx.obj["config_path"], since, until)

    if list_only:
        directory = _default_recording(ctx.obj["config_path"]).parent
        for path in recording_files(directory):
            try:
                reading = Reading(path)
                first, last = reading.span()
                reading.close()
                click.echo(f"{path}  {clock_text(first, True)} – {clock_text(last, True)}  {path.stat().st_size / 1e6:.1f} MB")
            except RecordingError as exc:
                click.echo(f"{path}  cannot be read: {exc}")
        return
    path = file if file is not None else _default_recording(ctx.obj["config_path"])
    from dbops.replay import open_replay

    try:
        hub = open_replay(path)
    except RecordingError as exc:
        _fail(str(exc))
    start = hub.first
    if at is not None:
        try:
            start = parse_time(at, hub.first)
        except ValueError as exc:
            hub.stop()
            _fail(f"--at {exc}", 2)
        if not hub.first <= start <= hub.last:
            click.echo(f"note: {at} is outside the recording ({clock_text(hub.first, True)} – {clock_text(hub.last, True)}); "
                       "opening at its nearest end", err=True)
    hub.seek(start)
    from dbops.screens.app import DbopsApp, HealthChanged

    app = DbopsApp(hub.config, state_dir=state_dir(), hub=hub, clock=hub.clock)
    hub.on_change = lambda: app.post_message(HealthChanged())
    app.run()
    if app.crash_message:
        click.echo(f"error: {app.crash_message}", err=True)


def _bounds(since: str, until: str | None) -> tuple[float, float]:
    """--since and --until as epoch seconds (until: now), or exit 2 saying what is wrong."""
    import time

    from dbops.incident import parse_since

    now = time.time()
    try:
        return parse_since(since, now), (parse_since(until, now) if until is not None else now)
    except ValueError as exc:
        _fail(str(exc), 2)


def _window(config_path: str | None, since: str, until: str | None) -> Path:
    """The recordings of [since, until] merged into one file under <state dir>/replays/."""
    from datetime import datetime

    from dbops.config import state_dir
    from dbops.incident import Scrubber, slice_recordings
    from dbops.recording import recording_files, recordings_dir

    cfg = load_config(config_path)
    start, end = _bounds(since, until)
    directory = recordings_dir(cfg.recording, state_dir())
    sources = recording_files(directory)
    name = f"replay-{datetime.fromtimestamp(start).strftime('%Y%m%dT%H%M%S')}-{int(end - start)}s"
    out = state_dir() / "replays" / f"{name}.dbrec"
    n = 1
    while out.exists():  # an earlier replay of the same window keeps its review notes
        out = out.with_name(f"{name}-{n}.dbrec")
        n += 1
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    frames, _ = slice_recordings(sources, out, cfg, start, end, None, Scrubber(cfg))
    if frames == 0:
        out.unlink(missing_ok=True)
        _fail(f"no recording in {directory} holds anything of that window")
    click.echo(f"replaying the window from {len(sources)} recording file(s), saved as {out} (review notes are kept in it)")
    return out


@click.group()
def incident() -> None:
    """What an incident review needs."""


@incident.command()
@click.option("--since", "since", default="2h", show_default=True, metavar="AGE|TIME",
              help="From this long ago (90m, 2h, 1d) or this time (HH:MM, ISO date-time).")
@click.option("--until", "until", default=None, metavar="TIME", help="Up to this time (default: now).")
@click.option("--cluster", "cluster", default=None, metavar="ENV/NAME|NAME", help="Only this cluster's part.")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), default=None,
              help="The bundle's file (default: incident-<time>.tar.gz in the current directory).")
@click.option("--check/--no-check", "with_check", default=True, show_default=True,
              help="Include a `dbops check --json` of the clusters as they are now.")
@click.pass_context
def bundle(ctx: click.Context, since: str, until: str | None, cluster: str | None, output: Path | None, with_check: bool) -> None:
    """Write a tar.gz for the incident review: the recording of the window, the audit log's
    excerpt and its chain's verification, the runbook journals, a check, the logs, and a
    Markdown timeline. Credentials are scrubbed from every file. With [audit.ship] configured,
    the bundle is uploaded beside the shipped audit log."""

    from dbops.config import find_config, state_dir
    from dbops.incident import BundleError, make_bundle

    cfg = load_config(ctx.obj["config_path"])
    start, end = _bounds(since, until)
    key = None
    if cluster is not None:
        keys = [r.key for r in cfg.clusters() if cluster in (r.key, r.name)]
        if len(keys) != 1:
            known = ", ".join(r.key for r in cfg.clusters())
            _fail(f"--cluster {cluster}: " + ("names more than one cluster; give ENV/NAME" if keys else f"no such cluster; configured: {known}"), 2)
        key = keys[0]
    try:
        result = make_bundle(cfg, state_dir(), start, end, cluster=key, output=output, with_check=with_check,
                             config_path=find_config(ctx.obj["config_path"]))
    except BundleError as exc:
        _fail(str(exc))
    for line in result.lines():
        click.echo(line)
    if not result.ok:
        sys.exit(1)
