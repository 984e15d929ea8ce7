"""Kafka over TLS and SASL, against the sandbox's real brokers: every node also has a SASL_SSL
listener (a certificate for 127.0.0.1 signed by the sandbox's CA, SASL PLAIN user `dbops`).
The right CA and password read all three brokers; a wrong password, a CA that did not sign the
certificate, and TLS spoken to a PLAINTEXT port each end as a state that says so, and no
password reaches the output, the logs or a command line."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbops import sandbox
from dbops.config import ClusterRef, load, parse
from dbops.engines.kafka.adapter import KafkaAdapter
from dbops.model import Reachability, Snapshot
from dbops.poller import poll_member
from dbops.sandbox.kafka import NODES, TLS_CLUSTER_NAME, KafkaSandbox

from .conftest import running_sandbox

PW_ENV = "DBOPS_IT_KAFKA_TLS_PW"
WRONG_PASSWORD = "not-the-sandbox-password-7f3a"


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaSandbox]:
    with running_sandbox(("kafka",), "dbops-it-ktls-") as root:
        yield KafkaSandbox(root)


def config_text(ports: list[int], tls: str, user: str | None = "dbops") -> str:
    members = ", ".join(f'{{ name = "{n}", host = "127.0.0.1", port = {p} }}' for n, p in zip(NODES, ports))
    return "\n".join([
        "[environments.staging.clusters.events]",
        'engine = "kafka"',
        *([f'user = "{user}"', f'password = {{ env = "{PW_ENV}" }}'] if user else []),
        f"tls = {tls}",
        "timeout = 5.0",
        f"members = [{members}]",
        "",
    ])


def ref(kafka: KafkaSandbox, monkeypatch: pytest.MonkeyPatch, tls: str, *, password: str | None = None,
        plaintext_ports: bool = False) -> ClusterRef:
    monkeypatch.setenv(PW_ENV, kafka.sasl_password if password is None else password)
    ports = [kafka.port(n) if plaintext_ports else kafka.sasl_ssl_port(n) for n in NODES]
    return parse(config_text(ports, tls)).clusters()[0]


def verify_ca(kafka: KafkaSandbox, ca_file: Path | None = None) -> str:
    return f'{{ mode = "verify-ca", ca_file = "{ca_file or kafka.ca_file}" }}'


def poll(r: ClusterRef) -> Snapshot:
    """One refresh as the pollers do it (under the cluster's timeout; a failure becomes a state)."""
    unit = r.poll_units[0]

    async def once() -> Snapshot:
        adapter = KafkaAdapter(r, unit)
        try:
            return await poll_member(adapter, r, unit, None)
        finally:
            await adapter.close()

    return asyncio.run(once())


def test_verify_ca_with_the_sandbox_ca_and_password_sees_all_three_brokers(kafka, monkeypatch) -> None:
    r = ref(kafka, monkeypatch, verify_ca(kafka))

    async def collect():
        adapter = KafkaAdapter(r, r.poll_units[0])
        try:
            return await adapter.collect()
        finally:
            await adapter.close()

    data = asyncio.run(collect())
    assert data.cluster_id == kafka.state["cluster_id"]
    # The brokers the SASL_SSL listener advertises are the configured ones, each up.
    assert [(b.name, b.address, b.up) for b in data.brokers] == \
        [(n, f"127.0.0.1:{kafka.sasl_ssl_port(n)}", True) for n in NODES]
    assert kafka.sasl_ssl_bootstrap() == ",".join(b.address for b in data.brokers)


def test_verify_full_checks_the_address_in_the_certificate(kafka, monkeypatch) -> None:
    snap = poll(ref(kafka, monkeypatch, f'{{ mode = "verify-full", ca_file = "{kafka.ca_file}" }}'))
    assert snap.reachability is Reachability.UP, snap.error
    assert [(b.name, b.up) for b in snap.data.brokers] == [(n, True) for n in NODES]


def test_require_encrypts_without_checking_the_certificate(kafka, monkeypatch) -> None:
    snap = poll(ref(kafka, monkeypatch, '{ mode = "require" }'))
    assert snap.reachability is Reachability.UP, snap.error
    assert [(b.name, b.up) for b in snap.data.brokers] == [(n, True) for n in NODES]


def test_a_wrong_password_is_an_auth_state_that_names_no_password(kafka, monkeypatch) -> None:
    snap = poll(ref(kafka, monkeypatch, verify_ca(kafka), password=WRONG_PASSWORD))
    assert snap.reachability is Reachability.AUTH, snap.error
    assert "rejected the credentials" in snap.error and "Invalid username or password" in snap.error
    assert kafka.sasl_password not in repr(snap) and WRONG_PASSWORD not in repr(snap)


def test_tls_to_a_plaintext_port_says_so(kafka, monkeypatch) -> None:
    # A PLAINTEXT listener drops a TLS client at once: a TLS state, well before the timeout (a
    # hang would have ended as TIMEOUT).
    snap = poll(ref(kafka, monkeypatch, verify_ca(kafka), plaintext_ports=True))
    assert snap.reachability is Reachability.TLS, snap.error
    assert f"127.0.0.1:{kafka.port(NODES[0])}" in snap.error
    assert "closed the connection during the TLS handshake" in snap.error
    assert "is it a TLS (SSL or SASL_SSL) listener?" in snap.error


def test_a_ca_that_did_not_sign_the_certificate_is_a_tls_state(kafka, monkeypatch, tmp_path) -> None:
    other = tmp_path / "other-ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "other-ca.key"),
                    "-out", str(other), "-days", "2", "-subj", "/CN=another CA", "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    snap = poll(ref(kafka, monkeypatch, verify_ca(kafka, other)))
    assert snap.reachability is Reachability.TLS, snap.error
    assert "certificate verify failed" in snap.error
    assert kafka.sasl_password not in repr(snap)


def test_dbops_check_reads_both_views_of_the_sandbox_and_a_wrong_password_stays_secret(kafka, tmp_path) -> None:
    """The sandbox's config names the cluster twice (PLAINTEXT and SASL_SSL); `dbops check`
    reads both. Then the TLS view with a wrong password: AUTH, and neither password in the
    output or anything the CLI wrote to its state directory (its log)."""
    env = {**os.environ, "DBOPS_STATE_DIR": str(tmp_path / "state")}
    config = kafka.root / "dbops.toml"
    tls_ref = next(r for r in load(config).clusters() if r.name == TLS_CLUSTER_NAME)
    assert tls_ref.cluster.user == "dbops" and tls_ref.cluster.tls.mode == "verify-ca"
    assert tls_ref.cluster.tls.ca_file == str(kafka.ca_file)

    def check(path: Path) -> tuple[int, dict, str]:
        r = subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(path), "check", "--json"],
                           capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
        return r.returncode, json.loads(r.stdout), r.stdout + r.stderr

    code, report, _ = check(config)
    assert code == 0, report
    views = {c["name"]: [(m["name"], m["reachability"]) for m in c["members"]] for c in report["clusters"]}
    assert views == {"sandbox-kafka": [(n, "UP") for n in NODES], TLS_CLUSTER_NAME: [(n, "UP") for n in NODES]}

    wrong = tmp_path / "wrong.toml"
    wrong.write_text(config.read_text().replace(kafka.sasl_password, WRONG_PASSWORD))
    code, report, output = check(wrong)
    assert code == 2
    (bad,) = [c for c in report["clusters"] if c["name"] == TLS_CLUSTER_NAME]
    assert bad["severity"] == "CRIT" and {m["reachability"] for m in bad["members"]} == {"AUTH"}
    written = [output] + [p.read_text(errors="replace") for p in (tmp_path / "state").rglob("*") if p.is_file()]
    assert not any(kafka.sasl_password in text or WRONG_PASSWORD in text for text in written)


def test_the_password_is_in_no_command_line_log_or_readable_file(kafka) -> None:
    assert len(kafka.sasl_password) >= 20
    for name in NODES:
        node = kafka.state["nodes"][name]
        props = Path(node["dir"]) / "server.properties"
        assert stat.S_IMODE(props.stat().st_mode) == 0o600
        assert f'user_dbops="{kafka.sasl_password}"' in props.read_text()
        cmdline = Path(f"/proc/{kafka.pid(name)}/cmdline").read_bytes().decode(errors="replace")
        assert "server.properties" in cmdline and kafka.sasl_password not in cmdline
        assert kafka.sasl_password not in Path(node["log"]).read_text(errors="replace")
    keystore = kafka.ca_file.parent / "server.pem"
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600 and "PRIVATE KEY" in keystore.read_text()
    rows = {r.name: r.detail for r in sandbox.status(root=kafka.root)}
    assert all(f"SASL_SSL port {kafka.sasl_ssl_port(n)}" in rows[n] for n in NODES)
