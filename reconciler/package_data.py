"""Where the shipped ``units/``, ``templates/`` and ``inventory/`` are (talks to the filesystem).

A wheel carries them under ``reconciler/data/`` (copied at build time by ``setup.py``); a
checkout or an editable install reads the top-level folders, which stay the source of
truth. Anything else is one clear line, not a traceback deep in ``install`` or ``demo``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from reconciler.errors import ReconcilerError

NAMES = ("units", "templates", "inventory")


def find(name: str) -> Path:
    """The directory holding the shipped ``name`` (one of ``NAMES``)."""
    if name not in NAMES:
        raise ValueError(f"unknown package data folder {name!r}")
    package = resources.files("reconciler")
    candidates = [Path(str(package / "data" / name)), Path(str(package)).parent / name]
    for path in candidates:
        if path.is_dir():
            return path
    raise ReconcilerError(
        f"cannot find the reconciler's '{name}' folder: not in {candidates[0]} nor {candidates[1]}",
        "reinstall the package from a checkout (pip install .): the wheel ships units/, "
        "templates/ and inventory/",
    )
