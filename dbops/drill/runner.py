"""Runs one drill: announce, steady state, inject, detect, recover, verify, restore, report.

The front end is a runbook session's FrontEnd (dbops.runbook.session): the recovery runbooks
run through a RunbookSession with it, so their confirmations reach the operator exactly as in
`dbops runbook run`, and the fault's own confirmation is asked the same way. Besides the
session's events it hears the drill's own:

  drill-phase (phase, state, detail)   a phase started ("running") or ended (done/failed/skipped/aborted)
  drill-attempt (attempt)              one probe write and read-back (the strip, the RTO clock)
  drill-mark (name, t)                 fault / detected / decision / recovered / verified
  drill-log (line)                     what the drill itself did
  drill-over (result)                  the DrillResult, report files written

Every change a drill makes is audited like a runbook's: an intent record synced to disk before
the fault, a result after it; the drill's start and end, and the report's SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbops.audit import AuditLog
from dbops.drill import measure
from dbops.drill.journal import DrillJournal, DrillJournalError, new_drill_id
from dbops.drill.model import PHASES, DrillContext, DrillRefused, Phase, Scenario
from dbops.drill.probe import AckLog, Attempt, ProbeLoop, one_line, probe_for
from dbops.runbook.executor import ExitCode
from dbops.runbook.model import Confirm, Context, Kind, Step, Verdict

if TYPE_CHECKING:
    from dbops.config import ClusterRef, Config
    from dbops.model import ClusterHealth
    from dbops.runbook.session import FrontEnd

STEADY_ATTEMPTS = 10  # consecutive probe successes that make a steady state (1 s of writes)
STEADY_TIMEOUT = 30.0
DETECT_TIMEOUT = 60.0  # how long the drill waits for dbops' own health to show the fault
HEALTH_INTERVAL = 1.0
BACK_TIMEOUT = 120.0  # after the recovery, how long the probe may take to write again


class Outcome:
    MET = "met"
    MISSED = "missed"
    FAILED = "failed"
    DECLINED = "declined"
    ABORTED = "aborted"


EXIT = {Outcome.MET: 0, Outcome.MISSED: 1, Outcome.FAILED: 2, Outcome.DECLINED: 3, Outcome.ABORTED: 3}


@dataclass
class DrillResult:
    run_id: str
    outcome: str
    message: str
    report: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT[self.outcome]


class Aborted(Exception):
    pass


class _Relay:
    """The front end as the drill's runbook session sees it: everything passed through, and the
    drill hears the session's events too (a runbook's run id, journaled as soon as it opens)."""

    def __init__(self, front: FrontEnd):
        self.front = front
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    async def confirm(self, step: Step, commands: list[str], ctx: Context) -> bool:
        return await self.front.confirm(step, commands, ctx)

    async def attest(self, step: Step, commands: list[str], ctx: Context, expected: str) -> bool:
        return await self.front.attest(step, commands, ctx, expected)

    async def manual_done(self, step: Step, commands: list[str], ctx: Context) -> bool:
        return await self.front.manual_done(step, commands, ctx)

    def cannot_answer(self, step: Step, ref: ClusterRef) -> str | None:
        return self.front.cannot_answer(step, ref)

    def event(self, event: str, **data: Any) -> None:
        for listen in list(self.listeners):
            listen(event, data)
        self.front.event(event, **data)


def fault_step(scenario: Scenario, ref: ClusterRef) -> Step:
    """The fault as a runbook step, for the front end's confirmation: typed cluster name in
    production, yes/no elsewhere (it is destructive everywhere)."""
    return Step(id="fault", title=f"drill fault: {scenario.fault.title}", description=scenario.description,
                kind=Kind.ACTION, commands=lambda ctx: [], run=lambda ctx: asyncio.sleep(0), destructive=True,
                confirm=Confirm.TYPE_CLUSTER if ref.production else Confirm.YES_NO)


def healthy_enough(h: ClusterHealth, baseline: ClusterHealth | None) -> bool:
    """Whether `h` shows no fault that `baseline` (the steady state) did not: as bad as it was
    then, and no member unreachable that was reachable."""
    from dbops.model import Reachability

    def down(x: ClusterHealth) -> set[str]:
        return {m.name for m in x.members if m.snapshot.reachability is not Reachability.UP}

    if baseline is None:
        return h.severity.rank <= 1 and not down(h)
    return h.severity.rank <= baseline.severity.rank and down(h) <= down(baseline)


async def poll_health(ref: ClusterRef) -> ClusterHealth:
    from dbops.poller import poll_once

    return (await poll_once([ref]))[0]


@dataclass
class DrillRunner:
    config: Config
    front: FrontEnd
    state: Path
    allow_writes: bool = False
    config_hash: str = ""
    # The console's own view of the cluster (the hub's health in the console; a poll headless):
    # detection is when *this* first showed the fault.
    health: Callable[[ClusterRef], Awaitable[ClusterHealth]] = poll_health
    probe_interval: float = 0.1
    detect_timeout: float = DETECT_TIMEOUT
    notes: dict[str, str] = field(default_factory=dict)  # phase -> the operator's note (the screen edits it)

    def __post_init__(self) -> None:
        from dbops.runbook.session import RunbookSession

        self.audit = AuditLog(self.state / "audit.jsonl")
        self.relay = _Relay(self.front)
        self.session = RunbookSession(self.config, self.relay, state=self.state, audit=self.audit, allow_writes=self.allow_writes)
        self._abort = asyncio.Event()
        self.loop: ProbeLoop | None = None
        self.health_log: list[tuple[float, bool]] = []

    # -- names -------------------------------------------------------------------------------

    def scenarios(self) -> dict[str, Scenario]:
        from dbops.drill.registry import load

        found, problems = load(self.config.drill_dirs)
        for p in problems:
            self.front.event("warning", line=p)
        return found

    def scenario(self, scenario_id: str, ref: ClusterRef) -> Scenario:
        import difflib

        found = self.scenarios()
        if scenario_id not in found:
            close = difflib.get_close_matches(scenario_id, list(found), n=1)
            raise DrillRefused(f"no drill {scenario_id!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                               + "; see `dbops drill list`")
        s = found[scenario_id]
        why = s.applies(ref)
        if why is not None:
            mine = sorted(x.id for x in found.values() if x.applies(ref) is None)
            raise DrillRefused(f"{scenario_id} does not apply to {ref.key}: {why}; drills for it: {', '.join(mine) or 'none'}")
        return s

    def refusal(self, ref: ClusterRef) -> str | None:
        """Why no drill may run on `ref`, or None."""
        from dbops.actions import read_only_reason, writes_allowed

        if not ref.env.allows_drills:
            return (f"environment {ref.environment!r} does not allow drills: set drills = true under "
                    f"[environments.{ref.environment}] (a sandbox allows them by default)")
        if not writes_allowed(ref, self.allow_writes):
            return read_only_reason(ref)
        return None

    def targets(self, ref: ClusterRef) -> tuple[float, float]:
        return self.config.drills.for_cluster(ref.environment, ref.name)

    # -- plan --------------------------------------------------------------------------------

    def plan(self, scenario: Scenario, ref: ClusterRef) -> list[str]:
        """What the drill will do, in order, with the fault's exact commands. Reads nothing."""
        from dbops.runbook.hosts import hosts_for

        ctx = DrillContext(ref, self.config, "(plan)", hosts_for(ref), self.state, log=lambda line: None)
        rto, rpo = self.targets(ref)
        performed = scenario.fault.inject is not None and scenario.fault.performed(ctx)
        probe_lines: list[str]
        try:
            probe = probe_for(ref, "<run id>")
            probe_lines = [f"probe: {probe.target}, every {self.probe_interval:g} s, each acknowledged write logged", *(f"    {c}" for c in probe.commands())]
        except ValueError as exc:
            probe_lines = [f"probe: none ({exc})"]
        lines = [f"{scenario.id}: {scenario.title} on {ref.key}", f"  {scenario.description}",
                 f"targets: RTO {rto:g} s, RPO {rpo:g} s", *probe_lines, ""]
        for n, phase in enumerate(PHASES, 1):
            lines.append(f"{n}. {phase.heading}")
            if phase is Phase.INJECT:
                lines.append(f"   {scenario.fault.title} ({'performed by dbops' if performed else 'MANUAL: you do it, then confirm'}; "
                             f"{'type the cluster name' if ref.production else 'yes/no'} to go)")
                lines += [f"   $ {c}" for c in scenario.fault.commands(ctx)]
            if phase is Phase.RECOVER:
                for r in scenario.recovery:
                    lines.append(f"   runbook {r.runbook}" + (f": {r.why}" if r.why else "") + " (its own plan and confirmations)")
        return lines

    # -- run ---------------------------------------------------------------------------------

    def abort(self) -> None:
        """Stop the drill: the fault is healed (if the recovery has not done it) and the restore
        phase runs. From any thread of the loop (the console's key)."""
        self._abort.set()

    def _emit(self, event: str, **data: Any) -> None:
        self.front.event(event, **data)

    async def run(self, scenario_id: str, cluster: str) -> DrillResult:
        from dbops.runbook.session import SessionError

        try:
            ref = self.session.cluster(cluster)
            scenario = self.scenario(scenario_id, ref)
        except (SessionError, DrillRefused) as exc:
            return DrillResult("", Outcome.FAILED, str(exc))
        why = self.refusal(ref)
        if why is not None:
            return DrillResult("", Outcome.FAILED, f"refused: {why}")
        return await self._run(scenario, ref)

    async def resume(self, run_id: str) -> DrillResult:
        """Continue a drill after dbops stopped mid-way, from its journal: the phases done stay
        done; a recovery runbook that was interrupted is resumed (its own journal); the probe
        writes again, numbering on."""
        from dbops.runbook.hosts import hosts_for
        from dbops.runbook.session import SessionError

        try:
            journal = DrillJournal.open(self.state, run_id)
        except DrillJournalError as exc:
            return DrillResult(run_id, Outcome.FAILED, str(exc))
        data = journal.data
        if data.get("end"):
            return DrillResult(run_id, Outcome.FAILED, f"drill {run_id} is over ({data['end']}): nothing to resume; "
                                                       f"`dbops drill report {run_id}` shows it")
        try:
            ref = self.session.cluster(f"{data['environment']}/{data['cluster']}")
            scenario = self.scenario(data["scenario"], ref)
        except (SessionError, DrillRefused) as exc:
            return DrillResult(run_id, Outcome.FAILED, str(exc))
        why = self.refusal(ref)
        if why is not None:
            return DrillResult(run_id, Outcome.FAILED, f"refused: {why}")
        self._abort = asyncio.Event()
        self.loop, self.health_log = None, []
        ctx = DrillContext(ref, self.config, run_id, hosts_for(ref), journal.dir,
                           log=lambda line: self._emit("drill-log", line=line),
                           facts=data["facts"], acks=lambda: AckLog.read(journal.acks_path),
                           recovery_runs=data["recovery"])
        d = _Drill(self, scenario, ref, ctx, journal)
        ctx.run_runbook = lambda runbook, params: d.run_runbook(runbook, params, phase=d.current.value)
        self._emit("drill-log", line=f"resuming drill {run_id}: done so far: "
                   + (", ".join(p for p, v in data["phases"].items() if v.get("state") == "done") or "nothing"))
        try:
            return await d.run(resumed=True)
        finally:
            journal.close()

    async def amend_notes(self, result: DrillResult) -> DrillResult:
        """The report of a drill that has ended, written again with the notes as they are now (an
        operator writes them after the drill as often as during it); audited and shipped again."""
        journal = DrillJournal.open(self.state, result.run_id)
        try:
            if not journal.data.get("end"):
                raise DrillJournalError(f"drill {result.run_id} has not ended: its report is written at its end")
            journal.data["notes"] = dict(self.notes)
            journal.save()
            amended = write_report(self, journal, result.outcome, result.message, amended=True)
        finally:
            journal.close()
        await asyncio.to_thread(ship_report, self, result.run_id, list(amended.files.values()))
        return amended

    async def _run(self, scenario: Scenario, ref: ClusterRef) -> DrillResult:
        from dbops.runbook.hosts import hosts_for

        run_id = new_drill_id()
        self._abort = asyncio.Event()
        self.loop, self.health_log = None, []
        rto_target, rpo_target = self.targets(ref)
        journal = DrillJournal.create(self.state, run_id, {
            "scenario": scenario.id, "title": scenario.title, "environment": ref.environment, "cluster": ref.name,
            "operator": _operator(), "started": time.time(), "dbops_version": _version(),
            "config_hash": self.config_hash, "targets": {"rto_seconds": rto_target, "rpo_seconds": rpo_target},
        })
        ctx = DrillContext(ref, self.config, run_id, hosts_for(ref), journal.dir,
                           log=lambda line: self._emit("drill-log", line=line),
                           acks=lambda: AckLog.read(journal.acks_path))
        d = _Drill(self, scenario, ref, ctx, journal)
        ctx.run_runbook = lambda runbook, params: d.run_runbook(runbook, params, phase=d.current.value)
        try:
            return await d.run()
        finally:
            journal.close()


def ship_report(runner: DrillRunner, run_id: str, files: list[Path]) -> None:
    """The audit log (recording the report's SHA-256), then the report beside it."""
    from dbops.audit_ship import ship_drill_report, ship_reporting

    shipping = runner.config.audit.ship
    for shipped in (ship_reporting(runner.audit.path, shipping), ship_drill_report(files, shipping, run_id)):
        if shipped is not None:
            ok, message = shipped
            runner._emit("audit-shipped", ok=ok, message=message)


def _operator() -> dict[str, Any]:
    """Who runs the drill (the audit log's identity), with the user and host a report names."""
    import socket

    from dbops.audit import operator_identity

    ident = operator_identity()
    return {"user": ident.get("sudo_user") or ident.get("login") or f"uid {ident.get('uid')}", "host": socket.gethostname(), **ident}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dbops")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _Drill:
    """One run's moving parts; DrillRunner keeps what is shared between runs."""

    def __init__(self, runner: DrillRunner, scenario: Scenario, ref: ClusterRef, ctx: DrillContext, journal: DrillJournal):
        self.r = runner
        self.s = scenario
        self.ref = ref
        self.ctx = ctx
        self.j = journal
        self.marks: dict[str, float] = journal.data["marks"]
        self.acks: AckLog | None = None
        self.baseline: ClusterHealth | None = None
        self.watch: asyncio.Task[None] | None = None
        self.fault_injected = False
        self.recovered_by_runbooks = False
        self.outcome: str | None = None
        self.message = ""
        self.current = Phase.ANNOUNCE

    # -- bookkeeping -------------------------------------------------------------------------

    def mark(self, name: str, t: float | None = None) -> float:
        t = time.time() if t is None else t
        self.marks[name] = t
        self.j.save()
        self.r._emit("drill-mark", name=name, t=t)
        return t

    def log(self, line: str) -> None:
        self.ctx.log(line)

    def audit_intent(self, action: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.r.audit.intent(action=action, environment=self.ref.environment, cluster=self.ref.name,
                                   params=params or {}, run_id=self.ctx.run_id, step=action.rpartition(".")[2])

    async def phase(self, phase: Phase, body: Callable[[], Awaitable[str]]) -> None:
        """Run one phase: its start and end journaled and announced; an abort between phases."""
        if self.r._abort.is_set() and phase not in (Phase.RESTORE, Phase.REPORT):
            raise Aborted("aborted by the operator")
        started = time.time()
        self.current = phase
        self.j.phase(phase.value, state="running", started=started)
        self.r._emit("drill-phase", phase=phase, state="running", detail="")
        try:
            detail = await body()
        except Exception as exc:
            state = "aborted" if isinstance(exc, Aborted) else "failed"
            self.j.phase(phase.value, state=state, finished=time.time(), detail=one_line(exc))
            self.r._emit("drill-phase", phase=phase, state=state, detail=one_line(exc))
            raise
        self.j.phase(phase.value, state="done", finished=time.time(), detail=detail)
        self.r._emit("drill-phase", phase=phase, state="done", detail=detail)

    def on_attempt(self, a: Attempt) -> None:
        self.j.record_attempt(a)
        self.r._emit("drill-attempt", attempt=a)

    # -- the run -----------------------------------------------------------------------------

    async def run(self, resumed: bool = False) -> DrillResult:
        start = self.r.audit.intent(action=f"drill.{self.s.id}", environment=self.ref.environment, cluster=self.ref.name,
                                    params={"scenario": self.s.id}, run_id=self.ctx.run_id,
                                    step="drill-resumed" if resumed else "drill")
        try:
            if self.done(Phase.INJECT):
                # Resumed after the fault: the probe and the health watch start again where
                # they were (the fault and the marks come from the journal).
                await self.start_probe(resumed=True)
            for phase, body in ((Phase.ANNOUNCE, self.announce), (Phase.STEADY, self.steady), (Phase.INJECT, self.inject),
                                (Phase.DETECT, self.detect), (Phase.RECOVER, self.recover), (Phase.VERIFY, self.verify)):
                if not self.done(phase):
                    await self.phase(phase, body)
            await self._measure()
        except _Declined as exc:
            self.outcome, self.message = Outcome.DECLINED, str(exc)
        except Aborted as exc:
            self.outcome, self.message = Outcome.ABORTED, str(exc)
        except Exception as exc:  # a phase failed: the drill failed, and the restore still runs
            self.outcome, self.message = Outcome.FAILED, one_line(exc)
        try:
            await self.phase(Phase.RESTORE, self.restore)
        except Exception as exc:  # said in the report; the first failure stays the drill's message
            if self.outcome in (None, Outcome.MET, Outcome.MISSED):
                self.outcome, self.message = Outcome.FAILED, f"return to the steady state failed: {one_line(exc)}"
        result = await self.report()
        self.r.audit.result(start, outcome="ok" if result.outcome in (Outcome.MET, Outcome.MISSED) else result.outcome,
                            error=None if result.outcome in (Outcome.MET, Outcome.MISSED) else result.message,
                            detail={"report_sha256": result.report.get("sha256"), "outcome": result.outcome})
        await asyncio.to_thread(self._ship, list(result.files.values()))
        self.r._emit("drill-over", result=result)
        return result

    def _ship(self, files: list[Path]) -> None:
        ship_report(self.r, self.ctx.run_id, files)

    # -- phases ------------------------------------------------------------------------------

    async def announce(self) -> str:
        for line in self.r.plan(self.s, self.ref):
            self.log(line)
        return f"drill {self.ctx.run_id} announced: {self.s.id} on {self.ref.key} by {self.j.data['operator'].get('user', '?')}"

    async def steady(self) -> str:
        self.baseline = await self.r.health(self.ref)
        if not healthy_enough(self.baseline, None):
            problems = "; ".join(self.baseline.problems[:3]) or self.baseline.severity.name
            raise DrillRefused(f"{self.ref.key} is not in a steady state ({problems}): a drill starts from a healthy cluster")
        lines = await self.s.prepare(self.ctx)
        self.j.data["facts"] = self.ctx.facts
        self.j.save()
        await self.start_probe(resumed=False)
        assert self.r.loop is not None and self.ctx.probe is not None
        probe = self.ctx.probe
        deadline = time.monotonic() + STEADY_TIMEOUT
        while True:
            recent = self.r.loop.attempts[-STEADY_ATTEMPTS:]
            if len(recent) == STEADY_ATTEMPTS and all(a.ok for a in recent):
                break
            if time.monotonic() > deadline:
                last = next((a.error for a in reversed(self.r.loop.attempts) if a.error), "no attempt")
                raise DrillRefused(f"the probe could not write steadily for {STEADY_TIMEOUT:.0f}s: {last}")
            await asyncio.sleep(self.r.probe_interval)
        self.watch = asyncio.get_running_loop().create_task(self._watch_health(), name="drill-health")
        return "; ".join([f"healthy ({self.baseline.severity.name}), probe writing to {probe.target}", *lines])

    def done(self, phase: Phase) -> bool:
        return bool(self.j.data["phases"].get(phase.value, {}).get("state") == "done")

    async def start_probe(self, *, resumed: bool) -> None:
        """The probe open and writing; resumed, numbering on after every write already tried
        (a write in flight when dbops died may have landed: its number is never reused)."""
        if self.r.loop is not None:
            return
        if self.ctx.probe is None:
            self.ctx.probe = probe_for(self.ref, self.ctx.run_id)
        probe = self.ctx.probe
        self.j.data["probe_target"] = probe.target
        if resumed:
            try:
                await asyncio.wait_for(probe.open(), 30)
            except Exception as exc:  # the service may still be down: the loop records the failures
                self.log(f"the probe cannot open yet ({one_line(exc)}); it keeps trying")
        else:
            await asyncio.wait_for(probe.open(), 30)
        tried = [a.seq for a in self.j.attempts()] + [a.seq for a in AckLog.read(self.j.acks_path)]
        self.acks = AckLog(self.j.acks_path)
        self.r.loop = ProbeLoop(probe, self.acks, first_seq=max(tried, default=0) + 1, on_attempt=self.on_attempt,
                                interval=self.r.probe_interval)
        self.r.loop.start()
        self.ctx.hold_probe = self.r.loop.hold
        if resumed:
            self.baseline = None
            self.watch = asyncio.get_running_loop().create_task(self._watch_health(), name="drill-health")

    async def _watch_health(self) -> None:
        """dbops' own view of the cluster, once a second, for the time to detection."""
        while True:
            try:
                h = await asyncio.wait_for(self.r.health(self.ref), self.ref.timeout * 3 + 5)
                ok = healthy_enough(h, self.baseline)
            except Exception:  # a poll that cannot complete is the console showing trouble
                ok = False
            t = time.time()  # when the poll's answer was there to show, not when it was asked
            self.r.health_log.append((t, ok))
            if "fault" in self.marks and "detected" not in self.marks:
                seen = measure.first_detection(self.r.health_log, self.marks["fault"])
                if seen is not None:
                    self.mark("detected", seen)
            await asyncio.sleep(HEALTH_INTERVAL)

    async def approved_by(self, step: Step) -> dict[str, Any] | None:
        """The two-person rule (approvals = 2): the drill's plan, published in the coordination
        database, approved by another operator before its fault (the recovery runbooks ask for
        their own). None where the rule does not apply; raises when it is not approved in time."""
        from dbops.runbook.approvals import ApprovalError, current_operator, plan_hash, store_for

        env = self.ref.env
        if env.approvals < 2:
            return None
        store = store_for(self.r.config.locks.postgres, self.ref)
        if store is None:
            raise DrillRefused(f"{self.ref.environment} needs a second operator's approval, and no approval store "
                               "([locks.postgres]) is configured here")
        text = "\n".join(self.r.plan(self.s, self.ref) + [f"victim facts: {json_facts(self.ctx.facts)}"])
        digest = plan_hash(text)
        me = current_operator()
        ttl = env.approval_ttl_seconds
        try:
            state = await store.approval_state(self.ctx.run_id, digest, me)
            if not state.approved:
                await store.request(self.ctx.run_id, environment=self.ref.environment, cluster=self.ref.name,
                                    runbook=f"drill:{self.s.id}", plan_hash=digest, plan_text=text, requester=me, ttl_seconds=ttl)
                who = f"any operator other than {me.name} (uid {me.uid}) — `dbops runbook approve {self.ctx.run_id}`"
                self.r._emit("approval-waiting", step=step, run_id=self.ctx.run_id, plan_hash=digest, requester=me, who=who, ttl=ttl)
                deadline = time.monotonic() + ttl
                while True:
                    state = await store.approval_state(self.ctx.run_id, digest, me)
                    if state.status != "waiting" or self.r._abort.is_set():
                        break
                    if time.monotonic() >= deadline:
                        raise DrillRefused(f"no second operator approved the drill's plan within {ttl}s: nothing was injected")
                    await asyncio.sleep(2.0)
        except ApprovalError as exc:
            raise DrillRefused(f"the approval cannot be checked: {exc}: nothing was injected") from None
        if self.r._abort.is_set():
            raise Aborted("aborted by the operator while waiting for an approval")
        if not state.approved:
            raise DrillRefused(f"{state.message}: nothing was injected")
        self.r._emit("approved", step=step, approver=state.approver, plan_hash=digest, message=state.message)
        return state.approver.as_dict() if state.approver is not None else None

    async def inject(self) -> str:
        fault = self.s.fault
        step = fault_step(self.s, self.ref)
        commands = fault.commands(self.ctx)
        rb_ctx = Context(self.ref, {}, run_id=self.ctx.run_id)
        performed = fault.inject is not None and fault.performed(self.ctx)
        approver = await self.approved_by(step)
        if not await self.r.front.confirm(step, commands, rb_ctx):
            self.r.audit.abort(action=f"drill.{self.s.id}.fault", environment=self.ref.environment, cluster=self.ref.name,
                               run_id=self.ctx.run_id, step="fault", reason="the operator declined the fault")
            raise _Declined("the operator declined the fault: nothing was injected")
        intent = self.audit_intent(f"drill.{self.s.id}.fault", {"fault": fault.title, "commands": commands,
                                                                  **({"approved_by": approver} if approver else {})})
        try:
            if performed:
                assert fault.inject is not None
                t = time.time()
                # Attempted: whatever happens next, the way back heals it (a kill whose check
                # failed may still have killed).
                self.fault_injected = True
                detail = await fault.inject(self.ctx)
            else:
                manual_step = Step(id="fault", title=f"drill fault (manual): {fault.title}", description=self.s.description,
                                   kind=Kind.MANUAL, commands=lambda ctx: commands)
                if not await self.r.front.manual_done(manual_step, commands, rb_ctx):
                    raise _Declined("the manual fault was not confirmed done")
                t = time.time()  # the operator's confirmation: the best time dbops has of a fault it did not make
                detail = "done by hand, confirmed by the operator"
        except _Declined:
            self.r.audit.result(intent, outcome="declined")
            raise
        except Exception as exc:
            self.r.audit.result(intent, outcome="failed", error=one_line(exc))
            raise
        self.fault_injected = True
        self.mark("fault", self.ctx.marks.get("fault", t))
        self.r.audit.result(intent, outcome="ok", detail={"detail": detail})
        return detail

    async def detect(self) -> str:
        if not self.s.detectable:
            return "dbops' health does not show this kind of fault (the data changed, the servers did not): no detection time"
        deadline = time.monotonic() + self.r.detect_timeout
        while "detected" not in self.marks:
            if self.r._abort.is_set():
                raise Aborted("aborted by the operator")
            if time.monotonic() > deadline:
                return f"dbops' health did not show the fault within {self.r.detect_timeout:.0f}s (no detection time)"
            await asyncio.sleep(0.2)
        return f"dbops showed the fault {self.marks['detected'] - self.marks['fault']:.1f}s after it"

    async def recover(self) -> str:
        lines = []
        earlier = [e for e in self.j.data["recovery"] if e.get("phase", "recover") == "recover"]
        for n, r in enumerate(self.s.recovery):
            if self.r._abort.is_set():
                raise Aborted("aborted by the operator")
            if n < len(earlier):  # resumed: this one ran before dbops stopped
                if await self.resume_entry(earlier[n]):
                    lines.append(f"{earlier[n]['runbook']} ok (before the resume)")
                    continue
            raw = await r.params(self.ctx) if r.params is not None else {}
            if n == 0 and "decision" not in self.marks:
                self.mark("decision")
            if r.when is not None and not r.when(self.ctx):
                lines.append(f"{r.runbook or r.why}: not needed here")
                continue
            if r.do is not None:
                lines.append(await self.host_step(r.why, r.do))
                continue
            await self.run_runbook(r.runbook, raw)
            lines.append(f"{r.runbook} ok")
        self.recovered_by_runbooks = True
        if not self.s.recovery:
            return "no runbook: the service recovers by itself (the probe shows when)"
        return "; ".join(lines)

    def _watch_opened(self, entry: dict[str, Any]) -> Callable[[], None]:
        """Journal the runbook's run id when its run opens: a drill resumed after dbops died
        mid-runbook resumes that run rather than starting another."""

        def listen(event: str, data: dict[str, Any]) -> None:
            if event == "opened" and not entry.get("run_id"):
                entry["run_id"] = data["run_id"]
                self.j.save()

        self.r.relay.listeners.append(listen)
        return lambda: self.r.relay.listeners.remove(listen)

    async def resume_entry(self, entry: dict[str, Any]) -> bool:
        """A recovery step journaled before a resume: True when it is complete (done then, or
        its interrupted runbook resumed to the end now); False to run it again."""
        from dbops.runbook.journal import Journal, JournalError
        from dbops.runbook.session import SessionError

        if entry.get("outcome") == "ok":
            return True
        run_id = entry.get("run_id")
        if entry.get("outcome") is not None or not run_id or entry["runbook"].startswith("("):
            return False  # it failed or was refused: run again (a host step is safe to repeat)
        try:
            end = Journal.open(self.r.state, run_id).read().end
        except JournalError:
            return False  # it never started a journal: nothing ran
        if end == "finished":
            entry.update(outcome="ok", message="finished before dbops stopped")
            self.j.save()
            return True
        try:
            result = await self.r.session.resume(run_id)
        except SessionError as exc:
            raise RuntimeError(f"{entry['runbook']} (run {run_id}) cannot be resumed: {exc.message}") from None
        entry.update(outcome=result.code.name.lower(), message=result.message)
        self.j.save()
        if result.code is not ExitCode.OK:
            raise RuntimeError(f"{entry['runbook']} did not complete on resume: {result.message}")
        return True

    async def host_step(self, title: str, do: Callable[[DrillContext], Awaitable[str]]) -> str:
        """A recovery step that is not a runbook (restart a broker): confirmed, audited."""
        step = Step(id="recover", title=f"drill recovery: {title}", description=title, kind=Kind.ACTION,
                    commands=lambda ctx: [], run=lambda ctx: asyncio.sleep(0), destructive=True,
                    confirm=Confirm.TYPE_CLUSTER if self.ref.production else Confirm.YES_NO)
        if not await self.r.front.confirm(step, [title], Context(self.ref, {}, run_id=self.ctx.run_id)):
            raise _Declined(f"the operator declined: {title}")
        intent = self.audit_intent(f"drill.{self.s.id}.recover", {"step": title})
        try:
            detail = await do(self.ctx)
        except Exception as exc:
            self.r.audit.result(intent, outcome="failed", error=one_line(exc))
            raise
        self.r.audit.result(intent, outcome="ok", detail={"detail": detail})
        self.j.data["recovery"].append({"runbook": f"({title})", "run_id": self.ctx.run_id, "outcome": "ok", "message": detail})
        self.j.save()
        return detail

    async def run_runbook(self, runbook_id: str, raw: dict[str, str], phase: str = "recover") -> None:
        """One runbook through the drill's session, recorded in the journal (the report lists
        it with its audit records); raises when it does not complete."""
        from dbops.runbook.session import SessionError

        book = self.r.session.runbook(runbook_id, self.ref)
        params = self.r.session.params(book, raw)
        entry: dict[str, Any] = {"runbook": runbook_id, "phase": phase, "params": {k: str(v) for k, v in params.items()}}
        self.j.data["recovery"].append(entry)
        self.ctx.recovery_runs = self.j.data["recovery"]
        self.j.save()
        opened = self._watch_opened(entry)
        try:
            result = await self.r.session.run(book, self.ref, params)
        except SessionError as exc:
            entry.update(run_id=exc.run_id, outcome="refused", message=exc.message)
            self.j.save()
            raise RuntimeError(f"{runbook_id} refused: {exc.message}") from None
        finally:
            opened()
        entry.update(run_id=result.run_id, outcome=result.code.name.lower(), message=result.message)
        self.j.save()
        if result.code is ExitCode.ABORTED:
            if self.r._abort.is_set():  # the front end declined it because the operator aborted the drill
                raise Aborted(f"aborted by the operator during {runbook_id}: {result.message}")
            raise _Declined(f"{runbook_id}: {result.message}")
        if result.code is not ExitCode.OK:
            raise RuntimeError(f"{runbook_id} did not complete: {result.message}")

    async def _probe_back(self) -> None:
        """The probe writing and reading again after the recovery (bounded)."""
        loop = self.r.loop
        assert loop is not None
        deadline = time.monotonic() + BACK_TIMEOUT
        while True:
            recent = loop.attempts[-3:]
            if recent and all(a.ok for a in recent) and recent[0].t > self.marks.get("fault", 0):
                return
            if time.monotonic() > deadline:
                last = next((a.error for a in reversed(loop.attempts) if a.error), "?")
                raise RuntimeError(f"the probe did not write again within {BACK_TIMEOUT:.0f}s of the recovery: {last}")
            await asyncio.sleep(0.2)

    async def verify(self) -> str:
        verdicts: list[Verdict] = []
        if self.s.rto == "availability":
            await self._probe_back()
        verdicts += await self.s.verify(self.ctx)
        if "verified" in self.ctx.marks:
            self.mark("verified", self.ctx.marks["verified"])
        self.j.data["verification"] = [{"title": v.detail.partition(":")[0], "ok": v.ok, "detail": v.detail} for v in verdicts]
        self.j.save()
        bad = [v for v in verdicts if not v.ok]
        if bad:
            raise RuntimeError("verification failed: " + "; ".join(v.detail for v in bad))
        return "; ".join(v.detail for v in verdicts) or "the probe writes and reads on the recovered service"

    async def restore(self) -> str:
        lines = []
        # Measured before the way back removes anything (a scratch copy, the probe's data); a
        # drill that failed or was aborted is measured as far as it went.
        # Nothing is written or watched any more: a write still in flight ends (and counts)
        # before anything is measured, and no detection is marked after the drill ended.
        if self.watch is not None:
            self.watch.cancel()
        if self.r.loop is not None:
            await self.r.loop.stop()
        if "measured" not in self.j.data:
            await self._measure()
        # An aborted drill whose fault the recovery did not undo: heal it first.
        if self.fault_injected and not self.recovered_by_runbooks and self.s.fault.heal is not None:
            intent = self.audit_intent(f"drill.{self.s.id}.heal", {"fault": self.s.fault.title})
            try:
                lines.append(await self.s.fault.heal(self.ctx))
                self.r.audit.result(intent, outcome="ok")
            except Exception as exc:
                self.r.audit.result(intent, outcome="failed", error=one_line(exc))
                raise
        if self.fault_injected:
            lines += await self.s.restore(self.ctx)
        probe = self.ctx.probe
        if probe is not None:
            try:
                await asyncio.wait_for(probe.close(drop=True), 60)
                lines.append(f"probe data removed ({probe.target})")
            except Exception as exc:  # the report says so; the table/stream is named for removal by hand
                lines.append(f"probe data NOT removed ({probe.target}): {one_line(exc)}")
        if self.acks is not None:
            self.acks.close()
        return "; ".join(x for x in lines if x) or "nothing to restore"

    async def _measure(self) -> None:
        """RTO and RPO, before the probe's data is dropped."""
        m: dict[str, Any] = {}
        fault = self.marks.get("fault")
        acks = AckLog.read(self.j.acks_path)
        m["acked"] = len(acks)
        if fault is None or self.ctx.probe is None:
            self.j.data["measured"] = {**m, "rto_note": "no fault was injected: nothing measured", "rpo_note": ""}
            self.j.save()
            return
        if not self.done(Phase.VERIFY):
            # Aborted or failed before the recovery was verified: whatever the probe saw, the
            # drill did not show the service recovered, and an RTO would say it did.
            rto = measure.Rto(None, f"no RTO: the drill ended ({self.outcome or 'unfinished'}) before the recovery was verified", None)
        elif self.s.rto == "data":
            rto = measure.data_rto(fault, self.marks.get("verified"), "the lost data")
        else:
            rto = measure.availability_rto(self.j.attempts(), fault, until=None)
        if rto.recovered_at is not None and "recovered" not in self.marks:
            self.mark("recovered", rto.recovered_at)
        m.update(rto_seconds=rto.seconds, rto_note=rto.note)
        if "detected" in self.marks:
            m["detection_seconds"] = self.marks["detected"] - fault
        if "decision" in self.marks:
            m["decision_seconds"] = self.marks["decision"] - fault
        try:
            recovered = await self.s.recovered(self.ctx) if self.s.recovered is not None else self.ctx.probe
            expected = self.s.expected(self.ctx, acks) if self.s.expected is not None else acks
            # The probe's own connection is shared with its loop: hold the loop while it reads.
            async with self.ctx.hold_probe():
                present = await asyncio.wait_for(recovered.present([a.seq for a in acks]), 120)
            r = measure.rpo(acks, present, fault, expected=expected)
            note = r.note
            if r.lost and r.lost == len(expected):
                # Everything the probe wrote was lost: the loss may reach further back than the
                # probe ran, and the report must not read as a bound it is not.
                note += (f"; every write the probe made was lost, so the real window may be longer than the "
                         f"{fault - min(a.t for a in expected):.1f}s the probe ran before the fault")
            m.update(rpo_lost=r.lost, rpo_window_seconds=r.window_seconds, newest_lost_age_seconds=r.newest_lost_age_seconds,
                     rpo_note=note)
            self.j.data["lost"] = [{"seq": a.seq, "acked_at": a.t} for a in r.lost_writes]
            if self.s.unexpected is not None:
                extra = sorted(present & {a.seq for a in self.s.unexpected(self.ctx, acks)})
                m["unexpected"] = len(extra)
                self.j.data["verification"].append({
                    "title": "no write after the restore point", "ok": not extra,
                    "detail": f"{len(extra)} writes acknowledged after the restore point are in the copy" if extra
                    else "none of the writes acknowledged after the restore point is in the copy"})
            if recovered is not self.ctx.probe:
                await recovered.close(drop=False)
        except Exception as exc:  # the report says the RPO could not be read, never a guess
            m.update(rpo_lost=None, rpo_note=f"the recovered service could not be read: {one_line(exc)}")
        rto_target, rpo_target = self.j.data["targets"]["rto_seconds"], self.j.data["targets"]["rpo_seconds"]
        m["rto_met"] = m.get("rto_seconds") is not None and m["rto_seconds"] <= rto_target
        m["rpo_met"] = m.get("rpo_lost") is not None and m.get("rpo_window_seconds", 0) <= rpo_target
        self.j.data["measured"] = m
        self.j.save()

    async def report(self) -> DrillResult:
        """The report's three files (data, Markdown, HTML), their SHA-256 in the audit log."""
        data = self.j.data
        m = data.get("measured", {})
        if self.outcome is None:
            self.outcome = Outcome.MET if m.get("rto_met") and m.get("rpo_met") else Outcome.MISSED
            self.message = _summary(m, data["targets"])
        self.current = Phase.REPORT
        self.r._emit("drill-phase", phase=Phase.REPORT, state="running", detail="")
        now = time.time()
        data["end"], data["finished"] = self.outcome, now
        # The report is its own last phase: done as it is written (what it shows is what happened).
        self.j.phase(Phase.REPORT.value, state="done", started=now, finished=now, detail=str(self.j.dir / "report.html"))
        result = write_report(self.r, self.j, self.outcome, self.message or "")
        self.r._emit("drill-phase", phase=Phase.REPORT, state="done", detail=str(result.files["html"]))
        return result


def write_report(runner: DrillRunner, journal: DrillJournal, outcome: str, message: str, *, amended: bool = False) -> DrillResult:
    """Write a drill's report (JSON, Markdown, HTML) from its journal and the operator's notes, and
    audit it with the files' SHA-256 (an amendment, when notes came after the drill's end)."""
    import json

    from dbops.drill.journal import write_atomic
    from dbops.drill.report import render_html, render_markdown

    data = journal.data
    files = {"json": journal.dir / "report.json", "md": journal.dir / "report.md", "html": journal.dir / "report.html"}
    report = build_report(journal, runner.notes, outcome, message, runner.audit.path)
    md, html = render_markdown(report), render_html(report)
    write_atomic(files["md"], md)
    write_atomic(files["html"], html)
    report["sha256"] = {"md": _sha(md), "html": _sha(html)}
    write_atomic(files["json"], json.dumps(report, indent=1, default=str))
    params: dict[str, Any] = {"files": [str(p) for p in files.values()]}
    if amended:
        params["amended"] = "the operator's notes, after the drill's end"
    intent = runner.audit.intent(action=f"drill.{data['scenario']}.report", environment=data["environment"], cluster=data["cluster"],
                                 params=params, run_id=journal.dir.name, step="report")
    runner.audit.result(intent, outcome="ok", detail={"report_md_sha256": report["sha256"]["md"],
                                                      "report_html_sha256": report["sha256"]["html"]})
    return DrillResult(journal.dir.name, outcome, message, report, files)


class _Declined(Exception):
    pass


def json_facts(facts: dict[str, Any]) -> str:
    import json

    return json.dumps(facts, sort_keys=True, default=str)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _summary(m: dict[str, Any], targets: dict[str, float]) -> str:
    rto = m.get("rto_seconds")
    rto_s = f"RTO {rto:.1f}s" if rto is not None else "RTO not measured"
    lost = m.get("rpo_lost")
    rpo_s = (f"RPO {lost} writes lost ({m.get('rpo_window_seconds', 0):.1f}s of data)" if lost else "RPO 0 (no acknowledged write lost)") \
        if lost is not None else "RPO not measured"
    return (f"{rto_s} (target {targets['rto_seconds']:g}s, {'met' if m.get('rto_met') else 'MISSED'}); "
            f"{rpo_s} (target {targets['rpo_seconds']:g}s, {'met' if m.get('rpo_met') else 'MISSED'})")


def build_report(j: DrillJournal, notes: dict[str, str], outcome: str, message: str, audit_path: Path) -> dict[str, Any]:
    """The report's data (dbops.drill.report renders it) from the run's journal and files."""
    from dbops.audit import read_records

    data = j.data
    phases = []
    for p in PHASES:
        d = data["phases"].get(p.value, {})
        phases.append({"name": p.value, "title": p.heading, "started": d.get("started"), "finished": d.get("finished"),
                       "outcome": {"running": "failed"}.get(d.get("state", "pending"), d.get("state", "pending")),
                       "detail": d.get("detail", ""), "note": notes.get(p.value, data["notes"].get(p.value, ""))})
    unread: list[dict[str, Any]] = []
    try:
        records = read_records(audit_path, strict=False)
    except Exception as exc:  # the report still renders, and says why its steps have no audit numbers
        records = []
        unread = [{"title": "audit log", "ok": False,
                   "detail": f"{audit_path} could not be read ({one_line(exc)}): the runbook steps have no audit sequence numbers"}]
    runbooks = []
    for r in data.get("recovery", []):
        mine = [x for x in records if x.get("run_id") == r.get("run_id")]
        steps: dict[str, dict[str, Any]] = {}
        for x in mine:
            key = x.get("step") or x.get("action") or "?"
            s = steps.setdefault(key, {"title": key, "outcome": "", "audit_seqs": []})
            s["audit_seqs"].append(x.get("seq"))
            if x.get("phase") in ("result", "abort"):
                s["outcome"] = x.get("outcome") or ""
        runbooks.append({"runbook": r["runbook"], "run_id": r.get("run_id"), "outcome": r.get("outcome", "not run"),
                         "message": r.get("message", ""), "steps": list(steps.values())})
    m = data.get("measured", {})
    return {
        "drill": {"run_id": data["run_id"], "scenario": data["scenario"], "title": data["title"], "cluster": data["cluster"],
                  "environment": data["environment"], "operator": data["operator"], "started": data["started"],
                  "finished": data.get("finished"), "dbops_version": data["dbops_version"], "config_hash": data["config_hash"],
                  "outcome": outcome, "message": message},
        "targets": data["targets"],
        "measured": {"rto_seconds": m.get("rto_seconds"), "rto_note": m.get("rto_note", ""),
                     "detection_seconds": m.get("detection_seconds"), "decision_seconds": m.get("decision_seconds"),
                     "rpo_lost": m.get("rpo_lost"), "rpo_window_seconds": m.get("rpo_window_seconds"),
                     "newest_lost_age_seconds": m.get("newest_lost_age_seconds"), "acked": m.get("acked", 0),
                     "rto_met": m.get("rto_met"), "rpo_met": m.get("rpo_met"), "rpo_note": m.get("rpo_note", ""),
                     "unexpected": m.get("unexpected")},
        "phases": phases,
        "markers": {k: data["marks"].get(k) for k in ("fault", "detected", "decision", "recovered")},
        "probe": {"target": data.get("probe_target", ""),
                  "attempts": [{"t": a.t, "seq": a.seq, "ok": a.ok, **({"error": a.error} if a.error else {})} for a in j.attempts()]},
        "runbooks": runbooks,
        "verification": data.get("verification", []) + unread,
        "notes": {**data["notes"], **notes},
        "lost": data.get("lost", []),
        "facts": data.get("facts", {}),
    }
