"""What the pgBackRest runbooks (backup, restore, verify-backups) share: the cluster's pgBackRest
settings from the config, one connection per member, and finding the primary."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from typing import Any

from dbops.config import PgBackRest
from dbops.engines.postgres import switchover as sw
from dbops.runbook.model import Context, Verdict

NO_SETTINGS = ("no pgBackRest settings for cluster {name}: add a [...clusters.{name}.pgbackrest] section "
               "(stanza, config, os_user) to the config; see config.example.toml")


def settings(ctx: Context) -> PgBackRest:
    found = ctx.ref.cluster.pgbackrest
    if found is None:
        raise RuntimeError(NO_SETTINGS.format(name=ctx.ref.name))
    return found


def run_kw(ctx: Context) -> dict[str, Any]:
    """Keyword arguments for the dbops.engines.postgres.pgbackrest calls."""
    s = settings(ctx)
    return {"os_user": s.os_user, "binary": s.bin}


def cmds(ctx: Context, describe: Callable[..., list[str]], *args: Any, **kwargs: Any) -> list[str]:
    """A pgBackRest command line for the plan; a placeholder when the settings are missing (the
    `settings` pre-check refuses the run and says why)."""
    s = ctx.ref.cluster.pgbackrest
    if s is None:
        return [f"# pgBackRest settings unknown: {NO_SETTINGS.format(name=ctx.ref.name)}"]
    return describe(s.config, s.stanza, *args, os_user=s.os_user, binary=s.bin, **kwargs)


async def setup(ctx: Context) -> None:
    ctx.resources["conns"] = {m.name: sw.Conn.for_member(ctx.ref, m) for m in ctx.ref.cluster.members}


async def teardown(ctx: Context) -> None:
    await asyncio.gather(*(c.close() for c in ctx.resources.get("conns", {}).values()), return_exceptions=True)


async def check_settings(ctx: Context) -> Verdict:
    s = ctx.ref.cluster.pgbackrest
    if s is None:
        return Verdict(False, NO_SETTINGS.format(name=ctx.ref.name))
    return Verdict(True, f"stanza {s.stanza}, configuration {s.config}")


async def primary(ctx: Context) -> sw.Conn:
    problems = []
    for name, c in ctx.resources["conns"].items():
        try:
            if await c.fetchval("SELECT NOT pg_is_in_recovery()"):
                return c
        except Exception as exc:  # another member may be the primary; say why this one was skipped
            problems.append(f"{name}: {c.error(exc)}")
    raise RuntimeError("no member answers as primary" + (f" ({'; '.join(problems)})" if problems else ""))


# -- verifying what a restore brought back -----------------------------------------------------


async def staging_free_bytes(ctx: Context) -> int:
    """Free bytes on the disk of this run's staging directory, which may not exist yet (then
    its nearest existing parent's)."""
    probe = ctx.staging_dir.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return (await asyncio.to_thread(shutil.disk_usage, probe)).free


def canary_tables(ctx: Context) -> list[str]:
    return [t.strip() for t in str(ctx.params.get("canary") or "").split(",") if t.strip()]


def quote_table(name: str) -> str:
    """schema.table as quoted identifiers (a canary named by the operator is never SQL)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


async def count_canaries(ctx: Context, conn: sw.Conn) -> tuple[list[str], list[str]]:
    """Row counts of the canary tables on `conn`: (problems, facts); counts go in ctx.state."""
    problems, counts = [], {}
    for table in canary_tables(ctx):
        try:
            counts[table] = int(await conn.fetchval(f"SELECT count(*) FROM {quote_table(table)}", timeout=600))
        except Exception as exc:  # a missing table is a finding about the restore, not a crash
            problems.append(f"canary {table}: {conn.error(exc)}")
    if counts:
        ctx.state["canary_counts"] = counts
    return problems, ["canary rows: " + ", ".join(f"{k} {v}" for k, v in counts.items())] if counts else []


def finish_verification(ctx: Context, problems: list[str], facts: list[str], rto_what: str) -> None:
    """Fail with every problem, or log the facts and the measured RTO (from ctx.state's
    rto_started, set by the run's first step and kept across a resume)."""
    if problems:
        raise RuntimeError("; ".join(problems))
    for line in facts:
        ctx.log(line)
    ctx.state["rto_seconds"] = round(time.time() - float(ctx.state.get("rto_started") or time.time()), 1)
    ctx.log(f"RTO: {ctx.state['rto_seconds']:.1f}s {rto_what}")
