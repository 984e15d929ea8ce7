"""Where drill scenarios come from: the built-in package dbops.drill.scenarios, then the
directories named by `drill_dirs` in the config (a team's own). A module exposes SCENARIO or
SCENARIOS. A module that fails to load is reported by name; the others still load."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from dbops.drill.model import Scenario

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
    for d in extra_dirs:
        path = Path(d).expanduser()
        if not path.is_dir():
            problems.append(f"drill_dirs: {path} is not a directory")
            continue
        for file in sorted(path.glob("*.py")):
            name = f"dbops_user_drills.{file.stem}"
            try:
                spec = importlib.util.spec_from_file_location(name, file)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                add(_from_module(module), str(file), str(file))
            except Exception as exc:  # a team's broken module must not hide the other drills
                problems.append(f"{file}: cannot be loaded: {type(exc).__name__}: {exc}")
    return found, sources, problems


def load(extra_dirs: Iterable[str] = ()) -> tuple[dict[str, Scenario], list[str]]:
    found, _, problems = catalog(extra_dirs)
    return found, problems
