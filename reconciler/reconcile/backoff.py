"""Backing off from a git server that refused (talks to the store: one kv row).

A poll that met HTTP 429 or 5xx, a refused or lost connection or a timeout records when
the next poll may ask that server again (``core.retry.next_poll_backoff``: exponential from
``poll_backoff_sec`` up to ``poll_backoff_max_sec``, or the server's ``Retry-After``), in
the state database, so a oneshot started by the timer a minute later remembers it. A sync
before that time asks nothing (result ``held``, one journal line); ``sync --force`` asks
anyway; the first poll that succeeds clears it. A repository on this machine (a path,
``file://``) is never backed off from: there is no server to spare.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict

from reconciler.config import Settings
from reconciler.core.retry import PollBackoff, next_poll_backoff
from reconciler.reconcile.remote import BusyError
from reconciler.store.sync_store import Store

KEY = "poll_backoff"


def served(url: str) -> bool:
    """Whether ``url`` names a git server (``https://``, ``ssh://``, ``git://``,
    ``user@host:path``), which a poll spares by backing off. A repository on this machine
    (a path, ``file://``) has no server to spare: a slow read there is retried next run."""
    if url.startswith("file://"):
        return False
    if "://" in url:
        return True
    head = url.split("/", 1)[0]
    return ":" in head  # scp-like host:path; a path has no colon before its first slash


def _server(url: str) -> str:
    """The key the store keeps for ``url``: a digest, since a URL may carry a password."""
    return "sha256:" + hashlib.sha256(url.encode()).hexdigest()


def current(store: Store, url: str, now: float | None = None) -> PollBackoff | None:
    """The backoff from ``url`` still running, if any."""
    text = store.kv_get(KEY)
    try:
        found = PollBackoff(**json.loads(text)) if text else None
    except (TypeError, ValueError):
        return None
    now = time.time() if now is None else now
    return found if found is not None and found.url == _server(url) and found.until > now else None


def record(settings: Settings, store: Store, error: BusyError, url: str) -> PollBackoff:
    """One more refusal by ``url``: the next poll waits longer."""
    text = store.kv_get(KEY)
    try:
        previous = PollBackoff(**json.loads(text)) if text else None
    except (TypeError, ValueError):
        previous = None
    backoff = next_poll_backoff(
        previous,
        _server(url),
        error.message,
        now=time.time(),
        retry_after=error.retry_after,
        base=settings.poll_backoff_sec,
        cap=settings.poll_backoff_max_sec,
        rand=random.random(),
    )
    store.kv_set(KEY, json.dumps(asdict(backoff)))
    return backoff


def clear(store: Store) -> None:
    if store.kv_get(KEY) is not None:
        store.kv_set(KEY, None)


def describe(backoff: PollBackoff) -> str:
    """``next poll not before 20:51:03 UTC (backoff 60 s, 2 refusals in a row)``."""
    when = time.strftime("%H:%M:%S UTC", time.gmtime(backoff.until))
    left = max(0, round(backoff.until - time.time()))
    refusals = "1 refusal" if backoff.failures == 1 else f"{backoff.failures} refusals"
    return f"next poll not before {when} (in {left} s; {refusals} in a row)"
