"""What `dbops check` reports of the platform around each cluster: what the Kubernetes pane
judges of a cluster with [kubernetes] and what the AWS pane judges of one with [rds] or
[elasticache], read with those panes' own readers (dbops.platform.kubernetes.read_one,
dbops.platform.aws_views.collect_one) and judged by their own functions (kubernetes.verdict, the
views' findings and severity); nothing is judged here.

An API or endpoint that cannot be read is that cluster's CRIT, with its one-line reason, as on
the panes; so is a read that takes longer than TIMEOUT (the reader is left behind in its daemon
thread). Core: no textual; the client libraries are imported by the readers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbops.model import Severity
from dbops.secrets import scrub_text

if TYPE_CHECKING:
    from dbops.config import ClusterRef

__all__ = ["TIMEOUT", "PlatformCheck", "check_all", "has_platform"]

TIMEOUT = 60.0  # seconds for one cluster's read of one platform (the Backups check's bound too)
MAX_READERS = 4  # reads at once, each in a thread of its own


@dataclass(frozen=True)
class PlatformCheck:
    cluster: str  # the cluster's key, environment/name
    kind: str  # kubernetes, rds, elasticache
    target: str  # what was read: "namespace orders", "instance orders-db", "replication group c1"
    severity: Severity
    findings: tuple[tuple[Severity, str], ...] = ()  # worst first, one line each
    notes: tuple[str, ...] = ()  # parts that could not be read while the rest was (AWS)
    error: str | None = None  # nothing could be read: why, one line


def has_platform(ref: ClusterRef) -> bool:
    c = ref.cluster
    return c.kubernetes is not None or c.rds is not None or c.elasticache is not None


def _line(text: str) -> str:
    return " ".join(scrub_text(str(text)).split())


def _kubernetes(ref: ClusterRef) -> PlatformCheck:
    from dbops.platform import kubernetes as k8s

    assert ref.cluster.kubernetes is not None
    _key, view, error = k8s.read_one(ref)
    severity, findings = k8s.verdict(ref, view, error)
    return PlatformCheck(ref.key, "kubernetes", f"namespace {ref.cluster.kubernetes.namespace}", severity,
                         tuple((s, _line(t)) for s, t in findings), (), _line(error) if error else None)


def _aws(ref: ClusterRef) -> PlatformCheck:
    from dbops.platform.aws_views import collect_one

    view = collect_one(ref)  # an [rds] section is read first, as on the AWS pane
    kind = "rds" if ref.cluster.rds is not None else "elasticache"
    return PlatformCheck(ref.key, kind, _target(ref, kind), view.severity, tuple((f.severity, _line(f.text)) for f in view.findings),
                         tuple(_line(n) for n in view.notes), _line(view.error) if view.error else None)


def _target(ref: ClusterRef, kind: str) -> str:
    c = ref.cluster
    if kind == "kubernetes" and c.kubernetes is not None:
        return f"namespace {c.kubernetes.namespace}"
    if kind == "rds" and c.rds is not None:
        return f"instance {c.rds.instance}"
    return f"replication group {c.elasticache.replication_group}" if c.elasticache is not None else ""


async def check_all(refs: list[ClusterRef], timeout: float = TIMEOUT) -> list[PlatformCheck]:
    """Every platform check of every cluster, concurrently (each read in a daemon thread, at most
    MAX_READERS at once, each within `timeout`); in config order, Kubernetes before AWS."""
    from dbops.platform.backups import in_daemon_thread

    gate = asyncio.Semaphore(MAX_READERS)

    async def one(ref: ClusterRef, kind: str, read: Any) -> PlatformCheck:
        async with gate:
            try:
                return await asyncio.wait_for(in_daemon_thread(read, ref), timeout)
            except TimeoutError:
                what = "the Kubernetes API" if kind == "kubernetes" else "AWS"
                return PlatformCheck(ref.key, kind, _target(ref, kind), Severity.CRIT,
                                     error=f"reading {what} took longer than {timeout:g} s")

    reads = []
    for ref in refs:
        if ref.cluster.kubernetes is not None:
            reads.append(one(ref, "kubernetes", _kubernetes))
        if ref.cluster.rds is not None:
            reads.append(one(ref, "rds", _aws))
        elif ref.cluster.elasticache is not None:
            reads.append(one(ref, "elasticache", _aws))
    return list(await asyncio.gather(*reads))
