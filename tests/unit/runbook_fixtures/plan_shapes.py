"""A runbook for the plan's edge cases: a step with nothing to do (skipped without asking) and a
step whose commands cannot be rendered (the run is refused: no plan, no change)."""

from __future__ import annotations

from pathlib import Path

from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict


async def _ok(ctx: Context) -> Verdict:
    return Verdict(True, "nothing to check")


def _write(name: str):
    async def run(ctx: Context) -> None:
        (Path(ctx.params["dir"]) / name).write_text("ran\n")

    return run


def _render_w(ctx: Context) -> list[str]:
    if ctx.params["broken"]:
        return [f"echo {ctx.state['never_set']}"]  # a KeyError, as when a pre-check produced nothing
    return [f"echo ran > {ctx.params['dir']}/w"]


RUNBOOK = Runbook(
    id="test.plan-shapes",
    engine="postgres",
    title="Skip what has nothing to do; refuse what cannot be shown",
    description="Engine test runbook",
    params=(Param("dir", "work directory", required=True), Param("broken", "w's commands fail to render", type=bool, default=False)),
    prechecks=(Check("ok", "always passes", _ok),),
    steps=(
        Step("idle", "nothing to do here", "applies only when there is work", Kind.ACTION,
             lambda ctx: ["# nothing to do"], _write("idle"), confirm=Confirm.YES_NO, applies=lambda ctx: False),
        Step("w", "write w", "writes w", Kind.ACTION, _render_w, _write("w")),
    ),
)
