"""The runbook wizard driven by keys: pick, plan, run with confirmations, decline."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from textual.widgets import DataTable, Input, OptionList, Static

from dbops.audit import verify
from dbops.config import parse
from dbops.screens.app import DbopsApp
from dbops.screens.runbook import ConfirmStep, PickRunbook, RunbookScreen
from tests.unit.runbook_fixtures.leaky import SECRET

from .frozen import CONFIG, NOW, FrozenHub

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "runbook_fixtures"


def make_app(tmp_path) -> DbopsApp:
    # the staging environment is in operator mode: writes allowed there
    cfg = parse(f'runbook_dirs = ["{FIXTURES}"]\n' + CONFIG)
    hub = FrozenHub(cfg)
    return DbopsApp(cfg, state_dir=tmp_path, hub=hub, clock=lambda: NOW)


async def settle(pilot, predicate, what, attempts=100):
    for _ in range(attempts):
        await pilot.pause(0.05)
        if predicate():
            return
    raise AssertionError(f"gave up waiting for {what}")


async def open_wizard(app, pilot, work: Path) -> RunbookScreen:
    app.open_cluster("staging/billing")
    await pilot.pause()
    await pilot.press("r")
    await settle(pilot, lambda: isinstance(app.screen, PickRunbook), "the runbook picker")
    option_list = app.screen.query_one(OptionList)
    index = next(i for i in range(option_list.option_count) if "test.files" in str(option_list.get_option_at_index(i).prompt))
    option_list.highlighted = index
    await pilot.press("enter")
    await settle(pilot, lambda: isinstance(app.screen, RunbookScreen), "the wizard")
    screen = app.screen
    # typed, as an operator does: the first parameter has the focus, so no key reaches a binding
    await pilot.press(*str(work))
    await pilot.pause()
    assert screen.query_one("#param-dir", Input).value == str(work)
    assert not app.hub.paused  # a 'p' in the path did not toggle the pause binding
    return screen


def log_text(screen) -> str:
    return "\n".join(str(line.text) for line in screen.query_one("#rb-log").lines)


async def test_plan_then_run_with_confirmations_and_summary(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "go").touch()
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_wizard(app, pilot, work)
        await pilot.press("ctrl+r")  # refused: no plan yet
        await pilot.pause()
        assert any("plan first" in n.message for n in app._notifications)
        await pilot.press("ctrl+l")
        await settle(pilot, lambda: screen.plan is not None, "the plan")
        checks = screen.query_one("#rb-checks", DataTable)
        assert checks.row_count == 2 and "all pre-checks pass" in log_text(screen)
        # the narrow Commands column shows what runs, not the comment line above it
        assert screen.query_one("#rb-steps", DataTable).get_cell("a", "commands") == f"echo ran >> {work}/a"
        assert list(work.iterdir()) == [work / "go"]  # planning changed nothing
        await pilot.press("ctrl+r")
        await settle(pilot, lambda: isinstance(app.screen, ConfirmStep), "step b's confirmation")
        # the step's description as written: a config section's name in brackets is not markup
        shown = "\n".join(str(w.render()) for w in app.screen.query(Static))
        assert "named in [work] like a config section" in shown, shown
        # step a reported its progress: the step's own bar and its line are shown
        assert screen.query_one("#rb-step-progress-row").display
        assert "progress: 100% (2 files of 2 files)" in str(screen.query_one("#rb-step-progress-text", Static).content)
        await pilot.press("y")
        await settle(pilot, lambda: isinstance(app.screen, ConfirmStep) and app.screen.typed, "step c's typed confirmation")
        await pilot.press(*"billing", "enter")
        await settle(pilot, lambda: screen.result is not None, "the end of the run")
        assert screen.result.code == 0, screen.result.message
        assert [screen.status[s] for s in "abc"] == ["done", "done", "done"]
        assert "summary:" in log_text(screen)
    recs = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in recs][:2] == [("intent", "a"), ("result", "a")]
    assert verify(tmp_path / "audit.jsonl").ok


async def test_declining_stops_the_run_and_is_audited(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "go").touch()
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_wizard(app, pilot, work)
        await pilot.press("ctrl+l")
        await settle(pilot, lambda: screen.plan is not None, "the plan")
        await pilot.press("ctrl+r")
        await settle(pilot, lambda: isinstance(app.screen, ConfirmStep), "step b's confirmation")
        await pilot.press("escape")
        await settle(pilot, lambda: screen.result is not None, "the end of the run")
        assert screen.result.code == 3
        assert [screen.status[s] for s in "abc"] == ["done", "declined", "pending"]
    assert not (work / "b").exists()
    recs = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert recs[-1]["phase"] == "abort" and recs[-1]["outcome"] == "declined" and recs[-1]["step"] == "b"


async def test_closing_the_console_during_a_confirmation_declines_it(tmp_path):
    """Quitting with a confirmation open is a "no": the run stops there (audited) and the
    console exits instead of waiting for an answer forever."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "go").touch()
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_wizard(app, pilot, work)
        await pilot.press("ctrl+l")
        await settle(pilot, lambda: screen.plan is not None, "the plan")
        await pilot.press("ctrl+r")
        await settle(pilot, lambda: isinstance(app.screen, ConfirmStep), "step b's confirmation")
    # the app has exited with the confirmation open
    assert not (work / "b").exists()
    recs = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert recs[-1]["phase"] == "abort" and recs[-1]["outcome"] == "declined" and recs[-1]["step"] == "b"
    assert verify(tmp_path / "audit.jsonl").ok


# -- the wizard and `dbops runbook` are front ends of one session: the same refusals, the same words


def cli_error(tmp_path: Path, monkeypatch, config: str, *args: str) -> str:
    """What `dbops runbook plan ...` says on stderr (the one line that is not a loading warning).
    Called in a thread: the command runs its own event loop."""
    from click.testing import CliRunner

    from dbops.cli import main

    path = tmp_path / "dbops.toml"
    path.write_text(config)
    monkeypatch.setenv("DBOPS_STATE_DIR", str(tmp_path / "cli-state"))
    res = CliRunner().invoke(main, ["--config", str(path), "runbook", "plan", *args, "--cluster", "billing"])
    assert res.exit_code == 1, res.output
    [line] = [x for x in res.stderr.splitlines() if not x.startswith("warning: ")]
    assert line.startswith("error: ")
    return line.removeprefix("error: ")


def live_config(port: int) -> str:
    """CONFIG with billing's member on this machine: at `port` it answers, or refuses."""
    member = '{ name = "b1", host = "10.1.0.1", role = "primary" }'
    assert member in CONFIG
    return f'runbook_dirs = ["{FIXTURES}"]\n' + CONFIG.replace(member, f'{{ name = "b1", host = "127.0.0.1", port = {port}, role = "primary" }}')


async def open_directly(app, pilot, runbook_id: str) -> RunbookScreen:
    from dbops.runbook.registry import load

    ref = next(r for r in app.config.clusters() if r.key == "staging/billing")
    app.push_screen(RunbookScreen(load(app.config.runbook_dirs)[0][runbook_id].for_cluster(ref), ref))
    await settle(pilot, lambda: isinstance(app.screen, RunbookScreen), "the wizard")
    return app.screen


def errors(app) -> list[str]:
    return [n.message for n in app._notifications if n.severity == "error"]


async def test_the_wizard_refuses_a_value_no_live_choice_offers_as_the_cli_does(tmp_path, monkeypatch):
    """Before the session, the wizard planned and ran with any value; the CLI refused it."""
    import socket

    work = tmp_path / "work"
    work.mkdir()
    with socket.socket() as member:  # b1 accepts connections: its choices can be read
        member.bind(("127.0.0.1", 0))
        member.listen(8)
        config = live_config(member.getsockname()[1])
        said = await asyncio.to_thread(cli_error, tmp_path, monkeypatch, config, "test.choices", "--param", f"dir={work}", "--param", "target=b9")
        assert said == "--param target=b9: not one of b1"
        cfg = parse(config)
        app = DbopsApp(cfg, state_dir=tmp_path / "state", hub=FrozenHub(cfg), clock=lambda: NOW)
        async with app.run_test(size=(100, 40)) as pilot:
            screen = await open_directly(app, pilot, "test.choices")
            await settle(pilot, lambda: "target: b1" in log_text(screen), "the choices offered")
            screen.query_one("#param-dir", Input).value = str(work)
            screen.query_one("#param-target", Input).value = "b9"
            await pilot.press("ctrl+l")
            await settle(pilot, lambda: errors(app), "the refusal")
            assert errors(app) == [said] and said in log_text(screen)
            assert screen.plan is None
            screen.query_one("#param-target", Input).value = "b1"
            await pilot.press("ctrl+l")
            await settle(pilot, lambda: screen.plan is not None, "the plan")
            # A value that was offered when planning is checked again when running.
            screen.query_one("#param-target", Input).value = "b9"
            await pilot.press("ctrl+r")
            await settle(pilot, lambda: screen.result is not None, "the refused run")
            assert screen.result.code == 1 and screen.result.message == said
    assert list(work.iterdir()) == []
    assert not (tmp_path / "state" / "audit.jsonl").exists()


async def test_the_wizard_scrubs_credentials_from_errors_as_the_cli_does(tmp_path, monkeypatch):
    """Before the session, the wizard showed an exception's raw text: a DSN's password too."""
    config = live_config(1)
    said = {where: await asyncio.to_thread(cli_error, tmp_path, monkeypatch, config, "test.leaky", "--param", f"where={where}",
                                           "--param", "target=b1")
            for where in ("choices", "setup")}
    assert said == {
        "choices": "--param target=b1: cannot read the values it may take: could not connect to "
                   "postgresql://dbops:***@127.0.0.1/postgres: password=*** refused",
        "setup": "test.leaky: cannot open its connections: could not connect to "
                 "postgresql://dbops:***@127.0.0.1/postgres: password=*** refused",
    }
    cfg = parse(config)
    app = DbopsApp(cfg, state_dir=tmp_path / "state", hub=FrozenHub(cfg), clock=lambda: NOW)
    async with app.run_test(size=(100, 40)) as pilot:
        screen = await open_directly(app, pilot, "test.leaky")
        screen.query_one("#param-target", Input).value = "b1"
        for n, where in enumerate(("choices", "setup"), start=1):
            screen.query_one("#param-where", Input).value = where
            await pilot.press("ctrl+l")
            await settle(pilot, lambda n=n: len(errors(app)) == n, f"the refusal ({where})")
            assert errors(app)[-1] == said[where]
        assert screen.plan is None
        shown = log_text(screen) + "\n".join(n.message for n in app._notifications)
    assert SECRET not in shown
