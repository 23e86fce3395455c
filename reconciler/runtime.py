"""Opening what a command works with (talks to the state database and systemd).

The wiring every command shares, kept out of ``reconcile`` and ``monitor`` so that neither
imports the other for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.config import Settings
    from reconciler.store.sync_store import Store
    from reconciler.systemd.client import Systemd


def open_store(settings: Settings) -> Store:
    """The state database under the state dir (created and migrated on first use)."""
    # sqlite3 and the store: not loaded by --help and the commands that never open it
    from reconciler.store.sync_store import Store

    return Store.open(settings.state_dir / "state.db")


def connect(settings: Settings) -> Systemd:
    """A connection to systemd at the configured bus address."""
    # jeepney and the D-Bus client: not loaded by --help and the commands that never connect
    from reconciler.systemd.client import Systemd

    return Systemd(settings.bus)
