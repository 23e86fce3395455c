"""The webhook's request pipeline and its state (talks to systemd over D-Bus, the state dir).

:class:`Webhook` runs the checks of ``reconciler.core.push_policy`` in their order for one
request and answers a :class:`Reply`; the HTTP front (``reconciler.push.server``) only moves
bytes. An accepted push for the configured branch starts ``gitops-sync.service`` with
``StartUnit`` (mode "replace") through :class:`Starter`: the sync never runs in this
process. A thread sends the one pending follow-up start (see ``SyncGate``) once the
running sync is over.

Delivery ids and body digests seen are kept in ``<state_dir>/webhook-deliveries.json``
(0600, replaced atomically), so a restarted service still refuses a replay. Every
refusal is a ``webhook.rejected`` journal entry with the reason, never a header value:
neither the secret nor a signature can reach the journal.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.core.push_policy import (
    QUEUED,
    STARTED,
    RateLimiter,
    Rejection,
    ReplayWindow,
    SyncGate,
    WebhookConfig,
    authenticate,
    check_length,
    delivery_id,
    follows,
    parse_event,
    replay_keys,
    route,
    wanted_ref,
)
from reconciler.errors import SystemdError
from reconciler.host import journal
from reconciler.push import trigger
from reconciler.systemd.client import default_address
from reconciler.systemd.connection import Connection
from reconciler.systemd.wire import MANAGER, MANAGER_PATH, PROPERTIES, UNIT, unit_path

log = logging.getLogger("reconciler")

SYNC_UNIT = "gitops-sync.service"  # store.sync_store's too: not imported here (sqlite3)
REPLAY_FILE = "webhook-deliveries.json"
BUSY = frozenset({"activating", "deactivating", "reloading"})
POLL_SEC = 0.5  # how often a pending follow-up checks whether the running sync is over
RECONNECT = frozenset(
    {"org.freedesktop.DBus.Error.Disconnected", "org.freedesktop.DBus.Error.Timeout"}
)


class Starter:
    """Starts the sync unit and reads whether it runs; one D-Bus connection, reopened once."""

    def __init__(
        self, address: str | None, unit: str = SYNC_UNIT, state_dir: Path | None = None
    ) -> None:
        self.address = address
        self.unit = unit
        self.state_dir = state_dir  # where to leave the "webhook" mark for the sync
        self._conn: Connection | None = None

    def _call(
        self, what: str, path: str, iface: str, member: str, sig: str, args: tuple[object, ...]
    ) -> tuple[object, ...]:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = Connection(self.address or default_address(), timeout=10.0)
            try:
                return self._conn.call(what, path, iface, member, sig, args)
            except SystemdError as exc:
                if exc.dbus_name not in RECONNECT or attempt == 2:
                    raise
                self.close()
        raise AssertionError("unreachable")

    def busy(self) -> bool:
        """Whether the unit is starting/running (a StartUnit now would merge into that run)."""
        (state,) = self._call(
            f"read unit '{self.unit}'", unit_path(self.unit), PROPERTIES, "Get", "ss",
            (UNIT, "ActiveState"),
        )  # fmt: skip
        return state in BUSY

    def start(self) -> str:
        """StartUnit, mode "replace", without waiting for the job; returns its path."""
        what = f"start unit '{self.unit}'"
        if self.state_dir is not None:
            try:
                trigger.mark(self.state_dir)  # the history says "webhook", not "timer"
            except OSError as exc:
                log.warning(f"webhook: cannot mark the sync as webhook-triggered: {exc}")
        (job,) = self._call(what, MANAGER_PATH, MANAGER, "StartUnit", "ss", (self.unit, "replace"))
        return str(job)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def start_unit(address: str | None, unit: str) -> None:
    """StartUnit ``unit`` once, without waiting for its job, on a connection of its own."""
    starter = Starter(address, unit)
    try:
        starter.start()
    finally:
        starter.close()


class Replays:
    """The replay window, saved to a file after every new delivery (memory only if it cannot)."""

    def __init__(self, path: Path | None, config: WebhookConfig) -> None:
        self.path = path
        self.window = ReplayWindow(config.replay_window_sec, config.replay_keep)
        self._warned = False
        if path is None:
            return
        try:
            self.window.load(path.read_text(), time.time())
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(f"webhook: cannot read replay file '{path}' ({exc}); starting empty")

    def check(self, keys: list[str]) -> bool:
        """True for a replay; otherwise the keys are recorded (and saved)."""
        now = time.time()
        if self.window.seen(keys, now):
            return True
        self.window.record(keys, now)
        self._save()
        return False

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.window.dump())
            os.replace(tmp, self.path)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning(
                    f"webhook: cannot save replay file '{self.path}': {exc.strerror}; "
                    "a restart will forget the deliveries seen"
                )


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    unread: bool = False  # the request body was not read: drain a little, then close
    headers: dict[str, str] = field(default_factory=dict)


class Webhook:
    """The request pipeline and its state; thread-safe (one handler thread per request)."""

    def __init__(
        self,
        config: WebhookConfig,
        secret: bytes,
        ref: str,
        starter: Starter,
        replays: Replays,
        *,
        socket_activated: bool = False,
        rollout: bool = False,
    ) -> None:
        self.config = config
        self.ref = wanted_ref(ref, rollout)
        self.starter = starter
        self.replays = replays
        self.socket_activated = socket_activated
        self.limiter = RateLimiter(config.reject_burst, config.reject_per_sec)
        self.gate = SyncGate(config.debounce_sec)
        self.counts = dict.fromkeys(
            ("accepted", "ignored", "rejected", "rate_limited", "syncs_started", "errors"), 0
        )
        self.last_accepted: tuple[float, str | None] | None = None
        self.started_at = time.time()
        self._secret = secret
        self._lock = threading.Lock()  # counters, limiter, replays
        self._bus = threading.Lock()  # the gate and the D-Bus connection
        self._limited: set[str] = set()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._follow_ups, name="webhook-sync", daemon=True)
        self._worker.start()

    # -- the pipeline ---------------------------------------------------------------------

    def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        remote: str,
        read: Callable[[int], bytes],
    ) -> Reply:
        if route(method, path, None) == "health":  # never rate-limited: monitoring must work
            has_body = "transfer-encoding" in headers or headers.get("content-length", "0") != "0"
            return Reply(200, self.health(), unread=has_body)
        with self._lock:
            if not self.limiter.allowed(remote, time.monotonic()):
                return self._rate_limited(remote)
            self._limited.discard(RateLimiter.key(remote))
        delivery = delivery_id(headers)
        length = check_length(headers, self.config.max_body_bytes)
        if isinstance(length, Rejection):
            return self.reject(remote, length, unread=True, delivery=delivery)
        where = route(method, path, length)
        if isinstance(where, Rejection):
            return self.reject(remote, where, unread=bool(length), delivery=delivery)
        assert where == "push" and length is not None
        try:
            body = read(length)
        except OSError:
            why = Rejection(408, "slow-body", "body not received in time")
            return self.reject(remote, why, delivery=delivery)
        if len(body) != length:
            why = Rejection(400, "short-body", "body ended early")
            return self.reject(remote, why, delivery=delivery)
        refused = authenticate(self._secret, body, headers)
        if refused is not None:
            return self.reject(remote, refused, delivery=delivery)
        event = parse_event(body, headers)
        if isinstance(event, Rejection):
            return self.reject(remote, event, delivery=delivery)
        with self._lock:
            replayed = self.replays.check(replay_keys(event))
        if replayed:
            why = Rejection(409, "replay", "delivery already seen")
            return self.reject(remote, why, delivery=event.delivery)
        if event.kind == "ping":
            return Reply(200, {"status": "pong", "delivery": event.delivery})
        if event.kind != "push" or not follows(event.ref, self.ref):
            with self._lock:
                self.counts["ignored"] += 1
            what = "other branch" if event.kind == "push" else f"event {event.kind}"
            return Reply(202, {"status": f"ignored: {what}", "delivery": event.delivery})
        return self._accept(remote, event.delivery, event.after)

    def _accept(self, remote: str, delivery: str | None, after: str | None) -> Reply:
        status, job, error = QUEUED, None, None
        with self._bus:
            try:
                status = self.gate.request(time.monotonic(), self.starter.busy)
                job = self.starter.start() if status == STARTED else None
                if job is not None:
                    self.gate.started(time.monotonic())
            except SystemdError as exc:
                self.gate.pending = True  # the follow-up keeps trying
                error = exc
        if status == QUEUED or error is not None:
            self._wake.set()
        with self._lock:
            self.counts["accepted"] += 1
            self.counts["syncs_started"] += job is not None
            self.counts["errors"] += error is not None
            self.last_accepted = (time.time(), delivery)
        if error is not None:
            log.error(f"webhook: {error} (will retry)")
            return Reply(503, {"status": "error", "error": str(error), "delivery": delivery})
        journal.event(
            "webhook.accepted",
            f"webhook: push from {remote} accepted: {status}",
            unit=SYNC_UNIT,
            remote=remote,
            delivery=delivery,
            after=after,
            result=status,
            job=job,
        )
        return Reply(202, {"status": status, "delivery": delivery})

    def reject(
        self, remote: str, why: Rejection, *, unread: bool = False, delivery: str | None = None
    ) -> Reply:
        with self._lock:
            self.counts["rejected"] += 1
            self.limiter.charge(remote, time.monotonic())
        journal.event(
            "webhook.rejected",
            f"webhook: refused a request from {remote}: {why.status} {why.message}",
            priority=4 if why.status in (401, 409) else 5,
            remote=remote,
            status=why.status,
            reason=why.reason,
            delivery=delivery,
        )
        return Reply(why.status, {"status": "rejected", "error": why.message}, unread=unread)

    def _rate_limited(self, remote: str) -> Reply:
        """429 before anything is read; logged once per address until it calms down."""
        key = RateLimiter.key(remote)
        self.counts["rate_limited"] += 1
        if key not in self._limited:
            if len(self._limited) > 10_000:
                self._limited.clear()
            self._limited.add(key)
            journal.event(
                "webhook.rejected",
                f"webhook: too many refused requests from {key}; answering 429 for a while",
                priority=4,
                remote=remote,
                status=429,
                reason="rate-limited",
            )
        wait = self.limiter.retry_after(remote, time.monotonic())
        body = {"status": "rejected", "error": "too many refused requests"}
        return Reply(429, body, unread=True, headers={"Retry-After": str(wait)})

    def health(self) -> dict[str, Any]:
        with self._lock:
            last = self.last_accepted
            return {
                "status": "ok",
                "unit": SYNC_UNIT,
                "ref": self.ref,
                "socket_activated": self.socket_activated,
                "uptime_sec": round(time.time() - self.started_at, 3),
                **self.counts,
                "sync_pending": self.gate.pending,
                "replay_entries": len(self.replays.window),
                "last_accepted_at": _iso(last[0]) if last else None,
                "last_delivery": last[1] if last else None,
            }

    # -- the one pending follow-up ----------------------------------------------------------

    def _follow_ups(self) -> None:
        while not self._stopping.is_set():
            with self._bus:
                due = self.gate.due_at()
                delay = None if due is None else due - time.monotonic()
                if delay is not None and delay <= 0:
                    delay = self._try_follow_up()
            if delay is None:
                self._wake.wait()
                self._wake.clear()
            else:
                self._stopping.wait(delay)

    def _try_follow_up(self) -> float | None:
        """Start the pending sync unless one runs; the delay until the next look, or None."""
        try:
            if self.starter.busy():
                return POLL_SEC
            job = self.starter.start()
        except SystemdError as exc:
            log.error(f"webhook: {exc} (will retry)")
            return max(self.config.debounce_sec, 5.0)
        self.gate.started(time.monotonic())
        with self._lock:
            self.counts["syncs_started"] += 1
        log.info(f"webhook: started {SYNC_UNIT} for pushes queued while it ran ({job})")
        return None

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._worker.join(timeout=5)
        with self._bus:
            self.starter.close()


def _iso(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="seconds")
