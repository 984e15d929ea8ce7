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
from dbops.runbook.locks import SHARED_LOCK, ClusterLock
from dbops.runbook.model import CheckResult, Confirm, Context, Kind, Plan, PlannedStep, Runbook, Step, Verdict
from dbops.secrets import scrub_text

if TYPE_CHECKING:
    from dbops.audit import AuditLog
    from dbops.runbook.approvals import ApprovalState, ApprovalStore


class ExitCode(enum.IntEnum):
    OK = 0
    REFUSED = 1  # a pre-check failed (or writes are not allowed, or the cluster is locked)
    STEP_FAILED = 2
    ABORTED = 3  # the operator declined


class Confirmer(Protocol):
    async def confirm(self, step: Step, commands: list[str], ctx: Context) -> bool: ...
    async def manual_done(self, step: Step, commands: list[str], ctx: Context) -> bool: ...
    # The operator types `expected` (a member's name) to attest what dbops cannot check.
    async def attest(self, step: Step, commands: list[str], ctx: Context, expected: str) -> bool: ...


class Observer(Protocol):
    def __call__(self, event: str, **data: Any) -> None: ...


def _silent(event: str, **data: Any) -> None:
    return None


UNRENDERED = "# the commands cannot be shown: "


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
        audit: AuditLog,
        confirmer: Confirmer,
        observer: Observer = _silent,
        allow_writes: bool = False,
        approvals: ApprovalStore | None = None,
    ) -> None:
        self.runbook = runbook
        self.ctx = ctx
        self.audit = audit
        self.confirmer = confirmer
        self.observe = observer
        self.allow_writes = allow_writes
        self._step: Step | None = None  # the step running now, for attestations
        self._lock: ClusterLock | None = None  # held for the run; follows the primary after each step
        ctx.attest = self._attest
        # The two-person rule (environments with approvals = 2): the shared store of approval
        # requests, the plan's canonical text and hash (computed once per run/resume), and the
        # approval once given.
        self.approvals = approvals
        self.approval_poll = 2.0
        self.plan_text: str | None = None
        self.plan_hash: str | None = None
        self.approval: ApprovalState | None = None
        self._used_approval = False

    async def _attest(self, expected: str, commands: list[str]) -> bool:
        assert self._step is not None, "an attestation outside a step"
        self.observe("attest", step=self._step, expected=expected, commands=commands)
        return await self.confirmer.attest(self._step, commands, self.ctx, expected)

    def _known_overrides(self) -> set[str]:
        return {c.id for c in self.runbook.prechecks if c.overridable} | {s.id for s in self.runbook.steps if s.overridable} | {SHARED_LOCK}

    # -- plan --------------------------------------------------------------------------------

    async def plan(self, overrides: dict[str, str] | None = None) -> Plan:
        """Run the read-only pre-checks and render every step. Changes nothing."""
        overrides = overrides or {}
        checks = []
        for check in self.runbook.prechecks:
            limit = check.timeout if check.timeout is not None else max(self.ctx.ref.timeout * 3, 10)
            try:
                verdict = await asyncio.wait_for(check.run(self.ctx), timeout=limit)
            except TimeoutError:
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
        unknown = sorted(set(overrides) - self._known_overrides())
        if unknown:
            return RunResult(self.ctx.run_id, ExitCode.REFUSED,
                             f"--override {', '.join(unknown)}: nothing of that name can be overridden; "
                             f"these can: {', '.join(sorted(self._known_overrides()))}")
        await lock.acquire()  # raises LockHeld naming the holder
        self._lock = lock
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
            # Step overrides (a fence that cannot be verified) and a lock override apply when
            # needed, and are recorded from the start either way.
            used.update({k: v for k, v in overrides.items() if k not in used and k != SHARED_LOCK and k in self._known_overrides()})
            if lock.overridden is not None:
                used[SHARED_LOCK] = lock.overridden
            self._hash_plan(plan)
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
        self._lock = lock
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
        # Re-rendered and re-hashed: a plan that differs from the approved one needs a new approval.
        self._hash_plan(Plan(self.runbook, [], planned))
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
            gated = self._needs_approval(step)
            if gated and self.approval is None:
                refused = await self._await_approval(journal, step, durations)
                if refused is not None:
                    return refused
            if step.confirm is not Confirm.NONE:
                self.observe("confirm", step=step, commands=p.commands)
                if not await self.confirmer.confirm(step, p.commands, self.ctx):
                    self._abort("declined", step=step.id, reason=f"confirmation of '{step.title}' declined")
                    journal.write(event="aborted", step=step.id)
                    self.observe("aborted", step=step)
                    return RunResult(self.ctx.run_id, ExitCode.ABORTED, f"declined at '{step.title}'; nothing after it ran", durations)
            if gated and not self._used_approval:
                # Still valid now that the operator has confirmed (a confirmation can take a while)?
                refused = await self._recheck_approval(journal, step, durations)
                if refused is not None:
                    return refused
                self._used_approval = True
            outcome = await self._one(journal, step, p.commands, overrides)
            durations[step.id] = outcome[1]
            if outcome[0] and step.kind in (Kind.ACTION, Kind.MANUAL) and self._lock is not None:
                await self._lock.follow()
            if not outcome[0]:
                journal.write(event="failed", step=step.id)
                msg = f"step '{step.title}' failed: {outcome[2]}"
                if step.on_failure:
                    msg += f"\nwhat to do: {step.on_failure}"
                return RunResult(self.ctx.run_id, ExitCode.STEP_FAILED, msg, durations)
        journal.write(event="finished")
        self.observe("finished", durations=durations)
        # What the operator must know about how it was done (a fence that was only attested).
        notes = "".join(f"\nNOTE: {n}" for n in self.ctx.state.get("summary", ()))
        return RunResult(self.ctx.run_id, ExitCode.OK, f"{self.runbook.title}: done{notes}", durations)

    async def _one(self, journal: Journal, step: Step, commands: list[str], overrides: dict[str, str]) -> tuple[bool, float, str]:
        changes = step.kind in (Kind.ACTION, Kind.MANUAL)
        intent = None
        if changes:
            reason = "; ".join(f"override {k}: {v}" for k, v in overrides.items()) or None
            params: dict[str, Any] = {"commands": commands, **{k: v for k, v in self.ctx.params.items()}}
            if self.approval is not None and self.approval.approver is not None:
                params["approved_by"] = self.approval.approver.as_dict()
                params["plan_hash"] = self.plan_hash
            intent = self.audit.intent(
                action=f"{self.runbook.id}:{step.id}", environment=self.ctx.ref.environment, cluster=self.ctx.ref.name,
                params=params, run_id=self.ctx.run_id, step=step.id, reason=reason,
            )
        journal.write(event="step-started", step=step.id)
        self.observe("started", step=step, commands=commands)
        started = time.monotonic()
        error = ""
        self._step = step
        self.ctx.step_detail = {}
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
        except TimeoutError:
            error = f"did not finish within {step.timeout:g}s"
        except KeyError as exc:
            error = f"state from an earlier step is missing: {exc.args[0]} (the runbook should list it in that step's produces)"
        except Exception as exc:  # a step's failure is reported and journaled, never a crash
            error = scrub_text(str(exc)) or type(exc).__name__
        elapsed = time.monotonic() - started
        self._step = None
        detail = dict(self.ctx.step_detail) or None
        if error and step.overridable and step.id in overrides:
            # The operator chose, with a reason, to go on past this failure: say so everywhere.
            reason = overrides[step.id]
            self.observe("overridden", step=step, error=error, reason=reason)
            self.ctx.state.setdefault("summary", []).append(f"'{step.title}' failed and was overridden ({reason}): {error}")
            if intent is not None:
                self.audit.result(intent, outcome="overridden", error=error, detail={**(detail or {}), "override": reason})
            journal.write(event="step-done", step=step.id, state=self.ctx.state, overridden=reason)
            return True, elapsed, ""
        if error:
            self.observe("failed", step=step, error=error)
            if intent is not None:
                self.audit.result(intent, outcome="failed", error=error, detail=detail)
            return False, elapsed, error
        # The audit result first: once the journal says "done", the audit log already says so too.
        if intent is not None:
            self.audit.result(intent, outcome="ok", detail=detail)
        journal.write(event="step-done", step=step.id, state=self.ctx.state)
        self.observe("done", step=step, seconds=elapsed)
        return True, elapsed, ""

    # -- the two-person rule --------------------------------------------------------------------

    def _needs_approval(self, step: Step) -> bool:
        """A run that has a step needing a second operator (destructive, or approval=True) asks
        before its first step that changes anything, not just before that step: a switchover
        must not repoint replicas and then wait half an hour, half done, for someone to say no."""
        if self.ctx.ref.env.approvals < 2 or not any(s.destructive or s.approval for s in self.runbook.steps):
            return False
        return step.kind in (Kind.ACTION, Kind.MANUAL) or step.destructive or step.approval

    def _hash_plan(self, plan: Plan) -> None:
        if self.ctx.ref.env.approvals < 2:
            return
        from dbops.runbook.approvals import plan_hash, plan_text

        self.plan_text = plan_text(plan, self.ctx.ref, self.ctx.params)
        self.plan_hash = plan_hash(self.plan_text)
        self.approval = None
        self._used_approval = False

    def _approval_refused(self, journal: Journal, step: Step, why: str, durations: dict[str, float]) -> RunResult:
        self._abort("approval-refused", step=step.id, reason=why)
        journal.write(event="approval-refused", step=step.id, reason=why)
        self.observe("approval-refused", step=step, reason=why)
        msg = f"refused: {why}; nothing from '{step.title}' on ran (run {self.ctx.run_id}; `dbops runbook resume {self.ctx.run_id}` asks again)"
        return RunResult(self.ctx.run_id, ExitCode.REFUSED, msg, durations)

    async def _await_approval(self, journal: Journal, step: Step, durations: dict[str, float]) -> RunResult | None:
        """Publish the plan for approval and wait (bounded by the approval TTL) until a second
        operator approves it. None when approved; a REFUSED result otherwise. Fails closed."""
        from dbops.runbook.approvals import ApprovalError, current_operator

        ref = self.ctx.ref
        if self.approvals is None:
            return self._approval_refused(journal, step, f"{ref.environment} needs a second operator's approval, and no approval store ([locks.postgres]) is configured here", durations)
        assert self.plan_hash is not None and self.plan_text is not None
        requester = current_operator()
        ttl = ref.env.approval_ttl_seconds
        try:
            state = await self.approvals.approval_state(self.ctx.run_id, self.plan_hash, requester)
            if not state.approved:
                await self.approvals.request(
                    self.ctx.run_id, environment=ref.environment, cluster=ref.name, runbook=self.runbook.id,
                    plan_hash=self.plan_hash, plan_text=self.plan_text, requester=requester, ttl_seconds=ttl,
                )
                who = f"any operator other than {requester.name} (uid {requester.uid}) — `dbops runbook approve {self.ctx.run_id}`"
                journal.write(event="approval-waiting", step=step.id, plan_hash=self.plan_hash)
                self.observe("approval-waiting", step=step, run_id=self.ctx.run_id, plan_hash=self.plan_hash,
                             requester=requester, who=who, ttl=ttl)
                deadline = time.monotonic() + ttl
                while True:
                    state = await self.approvals.approval_state(self.ctx.run_id, self.plan_hash, requester)
                    if state.status != "waiting":
                        break
                    if time.monotonic() >= deadline:
                        return self._approval_refused(journal, step, f"no second operator approved the plan within {ttl}s", durations)
                    await asyncio.sleep(self.approval_poll)
        except ApprovalError as exc:
            return self._approval_refused(journal, step, f"the approval cannot be checked: {exc}", durations)
        if not state.approved:
            return self._approval_refused(journal, step, state.message, durations)
        self.approval = state
        journal.write(event="approved", step=step.id, plan_hash=self.plan_hash,
                      approved_by=state.approver.as_dict() if state.approver else None)
        self.observe("approved", step=step, approver=state.approver, plan_hash=self.plan_hash, message=state.message)
        return None

    async def _recheck_approval(self, journal: Journal, step: Step, durations: dict[str, float]) -> RunResult | None:
        from dbops.runbook.approvals import ApprovalError, current_operator

        assert self.approvals is not None and self.plan_hash is not None
        try:
            state = await self.approvals.approval_state(self.ctx.run_id, self.plan_hash, current_operator())
        except ApprovalError as exc:
            return self._approval_refused(journal, step, f"the approval cannot be checked: {exc}", durations)
        if not state.approved:
            return self._approval_refused(journal, step, state.message, durations)
        self.approval = state
        return None

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
