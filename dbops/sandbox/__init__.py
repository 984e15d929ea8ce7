"""Real local servers for the demo, DR drills and integration tests.

Everything lives under ``<state_dir>/sandbox`` (``$DBOPS_STATE_DIR`` moves it). Each engine is a
module here with a class that knows how to bring its servers up and down; this package picks
engines by name, keeps one state file (``sandbox.json``) and writes one dbops config
(``dbops.toml``) covering every engine that is up.

This module stays stdlib-only and cheap to import: the CLI imports it on every start.

Engine class contract (see postgres.PostgresSandbox): ``Engine(root)`` with
``up(progress) -> (toml_fragment, already_up)``, ``down(progress)``, ``status() -> list[ProcessStatus]``,
``is_running() -> bool``, ``config_fragment() -> str`` (the fragment of an engine that is already up).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_ENGINES",
    "KNOWN_ENGINES",
    "ProcessStatus",
    "SandboxError",
    "ServerUser",
    "UpResult",
    "config_path",
    "down",
    "sandbox_dir",
    "status",
    "up",
]

# name -> (module, class). Adding an engine is one line here plus its module.
_ENGINES: dict[str, tuple[str, str]] = {
    "postgres": ("dbops.sandbox.postgres", "PostgresSandbox"),
    "s3": ("dbops.sandbox.s3", "S3Sandbox"),
    "redis": ("dbops.sandbox.redis", "RedisSandbox"),
    "kafka": ("dbops.sandbox.kafka", "KafkaSandbox"),
    "neo4j": ("dbops.sandbox.neo4j", "Neo4jSandbox"),
    "qdrant": ("dbops.sandbox.qdrant", "QdrantSandbox"),
    "kubernetes": ("dbops.sandbox.kubernetes", "KubernetesSandbox"),
    "prometheus": ("dbops.sandbox.prometheus", "PrometheusSandbox"),
}
KNOWN_ENGINES: tuple[str, ...] = tuple(_ENGINES)
DEFAULT_ENGINES: tuple[str, ...] = ("s3", "postgres")

# Engines others depend on come up first and go down last, whatever order they are named in:
# the postgres sandbox attaches the s3 sandbox's bucket to its cluster when s3 is up. Redis
# depends on nothing and nothing on it (yet): last up, first down.
# The kubernetes stand-in describes the postgres sandbox's cluster: after it. Prometheus scrapes
# the database engines that are up when it starts (its exporters are made for them): after all.
_START_ORDER: tuple[str, ...] = ("s3", "postgres", "redis", "kafka", "neo4j", "qdrant", "kubernetes", "prometheus")


def _start_order(names: Iterable[str]) -> list[str]:
    """`names` in the order to start them (engines not in _START_ORDER last, as given)."""
    rank = {name: i for i, name in enumerate(_START_ORDER)}
    return sorted(names, key=lambda n: rank.get(n, len(rank)))

STATE_FILE = "sandbox.json"
CONFIG_FILE = "dbops.toml"

Progress = Callable[[str], None]


class SandboxError(Exception):
    """A problem the user can act on; the message is shown as is, without a traceback."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class ProcessStatus:
    engine: str
    name: str
    role: str
    running: bool
    port: int | None
    pid: int | None
    detail: str = ""


@dataclass(frozen=True)
class UpResult:
    config_path: Path
    already_up: bool
    engines: tuple[str, ...]


def _quiet(_: str) -> None:
    """Default progress sink: say nothing."""


# ---------------------------------------------------------------------------------------------
# Paths and state


def sandbox_dir(root: Path | None = None) -> Path:
    """The sandbox directory: `root` when given (tests), else <state_dir>/sandbox."""
    if root is not None:
        return Path(root)
    from dbops.config import state_dir

    return state_dir() / "sandbox"


def read_state(root: Path) -> dict[str, Any]:
    path = root / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SandboxError(f"sandbox state file {path} cannot be read ({exc}); run `dbops sandbox down --purge`") from None
    if not isinstance(data, dict):
        raise SandboxError(f"sandbox state file {path} is not a JSON object; run `dbops sandbox down --purge`")
    return data


def write_engine_state(root: Path, engine: str, data: dict[str, Any] | None) -> None:
    """Replace one engine's section of the state file (None removes it). Written atomically, 0600
    because it holds the generated passwords."""
    state = read_state(root)
    engines = state.setdefault("engines", {})
    if data is None:
        engines.pop(engine, None)
    else:
        engines[engine] = data
    tmp = root / (STATE_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, root / STATE_FILE)


def engine_state(root: Path, engine: str) -> dict[str, Any] | None:
    return read_state(root).get("engines", {}).get(engine)


# ---------------------------------------------------------------------------------------------
# Small process helpers shared by engine modules


@dataclass(frozen=True)
class ServerUser:
    """Who an engine's servers run as: a service user when we are root (PostgreSQL and Redis
    refuse to run as root, and files they write must stay theirs), else ourselves."""

    uid: int
    gid: int
    name: str
    home: str
    drop: bool  # True: switch to this user for every server command

    @classmethod
    def detect(cls, candidates: tuple[str, ...], missing: str) -> ServerUser:
        """Ourselves when not root; else the first of `candidates` that exists, or SandboxError(missing)."""
        import pwd

        if os.geteuid() != 0:
            try:
                pw = pwd.getpwuid(os.geteuid())
                name, home = pw.pw_name, pw.pw_dir
            except KeyError:
                # containers often run with a uid that has no passwd entry
                name, home = str(os.geteuid()), os.environ.get("HOME", "/")
            return cls(os.geteuid(), os.getegid(), name, home, False)
        for candidate in candidates:
            try:
                pw = pwd.getpwnam(candidate)
            except KeyError:
                continue
            return cls(pw.pw_uid, pw.pw_gid, pw.pw_name, pw.pw_dir, True)
        raise SandboxError(missing)

    def popen_kwargs(self) -> dict[str, Any]:
        if not self.drop:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def own(self, path: Path) -> None:
        if self.drop:
            os.chown(path, self.uid, self.gid)


def write_private(path: Path, text: str, prepare: Callable[[Path], None] | None = None) -> None:
    """Write a file only its owner can read, 0600 from the start (no window with the umask's mode),
    whole or not at all: written beside it, then renamed over it. A process killed mid-write (the
    crash tests kill dbops at every step) must never leave a server a truncated config, which it
    would refuse on its next RELOAD or start. `prepare` runs on the new file before the rename
    (handing it to the server's user, so the server never sees a file it cannot read)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if prepare is not None:
            prepare(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class OwnedFiles:
    """Directories and files of servers that run as `owner` (a service user when we are root):
    private from the start, then handed to that user."""

    OWNER_CANDIDATES: tuple[str, ...]  # the OS users the servers may run as when we are root
    OWNER_MISSING: str  # what to do when none of them exists

    @functools.cached_property
    def owner(self) -> ServerUser:
        return ServerUser.detect(self.OWNER_CANDIDATES, self.OWNER_MISSING)

    def _mkdir(self, path: Path) -> None:
        path.mkdir(mode=0o700, exist_ok=True)
        path.chmod(0o700)  # mkdir's mode is masked by the umask
        self.owner.own(path)

    def _write(self, path: Path, text: str) -> None:
        write_private(path, text, prepare=self.owner.own)


def log_hint(log: Path | None) -> str:
    """Where a failed server's log is and how it ends, to append to an error message."""
    if log is None:
        return ""
    last = tail(log)
    return f"\n  see {log}" + (f"; it ends with:\n{last}" if last else "")


# Servers this process started, by pid: kept so that the Popen object is not collected while the
# server runs (it would warn "subprocess ... is still running") and so that a server that stops
# is reaped instead of lingering as a zombie. A server started by an earlier dbops is not ours.
children: dict[int, subprocess.Popen[bytes]] = {}


def adopt(proc: subprocess.Popen[bytes]) -> int:
    """Keep `proc` among this process's children; returns its pid."""
    children[proc.pid] = proc
    return proc.pid


def reap(pid: int) -> None:
    """Collect `pid`'s exit status if it is our child and has exited."""
    proc = children.get(pid)
    if proc is not None and proc.poll() is not None:
        del children[pid]


def spawn(what: str, args: Sequence[str], log: Path, cwd: Path, env: dict[str, str] | None = None, *,
          owner: ServerUser | None = None, **popen: Any) -> int:
    """Start a server in a session of its own (Ctrl-C in the terminal that ran `up` must not stop
    it), its output appended to `log` (0600, handed to `owner` when given) after a line saying
    what was started. `popen`: more subprocess.Popen arguments (the user to run as ...). Returns
    its pid; the process is kept among our children."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as fh:
        if owner is not None:
            owner.own(log)
        started = datetime.now(UTC).isoformat(timespec="seconds")
        fh.write(f"---- {started} dbops sandbox: {what}: {' '.join(args)}\n".encode())
        fh.flush()
        try:
            proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd,
                                    env=env, start_new_session=True, **popen)
        except OSError as exc:
            raise SandboxError(f"cannot start {what} ({' '.join(args)}): {exc}") from None
    return adopt(proc)


def already_up(engine: str, root: Path, running: dict[str, bool], progress: Progress) -> bool:
    """Whether every server of `engine`'s sandbox (`running`: name -> whether it runs) is up;
    SandboxError when only some are: a fresh `up` would collide with the ones left running."""
    if all(running.values()):
        progress(f"{engine} sandbox is already up")
        return True
    if any(running.values()):
        down_names = ", ".join(n for n, r in running.items() if not r)
        raise SandboxError(f"the {engine} sandbox under {root} is partly running ({down_names} down), perhaps after "
                           "a drill; run `dbops sandbox down` and then `dbops sandbox up` for a fresh one")
    return False



def pid_alive(pid: int | None, needle: str | None = None) -> bool:
    """True if `pid` is a live (non-zombie) process whose command line contains `needle`.

    Zombies count as dead: in containers PID 1 often does not reap, and a killed server that
    lingers as a zombie must not look up. The needle guards against a recycled pid.
    """
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user: still alive, go on to the /proc checks
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        # not Linux (or /proc hidden): kill(0) is all we can know
        return True
    try:
        stat = (proc / "stat").read_text()
        state = stat[stat.rindex(")") + 2 :].split()[0]
        if state in ("Z", "X"):
            return False
        if needle is not None:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            return needle in cmdline
    except FileNotFoundError:
        return False  # exited between the checks
    return True


def stop_processes(pids: dict[int, str], sig: signal.Signals, grace: float) -> None:
    """Send `sig` to each pid still running its own command line (`pids`: pid -> a string of
    that command line), wait until all are gone, SIGKILL what is left after `grace` seconds."""
    for pid, needle in pids.items():
        if pid_alive(pid, needle):
            os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while True:
        for pid in pids:
            reap(pid)
        left = [p for p in pids if pid_alive(p)]
        if not left:
            return
        if time.monotonic() >= deadline:
            for p in left:
                os.kill(p, signal.SIGKILL)
            deadline = time.monotonic() + 10
        time.sleep(0.1)


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def down_on_failure(engine: Any) -> Iterator[None]:
    """Leave nothing running behind a failed `up` of `engine` (its `down` runs); its logs stay
    for the error message, and a failing cleanup is a note on the error, not a second error."""
    try:
        yield
    except BaseException as exc:
        try:
            engine.down(_quiet)
        except SandboxError as cleanup:
            exc.add_note(f"while cleaning up after that: {cleanup.message}")
        raise


class EngineSandbox:
    """What every engine's part of a sandbox shares: the directory it lives in (`<root>/<engine>`)
    and the state it recorded there."""

    ENGINE: str
    LABEL: str  # the engine's name in messages
    UP: str  # the command that starts it

    def __init__(self, root: Path | None = None):
        self.root = sandbox_dir(root)
        self.dir = self.root / self.ENGINE

    def _state(self) -> dict[str, Any] | None:
        return engine_state(self.root, self.ENGINE)

    @property
    def state(self) -> dict[str, Any]:
        st = self._state()
        if not st:
            raise SandboxError(f"no {self.LABEL} sandbox under {self.root}; start one with `{self.UP}`")
        return st


class SingleProcessSandbox(EngineSandbox):
    """An engine sandbox that is one process (Neo4j, the fake Qdrant, the Kubernetes stand-in),
    its pid in the state."""

    def _needle(self) -> str:
        """A string on the process's command line, unique to this sandbox: a recycled pid is not it."""
        raise NotImplementedError

    def pid(self) -> int | None:
        st = self._state()
        pid = st.get("pid") if st else None
        return pid if pid_alive(pid, self._needle()) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    # The log's size when the process was last spawned: it is appended to across starts, and only
    # what this start writes says whether it is ready.
    _log_from = 0

    def _spawn_process(self, what: str, args: Sequence[str], env: dict[str, str] | None = None) -> int:
        """Start the process (see spawn), its output in the log the state names; record its pid."""
        log = Path(self.state["log"])
        self._log_from = log.stat().st_size if log.exists() else 0
        pid = spawn(what, args, log, self.dir, env)
        self._record_pid(pid)
        return pid

    def _wait_process(self, pid: int, what: str, ready: bytes, ports: Iterable[int], *, timeout: float,
                      poll: float = 0.1, host: str = "127.0.0.1") -> None:
        """Wait until this start of the process says `ready` in its log and listens on `ports`."""
        wait_ready(pid, Path(self.state["log"]), what, ready, ports, timeout=timeout, log_from=self._log_from,
                   poll=poll, host=host)

    def _record_pid(self, pid: int | None) -> None:
        st = self.state
        st["pid"] = pid
        write_engine_state(self.root, self.ENGINE, st)

    def _stop_process(self, progress: Progress, what: str, sig: signal.Signals, grace: float) -> None:
        """`down`: signal the process (SIGKILL after `grace` seconds), then forget its pid."""
        pid = self.pid()
        if pid is None:
            return
        progress(f"stop {what}")
        stop_processes({pid: self._needle()}, sig, grace)
        self._record_pid(None)


def wait_ready(pid: int, log: Path, what: str, ready: bytes, ports: Iterable[int], *, timeout: float,
               log_from: int = 0, poll: float = 0.1, host: str = "127.0.0.1") -> None:
    """Wait until the process `pid` has written `ready` to `log` (past offset `log_from`, where
    this start's output begins) and listens on every one of `ports`; SandboxError when it exits
    first or `timeout` seconds pass."""
    ports = list(ports)
    deadline = time.monotonic() + timeout
    while True:
        if not pid_alive(pid):
            raise SandboxError(f"{what} exited while starting; see {log}; it ends with:\n{tail(log)}")
        with log.open("rb") as fh:
            fh.seek(log_from)
            started = ready in fh.read()
        if started and all(port_open(p, host) for p in ports):
            return
        if time.monotonic() >= deadline:
            raise SandboxError(f"{what} did not start within {timeout:.0f} s; see {log}")
        time.sleep(poll)


def toml_str(value: str) -> str:
    """A TOML basic string, for the config fragments the sandboxes write."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def tail(path: Path, lines: int = 8) -> str:
    """The last lines of a log, indented, for an error message ('' if it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    last = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return "\n".join("    " + ln for ln in last)


# ---------------------------------------------------------------------------------------------
# The engine-independent operations the CLI and tests call


def _engine(name: str, root: Path) -> Any:
    try:
        module_name, class_name = _ENGINES[name]
    except KeyError:
        raise SandboxError(f"unknown sandbox engine {name!r}; known engines: {', '.join(KNOWN_ENGINES)}") from None
    return getattr(importlib.import_module(module_name), class_name)(root)


def _validate_engines(engines: Iterable[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(e.strip() for e in engines if e.strip()))
    if not names:
        raise SandboxError(f"no sandbox engine given; known engines: {', '.join(KNOWN_ENGINES)}")
    unknown = [n for n in names if n not in _ENGINES]
    if unknown:
        raise SandboxError(
            f"unknown sandbox engine{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"known engines: {', '.join(KNOWN_ENGINES)}"
        )
    return names


def up(engines: Iterable[str] = DEFAULT_ENGINES, *, root: Path | None = None, progress: Progress | None = None) -> UpResult:
    """Bring the named engines up (each is left alone if already up) and write dbops.toml."""
    names = _validate_engines(engines)
    say = progress or _quiet
    root = sandbox_dir(root)
    fragments: list[str] = []
    all_already = True
    started: list[str] = []
    for name in _start_order(names):
        try:
            fragment, already = _engine(name, root).up(say)
        except BaseException as exc:
            # An engine cleans up after its own failed `up`; the ones this call started before
            # it would be left running for nothing (their dependant is missing): stop them too.
            for earlier in reversed(started):
                try:
                    _engine(earlier, root).down(_quiet)
                except SandboxError as cleanup:
                    exc.add_note(f"while stopping {earlier} after that: {cleanup.message}")
            raise
        if not already:
            started.append(name)
        fragments.append(fragment)
        all_already = all_already and already
    # Engines started earlier with another --engines list stay in the config too.
    for name in read_state(root).get("engines", {}):
        if name not in names and name in _ENGINES:
            eng = _engine(name, root)
            if eng.is_running():
                fragments.append(eng.config_fragment())
    path = _write_config(root, fragments)
    return UpResult(path, all_already, names)


def _write_config(root: Path, fragments: list[str]) -> Path:
    text = (
        "# Written by `dbops sandbox up`; rewritten on every `up`, so edit a copy instead.\n"
        "# Literal passwords are allowed here only because this environment is marked sandbox = true.\n"
        "\n"
        "[environments.sandbox]\n"
        "sandbox = true\n"
        'mode = "operator"\n'
        "\n" + "\n".join(fragments)
    )
    path = root / CONFIG_FILE
    tmp = root / (CONFIG_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    # A config the console itself rejects would be a bug here, not the user's problem: say so.
    from dbops.config import ConfigError, load

    try:
        load(tmp)
    except ConfigError as exc:
        raise SandboxError(f"internal error: the sandbox config written to {tmp} does not validate:\n{exc}") from None
    os.replace(tmp, path)
    return path


def down(*, root: Path | None = None, purge: bool = False, progress: Progress | None = None) -> None:
    """Stop every sandbox server this sandbox started; safe to repeat. `purge` also deletes the
    sandbox directory (data, logs, archive, config)."""
    say = progress or _quiet
    root = sandbox_dir(root)
    if not root.exists():
        return
    started = list(read_state(root).get("engines", {}))
    # Engines without a state entry still get a chance: an `up` interrupted before it wrote its
    # state may have left a server running from the sandbox directory.
    for name in reversed(_start_order(dict.fromkeys(started + list(KNOWN_ENGINES)))):
        _engine(name, root).down(say)
    if purge:
        say(f"removing {root}")
        shutil.rmtree(root)


def status(*, root: Path | None = None) -> list[ProcessStatus]:
    """One row per server of every engine that has been brought up here ([] if none)."""
    root = sandbox_dir(root)
    rows: list[ProcessStatus] = []
    for name in read_state(root).get("engines", {}):
        if name in _ENGINES:
            rows.extend(_engine(name, root).status())
    return rows


def config_path(*, root: Path | None = None) -> Path:
    """The dbops.toml of a running sandbox; SandboxError if no sandbox is up."""
    root = sandbox_dir(root)
    path = root / CONFIG_FILE
    running = [n for n in read_state(root).get("engines", {}) if n in _ENGINES and _engine(n, root).is_running()]
    if not running or not path.exists():
        raise SandboxError(f"no sandbox is up under {root}; start one with `dbops sandbox up`")
    return path
