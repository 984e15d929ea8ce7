"""The engine registry: every engine's `EngineSpec`, from the `dbops.engines` entry-point group.

Built-ins register there too (pyproject.toml), as a third party's engine does: one way in, so
a plugin engine is validated, polled, judged and listed like PostgreSQL. Reading the specs
imports each engine's light package module only; adapters (and their client libraries) load
when a configured cluster is first polled.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dbops.config import ClusterRef
    from dbops.engines.base import Adapter
    from dbops.engines.spec import EngineSpec, OverviewRow
    from dbops.model import ClusterHealth

GROUP = "dbops.engines"

_lock = threading.Lock()
_specs: "dict[str, EngineSpec] | None" = None
_broken: dict[str, str] = {}


class UnknownEngine(Exception):
    pass


def specs() -> "dict[str, EngineSpec]":
    """Every registered engine by kind, read once per process."""
    global _specs
    if _specs is None:
        with _lock:
            if _specs is None:
                _specs = _discover()
    return _specs


def _discover() -> "dict[str, EngineSpec]":
    from importlib.metadata import entry_points

    from dbops.engines.spec import EngineSpec

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


def spec_of(kind: str) -> "EngineSpec":
    found = specs().get(kind)
    if found is None:
        why = broken().get(kind)
        raise UnknownEngine(f"engine {kind!r}: {why}" if why else f"no engine named {kind!r}")
    return found


def adapter_class(kind: str) -> "type[Adapter]":
    cls: type[Adapter] = spec_of(kind).load_adapter()
    return cls


def assessor(kind: str) -> Any:
    return spec_of(kind).load_assessor()


def overview_row(ref: "ClusterRef", health: "ClusterHealth") -> "OverviewRow":
    return spec_of(ref.cluster.engine).overview_row(ref, health)
