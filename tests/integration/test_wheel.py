"""The wheel, not the checkout: ``pip install .`` into a fresh venv gives a working CLI.

The project is copied (without venv, caches and build output) to a temp dir, built into a
wheel there, installed with its dependencies into a new venv, and run from that venv: the
shipped ``units/``, ``templates/`` and ``inventory/`` are found in site-packages, the demo
runs to its end on a disposable host, and a data folder removed from the install is one
clear line.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

SKIP = shutil.ignore_patterns(
    ".venv",
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".*_cache",
    "bench",
    ".roots",  # the Debian 13 test root (600 MB, maybe half-built by ci/test meanwhile)
)


@dataclass
class Installed:
    venv: Path
    build_seconds: float

    @property
    def cli(self) -> str:
        return str(self.venv / "bin" / "reconciler")

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def site_data(self) -> Path:
        code = "import reconciler, pathlib; print(pathlib.Path(reconciler.__file__).parent)"
        out = subprocess.run(
            [self.python, "-c", code], capture_output=True, text=True, check=True, cwd="/"
        ).stdout.strip()
        return Path(out) / "data"


def pip(python: str, *args: str, cwd: Path) -> None:
    proc = subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True, text=True, cwd=cwd, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(REPO, source, ignore=SKIP)
    started = time.monotonic()
    pip(sys.executable, "wheel", "--no-deps", "-w", str(base / "dist"), ".", cwd=source)
    (wheel,) = (base / "dist").glob("reconciler-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip(str(venv / "bin" / "python"), "install", str(wheel), cwd=base)
    yield Installed(venv, time.monotonic() - started)


def test_the_wheel_ships_the_data_folders(installed: Installed) -> None:
    data = installed.site_data()
    assert str(data).startswith(str(installed.venv))  # site-packages, not the checkout
    for name in ("units", "templates", "inventory"):
        shipped = sorted(p.name for p in (data / name).iterdir())
        assert shipped == sorted(p.name for p in (REPO / name).iterdir()), name
    code = "from reconciler import package_data as d; print(d.find('units'))"
    found = subprocess.run(
        [installed.python, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    ).stdout.strip()
    assert found == str(data / "units")
    assert subprocess.run([installed.cli, "install", "--help"], capture_output=True,
                          check=False, cwd="/").returncode == 0  # fmt: skip


@pytest.mark.host
def test_demo_runs_from_the_wheel(host: object, installed: Installed) -> None:
    del host  # the demo boots its own host; this fixture only proves hosts can boot here
    proc = subprocess.run(
        [installed.cli, "demo"], capture_output=True, text=True, timeout=240, check=False, cwd="/"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "host stopped and removed" in proc.stdout and "Traceback" not in proc.stderr


def test_a_missing_data_folder_is_one_line(installed: Installed, tmp_path: Path) -> None:
    data = installed.site_data()
    moved = tmp_path / "inventory"
    shutil.move(data / "inventory", moved)
    try:
        proc = subprocess.run(
            [installed.cli, "demo"], capture_output=True, text=True, timeout=60, check=False,
            cwd="/",
        )  # fmt: skip
    finally:
        shutil.move(moved, data / "inventory")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot find the reconciler's 'inventory' folder" in lines[0]
    assert "pip install ." in lines[0]
