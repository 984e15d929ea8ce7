"""`dbops runbook list | plan | run | resume`.

Exit codes: 0 success, 1 refused (pre-check, parameters, read-only, cluster locked),
2 a step failed, 3 aborted (a confirmation was declined).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

from dbops.runbook.events import event_lines

if TYPE_CHECKING:
    from dbops.runbook.session import RunbookSession, SessionError


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _config(ctx: click.Context) -> Any:
    from dbops.cli_common import load_config

    return load_config(ctx.obj.get("config_path"))


def _refused(exc: SessionError) -> NoReturn:
    """A session's refusal as a command line says it: a required parameter is a --param."""
    from dbops.runbook.session import MissingParam

    if isinstance(exc, MissingParam):
        _fail(f"{exc.book.id} needs --param {exc.param.name}=... ({exc.param.description})")
    _fail(exc.message, int(exc.code))


def _assignments(raw: tuple[str, ...]) -> dict[str, str]:
    given: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--param {item!r}: expected NAME=VALUE")
        given[key] = value
    return given


def _overrides(raw: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in raw:
        check, sep, reason = item.partition("=")
        if not sep or not reason.strip():
            _fail(f"--override {item!r}: expected CHECK=REASON; the reason is recorded in the audit log")
        out[check] = reason.strip()
    return out


def _session(ctx: click.Context, front: CliFrontEnd) -> RunbookSession:
    from dbops.config import state_dir
    from dbops.runbook.session import RunbookSession

    return RunbookSession(_config(ctx), front, state=state_dir(), allow_writes=ctx.obj.get("allow_writes", False))


@click.group()
def runbook() -> None:
    """Scripted operations: pre-checks, a plan, confirmations, a journal, an audit trail."""


@runbook.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """Every runbook, built-in and from runbook_dirs. Needs no config file: without one, the
    built-in runbooks."""
    from dbops.cli_common import load_config, optional_config_path
    from dbops.runbook.registry import BUILT_IN, catalog

    path = optional_config_path(ctx.obj.get("config_path"))
    dirs = load_config(str(path)).runbook_dirs if path is not None else []
    found = catalog(dirs)
    for p in found.problems:
        click.echo(f"warning: {p}", err=True)
    books = sorted(found.books.values(), key=lambda b: b.id)
    if as_json:
        click.echo(json.dumps([
            {"id": b.id, "engine": b.engine, "title": b.title, "description": b.description,
             "params": [{"name": p.name, "description": p.description, "required": p.required, "default": p.default} for p in b.params],
             "changes_servers": b.changes_servers, "source": found.sources[b.id]}
            for b in books
        ], indent=2))
        return
    builtin = [b for b in books if found.sources[b.id] == BUILT_IN]
    team = [b for b in books if found.sources[b.id] != BUILT_IN]
    for b in builtin:
        click.echo(f"{b.id:<34} {b.title}")
    if team:
        click.echo(f"\nfrom runbook_dirs in {path}:")
        for b in team:
            click.echo(f"{b.id:<34} {b.title}  ({found.sources[b.id]})")
    # Which config added to the built-in ones, if any: the list differs from one machine to the next.
    if path is None:
        click.echo("\nbuilt-in runbooks only: no config file (`dbops config path` says where dbops looks); "
                   "runbook_dirs in a config adds a team's own")
    elif not dirs:
        click.echo(f"\nbuilt-in runbooks only: {path} has no runbook_dirs")
    else:
        click.echo(f"\n{len(builtin)} built-in, {len(team)} from runbook_dirs in {path} ({', '.join(dirs)})")


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


@runbook.command()
@click.argument("runbook_id")
@click.option("--cluster", "cluster_name", required=True)
@click.option("--param", "raw_params", multiple=True, metavar="NAME=VALUE")
@click.option("--override", "raw_overrides", multiple=True, metavar="CHECK=REASON")
@click.pass_context
def plan(ctx: click.Context, runbook_id: str, cluster_name: str, raw_params: tuple[str, ...], raw_overrides: tuple[str, ...]) -> None:
    """Run the read-only pre-checks and print every step with its exact commands. Changes nothing."""
    from dbops.runbook.session import SessionError

    session = _session(ctx, CliFrontEnd(yes=False, confirm_name=None, interactive=False))
    try:
        ref = session.cluster(cluster_name)
        book = session.runbook(runbook_id, ref)
        params = session.params(book, _assignments(raw_params))
        overrides = _overrides(raw_overrides)
        result = asyncio.run(session.plan(book, ref, params, overrides))
    except SessionError as exc:
        _refused(exc)
    _print_plan(result, params)
    if result.refused:
        click.echo(f"\nrefused: {len(result.refused)} pre-check(s) failed; `run` would stop here.")
        sys.exit(1)
    click.echo("\nall pre-checks pass; nothing was changed.")


class CliFrontEnd:
    """The command line's side of a runbook session. --yes answers yes/no confirmations; a step
    that asks for the cluster's name needs --confirm NAME. In a terminal without those flags, the
    operator is asked. Events are printed as they come."""

    def __init__(self, yes: bool, confirm_name: str | None, interactive: bool, attested: tuple[str, ...] = ()) -> None:
        from dbops.runbook.progress import ProgressLine

        self.yes = yes
        self.confirm_name = confirm_name
        self.interactive = interactive
        self.attested = attested  # --attest MEMBER: members the operator attests are fenced
        self._progress = ProgressLine(lambda line: click.echo(f"    {line}"))

    def cannot_answer(self, step: Any, ref: Any) -> str | None:
        from dbops.runbook.model import Confirm

        if step.confirm is Confirm.TYPE_CLUSTER and not self.interactive and self.confirm_name is None:
            return f"'{step.title}' asks for the cluster's name, and without a terminal that is --confirm {ref.name}"
        return None

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

    def event(self, event: str, **data: Any) -> None:
        if event == "progress":
            self._progress.report(data["done"], data["total"], data["unit"])
        elif event in ("note", "warning"):
            click.echo(f"{event}: {data['line']}", err=True)
        elif event == "audit-shipped":
            ok, message = data["ok"], data["message"]
            click.echo(f"audit: {message}" if ok else f"warning: {message}", err=not ok)
        else:
            for line in event_lines(event, data):
                click.echo(line)


def _finish(result: Any) -> NoReturn:
    click.echo(f"\n{result.message}")
    if result.durations:
        click.echo("durations: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.durations.items()) + f"; total {sum(result.durations.values()):.1f}s")
    click.echo(f"run id: {result.run_id}")
    # Everything is said and on disk (the journal and audit records are fsynced as they are
    # written, the connections closed): the interpreter's last garbage collections over every
    # object of the run would only keep the operator waiting for the prompt.
    import gc

    gc.freeze()
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
    from dbops.runbook.session import SessionError

    session = _session(ctx, CliFrontEnd(yes, confirm_name, interactive=sys.stdin.isatty(), attested=attested))
    try:
        ref = session.cluster(cluster_name)
        book = session.runbook(runbook_id, ref)
        params = session.params(book, _assignments(raw_params))
        overrides = _overrides(raw_overrides)
        result = asyncio.run(session.run(book, ref, params, overrides))
    except SessionError as exc:
        _refused(exc)
    _finish(result)


@runbook.command()
@click.argument("run_id")
@click.option("--yes", is_flag=True)
@click.option("--confirm", "confirm_name", metavar="CLUSTER")
@click.option("--attest", "attested", multiple=True, metavar="MEMBER", help="Attest that MEMBER is fenced (a manual fence); audited.")
@click.pass_context
def resume(ctx: click.Context, run_id: str, yes: bool, confirm_name: str | None, attested: tuple[str, ...]) -> None:
    """Continue a run after a crash, from its last completed step (re-verifying it first)."""
    from dbops.runbook.session import SessionError

    session = _session(ctx, CliFrontEnd(yes, confirm_name, interactive=sys.stdin.isatty(), attested=attested))
    try:
        result = asyncio.run(session.resume(run_id))
    except SessionError as exc:
        _refused(exc)
    _finish(result)


# -- the two-person rule ----------------------------------------------------------------------


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
    from dbops.runbook.approvals import (
        ApprovalError,
        ApprovalRefused,
        approve_audited,
        audit_declined,
        current_operator,
        same_person,
    )

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
