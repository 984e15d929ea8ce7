"""What the Neo4j runbooks share: one adapter (one driver) per member for the run, and finding
a member that answers."""

from __future__ import annotations

import asyncio

from dbops.engines.neo4j.adapter import Neo4jAdapter
from dbops.runbook.model import Context


async def setup(ctx: Context) -> None:
    ctx.resources["adapters"] = {m.name: Neo4jAdapter(ctx.ref, m) for m in ctx.ref.cluster.members}


async def teardown(ctx: Context) -> None:
    adapters = ctx.resources.get("adapters", {}).values()
    await asyncio.gather(*(a.close() for a in adapters), return_exceptions=True)


def adapter(ctx: Context, member: str) -> Neo4jAdapter:
    return ctx.resources["adapters"][member]


def where(ctx: Context, member: str) -> str:
    m = next(x for x in ctx.ref.cluster.members if x.name == member)
    return f"{m.host}:{m.port}"


async def first_answering(ctx: Context) -> tuple[str, Neo4jAdapter]:
    """The first member (in config order) that answers; RuntimeError naming every failure."""
    problems = []
    for name, a in ctx.resources["adapters"].items():
        try:
            await a.run("CALL dbms.components() YIELD name RETURN name")  # the system database runs no plain RETURN
            return name, a
        except Exception as exc:  # an unreachable member is expected here: try the next one
            await a.close()
            problems.append(f"{name}: {a.classify(exc)[1]}")
    raise RuntimeError("no member answers: " + "; ".join(problems))
