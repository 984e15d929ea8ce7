"""cnpg.promote: switch a CloudNativePG cluster's primary over to another instance.

What `kubectl cnpg promote CLUSTER INSTANCE` does (cloudnative-pg internal/cmd/plugin/promote):
read the Cluster, and patch its STATUS subresource (a JSON merge patch carrying the
resourceVersion read: optimistic locking, retried on a conflict) with status.targetPrimary =
INSTANCE, status.targetPrimaryTimestamp = now, phase "Switchover in progress" and phaseReason
"Switching over to INSTANCE". The operator then does the switchover: it shuts the old primary
down, promotes the instance, and sets status.currentPrimary. dbops checks first (the Cluster is
healthy, no switchover is under way, the instance exists, is ready, is not fenced and is not the
primary), asks for the cluster's name, and afterwards waits until status.currentPrimary is the
instance and the phase is healthy again.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

from dbops.platform import kubernetes as k8s
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.k8s import common

POLL_SECONDS = 1.0
MAX_WAIT = 3600.0
CONFLICT_RETRIES = 5  # client-go's retry.DefaultBackoff tries 5 times, as the plugin does
FENCED_ANNOTATION = "cnpg.io/fencedInstances"


def _cluster_name(ctx: Context) -> str:
    name = common.settings(ctx).cnpg_cluster
    if not name:
        raise RuntimeError(f"{ctx.ref.key}'s [kubernetes] names no cnpg_cluster (the CloudNativePG Cluster object)")
    return str(name)


def _fenced(cluster: dict[str, Any], instance: str) -> bool:
    raw = ((cluster.get("metadata") or {}).get("annotations") or {}).get(FENCED_ANNOTATION)
    if not raw:
        return False
    try:
        fenced = json.loads(raw)
    except ValueError:
        return False  # an annotation CNPG itself would reject; the operator is the judge
    return isinstance(fenced, list) and (instance in fenced or "*" in fenced)


async def check_cluster(ctx: Context) -> Verdict:
    if not 0 < float(ctx.params["timeout"]) <= MAX_WAIT:
        return Verdict(False, f"--param timeout={ctx.params['timeout']:g}: give seconds between 0 and {MAX_WAIT:g}")
    name = _cluster_name(ctx)
    cluster = await common.call(ctx, k8s.get_cnpg_cluster, name)
    status = k8s.cnpg_status(cluster)
    ctx.state["cluster"] = name
    ctx.state["resource_version"] = (cluster.get("metadata") or {}).get("resourceVersion", "")
    ctx.state["old_primary"] = status.current_primary
    if status.switchover_in_progress:
        return Verdict(False, f"a switchover is already under way: targetPrimary {status.target_primary}, currentPrimary {status.current_primary}")
    if not status.healthy:
        return Verdict(False, f"Cluster {name} is not healthy: phase {status.phase!r}")
    return Verdict(True, f"Cluster {name}: {status.phase}, primary {status.current_primary}, "
                         f"{status.ready_instances}/{status.instances} instances ready")


async def check_instance(ctx: Context) -> Verdict:
    name = _cluster_name(ctx)
    instance = ctx.params["instance"]
    cluster = await common.call(ctx, k8s.get_cnpg_cluster, name)
    status = k8s.cnpg_status(cluster)
    pods = {(p.get("metadata") or {}).get("name"): p for p in await common.call(ctx, k8s.cnpg_instance_pods, name)}
    if instance not in pods:
        return Verdict(False, f"{instance!r} is not an instance of Cluster {name}: {', '.join(sorted(str(p) for p in pods)) or 'no pods labelled cnpg.io/cluster=' + name}")
    if instance in (status.current_primary, status.target_primary):
        return Verdict(False, f"{instance} is already the primary of Cluster {name}")
    if _fenced(cluster, instance):
        return Verdict(False, f"{instance} is fenced ({FENCED_ANNOTATION}) and cannot be promoted")
    conditions = (pods[instance].get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    if not ready:
        return Verdict(False, f"{instance} is not ready (its pod's Ready condition is not True)")
    return Verdict(True, f"{instance} is a ready replica of Cluster {name}")


def render(ctx: Context) -> list[str]:
    if "cluster" not in ctx.state:
        return ["# the Cluster is read by the pre-check"]
    ns = common.settings(ctx).namespace
    name, instance = ctx.state["cluster"], ctx.params["instance"]
    patch = k8s.cnpg_promotion_patch(ctx.state["resource_version"], instance, datetime.now(UTC))
    patch["status"]["targetPrimaryTimestamp"] = "<now, RFC 3339>"
    return [f"kubectl cnpg promote {name} {instance} -n {ns}",
            f"# = PATCH /apis/{k8s.CNPG_GROUP}/{k8s.CNPG_VERSION}/namespaces/{ns}/clusters/{name}/status (application/merge-patch+json):",
            json.dumps(patch, sort_keys=True),
            "# (resourceVersion: the one read just before; on a 409 Conflict the Cluster is read again, and a switchover "
            "started meanwhile stops the step)",
            f"# then read the Cluster every {POLL_SECONDS:g}s until status.currentPrimary is {instance} and the phase is healthy "
            f"(at most {ctx.params['timeout']:g}s)"]


async def promote(ctx: Context) -> None:
    name, instance = ctx.state["cluster"], ctx.params["instance"]
    for attempt in range(CONFLICT_RETRIES):
        cluster = await common.call(ctx, k8s.get_cnpg_cluster, name)
        status = k8s.cnpg_status(cluster)
        if status.target_primary == instance:
            ctx.log(f"{instance} is already the target primary of Cluster {name} (set before this step was interrupted?)")
            return
        if status.switchover_in_progress:
            raise RuntimeError(f"a switchover started meanwhile: targetPrimary {status.target_primary}; not promoting")
        rv = (cluster.get("metadata") or {}).get("resourceVersion", "")
        try:
            await common.call(ctx, k8s.patch_cnpg_status, name, k8s.cnpg_promotion_patch(rv, instance, datetime.now(UTC)))
        except k8s.KubernetesError as exc:
            if exc.status == 409 and attempt + 1 < CONFLICT_RETRIES:
                ctx.log(f"the Cluster changed while patching (409 Conflict); reading it again (attempt {attempt + 2})")
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            raise
        ctx.log(f"Cluster {name}: targetPrimary set to {instance}; the operator switches over now")
        return


async def verify_promoted(ctx: Context) -> Verdict:
    name, instance = ctx.state["cluster"], ctx.params["instance"]
    deadline = time.monotonic() + float(ctx.params["timeout"])
    shown = ""
    while True:
        status = k8s.cnpg_status(await common.call(ctx, k8s.get_cnpg_cluster, name))
        now = f"phase {status.phase!r}, currentPrimary {status.current_primary}, targetPrimary {status.target_primary}"
        if now != shown:
            ctx.log(f"Cluster {name}: {now}")
            shown = now
        if status.current_primary == instance and status.healthy:
            return Verdict(True, f"{instance} is the primary of Cluster {name} and the cluster is healthy")
        if status.target_primary and status.target_primary != instance:
            return Verdict(False, f"the operator is switching to {status.target_primary}, not {instance}")
        if time.monotonic() >= deadline:
            return Verdict(False, f"after {ctx.params['timeout']:g}s: {now} (the operator may still be switching over; "
                                  f"kubectl cnpg status {name})")
        await asyncio.sleep(POLL_SECONDS)


RUNBOOK = Runbook(
    id="cnpg.promote",
    title="Promote a CloudNativePG instance to primary (as kubectl cnpg promote)",
    params=(
        Param("instance", "the instance (pod) to promote, e.g. orders-db-2", required=True),
        Param("timeout", f"seconds to wait for the operator to finish the switchover (at most {MAX_WAIT:g})", type=float, default=300.0),
    ),
    prechecks=(
        Check("cluster", "the Cluster is healthy and no switchover is under way", check_cluster),
        Check("instance", "the instance exists, is ready, is not fenced and is not the primary", check_instance),
    ),
    steps=(
        Step("promote", "Set the Cluster's target primary", "patches the Cluster's status as kubectl cnpg promote does; "
             "the operator then fences the old primary, promotes the instance and repoints the services",
             Kind.ACTION, render, run=promote, verify=verify_promoted, destructive=True, confirm=Confirm.TYPE_CLUSTER,
             timeout=MAX_WAIT + 60, produces=(),
             on_failure="kubectl cnpg status CLUSTER shows what the operator is doing; do not promote again while a "
                        "switchover is under way"),
    ),
    teardown=common.teardown,
)
