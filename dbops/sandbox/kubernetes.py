"""A Kubernetes API stand-in: fabric8's kubernetes-server-mock (Maven Central) in CRUD mode,
served over plain HTTP on 127.0.0.1 by a small Java launcher.

Nothing real can run here (no container engine, no kubelet), so this is the one Kubernetes the
tests and the sandbox have. CRUD mode stores what is created, replaced or patched (built-in kinds
and custom resources alike) and answers gets and lists with label selectors the way the API
server does, including what dbops relies on:

- a replace or patch carrying a stale metadata.resourceVersion gets 409 Conflict, and a second
  create of the same name 409 AlreadyExists (Lease locks depend on both);
- the CloudNativePG Cluster kind (postgresql.cnpg.io/v1 clusters) is registered with a status
  subresource: a create or a plain patch leaves .status alone, only .../status changes it, as
  with CNPG's CRD;
- a body must name its apiVersion and kind (the real server infers them from the URL).

What the launcher adds, because the mock lacks it:

- ``fieldSelector=type=...`` on events (the mock knows only metadata.name/namespace selectors
  and would answer an empty list): filtered here, like the API server does;
- pod logs: the mock has no kubelet, so ``GET .../pods/NAME/log`` answers the text of the pod's
  annotation ``stand-in.dbops.dev/log`` (LOG_ANNOTATION), set by whoever plays the workload.

There are no controllers: whoever uses the stand-in plays the Job controller and the CNPG
operator (creates a Job's pod, marks the Job done, moves status.currentPrimary).

The jars are fetched once into the cache (dbops.sandbox.maven); the launcher is compiled once
per source version into the same cache.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dbops.sandbox import (
    ProcessStatus,
    Progress,
    SandboxError,
    SingleProcessSandbox,
    _quiet,
    down_on_failure,
    free_ports,
    maven,
    pid_alive,
    spawn,
    stop_processes,
    toml_str,
    wait_ready,
    write_engine_state,
)

VERSION = "6.13.4"
ARTIFACTS = (("io.fabric8", "kubernetes-server-mock", VERSION),)
HOST = "127.0.0.1"
HEAP = "-Xmx256m"
START_TIMEOUT = 60.0
STOP_GRACE = 10.0
READY = "dbops-stand-in: kubernetes API on"
LOG_ANNOTATION = "stand-in.dbops.dev/log"

LAUNCHER = """import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import io.fabric8.kubernetes.client.dsl.base.CustomResourceDefinitionContext;
import io.fabric8.kubernetes.client.server.mock.KubernetesCrudDispatcher;
import io.fabric8.kubernetes.client.server.mock.KubernetesMockServer;
import io.fabric8.mockwebserver.Context;
import java.net.InetAddress;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import okhttp3.mockwebserver.Dispatcher;
import okhttp3.mockwebserver.MockResponse;
import okhttp3.mockwebserver.MockWebServer;
import okhttp3.mockwebserver.RecordedRequest;

/** dbops test infrastructure: fabric8's Kubernetes API mock in CRUD mode, plain HTTP on loopback,
 *  plus pod logs from an annotation and fieldSelector type=... on events. */
public class Launcher {
    static final Pattern LOG = Pattern.compile("^(/api/v1/namespaces/[^/]+/pods/[^/?]+)/log(\\\\?.*)?$");
    static final Pattern EVENTS = Pattern.compile("^(/api/v1/namespaces/[^/]+/events)\\\\?(.*)$");
    static final ObjectMapper MAPPER = new ObjectMapper();

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        CustomResourceDefinitionContext cnpg = new CustomResourceDefinitionContext.Builder()
            .withGroup("postgresql.cnpg.io").withVersion("v1").withPlural("clusters").withKind("Cluster")
            .withScope("Namespaced").withStatusSubresource(true).build();
        KubernetesCrudDispatcher crud = new KubernetesCrudDispatcher(List.of(cnpg));
        Dispatcher dispatcher = new Dispatcher() {
            @Override
            public MockResponse dispatch(RecordedRequest request) throws InterruptedException {
                String path = request.getPath();
                if ("GET".equals(request.getMethod())) {
                    Matcher log = LOG.matcher(path);
                    if (log.matches()) {
                        return podLog(crud, log.group(1));
                    }
                    Matcher events = EVENTS.matcher(path);
                    if (events.matches() && events.group(2).contains("fieldSelector=")) {
                        return eventsOfType(crud, events.group(1), events.group(2));
                    }
                }
                return crud.dispatch(request);
            }
        };
        KubernetesMockServer server = new KubernetesMockServer(new Context(), new MockWebServer(), new HashMap<>(), dispatcher, false);
        server.init(InetAddress.getByName("127.0.0.1"), port);
        Runtime.getRuntime().addShutdownHook(new Thread(server::destroy));
        System.out.println("dbops-stand-in: kubernetes API on 127.0.0.1:" + port);
        Thread.currentThread().join();
    }

    static MockResponse podLog(KubernetesCrudDispatcher crud, String podPath) {
        MockResponse pod = crud.handleGet(podPath);
        if (!pod.getStatus().contains(" 200")) {
            return pod;
        }
        try {
            JsonNode text = MAPPER.readTree(pod.getBody().readUtf8()).path("metadata").path("annotations").path("stand-in.dbops.dev/log");
            return new MockResponse().setResponseCode(200).setHeader("Content-Type", "text/plain").setBody(text.asText(""));
        } catch (Exception e) {
            return new MockResponse().setResponseCode(500).setBody(e.toString());
        }
    }

    /** The events list with the fieldSelector's type=X / type!=X terms applied (others kept for the mock). */
    static MockResponse eventsOfType(KubernetesCrudDispatcher crud, String listPath, String query) {
        List<String> kept = new ArrayList<>();
        String want = null;
        String notWant = null;
        List<String> otherFields = new ArrayList<>();
        for (String param : query.split("&")) {
            if (!param.startsWith("fieldSelector=")) {
                kept.add(param);
                continue;
            }
            String selector = URLDecoder.decode(param.substring("fieldSelector=".length()), StandardCharsets.UTF_8);
            for (String term : selector.split(",")) {
                if (term.startsWith("type!=")) {
                    notWant = term.substring(6);
                } else if (term.startsWith("type==")) {
                    want = term.substring(6);
                } else if (term.startsWith("type=")) {
                    want = term.substring(5);
                } else if (!term.isEmpty()) {
                    otherFields.add(term);
                }
            }
        }
        if (!otherFields.isEmpty()) {
            kept.add("fieldSelector=" + String.join(",", otherFields));
        }
        MockResponse list = crud.handleGet(kept.isEmpty() ? listPath : listPath + "?" + String.join("&", kept));
        if (!list.getStatus().contains(" 200")) {
            return list;
        }
        try {
            ObjectNode body = (ObjectNode) MAPPER.readTree(list.getBody().readUtf8());
            ArrayNode items = MAPPER.createArrayNode();
            for (JsonNode item : body.path("items")) {
                String type = item.path("type").asText("");
                if ((want == null || want.equals(type)) && (notWant == null || !notWant.equals(type))) {
                    items.add(item);
                }
            }
            body.set("items", items);
            return new MockResponse().setResponseCode(200).setHeader("Content-Type", "application/json").setBody(MAPPER.writeValueAsString(body));
        } catch (Exception e) {
            return new MockResponse().setResponseCode(500).setBody(e.toString());
        }
    }
}
"""


@dataclass
class KubernetesStandIn:
    """A running stand-in: its API at `url` (plain HTTP, no authentication checked)."""

    port: int
    pid: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def kubeconfig(self, path: Path, namespace: str = "default", token: str = "stand-in-token") -> Path:
        """A kubeconfig with one context, `stand-in`, pointing at this API (the token is sent, not checked)."""
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: stand-in\n"
            f"clusters:\n- name: stand-in\n  cluster:\n    server: {self.url}\n"
            f"contexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: stand-in\n    namespace: {namespace}\n"
            f"users:\n- name: stand-in\n  user:\n    token: {token}\n")
        path.chmod(0o600)
        return path

    def is_running(self) -> bool:
        return pid_alive(self.pid, "dbops-k8s-stand-in")

    def stop(self) -> None:
        stop_processes({self.pid: "dbops-k8s-stand-in"}, signal.SIGTERM, STOP_GRACE)


def _classes(progress: Progress) -> tuple[Path, Path]:
    """(the mock's jars, the compiled launcher), both cached."""
    lib = maven.fetch(f"k8s-mock-{VERSION}", ARTIFACTS, progress)
    digest = hashlib.sha256(LAUNCHER.encode()).hexdigest()[:12]
    classes = maven.cache_dir() / "maven" / f"k8s-mock-{VERSION}" / f"launcher-{digest}"
    if (classes / "Launcher.class").exists():
        return lib, classes
    work = classes.with_name(classes.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "Launcher.java").write_text(LAUNCHER)
    r = subprocess.run([maven.tool("javac"), "-cp", f"{lib}/*", "-d", str(work), str(work / "Launcher.java")],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SandboxError(f"compiling the Kubernetes stand-in's launcher failed:\n{(r.stdout + r.stderr)[-1500:]}")
    shutil.rmtree(classes, ignore_errors=True)
    work.rename(classes)
    return lib, classes


def start(workdir: Path, progress: Progress = _quiet) -> KubernetesStandIn:
    """Start a stand-in with its log in `workdir`; wait until it answers."""
    lib, classes = _classes(progress)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "kubernetes-stand-in.log"
    port = free_ports(1)[0]
    # -Ddbops-k8s-stand-in marks the command line, so that stop() only ever signals this JVM.
    args = [maven.tool("java"), HEAP, "-Ddbops-k8s-stand-in=1", "-cp", f"{classes}:{lib}/*", "Launcher", str(port)]
    progress(f"start the Kubernetes API stand-in (fabric8 kubernetes-server-mock {VERSION}, CRUD mode) on {HOST}:{port}")
    pid = spawn("the Kubernetes API stand-in", args, log, workdir)
    stand_in = KubernetesStandIn(port, pid, log)
    try:
        wait_ready(pid, log, "the Kubernetes stand-in", READY.encode(), [port], timeout=START_TIMEOUT, host=HOST)
    except SandboxError:
        stand_in.stop()  # one that never came up must not be left running (a no-op if it exited)
        raise
    return stand_in


# ---------------------------------------------------------------------------------------------
# `dbops sandbox up --engines kubernetes`

ENGINE = "kubernetes"
NAMESPACE = "sandbox-db"
PG_CLUSTER = "sandbox-pg"  # the postgres sandbox's cluster (dbops.sandbox.postgres.CLUSTER)


def _rest(url: str, method: str, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SandboxError(f"seeding the Kubernetes stand-in failed at {method} {path}: {exc}") from None


def _stamp(seconds_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def seed_demo(url: str) -> None:
    """What the sandbox's namespace holds: the PostgreSQL cluster as CloudNativePG would run it
    (a Cluster object, healthy, sandbox-pg-1 primary; three instance pods, one of them
    restarting), a StatefulSet, a nightly backup CronJob with one successful Job, a Warning event."""
    ns = NAMESPACE
    labels = {"app.kubernetes.io/name": PG_CLUSTER, "cnpg.io/cluster": PG_CLUSTER}
    _rest(url, "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    _rest(url, "POST", f"/apis/apps/v1/namespaces/{ns}/statefulsets", {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": f"{PG_CLUSTER}-pooler", "labels": labels},
        "spec": {"replicas": 2, "serviceName": f"{PG_CLUSTER}-pooler", "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "pgbouncer", "image": "pgbouncer:1.23"}]}}},
        "status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}})
    for n in (1, 2, 3):
        restarting = n == 3
        _rest(url, "POST", f"/api/v1/namespaces/{ns}/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{PG_CLUSTER}-{n}", "labels": {**labels, "cnpg.io/instanceName": f"{PG_CLUSTER}-{n}"}},
            "spec": {"nodeName": f"node-{n}", "containers": [{"name": "postgres", "image": "postgresql:15"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "postgres", "ready": True, "restartCount": 2 if restarting else 0,
                                              "image": "postgresql:15", "imageID": "", "state": {"running": {"startedAt": _stamp(900)}}}]}})
    template: dict[str, Any] = {"metadata": {"labels": {"app.kubernetes.io/component": "backup"}},
                               "spec": {"backoffLimit": 1, "template": {"spec": {"restartPolicy": "Never", "containers": [
                                   {"name": "backup", "image": "postgresql:15", "command": ["sh", "-c", "pg_dump ... | aws s3 cp - s3://..."]}]}}}}
    cron = _rest(url, "POST", f"/apis/batch/v1/namespaces/{ns}/cronjobs", {
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": f"{PG_CLUSTER}-nightly-backup", "labels": {**labels, "app.kubernetes.io/component": "backup"}},
        "spec": {"schedule": "30 1 * * *", "jobTemplate": template}, "status": {"lastScheduleTime": _stamp(8 * 3600)}})
    _rest(url, "POST", f"/apis/batch/v1/namespaces/{ns}/jobs", {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": f"{PG_CLUSTER}-nightly-backup-1", "labels": template["metadata"]["labels"], "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "CronJob", "name": cron["metadata"]["name"], "uid": cron["metadata"].get("uid", ""), "controller": True}]},
        "spec": template["spec"],
        "status": {"succeeded": 1, "completionTime": _stamp(8 * 3600 - 240), "conditions": [{"type": "Complete", "status": "True"}]}})
    _rest(url, "POST", f"/api/v1/namespaces/{ns}/events", {
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": f"{PG_CLUSTER}-3.probe"}, "type": "Warning", "reason": "Unhealthy",
        "message": "Readiness probe failed: pg_isready: no response", "count": 2,
        "involvedObject": {"kind": "Pod", "name": f"{PG_CLUSTER}-3"}, "lastTimestamp": _stamp(300)})
    cluster = _rest(url, "POST", f"/apis/postgresql.cnpg.io/v1/namespaces/{ns}/clusters", {
        "apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "metadata": {"name": PG_CLUSTER}, "spec": {"instances": 3}})
    # The status subresource, as the operator would write it (a create leaves .status out).
    cluster["status"] = {"phase": "Cluster in healthy state", "instances": 3, "readyInstances": 3,
                         "currentPrimary": f"{PG_CLUSTER}-1", "targetPrimary": f"{PG_CLUSTER}-1"}
    _rest(url, "PUT", f"/apis/postgresql.cnpg.io/v1/namespaces/{ns}/clusters/{PG_CLUSTER}/status", cluster)


class KubernetesSandbox(SingleProcessSandbox):
    """The Kubernetes API stand-in, seeded with the postgres sandbox's cluster as it would run on
    Kubernetes. There is no operator and no kubelet: the pane shows what was seeded, and
    cnpg.promote sets the target primary and then waits, in vain, for an operator (it says so when
    its timeout passes)."""

    ENGINE = ENGINE
    LABEL = "Kubernetes stand-in"
    UP = "dbops sandbox up --engines postgres,kubernetes"

    def _needle(self) -> str:
        return "dbops-k8s-stand-in"

    def up(self, progress: Progress = _quiet) -> tuple[str, bool]:
        if self.is_running():
            progress("kubernetes stand-in is already up")
            return self.config_fragment(), True
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.rmtree(self.dir, ignore_errors=True)
        stand_in = start(self.dir, progress)
        kubeconfig = stand_in.kubeconfig(self.dir / "kubeconfig", namespace=NAMESPACE)
        write_engine_state(self.root, ENGINE, {"version": VERSION, "port": stand_in.port, "pid": stand_in.pid, "dir": str(self.dir),
                                               "log": str(stand_in.log), "kubeconfig": str(kubeconfig)})
        with down_on_failure(self):
            progress(f"seed namespace {NAMESPACE}: CNPG Cluster {PG_CLUSTER}, its pods, a StatefulSet, a backup CronJob, an event")
            seed_demo(stand_in.url)
        return self.config_fragment(), False

    def down(self, progress: Progress = _quiet) -> None:
        pid = self.pid()
        if pid is None:
            return
        progress("stop the kubernetes stand-in")
        stop_processes({pid: "dbops-k8s-stand-in"}, signal.SIGTERM, STOP_GRACE)

    def status(self) -> list[ProcessStatus]:
        st = self._state()
        if not st:
            return []
        return [ProcessStatus(ENGINE, "kubernetes-api", "stand-in", self.pid() is not None, int(st["port"]), self.pid(),
                              f"kubeconfig {st['kubeconfig']}")]

    def config_fragment(self) -> str:
        """The postgres sandbox's cluster gets a [kubernetes] section when that sandbox is up;
        otherwise the fragment only says where the stand-in is."""
        st = self.state
        from dbops.sandbox.postgres import PostgresSandbox

        if not PostgresSandbox(self.root).is_running():
            return (f"# The Kubernetes stand-in is up at http://{HOST}:{st['port']} (kubeconfig {st['kubeconfig']}); it describes\n"
                    f"# the postgres sandbox's cluster: `{self.UP}` shows it in the console.\n")
        return "\n".join([
            f"[environments.sandbox.clusters.{PG_CLUSTER}.kubernetes]",
            f"namespace = {toml_str(NAMESPACE)}",
            f"selector = {toml_str('app.kubernetes.io/name=' + PG_CLUSTER)}",
            f"backup_selector = {toml_str('app.kubernetes.io/component=backup')}",
            f"kubeconfig = {toml_str(st['kubeconfig'])}",
            f"cnpg_cluster = {toml_str(PG_CLUSTER)}",
            "",
        ])
