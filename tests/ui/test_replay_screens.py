"""The console on a recording (dbops replay) at 80x24, driven by keys: the time bar on every
screen, stepping to the next event, a typed time, the timeline and going to one of its events,
a review note, and the refusals (runbooks, drills) that make it read-only. The recording is
written by dbops' own recorder from frozen snapshots judged by the real assessment code."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Input

from dbops.recording import Reading, recording_files
from dbops.replay import ReplayHub
from dbops.screens.app import DbopsApp, HealthChanged
from dbops.screens.timeline import NoteModal, TimeBar, TimelineScreen
from tests.unit.test_recording import CONFIG, promotion, record_story, recorded_while

SIZE = (80, 24)
T0 = 1_790_000_000.0


def replay_app(tmp_path: Path) -> tuple[DbopsApp, ReplayHub]:
    from dbops.config import parse

    recorder, _ = record_story(parse(CONFIG), tmp_path / "rec")
    recorder.stop()
    hub = ReplayHub(Reading(recording_files(tmp_path / "rec")[0], writable=True))
    app = DbopsApp(hub.config, state_dir=tmp_path, hub=hub, clock=hub.clock)
    hub.on_change = lambda: app.post_message(HealthChanged())
    return app, hub


async def settle(pilot, predicate, what: str, attempts: int = 100) -> None:
    for _ in range(attempts):
        await pilot.pause(0.05)
        if predicate():
            return
    raise AssertionError(f"gave up waiting for {what}")


def bar_text(app) -> str:
    return str(app.screen.query_one(TimeBar).render())


def cell(app, table_id: str, row: int, column: int) -> str:
    return str(app.screen.query_one(table_id, DataTable).get_row_at(row)[column])


async def test_stepping_through_a_recorded_failover_shows_each_moment(tmp_path):
    app, hub = replay_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, lambda: app.screen.query(TimeBar) and hub.loaded.is_set(), "the overview with its time bar")
        bar = app.screen.query_one(TimeBar)
        assert bar.region.bottom == SIZE[1] - 1 and bar.region.width == SIZE[0]  # above the footer, whole width
        assert "REPLAY" in bar_text(app) and "⏸" in bar_text(app)
        # The overview at the recording's start (before the first poll), then healthy at +10 s.
        await settle(pilot, lambda: "UNKNOWN" in cell(app, "#clusters", 0, 0), "the cluster not polled yet")
        hub.seek(T0 + 10)
        await settle(pilot, lambda: "OK" in cell(app, "#clusters", 0, 0), "the healthy cluster")
        await pilot.press("full_stop")  # the next event: pg1 down at +20 s
        await settle(pilot, lambda: hub.position == T0 + 20 and "CRIT" in cell(app, "#clusters", 0, 0), "pg1 down on the overview")
        assert "✗" in cell(app, "#clusters", 0, 2)
        # The pane, at that moment, with the time bar.
        await pilot.press("enter")
        await settle(pilot, lambda: getattr(app.screen, "key", None) == "sandbox/orders-db" and app.screen.query(TimeBar),
                     "the cluster's pane with the time bar")
        # A typed time: +11 s, the promotion (pg2 primary on timeline 4).
        await pilot.press("g")
        await settle(pilot, lambda: app.screen.query(Input), "the time prompt")
        await pilot.press(*"+11s", "enter")
        await settle(pilot, lambda: hub.position == T0 + 31, "the promotion's moment")
        assert hub.snapshots("sandbox/orders-db")["pg2"].data.timeline == 4
        # Runbooks and drills do not run on a recording: said, not silently ignored.
        app.open_runbooks("sandbox/orders-db")
        await pilot.press("D")
        await pilot.pause()
        said = [n.message for n in app._notifications]
        assert any("runbooks cannot run here" in m for m in said) and any("drills cannot run here" in m for m in said)


async def test_the_timeline_goes_to_an_event_and_takes_a_review_note(tmp_path):
    app, hub = replay_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, lambda: hub.loaded.is_set() and app.screen.query(TimeBar), "the overview")
        await pilot.press("T")
        await settle(pilot, lambda: isinstance(app.screen, TimelineScreen) and app.screen.shown, "the timeline")
        screen = app.screen
        texts = [e.text for e in screen.shown]
        assert texts.index("pg1 DOWN: connection refused at 10.0.0.1:5432") < texts.index("pg1 unreachable from the bastion too") \
            < texts.index("pg2 timeline 3 → 4")
        assert cell(app, "#timeline", texts.index("pg1 unreachable from the bastion too"), 1) == "note"
        # Enter on the timeline line goes there.
        table = screen.query_one("#timeline", DataTable)
        table.move_cursor(row=texts.index("pg2 timeline 3 → 4"))
        await pilot.press("enter")
        await settle(pilot, lambda: hub.position == T0 + 31 and not isinstance(app.screen, TimelineScreen), "the promotion's moment")
        # n: a note at the replay's position, kept in the recording.
        await pilot.press("n")
        await settle(pilot, lambda: isinstance(app.screen, NoteModal), "the note prompt")
        await pilot.press(*"late promotion", "enter")
        await settle(pilot, lambda: any(e.text == "late promotion" for e in hub.events()), "the note in the file")
        note = next(e for e in hub.events() if e.text == "late promotion")
        assert note.ts == T0 + 31 and '"review": true' in (note.detail or "")


async def test_the_audit_screen_in_a_replay_shows_the_recordings_records_not_this_hosts_log(tmp_path):
    from dbops.audit import AuditLog
    from dbops.config import parse
    from dbops.screens.audit import AuditScreen

    # Recorded while the host's log had a promotion's two records...
    recording = recorded_while(parse(CONFIG), tmp_path / "rec", AuditLog(tmp_path / "then" / "audit.jsonl"), promotion)
    # ... and replayed where this host's own log says something else entirely.
    AuditLog(tmp_path / "audit.jsonl").intent(action="something-on-this-host-today", environment="sandbox", cluster="orders-db")
    hub = ReplayHub(Reading(recording))
    app = DbopsApp(hub.config, state_dir=tmp_path, hub=hub, clock=hub.clock)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, lambda: hub.loaded.is_set() and app.screen.query(TimeBar), "the overview")
        await pilot.press("A")
        await settle(pilot, lambda: isinstance(app.screen, AuditScreen) and app.screen.query_one(DataTable).row_count, "the audit records")
        screen = app.screen
        assert screen.verdict.startswith("2 audit record(s) in the recording; each one's hash recomputed: all match")
        table = screen.query_one(DataTable)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        assert [(r[2], r[5], r[6]) for r in rows] == [("result", "runbook.postgres.promote-replica", "ok"),
                                                     ("intent", "runbook.postgres.promote-replica", "")]
        assert not any("something-on-this-host-today" in " ".join(r) for r in rows)
