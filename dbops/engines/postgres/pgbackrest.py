"""pgBackRest, the standard PostgreSQL backup tool, driven through its command line.

Each operation runs `pgbackrest --config=CONF --stanza=STANZA ...` as an asyncio subprocess (the
event loop keeps serving the UI while a backup runs for hours) and as the OS user that owns the
repository (`os_user`; the servers' user, normally `postgres`): files pgBackRest writes as root
(its logs, locks, repository files) would lock that user out of its own repository afterwards.
Each has a `describe_*` twin giving the exact command line, for the plan shown before anything runs.

A failure raises PgBackRestError carrying pgBackRest's own stderr (credentials scrubbed).
Cancelling an operation (a runbook step's timeout) stops pgBackRest: SIGTERM, which it handles
by stopping cleanly and releasing its lock, then SIGKILL if it does not exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shlex
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from dbops.secrets import scrub_text

BackupType = Literal["full", "incr", "diff"]
BACKUP_TYPES: tuple[str, ...] = ("full", "incr", "diff")
DEFAULT_BINARY = "pgbackrest"
# Stanza status codes from `pgbackrest info`; 2 (a stanza without a backup yet) can be backed up.
STATUS_OK = 0
STATUS_NO_BACKUP = 2
_TERM_GRACE = 10.0  # seconds pgBackRest gets to stop after SIGTERM before SIGKILL


class PgBackRestError(Exception):
    """pgBackRest failed or could not be run; the message is safe to show."""


@dataclass(frozen=True)
class Backup:
    label: str
    type: str  # full, incr or diff
    start: datetime
    stop: datetime
    size: int  # bytes of the database at backup time
    delta: int  # bytes this backup copied
    repo_size: int  # bytes in the repository (compressed)
    wal_start: str | None
    wal_stop: str | None
    error: bool  # a page checksum error was found during the backup

    @classmethod
    def from_json(cls, b: dict[str, Any]) -> Backup:
        ts, info, archive = b.get("timestamp", {}), b.get("info", {}), b.get("archive", {}) or {}
        repo = info.get("repository", {})
        return cls(
            label=str(b["label"]), type=str(b["type"]),
            start=datetime.fromtimestamp(int(ts["start"]), tz=UTC),
            stop=datetime.fromtimestamp(int(ts["stop"]), tz=UTC),
            size=int(info.get("size", 0)), delta=int(info.get("delta", 0)), repo_size=int(repo.get("size", 0)),
            wal_start=archive.get("start"), wal_stop=archive.get("stop"), error=bool(b.get("error", False)),
        )


@dataclass(frozen=True)
class StanzaInfo:
    """One stanza of `pgbackrest info --output=json`; `raw` is that stanza's parsed JSON."""

    name: str
    status_code: int
    status_message: str
    backups: tuple[Backup, ...]  # oldest first, as pgBackRest lists them
    wal_min: str | None  # WAL archive of the current database (the last `db` entry)
    wal_max: str | None
    backup_running: bool
    raw: dict[str, Any]

    @property
    def newest(self) -> Backup | None:
        return self.backups[-1] if self.backups else None

    @property
    def usable(self) -> bool:
        """The stanza exists and its repository answers (with or without backups yet)."""
        return self.status_code in (STATUS_OK, STATUS_NO_BACKUP)

    @classmethod
    def from_json(cls, stanza: dict[str, Any]) -> StanzaInfo:
        status = stanza.get("status", {})
        db_ids = [d.get("id") for d in stanza.get("db", [])]
        current = db_ids[-1] if db_ids else None
        archives = [a for a in stanza.get("archive", []) if a.get("database", {}).get("id") == current]
        backup_lock = status.get("lock", {}).get("backup", {})
        return cls(
            name=str(stanza.get("name")),
            status_code=int(status.get("code", 99)),
            status_message=str(status.get("message", "")),
            backups=tuple(Backup.from_json(b) for b in stanza.get("backup", [])),
            wal_min=archives[-1].get("min") if archives else None,
            wal_max=archives[-1].get("max") if archives else None,
            backup_running=bool(backup_lock.get("held", False)),
            raw=stanza,
        )


# -- running pgBackRest --------------------------------------------------------------------


def _command(conf: str, stanza: str, args: list[str], binary: str) -> list[str]:
    return [binary, f"--config={conf}", f"--stanza={stanza}", *args]


def _describe(conf: str, stanza: str, args: list[str], os_user: str | None, binary: str) -> list[str]:
    line = shlex.join(_command(conf, stanza, args, binary))
    return ([f"# as the {os_user} OS user"] if os_user else []) + [line]


def user_kwargs(os_user: str | None) -> tuple[dict[str, Any], str]:
    """subprocess arguments to run as `os_user`, and that user's home directory."""
    me = os.geteuid()
    if not os_user:
        return {}, os.environ.get("HOME", "/")
    try:
        pw = pwd.getpwnam(os_user)
    except KeyError:
        raise PgBackRestError(f"OS user {os_user!r}, which pgBackRest must run as, does not exist") from None
    if pw.pw_uid == me:
        return {}, pw.pw_dir
    if me != 0:
        # Only root can switch users; running as ourselves would leave files in the repository
        # its owner cannot use, so refuse instead.
        raise PgBackRestError(f"pgBackRest must run as the {os_user} OS user; run dbops as {os_user} or as root")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}, pw.pw_dir


def clean_env(home: str) -> dict[str, str]:
    # PGBACKREST_* variables override the configuration file and PG* ones redirect libpq: a
    # caller's shell must not point pgBackRest at another repository or server.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGBACKREST_"))}
    env.update(LC_ALL="C", LANG="C", HOME=home)
    return env


def _failure(what: str, code: int | None, stderr: str, stdout: str) -> PgBackRestError:
    lines = [ln for ln in (stderr.strip() or stdout.strip()).splitlines() if ln.strip()][-8:]
    detail = scrub_text("\n".join(lines)) if lines else "no output"
    return PgBackRestError(f"{what} failed (exit {code}): {detail}")


async def exec_as(os_user: str | None, args: list[str]) -> asyncio.subprocess.Process:
    """`args` started as `os_user` (None: as ourselves) in a clean environment, stdout and
    stderr piped. uvloop's loop (the pollers') cannot switch users in the child as asyncio's
    does (user=, group=): there util-linux's setpriv does it, before exec."""
    kwargs, home = user_kwargs(os_user)
    env = clean_env(home)
    if kwargs and not isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop):
        if shutil.which(args[0], path=env.get("PATH")) is None:
            raise FileNotFoundError(args[0])  # said as asyncio would: setpriv would exit 127
        args = ["setpriv", f"--reuid={kwargs['user']}", f"--regid={kwargs['group']}", "--clear-groups", "--", *args]
        kwargs = {}
    return await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd="/", env=env, **kwargs)  # cwd: the caller's may be unreadable to os_user


async def _run(conf: str, stanza: str, args: list[str], *, os_user: str | None, timeout: float,
               binary: str) -> tuple[str, str]:
    what = f"pgbackrest {' '.join(args)}"
    try:
        proc = await exec_as(os_user, _command(conf, stanza, args, binary))
    except FileNotFoundError:
        raise PgBackRestError(f"{binary} not found; install the Debian package pgbackrest (apt-get install pgbackrest)") from None
    except OSError as exc:
        raise PgBackRestError(f"cannot run {binary}: {exc}") from None
    out, err = await communicate_or_stop(proc, timeout)
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    if proc.returncode != 0:
        raise _failure(what, proc.returncode, stderr, stdout)
    return stdout, stderr


async def communicate_or_stop(proc: asyncio.subprocess.Process, timeout: float) -> tuple[bytes, bytes]:
    """The process' stdout and stderr once it exits within `timeout`."""
    try:
        return await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except BaseException:
        # Timeout or cancellation: never leave a backup, dump or restore running behind the
        # caller's back.
        await stop_process(proc)
        raise


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (pgBackRest, pg_dump and pg_restore all stop cleanly on it), SIGKILL after a grace."""
    if proc.returncode is not None:
        return
    try:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=_TERM_GRACE)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    except ProcessLookupError:
        return  # it exited between the check and the signal


def pids_with_args(*args: str) -> list[int]:
    """pids of the processes whose argument list holds every one of `args` (exact arguments).
    A pgBackRest whose dbops was killed goes on running; a resumed run must find it, not race it."""
    wanted = [a.encode() for a in args]
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # it exited meanwhile, or is not ours to read
        if all(w in argv for w in wanted):
            found.append(int(proc.name))
    return found


def running_backups(stanza: str) -> list[int]:
    return pids_with_args(f"--stanza={stanza}", "backup")


# -- operations ----------------------------------------------------------------------------


def _backup_args(type: str) -> list[str]:
    if type not in BACKUP_TYPES:
        raise PgBackRestError(f"backup type must be one of {', '.join(BACKUP_TYPES)}, not {type!r}")
    return [f"--type={type}", "backup"]


async def backup(conf: str, stanza: str, type: BackupType = "incr", *, os_user: str | None = None,
                 timeout: float = 4 * 3600, binary: str = DEFAULT_BINARY) -> str:
    """Take a backup. pgBackRest turns an incr or diff without a prior full into a full (and says
    so on stderr, which is returned: its warnings, if any)."""
    _, stderr = await _run(conf, stanza, _backup_args(type), os_user=os_user, timeout=timeout, binary=binary)
    return scrub_text(stderr.strip())


def describe_backup(conf: str, stanza: str, type: str = "incr", *, os_user: str | None = None,
                    binary: str = DEFAULT_BINARY) -> list[str]:
    return _describe(conf, stanza, _backup_args(type), os_user, binary)


async def info(conf: str, stanza: str, *, os_user: str | None = None, timeout: float = 60,
               binary: str = DEFAULT_BINARY) -> StanzaInfo:
    """`pgbackrest info --output=json` for one stanza. Read-only."""
    stdout, _ = await _run(conf, stanza, ["--output=json", "info"], os_user=os_user, timeout=timeout, binary=binary)
    try:
        data = json.loads(stdout)
    except ValueError as exc:
        raise PgBackRestError(f"pgbackrest info printed something that is not JSON ({exc}): {scrub_text(stdout[:200])}") from None
    found = [s for s in data if isinstance(s, dict) and s.get("name") == stanza] if isinstance(data, list) else []
    if not found:
        raise PgBackRestError(f"pgbackrest info does not list stanza {stanza!r}")
    return StanzaInfo.from_json(found[0])


def describe_info(conf: str, stanza: str, *, os_user: str | None = None, binary: str = DEFAULT_BINARY) -> list[str]:
    return _describe(conf, stanza, ["--output=json", "info"], os_user, binary)


async def check(conf: str, stanza: str, *, os_user: str | None = None, timeout: float = 120,
                binary: str = DEFAULT_BINARY) -> None:
    """`pgbackrest check`: the configuration, the repository, and that WAL archiving reaches it.
    Not read-only: it creates a restore point on the primary and switches to a new WAL segment,
    then waits until that segment is in the repository."""
    await _run(conf, stanza, ["check"], os_user=os_user, timeout=timeout, binary=binary)


def describe_check(conf: str, stanza: str, *, os_user: str | None = None, binary: str = DEFAULT_BINARY) -> list[str]:
    return _describe(conf, stanza, ["check"], os_user, binary)


def _target_text(target: datetime) -> str:
    # recovery_target_time syntax; always UTC with an explicit offset so the server's TimeZone
    # cannot change its meaning.
    return target.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def restore_args(pg_path: str, label: str | None, target: datetime | None, delta: bool) -> list[str]:
    args = [f"--pg1-path={pg_path}"]
    if label:
        args.append(f"--set={label}")
    if target is None:
        args.append("--type=default")  # replay all archived WAL, then promote
    else:
        args += ["--type=time", f"--target={_target_text(target)}", "--target-action=promote"]
    if delta:
        args.append("--delta")  # over an existing data directory: only changed files are fetched
    else:
        # A copy must not push WAL into the repository of the cluster it was restored from.
        args.append("--archive-mode=off")
    return [*args, "restore"]


async def restore(conf: str, stanza: str, pg_path: str, *, label: str | None = None, target: datetime | None = None,
                  delta: bool = False, os_user: str | None = None, timeout: float = 6 * 3600,
                  binary: str = DEFAULT_BINARY) -> str:
    """Restore backup `label` (None: the newest that can reach `target`) into `pg_path`, set up
    to recover to `target` (None: the end of the archived WAL) and promote. Returns stderr
    (pgBackRest's warnings)."""
    _, stderr = await _run(conf, stanza, restore_args(pg_path, label, target, delta), os_user=os_user,
                           timeout=timeout, binary=binary)
    return scrub_text(stderr.strip())


def describe_restore(conf: str, stanza: str, pg_path: str, *, label: str | None = None, target: datetime | None = None,
                     delta: bool = False, os_user: str | None = None, binary: str = DEFAULT_BINARY) -> list[str]:
    return _describe(conf, stanza, restore_args(pg_path, label, target, delta), os_user, binary)


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    invalid_backups: tuple[str, ...]  # labels pgBackRest found damaged
    problems: tuple[str, ...]  # its report lines, as printed


_VERIFY_ARGS = ["--log-level-console=info", "--log-level-stderr=off", "verify"]


def parse_verify(output: str) -> VerifyReport:
    """pgBackRest 2.45 exits 0 even when files are damaged and prints a per-stanza report at
    INFO level only when something is wrong ("status: error", then "backup: LABEL, status:
    invalid" and the kinds of damage), so the report is what tells."""
    lines = [ln.split(" INFO: ", 1)[-1].strip() for ln in output.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("verify command")]
    bad = tuple(ln.split(",")[0].removeprefix("backup:").strip() for ln in lines
                if ln.startswith("backup:") and "status: invalid" in ln)
    failed = any(ln == "status: error" for ln in lines) or bool(bad)
    return VerifyReport(ok=not failed, invalid_backups=bad, problems=tuple(lines) if failed else ())


async def verify(conf: str, stanza: str, *, os_user: str | None = None, timeout: float = 3600,
                 binary: str = DEFAULT_BINARY) -> VerifyReport:
    """`pgbackrest verify`: re-reads every backup file and archived WAL segment in the
    repository and checks them against their recorded checksums. Read-only."""
    stdout, _ = await _run(conf, stanza, _VERIFY_ARGS, os_user=os_user, timeout=timeout, binary=binary)
    return parse_verify(scrub_text(stdout))


def describe_verify(conf: str, stanza: str, *, os_user: str | None = None, binary: str = DEFAULT_BINARY) -> list[str]:
    return _describe(conf, stanza, _VERIFY_ARGS, os_user, binary)


async def repo_ls(conf: str, stanza: str, path: str, *, filter: str | None = None, os_user: str | None = None,
                  timeout: float = 60, binary: str = DEFAULT_BINARY) -> dict[str, Any]:
    """`pgbackrest repo-ls PATH --output=json` (relative to the repository): {name: {"type",
    "size", "time"}} for one directory, not recursive. Read-only; works for every repository
    type (posix, S3 ...), which is why the backups view reads WAL times through it."""
    args = ["--output=json", *([f"--filter={filter}"] if filter else []), "repo-ls", path]
    stdout, _ = await _run(conf, stanza, args, os_user=os_user, timeout=timeout, binary=binary)
    try:
        data = json.loads(stdout)
    except ValueError as exc:
        raise PgBackRestError(f"pgbackrest repo-ls printed something that is not JSON ({exc}): {scrub_text(stdout[:200])}") from None
    return data if isinstance(data, dict) else {}
