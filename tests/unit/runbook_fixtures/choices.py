"""A runbook whose parameter offers live choices read from the cluster's first member, as
postgres.promote-replica offers the replicas: with that member down, the choices cannot be read."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dbops.runbook.model import Check, Context, Kind, Param, Runbook, Step, Verdict


async def _members_answering(ctx: Context) -> list[str]:
    member = ctx.ref.cluster.members[0]
    _, writer = await asyncio.open_connection(member.host, member.port)  # refused when the member is down
    writer.close()
    await writer.wait_closed()
    return [member.name]


async def _ok(ctx: Context) -> Verdict:
    return Verdict(True, "nothing to check")


async def _write(ctx: Context) -> None:
    (Path(ctx.params["dir"]) / "picked").write_text(f"{ctx.params['target']}\n")


RUNBOOK = Runbook(
    id="test.choices",
    engine="postgres",
    title="Pick a member that answers",
    description="Engine test runbook",
    params=(Param("dir", "work directory", required=True),
            Param("target", "a member that answers", required=True, choices=_members_answering)),
    prechecks=(Check("ok", "always passes", _ok),),
    steps=(Step("pick", "write the picked member", "writes it to a file", Kind.ACTION,
                lambda ctx: [f"echo {ctx.params['target']} > {ctx.params['dir']}/picked"], _write),),
)
