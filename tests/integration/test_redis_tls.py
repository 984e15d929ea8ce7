"""TLS to Redis, as ElastiCache with in-transit encryption needs: a real redis-server (Debian's
is built with TLS) on a TLS-only port with a password, certificates made here with openssl."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbops.config import parse
from dbops.model import Reachability, Severity
from dbops.poller import poll_once


def _cert(d: Path, name: str) -> Path:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"),
                    "-out", str(d / f"{name}.pem"), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return d / f"{name}.pem"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Path]]:
    d = tmp_path_factory.mktemp("redis-tls")
    cert, other = _cert(d, "server"), _cert(d, "other")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", "0", "--tls-port", str(port),
                             "--bind", "127.0.0.1", "--tls-cert-file", str(cert), "--tls-key-file", str(d / "server.key"),
                             "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--requirepass", "tls-pw",
                             "--save", "", "--appendonly", "no", "--dir", str(d)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port, cert, other
    finally:
        proc.terminate()
        proc.wait(10)


def ref(port: int, tls: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DBOPS_IT_TLS_PW", "tls-pw")
    cfg = parse('[environments.staging.clusters.cache]\nengine = "redis"\npassword = { env = "DBOPS_IT_TLS_PW" }\n'
                f'tls = {tls}\nmembers = [{{ name = "n1", host = "127.0.0.1", port = {port} }}]\n')
    return cfg.clusters()[0]


def test_verify_full_with_the_right_ca_reads_the_node(tls_redis, monkeypatch) -> None:
    port, cert, _ = tls_redis
    ch = asyncio.run(poll_once([ref(port, f'{{ mode = "verify-full", ca_file = "{cert}" }}', monkeypatch)]))[0]
    assert ch.severity is Severity.OK, ch.problems
    (node,) = ch.members
    assert node.snapshot.reachability is Reachability.UP and node.role == "primary"


def test_a_certificate_from_another_ca_is_a_tls_state(tls_redis, monkeypatch) -> None:
    port, _, other = tls_redis
    ch = asyncio.run(poll_once([ref(port, f'{{ mode = "verify-full", ca_file = "{other}" }}', monkeypatch)]))[0]
    (node,) = ch.members
    assert node.snapshot.reachability is Reachability.TLS, node.snapshot.error
    assert "certificate verify failed" in (node.snapshot.error or "")
    assert "tls-pw" not in repr(ch)


def test_require_without_a_ca_still_encrypts(tls_redis, monkeypatch) -> None:
    port, _, _ = tls_redis
    ch = asyncio.run(poll_once([ref(port, '{ mode = "require" }', monkeypatch)]))[0]
    assert [m.snapshot.reachability for m in ch.members] == [Reachability.UP]


def test_a_missing_ca_file_is_named(tls_redis, monkeypatch) -> None:
    port, _, _ = tls_redis
    ch = asyncio.run(poll_once([ref(port, '{ mode = "verify-ca", ca_file = "/nonexistent/ca.pem" }', monkeypatch)]))[0]
    (node,) = ch.members
    assert node.snapshot.reachability is Reachability.TLS
    assert node.snapshot.error == "tls.ca_file /nonexistent/ca.pem does not exist"
