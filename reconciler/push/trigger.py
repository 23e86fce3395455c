"""Who asked for the next sync (talks to one file in the state dir; ``of_unit`` is pure).

``gitops-sync.service`` runs ``sync --trigger unit`` whoever starts it: what started it is
read from what systemd passes (systemd.exec(5): ``$TRIGGER_UNIT``, ``$TRIGGER_PATH``,
``$TRIGGER_TIMER_REALTIME_USEC``), and a StartUnit call carries nothing. So whoever starts
the unit over D-Bus leaves a mark just before (the webhook: ``webhook``; the config follow
started by ``reconciler-config.path``: ``path``; a sync handing over to the follow: its own
trigger), and the sync takes it. A mark older than ``MAX_AGE_SEC`` (a starter that died
between the two) is dropped rather than believed.

systemd's variables are stale on 252 and 257 alike (measured on both, a disposable host):
a unit keeps the activation details of the first trigger while it stays loaded, so a later
``systemctl start`` or a later timer run still sees ``TRIGGER_UNIT=<the path or timer>`` of
an old one. A timer's details are believed only when their trigger time is newer than the
last sync recorded; a path's only when the watched file changed since then.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

FILE = "sync-trigger"
MAX_AGE_SEC = 600.0
MARKS = ("webhook", "path", "timer", "manual")  # what a mark may say


def mark(state_dir: Path, trigger: str = "webhook") -> None:
    """Leave the mark (0600); the next sync started takes it."""
    path = state_dir / FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(trigger + "\n")


def take(state_dir: Path, now: float | None = None) -> str | None:
    """The mark's trigger, removing it; None when there is none (or a stale one)."""
    path = state_dir / FILE
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
        text = path.read_text().strip()
        path.unlink()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return None  # unreadable: the sync still runs, labelled as its unit says
    return text if text in MARKS and age <= MAX_AGE_SEC else None


def of_unit(
    environ: Mapping[str, str],
    mark_: str | None,
    last_sync_at: float | None,
    path_changed_at: float | None = None,
) -> str:
    """The trigger of a run of the sync's unit (pure): the mark when there is one, else
    ``timer`` when systemd says a timer fired after the last recorded sync started
    (``last_sync_at``; None: none known), ``path`` when a path unit started it and the
    file changed after that (``path_changed_at``), else ``manual`` (``systemctl start``)."""
    if mark_:
        return mark_
    unit = environ.get("TRIGGER_UNIT", "")
    usec = environ.get("TRIGGER_TIMER_REALTIME_USEC", "")
    if unit.endswith(".timer") or usec:
        at = int(usec) / 1e6 if usec.isdigit() else None
        if at is None or last_sync_at is None or at > last_sync_at:
            return "timer"
    by_path = unit.endswith(".path") or bool(environ.get("TRIGGER_PATH"))
    changed = last_sync_at is None or (path_changed_at or 0.0) > last_sync_at
    return "path" if by_path and changed else "manual"
