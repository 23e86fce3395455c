"""Enablement of unit files from the unit directories, as systemd computes it (pure).

systemd 252 answers ``UnitFileState`` by scanning every ``.wants``/``.requires`` directory
for each unit it is asked about: with 10,000 enabled units that is ~17 ms a unit, ~3 min
for one read after a reload, past the 30 s D-Bus timeout. The reconciler wrote these files
and their ``[Install]`` sections itself, so it reads the directories once per sync
(``reconciler.systemd.unit_files``) and answers here, for every unit at once, the way
``unit_file_lookup_state()`` in systemd's ``src/shared/install.c`` does:

1. the first file found along the search path decides: a link to ``/dev/null`` is
   ``masked`` (``masked-runtime`` under ``/run``); a file a generator wrote is
   ``generated``, a transient one ``transient``; a link under another name is an
   ``alias``; a link to a file outside the search path is ``linked`` (``-runtime``);
2. otherwise a symlink to the unit in a config directory (``*.wants``, ``*.requires``,
   ``*.upholds``, or an ``Alias=`` link beside the units) makes it ``enabled``
   (``enabled-runtime`` when every such link is under ``/run``);
3. otherwise ``disabled`` when its ``[Install]`` section has rules, ``indirect`` when it
   has only ``Also=``, else ``static``.

``tests/integration/test_enablement.py`` proves the answer equal to systemd's for every
case in its table, on a real systemd.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# systemd 252's search path for the system manager, in order (``lookup_paths_init``).
# Symlinks in every directory but the vendor ones can enable a unit; those under /run
# only for this boot ("-runtime"). Generators (fstab, postgresql, getty) write there too.
ETC = "/etc/systemd/system"
RUN = "/run/systemd/system"
GENERATED_DIRS = (
    "/run/systemd/generator.early",
    "/run/systemd/generator",
    "/run/systemd/generator.late",
)
TRANSIENT_DIR = "/run/systemd/transient"
VENDOR_DIRS = ("/usr/local/lib/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
SEARCH_PATH = (
    "/etc/systemd/system.control",
    "/run/systemd/system.control",
    TRANSIENT_DIR,
    GENERATED_DIRS[0],
    ETC,
    "/etc/systemd/system.attached",
    RUN,
    "/run/systemd/system.attached",
    GENERATED_DIRS[1],
    *VENDOR_DIRS,
    GENERATED_DIRS[2],
)
CONFIG_DIRS = tuple(d for d in SEARCH_PATH if d not in VENDOR_DIRS)
DEPENDENCY_SUFFIXES = (".wants", ".requires", ".upholds")
INSTALL_RULES = ("WantedBy", "RequiredBy", "UpheldBy", "Alias", "DefaultInstance")


@dataclass(frozen=True)
class Entry:
    """A unit-named entry of a search-path directory: a file, or a symlink and its target."""

    directory: str  # one of SEARCH_PATH
    target: str | None = None  # readlink() for a symlink, None for a regular file


Link = tuple[str, str, str]  # (config dir, link name, link target)


@dataclass(frozen=True)
class UnitDirs:
    """What the search path holds, read once: unit entries and dependency symlinks."""

    entries: Mapping[str, tuple[Entry, ...]] = field(default_factory=dict)  # name -> in order
    # (config dir, link name, link target) of every symlink that can enable a unit:
    # those in ``*.wants``/``*.requires``/``*.upholds`` and the aliases beside the units.
    links: tuple[Link, ...] = ()


def install_kind(content: str) -> str:
    """ "rules", "also" or "none": what the ``[Install]`` section of a unit file holds."""
    section, rules, also = "", False, False
    for raw in content.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Install]":
            key = line.partition("=")[0].strip()
            rules = rules or key in INSTALL_RULES
            also = also or key == "Also"
    return "rules" if rules else "also" if also else "none"


def template_of(name: str) -> str | None:
    """``foo@.service`` for an instance ``foo@bar.service``; None otherwise."""
    stem, at, rest = name.partition("@")
    if not at:
        return None
    instance, dot, suffix = rest.rpartition(".")
    return f"{stem}@.{suffix}" if instance and dot else None


def _basename(path: str) -> str:
    return path.rstrip("/").rpartition("/")[2]


def _inside_search_path(target: str) -> bool:
    return any(target.startswith(d + "/") for d in SEARCH_PATH)


def _first(dirs: UnitDirs, name: str) -> tuple[str, Entry] | None:
    """The entry systemd loads for ``name``: the unit's own, else its template's."""
    for candidate in (name, template_of(name)):
        if candidate and dirs.entries.get(candidate):
            return candidate, dirs.entries[candidate][0]
    return None


def _runtime(directory: str) -> bool:
    return directory.startswith("/run/")


def _is_template(name: str) -> bool:
    return "@." in name


def _install_value(content: str, key: str) -> str | None:
    """The last ``key=`` of the ``[Install]`` section (None if it has none)."""
    section, value = "", None
    for raw in content.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Install]" and line.partition("=")[0].strip() == key:
            value = line.partition("=")[2].strip()
    return value


LinkIndex = Mapping[str, Sequence[int]]


def index_links(dirs: UnitDirs) -> LinkIndex:
    """Positions in ``dirs.links`` by link name, by target name and by target path.

    A link can concern a unit only under one of those keys: looking them up instead of
    scanning every link per unit keeps 10,000 enabled units linear (the scan took 3.4 s
    for 1,000 units and grows with the square).
    """
    index: dict[str, list[int]] = {}
    for i, (_directory, link, target) in enumerate(dirs.links):
        for key in dict.fromkeys((link, _basename(target), target)):
            index.setdefault(key, []).append(i)
    return index


def _links_of(
    dirs: UnitDirs, index: LinkIndex | None, name: str, template: str | None, path: str
) -> list[Link]:
    """The links that may enable ``name`` (a superset, in the order of ``dirs.links``)."""
    if index is None:
        return list(dirs.links)
    found = set(index.get(name, ()))
    found.update(index.get(path, ()))
    if template is not None:
        found.update(index.get(template, ()))
    return [dirs.links[i] for i in sorted(found)]


def _enabling_links(
    dirs: UnitDirs, name: str, path: str, content: str, index: LinkIndex | None = None
) -> tuple[list[str], bool]:
    """(config dirs holding a link that enables ``name``, whether instances of it are enabled).

    An instance is enabled only by a link of its own name; a template by a link of its
    ``DefaultInstance=``, and links of other instances make it ``indirect``.
    """
    found, instances = [], False
    template, is_template = template_of(name), _is_template(name)
    default = _install_value(content, "DefaultInstance") if is_template else None
    stem, _, suffix = name.partition("@.")
    for directory, link, target in _links_of(dirs, index, name, template, path):
        base = _basename(target)
        if link == name and base in (name, template):
            found.append(directory)
        elif link != name and base == name and not is_template:
            found.append(directory)  # an Alias= link, or a dependency link of another name
        elif is_template and base == name and link.startswith(stem + "@"):
            if default is not None and link == f"{stem}@{default}.{suffix}":
                found.append(directory)
            else:
                instances = True
        elif not is_template and template is None and target == path:
            found.append(directory)
    return found, instances


def unit_file_state(
    dirs: UnitDirs, name: str, content: str | None, index: LinkIndex | None = None
) -> str:
    """systemd's ``UnitFileState`` of ``name``; ``content`` is its file's text ("" if unknown).

    Returns "" when no file of that name (or its template) exists anywhere on the path.
    """
    first = _first(dirs, name)
    if first is None:
        return ""
    found, entry = first
    if entry.directory in GENERATED_DIRS:
        return "generated"
    if entry.directory == TRANSIENT_DIR:
        return "transient"
    runtime = "-runtime" if _runtime(entry.directory) else ""
    if entry.target is not None:
        if entry.target == "/dev/null":
            return "masked" + runtime
        if _basename(entry.target) not in (found, template_of(found)):
            aliased = _first(dirs, _basename(entry.target))  # followed: a masked target wins
            if aliased and aliased[1].target == "/dev/null":
                return "masked-runtime" if _runtime(aliased[1].directory) else "masked"
            return "alias"
        if not _inside_search_path(entry.target):
            return "linked" + runtime
    path = f"{entry.directory}/{found}"
    enabling, instances = _enabling_links(dirs, name, entry.target or path, content or "", index)
    if enabling:
        return "enabled" if any(not _runtime(d) for d in enabling) else "enabled-runtime"
    if instances:
        return "indirect"
    kind = install_kind(content or "")
    if kind == "rules":
        return "disabled"
    return "indirect" if kind == "also" else "static"


def unit_file_states(
    dirs: UnitDirs, names: Iterable[str], contents: Mapping[str, str | None]
) -> dict[str, str]:
    """``unit_file_state`` for each of ``names`` (contents by name, None if unknown)."""
    index = index_links(dirs)
    return {n: unit_file_state(dirs, n, contents.get(n), index) for n in names}
