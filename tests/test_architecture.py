"""The layers of docs/architecture.md hold: import-linter's contracts (pyproject.toml) are
kept, a contract really breaks on an upward import (shown on a copy of the package), and no
two modules of the package import each other, directly or through others, inside functions
included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
from helpers import PROJECT_ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(cwd / "pyproject.toml"), "--no-cache"],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=120, check=False)


def test_the_layer_contracts_are_kept() -> None:
    proc = _lint(PROJECT_ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path: Path) -> None:
    """The foundation (config) importing a front door (cli), hidden inside a function."""
    shutil.copytree(PROJECT_ROOT / "pytest_hokmdb", tmp_path / "pytest_hokmdb", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    loader = tmp_path / "pytest_hokmdb" / "config" / "loader.py"
    loader.write_text(loader.read_text() + "\n\ndef _upward() -> None:\n    from pytest_hokmdb.cli import common  # noqa: F401\n")
    proc = _lint(tmp_path, pythonpath=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Layers point down" in proc.stdout and "BROKEN" in proc.stdout
    assert "pytest_hokmdb.config.loader -> pytest_hokmdb.cli.common" in proc.stdout


def test_a_core_import_of_the_hokm_profile_breaks_its_contract(tmp_path: Path) -> None:
    """The core reaching for Hokm's models directly, the way checks/schema.py once did."""
    for package in ("pytest_hokmdb", "hokm_profile"):
        shutil.copytree(PROJECT_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    health = tmp_path / "pytest_hokmdb" / "checks" / "health.py"
    health.write_text(health.read_text() + "\n\nfrom hokm_profile import HOT_TABLES  # noqa: E402,F401\n")
    proc = _lint(tmp_path, pythonpath=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "The core never imports an application profile" in proc.stdout and "BROKEN" in proc.stdout
    assert "pytest_hokmdb.checks.health -> hokm_profile" in proc.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_package_has_no_import_cycle() -> None:
    assert _cycles(grimp.build_graph("pytest_hokmdb", "hokm_profile")) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    package = tmp_path / "cyclic_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from cyclic_pkg import b  # noqa: F401\n")
    (package / "b.py").write_text("from cyclic_pkg import a  # noqa: F401\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert _cycles(grimp.build_graph("cyclic_pkg")) == [["cyclic_pkg.a", "cyclic_pkg.b"]]
    finally:
        sys.path.remove(str(tmp_path))
