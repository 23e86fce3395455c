"""``reconciler watch``: the long-running monitor (talks to systemd, sd_notify, journald, SQLite).

The process around ``watcher.Watcher``, as systemd's ``Type=notify`` expects it:

- start: subscribe, read the watched units once, record a baseline, then ``READY=1``;
- run: handle signals as they come (the loop wakes at least every ``TICK_SEC`` to look at
  its flags, never to poll state); every ``reread_sec`` read what signals never carry
  (``MemoryCurrent`` every ``memory_sec``), every ``pass_sec`` a whole monitoring pass;
  unseen runs' exits (crashes the signals showed without one) read from the journal every
  ``EXITS_EVERY_SEC``, in one read; ``STATUS=`` ("watching N units, M findings open, K
  events, D dropped") at most once a second; ``WATCHDOG=1`` from ``sd_notify.Watchdog`` only
  while this loop is alive (a hung loop gets killed and restarted by systemd);
- SIGHUP: ``RELOADING=1``, config and desired units read again, ``READY=1``; a bad config
  is logged and the old one kept;
- a sync applied other units (another process wrote the state database: one ``PRAGMA
  data_version`` per loop): they are watched at once, counted from their first start (the
  sync marks units it starts before it starts them);
- SIGTERM/SIGINT: ``STOPPING=1``, what is queued is handled, every unit read and recorded
  once more (counters, findings flushed), exit 0;
- the connection to systemd lost (daemon-reexec, dbus restart): connect again and read
  everything (counters catch up from ``NRestarts``/``InvocationID``); after
  ``RECONNECT_SEC`` without success, exit 1 (``Restart=`` brings it back).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import TypeVar

from reconciler import runtime
from reconciler.config import Settings
from reconciler.errors import ReconcilerError, SystemdError
from reconciler.host import journal, sd_notify
from reconciler.monitor.watch.handler import DB_CACHE_KIB, Selection, Watcher, check_settings
from reconciler.systemd.client import Systemd

__all__ = ["Selection", "Watcher", "serve"]

log = logging.getLogger("reconciler")
T = TypeVar("T")
TICK_SEC = 0.5
STATUS_EVERY_SEC = 1.0
FIGURES_EVERY_SEC = 10.0  # the collector's figures stored for the textfile
EXITS_EVERY_SEC = 1.0  # unseen runs' exits read from the journal (never per batch)
RECONNECT_SEC = 60.0
DISCONNECTED = "org.freedesktop.DBus.Error.Disconnected"


class Flags:
    """Set by signal handlers, read by the loop (handlers only set flags)."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self.beat = time.monotonic()

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stop = True

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.on_signal)


def safely(what: str, action: Callable[[], T]) -> T | None:
    """Run one task; its failure is a warning, never the daemon's end (a lost bus is raised)."""
    try:
        return action()
    except SystemdError as exc:
        if exc.dbus_name == DISCONNECTED:
            raise
        log.warning("watch: cannot %s: %s", what, exc)
    except ReconcilerError as exc:
        log.warning("watch: cannot %s: %s", what, exc)
    return None


def serve(load_settings: Callable[[], Settings], flags: Selection | None = None) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop."""
    journal.setup()
    state = Flags()
    state.install()
    settings = load_settings()
    check_settings(settings)
    interval = sd_notify.watchdog_interval()
    stall = 2 * interval if interval else 60.0  # WATCHDOG_USEC: the loop must beat within it
    dog = sd_notify.Watchdog(alive=lambda: time.monotonic() - state.beat < stall)
    store = runtime.open_store(settings)
    store.limit_cache(DB_CACHE_KIB)
    systemd: Systemd | None = None
    watcher: Watcher | None = None
    with dog:
        try:
            systemd = runtime.connect(settings)
            watcher = Watcher(settings, store, systemd, flags or Selection())
            watcher.start()
            state.beat = time.monotonic()
            sd_notify.ready(watcher.status())
            journal.event(
                "watch.started",
                f"watch: {watcher.status()}; re-read every {watcher.config.reread_sec:g}s, "
                f"a whole pass every {watcher.config.pass_sec:g}s",
                units=len(watcher.units),
                include=",".join(watcher.include) or None,
                exclude=",".join(watcher.exclude) or None,
            )
            _loop(watcher, state, load_settings)
            sd_notify.stopping()
            sd_notify.status(f"stopping: flushing state; {watcher.status()}")
            safely("flush the state", lambda: _flush(watcher))
            safely("store the collector's figures", partial(watcher.store_figures, False))
            journal.event("watch.stopped", f"watch stopped: {watcher.status()}")
            watcher.close()
        finally:
            if watcher is not None and watcher.systemd is not None:
                watcher.systemd.close()  # the one connected last
            elif systemd is not None:
                systemd.close()
            store.close()
    return 0


def _loop(watcher: Watcher, state: Flags, load_settings: Callable[[], Settings]) -> None:
    now = time.monotonic()
    next_reread = now + watcher.config.reread_sec
    next_memory = now  # the first re-read takes a memory sample
    next_pass = now + watcher.config.pass_sec
    next_figures = now
    next_exits = now + EXITS_EVERY_SEC
    shown, shown_at = watcher.status(), now
    while not state.stop:
        state.beat = time.monotonic()
        try:
            if state.reload:
                state.reload = False
                _reload(watcher, load_settings)
                next_reread = min(next_reread, time.monotonic() + watcher.config.reread_sec)
                next_pass = min(next_pass, time.monotonic() + watcher.config.pass_sec)
            wait = min(TICK_SEC, max(0.0, min(next_reread, next_pass) - time.monotonic()))
            safely("handle unit changes", partial(watcher.step, wait))
            safely("follow the desired units", watcher.follow_desired)
            safely("read the units again after dropped signals", watcher.resync_if_due)
            watcher.report_drops()
            now = time.monotonic()
            if now >= next_reread:
                next_reread = now + watcher.config.reread_sec
                memory = now >= next_memory
                if memory:
                    next_memory = now + watcher.config.memory_sec
                if safely("read memory and reload state", partial(watcher.reread, memory)):
                    next_pass = now  # a unit needs a daemon-reload: drift, now
            if now >= next_exits:
                next_exits = now + EXITS_EVERY_SEC
                safely("read unseen runs' exits from the journal", watcher.settle_exits)
            if now >= next_figures:
                next_figures = now + FIGURES_EVERY_SEC
                safely("store the collector's figures", watcher.store_figures)
            if now >= next_pass:
                next_pass = now + watcher.config.pass_sec
                safely("run the monitoring pass", watcher.full_pass)
            safely("take the monitoring pass's outcome", watcher.pass_done)
            watcher.outputs_done()
        except SystemdError as exc:
            if exc.dbus_name != DISCONNECTED:
                raise
            _reconnect(watcher, state, exc)
        text = watcher.status()
        if text != shown and time.monotonic() - shown_at >= STATUS_EVERY_SEC:
            sd_notify.status(text)
            shown, shown_at = text, time.monotonic()


def _reload(watcher: Watcher, load_settings: Callable[[], Settings]) -> None:
    sd_notify.notify("RELOADING=1")
    try:
        settings = load_settings()
        added, removed = watcher.reload(settings)
    except ReconcilerError as exc:
        log.error("watch: cannot reload, keeping the running configuration: %s", exc)
    else:
        log.info("watch: reloaded: %s (%d added, %d removed)", watcher.status(), added, removed)
    sd_notify.ready(watcher.status())


def _reconnect(watcher: Watcher, state: Flags, cause: SystemdError) -> None:
    log.warning("watch: %s; connecting again", cause)
    if watcher.systemd is not None:
        watcher.systemd.close()
    watcher.stream = None
    deadline = time.monotonic() + RECONNECT_SEC
    delay = 0.2
    while not state.stop:
        state.beat = time.monotonic()
        try:
            watcher.systemd = runtime.connect(watcher.settings)
            watcher.start()
            log.info("watch: connected again: %s", watcher.status())
            return
        except SystemdError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _flush(watcher: Watcher) -> None:
    """What is queued, then one look at every unit: counters and findings as of now."""
    if watcher.stream is not None:
        for _ in range(watcher.config.queue_size // 64 + 1):
            if not watcher.step(0):
                break
    watcher.resync(watcher.units)
    watcher.settle_exits(wait=True)
