"""A third party's engine, installed the way pip installs one: a package and its dist-info
(with the `dbops.engines` entry point) on the path. Nothing of it is in dbops' own files."""

from __future__ import annotations

import importlib
import socketserver
import sys
import threading
from pathlib import Path

import pytest

import dbops.engine_spec

SITE = Path(__file__).parent / "site"


@pytest.fixture
def gauge_installed(monkeypatch):
    """The gauge engine on sys.path, and dbops' engine registry read afresh (it is read once
    per process; the other tests' processes never see the gauge)."""
    monkeypatch.syspath_prepend(str(SITE))
    importlib.invalidate_caches()
    monkeypatch.setattr(dbops.engine_spec, "_specs", None)
    monkeypatch.setattr(dbops.engine_spec, "_broken", {})
    yield SITE
    for name in [m for m in sys.modules if m == "dbops_gauge" or m.startswith("dbops_gauge.")]:
        del sys.modules[name]


class GaugeServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    level = 0


class _Answer(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(f"level {self.server.level}\n".encode())  # type: ignore[attr-defined]


@pytest.fixture
def gauge_server():
    server = GaugeServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
