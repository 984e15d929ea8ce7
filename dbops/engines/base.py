"""The engine adapter contract (Harlequin's adapter shape, async).

An adapter serves one member of one cluster. The poller calls `collect()` under a timeout and
never concurrently with itself; actions are awaited on the same event loop as the poller so one
connection pool serves both. Adapters never import the UI or each other.
"""

from __future__ import annotations

import abc
import asyncio
from typing import Any, ClassVar

from dbops.config import ClusterRef, Member
from dbops.model import Reachability
from dbops.secrets import SecretError
from dbops.tls import TLSConfigError


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


class Adapter(abc.ABC):
    kind: ClassVar[str]

    def __init__(self, cluster: ClusterRef, member: Member) -> None:
        self.cluster = cluster
        self.member = member

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
