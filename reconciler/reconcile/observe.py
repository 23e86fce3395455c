"""The sync's observe step: what is on the host now (talks to systemd and the unit dir).

Unit files are read from disk and units from systemd; what the reconciler owns comes from
the store's manifest, widened by every file in the unit directory that opens with the
marker, so ownership survives a lost state database. Two more facts keep the sync off
what is not its own: where systemd loaded each unit to be pruned from (``FragmentPath``:
a unit now served by a vendor file is not stopped), and which names it would create
(units, ``Alias=`` links) systemd already knows from a file that is not ours.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.config import Settings
from reconciler.core import unitkind
from reconciler.model import DesiredUnit, LiveUnit
from reconciler.reconcile.apply import PENDING_KEY
from reconciler.reconcile.render import MARKER
from reconciler.store import sync_store
from reconciler.systemd.unit_files import (
    Reloads,
    changed_since,
    file_states,
    host_root,
    read_unit_texts,
)

if TYPE_CHECKING:
    from reconciler.store.sync_store import Store
    from reconciler.systemd.client import Systemd


# where systemd keeps what generators wrote (normal, early, late)
GENERATOR_DIRS = ("/run/systemd/generator/", "/run/systemd/generator.early/",
                  "/run/systemd/generator.late/")  # fmt: skip


@dataclass(frozen=True)
class Observed:
    """The host as the plan sees it: files and units by name, and what is whose."""

    files: dict[str, str | None]  # unit name -> file text (None: absent)
    live: dict[str, LiveUnit]
    owned: frozenset[str]
    foreign: frozenset[str]  # files present that we did not write: never touched
    interrupted: frozenset[str]  # units whose start a killed apply left undone
    taken: dict[str, str] = field(default_factory=dict)  # name we'd create -> whose it is


def read_host(
    systemd: Systemd, unit_dir: Path, names: Sequence[str], store: Store | None = None
) -> tuple[dict[str, str | None], dict[str, LiveUnit]]:
    """The unit files under ``unit_dir`` and what the plan needs of the units ``names``.

    Under the standard unit dir (``/etc/systemd/system``, or a host's from outside) the
    enablement comes from one read of the unit directories and ``NeedDaemonReload`` is
    asked only of files changed since systemd last loaded units (and not already answered
    for, ``Reloads`` in ``store``): a host of unchanged running units answers in a handful
    of calls. Elsewhere systemd is asked per unit.
    """
    targets = {t for n in names if (t := unitkind.dropin_target(n)) and "@." not in t}
    units = sorted({n for n in names if unitkind.is_unit(n)} | targets)  # drop-ins: their unit
    files, changed = read_unit_texts(unit_dir, names)
    root = host_root(unit_dir)
    if root is None:
        return files, systemd.read_units(units, runtime=False)
    known = store.kv_get(sync_store.RELOADS_KEY) if store else None
    reloads = Reloads(known, systemd.units_loaded_at())
    suspects = changed_since(changed, units, reloads.loaded_at, reloads.clean)
    live = systemd.read_for_plan(units, suspects)
    loaded = {n: u.need_daemon_reload for n, u in live.items() if u.load_state == "loaded"}
    reloads.learn(suspects, changed, loaded)
    if store is not None and (text := reloads.dump()) is not None:
        store.kv_set(sync_store.RELOADS_KEY, text)
    states = file_states(root, units, files)
    return files, {n: replace(u, unit_file_state=states.get(n, "")) for n, u in live.items()}


def observe(
    desired: Sequence[DesiredUnit], systemd: Systemd, store: Store, settings: Settings
) -> Observed:
    """Read every unit desired or owned, and sort out which files and names are ours."""
    wanted = {u.name for u in desired}
    manifest = store.owned()
    marked, taken_over = scan_unit_dir(settings.unit_dir, known=wanted | manifest)
    owned = manifest | marked
    names = sorted(wanted | owned)
    files, live = read_host(systemd, settings.unit_dir, names, store)
    owned |= {n for n, text in files.items() if text and text.startswith(MARKER)}
    hand_made = {  # units from the listing; a drop-in's own path is looked at
        n for n in names if n in taken_over or ("/" in n and made_by_hand(settings.unit_dir / n))
    }
    owned -= hand_made
    foreign = frozenset(n for n in names if n not in owned and files.get(n) is not None)
    foreign |= hand_made
    interrupted = frozenset(json.loads(store.kv_get(PENDING_KEY) or "[]"))
    removed = sorted(owned - wanted)
    if removed:  # a prune stops only what systemd loaded from our own file
        removed = [n for n in removed if unitkind.is_unit(n)]
        fragments = read_fragments(systemd, removed)
        for n in removed:
            live[n] = replace(live.get(n) or LiveUnit(n), fragment_path=fragments[n])
    taken = find_taken(systemd, settings.unit_dir, desired, files)
    templates = sorted({t for n in names if (t := unitkind.dropin_target(n)) and "@." in t})
    if templates:  # a template's drop-ins restart its running instances: read them
        patterns = [t.replace("@.", "@*.") for t in templates]
        for unit in systemd.list_units_by_patterns([], patterns):
            live.setdefault(unit.name, unit)
    return Observed(files, live, frozenset(owned), foreign, interrupted, taken)


def made_by_hand(path: Path) -> bool:
    """A directory, or a symlink other than a mask, where a unit file of ours would be.

    The reconciler writes regular files only: whoever put something else there took the
    name over, whatever the manifest says (a ``/dev/null`` link is a mask: the plan leaves
    masked units alone with a note).
    """
    try:
        if path.is_symlink():
            return os.readlink(path) != "/dev/null"
        return path.is_dir()
    except OSError:
        return False


def scan_unit_dir(
    unit_dir: Path, known: Collection[str] = ()
) -> tuple[frozenset[str], frozenset[str]]:
    """One pass over ``unit_dir``: (files that open with our marker: ours, whatever the
    store says; names taken over by hand, see :func:`made_by_hand`).

    Regular files only are ours (a symlink is an alias or a mask, never our file); one
    short read per file, except the ``known`` ones (desired or in the manifest: the
    caller reads them whole anyway). The entry types come with the directory listing: no
    ``stat`` per unit (10,000 of them on a big host).
    """
    head = MARKER.encode()
    found: set[str] = set()
    by_hand: set[str] = set()
    try:
        entries = list(os.scandir(unit_dir))
    except OSError:
        return frozenset(), frozenset()
    for entry in entries:
        if entry.name.startswith(".") or "." not in entry.name:
            continue
        with contextlib.suppress(OSError):
            if entry.is_symlink():
                if os.readlink(entry.path) != "/dev/null":
                    by_hand.add(entry.name)
                continue
            if entry.is_dir(follow_symlinks=False):
                if entry.name.endswith(".d"):
                    found |= _marked_dropins(Path(entry.path), head) - set(known)
                else:
                    by_hand.add(entry.name)
                continue
            if entry.name not in known and entry.is_file(follow_symlinks=False):
                with open(entry.path, "rb") as fh:
                    if fh.read(len(head)) == head:
                        found.add(entry.name)
    return frozenset(found), frozenset(by_hand)


def marked_files(unit_dir: Path) -> frozenset[str]:
    """Unit files in ``unit_dir`` that open with our marker (see :func:`scan_unit_dir`)."""
    return scan_unit_dir(unit_dir)[0]


def _marked_dropins(directory: Path, head: bytes) -> set[str]:
    """Our drop-in files in ``UNIT.d`` (``50-reconciler-*.conf`` opening with the marker)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        for path in directory.glob(f"{unitkind.DROPIN_PREFIX}*.conf"):
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink():
                    with open(path, "rb") as fh:
                        if fh.read(len(head)) == head:
                            found.add(f"{directory.name}/{path.name}")
    return found


def read_fragments(systemd: Systemd, names: Sequence[str]) -> dict[str, str]:
    """``FragmentPath`` of each unit: the file systemd loaded it from ("" when none)."""
    from reconciler.systemd.wire import UNIT

    props = systemd.get_properties(names, UNIT, ["FragmentPath"])
    return {n: str(props.get(n, {}).get("FragmentPath", "")) for n in names}


def find_taken(
    systemd: Systemd,
    unit_dir: Path,
    desired: Sequence[DesiredUnit],
    files: dict[str, str | None],
) -> dict[str, str]:
    """Names (units and their ``Alias=``) we would create that already mean another unit.

    A unit name with no file of ours in ``unit_dir`` must be unknown to systemd (no vendor
    unit in ``/usr/lib`` or ``/run``, no alias of another unit, nothing generated or
    transient); an alias link in ``unit_dir`` must point to its own unit. Answers
    ``{name: where}``; the plan refuses them. A no-op sync asks systemd nothing here.
    """
    from reconciler.core.plan import aliases
    from reconciler.errors import ReconcilerError
    from reconciler.systemd.wire import UNIT, check_unit_name

    taken: dict[str, str] = {}
    check = [u.name for u in desired if files.get(u.name) is None and unitkind.is_unit(u.name)]
    for u in desired:
        for alias in aliases(u.content):
            link = unit_dir / alias
            if link.is_symlink():
                target = os.readlink(link)
                if target.rpartition("/")[2] != u.name:
                    taken[alias] = f"{link} links to {target}"
            elif link.exists():
                taken[alias] = str(link)
            else:
                try:
                    check_unit_name(alias)
                except ReconcilerError:
                    continue  # the plan refuses the name itself
                check.append(alias)
    if not check:
        return taken
    props = systemd.get_properties(sorted(set(check)), UNIT, ["LoadState", "FragmentPath"])
    inside = str(unit_dir).rstrip("/")
    generated = {u.name for u in desired if u.generated_from}
    for name, p in props.items():
        fragment = str(p.get("FragmentPath", ""))
        if p.get("LoadState") in ("masked", "not-found") or not fragment:
            continue
        if name in generated and fragment.startswith(GENERATOR_DIRS):
            continue  # Quadlet made it from our file
        parent = fragment.rpartition("/")[0]
        if parent and inside.endswith(parent):
            continue  # our own file, removed since systemd loaded it
        taken[name] = fragment
    return taken
