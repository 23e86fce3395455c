"""``reconciler job etl``: trigger the ETL sync endpoint (talks to it over HTTP: requests).

One run is one logical call: an ``Idempotency-Key`` shared by its retries lets the server
drop duplicates. Connection errors, timeouts, 5xx and 429 are retried with exponential
backoff and jitter (``Retry-After`` honoured up to a cap); other statuses are final. The
response body is streamed and capped, so a runaway endpoint cannot exhaust memory. The
bearer token comes from systemd credentials or a file and is scrubbed from everything
this job writes: stdout, the journal, ``etl-last.json`` and exception text.
"""

from __future__ import annotations

import json
import os
import stat
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from reconciler import __version__
from reconciler.config import Etl, Settings, read_section
from reconciler.core.retry import RetryPolicy
from reconciler.errors import JobError, redact
from reconciler.host import journal

if TYPE_CHECKING:
    import requests

DEFAULT_PATH = "/api/sync/reading"
CREDENTIAL = "etl-token"  # LoadCredential=etl-token:/etc/reconciler/etl-token
STATUS_FILE = "etl-last.json"
SUMMARY_CHARS = 1024


@dataclass(frozen=True)
class EtlConfig:
    url: str
    method: str = "POST"
    connect_timeout_sec: float = 5.0
    read_timeout_sec: float = 30.0
    retries: int = 3  # after the first attempt
    backoff_sec: float = 1.0
    backoff_max_sec: float = 60.0
    retry_after_max_sec: float = 300.0
    total_sec: float = 600.0  # the whole call, retries and waits included
    max_body_bytes: int = 64 * 1024
    token_file: Path | None = None
    body: dict[str, Any] | None = None


def from_section(section: Etl) -> EtlConfig | None:
    """The ``[etl]`` section (read and checked by ``config``), or None when no endpoint is set."""
    if section.url:
        url = section.url
    elif section.base_url:
        url = section.base_url.rstrip("/") + (section.path or DEFAULT_PATH)
    else:
        return None
    return EtlConfig(
        url=url,
        method=section.method.upper(),
        connect_timeout_sec=section.connect_timeout_sec,
        read_timeout_sec=section.read_timeout_sec,
        retries=section.retries,
        backoff_sec=section.backoff_sec,
        backoff_max_sec=section.backoff_max_sec,
        retry_after_max_sec=section.retry_after_max_sec,
        total_sec=section.total_sec,
        max_body_bytes=section.max_body_bytes,
        token_file=section.token_file,
        body=section.body,
    )


def parse_config(section: Mapping[str, Any]) -> EtlConfig | None:
    """``[etl]`` from a plain table (the config reader's checks, then ``from_section``)."""
    return from_section(read_section(Etl, section, "etl"))


def safe_url(url: str) -> str:
    """The URL as it may be logged: no credentials, no query string."""
    parts = urlsplit(redact(url))
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class Scrubber:
    """Replaces the secret wherever it might show up in text this job writes."""

    def __init__(self, secret: str | None) -> None:
        self.secret = secret

    def __call__(self, text: str, limit: int | None = None) -> str:
        """``text`` without the secret (nor URL credentials), cut to ``limit`` characters.

        The secret is replaced before cutting, and a tail that starts the secret (a body
        cut short by the size cap) is replaced too. ``redact`` runs on the short text only:
        its regex is slow on long runs of letters.
        """
        if self.secret:
            text = text.replace(self.secret, "***")
        text = text[:limit]
        if self.secret:
            for size in range(len(self.secret) - 1, 3, -1):
                if text.endswith(self.secret[:size]):
                    text = text[:-size] + "***"
                    break
        return redact(text)


def read_token(config: EtlConfig, environ: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """The bearer token and warnings; systemd credentials first, then ``token_file``."""
    warnings: list[str] = []
    creds = environ.get("CREDENTIALS_DIRECTORY")
    path = Path(creds) / CREDENTIAL if creds else None
    if path is None or not path.is_file():
        path = config.token_file
    if path is None:
        return None, warnings
    try:
        st = os.stat(path)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        cause = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise JobError(f"cannot read ETL token file '{path}': {cause}") from None
    if path == config.token_file and st.st_mode & stat.S_IROTH:
        warnings.append(
            f"ETL token file '{path}' is readable by every user "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod 600 on it or use LoadCredential="
        )
    token = text.strip()
    if not token:
        raise JobError(f"cannot use ETL token file '{path}': it is empty")
    if any(not 0x21 <= ord(c) <= 0x7E for c in token):
        raise JobError(
            f"cannot use ETL token file '{path}': it holds characters not allowed "
            "in an HTTP header (one line of printable ASCII expected)"
        )
    return token, warnings


@dataclass
class Result:
    ok: bool = False
    status: int | None = None
    attempts: int = 0
    duration_ms: int = 0
    summary: str = ""
    body_bytes: int = 0
    truncated: bool = False
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _read_capped(response: requests.Response, cap: int, seconds: float) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of the body, within ``seconds``; (data, truncated)."""
    data = bytearray()
    deadline = time.monotonic() + seconds
    for chunk in response.iter_content(16 * 1024):
        room = cap - len(data)
        data += chunk[:room]
        if len(chunk) > room or time.monotonic() > deadline:
            return bytes(data), True
    return bytes(data), False


def call(
    config: EtlConfig,
    token: str | None,
    key: str,
    *,
    rand: Callable[[], float] | None = None,
) -> Result:
    """Call the endpoint, retrying as the module docstring says; never raises for HTTP."""
    from reconciler.host import http  # requests: only when the job really calls out

    scrub = Scrubber(token)
    result = Result()
    headers = {
        "Idempotency-Key": key,
        "User-Agent": f"reconciler/{__version__}",
        "Accept-Encoding": "identity",  # the cap counts bytes as sent: no decompression bombs
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    policy = RetryPolicy(
        retries=config.retries,
        backoff_sec=config.backoff_sec,
        backoff_max_sec=config.backoff_max_sec,
        retry_after_max_sec=config.retry_after_max_sec,
        total_sec=config.total_sec,
    )
    started = time.monotonic()
    with http.request(
        config.method,
        config.url,
        policy=policy,
        headers=headers,
        json=config.body,
        timeout=(config.connect_timeout_sec, config.read_timeout_sec),
        stream=True,
        rand=rand,
    ) as answer:
        response = answer.response
        if response is not None:
            try:
                body, truncated = _read_capped(
                    response, config.max_body_bytes, config.read_timeout_sec
                )
            except OSError as exc:  # requests' errors are OSErrors: the body broke off
                body, truncated = b"", True
                result.error = f"connection failed: {scrub(str(exc), 300)}"
            result.status = response.status_code
            text = " ".join(body.decode("utf-8", "replace").split())
            result.summary = scrub(text, SUMMARY_CHARS)
            result.body_bytes, result.truncated = len(body), truncated
            result.ok = 200 <= response.status_code < 300 and result.error is None
            if not 200 <= response.status_code < 300:
                result.error = f"HTTP {response.status_code} {scrub(response.reason or '', 200)}"
        else:
            result.error = scrub(answer.error or "no answer", 300)
    result.attempts = len(answer.attempts)
    for number, attempt in enumerate(answer.attempts, 1):
        entry: dict[str, Any] = {"attempt": number, "duration_ms": _ms(attempt.duration_sec)}
        if attempt.status is not None:
            entry["status"] = attempt.status
        if attempt.error is not None:
            kind = "timed out" if attempt.timed_out else "connection failed"
            entry["error"] = f"{kind}: {scrub(attempt.error, 300)}"
        elif attempt.status is not None and not 200 <= attempt.status < 300:
            entry["error"] = f"HTTP {attempt.status}"
        else:
            entry["error"] = None
        if attempt.delay_sec is not None:
            entry["delay_sec"] = attempt.delay_sec
        result.history.append(entry)
    result.duration_ms = _ms(time.monotonic() - started)
    return result


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def write_status(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` atomically with ``data`` as JSON, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def run_job(settings: Settings, environ: Mapping[str, str] | None = None) -> int:
    config = from_section(settings.etl)
    if config is None:
        journal.event(
            "job.etl", "etl: no endpoint configured in [etl]; nothing to do", priority=5, echo=False
        )
        return 0
    token, warnings = read_token(config, os.environ if environ is None else environ)
    for warning in warnings:
        journal.event("job.etl", f"etl: warning: {warning}", priority=4)
    key = str(uuid.uuid4())
    url = safe_url(config.url)
    started = datetime.now(UTC)
    result = call(config, token, key)
    scrub = Scrubber(token)
    record = {
        **asdict(result),
        "url": url,
        "method": config.method,
        "idempotency_key": key,
        "started": started.isoformat(timespec="seconds"),
        "token": "sent" if token else "none",
    }
    write_status(settings.state_dir / STATUS_FILE, json.loads(scrub(json.dumps(record))))
    outcome = f"HTTP {result.status}" if result.status is not None else result.error
    message = (
        f"etl: {config.method} {url} -> {outcome} after {result.attempts} "
        f"attempt{'s' if result.attempts != 1 else ''} in {result.duration_ms / 1000:.1f}s"
    )
    journal.event(
        "job.etl",
        scrub(message),
        priority=6 if result.ok else 3,
        echo=False,
        url=url,
        method=config.method,
        http_status=result.status,
        attempts=result.attempts,
        duration_ms=result.duration_ms,
        idempotency_key=key,
        summary=result.summary or None,
        body_bytes=result.body_bytes,
        truncated=result.truncated,
        error=result.error,
    )
    if not result.ok:
        raise JobError(
            scrub(
                f"cannot trigger ETL sync '{url}': {result.error} "
                f"after {result.attempts} attempt{'s' if result.attempts != 1 else ''}"
            ),
            f"see {settings.state_dir / STATUS_FILE} and the endpoint's logs",
        )
    return 0  # the CLI prints the summary (the journal entry's message)
