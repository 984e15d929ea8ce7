"""postgres.vacuum: VACUUM (ANALYZE) of the tables the operator names, on the primary, one after the
other, with the progress of each from pg_stat_progress_vacuum.

Pre-checks (read-only): the primary answers; every name resolves to a table or materialized view
the cluster's user may vacuum (owner or superuser: otherwise VACUUM would only warn and skip it).
The step runs exactly the statements the plan shows and reports the phase and the share of heap
blocks done as step progress; the verification reads each table's last VACUUM and ANALYZE times
from the statistics, which must be later than the step's start.

VACUUM takes no lock that blocks reads or writes (SHARE UPDATE EXCLUSIVE: it waits for, and
blocks, only DDL, CREATE INDEX and other VACUUMs of the same table), but it reads the whole table
and writes WAL: cost_delay_ms/cost_limit throttle it on a busy server.
"""

from __future__ import annotations

import time

from dbops.engines.postgres import maintenance as mt
from dbops.model import human_bytes
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.postgres import common
from dbops.runbooks.postgres import relations as rel

STATEMENT_TIMEOUT = 4 * 3600.0  # one table's VACUUM
STEP_TIMEOUT = 12 * 3600.0
# How long VACUUM waits for its lock (DDL or another VACUUM of the table holding it) before it
# gives up: long enough for a running autovacuum of the table to be cancelled in its favour.
LOCK_TIMEOUT = 30
VACUUMABLE = ("r", "m")


def _judge(r: mt.Relation) -> str | None:
    if r.kind == "p":
        return "a partitioned table: name its partitions (each is vacuumed and watched by itself)"
    if r.kind not in VACUUMABLE:
        return f"a {rel.kind_name(r.kind)}, not a table"
    if not r.owned:
        return "the cluster's user neither owns it nor is a superuser: VACUUM would skip it with only a warning"
    return None


async def check_tables(ctx: Context) -> Verdict:
    found, problems = await rel.resolve_all(ctx, "tables", _judge)
    if problems:
        return Verdict(False, "; ".join(problems))
    ctx.state["tables"] = [{"oid": r.oid, "quoted": r.quoted, "display": r.display, "pages": r.pages, "dead": r.dead}
                           for r in found]
    return Verdict(True, "; ".join(f"{r.display} ({human_bytes(r.size_bytes)}, {r.dead} dead tuples)" for r in found))


def settings(ctx: Context) -> list[str]:
    """The session settings the VACUUM runs under, as issued."""
    out = [f"SET lock_timeout = '{LOCK_TIMEOUT}s'"]
    delay = ctx.params.get("cost_delay_ms")
    limit = ctx.params.get("cost_limit")
    if delay is not None:
        if not 0 <= float(delay) <= 100:
            raise ValueError(f"cost_delay_ms must be between 0 and 100, not {delay}")
        out.append(f"SET vacuum_cost_delay = {float(delay):g}")
    if limit is not None:
        if not 1 <= int(limit) <= 10000:
            raise ValueError(f"cost_limit must be between 1 and 10000, not {limit}")
        out.append(f"SET vacuum_cost_limit = {int(limit)}")
    return out


def statement(table: dict) -> str:
    return f"VACUUM (ANALYZE) {table['quoted']}"


def vacuum_commands(ctx: Context) -> list[str]:
    tables = ctx.state["tables"]
    return [f"-- on {ctx.state['primary']} (the primary), one table after the other, "
            f"statement_timeout {STATEMENT_TIMEOUT / 3600:g}h each:",
            *settings(ctx), *(statement(t) for t in tables),
            "-- meanwhile, every 0.5 s on a second connection: SELECT phase, heap_blks_scanned, heap_blks_total, "
            "heap_blks_vacuumed FROM pg_stat_progress_vacuum WHERE pid = <the VACUUM's pid> (and pg_stat_progress_analyze)"]


async def check_settings(ctx: Context) -> Verdict:
    try:
        issued = settings(ctx)
    except ValueError as exc:
        return Verdict(False, str(exc))
    return Verdict(True, ", ".join(s.removeprefix("SET ") for s in issued))


async def do_vacuum(ctx: Context) -> None:
    tables = ctx.state["tables"]
    progress = rel.StepProgress(ctx)
    async with rel.connections(ctx, STATEMENT_TIMEOUT) as (work, watch):
        ctx.state["vacuum_started"] = float(await watch.fetchval("SELECT extract(epoch FROM now())::float8"))
        for line in settings(ctx):
            await work.execute(line)
        pid = work.get_server_pid()
        for n, table in enumerate(tables, 1):
            ctx.log(f"{statement(table)} ({n} of {len(tables)}), backend pid {pid}")
            progress.reset()
            started = time.monotonic()
            await mt.watched(work.execute(statement(table), timeout=STATEMENT_TIMEOUT + 5),
                             lambda: mt.read_progress(watch, pid, 10.0), progress.report, progress.failed)
            dead = await watch.fetchval("SELECT pg_stat_get_dead_tuples($1)", table["oid"])
            ctx.log(f"{table['display']}: done in {time.monotonic() - started:.1f}s; dead tuples {table['dead']} -> {dead}")
            if dead:
                ctx.log(f"  {dead} dead tuples remain: rows an older snapshot may still see cannot be removed yet (a long "
                        "transaction, a replication slot's xmin, a standby's hot_standby_feedback); see the Activity tab")
            ctx.state.setdefault("dead_after", {})[table["display"]] = int(dead or 0)


VERIFY = """
SELECT extract(epoch FROM pg_stat_get_last_vacuum_time($1))::float8 AS vacuumed,
       extract(epoch FROM pg_stat_get_last_analyze_time($1))::float8 AS analyzed,
       pg_stat_get_dead_tuples($1) AS dead
"""


async def verify_vacuumed(ctx: Context) -> Verdict:
    started = float(ctx.state["vacuum_started"])
    conn = rel.primary(ctx)
    problems, facts = [], []
    for table in ctx.state["tables"]:
        row = await conn.fetchrow(VERIFY, table["oid"])
        if row is None or row["vacuumed"] is None or row["vacuumed"] < started:
            problems.append(f"{table['display']} has no VACUUM recorded since the step started")
        elif row["analyzed"] is None or row["analyzed"] < started:
            problems.append(f"{table['display']} has no ANALYZE recorded since the step started")
        else:
            facts.append(f"{table['display']} ({row['dead']} dead tuples left)")
    if problems:
        return Verdict(False, "; ".join(problems))
    return Verdict(True, "vacuumed and analyzed: " + ", ".join(facts))


RUNBOOK = Runbook(
    id="postgres.vacuum",
    title="VACUUM (ANALYZE) chosen tables, with progress",
    params=(
        Param("tables", "tables to vacuum, comma-separated (schema.table; a bare name is looked up in the search_path)",
              required=True),
        Param("cost_delay_ms", "throttle: vacuum_cost_delay in ms for this VACUUM (default: the server's, 0 unless set)",
              type=float),
        Param("cost_limit", "throttle: vacuum_cost_limit for this VACUUM (default: the server's)", type=int),
    ),
    prechecks=(
        Check("primary", "the primary answers", rel.check_primary),
        Check("tables", "every name is a table the cluster's user may vacuum", check_tables),
        Check("settings", "the throttle settings are in range", check_settings),
    ),
    steps=(
        Step("vacuum", "VACUUM (ANALYZE) the tables", "Runs VACUUM (ANALYZE) on each table in turn on the primary: "
             "dead tuples become free space, statistics are refreshed. No lock that blocks reads or writes; it reads "
             "every page of the table that is not all-visible and writes WAL.", Kind.ACTION, vacuum_commands, do_vacuum,
             verify_vacuumed, confirm=Confirm.YES_NO, timeout=STEP_TIMEOUT, produces=("vacuum_started",),
             on_failure="a lock timeout means DDL or another VACUUM held the table for over "
                        f"{LOCK_TIMEOUT}s (see the Activity tab); a statement timeout, that one table took over "
                        f"{STATEMENT_TIMEOUT / 3600:g}h. The tables before it are done; run again for the rest"),
    ),
    setup=common.setup,
    teardown=common.teardown,
)
