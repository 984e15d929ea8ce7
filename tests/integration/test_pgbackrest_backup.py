"""postgres.backup through `dbops runbook`, with the sandbox's real pgBackRest stanza.

The sandbox is shared by the whole session: backups a test takes are expired again at its end,
so the stanza lists the backups it listed before.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dbops.audit import verify

from .conftest import make_state_dir

STANZA = "sandbox-pg"


def dbops(pg_sandbox, *args, state_dir: Path | None = None):
    state = state_dir or pg_sandbox.state_dir
    return subprocess.run(
        [sys.executable, "-m", "dbops.cli", *([] if "--config" in args else ["--config", str(pg_sandbox.config_path)]), *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, "DBOPS_STATE_DIR": str(state)},
        stdin=subprocess.DEVNULL,
    )


def info(pg_sandbox) -> dict:
    (stanza,) = json.loads(pg_sandbox.pg.pgbackrest("--output=json", "info", timeout=60))
    return stanza


def labels(pg_sandbox) -> list[str]:
    return [b["label"] for b in info(pg_sandbox)["backup"]]


def expire_new(pg_sandbox, before: list[str]) -> None:
    """Expire the backups taken since `before`, newest first (expiring a full takes the backups
    that depend on it along, hence the re-read). pgBackRest refuses to expire a stanza's only
    full backup: when the stanza had none before, that one full stays (repo1-retention-full
    bounds how many accumulate)."""
    had_full = any(label.endswith("F") for label in before)
    for label in reversed(labels(pg_sandbox)):
        if label in before or label not in labels(pg_sandbox):
            continue
        if label.endswith("F") and not had_full:
            continue
        pg_sandbox.pg.pgbackrest(f"--set={label}", "expire", timeout=120)
    left = [label for label in labels(pg_sandbox) if label not in before]
    assert left == ([] if had_full else left[:1]) and all(label.endswith("F") for label in left), left


def audit_records(state_dir: Path) -> list[dict]:
    path = state_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_id(stdout: str) -> str:
    return next(line.split()[-1] for line in stdout.splitlines() if line.startswith("run id:"))


async def test_plan_changes_nothing(pg_sandbox):
    before = info(pg_sandbox)
    intents = [r for r in audit_records(pg_sandbox.state_dir) if r["phase"] == "intent"]
    r = dbops(pg_sandbox, "runbook", "plan", "postgres.backup", "--cluster", STANZA, "--param", "type=full")
    assert r.returncode == 0, r.stdout + r.stderr
    for text in ("[ok  ] the stanza exists", "[ok  ] WAL archiving works", f"--stanza={STANZA} check",
                 f"--stanza={STANZA} --type=full backup", "--output=json info", "nothing was changed"):
        assert text in r.stdout, text
    assert info(pg_sandbox) == before
    assert [r for r in audit_records(pg_sandbox.state_dir) if r["phase"] == "intent"] == intents


async def test_full_then_incr_backup(pg_sandbox):
    before = labels(pg_sandbox)
    try:
        r = dbops(pg_sandbox, "runbook", "run", "postgres.backup", "--cluster", STANZA, "--param", "type=full", "--yes")
        assert r.returncode == 0, r.stdout + r.stderr
        newest = info(pg_sandbox)["backup"][-1]
        assert newest["label"] not in before and newest["type"] == "full"
        assert f"new backup {newest['label']} (full)" in r.stdout
        full_run = run_id(r.stdout)

        await pg_sandbox.fetch("pg1", "CREATE TABLE IF NOT EXISTS backup_rows AS SELECT generate_series(1, 1000) AS id")
        r = dbops(pg_sandbox, "runbook", "run", "postgres.backup", "--cluster", STANZA, "--yes")  # type defaults to incr
        assert r.returncode == 0, r.stdout + r.stderr
        incr = info(pg_sandbox)["backup"][-1]
        assert incr["type"] == "incr" and incr["prior"] == newest["label"], incr
        assert f"new backup {incr['label']} (incr)" in r.stdout

        records = audit_records(pg_sandbox.state_dir)
        for rid in (full_run, run_id(r.stdout)):
            mine = [(x["phase"], x["step"], x.get("outcome")) for x in records if x.get("run_id") == rid]
            assert ("intent", "backup", None) in mine and ("result", "backup", "ok") in mine, mine
            assert ("intent", "check", None) in mine and ("result", "check", "ok") in mine, mine
        assert verify(pg_sandbox.state_dir / "audit.jsonl").ok
    finally:
        await pg_sandbox.fetch("pg1", "DROP TABLE IF EXISTS backup_rows")
        expire_new(pg_sandbox, before)


async def test_broken_stanza_is_refused_at_precheck(pg_sandbox):
    """A private copy of the dbops config whose pgbackrest section names a private copy of the
    pgBackRest configuration, pointing at a repository that does not exist."""
    before = info(pg_sandbox)
    private = make_state_dir("dbops-it-pgbr-")
    try:
        real = Path(pg_sandbox.pg.state["pgbackrest"]["config"])
        text = real.read_text()
        assert "repo1-path=" in text
        conf = private / "pgbackrest.conf"
        conf.write_text("\n".join(f"repo1-path={private / 'no-such-repo'}" if line.startswith("repo1-path=") else line
                                  for line in text.splitlines()) + "\n")
        conf.chmod(0o644)  # pgBackRest reads it as the servers' OS user
        config = pg_sandbox.config_path.read_text()
        assert f'config = "{real}"' in config
        private_config = private / "dbops.toml"
        private_config.write_text(config.replace(f'config = "{real}"', f'config = "{conf}"'))

        r = dbops(pg_sandbox, "--config", str(private_config), "runbook", "run", "postgres.backup", "--cluster", STANZA,
                  "--param", "type=full", "--yes", state_dir=private)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "pre-checks refused" in r.stdout and "missing stanza path" in r.stdout, r.stdout
        records = audit_records(private)
        assert not [x for x in records if x["phase"] == "intent"]
        assert [x["outcome"] for x in records] == ["precheck-refused"]
        assert info(pg_sandbox)["backup"] == before["backup"]
    finally:
        shutil.rmtree(private)


async def test_cluster_without_pgbackrest_settings_is_refused(pg_sandbox):
    private = make_state_dir("dbops-it-pgbr-")
    try:
        config = pg_sandbox.config_path.read_text()
        head = "[environments.sandbox.clusters.sandbox-pg.pgbackrest]"
        start = config.index(head)
        end = config.index("\n\n", start)
        private_config = private / "dbops.toml"
        private_config.write_text(config[:start] + config[end + 2:])
        for runbook in ("postgres.backup", "postgres.restore"):
            r = dbops(pg_sandbox, "--config", str(private_config), "runbook", "plan", runbook, "--cluster", STANZA,
                      state_dir=private)
            assert r.returncode == 1, r.stdout + r.stderr
            assert "no pgBackRest settings for cluster sandbox-pg" in r.stdout, r.stdout
            assert "Traceback" not in r.stdout + r.stderr
    finally:
        shutil.rmtree(private)


async def test_backup_after_a_switchover(pg_sandbox):
    """With pg2 primary, WAL archiving still reaches the repository (archive-push runs from pg2's
    data directory) and pgBackRest backs up from pg2; then pg1 is made primary again."""
    before = labels(pg_sandbox)
    switch = ("runbook", "run", "postgres.promote-replica", "--cluster", STANZA, "--yes", "--confirm", STANZA)
    try:
        r = dbops(pg_sandbox, *switch, "--param", "candidate=pg2")
        assert r.returncode == 0, r.stdout + r.stderr
        r = dbops(pg_sandbox, "runbook", "run", "postgres.backup", "--cluster", STANZA, "--param", "type=full", "--yes")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "[ok] WAL archiving works: pg2 last archived" in r.stdout, r.stdout
        assert info(pg_sandbox)["backup"][-1]["label"] not in before
    finally:
        r = dbops(pg_sandbox, *switch, "--param", "candidate=pg1")
        assert r.returncode == 0, r.stdout + r.stderr
        pg_sandbox.wait_streaming()
        expire_new(pg_sandbox, before)


async def test_non_sandbox_cluster_uses_the_configured_pgbackrest_settings(pg_sandbox, tmp_path):
    """Outside a sandbox environment (credentials from the environment), the pgbackrest section
    of the config is all the runbooks need."""
    import re

    text = pg_sandbox.config_path.read_text().replace("sandbox = true", "sandbox = false")
    text = re.sub(r'\{ value = "[^"]*" \}', '{ env = "DBOPS_IT_PGBR_PW" }', text)  # every credential, S3's too
    config = tmp_path / "staging.toml"
    config.write_text(text)
    r = subprocess.run(
        [sys.executable, "-m", "dbops.cli", "--config", str(config), "runbook", "plan", "postgres.backup", "--cluster", STANZA],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        env={**os.environ, "DBOPS_STATE_DIR": str(pg_sandbox.state_dir), "DBOPS_IT_PGBR_PW": pg_sandbox.password},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[ok  ] pgBackRest settings are known for this cluster: stanza sandbox-pg" in r.stdout, r.stdout
    assert "all pre-checks pass; nothing was changed." in r.stdout


async def test_kill_9_during_the_backup_then_resume_takes_exactly_one_backup(pg_sandbox):
    """dbops killed as the backup step starts: its pgBackRest goes on; the resumed run waits for
    it instead of starting a second one (which pgBackRest's lock would refuse), then verifies."""
    from dbops.engines.postgres.pgbackrest import running_backups

    from .crash import resume, run_killed_after

    before = labels(pg_sandbox)
    try:
        journal, out = run_killed_after(pg_sandbox.config_path, pg_sandbox.state_dir,
                                        ["postgres.backup", "--cluster", STANZA, "--param", "type=full", "--yes"], "check",
                                        until=lambda: bool(running_backups(STANZA)))
        r = resume(pg_sandbox.config_path, pg_sandbox.state_dir, journal.stem, "--yes")
        new = [label for label in labels(pg_sandbox) if label not in before]
        assert len(new) == 1 and new[0].endswith("F"), (new, r.stdout)
        assert "still backing up stanza sandbox-pg from the interrupted attempt; waiting for it" in r.stdout, r.stdout
        assert f"new backup {new[0]} (full)" in r.stdout, r.stdout
        assert verify(pg_sandbox.state_dir / "audit.jsonl").ok
    finally:
        expire_new(pg_sandbox, before)
