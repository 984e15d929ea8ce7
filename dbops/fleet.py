"""A fleet's clusters picked by name, environment and engine, and its health as Prometheus
metrics: what `dbops check --cluster/--environment/--engine/--format prometheus` and the
overview's `:` commands share. Pure: no I/O, no textual."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dbops.config import ClusterRef
from dbops.model import ClusterHealth, Severity

# What operators type for an engine, besides its kind.
ENGINE_ALIASES = {"pg": "postgres", "postgresql": "postgres", "pgsql": "postgres", "kf": "kafka"}


def engine_kind(name: str) -> str:
    lowered = name.strip().lower()
    return ENGINE_ALIASES.get(lowered, lowered)


@dataclass(frozen=True)
class Selection:
    """Which clusters: each list empty means any; within a list, any entry may match.
    `clusters` are globs (orders-*) on the cluster's name or its environment/name key."""

    clusters: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()
    engines: tuple[str, ...] = ()

    @property
    def everything(self) -> bool:
        return not (self.clusters or self.environments or self.engines)

    def matches(self, environment: str, name: str, engine: str) -> bool:
        if self.environments and environment not in self.environments:
            return False
        if self.engines and engine not in {engine_kind(e) for e in self.engines}:
            return False
        if self.clusters:
            key = f"{environment}/{name}"
            return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(key, p) for p in self.clusters)
        return True

    def pick(self, refs: Iterable[ClusterRef]) -> list[ClusterRef]:
        return [r for r in refs if self.matches(r.environment, r.name, r.cluster.engine)]

    def describe(self) -> str:
        parts = [f"--cluster {p!r}" for p in self.clusters] + [f"--environment {e!r}" for e in self.environments]
        parts += [f"--engine {e!r}" for e in self.engines]
        return " ".join(parts)

    def unknown(self, refs: Sequence[ClusterRef], engines: Iterable[str]) -> list[str]:
        """What names nothing configured (a typo), one sentence each."""
        out = []
        envs = sorted({r.environment for r in refs})
        for e in self.environments:
            if e not in envs:
                out.append(f"no environment {e!r} (configured: {', '.join(envs) or 'none'})")
        known = sorted(set(engines))
        for e in self.engines:
            if engine_kind(e) not in known:
                out.append(f"no engine {e!r} (known: {', '.join(known)})")
        return out


# -- the node_exporter textfile format ---------------------------------------------------------

def _label_value(value: str) -> str:
    # The exposition format escapes exactly these three.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


SEVERITY_HELP = "0 OK, 1 WARN, 2 CRIT, 3 UNKNOWN (Nagios)"


def prometheus_text(clusters: Sequence[ClusterHealth], now: float,
                    extra: Sequence[tuple[str, dict[str, str], Severity]] = (), *, unknown: bool = False) -> str:
    """The check's result in Prometheus' text exposition format, for node_exporter's textfile
    collector (write it to a .prom file in its directory, atomically: temp file, then rename).
    `extra`: other judged things as (what, labels, severity): backups, platform checks."""
    families: dict[str, tuple[str, list[str]]] = {
        "dbops_check_severity": (f"Worst severity of everything this check judged: {SEVERITY_HELP}", []),
        "dbops_check_timestamp_seconds": ("When this check ran (Unix time)", []),
        "dbops_cluster_severity": (f"A cluster's severity: {SEVERITY_HELP}", []),
        "dbops_member_up": ("1 when the member answered (dbops' poll, or its exporter's up series in fleet mode)", []),
        "dbops_member_severity": (f"A member's severity: {SEVERITY_HELP}", []),
        "dbops_member_lag_bytes": ("A replica's replication lag in bytes, as dbops judged it", []),
        "dbops_member_lag_seconds": ("A replica's replication lag in seconds, as dbops judged it", []),
        "dbops_severity": (f"Another judged thing's severity (what = backups, kubernetes, rds ...): {SEVERITY_HELP}", []),
    }
    worst = Severity.worst([c.severity for c in clusters] + [s for _, _, s in extra], default=Severity.OK)
    if unknown:  # the check could not judge (no cluster picked, Prometheus unreachable ...)
        worst = Severity.UNKNOWN
    families["dbops_check_severity"][1].append(f"dbops_check_severity {int(worst)}")
    families["dbops_check_timestamp_seconds"][1].append(f"dbops_check_timestamp_seconds {_number(round(now, 3))}")
    for c in clusters:
        base = {"environment": c.environment, "cluster": c.name, "engine": c.engine}
        families["dbops_cluster_severity"][1].append(f"dbops_cluster_severity{_labels(**base, source=c.source)} {int(c.severity)}")
        for m in c.members:
            labels = _labels(**base, member=m.name, role=m.role)
            families["dbops_member_up"][1].append(f"dbops_member_up{labels} {int(m.snapshot.reachable)}")
            families["dbops_member_severity"][1].append(f"dbops_member_severity{labels} {int(m.severity)}")
            if m.lag_bytes is not None:
                families["dbops_member_lag_bytes"][1].append(f"dbops_member_lag_bytes{labels} {_number(m.lag_bytes)}")
            if m.lag_seconds is not None:
                families["dbops_member_lag_seconds"][1].append(f"dbops_member_lag_seconds{labels} {_number(m.lag_seconds)}")
    for what, where, severity in extra:
        families["dbops_severity"][1].append(f"dbops_severity{_labels(what=what, **where)} {int(severity)}")
    out = []
    for name, (help_text, lines) in families.items():
        if not lines:
            continue
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *lines]
    return "\n".join(out) + "\n"
