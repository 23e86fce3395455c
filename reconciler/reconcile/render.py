"""The sync's render step: the units this host should run, marked as ours (talks to the store).

Rendering is a pure function of the revision, the host and the reconciler's version, so
the last render is kept in the store and reused while that key matches: a no-op sync then
never imports jinja2 and pydantic (about a quarter of a second at start-up).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from reconciler import __version__
from reconciler.model import DesiredUnit, Snapshot
from reconciler.store.sync_store import decode_desired, encode_desired

if TYPE_CHECKING:
    from reconciler.store.sync_store import Store

MARKER = "# Managed by reconciler"  # first line of every unit file a sync writes
RENDER_KEY = "render_key"  # revision:host:version of the last render
RENDERED_KEY = "rendered_units"  # its output, reused while the key matches


def render(snapshot: Snapshot, host: str) -> list[DesiredUnit]:
    """Render ``host``'s units from a snapshot, each opening with the ownership marker."""
    # inventory and render import pydantic and jinja2: only a changed revision pays for them
    from reconciler.core import inventory
    from reconciler.core import render as templates

    inv = inventory.load(snapshot.files)
    units = templates.render(inv.select(host), templates.decode_templates(snapshot.files))
    return [
        replace(
            u,
            content=f"{MARKER} (service {u.service}); edits are reverted by the next "
            f"sync.\n{u.content}",
        )
        for u in units
    ]


def render_cached(snapshot: Snapshot, host: str, store: Store) -> list[DesiredUnit]:
    """Render, reusing the units of the last render of the same revision, host and version."""
    key = f"{snapshot.revision}:{host}:{__version__}"
    if store.kv_get(RENDER_KEY) == key:
        return decode_desired(store.kv_get(RENDERED_KEY))
    units = render(snapshot, host)
    with store.transaction():
        store.kv_set(RENDER_KEY, key)
        store.kv_set(RENDERED_KEY, encode_desired(units))
    return units
