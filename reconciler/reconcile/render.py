"""The sync's render step: the units this host should run, marked as ours (talks to the store).

Rendering is a pure function of the revision, the host and the reconciler's version, so
the last render is kept in the store and reused while that key matches: a no-op sync then
never imports jinja2 and pydantic (about a quarter of a second at start-up), nor forks the
render's child process: templates are code from the repository, so a render runs under
bounded CPU time and memory (``jail``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING

from reconciler import __version__
from reconciler.config import Settings
from reconciler.errors import RenderError
from reconciler.model import DesiredFile, DesiredUnit, Snapshot
from reconciler.reconcile import jail
from reconciler.store.sync_store import (
    decode_desired,
    decode_files,
    encode_desired,
    encode_files,
)

if TYPE_CHECKING:
    from reconciler.store.sync_store import Store

MARKER = "# Managed by reconciler"  # first line of every unit file a sync writes
RENDER_KEY = "render_key"  # revision:host:version of the last render
RENDERED_KEY = "rendered_units"  # its output, reused while the key matches
RENDERED_FILES_KEY = "rendered_files"  # its config files ([files."PATH"]), likewise


def render(snapshot: Snapshot, host: str) -> list[DesiredUnit]:
    """Render ``host``'s units from a snapshot, each opening with the ownership marker."""
    return render_all(snapshot, host)[0]


def render_all(snapshot: Snapshot, host: str) -> tuple[list[DesiredUnit], list[DesiredFile]]:
    """``host``'s units (each opening with the ownership marker) and config files."""
    # inventory and render import pydantic and jinja2: only a changed revision pays for them
    from reconciler.core import inventory, rollout
    from reconciler.core import render as templates
    from reconciler.core.quadlet import split_quadlets

    inv = inventory.load(snapshot.files)
    rollout.parse(snapshot.files, inv)  # a bad rollout.toml never becomes the applied one
    sources = templates.decode_templates(snapshot.files)
    units = templates.render(inv.select(host), sources)
    units += templates.render_dropins(inv.select_dropins(host), sources)
    files = templates.render_files(inv.select_files(host), sources, snapshot.files)
    units, quadlets = split_quadlets(units, header)
    marked = [u if u.generated_from else replace(u, content=header(u) + u.content) for u in units]
    return marked, quadlets + files


def header(unit: DesiredUnit) -> str:
    """The marker line a unit file (or Quadlet file) of ``unit`` opens with."""
    return f"{MARKER} (service {unit.service}); edits are reverted by the next sync.\n"


def render_bounded(
    snapshot: Snapshot, settings: Settings
) -> tuple[list[DesiredUnit], list[DesiredFile]]:
    """``render_all`` in a child process with bounded CPU time and memory (``jail``)."""
    # jinja2 and pydantic, imported before the fork (only a changed revision pays for them)
    import reconciler.core.render  # noqa: F401

    host = settings.host_name

    def produce() -> str:
        units, files = render_all(snapshot, host)
        return json.dumps([encode_desired(units), encode_files(files)])

    text = jail.run_bounded(
        produce,
        what=f"revision {snapshot.revision[:12]} for host '{host}'",
        cpu_sec=settings.render_cpu_sec,
        memory_mb=settings.render_memory_mb,
    )
    units_text, files_text = json.loads(text)
    return decode_desired(units_text), decode_files(files_text)


def check_size(units: list[DesiredUnit], snapshot: Snapshot, settings: Settings) -> None:
    """More units than this host may hold is refused before anything is written."""
    if len(units) > settings.max_units:
        raise RenderError(
            f"cannot render revision '{snapshot.revision[:12]}' for host "
            f"'{settings.host_name}': {len(units)} units, more than this host's max_units "
            f"({settings.max_units})",
            f"give the host fewer services, or raise max_units in {settings.source}",
        )


def cache_key(revision: str, settings: Settings) -> str:
    return f"{revision}:{settings.host_name}:{__version__}"


def is_cached(revision: str, settings: Settings, store: Store) -> bool:
    """Whether the units of ``revision`` are in the render cache: its files need no reading."""
    return store.kv_get(RENDER_KEY) == cache_key(revision, settings)


def render_cached(snapshot: Snapshot, settings: Settings, store: Store) -> list[DesiredUnit]:
    """Render (bounded), reusing the units of the last render of the same revision, host and
    version; its config files are then in ``rendered_files``."""
    key = cache_key(snapshot.revision, settings)
    if store.kv_get(RENDER_KEY) == key:
        return decode_desired(store.kv_get(RENDERED_KEY))
    units, files = render_bounded(snapshot, settings)
    check_size(units, snapshot, settings)
    with store.transaction():
        store.kv_set(RENDER_KEY, key)
        store.kv_set(RENDERED_KEY, encode_desired(units))
        store.kv_set(RENDERED_FILES_KEY, encode_files(files))
    return units


def rendered_files(store: Store) -> list[DesiredFile]:
    """The config files of the last ``render_cached`` (the same revision and host)."""
    return decode_files(store.kv_get(RENDERED_FILES_KEY))
