"""The host's wave in a rollout: which ref it syncs (talks to git: one ref listing, the cache).

With ``rollout = true`` a host syncs ``refs/heads/rollout/<its wave>``, moved forward by the
promoter wave by wave, instead of ``ref``. Its wave comes from ``inventory/rollout.toml``
of the revision it has applied (read from the cache: no request), or, before it applied
anything, of the tip of the first wave's ref. One poll asks the git server for the refs
under ``refs/heads/rollout/`` (one request, ``remote.list_refs``); the fetch step reuses
that listing and fetches only when the host's wave ref moved.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.core.rollout_refs import ROLLOUT_FILE, WAVE_PREFIX, wave_of, wave_ref
from reconciler.errors import InventoryError, SourceError
from reconciler.reconcile import cache, fetch, refs, remote
from reconciler.reconcile.revision import read_paths

if TYPE_CHECKING:
    import git

    from reconciler.core import rollout

_FILES = [ROLLOUT_FILE, "inventory/hosts.toml"]


@dataclass(frozen=True)
class Place:
    """Where the host stands in the rollout after one poll."""

    wave: str
    ref: str  # refs/heads/rollout/<wave>
    target: str | None  # the commit the wave ref points to; None: the ref does not exist yet
    advertised: Mapping[str, str]  # the listing of the poll, for the fetch step


def find(
    url: str,
    host: str,
    cache_dir: Path,
    applied: str | None,
    timeout: float,
    known: str | None = None,
) -> Place | None:
    """The host's wave and its ref's tip, for one request to the git server; None: no wave
    ref exists yet and the host has applied a revision (it holds it: rollout turned on
    before the promoter's first move).

    ``known``: the wave found for ``applied`` before (a no-op poll then parses nothing and
    imports no pydantic: it and a 10,000-host hosts.toml cost more than the poll itself).
    """
    deadline = time.monotonic() + timeout
    advertised = remote.list_refs(url, [WAVE_PREFIX], timeout=timeout)
    tips = {w: sha for name, sha in advertised.items() if (w := wave_of(name)) is not None}
    if applied and known:
        return Place(known, wave_ref(known), tips.get(known), advertised)
    if applied and not tips:
        return None
    cache.ensure(cache_dir)
    with cache.open_repo(cache_dir) as repo:
        definition = _definition(repo, applied) if applied else None
        if definition is None:
            definition = _first_definition(repo, url, cache_dir, tips, deadline)
    wave = definition.wave_of(host)
    return Place(wave.name, wave.ref, tips.get(wave.name), advertised)


def _definition(repo: git.Repo, revision: str) -> rollout.Rollout | None:
    """The rollout of a commit in the cache (None: not in the cache, or no rollout.toml)."""
    from reconciler.core import rollout  # pydantic: only when the wave is not known yet

    commit = refs.commit_by_id(repo, revision) if refs.HEX.fullmatch(revision) else None
    if commit is None:
        return None
    try:
        return rollout.parse(read_paths(repo, commit, _FILES))
    except InventoryError as exc:
        raise InventoryError(f"{exc.message} (at revision {revision[:12]})", exc.hint) from None


def _first_definition(
    repo: git.Repo, url: str, cache_dir: Path, tips: Mapping[str, str], deadline: float
) -> rollout.Rollout:
    """Before anything is applied: the rollout at the tip of the first wave's ref (the
    first wave is named by the rollout at any wave's tip: the definitions agree on it)."""
    if not tips:
        raise SourceError(
            f"cannot find this host's wave in '{url}': no wave refs ({WAVE_PREFIX}*) yet",
            hint="the promoter creates them (reconciler promote); or set rollout = false "
            "to follow 'ref'",
        )
    names = [wave_ref(w) for w in tips]
    fetch.follow(repo, url, cache_dir, {wave_ref(w): s for w, s in tips.items()},
                 names, deadline)  # fmt: skip
    found: rollout.Rollout | None = None
    for wave in sorted(tips):
        found = _definition(repo, tips[wave])
        if found is not None:
            break
    if found is None:
        raise InventoryError(
            f"{ROLLOUT_FILE}: missing at the tips of the wave refs "
            f"({', '.join(sorted(tips))}), and rollout = true in this host's config",
            hint="commit inventory/rollout.toml, or set rollout = false to follow 'ref'",
        )
    first = found.first.name
    return (_definition(repo, tips[first]) if first in tips else None) or found
