"""The runbook session every front end drives: resolving names and parameters, live choices,
scrubbed refusals, the lock, the journal, the run and its events; through a front end that
records what it is told, as a drill's would."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from dbops.audit import verify
from dbops.config import parse
from dbops.runbook.executor import ExitCode
from dbops.runbook.locks import LocalLock, me
from dbops.runbook.model import Confirm, Step
from dbops.runbook.session import MissingParam, RunbookSession, SessionError

from .runbook_fixtures.leaky import SECRET

FIXTURES = Path(__file__).parent / "runbook_fixtures"


def config(port: int = 1, approvals: int = 1) -> Any:
    coordination = '[locks.postgres]\nhost = "127.0.0.1"\nport = 1\npassword = { env = "NO_SUCH_VAR_FOR_TESTS" }\n' if approvals > 1 else ""
    return parse(f"""
runbook_dirs = ["{FIXTURES}"]
{coordination}
[environments.staging]
mode = "operator"
approvals = {approvals}
[environments.staging.clusters.files-db]
engine = "postgres"
timeout = 0.5
password = {{ env = "NO_SUCH_VAR_FOR_TESTS" }}
members = [{{ name = "m1", host = "127.0.0.1", port = {port}, role = "primary" }}]
""")


class Recorder:
    """A front end that answers yes (or types the cluster's name) and keeps every event."""

    def __init__(self, answer: bool = True, unanswerable: str | None = None) -> None:
        self.answer = answer
        self.unanswerable = unanswerable
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.asked: list[str] = []

    async def confirm(self, step: Step, commands: list[str], ctx: Any) -> bool:
        self.asked.append(step.id)
        return self.answer

    async def manual_done(self, step: Step, commands: list[str], ctx: Any) -> bool:
        return self.answer

    async def attest(self, step: Step, commands: list[str], ctx: Any, expected: str) -> bool:
        return self.answer

    def cannot_answer(self, step: Step, ref: Any) -> str | None:
        return self.unanswerable if step.confirm is Confirm.TYPE_CLUSTER else None

    def event(self, event: str, **data: Any) -> None:
        self.events.append((event, data))

    def names(self) -> list[str]:
        return [e for e, _ in self.events]


@pytest.fixture
def listening():
    """A port that accepts connections (the kernel completes them; nobody answers): a member that is up."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def session(tmp_path: Path, front: Recorder, port: int = 1, approvals: int = 1) -> RunbookSession:
    return RunbookSession(config(port, approvals), front, state=tmp_path / "state", allow_writes=False)


def test_names_and_parameters_are_resolved_or_refused_in_one_line(tmp_path):
    s = session(tmp_path, Recorder())
    ref = s.cluster("files-db")
    assert s.cluster("staging/files-db").key == ref.key == "staging/files-db"
    with pytest.raises(SessionError, match=r"^no cluster 'nope'; configured: staging/files-db$"):
        s.cluster("nope")
    with pytest.raises(SessionError, match=r"did you mean 'test.files'\?"):
        s.runbook("test.filez", ref)
    with pytest.raises(SessionError, match=r"^kafka.preferred-leader-election is a kafka runbook and files-db is a postgres cluster; "):
        s.runbook("kafka.preferred-leader-election", ref)
    book = s.runbook("test.files", ref)
    assert s.params(book, {"dir": "/w", "lagging": "yes"}) == {"dir": "/w", "lagging": True, "fail": False}
    with pytest.raises(MissingParam) as missing:
        s.params(book, {})
    assert missing.value.param.name == "dir" and missing.value.code is ExitCode.REFUSED
    with pytest.raises(SessionError, match="expected true or false, got 'maybe'"):
        s.params(book, {"dir": "/w", "lagging": "maybe"})
    with pytest.raises(SessionError, match=r"^test.files has no parameter 'nope'; parameters: dir, lagging, fail$"):
        s.params(book, {"dir": "/w", "nope": "1"})


def test_live_choices_are_validated_before_anything_runs(tmp_path, listening):
    front = Recorder()
    s = session(tmp_path, front, port=listening)
    ref = s.cluster("files-db")
    book = s.runbook("test.choices", ref)
    work = tmp_path / "work"
    work.mkdir()
    assert asyncio.run(s.choices(book, ref)) == {"target": ["m1"]}
    with pytest.raises(SessionError) as refused:
        asyncio.run(s.plan(book, ref, s.params(book, {"dir": str(work), "target": "m9"})))
    assert refused.value.message == "--param target=m9: not one of m1"
    with pytest.raises(SessionError) as refused:
        asyncio.run(s.run(book, ref, s.params(book, {"dir": str(work), "target": "m9"})))
    assert refused.value.message == "--param target=m9: not one of m1" and refused.value.run_id
    assert list(work.iterdir()) == [] and not (tmp_path / "state" / "audit.jsonl").exists()
    plan = asyncio.run(s.plan(book, ref, s.params(book, {"dir": str(work), "target": "m1"})))
    assert not plan.refused


def test_choices_that_cannot_be_read_are_one_line(tmp_path):
    s = session(tmp_path, Recorder())
    ref = s.cluster("files-db")
    book = s.runbook("test.choices", ref)
    with pytest.raises(SessionError) as refused:
        asyncio.run(s.plan(book, ref, s.params(book, {"dir": str(tmp_path), "target": "m1"})))
    assert refused.value.message.startswith("--param target=m1: cannot read the values it may take: ")
    assert refused.value.message.endswith("Connect call failed ('127.0.0.1', 1)")
    with pytest.raises(SessionError, match=r"^target: cannot read the values it may take: "):
        asyncio.run(s.choices(book, ref))


@pytest.mark.parametrize("where, said", [
    ("choices", "--param target=m1: cannot read the values it may take: could not connect to "),
    ("setup", "test.leaky: cannot open its connections: could not connect to "),
])
def test_a_password_in_an_error_is_never_shown(tmp_path, where, said):
    s = session(tmp_path, Recorder())
    ref = s.cluster("files-db")
    book = s.runbook("test.leaky", ref)
    params = s.params(book, {"where": where, "target": "m1"})
    for attempt in (s.plan(book, ref, params), s.run(book, ref, params)):
        with pytest.raises(SessionError) as refused:
            asyncio.run(attempt)
        assert refused.value.message == f"{said}postgresql://dbops:***@127.0.0.1/postgres: password=*** refused"
        assert SECRET not in str(refused.value)


def test_a_run_journals_audits_and_reports_its_events_in_order(tmp_path):
    front = Recorder()
    s = RunbookSession(config(), front, state=tmp_path / "state")
    ref = s.cluster("files-db")
    book = s.runbook("test.files", ref)
    work = tmp_path / "work"
    work.mkdir()
    (work / "go").touch()
    result = asyncio.run(s.run(book, ref, s.params(book, {"dir": str(work)})))
    assert result.code is ExitCode.OK, result.message
    assert front.asked == ["b", "c"]
    names = front.names()
    assert names[0] == "opened" and names[-1] == "outcome"  # no [audit.ship]: nothing shipped
    assert dict(front.events)["outcome"]["result"] is result
    assert ("progress", {"done": 2, "total": 2, "unit": "files"}) in front.events
    assert [d["step"].id for e, d in front.events if e == "done"] == ["a", "b", "c", "fail"]
    journal = (tmp_path / "state" / "runs" / f"{result.run_id}.jsonl").read_text().splitlines()
    assert json.loads(journal[-1])["event"] == "finished"
    assert verify(tmp_path / "state" / "audit.jsonl").ok
    # A finished run is not resumed: refused in the executor's words, and the session says so too.
    again = asyncio.run(s.resume(result.run_id))
    assert again.code is ExitCode.REFUSED and "already finished" in again.message
    with pytest.raises(SessionError, match="no-such-run"):
        asyncio.run(s.resume("no-such-run"))


def test_a_held_lock_refuses_the_run_naming_the_holder(tmp_path):
    s = session(tmp_path, Recorder())
    ref = s.cluster("files-db")
    book = s.runbook("test.files", ref)
    held = LocalLock(tmp_path / "state", ref.key, me("other-run"))
    work = tmp_path / "work"
    work.mkdir()

    async def go() -> None:
        await held.acquire()
        try:
            await s.run(book, ref, s.params(book, {"dir": str(work)}))
        finally:
            await held.release()

    with pytest.raises(SessionError) as refused:
        asyncio.run(go())
    assert "another runbook holds this cluster" in refused.value.message and "other-run" in refused.value.message
    assert refused.value.run_id and refused.value.code is ExitCode.REFUSED
    assert list(work.iterdir()) == []


def test_a_confirmation_the_front_end_could_not_answer_is_refused_before_asking_for_approval(tmp_path):
    front = Recorder(unanswerable="no one to type it")
    s = session(tmp_path, front, approvals=2)
    ref = s.cluster("files-db")
    book = s.runbook("test.files", ref)
    with pytest.raises(SessionError) as refused:
        asyncio.run(s.run(book, ref, s.params(book, {"dir": str(tmp_path)})))
    assert refused.value.message == ("no one to type it; refusing before asking a second operator to approve a run that "
                                     "would stop there")
    assert front.events == []  # nothing began
