"""Talking to the Kubernetes API: connecting, reading what the pane shows, and the few writes
runbooks make (a Job from a CronJob, a CNPG status patch, Leases for runbook locks).

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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dbops.platform.kubernetes.data import (
    CNPG_GROUP,
    CNPG_PLURAL,
    CNPG_VERSION,
    KubernetesError,
    KubernetesView,
    cnpg_status,
    cronjob_row,
    event_rows,
    job_selectors,
    pod_row,
    statefulset_row,
)
from dbops.secrets import scrub_text

if TYPE_CHECKING:
    from dbops.config import ClusterRef, KubernetesRef, LeaseLocks


# ---------------------------------------------------------------------------------------------
# Connecting


def _api(name: str) -> Any:
    """A property: the kubernetes client's API class `name` on the connection's ApiClient (the
    library is imported on first use, not with this module)."""

    def get(conn: Connection) -> Any:
        from kubernetes import client

        return getattr(client, name)(conn.api)

    return property(get)


@dataclass
class Connection:
    """A configured API client for one namespace; calls time out after `timeout` seconds."""

    api: Any  # kubernetes.client.ApiClient
    namespace: str
    server: str  # the API's URL, for messages
    timeout: float

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

    # The client's API groups on this connection (made on each use: they are thin wrappers).
    core = _api("CoreV1Api")
    apps = _api("AppsV1Api")
    batch = _api("BatchV1Api")
    coordination = _api("CoordinationV1Api")
    custom = _api("CustomObjectsApi")

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


def connect_ref(ref: KubernetesRef, timeout: float = 10.0) -> Connection:
    return connect(ref.namespace, ref.kubeconfig, ref.context, timeout)


def connect_leases(leases: LeaseLocks, timeout: float = 10.0) -> Connection:
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


def overview(ref: KubernetesRef, timeout: float = 10.0) -> KubernetesView:
    """Everything the Kubernetes pane shows for one cluster. Raises KubernetesError when the API
    cannot be used at all (config, unreachable, credentials, no such namespace); a part that
    cannot be read (say, CronJobs forbidden) is a line in `problems`."""
    conn = connect_ref(ref, timeout)
    try:
        return _overview(conn, ref)
    finally:
        conn.close()


def _overview(conn: Connection, ref: KubernetesRef) -> KubernetesView:
    ns = ref.namespace
    now = datetime.now(UTC)
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
    for selector in job_selectors(cronjobs):
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
    set_rows = sorted((statefulset_row(s, now) for s in sets), key=lambda r: r.name)
    cron_rows = sorted((cronjob_row(c, list(jobs.values())) for c in cronjobs), key=lambda r: r.name)
    return KubernetesView(ns, pod_rows, set_rows, cron_rows, event_rows(events, now, ref.events_seconds), cnpg, problems,
                          time.time(), ref.events_seconds)


# ---------------------------------------------------------------------------------------------
# Reading every cluster (the Kubernetes pane and `dbops check`)


def k8s_refs(refs: list[ClusterRef]) -> list[ClusterRef]:
    return [r for r in refs if r.cluster.kubernetes is not None]


def read_one(ref: ClusterRef) -> tuple[str, KubernetesView | None, str | None]:
    """Blocking; runs in a worker thread: (cluster key, view or None, error or None)."""
    assert ref.cluster.kubernetes is not None
    try:
        return ref.key, overview(ref.cluster.kubernetes, max(ref.timeout, 5.0)), None
    except KubernetesError as exc:
        return ref.key, None, str(exc)


def read_all(refs: list[ClusterRef]) -> list[tuple[str, KubernetesView | None, str | None]]:
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
