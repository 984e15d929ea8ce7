"""One runbook session: everything between "the operator named a runbook" and "the run is over",
for every front end alike (`dbops runbook ...`, the console's wizard, drills).

A front end only presents: it turns its input into names and raw parameter values, answers the
prompts (its FrontEnd is the executor's Confirmer) and shows events. The session resolves the
cluster and the runbook, parses and validates the parameters (live choices too: a value must be
one the servers offer now), opens and closes the runbook's resources, takes the lock(s), journals,
runs or resumes (the two-person rule included: dbops.runbook.approvals), and ships the audit log
at the end. A refusal is a SessionError: one line, credentials scrubbed, the same words whichever
front end shows it.

Events a front end hears through FrontEnd.event(name, **data), on whatever thread runs the session:

- the executor's (see dbops.runbook.executor): check, confirm, started, done, verified, failed,
  skipped, reverified, overridden, resumed, aborted, finished, attest, approval-waiting,
  approved, approval-refused;
- the session's own:
  opened (runbook, ref, run_id, resumed)  a run or resume begins, before anything is read
  log (line)                              a step's own progress line (ctx.log)
  progress (done, total, unit)            a long step's amount done (ctx.progress)
  note (line)                             about the lock (which one, a fallback)
  warning (line)                          a runbook module that did not load
  outcome (result)                        the run is over: its RunResult, before the shipping
  audit-shipped (ok, message)             the audit log's shipping ([audit.ship]) after a run
"""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dbops.audit import AuditLog
from dbops.runbook.executor import Confirmer, Executor, ExitCode, Plan, RunResult
from dbops.runbook.model import Context, Param, Runbook, Step
from dbops.secrets import scrub_text

if TYPE_CHECKING:
    from dbops.config import ClusterRef, Config

T = TypeVar("T")


class SessionError(Exception):
    """Refused, and nothing ran (or the run could not start): one line for the operator with any
    credential scrubbed, and the exit code a command line ends with."""

    def __init__(self, message: str, code: ExitCode = ExitCode.REFUSED, run_id: str | None = None) -> None:
        self.message = scrub_text(message)
        self.code = code
        self.run_id = run_id  # set once the run had an id (a held lock refuses a run that had one)
        super().__init__(self.message)


class MissingParam(SessionError):
    """A required parameter was not given: each front end says how to give it (a flag, a field)."""

    def __init__(self, book: Runbook, param: Param) -> None:
        self.book, self.param = book, param
        super().__init__(f"{book.id} needs {param.name} ({param.description})")


class FrontEnd(Confirmer, Protocol):
    """What a session needs from the one who drives it: the executor's prompts (Confirmer), the
    events, and whether a confirmation could be answered when it comes."""

    def event(self, event: str, **data: Any) -> None: ...

    # Why this front end could not answer `step`'s confirmation when the run reaches it (no
    # terminal, and no flag that answers it); None when it can, or will ask. In an environment
    # with the two-person rule a run is refused before asking a second operator to approve it.
    def cannot_answer(self, step: Step, ref: ClusterRef) -> str | None: ...


class _Declines:
    """The plan asks nothing; if a runbook ever did, "no" changes nothing."""

    async def confirm(self, step: Step, commands: list[str], ctx: Context) -> bool:
        return False

    async def attest(self, step: Step, commands: list[str], ctx: Context, expected: str) -> bool:
        return False

    async def manual_done(self, step: Step, commands: list[str], ctx: Context) -> bool:
        return False


def one_line(exc: BaseException) -> str:
    """An exception as the operator sees it: its first line with credentials scrubbed (a driver's
    error can carry the DSN it connected with), or its type when it says nothing."""
    text = str(exc).strip()
    return scrub_text(text.splitlines()[0]) if text else type(exc).__name__


def unexpected(exc: BaseException, where: str) -> str:
    """A bug of ours, for a front end that must go on (the console): the traceback goes to the
    crash file, the operator gets one line naming it, as the command line's own handler says."""
    from dbops.crash import write_crash_report

    return f"unexpected {type(exc).__name__}; details in {write_crash_report(exc, where)}"


@dataclass(repr=False)  # its config can hold credentials: a crash report must not print them
class RunbookSession:
    config: Config
    front: FrontEnd
    state: Path  # journals, the per-host lock files, the audit log's directory
    audit: AuditLog | None = None  # default: <state>/audit.jsonl
    allow_writes: bool = False

    def __post_init__(self) -> None:
        if self.audit is None:
            self.audit = AuditLog(self.state / "audit.jsonl")
        self._books: dict[str, Runbook] | None = None

    # -- resolving names -------------------------------------------------------------------

    def books(self) -> dict[str, Runbook]:
        """Every runbook by id (built-in and runbook_dirs), loaded once; modules that did not
        load are a warning each, and the others still load."""
        if self._books is None:
            from dbops.runbook.registry import load

            self._books, problems = load(self.config.runbook_dirs)
            for p in problems:
                self.front.event("warning", line=p)
        return self._books

    def cluster(self, name: str) -> ClusterRef:
        """A cluster by its name, or by environment/name when the name is in several environments."""
        refs = self.config.clusters()
        matches = [r for r in refs if name in (r.name, r.key)]
        if not matches:
            raise SessionError(f"no cluster {name!r}; configured: {', '.join(r.key for r in refs) or 'none'}")
        if len(matches) > 1:
            raise SessionError(f"cluster name {name!r} is in several environments; say which: {', '.join(r.key for r in matches)}")
        return matches[0]

    def _get(self, runbook_id: str) -> Runbook:
        if self._books is None:
            from dbops.runbook.registry import find

            book, problems = find(runbook_id, self.config.runbook_dirs)
            if book is not None:
                for p in problems:
                    self.front.event("warning", line=p)
                return book
        books = self.books()
        if runbook_id not in books:
            close = difflib.get_close_matches(runbook_id, list(books), n=1)
            raise SessionError(f"no runbook {runbook_id!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                               + "; see `dbops runbook list`")
        return books[runbook_id]

    def runbook(self, runbook_id: str, ref: ClusterRef) -> Runbook:
        """The runbook, as it runs on this cluster; refused, naming the ones that apply, when it is
        for another engine or needs config the cluster lacks (a Kafka runbook on a PostgreSQL cluster)."""
        from dbops.runbook.registry import applies_to, not_applicable

        book = self._get(runbook_id)
        why = not_applicable(book, ref)
        if why is not None:
            mine = sorted(b.id for b in self.books().values() if applies_to(b, ref))
            raise SessionError(f"{why}; runbooks for {ref.key} ({ref.cluster.engine}): {', '.join(mine) or 'none'}")
        return book.for_cluster(ref)

    @staticmethod
    def params(book: Runbook, given: Mapping[str, str]) -> dict[str, Any]:
        """The parameters' values from their raw text (every name in `given` counts as given);
        the defaults for the others. Live choices are checked later, against the servers."""
        known = {p.name: p for p in book.params}
        values: dict[str, Any] = {}
        for key, raw in given.items():
            if key not in known:
                raise SessionError(f"{book.id} has no parameter {key!r}; parameters: {', '.join(known) or 'none'}")
            try:
                values[key] = known[key].parse(raw)
            except ValueError as exc:
                raise SessionError(str(exc)) from None
        for p in book.params:
            if p.name not in values:
                if p.required:
                    raise MissingParam(book, p)
                values[p.name] = p.default
        return values

    # -- the runbook's resources and live choices ---------------------------------------------

    async def _with_resources(self, book: Runbook, ctx: Context, fn: Callable[[], Awaitable[T]]) -> T:
        if book.setup is not None:
            try:
                await book.setup(ctx)
            except Exception as exc:  # nothing has run: one line instead of a crash
                raise SessionError(f"{book.id}: cannot open its connections: {one_line(exc)}") from exc
        try:
            return await fn()
        finally:
            if book.teardown is not None:
                await book.teardown(ctx)

    async def _read_choices(self, book: Runbook, ctx: Context, p: Param, value: Any) -> list[str]:
        assert p.choices is not None
        try:
            return await p.choices(ctx)
        except Exception as exc:  # a dead or refusing server: one line, and nothing has run
            given = f"--param {p.name}={value}" if value is not None else p.name
            raise SessionError(f"{given}: cannot read the values it may take: {one_line(exc)}") from exc

    async def _check_choices(self, book: Runbook, ctx: Context) -> None:
        """A parameter with live choices (say, the cluster's replicas) must name one of them. The
        choices are read from the servers: when they cannot be, the run stops here, before anything."""
        for p in book.params:
            value = ctx.params.get(p.name)
            if p.choices is None or value is None:
                continue
            allowed = await self._read_choices(book, ctx, p, value)
            if value not in allowed:
                raise SessionError(f"--param {p.name}={value}: not one of {', '.join(allowed) or '(none available now)'}")

    async def choices(self, book: Runbook, ref: ClusterRef) -> dict[str, list[str]]:
        """The values each parameter with live choices may take now (to offer them)."""
        from dbops.runbook.journal import new_run_id

        ctx = Context(ref, {p.name: p.default for p in book.params}, run_id=new_run_id())

        async def read() -> dict[str, list[str]]:
            return {p.name: await self._read_choices(book, ctx, p, None) for p in book.params if p.choices is not None}

        return await self._with_resources(book, ctx, read)

    # -- plan, run, resume --------------------------------------------------------------------

    def _context(self, ref: ClusterRef, params: dict[str, Any], run_id: str) -> Context:
        event = self.front.event
        return Context(ref, params, run_id=run_id, log=lambda line: event("log", line=line),
                       progress=lambda done, total, unit: event("progress", done=done, total=total, unit=unit))

    def _executor(self, book: Runbook, ctx: Context, confirmer: Confirmer | None = None) -> Executor:
        from dbops.runbook.approvals import store_for

        assert self.audit is not None
        return Executor(book, ctx, audit=self.audit, confirmer=confirmer or self.front, observer=self.front.event,
                        allow_writes=self.allow_writes, approvals=store_for(self.config.locks.postgres, ctx.ref))

    def _lock(self, book: Runbook, ref: ClusterRef, run_id: str, overrides: dict[str, str] | None) -> Any:
        from dbops.runbook.locks import lock_for

        locks = self.config.locks
        return lock_for(ref, run_id, self.state, note=lambda line: self.front.event("note", line=line), leases=locks.kubernetes,
                        coordination=locks.postgres, overrides=overrides, changes_servers=book.changes_servers)

    async def plan(self, book: Runbook, ref: ClusterRef, params: dict[str, Any], overrides: dict[str, str] | None = None) -> Plan:
        """Read-only: the live choices, the pre-checks and every step rendered. Changes nothing."""
        from dbops.runbook.journal import new_run_id

        ctx = self._context(ref, params, new_run_id())
        # The verdicts are in the Plan: a front end shows them from there, not as they come.
        assert self.audit is not None
        ex = Executor(book, ctx, audit=self.audit, confirmer=_Declines())

        async def go() -> Plan:
            await self._check_choices(book, ctx)
            return await ex.plan(overrides)

        return await self._with_resources(book, ctx, go)

    def _refuse_what_would_stop_after_approval(self, book: Runbook, ref: ClusterRef) -> None:
        """A confirmation the front end cannot answer, found only at its step, would waste a
        second operator's approval given first: refuse before asking anyone."""
        if ref.env.approvals < 2:
            return
        for step in book.steps:
            why = self.front.cannot_answer(step, ref)
            if why is not None:
                raise SessionError(f"{why}; refusing before asking a second operator to approve a run that would stop there")

    async def run(self, book: Runbook, ref: ClusterRef, params: dict[str, Any], overrides: dict[str, str] | None = None) -> RunResult:
        """Live choices, then under the lock: pre-checks, each step with its confirmation,
        journaled and audited; the audit log shipped at the end. SessionError when refused before it ran."""
        from dbops.runbook.journal import Journal, new_run_id

        self._refuse_what_would_stop_after_approval(book, ref)
        run_id = new_run_id()
        ctx = self._context(ref, params, run_id)
        ex = self._executor(book, ctx)

        async def go() -> RunResult:
            await self._check_choices(book, ctx)
            return await ex.run(Journal.create(self.state, run_id), self._lock(book, ref, run_id, overrides), overrides)

        return await self._execute(book, ctx, resumed=False, body=go)

    async def resume(self, run_id: str) -> RunResult:
        """Continue a run after a crash, from its journal: the interrupted step re-verified first."""
        from dbops.runbook.journal import Journal, JournalError

        try:
            journal = Journal.open(self.state, run_id)
            record = journal.read()
        except JournalError as exc:
            raise SessionError(str(exc)) from None
        ref = self.cluster(f"{record.environment}/{record.cluster}")
        book = self._get(record.runbook).for_cluster(ref)
        ctx = self._context(ref, dict(record.params), run_id)
        ex = self._executor(book, ctx)
        return await self._execute(
            book, ctx, resumed=True, body=lambda: ex.resume(record, journal, self._lock(book, ref, run_id, record.overrides)))

    async def _execute(self, book: Runbook, ctx: Context, *, resumed: bool, body: Callable[[], Awaitable[RunResult]]) -> RunResult:
        """`body` (the executor's run or resume) with the runbook's resources open: a held lock or
        a journal that cannot be written is a refusal naming the run; then the outcome."""
        from dbops.runbook.journal import JournalError
        from dbops.runbook.locks import LockHeld

        self.front.event("opened", runbook=book, ref=ctx.ref, run_id=ctx.run_id, resumed=resumed)
        try:
            result = await self._with_resources(book, ctx, body)
        except (LockHeld, JournalError) as exc:
            raise SessionError(str(exc), run_id=ctx.run_id) from None
        except SessionError as exc:
            exc.run_id = ctx.run_id
            raise
        return await self._over(result)

    async def _over(self, result: RunResult) -> RunResult:
        """The outcome to the front end, then the audit log shipped ([audit.ship]): a shipping
        failure is shown and changes neither the run's outcome nor its exit code."""
        assert self.audit is not None
        self.front.event("outcome", result=result)
        if self.config.audit.ship is None:
            return result  # nothing to ship: no thread to start, no shipping module to import
        from dbops.audit_ship import ship_reporting

        # In a thread: an upload must not stall a loop a drill shares with its probe.
        shipped = await asyncio.to_thread(ship_reporting, self.audit.path, self.config.audit.ship)
        if shipped is not None:
            ok, message = shipped
            self.front.event("audit-shipped", ok=ok, message=message)
        return result
