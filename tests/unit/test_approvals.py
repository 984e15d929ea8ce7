"""The two-person rule without a coordination database: the plan's canonical text and hash,
who the operator is (sudo included, spoofing not), how a stored request is judged, and that a
run which needs an approval it cannot get stops before the step (fails closed)."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dbops.audit import AuditLog
from dbops.config import load
from dbops.runbook.approvals import ApprovalStore, Operator, Request, current_operator, judge, plan_hash, plan_text
from dbops.runbook.executor import CheckResult, Executor, ExitCode, Plan
from dbops.runbook.journal import Journal
from dbops.runbook.locks import LocalLock, me
from dbops.runbook.model import Context, Verdict
from dbops.runbook.registry import load as load_books

FIXTURES = Path(__file__).parent / "runbook_fixtures"


def _config(tmp_path: Path, approvals: int = 2, port: int = 1):
    cfg = tmp_path / "dbops.toml"
    cfg.write_text(f"""
runbook_dirs = ["{FIXTURES}"]
[locks.postgres]
host = "127.0.0.1"
port = {port}
password = {{ env = "NO_SUCH_VAR_FOR_TESTS" }}
timeout = 1
[environments.staging]
mode = "operator"
approvals = {approvals}
[environments.staging.clusters.files-db]
engine = "postgres"
timeout = 0.5
password = {{ env = "NO_SUCH_VAR_FOR_TESTS" }}
members = [{{ name = "m1", host = "127.0.0.1", port = 1, role = "primary" }}]
""")
    return load(cfg)


def _plan(tmp_path: Path, **params):
    cfg = _config(tmp_path)
    ref = cfg.clusters()[0]
    book = load_books(cfg.runbook_dirs)[0]["test.files"]
    values = {"dir": str(tmp_path), "lagging": False, "fail": False, **params}
    ctx = Context(ref, values, run_id="r1")
    ex = Executor(book, ctx, audit=AuditLog(tmp_path / "audit.jsonl"), confirmer=None)  # type: ignore[arg-type]
    return asyncio.run(ex.plan()), ref, values


# -- plan text and hash ---------------------------------------------------------------------------


def test_plan_text_is_stable_and_shows_what_runs(tmp_path):
    plan, ref, params = _plan(tmp_path)
    text = plan_text(plan, ref, params)
    again = plan_text(_plan(tmp_path)[0], ref, params)
    assert text == again and plan_hash(text) == plan_hash(again)
    assert len(plan_hash(text)) == 64
    for line in ("runbook: test.files", "cluster: staging/files-db", f'"dir": "{tmp_path}"',
                 "[c] write c (action, destructive, confirm type-cluster)", f"$ echo ran >> {tmp_path}/c"):
        assert line in text


def test_plan_hash_ignores_precheck_verdicts_but_not_params_or_commands(tmp_path):
    plan, ref, params = _plan(tmp_path)
    h = plan_hash(plan_text(plan, ref, params))
    # The verdicts of the pre-checks change from second to second: not part of the plan.
    other_checks = Plan(plan.runbook, [CheckResult(c.check, Verdict(False, "lag now 9 MiB")) for c in plan.checks], plan.steps)
    assert plan_hash(plan_text(other_checks, ref, params)) == h
    # A parameter or a rendered command is.
    assert plan_hash(plan_text(plan, ref, {**params, "fail": True})) != h
    changed = [replace(plan.steps[0], commands=["rm -rf /"])] + plan.steps[1:]
    assert plan_hash(plan_text(Plan(plan.runbook, plan.checks, changed), ref, params)) != h


# -- identity ----------------------------------------------------------------------------------


def test_identity_is_the_real_uid_not_USER():
    uid = os.getuid()
    op = current_operator({"USER": "someone-else", "LOGNAME": "someone-else"}, uid=uid, host="bastion1")
    assert op == Operator(pwd.getpwuid(uid).pw_name, uid, "bastion1")


def test_identity_under_sudo_is_the_human():
    nobody = pwd.getpwnam("nobody")
    op = current_operator({"SUDO_UID": str(nobody.pw_uid), "SUDO_USER": "nobody", "USER": "root"}, uid=0, host="b")
    assert (op.name, op.uid) == ("nobody", nobody.pw_uid)


def test_sudo_variables_are_not_trusted_from_an_unprivileged_process():
    nobody = pwd.getpwnam("nobody")
    op = current_operator({"SUDO_UID": "0", "SUDO_USER": "root"}, uid=nobody.pw_uid, host="b")
    assert op.uid == nobody.pw_uid and op.name == "nobody"
    op = current_operator({"SUDO_UID": "4242", "SUDO_USER": "alice"}, uid=nobody.pw_uid, host="b")
    assert op.uid == nobody.pw_uid


# -- judging a stored request --------------------------------------------------------------------

ALICE = Operator("alice", 1001, "bastion1")
BOB = Operator("bob", 1002, "bastion2")


def _req(**kw) -> Request:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    base = dict(run_id="r1", environment="prod", cluster="main", runbook="x", plan_hash="h1", plan_text="t",
                requester=ALICE, requested_at=now, wait_until=now + timedelta(minutes=30), ttl_seconds=1800,
                approver=None, approved_at=None, expires_at=None, now=now)
    base.update(kw)
    return Request(**base)  # type: ignore[arg-type]


def test_judge():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert judge(None, "h1", ALICE).status == "missing"
    assert judge(_req(), "h1", ALICE).status == "waiting"
    ok = judge(_req(approver=BOB, approved_at=now, expires_at=now + timedelta(minutes=30)), "h1", ALICE)
    assert ok.approved and ok.message == "approved by bob (uid 1002) on bastion2"
    void = judge(_req(approver=BOB, approved_at=now, expires_at=now + timedelta(minutes=30)), "h2", ALICE)
    assert void.status == "void" and "the plan changed" in void.message
    gone = judge(_req(approver=BOB, approved_at=now, expires_at=now - timedelta(seconds=1)), "h1", ALICE)
    assert gone.status == "expired" and "expired at" in gone.message
    selfish = judge(_req(approver=Operator("alice", 1001, "other"), approved_at=now, expires_at=now + timedelta(minutes=1)), "h1", ALICE)
    assert selfish.status == "self-approved"
    assert selfish.message == "self-approval is refused: alice (uid 1001) requested this run"


# -- the executor fails closed --------------------------------------------------------------------


def _run(tmp_path: Path, store: ApprovalStore | None, approvals: int = 2):
    cfg = _config(tmp_path, approvals=approvals)
    ref = cfg.clusters()[0]
    book = load_books(cfg.runbook_dirs)[0]["test.files"]
    work = tmp_path / "work"
    work.mkdir()
    (work / "go").touch()
    ctx = Context(ref, {"dir": str(work), "lagging": False, "fail": False}, run_id="r-closed")

    class Yes:
        async def confirm(self, step, commands, ctx):
            return True

        async def manual_done(self, step, commands, ctx):
            return True

    events: list[tuple[str, dict]] = []
    audit = AuditLog(tmp_path / "audit.jsonl")
    ex = Executor(book, ctx, audit=audit, confirmer=Yes(), observer=lambda e, **d: events.append((e, d)), approvals=store)
    state = tmp_path / "state"
    result = asyncio.run(ex.run(Journal.create(state, ctx.run_id), LocalLock(state, ref.key, me(ctx.run_id))))
    return result, work, [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()], events


def test_unreachable_coordination_database_stops_the_run_before_the_step(tmp_path):
    cfg = _config(tmp_path)
    result, work, audit, events = _run(tmp_path, ApprovalStore(cfg.locks.postgres))
    assert result.code is ExitCode.REFUSED
    assert "the approval cannot be checked" in result.message
    # A run with a step that needs approval asks before its first change, not half-way through.
    assert "nothing from 'write a' on ran" in result.message
    assert not (work / "a").exists() and not (work / "b").exists() and not (work / "c").exists()
    abort = audit[-1]
    assert abort["phase"] == "abort" and abort["outcome"] == "approval-refused" and abort["step"] == "a"


def test_environment_needing_approval_without_a_store_is_refused(tmp_path):
    result, work, _, _ = _run(tmp_path, None)
    assert result.code is ExitCode.REFUSED and "no approval store" in result.message
    assert not (work / "c").exists()


def test_environment_without_the_rule_is_unaffected(tmp_path):
    result, work, audit, events = _run(tmp_path, None, approvals=1)
    assert result.code is ExitCode.OK, result.message
    assert (work / "c").exists()
    assert not any(e == "approval-waiting" for e, _ in events)
    assert all("approved_by" not in r["params"] for r in audit)


def test_a_run_that_would_stop_for_want_of_confirm_is_refused_before_asking_for_approval(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dbops.cli import main

    _config(tmp_path)
    monkeypatch.setenv("DBOPS_STATE_DIR", str(tmp_path / "state"))
    res = CliRunner().invoke(main, ["--config", str(tmp_path / "dbops.toml"), "runbook", "run", "test.files", "--cluster", "files-db",
                                    "--param", f"dir={tmp_path}", "--yes"])
    assert res.exit_code == 1, res.output
    assert ("error: 'write c' asks for the cluster's name, and without a terminal that is --confirm files-db; refusing "
            "before asking a second operator to approve a run that would stop there") in res.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "state" / "audit.jsonl").exists()
