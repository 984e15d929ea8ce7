"""Server-changing actions outside runbooks (cancel / terminate a backend), with their guard rails.

Order is fixed and is the point of this module: refuse in read-only mode -> the caller has shown
the plan and got a confirmation -> audit intent, fsynced -> the call on the pollers' loop ->
audit result. A declined confirmation is an abort record. Blocking (fsync, waiting on the hub's
loop): callers run these in a thread, never on the UI's loop.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from dbops.config import ClusterRef

if TYPE_CHECKING:
    from dbops.audit import AuditLog
    from dbops.engines.base import Adapter
    from dbops.engines.postgres.data import Session
    from dbops.hub import Hub


class ReadOnly(Exception):
    """Raised instead of silently doing nothing when writes are not allowed."""


def writes_allowed(ref: ClusterRef, allow_writes: bool) -> bool:
    return allow_writes or ref.env.mode == "operator"


def read_only_reason(ref: ClusterRef) -> str:
    return (
        f"environment {ref.environment!r} is read-only: start dbops with --allow-writes, "
        f'or set mode = "operator" under [environments.{ref.environment}]'
    )


@dataclass(frozen=True)
class BackendAction:
    """Cancel (pg_cancel_backend) or terminate (pg_terminate_backend) one backend."""

    ref: ClusterRef
    member: str
    pid: int
    terminate: bool
    query: str = ""
    blocks: tuple[int, ...] = ()

    @property
    def action(self) -> str:
        return "postgres.terminate_backend" if self.terminate else "postgres.cancel_backend"

    @property
    def sql(self) -> str:
        fn = "pg_terminate_backend" if self.terminate else "pg_cancel_backend"
        return f"SELECT {fn}({self.pid})"

    @property
    def needs_typed_pid(self) -> bool:
        """Terminating on production ends a client's connection: make the operator type the pid."""
        return self.terminate and self.ref.production

    def params(self) -> dict[str, Any]:
        return {"pid": self.pid, "sql": self.sql, "query": self.query[:500], "blocks": list(self.blocks)}


@runtime_checkable
class _Backends(Protocol):
    """What re-reading a backend needs of a member's adapter (PostgreSQL's: the only engine with
    backends to cancel or terminate). A protocol, so that this module imports no engine."""

    async def session(self, pid: int) -> Session | None: ...


def _backends(adapter: Adapter) -> _Backends:
    if not isinstance(adapter, _Backends):
        raise TypeError(f"{type(adapter).__name__} has no backends to act on (backend actions are PostgreSQL's)")
    return adapter


@dataclass(frozen=True)
class ActionOutcome:
    ok: bool
    message: str


def decline(audit: AuditLog, act: BackendAction) -> None:
    _abort(audit, act, "declined")


def _abort(audit: AuditLog, act: BackendAction, outcome: str, reason: str | None = None) -> None:
    audit.abort(
        action=act.action,
        environment=act.ref.environment,
        cluster=act.ref.name,
        member=act.member,
        params=act.params(),
        outcome=outcome,
        reason=reason,
    )


def finish(audit: AuditLog, intent: dict[str, Any], ok: bool, message: str, **result: Any) -> ActionOutcome:
    """Write the result record. If that fails after the server was already told, say both."""
    from dbops.audit import AuditError

    try:
        audit.result(intent, **result)
    except AuditError as exc:
        return ActionOutcome(ok, f"{message}; but the audit result record could not be written: {exc}")
    return ActionOutcome(ok, message)


def perform(audit: AuditLog, hub: Hub, act: BackendAction, allow_writes: bool) -> ActionOutcome:
    """Signal one backend: re-read it, write the intent, signal, write the result."""
    if not writes_allowed(act.ref, allow_writes):
        raise ReadOnly(read_only_reason(act.ref))
    key, member, pid = act.ref.key, act.member, act.pid
    # The row the operator confirmed is up to one refresh old. A pooled connection's pid may be
    # running something else by now: re-read it and refuse if it is not what was confirmed.
    try:
        current = hub.submit(lambda adapter: _backends(adapter).session(pid), key, member).result()
    except Exception as exc:
        _abort(audit, act, "target-unreadable", reason=_describe(exc))
        return ActionOutcome(False, f"could not re-read backend {pid} on {member} ({_describe(exc)}); nothing was sent")
    if current is None:
        _abort(audit, act, "target-gone")
        return ActionOutcome(False, f"backend {pid} has already ended; nothing was sent")
    if current.query != act.query:
        _abort(audit, act, "target-changed", reason=f"now running: {current.query[:300]}")
        return ActionOutcome(False, f"backend {pid} is now running a different query; nothing was sent (look again and re-select)")

    intent = audit.intent(action=act.action, environment=act.ref.environment, cluster=act.ref.name, member=member, params=act.params())
    method = "terminate_backend" if act.terminate else "cancel_backend"
    try:
        signalled = bool(hub.submit(lambda adapter: getattr(adapter, method)(pid), key, member).result())
    except (concurrent.futures.TimeoutError, TimeoutError) as exc:
        return finish(
            audit, intent, False, f"{member} did not answer; backend {pid} may or may not have been signalled",
            outcome="unknown", error=f"no answer from {member}: {_describe(exc)}",
        )
    except Exception as exc:
        return finish(audit, intent, False, f"{method.replace('_', ' ')} {pid} failed: {_describe(exc)}", outcome="failed", error=_describe(exc))
    if not signalled:
        return finish(audit, intent, False, f"backend {pid} was not signalled (it had already ended)", outcome="no-such-backend", detail={"returned": False})
    verb = "terminated" if act.terminate else "cancelled"
    return finish(audit, intent, True, f"backend {pid} {verb} on {member}", outcome="ok", detail={"returned": True})


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
