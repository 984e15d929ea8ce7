"""What the pgBackRest runbooks (backup, restore, verify-backups) share: the cluster's pgBackRest
settings from the config, one connection per member, and finding the primary."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

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
