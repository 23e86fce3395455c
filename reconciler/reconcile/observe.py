"""The sync's observe step: what is on the host now (talks to systemd and the unit dir).

Unit files are read from disk and units from systemd; what the reconciler owns comes from
the store's manifest, widened by the marker every written file opens with, so ownership
survives a lost state database.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.config import Settings
from reconciler.model import DesiredUnit, LiveUnit
from reconciler.reconcile.apply import PENDING_KEY
from reconciler.reconcile.render import MARKER

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


def read_host(
    systemd: Systemd, unit_dir: Path, names: Sequence[str]
) -> tuple[dict[str, str | None], dict[str, LiveUnit]]:
    """The unit files under ``unit_dir`` and systemd's view of the units ``names``."""
    files: dict[str, str | None] = {}
    for name in names:
        try:
            files[name] = (unit_dir / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            files[name] = None
        except UnicodeDecodeError:
            files[name] = ""  # unreadable as text: differs from anything we render
    return files, systemd.read_units(sorted(names), runtime=False)


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
