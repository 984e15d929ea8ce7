"""Judging one read of a cluster's Kubernetes objects: pure functions, no API calls. The
Kubernetes pane and `dbops check` both judge with verdict(), so they agree."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dbops.model import Severity, human_seconds
from dbops.platform.kubernetes.data import KubernetesView

if TYPE_CHECKING:
    from dbops.config import ClusterRef


def assess(view: KubernetesView, backup_max_age: float | None = None) -> list[tuple[Any, str]]:
    """What is wrong, worst first: (Severity, one line). A pod not running and ready, a
    StatefulSet short of replicas, a CNPG Cluster not healthy: CRIT. Restarts, Warning events, a
    suspended backup CronJob, a last successful backup older than `backup_max_age` (or none at
    all): WARN. A part that could not be read (view.problems): UNKNOWN, after the WARNs
    (Severity.rank). Nothing wrong: []."""
    found: list[tuple[Any, str]] = []
    now = datetime.now(UTC)
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


def verdict(ref: ClusterRef, view: KubernetesView | None, error: str | None) -> tuple[Any, list[tuple[Any, str]]]:
    """A cluster's severity and findings (assess(), against its backups.max_age_seconds), as the
    Kubernetes pane and `dbops check` both show them: an API that could not be read (`error`)
    is CRIT, whatever the last good `view` said."""
    findings = [] if view is None else assess(view, ref.cluster.backups.max_age_seconds)
    worst = Severity.CRIT if error else (findings[0][0] if findings else Severity.OK)
    return worst, findings
