"""What an engine is, declared once (`EngineSpec`), and the registry of every engine's spec.

Every engine package (`dbops/engines/<kind>/__init__.py`, or a third party's) exports a SPEC and
registers it in the `dbops.engines` entry-point group, built-ins included (pyproject.toml): one
way in, so a plugin engine is validated, polled, judged and listed like PostgreSQL. The config,
the poller, the severity rules, the overview and `dbops check` all read the specs, so adding an
engine touches only its own package, its pane, its tests and the entry point.

A spec names its adapter, assessor, overview row and history as import strings: reading the
specs imports each engine's light package module only; adapters (and their client libraries)
load when a configured cluster is first polled.

This module sits below the config (which asks it for the engines' section models when it
validates) and imports nothing of dbops but the model: the engines import the config, never the
reverse through here, so there is no cycle.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dbops.model import ClusterHealth, Reachability

# A cluster (dbops.config.ClusterRef) as this module sees it: only its engine's kind is read.
# Not imported, even for the type checker: the config imports this module, and an engine's
# Adapter sits above it (its adapter_class is typed by the poller that uses it).
ClusterRef = Any


@dataclass(frozen=True, slots=True)
class TopologyEntry:
    name: str
    role: str
    reachability: Reachability


@dataclass(frozen=True, slots=True)
class OverviewRow:
    """An engine's facts for one cluster on the overview (and anything else that lists clusters).
    Plain strings: the UI styles them; "-" where the engine has nothing to say."""

    topology: tuple[TopologyEntry, ...]
    lag: str = "-"
    connections: str = "-"
    long: str = "0"
    # Something that undermines the backups although their newest is recent (a failing WAL
    # archiver: the point-in-time window stops growing); shown beside the backup's age.
    backup_alert: str = ""


@dataclass(frozen=True)
class EngineSpec:
    kind: str  # the config's `engine = "..."`
    title: str  # how people write it: "PostgreSQL"
    default_port: int
    # A cluster without a `user` logs in as this one; None: the engine logs in only when told to.
    default_user: str | None
    # "module:attr" of the Adapter subclass (imports the client library: loaded on first poll).
    adapter: str
    # Module with assess_cluster(ref, snapshots, baseline, now) and update_baseline(baseline,
    # snapshots): pure Python over the engine's data classes.
    assessor: str
    # "module:function" (ref, health) -> OverviewRow; None: the generic row (topology and the
    # members' replication lag).
    overview: str | None = None
    # The model of the cluster's `[<kind>]` section (e.g. RedisOptions), filled with its defaults
    # when the section is absent; None: the engine has no section of its own.
    options: type | None = None
    # The model of the engine's thresholds, for documentation and `dbops config` (where they
    # live: inside `options`, or the cluster's own `thresholds` for PostgreSQL).
    thresholds: type | None = None
    # "module:function" (snapshot, member health) -> a history point the hub keeps for the
    # pane's trends (an hour by default); None: the engine keeps no history.
    history: str | None = None
    # Polled as one unit named this (the engine's collect() reaches every node, discovered or
    # configured, in one refresh); None: each configured member is polled on its own.
    poll_unit: str | None = None
    # "module:attr" of the engine's drill probe (dbops.drill.probe.Probe), a class taking
    # (ref, run_id): what a DR drill writes and reads back to measure RTO and RPO; None: the
    # engine cannot be drilled with a probe.
    probe: str | None = None
    # "module:function" (cluster health) -> {member name, or "" for the cluster: {name: value}}:
    # the engine's facts that the timeline reports when they change (a PostgreSQL member's
    # timeline, a Redis Cluster's slot coverage, a Kafka group's state). Role, reachability and
    # severities are every engine's already. None: the engine adds none.
    facts: str | None = None

    def facts_of(self) -> Callable[[ClusterHealth], dict[str, dict[str, str]]] | None:
        return None if self.facts is None else load_attr(self.facts)

    def load_adapter(self) -> Any:
        return load_attr(self.adapter)

    def load_assessor(self) -> Any:
        return importlib.import_module(self.assessor)

    def overview_row(self, ref: ClusterRef, health: ClusterHealth) -> OverviewRow:
        if self.overview is None:
            return generic_overview_row(health)
        row: Callable[[ClusterRef, ClusterHealth], OverviewRow] = load_attr(self.overview)
        return row(ref, health)


def load_attr(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def topology(health: ClusterHealth) -> tuple[TopologyEntry, ...]:
    """Primaries first, then the others, in config order within each."""
    entries = [TopologyEntry(m.name, m.role, m.snapshot.reachability) for m in health.members]
    entries.sort(key=lambda t: 0 if t.role == "primary" else 1)
    return tuple(entries)


def worst_lag(health: ClusterHealth) -> str:
    """The members' worst replication lag as 'bytes/seconds', '-' when none is known."""
    from dbops.model import human_bytes, human_seconds

    lag_b = [m.lag_bytes for m in health.members if m.lag_bytes is not None]
    lag_s = [m.lag_seconds for m in health.members if m.lag_seconds is not None]
    if not lag_b and not lag_s:
        return "-"
    return f"{human_bytes(max(lag_b) if lag_b else None)}/{human_seconds(max(lag_s) if lag_s else None)}"


def generic_overview_row(health: ClusterHealth) -> OverviewRow:
    return OverviewRow(topology=topology(health), lag=worst_lag(health))


# -- the registry ----------------------------------------------------------------------------

GROUP = "dbops.engines"

_lock = threading.Lock()
_specs: dict[str, EngineSpec] | None = None
_broken: dict[str, str] = {}


class UnknownEngine(Exception):
    pass


def specs() -> dict[str, EngineSpec]:
    """Every registered engine by kind, read once per process."""
    global _specs
    if _specs is None:
        with _lock:
            if _specs is None:
                _specs = _discover()
    return _specs


def _discover() -> dict[str, EngineSpec]:
    from importlib.metadata import entry_points

    found: dict[str, EngineSpec] = {}
    for ep in entry_points(group=GROUP):
        try:
            spec = ep.load()
        except Exception as exc:  # a broken plugin must not take the built-ins down with it
            _broken[ep.name] = f"{ep.value} cannot be loaded: {type(exc).__name__}: {exc}"
            continue
        if not isinstance(spec, EngineSpec) or spec.kind != ep.name:
            _broken[ep.name] = f"{ep.value} is not an EngineSpec of kind {ep.name!r}"
            continue
        found[spec.kind] = spec
    return found


def broken() -> dict[str, str]:
    """Registered engines that could not be loaded, with why (shown where a config names one)."""
    specs()
    return dict(_broken)


def spec_of(kind: str) -> EngineSpec:
    found = specs().get(kind)
    if found is None:
        why = broken().get(kind)
        raise UnknownEngine(f"engine {kind!r}: {why}" if why else f"no engine named {kind!r}")
    return found


def adapter_class(kind: str) -> type[Any]:
    """The engine's Adapter subclass (dbops.engines.base), its client library imported now."""
    cls: type[Any] = spec_of(kind).load_adapter()
    return cls


def assessor(kind: str) -> Any:
    return spec_of(kind).load_assessor()


def overview_row(ref: ClusterRef, health: ClusterHealth) -> OverviewRow:
    return spec_of(ref.cluster.engine).overview_row(ref, health)
