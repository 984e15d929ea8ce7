"""What a runbook is: typed parameters, read-only pre-checks, and an ordered list of steps.

A runbook never talks to a UI. Each step says in words what it does and renders the exact
commands it will issue (secrets redacted) before anything runs, so `plan` can show every step
and change nothing. State a step produces (an LSN to wait for, a row count to compare) goes in
`ctx.state`, which is journaled: after a crash, `resume` rebuilds it from disk.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dbops.config import ClusterRef, state_dir
from dbops.runbook.hosts import HostOps, hosts_for


class Kind(str, enum.Enum):
    CHECK = "check"  # reads only
    ACTION = "action"  # changes a server
    WAIT = "wait"  # polls until a condition holds
    MANUAL = "manual"  # a human runs the shown commands on a host dbops cannot reach


class Confirm(str, enum.Enum):
    NONE = "none"
    YES_NO = "yes-no"
    TYPE_CLUSTER = "type-cluster"  # the operator types the cluster's name


@dataclass(frozen=True)
class Verdict:
    ok: bool
    detail: str

    def require(self, log: Callable[[str], None]) -> None:
        """For a step that checks its own work: a failed verdict fails the step (its detail is
        the error); a passing one goes to the run's log."""
        if not self.ok:
            raise RuntimeError(self.detail)
        log(self.detail)


async def _no_attestation(name: str, commands: list[str]) -> bool:
    return False


@dataclass
class Context:
    """Everything a step sees. `state` survives a crash (journaled after every step)."""

    ref: ClusterRef
    params: dict[str, Any]
    run_id: str
    state: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = lambda line: None
    # progress(done, total, unit) from a long step (bytes restored, uploaded ...); total None
    # when unknown. May be called from any thread; the UI turns it into a bar with an ETA.
    progress: Callable[[float, float | None, str], None] = lambda done, total, unit: None
    resources: dict[str, Any] = field(default_factory=dict)  # connections etc.; not journaled
    # What the running step wants in its audit result record (a fence's methods and verdicts);
    # the executor empties it before each step.
    step_detail: dict[str, Any] = field(default_factory=dict)
    # attest(name, commands): the operator types `name` to attest something dbops cannot check
    # (a manual fence); False when they do not. The executor wires it to its Confirmer.
    attest: Callable[[str, list[str]], Awaitable[bool]] = _no_attestation

    @property
    def staging_dir(self) -> Path:
        """Where this run keeps the files it downloads or builds on this host (one directory per
        run, under the state directory: a resumed run finds them again)."""
        return state_dir() / "staging" / self.run_id

    @property
    def hosts(self) -> HostOps:
        """The members' hosts: dbops performs the operations where it runs the servers (the
        sandbox); elsewhere they are manual steps. Looked up once per run."""
        if "hosts" not in self.resources:
            self.resources["hosts"] = hosts_for(self.ref)
        hosts: HostOps = self.resources["hosts"]
        return hosts


Renderer = Callable[[Context], list[str]]
StepFn = Callable[[Context], Awaitable[None]]
CheckFn = Callable[[Context], Awaitable[Verdict]]


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    type: type = str
    required: bool = False
    default: Any = None
    # Offered values from live state (e.g. the cluster's replicas); validation refuses others.
    choices: Callable[[Context], Awaitable[list[str]]] | None = None

    def parse(self, raw: str) -> Any:
        if self.type is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"--param {self.name}: expected true or false, got {raw!r}")
        try:
            return self.type(raw)
        except ValueError:
            raise ValueError(f"--param {self.name}: expected {self.type.__name__}, got {raw!r}") from None


@dataclass(frozen=True)
class Check:
    """A read-only pre-check. An overridable check may be overridden with a recorded reason."""

    id: str
    title: str
    run: CheckFn
    overridable: bool = False
    # None: three times the cluster's timeout (at least 10 s). Checks that read a whole backup
    # repository need more.
    timeout: float | None = None


@dataclass(frozen=True)
class Step:
    id: str
    title: str
    description: str  # what it does, in words
    kind: Kind
    commands: Renderer  # the exact commands it will issue, rendered for the plan
    run: StepFn | None = None  # None for MANUAL steps
    verify: CheckFn | None = None  # checked after run, and again on resume before moving on
    destructive: bool = False
    confirm: Confirm = Confirm.NONE
    timeout: float = 60.0
    on_failure: str = ""  # what the operator should do if it fails
    # ctx.state keys this step writes and later steps read. After a crash mid-step, the step
    # counts as done only if its verification passes AND these exist; otherwise it runs again.
    produces: tuple[str, ...] = ()
    # False (judged from ctx.state after the pre-checks) when the plan gives this step nothing
    # to do: it is skipped without a confirmation, and the plan says so.
    applies: Callable[[Context], bool] | None = None
    # In an environment with approvals = 2, this step (like every destructive one) runs only
    # once a second operator has approved the run's plan.
    approval: bool = False
    # --override <step id>=REASON lets the run go on when this step fails (e.g. a fence that
    # cannot be verified); the reason and the failure go into the audit log.
    overridable: bool = False

    def __post_init__(self) -> None:
        if self.kind is not Kind.MANUAL and self.run is None:
            raise ValueError(f"step {self.id}: only manual steps may have no run function")
        if self.destructive and self.confirm is Confirm.NONE:
            raise ValueError(f"step {self.id}: a destructive step needs a confirmation")


@dataclass(frozen=True, kw_only=True)
class Runbook:
    id: str  # e.g. "postgres.promote-replica"
    title: str
    # The id's prefix when not given: a runbook's id names its engine first.
    engine: str = ""
    # One line. The registry fills it from the runbook module's docstring when it is not given,
    # which every built-in runbook's docstring opens with.
    description: str = ""
    params: tuple[Param, ...] = ()
    prechecks: tuple[Check, ...] = ()
    steps: tuple[Step, ...] = ()
    # Opens ctx.resources (connections) before prechecks, closes them at the end.
    setup: Callable[[Context], Awaitable[None]] | None = None
    teardown: Callable[[Context], Awaitable[None]] | None = None
    # A variant for one cluster (e.g. an automatic step where dbops manages the servers, a
    # manual one elsewhere); None keeps this runbook.
    specialize: Callable[[ClusterRef], Runbook | None] | None = None

    def __post_init__(self) -> None:
        if not self.engine:
            object.__setattr__(self, "engine", self.id.partition(".")[0])

    def described(self, doc: str | None) -> Runbook:
        """This runbook with `doc`'s first line (its module's docstring) as its description when
        it declares none; so are the variants it specializes to."""
        if self.description or not doc or not doc.strip():
            return self
        summary = doc.strip().splitlines()[0]
        specialize = self.specialize
        if specialize is None:
            return replace(self, description=summary)

        def described_variant(ref: ClusterRef) -> Runbook | None:
            variant = specialize(ref)
            return variant.described(doc) if variant is not None else None

        return replace(self, description=summary, specialize=described_variant)

    def for_cluster(self, ref: ClusterRef) -> Runbook:
        variant = self.specialize(ref) if self.specialize is not None else None
        return variant if variant is not None else self

    @property
    def changes_servers(self) -> bool:
        return any(s.kind in (Kind.ACTION, Kind.MANUAL) for s in self.steps)


def host_variants(build: Callable[[bool], Runbook]) -> Runbook:
    """A runbook whose host steps (stop, restore, start ... on a member's host) are manual steps
    by default, and actions where dbops runs the servers: `build(managed)` makes each variant,
    and the cluster's hosts (hosts_for) pick one when the runbook is built for a cluster."""
    managed = build(True)
    return replace(build(False), specialize=lambda ref: managed if hosts_for(ref).managed else None)


# -- a plan: what `plan` shows and what a second operator approves ----------------------------


@dataclass(frozen=True)
class CheckResult:
    check: Check
    verdict: Verdict
    overridden_by: str | None = None  # the recorded reason


@dataclass(frozen=True)
class PlannedStep:
    step: Step
    commands: list[str]


@dataclass(frozen=True)
class Plan:
    runbook: Runbook
    checks: list[CheckResult]
    steps: list[PlannedStep]

    @property
    def refused(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.verdict.ok and c.overridden_by is None]
