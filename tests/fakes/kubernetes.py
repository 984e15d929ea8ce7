"""The Kubernetes API stand-in for tests (dbops.sandbox.kubernetes: fabric8's kubernetes-server-mock
in CRUD mode), and a small REST helper with which a test seeds objects and plays the
controllers the stand-in does not have (the Job controller, the CNPG operator, the kubelet).

The helper speaks plain HTTP with urllib, not through dbops.platform.kubernetes: what dbops
reads and writes is checked against what the test put in and reads back on its own.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dbops.sandbox.kubernetes import LOG_ANNOTATION, KubernetesStandIn, start

__all__ = ["Kube", "LOG_ANNOTATION", "running_stand_in", "ts"]


@contextlib.contextmanager
def running_stand_in(prefix: str = "dbops-k8s-") -> Iterator[Kube]:
    """A stand-in for the duration of the block (use it from a module-scoped fixture: one JVM
    per test module). If it cannot start, the fixture errors with the reason."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        stand_in = start(workdir)
        try:
            yield Kube(stand_in, workdir)
        finally:
            stand_in.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def ts(seconds_ago: float = 0.0) -> str:
    """An RFC 3339 timestamp `seconds_ago` seconds in the past."""
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


class Kube:
    """REST on the stand-in: `path` is the API path, e.g. /api/v1/namespaces/db/pods."""

    def __init__(self, stand_in: KubernetesStandIn, workdir: Path) -> None:
        self.stand_in = stand_in
        self.workdir = workdir

    @property
    def url(self) -> str:
        return self.stand_in.url

    def kubeconfig(self, token: str = "stand-in-token") -> Path:
        return self.stand_in.kubeconfig(self.workdir / "kubeconfig", token=token)

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.read().decode(errors="replace")) from None
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def create(self, path: str, obj: dict[str, Any]) -> Any:
        return self.request("POST", path, obj)

    def replace(self, path: str, obj: dict[str, Any]) -> Any:
        return self.request("PUT", path, obj)

    def merge(self, path: str, patch: dict[str, Any]) -> Any:
        return self.request("PATCH", path, patch, "application/merge-patch+json")

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    # -- objects -------------------------------------------------------------------------------

    def namespace(self, name: str) -> None:
        self.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def pod(self, ns: str, name: str, labels: dict[str, str], *, phase: str = "Running", ready: bool = True,
            restarts: int = 0, waiting: str | None = None, node: str = "node-1", log: str | None = None,
            owner: dict[str, Any] | None = None) -> Any:
        """A pod as the kubelet reports it (the stand-in keeps a pod's status as created)."""
        meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels, "creationTimestamp": ts(600)}
        if log is not None:
            meta["annotations"] = {LOG_ANNOTATION: log}
        if owner is not None:
            meta["ownerReferences"] = [owner]
        state = {"waiting": {"reason": waiting}} if waiting else {"running": {"startedAt": ts(300)}}
        return self.create(f"/api/v1/namespaces/{ns}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "example/db:1"}]},
            "status": {"phase": phase,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "containerStatuses": [{"name": "main", "ready": ready, "restartCount": restarts, "state": state,
                                              "image": "example/db:1", "imageID": "", "started": ready}]},
        })

    def event(self, ns: str, name: str, *, type_: str, reason: str, message: str, obj: tuple[str, str], seconds_ago: float,
              count: int = 1) -> Any:
        return self.create(f"/api/v1/namespaces/{ns}/events", {
            "apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": ns},
            "type": type_, "reason": reason, "message": message, "count": count,
            "involvedObject": {"kind": obj[0], "name": obj[1], "namespace": ns},
            "firstTimestamp": ts(seconds_ago + 60), "lastTimestamp": ts(seconds_ago),
        })

    # -- playing the controllers ---------------------------------------------------------------

    def finish_job(self, ns: str, job_name: str, *, succeeded: bool, log: str) -> None:
        """What the Job controller and the kubelet do for a one-pod Job: run its pod (labelled
        job-name=<job>, owned by the Job), then mark the Job Complete or Failed."""
        job = self.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{job_name}")
        template = (job["spec"].get("template") or {})
        labels = {**((template.get("metadata") or {}).get("labels") or {}), "job-name": job_name,
                  "batch.kubernetes.io/job-name": job_name}
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": job["metadata"].get("uid", ""), "controller": True}
        self.pod(ns, f"{job_name}-x7k2p", labels, phase="Succeeded" if succeeded else "Failed", ready=False, log=log, owner=owner)
        now = ts()
        if succeeded:
            status = {"succeeded": 1, "startTime": ts(5), "completionTime": now,
                      "conditions": [{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
                                     {"type": "Complete", "status": "True", "lastTransitionTime": now}]}
        else:
            status = {"failed": 1, "startTime": ts(5),
                      "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                      "message": "Job has reached the specified backoff limit", "lastTransitionTime": now}]}
        self.merge(f"/apis/batch/v1/namespaces/{ns}/jobs/{job_name}/status", {"status": status})
