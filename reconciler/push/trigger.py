"""Who asked for the next sync (talks to one file in the state dir).

``gitops-sync.service`` runs ``sync --trigger timer`` whoever starts it, and a StartUnit call
carries no argument. So the webhook leaves a mark just before it starts the unit, and the
sync takes it: the history then says ``webhook`` for a push. A mark older than ``MAX_AGE_SEC``
(a webhook that died between the two) is dropped rather than believed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

FILE = "sync-trigger"
MAX_AGE_SEC = 600.0


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
    return text if text in ("webhook",) and age <= MAX_AGE_SEC else None
