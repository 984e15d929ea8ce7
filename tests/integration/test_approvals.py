"""The two-person rule with two real OS users, a real coordination database and a runbook that
really writes a row: the runner (one uid) waits at its destructive step; its own approval is
refused; a second uid's approval lets it go on; an expired approval and a changed plan are
refused; both identities are in the audit logs.

The coordination server is the session sandbox's `coord`.

The users run dbops through `setpriv` with their own uid/gid. The interpreter lives under /root
(0700) here: when that path is not traversable by other uids, the users get the
CAP_DAC_READ_SEARCH capability (read and traverse only: they still cannot write anything that
is not theirs, and their uid, which is what dbops judges, is their own).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dbops.config import CoordinationDb, SecretRef
from dbops.runbook.approvals import ApprovalRefused, ApprovalStore, Operator

RUNBOOK = '''
"""A team runbook for the approvals test: one destructive step that writes a row."""
import asyncpg

from dbops.runbook.model import Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.secrets import resolve


async def _connect(ctx):
    c = ctx.ref.cluster
    m = c.members[0]
    return await asyncpg.connect(host=m.host, port=m.port, user=c.user, database=c.database,
                                 password=resolve(c.password).reveal(), ssl=False, timeout=5)


async def _write(ctx: Context) -> None:
    conn = await _connect(ctx)
    try:
        await conn.execute("INSERT INTO approvals_it_rows (tag) VALUES ($1) ON CONFLICT DO NOTHING", ctx.params["tag"])
    finally:
        await conn.close()


async def _written(ctx: Context) -> Verdict:
    conn = await _connect(ctx)
    try:
        n = await conn.fetchval("SELECT count(*) FROM approvals_it_rows WHERE tag = $1", ctx.params["tag"])
    finally:
        await conn.close()
    return Verdict(n == 1, f"{n} row(s) tagged {ctx.params['tag']}")


RUNBOOK = Runbook(
    id="team.write-row",
    engine="postgres",
    title="Write a row",
    description="Writes one row into approvals_it_rows",
    params=(Param("tag", "the row's tag", required=True),),
    steps=(
        Step("write", "Write the row", "inserts the row", Kind.ACTION,
             lambda ctx: [f"INSERT INTO approvals_it_rows (tag) VALUES ('{ctx.params['tag']}')"],
             _write, _written, destructive=True, confirm=Confirm.YES_NO),
    ),
)
'''


@dataclass
class Coord:
    port: int
    password: str
    host: str = "127.0.0.1"
    user: str = "dbops"
    database: str = "dbops"

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        import asyncpg

        conn = await asyncpg.connect(host=self.host, port=self.port, user=self.user, database=self.database,
                                     password=self.password, ssl=False, timeout=10)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    def sql(self, sql: str, *args: Any) -> list[Any]:
        return asyncio.run(self.fetch(sql, *args))


@pytest.fixture(scope="module")
def coord(pg_sandbox: Any) -> Coord:
    """The session sandbox's coordination server (`coord`: role and database dbops)."""
    return Coord(pg_sandbox.pg.port("coord"), pg_sandbox.pg.password)


# -- two operators ---------------------------------------------------------------------------------


@dataclass
class User:
    name: str
    uid: int
    gid: int
    state: Path  # its DBOPS_STATE_DIR (and HOME)

    def audit(self) -> list[dict[str, Any]]:
        path = self.state / "audit.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _traversable_by_others(path: Path) -> bool:
    """Whether a uid that is neither owner nor group can reach and run `path`."""
    path = Path(path).resolve()
    for d in [*reversed(path.parents)]:
        if not d.stat().st_mode & 0o001:
            return False
    return bool(path.stat().st_mode & 0o001)


NEEDS_CAP = not _traversable_by_others(Path(sys.executable))


@dataclass
class Env:
    coord: Coord
    base: Path
    config: Path
    runner: User
    approver: User

    def dbops(self, user: User, *args: str, background: bool = False, out: Path | None = None) -> Any:
        argv = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups"]
        if NEEDS_CAP:
            argv += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
        argv += [sys.executable, "-m", "dbops.cli", "--config", str(self.config), "runbook", *args]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(user.state), "USER": user.name,
               "LOGNAME": user.name, "DBOPS_STATE_DIR": str(user.state), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
        if background:
            assert out is not None
            fh = out.open("w")
            return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.base)
        return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env, cwd=self.base, timeout=120)

    def store(self) -> ApprovalStore:
        return ApprovalStore(CoordinationDb(host=self.coord.host, port=self.coord.port, database="dbops", user="dbops",
                                            password=SecretRef(value=self.coord.password)))

    def pending_run(self, tag: str, out: Path, timeout: float = 60) -> Any:
        """The waiting request of the run writing `tag`, once the runner has published it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for req in asyncio.run(self.store().pending()):
                if f'"tag": "{tag}"' in req.plan_text:
                    return req
            time.sleep(0.3)
        raise AssertionError(f"no approval request for the run writing {tag} within {timeout}s:\n{out.read_text()}")

    def rows(self, tag: str) -> int:
        return self.coord.sql("SELECT count(*) AS n FROM approvals_it_rows WHERE tag = $1", tag)[0]["n"]


def _useradd(name: str, base: Path) -> User:
    subprocess.run(["useradd", "-M", "-N", "-g", "nogroup", "-s", "/usr/sbin/nologin", "-d", str(base / name), name],
                   check=True, capture_output=True, timeout=30)
    info = pwd.getpwnam(name)
    state = base / name
    state.mkdir(mode=0o700)
    os.chown(state, info.pw_uid, info.pw_gid)
    return User(name, info.pw_uid, info.pw_gid, state)


@pytest.fixture(scope="module")
def env(coord: Coord) -> Iterator[Env]:
    base = Path(tempfile.mkdtemp(prefix="dbops-approvals-", dir="/tmp"))
    base.chmod(0o755)
    books = base / "runbooks"
    books.mkdir(mode=0o755)
    (books / "write_row.py").write_text(RUNBOOK)
    secret = base / "coord-password"
    secret.write_text(coord.password + "\n")
    secret.chmod(0o644)  # both test users read it; a real bastion would use a group-readable file
    config = base / "dbops.toml"
    config.write_text(f"""
runbook_dirs = ["{books}"]

[locks.postgres]
host = "{coord.host}"
port = {coord.port}
database = "dbops"
user = "dbops"
password = {{ file = "{secret}" }}
tls = {{ mode = "disable" }}

[environments.staging]
mode = "operator"
production = false
approvals = 2
approval_ttl_seconds = 60

[environments.staging.clusters.rows]
engine = "postgres"
database = "dbops"
user = "dbops"
password = {{ file = "{secret}" }}
tls = {{ mode = "disable" }}
members = [{{ name = "coord", host = "{coord.host}", port = {coord.port}, role = "primary" }}]
""")
    config.chmod(0o644)
    coord.sql("CREATE TABLE IF NOT EXISTS approvals_it_rows (tag text PRIMARY KEY)")
    names = [f"dbops-run-{os.getpid()}", f"dbops-approver-{os.getpid()}"]
    made: list[str] = []
    try:
        users = []
        for name in names:
            users.append(_useradd(name, base))
            made.append(name)
        yield Env(coord, base, config, users[0], users[1])
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True, timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def _wait_exit(proc: subprocess.Popen, out: Path, timeout: float = 90) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the run did not finish within {timeout}s:\n{out.read_text()}") from None
    return code, out.read_text()


def _wait_text(out: Path, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in out.read_text():
            return out.read_text()
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in the runner's output within {timeout}s:\n{out.read_text()}")


# -- the tests -------------------------------------------------------------------------------------------


def test_users_are_real_and_distinct(env: Env):
    r = env.dbops(env.approver, "approvals")
    assert r.returncode == 0, r.stdout + r.stderr
    assert env.runner.uid != env.approver.uid and 0 not in (env.runner.uid, env.approver.uid)


def test_self_approval_refused_and_a_second_operator_lets_the_run_go_on(env: Env):
    out = env.base / "run1.out"
    proc = env.dbops(env.runner, "run", "team.write-row", "--cluster", "rows", "--param", "tag=first", "--yes",
                     background=True, out=out)
    try:
        req = env.pending_run("first", out)
        text = _wait_text(out, "who may approve")
        run_id = req.run_id
        # What the waiting runner shows: the run id, the plan hash, who may approve.
        assert f"run id:    {run_id}" in text
        assert f"plan hash: {req.plan_hash}" in text
        assert (f"who may approve: any operator other than {env.runner.name} (uid {env.runner.uid}) — "
                f"`dbops runbook approve {run_id}`") in text
        assert req.requester.uid == env.runner.uid and req.requester.name == env.runner.name
        assert env.rows("first") == 0  # nothing ran yet

        # The list every console can read.
        listed = env.dbops(env.approver, "approvals")
        assert listed.returncode == 0, listed.stderr
        assert run_id in listed.stdout and "team.write-row" in listed.stdout and req.plan_hash[:12] in listed.stdout
        assert f"{env.runner.name} (uid {env.runner.uid})" in listed.stdout

        # The runner cannot approve its own run.
        mine = env.dbops(env.runner, "approve", run_id, "--yes")
        assert mine.returncode == 1, mine.stdout + mine.stderr
        refusal = f"self-approval is refused: {env.runner.name} (uid {env.runner.uid}) requested this run"
        assert f"error: {refusal}" in mine.stderr
        refused = [r for r in env.runner.audit() if r["action"] == "runbook.approve"]
        assert [(r["phase"], r["outcome"], r["reason"]) for r in refused] == [("abort", "refused", refusal)]
        assert refused[0]["operator"]["uid"] == env.runner.uid
        assert env.rows("first") == 0 and proc.poll() is None  # still waiting

        # A second operator reads the same plan and approves it.
        ok = env.dbops(env.approver, "approve", run_id, "--yes")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert req.plan_text in ok.stdout and f"plan hash: {req.plan_hash}" in ok.stdout
        assert f"requested by {env.runner.name} (uid {env.runner.uid})" in ok.stdout
        assert f"approved run {run_id} (plan {req.plan_hash[:12]}) as {env.approver.name} (uid {env.approver.uid})" in ok.stdout

        code, text = _wait_exit(proc, out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, text
    assert f"✓ approved by {env.approver.name} (uid {env.approver.uid})" in text
    assert env.rows("first") == 1

    # Both identities in the audit logs: the approver's own record, and the runner's step intent.
    mine = [r for r in env.approver.audit() if r["action"] == "runbook.approve"]
    assert [(r["phase"], r["outcome"]) for r in mine] == [("intent", None), ("result", "ok")]
    assert mine[0]["params"]["run_id"] == run_id and mine[0]["params"]["plan_hash"] == req.plan_hash
    assert mine[0]["operator"]["uid"] == env.approver.uid
    step = [r for r in env.runner.audit() if r["action"] == "team.write-row:write"]
    assert [(r["phase"], r["outcome"]) for r in step] == [("intent", None), ("result", "ok")]
    intent = step[0]
    assert intent["operator"]["uid"] == env.runner.uid
    assert intent["params"]["approved_by"]["name"] == env.approver.name
    assert intent["params"]["approved_by"]["uid"] == env.approver.uid
    assert intent["params"]["plan_hash"] == req.plan_hash


def test_an_expired_approval_is_refused(env: Env):
    out = env.base / "run2.out"
    proc = env.dbops(env.runner, "run", "team.write-row", "--cluster", "rows", "--param", "tag=late", "--yes",
                     background=True, out=out)
    try:
        req = env.pending_run("late", out)
        _wait_text(out, "who may approve")
        # The runner is held still (a slow console) while the approval is given and then runs
        # out: the database says when it expires, and the test moves that into the past.
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            ok = env.dbops(env.approver, "approve", req.run_id, "--yes")
            assert ok.returncode == 0, ok.stdout + ok.stderr
            env.coord.sql("UPDATE dbops_approvals SET expires_at = now() - interval '1 second' WHERE run_id = $1", req.run_id)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        code, text = _wait_exit(proc, out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 1, text
    assert f"refused: the approval by {env.approver.name} (uid {env.approver.uid})" in text and "expired at" in text
    assert "nothing from 'Write the row' on ran" in text
    assert env.rows("late") == 0
    aborts = [r for r in env.runner.audit() if r["run_id"] == req.run_id and r["phase"] == "abort"]
    assert [(a["outcome"], a["step"]) for a in aborts] == [("approval-refused", "write")]
    assert "expired" in aborts[0]["reason"]
    assert not [r for r in env.runner.audit() if r["run_id"] == req.run_id and r["action"] == "team.write-row:write"]


def test_a_changed_plan_voids_the_approval(env: Env):
    store = env.store()
    runner = Operator(env.runner.name, env.runner.uid, "bastion1")
    approver = Operator(env.approver.name, env.approver.uid, "bastion2")
    run_id = f"void-{os.getpid()}"
    common = dict(environment="staging", cluster="rows", runbook="team.write-row", requester=runner, ttl_seconds=60)
    asyncio.run(store.request(run_id, plan_hash="a" * 64, plan_text="plan A\n", **common))
    asyncio.run(store.approve(run_id, "a" * 64, approver))
    assert asyncio.run(store.approval_state(run_id, "a" * 64, runner)).approved
    # The run re-rendered another plan (a resume after the cluster changed): not approved ...
    state = asyncio.run(store.approval_state(run_id, "b" * 64, runner))
    assert state.status == "void" and "the plan changed" in state.message
    # ... and its new request voids the old approval.
    asyncio.run(store.request(run_id, plan_hash="b" * 64, plan_text="plan B\n", **common))
    req = asyncio.run(store.get(run_id))
    assert req is not None and req.approver is None and req.plan_text == "plan B\n"
    assert asyncio.run(store.approval_state(run_id, "b" * 64, runner)).status == "waiting"
    # An approver still holding plan A is told the plan changed.
    with pytest.raises(ApprovalRefused, match="the plan changed since you read it"):
        asyncio.run(store.approve(run_id, "a" * 64, approver))
    # Self-approval is refused at the store too (a different host does not make another person).
    with pytest.raises(ApprovalRefused, match=f"self-approval is refused: {env.runner.name}"):
        asyncio.run(store.approve(run_id, "b" * 64, Operator(env.runner.name, env.runner.uid, "bastion9")))
    assert asyncio.run(store.approve(run_id, "b" * 64, approver)).approver == approver


def test_an_unreachable_coordination_database_is_one_clear_line(env: Env):
    bad = env.base / "bad.toml"
    bad.write_text(env.config.read_text().replace(f"port = {env.coord.port}\ndatabase", "port = 1\ndatabase", 1))
    bad.chmod(0o644)
    r = subprocess.run(
        [sys.executable, "-m", "dbops.cli", "--config", str(bad), "runbook", "approvals"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
        env={**os.environ, "DBOPS_STATE_DIR": str(env.base / "root-state")})
    assert r.returncode == 1
    assert r.stderr.startswith("error: cannot reach the coordination database dbops on 127.0.0.1:1: ")
    assert len(r.stderr.strip().splitlines()) == 1 and env.coord.password not in r.stderr


# -- the console: the waiting state, the list, the notice, approving from there --------------------


async def _settle(pilot: Any, predicate: Any, what: str, attempts: int = 300, show: Any = lambda: "") -> None:
    for _ in range(attempts):
        if predicate():
            return
        await pilot.pause(0.1)
    raise AssertionError(f"timed out waiting for {what} {show()}")


def test_a_console_shows_the_waiting_run_and_its_operator_approves_it_there(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from textual.widgets import DataTable, Static

    from dbops.audit import verify
    from dbops.config import load
    from dbops.screens.app import DbopsApp
    from dbops.screens.approvals import ApprovalsScreen, ApproveModal

    out = env.base / "run-console.out"
    proc = env.dbops(env.runner, "run", "team.write-row", "--cluster", "rows", "--param", "tag=console", "--yes",
                     background=True, out=out)
    # This console's operator is the approver (root under sudo: SUDO_UID names the human).
    monkeypatch.setenv("SUDO_UID", str(env.approver.uid))
    monkeypatch.setenv("SUDO_USER", env.approver.name)
    try:
        req = env.pending_run("console", out)

        async def drive() -> None:
            app = DbopsApp(load(env.config), state_dir=tmp_path)
            async with app.run_test(size=(100, 30)) as pilot:
                await _settle(pilot, lambda: any(r.run_id == req.run_id for r in app.waiting_approvals), "the watcher")
                assert any(f"run {req.run_id} (team.write-row on staging/rows) by {env.runner.name} waits for a second "
                           "operator's approval: press V" in n.message for n in app._notifications)
                assert "1 approval(s) waiting (V)" in app.sub_title
                await pilot.press("V")
                await _settle(pilot, lambda: isinstance(app.screen, ApprovalsScreen) and req.run_id in app.screen.requests,
                              "the approvals list", show=lambda: getattr(app.screen, "summary", ""))
                screen = app.screen
                table = screen.query_one("#approvals-table", DataTable)
                assert [str(c) for c in table.get_row_at(0)] == [
                    req.run_id, "team.write-row", "staging/rows", f"{env.runner.name} (uid {env.runner.uid})",
                    str(table.get_row_at(0)[4])]
                shown = str(screen.query_one("#approvals-plan-text", Static).content)
                assert req.plan_text in shown and req.plan_hash in shown
                await pilot.press("a")
                await _settle(pilot, lambda: isinstance(app.screen, ApproveModal) and app.screen.is_mounted, "the approve modal")
                await pilot.press("y")
                await _settle(pilot, lambda: any(f"approved run {req.run_id}" in n.message for n in app._notifications),
                              "the approval", show=lambda: [n.message for n in app._notifications])
                await _settle(pilot, lambda: not screen.requests, "the list to empty", attempts=200)

        asyncio.run(drive())
        code, text = _wait_exit(proc, out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, text
    assert f"✓ approved by {env.approver.name} (uid {env.approver.uid})" in text
    assert env.rows("console") == 1
    recs = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    mine = [r for r in recs if r["action"] == "runbook.approve"]
    assert [(r["phase"], r["outcome"]) for r in mine] == [("intent", None), ("result", "ok")]
    assert mine[0]["params"]["approver"]["uid"] == env.approver.uid and mine[0]["params"]["run_id"] == req.run_id
    assert verify(tmp_path / "audit.jsonl").ok


def test_the_wizard_shows_the_waiting_state_until_a_second_operator_approves(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from textual.widgets import DataTable, OptionList, Static

    from dbops.config import load
    from dbops.screens.app import DbopsApp
    from dbops.screens.runbook import ConfirmStep, PickRunbook, RunbookScreen

    # This console's operator is the runner; the approver uses the CLI as another uid.
    monkeypatch.setenv("SUDO_UID", str(env.runner.uid))
    monkeypatch.setenv("SUDO_USER", env.runner.name)
    approved: list[Any] = []

    async def drive() -> str:
        app = DbopsApp(load(env.config), state_dir=tmp_path, allow_writes=True)
        async with app.run_test(size=(120, 36)) as pilot:
            app.open_runbooks("staging/rows")
            await _settle(pilot, lambda: isinstance(app.screen, PickRunbook) and bool(app.screen.query(OptionList)),
                          "the runbook picker", show=lambda: [str(s.content) for s in app.screen.query(Static)])
            options = app.screen.query_one(OptionList)
            options.highlighted = next(i for i in range(options.option_count)
                                       if "team.write-row" in str(options.get_option_at_index(i).prompt))
            await pilot.press("enter")
            await _settle(pilot, lambda: isinstance(app.screen, RunbookScreen) and app.screen.is_mounted, "the wizard")
            wizard = app.screen
            await pilot.press(*"wizard")  # the first parameter (tag) has the focus
            await pilot.press("ctrl+l")
            await _settle(pilot, lambda: wizard.plan is not None, "the plan")
            await pilot.press("ctrl+r")
            # The approval comes first: the step's own confirmation follows it.
            await _settle(pilot, lambda: wizard.status.get("write") == "waiting", "the waiting state",
                          show=lambda: wizard.status)
            log = "\n".join(str(line.text) for line in wizard.query_one("#rb-log").lines)
            assert "waiting for a second operator's approval before 'Write the row'" in log
            assert f"who may approve: any operator other than {env.runner.name} (uid {env.runner.uid})" in log
            assert str(wizard.query_one("#rb-steps", DataTable).get_row("write")[0]) == "◷"
            assert await asyncio.to_thread(env.rows, "wizard") == 0
            req = next(r for r in await env.store().pending() if '"tag": "wizard"' in r.plan_text)
            assert f"run {req.run_id}, plan {req.plan_hash[:12]}" in log
            r = await asyncio.to_thread(env.dbops, env.approver, "approve", req.run_id, "--yes")
            approved.append(r)
            await _settle(pilot, lambda: isinstance(app.screen, ConfirmStep) and app.screen.is_mounted, "the step's confirmation", attempts=300)
            await pilot.press("y")
            await _settle(pilot, lambda: wizard.result is not None, "the run to finish", attempts=300)
            return "\n".join(str(line.text) for line in wizard.query_one("#rb-log").lines)

    log = asyncio.run(drive())
    assert approved[0].returncode == 0, approved[0].stdout + approved[0].stderr
    assert f"✓ approved by {env.approver.name} (uid {env.approver.uid})" in log
    assert "Write a row: done" in log
    assert env.rows("wizard") == 1
