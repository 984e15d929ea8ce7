"""Redis 7 sandbox: a primary/replica pair watched by three Sentinels, and a six-node Redis
Cluster; all on 127.0.0.1, all with a password, all real servers from Debian's redis-server.

``sandbox-sentinel`` (Sentinel)
    r1 primary, r2 replica of r1; sentinels s1 s2 s3 monitor master name ``sandbox-sentinel``
    with quorum 2 (down-after 2 s, failover-timeout 10 s, parallel-syncs 1).
``sandbox-redis`` (Cluster)
    c1..c6, formed with ``redis-cli --cluster create --cluster-replicas 1``: three masters with
    one replica each; cluster-node-timeout 3 s.

Every node: ``requirepass`` and ``masterauth`` with one generated password (the sentinels use
it as ``requirepass`` and ``sentinel auth-pass``), ``appendonly yes`` plus RDB ``save 60 1000``,
``maxmemory 64mb`` with ``allkeys-lru`` (so persistence, memory and eviction metrics mean
something), ``repl-diskless-sync-delay 0`` (a replica syncs at once, not after 5 s) and
``enable-debug-command local`` (DEBUG SLEEP for slow-server drills). Cluster nodes get an explicit ``cluster-port``: the default bus port (port + 10000)
of a free ephemeral port may be taken or above 65535.

Layout under the sandbox directory::

    redis/<node>/redis.conf       (sentinels: sentinel.conf; both rewritten by the servers)
    redis/<node>/redis.log        the server's log (and anything it printed before opening it)
    redis/<node>/redis.pid        the server's pid file
    redis/<node>/...              dump.rdb, appendonlydir/, nodes.conf (cluster)

The state recorded under engine "redis" (other code reads it; keep these keys)::

    {"password": "...", "os_user": "redis", "bindir": "/usr/bin", "version": "7.0.15",
     "standalone": {"master_name": "sandbox-sentinel", "quorum": 2,
                    "primary": {"name": "r1", "port": P}, "replicas": [{"name": "r2", "port": P}],
                    "sentinels": [{"name": "s1", "port": P}, {"name": "s2", ...}, {"name": "s3", ...}]},
     "cluster": {"name": "sandbox-redis", "nodes": [{"name": "c1", "port": P, "bus_port": B}, ...]},
     "nodes": {"r1": {"kind": "data" | "sentinel" | "cluster", "port": P, "role": ..., "pid": PID or None,
                      "dir": ..., "conf": ..., "log": ..., "pidfile": ...}, ...}}

``standalone.primary`` is the topology as started: after a failover the live primary is whatever
the sentinels say (``status()`` reads roles live).

Servers are started in a session of their own (Ctrl-C in the terminal that ran `up` does not
reach them) and found again by the pid recorded in the state or their pid file, checked against
their command line: ``proc-title-template`` keeps the configuration file's path in the process
title, which is unique to this sandbox. When we are root they run as the ``redis`` OS user
(Debian's package creates it; ``nobody`` otherwise) and their directories belong to it. The log,
pid file and data are named relative to the node's directory (the server's working directory);
the configuration file is named by its absolute path, which the server rewrites (CONFIG REWRITE
when a sentinel reconfigures it, a sentinel's own state), so that user must be able to reach the
sandbox directory: `up` checks that it can, and says what to do when it cannot.

Only stdlib here: the servers are driven with their own binaries (redis-server, redis-cli), and
the password reaches redis-cli through REDISCLI_AUTH, never its command line.
"""

from __future__ import annotations

import functools
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from dbops.sandbox import (
    EngineSandbox,
    OwnedFiles,
    ProcessStatus,
    Progress,
    SandboxError,
    _quiet,
    already_up,
    down_on_failure,
    engine_state,
    free_ports,
    log_hint,
    pid_alive,
    port_open,
    reap,
    sandbox_dir,
    spawn,
    toml_str,
    write_engine_state,
)

ENGINE = "redis"
HOST = "127.0.0.1"

MASTER_NAME = "sandbox-sentinel"  # what the sentinels monitor
CLUSTER_NAME = "sandbox-redis"
QUORUM = 2
PRIMARY = "r1"
REPLICAS: tuple[str, ...] = ("r2",)
SENTINELS: tuple[str, ...] = ("s1", "s2", "s3")
CLUSTER_NODES: tuple[str, ...] = ("c1", "c2", "c3", "c4", "c5", "c6")
CLUSTER_MASTERS = 3  # with --cluster-replicas 1, six nodes make three masters and three replicas
DATA_NODES: tuple[str, ...] = (PRIMARY, *REPLICAS)
NODE_NAMES: tuple[str, ...] = DATA_NODES + SENTINELS + CLUSTER_NODES
CLUSTER_SLOTS = 16384

Kind = Literal["data", "sentinel", "cluster"]
# kill: SIGKILL (a crash). term: SIGTERM (Redis's graceful shutdown: saves the RDB). shutdown:
# the SHUTDOWN NOSAVE command. All wait until the process is gone.
StopMode = Literal["kill", "term", "shutdown"]
STOP_MODES: tuple[str, ...] = ("kill", "term", "shutdown")

# Debian's redis-server package (redis-tools brings redis-cli). DBOPS_REDIS_BINDIR overrides.
REDIS_BINDIR = Path("/usr/bin")
REDIS_TOOLS = ("redis-server", "redis-cli")
MIN_VERSION = (7, 0)
APT_HINT = "install the Debian package redis-server (apt-get install redis-server)"

START_TIMEOUT = 20.0  # seconds for one server to answer PING (it takes a few milliseconds)
READY_TIMEOUT = 60.0  # seconds for replication, the cluster and the sentinels to settle
STOP_GRACE = 15.0  # seconds between SIGTERM (or SHUTDOWN) and SIGKILL
KILL_WAIT = 5.0  # seconds for a SIGKILLed process to go
CLI_TIMEOUT = 10.0  # seconds for one redis-cli command

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # redis-cli --cluster colours its output even into a pipe


# ---------------------------------------------------------------------------------------------
# Binaries and the OS user the servers run as


def _bindir() -> Path:
    """The directory holding redis-server and redis-cli; SandboxError with the apt hint if not."""
    where = Path(os.environ["DBOPS_REDIS_BINDIR"]) if os.environ.get("DBOPS_REDIS_BINDIR") else REDIS_BINDIR
    missing = [tool for tool in REDIS_TOOLS if not os.access(where / tool, os.X_OK)]
    if missing:
        raise SandboxError(
            f"{' and '.join(missing)} not found in {where}; {APT_HINT}, or set DBOPS_REDIS_BINDIR to their directory"
        )
    return where


def _server_version(server: Path) -> str:
    """redis-server's version ("7.0.15"); SandboxError if it is older than MIN_VERSION."""
    try:
        cp = subprocess.run([str(server), "--version"], capture_output=True, text=True, timeout=10,
                            stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"cannot run {server} --version: {exc}") from None
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", cp.stdout)
    if cp.returncode != 0 or not found:
        said = (cp.stderr.strip() or cp.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise SandboxError(f"{server} --version failed (exit {cp.returncode}): {said[0]}; {APT_HINT}")
    version = ".".join(found.groups())
    if tuple(int(p) for p in found.groups()[:2]) < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise SandboxError(
            f"{server} is Redis {version}; the Redis sandbox needs Redis {need} or newer "
            f"(Debian 12's redis-server package is 7.0): {APT_HINT}"
        )
    return version


def _conf_str(value: str) -> str:
    """A redis.conf string argument."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _kind(name: str) -> Kind:
    if name in SENTINELS:
        return "sentinel"
    if name in CLUSTER_NODES:
        return "cluster"
    return "data"


def _parse_info(text: str) -> dict[str, str]:
    """INFO's `key:value` lines as a dict (section headers and blank lines skipped)."""
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


def _parse_fields(value: str) -> dict[str, str]:
    """`name=sandbox-redis,status=ok,...` (INFO sentinel's master0) as a dict."""
    return dict(part.split("=", 1) for part in value.split(",") if "=" in part)


# ---------------------------------------------------------------------------------------------


class RedisSandbox(OwnedFiles, EngineSandbox):
    """The Redis part of a sandbox rooted at `root` (the sandbox directory)."""

    OWNER_CANDIDATES = ("redis", "nobody")
    OWNER_MISSING = ("running as root, the Redis sandbox needs an OS user to run the servers as, and "
                     f"neither `redis` nor `nobody` exists; {APT_HINT} (it creates the `redis` user)")

    ENGINE = ENGINE
    LABEL = "Redis"
    UP = "dbops sandbox up --engines redis"

    def __init__(self, root: Path | None = None):
        # Absolute: the servers are started with their node directory as working directory, and
        # the configuration path in their process title is how we recognise them.
        super().__init__(sandbox_dir(root).absolute())

    # -- paths and recorded state ----------------------------------------------------------

    def node_dir(self, name: str) -> Path:
        return self.dir / name

    def conf_file(self, name: str) -> Path:
        return self.dir / name / ("sentinel.conf" if _kind(name) == "sentinel" else "redis.conf")

    def log_file(self, name: str) -> Path:
        return self.dir / name / "redis.log"

    def pid_file(self, name: str) -> Path:
        return self.dir / name / "redis.pid"

    @property
    def password(self) -> str:
        return str(self.state["password"])

    def port(self, name: str) -> int:
        self._check_node(name)
        return int(self.state["nodes"][name]["port"])

    def pid(self, name: str) -> int | None:
        """The live pid of a node's server, None if it is not running."""
        self._check_node(name)
        return self._live_pid(name)

    @staticmethod
    def _check_node(name: str) -> None:
        if name not in NODE_NAMES:
            raise SandboxError(f"no Redis sandbox node {name!r}; nodes: {', '.join(NODE_NAMES)}")

    @functools.cached_property
    def bindir(self) -> Path:
        return _bindir()

    # -- process state ---------------------------------------------------------------------

    def _needle(self, name: str) -> str:
        # In the command line from exec, and kept in the title by proc-title-template's
        # {config-file}: proves a pid is this sandbox's node, not a recycled pid or another redis.
        return str(self.conf_file(name))

    def _read_pidfile(self, name: str) -> int | None:
        path = self.pid_file(name)
        try:
            return int(path.read_text().split()[0])
        except (FileNotFoundError, NotADirectoryError, IndexError, ValueError):
            return None
        except PermissionError:
            raise SandboxError(
                f"cannot read {path}: permission denied; the sandbox belongs to another user, run dbops as that user"
            ) from None

    def _live_pid(self, name: str) -> int | None:
        """The pid of `name`'s running server, from the state or its pid file (either may be the
        one that knows: the state is written right after the spawn, the pid file by the server)."""
        st = self._state()
        recorded = st["nodes"].get(name, {}).get("pid") if st else None
        for pid in (recorded, self._read_pidfile(name)):
            if pid and pid_alive(int(pid), self._needle(name)):
                return int(pid)
        return None

    def is_running(self) -> bool:
        return any(self._live_pid(n) is not None for n in NODE_NAMES)

    # -- redis-cli -------------------------------------------------------------------------

    def _cli_env(self, auth: bool) -> dict[str, str]:
        # The caller's REDISCLI_* (a password for some other server, a history file) must not
        # leak into our calls.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDISCLI_")}
        env.update(LC_ALL="C", REDISCLI_HISTFILE=os.devnull, REDISCLI_RCFILE=os.devnull)
        if auth:
            env["REDISCLI_AUTH"] = self.password  # never on a command line, where ps would show it
        return env

    def cli(self, name: str, *args: str, auth: bool = True, follow_redirects: bool = False,
            timeout: float = CLI_TIMEOUT) -> str:
        """Run one command with redis-cli against node `name` and return its output (raw format,
        as redis-cli prints into a pipe: one line per element, `\\r` removed).

        The password goes in REDISCLI_AUTH (`auth=False` sends none). `follow_redirects` is
        redis-cli -c (cluster MOVED/ASK). An error reply is returned as its text (for example
        "NOAUTH Authentication required."): redis-cli exits 0 on those. A server that cannot be
        reached, or a password it refuses, is a SandboxError.
        """
        self._check_node(name)
        port = self.port(name)
        argv = [str(self.bindir / "redis-cli"), "-h", HOST, "-p", str(port)]
        if follow_redirects:
            argv.append("-c")
        argv += [str(a) for a in args]
        what = f"redis-cli {args[0] if args else ''} on {name} ({HOST}:{port})"
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self._cli_env(auth),
                                stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise SandboxError(f"{what}: no answer within {timeout:.0f} s") from None
        except OSError as exc:
            raise SandboxError(f"{what}: cannot run redis-cli: {exc}") from None
        err = cp.stderr.strip()
        if cp.returncode != 0:
            said = (err or cp.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise SandboxError(f"{what} failed (exit {cp.returncode}): {said[0]}")
        if auth and "AUTH failed" in err:
            raise SandboxError(f"{what}: the server refused the sandbox password: {err.splitlines()[-1]}")
        return cp.stdout.replace("\r", "").strip()

    def info(self, name: str, section: str) -> dict[str, str]:
        return _parse_info(self.cli(name, "INFO", section))

    def role(self, name: str) -> list[str]:
        """ROLE's reply, one element per item: ["master", offset, host, port, offset, ...],
        ["slave", host, port, state, offset] or ["sentinel", master names ...]."""
        return self.cli(name, "ROLE").splitlines()

    # -- up ----------------------------------------------------------------------------------

    def up(self, progress: Progress = _quiet) -> tuple[str, bool]:
        """Bring both deployments up; returns (their config fragment, already_up)."""
        version = self._prerequisites()
        if self._state() and already_up(ENGINE, self.root, {n: self._live_pid(n) is not None for n in NODE_NAMES}, progress):
            return self.config_fragment(), True
        # Nothing of ours is running: start fresh. down() first in case an interrupted `up`
        # left a server behind.
        self.down(progress)
        self._wipe()
        with down_on_failure(self):
            self._create(version, progress)
        return self.config_fragment(), False

    def _prerequisites(self) -> str:
        version = _server_version(self.bindir / "redis-server")
        owner = self.owner
        created = not self.root.exists()
        if created:
            self.root.mkdir(parents=True, mode=0o700)
        st = self.root.stat()
        if created or st.st_uid == os.geteuid():
            # Ours: it will hold the password, and the servers' user must reach it.
            self.root.chmod(0o700)
            owner.own(self.root)
        # Otherwise another engine's server user owns it (the postgres sandbox takes it for
        # `postgres`, mode 0700): leave it alone, and see below whether our user gets in.
        if owner.drop:
            # Ask the kernel rather than guess from modes (ACLs, parents we cannot see).
            probe = subprocess.run(["test", "-x", str(self.root)], cwd="/", check=False, **owner.popen_kwargs())
            if probe.returncode != 0:
                if created:
                    self.root.rmdir()  # do not leave an unusable empty directory behind
                try:
                    holder = pwd.getpwuid(st.st_uid).pw_name
                except KeyError:
                    holder = str(st.st_uid)
                raise SandboxError(
                    f"the {owner.name} OS user, which runs the Redis servers, cannot reach {self.root} (owned by "
                    f"{holder}, mode {stat.S_IMODE(st.st_mode):04o}, or a parent directory is not traversable); "
                    "run the Redis sandbox in a state directory of its own, e.g. "
                    "`DBOPS_STATE_DIR=/var/tmp/dbops-redis dbops sandbox up --engines redis`"
                )
        return version

    def _wipe(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        write_engine_state(self.root, ENGINE, None)

    def _create(self, version: str, progress: Progress) -> None:
        t0 = time.monotonic()
        password = secrets.token_urlsafe(18)
        # One port per node, plus a cluster bus port per cluster node.
        ports = free_ports(len(NODE_NAMES) + len(CLUSTER_NODES))
        port_of = dict(zip(NODE_NAMES, ports))
        bus_port_of = dict(zip(CLUSTER_NODES, ports[len(NODE_NAMES):]))
        nodes: dict[str, dict[str, Any]] = {}
        for name in NODE_NAMES:
            kind = _kind(name)
            nodes[name] = {
                "kind": kind,
                "port": port_of[name],
                "role": {"data": "master" if name == PRIMARY else "replica", "sentinel": "sentinel",
                         "cluster": "cluster node"}[kind],
                "pid": None,
                "dir": str(self.node_dir(name)),
                "conf": str(self.conf_file(name)),
                "log": str(self.log_file(name)),
                "pidfile": str(self.pid_file(name)),
            }
            if kind == "cluster":
                nodes[name]["bus_port"] = bus_port_of[name]

        def ref(name: str) -> dict[str, Any]:
            return {"name": name, "port": port_of[name]}

        # Recorded before anything starts so that `down` knows about a half-built sandbox.
        write_engine_state(self.root, ENGINE, {
            "password": password,
            "os_user": self.owner.name,
            "bindir": str(self.bindir),
            "version": version,
            "dir": str(self.dir),
            "standalone": {"master_name": MASTER_NAME, "quorum": QUORUM, "primary": ref(PRIMARY),
                           "replicas": [ref(n) for n in REPLICAS], "sentinels": [ref(n) for n in SENTINELS]},
            "cluster": {"name": CLUSTER_NAME,
                        "nodes": [{**ref(n), "bus_port": bus_port_of[n]} for n in CLUSTER_NODES]},
            "nodes": nodes,
        })
        self._mkdir(self.dir)
        for name in NODE_NAMES:
            self._mkdir(self.node_dir(name))
            self._write(self.conf_file(name), self._conf(name, password, port_of, bus_port_of))

        progress(f"start {PRIMARY} (primary, port {port_of[PRIMARY]}), {', '.join(REPLICAS)} (replica) and "
                 f"cluster nodes {CLUSTER_NODES[0]}..{CLUSTER_NODES[-1]} (redis-server {version})")
        self._start(DATA_NODES + CLUSTER_NODES)
        progress(f"wait for {', '.join(REPLICAS)} to replicate from {PRIMARY}")
        self.wait_replicas_linked(REPLICAS)
        # After the replica is linked: a sentinel learns replicas from the primary's INFO, which it
        # asks for once on connecting and then only every 10 s. Before the cluster is created: the
        # sentinels find each other (hello messages every 2 s) meanwhile.
        progress(f"start sentinels {', '.join(SENTINELS)} (master {MASTER_NAME}, quorum {QUORUM})")
        self._start(SENTINELS)
        progress(f"create {CLUSTER_NAME}: redis-cli --cluster create ... --cluster-replicas 1")
        self._cluster_create()
        progress(f"wait for {CLUSTER_NAME}: cluster_state:ok on every node, every replica linked")
        self.wait_cluster_ok()
        self.wait_replicas_linked(self.cluster_replicas())
        self._record_cluster_roles()
        progress(f"wait for the sentinels to find each other and {', '.join(REPLICAS)}")
        self.wait_sentinels_ready()
        progress(f"redis sandbox up in {time.monotonic() - t0:.1f} s")

    def _conf(self, name: str, password: str, port_of: dict[str, int], bus_port_of: dict[str, int]) -> str:
        kind = _kind(name)
        lines = [
            "# written by `dbops sandbox up`; the server rewrites it (CONFIG REWRITE, Sentinel's state)",
            f"bind {HOST}",
            f"port {port_of[name]}",
            "daemonize no",  # started in a session of its own by the sandbox, which keeps its pid
            "# relative to this directory, the server's working directory",
            'pidfile "redis.pid"',
            'logfile "redis.log"',
            'dir "./"',
            "# the configuration path stays in the process title: how `dbops sandbox down` knows it",
            'proc-title-template "{title} {listen-addr} {server-mode} {config-file}"',
            f"requirepass {_conf_str(password)}",
        ]
        if kind == "sentinel":
            # Sentinels authenticate to each other with their own requirepass, so it must be the
            # same on all three; to r1/r2 with auth-pass.
            return "\n".join(lines + [
                f"sentinel monitor {MASTER_NAME} {HOST} {port_of[PRIMARY]} {QUORUM}",
                f"sentinel auth-pass {MASTER_NAME} {_conf_str(password)}",
                f"sentinel down-after-milliseconds {MASTER_NAME} 2000",
                f"sentinel failover-timeout {MASTER_NAME} 10000",
                f"sentinel parallel-syncs {MASTER_NAME} 1",
                "",
            ])
        lines += [
            f"masterauth {_conf_str(password)}",  # every node may become a replica (failover)
            "appendonly yes",
            "appendfsync everysec",
            "save 60 1000",  # RDB too, so the persistence fields of INFO mean something
            "maxmemory 64mb",
            "maxmemory-policy allkeys-lru",
            "# a full sync starts at once instead of waiting 5 s for more replicas to join it",
            "repl-diskless-sync-delay 0",
            "# DEBUG SLEEP and friends for fault drills (a slow server), from 127.0.0.1 only",
            "enable-debug-command local",
        ]
        if name in REPLICAS:
            lines.append(f"replicaof {HOST} {port_of[PRIMARY]}")
        if kind == "cluster":
            lines += [
                "cluster-enabled yes",
                'cluster-config-file "nodes.conf"',
                "cluster-node-timeout 3000",
                f"cluster-port {bus_port_of[name]}",
            ]
        return "\n".join(lines) + "\n"

    # -- starting servers ------------------------------------------------------------------

    def _spawn(self, name: str) -> int:
        """Start `name`'s server in a session of its own and record its pid at once."""
        self.pid_file(name).unlink(missing_ok=True)  # stale after a SIGKILL: not this server's
        args = [str(self.bindir / "redis-server"), str(self.conf_file(name))]
        if _kind(name) == "sentinel":
            args.append("--sentinel")  # Debian 12 ships redis-sentinel in a package of its own
        # The server appends to the same log once it opens it; before that, what it prints
        # (a configuration error) lands here too.
        pid = spawn(name, args, self.log_file(name), self.node_dir(name),
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}, owner=self.owner,
                    # What it writes (its rewritten configuration holds the password) is its own.
                    umask=0o077, **self.owner.popen_kwargs())
        st = self.state
        st["nodes"][name]["pid"] = pid
        write_engine_state(self.root, ENGINE, st)
        return pid

    def _start(self, names: Sequence[str]) -> None:
        """Start every named server, then wait for each to answer PING."""
        pids = {name: self._spawn(name) for name in names}
        for name, pid in pids.items():
            self._wait_answering(name, pid)

    def _wait_answering(self, name: str, pid: int) -> None:
        port = self.port(name)
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        while True:
            if not pid_alive(pid):
                reap(pid)
                raise SandboxError(f"{name} (redis-server on {HOST}:{port}) exited right after starting"
                                   + self._log_hint(name))
            if port_open(port, HOST):
                try:
                    last = self.cli(name, "PING", timeout=5)
                except SandboxError as exc:
                    last = exc.message  # still coming up: keep trying until the deadline
                if last == "PONG":
                    return
            if time.monotonic() >= deadline:
                why = f"; last reply: {last}" if last else ""
                raise SandboxError(f"{name} (redis-server on {HOST}:{port}) did not answer PING within "
                                   f"{START_TIMEOUT:.0f} s{why}" + self._log_hint(name))
            time.sleep(0.05)

    def _log_hint(self, name: str) -> str:
        return log_hint(self.log_file(name))

    def _cluster_create(self) -> None:
        addrs = [f"{HOST}:{self.port(n)}" for n in CLUSTER_NODES]
        argv = [str(self.bindir / "redis-cli"), "--cluster", "create", *addrs,
                "--cluster-replicas", "1", "--cluster-yes"]
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=self._cli_env(auth=True),
                                stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise SandboxError("redis-cli --cluster create did not finish within 120 s"
                               + self._log_hint(CLUSTER_NODES[0])) from None
        except OSError as exc:
            raise SandboxError(f"cannot run redis-cli --cluster create: {exc}") from None
        if cp.returncode != 0:
            out = [ln for ln in _ANSI.sub("", cp.stdout + cp.stderr).splitlines() if ln.strip()][-6:]
            detail = "\n".join("    " + ln for ln in out)
            raise SandboxError(f"redis-cli --cluster create failed (exit {cp.returncode})\n{detail}"
                               + self._log_hint(CLUSTER_NODES[0]))

    def _record_cluster_roles(self) -> None:
        # Shown by status() for a node that is down; a live node's role is read from the node.
        st = self.state
        for name in CLUSTER_NODES:
            st["nodes"][name]["role"] = "master" if self.role(name)[0] == "master" else "replica"
        write_engine_state(self.root, ENGINE, st)

    # -- waiting for the topology ------------------------------------------------------------

    def _wait(self, what: str, missing: Callable[[], str | None], timeout: float, logs: Iterable[str]) -> None:
        """Poll `missing()` (None when satisfied, else what is still missing) until the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                why = missing()
            except SandboxError as exc:
                why = exc.message  # a node still coming up or restarting: keep polling
            if why is None:
                return
            if time.monotonic() >= deadline:
                files = ", ".join(str(self.log_file(n)) for n in logs)
                raise SandboxError(f"{what} not reached within {timeout:.0f} s: {why}; see {files}")
            time.sleep(0.1)

    def _port_names(self) -> dict[int, str]:
        return {int(n["port"]): name for name, n in self.state["nodes"].items()}

    def wait_replicas_linked(self, names: Iterable[str], timeout: float = READY_TIMEOUT) -> None:
        """Until every named node is a replica whose link to its master is up."""
        names = tuple(names)

        def missing() -> str | None:
            for name in names:
                repl = self.info(name, "replication")
                if repl.get("role") != "slave" or repl.get("master_link_status") != "up":
                    return (f"{name}: role:{repl.get('role', '?')} "
                            f"master_link_status:{repl.get('master_link_status', '-')}")
            return None

        self._wait(f"replication to {', '.join(names)}", missing, timeout, names)

    def cluster_replicas(self) -> list[str]:
        """The cluster nodes that are replicas right now (by ROLE; nodes that are down are left out)."""
        return [n for n in CLUSTER_NODES if self._live_pid(n) is not None and self.role(n)[0] == "slave"]

    def wait_cluster_ok(self, names: Iterable[str] = CLUSTER_NODES, timeout: float = READY_TIMEOUT,
                        masters: int = CLUSTER_MASTERS) -> None:
        """Until CLUSTER INFO on every named node says cluster_state:ok with all 16384 slots
        assigned and served, and ROLE finds `masters` masters among them."""
        names = tuple(names)

        def missing() -> str | None:
            for name in names:
                ci = _parse_info(self.cli(name, "CLUSTER", "INFO"))
                for key, want in (("cluster_state", "ok"), ("cluster_slots_assigned", str(CLUSTER_SLOTS)),
                                  ("cluster_slots_ok", str(CLUSTER_SLOTS))):
                    if ci.get(key) != want:
                        return f"{name}: {key}:{ci.get(key, '?')}"
            found = [n for n in names if self.role(n)[0] == "master"]
            if len(found) != masters:
                return f"{len(found)} masters ({', '.join(found) or 'none'}), want {masters}"
            # Every node's own view too: replica assignments travel by gossip, and until they
            # arrive a node lists the others as masters without slots.
            for name in names:
                flags = [line.split()[2].split(",") for line in self.cli(name, "CLUSTER", "NODES").splitlines() if line.strip()]
                live = [f for f in flags if "fail" not in f and "fail?" not in f]  # a killed node stays listed
                seen = sum("master" in f for f in live)
                if seen != masters or len(live) < len(names):
                    return f"{name} sees {seen} live masters among {len(live)} live nodes"
            return None

        self._wait(f"{CLUSTER_NAME} ok on {', '.join(names)}", missing, timeout, names)

    def wait_sentinels_ready(self, master: str = PRIMARY, timeout: float = READY_TIMEOUT) -> None:
        """Until every sentinel sees `master` as the master, healthy, with all replicas and the
        other sentinels, and SENTINEL CKQUORUM says OK."""
        replicas = len(DATA_NODES) - 1

        def missing() -> str | None:
            want_addr = f"{HOST}:{self.port(master)}"
            for name in SENTINELS:
                seen = _parse_fields(self.info(name, "sentinel").get("master0", ""))
                if (seen.get("name"), seen.get("status"), seen.get("address")) != (MASTER_NAME, "ok", want_addr):
                    return f"{name} sees master0 {seen or 'none'}"
                if seen.get("slaves") != str(replicas) or seen.get("sentinels") != str(len(SENTINELS)):
                    return f"{name} sees {seen.get('slaves')} replicas and {seen.get('sentinels')} sentinels"
                quorum = self.cli(name, "SENTINEL", "CKQUORUM", MASTER_NAME)
                if not quorum.startswith("OK"):
                    return f"{name}: SENTINEL CKQUORUM {MASTER_NAME}: {quorum}"
            return None

        self._wait(f"sentinels agreeing on {master}", missing, timeout, SENTINELS)

    # -- single nodes (drills, tests) ------------------------------------------------------

    def stop_node(self, name: str, mode: StopMode = "kill") -> None:
        """Stop one node: "kill" (SIGKILL, a crash), "term" (SIGTERM: Redis's graceful shutdown)
        or "shutdown" (SHUTDOWN NOSAVE); then wait until it is gone. A no-op if it is not running."""
        self._check_node(name)
        if mode not in STOP_MODES:
            raise SandboxError(f"unknown stop mode {mode!r}; use {', '.join(STOP_MODES)}")
        pid = self._live_pid(name)
        if pid is None:
            return
        if mode == "shutdown":
            self.cli(name, "SHUTDOWN", "NOSAVE")
            self._stop({name: pid}, None)
        else:
            self._stop({name: pid}, signal.SIGKILL if mode == "kill" else signal.SIGTERM)

    def start_node(self, name: str) -> None:
        """Start one stopped node again with its own configuration and data, and wait until it
        answers PING (not until it has resynchronised). A no-op if it is running."""
        self._check_node(name)
        if self._live_pid(name) is not None:
            return
        self._wait_answering(name, self._spawn(name))

    def _stop(self, pids: dict[str, int], sig: signal.Signals | None) -> None:
        """Send `sig` (None: already asked to shut down) to each server, wait for all to go,
        SIGKILL what is left after the grace period; clear the recorded pids."""
        if not pids:
            return
        for name, pid in pids.items():
            # The needle right before signalling: the pid must still be our server.
            if sig is not None and pid_alive(pid, self._needle(name)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass  # exited just now: the wait below sees it gone
        left = self._wait_gone(pids, KILL_WAIT if sig == signal.SIGKILL else STOP_GRACE)
        if left and sig != signal.SIGKILL:
            for name, pid in left.items():
                if pid_alive(pid, self._needle(name)):
                    os.kill(pid, signal.SIGKILL)
            left = self._wait_gone(left, KILL_WAIT)
        if left:
            gone = ", ".join(f"{n} (pid {p})" for n, p in left.items())
            raise SandboxError(f"redis sandbox: {gone} did not exit after SIGKILL")
        st = self._state()
        if st:
            for name in pids:
                st["nodes"][name]["pid"] = None
            write_engine_state(self.root, ENGINE, st)

    @staticmethod
    def _wait_gone(pids: dict[str, int], timeout: float) -> dict[str, int]:
        """Wait until the processes are gone; returns those still there at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            for pid in pids.values():
                reap(pid)
            # Without the needle: an exiting process shows an empty command line once its memory
            # is released, yet it holds its port until it is gone.
            left = {n: p for n, p in pids.items() if pid_alive(p)}
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.05)

    # -- down and status ---------------------------------------------------------------------

    def down(self, progress: Progress = _quiet) -> None:
        """Stop every node this sandbox started (exactly the recorded pids: SIGTERM, SIGKILL
        after a grace period), all at once. Safe to repeat; needs no Redis binaries."""
        if not self.root.exists() or not (self.dir.exists() or self._state()):
            return
        live = {n: pid for n in NODE_NAMES if (pid := self._live_pid(n)) is not None}
        if live:
            progress(f"stop redis servers {', '.join(live)}")
        self._stop(live, signal.SIGTERM)
        st = self._state()
        if st and any(n.get("pid") for n in st["nodes"].values()):
            for n in st["nodes"].values():
                n["pid"] = None
            write_engine_state(self.root, ENGINE, st)

    def status(self) -> list[ProcessStatus]:
        st = self._state()
        if not st:
            return []
        names = self._port_names()
        rows = []
        for name in NODE_NAMES:
            node = st["nodes"][name]
            pid = self._live_pid(name)
            role, detail = node["role"], f"log {node['log']}"
            if pid is not None:
                try:
                    role, detail = self._live_role(name, names)
                except SandboxError as exc:
                    detail = f"running but not answering ({exc.message}); log {node['log']}"
            rows.append(ProcessStatus(ENGINE, name, role, pid is not None, int(node["port"]), pid, detail))
        return rows

    def _live_role(self, name: str, names: dict[int, str]) -> tuple[str, str]:
        """(role, detail) as the node says now."""
        reply = self.role(name)
        if reply[0] == "sentinel":
            seen = _parse_fields(self.info(name, "sentinel").get("master0", ""))
            port = int(seen.get("address", ":0").rpartition(":")[2] or 0)
            return "sentinel", (f"{MASTER_NAME}: master {names.get(port, seen.get('address', '?'))}, "
                                f"status {seen.get('status', '?')}, {seen.get('slaves', '?')} replicas, "
                                f"{seen.get('sentinels', '?')} sentinels")
        where = "cluster " if _kind(name) == "cluster" else ""
        if reply[0] == "slave" and len(reply) >= 4:
            upstream = names.get(int(reply[2]), f"{reply[1]}:{reply[2]}")
            return "replica", f"{where}replica of {upstream} ({reply[3]})"
        if reply[0] == "master":
            # master, offset, then host, port, offset for each connected replica
            downstream = [names.get(int(reply[i + 1]), reply[i + 1]) for i in range(2, len(reply) - 2, 3)]
            return "master", f"{where}master, replicas: {', '.join(downstream) or 'none'}"
        return reply[0], " ".join(reply[1:])

    # -- dbops config --------------------------------------------------------------------------

    def config_fragment(self) -> str:
        st = self.state
        pw = "{ value = " + toml_str(st["password"]) + " }"
        sa = st["standalone"]
        cl = st["cluster"]
        lines = [
            f"[environments.sandbox.clusters.{CLUSTER_NAME}]",
            'engine = "redis"',
            'description = "local sandbox: Redis Cluster c1..c6, three masters with a replica each"',
            f"password = {pw}",
            "refresh_interval = 2.0",
            "timeout = 3.0",
            "members = [",
            *(f'  {{ name = "{n["name"]}", host = "{HOST}", port = {n["port"]} }},' for n in cl["nodes"]),
            "]",
            f"[environments.sandbox.clusters.{CLUSTER_NAME}.redis]",
            'mode = "cluster"',
            *self._backups_fragment(CLUSTER_NAME),
            "",
            f"[environments.sandbox.clusters.{MASTER_NAME}]",
            'engine = "redis"',
            'description = "local sandbox: r1 primary, r2 replica, sentinels s1 s2 s3 (quorum 2)"',
            f"password = {pw}",
            "refresh_interval = 2.0",
            "timeout = 3.0",
            "members = [",
            *(f'  {{ name = "{n["name"]}", host = "{HOST}", port = {n["port"]} }},' for n in [sa["primary"], *sa["replicas"]]),
            "]",
            f"[environments.sandbox.clusters.{MASTER_NAME}.redis]",
            'mode = "sentinel"',
            f'master_name = "{sa["master_name"]}"',
            "sentinels = [",
            *(f'  {{ name = "{n["name"]}", host = "{HOST}", port = {n["port"]} }},' for n in sa["sentinels"]),
            "]",
            *self._backups_fragment(MASTER_NAME),
            "",
        ]
        return "\n".join(lines)

    def _backups_fragment(self, cluster: str) -> list[str]:
        """The sandbox's S3 endpoint (moto), when it runs, holds this deployment's RDB backups."""
        s3 = engine_state(self.root, "s3")
        if not s3:
            return []
        return [
            f"[environments.sandbox.clusters.{cluster}.backups]",
            f"s3 = {{ bucket = {toml_str(s3['bucket'])}, prefix = {toml_str('redis/')}, "
            f"region = {toml_str(s3['region'])}, endpoint_url = {toml_str(s3['endpoint_url'])}, "
            f"access_key_id = {{ value = {toml_str(s3['access_key_id'])} }}, "
            f"secret_access_key = {{ value = {toml_str(s3['secret_access_key'])} }} }}",
        ]


# ---------------------------------------------------------------------------------------------
# Module-level shortcuts on the default sandbox (<state_dir>/sandbox)


def stop_node(name: str, mode: StopMode = "kill", *, root: Path | None = None) -> None:
    RedisSandbox(root).stop_node(name, mode)


def start_node(name: str, *, root: Path | None = None) -> None:
    RedisSandbox(root).start_node(name)
