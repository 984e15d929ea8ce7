"""Alertmanager's and Prometheus' answers, good and bad, served over real HTTP by a tiny local
server: parsed into alerts, silences and samples; every bad answer (not JSON, the wrong shape,
401, 500, nobody listening) is one MonitoringError with a clear message and no credential."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dbops.config import AlertmanagerOptions, PrometheusOptions, SecretRef, parse
from dbops.model import Reachability, Severity
from dbops.platform import alertmanager as am
from dbops.platform import prometheus as prom
from dbops.platform.monitoring_labels import LabelIndex
from dbops.sandbox import free_ports

CANARY = "canary-Pw-7f3e9d"  # a password that must never appear in a message


@dataclass
class Canned:
    """(method, path) -> (status, body); records what was asked."""

    answers: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture()
def server() -> Iterator[tuple[str, Canned]]:
    canned = Canned()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            path = self.path.split("?", 1)[0]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            canned.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
            status, text = canned.answers.get((self.command, path), (404, "not found"))
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", canned
    finally:
        httpd.shutdown()
        httpd.server_close()


CONFIG = """
[environments.prod.clusters.orders]
engine = "postgres"
members = [{ name = "pg1", host = "10.0.0.1", role = "primary" },
           { name = "pg2", host = "10.0.0.2", role = "replica" },
           { name = "pg3", host = "10.0.0.3", role = "replica" }]

[environments.prod.clusters.sessions]
engine = "redis"
members = [{ name = "r1", host = "10.0.1.1" }, { name = "r2", host = "10.0.1.2" }]

[environments.prod.clusters.events]
engine = "kafka"
members = [{ name = "b1", host = "10.0.2.1" }, { name = "b2", host = "10.0.2.2" }, { name = "b3", host = "10.0.2.3" }]

[environments.prod.clusters.graph]
engine = "neo4j"
members = [{ name = "n1", host = "10.0.3.1" }]
"""
REFS = parse(CONFIG).clusters()

ALERT = {
    "annotations": {"summary": "PostgreSQL pg2 is down", "description": "pg_up = 0"},
    "endsAt": "2026-01-01T00:10:00.000Z",
    "fingerprint": "9a1c71759f637328",
    "receivers": [{"name": "null"}],
    "startsAt": "2026-01-01T00:00:01.123456789Z",
    "status": {"inhibitedBy": [], "silencedBy": ["s-1"], "state": "suppressed"},
    "updatedAt": "2026-01-01T00:00:02.000Z",
    "generatorURL": "http://prometheus/graph",
    "labels": {"alertname": "DbopsPostgresDown", "cluster": "orders", "environment": "prod",
               "instance": "10.0.0.2:5432", "severity": "critical"},
}


def am_options(url: str, **kw: Any) -> AlertmanagerOptions:
    return AlertmanagerOptions(url=url, **kw)


# -- parsing ----------------------------------------------------------------------------------


def test_alerts_parse_and_match() -> None:
    other = {**ALERT, "fingerprint": "f2", "labels": {"alertname": "Other", "job": "node"},
             "status": {"state": "active"}, "annotations": {"description": "disk full"}}
    alerts = am.parse_alerts([ALERT, other], LabelIndex(REFS, AlertmanagerOptions(url="http://x").labels))
    a = alerts[0]
    assert (a.name, a.severity, a.state, a.cluster, a.member) == ("DbopsPostgresDown", "critical", "suppressed", "prod/orders", "pg2")
    assert a.summary == "PostgreSQL pg2 is down"
    assert a.silenced_by == ("s-1",)
    assert a.starts_at == pytest.approx(1767225601.123456)
    assert a.label("instance") == "10.0.0.2:5432"
    assert am.silence_matchers_for(a) == sorted(ALERT["labels"].items())  # type: ignore[attr-defined]
    b = alerts[1]
    assert (b.cluster, b.member, b.summary, b.severity) == (None, None, "disk full", "")


@pytest.mark.parametrize(("data", "why"), [
    ({"alerts": []}, "expected a list of alerts, got dict"),
    ([{**ALERT, "labels": None}], "alert 1: has no labels"),
    ([{**ALERT, "labels": {"alertname": 3}}], "alert 1: labels is not an object of strings"),
    ([ALERT, {**ALERT, "status": {"state": "firing"}}], "alert 2: has no status.state among active, suppressed, unprocessed"),
    ([{**ALERT, "startsAt": "yesterday"}], "alert 1: Invalid isoformat string"),
    (["DbopsPostgresDown"], "alert 1: is str, not an object"),
])
def test_alerts_of_the_wrong_shape_say_which_and_why(data: Any, why: str) -> None:
    with pytest.raises(ValueError) as err:
        am.parse_alerts(data)
    assert str(err.value).startswith(why)


def test_parse_vector() -> None:
    data = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": "pg_up", "instance": "a:1"}, "value": [1700000000.5, "1"]},
        {"metric": {}, "value": [1700000000.5, "NaN"]}]}}
    samples = prom.parse_vector(data)
    assert samples[0] == ({"__name__": "pg_up", "instance": "a:1"}, 1.0, 1700000000.5)
    with pytest.raises(ValueError, match="resultType is 'matrix'"):
        prom.parse_vector({"status": "success", "data": {"resultType": "matrix", "result": []}})
    with pytest.raises(ValueError, match="result 1 has no metric"):
        prom.parse_vector({"status": "success", "data": {"resultType": "vector", "result": [{"value": 1}]}})


# -- bad answers over HTTP ----------------------------------------------------------------------


async def test_not_json(server: tuple[str, Canned]) -> None:
    url, canned = server
    canned.answers[("GET", "/api/v2/alerts")] = (200, "<html>Grafana</html>")
    with pytest.raises(am.MonitoringError) as err:
        await am.fetch_alerts(am_options(url), REFS)
    assert err.value.message == (f"alertmanager at {url}: GET /api/v2/alerts answered something that is not JSON "
                                 "('<html>Grafana</html>'): is the URL alertmanager's?")


async def test_wrong_shape(server: tuple[str, Canned]) -> None:
    url, canned = server
    canned.answers[("GET", "/api/v2/alerts")] = (200, json.dumps({"data": []}))
    with pytest.raises(am.MonitoringError) as err:
        await am.fetch_alerts(am_options(url), REFS)
    assert err.value.message == (f"alertmanager at {url}: unexpected answer to GET /api/v2/alerts: "
                                 "expected a list of alerts, got dict")


async def test_401_names_the_settings_and_never_the_password(server: tuple[str, Canned]) -> None:
    url, canned = server
    canned.answers[("GET", "/api/v2/alerts")] = (401, f"Unauthorized: bad password {CANARY}")
    opts = am_options(url, user="oncall", password=SecretRef(value=CANARY))
    with pytest.raises(am.MonitoringError) as err:
        await am.fetch_alerts(opts, REFS)
    assert err.value.message == f"alertmanager at {url}: HTTP 401 on GET /api/v2/alerts: check [alertmanager] user/password"
    # Basic auth was sent.
    sent = canned.requests[-1]["headers"]["Authorization"]
    assert base64.b64decode(sent.split()[1]).decode() == f"oncall:{CANARY}"


async def test_500_that_echoes_the_credential_is_scrubbed(server: tuple[str, Canned]) -> None:
    url, canned = server
    canned.answers[("GET", "/api/v1/query")] = (500, json.dumps({"status": "error", "error": f"token {CANARY} broke it"}))
    opts = PrometheusOptions(url=url, bearer_token=SecretRef(value=CANARY))
    with pytest.raises(prom.MonitoringError) as err:
        await prom.query(opts, "pg_up")
    assert err.value.message == f"prometheus at {url}: HTTP 500 on GET /api/v1/query: token *** broke it"
    assert canned.requests[-1]["headers"]["Authorization"] == f"Bearer {CANARY}"


async def test_promql_error(server: tuple[str, Canned]) -> None:
    url, canned = server
    canned.answers[("GET", "/api/v1/query")] = (400, json.dumps(
        {"status": "error", "errorType": "bad_data", "error": "1:4: parse error: unexpected <EOF>"}))
    with pytest.raises(prom.MonitoringError) as err:
        await prom.query(PrometheusOptions(url=url), "up{")
    assert err.value.message == f"prometheus at {url}: HTTP 400 on GET /api/v1/query: 1:4: parse error: unexpected <EOF>"


async def test_connection_refused() -> None:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(am.MonitoringError) as err:
        await am.list_silences(am_options(url, user="u", password=SecretRef(value=CANARY)))
    assert err.value.message == f"alertmanager at {url}: connection refused (is it running, and is the URL right?)"


async def test_a_password_in_the_url_is_not_shown() -> None:
    (port,) = free_ports(1)
    with pytest.raises(am.MonitoringError) as err:
        await am.fetch_alerts(am_options(f"http://admin:{CANARY}@127.0.0.1:{port}"), REFS)
    assert CANARY not in err.value.message
    assert err.value.message.startswith(f"alertmanager at http://127.0.0.1:{port}: connection refused")


async def test_an_unset_secret_names_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBOPS_TEST_AM_TOKEN", raising=False)
    opts = am_options("http://127.0.0.1:9", bearer_token=SecretRef(env="DBOPS_TEST_AM_TOKEN"))
    with pytest.raises(am.MonitoringError) as err:
        await am.fetch_alerts(opts, REFS)
    assert err.value.message == ("alertmanager at http://127.0.0.1:9: [alertmanager] bearer_token: "
                                 "environment variable DBOPS_TEST_AM_TOKEN is not set")


async def test_a_missing_ca_file_is_a_clear_message() -> None:
    from dbops.config import TLS

    opts = am_options("https://127.0.0.1:9", tls=TLS(mode="verify-full", ca_file="/nonexistent/ca.pem"))
    with pytest.raises(am.MonitoringError) as err:
        await am.fetch_alerts(opts, REFS)
    assert err.value.message == "alertmanager at https://127.0.0.1:9: [alertmanager] tls: tls.ca_file /nonexistent/ca.pem does not exist"


# -- silences -----------------------------------------------------------------------------------


async def test_create_list_and_expire_a_silence(server: tuple[str, Canned]) -> None:
    url, canned = server
    canned.answers[("POST", "/api/v2/silences")] = (200, json.dumps({"silenceID": "0b5c-11"}))
    canned.answers[("DELETE", "/api/v2/silence/0b5c-11")] = (200, "")
    canned.answers[("GET", "/api/v2/silences")] = (200, json.dumps([{
        "id": "0b5c-11", "status": {"state": "active"}, "comment": "pg2 rebuilt", "createdBy": "alice",
        "startsAt": "2026-01-01T00:00:00Z", "endsAt": "2026-01-01T01:00:00Z", "updatedAt": "2026-01-01T00:00:00Z",
        "matchers": [{"name": "alertname", "value": "DbopsPostgresDown", "isRegex": False, "isEqual": True}]}]))
    opts = am_options(url)
    sid = await am.create_silence(opts, [("alertname", "DbopsPostgresDown"), ("instance", "10.0.0.2:5432")], 3600,
                                  "pg2 rebuilt", "alice")
    assert sid == "0b5c-11"
    body = json.loads(canned.requests[-1]["body"])
    assert body["matchers"] == [{"name": "alertname", "value": "DbopsPostgresDown", "isRegex": False, "isEqual": True},
                                {"name": "instance", "value": "10.0.0.2:5432", "isRegex": False, "isEqual": True}]
    assert (body["createdBy"], body["comment"]) == ("alice", "pg2 rebuilt")
    assert am.parse_time(body["endsAt"]) - am.parse_time(body["startsAt"]) == pytest.approx(3600, abs=0.01)
    (silence,) = await am.list_silences(opts)
    assert (silence.id, silence.state, silence.created_by) == ("0b5c-11", "active", "alice")
    assert str(silence.matchers[0]) == 'alertname="DbopsPostgresDown"'
    assert silence.ends_at - silence.starts_at == 3600
    await am.expire_silence(opts, sid)
    assert canned.requests[-1]["method"] == "DELETE"


async def test_silence_arguments_are_checked_before_any_request() -> None:
    opts = am_options("http://127.0.0.1:9")
    for args, message in [
        (([], 60, "why", "me"), "a silence needs at least one matcher (label = value)"),
        (([("a", "b")], 0, "why", "me"), "a silence's duration must be positive (got 0 s)"),
        (([("a", "b")], 60, " ", "me"), "a silence needs a comment (Alertmanager refuses one without): say why"),
        (([("a", "b")], 60, "why", ""), "a silence needs an author (the operator)"),
    ]:
        with pytest.raises(am.MonitoringError) as err:
            await am.create_silence(opts, *args)  # type: ignore[arg-type]
        assert err.value.message == message
    with pytest.raises(am.MonitoringError, match="is not a silence id"):
        await am.expire_silence(opts, "../alerts")


async def test_a_silence_without_an_id_in_the_answer(server: tuple[str, Canned]) -> None:
    url, canned = server
    canned.answers[("POST", "/api/v2/silences")] = (200, json.dumps({"id": "x"}))
    with pytest.raises(am.MonitoringError) as err:
        await am.create_silence(am_options(url), [("a", "b")], 60, "why", "me")
    assert err.value.message == f"alertmanager at {url}: unexpected answer to POST /api/v2/silences: no silenceID in it"


# -- the fleet from recorded answers ----------------------------------------------------------------


def sample(name: str, value: float, ts: float = 1700000000.0, **labels: str) -> tuple[dict[str, str], float, float]:
    return {"__name__": name, **labels}, value, ts


def test_judge_fleet_from_recorded_answers() -> None:
    pg = {"cluster": "orders", "environment": "prod", "job": "postgres"}
    rd = {"cluster": "sessions", "environment": "prod", "job": "redis"}
    results = {
        "pg_up": [sample("pg_up", 1, instance="10.0.0.1:5432", **pg), sample("pg_up", 0, 1700000003.0, instance="10.0.0.2:5432", **pg)],
        # pg3 idle for ten minutes: nothing to replay, so its lag in seconds is no lag.
        "pg_lag_seconds": [sample("pg_replication_lag", 600, instance="10.0.0.3:5432", **pg)],
        "pg_lag_bytes": [sample("pg_stat_replication_pg_wal_lsn_diff", 0, instance="10.0.0.1:5432", application_name="pg3", **pg)],
        "redis_up": [sample("redis_up", 1, instance="10.0.1.1:6379", **rd), sample("redis_up", 1, instance="10.0.1.2:6379", **rd)],
        "redis_memory": [sample("redis_memory_used_bytes", 95 * 2**20, instance="10.0.1.1:6379", **rd)],
        "redis_maxmemory": [sample("redis_memory_max_bytes", 100 * 2**20, instance="10.0.1.1:6379", **rd)],
        # kafka_exporter, recorded: its instance is the exporter; the cluster label names the cluster.
        "kafka_lag": [{"cluster": "events", "consumergroup": "billing", "instance": "10.0.9.9:9308", "job": "kafka"}, 1234.0, 1700000001.0],
        "kafka_brokers": [sample("kafka_brokers", 2, cluster="events", instance="10.0.9.9:9308")],
    }
    results["kafka_lag"] = [tuple(results["kafka_lag"])]  # type: ignore[list-item]
    health = prom.judge_fleet(results, REFS, LabelIndex(REFS, PrometheusOptions(url="http://x").labels), now=1700000010.0)

    orders = health["prod/orders"]
    assert orders.source == "prometheus" and orders.observed_at == 1700000003.0
    by = {m.name: m for m in orders.members}
    assert (by["pg1"].snapshot.reachability, by["pg1"].severity) == (Reachability.UP, Severity.OK)
    assert (by["pg2"].snapshot.reachability, by["pg2"].severity) == (Reachability.DOWN, Severity.CRIT)
    assert by["pg2"].snapshot.taken_at == 1700000003.0 and by["pg2"].snapshot.data is None
    assert (by["pg3"].snapshot.reachability, by["pg3"].severity) == (Reachability.PENDING, Severity.UNKNOWN)
    assert orders.severity is Severity.CRIT
    assert "pg2: pg_up = 0 (postgres_exporter cannot reach 10.0.0.2:5432)" in orders.problems

    sessions = health["prod/sessions"]
    assert sessions.severity is Severity.WARN
    assert "r1: memory 95.0 MiB of maxmemory 100.0 MiB (95%)" in sessions.problems

    events = health["prod/events"]
    assert events.members == ()
    assert events.severity is Severity.WARN
    assert [m.message for m in events.metrics] == [
        "2 of 3 configured brokers in the cluster's metadata (kafka_exporter)",
        "consumer group billing: lag 1,234 messages (kafka_exporter)"]

    graph = health["prod/graph"]
    assert graph.severity is Severity.UNKNOWN and graph.observed_at is None
    assert graph.problems == [prom.NO_SERIES]


def test_idle_replica_lag_in_seconds_is_not_a_lag_when_nothing_is_left_to_replay() -> None:
    pg = {"cluster": "orders", "environment": "prod"}
    results = {
        "pg_up": [sample("pg_up", 1, instance=f"10.0.0.{i}:5432", **pg) for i in (1, 2, 3)],
        "pg_lag_seconds": [sample("pg_replication_lag", 600, instance="10.0.0.2:5432", **pg),
                           sample("pg_replication_lag", 600, instance="10.0.0.3:5432", **pg)],
        "pg_lag_bytes": [sample("x", 0, instance="10.0.0.1:5432", application_name="pg2", **pg),
                         sample("x", 200 * 2**20, instance="10.0.0.1:5432", application_name="pg3", **pg)],
    }
    health = prom.judge_fleet(results, REFS, LabelIndex(REFS, PrometheusOptions(url="http://x").labels))
    by = {m.name: m for m in health["prod/orders"].members}
    assert by["pg2"].severity is Severity.OK and by["pg2"].lag_bytes == 0
    assert by["pg3"].severity is Severity.CRIT
    assert by["pg3"].problems == ["replication lag 200.0 MiB behind the primary (pg_stat_replication_pg_wal_lsn_diff)",
                                  "replication lag 600 s (pg_replication_lag)"]


async def test_https_to_a_plain_http_server_is_a_tls_message(server: tuple[str, Canned]) -> None:
    from dbops.config import TLS

    url, _ = server
    https = url.replace("http://", "https://")
    with pytest.raises(am.MonitoringError) as err:
        await am.fetch_alerts(am_options(https, tls=TLS(mode="require")), REFS)
    assert err.value.message.startswith(f"alertmanager at {https}: TLS: ")
    assert err.value.message.endswith("(check [alertmanager] tls)")
