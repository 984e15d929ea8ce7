"""The architecture contracts in pyproject.toml cover every module that exists on disk, and the
core's start-up imports stay light."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def contracts():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {c["name"]: c for c in data["tool"]["importlinter"]["contracts"]}


def test_textual_contract_lists_every_core_module():
    listed = set(contracts()["The core never imports textual"]["source_modules"])
    on_disk = {
        f"dbops.{p.stem}" for p in (REPO / "dbops").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())
    }
    assert on_disk - listed == set(), "add these core modules to the import-linter contract"


def test_textual_contract_lists_every_platform_and_sandbox_module():
    """The packages whose modules the contract names one by one: a new module there (the
    monitoring clients, the Prometheus sandbox) is named too."""
    listed = set(contracts()["The core never imports textual"]["source_modules"])
    for package in ("platform", "sandbox"):
        on_disk = {
            f"dbops.{package}.{p.stem}" for p in (REPO / "dbops" / package).iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())
        }
        assert on_disk - listed == set(), f"add these dbops.{package} modules to the import-linter contract"


def test_engine_independence_contract_lists_every_engine():
    listed = set(contracts()["Engines never import each other"]["modules"])
    engines = {f"dbops.engines.{p.name}" for p in (REPO / "dbops" / "engines").iterdir() if (p / "__init__.py").exists()}
    assert engines == listed


def test_cli_import_pulls_in_no_ui_and_no_client_library():
    code = "import sys, dbops.cli; print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('textual','asyncpg','pydantic','rich'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [], f"`dbops --help` would import {out}"


def test_screens_install_as_dbops_screens():
    import dbops.runbooks
    import dbops.screens

    assert Path(dbops.screens.__file__).parent == REPO / "screens"
    assert Path(dbops.runbooks.__file__).parent == REPO / "runbooks"


def test_runbooks_never_import_the_ui():
    """import-linter reads dbops/ only; runbooks/ (installed as dbops.runbooks) is checked here."""
    import ast

    for path in (REPO / "runbooks").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(("textual", "dbops.screens")), f"{path} imports {name}"


def test_every_package_on_disk_is_packaged():
    """An installed (not editable) dbops has only the packages pyproject lists: a runbooks
    subpackage left out would make its runbooks vanish from a real install."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    roots = {"dbops": REPO / "dbops", "dbops.screens": REPO / "screens", "dbops.runbooks": REPO / "runbooks"}
    on_disk = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            on_disk.add(".".join((name, *rel)))
    assert on_disk - listed == set(), "add these packages to [tool.setuptools] packages"


def test_no_module_imports_itself_through_others():
    """No import cycle among dbops' modules (the UI and runbooks included), deferred imports
    inside functions counted too: a cycle is a layer that knows what sits above it."""
    import grimp

    sys.path.insert(0, str(REPO))  # runbooks/ and screens/ as the top-level packages they are on disk
    try:
        graph = grimp.build_graph("dbops", "runbooks", "screens", exclude_type_checking_imports=True)
    finally:
        sys.path.remove(str(REPO))
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if module < imported and graph.chain_exists(importer=imported, imported=module):
                cycles.append(" -> ".join(graph.find_shortest_chain(importer=module, imported=imported) or ())
                              + " -> ... -> " + module)
    assert cycles == []
