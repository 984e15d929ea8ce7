"""Snapshot tests on frozen data at 80x24, the smallest terminal dbops supports.

Run `pytest tests/snapshots --snapshot-update` after an intended visual change, and look at
the report before committing the new SVGs.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from dbops.screens.app import DbopsApp

from ..ui.frozen import NOW, FrozenHub
from ..ui.frozen_engines import kafka_hub, kubernetes_hub, kubernetes_view, neo4j_hub, qdrant_hub, rds_hub, rds_view, redis_hub


def frozen_app(state: Path, allow_writes: bool = False) -> DbopsApp:
    hub = FrozenHub()
    return DbopsApp(hub.config, allow_writes=allow_writes, state_dir=state, hub=hub, clock=lambda: NOW)


def test_overview_80x24(snap_compare, tmp_path):
    assert snap_compare(frozen_app(tmp_path), terminal_size=(80, 24), press=["_"])


def test_postgres_pane_80x24(snap_compare, tmp_path):
    assert snap_compare(frozen_app(tmp_path), terminal_size=(80, 24), press=["down", "enter", "_"])


def test_blocking_tree_80x24(snap_compare, tmp_path):
    assert snap_compare(frozen_app(tmp_path), terminal_size=(80, 24), press=["down", "enter", "2", "_"])


def test_terminate_confirmation_on_production_80x24(snap_compare, tmp_path):
    assert snap_compare(frozen_app(tmp_path, allow_writes=True), terminal_size=(80, 24), press=["down", "enter", "k", "_"])


def test_backups_pane_80x24(snap_compare, tmp_path):
    assert snap_compare(frozen_app(tmp_path), terminal_size=(80, 24), press=["B", "_"])


def engine_app(state: Path, hub) -> DbopsApp:
    return DbopsApp(hub.config, state_dir=state, hub=hub, clock=lambda: NOW)


def test_redis_pane_80x24(snap_compare, tmp_path):
    assert snap_compare(engine_app(tmp_path, redis_hub()), terminal_size=(80, 24), press=["enter", "_"])


def test_kafka_pane_80x24(snap_compare, tmp_path):
    assert snap_compare(engine_app(tmp_path, kafka_hub()), terminal_size=(80, 24), press=["enter", "_"])


def test_neo4j_pane_80x24(snap_compare, tmp_path):
    assert snap_compare(engine_app(tmp_path, neo4j_hub()), terminal_size=(80, 24), press=["enter", "_"])


def test_qdrant_pane_80x24(snap_compare, tmp_path):
    assert snap_compare(engine_app(tmp_path, qdrant_hub()), terminal_size=(80, 24), press=["enter", "_"])


class FrozenClock(datetime):
    """A datetime whose now() is NOW: the Kubernetes pane and its judgement read the wall clock."""

    @classmethod
    def now(cls, tz=None):  # type: ignore[override]
        return datetime.fromtimestamp(NOW, tz)


def test_kubernetes_pane_80x24(snap_compare, tmp_path, monkeypatch):
    from dbops.screens import kubernetes as pane

    now = FrozenClock.now(UTC)
    monkeypatch.setattr(pane, "datetime", FrozenClock)
    # The package re-exports the function `assess` under its module's name: patch the module itself.
    monkeypatch.setattr(sys.modules["dbops.platform.kubernetes.assess"], "datetime", FrozenClock)
    monkeypatch.setattr(pane, "read_all", lambda refs: [(r.key, kubernetes_view(now), None) for r in refs])

    async def read_once(pilot) -> None:
        await pilot.press("K")
        while not (isinstance(pilot.app.screen, pane.KubernetesScreen) and "orders-db" in pilot.app.screen.summary):
            await pilot.pause(0.05)

    assert snap_compare(engine_app(tmp_path, kubernetes_hub()), terminal_size=(80, 24), run_before=read_once)


def test_aws_pane_80x24(snap_compare, tmp_path, monkeypatch):
    from dbops.screens import rds as pane

    now = FrozenClock.now(UTC)
    monkeypatch.setattr(pane, "datetime", FrozenClock)

    async def collect_all(refs):
        return [rds_view(now) for _ in refs]

    monkeypatch.setattr(pane, "collect_all", collect_all)

    async def read_once(pilot) -> None:
        await pilot.press("R")
        while not (isinstance(pilot.app.screen, pane.AwsScreen) and "orders-db" in pilot.app.screen.summary):
            await pilot.pause(0.05)

    assert snap_compare(engine_app(tmp_path, rds_hub()), terminal_size=(80, 24), run_before=read_once)
