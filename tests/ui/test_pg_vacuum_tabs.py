"""The PostgreSQL pane's Vacuum, Conns and PgBouncer tabs on frozen data at 80x24: what an
on-call engineer reads there, judged by the real assessment code. The same tabs on the
sandbox's servers: tests/integration/test_ui_live.py and test_check_cli.py."""

from __future__ import annotations

import dataclasses

from textual.widgets import DataTable, Static

from dbops.config import parse
from dbops.engines.postgres.data import (
    ConnectionGroup,
    ConnectionLimit,
    HorizonHolder,
    PgBouncerData,
    PoolRow,
    VacuumProgress,
    WraparoundTable,
)
from dbops.screens.app import DbopsApp
from dbops.screens.postgres import PostgresScreen

from .frozen import CONFIG, NOW, FrozenHub, MiB, primary_data, replica_data, snap

WITH_PGBOUNCER = CONFIG.replace(
    '[environments.production.clusters.orders-db.backups]',
    '[environments.production.clusters.orders-db.pgbouncer]\nhost = "10.0.0.1"\nport = 6432\n'
    '[environments.production.clusters.orders-db.backups]',
)


def busy_primary():
    return dataclasses.replace(
        primary_data(),
        vacuums=(VacuumProgress(4242, "orders", "public.order_lines", "scanning heap", 1000, 420, 400, 0, True,
                                "autovacuum: VACUUM public.order_lines (to prevent wraparound)", 95.0),),
        horizon=(
            HorizonHolder("prepared", "pay-7f3a", "app", "orders", "", "prepared", 120_000, 7300.0),
            HorizonHolder("session", "101", "app", "orders", "orders", "idle in transaction", 90_000, 300.0),
            HorizonHolder("slot", "old_etl", None, "orders", "", "inactive", 80_000, None),
        ),
        max_mxid_age=1_200, max_mxid_age_database="orders",
        wraparound_tables=(WraparoundTable("public.order_lines", 210_000_000, 1_200),), wraparound_read_at=NOW - 20,
        reserved_connections=3,
        connection_groups=(
            ConnectionGroup("orders", "app", "orders", "idle", 9),
            ConnectionGroup("orders", "report", "metabase", "active", 9),
            ConnectionGroup("orders", "app", "orders", "idle in transaction", 1),
        ),
        role_limits=(ConnectionLimit("report", 10, 9),),
        pgbouncer=PgBouncerData(
            pools=(PoolRow("orders", "app", 40, 12, 20, 0, 0, 14.5, 20, "transaction"),),
            stats=(("orders", 120_000, 480_000, 2500),),
        ),
    )


def make_app(tmp_path) -> DbopsApp:
    config = parse(WITH_PGBOUNCER)
    orders, billing = config.clusters()
    hub = FrozenHub(config, {
        orders.key: {"pg1": snap(orders, "pg1", busy_primary()), "pg2": snap(orders, "pg2", replica_data(2 * MiB, 0.4)),
                     "pg3": snap(orders, "pg3", replica_data(40 * MiB, 14.0))},
        billing.key: {"b1": snap(billing, "b1", primary_data())},
    })
    return DbopsApp(hub.config, state_dir=tmp_path, hub=hub, clock=lambda: NOW)


def rows(table: DataTable) -> list[str]:
    return [" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]


def problems(app, severity: str) -> str:
    """The pane's problem lines of one severity, as the Health tab lists them (its text's
    styles are the severities' colours: read the judged metrics the pane drew them from)."""
    health = app.hub.cluster_health("production/orders-db")
    judged = [f"{m.name}: {x.message}" for m in health.members for x in m.metrics if x.severity.name == severity]
    shown = str(app.screen.query_one("#health-text", Static).render())
    return "\n".join(line for line in judged if line in shown)


async def open_tab(pilot, tab_id: str) -> None:
    pilot.app.open_cluster("production/orders-db")
    await pilot.pause()
    assert isinstance(pilot.app.screen, PostgresScreen)
    await pilot.press(str(next(n for n, t in enumerate(PostgresScreen.TABS, 1) if t.id == tab_id) % 10))
    await pilot.pause()


async def test_vacuum_tab_shows_the_running_vacuum_and_names_what_holds_the_horizon(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_tab(pilot, "vacuum")
        (vacuum,) = rows(app.screen.query_one("#vacuum-table", DataTable))
        assert "4242" in vacuum and "public.order_lines" in vacuum and "scanning heap" in vacuum and "42%" in vacuum
        assert "auto (wraparound)" in vacuum
        text = str(app.screen.query_one("#horizon-text", Static).render())
        holders = text.split("held back by (oldest first):\n", 1)[1].splitlines()
        # Oldest first, each with its age in transactions and in time where it has one.
        assert "prepared transaction 'pay-7f3a'" in holders[0] and "2.0h" in holders[0]
        assert "session pid 101" in holders[1] and "5m" in holders[1]
        assert "inactive slot old_etl: 80k xids" in holders[2]
        assert "wraparound: xid age 210M (orders), multixact age 1k (orders)" in text
        assert "public.order_lines: xid age 210M" in text
        # Judged, not only shown: the prepared transaction is 2 h old (past the 1 h default).
        assert "pay-7f3a" in problems(app, "CRIT")


async def test_conns_tab_shows_the_role_limit_being_approached(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_tab(pilot, "connections")
        summary = str(app.screen.query_one("#connections-summary", Static).render())
        assert "17/97 client connections" in summary and "max_connections 100, 3 reserved" in summary
        assert "by user: app 10, report 9" in summary
        assert "role report: 9/10 (CONNECTION LIMIT, 90%)" in summary
        table = rows(app.screen.query_one("#connections-table", DataTable))
        assert table[0].split() == ["1", "9", "orders", "app", "orders", "idle"]
        assert "metabase active" in table[1]
        assert "report" in problems(app, "WARN")  # 9 of its 10 connections: judged, not only shown


async def test_pgbouncer_tab_shows_waiting_clients_judged_by_config(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_tab(pilot, "pgbouncer")
        summary = str(app.screen.query_one("#pgbouncer-summary", Static).render())
        assert "1 pools, 12 clients waiting" in summary
        (pool,) = rows(app.screen.query_one("#pools-table", DataTable))
        assert pool.split() == ["orders/app", "40", "12", "20", "0", "20", "14.5s", "transaction"]
        assert "orders/app saturated (20/20 server connections), 12 clients waiting, longest 14s" in problems(app, "CRIT")  # past pgbouncer_wait_seconds_crit (10 s)
