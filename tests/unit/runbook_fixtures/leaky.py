"""A runbook whose errors carry a password, as a driver's can (the DSN it connected with): every
front end must show them scrubbed. --param where=choices fails reading the live choices,
--param where=setup fails opening the runbook's connections."""

from __future__ import annotations

from dbops.runbook.model import Check, Context, Kind, Param, Runbook, Step, Verdict

SECRET = "hunter2-leaks"


def _leak(ctx: Context) -> ConnectionError:
    return ConnectionError(f"could not connect to postgresql://dbops:{SECRET}@{ctx.ref.cluster.members[0].host}/postgres: "
                           f"password={SECRET} refused")


async def _choices(ctx: Context) -> list[str]:
    if ctx.params.get("where") == "choices":
        raise _leak(ctx)
    return ["m1", "b1"]


async def _setup(ctx: Context) -> None:
    if ctx.params.get("where") == "setup":
        raise _leak(ctx)


async def _ok(ctx: Context) -> Verdict:
    return Verdict(True, "nothing to check")


async def _nothing(ctx: Context) -> None:
    return None


RUNBOOK = Runbook(
    id="test.leaky",
    engine="postgres",
    title="Fail with a password in the error",
    description="Engine test runbook",
    params=(Param("where", "choices or setup: where it fails", required=True),
            Param("target", "a member", choices=_choices)),
    prechecks=(Check("ok", "always passes", _ok),),
    steps=(Step("look", "look around", "reads nothing", Kind.CHECK, lambda ctx: ["true"], _nothing),),
    setup=_setup,
)
