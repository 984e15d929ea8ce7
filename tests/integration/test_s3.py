"""S3 backups (dbops.platform.s3) and the sandbox's S3 endpoint (dbops.sandbox.s3), against
moto's server in its own process over real HTTP: upload, manifest, list, verified download,
corruption, and the errors an operator sees."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dbops import sandbox
from dbops.config import S3Location, SecretRef
from dbops.platform import s3
from dbops.sandbox.s3 import BUCKET, S3Sandbox

REPO = Path(__file__).resolve().parents[2]
STATE_KEYS = {"endpoint_url", "port", "pid", "bucket", "region", "access_key_id", "secret_access_key", "log",
              "rds",  # the RDS primary and replica seeded on the same server (dbops.sandbox.rds)
              "audit_bucket"}  # Object Lock on: where the console ships its audit log ([audit.ship])


@pytest.fixture(scope="module")
def s3_sandbox() -> Iterator[S3Sandbox]:
    """One moto server for the module, in a directory of its own; stopped and removed after."""
    state_dir = Path(tempfile.mkdtemp(prefix="dbops-it-s3-"))
    sb = S3Sandbox(state_dir / "sandbox")
    ok = False
    try:
        sb.up()
        yield sb
        ok = True
    finally:
        try:
            sb.down()
        finally:
            # Keep the directory (moto.log) when something failed.
            if ok and not os.environ.get("DBOPS_KEEP_SANDBOX"):
                shutil.rmtree(state_dir)


@pytest.fixture
def location(s3_sandbox: S3Sandbox) -> S3Location:
    """The sandbox bucket under a prefix of this test's own, so tests never see each other's objects."""
    return dataclasses.replace(s3_sandbox.location(), prefix=f"it-{uuid.uuid4().hex[:12]}/")


def raw_client(location: S3Location) -> Any:
    """boto3 straight at the server, for what dbops itself never does (overwrite, inspect)."""
    return s3.client(location)


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def _poll(predicate: Any, timeout: float = 10.0) -> bool:
    """True once `predicate()` is; False if it is not within `timeout` (a bound, not a timing check)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def closed_port() -> int:
    return sandbox.free_ports(1)[0]  # nothing listens on it: free_ports just held and released it


# ---------------------------------------------------------------------------------------------
# Upload, manifest, download


def test_upload_and_verified_download_roundtrip(location: S3Location, tmp_path: Path) -> None:
    src = random_file(tmp_path / "dump.bin", 5 * 1024 * 1024 + 123)
    seen: list[tuple[int, int]] = []
    key = s3.key_for(location, "orders/dump.bin")

    manifest = s3.upload_with_manifest(location, src, key, kind="pg_dump", meta={"cluster": "orders-db"},
                                       progress=lambda done, total: seen.append((done, total)))

    expected = hashlib.sha256(src.read_bytes()).hexdigest()
    assert manifest.key == key == f"{location.prefix}orders/dump.bin"
    assert (manifest.sha256, manifest.size, manifest.kind, manifest.meta) == (expected, src.stat().st_size, "pg_dump",
                                                                              {"cluster": "orders-db"})
    assert seen and seen[-1] == (src.stat().st_size, src.stat().st_size)
    head = raw_client(location).head_object(Bucket=location.bucket, Key=key)
    assert head["Metadata"]["sha256"] == expected
    assert s3.read_manifest(location, key) == manifest

    dest = tmp_path / "restored.bin"
    got = s3.download_verified(location, key, dest)
    assert got == manifest
    assert dest.read_bytes() == src.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert s3.verify_object(location, key) == manifest


def test_large_file_goes_up_in_parts_and_verifies(location: S3Location, tmp_path: Path) -> None:
    src = random_file(tmp_path / "big.bin", 11 * 1024 * 1024)
    key = s3.key_for(location, "big.bin")
    manifest = s3.upload_with_manifest(location, src, key, kind="pg_dump", part_size=5 * 1024 * 1024)
    # A multipart object's ETag ends in -<number of parts>.
    etag = raw_client(location).head_object(Bucket=location.bucket, Key=key)["ETag"].strip('"')
    assert etag.endswith("-3"), etag
    assert manifest.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert s3.verify_object(location, key).size == 11 * 1024 * 1024


def test_list_backups_newest_first_only_manifested_and_by_kind(location: S3Location, tmp_path: Path) -> None:
    keys = []
    for i, kind in enumerate(("pg_dump", "pg_dump", "wal_bundle")):
        key = s3.key_for(location, f"b{i}.bin")
        s3.upload_with_manifest(location, random_file(tmp_path / f"b{i}", 1000 + i), key, kind=kind)
        keys.append(key)
    # An object without a manifest (an upload that never finished) is not a backup.
    raw_client(location).put_object(Bucket=location.bucket, Key=s3.key_for(location, "half.bin"), Body=b"x")
    # Nor is anything outside the prefix.
    outside = dataclasses.replace(location, prefix=location.prefix.rstrip("/") + "-other/")
    s3.upload_with_manifest(outside, tmp_path / "b0", s3.key_for(outside, "elsewhere.bin"), kind="pg_dump")

    listed = s3.list_backups(location)
    assert [m.key for m in listed] == list(reversed(keys))
    assert listed[0].created >= listed[1].created >= listed[2].created
    assert [m.key for m in s3.list_backups(location, kind="pg_dump")] == [keys[1], keys[0]]
    assert s3.list_backups(location, kind="nothing-of-this-kind") == []


def test_delete_backup_removes_object_and_manifest(location: S3Location, tmp_path: Path) -> None:
    key = s3.key_for(location, "gone.bin")
    s3.upload_with_manifest(location, random_file(tmp_path / "g", 10), key, kind="pg_dump")
    s3.delete_backup(location, key)
    assert s3.list_backups(location) == []
    listing = raw_client(location).list_objects_v2(Bucket=location.bucket, Prefix=location.prefix)
    assert listing.get("Contents", []) == []
    s3.delete_backup(location, key)  # again: nothing there, not an error


# ---------------------------------------------------------------------------------------------
# What must be refused


def test_corrupted_object_is_refused_and_leaves_no_file(location: S3Location, tmp_path: Path) -> None:
    src = random_file(tmp_path / "dump.bin", 64 * 1024)
    key = s3.key_for(location, "dump.bin")
    manifest = s3.upload_with_manifest(location, src, key, kind="pg_dump")
    corrupted = bytearray(src.read_bytes())
    corrupted[1000] ^= 0xFF  # one flipped byte, same size
    raw_client(location).put_object(Bucket=location.bucket, Key=key, Body=bytes(corrupted))

    dest_dir = tmp_path / "restore"
    dest_dir.mkdir()
    with pytest.raises(s3.S3Error) as err:
        s3.download_verified(location, key, dest_dir / "dump.bin")
    bad = hashlib.sha256(bytes(corrupted)).hexdigest()
    assert err.value.code == "checksum_mismatch"
    assert str(err.value) == (f"s3://{location.bucket}/{key}: checksum mismatch: manifest says {manifest.sha256} "
                              f"({manifest.size} bytes), object is {bad} ({manifest.size} bytes)")
    assert list(dest_dir.iterdir()) == []  # neither the file nor its temporary copy

    with pytest.raises(s3.S3Error, match="checksum mismatch"):
        s3.verify_object(location, key)


def test_truncated_object_is_refused(location: S3Location, tmp_path: Path) -> None:
    src = random_file(tmp_path / "dump.bin", 4096)
    key = s3.key_for(location, "dump.bin")
    s3.upload_with_manifest(location, src, key, kind="pg_dump")
    raw_client(location).put_object(Bucket=location.bucket, Key=key, Body=src.read_bytes()[:100])
    with pytest.raises(s3.S3Error, match=r"checksum mismatch: .*\(4096 bytes\), object is .*\(100 bytes\)"):
        s3.verify_object(location, key)


def test_missing_manifest_is_a_clear_error_and_nothing_is_downloaded(location: S3Location, tmp_path: Path) -> None:
    key = s3.key_for(location, "orphan.bin")
    raw_client(location).put_object(Bucket=location.bucket, Key=key, Body=b"no manifest for me")
    dest = tmp_path / "orphan.bin"
    with pytest.raises(s3.S3Error) as err:
        s3.download_verified(location, key, dest)
    assert err.value.code == "no_manifest"
    assert str(err.value) == (f"s3://{location.bucket}/{key}: no manifest (s3://{location.bucket}/{key}.manifest.json "
                              "is missing), so the backup cannot be verified")
    assert list(tmp_path.iterdir()) == []


def test_a_manifest_that_is_not_one_is_refused(location: S3Location) -> None:
    client = raw_client(location)
    key = s3.key_for(location, "x.bin")
    client.put_object(Bucket=location.bucket, Key=key, Body=b"data")
    client.put_object(Bucket=location.bucket, Key=key + s3.MANIFEST_SUFFIX, Body=b"{not json")
    with pytest.raises(s3.S3Error, match=r"x\.bin\.manifest\.json: not a valid dbops manifest: not JSON") as err:
        s3.read_manifest(location, key)
    assert err.value.code == "bad_manifest"
    # A valid manifest of another object, copied beside this one, must not vouch for it.
    other = s3.Manifest(key=key + ".other", size=4, sha256=hashlib.sha256(b"data").hexdigest(),
                        created=datetime.now(UTC), kind="pg_dump")
    client.put_object(Bucket=location.bucket, Key=key + s3.MANIFEST_SUFFIX, Body=other.to_json().encode())
    with pytest.raises(s3.S3Error, match=r"describes '.*x\.bin\.other', not '.*x\.bin'"):
        s3.verify_object(location, key)
    # list_backups says which manifest is bad rather than hiding it.
    with pytest.raises(s3.S3Error, match="describes"):
        s3.list_backups(location)


def test_nonexistent_bucket_is_named(location: S3Location, tmp_path: Path) -> None:
    missing = dataclasses.replace(location, bucket="dbops-no-such-bucket")
    src = random_file(tmp_path / "f", 10)
    for call in (lambda: s3.list_backups(missing),
                 lambda: s3.upload_with_manifest(missing, src, "f", kind="pg_dump"),
                 lambda: s3.bucket_protection(missing)):
        with pytest.raises(s3.S3Error) as err:
            call()
        assert err.value.code == "NoSuchBucket"
        assert str(err.value).startswith("bucket dbops-no-such-bucket: NoSuchBucket"), str(err.value)


def test_closed_port_cannot_be_reached(location: S3Location) -> None:
    port = closed_port()
    down = dataclasses.replace(location, endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(s3.S3Error) as err:
        s3.list_backups(down)
    assert str(err.value) == f"cannot reach S3 endpoint http://127.0.0.1:{port}: connection refused"
    assert err.value.code == "unreachable"


def test_without_any_credentials_says_where_to_put_them(location: S3Location, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    # boto3's own chain finds nothing: no AWS_* keys, no files, no instance metadata service.
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    anonymous = dataclasses.replace(location, access_key_id=None, secret_access_key=None)
    with pytest.raises(s3.S3Error, match="no S3 credentials found; give access_key_id and secret_access_key") as err:
        s3.list_backups(anonymous)
    assert err.value.code == "credentials"


def test_secret_key_never_appears_in_errors(s3_sandbox: S3Sandbox, location: S3Location, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    secret = s3_sandbox.state["secret_access_key"]
    key_id = s3_sandbox.state["access_key_id"]
    # The same secret given the way production does it, from the environment.
    monkeypatch.setenv("DBOPS_IT_S3_SECRET", secret)
    from_env = dataclasses.replace(location, secret_access_key=SecretRef(env="DBOPS_IT_S3_SECRET"))
    port = closed_port()
    errors: list[s3.S3Error] = []
    attempts = [
        lambda: s3.list_backups(dataclasses.replace(from_env, endpoint_url=f"http://127.0.0.1:{port}")),
        # A URL carrying the keys as user:password is scrubbed too.
        lambda: s3.list_backups(dataclasses.replace(from_env, endpoint_url=f"http://{key_id}:{secret}@127.0.0.1:{port}")),
        lambda: s3.list_backups(dataclasses.replace(from_env, bucket="dbops-no-such-bucket")),
        lambda: s3.read_manifest(from_env, "nothing-here"),
        lambda: s3.upload_with_manifest(from_env, tmp_path / "does-not-exist", "k", kind="pg_dump"),
        lambda: s3.download_verified(from_env, "nothing-here", tmp_path / "out"),
        lambda: s3.list_backups(dataclasses.replace(from_env, access_key_id=SecretRef(env="DBOPS_IT_UNSET_VAR"))),
    ]
    for attempt in attempts:
        with pytest.raises(s3.S3Error) as err:
            attempt()
        errors.append(err.value)
    assert len({e.code for e in errors}) >= 4  # really different failures
    for e in errors:
        for shown in (str(e), repr(e), e.message, " ".join(map(str, e.args))):
            assert secret not in shown and key_id not in shown, shown
    for shown in (repr(from_env), repr(s3_sandbox.location()), *(r.detail for r in s3_sandbox.status()),
                  s3_sandbox.log.read_text()):
        assert secret not in shown and key_id not in shown


def test_bucket_protection_reports_versioning_and_no_object_lock(location: S3Location) -> None:
    assert s3.bucket_protection(location) == {
        "bucket": BUCKET,
        "versioning": "Enabled",
        "mfa_delete": None,
        "object_lock": None,
    }


# ---------------------------------------------------------------------------------------------
# The sandbox engine


def test_state_has_the_agreed_keys_and_up_again_is_already_up(s3_sandbox: S3Sandbox) -> None:
    st = s3_sandbox.state
    assert set(st) == STATE_KEYS
    assert st["endpoint_url"] == f"http://127.0.0.1:{st['port']}"
    assert (st["bucket"], st["region"], st["log"]) == (BUCKET, "us-east-1", str(s3_sandbox.log))
    assert (s3_sandbox.root / sandbox.STATE_FILE).stat().st_mode & 0o077 == 0  # it holds the keys

    messages: list[str] = []
    assert s3_sandbox.up(messages.append) == (s3_sandbox.config_fragment(), True)
    assert messages == [f"s3 sandbox is already up ({st['endpoint_url']})"]
    assert s3_sandbox.state == st
    [row] = s3_sandbox.status()
    assert (row.engine, row.name, row.running, row.port, row.pid) == ("s3", "moto", True, st["port"], st["pid"])


def test_lifecycle_restart_after_a_crash_then_down(tmp_path: Path) -> None:
    """A private server: killed -9, `up` restarts it on the same port with an empty bucket;
    `down` stops exactly it; `down` again is harmless."""
    sb = S3Sandbox(tmp_path / "sandbox")
    try:
        assert sb.up() == (sb.config_fragment(), False)
        first = sb.state
        s3.upload_with_manifest(sb.location(), random_file(tmp_path / "f", 100), "f", kind="pg_dump")
        assert len(s3.list_backups(sb.location())) == 1

        os.kill(first["pid"], signal.SIGKILL)
        assert _poll(lambda: not sb.is_running())  # a zombie (our child, not yet collected) counts as dead
        assert sb.status()[0].running is False

        messages: list[str] = []
        assert sb.up(messages.append) == (sb.config_fragment(), False)
        again = sb.state
        assert again["pid"] != first["pid"] and sb.is_running()
        assert {k: v for k, v in again.items() if k != "pid"} == {k: v for k, v in first.items() if k != "pid"}
        assert any("is gone: restarting it" in m and "every object that was in sandbox-backups is gone" in m
                   for m in messages), messages
        assert s3.list_backups(sb.location()) == []  # moto's memory went with the process
        assert s3.bucket_protection(sb.location())["versioning"] == "Enabled"

        sb.down()
        assert not sandbox.pid_alive(again["pid"])
        assert sb.state["pid"] is None
        [row] = sb.status()
        assert (row.running, row.pid) == (False, None)
        assert not sandbox.port_open(again["port"])
        sb.down()  # again: nothing to do
        assert not sb.is_running()
    finally:
        sb.down()


def test_sandbox_api_brings_s3_up_alone_and_down(tmp_path: Path) -> None:
    root = tmp_path / "sandbox"
    try:
        result = sandbox.up(("s3",), root=root)
        assert result.engines == ("s3",) and not result.already_up
        from dbops.config import load

        cfg = load(result.config_path)
        assert cfg.environments["sandbox"].clusters == {}  # s3 adds no cluster of its own
        # ... but the console's audit shipping, to a bucket with Object Lock
        assert cfg.audit.ship is not None and cfg.audit.ship.s3.bucket == "sandbox-audit"
        assert s3.bucket_protection(cfg.audit.ship.s3)["object_lock"]["enabled"] is True
        assert [(r.engine, r.running) for r in sandbox.status(root=root)] == [("s3", True)]
        assert sandbox.config_path(root=root) == result.config_path
        assert sandbox.up(("s3",), root=root).already_up
    finally:
        sandbox.down(root=root)
    assert [(r.engine, r.running) for r in sandbox.status(root=root)] == [("s3", False)]


def test_s3_starts_before_postgres_and_is_stopped_when_postgres_fails(tmp_path: Path) -> None:
    # Named postgres first, s3 must still start first. PostgreSQL refuses this directory before
    # starting anything (its unix socket path would exceed 107 bytes), and the s3 server this
    # call started must not be left running without it.
    root = tmp_path / ("d" * 100) / "sandbox"
    messages: list[str] = []
    try:
        # (as root: "the postgres OS user cannot reach" pytest's 0700 tmp directory; else: "too deep")
        with pytest.raises(sandbox.SandboxError, match="too deep|cannot reach"):
            sandbox.up(("postgres", "s3"), root=root, progress=messages.append)
        assert any(m.startswith("start moto S3 server") for m in messages), messages
        sb = S3Sandbox(root)
        assert sb.state["pid"] is None and not sb.is_running()
    finally:
        sandbox.down(root=root)


def test_missing_moto_names_the_extra_to_install(tmp_path: Path) -> None:
    # `python -S` leaves site-packages out: moto, flask and boto3 are not importable there, while
    # the sandbox package (stdlib only) is, from the repository.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from dbops.sandbox import SandboxError; from dbops.sandbox.s3 import S3Sandbox\n"
        "try:\n    S3Sandbox(sys.argv[2]).up()\nexcept SandboxError as e:\n    print(e.message)"
    )
    out = subprocess.run([sys.executable, "-S", "-c", code, str(REPO), str(tmp_path / "sandbox")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "the S3 sandbox needs moto's server and boto3" in out.stdout
    assert "pip install -e '.[sandbox]' (or `make venv`)" in out.stdout
    assert not (tmp_path / "sandbox").exists()  # refused before creating anything
