"""Where drill scenarios come from: the built-in package dbops.drill.scenarios, then the
directories named by `drill_dirs` in the config (a team's own). A module exposes SCENARIO or
SCENARIOS. A module that fails to load is reported by name; the others still load."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Iterable
from types import ModuleType

from dbops.drill.model import Scenario
from dbops.runbook.registry import dir_modules

BUILT_IN = "built-in"


def _from_module(module: ModuleType) -> list[Scenario]:
    found = list(getattr(module, "SCENARIOS", ()))
    if hasattr(module, "SCENARIO"):
        found.append(module.SCENARIO)
    return [s for s in found if isinstance(s, Scenario)]


def catalog(extra_dirs: Iterable[str] = ()) -> tuple[dict[str, Scenario], dict[str, str], list[str]]:
    """Every scenario by id, where each came from, and the problems met (one line each)."""
    import dbops.drill.scenarios as builtin

    found: dict[str, Scenario] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []

    def add(items: list[Scenario], origin: str, source: str) -> None:
        for s in items:
            if s.id in found:
                problems.append(f"{origin}: drill {s.id} is already defined; this one is ignored")
            else:
                found[s.id], sources[s.id] = s, source

    for info in pkgutil.iter_modules(builtin.__path__, builtin.__name__ + "."):
        try:
            add(_from_module(importlib.import_module(info.name)), info.name, BUILT_IN)
        except Exception as exc:  # a broken scenario module must not hide the others
            problems.append(f"{info.name}: cannot be loaded: {type(exc).__name__}: {exc}")
    modules, more = dir_modules(extra_dirs, "drill_dirs", "dbops_user_drills")
    problems += more
    for file, module in modules:
        add(_from_module(module), str(file), str(file))
    return found, sources, problems


def load(extra_dirs: Iterable[str] = ()) -> tuple[dict[str, Scenario], list[str]]:
    found, _, problems = catalog(extra_dirs)
    return found, problems
