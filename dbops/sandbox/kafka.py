"""Kafka sandbox: ``sandbox-kafka``, a three-node Apache Kafka 3.9 cluster in KRaft mode (each
node broker and controller), on 127.0.0.1, from Maven Central's jars run with the JDK.

The jars (kafka_2.13 and its runtime dependencies, kafka-tools for the admin commands the tests
use, slf4j-reload4j for logging) are fetched once with Maven into a cache
(``$DBOPS_CACHE_DIR`` or the user cache dir, ``maven/kafka-<version>/``), so later runs are
offline. Each node: ``kafka.tools.StorageTool format`` with one cluster id, then ``kafka.Kafka``
with a small heap; up waits until every node's log says "Kafka Server started" and the metadata
quorum has all three voters and a leader.

Each node has two client listeners: PLAINTEXT (``port``; brokers talk to each other on it too)
and SASL_SSL (``sasl_ssl_port``): TLS with a server certificate for 127.0.0.1 signed by a CA made
here with openssl (PEM files, which Kafka reads as they are), then SASL PLAIN as user ``dbops``
with a random password. The password is in the state file and in each node's server.properties
(both 0600), never on a command line.

Layout under the sandbox directory::

    kafka/tls/ca.crt, ca.key, server.crt, server.key, server.pem (key + chain: the keystore)
    kafka/<node>/server.properties, log4j.properties, kafka.log, data/

State under engine "kafka": {"version", "cluster_id", "lib", "sasl_user", "sasl_password",
"ca_file", "nodes": {"k1": {"node_id", "port", "sasl_ssl_port", "controller_port", "pid", "dir",
"log"}, ...}}. The config fragment names the brokers k1..k3 twice: cluster ``sandbox-kafka`` on
the PLAINTEXT listeners, and ``sandbox-kafka-tls``, the same brokers over SASL_SSL (user and
password, TLS verify-ca with the sandbox's CA).
"""

from __future__ import annotations

import base64
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from dbops.sandbox import (
    EngineSandbox,
    ProcessStatus,
    Progress,
    SandboxError,
    _quiet,
    already_up,
    down_on_failure,
    free_ports,
    maven,
    pid_alive,
    port_open,
    spawn,
    stop_processes,
    tail,
    toml_str,
    write_engine_state,
    write_private,
)

ENGINE = "kafka"
HOST = "127.0.0.1"
CLUSTER_NAME = "sandbox-kafka"
TLS_CLUSTER_NAME = "sandbox-kafka-tls"  # the same brokers through their SASL_SSL listeners
SASL_USER = "dbops"
EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")  # P-256: made in a blink, unlike RSA
VERSION = "3.9.1"
NODES: tuple[str, ...] = ("k1", "k2", "k3")
HEAP = "-Xmx256m"
START_TIMEOUT = 90.0  # for every node to start and the quorum to form (2 cores, three JVMs)
STOP_GRACE = 30.0

# Maven's coordinates of what the sandbox runs: the server, the admin tools, a logging binding.
ARTIFACTS = (
    ("org.apache.kafka", "kafka_2.13", VERSION),
    ("org.apache.kafka", "kafka-tools", VERSION),
    ("org.slf4j", "slf4j-reload4j", "1.7.36"),
)

LOG4J = """log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
"""

def kafka_uuid() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding. One that starts
    with '-' would be read as an option by StorageTool, as Kafka's own generator avoids."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class KafkaSandbox(EngineSandbox):
    ENGINE = ENGINE
    LABEL = "Kafka"
    UP = "dbops sandbox up --engines kafka"

    def __init__(self, root: Path | None = None):
        super().__init__(root)
        self._log_from: dict[str, int] = {}  # node -> its log's size when it was last spawned

    # -- state -------------------------------------------------------------------------------

    def node_dir(self, name: str) -> Path:
        return self.dir / name

    def port(self, name: str) -> int:
        return int(self.state["nodes"][name]["port"])

    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{n['port']}" for n in self.state["nodes"].values())

    def _tls_state(self, key: str) -> Any:
        st = self.state
        if key not in st:
            raise SandboxError(f"the Kafka sandbox under {self.root} was made without a SASL_SSL listener; "
                               "run `dbops sandbox down` and then `dbops sandbox up` for a fresh one")
        return st[key]

    def sasl_ssl_port(self, name: str) -> int:
        self._tls_state("sasl_password")
        return int(self.state["nodes"][name]["sasl_ssl_port"])

    def sasl_ssl_bootstrap(self) -> str:
        """host:port of every node's SASL_SSL listener, comma-separated."""
        return ",".join(f"{HOST}:{self.sasl_ssl_port(n)}" for n in self.state["nodes"])

    @property
    def sasl_user(self) -> str:
        return str(self._tls_state("sasl_user"))

    @property
    def sasl_password(self) -> str:
        """The SASL PLAIN password of `sasl_user` on the SASL_SSL listeners."""
        return str(self._tls_state("sasl_password"))

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM) that signed the SASL_SSL listeners' server certificate."""
        return Path(self._tls_state("ca_file"))

    def _needle(self, name: str) -> str:
        # The properties file's absolute path is on the JVM's command line and unique to this node.
        return str(self.node_dir(name) / "server.properties")

    def pid(self, name: str) -> int | None:
        st = self._state()
        pid = st["nodes"][name].get("pid") if st else None
        return pid if pid_alive(pid, self._needle(name)) else None

    def is_running(self) -> bool:
        return self._state() is not None and all(self.pid(n) is not None for n in NODES)

    # -- up ----------------------------------------------------------------------------------

    def up(self, progress: Progress = _quiet) -> tuple[str, bool]:
        """Bring the three nodes up; returns (the config fragment, already_up)."""
        if self._state() and already_up(ENGINE, self.root, {n: self.pid(n) is not None for n in NODES}, progress):
            return self.config_fragment(), True
        lib = maven.fetch(f"kafka-{VERSION}", ARTIFACTS, progress)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.down(progress)
        shutil.rmtree(self.dir, ignore_errors=True)
        with down_on_failure(self):
            self._create(lib, progress)
        return self.config_fragment(), False

    def _create(self, lib: Path, progress: Progress) -> None:
        t0 = time.monotonic()
        ports = free_ports(3 * len(NODES))
        cluster_id = kafka_uuid()
        nodes = {name: {"node_id": i + 1, "port": ports[3 * i], "controller_port": ports[3 * i + 1],
                        "sasl_ssl_port": ports[3 * i + 2], "pid": None,
                        "dir": str(self.node_dir(name)), "log": str(self.node_dir(name) / "kafka.log")}
                 for i, name in enumerate(NODES)}
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        keystore, ca_file = self._make_tls()
        password = secrets.token_urlsafe(18)
        write_engine_state(self.root, ENGINE, {"version": VERSION, "cluster_id": cluster_id, "lib": str(lib),
                                               "sasl_user": SASL_USER, "sasl_password": password, "ca_file": str(ca_file),
                                               "nodes": nodes})
        voters = ",".join(f"{n['node_id']}@{HOST}:{n['controller_port']}" for n in nodes.values())
        for name, n in nodes.items():
            d = self.node_dir(name)
            (d / "data").mkdir(parents=True, mode=0o700)
            (d / "log4j.properties").write_text(LOG4J)
            write_private(d / "server.properties", "\n".join([
                "# written by `dbops sandbox up`",
                "process.roles=broker,controller",
                f"node.id={n['node_id']}",
                f"controller.quorum.voters={voters}",
                f"listeners=PLAINTEXT://{HOST}:{n['port']},SASL_SSL://{HOST}:{n['sasl_ssl_port']},"
                f"CONTROLLER://{HOST}:{n['controller_port']}",
                f"advertised.listeners=PLAINTEXT://{HOST}:{n['port']},SASL_SSL://{HOST}:{n['sasl_ssl_port']}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                # The client listener with TLS and SASL PLAIN; brokers and controllers stay on PLAINTEXT.
                "listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN",
                "listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule "
                f'required user_{SASL_USER}="{password}";',
                "listener.name.sasl_ssl.ssl.keystore.type=PEM",
                f"listener.name.sasl_ssl.ssl.keystore.location={keystore}",
                "listener.name.sasl_ssl.ssl.client.auth=none",
                f"log.dirs={d / 'data'}",
                "num.partitions=3",
                "default.replication.factor=3",
                "min.insync.replicas=2",
                "offsets.topic.replication.factor=3",
                "transaction.state.log.replication.factor=3",
                "transaction.state.log.min.isr=2",
                "group.initial.rebalance.delay.ms=0",
                # The log cleaner's offset map is one array (128 MiB by default): in a 256 MiB heap
                # it can fail to fit at startup (OutOfMemoryError, the node exits).
                "log.cleaner.dedupe.buffer.size=16777216",
                "",
            ]))
            self._java(lib, name, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(d / "server.properties"))
        progress(f"start {CLUSTER_NAME}: {', '.join(NODES)} (KRaft, broker+controller each, Kafka {VERSION})")
        pids = {name: self._spawn(name) for name in NODES}
        self._wait_started(pids)
        progress(f"wait for the metadata quorum of {len(NODES)} voters")
        self.wait_quorum()
        progress(f"kafka sandbox up in {time.monotonic() - t0:.1f} s")

    def _make_tls(self) -> tuple[Path, Path]:
        """A CA and a server certificate for 127.0.0.1 it signed (one for every node: they all
        listen on 127.0.0.1); returns (the keystore: key and chain in one PEM file, the CA's
        certificate)."""
        if shutil.which("openssl") is None:
            raise SandboxError("openssl is not installed (Debian: apt-get install openssl); the Kafka sandbox's "
                               "SASL_SSL listeners need it")
        tls = self.dir / "tls"
        tls.mkdir(mode=0o700)
        (tls / "server.ext").write_text("\n".join([
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature",
            "extendedKeyUsage=serverAuth",
            f"subjectAltName=IP:{HOST}",
            "subjectKeyIdentifier=hash",
            "authorityKeyIdentifier=keyid",
            "",
        ]))
        for what, args in (
            ("the CA", ["req", "-x509", *EC_KEY, "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
                        "-subj", "/CN=dbops sandbox Kafka CA", "-addext", "basicConstraints=critical,CA:TRUE",
                        "-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
            ("the server key", ["req", *EC_KEY, "-nodes", "-keyout", "server.key", "-out", "server.csr",
                                "-subj", f"/CN={HOST}"]),
            ("the server certificate", ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                                        "-CAcreateserial", "-out", "server.crt", "-days", "3650", "-extfile", "server.ext"]),
        ):
            r = subprocess.run(["openssl", *args], cwd=tls, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                raise SandboxError(f"making {what} for the Kafka sandbox's TLS failed:\n{(r.stdout + r.stderr)[-1500:]}")
        # Kafka's PEM keystore: the (unencrypted PKCS#8) private key, then the certificate chain.
        keystore = tls / "server.pem"
        write_private(keystore, "".join((tls / f).read_text() for f in ("server.key", "server.crt", "ca.crt")))
        return keystore, tls / "ca.crt"

    def _java(self, lib: Path, name: str, main: str, *args: str) -> str:
        d = self.node_dir(name)
        r = subprocess.run([maven.tool("java"), HEAP, f"-Dlog4j.configuration=file:{d / 'log4j.properties'}", "-cp", f"{lib}/*",
                            main, *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise SandboxError(f"{main} {' '.join(args[:1])} failed for {name}:\n{(r.stdout + r.stderr)[-1500:]}")
        return r.stdout

    def _spawn(self, name: str) -> int:
        log = Path(self.state["nodes"][name]["log"])
        # The log is appended to across restarts: only what this start writes counts as started.
        self._log_from[name] = log.stat().st_size if log.exists() else 0
        st = self.state
        d = self.node_dir(name)
        args = [maven.tool("java"), HEAP, "-Xms128m", f"-Dlog4j.configuration=file:{d / 'log4j.properties'}",
                "-cp", f"{st['lib']}/*", "kafka.Kafka", str(d / "server.properties")]
        pid = spawn(f"kafka.Kafka ({name})", args, Path(st["nodes"][name]["log"]), d)
        st["nodes"][name]["pid"] = pid
        write_engine_state(self.root, ENGINE, st)
        return pid

    def _wait_started(self, pids: dict[str, int]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        waiting = dict(pids)
        while waiting:
            for name, pid in list(waiting.items()):
                log = Path(self.state["nodes"][name]["log"])
                if not pid_alive(pid):
                    raise SandboxError(f"{name} (Kafka) exited while starting; see {log}; it ends with:\n{tail(log)}")
                with log.open("rb") as fh:
                    fh.seek(self._log_from.get(name, 0))
                    started = b"Kafka Server started" in fh.read()
                # A listener accepts connections seconds before the broker serves requests: the
                # log line comes after both.
                if started and port_open(self.port(name), HOST):
                    del waiting[name]
            if waiting and time.monotonic() >= deadline:
                raise SandboxError(f"{', '.join(waiting)} did not start within {START_TIMEOUT:.0f} s; see their kafka.log")
            time.sleep(0.2)

    def quorum(self) -> dict[str, str]:
        """`kafka-metadata-quorum describe --status` as a dict (LeaderId, CurrentVoters ...)."""
        st = self.state
        out = self._java(Path(st["lib"]), NODES[0], "org.apache.kafka.tools.MetadataQuorumCommand",
                         "--bootstrap-server", self.bootstrap(), "describe", "--status")
        fields = {}
        for line in out.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        return fields

    def wait_quorum(self, timeout: float = START_TIMEOUT) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        last: dict[str, str] | str = {}
        while True:
            try:
                last = self.quorum()
                voters = last.get("CurrentVoters", "")  # [{"id": 1, ...}, ...]
                if last.get("LeaderId", "-1") not in ("-1", "") and \
                        all(f'"id": {n["node_id"]},' in voters for n in self.state["nodes"].values()):
                    return last
            except SandboxError as exc:
                last = exc.message  # brokers still coming up: ask again
            if time.monotonic() >= deadline:
                raise SandboxError(f"the Kafka metadata quorum did not form within {timeout:.0f} s: {last}")
            time.sleep(1.0)

    def wait_quorum_leader_other_than(self, node_id: int, timeout: float = START_TIMEOUT) -> dict[str, str]:
        """After a node is lost: wait until the remaining voters elect a leader other than it."""
        deadline = time.monotonic() + timeout
        last: dict[str, str] | str = {}
        while True:
            try:
                last = self.quorum()
                if last.get("LeaderId", "-1") not in ("-1", "", str(node_id)):
                    return last
            except SandboxError as exc:
                last = exc.message  # asked a node that is gone or electing: ask again
            if time.monotonic() >= deadline:
                raise SandboxError(f"no new Kafka controller leader within {timeout:.0f} s: {last}")
            time.sleep(0.5)

    # -- stop, start, down, status -----------------------------------------------------------

    def stop_node(self, name: str, kill: bool = True) -> None:
        pid = self.pid(name)
        if pid is not None:
            self._stop({name: pid}, signal.SIGKILL if kill else signal.SIGTERM)

    def start_node(self, name: str) -> None:
        if self.pid(name) is None:
            self._wait_started({name: self._spawn(name)})

    def _stop(self, pids: dict[str, int], sig: signal.Signals) -> None:
        stop_processes({pid: self._needle(name) for name, pid in pids.items()}, sig, STOP_GRACE)
        st = self._state()
        if st:
            for name in pids:
                st["nodes"][name]["pid"] = None
            write_engine_state(self.root, ENGINE, st)

    def down(self, progress: Progress = _quiet) -> None:
        if not self._state():
            return
        live = {n: pid for n in NODES if (pid := self.pid(n)) is not None}
        if live:
            progress(f"stop kafka nodes {', '.join(live)}")
            self._stop(live, signal.SIGTERM)

    def status(self) -> list[ProcessStatus]:
        st = self._state()
        if not st:
            return []
        return [ProcessStatus(ENGINE, name, "broker+controller", self.pid(name) is not None, int(n["port"]), self.pid(name),
                              (f"SASL_SSL port {n['sasl_ssl_port']}, " if "sasl_ssl_port" in n else "") + f"log {n['log']}")
                for name, n in st["nodes"].items()]

    def config_fragment(self) -> str:
        st = self.state
        nodes = st["nodes"]
        plain = [
            f"[environments.sandbox.clusters.{CLUSTER_NAME}]",
            'engine = "kafka"',
            f'description = "local sandbox: Kafka {VERSION}, KRaft, {", ".join(NODES)} (broker+controller each)"',
            "refresh_interval = 2.0",
            "timeout = 5.0",
            "members = [",
            *(f'  {{ name = "{name}", host = "{HOST}", port = {n["port"]} }},' for name, n in nodes.items()),
            "]",
            "",
        ]
        if "sasl_password" not in st:  # a sandbox made before the SASL_SSL listeners: only the plain view
            return "\n".join(plain)
        return "\n".join([
            *plain,
            f"[environments.sandbox.clusters.{TLS_CLUSTER_NAME}]",
            'engine = "kafka"',
            f'description = "local sandbox: {CLUSTER_NAME} again, through its SASL_SSL listeners (TLS + SASL PLAIN)"',
            f"user = {toml_str(st['sasl_user'])}",
            f"password = {{ value = {toml_str(st['sasl_password'])} }}",
            f"tls = {{ mode = \"verify-ca\", ca_file = {toml_str(st['ca_file'])} }}",
            "refresh_interval = 2.0",
            "timeout = 5.0",
            "members = [",
            *(f'  {{ name = "{name}", host = "{HOST}", port = {n["sasl_ssl_port"]} }},' for name, n in nodes.items()),
            "]",
            "",
        ])
