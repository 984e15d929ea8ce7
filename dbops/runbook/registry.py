"""Where runbooks come from: the built-in package dbops.runbooks (the repository's runbooks/),
then the directories named by `runbook_dirs` in the config (a team's own). A module exposes
RUNBOOK or RUNBOOKS. A module that fails to load is reported by name; the others still load."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from dbops.config import ClusterRef
from dbops.runbook.model import Runbook


class UnknownRunbook(Exception):
    pass


def _from_module(module: object) -> list[Runbook]:
    found = list(getattr(module, "RUNBOOKS", ()))
    if hasattr(module, "RUNBOOK"):
        found.append(module.RUNBOOK)
    return [r.described(getattr(module, "__doc__", None)) for r in found if isinstance(r, Runbook)]


BUILT_IN = "built-in"


@dataclass
class Catalog:
    """Every runbook by id, where each came from (BUILT_IN, or the file of a runbook_dirs module),
    and the problems met while loading (one line each)."""

    books: dict[str, Runbook] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, items: list[Runbook], origin: str, source: str) -> None:
        for rb in items:
            if rb.id in self.books:
                self.problems.append(f"{origin}: runbook {rb.id} is already defined; this one is ignored")
            else:
                self.books[rb.id] = rb
                self.sources[rb.id] = source


def dir_modules(dirs: Iterable[str], setting: str, package: str) -> tuple[list[tuple[Path, ModuleType]], list[str]]:
    """Every *.py file of a team's directories (`setting` in the config: runbook_dirs,
    drill_dirs) loaded as `package`.<stem>, and one line per directory or file that could not
    be: a broken module must not hide the others."""
    modules: list[tuple[Path, ModuleType]] = []
    problems: list[str] = []
    for d in dirs:
        path = Path(d).expanduser()
        if not path.is_dir():
            problems.append(f"{setting}: {path} is not a directory")
            continue
        for file in sorted(path.glob("*.py")):
            try:
                spec = importlib.util.spec_from_file_location(f"{package}.{file.stem}", file)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                modules.append((file, module))
            except Exception as exc:  # reported by name; the other files still load
                problems.append(f"{file}: cannot be loaded: {type(exc).__name__}: {exc}")
    return modules, problems


def _builtin_modules(package: str | None) -> list[str]:
    """The built-in runbook modules: every one, or those of one engine's subpackage (with the
    subpackage itself, as a whole walk has it); none when there is no such subpackage."""
    import dbops.runbooks as builtin

    if package is None:
        return [info.name for info in pkgutil.walk_packages(builtin.__path__, builtin.__name__ + ".")]
    name = f"{builtin.__name__}.{package}"
    if not package.isidentifier() or importlib.util.find_spec(name) is None:
        return []
    sub = importlib.import_module(name)
    return [name, *(info.name for info in pkgutil.walk_packages(getattr(sub, "__path__", []), name + "."))]


def catalog(extra_dirs: Iterable[str] = (), package: str | None = None) -> Catalog:
    """The built-in runbooks (only the subpackage `package` when given), then those of
    `extra_dirs` (a config's runbook_dirs)."""
    found = Catalog()
    for name in _builtin_modules(package):
        try:
            found.add(_from_module(importlib.import_module(name)), name, BUILT_IN)
        except Exception as exc:  # a broken runbook module must not hide the others
            found.problems.append(f"{name}: cannot be loaded: {type(exc).__name__}: {exc}")
    modules, problems = dir_modules(extra_dirs, "runbook_dirs", "dbops_user_runbooks")
    found.problems += problems
    for file, module in modules:
        found.add(_from_module(module), str(file), str(file))
    return found


def load(extra_dirs: Iterable[str] = ()) -> tuple[dict[str, Runbook], list[str]]:
    """All runbooks by id, and the problems met while loading (one line each)."""
    found = catalog(extra_dirs)
    return found.books, found.problems


def find(runbook_id: str, extra_dirs: Iterable[str] = ()) -> tuple[Runbook | None, list[str]]:
    """The runbook `runbook_id` from the built-in subpackage its id starts with ("redis." ->
    dbops.runbooks.redis) and runbook_dirs, and the problems met loading those; (None, ...) when
    it is not there (the caller then loads everything: the id may be elsewhere, or misspelt).

    A command that names its runbook need not import every engine's runbooks, and with them
    their client libraries: a tenth of a second of every `dbops runbook run` otherwise."""
    found = catalog(extra_dirs, package=runbook_id.partition(".")[0])
    return found.books.get(runbook_id), found.problems


# Runbooks about what surrounds a cluster rather than its engine: they apply to any cluster
# whose config has what they need, and the text says what is missing ({name}: the cluster).
PLATFORM_RUNBOOKS: dict[str, tuple[Callable[[ClusterRef], bool], str]] = {
    "kubernetes": (lambda ref: ref.cluster.kubernetes is not None, "{name} has no [kubernetes] section in the config"),
    "cnpg": (lambda ref: ref.cluster.kubernetes is not None and bool(ref.cluster.kubernetes.cnpg_cluster),
             "{name} names no cnpg_cluster in its [kubernetes] section"),
}


def not_applicable(book: Runbook, ref: ClusterRef) -> str | None:
    """Why `book` is not for the cluster `ref`, in words; None when it is."""
    platform = PLATFORM_RUNBOOKS.get(book.engine)
    if platform is not None:
        applies, missing = platform
        return None if applies(ref) else f"{book.id} is a {book.engine} runbook and {missing.format(name=ref.name)}"
    engine = ref.cluster.engine
    return None if book.engine == engine else f"{book.id} is a {book.engine} runbook and {ref.name} is a {engine} cluster"


def applies_to(book: Runbook, ref: ClusterRef) -> bool:
    """Whether `book` is offered for the cluster `ref`: its engine's runbooks, and the platform
    runbooks (engine "kubernetes", "cnpg") of a cluster configured for them."""
    return not_applicable(book, ref) is None
