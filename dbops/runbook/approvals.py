"""The two-person rule: a run's plan, approved by a second operator before its destructive steps.

An environment with `approvals = 2` makes a run stop at its first destructive step (or a step
marked `approval = True`), publish its plan (the canonical text and its SHA-256) in the
coordination database every console shares ([locks.postgres]), and wait until another operator
(another login uid) approves exactly that plan with `dbops runbook approve RUN_ID`.

- Identity is the human's: the real uid (and its login name from the password database). Under
  sudo, SUDO_UID/SUDO_USER name the human, but only when the process really is root: an
  unprivileged process could set SUDO_UID to anything. $USER alone is never trusted.
- An approval is bound to the plan's hash: a run that re-renders a different plan (a resume
  after the cluster changed) publishes a new request, which voids the earlier approval.
- An approval expires `approval_ttl_seconds` after it was given; times are the database's
  clock (now()), so two bastions whose clocks disagree still agree on expiry.
- Every failure to reach the database is a one-line message with secrets scrubbed; the caller
  fails closed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dbops.secrets import scrub_text

if TYPE_CHECKING:
    from dbops.audit import AuditLog
    from dbops.config import ClusterRef, CoordinationDb
    from dbops.runbook.model import Plan

TABLE = "dbops_approvals"


class ApprovalError(Exception):
    """The coordination database cannot be used (unreachable, refused, bad config). One line."""


class ApprovalRefused(Exception):
    """An approval that is not allowed (self-approval, a changed plan, no such request). One line."""


# -- identity ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operator:
    name: str
    uid: int
    host: str

    def describe(self) -> str:
        return f"{self.name} (uid {self.uid}) on {self.host}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "uid": self.uid, "host": self.host}


def _login_of(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def current_operator(environ: dict[str, str] | None = None, uid: int | None = None, host: str | None = None) -> Operator:
    """The human at the keyboard: the real uid and its login; under sudo (only when really root),
    the uid and login that ran sudo."""
    env = os.environ if environ is None else environ
    real = os.getuid() if uid is None else uid
    host = host or socket.gethostname()
    sudo_uid = env.get("SUDO_UID", "")
    if real == 0 and sudo_uid.isdigit() and int(sudo_uid) != 0:
        human = int(sudo_uid)
        name = _login_of(human) or env.get("SUDO_USER") or f"uid{human}"
        return Operator(name, human, host)
    return Operator(_login_of(real) or f"uid{real}", real, host)


# -- the plan an approver reads -----------------------------------------------------------------


def plan_text(plan: Plan, ref: ClusterRef, params: dict[str, Any]) -> str:
    """The canonical text of a plan: what will run, where, with which parameters. Deterministic
    (no times, no pre-check verdicts, which change from second to second), so the same plan
    always has the same hash."""
    rb = plan.runbook
    lines = [
        f"runbook: {rb.id} ({rb.title})",
        f"cluster: {ref.key}",
        "parameters: " + json.dumps(params, sort_keys=True, default=str, ensure_ascii=False),
        "steps:",
    ]
    for i, p in enumerate(plan.steps, start=1):
        s = p.step
        flags = [s.kind.value, "destructive" if s.destructive else "not destructive", f"confirm {s.confirm.value}"]
        if s.approval:
            flags.append("needs approval")
        lines.append(f"  {i}. [{s.id}] {s.title} ({', '.join(flags)})")
        for cmd in p.commands:
            lines.append(f"       $ {cmd}")
    return "\n".join(lines) + "\n"


def plan_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- state ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    run_id: str
    environment: str
    cluster: str
    runbook: str
    plan_hash: str
    plan_text: str
    requester: Operator
    requested_at: datetime
    wait_until: datetime
    ttl_seconds: int
    approver: Operator | None
    approved_at: datetime | None
    expires_at: datetime | None
    now: datetime  # the database's clock when this was read

    @property
    def approved(self) -> bool:
        return self.approver is not None

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= self.now

    @property
    def age_seconds(self) -> float:
        return max(0.0, (self.now - self.requested_at).total_seconds())


def same_person(a: Operator, b: Operator) -> bool:
    return a.uid == b.uid or a.name == b.name


@dataclass(frozen=True)
class ApprovalState:
    status: str  # approved / waiting / expired / void / self-approved / missing
    message: str
    approver: Operator | None = None

    @property
    def approved(self) -> bool:
        return self.status == "approved"


def judge(req: Request | None, plan_hash_: str, requester: Operator) -> ApprovalState:
    """What an approval request says about running `plan_hash_` as `requester` now."""
    if req is None:
        return ApprovalState("missing", "no approval was requested for this run")
    if req.plan_hash != plan_hash_:
        return ApprovalState("void", f"the approval is void: the plan changed (approved plan {req.plan_hash[:12]}, this plan {plan_hash_[:12]})")
    if not req.approved:
        return ApprovalState("waiting", f"waiting for a second operator since {req.requested_at:%H:%M:%S} UTC")
    assert req.approver is not None
    if same_person(req.approver, requester) or same_person(req.approver, req.requester):
        return ApprovalState("self-approved", f"self-approval is refused: {req.approver.name} (uid {req.approver.uid}) requested this run", req.approver)
    if req.requester.uid != requester.uid:
        return ApprovalState("void", f"the approval was for a run requested by {req.requester.describe()}, not {requester.describe()}")
    if req.expired:
        return ApprovalState("expired", f"the approval by {req.approver.describe()} expired at {req.expires_at:%H:%M:%S} UTC", req.approver)
    return ApprovalState("approved", f"approved by {req.approver.describe()}", req.approver)


# -- the store --------------------------------------------------------------------------------

_DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    run_id text PRIMARY KEY,
    environment text NOT NULL,
    cluster text NOT NULL,
    runbook text NOT NULL,
    plan_hash text NOT NULL,
    plan_text text NOT NULL,
    requested_by text NOT NULL,
    requester_uid integer NOT NULL,
    requester_host text NOT NULL,
    requested_at timestamptz NOT NULL,
    ttl_seconds integer NOT NULL DEFAULT 1800,
    wait_until timestamptz NOT NULL,
    approved_by text,
    approver_uid integer,
    approver_host text,
    approved_at timestamptz,
    expires_at timestamptz
)
"""

_SELECT = f"SELECT *, now() AS db_now FROM {TABLE}"


def _request(row: Any) -> Request:
    approver = None
    if row["approved_by"] is not None:
        approver = Operator(row["approved_by"], row["approver_uid"], row["approver_host"])
    return Request(
        run_id=row["run_id"], environment=row["environment"], cluster=row["cluster"], runbook=row["runbook"],
        plan_hash=row["plan_hash"], plan_text=row["plan_text"],
        requester=Operator(row["requested_by"], row["requester_uid"], row["requester_host"]),
        requested_at=row["requested_at"], wait_until=row["wait_until"], ttl_seconds=row["ttl_seconds"],
        approver=approver, approved_at=row["approved_at"], expires_at=row["expires_at"], now=row["db_now"],
    )


class ApprovalStore:
    """Approval requests as rows of the coordination database. Each operation opens its own
    connection (a poll every two seconds), so a dropped connection never outlives one call."""

    def __init__(self, db: CoordinationDb) -> None:
        self.db = db
        self._ready = False

    @property
    def where(self) -> str:
        return f"{self.db.host}:{self.db.port}/{self.db.database}"

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        import asyncio

        from dbops.coordination import CoordinationError, connect

        try:
            conn = await connect(self.db, "dbops approvals")
        except CoordinationError as exc:  # refused, timed out, TLS, auth, a secret: fail closed
            raise ApprovalError(str(exc)) from None
        try:
            if not self._ready:
                async with conn.transaction():
                    # Two consoles creating the table at once would collide in the catalog.
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('dbops_approvals'))")
                    await conn.execute(_DDL)
                self._ready = True
            yield conn
        except (ApprovalRefused, ApprovalError):
            raise
        except Exception as exc:
            raise ApprovalError(f"the coordination database {self.where}: {_one_line(exc)}") from None
        finally:
            try:
                await asyncio.wait_for(conn.close(), timeout=self.db.timeout)
            except Exception:  # a graceful close that fails or hangs: the answer is already in hand
                conn.terminate()  # so drop the socket instead; nothing is lost

    async def request(self, run_id: str, *, environment: str, cluster: str, runbook: str, plan_hash: str,
                      plan_text: str, requester: Operator, ttl_seconds: int = 1800) -> Request:
        """Publish (or refresh) the approval request of a run. An approval given for another plan
        hash, for another requester, or that has expired is voided: it must be given again."""
        async with self._conn() as conn:
            async with conn.transaction():
                row = await conn.fetchrow(f"{_SELECT} WHERE run_id = $1 FOR UPDATE", run_id)
                old = _request(row) if row is not None else None
                keep = (old is not None and old.plan_hash == plan_hash and old.requester.uid == requester.uid
                        and old.approved and not old.expired)
                if keep:
                    return old  # type: ignore[return-value]
                row = await conn.fetchrow(
                    f"""INSERT INTO {TABLE} (run_id, environment, cluster, runbook, plan_hash, plan_text,
                            requested_by, requester_uid, requester_host, requested_at, ttl_seconds, wait_until)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now(), $10::integer, now() + make_interval(secs => $10::integer))
                        ON CONFLICT (run_id) DO UPDATE SET
                            environment = EXCLUDED.environment, cluster = EXCLUDED.cluster, runbook = EXCLUDED.runbook,
                            plan_hash = EXCLUDED.plan_hash, plan_text = EXCLUDED.plan_text,
                            requested_by = EXCLUDED.requested_by, requester_uid = EXCLUDED.requester_uid,
                            requester_host = EXCLUDED.requester_host, requested_at = EXCLUDED.requested_at,
                            ttl_seconds = EXCLUDED.ttl_seconds, wait_until = EXCLUDED.wait_until,
                            approved_by = NULL, approver_uid = NULL, approver_host = NULL,
                            approved_at = NULL, expires_at = NULL
                        RETURNING *, now() AS db_now""",
                    run_id, environment, cluster, runbook, plan_hash, plan_text,
                    requester.name, requester.uid, requester.host, int(ttl_seconds),
                )
                return _request(row)

    async def get(self, run_id: str) -> Request | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(f"{_SELECT} WHERE run_id = $1", run_id)
            return _request(row) if row is not None else None

    async def pending(self) -> list[Request]:
        """Requests still waiting: not approved, and their run still waits (within its TTL)."""
        async with self._conn() as conn:
            rows = await conn.fetch(f"{_SELECT} WHERE approved_at IS NULL AND wait_until > now() ORDER BY requested_at")
            return [_request(r) for r in rows]

    async def approve(self, run_id: str, plan_hash: str, approver: Operator, ttl: int | None = None) -> Request:
        """Approve the plan `plan_hash` of a run. Refused for the requester themself, for a plan
        that changed since the approver read it, and for a run that no longer waits."""
        async with self._conn() as conn:
            async with conn.transaction():
                row = await conn.fetchrow(f"{_SELECT} WHERE run_id = $1 FOR UPDATE", run_id)
                if row is None:
                    raise ApprovalRefused(f"no approval request for run {run_id}; `dbops runbook approvals` lists the waiting ones")
                req = _request(row)
                if same_person(req.requester, approver):
                    raise ApprovalRefused(f"self-approval is refused: {req.requester.name} (uid {req.requester.uid}) requested this run")
                if req.plan_hash != plan_hash:
                    raise ApprovalRefused(f"the plan changed since you read it (now {req.plan_hash[:12]}, you read {plan_hash[:12]}); read it again")
                if req.approved and not req.expired:
                    assert req.approver is not None
                    raise ApprovalRefused(f"run {run_id} is already approved by {req.approver.describe()}")
                if not req.approved and req.wait_until <= req.now:
                    raise ApprovalRefused(f"run {run_id} stopped waiting for an approval at {req.wait_until:%H:%M:%S} UTC; its operator must run it again")
                seconds = int(ttl if ttl is not None else req.ttl_seconds)
                row = await conn.fetchrow(
                    f"""UPDATE {TABLE} SET approved_by = $2, approver_uid = $3, approver_host = $4,
                            approved_at = now(), expires_at = now() + make_interval(secs => $5::integer)
                        WHERE run_id = $1 RETURNING *, now() AS db_now""",
                    run_id, approver.name, approver.uid, approver.host, seconds,
                )
                return _request(row)

    async def approval_state(self, run_id: str, plan_hash: str, requester: Operator) -> ApprovalState:
        return judge(await self.get(run_id), plan_hash, requester)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return scrub_text(first)


# -- what the CLI and the console share ---------------------------------------------------------


def store_for(coordination: CoordinationDb | None, ref: ClusterRef) -> ApprovalStore | None:
    """The shared approval store when the cluster's environment needs a second operator (the
    config refuses approvals = 2 without [locks.postgres]); None otherwise."""
    if ref.env.approvals < 2 or coordination is None:
        return None
    return ApprovalStore(coordination)


def waiting_for(requests: list[Request], me: Operator) -> list[Request]:
    """The waiting requests `me` may approve: not their own."""
    return [r for r in requests if not same_person(r.requester, me)]


def _approve_params(req: Request, me: Operator) -> dict[str, Any]:
    return {"run_id": req.run_id, "plan_hash": req.plan_hash, "runbook": req.runbook,
            "requested_by": req.requester.as_dict(), "approver": me.as_dict()}


def audit_declined(audit: AuditLog, req: Request, me: Operator) -> None:
    audit.abort(action="runbook.approve", environment=req.environment, cluster=req.cluster,
                params=_approve_params(req, me), run_id=req.run_id, reason="the approver declined", outcome="declined")


async def approve_audited(store: ApprovalStore, audit: AuditLog, req: Request, me: Operator) -> Request:
    """Approve `req` (the plan the approver was shown) as `me`, with the approver's audit
    records: a refused self-approval is an abort; otherwise an intent before and a result after.
    Raises ApprovalRefused or ApprovalError (already audited)."""
    params = _approve_params(req, me)
    if same_person(req.requester, me):
        why = f"self-approval is refused: {req.requester.name} (uid {req.requester.uid}) requested this run"
        audit.abort(action="runbook.approve", environment=req.environment, cluster=req.cluster, params=params,
                    run_id=req.run_id, reason=why, outcome="refused")
        raise ApprovalRefused(why)
    intent = audit.intent(action="runbook.approve", environment=req.environment, cluster=req.cluster,
                          params=params, run_id=req.run_id)
    try:
        done = await store.approve(req.run_id, req.plan_hash, me)
    except ApprovalRefused as exc:
        audit.result(intent, outcome="refused", error=str(exc))
        raise
    except ApprovalError as exc:
        audit.result(intent, outcome="failed", error=str(exc))
        raise
    audit.result(intent, outcome="ok", detail={"expires_at": done.expires_at.isoformat() if done.expires_at else None})
    return done
