"""The sync's observe step: what is on the host now (talks to systemd and the unit dir).

Unit files are read from disk and units from systemd; what the reconciler owns comes from
the store's manifest, widened by the marker every written file opens with, so ownership
survives a lost state database.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.config import Settings
from reconciler.core.enablement import unit_file_states
from reconciler.model import DesiredUnit, LiveUnit
from reconciler.reconcile.apply import PENDING_KEY
from reconciler.reconcile.render import MARKER
from reconciler.systemd.unit_files import read_content, read_unit_dirs

if TYPE_CHECKING:
    from reconciler.store.sync_store import Store
    from reconciler.systemd.client import Systemd


@dataclass(frozen=True)
class Observed:
    """The host as the plan sees it: files and units by name, and what is whose."""

    files: dict[str, str | None]  # unit name -> file text (None: absent)
    live: dict[str, LiveUnit]
    owned: frozenset[str]
    foreign: frozenset[str]  # files present that we did not write: never touched
    interrupted: frozenset[str]  # units whose start a killed apply left undone


# File timestamps come from the kernel's coarse clock (a few ms behind): a file written
# just after a reload may carry an earlier time. A file this close to the last load is
# asked about.
LOAD_SLACK_SEC = 1.0
SYSTEM_UNIT_DIR = "etc/systemd/system"


def read_host(
    systemd: Systemd, unit_dir: Path, names: Sequence[str]
) -> tuple[dict[str, str | None], dict[str, LiveUnit]]:
    """The unit files under ``unit_dir`` and what the plan needs of the units ``names``.

    Under the standard unit dir (``/etc/systemd/system``, or a host's from outside) the
    enablement comes from one read of the unit directories and ``NeedDaemonReload`` is
    asked only of files changed since systemd last loaded units: a host of unchanged
    running units answers in a handful of calls. Elsewhere systemd is asked per unit.
    """
    files: dict[str, str | None] = {}
    changed: dict[str, float] = {}
    for name in names:
        path = unit_dir / name
        try:
            files[name] = path.read_text(encoding="utf-8")
            st = path.stat()
            changed[name] = max(st.st_mtime, st.st_ctime)
        except FileNotFoundError:
            files[name] = None
        except UnicodeDecodeError:
            files[name] = ""  # unreadable as text: differs from anything we render
    if not str(unit_dir).rstrip("/").endswith(SYSTEM_UNIT_DIR):
        return files, systemd.read_units(sorted(names), runtime=False)
    root = Path(str(unit_dir).rstrip("/")[: -len(SYSTEM_UNIT_DIR)] or "/")
    loaded_at = systemd.units_loaded_at()
    suspects = {
        n
        for n in names
        if loaded_at is None or n not in changed or changed[n] >= loaded_at - LOAD_SLACK_SEC
    }
    live = systemd.read_for_plan(sorted(names), suspects)
    dirs = read_unit_dirs(root)
    contents = {n: files[n] if files[n] is not None else read_content(root, dirs, n) for n in names}
    states = unit_file_states(dirs, names, contents)
    return files, {n: replace(u, unit_file_state=states.get(n, "")) for n, u in live.items()}


def observe(
    desired: Sequence[DesiredUnit], systemd: Systemd, store: Store, settings: Settings
) -> Observed:
    """Read every unit desired or owned, and sort out which files are ours."""
    owned = store.owned()
    names = sorted({u.name for u in desired} | owned)
    files, live = read_host(systemd, settings.unit_dir, names)
    owned |= {n for n, text in files.items() if text and text.startswith(MARKER)}
    foreign = frozenset(n for n in names if n not in owned and files.get(n) is not None)
    interrupted = frozenset(json.loads(store.kv_get(PENDING_KEY) or "[]"))
    return Observed(files, live, frozenset(owned), foreign, interrupted)
