"""A restored copy of a PostgreSQL cluster, on the host where dbops runs.

postgres.restore and postgres.verify-backups restore a backup into a new directory
(`<restore_root>/<cluster>-<run id>/`: data/, run/ for its sockets, postgres.log, and a marker
file naming the run that made it) and start it on its own port, as the repository's OS user.
The copy's own settings go in a marked block of postgresql.auto.conf, after pgBackRest's
recovery settings: its port, loopback only, no synchronous standbys to wait for (a copy has
none), logging to stderr in UTC (the log is how the recovery outcome is read).

Each operation has a `describe_*` twin giving the exact commands for the plan.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dbops.engines.postgres import pgbackrest as pb
from dbops.secrets import scrub_text

MARKER = "dbops-restore.json"
BLOCK_BEGIN = "# -- dbops restore: settings of this copy (begin) --"
BLOCK_END = "# -- dbops restore: settings of this copy (end) --"
DISK_MARGIN = 1.2  # free space needed, as a multiple of the database size


class RestoreError(Exception):
    """A restored copy could not be prepared, started or read; the message is safe to show."""


@dataclass(frozen=True)
class CopyPaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sockets(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def marker(self) -> Path:
        return self.root / MARKER


def paths_for(restore_root: str | Path, cluster: str, run_id: str) -> CopyPaths:
    return CopyPaths(Path(restore_root) / f"{cluster}-{run_id}")


def bindir(configured: str | None, major: str | None) -> Path:
    if configured:
        return Path(configured)
    if not major:
        raise RestoreError("the backup's PostgreSQL version is unknown; set pg_bindir in the cluster's pgbackrest section")
    return Path(f"/usr/lib/postgresql/{major}/bin")


def free_bytes(path: str | Path) -> int:
    """Free space on the filesystem that will hold `path` (its nearest existing ancestor)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def tree_bytes(path: str | Path) -> int:
    """Bytes of the files under `path` (a restore's progress: the copy fills up to the backup's
    size). Files vanishing mid-walk (pgBackRest renames its temporaries) are skipped."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # renamed or removed while we looked
    return total


# -- running commands as the repository's OS user ------------------------------------------


async def _exec(args: list[str], what: str, os_user: str | None, timeout: float = 120) -> str:
    try:
        proc = await pb.exec_as(os_user, args)
    except OSError as exc:
        raise RestoreError(f"{what}: cannot run {args[0]}: {exc}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except BaseException:
        await pb.stop_process(proc)
        raise
    if proc.returncode != 0:
        lines = [ln for ln in (err or out).decode(errors="replace").strip().splitlines() if ln.strip()][-6:]
        raise RestoreError(f"{what} failed (exit {proc.returncode}): {scrub_text(' / '.join(lines)) or 'no output'}")
    return out.decode(errors="replace")


def _owner_ids(os_user: str | None) -> tuple[int, int] | None:
    kwargs, _ = pb.user_kwargs(os_user)
    return (kwargs["user"], kwargs["group"]) if kwargs else None


def _as_user(os_user: str | None) -> list[str]:
    return [f"# as the {os_user} OS user"] if os_user else []


# -- prepare ---------------------------------------------------------------------------------


def describe_prepare(paths: CopyPaths, os_user: str | None) -> list[str]:
    owner = f" -o {shlex.quote(os_user)}" if os_user else ""
    return [f"install -d -m 0700{owner} {shlex.quote(str(paths.root))} {shlex.quote(str(paths.data))} "
            f"{shlex.quote(str(paths.sockets))}",
            f"# and {paths.marker} naming this run"]


def prepare(paths: CopyPaths, run_id: str, os_user: str | None) -> str:
    """Create the copy's directories (empty data directory). Re-running for the same run (a
    restore interrupted by a crash) empties the data directory again; a directory made by
    another run, or not by dbops, is never touched."""
    if paths.root.exists():
        owner = read_marker(paths)
        if owner != run_id:
            who = f"run {owner}" if owner else "something other than dbops"
            raise RestoreError(f"{paths.root} already exists, made by {who}; it is left alone: choose another "
                               "restore_root, or remove it if it is no longer needed")
        if running_pid(paths) is not None:
            raise RestoreError(f"a server is running in {paths.data}; stop it before restoring again")
        if paths.data.exists():
            shutil.rmtree(paths.data)
        again = " (emptied again: the previous attempt of this run did not finish)"
    else:
        again = ""
    ids = _owner_ids(os_user)
    paths.root.parent.mkdir(parents=True, exist_ok=True)
    for d in (paths.root, paths.data, paths.sockets):
        d.mkdir(mode=0o700, exist_ok=True)
        d.chmod(0o700)
        if ids:
            os.chown(d, *ids)
    tmp = paths.marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"run_id": run_id}) + "\n", encoding="utf-8")
    os.replace(tmp, paths.marker)
    return f"{paths.data} ready{again}"


def orphaned_restores(paths: CopyPaths) -> list[int]:
    """pids of pgBackRest processes still restoring into this copy: when dbops is killed
    mid-restore, its pgbackrest child goes on writing, and a second attempt must not race it."""
    return pb.pids_with_args(f"--pg1-path={paths.data}", "restore")


async def stop_orphaned_restores(paths: CopyPaths, grace: float = 15.0) -> list[int]:
    """SIGTERM (pgBackRest stops cleanly on it), then SIGKILL after `grace`; returns the pids."""
    pids = orphaned_restores(paths)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # it finished meanwhile
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while orphaned_restores(paths) and loop.time() < deadline:
        await asyncio.sleep(0.1)
    for pid in orphaned_restores(paths):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it stopped after all
    while orphaned_restores(paths):
        await asyncio.sleep(0.05)
    return pids


def read_marker(paths: CopyPaths) -> str | None:
    try:
        return str(json.loads(paths.marker.read_text(encoding="utf-8"))["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- configure -------------------------------------------------------------------------------


def copy_settings(paths: CopyPaths, port: int, name: str) -> list[str]:
    return [
        f"port = {port}",
        "listen_addresses = '127.0.0.1'",
        f"unix_socket_directories = '{paths.sockets}'",
        f"cluster_name = '{name}'",
        "archive_mode = 'off'  # a copy must never push WAL into the source's repository",
        "synchronous_standby_names = ''  # a copy has no standbys; commits must not wait for any",
        "hot_standby = on  # answers queries while it recovers, so progress can be watched",
        "logging_collector = off",
        "log_destination = 'stderr'  # into postgres.log beside the data directory",
        "log_timezone = 'UTC'",
    ]


_MINIMAL_CONF = "# written by dbops: the backup held no postgresql.conf (it lives outside the data directory)\n"
_MINIMAL_HBA = ("# written by dbops: the backup held no pg_hba.conf\n"
                "local all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n")


def describe_configure(paths: CopyPaths, port: int, name: str) -> list[str]:
    return [f"# append to {paths.data / 'postgresql.auto.conf'} (after pgBackRest's recovery settings):",
            *copy_settings(paths, port, name)]


def configure(paths: CopyPaths, port: int, name: str, os_user: str | None) -> list[str]:
    """Write the copy's settings block (replacing an earlier one of ours); returns what was
    added besides it (configuration files a Debian-style cluster keeps outside the data dir)."""
    added = []
    ids = _owner_ids(os_user)
    for fname, text in (("postgresql.conf", _MINIMAL_CONF), ("pg_hba.conf", _MINIMAL_HBA)):
        f = paths.data / fname
        if not f.exists():
            f.write_text(text, encoding="utf-8")
            added.append(fname)
    auto = paths.data / "postgresql.auto.conf"
    try:
        text = auto.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RestoreError(f"{auto} is missing: the restore did not finish") from None
    text = re.sub(re.escape(BLOCK_BEGIN) + r".*?" + re.escape(BLOCK_END) + r"\n?", "", text, flags=re.S)
    text = text.rstrip("\n") + "\n\n" + "\n".join([BLOCK_BEGIN, *copy_settings(paths, port, name), BLOCK_END]) + "\n"
    tmp = auto.with_suffix(".dbops-tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, auto)
    if ids:
        for fname in ("postgresql.auto.conf", *added):
            os.chown(paths.data / fname, *ids)
    return added


def is_configured(paths: CopyPaths, port: int) -> bool:
    try:
        text = (paths.data / "postgresql.auto.conf").read_text(encoding="utf-8")
    except OSError:
        return False
    return BLOCK_BEGIN in text and f"port = {port}\n" in text


# -- start, stop -----------------------------------------------------------------------------


def running_pid(paths: CopyPaths) -> int | None:
    try:
        pid = int((paths.data / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, IndexError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"postgres" in cmdline else None


def _pg_ctl(bin_dir: Path, paths: CopyPaths, *args: str) -> list[str]:
    return [str(bin_dir / "pg_ctl"), "-D", str(paths.data), *args]


def describe_start(bin_dir: Path, paths: CopyPaths, os_user: str | None) -> list[str]:
    return _as_user(os_user) + [shlex.join(_pg_ctl(bin_dir, paths, "-l", str(paths.log), "-W", "start"))]


async def start(bin_dir: Path, paths: CopyPaths, os_user: str | None) -> str:
    """Start the copy without waiting (recovery can take hours; the next step watches it)."""
    if running_pid(paths) is not None:
        return f"already running (pid {running_pid(paths)})"
    await _exec(_pg_ctl(bin_dir, paths, "-l", str(paths.log), "-W", "start"), "pg_ctl start of the restored copy", os_user)
    # pg_ctl -W returns before the server has written postmaster.pid; wait for it (or its end).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while loop.time() < deadline:
        pid = running_pid(paths)
        if pid is not None:
            return f"started (pid {pid})"
        fatal = parse_recovery_log(read_log(paths)).fatal
        if fatal:
            raise RestoreError(f"the restored copy did not start: {fatal[-1]} (log: {paths.log})")
        await asyncio.sleep(0.2)
    raise RestoreError(f"the restored copy wrote no postmaster.pid within 60 s (log: {paths.log})")


def describe_stop(bin_dir: Path, paths: CopyPaths, os_user: str | None) -> list[str]:
    return _as_user(os_user) + [shlex.join(_pg_ctl(bin_dir, paths, "-m", "fast", "-w", "-t", "120", "stop"))]


async def stop(bin_dir: Path, paths: CopyPaths, os_user: str | None) -> None:
    if running_pid(paths) is None:
        return
    try:
        await _exec(_pg_ctl(bin_dir, paths, "-m", "fast", "-w", "-t", "120", "stop"), "pg_ctl stop of the restored copy",
                    os_user, timeout=150)
    except RestoreError:
        pid = running_pid(paths)
        if pid is None:
            return  # it stopped after all
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown: a copy has nothing to lose
        raise


def describe_remove(bin_dir: Path, paths: CopyPaths, os_user: str | None) -> list[str]:
    return describe_stop(bin_dir, paths, os_user) + [f"rm -rf {shlex.quote(str(paths.root))}"]


async def remove(bin_dir: Path, paths: CopyPaths, os_user: str | None, run_id: str) -> None:
    """Stop the copy and delete its directory; only a directory this run made."""
    if not paths.root.exists():
        return
    if read_marker(paths) != run_id:
        raise RestoreError(f"{paths.root} was not made by run {run_id}; it is left alone")
    await stop(bin_dir, paths, os_user)
    await asyncio.to_thread(shutil.rmtree, paths.root)


# -- reading the recovery outcome from the copy's log ----------------------------------------


@dataclass(frozen=True)
class RecoveryOutcome:
    # "recovery stopping before commit of transaction X, time T": the first commit after the
    # target, NOT applied (or "after": the commit at exactly the target, applied).
    stop: str | None  # "before" / "after"
    stop_xid: int | None
    stop_time: datetime | None
    last_commit: datetime | None  # "last completed transaction was at log time T"
    completed: bool  # "archive recovery complete": it left recovery
    ended_early: bool  # recovery reached the end of the WAL before the target
    fatal: tuple[str, ...]  # FATAL / PANIC lines


_STOP = re.compile(r"recovery stopping (before|after) commit of transaction (\d+), time (\S+ \S+)")
_LAST = re.compile(r"last completed transaction was at log time (\S+ \S+)")


def parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        return None


def parse_recovery_log(text: str) -> RecoveryOutcome:
    stop = list(_STOP.finditer(text))
    last = list(_LAST.finditer(text))
    fatal = tuple(ln.strip() for ln in text.splitlines() if " FATAL: " in ln or " PANIC: " in ln)
    s = stop[-1] if stop else None
    return RecoveryOutcome(
        stop=s.group(1) if s else None,
        stop_xid=int(s.group(2)) if s else None,
        stop_time=parse_time(s.group(3)) if s else None,
        last_commit=parse_time(last[-1].group(1)) if last else None,
        completed="archive recovery complete" in text,
        ended_early="recovery ended before configured recovery target was reached" in text,
        fatal=fatal,
    )


def read_log(paths: CopyPaths) -> str:
    try:
        return paths.log.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
