"""Kubernetes around a cluster, against the Kubernetes API stand-in (fabric8 kubernetes-server-mock
in CRUD mode, tests/fakes/kubernetes.py): the pane at 80x24, k8s.trigger-backup-job (the Job
made from the CronJob's template, its outcome and logs), cnpg.promote, runbook locks as Leases
(held by another operator, expired and taken over), and an API that cannot be reached.

The stand-in has no controllers: the tests play the Job controller and the CNPG operator."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from dbops.config import load
from dbops.platform import kubernetes as k8s
from dbops.runbook.locks import lease_name

from ..fakes.kubernetes import ApiError, Kube, running_stand_in, ts

NS = "orders"
LOCK_NS = "dbops-locks"
CLUSTER = "orders"
CRON = "orders-db-backup"
TOKEN = "s3cr3t-bearer-token-never-shown"
SELECTOR = "app.kubernetes.io/name=orders-db"
LITERAL_PASSWORD = "hunter2-in-the-template"

CRON_TEMPLATE = {
    "metadata": {"labels": {"app.kubernetes.io/name": "orders-db", "role": "backup"}, "annotations": {"team": "dba"}},
    "spec": {
        "backoffLimit": 0,
        "template": {
            "metadata": {"labels": {"role": "backup"}},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "backup", "image": "example/pg-backup:15",
                                     # A literal secret in a template happens: shown nowhere.
                                     "command": ["sh", "-c", f"PGPASSWORD={LITERAL_PASSWORD} pg-backup --to s3://backups/orders"],
                                     "args": ["--token", LITERAL_PASSWORD],
                                     "env": [{"name": "PGHOST", "value": "orders-db-rw"},
                                             {"name": "PGPASSWORD", "value": LITERAL_PASSWORD}]}]},
        },
    },
}


@dataclass
class Env:
    kube: Kube
    config: Path
    state_dir: Path

    def dbops(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(self.config), *args], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, "DBOPS_STATE_DIR": str(self.state_dir)})

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "dbops.cli", "--config", str(self.config), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                env={**os.environ, "DBOPS_STATE_DIR": str(self.state_dir)})

    def audit(self) -> list[dict[str, Any]]:
        path = self.state_dir / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def ref(self) -> Any:
        return next(r for r in load(self.config).clusters() if r.name == CLUSTER)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(kube: Kube) -> None:
    kube.namespace(NS)
    kube.namespace(LOCK_NS)
    labels = {"app.kubernetes.io/name": "orders-db"}
    kube.create(f"/apis/apps/v1/namespaces/{NS}/statefulsets", {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "orders-db", "labels": labels},
        "spec": {"replicas": 3, "serviceName": "orders-db", "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "main", "image": "example/db:1"}]}}},
        "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3}})
    kube.pod(NS, "orders-db-0", labels)
    kube.pod(NS, "orders-db-1", labels, restarts=1)
    kube.pod(NS, "orders-db-2", labels, ready=False, restarts=7, waiting="CrashLoopBackOff", node="node-3")
    kube.pod(NS, "unrelated-0", {"app.kubernetes.io/name": "other"})
    cron = kube.create(f"/apis/batch/v1/namespaces/{NS}/cronjobs", {
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": CRON, "labels": {**labels, "role": "backup"}},
        "spec": {"schedule": "17 2 * * *", "jobTemplate": CRON_TEMPLATE},
        "status": {"lastScheduleTime": ts(5 * 3600)}})
    owner = {"apiVersion": "batch/v1", "kind": "CronJob", "name": CRON, "uid": cron["metadata"]["uid"], "controller": True}
    for name, ago, ok in (("orders-db-backup-29000000", 5 * 3600, True), ("orders-db-backup-29000100", 3 * 3600, False)):
        kube.create(f"/apis/batch/v1/namespaces/{NS}/jobs", {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "ownerReferences": [owner], "labels": CRON_TEMPLATE["metadata"]["labels"]},
            "spec": CRON_TEMPLATE["spec"],
            "status": {"completionTime": ts(ago), "conditions": [{"type": "Complete" if ok else "Failed", "status": "True"}]}})
    kube.create(f"/apis/batch/v1/namespaces/{NS}/cronjobs", {
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "unrelated-report", "labels": {"app": "reports"}},
        "spec": {"schedule": "@hourly", "jobTemplate": CRON_TEMPLATE}})
    kube.event(NS, "orders-db-2.backoff", type_="Warning", reason="BackOff", message="Back-off restarting failed container main",
               obj=("Pod", "orders-db-2"), seconds_ago=60, count=12)
    kube.event(NS, "orders-db-0.pulled", type_="Normal", reason="Pulled", message="Container image already present",
               obj=("Pod", "orders-db-0"), seconds_ago=30)
    kube.event(NS, "orders-db-1.old", type_="Warning", reason="OldUnhealthy", message="Readiness probe failed long ago",
               obj=("Pod", "orders-db-1"), seconds_ago=3 * 3600)
    # A CloudNativePG cluster, healthy, orders-pg-1 primary; its status as the operator wrote it.
    kube.create(f"/apis/postgresql.cnpg.io/v1/namespaces/{NS}/clusters", {
        "apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "metadata": {"name": "orders-pg"}, "spec": {"instances": 3}})
    cnpg_status(kube, phase=k8s.CNPG_HEALTHY, current="orders-pg-1", target="orders-pg-1")
    for n in (1, 2, 3):
        kube.pod(NS, f"orders-pg-{n}", {"cnpg.io/cluster": "orders-pg", "cnpg.io/instanceName": f"orders-pg-{n}"}, ready=n != 3)


def cnpg_status(kube: Kube, *, phase: str, current: str, target: str) -> None:
    """What the CNPG operator writes (status subresource)."""
    path = f"/apis/postgresql.cnpg.io/v1/namespaces/{NS}/clusters/orders-pg"
    obj = kube.get(path)
    obj["status"] = {**(obj.get("status") or {}), "phase": phase, "currentPrimary": current, "targetPrimary": target,
                     "instances": 3, "readyInstances": 2}
    kube.replace(path + "/status", obj)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_stand_in() as kube:
        seed(kube)
        kubeconfig = kube.kubeconfig(token=TOKEN)
        root = tmp_path_factory.mktemp("k8s")
        config = root / "dbops.toml"
        config.write_text(f"""
[locks.kubernetes]
namespace = "{LOCK_NS}"
kubeconfig = "{kubeconfig}"
duration_seconds = 10

[environments.prod]
mode = "operator"

[environments.prod.clusters.{CLUSTER}]
engine = "postgres"
members = [{{ name = "orders-pg-1", host = "127.0.0.1", port = {closed_port()} }}]
backups.max_age_seconds = 7200

[environments.prod.clusters.{CLUSTER}.kubernetes]
namespace = "{NS}"
selector = "{SELECTOR}"
backup_selector = "role=backup"
kubeconfig = "{kubeconfig}"
context = "stand-in"
cnpg_cluster = "orders-pg"
events_seconds = 3600
""")
        yield Env(kube, config, root / "state")


# ---------------------------------------------------------------------------------------------
# The pane


async def test_the_pane_lists_pods_statefulsets_cronjobs_and_recent_warnings_at_80x24(env: Env, tmp_path: Path) -> None:
    from textual.widgets import DataTable

    from dbops.screens.app import DbopsApp
    from dbops.screens.kubernetes import KubernetesScreen

    from .test_ui_live import rows, settle

    app = DbopsApp(load(env.config), state_dir=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("K")
        await settle(pilot, lambda: isinstance(app.screen, KubernetesScreen) and app.screen.is_mounted, "the Kubernetes pane")
        pane = app.screen
        pods = pane.query_one("#k8s-pods-table", DataTable)
        await settle(pilot, lambda: pods.row_count == 3, "three pods", show=lambda: pane.summary + rows(pods))
        shown = rows(pods)
        assert "orders-db-0 Running 1/1 0 node-1 " in shown
        assert "orders-db-2 Running (CrashLoopBackOff) 0/1 7 node-3" in shown
        assert "unrelated-0" not in shown  # not selected by the cluster's selector
        # What is wrong, on top: the crash-looping pod, the short StatefulSet, the failed backup.
        assert "CRIT" in pane.summary and "pod orders-db-2 Running, 0/1 ready (CrashLoopBackOff)" in pane.summary
        assert "CNPG orders-pg: primary orders-pg-1, 2/3 ready" in pane.summary
        assert TOKEN not in pane.summary

        await pilot.press("2")
        assert rows(pane.query_one("#k8s-sets-table", DataTable)).startswith("orders-db 2/3 3 ")
        await pilot.press("3")
        crons = rows(pane.query_one("#k8s-cronjobs-table", DataTable))
        # The last success is the newest Job the CronJob owns that completed (5 h ago), not the
        # newer failed one (3 h ago).
        assert crons == f"{CRON} 17 2 * * * no 5.0h ago 5.0h ago 0 prod/orders", crons
        # Older than the cluster's backups.max_age_seconds (2 h): said on top.
        assert f"backup CronJob {CRON} last succeeded 5.0h ago" in pane.summary
        assert "unrelated-report" not in crons
        await pilot.press("4")
        events = rows(pane.query_one("#k8s-events-table", DataTable))
        assert events.startswith("Pod/orders-db-2: BackOff ") and events.endswith(" 12 Back-off restarting failed container main prod/orders")
        assert "Pulled" not in events and "OldUnhealthy" not in events  # Normal, and older than events_seconds
        assert pane.query_one("#k8s-events-table", DataTable).size.width <= 80


def test_an_unreachable_api_a_bad_context_and_a_missing_namespace_are_one_clear_line(env: Env, tmp_path: Path) -> None:
    from dbops.config import KubernetesRef

    port = closed_port()
    dead = tmp_path / "dead-kubeconfig"
    dead.write_text(env.kube.kubeconfig(token=TOKEN).read_text().replace(env.kube.url, f"http://127.0.0.1:{port}"))
    with pytest.raises(k8s.KubernetesError) as err:
        k8s.overview(KubernetesRef(namespace=NS, selector=SELECTOR, kubeconfig=str(dead)), timeout=3)
    assert str(err.value).startswith(f"read namespace {NS}: cannot reach the Kubernetes API at http://127.0.0.1:{port}")
    assert "\n" not in str(err.value) and TOKEN not in str(err.value)

    with pytest.raises(k8s.KubernetesError) as err:
        k8s.overview(KubernetesRef(namespace=NS, selector=SELECTOR, kubeconfig=str(env.kube.kubeconfig()), context="prod-eu"), timeout=3)
    assert str(err.value).startswith(f"kubeconfig {env.kube.kubeconfig()}, context 'prod-eu': ")
    assert "prod-eu" in str(err.value).split(": ", 1)[1]

    with pytest.raises(k8s.KubernetesError) as err:
        k8s.overview(KubernetesRef(namespace="ordrs", selector=SELECTOR, kubeconfig=str(env.kube.kubeconfig())), timeout=3)
    assert str(err.value) == f"namespace 'ordrs' does not exist at {env.kube.url}"

    # The same through the runbook CLI: a failed pre-check naming the API, no traceback.
    cfg = tmp_path / "dead.toml"
    cfg.write_text(env.config.read_text().replace(f'kubeconfig = "{env.kube.kubeconfig()}"\ncontext', f'kubeconfig = "{dead}"\ncontext'))
    plan = subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(cfg), "runbook", "plan", "k8s.trigger-backup-job",
                           "--cluster", CLUSTER, "--param", f"cronjob={CRON}"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DBOPS_STATE_DIR": str(tmp_path / "state")})
    assert f"[FAIL] the CronJob is one of the cluster's backup CronJobs: could not be checked: list CronJobs in {NS}: " \
           f"cannot reach the Kubernetes API at http://127.0.0.1:{port}" in plan.stdout, plan.stdout + plan.stderr
    assert "Traceback" not in plan.stderr and TOKEN not in plan.stdout + plan.stderr

    # A Lease that cannot be taken (its API is down) refuses the run: the team asked for locks
    # that span hosts, and a lock not taken must not look like one held.
    cfg.write_text(env.config.read_text().replace(f'kubeconfig = "{env.kube.kubeconfig()}"\nduration', f'kubeconfig = "{dead}"\nduration'))
    run = subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(cfg), "runbook", "run", "k8s.trigger-backup-job",
                          "--cluster", CLUSTER, "--param", f"cronjob={CRON}", "--yes"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "DBOPS_STATE_DIR": str(tmp_path / "state")})
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"error: cannot take the runbook lock (Lease {LOCK_NS}/{lease_name('prod/' + CLUSTER)}): read Lease " in run.stderr
    assert f"cannot reach the Kubernetes API at http://127.0.0.1:{port}" in run.stderr and "Traceback" not in run.stderr


async def test_the_pane_says_when_the_api_cannot_be_reached(env: Env, tmp_path: Path) -> None:
    from dbops.screens.app import DbopsApp
    from dbops.screens.kubernetes import KubernetesScreen

    from .test_ui_live import settle

    port = closed_port()
    dead = tmp_path / "dead-kubeconfig"
    dead.write_text(env.kube.kubeconfig(token=TOKEN).read_text().replace(env.kube.url, f"http://127.0.0.1:{port}"))
    cfg = tmp_path / "dead.toml"
    cfg.write_text(env.config.read_text().replace(f'kubeconfig = "{env.kube.kubeconfig()}"\ncontext', f'kubeconfig = "{dead}"\ncontext'))
    app = DbopsApp(load(cfg), state_dir=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("K")
        await settle(pilot, lambda: isinstance(app.screen, KubernetesScreen) and "cannot reach" in app.screen.summary, "the error",
                     show=lambda: getattr(app.screen, "summary", ""))
        assert f" CRIT  prod/{CLUSTER}  ns {NS}\n   read namespace {NS}: cannot reach the Kubernetes API at http://127.0.0.1:{port}" in app.screen.summary
        assert TOKEN not in app.screen.summary


# ---------------------------------------------------------------------------------------------
# dbops check: what the pane judges, on the command line


def test_check_reports_what_the_pane_judges_in_text_and_json_and_no_platform_leaves_it_out(env: Env) -> None:
    text = env.dbops("check", "--no-backups")
    lines = text.stdout.splitlines()
    # The one line for the cluster's Kubernetes side, then its worst findings, one line each.
    assert f"CRIT     prod/{CLUSTER} kubernetes (namespace {NS})" in lines, text.stdout + text.stderr
    after = lines[lines.index(f"CRIT     prod/{CLUSTER} kubernetes (namespace {NS})") + 1:]
    assert after[:2] == ["  CRIT     pod orders-db-2 Running, 0/1 ready (CrashLoopBackOff)",
                         "  CRIT     StatefulSet orders-db: 2/3 ready"], text.stdout
    assert "  WARN     pod orders-db-1 restarted 1 time(s)" in after
    assert text.returncode == 2 and "Traceback" not in text.stderr and TOKEN not in text.stdout + text.stderr

    report = json.loads(env.dbops("check", "--no-backups", "--json").stdout)
    [kube] = report["platform"]
    assert (kube["cluster"], kube["kind"], kube["target"], kube["severity"], kube["error"]) == \
        (f"prod/{CLUSTER}", "kubernetes", f"namespace {NS}", "CRIT", None)
    assert kube["findings"][:2] == [{"severity": "CRIT", "message": "pod orders-db-2 Running, 0/1 ready (CrashLoopBackOff)"},
                                    {"severity": "CRIT", "message": "StatefulSet orders-db: 2/3 ready"}]
    assert {"severity": "WARN", "message": "1 Warning event(s) in the last 60m"} in kube["findings"]
    assert report["severity"] == "CRIT"

    left_out = env.dbops("check", "--no-backups", "--no-platform")
    assert "kubernetes" not in left_out.stdout and "orders-db-2" not in left_out.stdout, left_out.stdout
    assert json.loads(env.dbops("check", "--no-backups", "--no-platform", "--json").stdout)["platform"] == []


def test_check_counts_a_crash_looping_pod_toward_its_exit_code(env: Env, pg_sandbox: Any, tmp_path: Path) -> None:
    """The sandbox's real PostgreSQL, healthy, and a [kubernetes] section naming the stand-in's
    crash-looping pods: CRIT because of Kubernetes alone."""
    cfg = tmp_path / "pg-on-k8s.toml"
    cfg.write_text(pg_sandbox.config_path.read_text() + f"""
[environments.sandbox.clusters.sandbox-pg.kubernetes]
namespace = "{NS}"
selector = "{SELECTOR}"
kubeconfig = "{env.kube.kubeconfig()}"
""")

    def check(*args: str) -> tuple[int, dict[str, Any]]:
        r = subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(cfg), "check", "--no-backups", "--json", *args],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                           env={**os.environ, "DBOPS_STATE_DIR": str(tmp_path / "state")})
        assert "Traceback" not in r.stderr, r.stderr
        return r.returncode, json.loads(r.stdout)

    code, report = check("--no-platform")
    assert code < 2 and code == {"OK": 0, "WARN": 1}[report["severity"]], report  # the engine alone: not CRIT
    code, report = check()
    kube = next(p for p in report["platform"] if p["kind"] == "kubernetes")
    assert kube["cluster"] == "sandbox/sandbox-pg" and kube["severity"] == "CRIT"
    assert code == 2 and report["severity"] == "CRIT"


def test_check_says_in_one_line_that_the_api_cannot_be_reached(env: Env, tmp_path: Path) -> None:
    port = closed_port()
    dead = tmp_path / "dead-kubeconfig"
    dead.write_text(env.kube.kubeconfig(token=TOKEN).read_text().replace(env.kube.url, f"http://127.0.0.1:{port}"))
    cfg = tmp_path / "dead.toml"
    cfg.write_text(env.config.read_text().replace(f'kubeconfig = "{env.kube.kubeconfig()}"\ncontext', f'kubeconfig = "{dead}"\ncontext'))
    run = subprocess.run([sys.executable, "-m", "dbops.cli", "--config", str(cfg), "check", "--no-backups"], capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, "DBOPS_STATE_DIR": str(tmp_path / "state")})
    lines = run.stdout.splitlines()
    head = lines.index(f"CRIT     prod/{CLUSTER} kubernetes (namespace {NS})")
    assert lines[head + 1].startswith(f"  CRIT     read namespace {NS}: cannot reach the Kubernetes API at http://127.0.0.1:{port}")
    assert head + 2 == len(lines) or not lines[head + 2].startswith("  "), run.stdout  # that one line, nothing more
    assert run.returncode == 2 and "Traceback" not in run.stderr and TOKEN not in run.stdout + run.stderr


# ---------------------------------------------------------------------------------------------
# k8s.trigger-backup-job


def wait_for(what: str, predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def manual_jobs(kube: Kube) -> list[dict[str, Any]]:
    items = kube.get(f"/apis/batch/v1/namespaces/{NS}/jobs")["items"]
    return [j for j in items if (j["metadata"].get("annotations") or {}).get("cronjob.kubernetes.io/instantiate") == "manual"
            and not (j.get("status") or {}).get("conditions")]


def run_backup_job(env: Env, *, succeeded: bool, log: str, during: Any = None) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the runbook; play the Job controller for the Job it creates."""
    proc = env.start("runbook", "run", "k8s.trigger-backup-job", "--cluster", CLUSTER, "--param", f"cronjob={CRON}",
                     "--param", "timeout=60", "--yes")
    try:
        job = wait_for("the runbook's Job", lambda: next(iter(manual_jobs(env.kube)), None))
        if during is not None:
            during(job)
        env.kube.finish_job(NS, job["metadata"]["name"], succeeded=succeeded, log=log)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), job


def test_trigger_backup_job_creates_the_job_from_the_cronjob_template_and_reports_success(env: Env) -> None:
    plan = env.dbops("runbook", "plan", "k8s.trigger-backup-job", "--cluster", CLUSTER, "--param", f"cronjob={CRON}")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert f"$ kubectl create job {CRON}-manual-" in plan.stdout and f"--from=cronjob/{CRON} -n {NS}" in plan.stdout
    # The Job's exact body, as YAML in 80 columns and about half the lines indented JSON took: read
    # back, it is the Job the run creates, the template's literal secrets as ***.
    body = [line for line in plan.stdout.splitlines() if line.startswith("       $ #   ")]
    shown = yaml.safe_load("\n".join(line.removeprefix("       $ #   ") for line in body))
    assert all(len(line) <= 80 for line in body) and len(body) < 0.6 * len(json.dumps(shown, indent=2).splitlines()), "\n".join(body)
    cron = env.kube.get(f"/apis/batch/v1/namespaces/{NS}/cronjobs/{CRON}")
    redacted = copy.deepcopy(cron["spec"]["jobTemplate"]["spec"])
    [container] = redacted["template"]["spec"]["containers"]
    container["env"] = [{"name": "PGHOST", "value": "orders-db-rw"}, {"name": "PGPASSWORD", "value": "***"}]
    container["command"] = ["sh", "-c", "PGPASSWORD=*** pg-backup --to s3://backups/orders"]
    container["args"] = ["--token", "***"]
    assert shown["spec"] == redacted
    assert shown["metadata"]["name"].startswith(f"{CRON}-manual-") and shown["metadata"]["namespace"] == NS
    assert shown["metadata"]["annotations"] == {"cronjob.kubernetes.io/instantiate": "manual", "team": "dba"}
    assert shown["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "CronJob", "name": CRON, "uid": cron["metadata"]["uid"], "controller": True}]
    assert LITERAL_PASSWORD not in plan.stdout
    assert manual_jobs(env.kube) == []  # plan changes nothing

    lease = lease_name(f"prod/{CLUSTER}")
    held: list[dict[str, Any]] = []
    run, job = run_backup_job(env, succeeded=True, log="backup started\nbackup finished: 1.2 GiB to s3://backups/orders\n",
                              during=lambda _: held.append(env.kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{LOCK_NS}/leases/{lease}")))
    assert run.returncode == 0, run.stdout + run.stderr
    name = job["metadata"]["name"]
    assert f"Job {name} succeeded" in run.stdout
    assert f"pod {name}-x7k2p (Succeeded): last 2 log line(s)" in run.stdout
    assert "| backup finished: 1.2 GiB to s3://backups/orders" in run.stdout

    # Exactly kubectl create job --from=cronjob: the template's spec, labels and annotations,
    # marked manual, owned by the CronJob.
    created = env.kube.get(f"/apis/batch/v1/namespaces/{NS}/jobs/{name}")
    assert created["spec"] == cron["spec"]["jobTemplate"]["spec"]
    assert created["metadata"]["labels"] == CRON_TEMPLATE["metadata"]["labels"]
    assert created["metadata"]["annotations"] == {"cronjob.kubernetes.io/instantiate": "manual", "team": "dba"}
    assert created["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "CronJob", "name": CRON, "uid": cron["metadata"]["uid"], "controller": True}]

    # The Lease was held by this run while it ran, and released at the end.
    run_id = run.stdout.split("run id: ")[-1].strip()
    assert held and held[0]["spec"]["holderIdentity"].endswith(f", run {run_id}")
    after = env.kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{LOCK_NS}/leases/{lease}")
    assert "holderIdentity" not in after["spec"]

    records = [r for r in env.audit() if r["run_id"] == run_id]
    assert [(r["phase"], r.get("outcome")) for r in records][-2:] == [("intent", None), ("result", "ok")]
    assert any(f"kubectl create job {name} --from=cronjob/{CRON}" in c for c in records[-2]["params"]["commands"])
    assert TOKEN not in (env.state_dir / "audit.jsonl").read_text()
    assert LITERAL_PASSWORD not in run.stdout + run.stderr + (env.state_dir / "audit.jsonl").read_text()
    assert not any(LITERAL_PASSWORD in p.read_text() for p in env.state_dir.rglob("*") if p.is_file())  # the journal too


def test_a_failed_backup_job_is_a_failed_step_with_its_logs(env: Env) -> None:
    run, job = run_backup_job(env, succeeded=False, log=f"connecting to postgres://backup:{LITERAL_PASSWORD}@orders-db-rw/orders\n"
                                                        "FATAL: password authentication failed\n")
    name = job["metadata"]["name"]
    assert run.returncode == 2, run.stdout + run.stderr
    assert "| connecting to postgres://backup:***@orders-db-rw/orders" in run.stdout and LITERAL_PASSWORD not in run.stdout
    assert f"Job {name} failed (1 failed pod(s)): BackoffLimitExceeded: Job has reached the specified backoff limit" in run.stdout
    assert "| FATAL: password authentication failed" in run.stdout
    result = [r for r in env.audit() if r["phase"] == "result"][-1]
    assert result["outcome"] == "failed" and "BackoffLimitExceeded" in result["error"]


# ---------------------------------------------------------------------------------------------
# Leases


def put_lease(env: Env, holder: str, renewed_seconds_ago: float, duration: int = 60) -> None:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{LOCK_NS}/leases"
    name = lease_name(f"prod/{CLUSTER}")
    spec = {"holderIdentity": holder, "leaseDurationSeconds": duration, "leaseTransitions": 3,
            "acquireTime": ts(renewed_seconds_ago + 120), "renewTime": ts(renewed_seconds_ago)}
    try:
        current = env.kube.get(f"{path}/{name}")
    except ApiError as exc:
        if exc.status != 404:
            raise
        env.kube.create(path, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name}, "spec": spec})
        return
    env.kube.replace(f"{path}/{name}", {**current, "spec": spec})


@pytest.fixture
def bobs_lease(env: Env) -> Iterator[None]:
    """Bob's console holds the cluster (renewed 5 s ago, for 60 s); gone after the test."""
    put_lease(env, "bob on bastion-2, run 20261122-031500-abc123", renewed_seconds_ago=5)
    yield
    env.kube.delete(f"/apis/coordination.k8s.io/v1/namespaces/{LOCK_NS}/leases/{lease_name('prod/' + CLUSTER)}")


def test_a_lease_held_by_another_operator_refuses_the_runbook_naming_the_holder(env: Env, bobs_lease: None) -> None:
    jobs_before = len(env.kube.get(f"/apis/batch/v1/namespaces/{NS}/jobs")["items"])
    run = env.dbops("runbook", "run", "k8s.trigger-backup-job", "--cluster", CLUSTER, "--param", f"cronjob={CRON}", "--yes")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "another runbook holds this cluster: bob on bastion-2, run 20261122-031500-abc123, since " in run.stderr
    assert f"(Lease {LOCK_NS}/{lease_name('prod/' + CLUSTER)})" in run.stderr
    assert len(env.kube.get(f"/apis/batch/v1/namespaces/{NS}/jobs")["items"]) == jobs_before


async def test_the_wizard_refuses_the_run_naming_the_lease_holder(env: Env, bobs_lease: None, tmp_path: Path) -> None:
    from textual.widgets import Input

    from dbops.runbook.registry import load as load_runbooks
    from dbops.screens.app import DbopsApp
    from dbops.screens.runbook import RunbookScreen

    from .test_ui_live import settle

    app = DbopsApp(load(env.config), state_dir=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        app.push_screen(RunbookScreen(load_runbooks()[0]["k8s.trigger-backup-job"], env.ref()))
        await settle(pilot, lambda: isinstance(app.screen, RunbookScreen) and app.screen.is_mounted, "the runbook wizard")
        screen = app.screen
        screen.query_one("#param-cronjob", Input).value = CRON
        await pilot.press("ctrl+l")
        await settle(pilot, lambda: screen.plan is not None, "the plan")
        await pilot.press("ctrl+r")
        await settle(pilot, lambda: getattr(screen, "result", None) is not None, "the run's end", attempts=600)
        assert screen.result.message.startswith("another runbook holds this cluster: bob on bastion-2, run 20261122-031500-abc123")


def test_an_expired_lease_is_taken_over_and_renewed_while_the_run_lasts(env: Env) -> None:
    put_lease(env, "carol on bastion-3, run 20261121-220000-dead00", renewed_seconds_ago=600, duration=60)
    path = f"/apis/coordination.k8s.io/v1/namespaces/{LOCK_NS}/leases/{lease_name('prod/' + CLUSTER)}"
    held: list[dict[str, Any]] = []

    def while_the_job_runs(_: Any) -> None:
        taken = env.kube.get(path)["spec"]
        held.append(taken)
        # Renewed every duration_seconds / 3 (10 s here) while the runbook waits for the Job.
        held.append(wait_for("a renewal", lambda: (now := env.kube.get(path)["spec"])["renewTime"] != taken["renewTime"] and now, 30))

    run, _ = run_backup_job(env, succeeded=True, log="ok\n", during=while_the_job_runs)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "held by carol on bastion-3, run 20261121-220000-dead00 expired" in run.stderr
    assert held[0]["holderIdentity"] == held[1]["holderIdentity"] != "carol on bastion-3, run 20261121-220000-dead00"
    assert held[0]["leaseDurationSeconds"] == 10 and held[1]["acquireTime"] == held[0]["acquireTime"]
    after = env.kube.get(path)
    assert after["spec"]["leaseTransitions"] == 4 and "holderIdentity" not in after["spec"]

    # Every Lease write carries the resourceVersion read: a stale one is refused (409), which
    # is what keeps two consoles from both taking an expired Lease.
    conn = k8s.connect(LOCK_NS, str(env.kube.kubeconfig()))
    stale = {**after, "metadata": {**after["metadata"], "resourceVersion": str(int(after["metadata"]["resourceVersion"]) - 1)}}
    with pytest.raises(k8s.KubernetesError) as err:
        k8s.replace_lease(conn, stale)
    conn.close()
    assert err.value.status == 409 and str(err.value).startswith(f"update Lease {LOCK_NS}/{lease_name('prod/' + CLUSTER)}: conflict (409)")


async def test_a_lease_whose_version_moved_on_while_still_ours_is_released_not_left_held(env: Env) -> None:
    """A write to our Lease that changed only its resourceVersion (a renewal racing the release)
    used to make the release give up, saying the Lease had been taken over, and leave it held
    until it expired: another console was then refused for a minute."""
    from dbops.config import LeaseLocks
    from dbops.runbook.locks import Holder, LeaseLock

    notes: list[str] = []
    leases = LeaseLocks(namespace=LOCK_NS, kubeconfig=str(env.kube.kubeconfig()), duration_seconds=60)
    lock = LeaseLock(leases, "prod/moved-on", Holder("alice", "bastion-1", "20261122-100000-abc123", time.time()), notes.append)
    path = f"/apis/coordination.k8s.io/v1/namespaces/{LOCK_NS}/leases/{lease_name('prod/moved-on')}"
    await lock.acquire()
    held = env.kube.get(path)
    env.kube.replace(path, {**held, "spec": {**held["spec"], "renewTime": k8s.micro_time(datetime.now(UTC))}})  # as a renewal
    assert env.kube.get(path)["metadata"]["resourceVersion"] != held["metadata"]["resourceVersion"]
    await lock.release()
    assert "holderIdentity" not in env.kube.get(path)["spec"], notes
    assert notes == []
    env.kube.delete(path)


# ---------------------------------------------------------------------------------------------
# cnpg.promote


def test_cnpg_promote_patches_the_target_primary_and_waits_for_the_operator(env: Env) -> None:
    from dbops.runbook.registry import applies_to
    from dbops.runbook.registry import load as load_runbooks

    books = load_runbooks()[0]
    assert applies_to(books["cnpg.promote"], env.ref()) and applies_to(books["k8s.trigger-backup-job"], env.ref())

    refused = env.dbops("runbook", "plan", "cnpg.promote", "--cluster", CLUSTER, "--param", "instance=orders-pg-1")
    assert "[FAIL] the instance exists, is ready, is not fenced and is not the primary: orders-pg-1 is already the primary" in refused.stdout
    not_ready = env.dbops("runbook", "plan", "cnpg.promote", "--cluster", CLUSTER, "--param", "instance=orders-pg-3")
    assert "orders-pg-3 is not ready" in not_ready.stdout

    plan = env.dbops("runbook", "plan", "cnpg.promote", "--cluster", CLUSTER, "--param", "instance=orders-pg-2")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert f"$ kubectl cnpg promote orders-pg orders-pg-2 -n {NS}" in plan.stdout
    assert f"PATCH /apis/postgresql.cnpg.io/v1/namespaces/{NS}/clusters/orders-pg/status" in plan.stdout

    path = f"/apis/postgresql.cnpg.io/v1/namespaces/{NS}/clusters/orders-pg"
    proc = env.start("runbook", "run", "cnpg.promote", "--cluster", CLUSTER, "--param", "instance=orders-pg-2",
                     "--param", "timeout=60", "--confirm", CLUSTER)
    seen: dict[str, Any] = {}
    try:
        patched = wait_for("targetPrimary orders-pg-2", lambda: (s := env.kube.get(path).get("status") or {}).get("targetPrimary") == "orders-pg-2" and s)
        seen.update(patched)
        # The operator: switchover done, orders-pg-2 is the primary, healthy again.
        cnpg_status(env.kube, phase=k8s.CNPG_HEALTHY, current="orders-pg-2", target="orders-pg-2")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    # What kubectl cnpg promote writes: target, timestamp, phase and its reason.
    assert seen["phase"] == "Switchover in progress" and seen["phaseReason"] == "Switching over to orders-pg-2"
    assert seen["currentPrimary"] == "orders-pg-1" and seen["targetPrimaryTimestamp"]
    assert "orders-pg-2 is the primary of Cluster orders-pg and the cluster is healthy" in out
    results = [r for r in env.audit() if r["phase"] == "result"]
    assert results[-1]["action"] == "cnpg.promote:promote" and results[-1]["outcome"] == "ok"

    # A switchover under way refuses another promotion.
    cnpg_status(env.kube, phase=k8s.CNPG_SWITCHOVER, current="orders-pg-2", target="orders-pg-1")
    busy = env.dbops("runbook", "plan", "cnpg.promote", "--cluster", CLUSTER, "--param", "instance=orders-pg-1")
    assert "a switchover is already under way: targetPrimary orders-pg-1, currentPrimary orders-pg-2" in busy.stdout
    cnpg_status(env.kube, phase=k8s.CNPG_HEALTHY, current="orders-pg-1", target="orders-pg-1")


# ---------------------------------------------------------------------------------------------
# The sandbox


def test_the_sandbox_brings_up_a_seeded_stand_in_and_takes_it_down(tmp_path: Path) -> None:
    from dbops import sandbox
    from dbops.config import KubernetesRef
    from dbops.sandbox.kubernetes import NAMESPACE, KubernetesSandbox

    root = tmp_path / "sandbox"
    result = sandbox.up(["kubernetes"], root=root)
    try:
        [row] = sandbox.status(root=root)
        assert (row.engine, row.name, row.running) == ("kubernetes", "kubernetes-api", True)
        # Without the postgres sandbox there is no cluster to attach to: the config says how.
        assert "dbops sandbox up --engines postgres,kubernetes" in result.config_path.read_text()
        kubeconfig = KubernetesSandbox(root).state["kubeconfig"]
        view = k8s.overview(KubernetesRef(namespace=NAMESPACE, selector="app.kubernetes.io/name=sandbox-pg",
                                          backup_selector="app.kubernetes.io/component=backup", kubeconfig=kubeconfig,
                                          cnpg_cluster="sandbox-pg"))
        assert [p.name for p in view.pods] == ["sandbox-pg-1", "sandbox-pg-2", "sandbox-pg-3"]
        assert [c.name for c in view.cronjobs] == ["sandbox-pg-nightly-backup"] and view.cronjobs[0].last_success is not None
        assert view.cnpg is not None and (view.cnpg.healthy, view.cnpg.current_primary) == (True, "sandbox-pg-1")
        assert [e.reason for e in view.events] == ["Unhealthy"] and view.problems == []
    finally:
        sandbox.down(root=root)
    assert not KubernetesSandbox(root).is_running()


# ---------------------------------------------------------------------------------------------
# Fencing an old primary through Kubernetes (the failover's `kubernetes` fence method)


def _member(name: str) -> Any:
    from dbops.config import Member

    return Member(name=name, host="127.0.0.1", port=5432)


def test_the_kubernetes_fence_annotates_the_cnpg_cluster_and_reads_it_back(env: Env) -> None:
    import asyncio

    from dbops.engines.postgres.fencing import CNPG_FENCE_ANNOTATION, fence_kubernetes

    path = f"/apis/postgresql.cnpg.io/v1/namespaces/{NS}/clusters/orders-pg"
    try:
        result = asyncio.run(fence_kubernetes(env.ref(), _member("orders-pg-1")))
        assert result.fenced and result.method == "kubernetes" and result.member == "orders-pg-1"
        assert result.detail == "CNPG Cluster orders-pg fences orders-pg-1"
        annotations = env.kube.get(path)["metadata"]["annotations"]
        assert json.loads(annotations[CNPG_FENCE_ANNOTATION]) == ["orders-pg-1"]
        # A second fenced instance joins the list; the first stays fenced.
        again = asyncio.run(fence_kubernetes(env.ref(), _member("orders-pg-2")))
        assert again.fenced and again.detail == "CNPG Cluster orders-pg fences orders-pg-1, orders-pg-2"
        assert env.kube.get(path)["status"]["currentPrimary"] == "orders-pg-1"  # the status is the operator's
    finally:
        obj = env.kube.get(path)
        obj["metadata"].get("annotations", {}).pop(CNPG_FENCE_ANNOTATION, None)
        env.kube.replace(path, obj)


def test_the_kubernetes_fence_deletes_a_statefulset_pod_and_reads_it_back(env: Env) -> None:
    import asyncio
    import dataclasses

    from dbops.engines.postgres.fencing import fence_kubernetes

    ref = env.ref()
    plain = dataclasses.replace(ref, cluster=dataclasses.replace(
        ref.cluster, kubernetes=dataclasses.replace(ref.cluster.kubernetes, cnpg_cluster=None)))
    env.kube.pod(NS, "orders-db-fence-0", {"app": "fence-test"})
    result = asyncio.run(fence_kubernetes(plain, _member("orders-db-fence-0")))
    assert result.fenced and result.detail == f"pod {NS}/orders-db-fence-0 deleted"
    with pytest.raises(ApiError) as gone:
        env.kube.get(f"/api/v1/namespaces/{NS}/pods/orders-db-fence-0")
    assert gone.value.status == 404
    # Already gone is fenced too (a second try, or a pod that never came back).
    assert asyncio.run(fence_kubernetes(plain, _member("orders-db-fence-0"))).detail == f"pod {NS}/orders-db-fence-0 does not exist"


def test_a_kubernetes_fence_that_cannot_reach_the_api_is_one_line_and_not_fenced(env: Env, tmp_path: Path) -> None:
    import asyncio
    import dataclasses

    from dbops.config import Fencing
    from dbops.engines.postgres.fencing import fence

    ref = env.ref()
    bad = tmp_path / "kubeconfig"
    bad.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": f"http://127.0.0.1:{closed_port()}"}}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}]}))
    dead = dataclasses.replace(ref, cluster=dataclasses.replace(
        ref.cluster, kubernetes=dataclasses.replace(ref.cluster.kubernetes, kubeconfig=str(bad), context="dead")))
    lines: list[str] = []

    async def no_attestation(expected: str, commands: list[str]) -> bool:
        raise AssertionError("not asked: kubernetes is the only method")

    results = asyncio.run(fence(dead, Fencing(methods=["kubernetes"]), _member("orders-pg-1"), _member("orders-pg-2"),
                                log=lines.append, attest=no_attestation))
    assert [r.fenced for r in results] == [False]
    assert "\n" not in results[0].detail and TOKEN not in results[0].detail and results[0].detail
