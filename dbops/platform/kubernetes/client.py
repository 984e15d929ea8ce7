"""What surrounds a cluster on Kubernetes: its pods and StatefulSets, its backup CronJobs (and the
Jobs they ran), recent Warning events, a CloudNativePG Cluster's status; and the few writes
runbooks make (a Job from a CronJob, a CNPG promotion, Leases for runbook locks).

Where the API is: a cluster's [kubernetes] (KubernetesRef) or [locks.kubernetes] (LeaseLocks)
names a kubeconfig and/or context; with neither, the in-cluster service account when dbops runs
in a pod (KUBERNETES_SERVICE_HOST set), else ~/.kube/config's current context.

The kubernetes client is imported inside the functions (it costs a few hundred ms). Everything
here is synchronous: code on an event loop calls it through asyncio.to_thread. Answers are read
as plain JSON (dicts), not the client's models, so an object with a field the models do not
expect still reads. Every failure is a KubernetesError whose message is one line, safe to show:
it says what was being done, where, and why; never a token (kubeconfig credentials are not in
any message, and server messages are scrubbed).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from dbops.secrets import scrub_text

if TYPE_CHECKING:
    from dbops.config import ClusterRef, KubernetesRef, LeaseLocks

__all__ = [
    "CNPG_HEALTHY",
    "CNPG_SWITCHOVER",
    "CnpgStatus",
    "Connection",
    "CronJobRow",
    "EventRow",
    "KubernetesError",
    "KubernetesView",
    "PodRow",
    "StatefulSetRow",
    "assess",
    "connect",
    "job_from_cronjob",
    "job_outcome",
    "k8s_refs",
    "overview",
    "read_all",
    "read_one",
    "verdict",
]

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


# ---------------------------------------------------------------------------------------------
# Connecting


@dataclass
class Connection:
    """A configured API client for one namespace; calls time out after `timeout` seconds."""

    api: Any  # kubernetes.client.ApiClient
    namespace: str
    server: str  # the API's URL, for messages
    timeout: float

    def _apis(self) -> Any:
        from kubernetes import client

        return client

    def raw(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
        """The body of `method(*args, **kwargs)`'s answer, or a KubernetesError saying `what`
        failed and why."""
        try:
            return bytes(method(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs).data or b"")
        except Exception as exc:
            raise explain(exc, what, self.server) from None

    def call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Like raw(), for an answer that is JSON: a dict."""
        body = self.raw(what, method, *args, **kwargs)
        try:
            return json.loads(body) if body else {}
        except ValueError:
            raise KubernetesError(f"{what}: the Kubernetes API at {self.server} answered something that is not JSON") from None

    def text(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
        """Like raw(), for an answer that is text (a pod's log)."""
        return self.raw(what, method, *args, **kwargs).decode("utf-8", "replace")

    @property
    def core(self) -> Any:
        return self._apis().CoreV1Api(self.api)

    @property
    def apps(self) -> Any:
        return self._apis().AppsV1Api(self.api)

    @property
    def batch(self) -> Any:
        return self._apis().BatchV1Api(self.api)

    @property
    def coordination(self) -> Any:
        return self._apis().CoordinationV1Api(self.api)

    @property
    def custom(self) -> Any:
        return self._apis().CustomObjectsApi(self.api)

    def close(self) -> None:
        self.api.close()


def connect(namespace: str, kubeconfig: str | None = None, context: str | None = None, timeout: float = 10.0) -> Connection:
    """A Connection to the API that `kubeconfig`/`context` name (see the module's docstring)."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        where = "the in-cluster service account"
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException as exc:
            raise KubernetesError(f"{where}: {_short(str(exc))}") from None
    else:
        path = os.path.expanduser(kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or "~/.kube/config")
        where = f"kubeconfig {path}" + (f", context {context!r}" if context else "")
        if not os.path.exists(path):
            raise KubernetesError(f"{where}: the file does not exist")
        try:
            config.load_kube_config(config_file=path, context=context, client_configuration=cfg, persist_config=False)
        except config.ConfigException as exc:
            raise KubernetesError(f"{where}: {_short(str(exc))}") from None
        except Exception as exc:  # a file that is not YAML, a context without a cluster ...
            raise KubernetesError(f"{where}: cannot be used: {type(exc).__name__}: {_short(str(exc))}") from None
    # One try per call: the poller and the runbooks retry on their own schedule, and an
    # unreachable API should say so after `timeout`, not after urllib3's three retries.
    cfg.retries = False
    return Connection(client.ApiClient(cfg), namespace, cfg.host, timeout)


def connect_ref(ref: "KubernetesRef", timeout: float = 10.0) -> Connection:
    return connect(ref.namespace, ref.kubeconfig, ref.context, timeout)


def connect_leases(leases: "LeaseLocks", timeout: float = 10.0) -> Connection:
    return connect(leases.namespace, leases.kubeconfig, leases.context, timeout)


def _short(text: str) -> str:
    """One scrubbed line of at most 300 characters."""
    line = " ".join(scrub_text(text).split())
    # A bearer token may be echoed by a proxy's error page; never show one.
    line = re.sub(r"(?i)(bearer\s+)\S+", r"\1***", line)
    return line if len(line) <= 300 else line[:297] + "..."


def explain(exc: BaseException, what: str, server: str) -> KubernetesError:
    """`exc` from the kubernetes client as one line."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        message = ""
        try:
            body = json.loads(exc.body) if exc.body else {}
            message = str(body.get("message") or "") if isinstance(body, dict) else ""
        except (ValueError, TypeError):
            message = ""
        if status == 401:
            return KubernetesError(f"{what}: the Kubernetes API at {server} refused the credentials (401 Unauthorized)", status)
        if status == 403:
            return KubernetesError(f"{what}: forbidden (403){': ' + _short(message) if message else ''}", status)
        if status == 404:
            return KubernetesError(f"{what}: not found (404){': ' + _short(message) if message else ''}", status)
        if status == 409:
            return KubernetesError(f"{what}: conflict (409): {_short(message) or 'the object changed or already exists'}", status)
        reason = _short(message or str(exc.reason or ""))
        return KubernetesError(f"{what}: the Kubernetes API at {server} answered HTTP {status}{': ' + reason if reason else ''}", status)
    import urllib3.exceptions as u3

    if isinstance(exc, u3.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: a refusal is not a timeout.
    if isinstance(exc, u3.NewConnectionError):
        cause = str(exc).rsplit(":", 1)[-1].strip() or "connection failed"
        return KubernetesError(f"{what}: cannot reach the Kubernetes API at {server}: {_short(cause)}")
    if isinstance(exc, (u3.ReadTimeoutError, u3.ConnectTimeoutError, TimeoutError)):
        return KubernetesError(f"{what}: the Kubernetes API at {server} did not answer in time")
    if isinstance(exc, u3.SSLError):
        return KubernetesError(f"{what}: TLS to the Kubernetes API at {server} failed: {_short(str(exc))}")
    if isinstance(exc, (u3.HTTPError, OSError)):
        return KubernetesError(f"{what}: cannot reach the Kubernetes API at {server}: {type(exc).__name__}: {_short(str(exc))}")
    return KubernetesError(f"{what}: {type(exc).__name__}: {_short(str(exc))}")


# ---------------------------------------------------------------------------------------------
# Reading: what the pane shows


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp from the API (nanoseconds and Z allowed), or None."""
    if not value or not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def micro_time(t: datetime) -> str:
    """A MicroTime (Lease renewTime/acquireTime) as the API writes it."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _age(t: datetime | None, now: datetime) -> float | None:
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
        age=_age(parse_time(meta.get("creationTimestamp")), now),
        reason=reason or str(status.get("reason") or ""),
    )


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
    done = [parse_time((j.get("status") or {}).get("completionTime")) for j in jobs
            if _owned_by(j, "CronJob", str(name)) and job_outcome(j) == "succeeded"]
    done = [t for t in done if t is not None]
    if done:
        return max(done)
    return parse_time((cronjob.get("status") or {}).get("lastSuccessfulTime"))


def _job_selectors(cronjobs: list[dict[str, Any]]) -> list[str | None]:
    """How to list the Jobs the CronJobs made without listing every Job in the namespace: by
    their jobTemplate's labels, which every Job made from it carries (the CronJob controller's
    and kubectl create job --from's alike). None, every Job, for a template without labels."""
    selectors: set[str | None] = set()
    for c in cronjobs:
        labels = ((((c.get("spec") or {}).get("jobTemplate") or {}).get("metadata") or {}).get("labels")) or {}
        selectors.add(",".join(f"{k}={v}" for k, v in sorted(labels.items())) or None)
    return [None] if None in selectors else sorted(s for s in selectors if s is not None)


def overview(ref: "KubernetesRef", timeout: float = 10.0) -> KubernetesView:
    """Everything the Kubernetes pane shows for one cluster. Raises KubernetesError when the API
    cannot be used at all (config, unreachable, credentials, no such namespace); a part that
    cannot be read (say, CronJobs forbidden) is a line in `problems`."""
    conn = connect_ref(ref, timeout)
    try:
        return _overview(conn, ref)
    finally:
        conn.close()


def _overview(conn: Connection, ref: "KubernetesRef") -> KubernetesView:
    ns = ref.namespace
    now = datetime.now(timezone.utc)
    try:
        conn.call(f"read namespace {ns}", conn.core.read_namespace, ns)
    except KubernetesError as exc:
        if exc.status == 404:
            raise KubernetesError(f"namespace {ns!r} does not exist at {conn.server}", 404) from None
        if exc.status != 403:  # reading namespaces is often not allowed; the lists below tell
            raise
    pods = conn.call(f"list pods in {ns}", conn.core.list_namespaced_pod, ns, label_selector=ref.selector)
    problems: list[str] = []

    def part(what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        try:
            return list(conn.call(what, method, *args, **kwargs).get("items") or [])
        except KubernetesError as exc:
            problems.append(str(exc))
            return []

    sets = part(f"list StatefulSets in {ns}", conn.apps.list_namespaced_stateful_set, ns, label_selector=ref.selector)
    cronjobs = part(f"list CronJobs in {ns}", conn.batch.list_namespaced_cron_job, ns, label_selector=ref.backup_selector or ref.selector)
    jobs: dict[str, dict[str, Any]] = {}
    for selector in _job_selectors(cronjobs):
        for job in part(f"list Jobs in {ns}", conn.batch.list_namespaced_job, ns, **({"label_selector": selector} if selector else {})):
            jobs[str((job.get("metadata") or {}).get("uid") or (job.get("metadata") or {}).get("name"))] = job
    events = part(f"list events in {ns}", conn.core.list_namespaced_event, ns, field_selector="type=Warning")
    cnpg = None
    if ref.cnpg_cluster:
        try:
            cnpg = cnpg_status(get_cnpg_cluster(conn, ref.cnpg_cluster))
        except KubernetesError as exc:
            problems.append(str(exc))

    pod_rows = sorted((pod_row(p, now) for p in pods.get("items") or []), key=lambda r: r.name)
    set_rows = []
    for s in sets:
        meta, spec, status = s.get("metadata") or {}, s.get("spec") or {}, s.get("status") or {}
        set_rows.append(StatefulSetRow(str(meta.get("name", "?")), int(status.get("readyReplicas") or 0),
                                       int(spec.get("replicas") if spec.get("replicas") is not None else 1),
                                       int(status.get("updatedReplicas") or 0), _age(parse_time(meta.get("creationTimestamp")), now)))
    cron_rows = []
    for c in cronjobs:
        meta, spec, status = c.get("metadata") or {}, c.get("spec") or {}, c.get("status") or {}
        cron_rows.append(CronJobRow(str(meta.get("name", "?")), str(spec.get("schedule") or ""), bool(spec.get("suspend")),
                                    parse_time(status.get("lastScheduleTime")), last_success(c, list(jobs.values())), len(status.get("active") or [])))
    event_rows = []
    for e in events:
        if e.get("type") != "Warning":
            continue
        when = parse_time(e.get("lastTimestamp")) or parse_time(e.get("eventTime")) or parse_time((e.get("metadata") or {}).get("creationTimestamp"))
        age = _age(when, now)
        if age is not None and age > ref.events_seconds:
            continue
        obj = e.get("involvedObject") or {}
        event_rows.append(EventRow(age, str(obj.get("kind") or ""), str(obj.get("name") or ""), str(e.get("reason") or ""),
                                   " ".join(str(e.get("message") or "").split()), int(e.get("count") or 1)))
    event_rows.sort(key=lambda r: r.age if r.age is not None else float("inf"))
    return KubernetesView(ns, pod_rows, sorted(set_rows, key=lambda r: r.name), sorted(cron_rows, key=lambda r: r.name),
                          event_rows, cnpg, problems, time.time(), ref.events_seconds)


def assess(view: KubernetesView, backup_max_age: float | None = None) -> list[tuple[Any, str]]:
    """What is wrong, worst first: (Severity, one line). A pod not running and ready, a
    StatefulSet short of replicas, a CNPG Cluster not healthy: CRIT. Restarts, Warning events, a
    suspended backup CronJob, a last successful backup older than `backup_max_age` (or none at
    all): WARN. A part that could not be read (view.problems): UNKNOWN, after the WARNs
    (Severity.rank). Nothing wrong: []."""
    from dbops.model import Severity, human_seconds

    found: list[tuple[Any, str]] = []
    now = datetime.now(timezone.utc)
    for p in view.pods:
        if p.phase == "Succeeded":
            continue
        if p.phase != "Running" or p.ready < p.containers:
            found.append((Severity.CRIT, f"pod {p.name} {p.phase}, {p.ready}/{p.containers} ready{' (' + p.reason + ')' if p.reason else ''}"))
        elif p.restarts:
            found.append((Severity.WARN, f"pod {p.name} restarted {p.restarts} time(s)"))
    for s in view.statefulsets:
        if s.ready < s.replicas:
            found.append((Severity.CRIT, f"StatefulSet {s.name}: {s.ready}/{s.replicas} ready"))
    if view.cnpg is not None and not view.cnpg.healthy:
        found.append((Severity.CRIT, f"CNPG Cluster {view.cnpg.name}: {view.cnpg.phase}"))
    for c in view.cronjobs:
        if c.suspend:
            found.append((Severity.WARN, f"backup CronJob {c.name} is suspended"))
        if backup_max_age is not None:
            if c.last_success is None:
                found.append((Severity.WARN, f"backup CronJob {c.name} has no successful Job on record"))
            elif (now - c.last_success).total_seconds() > backup_max_age:
                found.append((Severity.WARN, f"backup CronJob {c.name} last succeeded {human_seconds((now - c.last_success).total_seconds())} ago"))
    if view.events:
        found.append((Severity.WARN, f"{len(view.events)} Warning event(s) in the last {human_seconds(view.events_seconds)}"))
    for problem in view.problems:
        found.append((Severity.UNKNOWN, problem))
    return sorted(found, key=lambda f: -f[0].rank)


def verdict(ref: "ClusterRef", view: KubernetesView | None, error: str | None) -> tuple[Any, list[tuple[Any, str]]]:
    """A cluster's severity and findings (assess(), against its backups.max_age_seconds), as the
    Kubernetes pane and `dbops check` both show them: an API that could not be read (`error`)
    is CRIT, whatever the last good `view` said."""
    from dbops.model import Severity

    findings = [] if view is None else assess(view, ref.cluster.backups.max_age_seconds)
    worst = Severity.CRIT if error else (findings[0][0] if findings else Severity.OK)
    return worst, findings


# ---------------------------------------------------------------------------------------------
# Reading every cluster (the Kubernetes pane and `dbops check`)


def k8s_refs(refs: "list[ClusterRef]") -> "list[ClusterRef]":
    return [r for r in refs if r.cluster.kubernetes is not None]


def read_one(ref: "ClusterRef") -> tuple[str, KubernetesView | None, str | None]:
    """Blocking; runs in a worker thread: (cluster key, view or None, error or None)."""
    assert ref.cluster.kubernetes is not None
    try:
        return ref.key, overview(ref.cluster.kubernetes, max(ref.timeout, 5.0)), None
    except KubernetesError as exc:
        return ref.key, None, str(exc)


def read_all(refs: "list[ClusterRef]") -> list[tuple[str, KubernetesView | None, str | None]]:
    """One thread per cluster: a dead API server of one cluster does not hold up the others."""
    from concurrent.futures import ThreadPoolExecutor

    if not refs:
        return []
    with ThreadPoolExecutor(max_workers=min(4, len(refs)), thread_name_prefix="dbops-k8s") as pool:
        return list(pool.map(read_one, refs))


# ---------------------------------------------------------------------------------------------
# CronJobs and Jobs (k8s.trigger-backup-job)


def get_cronjob(conn: Connection, name: str) -> dict[str, Any]:
    return conn.call(f"read CronJob {conn.namespace}/{name}", conn.batch.read_namespaced_cron_job, name, conn.namespace)


def job_from_cronjob(cronjob: dict[str, Any], job_name: str) -> dict[str, Any]:
    """The Job `kubectl create job JOB_NAME --from=cronjob/NAME` creates: the CronJob's
    jobTemplate (labels, annotations, spec), the annotation cronjob.kubernetes.io/instantiate:
    manual, and an ownerReference to the CronJob (controller, without blockOwnerDeletion)."""
    meta = cronjob.get("metadata") or {}
    template = (cronjob.get("spec") or {}).get("jobTemplate") or {}
    tmeta = template.get("metadata") or {}
    annotations = {INSTANTIATE_ANNOTATION: "manual", **(tmeta.get("annotations") or {})}
    job_meta: dict[str, Any] = {
        "name": job_name,
        "namespace": meta.get("namespace"),
        "annotations": annotations,
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": meta.get("name"), "uid": meta.get("uid"), "controller": True}],
    }
    if tmeta.get("labels"):
        job_meta["labels"] = dict(tmeta["labels"])
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": job_meta, "spec": json.loads(json.dumps(template.get("spec") or {}))}


_SECRET_NAME = re.compile(r"(?i)(pass|pwd|token|secret|credential|api_?key|private_?key|access_?key)")
# In a command line: NAME=value (PGPASSWORD=x pg_dump ..., --password=x) and a flag followed by
# its value (--token x); redacted when NAME or the flag says it is a secret.
_ASSIGNMENT = re.compile(r"(?<![\w.-])([\w.-]+)=(\"[^\"]*\"?|'[^']*'?|[^\s;&|]+)")
_FLAG_VALUE = re.compile(r"(?<![\w.-])(--?[\w.-]+)(\s+)([^\s;&|-]\S*)")
_FLAG = re.compile(r"--?[\w.-]+")


def _redact_line(text: str) -> str:
    from dbops.secrets import REDACTED, scrub_text

    def hide(m: re.Match[str]) -> str:
        return m.group(0) if not _SECRET_NAME.search(m.group(1)) else m.group(1) + ("=" if m.re is _ASSIGNMENT else m.group(2)) + REDACTED

    return _FLAG_VALUE.sub(hide, _ASSIGNMENT.sub(hide, scrub_text(text)))


def _redact_words(words: list[Any]) -> list[Any]:
    """A container's command or args: secrets inside each word, and the word after a flag that
    names a secret (["--token", "x"])."""
    from dbops.secrets import REDACTED

    out: list[Any] = []
    for word in words:
        if out and isinstance(out[-1], str) and _FLAG.fullmatch(out[-1]) and _SECRET_NAME.search(out[-1]):
            out.append(REDACTED)
        else:
            out.append(_redact_line(word) if isinstance(word, str) else word)
    return out


def redacted_job(job: dict[str, Any]) -> dict[str, Any]:
    """`job` as the plan and the audit log show it: the literal value of every container
    environment variable whose name says it is a secret replaced by ***, and in its command and
    args what looks like a secret (PGPASSWORD=..., --password=..., --token ..., a password in a
    URL). (A valueFrom a Secret is only a reference and is shown as it is.)"""
    from dbops.secrets import REDACTED

    shown = json.loads(json.dumps(job))
    pod = ((shown.get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in (pod.get("containers") or []) + (pod.get("initContainers") or []):
        for env in container.get("env") or []:
            if "value" in env and _SECRET_NAME.search(str(env.get("name", ""))):
                env["value"] = REDACTED
        for key in ("command", "args"):
            if isinstance(container.get(key), list):
                container[key] = _redact_words(container[key])
    return shown


def manual_job_name(cronjob: str, run_id: str) -> str:
    """`<cronjob>-manual-<run suffix>`, at most 63 characters (a Job's name becomes a label value)."""
    suffix = "-manual-" + re.sub(r"[^a-z0-9]", "", run_id.lower())[-10:]
    return cronjob[: 63 - len(suffix)].rstrip("-.") + suffix


def create_job(conn: Connection, job: dict[str, Any]) -> dict[str, Any]:
    name = job["metadata"]["name"]
    return conn.call(f"create Job {conn.namespace}/{name}", conn.batch.create_namespaced_job, conn.namespace, job)


def get_job(conn: Connection, name: str) -> dict[str, Any]:
    return conn.call(f"read Job {conn.namespace}/{name}", conn.batch.read_namespaced_job, name, conn.namespace)


def job_pods(conn: Connection, job_name: str) -> list[dict[str, Any]]:
    """The Job's pods (the Job controller labels them job-name=<job>)."""
    found = conn.call(f"list the pods of Job {job_name}", conn.core.list_namespaced_pod, conn.namespace, label_selector=f"job-name={job_name}")
    return sorted(found.get("items") or [], key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")


def pod_log(conn: Connection, pod: str, tail_lines: int = 200) -> str:
    return conn.text(f"read the log of pod {pod}", conn.core.read_namespaced_pod_log, pod, conn.namespace, tail_lines=tail_lines)


# ---------------------------------------------------------------------------------------------
# CloudNativePG (cnpg.promote)


def get_cnpg_cluster(conn: Connection, name: str) -> dict[str, Any]:
    return conn.call(f"read CNPG Cluster {conn.namespace}/{name}", conn.custom.get_namespaced_custom_object,
                     CNPG_GROUP, CNPG_VERSION, conn.namespace, CNPG_PLURAL, name)


def cnpg_instance_pods(conn: Connection, cluster: str) -> list[dict[str, Any]]:
    """The Cluster's instance pods (CNPG labels them cnpg.io/cluster=<name>)."""
    found = conn.call(f"list the pods of CNPG Cluster {cluster}", conn.core.list_namespaced_pod, conn.namespace,
                      label_selector=f"cnpg.io/cluster={cluster}")
    return found.get("items") or []


def cnpg_promotion_patch(resource_version: str, instance: str, now: datetime) -> dict[str, Any]:
    """The status patch `kubectl cnpg promote CLUSTER INSTANCE` sends (a JSON merge patch on the
    status subresource, carrying the resourceVersion read, so a concurrent change is a 409)."""
    return {
        "metadata": {"resourceVersion": resource_version},
        "status": {
            "targetPrimary": instance,
            # pgTime.GetCurrentTimestamp: RFC 3339 with microseconds.
            "targetPrimaryTimestamp": micro_time(now),
            "phase": CNPG_SWITCHOVER,
            "phaseReason": f"Switching over to {instance}",
        },
    }


def patch_cnpg_status(conn: Connection, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    return conn.call(f"patch the status of CNPG Cluster {conn.namespace}/{name}", conn.custom.patch_namespaced_custom_object_status,
                     CNPG_GROUP, CNPG_VERSION, conn.namespace, CNPG_PLURAL, name, patch)


# ---------------------------------------------------------------------------------------------
# Leases (runbook locks)


def get_lease(conn: Connection, name: str) -> dict[str, Any] | None:
    try:
        return conn.call(f"read Lease {conn.namespace}/{name}", conn.coordination.read_namespaced_lease, name, conn.namespace)
    except KubernetesError as exc:
        if exc.status == 404:
            return None
        raise


def create_lease(conn: Connection, lease: dict[str, Any]) -> dict[str, Any]:
    name = lease["metadata"]["name"]
    return conn.call(f"create Lease {conn.namespace}/{name}", conn.coordination.create_namespaced_lease, conn.namespace, lease)


def replace_lease(conn: Connection, lease: dict[str, Any]) -> dict[str, Any]:
    """Replace carrying the lease's metadata.resourceVersion: a 409 if it changed meanwhile."""
    name = lease["metadata"]["name"]
    return conn.call(f"update Lease {conn.namespace}/{name}", conn.coordination.replace_namespaced_lease, name, conn.namespace, lease)
