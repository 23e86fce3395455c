"""The sync's fetch step when it asks the git server (talks to git and the store).

In order: a backoff still running holds the sync without a request (``backoff``); in a
rollout the host's wave is found and its ref polled (``wave``: one request), otherwise
``ref`` (``fetch``: one request); the fetch happens only when the ref moved. A server that
refuses (``remote.BusyError``) starts or lengthens the backoff. A run started by the timer
whose wait is short (a per-minute limiter's ``Retry-After``) tries once more within the
run, at a random moment up to a minute (or ``poll_retry_sec``, if shorter) past the wait:
the timer's splay is a fixed phase per machine (``FixedRandomDelay=true``), so without it
the hosts whose phase falls late in a full minute would be refused at every firing (found
by ``bench/bench_fleet_sim.py``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import replace

from reconciler.config import Settings
from reconciler.core.rollout_refs import WAVE_PREFIX
from reconciler.host import journal
from reconciler.model import Snapshot
from reconciler.reconcile import backoff, fetch, wave
from reconciler.reconcile.outcome import Outcome, Result
from reconciler.reconcile.remote import BusyError
from reconciler.store.sync_store import FLEET_KEY, Store

RETRY_SPREAD_SEC = 60.0  # the retry lands this far past the wait at most: a limiter's minute


def poll(
    settings: Settings,
    store: Store,
    outcome: Outcome,
    rendered: Callable[[str], bool],
    *,
    dry_run: bool,
    force: bool,
    trigger: str,
) -> tuple[Snapshot | None, Settings]:
    """The snapshot to apply (None: the sync holds, ``outcome`` says why) and the settings
    it was fetched with (in a rollout, ``ref`` is the host's wave ref)."""
    url = settings.repo or ""
    served = backoff.served(url)
    if not force and not dry_run and served:
        waiting = backoff.current(store, url)
        if waiting is not None:
            msg = f"backing off from the git server: {backoff.describe(waiting)}; the "
            msg += f"host keeps its revision (it refused: {waiting.why})"
            journal.event("sync.backoff", msg, priority=4)
            outcome.result, outcome.message = Result.HELD, msg
            return None, settings
    for attempt in (1, 2):
        try:
            found = _ask(settings, store, outcome, rendered, dry_run=dry_run)
        except BusyError as exc:
            if dry_run or not served:
                raise
            waited = backoff.record(settings, store, exc, url)
            left = waited.until - time.time()
            if attempt == 1 and trigger == "timer" and 0 <= left <= settings.poll_retry_sec:
                spread = min(RETRY_SPREAD_SEC, settings.poll_retry_sec)
                delay = left + random.uniform(0, spread)
                journal.event(
                    "sync.backoff",
                    f"{exc.message}; asking once more in {delay:.0f} s (a random moment past "
                    "the wait, not this host's fixed phase)",
                    priority=4,
                )
                time.sleep(delay)
                continue
            raise BusyError(
                f"{exc.message}; {backoff.describe(waited)}",
                exc.hint,
                status=exc.status,
                retry_after=exc.retry_after,
            ) from None
        if not dry_run and served:
            backoff.clear(store)
        return found
    raise AssertionError("unreachable")  # pragma: no cover


def _ask(
    settings: Settings,
    store: Store,
    outcome: Outcome,
    rendered: Callable[[str], bool],
    *,
    dry_run: bool,
) -> tuple[Snapshot | None, Settings]:
    """One poll: the wave ref (rollout) or ``ref``, fetched if it moved."""
    url = settings.repo or ""
    advertised = None
    if settings.rollout and url:
        applied = store.applied_revision()
        fleet = store.kv_json(FLEET_KEY)
        before = fleet.get("wave")
        place = wave.find(
            url,
            settings.host_name,
            settings.state_dir / "repo",
            applied,
            settings.fetch_timeout_sec,
            known=str(before) if before and fleet.get("wave_at") == applied else None,
        )
        if place is None:
            _hold(
                outcome,
                f"no wave refs ({WAVE_PREFIX}*) on the git server yet: the host keeps its "
                "revision until the promoter creates them (reconciler promote)",
                applied,
            )
            return None, settings
        if not dry_run:
            joined = {"joined_at": applied} if before and before != place.wave else {}
            store.kv_update(
                FLEET_KEY,
                wave=place.wave,
                wave_at=applied,
                target=place.target,
                polled_at=time.time(),
                **joined,
            )
        if place.target is None:
            _hold(
                outcome,
                f"wave '{place.wave}': its ref {place.ref} does not exist on the git "
                "server yet; the host keeps its revision until the promoter moves it",
                applied,
            )
            return None, settings
        settings = replace(settings, ref=place.ref)
        advertised = place.advertised
    return fetch.snapshot(settings, None, rendered, advertised=advertised), settings


def _hold(outcome: Outcome, msg: str, applied: str | None) -> None:
    """The sync holds the host at ``applied``: no wave ref to follow yet."""
    journal.event("sync.noop", msg, priority=5, revision=applied)
    outcome.result, outcome.message, outcome.revision = Result.HELD, msg, applied
