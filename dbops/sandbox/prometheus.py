"""Prometheus sandbox: Debian's prometheus, prometheus-alertmanager, prometheus-postgres-exporter
and prometheus-redis-exporter, scraping the sandbox's PostgreSQL and Redis servers that are up
when it starts, with alert rules that fire on a stopped member. All on 127.0.0.1, on ports of
their own (never Debian's 9090/9093/9187/9121, which a packaged service may hold).

Processes (each a row of `dbops sandbox status`)::

    prometheus         scrapes every 1 s (PostgreSQL's exporters every 2 s, below), evaluates
                       rules.yml every 1 s, sends alerts to alertmanager
    alertmanager       one route to a receiver that sends nothing (group_wait 1 s,
                       group_interval 1 s); cluster gossip off (--cluster.listen-address=)
    pg-exporter-<m>    one postgres_exporter per PostgreSQL member pg1..pg3 (its DATA_SOURCE_NAME
                       names that member; 0.11 has no multi-target mode)
    redis-exporter     one redis_exporter in multi-target mode (/scrape?target=...) for the
                       Sentinel-managed r1 r2 and the cluster's c1..c6: one process instead of
                       eight, and the relabeling is the one its README documents

Every series carries `cluster` (the dbops cluster's name), `environment` ("sandbox") and
`instance` = the member's own host:port (not the exporter's), plus `member` (its name): what
dbops.platform.monitoring_labels matches alerts and series by.

Layout under the sandbox directory::

    prometheus/prometheus/prometheus.yml rules.yml data/ prometheus.log
    prometheus/alertmanager/alertmanager.yml data/ alertmanager.log
    prometheus/pg-exporter-pg1/queries.yaml pg-exporter-pg1.log   (likewise pg2, pg3)
    prometheus/redis-exporter/passwords.json redis-exporter.log

The configuration files are written as JSON, which is YAML: no YAML library is needed, and
this module stays stdlib-only like the rest of the sandbox. Passwords reach the exporters in
their environment (DATA_SOURCE_NAME) or a 0600 file (-redis.password-file), never on a command
line. Each process is recognised by a path of this sandbox on its command line (its config
file, its queries file or its password file), so a recycled pid is never taken for it.

The state recorded under engine "prometheus"::

    {"environment": "sandbox",
     "processes": {"prometheus": {"kind": "prometheus", "port": P, "pid": PID, "log": ..., "needle": ...},
                   "alertmanager": {...}, "pg-exporter-pg1": {..., "target": "127.0.0.1:P"}, ...},
     "targets": [{"job": "postgres", "cluster": "sandbox-pg", "member": "pg2", "instance": "127.0.0.1:P",
                  "exporter": "pg-exporter-pg2"}, ...]}

What is scraped is decided at `up`: start this engine after (or together with) the engines it
should watch; `dbops sandbox up` orders it after them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from dbops.sandbox import (
    EngineSandbox,
    ProcessStatus,
    Progress,
    SandboxError,
    _quiet,
    already_up,
    down_on_failure,
    engine_state,
    free_ports,
    pid_alive,
    port_open,
    spawn,
    stop_processes,
    toml_str,
    wait_ready,
    write_engine_state,
    write_private,
)
from dbops.sandbox.postgres import CLUSTER as PG_CLUSTER
from dbops.sandbox.postgres import DATABASE, USER, PostgresSandbox
from dbops.sandbox.redis import CLUSTER_NAME, MASTER_NAME, RedisSandbox

ENGINE = "prometheus"
HOST = "127.0.0.1"
ENVIRONMENT = "sandbox"  # the sandbox config's one environment (dbops.sandbox._write_config)

BINARIES = {
    "prometheus": "prometheus",
    "alertmanager": "prometheus-alertmanager",
    "postgres_exporter": "prometheus-postgres-exporter",
    "redis_exporter": "prometheus-redis-exporter",
}
BINDIR = Path("/usr/bin")  # DBOPS_PROMETHEUS_BINDIR overrides
APT_HINT = ("install the Debian packages prometheus prometheus-alertmanager prometheus-postgres-exporter "
            "prometheus-redis-exporter (apt-get install --no-install-recommends ...)")

SCRAPE_INTERVAL = "1s"
# postgres_exporter 0.11 takes a second to answer about a server that refuses connections (its
# driver retries); scraped every 1 s with a shorter timeout, a stopped member's scrape would time
# out and its pg_up series vanish instead of reading 0. Every 2 s with 1.5 s it reads 0.
PG_SCRAPE_INTERVAL = "2s"
PG_SCRAPE_TIMEOUT = "1500ms"
EVALUATION_INTERVAL = "1s"

# Debian's 0.11.1 exports no replication lag in seconds by itself: its README's example
# queries.yaml (examples/queries.yaml) adds pg_replication_lag, and most deployments run it (or
# a newer exporter's pg_replication_lag_seconds). The sandbox runs that query as shipped, so the
# console reads what it would read elsewhere. On the primary it is 0; on an idle replica it grows
# with the time since the last replayed transaction (the reader must know that).
PG_QUERIES = {
    "pg_replication": {
        "query": ("SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0 ELSE GREATEST (0, EXTRACT(EPOCH FROM "
                  "(now() - pg_last_xact_replay_timestamp()))) END AS lag"),
        "master": True,
        "metrics": [{"lag": {"usage": "GAUGE", "description": "Replication lag behind master in seconds"}}],
    },
}

# The rules the tests and the demo see fire: a member down, as the exporters say it.
RULES = {
    "groups": [{
        "name": "dbops-sandbox",
        "interval": EVALUATION_INTERVAL,
        "rules": [
            {"alert": "DbopsPostgresDown", "expr": "pg_up == 0", "for": "0s",
             "labels": {"severity": "critical"},
             "annotations": {"summary": "PostgreSQL {{ $labels.member }} ({{ $labels.instance }}) of {{ $labels.cluster }} is down",
                             "description": "postgres_exporter cannot reach {{ $labels.instance }}: pg_up = 0"}},
            {"alert": "DbopsRedisDown", "expr": "redis_up == 0", "for": "0s",
             "labels": {"severity": "critical"},
             "annotations": {"summary": "Redis {{ $labels.member }} ({{ $labels.instance }}) of {{ $labels.cluster }} is down",
                             "description": "redis_exporter cannot reach {{ $labels.instance }}: redis_up = 0"}},
            {"alert": "DbopsExporterDown", "expr": "up == 0", "for": "5s",
             "labels": {"severity": "warning"},
             "annotations": {"summary": "the exporter for {{ $labels.member }} ({{ $labels.instance }}) of "
                                        "{{ $labels.cluster }} does not answer Prometheus"}},
        ],
    }],
}

START_TIMEOUT = 30.0  # seconds for one process to listen (each takes well under a second)
SCRAPED_TIMEOUT = 30.0  # seconds for Prometheus to have scraped every target once
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL

# What each kind of process writes to its log once it listens.
_READY = {
    "prometheus": b"Server is ready to receive web requests.",
    "alertmanager": b"Listening on",
    "postgres_exporter": b"Listening on",
    "redis_exporter": b"Providing metrics at",
}


def _bindir() -> Path:
    where = Path(os.environ["DBOPS_PROMETHEUS_BINDIR"]) if os.environ.get("DBOPS_PROMETHEUS_BINDIR") else BINDIR
    missing = [b for b in BINARIES.values() if not os.access(where / b, os.X_OK)]
    if missing:
        raise SandboxError(f"{', '.join(missing)} not found in {where}; {APT_HINT}, "
                           "or set DBOPS_PROMETHEUS_BINDIR to their directory")
    return where


def _json(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


class PrometheusSandbox(EngineSandbox):
    """The monitoring part of a sandbox rooted at `root` (the sandbox directory)."""

    ENGINE = ENGINE
    LABEL = "Prometheus"
    UP = "dbops sandbox up --engines postgres,redis,prometheus"

    def __init__(self, root: Path | None = None):
        super().__init__(root)
        self.root = self.root.absolute()  # paths on command lines are how processes are recognised
        self.dir = self.root / ENGINE

    # -- recorded state ----------------------------------------------------------------------

    def proc_dir(self, name: str) -> Path:
        return self.dir / name

    def port(self, name: str) -> int:
        procs = self.state["processes"]
        if name not in procs:
            raise SandboxError(f"no Prometheus sandbox process {name!r}; processes: {', '.join(procs)}")
        return int(procs[name]["port"])

    def url(self, name: str) -> str:
        """http://127.0.0.1:<port> of "prometheus" or "alertmanager"."""
        return f"http://{HOST}:{self.port(name)}"

    def targets(self) -> list[dict[str, str]]:
        """What Prometheus scrapes: job, cluster, member, instance (the member's host:port), exporter."""
        return list(self.state.get("targets", []))

    def pid(self, name: str) -> int | None:
        st = self._state()
        proc = (st or {}).get("processes", {}).get(name)
        if not proc:
            return None
        pid = proc.get("pid")
        return pid if pid_alive(pid, proc["needle"]) else None

    def is_running(self) -> bool:
        st = self._state() or {}
        return any(self.pid(n) is not None for n in st.get("processes", {}))

    # -- up ------------------------------------------------------------------------------------

    def up(self, progress: Progress = _quiet) -> tuple[str, bool]:
        bindir = _bindir()
        st = self._state()
        if st and already_up(ENGINE, self.root, {n: self.pid(n) is not None for n in st.get("processes", {})}, progress):
            return self.config_fragment(), True
        self.down(progress)
        if self.dir.exists():
            shutil.rmtree(self.dir)
        write_engine_state(self.root, ENGINE, None)
        with down_on_failure(self):
            self._create(bindir, progress)
        return self.config_fragment(), False

    def _plan(self) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """The exporters to run and the targets to scrape, from the engines that are up."""
        exporters: list[dict[str, Any]] = []
        targets: list[dict[str, str]] = []
        # An engine's state outlives its servers (`down` keeps it): only engines running now.
        pg = engine_state(self.root, "postgres")
        if pg and PostgresSandbox(self.root).is_running():
            for member, m in pg["members"].items():
                name = f"pg-exporter-{member}"
                instance = f"{HOST}:{m['port']}"
                dsn = (f"postgresql://{urllib.parse.quote(USER)}:{urllib.parse.quote(pg['password'], safe='')}"
                       f"@{instance}/{DATABASE}?sslmode=disable")
                exporters.append({"name": name, "kind": "postgres_exporter", "dsn": dsn})
                targets.append({"job": "postgres", "cluster": PG_CLUSTER, "member": member, "instance": instance,
                                "exporter": name})
        rd = engine_state(self.root, "redis")
        if rd and RedisSandbox(self.root).is_running():
            name = "redis-exporter"
            sa = rd["standalone"]
            nodes = [(MASTER_NAME, n) for n in (sa["primary"], *sa["replicas"])]
            nodes += [(CLUSTER_NAME, n) for n in rd["cluster"]["nodes"]]
            passwords = {}
            for cluster, node in nodes:
                instance = f"{HOST}:{node['port']}"
                passwords[f"redis://{instance}"] = rd["password"]
                targets.append({"job": "redis", "cluster": cluster, "member": node["name"], "instance": instance,
                                "exporter": name})
            exporters.append({"name": name, "kind": "redis_exporter", "passwords": passwords})
        return exporters, targets

    def _create(self, bindir: Path, progress: Progress) -> None:
        t0 = time.monotonic()
        exporters, targets = self._plan()
        if not targets:
            progress("prometheus: no postgres or redis sandbox is up: nothing to scrape but Prometheus itself")
        names = ["prometheus", "alertmanager", *(e["name"] for e in exporters)]
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        kinds = {"prometheus": "prometheus", "alertmanager": "alertmanager", **{e["name"]: e["kind"] for e in exporters}}
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        processes: dict[str, dict[str, Any]] = {}
        for name in names:
            d = self.proc_dir(name)
            d.mkdir(mode=0o700, exist_ok=True)
            processes[name] = {"kind": kinds[name], "port": ports[name], "pid": None, "log": str(d / f"{name}.log"),
                               "needle": str(d / self._needle_file(kinds[name]))}
        # Recorded before anything starts, so that `down` finds a half-started sandbox.
        write_engine_state(self.root, ENGINE, {"environment": ENVIRONMENT, "processes": processes, "targets": targets})

        for exp in exporters:
            name = exp["name"]
            proc = processes[name]
            listen = f"{HOST}:{proc['port']}"
            if exp["kind"] == "postgres_exporter":
                write_private(Path(proc["needle"]), _json(PG_QUERIES))
                args = [str(bindir / BINARIES["postgres_exporter"]), f"--web.listen-address={listen}",
                        f"--extend.query-path={proc['needle']}"]
                # The password only in the environment; the exporter replaces it in its own logs.
                env = {**os.environ, "DATA_SOURCE_NAME": exp["dsn"]}
            else:
                write_private(Path(proc["needle"]), _json(exp["passwords"]))
                # -redis.addr "": multi-target only (no default target scraped on /metrics).
                args = [str(bindir / BINARIES["redis_exporter"]), "-web.listen-address", listen, "-redis.addr", "",
                        "-redis.password-file", proc["needle"]]
                env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
            progress(f"start {name} on port {proc['port']}")
            self._start(name, args, env)

        am = processes["alertmanager"]
        write_private(Path(am["needle"]), _json(self._alertmanager_config()))
        (self.proc_dir("alertmanager") / "data").mkdir(mode=0o700, exist_ok=True)
        progress(f"start alertmanager on port {am['port']}")
        self._start("alertmanager", [
            str(bindir / BINARIES["alertmanager"]), f"--config.file={am['needle']}",
            f"--storage.path={self.proc_dir('alertmanager') / 'data'}", f"--web.listen-address={HOST}:{am['port']}",
            # One instance: no gossip port (Debian's default 0.0.0.0:9094 may be taken, and is not needed).
            "--cluster.listen-address=",
        ])

        pr = processes["prometheus"]
        pdir = self.proc_dir("prometheus")
        write_private(pdir / "rules.yml", _json(RULES))
        write_private(Path(pr["needle"]), _json(self._prometheus_config(targets, processes)))
        (pdir / "data").mkdir(mode=0o700, exist_ok=True)
        progress(f"start prometheus on port {pr['port']} (scraping {len(targets)} targets)")
        self._start("prometheus", [
            str(bindir / BINARIES["prometheus"]), f"--config.file={pr['needle']}",
            f"--storage.tsdb.path={pdir / 'data'}", f"--web.listen-address={HOST}:{pr['port']}",
            "--storage.tsdb.retention.time=1d", "--web.enable-lifecycle",
        ])
        progress("wait for prometheus to scrape every target once")
        self.wait_scraped()
        progress(f"prometheus sandbox up in {time.monotonic() - t0:.1f} s")

    @staticmethod
    def _needle_file(kind: str) -> str:
        return {"prometheus": "prometheus.yml", "alertmanager": "alertmanager.yml",
                "postgres_exporter": "queries.yaml", "redis_exporter": "passwords.json"}[kind]

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        st = self.state
        proc = st["processes"][name]
        log = Path(proc["log"])
        log_from = log.stat().st_size if log.exists() else 0
        pid = spawn(name, args, log, self.proc_dir(name), env)
        proc["pid"] = pid
        write_engine_state(self.root, ENGINE, st)
        wait_ready(pid, log, name, _READY[proc["kind"]], [int(proc["port"])], timeout=START_TIMEOUT, log_from=log_from)

    def _alertmanager_config(self) -> dict[str, Any]:
        return {
            "route": {
                "receiver": "dbops-null",
                "group_by": ["alertname", "cluster", "instance"],
                # Seconds, not the defaults' minutes: a test waits for an alert, a demo shows it.
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            # Nothing is sent anywhere: dbops reads the alerts from the API.
            "receivers": [{"name": "dbops-null"}],
        }

    def _prometheus_config(self, targets: list[dict[str, str]], processes: dict[str, dict[str, Any]]) -> dict[str, Any]:
        scrape_configs: list[dict[str, Any]] = [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"{HOST}:{processes['prometheus']['port']}"]}]},
            {"job_name": "alertmanager", "static_configs": [{"targets": [f"{HOST}:{processes['alertmanager']['port']}"]}]},
        ]
        pg = [t for t in targets if t["job"] == "postgres"]
        if pg:
            # One exporter per member: the target is the exporter, and the member's address is
            # set as `instance` (Prometheus keeps an instance label a target already has).
            scrape_configs.append({
                "job_name": "postgres",
                "scrape_interval": PG_SCRAPE_INTERVAL,
                "scrape_timeout": PG_SCRAPE_TIMEOUT,
                "static_configs": [
                    {"targets": [f"{HOST}:{processes[t['exporter']]['port']}"],
                     "labels": {"cluster": t["cluster"], "environment": ENVIRONMENT, "instance": t["instance"],
                                "member": t["member"]}}
                    for t in pg
                ],
            })
        rd = [t for t in targets if t["job"] == "redis"]
        if rd:
            # redis_exporter's multi-target relabeling: the target's address becomes the
            # ?target= parameter and the instance label, and the scrape goes to the exporter.
            exporter = f"{HOST}:{processes[rd[0]['exporter']]['port']}"
            scrape_configs.append({
                "job_name": "redis",
                "metrics_path": "/scrape",
                "static_configs": [
                    {"targets": [f"redis://{t['instance']}"],
                     "labels": {"cluster": t["cluster"], "environment": ENVIRONMENT, "member": t["member"]}}
                    for t in rd
                ],
                "relabel_configs": [
                    {"source_labels": ["__address__"], "target_label": "__param_target"},
                    {"source_labels": ["__param_target"], "regex": "redis://(.*)", "target_label": "instance"},
                    {"target_label": "__address__", "replacement": exporter},
                ],
            })
        return {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                       "evaluation_interval": EVALUATION_INTERVAL},
            "rule_files": [str(self.proc_dir("prometheus") / "rules.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"{HOST}:{processes['alertmanager']['port']}"]}]}]},
            "scrape_configs": scrape_configs,
        }

    def _get_json(self, name: str, path: str, timeout: float = 5.0) -> Any:
        with urllib.request.urlopen(self.url(name) + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def wait_scraped(self, timeout: float = SCRAPED_TIMEOUT) -> None:
        """Until Prometheus has scraped every target at least once (up or down, but known)."""
        deadline = time.monotonic() + timeout
        why = "no answer yet"
        while True:
            try:
                active = self._get_json("prometheus", "/api/v1/targets?state=active")["data"]["activeTargets"]
                unknown = [t["labels"].get("instance", t.get("scrapeUrl", "?")) for t in active if t.get("health") == "unknown"]
                if active and not unknown:
                    return
                why = f"not scraped yet: {', '.join(unknown)}" if unknown else "no active targets"
            except (OSError, ValueError, KeyError, TypeError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise SandboxError(f"prometheus did not scrape its targets within {timeout:.0f} s ({why}); "
                                   f"see {self.state['processes']['prometheus']['log']}")
            time.sleep(0.2)

    # -- down and status -----------------------------------------------------------------------

    def down(self, progress: Progress = _quiet) -> None:
        """Stop every process this sandbox started (Prometheus first: it would alert on the
        exporters going). Safe to repeat."""
        st = self._state()
        if not st:
            return
        order = ["prometheus", "alertmanager", *(n for n in st.get("processes", {}) if n not in ("prometheus", "alertmanager"))]
        live = {n: pid for n in order if n in st["processes"] and (pid := self.pid(n)) is not None}
        if live:
            progress(f"stop {', '.join(live)}")
            stop_processes({pid: st["processes"][n]["needle"] for n, pid in live.items()}, signal.SIGTERM, STOP_GRACE)
        st = self._state() or st
        for proc in st.get("processes", {}).values():
            proc["pid"] = None
        write_engine_state(self.root, ENGINE, st)

    def status(self) -> list[ProcessStatus]:
        st = self._state()
        if not st:
            return []
        rows = []
        by_exporter: dict[str, list[str]] = {}
        for t in st.get("targets", []):
            by_exporter.setdefault(t["exporter"], []).append(f"{t['member']} {t['instance']}")
        for name, proc in st.get("processes", {}).items():
            pid = self.pid(name)
            detail = f"log {proc['log']}"
            if name in by_exporter:
                detail = f"for {', '.join(by_exporter[name])}; {detail}"
            elif name == "prometheus":
                detail = f"{len(st.get('targets', []))} targets; {detail}"
            running = pid is not None and port_open(int(proc["port"]))
            rows.append(ProcessStatus(ENGINE, name, proc["kind"], running, int(proc["port"]), pid, detail))
        return rows

    # -- dbops config ----------------------------------------------------------------------------

    def config_fragment(self) -> str:
        procs = self.state["processes"]
        prometheus = f"http://{HOST}:{procs['prometheus']['port']}"
        alertmanager = f"http://{HOST}:{procs['alertmanager']['port']}"
        return "\n".join([
            # Top-level tables: TOML allows them after the [environments...] ones.
            "[prometheus]",
            f"url = {toml_str(prometheus)}",
            "refresh_interval = 2.0",
            "",
            "[alertmanager]",
            f"url = {toml_str(alertmanager)}",
            "refresh_interval = 2.0",
            "",
        ])
