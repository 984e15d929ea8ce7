"""Qdrant sandbox: ``sandbox-qdrant``, three nodes q1 q2 q3 on 127.0.0.1 served by dbops' FAKE
Qdrant (dbops.sandbox.fake_qdrant), with API keys on.

No Qdrant server can be installed where dbops is built, so the sandbox runs the same stand-in
the tests use: one Python process serving the three nodes' REST ports over one simulated cluster
(raft peers, shards and replicas, transfers, snapshots, aliases). It is seeded with the demo
data: "docs" (3 shards, replication factor 2, 300 points, alias "docs-live") and "images" (1
shard on all three nodes, 120 points). When the repository's copy of Qdrant's OpenAPI spec and
openapi-core are both at hand, the fake validates every exchange against the spec as in the tests
(violations: ``GET /__fake__/violations`` on any node, and the log at stop).

Layout under the sandbox directory::

    qdrant/api_key, read_only_api_key   the keys (0600; the fake reads them from these files)
    qdrant/state.json                   the cluster state (kept across restarts)
    qdrant/snapshots/<node>/<c>/        each node's snapshot files
    qdrant/fake-qdrant.log              the fake's output

State under engine "qdrant": {"version", "api_key", "read_only_api_key", "ports": {"q1": P, ...},
"pid", "dir", "log", "state_file", "spec"}. The config fragment reads with the read-only key
(the cluster's ``password``) and changes things with the full one (``qdrant.manage_api_key``);
when the S3 sandbox is up, ``backups.s3`` is its bucket under the prefix ``qdrant/``.

``dbops sandbox qdrant mark-dead`` and ``latency`` drive the fake's fault injection (``control``).
The fake runs without ``--auto-recover``: a real Qdrant node would soon rebuild a Dead replica by
itself, but the sandbox keeps it Dead, as a Qdrant whose automatic transfers are held back does,
so that the pane, ``dbops check`` and qdrant.recover-dead-replica have something to act on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from dbops.sandbox import (
    ProcessStatus,
    Progress,
    SandboxError,
    SingleProcessSandbox,
    _quiet,
    down_on_failure,
    engine_state,
    free_ports,
    port_open,
    toml_str,
    write_engine_state,
    write_private,
)

ENGINE = "qdrant"
HOST = "127.0.0.1"
NAME = "sandbox-qdrant"
NODES = ("q1", "q2", "q3")
VERSION = "1.19.0"  # the API version the fake implements
MODULE = "dbops.sandbox.fake_qdrant"
READY = "fake-qdrant: "  # the fake prints "fake-qdrant: 3 nodes up on ..." when it listens
START_TIMEOUT = 30.0
STOP_GRACE = 10.0
CONTROL_TIMEOUT = 10.0
# The spec the tests validate against; a checkout has it, an installed wheel does not.
SPEC = Path(__file__).resolve().parents[2] / "tests" / "fakes" / "qdrant-openapi-1.19.json"


def _spec_path() -> Path | None:
    """The spec to validate against, when it and openapi-core (a test dependency) are both here."""
    if SPEC.is_file() and importlib.util.find_spec("openapi_core") is not None:
        return SPEC
    return None


class QdrantSandbox(SingleProcessSandbox):
    ENGINE = ENGINE
    LABEL = "Qdrant"
    UP = "dbops sandbox up --engines qdrant"

    # -- recorded state ----------------------------------------------------------------------

    @property
    def ports(self) -> dict[str, int]:
        return {name: int(port) for name, port in self.state["ports"].items()}

    @property
    def urls(self) -> list[str]:
        return [f"http://{HOST}:{port}" for port in self.ports.values()]

    @property
    def api_key(self) -> str:
        return str(self.state["api_key"])

    @property
    def read_only_api_key(self) -> str:
        return str(self.state["read_only_api_key"])

    def _needle(self) -> str:
        return str(self.dir / "state.json")  # on the fake's command line; unique to this sandbox


    # -- up ------------------------------------------------------------------------------------

    def up(self, progress: Progress = _quiet) -> tuple[str, bool]:
        """Start the fake cluster; returns (its config fragment, already_up)."""
        if self.is_running():
            progress("qdrant sandbox is already up")
            return self.config_fragment(), True
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir.mkdir(exist_ok=True, mode=0o700)
        old = self._state()
        if old and all(not port_open(int(p), HOST) for p in old["ports"].values()):
            # A restart keeps the keys, the ports (configs written before still point there) and
            # the data (state.json).
            ports, api_key, ro_key = dict(old["ports"]), old["api_key"], old["read_only_api_key"]
        else:
            ports = dict(zip(NODES, free_ports(len(NODES))))
            api_key, ro_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        for fname, key in (("api_key", api_key), ("read_only_api_key", ro_key)):
            write_private(self.dir / fname, key + "\n")
        spec = _spec_path()
        write_engine_state(self.root, ENGINE, {
            "version": VERSION, "api_key": api_key, "read_only_api_key": ro_key, "ports": ports, "pid": None,
            "dir": str(self.dir), "log": str(self.dir / "fake-qdrant.log"), "state_file": str(self.dir / "state.json"),
            "spec": str(spec) if spec else None})
        progress(f"start {NAME}: a FAKE Qdrant {VERSION} (dbops' test stand-in), nodes "
                 + ", ".join(f"{n} on {HOST}:{p}" for n, p in ports.items())
                 + (", validated against the OpenAPI spec" if spec else ""))
        with down_on_failure(self):
            self._wait_started(self._spawn())
        return self.config_fragment(), False

    def _spawn(self) -> int:
        st = self.state
        args = [sys.executable, "-m", MODULE, "--ports", ",".join(str(p) for p in st["ports"].values()),
                "--api-key-file", str(self.dir / "api_key"), "--read-only-api-key-file", str(self.dir / "read_only_api_key"),
                "--state-file", st["state_file"], "--seed-demo"]
        if st.get("spec"):
            args += ["--spec", st["spec"]]
        return self._spawn_process("the fake Qdrant cluster", args, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def _wait_started(self, pid: int) -> None:
        self._wait_process(pid, "the fake Qdrant", b"nodes up on", self.ports.values(), timeout=START_TIMEOUT, host=HOST)

    # -- down and status -------------------------------------------------------------------------

    def down(self, progress: Progress = _quiet) -> None:
        self._stop_process(progress, "the fake qdrant", signal.SIGTERM, STOP_GRACE)  # SIGTERM: it saves its state and exits

    def status(self) -> list[ProcessStatus]:
        st = self._state()
        if not st:
            return []
        pid = self.pid()
        rows = []
        for name, port in st["ports"].items():
            # A node the fake was told to take down (node-down) refuses: it shows down.
            up = pid is not None and port_open(int(port), HOST)
            detail = "FAKE Qdrant (test stand-in)" + (", spec-validated" if st.get("spec") else "") + f"; log {st['log']}"
            rows.append(ProcessStatus(ENGINE, name, "fake node", up, int(port), pid, detail))
        return rows

    # -- config ----------------------------------------------------------------------------------

    def config_fragment(self) -> str:
        st = self.state
        lines = [
            f"[environments.sandbox.clusters.{NAME}]",
            'engine = "qdrant"',
            f'description = "local sandbox: a FAKE Qdrant {VERSION} (dbops\' test stand-in), 3 nodes, API keys on"',
            f"password = {{ value = {toml_str(st['read_only_api_key'])} }}",
            "refresh_interval = 2.0",
            "timeout = 3.0",
            "members = [",
            *(f'  {{ name = "{name}", host = "{HOST}", port = {port} }},' for name, port in st["ports"].items()),
            "]",
            "",
            f"[environments.sandbox.clusters.{NAME}.qdrant]",
            f"manage_api_key = {{ value = {toml_str(st['api_key'])} }}",
            "",
        ]
        s3 = engine_state(self.root, "s3")
        if s3:
            lines += [
                f"[environments.sandbox.clusters.{NAME}.backups]",
                f"s3 = {{ bucket = {toml_str(s3['bucket'])}, prefix = {toml_str('qdrant/')}, "
                f"region = {toml_str(s3['region'])}, endpoint_url = {toml_str(s3['endpoint_url'])}, "
                f"access_key_id = {{ value = {toml_str(s3['access_key_id'])} }}, "
                f"secret_access_key = {{ value = {toml_str(s3['secret_access_key'])} }} }}",
                "",
            ]
        return "\n".join(lines)

    # -- fault injection -------------------------------------------------------------------------

    def control(self, what: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST (or, without a body, GET) /__fake__/<what> on the first node that answers."""
        if not self.is_running():
            raise SandboxError(f"the Qdrant sandbox is not running; start it with `{self.UP}`")
        data = json.dumps(body).encode() if body is not None else None
        last = ""
        for url in self.urls:
            req = urllib.request.Request(f"{url}/__fake__/{what}", data=data, method="POST" if data is not None else "GET",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=CONTROL_TIMEOUT) as resp:
                    return dict(json.loads(resp.read()))
            except urllib.error.HTTPError as exc:
                try:
                    said = json.loads(exc.read()).get("error", "")
                except ValueError:
                    said = ""
                raise SandboxError(f"the fake Qdrant refused {what}: {said or exc.reason}") from None
            except (OSError, ValueError) as exc:
                last = f"{url}: {exc}"  # that node is down: ask the next one
        raise SandboxError(f"no node of the Qdrant sandbox answered ({last})")

    def mark_replica(self, collection: str, shard: int, peer: str, state: str = "Dead") -> str:
        """Set one replica's state; returns a line saying what was done."""
        ref: Any = int(peer) if peer.isdigit() else peer
        self.control("replica-state", {"collection": collection, "shard_id": shard, "peer_id": ref, "state": state})
        peers = {str(p["peer_id"]): p["name"] for p in self.control("state")["peers"]}
        node = peers.get(str(ref), str(ref))
        pid = next((i for i, n in peers.items() if n == node), str(ref))
        return f"shard {shard} of {collection} on {node} (peer {pid}) is now {state}"

    def set_latency(self, node: str, ms: float) -> str:
        ref: Any = int(node) if node.isdigit() else node
        self.control("latency", {"peer_id": ref, "ms": ms})
        return f"{node} now answers every request {ms:g} ms late" if ms else f"{node} answers without added delay"
