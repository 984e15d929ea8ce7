"""Runs a runbook: plan (read-only), run, resume. No UI here: a Confirmer asks the operator (CLI
flags, a terminal prompt, the TUI wizard, a test) and an Observer hears every event.

Order per step that can change a server: confirmation -> audit intent (fsynced) -> journal
"started" -> run under the step's timeout -> verify -> journal "done" (with ctx.state) -> audit
result. A crash anywhere leaves a journal `resume` can continue from and an audit log whose
intents without results say exactly what was in flight.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dbops.actions import read_only_reason, writes_allowed
from dbops.runbook.journal import Journal, RunRecord
from dbops.runbook.locks import ClusterLock
from dbops.runbook.model import Check, Confirm, Context, Kind, Runbook, Step, Verdict
from dbops.secrets import scrub_text

if TYPE_CHECKING:
    from dbops.audit import AuditLog


class ExitCode(enum.IntEnum):
    OK = 0
    REFUSED = 1  # a pre-check failed (or writes are not allowed, or the cluster is locked)
    STEP_FAILED = 2
    ABORTED = 3  # the operator declined


class Confirmer(Protocol):
    async def confirm(self, step: Step, commands: list[str], ctx: Context) -> bool: ...
    async def manual_done(self, step: Step, commands: list[str], ctx: Context) -> bool: ...


class Observer(Protocol):
    def __call__(self, event: str, **data: Any) -> None: ...


def _silent(event: str, **data: Any) -> None:
    return None


@dataclass(frozen=True)
class CheckResult:
    check: Check
    verdict: Verdict
    overridden_by: str | None = None  # the recorded reason


UNRENDERED = "# the commands cannot be shown: "


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


@dataclass
class RunResult:
    run_id: str
    code: ExitCode
    message: str
    durations: dict[str, float] = field(default_factory=dict)
    plan: Plan | None = None


class Executor:
    def __init__(
        self,
        runbook: Runbook,
        ctx: Context,
        *,
        audit: "AuditLog",
        confirmer: Confirmer,
        observer: Observer = _silent,
        allow_writes: bool = False,
    ) -> None:
        self.runbook = runbook
        self.ctx = ctx
        self.audit = audit
        self.confirmer = confirmer
        self.observe = observer
        self.allow_writes = allow_writes

    # -- plan --------------------------------------------------------------------------------

    async def plan(self, overrides: dict[str, str] | None = None) -> Plan:
        """Run the read-only pre-checks and render every step. Changes nothing."""
        overrides = overrides or {}
        checks = []
        for check in self.runbook.prechecks:
            limit = check.timeout if check.timeout is not None else max(self.ctx.ref.timeout * 3, 10)
            try:
                verdict = await asyncio.wait_for(check.run(self.ctx), timeout=limit)
            except (asyncio.TimeoutError, TimeoutError):
                verdict = Verdict(False, f"could not be checked within {limit:g}s")
            except Exception as exc:  # a check that cannot run is a failed check, never a crash
                verdict = Verdict(False, f"could not be checked: {scrub_text(str(exc)) or type(exc).__name__}")
            reason = overrides.get(check.id) if (check.overridable and not verdict.ok) else None
            checks.append(CheckResult(check, verdict, reason))
            self.observe("check", check=check, verdict=verdict, overridden_by=reason)
        steps = [PlannedStep(s, self._render(s)) for s in self.runbook.steps]
        return Plan(self.runbook, checks, steps)

    def _render(self, step: Step) -> list[str]:
        """A step's commands for the plan. A renderer that fails (state a failed pre-check did
        not produce) is a line in the plan, never a crash of the plan itself."""
        try:
            return [scrub_text(c) for c in step.commands(self.ctx)]
        except Exception as exc:  # shown in the plan; the run is refused by the failed pre-check anyway
            return [f"{UNRENDERED}{scrub_text(str(exc)) or type(exc).__name__} (see the pre-checks)"]

    # -- run ---------------------------------------------------------------------------------

    async def run(self, journal: Journal, lock: ClusterLock, overrides: dict[str, str] | None = None) -> RunResult:
        overrides = overrides or {}
        ref = self.ctx.ref
        if self.runbook.changes_servers and not writes_allowed(ref, self.allow_writes):
            return RunResult(self.ctx.run_id, ExitCode.REFUSED, read_only_reason(ref))
        await lock.acquire()  # raises LockHeld naming the holder
        try:
            plan = await self.plan(overrides)
            if plan.refused:
                why = "; ".join(f"{c.check.title}: {c.verdict.detail}" for c in plan.refused)
                self._abort("precheck-refused", reason=why)
                return RunResult(self.ctx.run_id, ExitCode.REFUSED, f"pre-checks refused: {why}", plan=plan)
            unshown = [p.step.title for p in plan.steps if p.commands and p.commands[0].startswith(UNRENDERED)]
            if unshown:
                # Nothing runs without a plan that shows exactly what will run.
                why = f"the commands of {', '.join(unshown)} cannot be shown"
                self._abort("precheck-refused", reason=why)
                return RunResult(self.ctx.run_id, ExitCode.REFUSED, f"refused: {why}", plan=plan)
            used = {c.check.id: c.overridden_by for c in plan.checks if c.overridden_by}
            journal.write(
                event="start", run_id=self.ctx.run_id, runbook=self.runbook.id, environment=ref.environment,
                cluster=ref.name, params=self.ctx.params, overrides=used, state=self.ctx.state,
            )
            result = await self._steps(journal, plan.steps, done=set(), overrides=used)
            result.plan = plan
            return result
        finally:
            await lock.release()

    async def resume(self, record: RunRecord, journal: Journal, lock: ClusterLock) -> RunResult:
        """Continue after a crash: verify the interrupted step (re-run it if that fails), then go on."""
        if record.end in ("finished", "aborted"):
            # Audited like any refusal. (It also re-covers the newest record with the audit
            # head when a kill -9 landed between writing that record and updating the head.)
            why = f"run {record.run_id} already {record.end}; nothing to resume"
            self._abort("resume-refused", reason=why)
            return RunResult(record.run_id, ExitCode.REFUSED, why)
        ref = self.ctx.ref
        if self.runbook.changes_servers and not writes_allowed(ref, self.allow_writes):
            return RunResult(record.run_id, ExitCode.REFUSED, read_only_reason(ref))
        self.ctx.state.update(record.state)
        await lock.acquire()
        resumed: dict | None = None
        result: RunResult | None = None
        try:
            # Resuming is itself audited: who picked the run up, after which steps. (So every
            # resume appends to the audit log, which also re-covers the newest record with the
            # head file when the crash fell between writing that record and updating the head.)
            resumed = self.audit.intent(
                action=f"{self.runbook.id}:resume", environment=ref.environment, cluster=ref.name,
                params={"after": list(record.done), "interrupted": record.interrupted}, run_id=record.run_id,
            )
            result = await self._resume_steps(record, journal)
            return result
        finally:
            if resumed is not None:
                ok = result is not None and result.code is ExitCode.OK
                self.audit.result(resumed, outcome="ok" if ok else "failed",
                                  error=None if ok else (result.message if result else "the resumed run stopped"))
            await lock.release()

    async def _resume_steps(self, record: RunRecord, journal: Journal) -> RunResult:
        journal.write(event="resumed", after=record.done, interrupted=record.interrupted)
        self.observe("resumed", done=list(record.done), interrupted=record.interrupted)
        planned = [PlannedStep(s, [scrub_text(c) for c in s.commands(self.ctx)]) for s in self.runbook.steps]
        done = set(record.done)
        if record.interrupted is not None:
            step = next(s for s in self.runbook.steps if s.id == record.interrupted)
            if step.verify is not None:
                verdict = await self._verify(step)
                missing = [k for k in step.produces if k not in self.ctx.state]
                if verdict.ok and missing:
                    # Its effect is there but not what it found (journaled only at step-done):
                    # run it again, which every step must tolerate.
                    verdict = Verdict(False, f"{verdict.detail}, but {', '.join(missing)} was not recorded before the crash")
                self.observe("reverified", step=step, verdict=verdict)
                if verdict.ok:
                    journal.write(event="step-done", step=step.id, state=self.ctx.state, reverified=True)
                    done.add(step.id)
        return await self._steps(journal, planned, done=done, overrides=record.overrides)

    async def _steps(self, journal: Journal, planned: list[PlannedStep], done: set[str], overrides: dict[str, str]) -> RunResult:
        durations: dict[str, float] = {}
        for p in planned:
            step = p.step
            if step.id in done:
                self.observe("skipped", step=step, reason="done before the crash")
                continue
            if step.applies is not None and not step.applies(self.ctx):
                self.observe("skipped", step=step, reason="nothing to do")
                continue
            if step.confirm is not Confirm.NONE:
                self.observe("confirm", step=step, commands=p.commands)
                if not await self.confirmer.confirm(step, p.commands, self.ctx):
                    self._abort("declined", step=step.id, reason=f"confirmation of '{step.title}' declined")
                    journal.write(event="aborted", step=step.id)
                    self.observe("aborted", step=step)
                    return RunResult(self.ctx.run_id, ExitCode.ABORTED, f"declined at '{step.title}'; nothing after it ran", durations)
            outcome = await self._one(journal, step, p.commands, overrides)
            durations[step.id] = outcome[1]
            if not outcome[0]:
                journal.write(event="failed", step=step.id)
                msg = f"step '{step.title}' failed: {outcome[2]}"
                if step.on_failure:
                    msg += f"\nwhat to do: {step.on_failure}"
                return RunResult(self.ctx.run_id, ExitCode.STEP_FAILED, msg, durations)
        journal.write(event="finished")
        self.observe("finished", durations=durations)
        return RunResult(self.ctx.run_id, ExitCode.OK, f"{self.runbook.title}: done", durations)

    async def _one(self, journal: Journal, step: Step, commands: list[str], overrides: dict[str, str]) -> tuple[bool, float, str]:
        changes = step.kind in (Kind.ACTION, Kind.MANUAL)
        intent = None
        if changes:
            reason = "; ".join(f"override {k}: {v}" for k, v in overrides.items()) or None
            intent = self.audit.intent(
                action=f"{self.runbook.id}:{step.id}", environment=self.ctx.ref.environment, cluster=self.ctx.ref.name,
                params={"commands": commands, **{k: v for k, v in self.ctx.params.items()}}, run_id=self.ctx.run_id,
                step=step.id, reason=reason,
            )
        journal.write(event="step-started", step=step.id)
        self.observe("started", step=step, commands=commands)
        started = time.monotonic()
        error = ""
        try:
            if step.kind is Kind.MANUAL:
                if not await self.confirmer.manual_done(step, commands, self.ctx):
                    error = "the operator did not confirm the manual step as done"
            else:
                assert step.run is not None
                await asyncio.wait_for(step.run(self.ctx), timeout=step.timeout)
            if not error and step.verify is not None:
                verdict = await self._verify(step)
                self.observe("verified", step=step, verdict=verdict)
                if not verdict.ok:
                    error = f"verification failed: {verdict.detail}"
        except (asyncio.TimeoutError, TimeoutError):
            error = f"did not finish within {step.timeout:g}s"
        except KeyError as exc:
            error = f"state from an earlier step is missing: {exc.args[0]} (the runbook should list it in that step's produces)"
        except Exception as exc:  # a step's failure is reported and journaled, never a crash
            error = scrub_text(str(exc)) or type(exc).__name__
        elapsed = time.monotonic() - started
        if error:
            self.observe("failed", step=step, error=error)
            if intent is not None:
                self.audit.result(intent, outcome="failed", error=error)
            return False, elapsed, error
        # The audit result first: once the journal says "done", the audit log already says so too.
        if intent is not None:
            self.audit.result(intent, outcome="ok")
        journal.write(event="step-done", step=step.id, state=self.ctx.state)
        self.observe("done", step=step, seconds=elapsed)
        return True, elapsed, ""

    async def _verify(self, step: Step) -> Verdict:
        assert step.verify is not None
        try:
            return await asyncio.wait_for(step.verify(self.ctx), timeout=max(step.timeout, 10))
        except Exception as exc:
            return Verdict(False, f"could not verify: {scrub_text(str(exc)) or type(exc).__name__}")

    def _abort(self, outcome: str, step: str | None = None, reason: str | None = None) -> None:
        self.audit.abort(
            action=self.runbook.id, environment=self.ctx.ref.environment, cluster=self.ctx.ref.name,
            params=dict(self.ctx.params), run_id=self.ctx.run_id, step=step, reason=reason, outcome=outcome,
        )
