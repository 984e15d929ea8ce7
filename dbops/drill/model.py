"""What a drill is: a Scenario, declared like a runbook (built-ins in dbops.drills, a team's own
in `drill_dirs`), and the context its functions receive while it runs.

A scenario names its recovery by runbook id: the drill runs those runbooks through the same
RunbookSession as `dbops runbook run`, so their pre-checks, plans, confirmations, locks, journal
and audit records are exactly theirs. The scenario adds what a runbook does not have: the fault,
how to tell the recovery worked from the data, and the way back to the steady state.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dbops.config import ClusterRef, Config
    from dbops.drill.probe import Ack, Probe
    from dbops.runbook.hosts import HostOps
    from dbops.runbook.model import Verdict


class Phase(str, enum.Enum):
    ANNOUNCE = "announce"
    STEADY = "steady"
    INJECT = "inject"
    DETECT = "detect"
    RECOVER = "recover"
    VERIFY = "verify"
    RESTORE = "restore"
    REPORT = "report"

    @property
    def heading(self) -> str:
        return TITLES[self]


TITLES = {
    Phase.ANNOUNCE: "Announce the drill",
    Phase.STEADY: "Steady state: probe writing, cluster healthy",
    Phase.INJECT: "Inject the fault",
    Phase.DETECT: "Detect: dbops shows the fault",
    Phase.RECOVER: "Recover: the runbooks",
    Phase.VERIFY: "Verify: the data and the service",
    Phase.RESTORE: "Return to the steady state",
    Phase.REPORT: "Report",
}
PHASES = tuple(Phase)


class DrillRefused(Exception):
    """The drill cannot start or go on (not allowed here, the cluster not in a steady state, a
    fault that cannot be injected): one line for the operator."""


@contextlib.asynccontextmanager
async def _no_probe() -> AsyncIterator[None]:
    yield


async def _no_runbooks(runbook: str, params: dict[str, str]) -> None:
    raise RuntimeError(f"{runbook}: this drill context cannot run runbooks")


@dataclass
class DrillContext:
    ref: ClusterRef
    config: Config
    run_id: str
    hosts: HostOps
    dir: Path  # the run's directory: journal, acknowledged writes, report
    log: Callable[[str], None]
    probe: Probe | None = None
    # Chosen at the steady state and kept in the journal (the victim, the candidate, the time of
    # a DELETE): a resumed drill goes on with the same ones.
    facts: dict[str, Any] = field(default_factory=dict)
    # Times (Unix seconds) the scenario marks itself: "verified" for a data RTO.
    marks: dict[str, float] = field(default_factory=dict)
    # The acknowledged writes so far (read from the log), for verification.
    acks: Callable[[], list[Ack]] = list
    # `async with ctx.hold_probe():` no probe write is in flight or starts inside (a fault that
    # must fall between two writes, such as the time a DELETE is restored to).
    hold_probe: Callable[[], AbstractAsyncContextManager[None]] = _no_probe
    # The recovery runbooks' runs so far: {"runbook", "run_id", "outcome", ...} each.
    recovery_runs: list[dict[str, Any]] = field(default_factory=list)
    # Run another runbook through the drill's session (its confirmations, lock, journal and
    # audit records as always), e.g. to rejoin a replaced node on the way back; raises when it
    # does not complete.
    run_runbook: Callable[[str, dict[str, str]], Awaitable[None]] = _no_runbooks

    @property
    def state_dir(self) -> Path:
        return self.dir.parent.parent  # <state>/drills/<run id>


@dataclass(frozen=True)
class Fault:
    title: str
    # What will be done, exactly (the plan shows it; a manual fault shows it as the commands).
    commands: Callable[[DrillContext], list[str]]
    # Perform it; returns one line saying what was done. None: dbops cannot inject it here.
    inject: Callable[[DrillContext], Awaitable[str]] | None
    # Whether dbops can perform it on this cluster (the sandbox's hosts, the database's own API);
    # otherwise the operator does it by hand and confirms.
    performed: Callable[[DrillContext], bool] = lambda ctx: ctx.hosts.managed
    # Undo the fault when the drill is aborted before the recovery did it.
    heal: Callable[[DrillContext], Awaitable[str]] | None = None


@dataclass(frozen=True)
class Recovery:
    """A recovery step: a runbook by id, or (runbook empty) a host operation `do` titled `why`,
    confirmed and audited by the drill like its fault."""

    runbook: str
    # Its parameters' raw values, decided when the recovery starts (the candidate: the most
    # advanced replica then).
    params: Callable[[DrillContext], Awaitable[dict[str, str]]] | None = None
    why: str = ""
    do: Callable[[DrillContext], Awaitable[str]] | None = None
    # False (judged when the recovery reaches it): skipped, and the report says so.
    when: Callable[[DrillContext], bool] | None = None


async def _nothing(ctx: DrillContext) -> list[str]:
    return []


async def _no_verdicts(ctx: DrillContext) -> list[Verdict]:
    return []


@dataclass(frozen=True)
class Scenario:
    id: str  # "pg-primary-loss"
    title: str
    engine: str
    description: str
    fault: Fault
    recovery: tuple[Recovery, ...]
    # Why it does not apply to `ref` (the engine, a missing setting); None when it does.
    applies: Callable[[ClusterRef], str | None]
    # The steady state: checks beyond "healthy and the probe writes" and the facts to keep
    # (victim, candidate); raises DrillRefused when the cluster is not fit for this drill.
    prepare: Callable[[DrillContext], Awaitable[list[str]]] = _nothing
    # Proof from the data that the recovery worked (beyond the probe, which is always checked).
    verify: Callable[[DrillContext], Awaitable[list[Verdict]]] = _no_verdicts
    # Back to the steady state (a rejoined old primary, a restarted broker): lines saying what.
    restore: Callable[[DrillContext], Awaitable[list[str]]] = _nothing
    # "availability": the RTO ends when the probe writes and reads again; "data": when the
    # scenario marks "verified" (the lost rows are back).
    rto: str = "availability"
    # Whether dbops' health shows this fault (a member down does; a DELETE does not): without it
    # the detect phase says so instead of waiting, and the report has no detection time.
    detectable: bool = True
    # Where the RPO is read: default the probe itself, reconnected to the recovered service; a
    # restore into a scratch copy gives a probe on the copy.
    recovered: Callable[[DrillContext], Awaitable[Probe]] | None = None
    # Which acknowledged writes the recovered service must hold (default: all of them).
    expected: Callable[[DrillContext, list[Ack]], list[Ack]] | None = None
    # Writes that must NOT be there (written after the point restored to): checked and reported.
    unexpected: Callable[[DrillContext, list[Ack]], list[Ack]] | None = None


async def still_listening(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts connections on host:port: a fault that stopped a server is
    verified, not assumed (a stop that did nothing must not be reported as done)."""
    import asyncio

    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


STOP_SETTLE = 15.0  # a killed server's sockets close when the kernel has torn the process down


async def require_stopped(ctx: DrillContext, member: str, what: str) -> None:
    import asyncio
    import time

    m = next((m for m in ctx.ref.cluster.members if m.name == member), None)
    if m is None or m.port is None:
        return
    deadline = time.monotonic() + STOP_SETTLE
    while await still_listening(m.host, m.port):
        if time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            continue
        raise RuntimeError(f"{what} was reported done, but {member} ({m.host}:{m.port}) still accepts connections "
                           f"{STOP_SETTLE:.0f}s later: the fault did not take")

