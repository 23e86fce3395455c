"""The build step that ships the top-level ``units/``, ``templates/`` and ``inventory/``.

They stay the source of truth at the top of the checkout (tests, the demo and operators
read them there); a wheel carries a copy under ``reconciler/data/``, made here at build
time and never tracked, found at run time through ``importlib.resources``
(``reconciler/package_data.py``). Everything else is in ``pyproject.toml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
DATA_DIRS = ("units", "templates", "inventory")


class BuildWithData(build_py):
    """``build_py`` plus a copy of the data folders into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's folders
            return
        target = Path(self.build_lib) / "reconciler" / "data"
        for name in DATA_DIRS:
            source = HERE / name
            if not source.is_dir():
                raise SystemExit(f"cannot build reconciler: data folder '{source}' missing")
            shutil.rmtree(target / name, ignore_errors=True)
            shutil.copytree(source, target / name)


setup(cmdclass={"build_py": BuildWithData})
