"""What one read of a cluster's Kubernetes objects found: frozen rows built from the API's plain
JSON (dicts), and the pure functions that read them. No kubernetes client here: the tests and
the judgement use these without it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# CloudNativePG's phases (api/v1 cluster_types.go: PhaseHealthy, PhaseSwitchover).
CNPG_HEALTHY = "Cluster in healthy state"
CNPG_SWITCHOVER = "Switchover in progress"
CNPG_GROUP, CNPG_VERSION, CNPG_PLURAL = "postgresql.cnpg.io", "v1", "clusters"
# kubectl create job --from=cronjob/NAME marks the Job with this annotation.
INSTANTIATE_ANNOTATION = "cronjob.kubernetes.io/instantiate"


class KubernetesError(Exception):
    """One line, safe to show. `status` is the HTTP status when the API answered (404, 409 ...)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp from the API (nanoseconds and Z allowed), or None."""
    if not value or not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def micro_time(t: datetime) -> str:
    """A MicroTime (Lease renewTime/acquireTime) as the API writes it."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def age(t: datetime | None, now: datetime) -> float | None:
    return None if t is None else max(0.0, (now - t).total_seconds())


@dataclass(frozen=True)
class PodRow:
    name: str
    phase: str
    ready: int
    containers: int
    restarts: int
    node: str
    age: float | None  # seconds
    # Why it is not running as it should: a container's waiting reason (CrashLoopBackOff ...).
    reason: str = ""


@dataclass(frozen=True)
class StatefulSetRow:
    name: str
    ready: int
    replicas: int
    updated: int
    age: float | None


@dataclass(frozen=True)
class CronJobRow:
    name: str
    schedule: str
    suspend: bool
    last_schedule: datetime | None
    last_success: datetime | None  # the newest completion of a Job it owns that succeeded
    active: int


@dataclass(frozen=True)
class EventRow:
    age: float | None
    kind: str
    name: str
    reason: str
    message: str
    count: int


@dataclass(frozen=True)
class CnpgStatus:
    name: str
    phase: str
    current_primary: str
    target_primary: str
    instances: int
    ready_instances: int

    @property
    def healthy(self) -> bool:
        return self.phase == CNPG_HEALTHY

    @property
    def switchover_in_progress(self) -> bool:
        return bool(self.target_primary) and self.target_primary != self.current_primary


@dataclass(frozen=True)
class KubernetesView:
    """One read of a cluster's Kubernetes objects. `problems`: what could not be read (one line
    each); the rest is still shown."""

    namespace: str
    pods: list[PodRow] = field(default_factory=list)
    statefulsets: list[StatefulSetRow] = field(default_factory=list)
    cronjobs: list[CronJobRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    cnpg: CnpgStatus | None = None
    problems: list[str] = field(default_factory=list)
    taken_at: float = 0.0
    events_seconds: float = 3600.0


def pod_row(pod: dict[str, Any], now: datetime) -> PodRow:
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    reason = ""
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            reason = str(waiting["reason"])
            break
    if meta.get("deletionTimestamp"):
        reason = reason or "Terminating"
    return PodRow(
        name=str(meta.get("name", "?")),
        phase=str(status.get("phase") or "Unknown"),
        ready=sum(1 for cs in statuses if cs.get("ready")),
        containers=len(spec.get("containers") or []) or len(statuses),
        restarts=sum(int(cs.get("restartCount") or 0) for cs in statuses),
        node=str(spec.get("nodeName") or ""),
        age=age(parse_time(meta.get("creationTimestamp")), now),
        reason=reason or str(status.get("reason") or ""),
    )


def statefulset_row(s: dict[str, Any], now: datetime) -> StatefulSetRow:
    meta, spec, status = s.get("metadata") or {}, s.get("spec") or {}, s.get("status") or {}
    replicas = spec.get("replicas")
    return StatefulSetRow(str(meta.get("name", "?")), int(status.get("readyReplicas") or 0),
                          int(replicas) if replicas is not None else 1,
                          int(status.get("updatedReplicas") or 0), age(parse_time(meta.get("creationTimestamp")), now))


def cronjob_row(c: dict[str, Any], jobs: list[dict[str, Any]]) -> CronJobRow:
    meta, spec, status = c.get("metadata") or {}, c.get("spec") or {}, c.get("status") or {}
    return CronJobRow(str(meta.get("name", "?")), str(spec.get("schedule") or ""), bool(spec.get("suspend")),
                      parse_time(status.get("lastScheduleTime")), last_success(c, jobs), len(status.get("active") or []))


def event_rows(events: list[dict[str, Any]], now: datetime, within: float) -> list[EventRow]:
    """The Warning events of the last `within` seconds, newest first (those without a time last)."""
    rows = []
    for e in events:
        if e.get("type") != "Warning":
            continue
        when = parse_time(e.get("lastTimestamp")) or parse_time(e.get("eventTime")) or parse_time((e.get("metadata") or {}).get("creationTimestamp"))
        seconds = age(when, now)
        if seconds is not None and seconds > within:
            continue
        obj = e.get("involvedObject") or {}
        rows.append(EventRow(seconds, str(obj.get("kind") or ""), str(obj.get("name") or ""), str(e.get("reason") or ""),
                             " ".join(str(e.get("message") or "").split()), int(e.get("count") or 1)))
    rows.sort(key=lambda r: r.age if r.age is not None else float("inf"))
    return rows


def cnpg_status(obj: dict[str, Any]) -> CnpgStatus:
    status = obj.get("status") or {}
    return CnpgStatus(
        name=str((obj.get("metadata") or {}).get("name", "?")),
        phase=str(status.get("phase") or "unknown"),
        current_primary=str(status.get("currentPrimary") or ""),
        target_primary=str(status.get("targetPrimary") or ""),
        instances=int(status.get("instances") or (obj.get("spec") or {}).get("instances") or 0),
        ready_instances=int(status.get("readyInstances") or 0),
    )


def job_outcome(job: dict[str, Any]) -> str:
    """"succeeded", "failed" or "running", from the Job's conditions (the Job controller's word)."""
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded"
        if cond.get("status") == "True" and cond.get("type") in ("Failed", "FailureTarget"):
            return "failed"
    return "running"


def _owned_by(obj: dict[str, Any], kind: str, name: str) -> bool:
    return any(o.get("kind") == kind and o.get("name") == name for o in (obj.get("metadata") or {}).get("ownerReferences") or [])


def last_success(cronjob: dict[str, Any], jobs: list[dict[str, Any]]) -> datetime | None:
    """When a Job the CronJob owns last succeeded (its completionTime); the CronJob's own
    status.lastSuccessfulTime when none of its Jobs is left (history limits delete them)."""
    name = (cronjob.get("metadata") or {}).get("name")
    finished = [parse_time((j.get("status") or {}).get("completionTime")) for j in jobs
                if _owned_by(j, "CronJob", str(name)) and job_outcome(j) == "succeeded"]
    done = [t for t in finished if t is not None]
    if done:
        return max(done)
    return parse_time((cronjob.get("status") or {}).get("lastSuccessfulTime"))


def job_selectors(cronjobs: list[dict[str, Any]]) -> list[str | None]:
    """How to list the Jobs the CronJobs made without listing every Job in the namespace: by
    their jobTemplate's labels, which every Job made from it carries (the CronJob controller's
    and kubectl create job --from's alike). None, every Job, for a template without labels."""
    selectors: set[str | None] = set()
    for c in cronjobs:
        labels = ((((c.get("spec") or {}).get("jobTemplate") or {}).get("metadata") or {}).get("labels")) or {}
        selectors.add(",".join(f"{k}={v}" for k, v in sorted(labels.items())) or None)
    if None in selectors:
        return [None]
    named: list[str | None] = [*sorted(s for s in selectors if s is not None)]
    return named
