"""When to try an outbound HTTP call again (pure): backoff with jitter, ``Retry-After``.

The one retry policy of every outbound call (``host/http.py`` applies it through urllib3's
``Retry``): connection errors, timeouts, 429 and 5xx are retried; the wait before retry
``n`` is ``base * 2**(n-1)`` capped, jittered into its upper half so a fleet does not retry
in step; a ``Retry-After`` header (seconds or an HTTP date) replaces it, capped; the whole
call, waits included, is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

RETRY_STATUSES = frozenset({429, *range(500, 600)})


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3  # attempts after the first
    backoff_sec: float = 1.0  # the wait before the first retry (jittered into its upper half)
    backoff_max_sec: float = 60.0
    retry_after_max_sec: float = 300.0  # a server asking for longer gets this
    total_sec: float = 600.0  # the whole call, attempts and waits: no retry starts after it


def backoff_delay(attempt: int, base: float, cap: float, rand: float) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): ``base * 2**(attempt-1)`` capped, then
    jittered into its upper half by ``rand`` in [0, 1) so a fleet does not retry in step."""
    delay = min(cap, base * 2.0 ** (attempt - 1))
    return delay / 2 + delay / 2 * rand


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime  # 4-6 ms: only an HTTP date needs it

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class PollBackoff:
    """A git server that refused: no poll of it before ``until`` (epoch seconds). ``url``
    is whatever names the server to the caller; the store keeps a digest, never the URL
    itself (it may carry credentials)."""

    url: str
    failures: int  # in a row
    until: float
    why: str  # the refusal, one line


def next_poll_backoff(
    previous: PollBackoff | None,
    url: str,
    why: str,
    *,
    now: float,
    retry_after: float | None,
    base: float,
    cap: float,
    rand: float,
) -> PollBackoff:
    """The backoff after one more refusal: ``base * 2**(n-1)`` capped and jittered, or the
    server's ``Retry-After`` (capped) when it sent one. Failures count per URL."""
    failures = (previous.failures if previous and previous.url == url else 0) + 1
    if retry_after is not None:
        delay = min(max(retry_after, 0.0), cap)
    else:
        delay = backoff_delay(failures, base, cap, rand)
    return PollBackoff(url, failures, now + delay, why)
