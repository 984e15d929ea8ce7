"""One runbook at a time per cluster.

A second console starting a runbook on the same cluster is refused with a message naming the
holder (operator, host, run id, since). Backends:
- LocalLock: an flock'ed file in <state dir>/locks; the kernel releases it when the holder dies,
  so a crashed dbops never leaves a stale lock.
- PostgresAdvisoryLock: pg_try_advisory_lock on a connection to the cluster itself, so consoles
  on different bastion hosts see each other. The holder's description rides in its connection's
  application_name, readable by anyone from pg_stat_activity.
- LeaseLock: with [locks.kubernetes], a coordination.k8s.io/v1 Lease per cluster in that
  namespace, for consoles on hosts that share no file system and clusters dbops cannot lock
  itself. Taken in addition to the backends above (AllLocks), never instead of them.
- The coordination database ([locks.postgres]): an advisory lock per cluster there, on a
  connection held for the run. It is the lock to have for failover: it does not depend on the
  cluster under repair having a primary, and it does not move when the primary does.

In a production environment a run that changes servers needs a lock other consoles see (the
coordination database, a Lease, or the cluster's own advisory lock when a primary answers);
this host's lock file alone is refused there unless overridden with a reason (SHARED_LOCK).
The cluster's own advisory lock follows the primary: after each step, if its connection is no
longer on a writable primary (a switchover fenced or restarted it), it is taken on the new one.
"""

from __future__ import annotations

import asyncio
import fcntl
import getpass
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

# --override shared-lock=REASON: run in production with only this host's lock file.
SHARED_LOCK = "shared-lock"


class LockHeld(Exception):
    """Another run holds the cluster (the message names it), or no lock that other consoles
    see could be taken where one is required."""


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
    # The reason given to run with only this host's lock where a shared one is required.
    overridden: str | None

    async def acquire(self) -> None: ...
    async def release(self) -> None: ...
    # After a step that changed a server: keep the lock valid if it lived on the old primary.
    async def follow(self) -> None: ...
    # Whether other consoles (other hosts) see this lock while it is held.
    @property
    def shared(self) -> bool: ...


class LocalLock:
    overridden: str | None = None
    shared = False  # other hosts do not see a file on this one

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

    async def follow(self) -> None:
        return None


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


# Whether a session is on a primary that takes writes (not a standby, not fenced read-only).
SQL_WRITABLE = "SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'"


class PostgresAdvisoryLock:
    """Held on a dedicated connection for the whole run; the server drops it if we die.

    `connect(application_name)` opens that connection (asyncpg): to the coordination database,
    or to the cluster's primary. On the cluster, the lock lives on whichever member was primary
    when the run started; `find_writable` lets follow() take it on the new primary once that one
    is promoted, so it never stays tied to the old primary (fenced, then restarted by a rejoin,
    which would drop it silently) while a second console could take it on the new one.
    """

    overridden: str | None = None
    shared = True

    def __init__(self, connect: Callable[[str], Awaitable[Any]], cluster_key: str, holder: Holder, *,
                 where: str = "the cluster's primary", find_writable: Callable[[str], Awaitable[Any]] | None = None,
                 note: Callable[[str], None] = lambda line: None) -> None:
        self.connect = connect
        self.key = advisory_key(cluster_key)
        self.holder = holder
        self.where = where
        self.find_writable = find_writable
        self.note = note
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
            raise LockHeld(f"another runbook holds this cluster: {who} (advisory lock on {self.where})")
        self._conn = conn

    async def follow(self) -> None:
        if self._conn is None or self.find_writable is None:
            return
        try:
            if await self._conn.fetchval(SQL_WRITABLE):
                return
        except Exception as exc:  # its server went away (a restart): the lock went with it
            self.note(f"the runbook lock's connection ended ({type(exc).__name__}); taking it on the new primary")
        new = await self.find_writable(self.application_name)
        if new is None:
            return  # no writable primary yet (between fence and promotion): keep what we hold
        if not await new.fetchval("SELECT pg_try_advisory_lock($1)", self.key):
            await new.close()
            self.note("ANOTHER CONSOLE holds the runbook lock on the new primary; stop and check who before going on")
            return
        old, self._conn = self._conn, new
        try:
            await old.close()
        except Exception as exc:  # already gone with its server; the new lock is held either way
            self.note(f"closing the old lock connection: {type(exc).__name__}")
        self.note("the runbook lock moved to the new primary")

    async def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()  # closing the session releases the advisory lock


class _NoPrimary(Exception):
    pass


class FallbackLock:
    """The cluster's advisory lock when a primary answers (in a failover none does), else this
    host's lock file; `note` says which was used when it is not the first."""

    overridden: str | None = None

    def __init__(self, primary: ClusterLock, local: ClusterLock, note: Callable[[str], None]) -> None:
        self.primary, self.local, self.note = primary, local, note
        self.used: ClusterLock | None = None

    @property
    def shared(self) -> bool:
        return self.used is not None and self.used.shared

    async def follow(self) -> None:
        if self.used is not None:
            await self.used.follow()

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
            self.used = None


def lease_name(cluster_key: str) -> str:
    """The Lease's name for a cluster: `dbops-<env>-<cluster>` made DNS-1123 safe, with a short
    hash of the key so that two keys that clean up alike ("a_b", "a.b") get different Leases."""
    digest = hashlib.sha256(cluster_key.encode()).hexdigest()[:8]
    words = re.sub(r"[^a-z0-9]+", "-", cluster_key.lower()).strip("-")
    return f"dbops-{words[:253 - 16]}-{digest}".replace("--", "-")


class LeaseLock:
    """A coordination.k8s.io/v1 Lease held for the run: acquired by creating it, or by taking it
    over when it is free (released, or expired: renewTime + leaseDurationSeconds past); every
    write carries the resourceVersion read, so two consoles racing for it cannot both win (the
    loser gets 409 Conflict). Renewed every third of its duration while the run lasts; released
    (holderIdentity cleared) at the end. A console that dies stops renewing; the Lease expires."""

    overridden: str | None = None
    shared = True

    async def follow(self) -> None:
        return None

    def __init__(self, leases: Any, cluster_key: str, holder: Holder, note: Callable[[str], None]) -> None:
        self.leases = leases
        self.cluster_key = cluster_key
        self.name = lease_name(cluster_key)
        self.holder = holder
        self.note = note
        self.identity = f"{holder.operator} on {holder.host}, run {holder.run_id}"
        self._conn: Any = None
        self._lease: dict[str, Any] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._stop_renewing: asyncio.Event | None = None

    @property
    def where(self) -> str:
        return f"Lease {self.leases.namespace}/{self.name}"

    async def acquire(self) -> None:
        from dbops.platform.kubernetes import KubernetesError

        try:
            await asyncio.to_thread(self._acquire)
        except KubernetesError as exc:
            self._close()
            raise LockHeld(f"cannot take the runbook lock ({self.where}): {exc}") from None
        except LockHeld:
            self._close()
            raise
        self._stop_renewing = asyncio.Event()
        self._renewer = asyncio.create_task(self._renew_loop(self._stop_renewing))

    def _spec(self, now: datetime, acquired: datetime, transitions: int) -> dict[str, Any]:
        from dbops.platform.kubernetes import micro_time

        return {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.leases.duration_seconds),
                "acquireTime": micro_time(acquired), "renewTime": micro_time(now), "leaseTransitions": transitions}

    def _acquire(self) -> None:
        from dbops.platform import kubernetes as k8s

        self._conn = k8s.connect_leases(self.leases)
        now = datetime.now(UTC)
        lease = k8s.get_lease(self._conn, self.name)
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.leases.namespace,
                                 "labels": {"app.kubernetes.io/managed-by": "dbops"},
                                 "annotations": {"dbops.dev/cluster": self.cluster_key}},
                    "spec": self._spec(now, now, 0)}
            try:
                self._lease = k8s.create_lease(self._conn, body)
                return
            except k8s.KubernetesError as exc:
                if exc.status != 409:
                    raise
                lease = k8s.get_lease(self._conn, self.name)  # another console created it first
                if lease is None:
                    raise LockHeld(f"another console took the runbook lock ({self.where}) at the same moment; try again") from None
        spec = lease.get("spec") or {}
        who = spec.get("holderIdentity") or ""
        if who and who != self.identity and not _expired(spec, now):
            raise LockHeld(f"another runbook holds this cluster: {_describe(spec, now)} ({self.where})")
        if who and who != self.identity:
            self.note(f"{self.where} held by {who} expired {_since_expiry(spec, now)}; taking it over")
        transitions = int(spec.get("leaseTransitions") or 0) + (1 if who != self.identity else 0)
        taken = {**lease, "spec": {**spec, **self._spec(now, now, transitions)}}
        try:
            self._lease = k8s.replace_lease(self._conn, taken)
        except k8s.KubernetesError as exc:
            if exc.status != 409:
                raise
            now_spec = (k8s.get_lease(self._conn, self.name) or {}).get("spec") or {}
            raise LockHeld(f"another console took the runbook lock first: {_describe(now_spec, datetime.now(UTC))} ({self.where})") from None

    async def _renew_loop(self, stop: asyncio.Event) -> None:
        every = max(1.0, self.leases.duration_seconds / 3)
        while True:
            try:
                await asyncio.wait_for(stop.wait(), every)
                return  # released
            except TimeoutError:
                pass
            try:
                lost = await asyncio.to_thread(self._renew)
            except Exception as exc:  # the run goes on; the operator is told the lock may lapse
                self.note(f"could not renew {self.where} (it expires {self.leases.duration_seconds} s after the last renewal): {exc}")
                continue
            if lost:
                self.note(f"{self.where} was taken over by {lost}; this run no longer holds the cluster's lock")
                return

    def _renew(self) -> str | None:
        """Renews the Lease; the new holder's identity if another console took it over."""
        from dbops.platform import kubernetes as k8s

        assert self._lease is not None
        spec = {**(self._lease.get("spec") or {}), "renewTime": k8s.micro_time(datetime.now(UTC))}
        try:
            self._lease = k8s.replace_lease(self._conn, {**self._lease, "spec": spec})
            return None
        except k8s.KubernetesError as exc:
            if exc.status != 409:
                raise
        current = k8s.get_lease(self._conn, self.name)
        who = ((current or {}).get("spec") or {}).get("holderIdentity") or ""
        if current is not None and who == self.identity:
            self._lease = current  # only our own earlier renewal raced this one
            return self._renew()
        return who or "nobody (it was released)"

    async def release(self) -> None:
        if self._renewer is not None and self._stop_renewing is not None:
            # Not cancelled: a renewal under way in its thread would go on and race the release
            # (a 409, and the Lease left held until it expires). It ends first; a call is bounded
            # by the connection's timeout.
            self._stop_renewing.set()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = self._stop_renewing = None
        if self._lease is None:
            self._close()
            return
        try:
            await asyncio.to_thread(self._release)
        except Exception as exc:  # the Lease then expires on its own after its duration
            self.note(f"could not release {self.where}; it expires {self.leases.duration_seconds} s after its last renewal: {exc}")
        finally:
            self._lease = None
            self._close()

    def _release(self) -> None:
        from dbops.platform import kubernetes as k8s

        assert self._lease is not None
        spec = {k: v for k, v in (self._lease.get("spec") or {}).items() if k not in ("holderIdentity", "renewTime", "acquireTime")}
        try:
            k8s.replace_lease(self._conn, {**self._lease, "spec": spec})
            return
        except k8s.KubernetesError as exc:
            if exc.status != 409:
                raise
        current = k8s.get_lease(self._conn, self.name)
        if current is not None and ((current.get("spec") or {}).get("holderIdentity") or "") == self.identity:
            self._lease = current  # still ours: only the resourceVersion moved on
            self._release()
            return
        self.note(f"{self.where} had already been taken over; left to its new holder")

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _lease_times(spec: dict[str, Any]) -> tuple[datetime | None, int]:
    from dbops.platform.kubernetes import parse_time

    return parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime")), int(spec.get("leaseDurationSeconds") or 0)


def _expired(spec: dict[str, Any], now: datetime) -> bool:
    renewed, duration = _lease_times(spec)
    return renewed is None or renewed + timedelta(seconds=duration) < now


def _since_expiry(spec: dict[str, Any], now: datetime) -> str:
    renewed, duration = _lease_times(spec)
    if renewed is None:
        return "(never renewed)"
    return f"{(now - renewed - timedelta(seconds=duration)).total_seconds():.0f} s ago"


def _describe(spec: dict[str, Any], now: datetime) -> str:
    from dbops.platform.kubernetes import parse_time

    who = spec.get("holderIdentity") or "an unnamed holder"
    acquired = parse_time(spec.get("acquireTime"))
    renewed, duration = _lease_times(spec)
    parts = [str(who)]
    if acquired is not None:
        parts.append(f"since {acquired:%Y-%m-%d %H:%M:%S} UTC")
    if renewed is not None:
        left = (renewed + timedelta(seconds=duration) - now).total_seconds()
        parts.append(f"renewed {(now - renewed).total_seconds():.0f} s ago, expires in {max(0.0, left):.0f} s unless renewed")
    return ", ".join(parts)


class AllLocks:
    """Several locks taken in order and released in reverse; all or none."""

    overridden: str | None = None

    def __init__(self, locks: list[ClusterLock]) -> None:
        self.locks = locks
        self._held: list[ClusterLock] = []

    @property
    def shared(self) -> bool:
        return any(lock.shared for lock in self._held)

    async def follow(self) -> None:
        for lock in self._held:
            await lock.follow()

    async def acquire(self) -> None:
        for lock in self.locks:
            try:
                await lock.acquire()
            except BaseException:
                await self.release()
                raise
            self._held.append(lock)

    async def release(self) -> None:
        while self._held:
            await self._held.pop().release()


class RequireShared:
    """In production, a run that changes servers must hold a lock other consoles see. When only
    this host's lock file could be taken, the run is refused (the lock released), unless the
    operator gave a reason to go on without one (`overridden`, audited with the run)."""

    def __init__(self, inner: ClusterLock, ref: Any, reason: str | None, note: Callable[[str], None]) -> None:
        self.inner, self.ref, self.reason, self.note = inner, ref, reason, note
        self.overridden: str | None = None

    @property
    def shared(self) -> bool:
        return self.inner.shared

    async def acquire(self) -> None:
        await self.inner.acquire()
        if self.inner.shared:
            return
        if self.reason:
            self.overridden = self.reason
            self.note(f"production without a lock other consoles see (overridden: {self.reason})")
            return
        await self.inner.release()
        raise LockHeld(
            f"{self.ref.key} is a production environment: a run that changes servers needs a lock every console "
            "shares, and only this host's lock file could be taken (no primary answers, and neither [locks.postgres] "
            f"nor [locks.kubernetes] is configured). Configure one, or run with --override {SHARED_LOCK}=REASON (audited)"
        )

    async def release(self) -> None:
        await self.inner.release()

    async def follow(self) -> None:
        await self.inner.follow()


def lock_for(ref: Any, run_id: str, state: Path, note: Callable[[str], None], leases: Any = None,
             coordination: Any = None, overrides: dict[str, str] | None = None, changes_servers: bool = True) -> ClusterLock:
    """The lock backend for a cluster: with `coordination` ([locks.postgres]) an advisory lock in
    that database; else PostgreSQL clusters lock on the cluster itself (this host's file when no
    primary answers); with `leases` ([locks.kubernetes]) a Lease is taken first, in addition. In
    production, a run that changes servers is refused without one of those (RequireShared)."""
    locks: list[ClusterLock] = []
    if leases is not None:
        locks.append(LeaseLock(leases, ref.key, me(run_id), note))
    locks.append(_base_lock(ref, run_id, state, note, coordination))
    lock: ClusterLock = locks[0] if len(locks) == 1 else AllLocks(locks)
    if ref.production and changes_servers:
        return RequireShared(lock, ref, (overrides or {}).get(SHARED_LOCK), note)
    return lock


def _base_lock(ref: Any, run_id: str, state: Path, note: Callable[[str], None], coordination: Any = None) -> ClusterLock:
    holder = me(run_id)
    local = LocalLock(state, ref.key, holder)
    if coordination is not None:
        from dbops import coordination as coord

        async def connect_coordination(application_name: str) -> Any:
            try:
                return await coord.connect(coordination, application_name)
            except coord.CoordinationError as exc:
                raise LockHeld(f"cannot take the runbook lock: {exc}") from None

        return AllLocks([PostgresAdvisoryLock(connect_coordination, ref.key, holder, where=coord.describe(coordination)), local])
    if ref.cluster.engine != "postgres":
        return local
    from dbops.engines.postgres.adapter import PostgresAdapter, connect_primary

    async def connect(application_name: str) -> Any:
        conn = await connect_primary(ref, application_name)
        if conn is None:
            raise _NoPrimary()
        return conn

    async def find_writable(application_name: str) -> Any:
        for m in ref.cluster.members:
            try:
                conn = await PostgresAdapter(ref, m).open_connection(application_name)
            except Exception as exc:  # an unreachable member is expected mid-failover: try the next
                note(f"looking for the new primary: {m.name} does not answer ({type(exc).__name__})")
                continue
            try:
                if await conn.fetchval(SQL_WRITABLE):
                    return conn
            except Exception as exc:  # it went away between connect and query: try the next
                note(f"looking for the new primary: {m.name}: {type(exc).__name__}")
            await conn.close()
        return None

    return FallbackLock(PostgresAdvisoryLock(connect, ref.key, holder, find_writable=find_writable, note=note), local, note)
