"""Neo4j sandbox: ``sandbox-neo4j``, a Neo4j 5.26 Community server on 127.0.0.1 with auth on,
run as an embedded DatabaseManagementService with the Bolt connector by a small Java launcher.

The launcher is sandbox infrastructure, compiled here with javac against Maven Central's
``org.neo4j:neo4j`` jars (fetched once into the cache, see dbops.sandbox.maven); it sets the
``neo4j`` user's password from DBOPS_NEO4J_PASSWORD (never on its command line) and prints a line
when Bolt is up. Layout under the sandbox directory::

    neo4j/Launcher.java, classes/, home/ (the databases), neo4j.log,
          tls/ (public.crt, private.key: a self-signed certificate for 127.0.0.1), tls.conf

Bolt accepts plain and TLS connections on the same port (server.bolt.tls_level OPTIONAL, the
certificate made here with openssl), so one server serves the plain config and the TLS tests
(require, verify-ca with tls/public.crt as the CA). State under engine "neo4j": {"version",
"password", "port", "pid", "dir", "log", "lib", "ca_file"}. The config fragment names the
server ``n1`` in cluster ``sandbox-neo4j`` and connects without TLS.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

from dbops.sandbox import (
    ProcessStatus,
    Progress,
    SandboxError,
    SingleProcessSandbox,
    _quiet,
    down_on_failure,
    free_ports,
    maven,
    toml_str,
    write_engine_state,
)

ENGINE = "neo4j"
HOST = "127.0.0.1"
NAME = "sandbox-neo4j"
VERSION = "5.26.2"
ARTIFACTS = (("org.neo4j", "neo4j", VERSION),)
HEAP = "-Xmx512m"
START_TIMEOUT = 120.0
STOP_GRACE = 30.0
READY = "dbops-sandbox: neo4j started on"

LAUNCHER = """import java.nio.file.Path;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;

/** dbops sandbox infrastructure: Neo4j embedded with Bolt on loopback and auth on. */
public class Launcher {
    public static void main(String[] args) throws Exception {
        Path home = Path.of(args[0]);
        int port = Integer.parseInt(args[1]);
        String password = System.getenv("DBOPS_NEO4J_PASSWORD");
        DatabaseManagementServiceBuilder builder = new DatabaseManagementServiceBuilder(home);
        builder.setConfig(BoltConnector.enabled, true)
            .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
            .setConfig(GraphDatabaseSettings.auth_enabled, true);
        // The Bolt SSL policy (tls.conf beside home/): TLS optional on the Bolt port.
        Path tls = home.resolveSibling("tls.conf");
        if (java.nio.file.Files.exists(tls)) {
            builder.loadPropertiesFromFile(tls);
        }
        DatabaseManagementService dbms = builder.build();
        Runtime.getRuntime().addShutdownHook(new Thread(dbms::shutdown));
        dbms.database("system").executeTransactionally(
            "ALTER USER neo4j SET PASSWORD '" + password + "' CHANGE NOT REQUIRED");
        System.out.println("dbops-sandbox: neo4j started on 127.0.0.1:" + port);
        Thread.currentThread().join();
    }
}
"""

class Neo4jSandbox(SingleProcessSandbox):
    ENGINE = ENGINE
    LABEL = "Neo4j"
    UP = "dbops sandbox up --engines neo4j"

    @property
    def port(self) -> int:
        return int(self.state["port"])

    @property
    def password(self) -> str:
        return str(self.state["password"])

    def _needle(self) -> str:
        return str(self.dir / "home")  # the launcher's first argument: unique to this sandbox


    def up(self, progress: Progress = _quiet) -> tuple[str, bool]:
        """Start the server; returns (its config fragment, already_up)."""
        if self.is_running():
            progress("neo4j sandbox is already up")
            return self.config_fragment(), True
        lib = maven.fetch(f"neo4j-{VERSION}", ARTIFACTS, progress)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "classes").mkdir(parents=True, mode=0o700)
        (self.dir / "Launcher.java").write_text(LAUNCHER)
        r = subprocess.run([maven.tool("javac"), "-cp", f"{lib}/*", "-d", str(self.dir / "classes"), str(self.dir / "Launcher.java")],
                           capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise SandboxError(f"compiling the Neo4j launcher failed:\n{(r.stdout + r.stderr)[-1500:]}")
        ca_file = self._make_tls()
        port = free_ports(1)[0]
        write_engine_state(self.root, ENGINE, {"version": VERSION, "password": secrets.token_urlsafe(18), "port": port,
                                               "pid": None, "dir": str(self.dir), "log": str(self.dir / "neo4j.log"), "lib": str(lib),
                                               "ca_file": str(ca_file)})
        progress(f"start {NAME}: Neo4j {VERSION} community, Bolt on {HOST}:{port}, auth on")
        with down_on_failure(self):
            self._wait_started(self._spawn())
        return self.config_fragment(), False

    def _make_tls(self) -> Path:
        """A self-signed certificate for 127.0.0.1 (its own CA) and the Bolt SSL policy using it."""
        if shutil.which("openssl") is None:
            raise SandboxError("openssl is not installed (Debian: apt-get install openssl); the Neo4j sandbox's TLS needs it")
        tls = self.dir / "tls"
        for sub in ("trusted", "revoked"):  # the policy's defaults; Neo4j wants them to exist
            (tls / sub).mkdir(parents=True, mode=0o700)
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tls / "private.key"),
                            "-out", str(tls / "public.crt"), "-days", "3650", "-subj", "/CN=127.0.0.1",
                            "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise SandboxError(f"making the Neo4j sandbox's TLS certificate failed:\n{(r.stdout + r.stderr)[-1500:]}")
        (self.dir / "tls.conf").write_text("\n".join([
            "dbms.ssl.policy.bolt.enabled=true",
            f"dbms.ssl.policy.bolt.base_directory={tls}",
            "dbms.ssl.policy.bolt.private_key=private.key",
            "dbms.ssl.policy.bolt.public_certificate=public.crt",
            "dbms.ssl.policy.bolt.client_auth=NONE",
            "server.bolt.tls_level=OPTIONAL",
            "",
        ]))
        return tls / "public.crt"

    @property
    def ca_file(self) -> Path:
        """The certificate Bolt's TLS presents (self-signed: it is its own CA)."""
        return Path(self.state["ca_file"])

    def _spawn(self) -> int:
        st = self.state
        args = [maven.tool("java"), HEAP, "-cp", f"{self.dir / 'classes'}:{st['lib']}/*", "Launcher", self._needle(), str(st["port"])]
        return self._spawn_process("the Neo4j launcher", args, env={**os.environ, "DBOPS_NEO4J_PASSWORD": st["password"]})

    def _wait_started(self, pid: int) -> None:
        self._wait_process(pid, "Neo4j", READY.encode(), [self.port], timeout=START_TIMEOUT, poll=0.2, host=HOST)

    def down(self, progress: Progress = _quiet) -> None:
        # SIGTERM: the launcher's shutdown hook closes the databases cleanly.
        self._stop_process(progress, "neo4j", signal.SIGTERM, STOP_GRACE)

    def status(self) -> list[ProcessStatus]:
        st = self._state()
        if not st:
            return []
        return [ProcessStatus(ENGINE, "neo4j", "server", self.pid() is not None, int(st["port"]), self.pid(), f"log {st['log']}")]

    def config_fragment(self) -> str:
        st = self.state
        return "\n".join([
            f"[environments.sandbox.clusters.{NAME}]",
            'engine = "neo4j"',
            f'description = "local sandbox: Neo4j {VERSION} community, Bolt on loopback, auth on"',
            'user = "neo4j"',
            f"password = {{ value = {toml_str(st['password'])} }}",
            "refresh_interval = 2.0",
            "timeout = 5.0",
            "members = [",
            f'  {{ name = "n1", host = "{HOST}", port = {st["port"]} }},',
            "]",
            "",
        ])
