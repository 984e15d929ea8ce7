"""The runbook engine through its CLI, as an operator runs it: plan, run, confirmations,
overrides, failures, the lock, and kill -9 then resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbops.audit import verify

FIXTURES = Path(__file__).parent / "runbook_fixtures"

CONFIG = f"""
runbook_dirs = ["{FIXTURES}"]
[environments.staging]
mode = "operator"
[environments.staging.clusters.files-db]
engine = "postgres"
timeout = 0.5
password = {{ env = "NO_SUCH_VAR_FOR_TESTS" }}
members = [{{ name = "m1", host = "127.0.0.1", port = 1, role = "primary" }}]
"""


@pytest.fixture
def env(tmp_path):
    cfg = tmp_path / "dbops.toml"
    cfg.write_text(CONFIG)
    work = tmp_path / "work"
    work.mkdir()
    state = tmp_path / "state"
    return {"cfg": cfg, "work": work, "state": state, "env": {**os.environ, "DBOPS_STATE_DIR": str(state)}}


def dbops(env, *args, stdin=subprocess.DEVNULL):
    return subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(env["cfg"]), "runbook", *args],
                          capture_output=True, text=True, env=env["env"], stdin=stdin, timeout=60)


def audit(env):
    path = env["state"] / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def lines(env, name):
    p = env["work"] / name
    return p.read_text().count("ran") if p.exists() else 0


def test_list_shows_builtin_and_team_runbooks(env):
    r = dbops(env, "list", "--json")
    assert r.returncode == 0, r.stderr
    ids = [b["id"] for b in json.loads(r.stdout)]
    assert "test.files" in ids


def test_plan_prints_every_step_and_changes_nothing(env):
    r = dbops(env, "plan", "test.files", "--cluster", "files-db", "--param", f"dir={env['work']}")
    assert r.returncode == 0, r.stdout + r.stderr
    for text in ("[ok  ] work directory", "1. write a", f"$ echo ran >> {env['work']}/c", "DESTRUCTIVE", "confirm: type-cluster", "nothing was changed"):
        assert text in r.stdout
    assert list(env["work"].iterdir()) == [] and audit(env) == []


def test_full_run_with_yes_and_confirm(env):
    (env["work"] / "go").touch()
    r = dbops(env, "run", "test.files", "--cluster", "files-db", "--param", f"dir={env['work']}", "--yes", "--confirm", "files-db")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [lines(env, n) for n in "abc"] == [1, 1, 1]
    recs = audit(env)
    assert [(x["phase"], x["step"]) for x in recs] == [
        ("intent", "a"), ("result", "a"), ("intent", "b"), ("result", "b"), ("intent", "c"), ("result", "c"), ("intent", "fail"), ("result", "fail")
    ]
    assert all(x["outcome"] == "ok" for x in recs if x["phase"] == "result")
    assert verify(env["state"] / "audit.jsonl").ok
    assert "durations:" in r.stdout


def test_destructive_step_refuses_without_the_cluster_name(env):
    (env["work"] / "go").touch()
    r = dbops(env, "run", "test.files", "--cluster", "files-db", "--param", f"dir={env['work']}", "--yes")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "needs --confirm files-db" in r.stderr
    assert lines(env, "c") == 0 and lines(env, "b") == 1
    assert audit(env)[-1]["phase"] == "abort" and audit(env)[-1]["outcome"] == "declined"


def test_failed_precheck_refuses_and_an_override_needs_a_reason(env):
    base = ["run", "test.files", "--cluster", "files-db", "--param", f"dir={env['work']}", "--param", "lagging=true", "--yes", "--confirm", "files-db"]
    (env["work"] / "go").touch()
    r = dbops(env, *base)
    assert r.returncode == 1 and "candidate is 3 MiB behind" in r.stdout + r.stderr
    assert lines(env, "a") == 0
    assert audit(env)[-1]["outcome"] == "precheck-refused"
    r = dbops(env, *base, "--override", "lag=")
    assert r.returncode != 0 and "the reason is recorded" in r.stderr
    r = dbops(env, *base, "--override", "lag=replica rebuilt tonight, lag is expected")
    assert r.returncode == 0, r.stdout + r.stderr
    intents = [x for x in audit(env) if x["phase"] == "intent"]
    assert intents and all("replica rebuilt tonight" in x["reason"] for x in intents)


def test_failing_step_exits_2_with_what_to_do_and_resume_retries_it(env):
    (env["work"] / "go").touch()
    r = dbops(env, "run", "test.files", "--cluster", "files-db", "--param", f"dir={env['work']}", "--param", "fail=true", "--yes", "--confirm", "files-db")
    assert r.returncode == 2
    assert "step 'maybe fail' failed: the server said no" in r.stdout and "dbops runbook resume" in r.stdout
    run_id = r.stdout.strip().splitlines()[-1].split()[-1]
    r = dbops(env, "resume", run_id, "--yes", "--confirm", "files-db")
    assert r.returncode == 2  # still failing (the parameter is journaled), and nothing ran twice
    assert [lines(env, n) for n in "abc"] == [1, 1, 1]


def test_bad_parameters_are_refused_before_anything_runs(env):
    r = dbops(env, "plan", "test.files", "--cluster", "files-db")
    assert r.returncode == 1 and "needs --param dir=" in r.stderr
    r = dbops(env, "plan", "test.files", "--cluster", "files-db", "--param", f"dir={env['work']}", "--param", "lagging=maybe")
    assert r.returncode == 1 and "expected true or false" in r.stderr
    r = dbops(env, "plan", "test.filez", "--cluster", "files-db")
    assert r.returncode == 1 and "did you mean 'test.files'" in r.stderr
    r = dbops(env, "plan", "test.files", "--cluster", "nope", "--param", "dir=x")
    assert r.returncode == 1 and "no cluster 'nope'" in r.stderr
    assert "Traceback" not in r.stderr


def test_read_only_environment_refuses(env):
    env["cfg"].write_text(CONFIG.replace('mode = "operator"', 'mode = "read-only"'))
    r = dbops(env, "run", "test.files", "--cluster", "files-db", "--param", f"dir={env['work']}", "--yes", "--confirm", "files-db")
    assert r.returncode == 1 and "read-only" in r.stdout + r.stderr
    assert lines(env, "a") == 0


def _start_and_wait_for_step_b(env):
    proc = subprocess.Popen(
        [sys.executable, "-m", "dbops.cli", "--config", str(env["cfg"]), "runbook", "run", "test.files", "--cluster", "files-db",
         "--param", f"dir={env['work']}", "--yes", "--confirm", "files-db"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env["env"], stdin=subprocess.DEVNULL,
    )
    runs = env["state"] / "runs"
    for _ in range(400):
        journals = list(runs.glob("*.jsonl")) if runs.exists() else []
        if journals and '"step": "b"' in journals[0].read_text():
            return proc, journals[0].stem
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the run never reached step b: " + proc.stderr.read())


def test_second_console_is_refused_naming_the_holder(env):
    proc, run_id = _start_and_wait_for_step_b(env)
    try:
        r = dbops(env, "run", "test.files", "--cluster", "files-db", "--param", f"dir={env['work']}", "--yes", "--confirm", "files-db")
        assert r.returncode == 1
        assert "another runbook holds this cluster" in r.stderr and run_id in r.stderr
    finally:
        (env["work"] / "go").touch()
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_kill_9_mid_run_then_resume_finishes_without_repeating_steps(env):
    proc, run_id = _start_and_wait_for_step_b(env)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert lines(env, "a") == 1 and lines(env, "b") == 0
    (env["work"] / "go").touch()
    r = dbops(env, "resume", run_id, "--yes", "--confirm", "files-db")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "interrupted step 'wait for go, write b' re-verified: not done" in r.stdout
    assert [lines(env, n) for n in "abc"] == [1, 1, 1]
    recs = audit(env)
    # b's first intent has no result (it was in flight when dbops died); the resumed run wrote a new pair
    assert [(x["phase"], x["step"]) for x in recs if x["step"] == "b"] == [("intent", "b"), ("intent", "b"), ("result", "b")]
    assert verify(env["state"] / "audit.jsonl").ok
    r = dbops(env, "resume", run_id, "--yes", "--confirm", "files-db")
    assert r.returncode == 1 and "already finished" in r.stdout


def test_a_step_with_nothing_to_do_is_skipped_without_a_confirmation(env):
    r = dbops(env, "run", "test.plan-shapes", "--cluster", "files-db", "--param", f"dir={env['work']}")
    assert r.returncode == 0, r.stdout + r.stderr  # no --yes: the skipped step asked nothing
    assert "· nothing to do here: nothing to do" in r.stdout
    assert not (env["work"] / "idle").exists() and (env["work"] / "w").exists()
    assert [rec["action"] for rec in audit(env) if rec["phase"] == "intent"] == ["test.plan-shapes:w"]


def test_a_step_whose_commands_cannot_be_shown_refuses_the_run(env):
    r = dbops(env, "plan", "test.plan-shapes", "--cluster", "files-db", "--param", f"dir={env['work']}", "--param", "broken=true")
    assert "# the commands cannot be shown: 'never_set' (see the pre-checks)" in r.stdout
    r = dbops(env, "run", "test.plan-shapes", "--cluster", "files-db", "--param", f"dir={env['work']}", "--param", "broken=true")
    assert r.returncode == 1
    assert "refused: the commands of write w cannot be shown" in r.stdout + r.stderr
    assert not (env["work"] / "w").exists()


def test_a_runbook_for_another_engine_is_refused_naming_the_ones_that_apply(env):
    for command in (["plan"], ["run", "--yes"]):
        r = dbops(env, *command, "kafka.preferred-leader-election", "--cluster", "files-db")
        assert r.returncode == 1, r.stdout + r.stderr
        [line] = [x for x in r.stderr.splitlines() if not x.startswith("warning: ")]  # warnings: runbooks that did not load
        assert line.startswith("error: kafka.preferred-leader-election is a kafka runbook and files-db is a postgres cluster; "
                               "runbooks for staging/files-db (postgres): "), line
        offered = line.split("(postgres): ")[1].split(", ")
        assert {"postgres.promote-replica", "test.files"} <= set(offered)
        assert not any(b.startswith(("kafka.", "redis.", "k8s.", "cnpg.")) for b in offered)
        assert r.stdout == ""
    # A platform runbook needs the cluster's [kubernetes]; nothing was run or audited.
    r = dbops(env, "plan", "k8s.trigger-backup-job", "--cluster", "files-db", "--param", "cronjob=nightly")
    assert r.returncode == 1
    assert ("error: k8s.trigger-backup-job is a kubernetes runbook and files-db has no [kubernetes] section in the config; "
            "runbooks for staging/files-db (postgres): ") in r.stderr
    assert audit(env) == []


def test_choices_that_cannot_be_read_from_a_dead_server_are_one_clear_line(env):
    for command in (["plan"], ["run", "--yes"]):
        r = dbops(env, *command, "test.choices", "--cluster", "files-db", "--param", f"dir={env['work']}", "--param", "target=m1")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "Traceback" not in r.stderr
        [line] = [x for x in r.stderr.splitlines() if not x.startswith("warning: ")]  # warnings: runbooks that did not load
        assert line.startswith("error: --param target=m1: cannot read the values it may take: "), line
        assert line.endswith("Connect call failed ('127.0.0.1', 1)"), line
    assert list(env["work"].iterdir()) == [] and audit(env) == []
