"""Split brain on the real sandbox: pg1 killed, pg2 promoted, pg1 started again by hand.

pg1 comes back writable on its old timeline (1) next to pg2 on the new one (2): the pane, the
overview and `dbops check` must say "two primaries: pg1 (timeline 1) and pg2 (timeline 2)".

This module breaks its cluster, so it runs on a private sandbox (PostgreSQL only), not the
session's shared one.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from dbops import sandbox
from dbops.config import load
from dbops.sandbox.postgres import PostgresSandbox
from dbops.screens.app import DbopsApp
from dbops.screens.overview import OverviewScreen
from dbops.screens.postgres import PostgresScreen

from .conftest import running_sandbox

KEY = "sandbox/sandbox-pg"
SPLIT = "two primaries: pg1 (timeline 1) and pg2 (timeline 2)"


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    with running_sandbox(("postgres",), "dbops-split-") as root:
        yield root


def in_recovery(pg: PostgresSandbox, member: str) -> bool:
    return pg.psql(member, "SELECT pg_is_in_recovery()").strip() == "t"


def split_the_brain(root: Path) -> None:
    """kill -9 style stop of pg1, promote pg2, start pg1 again by hand (no fencing): pg1 answers
    writable on timeline 1. Idempotent, so each test can run alone."""
    pg = PostgresSandbox(root)
    if in_recovery(pg, "pg2"):
        pg.stop_member("pg1", "immediate")
        assert pg.psql("pg2", "SELECT pg_promote()").strip() == "t"
    pg.start_member("pg1")
    assert not in_recovery(pg, "pg1") and not in_recovery(pg, "pg2")


def dbops_check(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbops.cli", "--config", str(sandbox.config_path(root=root)), "check",
         "--no-backups", *args],  # (the fresh sandbox has no pgbackrest backup yet: CRIT of its own)
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        env={**os.environ, "DBOPS_STATE_DIR": str(root.parent)},
    )


def text_of(widget: Static) -> str:
    return str(widget.render())


async def settle(pilot, predicate, what: str, attempts: int = 400, show=lambda: "") -> None:
    for _ in range(attempts):
        await pilot.pause(0.1)
        if predicate():
            return
    raise AssertionError(f"gave up waiting for {what}; on screen: {show()}")


def rows(table: DataTable) -> str:
    return "\n".join(" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count))


async def test_pane_and_overview_show_the_second_primary_within_two_refreshes(root, tmp_path):
    app = DbopsApp(load(sandbox.config_path(root=root)), state_dir=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot, lambda: "sandbox-pg" in rows(app.screen.query_one("#clusters", DataTable)), "overview row")
        await pilot.press("enter")
        await settle(pilot, lambda: isinstance(app.screen, PostgresScreen) and app.screen.is_mounted, "the PostgreSQL pane")
        pane = app.screen
        alert = pane.query_one("#cluster-alert", Static)
        topo = pane.query_one("#topology", DataTable)
        await settle(pilot, lambda: rows(topo).count("replica") == 2, "a healthy topology", show=lambda: rows(topo))
        assert not alert.display, text_of(alert)

        # Break it while the console watches (off the event loop: these block on pg_ctl/psql).
        await asyncio.to_thread(split_the_brain, root)
        polls_before = app.hub.snapshots(KEY)["pg1"].seq

        await settle(pilot, lambda: alert.display and SPLIT in text_of(alert), "the split-brain line on the pane",
                     show=lambda: f"alert {text_of(alert)!r}; health {app.hub.cluster_health(KEY).problems}")
        # Seen at the first or second poll of pg1 after it answers again (counted in polls,
        # not seconds: a member coming back from DOWN is polled on a backoff).
        assert app.hub.snapshots(KEY)["pg1"].seq - polls_before <= 2
        assert text_of(alert).startswith(f"CRIT: {SPLIT}")
        assert alert.has_class("-crit")
        health = text_of(pane.query_one("#health-text", Static))
        assert SPLIT in health

        await pilot.press("escape")
        await settle(pilot, lambda: isinstance(app.screen, OverviewScreen) and app.screen.is_mounted, "the overview")
        problems = app.screen.query_one("#problems", Static)
        await settle(pilot, lambda: f"sandbox-pg: {SPLIT}" in text_of(problems), "the overview's problem line",
                     show=lambda: text_of(problems))
        assert text_of(problems).startswith(f"CRIT  sandbox-pg: {SPLIT}")
        assert "CRIT" in rows(app.screen.query_one("#clusters", DataTable)).splitlines()[0]


def test_check_says_two_primaries_and_exits_crit(root):
    split_the_brain(root)
    r = dbops_check(root)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("CRIT:")
    at = next(i for i, line in enumerate(lines) if "sandbox/sandbox-pg" in line)
    assert lines[at].startswith("CRIT") and lines[at + 1].strip() == SPLIT, r.stdout

    r = dbops_check(root, "--json")
    assert r.returncode == 2, r.stdout + r.stderr
    out = json.loads(r.stdout)
    cluster = next(c for c in out["clusters"] if c["name"] == "sandbox-pg")
    assert cluster["severity"] == "CRIT"
    assert cluster["problems"] == [SPLIT]
    assert {"name": "primary", "severity": "CRIT", "message": SPLIT} in cluster["metrics"]
    assert sorted(m["name"] for m in cluster["members"] if m["role"] == "primary") == ["pg1", "pg2"]


def test_a_fenced_old_primary_is_no_split_brain(root):
    """A switchover fences the old primary read-only before promoting: both are out of recovery
    for a moment, and that must not read as split brain."""
    split_the_brain(root)
    pg = PostgresSandbox(root)
    pg.psql("pg1", "ALTER SYSTEM SET default_transaction_read_only = on")
    pg.psql("pg1", "SELECT pg_reload_conf()")
    try:
        r = dbops_check(root, "--json")
        cluster = next(c for c in json.loads(r.stdout)["clusters"] if c["name"] == "sandbox-pg")
        assert {"name": "primary", "severity": "OK", "message": "primary pg2 (pg1 fenced read-only)"} in cluster["metrics"], r.stdout
        assert not any("primaries" in p for p in cluster["problems"]), r.stdout
    finally:
        pg.psql("pg1", "ALTER SYSTEM RESET default_transaction_read_only")
        pg.psql("pg1", "SELECT pg_reload_conf()")
    r = dbops_check(root)
    assert SPLIT in r.stdout and r.returncode == 2, r.stdout
