"""The objects the Kubernetes runbooks write, built before they are sent, so that the plan shows
exactly what will be sent: a Job made from a CronJob (k8s.trigger-backup-job) and a CNPG
Cluster's status patch (cnpg.promote). Pure: no API calls here."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from dbops.platform.kubernetes.data import CNPG_SWITCHOVER, INSTANTIATE_ANNOTATION, micro_time


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


def manual_job_name(cronjob: str, run_id: str) -> str:
    """`<cronjob>-manual-<run suffix>`, at most 63 characters (a Job's name becomes a label value)."""
    suffix = "-manual-" + re.sub(r"[^a-z0-9]", "", run_id.lower())[-10:]
    return cronjob[: 63 - len(suffix)].rstrip("-.") + suffix


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
