"""The audit log: chain, head file, durability, locking, redaction."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbops import audit as audit_mod
from dbops.audit import (
    GENESIS,
    AuditError,
    AuditLog,
    canonical,
    read_records,
    record_hash,
    verify,
    verify_and_read,
)
from dbops.secrets import Secret

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def _make(path: Path, n: int) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        if i % 3 == 0:
            log.intent(action=f"act{i}", environment="prod", cluster="main", member="db1", params={"i": i})
        elif i % 3 == 1:
            log.result(log.records()[-1], outcome="ok")
        else:
            log.abort(action=f"act{i}", environment="prod", cluster="main", reason="operator said no")
    return log


# ---------------------------------------------------------------------------------------------
# Writing


def test_records_have_the_documented_shape(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "state" / "audit.jsonl")
    intent = log.intent(
        action="switchover",
        environment="prod",
        cluster="main",
        member="db1",
        params={"target": "db2"},
        step="promote",
        reason="primary disk failing",
    )
    result = log.result(intent, outcome="failed", error="timeout", detail={"lsn": "0/3000"})
    abort = log.abort(action="vacuum", environment="prod", cluster="main", run_id="r1")

    recs = log.records()
    assert recs == [intent, result, abort]
    for i, rec in enumerate(recs):
        assert TS.match(rec["ts"]), rec["ts"]
        assert rec["seq"] == i
        assert rec["prev"] == (GENESIS if i == 0 else recs[i - 1]["hash"])
        assert rec["hash"] == record_hash(rec)
        assert re.fullmatch(r"[0-9a-f]{64}", rec["hash"])
        assert set(rec["operator"]) >= {"login", "sudo_user", "ssh_client", "tty"}
        assert rec["host"]
    assert intent["phase"] == "intent" and intent["outcome"] is None and intent["duration_ms"] is None
    assert intent["reason"] == "primary disk failing" and intent["step"] == "promote"
    assert re.fullmatch(r"[0-9a-f]{12}", intent["run_id"])
    assert result["phase"] == "result" and result["run_id"] == intent["run_id"] and result["step"] == "promote"
    assert result["outcome"] == "failed" and result["error"] == "timeout" and result["detail"] == {"lsn": "0/3000"}
    assert result["intent_seq"] == 0 and isinstance(result["duration_ms"], int) and result["duration_ms"] >= 0
    assert result["member"] == "db1" and result["params"] == {"target": "db2"}
    assert abort["phase"] == "abort" and abort["outcome"] == "declined" and abort["run_id"] == "r1"

    # the line is exactly the canonical JSON
    for raw, rec in zip(_lines(log.path), recs):
        assert raw == canonical(rec) + b"\n"
    assert stat.S_IMODE(os.stat(log.path).st_mode) == 0o600
    assert json.loads(log.head_path.read_text()) == {"seq": 2, "hash": abort["hash"]}
    assert verify(log.path).ok


def test_hash_is_sha256_over_prev_and_canonical_json_without_hash(tmp_path: Path) -> None:
    import hashlib

    rec = AuditLog(tmp_path / "a.jsonl").abort(action="x", environment="e", cluster="c", params={"ü": "✓"})
    body = {k: v for k, v in rec.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert rec["hash"] == hashlib.sha256((rec["prev"] + text).encode("utf-8")).hexdigest()


def test_default_log_lives_in_the_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBOPS_STATE_DIR", str(tmp_path / "st"))
    log = AuditLog.default()
    assert log.path == tmp_path / "st" / "audit.jsonl"
    log.abort(action="x", environment="e", cluster="c")
    assert verify(log.path).ok


def test_operator_identity_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    monkeypatch.setenv("SSH_CLIENT", "203.0.113.7 51234 22")
    monkeypatch.setenv("LOGNAME", "dbadmin")
    rec = AuditLog(tmp_path / "a.jsonl").abort(action="x", environment="e", cluster="c")
    assert rec["operator"]["sudo_user"] == "alice"
    assert rec["operator"]["ssh_client"] == "203.0.113.7"
    assert rec["operator"]["login"] == "dbadmin"
    assert rec["operator"]["uid"] == os.getuid()

    monkeypatch.delenv("SSH_CLIENT")
    monkeypatch.setenv("SSH_CONNECTION", "198.51.100.2 40000 10.0.0.1 22")
    rec = AuditLog(tmp_path / "a.jsonl").abort(action="x", environment="e", cluster="c")
    assert rec["operator"]["ssh_client"] == "198.51.100.2"


def test_duration_uses_the_wall_clock_when_the_intent_came_from_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    intent = AuditLog(path).intent(action="x", environment="e", cluster="c")
    intent = dict(intent, ts="2000-01-01T00:00:00.000Z")  # as read back from an old log
    res = AuditLog(path).result(intent, outcome="ok")
    assert res["duration_ms"] > 10**9


def test_intent_is_on_disk_before_intent_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.abort(action="earlier", environment="e", cluster="c")
    real_fsync = os.fsync
    synced: list[bytes] = []

    def spy_fsync(fd: int) -> None:
        real_fsync(fd)
        if os.path.realpath(f"/proc/self/fd/{fd}") == os.path.realpath(path):
            with open(path, "rb") as fresh:  # what a fresh reader sees at the fsync
                synced.append(fresh.read())

    monkeypatch.setattr(audit_mod.os, "fsync", spy_fsync)
    rec = log.intent(action="failover", environment="prod", cluster="main")
    monkeypatch.undo()

    line = canonical(rec) + b"\n"
    assert synced, "the log file was never fsynced"
    assert synced[-1].endswith(line), "the intent line was not in the file when it was fsynced"
    with open(path, "rb") as fresh:
        assert fresh.read().splitlines(keepends=True)[-1] == line


def test_write_failure_raises_audit_error_and_leaves_no_partial_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    log = _make(path, 2)
    before = path.read_bytes()
    real_write = os.write

    def half_write(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_mod.os, "write", half_write)
    with pytest.raises(AuditError, match="no space left"):
        log.intent(action="x", environment="e", cluster="c")
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert verify(path).ok
    log.intent(action="x", environment="e", cluster="c")
    assert verify(path).ok and verify(path).count == 3


def test_short_write_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    log = _make(path, 1)
    before = path.read_bytes()
    real_write = os.write
    monkeypatch.setattr(audit_mod.os, "write", lambda fd, data: real_write(fd, data[:10]))
    with pytest.raises(AuditError, match="cannot write the audit log"):
        log.abort(action="x", environment="e", cluster="c")
    monkeypatch.undo()
    assert path.read_bytes() == before


def test_unwritable_location_raises_audit_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(AuditError, match="cannot create the audit log directory"):
        AuditLog(blocker / "sub" / "audit.jsonl").intent(action="x", environment="e", cluster="c")


def test_appender_refuses_a_truncated_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = _make(path, 4)
    _write_lines(path, _lines(path)[:-1])
    with pytest.raises(AuditError, match="ends at seq 2 but audit.jsonl.head records seq 3"):
        log.abort(action="x", environment="e", cluster="c")
    path.write_bytes(b"")
    with pytest.raises(AuditError, match="is empty but"):
        log.abort(action="x", environment="e", cluster="c")


def test_appender_refuses_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = _make(path, 2)
    with open(path, "ab") as fh:
        fh.write(b'{"seq":2,"pre')
    with pytest.raises(AuditError, match="incomplete line"):
        log.abort(action="x", environment="e", cluster="c")
    assert verify(path).first_bad_line == 3


def test_appender_refuses_when_the_head_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = _make(path, 3)
    log.head_path.unlink()
    with pytest.raises(AuditError, match="missing"):
        log.abort(action="x", environment="e", cluster="c")


def test_head_one_behind_is_a_crash_window_the_appender_recovers_from(tmp_path: Path) -> None:
    """dbops stopped after fsyncing record N but before renaming the head into place."""
    path = tmp_path / "audit.jsonl"
    log = _make(path, 3)
    old_head = log.head_path.read_bytes()
    log.abort(action="x", environment="e", cluster="c")
    log.head_path.write_bytes(old_head)
    lagging = verify(path)
    assert not lagging.ok and "head" in (lagging.reason or "")
    log.abort(action="y", environment="e", cluster="c")
    assert verify(path) == audit_mod.VerifyResult(True, 5, None, None, None)


def test_appends_from_many_threads_keep_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    def work(k: int) -> None:
        log = AuditLog(path)
        for i in range(15):
            log.abort(action=f"t{k}-{i}", environment="e", cluster="c")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res = verify(path)
    assert res.ok, res.summary()
    assert res.count == 60


def _append_many(path: str, tag: str, n: int) -> None:
    log = AuditLog(Path(path))
    for i in range(n):
        rec = log.intent(action=f"{tag}-{i}", environment="e", cluster="c")
        log.result(rec, outcome="ok")


def test_appends_from_two_processes_keep_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), tag, 40)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    # A reader racing the writers never sees half an append or a head that lags the log.
    while any(p.is_alive() for p in procs):
        if path.exists():
            during = verify(path)
            assert during.ok, during.summary()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    res = verify(path)
    assert res.ok, res.summary()
    assert res.count == 160
    recs = read_records(path)
    assert [r["seq"] for r in recs] == list(range(160))
    assert {r["action"].split("-")[0] for r in recs} == {"a", "b"}


def test_core_module_imports_stay_light() -> None:
    code = (
        "import sys, dbops.audit, dbops.audit_cli\n"
        "heavy = [m for m in ('textual', 'rich', 'pydantic') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_records_of_a_missing_log_is_empty_and_a_bad_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    assert AuditLog(path).records() == []
    log = _make(path, 2)
    with open(path, "ab") as fh:
        fh.write(b"garbage\n")
    with pytest.raises(AuditError, match="line 3: not valid JSON"):
        log.records()
    assert len(read_records(path, strict=False)) == 2


# ---------------------------------------------------------------------------------------------
# Redaction


def test_params_are_redacted(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    rec = log.intent(
        action="connect",
        environment="e",
        cluster="c",
        params={
            "password": "hunter2",
            "PGPASSWORD": "hunter3",
            "api_key": 123456789,
            "auth_token": None,
            "nested": {"client_secret": "s3", "list": [{"sslkey": "k"}]},
            "dsn": "postgresql://app:pw1@db/x",
            "url": "postgresql://app:pw2@db/x",
            "url2": "postgres://app:p@w/8x@db:5432/x",
            "conn": "host=db password=pw3 user=app",
            "secret_obj": Secret("pw4"),
            "pid": 4242,
            "query": "select 1",
            "sql": "ALTER ROLE app WITH LOGIN ENCRYPTED PASSWORD 'it''s pw8' VALID UNTIL 'infinity'",
        },
        reason="retry with password=pw5",
    )
    res = log.result(rec, outcome="failed", error="FATAL for postgresql://app:pw6@db", detail={"token": "pw7"})
    data = (tmp_path / "a.jsonl").read_text()
    for secret in ("hunter2", "hunter3", "123456789", "s3", '"k"', "pw1", "pw2", "pw3", "pw4", "pw5", "pw6", "pw7", "w/8x", "pw8"):
        assert secret not in data, secret
    p = rec["params"]
    assert p["password"] == p["PGPASSWORD"] == p["api_key"] == p["auth_token"] == p["dsn"] == "***"
    assert p["nested"] == {"client_secret": "***", "list": [{"sslkey": "***"}]}
    assert p["url"] == "postgresql://app:***@db/x"
    assert p["url2"] == "postgres://app:***@db:5432/x"
    assert p["conn"] == "host=db password=*** user=app"
    assert p["secret_obj"] == "***"
    assert p["pid"] == 4242 and p["query"] == "select 1"
    assert p["sql"] == "ALTER ROLE app WITH LOGIN ENCRYPTED PASSWORD '***' VALID UNTIL 'infinity'"
    assert res["error"] == "FATAL for postgresql://app:***@db"
    assert res["detail"] == {"token": "***"}


_secret_words = st.sampled_from(["password", "Password", "db_passwd", "secret", "TOKEN", "api_key", "sslkey", "dsn"])
_plain_keys = st.sampled_from(["host", "port", "mode", "note", "target", "pid"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    secret_keys=st.lists(st.tuples(_secret_words, st.text(max_size=5)), min_size=1, max_size=4),
    plain=st.dictionaries(_plain_keys, st.one_of(st.integers(), st.text(max_size=10)), max_size=3),
    secret_tail=st.text(alphabet="abcdefghij0123456789", min_size=6, max_size=12),
    nest=st.booleans(),
)
def test_params_redaction_never_writes_secrets(secret_keys, plain, secret_tail, nest) -> None:
    secret = "ZQX" + secret_tail  # never produced by the plain values
    params: dict = dict(plain)
    for word, suffix in secret_keys:
        params[suffix + word + suffix] = secret
    if nest:
        params = {"outer": params, "items": [params]}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "a.jsonl"
        log = AuditLog(path)
        rec = log.intent(action="a", environment="e", cluster="c", params=params)
        log.result(rec, outcome="ok", detail=params)
        log.abort(action="a", environment="e", cluster="c", params={"x": Secret(secret)})
        assert secret.encode() not in path.read_bytes()


# ---------------------------------------------------------------------------------------------
# Verify: named cases


def test_untouched_and_empty_logs_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    assert verify(path) == audit_mod.VerifyResult(True, 0, None, None, None)
    _make(path, 5)
    res = verify(path)
    assert res.ok and res.count == 5 and res.summary() == "chain intact: 5 records"


def test_verify_and_read_returns_the_verdict_and_the_parsable_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _make(path, 3)
    with open(path, "ab") as fh:
        fh.write(b"junk\n")
    res, recs = verify_and_read(path)
    assert (res.ok, res.first_bad_line) == (False, 4)
    assert [r["seq"] for r in recs] == [0, 1, 2]


def test_verify_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify(tmp_path / "nope.jsonl")


def test_field_edit_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _make(path, 5)
    lines = _lines(path)
    rec = json.loads(lines[2])
    rec["outcome"] = "ok"
    rec["action"] = "harmless"
    lines[2] = canonical(rec) + b"\n"
    _write_lines(path, lines)
    res = verify(path)
    assert (res.ok, res.first_bad_line, res.first_bad_seq, res.count) == (False, 3, 2, 2)
    assert "edited" in (res.reason or "")
    assert res.summary().startswith("TAMPERED at line 3 (seq 2): ")


def test_reformatted_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _make(path, 3)
    lines = _lines(path)
    lines[1] = json.dumps(json.loads(lines[1]), indent=None).encode() + b"\n"  # same content, other bytes
    _write_lines(path, lines)
    res = verify(path)
    assert (res.ok, res.first_bad_line) == (False, 2)
    assert "canonical" in (res.reason or "")


def test_deleting_a_middle_record_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _make(path, 5)
    lines = _lines(path)
    del lines[1]
    _write_lines(path, lines)
    res = verify(path)
    assert (res.ok, res.first_bad_line, res.first_bad_seq) == (False, 2, 2)
    assert "seq is 2 where 1 was expected" in (res.reason or "")


def test_deleting_the_last_records_is_caught_by_the_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _make(path, 5)
    _write_lines(path, _lines(path)[:3])
    res = verify(path)
    assert (res.ok, res.first_bad_line, res.first_bad_seq, res.count) == (False, 4, 3, 3)
    assert "newest 2 record(s) were removed" in (res.reason or "")
    path.write_bytes(b"")
    res = verify(path)
    assert not res.ok and "empty" in (res.reason or "")


def test_missing_or_malformed_head_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = _make(path, 2)
    log.head_path.write_text("{nonsense")
    res = verify(path)
    assert not res.ok and "head file" in (res.reason or "")
    log.head_path.unlink()
    res = verify(path)
    assert not res.ok and "missing" in (res.reason or "")


def test_self_consistent_forgery_appended_at_the_end_is_caught_by_the_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _make(path, 3)
    last = json.loads(_lines(path)[-1])
    forged = dict(last, seq=3, prev=last["hash"], action="drop_database")
    forged["hash"] = record_hash(forged)
    with open(path, "ab") as fh:
        fh.write(canonical(forged) + b"\n")
    res = verify(path)
    assert (res.ok, res.first_bad_line, res.first_bad_seq) == (False, 4, 3)


def test_replaced_last_record_is_caught_by_the_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _make(path, 3)
    lines = _lines(path)
    last = json.loads(lines[-1])
    forged = dict(last, outcome="ok")
    forged["hash"] = record_hash(forged)
    lines[-1] = canonical(forged) + b"\n"
    _write_lines(path, lines)
    res = verify(path)
    assert (res.ok, res.first_bad_line, res.first_bad_seq) == (False, 3, 2)
    assert "replaced" in (res.reason or "")


def test_swap_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _make(path, 4)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    _write_lines(path, lines)
    res = verify(path)
    assert (res.ok, res.first_bad_line, res.first_bad_seq) == (False, 2, 2)


@pytest.mark.parametrize(
    ("junk", "why"),
    [
        (b"\n", "empty line"),
        (b"not json\n", "not valid JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b"\xff\xfe\n", "not UTF-8"),
        (b'{"seq": 3}', "incomplete last line"),
    ],
)
def test_malformed_lines_are_named(tmp_path: Path, junk: bytes, why: str) -> None:
    path = tmp_path / "audit.jsonl"
    _make(path, 3)
    with open(path, "ab") as fh:
        fh.write(junk)
    res = verify(path)
    assert (res.ok, res.first_bad_line, res.count) == (False, 4, 3)
    assert why in (res.reason or "")


# ---------------------------------------------------------------------------------------------
# Verify: property


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
)
_specs = st.lists(
    st.fixed_dictionaries(
        {
            "phase": st.sampled_from(["intent", "result", "abort"]),
            "action": st.text(min_size=1, max_size=12),
            "environment": st.sampled_from(["prod", "staging", "sandbox"]),
            "cluster": st.text(min_size=1, max_size=8),
            "member": st.one_of(st.none(), st.text(max_size=6)),
            "params": st.dictionaries(st.text(max_size=6), _values, max_size=3),
            "reason": st.one_of(st.none(), st.text(max_size=10)),
        }
    ),
    min_size=1,
    max_size=6,
)


def _build(path: Path, specs: list[dict]) -> None:
    log = AuditLog(path)
    last_intent = None
    for s in specs:
        common = {k: s[k] for k in ("action", "environment", "cluster", "member", "params", "reason")}
        if s["phase"] == "intent" or (s["phase"] == "result" and last_intent is None):
            last_intent = log.intent(**common)
        elif s["phase"] == "result":
            log.result(last_intent, outcome="ok", detail={"p": s["params"]})
        else:
            log.abort(**common)


def _paths(rec: dict) -> list[tuple[str, ...]]:
    out = [(k,) for k in rec]
    for k in ("operator", "params", "detail"):
        if isinstance(rec.get(k), dict):
            out += [(k, sub) for sub in rec[k]]
    return out


def _set(rec: dict, path: tuple[str, ...], value) -> dict:
    rec = json.loads(json.dumps(rec))
    target = rec
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return rec


@settings(max_examples=300, deadline=None)
@given(specs=_specs, data=st.data())
def test_any_single_tampering_is_detected(specs: list[dict], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "audit.jsonl"
        _build(path, specs)
        untouched = verify(path)
        assert untouched.ok and untouched.count == len(specs), untouched.summary()

        lines = _lines(path)
        recs = [json.loads(x) for x in lines]
        n = len(lines)
        kind = data.draw(
            st.sampled_from(["modify", "modify_rehash", "drop_field", "add_field", "delete", "insert", "replay", "swap"]),
            label="kind",
        )
        if kind == "swap" and n < 2:
            kind = "delete"

        if kind in ("modify", "modify_rehash"):
            i = data.draw(st.integers(0, n - 1), label="record")
            paths = _paths(recs[i])
            if kind == "modify_rehash":
                paths = [p for p in paths if p != ("hash",)]
            fpath = data.draw(st.sampled_from(paths), label="field")
            old = recs[i]
            for p in fpath:
                old = old[p]
            new = data.draw(_values.filter(lambda v: canonical(v) != canonical(old)), label="new value")
            rec = _set(recs[i], fpath, new)
            if kind == "modify_rehash":
                rec["hash"] = record_hash(rec)  # a careful forger keeps the record self-consistent
            lines[i] = canonical(rec) + b"\n"
        elif kind == "drop_field":
            i = data.draw(st.integers(0, n - 1), label="record")
            key = data.draw(st.sampled_from(sorted(recs[i])), label="field")
            rec = {k: v for k, v in recs[i].items() if k != key}
            if key != "hash" and data.draw(st.booleans(), label="rehash"):
                rec["hash"] = record_hash(rec)
            lines[i] = canonical(rec) + b"\n"
        elif kind == "add_field":
            i = data.draw(st.integers(0, n - 1), label="record")
            key = data.draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in recs[i]), label="key")
            rec = dict(recs[i], **{key: data.draw(_values, label="value")})
            if data.draw(st.booleans(), label="rehash"):
                rec["hash"] = record_hash(rec)
            lines[i] = canonical(rec) + b"\n"
        elif kind == "delete":
            i = data.draw(st.integers(0, n - 1), label="record")
            del lines[i]
        elif kind in ("insert", "replay"):
            pos = data.draw(st.integers(0, n), label="position")
            src = recs[data.draw(st.integers(0, n - 1), label="source")]
            if kind == "replay":
                forged = src  # a verbatim copy of an existing record
            else:
                forged = dict(src, action=data.draw(st.text(max_size=12), label="action"))
                forged["seq"] = pos
                forged["prev"] = GENESIS if pos == 0 else recs[pos - 1]["hash"]
                forged["hash"] = record_hash(forged)  # self-consistent, chained to its predecessor
            lines.insert(pos, canonical(forged) + b"\n")
        else:  # swap
            i, j = data.draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True), label="pair")
            lines[i], lines[j] = lines[j], lines[i]

        _write_lines(path, lines)
        res = verify(path)
        assert not res.ok, f"{kind} went undetected"
        assert res.reason
        assert res.first_bad_line is not None and 1 <= res.first_bad_line <= len(lines) + 1
