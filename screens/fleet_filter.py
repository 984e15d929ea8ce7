"""The fleet overview's filters, sort orders, grouping and `:` command line.

Pure (no Textual): the overview screen renders what these functions decide, and the unit tests
check the decisions without an app.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace

from dbops.model import ClusterHealth, Severity

# k9s-style short names; any configured engine's own kind is accepted as well (a plugin's).
ENGINE_ALIASES = {"pg": "postgres", "postgresql": "postgres", "psql": "postgres"}
BUILTIN_ENGINES = ("postgres", "redis", "kafka", "neo4j", "qdrant")

SORTS = ("severity", "name", "engine")

# The severities counted in the header, worst first; OK is what is left.
COUNTED = (Severity.CRIT, Severity.WARN, Severity.UNKNOWN)

# Severity.rank, looked up once: sorting a thousand clusters calls it thousands of times.
RANK = {sev: sev.rank for sev in Severity}

COMMAND_HELP = ":pg :redis :kafka :neo4j :qdrant  :env NAME  :cluster GLOB  :problems  :all  :alerts"


@dataclass(frozen=True)
class FleetFilter:
    """What the overview shows: every condition set must hold (they narrow together)."""

    text: str = ""  # typed after `/`: each word must occur in the name, environment or engine
    engine: str | None = None  # :pg, :redis ...
    environment: str | None = None  # :env prod
    cluster_glob: str | None = None  # :cluster orders-*
    problems_only: bool = False  # :problems, or the key: every cluster not OK

    def matches(self, c: ClusterHealth) -> bool:
        if self.problems_only and c.severity is Severity.OK:
            return False
        if self.engine is not None and c.engine != self.engine:
            return False
        if self.environment is not None and c.environment != self.environment:
            return False
        if self.cluster_glob is not None and not fnmatch.fnmatchcase(c.name.lower(), self.cluster_glob.lower()):
            return False
        if self.text:
            haystack = f"{c.name} {c.environment} {c.engine}".lower()
            return all(word in haystack for word in self.text.lower().split())
        return True

    @property
    def narrows(self) -> bool:
        """Whether any cluster could be left out."""
        return self != FleetFilter()

    def describe(self) -> str:
        """The conditions in the words that set them, for the overview's header line."""
        parts = []
        if self.engine is not None:
            parts.append(f":{self.engine}")
        if self.environment is not None:
            parts.append(f":env {self.environment}")
        if self.cluster_glob is not None:
            parts.append(f":cluster {self.cluster_glob}")
        if self.problems_only:
            parts.append("problems only")
        if self.text:
            parts.append(f"/{self.text}")
        return " ".join(parts)


@dataclass(frozen=True)
class CommandResult:
    """What a `:` command line did: the filter to show from now on (the header line says it),
    what was wrong with the line if anything, and, for a command that opens another view rather
    than filtering, that view's name."""

    filter: FleetFilter
    error: str | None = None
    view: str | None = None


def run_command(line: str, current: FleetFilter, engines: Collection[str], environments: Sequence[str]) -> CommandResult:
    """Apply one `:` command to `current`. `engines`: the kinds an engine filter may name (the
    configured and built-in ones); `environments`: the configured environments, in config order.
    Never raises for what an operator types: an unknown or incomplete command is an error result."""
    words = line.strip().removeprefix(":").split()
    if not words:
        return CommandResult(current)
    verb, args = words[0].lower(), words[1:]
    known_engines = {*engines, *BUILTIN_ENGINES}
    if verb in ENGINE_ALIASES or verb in known_engines:
        if args:
            return _error(current, f":{verb} takes nothing after it (to narrow further: :env NAME, :cluster GLOB, /text)")
        engine = ENGINE_ALIASES.get(verb, verb)
        return CommandResult(replace(current, engine=engine))
    if verb in ("env", "environment"):
        if len(args) != 1:
            return _error(current, f":env takes one environment: {', '.join(environments)}")
        found = resolve_environment(args[0], environments)
        if isinstance(found, str):
            return CommandResult(replace(current, environment=found))
        if found:
            return _error(current, f"{args[0]!r} could be {', '.join(found)}: type more of it")
        return _error(current, f"no environment {args[0]!r}: there are {', '.join(environments)}")
    if verb in ("cluster", "clusters"):
        if len(args) != 1:
            return _error(current, ":cluster takes one name or glob, e.g. :cluster orders-*")
        return CommandResult(replace(current, cluster_glob=args[0]))
    if verb in ("problems", "problem"):
        return CommandResult(replace(current, problems_only=True))
    if verb == "all":
        return CommandResult(FleetFilter())
    if verb in ("alerts", "alert"):
        return CommandResult(current, view="alerts")
    return _error(current, f"unknown command :{verb}; try {COMMAND_HELP}")


def _error(current: FleetFilter, message: str) -> CommandResult:
    return CommandResult(current, error=message)


def resolve_environment(typed: str, environments: Sequence[str]) -> str | list[str]:
    """The environment `typed` names: itself, or the only one it begins (`prod` for
    `production`); otherwise the candidates it begins (several, or none), in config order."""
    if typed in environments:
        return typed
    lowered = typed.lower()
    exact = [e for e in environments if e.lower() == lowered]
    if len(exact) == 1:
        return exact[0]
    candidates = [e for e in environments if e.lower().startswith(lowered)]
    return candidates[0] if len(candidates) == 1 else candidates


# -- what the table shows ----------------------------------------------------------------------


@dataclass(frozen=True)
class GroupRow:
    """An environment's header row: its counts over the clusters the filter keeps."""

    environment: str
    shown: int
    total: int
    counts: tuple[tuple[Severity, int], ...]  # over the shown clusters, worst first, zero counts left out
    collapsed: bool


# A cluster's row is its key ("environment/name").
FleetRow = GroupRow | str


def severity_counts(clusters: Iterable[ClusterHealth]) -> tuple[tuple[Severity, int], ...]:
    counted = Counter(c.severity for c in clusters)
    return tuple((sev, counted[sev]) for sev in COUNTED if counted[sev])


def counts_text(counts: tuple[tuple[Severity, int], ...]) -> str:
    """'2 CRIT, 5 WARN', or 'all OK'."""
    return ", ".join(f"{n} {sev.name}" for sev, n in counts) if counts else "all OK"


def sort_key(mode: str):
    """`severity`: worst first; `name`; `engine`, then worst first. Ties by environment, then name
    (within a group the environment is the same)."""
    if mode == "severity":
        return lambda c: (-RANK[c.severity], c.environment, c.name)
    if mode == "name":
        return lambda c: (c.name, c.environment)
    if mode == "engine":
        return lambda c: (c.engine, -RANK[c.severity], c.environment, c.name)
    raise ValueError(f"no sort {mode!r}: {', '.join(SORTS)}")


def layout(
    clusters: Iterable[ClusterHealth],
    flt: FleetFilter,
    sort: str,
    environments: Sequence[str],
    grouped: bool,
    collapsed: Collection[str] = (),
) -> list[FleetRow]:
    """The table's rows, top to bottom. Grouped: each environment that has a cluster left by the
    filter gets a header row, then (unless collapsed) its clusters; with the severity sort the
    groups are worst first too (so a CRIT is never below a screenful of OK), otherwise in config
    order. Not grouped: the clusters alone, worst first across environments when sorting by
    severity."""
    key = sort_key(sort)
    clusters = list(clusters)
    kept = [c for c in clusters if flt.matches(c)] if flt.narrows else list(clusters)
    if not grouped:
        return [f"{c.environment}/{c.name}" for c in sorted(kept, key=key)]
    totals = Counter(c.environment for c in clusters)
    by_env: dict[str, list[ClusterHealth]] = {}
    for c in kept:
        by_env.setdefault(c.environment, []).append(c)
    position = {e: i for i, e in enumerate(environments)}
    envs = sorted(by_env, key=lambda e: position.get(e, len(position)))
    if sort == "severity":
        envs.sort(key=lambda e: -max(RANK[c.severity] for c in by_env[e]))  # stable: config order among equals
    rows: list[FleetRow] = []
    for env in envs:
        members = sorted(by_env[env], key=key)
        folded = env in collapsed
        rows.append(GroupRow(env, len(members), totals[env], severity_counts(members), folded))
        if not folded:
            rows.extend(f"{c.environment}/{c.name}" for c in members)
    return rows
