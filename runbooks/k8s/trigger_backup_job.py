"""k8s.trigger-backup-job: run one of the cluster's backup CronJobs now, as a Job.

Exactly what `kubectl create job NAME --from=cronjob/CRONJOB` does: a Job with the CronJob's
jobTemplate (labels, annotations, spec), the annotation cronjob.kubernetes.io/instantiate:
manual, and an ownerReference to the CronJob (so it shows up in the CronJob's history and is
cleaned up with it). Then the Job is watched until the Job controller says Complete or Failed
(or `timeout` passes), and the log of each of its pods is shown. The audit record of the step
carries the outcome: a failed backup Job is a failed step.
"""

from __future__ import annotations

import asyncio
import time

from dbops.platform import kubernetes as k8s
from dbops.runbook.model import Check, Confirm, Context, Kind, Param, Runbook, Step, Verdict
from dbops.runbooks.k8s import common
from dbops.secrets import scrub_text

POLL_SECONDS = 1.0
LOG_LINES = 40  # the tail of each pod's log shown in the run's output
MAX_WAIT = 86400.0  # the longest `timeout` accepted: a backup running for a day needs a look anyway
YAML_WIDTH = 67  # 80 columns less the "       $ #   " before each line of the Job in the CLI's plan


async def check_cronjob(ctx: Context) -> Verdict:
    if not 0 < float(ctx.params["timeout"]) <= MAX_WAIT:
        return Verdict(False, f"--param timeout={ctx.params['timeout']:g}: give seconds between 0 and {MAX_WAIT:g}")
    kube = common.settings(ctx)
    conn = await common.connection(ctx)
    name = ctx.params["cronjob"]
    selector = kube.backup_selector or kube.selector
    listed = await asyncio.to_thread(conn.call, f"list CronJobs in {kube.namespace}", conn.batch.list_namespaced_cron_job,
                                     kube.namespace, label_selector=selector)
    names = sorted((c.get("metadata") or {}).get("name", "?") for c in listed.get("items") or [])
    if name not in names:
        return Verdict(False, f"{name!r} is not one of {ctx.ref.name}'s backup CronJobs in {kube.namespace} "
                              f"(selector {selector}): {', '.join(names) or 'none found'}")
    cronjob = await common.call(ctx, k8s.get_cronjob, name)
    job_name = k8s.manual_job_name(name, ctx.run_id)
    # The Job body stays out of ctx.state: the journal is written to disk, and a CronJob's
    # template may carry literal secrets in its environment.
    ctx.resources["job"] = k8s.job_from_cronjob(cronjob, job_name)
    ctx.state["job_name"] = job_name
    ctx.state["namespace"] = kube.namespace
    status = cronjob.get("status") or {}
    notes = []
    if (cronjob.get("spec") or {}).get("suspend"):
        notes.append("the CronJob is suspended (a manual Job runs anyway)")
    if status.get("active"):
        notes.append(f"{len(status['active'])} Job(s) of it are running now")
    return Verdict(True, f"CronJob {kube.namespace}/{name}, schedule {(cronjob.get('spec') or {}).get('schedule', '?')}"
                         + (f"; {'; '.join(notes)}" if notes else ""))


def render(ctx: Context) -> list[str]:
    job = ctx.resources.get("job")
    if job is None:
        return ["# the Job is built from the CronJob read by the pre-check"]
    job = k8s.redacted_job(job)
    ns = job["metadata"]["namespace"]
    lines = [f"kubectl create job {job['metadata']['name']} --from=cronjob/{ctx.params['cronjob']} -n {ns}",
             f"# = POST /apis/batch/v1/namespaces/{ns}/jobs with this Job",
             "# (its name ends in the run's id; what looks like a secret is ***):"]
    lines += [f"#   {line}" for line in common.as_yaml(job, YAML_WIDTH)]
    lines += [f"# then read the Job every {POLL_SECONDS:g}s until it is Complete or Failed",
              f"# (at most {ctx.params['timeout']:g}s), and show its pods' logs"]
    return lines


async def run_job(ctx: Context) -> None:
    name = ctx.state["job_name"]
    job = ctx.resources.get("job")
    if job is None:  # resumed after a crash: built again from the CronJob, as the pre-check did
        job = k8s.job_from_cronjob(await common.call(ctx, k8s.get_cronjob, ctx.params["cronjob"]), name)
    try:
        await common.call(ctx, k8s.create_job, job)
        ctx.log(f"created Job {job['metadata']['namespace']}/{name}")
    except k8s.KubernetesError as exc:
        if exc.status != 409:
            raise
        # A resumed run: the Job was created before the crash. Only ours is watched.
        existing = await common.call(ctx, k8s.get_job, name)
        owners = [o.get("name") for o in (existing.get("metadata") or {}).get("ownerReferences") or []]
        if ctx.params["cronjob"] not in owners:
            raise RuntimeError(f"a Job named {name} exists and was not made from CronJob {ctx.params['cronjob']}") from None
        ctx.log(f"Job {name} already exists (created by this run before it was interrupted); watching it")
    deadline = time.monotonic() + float(ctx.params["timeout"])
    outcome, last = "running", {}
    while True:
        last = await common.call(ctx, k8s.get_job, name)
        outcome = k8s.job_outcome(last)
        if outcome != "running" or time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL_SECONDS)
    ctx.state["outcome"] = outcome
    await _show_logs(ctx, name)
    status = last.get("status") or {}
    if outcome == "running":
        raise RuntimeError(f"Job {name} had not finished after {ctx.params['timeout']:g}s (it keeps running; "
                           f"kubectl get job {name} -n {job['metadata']['namespace']})")
    if outcome == "failed":
        why = next((f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ") for c in status.get("conditions") or []
                    if c.get("type") == "Failed" and c.get("status") == "True"), "")
        raise RuntimeError(f"Job {name} failed ({status.get('failed', 0)} failed pod(s)){': ' + why if why else ''}")
    ctx.log(f"Job {name} succeeded" + (f" at {status['completionTime']}" if status.get("completionTime") else ""))


async def _show_logs(ctx: Context, job_name: str) -> None:
    try:
        pods = await common.call(ctx, k8s.job_pods, job_name)
    except k8s.KubernetesError as exc:
        ctx.log(f"the Job's pods cannot be listed: {exc}")
        return
    if not pods:
        ctx.log(f"Job {job_name} has no pods (yet); no logs to show")
    for pod in pods:
        pod_name = (pod.get("metadata") or {}).get("name", "?")
        phase = (pod.get("status") or {}).get("phase", "?")
        try:
            text = await common.call(ctx, k8s.pod_log, pod_name, LOG_LINES)
        except k8s.KubernetesError as exc:
            ctx.log(f"pod {pod_name} ({phase}): logs unavailable: {exc}")
            continue
        lines = text.rstrip("\n").splitlines()
        ctx.log(f"pod {pod_name} ({phase}): last {len(lines)} log line(s)" if lines else f"pod {pod_name} ({phase}): empty log")
        for line in lines[-LOG_LINES:]:  # a backup tool may print its connection string: scrubbed
            ctx.log(f"  | {scrub_text(line)}")


async def verify_job(ctx: Context) -> Verdict:
    job = await common.call(ctx, k8s.get_job, ctx.state["job_name"])
    outcome = k8s.job_outcome(job)
    return Verdict(outcome == "succeeded", f"Job {ctx.state['job_name']}: {outcome}")


RUNBOOK = Runbook(
    id="k8s.trigger-backup-job",
    engine="kubernetes",
    title="Run a backup CronJob now (as kubectl create job --from=cronjob)",
    params=(
        Param("cronjob", "the backup CronJob to run (one of the cluster's, by backup_selector)", required=True),
        Param("timeout", f"seconds to wait for the Job to finish (at most {MAX_WAIT:g})", type=float, default=3600.0),
    ),
    prechecks=(Check("cronjob", "the CronJob is one of the cluster's backup CronJobs", check_cronjob),),
    steps=(
        Step("run-job", "Create the Job from the CronJob and watch it to completion",
             "creates the Job shown (the CronJob's template, marked manual, owned by the CronJob), waits until it "
             "succeeds or fails, and shows its pods' logs", Kind.ACTION, render, run=run_job, verify=verify_job,
             confirm=Confirm.YES_NO, timeout=MAX_WAIT + 120, produces=("outcome",),
             on_failure="read the pod logs above; the Job stays for inspection (kubectl describe job NAME); "
                        "run again once the cause is fixed"),
    ),
    teardown=common.teardown,
)
