"""Commands that need no cluster work on a fresh machine, with no config file anywhere:
`dbops runbook list` shows the built-in runbooks, `dbops config path` says there is none and
where dbops looks; with a config, both say which file it is and what its runbook_dirs added."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "runbook_fixtures"


@pytest.fixture
def fresh(tmp_path):
    """A home with no config, a working directory without ./dbops.toml, no $DBOPS_CONFIG."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "DBOPS_CONFIG"}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), DBOPS_STATE_DIR=str(tmp_path / "state"))
    return {"env": env, "cwd": tmp_path, "home": home}


def dbops(fresh, *args):
    return subprocess.run([sys.executable, "-m", "dbops.cli", *args], capture_output=True, text=True, env=fresh["env"],
                          cwd=fresh["cwd"], stdin=subprocess.DEVNULL, timeout=60)


def test_runbook_list_without_any_config_shows_the_built_in_runbooks(fresh):
    r = dbops(fresh, "runbook", "list")
    assert r.returncode == 0, r.stderr
    assert "no configuration found" not in r.stdout + r.stderr
    assert any(line.startswith("postgres.promote-replica ") for line in r.stdout.splitlines())
    assert r.stdout.rstrip().splitlines()[-1].startswith("built-in runbooks only: no config file")
    assert "test.files" not in r.stdout
    r = dbops(fresh, "runbook", "list", "--json")
    assert r.returncode == 0, r.stderr
    books = json.loads(r.stdout)
    assert "postgres.promote-replica" in [b["id"] for b in books]
    assert {b["source"] for b in books} == {"built-in"}


def test_config_path_without_any_config_says_where_dbops_looks(fresh):
    r = dbops(fresh, "config", "path")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("no config file: dbops looks at --config PATH, $DBOPS_CONFIG, ./dbops.toml, ")
    assert str(fresh["home"] / ".config" / "dbops" / "dbops.toml") in r.stdout
    assert r.stderr == ""


def test_with_a_config_both_name_it_and_the_list_says_what_its_runbook_dirs_added(fresh):
    config = fresh["home"] / ".config" / "dbops" / "dbops.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'runbook_dirs = ["{FIXTURES}"]\n')
    r = dbops(fresh, "config", "path")
    assert (r.returncode, r.stdout.strip()) == (0, str(config))
    r = dbops(fresh, "runbook", "list")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert f"\nfrom runbook_dirs in {config}:\n" in text
    team = text.split(f"from runbook_dirs in {config}:\n")[1]
    assert any(line.startswith("test.files ") and line.endswith(f"({FIXTURES / 'files.py'})") for line in team.splitlines())
    assert "postgres.promote-replica" not in team  # the built-in ones are listed above it
    assert text.rstrip().splitlines()[-1].endswith(f"from runbook_dirs in {config} ({FIXTURES})")
    books = {b["id"]: b for b in json.loads(dbops(fresh, "runbook", "list", "--json").stdout)}
    assert books["test.files"]["source"] == str(FIXTURES / "files.py")
    assert books["postgres.promote-replica"]["source"] == "built-in"


def test_a_config_without_runbook_dirs_is_named_too(fresh):
    (fresh["cwd"] / "dbops.toml").write_text("")
    r = dbops(fresh, "runbook", "list")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().splitlines()[-1] == "built-in runbooks only: dbops.toml has no runbook_dirs"


def test_a_config_named_explicitly_must_exist(fresh):
    """--config names one file: its absence is an error, not "no config"."""
    r = dbops(fresh, "--config", str(fresh["cwd"] / "missing.toml"), "runbook", "list")
    assert r.returncode == 2
    assert "missing.toml: file does not exist" in r.stderr
