"""Silencing from the console (dbops.silences): durations, the read-only refusal, and the audit
records a silence leaves when Alertmanager cannot be reached or the operator declines. The
requests themselves are tested against the sandbox's real Alertmanager (tests/integration)."""

from __future__ import annotations

import json
import socket

import pytest

from dbops.actions import ReadOnly
from dbops.audit import AuditLog
from dbops.config import parse
from dbops.platform.alertmanager import Alert, Silence
from dbops.silences import SilenceAlert, check_allowed, decline, decline_expire, expire, parse_duration, silence


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(mode: str = "operator"):
    return parse(f"""
[alertmanager]
url = "http://127.0.0.1:{closed_port()}"
[environments.prod]
mode = "{mode}"
[environments.prod.clusters.orders]
engine = "postgres"
members = [{{ name = "pg1", host = "10.0.0.1" }}]
""")


ALERT = Alert("f1", "PostgresDown", "critical", "active", (("alertname", "PostgresDown"), ("instance", "10.0.0.1:5432")),
              "pg1 is down", 1.0, cluster="prod/orders", member="pg1")


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("2h", 7200), ("1d", 86400), ("90", 5400), ("45s", 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-1h", "8d", "0m"])
def test_bad_durations_say_what_to_give(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_read_only_environment_refuses_a_silence_before_anything_is_written(tmp_path):
    cfg = config("read-only")
    with pytest.raises(ReadOnly, match="read-only"):
        check_allowed(cfg, ALERT.cluster, allow_writes=False)
    check_allowed(cfg, ALERT.cluster, allow_writes=True)  # --allow-writes
    audit = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(ReadOnly):
        silence(audit, cfg, SilenceAlert(ALERT, 3600, "rebuilding pg1", "alice"), allow_writes=False)
    assert not (tmp_path / "audit.jsonl").exists() or records(tmp_path / "audit.jsonl") == []


def test_an_unreachable_alertmanager_leaves_an_intent_and_a_failed_result(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    outcome = silence(audit, config(), SilenceAlert(ALERT, 3600, "rebuilding pg1", "alice"), allow_writes=False)
    assert not outcome.ok and "the silence was not made" in outcome.message and "refused" in outcome.message
    recs = records(tmp_path / "audit.jsonl")
    assert [(r["phase"], r["action"]) for r in recs] == [("intent", "alertmanager.silence"), ("result", "alertmanager.silence")]
    assert recs[0]["cluster"] == "orders" and recs[0]["member"] == "pg1" and recs[0]["params"]["author"] == "alice"
    assert recs[0]["params"]["comment"] == "rebuilding pg1 [dbops]"
    assert recs[1]["outcome"] == "failed"


def test_declines_are_audited_and_only_the_consoles_silences_can_be_expired(tmp_path):
    cfg = config()
    audit = AuditLog(tmp_path / "audit.jsonl")
    decline(audit, cfg, SilenceAlert(ALERT, 0, "", "alice"))
    ours = Silence("s-1", "active", (), 0.0, 1.0, "alice", "rebuilding pg1 [dbops]")
    decline_expire(audit, cfg, ours, ALERT.cluster)
    theirs = Silence("s-2", "active", (), 0.0, 1.0, "bob", "maintenance window")
    outcome = expire(audit, cfg, theirs, ALERT.cluster, allow_writes=False)
    assert not outcome.ok and "outside dbops" in outcome.message
    recs = records(tmp_path / "audit.jsonl")
    assert [(r["phase"], r["action"], r.get("outcome")) for r in recs] == [
        ("abort", "alertmanager.silence", "declined"), ("abort", "alertmanager.expire_silence", "declined")]
