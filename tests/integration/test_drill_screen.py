"""The drill screen (D) at 80x24, driven by keys on the shared sandbox's real servers: pick
pg-primary-loss on sandbox-pg, start, answer the confirmations, watch the checklist, the RTO
clock and the probe's strip, note a phase, reach the outcome and the report; and a drill aborted
right after its fault, whose restore brings the primary back.

Every test leaves the sandbox as it found it: pg1 primary, pg2 and pg3 streaming from it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys

from textual import events
from textual.widgets import DataTable, Input, OptionList, Static

from dbops.config import load
from dbops.drill.model import PHASES, Phase
from dbops.screens.app import DbopsApp
from dbops.screens.drill import AbortDrill, DrillScreen, PhaseNote
from dbops.screens.runbook import ConfirmStep

SIZE = (80, 24)  # the smallest terminal dbops supports: a bastion over SSH and tmux
NOTE = "seen on the overview first"
MEMBERS = ("pg1", "pg2", "pg3")


def dbops(pg_sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbops.cli", "--config", str(pg_sandbox.config_path), *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, "DBOPS_STATE_DIR": str(pg_sandbox.state_dir)},
        stdin=subprocess.DEVNULL,
    )


async def roles(pg_sandbox) -> dict[str, str]:
    out = {}
    for m in MEMBERS:
        try:
            out[m] = "replica" if (await pg_sandbox.fetch(m, "SELECT pg_is_in_recovery()"))[0][0] else "primary"
        except Exception:  # a member that does not answer is down
            out[m] = "down"
    return out


async def streaming_from(pg_sandbox, member: str) -> list[str]:
    rows = await pg_sandbox.fetch(member, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1")
    return [r["application_name"] for r in rows]


async def back_to_pg1(pg_sandbox) -> None:
    """The sandbox as the session expects it, whatever a drill left: pg1 primary, pg2 and pg3
    streaming from it (a recovery runbook stopped half-way can leave a replica following another)."""
    from dbops.sandbox import postgres as sandbox

    now = [m for m, r in (await roles(pg_sandbox)).items() if r == "primary"]
    assert len(now) == 1, f"not one primary: {await roles(pg_sandbox)}"
    for m in MEMBERS:
        if m != now[0] and pg_sandbox.pid(m) is None:
            await asyncio.to_thread(sandbox.rejoin_as_replica, m, now[0], root=pg_sandbox.root)
    if now[0] != "pg1":
        r = dbops(pg_sandbox, "runbook", "run", "postgres.promote-replica", "--cluster", "sandbox-pg", "--param", "candidate=pg1",
                  "--yes", "--confirm", "sandbox-pg")
        assert r.returncode == 0, r.stdout + r.stderr
    following = await streaming_from(pg_sandbox, "pg1")
    for m in ("pg2", "pg3"):
        if m not in following:
            await asyncio.to_thread(sandbox.rejoin_as_replica, m, "pg1", root=pg_sandbox.root)
    pg_sandbox.wait_streaming()


def make_app(pg_sandbox) -> DbopsApp:
    return DbopsApp(load(pg_sandbox.config_path), state_dir=pg_sandbox.state_dir, config_path=pg_sandbox.config_path)


async def settle(pilot, predicate, what: str, attempts: int = 300, show=lambda: "") -> None:
    for _ in range(attempts):
        await pilot.pause(0.1)
        if predicate():
            return
    raise AssertionError(f"gave up waiting for {what}; {show()}")


def text(screen, selector: str) -> str:
    return str(screen.query_one(selector, Static).content)


def cell(screen, phase: Phase, column: str) -> str:
    return str(screen.query_one("#drill-phases", DataTable).get_cell(phase.value, column))


def on_screen(widget) -> bool:
    """Wholly inside the 80x24 terminal, above the footer's line."""
    r = widget.region
    return r.width > 0 and r.height > 0 and r.x >= 0 and r.right <= SIZE[0] and r.bottom <= SIZE[1] - 1


async def open_drill(pilot, app) -> DrillScreen:
    await settle(pilot, lambda: type(app.screen).__name__ == "OverviewScreen" and app.screen.is_mounted, "the overview")
    await pilot.press("D")
    await settle(pilot, lambda: isinstance(app.screen, DrillScreen) and app.screen.is_mounted, "the drill screen")
    screen = app.screen
    assert isinstance(screen, DrillScreen)
    # Only the pairs that apply: every one is a PostgreSQL drill on the sandbox's one cluster.
    assert screen.pairs and all(r.key == "sandbox/sandbox-pg" and s.engine == "postgres" for s, r in screen.pairs)
    want = next(i for i, (s, r) in enumerate(screen.pairs) if s.id == "pg-primary-loss")
    options = screen.query_one("#drill-pairs", OptionList)
    for _ in range(len(screen.pairs)):
        if options.highlighted == want:
            break
        await pilot.press("down" if (options.highlighted or 0) < want else "up")
    assert options.highlighted == want
    await pilot.pause()
    plan = text(screen, "#drill-plan-text")
    assert plan.startswith("pg-primary-loss") and "3. Inject the fault" in plan and "runbook postgres.promote-replica" in plan
    assert "allows drills" in text(screen, "#drill-refusal")
    return screen


async def answer(pilot, app) -> str:
    """Say yes to the confirmation on top, as an operator does: y, or the cluster's name typed."""
    modal = app.screen
    assert isinstance(modal, ConfirmStep)
    if modal.typed:
        await pilot.press(*modal.expected, "enter")
    else:
        await pilot.press("y")
    return modal.step.id


async def note(pilot, app, screen: DrillScreen, phase: Phase, words: str) -> None:
    """Select the phase in the checklist, n, paste the note, enter. Pasted (a terminal's bracketed
    paste, as from the team's chat), not typed key by key: the Pilot types about ten keys a
    second, and the drill reaches its report a few seconds after the recovery."""
    table = screen.query_one("#drill-phases", DataTable)
    assert table.has_focus
    row = PHASES.index(phase)
    while table.cursor_row != row:
        await pilot.press("down" if table.cursor_row < row else "up")
    await pilot.press("n")
    await settle(pilot, lambda: isinstance(app.screen, PhaseNote) and app.screen.is_mounted, "the note's field")
    app.post_message(events.Paste(words))
    await settle(pilot, lambda: app.screen.query_one(Input).value == words, "the pasted note")
    await pilot.press("enter")
    await settle(pilot, lambda: app.screen is screen, "the note saved")


async def test_primary_loss_driven_by_keys_to_its_outcome_and_report(pg_sandbox):
    pg_sandbox.wait_streaming()
    app = make_app(pg_sandbox)
    asked: list[str] = []
    states: set[tuple[str, str]] = set()
    clocks: set[str] = set()
    strip_outage = False
    try:
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_drill(pilot, app)
            await pilot.press("s")
            await settle(pilot, lambda: isinstance(app.screen, ConfirmStep) and app.screen.is_mounted, "the fault's confirmation",
                         show=lambda: f"log: {[str(x.text) for x in screen.query_one('#drill-log').lines][-5:]}")
            assert app.screen.step.id == "fault" and app.screen.step.destructive
            for _ in range(1800):  # the whole drill: about half a minute on the sandbox
                if screen.result is not None:
                    break
                # What the screen shows (also under a confirmation, which covers only its middle).
                states |= {(p.value, screen.phases[p]["state"]) for p in PHASES}
                clock = text(screen, "#drill-clock")
                clocks |= {w for w in ("starts at the fault", "counting", "recovered") if w in clock}
                strip_outage = strip_outage or any(c in text(screen, "#drill-strip") for c in "╳▒")
                top = app.screen
                if isinstance(top, ConfirmStep) and top.is_mounted:
                    asked.append(await answer(pilot, app))
                    continue
                await pilot.pause(0.1)
            result = screen.result
            assert result is not None, f"the drill did not end; phases {screen.phases}"
            assert result.outcome == "met", result.message
            # The fault's confirmation first, then the recovery runbook's own (the fence typed).
            assert asked[0] == "fault" and "fence" in asked[1:], asked
            # The checklist advanced phase by phase, and ends with every phase done.
            # (inject runs while its confirmation waits for us, recover while the runbook's do;
            # shorter phases may come and go between two looks.)
            assert {("inject", "running"), ("recover", "running"), ("verify", "pending")} <= states
            assert [screen.phases[p]["state"] for p in PHASES] == ["done"] * 8
            started = [screen.phases[p]["started"] for p in PHASES]
            assert started == sorted(started)
            assert all(cell(screen, p, "state") == "done" for p in PHASES)
            # The clock waited for the fault, counted, stopped at the recovery; detection and decision marked.
            assert clocks >= {"starts at the fault", "counting"}, clocks
            final = text(screen, "#drill-clock")
            assert "recovered" in final and "detected +" in final and "decision +" in final
            # The strip showed the outage (writes refused, or held by PgBouncer until the failover)
            # and the probe writing again.
            assert strip_outage and screen.attempts[-1][1]
            assert len(text(screen, "#drill-strip")) <= SIZE[0] - 2
            # The outcome and the report's paths, readable at 80x24 with the checklist.
            outcome = text(screen, "#drill-outcome")
            assert outcome.startswith("MET: RTO ") and "RPO 0" in outcome
            assert f"report: {result.files['md']}" in outcome and f"report: {result.files['html']}" in outcome
            # The outcome is shown at the next layout after the result (a refresh away).
            regions = lambda: {w: screen.query_one(w).region for w in ("#drill-outcome", "#drill-phases", "#drill-log")}  # noqa: E731
            await settle(pilot, lambda: on_screen(screen.query_one("#drill-outcome")), "the outcome laid out", attempts=50, show=regions)
            assert on_screen(screen.query_one("#drill-outcome")) and on_screen(screen.query_one("#drill-phases")), regions()
            assert screen.query_one("#drill-phases").region.height >= len(PHASES) + 1
            log = "\n".join(str(x.text) for x in screen.query_one("#drill-log").lines)
            assert "▶ Fence the old primary" in log and "✓ Promote the candidate" in log  # the runbook's own events
            # A note written after the end (the drill is over in seconds): the report is written again.
            first_sha = result.report["sha256"]["md"]
            await note(pilot, app, screen, Phase.DETECT, NOTE)
            assert screen.runner.notes == {"detect": NOTE}, [n.message for n in app._notifications]
            assert cell(screen, Phase.DETECT, "note") == NOTE
            logged = lambda: "\n".join(str(x.text) for x in screen.query_one("#drill-log").lines)  # noqa: E731
            await settle(pilot, lambda: "note saved: report written again" in logged(), "the report written again",
                         show=lambda: [n.message for n in app._notifications])
            result = screen.result
            assert result.report["sha256"]["md"] != first_sha
        md = result.files["md"].read_text()
        assert NOTE in md
        report = json.loads(result.files["json"].read_text())
        assert report["notes"]["detect"] == NOTE
        assert next(p for p in report["phases"] if p["name"] == "detect")["note"] == NOTE
        assert report["drill"]["config_hash"] == hashlib.sha256(pg_sandbox.config_path.read_bytes()).hexdigest()
        # Both versions of the report are in the audit log, the second marked as the notes' amendment.
        audit = [json.loads(line) for line in (pg_sandbox.state_dir / "audit.jsonl").read_text().splitlines()]
        reports = [x for x in audit if x["action"] == "drill.pg-primary-loss.report" and x.get("run_id") == result.run_id]
        assert [x["phase"] for x in reports] == ["intent", "result", "intent", "result"], reports
        assert "amended" in reports[2]["params"] and reports[3]["detail"]["report_md_sha256"] == report["sha256"]["md"]
        # The failover happened for real: the candidate is the primary, the old one follows it.
        candidate = report["facts"]["candidate"]
        assert (await roles(pg_sandbox))[candidate] == "primary"
    finally:
        await back_to_pg1(pg_sandbox)


async def test_abort_right_after_the_fault_heals_it_and_runs_the_restore(pg_sandbox):
    pg_sandbox.wait_streaming()
    app = make_app(pg_sandbox)
    try:
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_drill(pilot, app)
            await pilot.press("s")
            await settle(pilot, lambda: isinstance(app.screen, ConfirmStep) and app.screen.is_mounted, "the fault's confirmation")
            await pilot.press("y")
            # At once, while the primary is being crashed: the drill stops as soon as it is, before
            # dbops has even shown the fault, let alone started the recovery.
            await pilot.press("x")
            await settle(pilot, lambda: isinstance(app.screen, AbortDrill) and app.screen.is_mounted, "the abort's confirmation")
            await pilot.press("y")
            await settle(pilot, lambda: app.screen is screen, "the drill screen again")
            assert screen.abort_requested and "ABORTING" in text(screen, "#drill-clock")
            await settle(pilot, lambda: screen.result is not None, "the aborted drill's end", attempts=1200,
                         show=lambda: f"phases {screen.phases}")
            result = screen.result
            assert result.outcome == "aborted", result.message
            assert text(screen, "#drill-outcome").startswith("ABORTED: aborted by the operator")
            # The fault was injected; nothing of the recovery ran; the restore healed it.
            assert screen.phases[Phase.INJECT]["state"] == "done" and "fault" in screen.marks
            assert screen.phases[Phase.DETECT]["state"] in ("pending", "aborted")
            for p in (Phase.RECOVER, Phase.VERIFY):
                assert screen.phases[p]["state"] == "pending" and cell(screen, p, "state") == "not run"
            assert screen.phases[Phase.RESTORE]["state"] == "done" and screen.phases[Phase.REPORT]["state"] == "done"
            assert "pg1 started again" in screen.phases[Phase.RESTORE]["detail"]
            # The outcome is shown once the next refresh has laid it out (as in the test above).
            await settle(pilot, lambda: on_screen(screen.query_one("#drill-outcome")), "the outcome laid out",
                         attempts=50, show=lambda: str(screen.query_one("#drill-outcome").region))
        audit = [json.loads(line) for line in (pg_sandbox.state_dir / "audit.jsonl").read_text().splitlines()]
        mine = [(r["phase"], r["action"], r.get("outcome")) for r in audit if r.get("run_id") == result.run_id]
        assert ("result", "drill.pg-primary-loss.heal", "ok") in mine
        started = next(r["seq"] for r in audit if r.get("run_id") == result.run_id)
        assert not [r for r in audit if r["seq"] > started and r["action"].startswith("postgres.promote-replica")]
        # The primary is back, and it is the only one: pg1, with both replicas streaming from it.
        assert await roles(pg_sandbox) == {"pg1": "primary", "pg2": "replica", "pg3": "replica"}
        pg_sandbox.wait_streaming()
        assert await streaming_from(pg_sandbox, "pg1") == ["pg2", "pg3"]
    finally:
        await back_to_pg1(pg_sandbox)
