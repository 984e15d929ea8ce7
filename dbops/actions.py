"""Server-changing actions outside runbooks (cancel / terminate a backend), with their guard rails.

Order is fixed and is the point of this module: refuse in read-only mode -> the caller has shown
the plan and got a confirmation -> audit intent, fsynced -> the call on the pollers' loop ->
audit result. A declined confirmation is an abort record. Blocking (fsync, waiting on the hub's
loop): callers run these in a thread, never on the UI's loop.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbops.config import ClusterRef

if TYPE_CHECKING:
    from dbops.audit import AuditLog
    from dbops.poller import PollerHub


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


@dataclass(frozen=True)
class ActionOutcome:
    ok: bool
    message: str


def decline(audit: "AuditLog", act: BackendAction) -> None:
    audit.abort(
        action=act.action,
        environment=act.ref.environment,
        cluster=act.ref.name,
        member=act.member,
        params=act.params(),
        outcome="declined",
    )


def perform(audit: "AuditLog", hub: "PollerHub", act: BackendAction, allow_writes: bool) -> ActionOutcome:
    if not writes_allowed(act.ref, allow_writes):
        raise ReadOnly(read_only_reason(act.ref))
    intent = audit.intent(
        action=act.action,
        environment=act.ref.environment,
        cluster=act.ref.name,
        member=act.member,
        params=act.params(),
    )
    method = "terminate_backend" if act.terminate else "cancel_backend"
    future = hub.submit(lambda adapter: getattr(adapter, method)(act.pid), act.ref.key, act.member)
    try:
        signalled = bool(future.result())
    except (concurrent.futures.TimeoutError, TimeoutError) as exc:
        audit.result(intent, outcome="failed", error=f"no answer from {act.member}: {type(exc).__name__}")
        return ActionOutcome(False, f"{act.member} did not answer; the backend may or may not have been signalled")
    except Exception as exc:
        adapter_msg = str(exc) or type(exc).__name__
        audit.result(intent, outcome="failed", error=adapter_msg)
        return ActionOutcome(False, f"{method.replace('_', ' ')} {act.pid} failed: {adapter_msg}")
    if not signalled:
        audit.result(intent, outcome="no-such-backend", detail={"returned": False})
        return ActionOutcome(False, f"backend {act.pid} was not signalled (it had already ended)")
    audit.result(intent, outcome="ok", detail={"returned": True})
    verb = "terminated" if act.terminate else "cancelled"
    return ActionOutcome(True, f"backend {act.pid} {verb} on {act.member}")
