"""systemd's unit directories as they are on disk (talks to the file system).

One pass over the search path per sync: the unit-named entries of every directory and
the symlinks in the config directories that enable units. The answer to "is it enabled"
is then computed for every unit at once by ``reconciler.core.enablement``, instead of one
``UnitFileState`` read per unit, which systemd 252 answers by rescanning the same
directories each time.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from reconciler.core.enablement import (
    CONFIG_DIRS,
    DEPENDENCY_SUFFIXES,
    SEARCH_PATH,
    Entry,
    UnitDirs,
    template_of,
    unit_file_states,
)

SYSTEM_UNIT_DIR = "etc/systemd/system"
# File timestamps come from the kernel's coarse clock (a few ms behind): a file written
# just after a reload may carry an earlier time. A file this close to the last load is
# asked about.
LOAD_SLACK_SEC = 1.0


def _scan(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def read_unit_dirs(root: Path = Path("/")) -> UnitDirs:
    """The search path under ``root`` (``/``, or a host's ``/proc/PID/root`` from outside)."""
    entries: dict[str, list[Entry]] = {}
    links: list[tuple[str, str, str]] = []
    for directory in SEARCH_PATH:
        config = directory in CONFIG_DIRS
        for item in _scan(root / directory.lstrip("/")):
            if item.is_dir(follow_symlinks=False):
                if config and item.name.endswith(DEPENDENCY_SUFFIXES):
                    for link in _scan(Path(item.path)):
                        if link.is_symlink():
                            links.append((directory, link.name, os.readlink(link.path)))
                continue
            if "." not in item.name:
                continue
            target = os.readlink(item.path) if item.is_symlink() else None
            entries.setdefault(item.name, []).append(Entry(directory, target))
            aliased = target is not None and target.rstrip("/").rpartition("/")[2] != item.name
            if config and aliased and target != "/dev/null":
                links.append((directory, item.name, target))  # type: ignore[arg-type]  # Alias=
    return UnitDirs({n: tuple(e) for n, e in entries.items()}, tuple(links))


def read_content(root: Path, dirs: UnitDirs, name: str) -> str | None:
    """The text of the file systemd would load for ``name`` (None if there is none)."""
    for candidate in (name, template_of(name)):
        entries = dirs.entries.get(candidate or "", ())
        if candidate and entries:
            try:
                path = root / entries[0].directory.lstrip("/") / candidate
                return path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                return None
    return None


def read_unit_view(root: Path, unit: str) -> tuple[tuple[str, str] | None, list[tuple[str, str]]]:
    """The files systemd loads for ``unit`` under ``root``: its unit file (host path, text)
    and every drop-in found along the search path (priority order, not yet merged)."""
    from reconciler.core.unitkind import dropin_dirs

    def read(path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    fragment = None
    stem, _, kind = unit.rpartition(".")
    template = stem.partition("@")[0] + "@." + kind if "@" in stem else None
    for candidate in (unit, template):
        for directory in SEARCH_PATH if candidate else ():
            path = root / directory.lstrip("/") / str(candidate)
            if fragment is None and path.is_file():
                fragment = (f"{directory}/{candidate}", read(path))
    found = []
    for directory in SEARCH_PATH:
        for name in dropin_dirs(unit):
            for entry in _scan(root / directory.lstrip("/") / name):
                if entry.name.endswith(".conf") and entry.is_file():
                    found.append((f"{directory}/{name}/{entry.name}", read(Path(entry.path))))
    return fragment, found


def host_root(unit_dir: Path) -> Path | None:
    """The root whose search path ``unit_dir`` is the ``/etc/systemd/system`` of (``/``, or a
    host's root from outside); None for any other directory (its units are asked of systemd)."""
    text = str(unit_dir).rstrip("/")
    if not text.endswith(SYSTEM_UNIT_DIR):
        return None
    return Path(text[: -len(SYSTEM_UNIT_DIR)] or "/")


def file_states(
    root: Path, names: Collection[str], files: Mapping[str, str | None]
) -> dict[str, str]:
    """``UnitFileState`` of ``names`` from one read of the search path under ``root``;
    ``files``: texts already read from the unit dir (None: look along the path)."""
    dirs = read_unit_dirs(root)
    contents = {
        n: text if (text := files.get(n)) is not None else read_content(root, dirs, n)
        for n in names
    }
    return unit_file_states(dirs, names, contents)


def changed_since(
    changed: Mapping[str, float], names: Sequence[str], loaded_at: float | None
) -> set[str]:
    """Units whose file may differ from what systemd loaded at ``loaded_at`` (None:
    unknown, so all): only they can need a daemon-reload. ``changed``: file mtime/ctime."""
    return {
        n
        for n in names
        if loaded_at is None or n not in changed or changed[n] >= loaded_at - LOAD_SLACK_SEC
    }
