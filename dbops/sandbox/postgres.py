"""PostgreSQL 15 sandbox: primary pg1, streaming replicas pg2 (slot pg2) and pg3 (no slot),
WAL archiving, pg_stat_statements, and PgBouncer in front of pg1; all on 127.0.0.1.

Layout under the sandbox directory::

    pg1/data  pg1/postgres.log      (likewise pg2, pg3)
    archive/                        archive_command target (also restore_command source)
    pgbackrest.conf                 pgBackRest settings for stanza sandbox-pg (pass --config)
    pgbackrest/repo log lock spool  its POSIX repository and its working directories
    restores/<run>/                 data directories of postgres.restore's restored copies
    run/                            unix sockets, mode 0700
    pgbouncer/pgbouncer.ini userlist.txt pgbouncer.pid pgbouncer.log
    coord/data coord/postgres.log   the coordination server: a 4th, separate PostgreSQL (not a
                                    member of sandbox-pg) holding database `dbops` for runbook
                                    locks and approvals ([locks.postgres] in the config)

PostgreSQL and PgBouncer refuse to run as root, so when we are root every server command runs
as the `postgres` OS user and the sandbox directory is owned by it; otherwise everything runs as
the current user. Only stdlib here: the servers are driven with their own binaries (pg_ctl,
pg_basebackup, psql), so no driver is needed to bring the sandbox up.
"""

from __future__ import annotations

import functools
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from dbops.sandbox import (
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
    sandbox_dir,
    toml_str,
    write_engine_state,
)

ENGINE = "postgres"
CLUSTER = "sandbox-pg"
USER = "postgres"
DATABASE = "postgres"
PRIMARY = "pg1"
# (name, role, replication slot)
MEMBERS: tuple[tuple[str, str, str | None], ...] = (
    ("pg1", "primary", None),
    ("pg2", "replica", "pg2"),
    ("pg3", "replica", None),
)
MEMBER_NAMES = tuple(m[0] for m in MEMBERS)
PGBOUNCER = "pgbouncer"
# The coordination server: its own small PostgreSQL, not a cluster member (no replication, no
# archiving, no pgBackRest), so consoles can take locks there while the cluster is being repaired.
COORD = "coord"
COORD_DATABASE = "dbops"
COORD_USER = "dbops"  # LOGIN, the sandbox password, owns database dbops; not a superuser

# pgBackRest: one stanza named like the cluster, pg1..pg3 as its members (pgBackRest finds the
# primary among them), a POSIX repository inside the sandbox.
PGBACKREST_STANZA = CLUSTER

PG_BINDIR_DEFAULT = Path("/usr/lib/postgresql/15/bin")
PG_TOOLS = ("initdb", "pg_ctl", "pg_basebackup", "psql", "postgres")
START_TIMEOUT = 60  # seconds pg_ctl waits for a server to accept connections
STREAM_TIMEOUT = 30.0  # seconds to wait for the replicas to stream

# Marks where our settings start in postgresql.conf, so a replica (whose conf is a copy of pg1's
# made by pg_basebackup) can have them replaced with its own port and name.
_CONF_MARK = "# ---- dbops sandbox settings (written by `dbops sandbox up`) ----"

StopMode = Literal["smart", "fast", "immediate"]


# ---------------------------------------------------------------------------------------------
# Binaries and the OS user the servers run as


def _pg_bindir() -> Path:
    candidates = []
    if os.environ.get("DBOPS_PG_BINDIR"):
        candidates.append(Path(os.environ["DBOPS_PG_BINDIR"]))
    candidates.append(PG_BINDIR_DEFAULT)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for d in candidates:
        if all(os.access(d / tool, os.X_OK) for tool in PG_TOOLS):
            return d
    looked = ", ".join(dict.fromkeys(str(c) for c in candidates))
    raise SandboxError(
        f"PostgreSQL 15 server binaries (initdb, pg_ctl, pg_basebackup, psql) not found in {looked}; "
        "install the Debian package postgresql-15 (apt-get install postgresql-15), "
        "or set DBOPS_PG_BINDIR to their directory"
    )


def _pgbouncer_bin() -> Path:
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None)
    if not found:
        raise SandboxError("pgbouncer not found on PATH or in /usr/sbin; install the Debian package pgbouncer (apt-get install pgbouncer)")
    return Path(found)


def _pgbackrest_bin() -> Path:
    found = shutil.which("pgbackrest") or ("/usr/bin/pgbackrest" if os.access("/usr/bin/pgbackrest", os.X_OK) else None)
    if not found:
        raise SandboxError("pgbackrest not found on PATH or in /usr/bin; install the Debian package pgbackrest "
                           "(apt-get install pgbackrest)")
    return Path(found)


def _conf_quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _sql_quote(value: str) -> str:
    """An SQL string literal (standard_conforming_strings is on)."""
    return "'" + value.replace("'", "''") + "'"


def _shell_quote(path: Path) -> str:
    """A path for archive_command/restore_command: they go through /bin/sh, and % is special to
    PostgreSQL's substitution."""
    return "'" + str(path).replace("'", "'\\''").replace("%", "%%") + "'"


# ---------------------------------------------------------------------------------------------


class PostgresSandbox(OwnedFiles):
    """The PostgreSQL + PgBouncer part of a sandbox rooted at `root` (the sandbox directory)."""

    OWNER_CANDIDATES = ("postgres",)
    OWNER_MISSING = ("running as root, the sandbox must run PostgreSQL as the `postgres` OS user, which does "
                     "not exist; install the Debian package postgresql-15 (it creates that user)")

    def __init__(self, root: Path | None = None):
        self.root = sandbox_dir(root)
        self.archive_dir = self.root / "archive"
        self.run_dir = self.root / "run"
        self.bouncer_dir = self.root / PGBOUNCER
        self.bouncer_ini = self.bouncer_dir / "pgbouncer.ini"
        self.bouncer_pidfile = self.bouncer_dir / "pgbouncer.pid"
        self.bouncer_log = self.bouncer_dir / "pgbouncer.log"
        self.pgbackrest_dir = self.root / "pgbackrest"
        self.pgbackrest_conf = self.root / "pgbackrest.conf"
        self.restores_dir = self.root / "restores"  # postgres.restore's new data directories

    # -- paths and recorded state ----------------------------------------------------------

    def member_dir(self, name: str) -> Path:
        return self.root / name

    def data_dir(self, name: str) -> Path:
        return self.root / name / "data"

    def log_file(self, name: str) -> Path:
        if name == PGBOUNCER:
            return self.bouncer_log
        return self.root / name / "postgres.log"

    @property
    def state(self) -> dict[str, Any]:
        st = engine_state(self.root, ENGINE)
        if not st:
            raise SandboxError(f"no PostgreSQL sandbox under {self.root}; start one with `dbops sandbox up`")
        return st

    @property
    def password(self) -> str:
        return str(self.state["password"])

    def port(self, name: str) -> int:
        if name == PGBOUNCER:
            return int(self.state["pgbouncer"]["port"])
        self._check_member(name)
        if name == COORD:
            return int(self._coord_state()["port"])
        return int(self.state["members"][name]["port"])

    def pid(self, name: str) -> int | None:
        """The live pid of a member's postmaster (or of pgbouncer), None if it is not running."""
        if name == PGBOUNCER:
            return self._bouncer_pid()
        self._check_member(name)
        return self._postmaster_pid(name)

    def dsn(self, name: str, database: str = DATABASE, *, user: str = USER) -> str:
        """A libpq/asyncpg URL for a member (or for "pgbouncer", or "coord") over TCP with the
        password. Every role of the sandbox has the same password (`dbops` on coord too)."""
        return f"postgresql://{user}:{self.password}@127.0.0.1:{self.port(name)}/{database}"

    def coord_dsn(self) -> str:
        """The URL consoles use for [locks.postgres]: role dbops, database dbops, on coord."""
        return self.dsn(COORD, COORD_DATABASE, user=COORD_USER)

    def _check_member(self, name: str) -> None:
        if name not in MEMBER_NAMES and name not in (PGBOUNCER, COORD):
            raise SandboxError(f"no sandbox member {name!r}; members: {', '.join(MEMBER_NAMES + (PGBOUNCER, COORD))}")

    def _check_cluster_member(self, name: str) -> None:
        """`name` must be one of the cluster's PostgreSQL members (not pgbouncer, not coord)."""
        if name not in MEMBER_NAMES:
            raise SandboxError(f"{name!r} is not a member of {CLUSTER}; its members: {', '.join(MEMBER_NAMES)}")

    def _coord_state(self) -> dict[str, Any]:
        c = self.state.get(COORD)
        if not c:
            raise SandboxError(f"this postgres sandbox under {self.root} has no coordination server (it predates it); "
                               "recreate it with `dbops sandbox down` and `dbops sandbox up`")
        return dict(c)

    @functools.cached_property
    def bindir(self) -> Path:
        return _pg_bindir()

    # -- running commands as the server owner ----------------------------------------------

    def _env(self, password: str | None = None) -> dict[str, str]:
        # PG* variables from the caller's shell (PGHOST, PGPORT, PGDATA ...) would redirect our
        # tools to some other server; start from a clean slate.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", HOME=self.owner.home, PGCONNECT_TIMEOUT="3", PGPASSFILE=os.devnull)
        if password is not None:
            env["PGPASSWORD"] = password  # never on a command line, where ps would show it
        return env

    def _run(
        self,
        args: Sequence[str | Path],
        what: str,
        *,
        log: Path | None = None,
        password: str | None = None,
        timeout: float = 120,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        try:
            cp = subprocess.run(
                [str(a) for a in args],
                capture_output=True,
                text=True,
                cwd=self.root,
                env=self._env(password),
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                **self.owner.popen_kwargs(),
            )
        except subprocess.TimeoutExpired:
            raise SandboxError(f"{what}: did not finish within {timeout:.0f} s" + log_hint(log)) from None
        except OSError as exc:
            raise SandboxError(f"{what}: cannot run {args[0]}: {exc}") from None
        if check and cp.returncode != 0:
            out = (cp.stderr.strip() or cp.stdout.strip()).splitlines()[-6:]
            detail = ("\n" + "\n".join("    " + ln for ln in out)) if out else ""
            raise SandboxError(f"{what} failed (exit {cp.returncode}){detail}" + log_hint(log))
        return cp

    def psql(self, name: str, sql: str, *, database: str = DATABASE, timeout: float = 15) -> str:
        """Run SQL with psql and return its unaligned, tuples-only output (fields split by |).

        Members are reached over their unix socket (trusted locally); "pgbouncer" over TCP with
        the password, which also works for its admin console (database "pgbouncer"), where only
        the simple query protocol is spoken.
        """
        if name == PGBOUNCER:
            host, password = "127.0.0.1", self.password
        else:
            host, password = str(self.run_dir), None
        return self._run(
            [self.bindir / "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
             "-h", host, "-p", str(self.port(name)), "-U", USER, "-d", database, "-c", sql],
            f"psql on {name}",
            password=password,
            timeout=timeout,
        ).stdout.strip()

    # -- process state ---------------------------------------------------------------------

    @staticmethod
    def _read_pidfile(path: Path) -> int | None:
        try:
            return int(path.read_text().splitlines()[0])
        except (FileNotFoundError, NotADirectoryError, IndexError, ValueError):
            return None
        except PermissionError:
            raise SandboxError(
                f"cannot read {path}: permission denied; the sandbox belongs to another user, run dbops as that user"
            ) from None

    def _postmaster_pid(self, name: str) -> int | None:
        pid = self._read_pidfile(self.data_dir(name) / "postmaster.pid")
        return pid if pid_alive(pid, "postgres") else None

    def _bouncer_pid(self) -> int | None:
        pid = self._read_pidfile(self.bouncer_pidfile)
        # The ini path in its command line proves it is this sandbox's pgbouncer, not a recycled pid.
        return pid if pid_alive(pid, str(self.bouncer_ini)) else None

    def _names_with_data(self) -> list[str]:
        return [n for n in MEMBER_NAMES + (COORD,) if (self.data_dir(n) / "PG_VERSION").exists()]

    def is_running(self) -> bool:
        return any(self._postmaster_pid(n) for n in self._names_with_data()) or self._bouncer_pid() is not None

    def _running_map(self) -> dict[str, bool]:
        out = {n: self._postmaster_pid(n) is not None for n in MEMBER_NAMES + (COORD,)}
        out[PGBOUNCER] = self._bouncer_pid() is not None
        return out

    # -- up ----------------------------------------------------------------------------------

    def up(self, progress: Progress = _quiet) -> tuple[str, bool]:
        """Bring pg1..pg3 and pgbouncer up; returns (config fragment, already_up)."""
        self._prerequisites()
        if engine_state(self.root, ENGINE) and already_up(ENGINE, self.root, self._running_map(), progress):
            return self.config_fragment(), True
        # Nothing of ours is running: start fresh. down() first in case an interrupted `up`
        # left a server behind without recording it.
        self.down(progress)
        self._wipe()
        with down_on_failure(self):
            self._create(progress)
        return self.config_fragment(), False

    def _prerequisites(self) -> None:
        _ = self.bindir
        _pgbouncer_bin()
        _pgbackrest_bin()
        owner = self.owner
        created = not self.root.exists()
        if created:
            self.root.mkdir(parents=True, mode=0o711)
        # Traversable but not listable: other engines' servers (Redis runs as `redis`) reach
        # their own subdirectory; every file holding a password is 0600 and every directory of
        # ours 0700, so nothing else is exposed.
        self.root.chmod(0o711)
        owner.own(self.root)
        if owner.drop:
            # The servers run as `postgres`; it must reach the sandbox directory. Ask the kernel
            # rather than guess from modes (ACLs, parents we cannot see).
            probe = subprocess.run(
                ["test", "-w", str(self.root), "-a", "-x", str(self.root)],
                cwd="/", **owner.popen_kwargs(), check=False,
            )
            if probe.returncode != 0:
                if created:
                    self.root.rmdir()  # do not leave an unusable empty directory behind
                raise SandboxError(
                    f"the postgres OS user cannot reach {self.root} (a parent directory is not traversable, "
                    "e.g. /root is mode 700); set DBOPS_STATE_DIR to a directory it can reach, "
                    "e.g. `export DBOPS_STATE_DIR=/var/tmp/dbops`"
                )
        # A unix socket path is limited to 107 bytes.
        sock = self.run_dir / ".s.PGSQL.65535.lock"
        if len(str(sock).encode()) > 107:
            raise SandboxError(
                f"the sandbox directory {self.root} is too deep for PostgreSQL's unix sockets "
                "(path limit 107 bytes); set DBOPS_STATE_DIR to a shorter path, e.g. /var/tmp/dbops"
            )

    def _wipe(self) -> None:
        for name in MEMBER_NAMES + ("archive", "run", PGBOUNCER, "pgbackrest", "restores", COORD):
            path = self.root / name
            if path.exists():
                shutil.rmtree(path)
        # pgbackrest/ went above with the data directories: a repository of an earlier sandbox
        # belongs to another system identifier, and stanza-create would refuse it.
        self.pgbackrest_conf.unlink(missing_ok=True)
        write_engine_state(self.root, ENGINE, None)

    def _create(self, progress: Progress) -> None:
        t0 = time.monotonic()
        password = secrets.token_urlsafe(18)
        ports = free_ports(len(MEMBERS) + 2)
        bouncer_port, coord_port = ports[len(MEMBERS)], ports[len(MEMBERS) + 1]
        members = {
            name: {
                "port": ports[i],
                "role": role,
                "slot": slot,
                "data_dir": str(self.data_dir(name)),
                "log": str(self.log_file(name)),
            }
            for i, (name, role, slot) in enumerate(MEMBERS)
        }
        # Recorded before anything starts so that `down` knows about a half-built sandbox.
        state = {
            "cluster": CLUSTER,
            "password": password,
            "members": members,
            "pgbouncer": {"port": bouncer_port, "ini": str(self.bouncer_ini), "pidfile": str(self.bouncer_pidfile),
                          "log": str(self.bouncer_log)},
            "archive_dir": str(self.archive_dir),
            "socket_dir": str(self.run_dir),
            "bindir": str(self.bindir),
            # What a runbook needs to drive pgBackRest here: run it as `os_user` with --config.
            "pgbackrest": {"config": str(self.pgbackrest_conf), "stanza": PGBACKREST_STANZA,
                           "repo_path": str(self.pgbackrest_dir / "repo"), "os_user": self.owner.name,
                           "bin": str(_pgbackrest_bin())},
            COORD: {"port": coord_port, "data_dir": str(self.data_dir(COORD)), "log": str(self.log_file(COORD)),
                    "database": COORD_DATABASE, "user": COORD_USER},
        }
        write_engine_state(self.root, ENGINE, state)
        for d in (self.archive_dir, self.run_dir, self.bouncer_dir,
                  *(self.member_dir(n) for n in MEMBER_NAMES + (COORD,)),
                  self.pgbackrest_dir, *(self.pgbackrest_dir / d for d in _PGBACKREST_DIRS), self.restores_dir):
            self._mkdir(d)
        self._write_pgbackrest_conf()

        progress(f"initdb {PRIMARY}")
        pwfile = self.member_dir(PRIMARY) / "pwfile"
        self._write(pwfile, password + "\n")
        try:
            self._run(
                [self.bindir / "initdb", "-D", self.data_dir(PRIMARY), "-U", USER, f"--pwfile={pwfile}",
                 "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C",
                 "--no-sync", "--no-instructions"],
                f"initdb of {PRIMARY}",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self._write_conf(PRIMARY)
        self._write(self.data_dir(PRIMARY) / "pg_hba.conf", _HBA)

        progress(f"start {PRIMARY} on port {members[PRIMARY]['port']}")
        self._pg_start(PRIMARY)
        self.psql(PRIMARY, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        # Before the base backups: their WAL switches are the first segments pg1 archives, and
        # archive-push fails until the stanza exists (the archive_command retries until then).
        progress(f"pgbackrest stanza-create {PGBACKREST_STANZA}")
        self.pgbackrest("stanza-create", timeout=120)

        for name, role, slot in MEMBERS:
            if role != "replica":
                continue
            progress(f"pg_basebackup {name}" + (f" (slot {slot})" if slot else ""))
            self._basebackup(name, slot, password)
            self._write_conf(name)
            self._write_primary_conninfo(name, password)
        for name, role, _ in MEMBERS:
            if role == "replica":
                progress(f"start {name} on port {members[name]['port']}")
                self._pg_start(name)

        progress("wait for pg2 and pg3 to stream from pg1")
        self.wait_streaming()

        progress(f"start pgbouncer on port {bouncer_port}")
        self._write_bouncer_files(password)
        self._bouncer_start()

        progress(f"initdb and start the coordination server {COORD} on port {coord_port}")
        self._create_coord(password)
        progress(f"postgres sandbox up in {time.monotonic() - t0:.1f} s")

    def _conf_section(self, name: str) -> str:
        port = self.state["members"][name]["port"]
        archive = _shell_quote(self.archive_dir)
        return "\n".join([
            _CONF_MARK,
            "listen_addresses = '127.0.0.1'",
            f"port = {port}",
            f"unix_socket_directories = {_conf_quote(str(self.run_dir))}",
            "unix_socket_permissions = 0700  # local trust auth is safe only because of this",
            f"cluster_name = {_conf_quote(name)}",
            "max_connections = 50",
            "max_prepared_transactions = 10  # a prepared transaction that holds the xmin horizon, on purpose",
            "shared_buffers = 16MB",
            "wal_level = replica",
            "wal_log_hints = on  # pg_rewind needs it to rejoin an old primary after a switchover",
            "max_wal_senders = 10",
            "max_replication_slots = 10",
            "wal_keep_size = 64MB  # pg3 has no slot",
            "hot_standby = on",
            "hot_standby_feedback = on",
            "wal_receiver_status_interval = 1s",
            "wal_retrieve_retry_interval = 1s  # replicas reconnect quickly after a drill restarts pg1",
            "archive_mode = on",
            "archive_command = " + _conf_quote(self._archive_command(name)),
            "restore_command = " + _conf_quote(f"cp {archive}/%f %p"),
            "shared_preload_libraries = 'pg_stat_statements'",
            "track_io_timing = on",
            "password_encryption = scram-sha-256",
            "fsync = off  # sandbox: speed over crash safety of the host",
            "logging_collector = off",
            "log_line_prefix = '%m [%p] %q%u@%d '",
            "",
        ])

    def _archive_command(self, name: str) -> str:
        """Copy into archive/ (restore_command and pg_rewind read it there) and push to pgBackRest.

        --pg1-path names this member's own data directory: archive-push refuses to run from a
        working directory other than pg1-path, and after a switchover the archiving primary is
        another member than the configuration's pg1.

        The copy is idempotent: an identical file already there counts as copied. PostgreSQL
        retries a failed archive_command with the same segment, and without that a push that
        failed after the copy (the stanza not created yet, a full repository) would fail the
        retry at the copy forever, stopping archiving for good. A different file is still an error.
        """
        archive = _shell_quote(self.archive_dir)
        copy = f"test ! -f {archive}/%f && cp %p {archive}/%f || cmp -s %p {archive}/%f"
        push = (f"{_shell_quote(_pgbackrest_bin())} --config={_shell_quote(self.pgbackrest_conf)} "
                f"--stanza={PGBACKREST_STANZA} --pg1-path={_shell_quote(self.data_dir(name))} archive-push %p")
        return f"{{ {copy}; }} && {push}"

    def _write_pgbackrest_conf(self) -> None:
        members = self.state["members"]
        b = self.pgbackrest_dir
        lines = [
            "# written by `dbops sandbox up`; every pgbackrest command here takes --config=<this file>",
            "[global]",
            f"repo1-path={b / 'repo'}",
            # (pgBackRest has no end-of-line comments: each comment is a line of its own)
            "# the sandbox's disk is bounded; expire runs after each backup",
            "repo1-retention-full=2",
            f"log-path={b / 'log'}",
            f"lock-path={b / 'lock'}",
            f"spool-path={b / 'spool'}",
            "# stdout carries only a command's output (info --output=json); problems go to stderr",
            "log-level-console=off",
            "log-level-stderr=warn",
            "log-level-file=info",
            "# a sandbox backup starts at once instead of waiting for a scheduled checkpoint",
            "start-fast=y",
            "compress-type=lz4",
            "archive-timeout=30",
            "",
            f"[{PGBACKREST_STANZA}]",
        ]
        for i, name in enumerate(MEMBER_NAMES, start=1):
            lines += [
                f"pg{i}-path={self.data_dir(name)}",
                f"pg{i}-port={members[name]['port']}",
                f"pg{i}-socket-path={self.run_dir}",
                f"pg{i}-user={USER}",
            ]
        self._write(self.pgbackrest_conf, "\n".join(lines) + "\n")

    def pgbackrest(self, *args: str, timeout: float = 600) -> str:
        """Run `pgbackrest --config=<sandbox conf> --stanza=sandbox-pg ARGS` as the servers' OS
        user (its repository and logs belong to that user); returns stdout."""
        if not self.pgbackrest_conf.exists():
            raise SandboxError(f"no pgBackRest configuration at {self.pgbackrest_conf}; this sandbox predates "
                               "pgBackRest: recreate it with `dbops sandbox down` and `dbops sandbox up`")
        # pgBackRest logs each command to <log-path>/<stanza>-<command>.log; options come first.
        command = next((a for a in reversed(args) if not a.startswith("-")), "help")
        return self._run(
            [_pgbackrest_bin(), f"--config={self.pgbackrest_conf}", f"--stanza={PGBACKREST_STANZA}", *args],
            f"pgbackrest {' '.join(args)}",
            log=self.pgbackrest_dir / "log" / f"{PGBACKREST_STANZA}-{command}.log",
            timeout=timeout,
        ).stdout

    def _write_conf(self, name: str) -> None:
        conf = self.data_dir(name) / "postgresql.conf"
        base = conf.read_text(encoding="utf-8").split(_CONF_MARK)[0].rstrip("\n")
        self._write(conf, base + "\n\n" + self._conf_section(name))

    def _basebackup(self, name: str, slot: str | None, password: str) -> None:
        args: list[str | Path] = [
            self.bindir / "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.port(PRIMARY)), "-U", USER,
            "-D", self.data_dir(name), "-R", "-X", "stream", "--checkpoint=fast", "--no-sync",
        ]
        if slot:
            args += ["-C", "-S", slot]
        self._run(args, f"pg_basebackup for {name}", password=password, log=self.log_file(PRIMARY))

    def _write_primary_conninfo(self, name: str, password: str) -> None:
        # -R wrote a primary_conninfo without application_name; pg_stat_replication on pg1 must
        # name each replica, so replace it. The password is here because the replica connects
        # over TCP with scram like any client (the data dir is 0700).
        auto = self.data_dir(name) / "postgresql.auto.conf"
        kept = [ln for ln in auto.read_text(encoding="utf-8").splitlines() if not ln.startswith("primary_conninfo")]
        conninfo = (f"host=127.0.0.1 port={self.port(PRIMARY)} user={USER} password={password} "
                    f"application_name={name} connect_timeout=2")
        kept.append(f"primary_conninfo = {_conf_quote(conninfo)}")
        self._write(auto, "\n".join(kept) + "\n")

    def _pg_start(self, name: str) -> None:
        log = self.log_file(name)
        self._run(
            [self.bindir / "pg_ctl", "-D", self.data_dir(name), "-l", log, "-w", "-t", str(START_TIMEOUT), "start"],
            f"starting {name}",
            log=log,
            timeout=START_TIMEOUT + 10,
        )
        self._record_pid(name)

    def _record_pid(self, name: str) -> None:
        st = self.state
        if name == PGBOUNCER:
            st["pgbouncer"]["pid"] = self._bouncer_pid()
        elif name == COORD:
            st[COORD]["pid"] = self._postmaster_pid(name)
        else:
            st["members"][name]["pid"] = self._postmaster_pid(name)
        write_engine_state(self.root, ENGINE, st)

    def wait_streaming(self, names: Sequence[str] = ("pg2", "pg3"), timeout: float = STREAM_TIMEOUT) -> None:
        """Poll pg_stat_replication on pg1 until every name in `names` streams."""
        self.wait_streaming_from(PRIMARY, names, timeout)

    # -- the coordination server -------------------------------------------------------------

    def _create_coord(self, password: str) -> None:
        """initdb and start `coord`, then create role dbops (LOGIN, the sandbox password, no
        superuser) and database dbops owned by it. A standalone server: no replication, no
        archiving, no pgBackRest; scram over TCP on 127.0.0.1, trust on the 0700 socket dir."""
        data = self.data_dir(COORD)
        pwfile = self.member_dir(COORD) / "pwfile"
        self._write(pwfile, password + "\n")
        try:
            self._run(
                [self.bindir / "initdb", "-D", data, "-U", USER, f"--pwfile={pwfile}",
                 "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C",
                 "--no-sync", "--no-instructions"],
                f"initdb of {COORD}",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        conf = data / "postgresql.conf"
        self._write(conf, conf.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + "\n".join([
            _CONF_MARK,
            "# the coordination server: runbook locks (advisory locks) and approvals; not a cluster member",
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port(COORD)}",
            f"unix_socket_directories = {_conf_quote(str(self.run_dir))}",
            "unix_socket_permissions = 0700  # local trust auth is safe only because of this",
            f"cluster_name = {_conf_quote(COORD)}",
            "max_connections = 40",
            "shared_buffers = 8MB",
            "wal_level = minimal  # no replicas, no archive",
            "max_wal_senders = 0",
            "archive_mode = off",
            "password_encryption = scram-sha-256",
            "# fsync stays on: locks and approvals must survive a crash of this server",
            "logging_collector = off",
            "log_line_prefix = '%m [%p] %q%u@%d '",
            "",
        ]))
        self._write(data / "pg_hba.conf", _COORD_HBA)
        self._pg_start(COORD)
        # The password goes through a 0600 file read by psql -f, never a command line.
        sql = self.member_dir(COORD) / "create-role.sql"
        self._write(sql, f"CREATE ROLE {COORD_USER} LOGIN PASSWORD {_sql_quote(password)};\n"
                         f"CREATE DATABASE {COORD_DATABASE} OWNER {COORD_USER};\n")
        try:
            self._run([self.bindir / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.run_dir,
                       "-p", str(self.port(COORD)), "-U", USER, "-d", DATABASE, "-f", sql],
                      f"creating role and database {COORD_DATABASE} on {COORD}", log=self.log_file(COORD))
        finally:
            sql.unlink(missing_ok=True)

    # -- pgbouncer ---------------------------------------------------------------------------

    def _write_bouncer_files(self, password: str) -> None:
        port = self.state["pgbouncer"]["port"]
        # A plain password in the userlist lets pgbouncer do SCRAM both with clients and with pg1.
        self._write(self.bouncer_dir / "userlist.txt", f'"{USER}" "{password}"\n')
        self._write(self.bouncer_ini, "\n".join([
            "; written by `dbops sandbox up`",
            "[databases]",
            self._bouncer_database_line(PRIMARY),
            "",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {port}",
            f"unix_socket_dir = {self.run_dir}",
            "auth_type = scram-sha-256",
            f"auth_file = {self.bouncer_dir / 'userlist.txt'}",
            f"admin_users = {USER}",
            f"stats_users = {USER}",
            "pool_mode = transaction",
            "max_client_conn = 200",
            "default_pool_size = 10",
            "ignore_startup_parameters = extra_float_digits,options",
            f"logfile = {self.bouncer_log}",
            f"pidfile = {self.bouncer_pidfile}",
            "",
        ]))

    def _bouncer_database_line(self, upstream: str) -> str:
        return f"{DATABASE} = host=127.0.0.1 port={self.port(upstream)} dbname={DATABASE}"

    def repoint_pgbouncer(self, new_primary: str) -> None:
        """Point PgBouncer's database at `new_primary` and RELOAD: new server connections go
        there, and PgBouncer closes the old ones as they are released (clients stay connected).
        Between pause_pgbouncer() and resume_pgbouncer() no query reaches either server."""
        self._check_cluster_member(new_primary)
        lines = self.bouncer_ini.read_text(encoding="utf-8").splitlines()
        prefix = f"{DATABASE} = "
        self._write(self.bouncer_ini, "\n".join(self._bouncer_database_line(new_primary) if ln.startswith(prefix) else ln
                                                for ln in lines) + "\n")
        self.psql(PGBOUNCER, "RELOAD", database="pgbouncer", timeout=15)
        st = self.state
        st["pgbouncer"]["upstream"] = new_primary
        write_engine_state(self.root, ENGINE, st)

    def show_repoint_pgbouncer(self, new_primary: str) -> list[str]:
        return [f"# in {self.bouncer_ini}, [databases]:",
                self._bouncer_database_line(new_primary),
                f"{self.bindir / 'psql'} -h 127.0.0.1 -p {self.port(PGBOUNCER)} -U {USER} -d pgbouncer -c RELOAD"]

    # PAUSE/RESUME: a repoint between them makes a transaction in flight wait, not fail. The
    # sandbox pools in transaction mode, so PAUSE returns once every server connection is
    # released at its transaction's end (in session mode it would wait for clients to leave).

    def _bouncer_admin_line(self, command: str) -> str:
        return f"{self.bindir / 'psql'} -h 127.0.0.1 -p {self.port(PGBOUNCER)} -U {USER} -d pgbouncer -c {shlex.quote(command)}"

    def pause_pgbouncer(self, timeout: float = 60) -> None:
        """PAUSE the sandbox's database on PgBouncer: it waits for transactions in flight to end,
        closes its server connections, and holds every new query until RESUME. Returns when the
        database is paused; SandboxError if the transactions in flight outlast `timeout`."""
        try:
            self.psql(PGBOUNCER, f"PAUSE {DATABASE}", database="pgbouncer", timeout=timeout)
        except SandboxError as exc:
            if "already suspended/paused" in exc.message:
                return  # paused by an earlier attempt: the same end state
            if "did not finish" in exc.message:
                # The pause would still be pending inside PgBouncer, holding new queries with no
                # one left to resume them: undo it, then report.
                self.resume_pgbouncer()
                raise SandboxError(f"PAUSE {DATABASE} on pgbouncer did not complete within {timeout:.0f} s (a "
                                   "transaction in flight did not end); resumed again") from None
            raise

    def resume_pgbouncer(self) -> None:
        """RESUME the database on PgBouncer; queries held by PAUSE go on (to the upstream the ini
        names now). A database that is not paused is left as it is."""
        try:
            self.psql(PGBOUNCER, f"RESUME {DATABASE}", database="pgbouncer", timeout=15)
        except SandboxError as exc:
            if "not paused" not in exc.message:
                raise

    def show_pause_pgbouncer(self) -> list[str]:
        return [self._bouncer_admin_line(f"PAUSE {DATABASE}") + "  # waits for transactions in flight to end"]

    def show_resume_pgbouncer(self) -> list[str]:
        return [self._bouncer_admin_line(f"RESUME {DATABASE}")]

    def _bouncer_show(self, what: str) -> list[dict[str, str]]:
        """Rows of the admin console's SHOW <what>, as dicts keyed by column name."""
        out = self._run(
            [self.bindir / "psql", "-X", "-A", "-q", "-P", "footer=off", "-F", "\t", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port(PGBOUNCER)), "-U", USER, "-d", "pgbouncer", "-c", f"SHOW {what}"],
            f"SHOW {what} on pgbouncer", password=self.password, timeout=15,
        ).stdout.splitlines()
        if not out:
            return []
        head = out[0].split("\t")
        return [dict(zip(head, ln.split("\t"))) for ln in out[1:]]

    def pgbouncer_paused(self) -> bool:
        """True if PgBouncer's database is paused (SHOW DATABASES, column paused)."""
        for row in self._bouncer_show("DATABASES"):
            if row.get("name") == DATABASE:
                return row.get("paused", "0") not in ("0", "")
        raise SandboxError(f"pgbouncer has no database {DATABASE!r} (SHOW DATABASES)")

    def _bouncer_start(self) -> None:
        if self._bouncer_pid() is not None:
            return
        self.bouncer_pidfile.unlink(missing_ok=True)  # stale: its pid is not our pgbouncer
        self._run([_pgbouncer_bin(), "-d", "-q", self.bouncer_ini], "starting pgbouncer", log=self.bouncer_log, timeout=30)
        port = self.port(PGBOUNCER)
        deadline = time.monotonic() + 10
        while not (self._bouncer_pid() and port_open(port)):
            if time.monotonic() >= deadline:
                raise SandboxError(f"pgbouncer did not listen on port {port} within 10 s" + log_hint(self.bouncer_log))
            time.sleep(0.05)
        self._record_pid(PGBOUNCER)

    def _bouncer_stop(self) -> None:
        pid = self._bouncer_pid()
        if pid is None:
            self.bouncer_pidfile.unlink(missing_ok=True)
            return
        # SIGTERM is pgbouncer's immediate shutdown (SIGINT would wait for clients to finish).
        os.kill(pid, signal.SIGTERM)
        if not self._wait_gone(pid, 10):
            os.kill(pid, signal.SIGKILL)
            if not self._wait_gone(pid, 5):
                raise SandboxError(f"pgbouncer (pid {pid}) did not exit after SIGTERM and SIGKILL")
        self.bouncer_pidfile.unlink(missing_ok=True)

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    # -- single members ----------------------------------------------------------------------

    def stop_member(self, name: str, mode: StopMode = "immediate") -> None:
        """Stop one member (pg_ctl stop -m mode) or pgbouncer; a no-op if it is not running."""
        self._check_member(name)
        if mode not in ("smart", "fast", "immediate"):
            raise SandboxError(f"unknown stop mode {mode!r}; use smart, fast or immediate")
        if name == PGBOUNCER:
            self._bouncer_stop()
            return
        if self._postmaster_pid(name) is None:
            return
        self._run(
            [self.bindir / "pg_ctl", "-D", self.data_dir(name), "-m", mode, "-w", "-t", "60", "stop"],
            f"stopping {name}",
            log=self.log_file(name),
            timeout=70,
        )

    def start_member(self, name: str) -> None:
        """Start one stopped member (or pgbouncer); returns once it accepts connections."""
        self._check_member(name)
        if name == PGBOUNCER:
            self._bouncer_start()
            return
        if not (self.data_dir(name) / "PG_VERSION").exists():
            raise SandboxError(f"{name} has no data directory at {self.data_dir(name)}; run `dbops sandbox up`")
        if self._postmaster_pid(name) is None:
            self._clear_dead_postmaster(name)
            self._pg_start(name)

    # -- rejoin after a switchover -------------------------------------------------------------

    def _upstream_conninfo(self, upstream: str, name: str, password: str) -> str:
        return (f"host=127.0.0.1 port={self.port(upstream)} user={USER} password={password} "
                f"application_name={name} connect_timeout=2")

    def _rewind_source(self, new_primary: str) -> str:
        # No password here: pg_rewind gets it from PGPASSWORD, never from its command line.
        return f"host=127.0.0.1 port={self.port(new_primary)} user={USER} dbname={DATABASE} connect_timeout=5"

    def _rewind_args(self, name: str, new_primary: str) -> list[str | Path]:
        # --restore-target-wal: WAL the target needs from before the divergence and no longer has
        # in pg_wal is fetched with its own restore_command (the sandbox archive).
        return [self.bindir / "pg_rewind", f"--target-pgdata={self.data_dir(name)}",
                f"--source-server={self._rewind_source(new_primary)}", "--restore-target-wal", "--no-sync"]

    def _check_rejoin(self, name: str, new_primary: str) -> None:
        for n in (name, new_primary):
            self._check_member(n)
            if n == PGBOUNCER:
                raise SandboxError("pgbouncer is not a PostgreSQL member")
            self._check_cluster_member(n)
        if name == new_primary:
            raise SandboxError(f"{name} cannot rejoin as a replica of itself")

    def _controldata(self, name: str) -> dict[str, str]:
        out = self._run([self.bindir / "pg_controldata", "-D", self.data_dir(name)], f"pg_controldata of {name}").stdout
        return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines()) if v}

    def show_rejoin_commands(self, name: str, new_primary: str) -> list[str]:
        """The commands `rejoin_as_replica` runs, as shell lines (run as the server's OS user;
        the password shown as ***), for the plan shown to the operator."""
        self._check_rejoin(name, new_primary)
        data = self.data_dir(name)
        slot = self.state["members"][name].get("slot")
        conninfo = self._upstream_conninfo(new_primary, name, "***")
        keep = " ".join(_REWIND_KEEP)
        lines = [f"# as the {self.owner.name} OS user",
                 f"psql -h {self.run_dir} -p {self.port(new_primary)} -U {USER} -d {DATABASE} -c CHECKPOINT"
                 "  # the new timeline reaches pg_control, where pg_rewind reads it"]
        if slot:
            lines.append(f"psql -h {self.run_dir} -p {self.port(new_primary)} -U {USER} -d {DATABASE} -c "
                         + shlex.quote(f"SELECT pg_create_physical_replication_slot('{slot}', true)")
                         + "  # if missing")
        lines += [
            shlex.join(str(a) for a in [self.bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "60", "stop"]),
            f"# if {name} is fenced (standby.signal) and was not shut down cleanly: pg_ctl start it (it comes up "
            "as a standby), then stop it -m fast as above",
            f"# keep {name}'s own {keep}: pg_rewind copies the new primary's",
            "PGPASSWORD=*** " + shlex.join(str(a) for a in self._rewind_args(name, new_primary)),
            f"# put {keep} back; in postgresql.auto.conf drop primary_conninfo, primary_slot_name, "
            "recovery_target_timeline and default_transaction_read_only (the fences), then add:",
            f"#   primary_conninfo = '{conninfo}'",
        ]
        if slot:
            lines.append(f"#   primary_slot_name = '{slot}'")
        lines += [
            shlex.join(["touch", str(data / "standby.signal")]),
            shlex.join(str(a) for a in [self.bindir / "pg_ctl", "-D", data, "-l", self.log_file(name), "-w", "-t",
                                        str(START_TIMEOUT), "start"]),
            f"# then wait until pg_stat_replication on {new_primary} shows {name} streaming",
        ]
        return lines

    def rejoin_as_replica(self, name: str, new_primary: str, progress: Progress = _quiet,
                          timeout: float = STREAM_TIMEOUT) -> None:
        """Turn `name` (an old primary, or any member) into a streaming replica of `new_primary`:
        fast stop, pg_rewind from the new primary (as the server's OS user), this member's own
        configuration files put back (pg_rewind copies the source's), standby.signal and a
        primary_conninfo naming it (application_name = name; its slot if it has one, created on
        the new primary when missing), the fence (default_transaction_read_only) removed, start,
        and wait until it streams. Records the new roles in the sandbox state.

        Safe to repeat: a member that is already a replica is rewound again (pg_rewind says
        "no rewind required" when it has not diverged).
        """
        self._check_rejoin(name, new_primary)
        password = self.password
        if self.psql(new_primary, "SELECT pg_is_in_recovery()", timeout=10) != "f":
            raise SandboxError(f"{new_primary} is in recovery: it is not a primary {name} could rejoin")
        ctl = self._controldata(name)
        if ctl.get("wal_log_hints setting") != "on" and ctl.get("Data page checksum version", "0") == "0":
            raise SandboxError(
                f"{name} has neither wal_log_hints = on nor data checksums, which pg_rewind needs; this sandbox "
                "predates them: recreate it with `dbops sandbox down` and `dbops sandbox up`"
            )
        # A just-promoted primary writes its new timeline into pg_control only at its first
        # checkpoint; until then pg_rewind reads the old timeline there and says "no rewind
        # required" for a member that has diverged.
        self.psql(new_primary, "CHECKPOINT", timeout=300)
        slot = self.state["members"][name].get("slot")
        if slot:
            self.psql(new_primary, f"SELECT pg_create_physical_replication_slot('{slot}', true) "
                                   f"WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}')")
        progress(f"stop {name}")
        self.stop_member(name, "fast")
        # A member killed -9 leaves a postmaster.pid whose pid may still be an unreaped zombie, and
        # orphaned backends (a pooler's idle server connection) holding its shared memory:
        # pg_rewind's single-user crash recovery would take either for a running server.
        self._clear_dead_postmaster(name, progress)
        data = self.data_dir(name)
        if (self._controldata(name).get("Database cluster state") not in _CLEAN_STATES
                and (data / "standby.signal").exists()):
            # A fenced member that crashed (or was stopped -m immediate): pg_rewind would finish
            # its crash recovery in single-user mode, which refuses standby.signal. Started, it
            # comes up as a standby (the fence); stopped fast, it is shut down cleanly.
            progress(f"start {name} as a standby and stop it cleanly, for pg_rewind")
            self._pg_start(name)
            self.stop_member(name, "fast")
        saved = {f: (data / f).read_text(encoding="utf-8") for f in _REWIND_KEEP if (data / f).exists()}
        progress(f"pg_rewind {name} from {new_primary}")
        try:
            self._run(self._rewind_args(name, new_primary), f"pg_rewind of {name} from {new_primary}",
                      password=password, log=self.log_file(name), timeout=600)
        except SandboxError as exc:
            raise SandboxError(
                f"{exc.message}\n  {name} is stopped; its data directory may be unusable after a failed pg_rewind: "
                "recreate the sandbox (`dbops sandbox down`, `dbops sandbox up`)"
            ) from None
        for f, text in saved.items():
            self._write(data / f, text)
        auto = data / "postgresql.auto.conf"
        kept = [ln for ln in auto.read_text(encoding="utf-8").splitlines()
                if ln.split("=", 1)[0].strip() not in _REJOIN_DROP]
        kept.append(f"primary_conninfo = {_conf_quote(self._upstream_conninfo(new_primary, name, password))}")
        if slot:
            kept.append(f"primary_slot_name = {_conf_quote(slot)}")
        self._write(auto, "\n".join(kept) + "\n")
        self._write(data / "standby.signal", "")
        progress(f"start {name} as a replica of {new_primary}")
        self._pg_start(name)
        st = self.state
        st["members"][name]["role"] = "replica"
        st["members"][new_primary]["role"] = "primary"
        write_engine_state(self.root, ENGINE, st)
        progress(f"wait for {name} to stream from {new_primary}")
        self.wait_streaming_from(new_primary, (name,), timeout)

    # -- fencing an old primary ------------------------------------------------------------------

    def _clear_dead_postmaster(self, name: str, progress: Progress = _quiet, *, fencing: bool = False) -> None:
        """What a kill -9 of `name`'s postmaster leaves behind, cleared so it can start again."""
        data = self.data_dir(name)
        # After a kill -9 of the postmaster its children linger until they notice; one could still
        # finish a write for its client, and their shared memory stops any restart.
        orphans = self._orphans(name)
        if orphans:
            progress(f"kill {name}'s orphaned server processes {', '.join(map(str, orphans))}")
            for pid in orphans:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not all(self._wait_gone(pid, 10) for pid in orphans):
                raise SandboxError(f"{name}'s server processes {orphans} did not exit after SIGKILL"
                                   + ("; it is NOT fenced" if fencing else ""))
        # A killed postmaster that nothing reaps (PID 1 of many containers) lingers as a zombie:
        # PostgreSQL then takes its postmaster.pid for a live server and refuses to start (a
        # real host's init reaps it at once). Its processes are all gone (above): the lock is stale.
        for lock in (data / "postmaster.pid", self.run_dir / f".s.PGSQL.{self.port(name)}.lock"):
            if lock.exists() and not pid_alive(self._read_pidfile(lock)):
                lock.unlink()

    def fence_member(self, name: str, new_primary: str, progress: Progress = _quiet) -> None:
        """Fence member `name` (an old primary) for real: stop its postmaster if it still runs
        (pg_ctl stop -m immediate), then make it a standby of `new_primary` on disk:
        standby.signal, primary_conninfo naming `new_primary` (application_name = name), the
        read-only fence and any old upstream dropped, and recovery_target_timeline = 'current'.
        Started again (pg_ctl start, start_member), it comes up in recovery, never writable;
        'current' lets it start even when its timeline diverged from `new_primary`'s, which a
        standby following 'latest' refuses at startup ("not a child of this server's history").
        rejoin_as_replica() later makes it a real replica. Safe to repeat."""
        self._check_rejoin(name, new_primary)
        data = self.data_dir(name)
        if not (data / "PG_VERSION").exists():
            raise SandboxError(f"{name} has no data directory at {data}")
        if self._postmaster_pid(name) is not None:
            progress(f"stop {name} (immediate)")
            self.stop_member(name, "immediate")
            if self._postmaster_pid(name) is not None:
                raise SandboxError(f"{name} still runs after pg_ctl stop -m immediate; it is NOT fenced"
                                   + log_hint(self.log_file(name)))
        self._clear_dead_postmaster(name, progress, fencing=True)
        progress(f"make {name} start only as a standby of {new_primary}")
        auto = data / "postgresql.auto.conf"
        kept = [ln for ln in auto.read_text(encoding="utf-8").splitlines()
                if ln.split("=", 1)[0].strip() not in _REJOIN_DROP]
        kept += [f"primary_conninfo = {_conf_quote(self._upstream_conninfo(new_primary, name, self.password))}",
                 "recovery_target_timeline = 'current'"]
        self._write(auto, "\n".join(kept) + "\n")
        self._write(data / "standby.signal", "")
        st = self.state
        st["members"][name]["fenced_for"] = new_primary
        write_engine_state(self.root, ENGINE, st)

    def show_fence_commands(self, name: str, new_primary: str) -> list[str]:
        """The commands fence_member runs, as shell lines (as the server's OS user; the password
        shown as ***)."""
        self._check_rejoin(name, new_primary)
        data = self.data_dir(name)
        conninfo = self._upstream_conninfo(new_primary, name, "***")
        return [
            f"# as the {self.owner.name} OS user",
            shlex.join(str(a) for a in [self.bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "-t", "60",
                                        "stop"]) + f"  # if {name}'s postmaster still runs",
            f"# in {data / 'postgresql.auto.conf'} drop primary_conninfo, primary_slot_name, "
            "recovery_target_timeline and default_transaction_read_only, then add:",
            f"#   primary_conninfo = '{conninfo}'",
            "#   recovery_target_timeline = 'current'  # it starts as a standby even if its timeline diverged",
            shlex.join(["touch", str(data / "standby.signal")]),
            f"# verify: {name} runs no postmaster (or runs in recovery) and standby.signal is there",
        ]

    def _orphans(self, name: str) -> list[int]:
        """Live processes whose working directory is `name`'s data directory while its postmaster
        is gone: children of a killed postmaster (every server process chdirs there)."""
        if self._postmaster_pid(name) is not None:
            return []
        data = os.path.realpath(self.data_dir(name))
        found = []
        for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "cwd") == data and pid_alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def _fence_upstream(self, name: str) -> str | None:
        """The member `name`'s primary_conninfo points at (by port), or None."""
        try:
            lines = (self.data_dir(name) / "postgresql.auto.conf").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None
        conninfo = ""
        for ln in lines:
            if ln.split("=", 1)[0].strip() == "primary_conninfo":
                conninfo = ln.split("=", 1)[1]
        port = next((w.split("=", 1)[1] for w in conninfo.strip(" '").split() if w.startswith("port=")), None)
        if port is None:
            return None
        members = self.state["members"]
        return next((n for n, m in members.items() if str(m["port"]) == port), f"port {port}")

    def fence_state(self, name: str) -> tuple[bool, str]:
        """Verify the fence of `name`: (True, why it cannot accept writes) or (False, why it
        could). Stopped with standby.signal, or running in recovery with standby.signal, is
        fenced; anything else is not."""
        self._check_cluster_member(name)
        data = self.data_dir(name)
        if not (data / "PG_VERSION").exists():
            return False, f"{name} has no data directory at {data}"
        standby = (data / "standby.signal").exists()
        upstream = self._fence_upstream(name)
        of = f" of {upstream}" if upstream else " (no upstream configured)"
        pid = self._postmaster_pid(name)
        orphans = self._orphans(name) if pid is None else []
        if orphans:
            return False, f"{name}'s postmaster is gone but its server processes {orphans} still run"
        if pid is None:
            if not standby:
                return False, f"{name} is stopped but has no standby.signal: started again it comes up as a writable primary"
            return True, f"{name} is stopped and will start only as a standby{of}"
        try:
            recovering = self.psql(name, "SELECT pg_is_in_recovery()", timeout=5) == "t"
        except SandboxError as exc:
            return False, f"{name} is running (pid {pid}) but does not answer: {exc.message.splitlines()[0]}"
        if not recovering:
            return False, f"{name} is running (pid {pid}) as a writable primary"
        if not standby:
            return False, (f"{name} is running in recovery (pid {pid}) without standby.signal: it would "
                           "promote itself at the end of recovery")
        return True, f"{name} is running as a standby{of} (in recovery, read-only)"

    # -- restore over a member (postgres.restore-in-place) ---------------------------------------

    def _saved_conf_dir(self, name: str) -> Path:
        return self.member_dir(name) / "conf-before-restore"

    def restore_over(self, name: str, restore_args: Sequence[str], timeout: float = 6 * 3600) -> None:
        """`pgbackrest restore --delta` over stopped member `name`'s data directory, keeping the
        member's own configuration: the backup holds the configuration files of whichever member
        it was taken from (its port, its name), so they are saved first and put back after, with
        pgBackRest's recovery settings added to this member's postgresql.auto.conf.

        Safe to repeat after a crash: the configuration saved by the first attempt is kept (the
        data directory may by then hold the backup's), and removed only once it is put back.
        """
        self._check_cluster_member(name)
        if self._postmaster_pid(name) is not None:
            raise SandboxError(f"{name} is running; stop it before restoring over it")
        data, saved_dir = self.data_dir(name), self._saved_conf_dir(name)
        if not saved_dir.exists():
            tmp = saved_dir.with_name(saved_dir.name + ".tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            self._mkdir(tmp)
            for f in _REWIND_KEEP:
                if (data / f).exists():
                    self._write(tmp / f, (data / f).read_text(encoding="utf-8"))
            tmp.rename(saved_dir)
        self.pgbackrest(f"--pg1-path={data}", *restore_args, timeout=timeout)
        pgbackrest_lines = [ln for ln in (data / "postgresql.auto.conf").read_text(encoding="utf-8").splitlines()
                            if ln.split("=", 1)[0].strip() in _RECOVERY_KEYS or ln.startswith("# Recovery settings")]
        for f in _REWIND_KEEP:
            if (saved_dir / f).exists():
                self._write(data / f, (saved_dir / f).read_text(encoding="utf-8"))
        auto = data / "postgresql.auto.conf"
        kept = [ln for ln in auto.read_text(encoding="utf-8").splitlines()
                if ln.split("=", 1)[0].strip() not in _REJOIN_DROP | _RECOVERY_KEYS]
        self._write(auto, "\n".join(kept + pgbackrest_lines) + "\n")
        (data / "standby.signal").unlink(missing_ok=True)  # it comes back as the primary
        st = self.state
        for n, m in st["members"].items():
            m["role"] = "primary" if n == name else "replica"
        write_engine_state(self.root, ENGINE, st)
        shutil.rmtree(saved_dir)

    def clear_recovery_target(self, name: str) -> None:
        """Drop the recovery target settings a point-in-time restore left in postgresql.auto.conf:
        were this member ever to become a standby, replay would stop at that old target."""
        for key in sorted(_RECOVERY_KEYS - {"restore_command"}):
            self.psql(name, f"ALTER SYSTEM RESET {key}", timeout=30)
        self.psql(name, "SELECT pg_reload_conf()", timeout=30)

    def wait_streaming_from(self, upstream: str, names: Sequence[str], timeout: float = STREAM_TIMEOUT) -> None:
        """Poll pg_stat_replication on `upstream` until every name in `names` streams."""
        want = set(names)
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        last_error = ""
        while True:
            try:
                out = self.psql(upstream, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'",
                                timeout=5)
                seen = set(out.split())
                last_error = ""
            except SandboxError as exc:
                # The upstream may still be coming up after a restart; keep polling until the deadline.
                last_error = exc.message
            if want <= seen:
                return
            if time.monotonic() >= deadline:
                missing = sorted(want - seen)
                logs = ", ".join(str(self.log_file(n)) for n in missing)
                why = f"; last error: {last_error}" if last_error else ""
                raise SandboxError(
                    f"{', '.join(missing)} not streaming from {upstream} after {timeout:.0f} s{why}; see {logs}"
                )
            time.sleep(0.1)

    # -- down and status ---------------------------------------------------------------------

    def down(self, progress: Progress = _quiet) -> None:
        """Stop pgbouncer, then replicas, then pg1 -- only servers started from this sandbox
        directory, found by their pid files. Safe to repeat."""
        if not self.root.exists():
            return
        if self._bouncer_pid() is not None:
            progress("stop pgbouncer")
        self._bouncer_stop()
        # Replicas first, so pg1's fast shutdown does not have to wait on their walsenders and
        # they do not log a burst of reconnect failures.
        for name in (COORD, *reversed(MEMBER_NAMES)):
            if self._postmaster_pid(name) is not None:
                progress(f"stop {name}")
                self.stop_member(name, "fast")
        self._stop_restored(progress)
        if engine_state(self.root, ENGINE):
            st = self.state
            for m in st["members"].values():
                m["pid"] = None
            st["pgbouncer"]["pid"] = None
            if st.get(COORD):
                st[COORD]["pid"] = None
            write_engine_state(self.root, ENGINE, st)

    def restored_copies(self) -> list[tuple[Path, int | None]]:
        """Data directories postgres.restore made under restores/, with the pid of the server
        running on each (None when stopped)."""
        if not self.restores_dir.is_dir():
            return []
        found = []
        # postgres.restore's layout: restores/<cluster>-<run id>/data
        for data in sorted(p / "data" for p in self.restores_dir.iterdir() if (p / "data" / "PG_VERSION").exists()):
            pid = self._read_pidfile(data / "postmaster.pid")
            found.append((data, pid if pid_alive(pid, "postgres") else None))
        return found

    def _stop_restored(self, progress: Progress) -> None:
        # Copies a restore started are servers of this sandbox too: `down` leaves nothing running.
        for data, pid in self.restored_copies():
            if pid is not None:
                progress(f"stop the restored copy in {data}")
                self._run([self.bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "60", "stop"],
                          f"stopping the restored copy in {data}", timeout=70)

    def status(self) -> list[ProcessStatus]:
        st = engine_state(self.root, ENGINE)
        if not st:
            return []
        rows = []
        for name, m in st["members"].items():
            pid = self._postmaster_pid(name)
            detail = ""
            role = m["role"]
            if pid is not None:
                try:
                    recovering = self.psql(name, "SELECT pg_is_in_recovery()", timeout=5) == "t"
                    role = "replica" if recovering else "primary"
                    if role != m["role"]:
                        detail = f"started as {m['role']}"
                except SandboxError:
                    detail = "running but not answering"
            rows.append(ProcessStatus(ENGINE, name, role, pid is not None, m["port"], pid, detail or f"log {m['log']}"))
        pid = self._bouncer_pid()
        rows.append(ProcessStatus(ENGINE, PGBOUNCER, f"pooler for {st['pgbouncer'].get('upstream', PRIMARY)}", pid is not None,
                                  st["pgbouncer"]["port"], pid, f"log {self.bouncer_log}"))
        if st.get(COORD):
            pid = self._postmaster_pid(COORD)
            rows.append(ProcessStatus(ENGINE, COORD, "coordination db (locks, approvals)", pid is not None,
                                      st[COORD]["port"], pid, f"log {st[COORD]['log']}"))
        return rows

    # -- dbops config --------------------------------------------------------------------------

    def config_fragment(self) -> str:
        st = self.state
        pw = toml_str(st["password"])
        head = f"[environments.sandbox.clusters.{CLUSTER}]"
        lines = [
            head,
            'engine = "postgres"',
            'description = "local sandbox: pg1 primary, pg2 (slot) and pg3 replicas, PgBouncer"',
            f"database = {toml_str(DATABASE)}",
            f"user = {toml_str(USER)}",
            f"password = {{ value = {pw} }}",
            "refresh_interval = 2.0",
            "timeout = 3.0",
            f'pgbouncer = {{ host = "127.0.0.1", port = {st["pgbouncer"]["port"]}, user = {toml_str(USER)}, '
            f"password = {{ value = {pw} }} }}",
            "",
        ]
        b = st.get("pgbackrest")
        if b:
            lines += [
                f"[environments.sandbox.clusters.{CLUSTER}.pgbackrest]",
                f"stanza = {toml_str(b['stanza'])}",
                f"config = {toml_str(b['config'])}",
                f"os_user = {toml_str(b['os_user'])}",
                f"bin = {toml_str(b['bin'])}",
                f"restore_root = {toml_str(str(self.restores_dir))}",
                "",
            ]
        s3 = engine_state(self.root, "s3")
        if s3:  # the sandbox's S3 endpoint (moto) holds this cluster's pg_dump backups
            lines += [
                f"[environments.sandbox.clusters.{CLUSTER}.backups]",
                f"s3 = {{ bucket = {toml_str(s3['bucket'])}, prefix = {toml_str('dumps/')}, "
                f"region = {toml_str(s3['region'])}, endpoint_url = {toml_str(s3['endpoint_url'])}, "
                f"access_key_id = {{ value = {toml_str(s3['access_key_id'])} }}, "
                f"secret_access_key = {{ value = {toml_str(s3['secret_access_key'])} }} }}",
                "",
            ]
        if s3 and s3.get("rds"):  # moto's RDS instances on the same server: the AWS pane (key R) shows them
            lines += [
                f"[environments.sandbox.clusters.{CLUSTER}.rds]",
                f"instance = {toml_str(s3['rds']['primary'])}",
                f"aws = {{ region = {toml_str(s3['region'])}, endpoint_url = {toml_str(s3['endpoint_url'])}, "
                f"access_key_id = {{ value = {toml_str(s3['access_key_id'])} }}, "
                f"secret_access_key = {{ value = {toml_str(s3['secret_access_key'])} }} }}",
                "",
            ]
        for name, m in st["members"].items():
            lines += [
                f"[[environments.sandbox.clusters.{CLUSTER}.members]]",
                f"name = {toml_str(name)}",
                'host = "127.0.0.1"',
                f"port = {m['port']}",
                f"role = {toml_str(m['role'])}",
                f"application_name = {toml_str(name)}",
                "",
            ]
        c = st.get(COORD)
        if c:
            # A top-level table: every console of this config takes runbook locks there. TOML
            # allows it after the [environments...] tables (and other engines' tables after it).
            lines += [
                "[locks.postgres]",
                'host = "127.0.0.1"',
                f"port = {c['port']}",
                f"database = {toml_str(c['database'])}",
                f"user = {toml_str(c['user'])}",
                f"password = {{ value = {pw} }}",
                "",
            ]
        return "\n".join(lines)


# Working directories of pgBackRest under <sandbox>/pgbackrest.
_PGBACKREST_DIRS = ("repo", "log", "lock", "spool")

# Configuration files of a member that pg_rewind would replace with the source's; rejoin puts
# the member's own back.
_REWIND_KEEP = ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf")
# Settings of postgresql.auto.conf that rejoin replaces: the old upstream, and the fence.
_REJOIN_DROP = frozenset({"primary_conninfo", "primary_slot_name", "default_transaction_read_only",
                          "recovery_target_timeline"})
# pg_controldata's "Database cluster state" values pg_rewind accepts without crash recovery.
_CLEAN_STATES = frozenset({"shut down", "shut down in recovery"})
# Settings pgBackRest's restore writes into postgresql.auto.conf.
_RECOVERY_KEYS = frozenset({"restore_command", "recovery_target_time", "recovery_target_action", "recovery_target",
                            "recovery_target_lsn", "recovery_target_xid", "recovery_target_name",
                            "recovery_target_inclusive", "recovery_target_timeline"})

_HBA = """\
# written by `dbops sandbox up`
# Local sockets are trusted: the socket directory and the sockets are mode 0700, so only the
# server's own OS user (and root) can reach them. Everything over TCP needs the password.
local   all          all                          trust
local   replication  all                          trust
host    all          all          127.0.0.1/32    scram-sha-256
host    replication  all          127.0.0.1/32    scram-sha-256
"""

_COORD_HBA = """\
# written by `dbops sandbox up`: the coordination server (no replication connections)
local   all          all                          trust
host    all          all          127.0.0.1/32    scram-sha-256
"""


# ---------------------------------------------------------------------------------------------
# Module-level shortcuts on the default sandbox (<state_dir>/sandbox)


def stop_member(name: str, mode: StopMode = "immediate", *, root: Path | None = None) -> None:
    PostgresSandbox(root).stop_member(name, mode)


def start_member(name: str, *, root: Path | None = None) -> None:
    PostgresSandbox(root).start_member(name)


def wait_streaming(names: Sequence[str] = ("pg2", "pg3"), timeout: float = STREAM_TIMEOUT, *, root: Path | None = None) -> None:
    PostgresSandbox(root).wait_streaming(names, timeout)


def rejoin_as_replica(name: str, new_primary: str, *, root: Path | None = None,
                      progress: Progress = _quiet, timeout: float = STREAM_TIMEOUT) -> None:
    """Rejoin sandbox member `name` as a streaming replica of `new_primary` (pg_rewind)."""
    PostgresSandbox(root).rejoin_as_replica(name, new_primary, progress, timeout)


def show_rejoin_commands(name: str, new_primary: str, *, root: Path | None = None) -> list[str]:
    """The shell commands `rejoin_as_replica` runs, password redacted."""
    return PostgresSandbox(root).show_rejoin_commands(name, new_primary)


def wait_streaming_from(upstream: str, names: Sequence[str], timeout: float = STREAM_TIMEOUT, *,
                        root: Path | None = None) -> None:
    PostgresSandbox(root).wait_streaming_from(upstream, names, timeout)


def fence_member(name: str, new_primary: str, *, root: Path | None = None, progress: Progress = _quiet) -> None:
    """Fence sandbox member `name`: stopped, and it can start again only as a standby of `new_primary`."""
    PostgresSandbox(root).fence_member(name, new_primary, progress)


def show_fence_commands(name: str, new_primary: str, *, root: Path | None = None) -> list[str]:
    """The shell commands `fence_member` runs, password redacted."""
    return PostgresSandbox(root).show_fence_commands(name, new_primary)


def fence_state(name: str, *, root: Path | None = None) -> tuple[bool, str]:
    """(True, how `name` is fenced) or (False, why it is not)."""
    return PostgresSandbox(root).fence_state(name)


def pause_pgbouncer(*, root: Path | None = None, timeout: float = 60) -> None:
    PostgresSandbox(root).pause_pgbouncer(timeout)


def resume_pgbouncer(*, root: Path | None = None) -> None:
    PostgresSandbox(root).resume_pgbouncer()


def pgbouncer_paused(*, root: Path | None = None) -> bool:
    return PostgresSandbox(root).pgbouncer_paused()
