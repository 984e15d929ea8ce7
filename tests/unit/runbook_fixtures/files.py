"""A runbook over plain files, for engine tests: each action appends a line to a file in the
directory named by --param dir, so a test can see exactly what ran and how often."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict


def _touch(name: str):
    async def run(ctx: Context) -> None:
        path = Path(ctx.params["dir"]) / name
        ctx.progress(0, 2, "files")
        with path.open("a") as fh:
            fh.write("ran\n")
        ctx.progress(2, 2, "files")
        ctx.state[name] = ctx.state.get(name, 0) + 1

    return run


def _exists(name: str):
    async def verify(ctx: Context) -> Verdict:
        path = Path(ctx.params["dir"]) / name
        return Verdict(path.exists(), f"{path} {'exists' if path.exists() else 'is missing'}")

    return verify


async def _wait_for_go(ctx: Context) -> None:
    go = Path(ctx.params["dir"]) / "go"
    while not go.exists():  # the test kills dbops here, then creates the file and resumes
        await asyncio.sleep(0.05)
    await _touch("b")(ctx)


async def _dir_ok(ctx: Context) -> Verdict:
    return Verdict(Path(ctx.params["dir"]).is_dir(), "work directory exists")


async def _lag(ctx: Context) -> Verdict:
    return Verdict(not ctx.params["lagging"], "candidate lag within limit" if not ctx.params["lagging"] else "candidate is 3 MiB behind")


async def _fail(ctx: Context) -> None:
    if ctx.params["fail"]:
        raise RuntimeError("the server said no")


def cmd(name: str):
    return lambda ctx: ["# as the test's OS user", f"echo ran >> {ctx.params['dir']}/{name}"]


RUNBOOK = Runbook(
    id="test.files",
    engine="postgres",
    title="Write three files",
    description="Engine test runbook",
    params=(
        Param("dir", "work directory", required=True),
        Param("lagging", "pretend the lag check fails", type=bool, default=False),
        Param("fail", "make step c fail", type=bool, default=False),
    ),
    prechecks=(Check("dir", "work directory", _dir_ok), Check("lag", "candidate lag", _lag, overridable=True)),
    steps=(
        Step("a", "write a", "appends to a", Kind.ACTION, cmd("a"), _touch("a"), _exists("a")),
        Step("b", "wait for go, write b", "waits for the go file (named in [work] like a config section)", Kind.ACTION, cmd("b"), _wait_for_go, _exists("b"), confirm=Confirm.YES_NO),
        Step("c", "write c", "appends to c", Kind.ACTION, cmd("c"), _touch("c"), _exists("c"), destructive=True,
             confirm=Confirm.TYPE_CLUSTER, on_failure="look at the server log"),
        Step("fail", "maybe fail", "fails when --param fail=true", Kind.ACTION, lambda ctx: ["false"], _fail,
             on_failure="fix the thing, then `dbops runbook resume`"),
    ),
)
