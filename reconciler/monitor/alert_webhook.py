"""Optional notification webhook for new and resolved findings (talks to its URL: one signed POST).

Configured in ``[notify]`` of the host config::

    [notify]
    url = "https://alerts.example/reconciler"   # no url: no webhook
    secret_file = "/etc/reconciler/notify.secret"
    timeout_sec = 5
    retries = 3                                  # attempts after the first one

One POST per monitoring pass carries every event of that pass (so a host with fifty new
findings sends one request, not fifty), as JSON::

    {"host": "web1", "sent_at": 1790000000.0, "delivery": "<uuid>",
     "events": [{"event": "finding.opened", "finding": {...}}, ...]}

The body is signed like GitHub's webhooks: ``X-Reconciler-Signature-256: sha256=<hex>``,
HMAC-SHA256 of the exact body bytes with the secret file's content (stripped). Receivers
must compare in constant time and may use ``delivery`` (also ``X-Reconciler-Delivery``) to
drop duplicates: a retry after a timeout can deliver twice. Sent through ``host/http.py``,
the one retry policy of every outbound call: connection errors, timeouts, 429 and 5xx are
retried with backoff and jitter (``Retry-After`` honoured, the whole delivery bounded);
other 4xx are not (the request is wrong and will stay wrong). Redirects are not followed.
requests is imported only when there is something to send: the monitor starts cheaply.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler import __version__
from reconciler.config import Notify, read_section
from reconciler.core.retry import RetryPolicy
from reconciler.errors import UsageError, redact

log = logging.getLogger("reconciler")
SIGNATURE_HEADER = "X-Reconciler-Signature-256"
DELIVERY_HEADER = "X-Reconciler-Delivery"
EVENT_HEADER = "X-Reconciler-Event"


@dataclass(frozen=True)
class AlertConfig:
    url: str
    secret: bytes
    timeout_sec: float = 5.0
    retries: int = 3
    backoff_sec: float = 0.5
    retry_after_max_sec: float = 30.0  # a monitoring pass must not wait for long
    total_sec: float = 60.0  # the whole delivery, retries and waits included


def load_config(section: Notify | Mapping[str, Any]) -> AlertConfig | None:
    """``[notify]`` (checked by ``config``) with its secret read; None when no url is set."""
    if not isinstance(section, Notify):
        section = read_section(Notify, section, "notify")
    if not section.url or section.secret_file is None:
        return None
    try:
        secret = section.secret_file.read_bytes().strip()
    except OSError as exc:
        raise UsageError(
            f"cannot read notify secret '{section.secret_file}': {exc.strerror}"
        ) from None
    if not secret:
        raise UsageError(f"cannot use notify secret '{section.secret_file}': the file is empty")
    return AlertConfig(
        section.url, secret, section.timeout_sec, section.retries, section.backoff_sec
    )


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """What a receiver does (used by the tests): constant-time comparison."""
    return hmac.compare_digest(sign(secret, body), header)


def build_body(
    host: str, events: Sequence[Mapping[str, Any]], *, now: float, delivery: str
) -> bytes:
    payload = {
        "host": host,
        "sent_at": now,
        "delivery": delivery,
        "events": list(events),
    }
    return json.dumps(payload, sort_keys=True, default=str).encode()


def send(
    config: AlertConfig,
    host: str,
    events: Sequence[Mapping[str, Any]],
    *,
    now: float | None = None,
) -> bool:
    """POST the events; True once the receiver answered 2xx. Never raises: logs and gives up."""
    if not events:
        return True
    from reconciler.host import http  # requests (~50 ms): only when there is something to send

    delivery = str(uuid.uuid4())
    body = build_body(host, events, now=time.time() if now is None else now, delivery=delivery)
    kinds = sorted({str(e.get("event", "")) for e in events})
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"reconciler/{__version__}",
        SIGNATURE_HEADER: sign(config.secret, body),
        DELIVERY_HEADER: delivery,
        EVENT_HEADER: ",".join(kinds),
    }
    where = redact(config.url)
    policy = RetryPolicy(
        retries=config.retries,
        backoff_sec=config.backoff_sec,
        backoff_max_sec=max(config.backoff_sec * 8, config.timeout_sec),
        retry_after_max_sec=config.retry_after_max_sec,
        total_sec=config.total_sec,
    )
    with http.request(
        "POST", config.url, policy=policy, timeout=config.timeout_sec, headers=headers, data=body
    ) as answer:
        status = answer.response.status_code if answer.response is not None else None
    for number, attempt in enumerate(answer.attempts[:-1], 1):
        cause = f"HTTP {attempt.status}" if attempt.status is not None else attempt.error
        log.info("notify webhook '%s': attempt %d failed: %s", where, number, cause)
    if status is not None and 200 <= status < 300:
        return True
    if status is not None and status != 429 and status < 500:
        log.warning("notify webhook '%s' refused the delivery: HTTP %s", where, status)
        return False
    cause = f"HTTP {status}" if status is not None else (answer.error or "no answer")
    log.warning(
        "cannot deliver %d finding event(s) to notify webhook '%s': %s after %d attempts",
        len(events),
        where,
        cause,
        len(answer.attempts),
    )
    return False
