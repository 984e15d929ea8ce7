"""What the maintenance runbooks (postgres.vacuum, postgres.reindex-concurrently) share: the
primary found at the pre-checks, the relations the operator named resolved there, a working
connection and a watching one for a long statement, and its progress turned into step progress."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from dbops.engines.postgres import maintenance as mt
from dbops.engines.postgres import switchover as sw
from dbops.engines.postgres.queries import APPLICATION_NAME
from dbops.runbook.model import Context, Verdict
from dbops.runbooks.postgres import common

KIND_NAMES = {"r": "table", "p": "partitioned table", "m": "materialized view", "i": "index", "I": "partitioned index",
              "v": "view", "S": "sequence", "f": "foreign table", "t": "TOAST table", "c": "composite type"}


async def check_primary(ctx: Context) -> Verdict:
    conn = await common.primary(ctx)
    ctx.state["primary"] = conn.name
    return Verdict(True, f"{conn.name} answers as the primary; everything runs there")


def primary(ctx: Context) -> sw.Conn:
    """The primary the pre-checks found."""
    name = ctx.state.get("primary")
    if not name:
        raise RuntimeError("no primary was found at the pre-checks")
    conn: sw.Conn = ctx.resources["conns"][name]
    return conn


async def resolve_all(ctx: Context, param: str, judge: Callable[[mt.Relation], str | None]) -> tuple[list[mt.Relation], list[str]]:
    """The relations named by the comma-separated parameter `param`, resolved on the primary,
    and the problems: a name that resolves to nothing, or one `judge` refuses (its reason)."""
    given = mt.names(ctx.params.get(param))
    if not given:
        return [], [f"name at least one (--param {param}=schema.name[,schema.name ...])"]
    conn = primary(ctx)
    found: list[mt.Relation] = []
    problems: list[str] = []
    for name in given:
        rel = await mt.resolve(conn, name, None)
        if isinstance(rel, str):
            problems.append(rel)
            continue
        why = judge(rel)
        if why is not None:
            problems.append(f"{rel.display}: {why}")
        elif rel.oid in {r.oid for r in found}:
            continue  # named twice (once bare, once with its schema)
        else:
            found.append(rel)
    return found, problems


def kind_name(kind: str) -> str:
    return KIND_NAMES.get(kind, f"relation of kind {kind!r}")


@contextlib.asynccontextmanager
async def connections(ctx: Context, statement_timeout: float) -> AsyncIterator[tuple[Any, Any]]:
    """(work, watch) on the primary: `work` runs the long statement (its statement_timeout is
    `statement_timeout`), `watch` reads its progress and does the small reads around it. Both
    are closed (or dropped) at the end, whatever happened."""
    adapter = primary(ctx).adapter
    work = await adapter.open_connection(APPLICATION_NAME, statement_timeout=statement_timeout)
    try:
        watch = await adapter.open_connection(APPLICATION_NAME)
    except BaseException:
        await close(work)
        raise
    try:
        yield work, watch
    finally:
        await asyncio.gather(close(work), close(watch))


async def close(conn: Any) -> None:
    if conn.is_closed():
        return
    try:
        await conn.close(timeout=2.0)
    except Exception:  # a statement still running or a dead peer: drop the socket instead
        conn.terminate()


class StepProgress:
    """Progress readings as a step's progress (ctx.progress) and, at each new phase, a line."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.phase: tuple[str, str, str, str | None] | None = None
        self.unreadable = False

    def report(self, p: mt.Progress) -> None:
        key = (p.relation, p.command, p.phase, p.waiting)
        if key != self.phase:
            self.phase = key
            self.ctx.log(p.describe())
        if p.total > 0:  # a phase that counts nothing (initializing, cleaning up) only says its name
            self.ctx.progress(float(p.done), float(p.total), p.unit)

    def failed(self, exc: BaseException) -> None:
        # Said once per statement: the statement goes on without a progress bar.
        if not self.unreadable:
            self.unreadable = True
            self.ctx.log(f"progress cannot be read ({primary(self.ctx).error(exc)}); the statement goes on")

    def reset(self) -> None:
        self.phase = None
        self.unreadable = False
