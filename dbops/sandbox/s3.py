"""S3 for the sandbox: moto's server (real HTTP on 127.0.0.1) with one versioned bucket,
``sandbox-backups``, where the sandbox's backups go, and one with Object Lock enabled,
``sandbox-audit``, where the console ships its audit log (the config's [audit.ship]).

Layout under the sandbox directory::

    s3/moto.log     the server's output (appended to on every start)

moto keeps buckets and objects in memory: they live exactly as long as the server process. An
`up` that finds the recorded server gone starts a new one (on the same port when it is free,
with the same keys) and creates the bucket again, empty.

The state recorded under engine "s3" (other engines' code reads it; keep these keys)::

    {"endpoint_url": "http://127.0.0.1:PORT", "port": PORT, "pid": PID or None,
     "bucket": "sandbox-backups", "audit_bucket": "sandbox-audit", "region": "us-east-1",
     "access_key_id": "...", "secret_access_key": "...", "log": "<sandbox>/s3/moto.log",
     "rds": {"primary": "sandbox-pg-primary", "replica": "sandbox-pg-replica"}}

The same server holds the sandbox's RDS instances (moto serves every AWS service on one port):
see dbops.sandbox.rds.

moto accepts any keys; random ones are generated anyway so that code paths that must never show
a secret are exercised with a real one. They are sandbox literals, kept in the 0600 state file.

This module is cheap to import: moto runs in its own process, and boto3 is imported (through
dbops.platform.s3) only to create the bucket.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbops.sandbox import (
    EngineSandbox,
    ProcessStatus,
    Progress,
    SandboxError,
    _quiet,
    children,
    down_on_failure,
    free_ports,
    log_hint,
    pid_alive,
    port_open,
    reap,
    spawn,
    toml_str,
    write_engine_state,
)

if TYPE_CHECKING:
    from dbops.config import S3Location

ENGINE = "s3"
BUCKET = "sandbox-backups"
# Object Lock on: where the sandbox's console ships its audit log ([audit.ship]).
AUDIT_BUCKET = "sandbox-audit"
REGION = "us-east-1"
HOST = "127.0.0.1"
START_TIMEOUT = 20.0  # seconds for the server to answer on its port (it takes about half a second)
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
PORT_WAIT = 3.0  # seconds a restart waits for the old port before taking another
# moto's server with the sandbox's one correction to its RDS model (read replicas it promotes are
# detached from their source, as on AWS): see dbops/sandbox/moto_server.py.
MOTO_MODULE = "dbops.sandbox.moto_server"


def _check_installed() -> None:
    # find_spec looks without importing: moto and flask are heavy, and only the child needs them.
    needed = {"moto": "moto", "flask": "flask", "flask_cors": "flask-cors", "boto3": "boto3"}
    missing = [dist for mod, dist in needed.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise SandboxError(
            f"the S3 sandbox needs moto's server and boto3, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed for {sys.executable}; install the "
            "sandbox extra: pip install -e '.[sandbox]' (or `make venv`)"
        )


def _port_free(port: int, wait: float = 0.0) -> bool:
    """True if moto could listen on `port`, trying for up to `wait` seconds: a server that has
    just died can hold its port for a moment while its other threads exit. With SO_REUSEADDR,
    as werkzeug binds: its old connections in TIME_WAIT do not take the port."""
    deadline = time.monotonic() + wait
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
                return True
            except OSError:
                pass  # taken (the answer unless it frees up before the deadline)
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


class S3Sandbox(EngineSandbox):
    """The S3 part of a sandbox rooted at `root` (the sandbox directory)."""

    ENGINE = ENGINE
    LABEL = "S3"
    UP = "dbops sandbox up --engines s3"

    def __init__(self, root: Path | None = None):
        super().__init__(root)
        self.log = self.dir / "moto.log"

    # -- recorded state ------------------------------------------------------------------------

    def location(self) -> S3Location:
        """The sandbox bucket as a dbops config S3Location (literal keys: sandbox only)."""
        from dbops.config import S3Location, SecretRef

        st = self.state
        return S3Location(
            bucket=st["bucket"],
            region=st["region"],
            endpoint_url=st["endpoint_url"],
            access_key_id=SecretRef(value=st["access_key_id"]),
            secret_access_key=SecretRef(value=st["secret_access_key"]),
        )

    @staticmethod
    def _command_needle(port: int) -> str:
        # The exact arguments we start it with: proves a live pid is our server on our port and
        # not a recycled pid or another moto.
        return f"{MOTO_MODULE} -H {HOST} -p {port}"

    def _live_pid(self, st: dict[str, Any] | None) -> int | None:
        if not st or not st.get("pid"):
            return None
        pid = int(st["pid"])
        return pid if pid_alive(pid, self._command_needle(int(st["port"]))) else None

    def is_running(self) -> bool:
        return self._live_pid(self._state()) is not None

    # -- up --------------------------------------------------------------------------------------

    def up(self, progress: Progress = _quiet) -> tuple[str, bool]:
        """Start moto's S3 server and create the buckets; returns (fragment, already_up).

        The fragment is [audit.ship] (the Object Lock bucket). The backups bucket is attached to
        a cluster's config by the engine that backs up to it (it reads this engine's state).
        """
        _check_installed()
        old = self._state()
        if old and self._live_pid(old):
            progress(f"s3 sandbox is already up ({old['endpoint_url']})")
            return self.config_fragment(), True

        self.root.mkdir(parents=True, mode=0o700, exist_ok=True)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        if old:
            if old.get("pid"):
                reap(int(old["pid"]))
            # Same port (when free) and keys as before: configs written for the old server still point here.
            port = int(old["port"]) if _port_free(int(old["port"]), wait=PORT_WAIT) else free_ports(1)[0]
            key_id, secret_key = old["access_key_id"], old["secret_access_key"]
            if old.get("pid"):
                progress(f"the S3 sandbox's moto server (pid {old['pid']}) is gone: restarting it; moto keeps objects "
                         f"in memory, so every object that was in {BUCKET} is gone")
            if port != int(old["port"]):
                progress(f"port {old['port']} is taken now: the S3 endpoint moves to port {port}")
        else:
            port = free_ports(1)[0]
            key_id, secret_key = "SANDBOX" + secrets.token_hex(8).upper(), secrets.token_hex(20)

        progress(f"start moto S3 server on {HOST}:{port}")
        pid = self._spawn(port)
        state = {
            "endpoint_url": f"http://{HOST}:{port}",
            "port": port,
            "pid": pid,
            "bucket": BUCKET,
            "audit_bucket": AUDIT_BUCKET,
            "region": REGION,
            "access_key_id": key_id,
            "secret_access_key": secret_key,
            "log": str(self.log),
        }
        # Recorded at once so that `down` finds the server even if what follows fails.
        write_engine_state(self.root, ENGINE, state)
        with down_on_failure(self):
            self._wait_answering(pid, port)
            progress(f"create bucket {BUCKET} (versioning on)")
            self._create_bucket()
            progress(f"create bucket {AUDIT_BUCKET} (Object Lock on, for audit shipping)")
            self._create_audit_bucket()
            state["rds"] = self._seed_rds(state, progress)
            write_engine_state(self.root, ENGINE, state)
        return self.config_fragment(), False

    def _spawn(self, port: int) -> int:
        args = [sys.executable, "-m", MOTO_MODULE, "-H", HOST, "-p", str(port)]
        return spawn("moto's S3 server", args, self.log, self.dir, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def _log_hint(self) -> str:
        return log_hint(self.log)

    def _wait_answering(self, pid: int, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        child = children.get(pid)
        while not port_open(port, HOST):
            # Our own child: its exit status is the authority (and says how it ended); a server
            # started by an earlier dbops is judged by its pid and command line.
            ended = child.poll() if child is not None else (None if pid_alive(pid, self._command_needle(port)) else "?")
            if ended is not None:
                reap(pid)
                how = ("" if ended == "?" else f" (killed by signal {-ended})" if isinstance(ended, int) and ended < 0
                       else f" (exit status {ended})")
                raise SandboxError(f"moto's S3 server exited right after starting on {HOST}:{port}{how}" + self._log_hint())
            if time.monotonic() >= deadline:
                raise SandboxError(
                    f"moto's S3 server did not answer on {HOST}:{port} within {START_TIMEOUT:.0f} s" + self._log_hint()
                )
            time.sleep(0.05)

    def _create_bucket(self) -> None:
        from dbops.platform import s3 as s3ops

        try:
            s3ops.create_bucket(self.location(), versioning=True)
        except s3ops.S3Error as exc:
            raise SandboxError(f"moto's S3 server: {exc.message}" + self._log_hint()) from None

    def _seed_rds(self, state: dict[str, Any], progress: Progress) -> dict[str, str]:
        """An RDS primary and read replica on the same server (see dbops.sandbox.rds)."""
        from botocore.exceptions import BotoCoreError, ClientError

        from dbops.sandbox import rds as sandbox_rds

        try:
            return sandbox_rds.seed(state, progress)
        except (BotoCoreError, ClientError) as exc:
            raise SandboxError(f"moto's server: cannot create the sandbox's RDS instances: {exc}" + self._log_hint()) from None

    def _create_audit_bucket(self) -> None:
        from dbops.platform import s3 as s3ops

        try:
            s3ops.create_bucket(replace(self.location(), bucket=AUDIT_BUCKET), object_lock=True)
        except s3ops.S3Error as exc:
            raise SandboxError(f"moto's S3 server: {exc.message}" + self._log_hint()) from None

    # -- down and status -------------------------------------------------------------------------

    def down(self, progress: Progress = _quiet) -> None:
        """Stop the recorded moto server (exactly that pid: SIGTERM, SIGKILL after a grace
        period) and clear its pid. Safe to repeat."""
        if not self.root.exists():
            return
        st = self._state()
        if not st:
            return
        pid = self._live_pid(st)
        if pid is not None:
            progress(f"stop moto S3 server (pid {pid})")
            self._terminate(pid, int(st["port"]))
        if st.get("pid") is not None:
            st["pid"] = None
            write_engine_state(self.root, ENGINE, st)

    def _terminate(self, pid: int, port: int) -> None:
        needle = self._command_needle(port)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            # The needle before each signal: the pid must still be our server, not a recycled one.
            if pid_alive(pid, needle):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass  # exited just now: the wait below sees it gone
            deadline = time.monotonic() + STOP_GRACE
            while time.monotonic() < deadline:
                reap(pid)
                # Without the needle here: an exiting process shows an empty command line once its
                # memory is released, yet it holds its port until it is gone.
                if not pid_alive(pid):
                    return
                time.sleep(0.05)
        raise SandboxError(f"moto's S3 server (pid {pid}) did not stop after SIGKILL; see {self.log}")

    def status(self) -> list[ProcessStatus]:
        st = self._state()
        if not st:
            return []
        pid = self._live_pid(st)
        detail = f"{st['endpoint_url']} bucket {st['bucket']}, log {st['log']}"
        if pid is not None and not port_open(int(st["port"]), HOST):
            detail = f"running but not answering on port {st['port']}; log {st['log']}"
        return [ProcessStatus(ENGINE, "moto", "S3 endpoint", pid is not None, int(st["port"]), pid, detail)]

    # -- dbops config ------------------------------------------------------------------------------

    def config_fragment(self) -> str:
        # A cluster's [backups] section points at the backups bucket (the engine that backs up
        # there writes it); the console ships its audit log to the Object Lock bucket.
        st = self._state()
        if not st or not st.get("audit_bucket"):
            return ""
        return "\n".join([
            "[audit.ship]",
            f"s3 = {{ bucket = {toml_str(st['audit_bucket'])}, prefix = {toml_str('audit/')}, "
            f"region = {toml_str(st['region'])}, endpoint_url = {toml_str(st['endpoint_url'])}, "
            f"access_key_id = {{ value = {toml_str(st['access_key_id'])} }}, "
            f"secret_access_key = {{ value = {toml_str(st['secret_access_key'])} }} }}",
            "every_seconds = 300",
            "retain_days = 1",
            "",
        ])
