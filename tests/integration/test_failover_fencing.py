"""Failover that cannot split the brain, on a private sandbox (these tests kill primaries).

In order, on one sandbox: a failover fenced by the sandbox itself (the old primary restarts as
a standby); a fence that cannot be verified (nothing promoted, exit 2) and its audited override,
in a production environment that also demands a shared lock; a manual fence (an audited
attestation), after which the old primary started by hand is shown as split brain; two
consoles racing for one cluster through the coordination database; and a switchover whose
advisory lock on the cluster moves to the new primary.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbops import sandbox
from dbops.audit import verify
from dbops.sandbox.postgres import PostgresSandbox

from .conftest import running_sandbox
from .crash import steps_done


@pytest.fixture(scope="module")
def fence_sandbox() -> Iterator[tuple[Path, PostgresSandbox]]:
    with running_sandbox(("postgres",), "dbops-fence-") as root:
        yield root, PostgresSandbox(root)


def dbops(config: Path, state_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(config), *args], capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL, env={**os.environ, "DBOPS_STATE_DIR": str(state_dir), **(env or {})})


def variant(root: Path, name: str, *, fencing: str | None = None, production: bool = False, coordination: bool = True) -> Path:
    """The sandbox's config with a [fencing] section, production on, or no [locks.postgres]."""
    text = sandbox.config_path(root=root).read_text()
    if not coordination:
        text = re.sub(r"(?ms)^\[locks\.postgres\]\n.*?(?=^\[|\Z)", "", text)
    if production:
        text = text.replace("[environments.sandbox]\n", "[environments.sandbox]\nproduction = true\n", 1)
        assert "production = true" in text
    if fencing is not None:
        text += f"\n[environments.sandbox.clusters.sandbox-pg.fencing]\n{fencing}\n"
    path = root.parent / f"{name}.toml"
    path.write_text(text)
    return path


def role(pg: PostgresSandbox, member: str) -> str:
    return "replica" if pg.psql(member, "SELECT pg_is_in_recovery()") == "t" else "primary"


def kill_9(pg: PostgresSandbox, member: str) -> None:
    pid = pg.pid(member)
    assert pid is not None, f"{member} is not running"
    os.kill(pid, signal.SIGKILL)
    for _ in range(200):
        if pg.pid(member) is None:
            return
        time.sleep(0.05)
    raise AssertionError(f"{member} still runs after kill -9")


def audit(state_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (state_dir / "audit.jsonl").read_text().splitlines()]


def fence_results(state_dir: Path) -> list[dict]:
    return [r for r in audit(state_dir) if r.get("step") == "fence" and r["phase"] == "result"]


PROMOTE = ("runbook", "run", "postgres.promote-replica", "--cluster", "sandbox-pg", "--yes", "--confirm", "sandbox-pg")


def test_failover_with_the_sandbox_fence_the_old_primary_comes_back_only_as_a_replica(fence_sandbox):
    root, pg = fence_sandbox
    state, config = root.parent, sandbox.config_path(root=root)
    pg.psql("pg1", "CREATE TABLE fence_rows (id int PRIMARY KEY); INSERT INTO fence_rows SELECT generate_series(1, 20)")
    pg.wait_streaming()
    kill_9(pg, "pg1")
    # An application behind PgBouncer tries meanwhile: PgBouncer's login to pg1 fails, and from
    # then on it waits out server_login_retry (15 s) before it logs in anywhere again.
    with pytest.raises(Exception):  # noqa: B017 - the pooler's refusal or psql's timeout, whichever comes first
        pg.psql("pgbouncer", "SELECT 1", timeout=3)

    plan = dbops(config, state, "runbook", "plan", "postgres.promote-replica", "--cluster", "sandbox-pg", "--param", "candidate=pg2")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "failover: fence pg1 by sandbox" in plan.stdout
    assert "standby.signal" in plan.stdout and pg.password not in plan.stdout
    assert "SET server_login_retry = 1" in plan.stdout and "SET server_login_retry = <as it was>" in plan.stdout

    r = dbops(config, state, *PROMOTE, "--param", "candidate=pg2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sandbox fence of pg1: verified" in r.stdout
    assert role(pg, "pg2") == "primary"
    # The pooler step logged PgBouncer in to pg2 before the run ended (not up to 15 s later, at
    # a client's next try), and put server_login_retry back.
    assert "a query through PgBouncer reached the new primary" in r.stdout, r.stdout
    servers = pg.psql("pgbouncer", "SHOW SERVERS", database="pgbouncer").splitlines()
    assert any(f"|{pg.port('pg2')}|" in line for line in servers), servers
    config_rows = pg.psql("pgbouncer", "SHOW CONFIG", database="pgbouncer").splitlines()
    assert next(line for line in config_rows if line.startswith("server_login_retry|")).split("|")[1] == "15"
    assert pg.psql("pgbouncer", "SELECT inet_server_port()") == str(pg.port("pg2"))
    [result] = fence_results(state)
    assert result["outcome"] == "ok" and result["detail"]["fence"][0]["method"] == "sandbox"

    # Someone starts the old primary again: it can only come back as a standby.
    pg.start_member("pg1")
    assert role(pg, "pg1") == "replica"
    with pytest.raises(Exception, match="read-only"):
        pg.psql("pg1", "INSERT INTO fence_rows VALUES (21)")
    check = dbops(config, state, "check", "--json")
    assert "two primaries" not in check.stdout
    sandbox.postgres.rejoin_as_replica("pg1", "pg2", root=root)
    assert verify(state / "audit.jsonl").ok


def test_an_unverified_fence_stops_before_promotion_and_an_override_is_audited(fence_sandbox):
    root, pg = fence_sandbox
    state = root.parent
    assert role(pg, "pg2") == "primary"
    config = variant(root, "unverified", fencing='methods = ["command"]\ncommand = "test {member} = nobody"',
                     production=True, coordination=False)
    kill_9(pg, "pg2")

    # Production, no primary answers and no shared lock configured: this host's lock file alone is refused.
    r = dbops(config, state, *PROMOTE, "--param", "candidate=pg1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "production environment" in r.stderr and "--override shared-lock=REASON" in r.stderr

    r = dbops(config, state, *PROMOTE, "--param", "candidate=pg1", "--override", "shared-lock=only console in the DR drill")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "command fence of pg2: NOT fenced: the fencing command exited 1" in r.stdout
    assert "nothing was promoted" in r.stdout
    assert role(pg, "pg1") == "replica" and role(pg, "pg3") == "replica"
    failed = fence_results(state)[-1]
    assert failed["outcome"] == "failed"

    r = dbops(config, state, *PROMOTE, "--param", "candidate=pg1", "--override", "shared-lock=only console in the DR drill",
              "--override", "fence=pg2's host is powered off (checked in the cloud console)")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OVERRIDDEN" in r.stdout and "NOTE: 'Fence the old primary' failed and was overridden" in r.stdout
    assert role(pg, "pg1") == "primary"
    overridden = fence_results(state)[-1]
    assert overridden["outcome"] == "overridden"
    assert overridden["detail"]["override"] == "pg2's host is powered off (checked in the cloud console)"
    intents = [x for x in audit(state) if x["phase"] == "intent" and x.get("run_id") == overridden["run_id"]]
    assert all("override shared-lock: only console in the DR drill" in (x.get("reason") or "") for x in intents)
    sandbox.postgres.rejoin_as_replica("pg2", "pg1", root=root)


def test_manual_fence_is_an_audited_attestation_and_a_restarted_old_primary_is_split_brain(fence_sandbox):
    root, pg = fence_sandbox
    state = root.parent
    assert role(pg, "pg1") == "primary"
    config = variant(root, "manual", fencing='methods = ["manual"]')
    kill_9(pg, "pg1")

    plan = dbops(config, state, "runbook", "plan", "postgres.promote-replica", "--cluster", "sandbox-pg", "--param", "candidate=pg2")
    assert "fence pg1 by manual" in plan.stdout and "type the member's name (pg1)" in plan.stdout

    # Without an attestation nothing is promoted.
    r = dbops(config, state, *PROMOTE, "--param", "candidate=pg2")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--attest pg1" in r.stderr and role(pg, "pg2") == "replica"

    r = dbops(config, state, *PROMOTE, "--param", "candidate=pg2", "--attest", "pg1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "NOTE: this failover relied on an attestation: the operator typed pg1" in r.stdout
    result = fence_results(state)[-1]
    assert result["outcome"] == "ok" and result["detail"]["attested"] == ["pg1"]

    # The attestation was wrong: someone starts pg1 by hand, writable on its old timeline.
    pg.start_member("pg1")
    try:
        assert role(pg, "pg1") == "primary"
        check = dbops(config, state, "check")
        assert check.returncode != 0
        assert re.search(r"two primaries: pg1 \(timeline \d+\) and pg2 \(timeline \d+\)", check.stdout), check.stdout
    finally:
        pg.stop_member("pg1", "fast")
        sandbox.postgres.rejoin_as_replica("pg1", "pg2", root=root)


def test_two_consoles_on_two_hosts_one_runs_the_other_is_refused_naming_the_holder(fence_sandbox):
    """Different state dirs (no shared lock file) and operators: the coordination database's lock
    decides. kill -9 of the holder frees it (the server ends its session)."""
    root, pg = fence_sandbox
    assert role(pg, "pg2") == "primary"
    config = sandbox.config_path(root=root)
    alice, bob = root.parent / "alice", root.parent / "bob"
    for d in (alice, bob):
        d.mkdir(exist_ok=True)
        (d / "sandbox").symlink_to(root)  # both manage the same sandbox; nothing else is shared
    env_a = {**os.environ, "DBOPS_STATE_DIR": str(alice), "SUDO_USER": "alice"}
    runs = alice / "runs"
    holder = subprocess.Popen([sys.executable, "-m", "dbops.cli", "--config", str(config), *PROMOTE, "--param", "candidate=pg3"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_a, stdin=subprocess.DEVNULL)
    try:
        journal = None
        for _ in range(3000):  # until the run is under way (and so holds the lock)
            found = list(runs.glob("*.jsonl")) if runs.exists() else []
            if found and "checkpoint" in steps_done(found[0]):
                journal = found[0]
                break
            assert holder.poll() is None, holder.communicate()[0]
            time.sleep(0.02)
        assert journal is not None
        holder.send_signal(signal.SIGSTOP)  # alice's console hangs, lock held
        r = dbops(config, bob, *PROMOTE, "--param", "candidate=pg3", env={"SUDO_USER": "bob"})
        assert r.returncode == 1, r.stdout + r.stderr
        assert "another runbook holds this cluster" in r.stderr and "alice" in r.stderr
        assert "coordination database dbops" in r.stderr
        assert role(pg, "pg2") == "primary"
    finally:
        holder.kill()  # SIGKILL works on a stopped process
        holder.communicate()
    # The server ended alice's session with her process: bob's console can take the cluster now.
    for _ in range(100):
        r = dbops(config, bob, *PROMOTE, "--param", "candidate=pg3", env={"SUDO_USER": "bob"})
        if "another runbook holds" not in r.stderr:
            break
        time.sleep(0.2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert role(pg, "pg3") == "primary"
    pg.wait_streaming_from("pg3", ("pg1", "pg2"))


def test_switchover_moves_the_clusters_advisory_lock_to_the_new_primary(fence_sandbox):
    root, pg = fence_sandbox
    state = root.parent
    assert role(pg, "pg3") == "primary"
    config = variant(root, "nocoord", coordination=False)
    r = dbops(config, state, *PROMOTE, "--param", "candidate=pg1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "the runbook lock moved to the new primary" in r.stderr
    assert role(pg, "pg1") == "primary"
    # Clients of PgBouncer were paused, not refused, and go on on the new primary.
    assert pg.psql("pgbouncer", "SELECT inet_server_port()") == str(pg.port("pg1"))
    assert verify(state / "audit.jsonl").ok


def test_a_failed_pgbouncer_repoint_says_that_pgbouncer_is_still_paused_and_how_to_resume_it(fence_sandbox, tmp_path):
    """The repoint fails here because this console's state dir holds no sandbox (the sandbox's
    pgbouncer.ini is not where it looks); any failure after the PAUSE must say the same."""
    root, pg = fence_sandbox
    assert role(pg, "pg1") == "primary"
    config = variant(root, "nocoord2", coordination=False)
    elsewhere = tmp_path / "other-state"
    elsewhere.mkdir()
    try:
        r = dbops(config, elsewhere, *PROMOTE, "--param", "candidate=pg2")
        assert r.returncode == 2, r.stdout + r.stderr
        out = r.stdout + r.stderr
        assert "step 'Point PgBouncer at the new primary' failed" in out
        assert "PgBouncer's postgres is still PAUSED (its clients wait): point it at pg2, then `psql" in out
        assert "RESUME postgres" in out and pg.password not in out
        assert pg.pgbouncer_paused()
    finally:
        pg.repoint_pgbouncer("pg2")
        pg.resume_pgbouncer()
    assert not pg.pgbouncer_paused()
    assert pg.psql("pgbouncer", "SELECT inet_server_port()") == str(pg.port("pg2"))
