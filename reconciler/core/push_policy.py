"""What the push webhook accepts, in which order, and how often it starts a sync (pure).

No sockets and no clock here: the HTTP adapter (``reconciler.push.server``) passes headers
(lower-cased names), the body and ``now``. The checks run in a fixed order, each either
passing or giving a :class:`Rejection` (status, short reason, one-line message):

    rate limit (429) -> size (411/413, before reading the body) -> route (404/405)
    -> signature or token (401) -> JSON (400) -> replay (409) -> ping (200)
    -> event and branch (202 ignored) -> accepted (202)

Secrets and signatures are compared with :func:`hmac.compare_digest` only; a token is
hashed first so that its length does not leak either. Nothing here puts a header value
into a message, so no message can carry a secret.

Why the webhook keeps its own follow-up slot (:class:`SyncGate`): systemd merges a
``StartUnit`` for a ``Type=oneshot`` unit whose start job is running into that job (the
reply is the same job path; measured with systemd 252), so a push that arrives while a
sync runs would otherwise be lost until the next timer run. The gate remembers at most
ONE pending start and fires it when the running sync is over and ``debounce_sec`` has
passed: never more than one sync queued, and no push silently dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.config import Webhook, read_section
from reconciler.core.rollout_refs import ANY_WAVE, wave_of
from reconciler.errors import UsageError

PUSH_PATH, HEALTH_PATH = "/hooks/push", "/healthz"
SIGNATURE_HEADERS = ("x-hub-signature-256", "x-gitea-signature", "x-gogs-signature")
DELIVERY_HEADERS = (
    "x-github-delivery",
    "x-gitea-delivery",
    "x-gogs-delivery",
    "x-gitlab-event-uuid",
)
EVENT_HEADERS = ("x-github-event", "x-gitea-event", "x-gogs-event", "x-gitlab-event")
PUSH_EVENTS = frozenset({"push", "push hook"})
_DELIVERY = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


WebhookConfig = Webhook  # the ``[webhook]`` section, read and checked by ``config``


def parse_config(raw: Mapping[str, Any]) -> WebhookConfig:
    """``[webhook]`` from a plain table (the config reader)."""
    return read_section(Webhook, raw, "webhook")


def parse_listen(text: str, where: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (every address) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{where}: '{text}': expected HOST:PORT, e.g. 127.0.0.1:9420")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Rejection:
    status: int
    reason: str  # short, stable: "bad-signature", "replay", ... (a journal field)
    message: str  # one line for the sender and the operator; never a header value


@dataclass(frozen=True)
class Event:
    kind: str  # "push", "ping", or the sender's event name (lower case)
    delivery: str | None
    ref: str | None
    after: str | None
    digest: str  # SHA-256 of the raw body: the same signed body twice is a replay too


def check_length(headers: Mapping[str, str], max_bytes: int) -> int | None | Rejection:
    """The declared body size, None when there is none, or why it is refused (unread)."""
    if "transfer-encoding" in headers:
        return Rejection(411, "no-length", "send the body with a Content-Length, not chunked")
    text = headers.get("content-length")
    if text is None:
        return None
    if not text.strip().isdigit():
        return Rejection(400, "bad-length", "Content-Length is not a number")
    length = int(text)
    if length > max_bytes:
        return Rejection(413, "too-large", f"body of {length} bytes is over {max_bytes}")
    return length


def route(method: str, path: str, length: int | None) -> str | Rejection:
    """``"health"`` or ``"push"``; 404/405, or 411 for a push without Content-Length."""
    path = path.partition("?")[0]
    if path == HEALTH_PATH:
        return "health" if method == "GET" else Rejection(405, "method", "use GET /healthz")
    if path != PUSH_PATH:
        return Rejection(404, "path", "no such endpoint (POST /hooks/push, GET /healthz)")
    if method != "POST":
        return Rejection(405, "method", "use POST /hooks/push")
    if length is None:
        return Rejection(411, "no-length", "Content-Length is required")
    return "push"


def signature_matches(secret: bytes, body: bytes, header: str) -> bool | None:
    """HMAC-SHA256 check of ``sha256=HEX`` (or bare HEX); None when malformed."""
    given = header.strip()
    if given.lower().startswith("sha256="):
        given = given[len("sha256=") :]
    if not _HEX64.fullmatch(given):
        return None
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), given.lower().encode())


def token_matches(secret: bytes, token: str) -> bool:
    """Constant time in the token's content and length: both sides are hashed first."""
    given = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(hashlib.sha256(secret).digest(), given)


def authenticate(secret: bytes, body: bytes, headers: Mapping[str, str]) -> Rejection | None:
    """A signature header if there is one (never falling back to a token), else a token."""
    for name in SIGNATURE_HEADERS:
        if name in headers:
            ok = signature_matches(secret, body, headers[name])
            if ok is None:
                why = f"{name.title()} is not sha256=<64 hex>"
                return Rejection(401, "malformed-signature", why)
            return None if ok else Rejection(401, "bad-signature", "signature does not match")
    auth = headers.get("authorization")
    token = headers.get("x-gitlab-token")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Rejection(401, "malformed-token", "Authorization is not 'Bearer <token>'")
    if token is None:
        return Rejection(401, "unsigned", "no X-Hub-Signature-256 and no token")
    return None if token_matches(secret, token) else Rejection(401, "bad-token", "wrong token")


def delivery_id(headers: Mapping[str, str]) -> str | None:
    """The sender's delivery id when it is well-formed (safe to log, even unauthenticated)."""
    delivery = next((headers[h] for h in DELIVERY_HEADERS if h in headers), None)
    return delivery if delivery is not None and _DELIVERY.fullmatch(delivery) else None


def parse_event(body: bytes, headers: Mapping[str, str]) -> Event | Rejection:
    """The event's kind, delivery id, ref and new commit; 400 for what cannot be read."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return Rejection(400, "json", "body is not JSON")
    if not isinstance(data, dict):
        return Rejection(400, "json", "body is not a JSON object")
    delivery = next((headers[h] for h in DELIVERY_HEADERS if h in headers), None)
    if delivery is not None and not _DELIVERY.fullmatch(delivery):
        return Rejection(400, "bad-delivery", "delivery id is not 1-128 of [A-Za-z0-9._:-]")
    kind = next((headers[h].strip().lower() for h in EVENT_HEADERS if h in headers), None)
    if kind is None:  # no event header: a push if it looks like one
        kind = "push" if "ref" in data else "unknown"
    ref, after = data.get("ref"), data.get("after")
    if kind in PUSH_EVENTS:
        kind = "push"
        if not isinstance(ref, str) or not ref:
            return Rejection(400, "no-ref", "push event without a 'ref'")
    return Event(
        kind=kind[:64],
        delivery=delivery,
        ref=ref if isinstance(ref, str) else None,
        after=after if isinstance(after, str) else None,
        digest=hashlib.sha256(body).hexdigest(),
    )


def wanted_ref(ref: str, rollout: bool = False) -> str:
    """The push ref that means "the configured branch": ``main`` -> ``refs/heads/main``;
    in a rollout the wave refs, ``refs/heads/rollout/*`` (the host follows its wave's)."""
    if rollout:
        return ANY_WAVE
    return ref if ref.startswith("refs/") else f"refs/heads/{ref}"


def follows(pushed: str | None, wanted: str) -> bool:
    """Whether a push to ``pushed`` moves what the host syncs (``wanted``, from
    ``wanted_ref``): one ref, or any wave ref (a wave's move the host is not in makes a
    no-op sync; its own wave is not known here without the state database)."""
    if pushed is None:
        return False
    if wanted == ANY_WAVE:
        return wave_of(pushed) is not None
    return pushed == wanted


def replay_keys(event: Event) -> list[str]:
    """What identifies a delivery: its id, and for a push its body (the id is not signed)."""
    keys = [f"id:{event.delivery}"] if event.delivery else []
    return keys + ([f"body:{event.digest}"] if event.kind == "push" else [])


class ReplayWindow:
    """Keys seen in the last ``window_sec``, at most ``keep`` deliveries (oldest go first)."""

    def __init__(self, window_sec: float, keep: int) -> None:
        self.window_sec = window_sec
        self.keep = keep
        self._entries: deque[tuple[float, tuple[str, ...]]] = deque()
        self._seen: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        while self._entries and (
            len(self._entries) > self.keep or self._entries[0][0] < now - self.window_sec
        ):
            at, keys = self._entries.popleft()
            for key in keys:
                if self._seen.get(key) == at:
                    del self._seen[key]

    def seen(self, keys: Iterable[str], now: float) -> bool:
        self._expire(now)
        return any(key in self._seen for key in keys)

    def record(self, keys: Iterable[str], now: float) -> None:
        entry = (now, tuple(keys))
        self._entries.append(entry)
        self._seen.update((key, now) for key in entry[1])
        self._expire(now)

    def dump(self) -> str:
        return json.dumps({"version": 1, "entries": [[at, *keys] for at, keys in self._entries]})

    def load(self, text: str, now: float) -> None:
        """Entries from :meth:`dump`; ValueError for anything else (the caller says so)."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("not a version 1 replay file")
        for row in data["entries"]:
            if not isinstance(row, list) or not row or not isinstance(row[0], int | float):
                raise ValueError("malformed entry")
            self.record([str(k) for k in row[1:]], float(row[0]))
        self._expire(now)


class RateLimiter:
    """A token bucket per remote address (an IPv6 /64 counts as one), charged by rejections.

    An address whose bucket is empty gets 429 before anything is read. Buckets are kept
    for at most ``max_addresses`` addresses, the least recently charged dropped first.
    """

    def __init__(self, burst: int, per_sec: float, max_addresses: int = 10_000) -> None:
        self.burst = float(burst)
        self.per_sec = per_sec
        self.max_addresses = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @staticmethod
    def key(address: str) -> str:
        if ":" in address and not address.startswith("::ffff:"):
            return ":".join(address.split(":")[:4]) + "::/64"
        return address

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.per_sec)

    def allowed(self, address: str, now: float) -> bool:
        return self._tokens(self.key(address), now) >= 1.0

    def charge(self, address: str, now: float) -> None:
        key = self.key(address)
        self._buckets[key] = (max(0.0, self._tokens(key, now) - 1.0), now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)

    def retry_after(self, address: str, now: float) -> int:
        missing = 1.0 - self._tokens(self.key(address), now)
        return max(1, int(missing / self.per_sec + 0.999))


STARTED, QUEUED = "sync started", "sync already queued"


class SyncGate:
    """Debounce plus one pending slot: when to send ``StartUnit`` for the sync.

    ``request`` answers an accepted push: start now, or leave it to the one pending
    follow-up (created if needed). ``due_at`` says when that follow-up may go out; the
    caller sends it once the unit is no longer running and calls ``started``.
    """

    def __init__(self, debounce_sec: float) -> None:
        self.debounce_sec = debounce_sec
        self.last_start: float | None = None
        self.pending = False

    def request(self, now: float, busy: Callable[[], bool]) -> str:
        """STARTED (the caller starts the unit now, then calls started) or QUEUED."""
        if self.pending:
            return QUEUED
        recent = self.last_start is not None and now - self.last_start < self.debounce_sec
        if recent or busy():
            self.pending = True
            return QUEUED
        return STARTED

    def due_at(self) -> float | None:
        if not self.pending:
            return None
        return 0.0 if self.last_start is None else self.last_start + self.debounce_sec

    def started(self, now: float) -> None:
        self.last_start = now
        self.pending = False
