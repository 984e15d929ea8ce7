"""`dbops audit verify` / `dbops audit show` through click's test runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dbops.audit import AuditLog, canonical
from dbops.audit_cli import audit


def _log(path: Path, n: int = 3) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        if i % 2 == 0:
            log.intent(action=f"act{i}", environment="prod", cluster="main", member="db1")
        else:
            log.result(log.records()[-1], outcome="ok")
    return log


def _run(*args: str):
    # a wide terminal, so rich does not fold the table's cells
    return CliRunner(env={"COLUMNS": "220"}).invoke(audit, list(args), catch_exceptions=False)


def test_verify_intact_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, 3)
    res = _run("verify", str(path))
    assert res.exit_code == 0, res.output
    assert "intact: 3 records" in res.output


def test_verify_uses_the_state_dir_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBOPS_STATE_DIR", str(tmp_path))
    _log(tmp_path / "audit.jsonl", 2)
    res = _run("verify")
    assert res.exit_code == 0, res.output
    assert str(tmp_path / "audit.jsonl") in res.output and "intact: 2 records" in res.output


def test_verify_tampered_exits_1_naming_the_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, 4)
    lines = path.read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[1])
    rec["outcome"] = "failed"
    lines[1] = canonical(rec) + b"\n"
    path.write_bytes(b"".join(lines))
    res = _run("verify", str(path))
    assert res.exit_code == 1, res.output
    assert "TAMPERED at line 2 (seq 1): content does not match its hash" in res.output
    assert '"outcome":"failed"' in res.output  # the bad line itself is printed
    assert "1 record(s) before it verified" in res.output


def test_verify_truncated_tail_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, 4)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]))
    res = _run("verify", str(path))
    assert res.exit_code == 1, res.output
    assert "TAMPERED at line 3 (seq 2)" in res.output and "removed" in res.output


def test_verify_missing_file_exits_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(audit, ["verify", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 2
    assert "does not exist" in res.output


def test_verify_unreadable_file_exits_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(audit, ["verify", str(tmp_path)])
    assert res.exit_code == 2
    assert "is a directory" in res.output or "Directory" in res.output


def test_show_table_and_json(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, 3)
    res = _run("show", str(path))
    assert res.exit_code == 0, res.output
    assert "act0" in res.output and "act2" in res.output and "prod/main/db1" in res.output
    assert "chain intact: 3 records" in res.output

    res = _run("show", "--json", "--limit", "2", str(path))
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in res.output.splitlines()]
    assert [r["seq"] for r in recs] == [1, 2]


def test_show_of_a_tampered_log_says_so(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, 3)
    with open(path, "ab") as fh:
        fh.write(b"garbage\n")
    res = _run("show", str(path))
    assert res.exit_code == 0, res.output
    assert "TAMPERED at line 4" in res.output


def test_show_missing_file_exits_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(audit, ["show", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 2
    assert "does not exist" in res.output
