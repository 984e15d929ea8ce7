"""One runbook at a time per cluster.

A second console starting a runbook on the same cluster is refused with a message naming the
holder (operator, host, run id, since). Backends:
- LocalLock: an flock'ed file in <state dir>/locks; the kernel releases it when the holder dies,
  so a crashed dbops never leaves a stale lock.
- PostgresAdvisoryLock: pg_try_advisory_lock on a connection to the cluster itself, so consoles
  on different bastion hosts see each other. The holder's description rides in its connection's
  application_name, readable by anyone from pg_stat_activity.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol


class LockHeld(Exception):
    """Another run holds the cluster. The message names it."""


@dataclass(frozen=True)
class Holder:
    operator: str
    host: str
    run_id: str
    since: float

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"run {self.run_id} by {self.operator} on {self.host} since {since}"


def me(run_id: str) -> Holder:
    user = getpass.getuser()
    sudo = os.environ.get("SUDO_USER")
    return Holder(f"{sudo} (as {user})" if sudo and sudo != user else user, socket.gethostname(), run_id, time.time())


class ClusterLock(Protocol):
    async def acquire(self) -> None: ...
    async def release(self) -> None: ...


class LocalLock:
    def __init__(self, state: Path, cluster_key: str, holder: Holder) -> None:
        d = state / "locks"
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = d / (cluster_key.replace("/", "__") + ".lock")
        self.holder = holder
        self._fd: int | None = None

    async def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_holder(fd)
            os.close(fd)
            raise LockHeld(f"another runbook holds this cluster: {info}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.holder.__dict__).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    async def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0)
        return Holder(**json.loads(raw)).describe()
    except (OSError, ValueError, TypeError):
        return "holder unknown (lock file unreadable)"


def advisory_key(cluster_key: str) -> int:
    """A stable signed 64-bit key per cluster, in dbops' own namespace."""
    digest = hashlib.sha256(f"dbops-runbook-lock:{cluster_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresAdvisoryLock:
    """Held on a dedicated connection for the whole run; the server drops it if we die.

    `connect(application_name)` opens that connection (asyncpg). The lock lives on whichever
    member was primary when the run started; a switchover fences client sessions but spares
    dbops' own, and the lock is only about keeping two consoles apart, not about the data.
    """

    def __init__(self, connect: Callable[[str], Awaitable[Any]], cluster_key: str, holder: Holder) -> None:
        self.connect = connect
        self.key = advisory_key(cluster_key)
        self.holder = holder
        self._conn: Any = None

    @property
    def application_name(self) -> str:
        # pg_stat_activity shows it to the second console; PostgreSQL keeps 63 bytes.
        return f"dbops-lock {self.holder.run_id} {self.holder.operator}@{self.holder.host}"[:63]

    async def acquire(self) -> None:
        conn = await self.connect(self.application_name)
        got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key)
        if not got:
            row = await conn.fetchrow(
                "SELECT a.application_name, a.client_addr::text AS addr, a.backend_start FROM pg_locks l "
                "JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' AND l.granted "
                "AND ((l.classid::bigint << 32) | l.objid::bigint) = ($1::bigint & x'ffffffffffffffff'::bigint)",
                self.key,
            )
            await conn.close()
            who = "holder unknown"
            if row is not None:
                who = f"{row['application_name']} from {row['addr'] or 'local socket'} since {row['backend_start']:%Y-%m-%d %H:%M:%S %Z}"
            raise LockHeld(f"another runbook holds this cluster: {who}")
        self._conn = conn

    async def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()  # closing the session releases the advisory lock


class _NoPrimary(Exception):
    pass


class FallbackLock:
    """The cluster's advisory lock when a primary answers (in a failover none does), else this
    host's lock file; `note` says which was used when it is not the first."""

    def __init__(self, primary: ClusterLock, local: ClusterLock, note: Callable[[str], None]) -> None:
        self.primary, self.local, self.note = primary, local, note
        self.used: ClusterLock | None = None

    async def acquire(self) -> None:
        try:
            await self.primary.acquire()
            self.used = self.primary
        except _NoPrimary:
            self.note("no primary answers; using this host's lock file instead of the cluster's advisory lock")
            await self.local.acquire()
            self.used = self.local

    async def release(self) -> None:
        if self.used is not None:
            await self.used.release()


def lock_for(ref: Any, run_id: str, state: Path, note: Callable[[str], None]) -> ClusterLock:
    """The lock backend for a cluster: PostgreSQL clusters lock on the cluster itself."""
    holder = me(run_id)
    local = LocalLock(state, ref.key, holder)
    if ref.cluster.engine != "postgres":
        return local
    from dbops.engines.postgres.adapter import connect_primary

    async def connect(application_name: str) -> Any:
        conn = await connect_primary(ref, application_name)
        if conn is None:
            raise _NoPrimary()
        return conn

    return FallbackLock(PostgresAdvisoryLock(connect, ref.key, holder), local, note)
