"""The session recording and its replay, without servers: a recorder fed the values a hub makes
(judged by the real assessment code from frozen snapshots), the timeline it derives, the file
it writes, and a replay hub reading it back."""

from __future__ import annotations

import dataclasses
import os
import pickle
import sqlite3
import time
from pathlib import Path

import pytest

from dbops.audit import AuditLog
from dbops.config import parse
from dbops.health import assess_cluster
from dbops.incident import parse_since
from dbops.model import Reachability
from dbops.recording import Codec, Reading, Recorder, RecordingError, parse_time, recording_files, state_changes
from dbops.replay import ReplayHub, ReplayReadOnly
from tests.ui.frozen import MiB, healthy_primary, healthy_replica, snap

CANARY = "canary-Zq9-not-a-word"
CONFIG = f"""
[recording]
segment_minutes = 1
[environments.sandbox]
sandbox = true
mode = "operator"
[environments.sandbox.clusters.orders-db]
engine = "postgres"
password = {{ value = "{CANARY}" }}
members = [
  {{ name = "pg1", host = "10.0.0.1", role = "primary" }},
  {{ name = "pg2", host = "10.0.0.2", role = "replica" }},
  {{ name = "pg3", host = "10.0.0.3", role = "replica" }},
]
"""


class Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def states(ref):
    """A failover's story as the pollers would judge it: healthy, pg1 down, pg2 promoted on a
    new timeline, pg1 back."""
    healthy = {"pg1": snap(ref, "pg1", healthy_primary()), "pg2": snap(ref, "pg2", healthy_replica(0, 0.0)),
               "pg3": snap(ref, "pg3", healthy_replica(0, 0.0))}
    down = {**healthy, "pg1": snap(ref, "pg1", healthy_primary(), Reachability.DOWN, "connection refused at 10.0.0.1:5432")}
    promoted_data = dataclasses.replace(healthy_primary(), timeline=4, replicas=())
    promoted = {**down, "pg2": snap(ref, "pg2", promoted_data)}
    back = {**promoted, "pg1": snap(ref, "pg1", dataclasses.replace(healthy_replica(0, 0.0), timeline=4))}
    return [healthy, down, promoted, back]


def judged(ref, snaps):
    return assess_cluster(ref, snaps, now=snaps["pg1"].taken_at)


@pytest.fixture
def config():
    return parse(CONFIG)


def record_story(config, directory: Path, audit: Path | None = None, clock: Clock | None = None) -> tuple[Recorder, Clock]:
    clock = clock or Clock(1_790_000_000.0)
    recorder = Recorder(config, directory, audit_path=audit, clock=clock)
    recorder.start()
    ref = config.clusters()[0]
    for i, snaps in enumerate(states(ref)):
        clock.at += 10
        recorder.health(ref.key, snaps, judged(ref, snaps))
        if i == 1:
            clock.at += 1
            recorder.note("pg1 unreachable from the bastion too", "alice", ref.key)
    assert recorder.flush()
    return recorder, clock


def test_state_changes_tell_a_failover(config):
    ref = config.clusters()[0]
    healthy, down, promoted, back = (judged(ref, s) for s in states(ref))
    assert state_changes(None, healthy, 1.0) == []  # a first look at a healthy cluster says nothing
    went_down = [e.text for e in state_changes(healthy, down, 2.0)]
    assert went_down[0] == "pg1 DOWN: connection refused at 10.0.0.1:5432"
    assert "cluster OK → CRIT" in went_down
    moved = [e.text for e in state_changes(down, promoted, 3.0)]
    assert "pg2 timeline 3 → 4" in moved
    assert any(t.startswith("pg2 role replica → primary") for t in moved), moved
    returned = [e.text for e in state_changes(promoted, back, 4.0)]
    assert returned[0] == "pg1 UP again (was DOWN)"
    # A first look at a cluster with a member down says so (the recording may start mid-incident).
    assert [e.text for e in state_changes(None, down, 5.0)][0].startswith("pg1 DOWN")


def test_a_recording_holds_each_moment_and_the_timeline_in_order(config, tmp_path):
    recorder, clock = record_story(config, tmp_path)
    recorder.stop()
    (path,) = recording_files(tmp_path)
    reading = Reading(path)
    ref = config.clusters()[0]
    t0 = 1_790_000_000.0
    assert reading.span() == (t0, t0 + 41)  # from the recorder's start to its stop
    # Each moment is the frame recorded at or before it: the failover's second state at +25 s.
    frame = reading.latest("health", ref.key, t0 + 25)
    snaps, health = frame.value
    assert frame.ts == t0 + 20 and snaps["pg1"].reachability is Reachability.DOWN
    assert health == judged(ref, states(ref)[1])
    events = reading.events()
    texts = [e.text for e in events]
    assert texts.index("pg1 DOWN: connection refused at 10.0.0.1:5432") < texts.index("pg1 unreachable from the bastion too") \
        < texts.index("pg2 timeline 3 → 4") < texts.index("pg1 UP again (was DOWN)")
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    note = next(e for e in events if e.source == "note")
    assert note.cluster == ref.key and '"operator": "alice"' in (note.detail or "")
    # The config travels with the recording (its credential replaced), so a replay needs no config file.
    assert [r.key for r in reading.config().clusters()] == [ref.key]
    assert reading.config().environments["sandbox"].clusters["orders-db"].password.value == "***"


def recorded_while(config, directory: Path, audit: AuditLog, write) -> Path:
    """The file of a recording made while `write(audit)` wrote to the audit log."""
    recorder = Recorder(config, directory, audit_path=audit.path)
    recorder.start()
    write(audit)
    assert recorder.flush()
    recorder.stop()
    return recording_files(directory)[0]


def promotion(audit: AuditLog) -> None:
    intent = audit.intent(action="runbook.postgres.promote-replica", environment="sandbox", cluster="orders-db", step="promote")
    audit.result(intent, outcome="ok")


def test_audit_records_join_the_timeline(config, tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.intent(action="before-the-recording", environment="sandbox", cluster="orders-db")
    events = Reading(recorded_while(config, tmp_path / "rec", audit, promotion)).events()
    texts = [e.text for e in events]
    assert texts[0].startswith("runbook.postgres.promote-replica step promote: starting")
    assert texts[1].startswith("runbook.postgres.promote-replica step promote: ok in ")
    assert all("before-the-recording" not in t for t in texts)  # only what happened while recording
    assert {e.source for e in events} == {"audit"} and events[0].cluster == "sandbox/orders-db"


def test_the_recordings_audit_records_are_checked_one_by_one_and_a_scrubbed_one_is_not_called_tampered(config, tmp_path):
    from dbops.recording import recorded_audit

    def vacuum_and_kill(audit: AuditLog) -> None:
        audit.intent(action="postgres.vacuum", environment="sandbox", cluster="orders-db", params={"table": "orders"})
        # A credential's value in a record (a weak password can be any word): the recorder removes it.
        audit.intent(action="postgres.kill", environment="sandbox", cluster="orders-db", reason=f"asked by {CANARY}")

    events = Reading(recorded_while(config, tmp_path / "rec", AuditLog(tmp_path / "audit.jsonl"), vacuum_and_kill)).events()
    found = recorded_audit(events)
    assert [r["action"] for r in found.records] == ["postgres.vacuum", "postgres.kill"]
    assert (found.mismatched, found.redacted, found.unreadable) == (0, 1, 0)
    assert "1 had a credential's value removed by the recorder, so their hash cannot be checked" in found.verdict()
    assert "NOT match" not in found.verdict() and CANARY not in found.verdict()
    # A record changed after it was written (and no credential removed from it) does not match.
    vacuum = next(e for e in events if '"postgres.vacuum"' in (e.detail or ""))
    forged = dataclasses.replace(vacuum, detail=(vacuum.detail or "").replace('"orders"', '"payments"'))
    found = recorded_audit([forged if e is vacuum else e for e in events])
    assert (found.mismatched, found.redacted) == (1, 1) and "1 do NOT match" in found.verdict() and not found.ok


def test_a_credential_never_reaches_the_file(config, tmp_path):
    ref = config.clusters()[0]
    clock = Clock(1_790_000_000.0)
    recorder = Recorder(config, tmp_path, clock=clock)
    recorder.start()
    # A server's message quoting the credential (not in a form the text patterns know).
    leaky = {**states(ref)[0], "pg3": snap(ref, "pg3", healthy_replica(0, 0.0), Reachability.ERROR, f"role said {CANARY} twice")}
    recorder.health(ref.key, leaky, judged(ref, leaky))
    recorder.note(f"typed by mistake: {CANARY}", "bob")
    assert recorder.flush()
    recorder.stop()
    (path,) = recording_files(tmp_path)
    db = sqlite3.connect(path)
    codec = Codec()
    payloads = [codec.decompress(p) for (p,) in db.execute("SELECT payload FROM frames")]
    assert payloads and all(CANARY.encode() not in p for p in payloads)
    assert all(CANARY not in str(row) for row in db.execute("SELECT * FROM events"))
    assert CANARY.encode() not in path.read_bytes()
    snaps, _ = Reading(path).latest("health", ref.key, clock.at).value
    assert snaps["pg3"].error == "role said *** twice"


def test_a_value_recorded_before_a_field_was_added_reads_with_that_fields_default():
    from dbops.engines.postgres.data import ReplicaRow
    from dbops.recording import _rebuild

    row = ReplicaRow(7, "pg3", "10.0.0.3", "streaming", "async", "0/5000000", "0/5000000", 0, 0, 0, None, None, 0.5,
                     slot_name="pg3", replayed_all_written_by=99.0, written_after=((0x5000100, 98.5),))
    values = dataclasses.astuple(row)[:-2]  # as pickled before replayed_all_written_by and written_after existed

    class RecordedByAnOlderDbops:
        def __reduce__(self):
            return (_rebuild, (ReplicaRow, values))

    codec = Codec()
    old = codec.unpack(codec.compress(pickle.dumps(RecordedByAnOlderDbops())))
    assert old == dataclasses.replace(row, replayed_all_written_by=None, written_after=())


def test_a_file_holding_anything_but_dbops_values_is_refused_not_run(config, tmp_path):
    recorder, _ = record_story(config, tmp_path)
    recorder.stop()
    (path,) = recording_files(tmp_path)
    witness = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {witness}",))

    codec = Codec()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO frames (ts, kind, cluster, keyframe, payload) VALUES (?, 'health', 'sandbox/orders-db', 0, ?)",
               (2e9, codec.compress(pickle.dumps(Evil()))))
    db.commit()
    with pytest.raises(RecordingError, match="posix.system|os.system"):
        Reading(path).latest("health", "sandbox/orders-db", 2e9)
    assert not witness.exists()


def test_files_are_cut_restated_and_removed_by_age_and_size(config, tmp_path):
    clock = Clock(1_790_000_000.0)
    old = tmp_path / "20200101T000000Z-elsewhere-1.dbrec"
    old.write_bytes(b"x" * 1000)
    os.utime(old, (time.time() - 100 * 3600, time.time() - 100 * 3600))  # past keep_hours (72)
    recorder, clock = record_story(config, tmp_path, clock=clock)
    assert not old.exists()
    first = recorder.path
    clock.at += 61  # past segment_minutes = 1
    assert recorder.flush() and recorder.flush()
    second = recorder.path
    assert second != first
    recorder.stop()
    # The new file replays on its own: each cluster's state restated at its start.
    ref = config.clusters()[0]
    frame = Reading(second).latest("health", ref.key, clock.at)
    assert frame is not None and frame.keyframe and frame.value[0]["pg1"].reachable  # pg1 back, as last recorded
    assert recording_files(tmp_path) == [first, second]


def test_a_cluster_nobody_has_open_is_kept_at_each_change_and_every_so_often(config, tmp_path):
    clock = Clock(1_790_000_000.0)
    recorder = Recorder(config, tmp_path, clock=clock)
    recorder.start()
    ref = config.clusters()[0]
    healthy, down = states(ref)[:2]
    kept_at = []
    for i in range(30):  # a refresh every 2 s for a minute; pg1 down from 20 s to 30 s
        clock.at += 2
        snaps = down if 20 <= i * 2 < 30 else healthy
        before = recorder.frames_written
        recorder.health(ref.key, snaps, judged(ref, snaps))
        assert recorder.flush()
        if recorder.frames_written > before:
            kept_at.append(i * 2)
    # Every 10 s (unwatched_every_seconds), and at once when pg1 went down and came back.
    assert kept_at == [0, 10, 20, 30, 40, 50]
    recorder.watch(ref.key)  # opened in the console: every refresh from now on
    for _ in range(3):
        clock.at += 2
        recorder.health(ref.key, healthy, judged(ref, healthy))
    assert recorder.flush()
    recorder.stop()
    # (The minute also cut a new file, which starts with the state restated: a keyframe.)
    frames = [f for p in recording_files(tmp_path) for f in Reading(p).frames_between(0, clock.at, "health") if not f.keyframe]
    assert len(frames) == 6 + 3


def test_typed_times():
    around = 1_790_000_000.0  # 2026-09-21 ... local
    assert parse_time("+90s", around) == around + 90
    assert parse_time("-5m", around) == around - 300
    assert parse_time(str(around + 1), around) == around + 1
    hh = time.localtime(around)
    assert parse_time(f"{hh.tm_hour:02d}:{hh.tm_min:02d}:{hh.tm_sec:02d}", around) == pytest.approx(around, abs=1)
    with pytest.raises(ValueError, match="HH:MM"):
        parse_time("yesterday", around)
    assert parse_since("2h", around) == around - 7200
    assert parse_since("90m", around) == around - 5400
    with pytest.raises(ValueError, match="90m, 2h"):
        parse_since("soon", around)


def replay_of(config, tmp_path) -> ReplayHub:
    recorder, _ = record_story(config, tmp_path)
    recorder.stop()
    changes: list[int] = []
    hub = ReplayHub(Reading(recording_files(tmp_path)[0], writable=True), on_change=lambda: changes.append(1))
    hub.start()
    assert hub.loaded.wait(5)
    return hub


def test_replay_shows_each_moment_as_recorded_and_steps_through_events(config, tmp_path):
    hub = replay_of(config, tmp_path)
    ref = hub.refs[0]
    t0 = 1_790_000_000.0
    try:
        # The recording's start: the console had not polled yet.
        assert hub.position == t0 and hub.cluster_health(ref.key).severity.name == "UNKNOWN"
        hub.seek(t0 + 10)
        assert hub.loaded.wait(5)
        assert hub.cluster_health(ref.key).severity.name == "OK"
        hub.seek(t0 + 25)
        assert hub.loaded.wait(5)
        assert hub.position == t0 + 25 and hub.clock() == t0 + 25
        assert hub.snapshots(ref.key)["pg1"].reachability is Reachability.DOWN
        assert hub.cluster_health(ref.key) == judged(ref, states(ref)[1])
        assert ref.key in hub.drain()
        # The next event after +25 s: the promotion at +31 s (the note was at +21 s); then pg1's return.
        assert hub.step(1) == t0 + 31
        assert hub.loaded.wait(5)
        assert hub.snapshots(ref.key)["pg2"].data.timeline == 4
        assert hub.step(1) == t0 + 41
        assert hub.loaded.wait(5)
        assert hub.step(-1) == t0 + 31
        assert hub.loaded.wait(5)
        # Read-only by construction.
        with pytest.raises(ReplayReadOnly, match="replay of a recording"):
            hub.submit(lambda adapter: None, ref.key, "pg1").result()  # type: ignore[arg-type, return-value]
        assert all(env.mode == "read-only" and not env.allows_drills for env in hub.config.environments.values())
        # A review note lands at the replay's position, in the file.
        hub.note("the promotion came 9 s after the fault", "carol", ref.key)
        assert any(e.text == "the promotion came 9 s after the fault" and e.ts == t0 + 31 and '"review": true' in (e.detail or "")
                   for e in hub.events())
    finally:
        hub.stop()


def test_replay_plays_to_the_end_and_says_so(config, tmp_path):
    hub = replay_of(config, tmp_path)
    try:
        hub.faster(10)  # the fastest
        assert hub.speed == 60.0
        hub.resume()
        deadline = time.monotonic() + 10
        while hub.playing and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not hub.playing and hub.position == hub.last
        assert hub.snapshots(hub.refs[0].key)["pg1"].reachable  # the last state: pg1 back
        assert ("information", "end of the recording: p plays it again from the start") in hub.drain_notices()
    finally:
        hub.stop()


def test_a_damaged_or_foreign_file_says_what_it_is(tmp_path):
    path = tmp_path / "x.dbrec"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(RecordingError, match="not a dbops recording"):
        Reading(path)
    with pytest.raises(RecordingError, match="no such recording"):
        Reading(tmp_path / "missing.dbrec")
    other = sqlite3.connect(tmp_path / "y.dbrec")
    other.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    other.execute("INSERT INTO meta VALUES ('schema', '99')")
    other.commit()
    with pytest.raises(RecordingError, match="schema '99'; this dbops reads schema 1"):
        Reading(tmp_path / "y.dbrec")


def test_lag_history_is_rebuilt_from_the_recorded_snapshots(config, tmp_path):
    """The pane's lag trend in replay: the engine's own sampler over the snapshots that arrived."""
    clock = Clock(1_790_000_000.0)
    recorder = Recorder(config, tmp_path, clock=clock)
    recorder.start()
    ref = config.clusters()[0]
    recorder.watch(ref.key)  # the pane open: every refresh kept
    for i in range(5):
        clock.at += 2
        snaps = {"pg1": dataclasses.replace(snap(ref, "pg1", healthy_primary()), seq=i, taken_at=clock.at),
                 "pg2": dataclasses.replace(snap(ref, "pg2", healthy_replica(i * MiB, float(i))), seq=i, taken_at=clock.at),
                 "pg3": dataclasses.replace(snap(ref, "pg3", healthy_replica(0, 0.0)), seq=i, taken_at=clock.at)}
        recorder.health(ref.key, snaps, judged(ref, snaps))
    assert recorder.flush()
    recorder.stop()
    hub = ReplayHub(Reading(recording_files(tmp_path)[0]))
    hub.start()
    try:
        hub.watch(ref.key)
        hub.seek(clock.at)
        deadline = time.monotonic() + 5
        while (hub.position != clock.at or not hub.history(ref.key, "pg2")) and time.monotonic() < deadline:
            time.sleep(0.05)
        points = hub.history(ref.key, "pg2")
        assert [p.ts for p in points] == [1_790_000_000.0 + 2 * (i + 1) for i in range(5)]
    finally:
        hub.stop()


def test_alerts_firing_and_resolving_are_on_the_timeline():
    from dbops.hub import AlertsState
    from dbops.platform.alertmanager import Alert
    from dbops.recording import alert_changes

    down = Alert("fp1", "PostgresDown", "critical", "active", (("alertname", "PostgresDown"),), "pg1 is down", 1.0,
                 cluster="sandbox/orders-db", member="pg1")
    lag = Alert("fp2", "ReplicaLag", "warning", "active", (("alertname", "ReplicaLag"),), "", 2.0, cluster="sandbox/orders-db")
    quiet = AlertsState((), 1.0, None)
    firing = AlertsState((down, lag), 2.0, None)
    said = [(e.severity, e.cluster, e.member, e.text) for e in alert_changes(quiet, firing, 2.0)]
    assert said == [("error", "sandbox/orders-db", "pg1", "alert PostgresDown firing: pg1 is down"),
                    ("warning", "sandbox/orders-db", "", "alert ReplicaLag firing")]
    resolved = [e.text for e in alert_changes(firing, AlertsState((lag,), 3.0, None), 3.0)]
    assert resolved == ["alert PostgresDown resolved"]
    failing = [e.text for e in alert_changes(firing, AlertsState((down, lag), 2.0, "connection refused"), 4.0)]
    assert failing == ["Alertmanager cannot be read: connection refused"]


def test_a_window_across_two_files_is_one_recording_that_starts_with_the_state_then(config, tmp_path):
    """What `dbops replay --since` and the incident bundle read: the files the window touches,
    merged; each cluster's state at the window's start restated; the ones after it in order."""
    from dbops.incident import Scrubber, slice_recordings

    recorder, clock = record_story(config, tmp_path / "rec")  # +10 .. +41 s
    clock.at += 61  # past segment_minutes = 1: a second file
    assert recorder.flush() and recorder.flush()
    ref = config.clusters()[0]
    healthy = states(ref)[0]
    clock.at += 5
    recorder.health(ref.key, healthy, judged(ref, healthy))
    recorder.note("after the cut", "dave", ref.key)
    recorder.stop()
    files = recording_files(tmp_path / "rec")
    assert len(files) == 2
    t0 = 1_790_000_000.0
    out = tmp_path / "window.dbrec"
    frames, events = slice_recordings(files, out, config, t0 + 25, clock.at, None, Scrubber(config))
    window = Reading(out)
    assert window.span() == (t0 + 25, clock.at)
    first = window.latest("health", ref.key, t0 + 25)
    assert first.keyframe and first.value[0]["pg1"].reachability is Reachability.DOWN  # the state at +25 s
    texts = [e.text for e in window.events()]
    assert texts[0] == "pg2 role replica → primary" and "pg2 timeline 3 → 4" in texts and texts[-1] == "after the cut"
    assert "pg1 DOWN: connection refused at 10.0.0.1:5432" not in texts  # before the window
    assert frames == 1 + 2 + 1 + 1  # the keyframe, +31 and +41 s, the second file's restated state and its frame


def test_replay_of_a_window_says_what_is_wrong_before_opening_anything(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "dbops.toml"
    config.write_text(CONFIG)

    def dbops(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(config), *args], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, "DBOPS_STATE_DIR": str(tmp_path / "state")})

    nothing = dbops("replay", "--since", "1h")
    assert nothing.returncode == 1 and nothing.stderr.startswith("error: no recording in ") and "holds anything of that window" in nothing.stderr
    assert not list((tmp_path / "state" / "replays").glob("*.dbrec"))  # no empty file left behind
    for args in (("replay", "some.dbrec", "--since", "1h"), ("replay", "--until", "10:00")):
        r = dbops(*args)
        assert r.returncode == 2 and "give them without FILE, and --until only with --since" in r.stderr, r.stderr
    r = dbops("replay", "--since", "soon")
    assert r.returncode == 2 and "'soon': give an age (90m, 2h, 1d)" in r.stderr
