"""`dbops runbook list | plan | run | resume`.

Exit codes: 0 success, 1 refused (pre-check, parameters, read-only, cluster locked),
2 a step failed, 3 aborted (a confirmation was declined).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _config(ctx: click.Context) -> Any:
    from dbops.cli import _load_config

    return _load_config(ctx.obj.get("config_path"))


def _books(cfg: Any) -> dict[str, Any]:
    from dbops.runbook.registry import load

    books, problems = load(cfg.runbook_dirs)
    for p in problems:
        click.echo(f"warning: {p}", err=True)
    return books


def _cluster(cfg: Any, name: str) -> Any:
    refs = cfg.clusters()
    matches = [r for r in refs if name in (r.name, r.key)]
    if not matches:
        _fail(f"no cluster {name!r}; configured: {', '.join(r.key for r in refs) or 'none'}")
    if len(matches) > 1:
        _fail(f"cluster name {name!r} is in several environments; say which: {', '.join(r.key for r in matches)}")
    return matches[0]


def _params(book: Any, raw: tuple[str, ...]) -> dict[str, Any]:
    known = {p.name: p for p in book.params}
    values: dict[str, Any] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--param {item!r}: expected NAME=VALUE")
        if key not in known:
            _fail(f"{book.id} has no parameter {key!r}; parameters: {', '.join(known) or 'none'}")
        try:
            values[key] = known[key].parse(value)
        except ValueError as exc:
            _fail(str(exc))
    for p in book.params:
        if p.name not in values:
            if p.required:
                _fail(f"{book.id} needs --param {p.name}=... ({p.description})")
            values[p.name] = p.default
    return values


def _overrides(raw: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in raw:
        check, sep, reason = item.partition("=")
        if not sep or not reason.strip():
            _fail(f"--override {item!r}: expected CHECK=REASON; the reason is recorded in the audit log")
        out[check] = reason.strip()
    return out


@click.group()
def runbook() -> None:
    """Scripted operations: pre-checks, a plan, confirmations, a journal, an audit trail."""


@runbook.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """Every runbook, built-in and from runbook_dirs."""
    books = _books(_config(ctx))
    if as_json:
        click.echo(json.dumps([
            {"id": b.id, "engine": b.engine, "title": b.title, "description": b.description,
             "params": [{"name": p.name, "description": p.description, "required": p.required, "default": p.default} for p in b.params],
             "changes_servers": b.changes_servers}
            for b in sorted(books.values(), key=lambda b: b.id)
        ], indent=2))
        return
    for b in sorted(books.values(), key=lambda b: b.id):
        click.echo(f"{b.id:<34} {b.title}")


def _print_plan(plan: Any, params: dict[str, Any]) -> None:
    rb = plan.runbook
    click.echo(f"{rb.id}: {rb.title}")
    given = {k: v for k, v in params.items() if v is not None}
    unset = [k for k, v in params.items() if v is None]  # optional, no default: the runbook decides
    if given:
        click.echo("parameters: " + ", ".join(f"{k}={v}" for k, v in given.items()))
    if unset:
        click.echo("not given: " + ", ".join(unset))
    click.echo("\npre-checks:")
    for c in plan.checks:
        mark = "ok  " if c.verdict.ok else ("OVERRIDDEN" if c.overridden_by else "FAIL")
        click.echo(f"  [{mark}] {c.check.title}: {c.verdict.detail}")
        if c.overridden_by:
            click.echo(f"         reason: {c.overridden_by}")
        elif not c.verdict.ok and c.check.overridable:
            click.echo(f"         (override with --override {c.check.id}=REASON)")
    click.echo("\nsteps:")
    for i, p in enumerate(plan.steps, start=1):
        s = p.step
        flags = [s.kind.value]
        if s.destructive:
            flags.append("DESTRUCTIVE")
        if s.confirm.value != "none":
            flags.append(f"confirm: {s.confirm.value}")
        flags.append(f"timeout {s.timeout:g}s")
        click.echo(f"  {i}. {s.title}  [{', '.join(flags)}]")
        click.echo(f"     {s.description}")
        for cmd in p.commands:
            click.echo(f"       $ {cmd}")
        if s.on_failure:
            click.echo(f"     if it fails: {s.on_failure}")


async def _with_resources(book: Any, context: Any, fn: Any) -> Any:
    if book.setup is not None:
        await book.setup(context)
    try:
        return await fn()
    finally:
        if book.teardown is not None:
            await book.teardown(context)


async def _check_choices(book: Any, context: Any) -> None:
    """A parameter with live choices (say, the cluster's replicas) must name one of them. The
    choices are read from the servers: when they cannot be, the run stops here, before anything."""
    from dbops.secrets import scrub_text

    for p in book.params:
        value = context.params.get(p.name)
        if p.choices is None or value is None:
            continue
        try:
            allowed = await p.choices(context)
        except Exception as exc:  # a dead or refusing server: one line, and nothing has run
            _fail(f"--param {p.name}={value}: cannot read the values it may take: {scrub_text(str(exc)) or type(exc).__name__}")
        if value not in allowed:
            _fail(f"--param {p.name}={value}: not one of {', '.join(allowed) or '(none available now)'}")


def _refuse_what_would_stop_after_approval(book: Any, ref: Any, confirmer: "CliConfirmer") -> None:
    """Without a terminal, a step that asks for the cluster's name needs --confirm. Found only at
    that step, a run that first waited for a second operator's approval would waste it: refuse
    before asking anyone."""
    from dbops.runbook.model import Confirm

    if ref.env.approvals < 2 or confirmer.interactive or confirmer.confirm_name is not None:
        return
    typed = [s for s in book.steps if s.confirm is Confirm.TYPE_CLUSTER]
    if typed:
        _fail(f"'{typed[0].title}' asks for the cluster's name, and without a terminal that is --confirm {ref.name}; "
              "refusing before asking a second operator to approve a run that would stop there")


@runbook.command()
@click.argument("runbook_id")
@click.option("--cluster", "cluster_name", required=True)
@click.option("--param", "raw_params", multiple=True, metavar="NAME=VALUE")
@click.option("--override", "raw_overrides", multiple=True, metavar="CHECK=REASON")
@click.pass_context
def plan(ctx: click.Context, runbook_id: str, cluster_name: str, raw_params: tuple[str, ...], raw_overrides: tuple[str, ...]) -> None:
    """Run the read-only pre-checks and print every step with its exact commands. Changes nothing."""
    from dbops.audit import AuditLog
    from dbops.config import state_dir
    from dbops.runbook.executor import Executor
    from dbops.runbook.journal import new_run_id
    from dbops.runbook.model import Context

    cfg = _config(ctx)
    ref = _cluster(cfg, cluster_name)
    book = _book_for(cfg, runbook_id, ref)
    context = Context(ref, _params(book, raw_params), run_id=new_run_id())
    ex = Executor(book, context, audit=AuditLog(state_dir() / "audit.jsonl"), confirmer=_NoConfirm())

    async def go() -> Any:
        await _check_choices(book, context)
        return await ex.plan(_overrides(raw_overrides))

    result = asyncio.run(_with_resources(book, context, go))
    _print_plan(result, context.params)
    if result.refused:
        click.echo(f"\nrefused: {len(result.refused)} pre-check(s) failed; `run` would stop here.")
        sys.exit(1)
    click.echo("\nall pre-checks pass; nothing was changed.")


def _get(books: dict[str, Any], runbook_id: str) -> Any:
    if runbook_id not in books:
        import difflib

        close = difflib.get_close_matches(runbook_id, list(books), n=1)
        _fail(f"no runbook {runbook_id!r}" + (f" (did you mean {close[0]!r}?)" if close else "") + "; see `dbops runbook list`")
    return books[runbook_id]


def _book_for(cfg: Any, runbook_id: str, ref: Any) -> Any:
    """The runbook, as it runs on this cluster; refused, naming the ones that apply, when it is
    for another engine or needs config the cluster lacks (a Kafka runbook on a PostgreSQL cluster)."""
    from dbops.runbook.registry import applies_to, not_applicable

    books = _books(cfg)
    book = _get(books, runbook_id)
    why = not_applicable(book, ref)
    if why is not None:
        mine = sorted(b.id for b in books.values() if applies_to(b, ref))
        _fail(f"{why}; runbooks for {ref.key} ({ref.cluster.engine}): {', '.join(mine) or 'none'}")
    return book.for_cluster(ref)


class _NoConfirm:
    async def confirm(self, step: Any, commands: list[str], ctx: Any) -> bool:
        return False

    async def attest(self, step: Any, commands: list[str], ctx: Any, expected: str) -> bool:
        return False

    async def manual_done(self, step: Any, commands: list[str], ctx: Any) -> bool:
        return False


class CliConfirmer:
    """--yes answers yes/no confirmations; a step that asks for the cluster's name needs
    --confirm NAME. In a terminal without those flags, the operator is asked."""

    def __init__(self, yes: bool, confirm_name: str | None, interactive: bool, attested: tuple[str, ...] = ()) -> None:
        self.yes = yes
        self.confirm_name = confirm_name
        self.interactive = interactive
        self.attested = attested  # --attest MEMBER: members the operator attests are fenced

    async def attest(self, step: Any, commands: list[str], ctx: Any, expected: str) -> bool:
        click.echo(f"\nATTESTATION: {step.title}: dbops cannot check this itself.")
        for c in commands:
            click.echo(f"  {c}")
        if self.attested:
            if expected in self.attested:
                click.echo(f"attested by --attest {expected} (recorded in the audit log)")
                return True
            click.echo(f"--attest {', '.join(self.attested)} does not name {expected}; refusing", err=True)
            return False
        if not self.interactive:
            click.echo(f"'{step.title}' needs the operator to attest {expected}: pass --attest {expected} (or run in a terminal); refusing", err=True)
            return False
        typed = await asyncio.to_thread(click.prompt, f"Type the member name ({expected}) to attest it is fenced", default="", show_default=False)
        return typed.strip() == expected

    async def confirm(self, step: Any, commands: list[str], ctx: Any) -> bool:
        from dbops.runbook.model import Confirm

        name = ctx.ref.name
        if step.confirm is Confirm.TYPE_CLUSTER:
            if self.confirm_name is not None:
                if self.confirm_name == name:
                    return True
                click.echo(f"--confirm {self.confirm_name!r} does not name this cluster ({name}); refusing", err=True)
                return False
            if not self.interactive:
                click.echo(f"'{step.title}' needs --confirm {name} (it is destructive); refusing", err=True)
                return False
            typed = await asyncio.to_thread(click.prompt, f"Type the cluster name ({name}) to run '{step.title}'", default="", show_default=False)
            return typed.strip() == name
        if self.yes:
            return True
        if not self.interactive:
            click.echo(f"'{step.title}' needs a confirmation: pass --yes (or run in a terminal); refusing", err=True)
            return False
        return await asyncio.to_thread(click.confirm, f"Run '{step.title}'?", default=False)

    async def manual_done(self, step: Any, commands: list[str], ctx: Any) -> bool:
        click.echo(f"\nMANUAL STEP: {step.title}\n{step.description}\nRun these on the host, then confirm:")
        for c in commands:
            click.echo(f"  $ {c}")
        if not self.interactive:
            click.echo("a manual step needs an operator at a terminal; stopping here (resume later)", err=True)
            return False
        answer = await asyncio.to_thread(click.prompt, "Type 'done' when finished (anything else stops the run)", default="", show_default=False)
        return answer.strip().lower() == "done"


def _observer(event: str, **data: Any) -> None:
    step = data.get("step")
    if event == "check":
        v = data["verdict"]
        mark = "ok" if v.ok else ("overridden" if data.get("overridden_by") else "FAIL")
        click.echo(f"  check [{mark}] {data['check'].title}: {v.detail}")
    elif event == "started":
        click.echo(f"\n▶ {step.title}")
        for c in data.get("commands", []):
            click.echo(f"    $ {c}")
    elif event == "done":
        click.echo(f"  ✓ {step.title} ({data['seconds']:.1f}s)")
    elif event == "verified":
        v = data["verdict"]
        click.echo(f"  {'✓' if v.ok else '✗'} verify: {v.detail}")
    elif event == "failed":
        click.echo(f"  ✗ {step.title}: {data['error']}")
    elif event == "skipped":
        click.echo(f"  · {step.title}: {data.get('reason') or 'already done'}")
    elif event == "reverified":
        v = data["verdict"]
        click.echo(f"  interrupted step '{step.title}' re-verified: {'done' if v.ok else 'not done, running it again'} ({v.detail})")
    elif event == "overridden":
        click.echo(f"  ! {step.title} FAILED and was OVERRIDDEN ({data['reason']}): {data['error']}")
    elif event == "resumed":
        click.echo(f"resuming after: {', '.join(data['done']) or 'no completed step'}")
    elif event == "approval-waiting":
        click.echo(f"\n⏸ this run needs a second operator's approval of its plan before '{step.title}' (two-person rule)")
        click.echo(f"  run id:    {data['run_id']}")
        click.echo(f"  plan hash: {data['plan_hash']}")
        click.echo(f"  requested by: {data['requester'].describe()}")
        click.echo(f"  who may approve: {data['who']}")
        click.echo(f"  waiting up to {data['ttl']}s ...")
    elif event == "approved":
        click.echo(f"  ✓ {data['message']} (plan {data['plan_hash'][:12]})")
    elif event == "approval-refused":
        click.echo(f"  ✗ {step.title}: {data['reason']}")


def _lock(cfg: Any, ref: Any, run_id: str, book: Any, overrides: dict[str, str] | None = None) -> Any:
    from dbops.config import state_dir
    from dbops.runbook.locks import lock_for

    return lock_for(ref, run_id, state_dir(), note=lambda line: click.echo(f"note: {line}", err=True), leases=cfg.locks.kubernetes,
                    coordination=cfg.locks.postgres, overrides=overrides, changes_servers=book.changes_servers)


def _ship_audit(cfg: Any) -> None:
    """The end of every run ships the audit log ([audit.ship]); a failure is shown, and changes
    neither the run's outcome nor its exit code."""
    from dbops.audit_ship import ship_reporting
    from dbops.config import state_dir

    outcome = ship_reporting(state_dir() / "audit.jsonl", cfg.audit.ship)
    if outcome is not None:
        ok, message = outcome
        click.echo(f"audit: {message}" if ok else f"warning: {message}", err=not ok)


def _finish(result: Any) -> None:
    click.echo(f"\n{result.message}")
    if result.durations:
        click.echo("durations: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.durations.items()) + f"; total {sum(result.durations.values()):.1f}s")
    click.echo(f"run id: {result.run_id}")
    sys.exit(int(result.code))


@runbook.command()
@click.argument("runbook_id")
@click.option("--cluster", "cluster_name", required=True)
@click.option("--param", "raw_params", multiple=True, metavar="NAME=VALUE")
@click.option("--override", "raw_overrides", multiple=True, metavar="CHECK=REASON",
              help="Run despite a failed overridable pre-check or step (e.g. fence), or without a shared lock in production (shared-lock); the reason is audited.")
@click.option("--yes", is_flag=True, help="Answer yes to yes/no confirmations.")
@click.option("--confirm", "confirm_name", metavar="CLUSTER", help="Confirm steps that ask for the cluster's name.")
@click.option("--attest", "attested", multiple=True, metavar="MEMBER", help="Attest that MEMBER is fenced (a manual fence); audited.")
@click.pass_context
def run(ctx: click.Context, runbook_id: str, cluster_name: str, raw_params: tuple[str, ...], raw_overrides: tuple[str, ...], yes: bool,
        confirm_name: str | None, attested: tuple[str, ...]) -> None:
    """Run a runbook: pre-checks, then each step with its confirmation, journaled and audited."""
    from dbops.audit import AuditLog
    from dbops.config import state_dir
    from dbops.runbook.executor import Executor
    from dbops.runbook.journal import Journal, new_run_id
    from dbops.runbook.locks import LockHeld
    from dbops.runbook.model import Context
    from dbops.runbook.progress import ProgressLine

    cfg = _config(ctx)
    ref = _cluster(cfg, cluster_name)
    book = _book_for(cfg, runbook_id, ref)
    context = Context(ref, _params(book, raw_params), run_id=new_run_id(), log=lambda line: click.echo(f"    {line}"),
                      progress=ProgressLine(lambda line: click.echo(f"    {line}")).report)
    confirmer = CliConfirmer(yes, confirm_name, interactive=sys.stdin.isatty(), attested=attested)
    _refuse_what_would_stop_after_approval(book, ref, confirmer)
    ex = Executor(book, context, audit=AuditLog(state_dir() / "audit.jsonl"), confirmer=confirmer, observer=_observer,
                  allow_writes=ctx.obj.get("allow_writes", False), approvals=_approval_store(cfg, ref))
    overrides = _overrides(raw_overrides)
    click.echo(f"{book.id} on {ref.key}, run {context.run_id}")

    async def go() -> Any:
        await _check_choices(book, context)
        return await ex.run(Journal.create(state_dir(), context.run_id), _lock(cfg, ref, context.run_id, book, overrides), overrides)

    try:
        result = asyncio.run(_with_resources(book, context, go))
    except LockHeld as exc:
        _fail(str(exc))
    _ship_audit(cfg)
    _finish(result)


@runbook.command()
@click.argument("run_id")
@click.option("--yes", is_flag=True)
@click.option("--confirm", "confirm_name", metavar="CLUSTER")
@click.option("--attest", "attested", multiple=True, metavar="MEMBER", help="Attest that MEMBER is fenced (a manual fence); audited.")
@click.pass_context
def resume(ctx: click.Context, run_id: str, yes: bool, confirm_name: str | None, attested: tuple[str, ...]) -> None:
    """Continue a run after a crash, from its last completed step (re-verifying it first)."""
    from dbops.audit import AuditLog
    from dbops.config import state_dir
    from dbops.runbook.executor import Executor
    from dbops.runbook.journal import Journal, JournalError
    from dbops.runbook.locks import LockHeld
    from dbops.runbook.model import Context
    from dbops.runbook.progress import ProgressLine

    cfg = _config(ctx)
    try:
        journal = Journal.open(state_dir(), run_id)
        record = journal.read()
    except JournalError as exc:
        _fail(str(exc))
    ref = _cluster(cfg, f"{record.environment}/{record.cluster}")
    book = _get(_books(cfg), record.runbook).for_cluster(ref)
    context = Context(ref, dict(record.params), run_id=run_id, log=lambda line: click.echo(f"    {line}"),
                      progress=ProgressLine(lambda line: click.echo(f"    {line}")).report)
    confirmer = CliConfirmer(yes, confirm_name, interactive=sys.stdin.isatty(), attested=attested)
    ex = Executor(book, context, audit=AuditLog(state_dir() / "audit.jsonl"), confirmer=confirmer, observer=_observer,
                  allow_writes=ctx.obj.get("allow_writes", False), approvals=_approval_store(cfg, ref))
    click.echo(f"resuming {book.id} on {ref.key}, run {run_id}")
    try:
        result = asyncio.run(_with_resources(book, context, lambda: ex.resume(record, journal, _lock(cfg, ref, run_id, book, record.overrides))))
    except LockHeld as exc:
        _fail(str(exc))
    _ship_audit(cfg)
    _finish(result)


# -- the two-person rule ----------------------------------------------------------------------


def _approval_store(cfg: Any, ref: Any) -> Any:
    from dbops.runbook.approvals import store_for

    return store_for(cfg.locks.postgres, ref)


def _store(cfg: Any) -> Any:
    from dbops.runbook.approvals import ApprovalStore

    if cfg.locks.postgres is None:
        _fail("approvals live in the coordination database every console shares, and this config has no [locks.postgres]")
    return ApprovalStore(cfg.locks.postgres)


@runbook.command("approvals")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def approvals_(ctx: click.Context, as_json: bool) -> None:
    """Runs waiting for a second operator's approval (two-person rule)."""
    from dbops.model import human_seconds
    from dbops.runbook.approvals import ApprovalError

    store = _store(_config(ctx))
    try:
        waiting = asyncio.run(store.pending())
    except ApprovalError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps([
            {"run_id": r.run_id, "runbook": r.runbook, "environment": r.environment, "cluster": r.cluster,
             "requested_by": r.requester.as_dict(), "age_seconds": round(r.age_seconds), "plan_hash": r.plan_hash}
            for r in waiting
        ], indent=2))
        return
    if not waiting:
        click.echo("no run is waiting for an approval")
        return
    click.echo(f"{'RUN ID':<14} {'RUNBOOK':<30} {'CLUSTER':<24} {'REQUESTED BY':<28} {'AGE':>7}  PLAN")
    for r in waiting:
        who = f"{r.requester.name} (uid {r.requester.uid})"
        click.echo(f"{r.run_id:<14} {r.runbook:<30} {r.environment + '/' + r.cluster:<24} {who:<28} {human_seconds(r.age_seconds):>7}  {r.plan_hash[:12]}")
    click.echo("\napprove one with `dbops runbook approve RUN_ID` (as an operator other than its requester)")


@runbook.command()
@click.argument("run_id")
@click.option("--yes", is_flag=True, help="Approve without asking (after reading the plan printed above).")
@click.pass_context
def approve(ctx: click.Context, run_id: str, yes: bool) -> None:
    """Approve a waiting run's plan as a second operator (not the one who started the run)."""
    from dbops.audit import AuditLog
    from dbops.config import state_dir
    from dbops.model import human_seconds
    from dbops.runbook.approvals import ApprovalError, ApprovalRefused, approve_audited, audit_declined, current_operator, same_person

    cfg = _config(ctx)
    store = _store(cfg)
    me = current_operator()
    try:
        req = asyncio.run(store.get(run_id))
    except ApprovalError as exc:
        _fail(str(exc))
    if req is None:
        _fail(f"no approval request for run {run_id}; `dbops runbook approvals` lists the waiting ones")
    click.echo(f"run {req.run_id}: {req.runbook} on {req.environment}/{req.cluster}")
    click.echo(f"requested by {req.requester.describe()}, {human_seconds(req.age_seconds)} ago")
    click.echo(f"plan hash: {req.plan_hash}\n")
    click.echo(req.plan_text)
    audit = AuditLog(state_dir() / "audit.jsonl")
    if not yes and not same_person(req.requester, me):  # a self-approval is refused (and audited) below
        if not sys.stdin.isatty():
            _fail("approving needs a terminal to confirm in, or --yes after reading the plan")
        if not click.confirm(f"Approve this plan ({req.plan_hash[:12]}) as {me.describe()}?", default=False):
            audit_declined(audit, req, me)
            _fail("not approved", code=3)
    try:
        done = asyncio.run(approve_audited(store, audit, req, me))
    except (ApprovalRefused, ApprovalError) as exc:
        _fail(str(exc))
    until = f"{done.expires_at:%Y-%m-%d %H:%M:%S} UTC" if done.expires_at else "?"
    click.echo(f"approved run {run_id} (plan {req.plan_hash[:12]}) as {me.describe()}; valid until {until}")
