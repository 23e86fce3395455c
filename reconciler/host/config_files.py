"""Config files as the host has them (talks to the host's file system under its root).

Every host path is seen under the host's root (``Settings.host_root``: ``/``, or a disposable
host's ``/proc/PID/root`` from outside), and users and groups are the host's own (its
``/etc/passwd`` and ``/etc/group``), never this process's. Each component of a path is
``lstat``-ed, never followed: a symlink on the way is reported (the sync refuses it, the
monitor reports it). Shared by the sync (``reconcile.host_files``) and the monitor's drift.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from reconciler.core.files import HostFile
from reconciler.model import FileMeta

MAX_READ = 16 << 20  # a live file larger than this is read as "differs" (never loaded whole)


def on_host(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def read_path(root: Path, path: str) -> HostFile:
    """What is at ``path`` under ``root``, without following any symlink."""
    parts = path.strip("/").split("/")
    current = root
    for i, part in enumerate(parts[:-1]):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return HostFile(path)
        except OSError:
            return HostFile(path, blocked="/" + "/".join(parts[: i + 1]))
        if not stat.S_ISDIR(mode):
            return HostFile(path, blocked="/" + "/".join(parts[: i + 1]))
    target = current / parts[-1]
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return HostFile(path)
    if stat.S_ISLNK(st.st_mode):
        return HostFile(path, "symlink")
    if stat.S_ISDIR(st.st_mode):
        return HostFile(path, "directory")
    if not stat.S_ISREG(st.st_mode):
        return HostFile(path, "special file")
    content = b"\0(too large to compare)" if st.st_size > MAX_READ else _read(target)
    meta = FileMeta(content, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return HostFile(path, "file", meta)


def _read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        return fh.read(MAX_READ + 1)


def read_accounts(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    """The host's users and groups (name -> id) from its ``/etc/passwd`` and ``/etc/group``."""

    def table(name: str) -> dict[str, int]:
        out: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in (root / "etc" / name).read_text("utf-8", "replace").splitlines():
                fields = line.split(":")
                if len(fields) >= 3 and fields[2].isdigit() and not line.startswith("#"):
                    out.setdefault(fields[0], int(fields[2]))
        return out

    return table("passwd"), table("group")
