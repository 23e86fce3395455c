"""The house tooling is part of the suite: ruff (lint + format), mypy strict, and the layer
contract (import-linter, in pyproject.toml) with a proof that it bites."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the package under ``cwd`` (that copy first on the path), no cache."""
    assert (BIN / "lint-imports").exists(), "install the test extras: pip install -e '.[test]'"
    argv = [str(BIN / "lint-imports"), "--no-cache"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, check=False)


def test_ruff_check() -> None:
    _run(str(BIN / "ruff"), "check", "reconciler", "tests", "bench")


def test_ruff_format() -> None:
    _run(str(BIN / "ruff"), "format", "--check", "reconciler", "tests", "bench")


def test_mypy_strict() -> None:
    _run(str(BIN / "mypy"))


def test_import_layers() -> None:
    """cli > reconcile | monitor | push | jobs > systemd | store | host > core > model/errors;
    core imports no I/O module. Function-level imports count too."""
    proc = _lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("core/plan.py", "import sqlite3", "reconciler.core is not allowed to import sqlite3"),
        (
            "store/db.py",
            "from reconciler import monitor",
            "reconciler.store is not allowed to import reconciler.monitor",
        ),
        (
            "monitor/publish.py",
            "from reconciler import reconcile",
            "reconciler.monitor is not allowed to import reconciler.reconcile",
        ),
        (  # the sync reaches the monitor only through reconcile.hooks.Monitoring
            "reconcile/verify.py",
            "from reconciler import monitor",
            "reconciler.reconcile is not allowed to import reconciler.monitor",
        ),
    ],
)
def test_import_contract_fails_on_a_forbidden_import(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    """A copy of the package with one line added breaks the contract, naming the import."""
    shutil.copytree(REPO / "reconciler", tmp_path / "reconciler", ignore=_no_caches)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "reconciler" / module
    path.write_text(path.read_text() + f"\n{line}  # added by the test\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert broken in proc.stdout, proc.stdout


def test_no_import_cycle() -> None:
    """No module reaches itself through imports (function-level and TYPE_CHECKING ones too)."""
    import grimp  # import-linter's graph builder

    graph = grimp.build_graph("reconciler")
    cycles = [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, cycles


def _strongly_connected(graph: Any) -> list[set[str]]:
    """Tarjan's components of the module graph."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            out.append(component)

    for m in modules:
        if m not in index:
            visit(m)
    return out


def _no_caches(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__"]
