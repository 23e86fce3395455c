"""The house tooling is part of the suite: ruff (lint + format) and mypy strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_check() -> None:
    _run(str(BIN / "ruff"), "check", "reconciler", "tests", "bench")


def test_ruff_format() -> None:
    _run(str(BIN / "ruff"), "format", "--check", "reconciler", "tests", "bench")


def test_mypy_strict() -> None:
    _run(str(BIN / "mypy"))
