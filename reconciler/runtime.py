"""Opening what a command works with (talks to the state database and systemd).

The wiring every command shares, kept out of ``reconcile`` and ``monitor`` so that neither
imports the other for it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from reconciler.errors import SystemdError

if TYPE_CHECKING:
    from reconciler.config import Settings
    from reconciler.store.sync_store import Store
    from reconciler.systemd.client import Systemd


def open_store(settings: Settings) -> Store:
    """The state database under the state dir (created and migrated on first use).

    A database that lost what the ledger next to it keeps (deleted, or moved aside as
    corrupt) gets it back: the applied and last good revisions, the bad-revision marks.
    """
    # sqlite3 and the store: not loaded by --help and the commands that never open it
    from reconciler.store import ledger
    from reconciler.store.sync_store import Store

    store = Store.open(settings.state_dir / "state.db")
    ledger.restore(store, ledger.Ledger.load(settings.state_dir / ledger.FILE_NAME))
    return store


BUSY_ATTEMPTS = 3  # connections tried while systemd is too busy to authenticate in time


def connect(settings: Settings, *, retry_sec: float = 0.0, timeout: float = 30.0) -> Systemd:
    """A connection to systemd at the configured bus address.

    ``retry_sec``: keep trying that long while nobody answers at the address (systemd
    re-executing, dbus-daemon restarting), backing off from 0.1 s to 2 s between tries.
    A manager that accepts but does not authenticate within ``timeout`` (busy with
    thousands of jobs, seen after a 10,000-unit apply) is tried ``BUSY_ATTEMPTS`` times.
    """
    # the D-Bus client: not loaded by --help and the commands that never connect
    from reconciler.systemd.client import Systemd
    from reconciler.systemd.connection import TIMEOUT

    deadline = time.monotonic() + retry_sec
    delay = 0.1
    busy = 0
    while True:
        try:
            return Systemd(settings.bus, timeout=timeout)
        except SystemdError as exc:
            busy += exc.dbus_name == TIMEOUT
            if exc.dbus_name == TIMEOUT and busy < BUSY_ATTEMPTS:
                continue
            if not exc.disconnected or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
