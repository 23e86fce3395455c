"""Outbound HTTP (talks HTTP through requests): one session and one retry policy for every call.

Every request the reconciler makes (the ETL trigger, the alert webhook) goes through
``request()``: requests on urllib3's ``Retry``, configured from ``core.retry.RetryPolicy``
(connection errors, timeouts, 429 and 5xx retried; backoff with jitter; ``Retry-After``
honoured up to a cap; the whole call bounded in time). ``Retry`` is subclassed only to use
that policy's backoff and ``Retry-After`` parsing, to stop at the time bound, and to keep a
trace of the attempts (status or error, duration, wait) for the callers' records.

No environment (``trust_env = False``): no ``~/.netrc`` replacing a bearer token, no proxy
surprises; no redirects followed: a signed or authorised request never goes elsewhere.

``import requests`` costs ~50 ms: callers import this module where they send, not before.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.util.retry import Retry

from reconciler.core.retry import RETRY_STATUSES, RetryPolicy, backoff_delay, parse_retry_after

__all__ = ["Attempt", "Call", "RetryPolicy", "request"]

# urllib3 logs each retry as a warning; the attempts are in the caller's record instead, and
# a one-shot command must print one line, not a logging record per retry.
logging.getLogger("urllib3").addHandler(logging.NullHandler())
logging.getLogger("urllib3").propagate = False


@dataclass
class Attempt:
    """One try of a call: the status it got or the error it met, how long, the wait after."""

    status: int | None = None
    error: str | None = None
    timed_out: bool = False
    duration_sec: float = 0.0
    delay_sec: float | None = None


@dataclass
class Call:
    """A whole call: the final response (None when every attempt failed), every attempt.

    A context manager: leaving it closes the response and the session (a streamed body is
    read inside it).
    """

    response: requests.Response | None
    attempts: list[Attempt] = field(default_factory=list)
    session: requests.Session | None = None

    def __enter__(self) -> Call:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.response is not None:
            self.response.close()
        if self.session is not None:
            self.session.close()

    @property
    def error(self) -> str | None:
        """The last attempt's error (``timed out: ...`` or ``connection failed: ...``)."""
        last = self.attempts[-1] if self.attempts else None
        if last is None or last.error is None:
            return None
        return f"{'timed out' if last.timed_out else 'connection failed'}: {last.error}"


@dataclass
class _Trace:
    policy: RetryPolicy
    deadline: float
    attempts: list[Attempt] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)  # the current attempt's start
    exhausted: bool = False
    rand: Any = None  # random.random, or a test's


class _Retry(Retry):
    """urllib3's ``Retry`` with the policy's backoff, a time bound and a trace of attempts."""

    def __init__(self, *args: Any, trace: _Trace | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trace = trace

    def new(self, **kw: Any) -> _Retry:
        copy = super().new(**kw)
        copy.trace = self.trace
        return copy

    def increment(self, *args: Any, **kwargs: Any) -> _Retry:
        trace = self.trace
        if trace is not None:  # the attempt that just failed, before urllib3 decides
            response, error = kwargs.get("response"), kwargs.get("error")
            attempt = Attempt(duration_sec=time.monotonic() - trace.started)
            if error is not None:
                attempt.error = _describe(error)
                # NewConnectionError subclasses ConnectTimeoutError: a refusal is no timeout
                timeout = isinstance(error, ConnectTimeoutError | ReadTimeoutError)
                attempt.timed_out = timeout and not isinstance(error, NewConnectionError)
            elif response is not None:
                attempt.status = response.status
            trace.attempts.append(attempt)
        try:
            return super().increment(*args, **kwargs)
        except MaxRetryError:
            if trace is not None:
                trace.exhausted = True
            raise

    def is_exhausted(self) -> bool:
        out_of_time = self.trace is not None and time.monotonic() >= self.trace.deadline
        return out_of_time or super().is_exhausted()

    def get_retry_after(self, response: Any) -> float | None:
        seconds = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
        if seconds is None or self.trace is None:
            return seconds
        return min(seconds, self.trace.policy.retry_after_max_sec)

    def get_backoff_time(self) -> float:
        trace = self.trace
        if trace is None:
            return 0.0
        p = trace.policy
        return backoff_delay(len(trace.attempts), p.backoff_sec, p.backoff_max_sec, trace.rand())

    def sleep(self, response: Any = None) -> None:
        wait = self.get_retry_after(response) if response is not None else None
        if wait is None:
            wait = self.get_backoff_time()
        if self.trace is not None:
            wait = max(0.0, min(wait, self.trace.deadline - time.monotonic()))
            if self.trace.attempts:
                self.trace.attempts[-1].delay_sec = round(wait, 3)
        time.sleep(wait)
        if self.trace is not None:
            self.trace.started = time.monotonic()


def _describe(error: BaseException) -> str:
    """urllib3's error without its object reprs: ``Connection refused``, ``read timeout=1``."""
    text = str(error)
    for marker in ("Failed to establish a new connection: ", "): "):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    return text.strip().removeprefix("[Errno 111] ").rstrip(")")


def request(
    method: str,
    url: str,
    *,
    policy: RetryPolicy,
    timeout: float | tuple[float, float],
    headers: dict[str, str] | None = None,
    json: Any = None,
    data: bytes | None = None,
    stream: bool = False,
    rand: Any = None,
) -> Call:
    """One call with the policy's retries; never raises for HTTP or network errors.

    ``Call.response`` is the final response (a retried status whose retries ran out too), or
    None when the last attempt met an error (``Call.error`` says which). A streamed
    response is the caller's to close.
    """
    trace = _Trace(policy, time.monotonic() + policy.total_sec, rand=rand or random.random)
    retry = _Retry(
        total=policy.retries,
        connect=None,
        read=None,
        status=None,
        other=None,
        redirect=0,
        allowed_methods=None,  # POSTs too: callers send an idempotency key or delivery id
        status_forcelist=RETRY_STATUSES,
        raise_on_status=False,  # the last retried status is returned, not raised
        raise_on_redirect=False,
        respect_retry_after_header=True,  # capped by get_retry_after: urllib3's own
        # retry_after_max is 2.6's (Debian 13 has 2.3, its security fixes backported)
        trace=trace,
    )
    session = requests.Session()
    session.trust_env = False  # no ~/.netrc replacing a bearer token, no proxy surprises
    adapter = requests.adapters.HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    try:
        response = session.request(
            method,
            url,
            headers=headers,
            json=json,
            data=data,
            timeout=timeout,
            stream=stream,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        session.close()
        if not trace.exhausted or not trace.attempts:  # failed without a retry decision
            last = Attempt(duration_sec=time.monotonic() - trace.started, error=str(exc))
            last.timed_out = isinstance(exc, requests.Timeout)
            trace.attempts.append(last)
        return Call(None, trace.attempts)
    if not trace.exhausted:  # the final answer was not one urllib3 retried on
        trace.attempts.append(
            Attempt(status=response.status_code, duration_sec=time.monotonic() - trace.started)
        )
    return Call(response, trace.attempts, session)
