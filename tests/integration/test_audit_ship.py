"""Audit shipping ([audit.ship], dbops.audit_ship) against the sandbox's moto S3 server over real
HTTP: a runbook's end ships the log as an object locked in COMPLIANCE mode, S3 refuses to delete
it, `dbops audit verify --shipped` passes, and fails clearly on a doctored copy or a local log
that diverged; a bucket without Object Lock (or a dead endpoint) is refused with a message and
never changes a runbook's outcome."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from dbops import sandbox
from dbops.audit import AuditLog, canonical, record_hash
from dbops.audit_ship import host_name
from dbops.config import S3Location
from dbops.platform import s3
from dbops.sandbox.s3 import AUDIT_BUCKET, BUCKET, S3Sandbox

from .conftest import running_sandbox

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "runbook_fixtures"


@pytest.fixture(scope="module")
def s3_sandbox() -> Iterator[S3Sandbox]:
    with running_sandbox(("s3",), "dbops-it-ship-") as root:
        yield S3Sandbox(root)


class Env:
    def __init__(self, sb: S3Sandbox, tmp: Path, bucket: str = AUDIT_BUCKET, endpoint: str | None = None,
                 every_seconds: float = 900) -> None:
        st = sb.state
        self.prefix = f"it-{uuid.uuid4().hex[:10]}/"
        self.location = S3Location(bucket=bucket, prefix=self.prefix, region=st["region"],
                                      endpoint_url=endpoint or st["endpoint_url"],
                                      access_key_id=sb.location().access_key_id,
                                      secret_access_key=sb.location().secret_access_key)
        self.state = tmp / "state"
        self.work = tmp / "work"
        self.work.mkdir(parents=True)
        self.config = tmp / "dbops.toml"
        self.config.write_text(f"""
runbook_dirs = ["{FIXTURES}"]
[audit.ship]
s3 = {{ bucket = "{bucket}", prefix = "{self.prefix}", region = "{st['region']}", endpoint_url = "{endpoint or st['endpoint_url']}", access_key_id = {{ value = "{st['access_key_id']}" }}, secret_access_key = {{ value = "{st['secret_access_key']}" }} }}
retain_days = 2
every_seconds = {every_seconds}
[environments.staging]
mode = "operator"
sandbox = true
[environments.staging.clusters.files-db]
engine = "postgres"
password = {{ env = "NO_SUCH_VAR_FOR_TESTS" }}
members = [{{ name = "m1", host = "127.0.0.1", port = 1, role = "primary" }}]
""")
        self.client = s3.client(self.location)

    def dbops(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "DBOPS_STATE_DIR": str(self.state)})

    def run_runbook(self) -> subprocess.CompletedProcess[str]:
        return self.dbops("runbook", "run", "test.plan-shapes", "--cluster", "files-db", "--param", f"dir={self.work}", "--yes")

    def keys(self) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=self.location.bucket, Prefix=self.prefix)
        return [o["Key"] for o in listing.get("Contents", [])]


def test_a_runbook_end_ships_a_locked_copy_that_verifies(s3_sandbox, tmp_path):
    env = Env(s3_sandbox, tmp_path)
    r = env.run_runbook()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "audit: shipped 2 record(s) up to seq 1 to s3://sandbox-audit/" in r.stdout + r.stderr
    [key] = env.keys()
    assert key == f"{env.prefix}{host_name()}/audit-{10**12 - 1 - 1:012d}-seq1.jsonl"
    head = env.client.head_object(Bucket=AUDIT_BUCKET, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=1)
    assert env.client.get_object(Bucket=AUDIT_BUCKET, Key=key)["Body"].read() == (env.state / "audit.jsonl").read_bytes()

    # Locked: S3 refuses to delete that version, and it stays.
    with pytest.raises(ClientError) as refused:
        env.client.delete_object(Bucket=AUDIT_BUCKET, Key=key, VersionId=head["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert env.keys() == [key]

    r = env.dbops("audit", "verify", "--shipped")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"shipped copy s3://sandbox-audit/{key}: chain intact: 2 records" in r.stdout
    assert "shipped copy vs local log: consistent: the local log begins with the shipped copy's 2 record(s) and has nothing newer" in r.stdout

    r = env.dbops("audit", "ship")
    assert r.returncode == 0 and r.stdout.startswith("already shipped:"), r.stdout + r.stderr

    # A second run: a new object, listed first (the newest copy), never an overwrite.
    assert env.run_runbook().returncode == 0
    keys = env.keys()
    assert len(keys) == 2 and keys[1] == key and keys[0].endswith("-seq3.jsonl")


def _put_locked(env: Env, key: str, body: bytes, meta: dict[str, str]) -> None:
    env.client.put_object(Bucket=AUDIT_BUCKET, Key=key, Body=body, Metadata=meta,
                          ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode(),
                          ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(days=1))


def test_verify_shipped_fails_on_a_doctored_copy_and_on_a_diverged_local_log(s3_sandbox, tmp_path):
    env = Env(s3_sandbox, tmp_path)
    assert env.run_runbook().returncode == 0
    [key] = env.keys()
    body = env.client.get_object(Bucket=AUDIT_BUCKET, Key=key)
    data, meta = body["Body"].read(), body["Metadata"]

    # Someone with write access to the bucket uploads a doctored copy under a newer name.
    records = [json.loads(line) for line in data.splitlines()]
    records[1]["action"] = "nothing-to-see"
    doctored = b"".join(canonical(r) + b"\n" for r in records)
    _put_locked(env, key.replace("-999999999998-seq1", "-999999999997-seq2"), doctored, meta)
    r = env.dbops("audit", "verify", "--shipped")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "TAMPERED at line 2 (seq 1): content does not match its hash: the record was edited" in r.stdout
    assert "shipped copy vs local log: INCONSISTENT: line 2 differs between the local log and the shipped copy" in r.stdout

    # A local log rebuilt as a perfect chain of other records: its own chain verifies, the
    # shipped copy shows it is not the log that was shipped.
    other = tmp_path / "other" / "audit.jsonl"
    other.parent.mkdir()
    log = AuditLog(other)
    for action in ("a", "b", "c", "d"):
        log.abort(action=action, environment="staging", cluster="files-db", reason="rebuilt")
    _put_locked(env, key.replace("-999999999998-seq1", "-999999999996-seq3"), data, meta)  # the true copy, newest again
    r = env.dbops("audit", "verify", "--shipped", str(other))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{other}: chain intact: 4 records" in r.stdout
    assert "shipped copy vs local log: INCONSISTENT: line 1 differs between the local log and the shipped copy" in r.stdout
    # And records cut from the end of the local log (head file and all) show too.
    lines = (env.state / "audit.jsonl").read_bytes().splitlines(keepends=True)
    truncated = tmp_path / "truncated" / "audit.jsonl"
    truncated.parent.mkdir()
    truncated.write_bytes(lines[0])
    last = json.loads(lines[0])
    (truncated.parent / "audit.jsonl.head").write_bytes(canonical({"seq": last["seq"], "hash": last["hash"]}))
    assert record_hash(last) == last["hash"]
    r = env.dbops("audit", "verify", "--shipped", str(truncated))
    assert r.returncode == 1
    assert "records were removed from the local log after shipping" in r.stdout


def test_a_bucket_without_object_lock_is_refused_and_the_run_still_succeeds(s3_sandbox, tmp_path):
    env = Env(s3_sandbox, tmp_path, bucket=BUCKET)
    r = env.run_runbook()
    assert r.returncode == 0, r.stdout + r.stderr
    assert (env.work / "w").read_text() == "ran\n"  # the runbook did its work
    assert ("warning: audit shipping: bucket sandbox-backups does not have Object Lock enabled: refusing to ship the "
            "audit log there") in r.stderr
    assert env.keys() == []
    r = env.dbops("audit", "ship")
    assert r.returncode == 1
    assert "does not have Object Lock enabled" in r.stderr and "Traceback" not in r.stderr


def test_a_dead_endpoint_is_one_line_and_never_shows_the_keys(s3_sandbox, tmp_path):
    port = sandbox.free_ports(1)[0]
    env = Env(s3_sandbox, tmp_path, endpoint=f"http://127.0.0.1:{port}")
    r = env.run_runbook()
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"warning: audit shipping: cannot reach S3 endpoint http://127.0.0.1:{port}: connection refused" in r.stderr
    assert s3_sandbox.state["secret_access_key"] not in r.stdout + r.stderr
    r = env.dbops("audit", "verify", "--shipped")
    assert r.returncode == 1
    assert f"shipped copy: cannot reach S3 endpoint http://127.0.0.1:{port}: connection refused" in r.stdout


def test_verify_shipped_shows_the_shipped_copy_when_the_local_log_is_gone(s3_sandbox, tmp_path):
    env = Env(s3_sandbox, tmp_path)
    assert env.run_runbook().returncode == 0
    [key] = env.keys()
    for name in ("audit.jsonl", "audit.jsonl.head"):
        (env.state / name).unlink()
    r = env.dbops("audit", "verify", "--shipped")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"audit log {env.state / 'audit.jsonl'} does not exist" in r.stderr
    assert f"shipped copy s3://sandbox-audit/{key}: chain intact: 2 records" in r.stdout
    assert "shipped copy vs local log: INCONSISTENT: cannot read the local log" in r.stdout


def test_credentials_that_cannot_be_resolved_are_one_line_for_ship_and_verify(s3_sandbox, tmp_path):
    # The S3 client is never made: `audit verify --shipped` used to end in a traceback here.
    env = Env(s3_sandbox, tmp_path)
    text = env.config.read_text()
    key_id = s3_sandbox.state["access_key_id"]
    secret = f'access_key_id = {{ value = "{key_id}" }}'
    assert secret in text
    env.config.write_text(text.replace(secret, 'access_key_id = { env = "DBOPS_TEST_UNSET_AWS_KEY" }'))
    AuditLog(env.state / "audit.jsonl").abort(action="x", environment="staging", cluster="files-db", reason="test")
    r = env.dbops("audit", "verify", "--shipped")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "chain intact: 1 record\n" in r.stdout
    assert "shipped copy: bucket sandbox-audit: S3 credentials: " in r.stdout
    assert "DBOPS_TEST_UNSET_AWS_KEY" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr and "unexpected" not in r.stderr
    r = env.dbops("audit", "ship")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("error: audit shipping: bucket sandbox-audit: S3 credentials: ")
    assert env.keys() == []


def _until(predicate, what: str, timeout: float = 30.0):
    """predicate()'s first truthy value, polled; a bound for a background thread, not a timing check."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def test_the_console_ships_on_its_timer_and_shows_a_failed_shipping(s3_sandbox, tmp_path):
    from dbops.config import load
    from dbops.poller import PollerHub

    good = Env(s3_sandbox, tmp_path / "good", every_seconds=0.2)
    AuditLog(good.state / "audit.jsonl").abort(action="x", environment="staging", cluster="files-db", reason="test")
    hub = PollerHub(load(good.config), audit_path=good.state / "audit.jsonl")
    hub.start()
    try:
        [key] = _until(good.keys, "the timer's shipping")
        assert key.endswith("-seq0.jsonl")
        assert hub.drain_notices() == []
    finally:
        hub.stop()

    bad = Env(s3_sandbox, tmp_path / "bad", bucket=BUCKET, every_seconds=0.2)
    AuditLog(bad.state / "audit.jsonl").abort(action="x", environment="staging", cluster="files-db", reason="test")
    hub = PollerHub(load(bad.config), audit_path=bad.state / "audit.jsonl")
    hub.start()
    try:
        notices = _until(hub.drain_notices, "a notice of the failed shipping")
    finally:
        hub.stop()
    severity, message = notices[0]
    assert severity == "error"
    assert message.startswith("audit shipping: bucket sandbox-backups does not have Object Lock enabled: refusing")


async def test_the_tui_wizard_ships_at_the_end_of_a_run(s3_sandbox, tmp_path):
    from textual.widgets import Input, OptionList

    from dbops.config import load
    from dbops.screens.app import DbopsApp
    from dbops.screens.runbook import PickRunbook, RunbookScreen

    env = Env(s3_sandbox, tmp_path)
    app = DbopsApp(load(env.config), state_dir=env.state)
    async with app.run_test(size=(100, 40)) as pilot:
        async def until(predicate, what: str) -> None:
            for _ in range(300):
                await pilot.pause(0.1)
                if predicate():
                    return
            raise AssertionError(f"gave up waiting for {what}")

        app.open_runbooks("staging/files-db")
        await until(lambda: isinstance(app.screen, PickRunbook), "the runbook picker")
        options = app.screen.query_one(OptionList)
        options.highlighted = next(i for i in range(options.option_count)
                                   if "test.plan-shapes" in str(options.get_option_at_index(i).prompt))
        await pilot.press("enter")
        await until(lambda: isinstance(app.screen, RunbookScreen), "the wizard")
        screen = app.screen
        await pilot.press(*str(env.work))
        await until(lambda: screen.query_one("#param-dir", Input).value == str(env.work), "the typed directory")
        await pilot.press("ctrl+l")
        await until(lambda: screen.plan is not None, "the plan")
        await pilot.press("ctrl+r")
        log = lambda: "\n".join(str(line.text) for line in screen.query_one("#rb-log").lines)  # noqa: E731
        await until(lambda: "audit: shipped" in log(), "the shipping line in the run's log")
        text = " ".join(log().split())  # the log wraps long lines
    assert screen.result is not None and screen.result.code == 0
    [key] = env.keys()
    assert key.endswith("-seq1.jsonl")
    assert f"audit: shipped 2 record(s) up to seq 1 to s3://sandbox-audit/{key}" in text


def test_an_incident_bundle_is_shipped_beside_the_audit_log_and_locked(s3_sandbox, tmp_path):
    import tarfile

    env = Env(s3_sandbox, tmp_path)
    assert env.run_runbook().returncode == 0
    out = tmp_path / "bundle.tar.gz"
    r = env.dbops("incident", "bundle", "--since", "1h", "--no-check", "-o", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    # Nothing was recorded here (no console ran): the bundle says so and still holds the audit excerpt.
    assert "note: no recording in" in r.stdout
    [key] = [k for k in env.keys() if "/incidents/" in k]
    assert key.startswith(f"{env.prefix}{host_name()}/incidents/incident-") and key.endswith("/bundle.tar.gz")
    assert f"incident bundle shipped to s3://{AUDIT_BUCKET}/" in r.stdout
    head = env.client.head_object(Bucket=AUDIT_BUCKET, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    body = env.client.get_object(Bucket=AUDIT_BUCKET, Key=key)["Body"].read()
    assert body == out.read_bytes()
    with tarfile.open(out) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert len(files["audit.jsonl"].splitlines()) == 2  # the run's records (as shipped with the log: 2)
    # The bucket's keys are literal in this config: in no file of the bundle.
    secret = s3_sandbox.state["secret_access_key"].encode()
    assert not [n for n, b in files.items() if secret in b]
