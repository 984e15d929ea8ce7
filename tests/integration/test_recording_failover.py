"""A failover drill recorded by the console and played back (issue 18's "done when"), on the
shared sandbox's real PostgreSQL servers.

The console is open on sandbox-pg's pane, recording (as it does by default), while an operator
runs `dbops drill run pg-primary-loss` from another terminal: pg1 is killed, pg2 promoted, pg1
rejoined. Every time the live pane redraws, the test keeps what it shows and the clock it drew
with. Then:

* the recording replays in the same console (a replay hub): seeking to each of those moments
  shows the same pane, row for row (the primary going down, the promotion, the new timeline);
* its timeline lists the fault, dbops' detection, every runbook step and the operator's note, in
  order, with their times;
* `dbops incident bundle` made afterwards holds the recording, the audit excerpt and its
  verification, the journals, a check, the summary, and no credential: the sandbox's password,
  put where a recording would catch it (a running query's text, a note), is nowhere in it.

It leaves the sandbox as it found it: pg1 primary, pg2 and pg3 streaming from it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
import threading
import time
from typing import Any

from textual.widgets import Static

from dbops.config import load
from dbops.poller import MAX_BACKOFF_SECONDS
from dbops.recording import Codec, Reading
from dbops.replay import ReplayHub
from dbops.screens.app import DbopsApp, HealthChanged
from dbops.screens.postgres import TopologyTable
from dbops.screens.timeline import NoteModal

from .drills import run_drill
from .test_drill_screen import back_to_pg1, dbops

SIZE = (100, 30)
KEY = "sandbox/sandbox-pg"
NOTE = "pg1 gone from the bastion too; waiting for the drill's promotion"


class DrawClock:
    """The console's clock, held still while a pane redraws: the moment each kept frame was
    drawn at, exactly (the pane reads the clock several times per redraw)."""

    def __init__(self) -> None:
        self.held: float | None = None

    def __call__(self) -> float:
        return self.held if self.held is not None else time.time()


def pane_frame(screen) -> tuple[Any, ...]:
    """What the pane shows of the cluster: the members' table, the cluster's alert line (when
    shown) and the health summary. (Not the status line: it tells what the console's keys may do,
    and a replay's c and k are disabled, as it says.)"""
    table = screen.query_one(TopologyTable)
    rows = tuple(tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count))
    texts = tuple(str(w.content) if w.display else "" for w in (screen.query_one(f"#{i}", Static) for i in ("cluster-alert", "health-text")))
    return rows, texts


def identity(health) -> tuple[Any, ...]:
    """Which polls a judgement is made of: what the live pane drew, to find in the recording."""
    return tuple((m.name, m.snapshot.seq, m.snapshot.taken_at) for m in health.members)


def shows(frame, member: str, *words: str) -> bool:
    """Whether a kept frame's members' table has `member`'s row with every word in some cell
    (a row: severity, member, role, reachability, lag ...)."""
    return any(row[1] == member and all(any(w in c for c in row) for w in words) for row in frame[0])


async def settle(pilot, predicate, what: str, attempts: int = 600) -> None:
    for _ in range(attempts):
        await pilot.pause(0.1)
        if predicate():
            return
    raise AssertionError(f"gave up waiting for {what}")


def slow_query_with_the_password(pg_sandbox, seconds: int) -> subprocess.Popen[str]:
    """A query whose text carries the password in no form the text patterns know (a comment):
    the activity view shows it, so the recording must scrub it by its value."""
    return subprocess.Popen(["psql", pg_sandbox.dsn("pg1"), "-Atc", f"SELECT pg_sleep({seconds}) /* {pg_sandbox.password} */"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)


async def test_a_recorded_failover_replays_frame_for_frame_and_bundles_without_secrets(pg_sandbox, tmp_path):
    pg_sandbox.wait_streaming()
    config = load(pg_sandbox.config_path)
    clock = DrawClock()
    app = DbopsApp(config, state_dir=pg_sandbox.state_dir, config_path=pg_sandbox.config_path, clock=clock)
    frames: list[tuple[float, Any, tuple[Any, ...]]] = []
    drill: dict[str, Any] = {}
    started = time.time()

    def drill_thread() -> None:
        drill["result"] = run_drill(pg_sandbox.config_path, pg_sandbox.state_dir, "pg-primary-loss", "sandbox-pg")

    try:
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, lambda: app._recorder is not None and app.screen.is_mounted, "the console recording")
            app.open_cluster(KEY)
            await settle(pilot, lambda: getattr(app.screen, "key", None) == KEY and app.screen.is_mounted, "the pane")
            pane = app.screen
            drawn = pane.health_changed

            def keep(changed) -> None:
                clock.held = time.time()
                try:
                    drawn(changed)
                    if KEY in changed:
                        frames.append((clock.held, pane_frame(pane), identity(changed[KEY])))
                finally:
                    clock.held = None

            pane.health_changed = keep
            query = slow_query_with_the_password(pg_sandbox, 5)
            await settle(pilot, lambda: query.poll() is not None, "the query's end")
            runner = threading.Thread(target=drill_thread)
            runner.start()
            noted = False
            while runner.is_alive():
                await pilot.pause(0.1)
                down = any(m.name == "pg1" and not m.snapshot.reachable for m in app.hub.cluster_health(KEY).members)
                if down and not noted and app.screen is pane:
                    # The operator's note, typed while the primary is down (and its password pasted by mistake).
                    await pilot.press("n")
                    await settle(pilot, lambda: isinstance(app.screen, NoteModal), "the note's prompt")
                    app.screen.query_one("#note-input").value = f"{NOTE} ({pg_sandbox.password})"
                    await pilot.press("enter")
                    await settle(pilot, lambda: app.screen is pane, "the note kept")
                    noted = True
            runner.join()
            r, report = drill["result"]
            # The failover happened (the drill's own figures are its tests' business).
            assert r.returncode == 0, r.stdout + r.stderr
            assert [p["outcome"] for p in report["phases"]] == ["done"] * 8, report["phases"]
            assert noted, "pg1 was never seen down by the console"
            # The drill rejoined pg1, but the console polls a member that has been down less often
            # (backing off up to MAX_BACKOFF_SECONDS): the pane shows pg1 back within that bound,
            # not within the next refresh. The recording must reach that moment, and two refreshes after it.
            ended_at = len(frames)
            await settle(pilot, lambda: any(shows(f[1], "pg1", "UP") for f in frames[ended_at:]), "the pane showing pg1 back",
                         attempts=int(10 * (MAX_BACKOFF_SECONDS + 30)))
            seen = len(frames)
            await settle(pilot, lambda: len(frames) >= seen + 2, "the refreshes after the drill")
            recording = app._recorder.path
        ended = time.time()

        # -- the replay: each kept moment, the same pane
        hub = ReplayHub(Reading(recording, writable=True))
        replay = DbopsApp(hub.config, state_dir=tmp_path, hub=hub, clock=hub.clock)
        hub.on_change = lambda: replay.post_message(HealthChanged())
        compared, skipped = [], 0
        async with replay.run_test(size=SIZE) as pilot:
            await settle(pilot, lambda: hub.loaded.is_set() and replay.screen.is_mounted, "the replay")
            replay.open_cluster(KEY)
            await settle(pilot, lambda: getattr(replay.screen, "key", None) == KEY and replay.screen.is_mounted, "the replayed pane")
            rpane = replay.screen
            for at, live, which in frames:
                hub.seek(at)
                await settle(pilot, lambda at=at: hub.loaded.is_set() and hub.position == at, "the seek")
                await pilot.pause()
                health = hub.cluster_health(KEY)
                if identity(health) != which:
                    # The live pane drew a judgement the recording had already replaced by the
                    # time the clock was read (a poll landing within that millisecond): not comparable.
                    skipped += 1
                    continue
                # What the console does when the hub says the cluster changed (the seek did).
                rpane.health_changed({KEY: health})
                await pilot.pause()
                assert pane_frame(rpane) == live, f"replayed frame at {at} differs"
                compared.append(live)
        assert len(compared) >= 0.8 * len(frames) and len(frames) >= 4, (len(compared), skipped, len(frames))

        # The moments that matter were among the frames compared, in the order they happened.
        first_down = next((i for i, f in enumerate(compared) if shows(f, "pg1", "DOWN") or shows(f, "pg1", "TIMEOUT")), None)
        assert first_down is not None, [f[0] for f in compared]
        # The drill promotes the replica closest to pg1 (pg2 or pg3).
        new = next((m for f in compared for m in ("pg2", "pg3") if shows(f, m, "primary")), None)
        assert new is not None, [f[0] for f in compared]
        promoted = next(i for i, f in enumerate(compared) if shows(f, new, "primary"))
        assert first_down <= promoted  # (the drill promotes within a refresh or two: often the same frame)
        assert any(shows(f, new, "primary") and not shows(f, "pg1", "primary") for f in compared[promoted:]), (
            new, skipped, [[row[:4] for row in f[0]] for f in compared[promoted:]])

        # -- the timeline: the fault, the detection, every runbook step, the note; in order, timed
        reading = Reading(recording)
        events = reading.events()
        reading.close()
        texts = [e.text for e in events]

        def first(*prefixes: str, after: int = -1) -> int:
            found = [i for i, e in enumerate(events) if e.text.startswith(prefixes) and i > after]
            assert found, f"nothing starting with {prefixes} on the timeline after line {after}: {texts}"
            return found[0]

        fault = first("drill.pg-primary-loss.fault: starting")
        detected = first("pg1 DOWN", "pg1 TIMEOUT")
        note = first(NOTE)
        promote = first("postgres.promote-replica:promote: starting")
        # (A replica that a test before this one rejoined may still move to its primary's
        # timeline early in the recording: the promotion's is the one after its step.)
        timeline_change = first(f"{new} timeline", after=promote)
        # (The drill's runbook may finish within one of the console's refreshes: its steps and the
        # console's detection are each after the fault, in whichever order they came.)
        assert fault < detected < note and fault < first("postgres.promote-replica:") < promote < timeline_change, texts
        assert events[note].text == f"{NOTE} (***)"
        assert [e.ts for e in events] == sorted(e.ts for e in events)
        # Every record the audit log got while the console recorded is on the timeline, at its time.
        from dbops.audit import parse_timestamp, read_records

        written = [rec for rec in read_records(pg_sandbox.state_dir / "audit.jsonl") if parse_timestamp(rec["ts"]).timestamp() >= started]
        on_timeline = {(round(e.ts, 3), json.loads(e.detail or "{}").get("hash")) for e in events if e.source == "audit"}
        assert {(round(parse_timestamp(rec["ts"]).timestamp(), 3), rec["hash"]) for rec in written} <= on_timeline
        assert {rec["step"] for rec in written if rec["action"].startswith("postgres.promote-replica:")} >= {"fence", "promote"}

        # -- the bundle: everything listed, verifiable, no credential
        out = tmp_path / "incident.tar.gz"
        made = dbops(pg_sandbox, "incident", "bundle", "--since", str(started - 1), "--until", str(ended + 1), "--cluster", "sandbox-pg",
                     "-o", str(out))
        assert made.returncode == 0, made.stdout + made.stderr
        with tarfile.open(out) as tar:
            members = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        for name in ("recording.dbrec", "audit.jsonl", "audit-verify.txt", "check.json", "summary.md", "MANIFEST.json"):
            assert name in members, sorted(members)
        assert any(n.startswith("runs/") for n in members) and any(n.startswith("drills/") for n in members), sorted(members)
        manifest = json.loads(members["MANIFEST.json"])
        assert all(hashlib.sha256(members[n]).hexdigest() == v["sha256"] for n, v in manifest.items())
        assert "whole log now: chain intact" in members["audit-verify.txt"].decode()
        assert "each excerpt record's hash recomputed: all match" in members["audit-verify.txt"].decode()
        assert json.loads(members["check.json"])
        summary = members["summary.md"].decode()
        assert NOTE in summary and "drill.pg-primary-loss.fault" in summary and "pg1 DOWN" in summary
        # The canary: the password is in no file, no decompressed frame, no event of the bundle.
        password = pg_sandbox.password.encode()
        assert not [n for n, b in members.items() if password in b]
        bundled = tmp_path / "bundled.dbrec"
        bundled.write_bytes(members["recording.dbrec"])
        copy = Reading(bundled)
        codec = Codec()
        with copy.lock:
            payloads = [codec.decompress(p) for (p,) in copy.db.execute("SELECT payload FROM frames")]
        assert payloads and not [p for p in payloads if password in p]
        assert any(e.text == f"{NOTE} (***)" for e in copy.events())
        copy.close()
        # ...nor in the console's own recording on the host, which did see the query (scrubbed).
        assert password not in recording.read_bytes()
        host = Reading(recording)
        with host.lock:
            seen = [codec.decompress(p) for (p,) in host.db.execute("SELECT payload FROM frames WHERE kind = 'health'")]
        host.close()
        assert any(b"pg_sleep(5) /* *** */" in p for p in seen)
    finally:
        await back_to_pg1(pg_sandbox)

