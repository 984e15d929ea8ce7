"""The console with the sandbox's real Prometheus and Alertmanager, driven as an operator drives
it (Pilot, 80x24): a replica stopped on purpose fires the rule; the alert shows on the overview
and on the cluster's pane within one read of Alertmanager after Alertmanager has it; a silence
made in the alerts view is in Alertmanager's API and in the audit log; expiring it works.

Every wait is bounded polling; nothing asserts how long anything took."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Static

from dbops.audit import verify
from dbops.config import load
from dbops.platform import alertmanager as am
from dbops.screens.alerts import AlertsScreen, ConfirmExpireModal, SilenceModal
from dbops.screens.app import DbopsApp
from dbops.screens.postgres import PostgresScreen

from .conftest import MonitoringSandbox

OPERATOR = "oncall-alice"
PG_KEY = "sandbox/sandbox-pg"


async def settle(pilot, predicate, what: str, attempts: int = 600, show=lambda: "") -> None:
    for _ in range(attempts):
        await pilot.pause(0.1)
        if predicate():
            return
    raise AssertionError(f"gave up waiting for {what}; {show()}")


def table_text(table: DataTable) -> str:
    return "\n".join(" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count))


def overview_row(app) -> str:
    table = app.screen.query_one("#clusters", DataTable)
    return next((line for line in table_text(table).splitlines() if "sandbox-pg" in line), "")


async def test_a_stopped_replica_alerts_on_the_overview_and_pane_and_is_silenced_from_the_console(
        monitoring_sandbox: MonitoringSandbox, tmp_path: Path) -> None:
    mon = monitoring_sandbox
    config_path = tmp_path / "dbops.toml"
    config_path.write_text(f'operator = "{OPERATOR}"\n' + mon.config_path.read_text())
    cfg = load(config_path)
    assert cfg.alertmanager is not None
    amo, refs = cfg.alertmanager, cfg.clusters()

    def pg2_alerts(alerts: list[am.Alert], state: str = "active") -> list[am.Alert]:
        return [a for a in alerts if a.name == "DbopsPostgresDown" and a.member == "pg2" and a.state == state]

    app = DbopsApp(cfg, state_dir=tmp_path)
    mon.pg.stop_member("pg2", "immediate")
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            hub = app.hub
            await settle(pilot, lambda: "sandbox-pg" in overview_row(app), "sandbox-pg on the overview")
            # When Alertmanager first has the alert, note how many reads the console had made.
            deadline = time.monotonic() + 90
            while not pg2_alerts(await am.fetch_alerts(amo, refs)):
                assert time.monotonic() < deadline, "Alertmanager never had DbopsPostgresDown for pg2"
                await pilot.pause(0.2)
            reads_then = hub._alerts_seen
            await settle(pilot, lambda: "1 critical" in overview_row(app), "the alert in the overview's Alerts column",
                         show=lambda: overview_row(app))
            # The read under way when Alertmanager got it may have missed it; the next one did not.
            assert hub._alerts_seen <= reads_then + 2

            # The pane: the alert above everything else.
            table = app.screen.query_one("#clusters", DataTable)
            keys = [str(k.value) for k in table.rows]
            table.move_cursor(row=keys.index(PG_KEY))
            await pilot.press("enter")
            await settle(pilot, lambda: isinstance(app.screen, PostgresScreen) and app.screen.is_mounted, "the PostgreSQL pane")
            pane_alerts = app.screen.query_one("#pane-alerts", Static)
            await settle(pilot, lambda: "ALERT DbopsPostgresDown pg2" in str(pane_alerts.render()), "the pane's alert line")

            # The alerts view: silence it.
            await pilot.press("exclamation_mark")
            await settle(pilot, lambda: isinstance(app.screen, AlertsScreen) and app.screen.is_mounted, "the alerts view")
            view = app.screen
            alerts_table = view.query_one("#alerts", DataTable)
            await settle(pilot, lambda: "DbopsPostgresDown" in table_text(alerts_table), "the alert in the view")
            await pilot.press("s")
            await settle(pilot, lambda: isinstance(app.screen, SilenceModal) and app.screen.is_mounted, "the silence dialog")
            modal = app.screen
            duration = modal.query_one("#silence-duration", Input)
            duration.value = "30m"
            await pilot.press(*"pg2 rebuilt, INC-42")
            plan = str(modal.query_one("#silence-plan", Static).render())
            assert "POST" in plan and "/api/v2/silences" in plan and 'alertname="DbopsPostgresDown"' in plan
            assert f"createdBy: {OPERATOR}" in plan
            await pilot.press("enter")
            await app.workers.wait_for_complete()

            silences = await am.list_silences(amo)
            ours = [s for s in silences if s.state == "active" and s.created_by == OPERATOR]
            assert len(ours) == 1 and ours[0].comment == "pg2 rebuilt, INC-42 [dbops]"
            assert ("alertname", "DbopsPostgresDown") in [(m.name, m.value) for m in ours[0].matchers]
            assert ours[0].ends_at - ours[0].starts_at == pytest.approx(1800, abs=5)
            await settle(pilot, lambda: "suppressed" in table_text(alerts_table), "the alert shown as silenced",
                         show=lambda: table_text(alerts_table))

            # Expire it: confirmed, then gone from the active silences.
            await pilot.press("e")
            await settle(pilot, lambda: isinstance(app.screen, ConfirmExpireModal) and app.screen.is_mounted, "the expire dialog")
            shown = " ".join(str(w.render()) for w in app.screen.query(Static))
            assert "DELETE" in shown and f"/api/v2/silence/{ours[0].id}" in shown
            await pilot.press("y")
            await app.workers.wait_for_complete()
            for _ in range(100):
                state = {s.id: s.state for s in await am.list_silences(amo)}
                if state.get(ours[0].id) == "expired":
                    break
                await asyncio.sleep(0.1)
            assert state.get(ours[0].id) == "expired"
    finally:
        mon.pg.start_member("pg2")
        mon.pg.wait_streaming(("pg2",))

    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    made = [(r["phase"], r["action"]) for r in records if r["action"].startswith("alertmanager.")]
    assert made == [("intent", "alertmanager.silence"), ("result", "alertmanager.silence"),
                    ("intent", "alertmanager.expire_silence"), ("result", "alertmanager.expire_silence")]
    silence_result = next(r for r in records if r["action"] == "alertmanager.silence" and r["phase"] == "result")
    assert silence_result["outcome"] == "ok" and silence_result["detail"]["silence_id"] == ours[0].id
    intent = next(r for r in records if r["action"] == "alertmanager.silence" and r["phase"] == "intent")
    assert intent["environment"] == "sandbox" and intent["cluster"] == "sandbox-pg" and intent["member"] == "pg2"
    assert intent["params"]["author"] == OPERATOR
    assert verify(tmp_path / "audit.jsonl").ok
    # Leave the shared sandbox as found: no alert about pg2 once it streams again.
    deadline = time.monotonic() + 60
    while pg2_alerts(await am.fetch_alerts(amo, refs)):
        assert time.monotonic() < deadline, "the alert about pg2 never resolved after its restart"
        await asyncio.sleep(0.5)
