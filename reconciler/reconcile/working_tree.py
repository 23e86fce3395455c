"""A config repository's working tree, read as a sync reads a revision (talks to the filesystem).

``reconciler validate`` checks a checkout before it is committed (a config repository's own
CI), so it must see the tree through the same read policy as ``revision``: only
``inventory/`` and ``templates/``, symlinks refused (never followed), sizes bounded. The
files are read as they are on disk, committed or not.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from reconciler.errors import SourceError, UsageError
from reconciler.model import Snapshot
from reconciler.reconcile.revision import MAX_FILE_BYTES, MAX_INVENTORY_BYTES, READ_DIRS

REVISION = "working-tree"


def read(directory: Path) -> Snapshot:
    """The files under ``directory``'s inventory/ and templates/, as a Snapshot."""
    if not (directory / "inventory").is_dir():
        raise UsageError(
            f"cannot validate '{directory}': no inventory/ folder",
            "pass the root of a config repository (the folder holding inventory/ and templates/)",
        )
    files: dict[str, bytes] = {}
    for top in READ_DIRS:
        root = directory / top
        if root.is_symlink():
            raise _refused(directory, top, "a symlink (symlinks are never followed)")
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in sorted(dirnames + filenames):
                path = Path(dirpath, name)
                rel = path.relative_to(directory).as_posix()
                mode = path.lstat().st_mode
                if stat.S_ISLNK(mode):
                    raise _refused(directory, rel, "a symlink (symlinks are never followed)")
                if stat.S_ISDIR(mode):
                    continue
                if not stat.S_ISREG(mode):
                    raise _refused(directory, rel, "not a regular file")
                limit = MAX_INVENTORY_BYTES if top == "inventory" else MAX_FILE_BYTES
                if path.stat().st_size > limit:
                    raise _refused(directory, rel, f"larger than {limit // 1024} KiB")
                try:
                    files[rel] = path.read_bytes()
                except OSError as exc:
                    raise _refused(directory, rel, exc.strerror or str(exc)) from None
    return Snapshot(REVISION, dict(sorted(files.items())), summary="working tree")


def _refused(directory: Path, path: str, why: str) -> SourceError:
    return SourceError(
        f"cannot read '{path}' in '{directory}': {why}",
        hint="keep regular files under inventory/ or templates/",
    )
