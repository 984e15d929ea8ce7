"""The engine adapter contract (Harlequin's adapter shape, async).

An adapter serves one member of one cluster. The poller calls `collect()` under a timeout and
never concurrently with itself; actions are awaited on the same event loop as the poller so one
connection pool serves both. Adapters never import the UI or each other.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import ssl
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

from dbops.config import ClusterRef, Member
from dbops.model import ClusterHealth, MemberHealth, Metric, Reachability, Severity, Snapshot, first_line
from dbops.secrets import Secret, SecretError, redact
from dbops.tls import TLSConfigError

_Data = TypeVar("_Data")

# Driver modules imported by import_off_loop, kept once their import has finished (sys.modules
# holds a module while another thread is still importing it, so it is not the cache).
_imported: dict[str, Any] = {}


async def import_off_loop(name: str) -> Any:
    """Import a driver or client library in a worker thread, once: the poller's event loop
    serves every cluster and the UI's first paint never waits for a driver."""
    if name not in _imported:
        _imported[name] = await asyncio.to_thread(importlib.import_module, name)
    return _imported[name]


def names_by_address(members: Iterable[Member]) -> dict[str, str]:
    """host:port -> configured name: servers report each other by address, operators know names."""
    return {f"{m.host}:{m.port}": m.name for m in members}


def common_reachability(exc: BaseException, where: str, timeout: float,
                        user: str | None = None) -> tuple[Reachability, str] | None:
    """What every engine's classify() says the same way, before its driver's own errors: a
    secret that cannot be read, TLS settings that cannot be used, no answer in time."""
    if isinstance(exc, SecretError):
        return Reachability.AUTH, (f"password for {user}: {exc}" if user else f"password: {exc}")
    if isinstance(exc, TLSConfigError):
        return Reachability.TLS, str(exc)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return Reachability.TIMEOUT, f"no answer from {where} within {timeout:g}s"
    return None


def tls_reachability(chain: Iterable[BaseException], where: str) -> tuple[Reachability, str] | None:
    """A TLS failure anywhere in an exception's chain (drivers wrap the ssl module's error in
    their own): an untrusted certificate first, as the more precise of the two. The attributes
    are read with getattr because an SSLError raised by a library has neither."""
    chain = list(chain)
    cert = next((e for e in chain if isinstance(e, ssl.SSLCertVerificationError)), None)
    if cert is not None:
        return Reachability.TLS, f"TLS certificate of {where} not trusted: {getattr(cert, 'verify_message', None) or first_line(str(cert))}"
    tls_error = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if tls_error is not None:
        return Reachability.TLS, f"TLS handshake with {where} failed: {getattr(tls_error, 'reason', None) or first_line(str(tls_error))}"
    return None


def redacted(judged: tuple[Reachability, str], *secrets: Secret | None) -> tuple[Reachability, str]:
    """A classify() result with the secrets taken out of its message: drivers quote connection
    strings and server replies, which may hold a password."""
    reach, message = judged
    return reach, redact(message, *secrets)


def classify_redacted(exc: BaseException, where: str, timeout: float,
                      driver: Callable[[BaseException, str, float], tuple[Reachability, str]],
                      *secrets: Secret | None) -> tuple[Reachability, str]:
    """classify() for an engine whose `driver` judges its client library's errors: the cases
    every engine says the same way first, then the driver's, the message redacted."""
    return redacted(common_reachability(exc, where, timeout) or driver(exc, where, timeout), *secrets)


def unit_data(snapshots: dict[str, Snapshot], kind: type[_Data]) -> tuple[Snapshot, _Data | None]:
    """A cluster polled as one unit has one snapshot: it, and its data when the poll brought
    data of `kind` (None when pending or failed)."""
    unit = next(iter(snapshots.values()))
    return unit, unit.data if isinstance(unit.data, kind) else None


def no_data_health(ref: ClusterRef, unit: Snapshot, role: str, metric: str, nobody: str) -> ClusterHealth:
    """A cluster polled as one unit (one adapter reads every member) whose poll brought no data.

    Not polled yet: one UNKNOWN row. Otherwise one CRIT row per configured member carrying the
    unit's error, so every member the operator expects is listed and says why; `metric` and
    `nobody` name the cluster-wide line ("brokers", "no broker answers").
    """
    if unit.reachability is Reachability.PENDING:
        pending = MemberHealth(unit, "?", Severity.UNKNOWN, (Metric("reachability", Severity.UNKNOWN, "not polled yet"),))
        return ClusterHealth(ref.environment, ref.name, ref.cluster.engine, Severity.UNKNOWN, (pending,))
    rows = []
    for m in ref.cluster.members:
        snap = Snapshot(unit.environment, unit.cluster, m.name, unit.engine, unit.reachability, unit.taken_at,
                        unit.duration_ms, None, unit.error, unit.last_good, unit.last_good_at, unit.seq)
        rows.append(MemberHealth(snap, role, Severity.CRIT,
                                 (Metric("reachability", Severity.CRIT, f"{unit.reachability.value}: {unit.error}"),)))
    return ClusterHealth(ref.environment, ref.name, ref.cluster.engine, Severity.CRIT, tuple(rows),
                         (Metric(metric, Severity.CRIT, f"{nobody}: {unit.error}"),))


class Adapter(abc.ABC):
    kind: ClassVar[str]

    def __init__(self, cluster: ClusterRef, member: Member) -> None:
        self.cluster = cluster
        self.member = member
        # False while nobody has the cluster open (the hub says so): a refresh may leave out
        # what only its pane shows (PostgreSQL's top statements, Redis' command statistics),
        # never what the overview or the judgement reads.
        self.detailed = True

    @abc.abstractmethod
    async def collect(self) -> Any:
        """One poll: (re)connect if needed and return the engine's frozen data object."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. Safe to call more than once and after a failed connect."""

    @abc.abstractmethod
    def classify(self, exc: BaseException) -> tuple[Reachability, str]:
        """Map an exception from collect() to a reachability and a message safe to show
        (no secret, no traceback)."""
