"""``reconciler job etl`` against real HTTP servers on 127.0.0.1: retries, timeouts, caps, and
a token that reaches the server but nothing the job writes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reconciler.config import Settings
from reconciler.core import retry
from reconciler.errors import JobError, UsageError
from reconciler.jobs import etl

CLI = str(Path(sys.executable).parent / "reconciler")
TOKEN = "tok-" + uuid.uuid4().hex  # unique: any appearance anywhere is a leak


# --- servers ---------------------------------------------------------------------------------


class Script:
    """What a test server answers, one reply per request, and what it saw."""

    def __init__(self, replies: list[tuple[int, dict[str, str], bytes]]) -> None:
        self.replies = replies
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        script = self.server.script
        with script.lock:
            script.requests.append(
                {
                    "t": time.monotonic(),
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": body,
                }
            )
            index = len(script.requests) - 1
            status, headers, payload = script.replies[min(index, len(script.replies) - 1)]
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            for key, value in {"Content-Length": str(len(payload)), **headers}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    script: Script

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up on a capped body is expected


@contextlib.contextmanager
def serve(*replies: tuple[int, dict[str, str], bytes]) -> Iterator[tuple[str, Script]]:
    server = Server(("127.0.0.1", 0), Handler)
    server.script = Script(list(replies))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.script
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def hung_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """Accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


OK = (200, {"Content-Type": "application/json"}, b'{"synced": 42}')
UNAVAILABLE = (503, {}, b"busy")


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def creds(tmp_path: Path) -> dict[str, str]:
    """A systemd credentials directory holding the token, as LoadCredential= makes it."""
    folder = tmp_path / "credentials"
    folder.mkdir(mode=0o700)
    (folder / "etl-token").write_text(TOKEN + "\n")
    (folder / "etl-token").chmod(0o400)
    return {"CREDENTIALS_DIRECTORY": str(folder)}


def settings(tmp_path: Path, **etl_section: Any) -> Settings:
    section = {"backoff_sec": 0.01, "read_timeout_sec": 5, **etl_section}
    return Settings(state_dir=tmp_path / "state", sections={"etl": section})


def status_file(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "state/etl-last.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def assert_no_token(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text


# --- the job in process ----------------------------------------------------------------------


def test_503_twice_then_200_succeeds_with_three_requests(
    tmp_path: Path,
    creds: dict[str, str],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="reconciler")
    limited = (503, {"Retry-After": "1"}, b"busy, come back later")
    with serve(limited, UNAVAILABLE, OK) as (base, script):
        config = settings(tmp_path, base_url=base, retry_after_max_sec=0.3)
        assert etl.run_job(config, creds) == 0
    assert len(script.requests) == 3
    assert {r["path"] for r in script.requests} == {"/api/sync/reading"}
    keys = {r["headers"]["Idempotency-Key"] for r in script.requests}
    assert len(keys) == 1 and uuid.UUID(keys.pop())
    assert {r["headers"]["Authorization"] for r in script.requests} == {f"Bearer {TOKEN}"}
    gaps = [b["t"] - a["t"] for a, b in zip(script.requests, script.requests[1:], strict=False)]
    assert 0.3 <= gaps[0] < 0.9  # Retry-After: 1, capped at retry_after_max_sec
    record = status_file(tmp_path)
    assert record["ok"] is True and record["status"] == 200 and record["attempts"] == 3
    assert record["summary"] == '{"synced": 42}'
    assert [h.get("status") for h in record["history"]] == [503, 503, 200]
    assert record["url"] == f"{base}/api/sync/reading" and record["token"] == "sent"
    out, err = capfd.readouterr()
    # the summary is the job.etl entry (the CLI prints it: test_job_etl_as_a_whole_process)
    assert any("HTTP 200 after 3 attempts" in r.getMessage() for r in caplog.records)
    assert_no_token(out, err, json.dumps(record))


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    later = format_datetime(datetime.now(UTC).replace(microsecond=0), usegmt=True)
    with serve((503, {"Retry-After": "1"}, b""), (503, {"Retry-After": later}, b""), OK) as (
        base,
        script,
    ):
        assert etl.run_job(settings(tmp_path, url=f"{base}/sync"), {}) == 0
    first, second, third = (r["t"] for r in script.requests)
    assert second - first >= 0.95
    assert third - second < 0.9  # an HTTP date in the past: no wait
    assert "Authorization" not in script.requests[0]["headers"]


def test_400_fails_at_once(tmp_path: Path, creds: dict[str, str]) -> None:
    bad = (400, {}, b'{"error": "bad request"}')
    with serve(bad) as (base, script), pytest.raises(JobError) as exc:
        etl.run_job(settings(tmp_path, base_url=base, retries=5), creds)
    assert len(script.requests) == 1
    assert str(exc.value).startswith(
        f"cannot trigger ETL sync '{base}/api/sync/reading': HTTP 400 Bad Request after 1 attempt"
    )
    record = status_file(tmp_path)
    assert record["ok"] is False and record["status"] == 400
    assert record["summary"] == '{"error": "bad request"}'


def test_5xx_until_retries_run_out(tmp_path: Path) -> None:
    with serve((500, {}, b"boom")) as (base, script), pytest.raises(JobError) as exc:
        etl.run_job(settings(tmp_path, base_url=base, retries=2), {})
    assert len(script.requests) == 3
    assert "HTTP 500 Internal Server Error after 3 attempts" in str(exc.value)


def test_hung_server_times_out_and_fails_after_retries(tmp_path: Path) -> None:
    with hung_server() as (base, accepted):
        config = settings(tmp_path, base_url=base, read_timeout_sec=0.3, retries=2)
        started = time.monotonic()
        with pytest.raises(JobError) as exc:
            etl.run_job(config, {})
        elapsed = time.monotonic() - started
        assert len(accepted) == 3
    assert 0.9 <= elapsed < 2.5
    assert "timed out" in str(exc.value) and "after 3 attempts" in str(exc.value)
    record = status_file(tmp_path)
    assert record["status"] is None and record["attempts"] == 3
    assert all(0.25 <= h["duration_ms"] / 1000 < 0.8 for h in record["history"])


def test_connection_refused_is_retried(tmp_path: Path) -> None:
    config = settings(tmp_path, base_url=f"http://127.0.0.1:{free_port()}", retries=1)
    with pytest.raises(JobError) as exc:
        etl.run_job(config, {})
    assert "connection failed" in str(exc.value) and "after 2 attempts" in str(exc.value)


def test_a_5_mb_body_is_capped(tmp_path: Path) -> None:
    huge = (200, {"Content-Type": "text/plain"}, b"x" * (5 * 1024 * 1024))
    with serve(huge) as (base, script):
        started = time.monotonic()
        assert etl.run_job(settings(tmp_path, base_url=base), {}) == 0
        elapsed = time.monotonic() - started
    assert len(script.requests) == 1
    record = status_file(tmp_path)
    assert record["body_bytes"] == 64 * 1024 and record["truncated"] is True
    assert len(record["summary"]) == etl.SUMMARY_CHARS
    assert (tmp_path / "state/etl-last.json").stat().st_size < 8 * 1024
    assert elapsed < 2


def test_the_token_is_scrubbed_even_when_the_server_echoes_it(
    tmp_path: Path, creds: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    echo = (401, {}, f"invalid token {TOKEN}".encode())
    with serve(echo) as (base, script), pytest.raises(JobError) as exc:
        etl.run_job(settings(tmp_path, base_url=base), creds)
    assert script.requests[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    record = status_file(tmp_path)
    assert record["summary"] == "invalid token ***"
    out, err = capfd.readouterr()
    assert_no_token(str(exc.value), repr(exc.value), out, err, json.dumps(record))


def test_world_readable_token_file_warns(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    with serve(OK) as (base, script):
        assert etl.run_job(settings(tmp_path, base_url=base, token_file=str(token_file)), {}) == 0
    assert script.requests[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    _, err = capfd.readouterr()
    assert "is readable by every user (mode 0644)" in err
    assert_no_token(err)


def test_bad_token_files_are_refused_without_showing_them(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\nX-Injected: yes\n")
    config = settings(tmp_path, url="http://127.0.0.1:9/", token_file=str(token_file))
    with pytest.raises(JobError) as exc:
        etl.run_job(config, {})
    assert "characters not allowed in an HTTP header" in str(exc.value)
    assert_no_token(str(exc.value))
    with pytest.raises(JobError, match="cannot read ETL token file"):
        etl.run_job(settings(tmp_path, url="http://x/", token_file="/nonexistent/token"), {})


# --- config and pure helpers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"url": "http://x/", "timeout": 3}, "etl.timeout: unknown key"),
        ({"url": "ftp://x/"}, "etl.url: expected an http:// or https:// URL"),
        ({"url": "http://x/", "base_url": "http://x"}, "etl.url: set either url, or base_url"),
        ({"base_url": "http://x", "path": "sync"}, "etl.path: expected a path starting with"),
        ({"url": "http://x/", "retries": -1}, "etl.retries: expected 0 or more, got -1"),
        ({"url": "http://x/", "read_timeout_sec": "5"}, "etl.read_timeout_sec: expected a number"),
        ({"url": "http://x/", "method": "DELETE"}, "etl.method: expected one of"),
        ({"url": "http://x/", "token_file": "rel"}, "etl.token_file: expected an absolute path"),
    ],
)
def test_config_refused(section: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as exc:  # a configuration error: exit 2
        etl.parse_config(section)
    assert message in str(exc.value)


def test_config_defaults() -> None:
    assert etl.parse_config({}) is None
    config = etl.parse_config({"base_url": "http://127.0.0.1:8080/"})
    assert config == etl.EtlConfig(url="http://127.0.0.1:8080/api/sync/reading")
    assert config.retries == 3 and config.method == "POST" and config.backoff_sec == 1


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [(1, 0.0, 0.5), (1, 0.999, 0.9995), (2, 0.0, 1.0), (3, 0.5, 3.0), (10, 0.0, 30.0)],
)
def test_backoff_delay(attempt: int, rand: float, expected: float) -> None:
    assert retry.backoff_delay(attempt, base=1.0, cap=60.0, rand=rand) == pytest.approx(expected)


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert retry.parse_retry_after("120", now) == 120
    assert retry.parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now) == 30
    assert retry.parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now) == 0
    assert retry.parse_retry_after("soon", now) is None
    assert retry.parse_retry_after(None, now) is None


def test_safe_url_drops_credentials_and_query() -> None:
    assert etl.safe_url("https://u:p@host:8443/sync?key=s3cret") == "https://***@host:8443/sync"


# --- as a whole process ----------------------------------------------------------------------


class Sink:
    """A datagram socket standing in for journald (``$RECONCILER_JOURNAL_SOCKET``)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="jsink-")
        self.path = os.path.join(self.dir, "socket")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def payloads(self) -> list[bytes]:
        found = []
        with contextlib.suppress(BlockingIOError):
            while True:
                found.append(self.sock.recv(1 << 20, socket.MSG_DONTWAIT))
        return found

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_cli(config: Path, state: Path, sink: Sink, creds: dict[str, str]) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(creds, RECONCILER_JOURNAL_SOCKET=sink.path)
    argv = [CLI, "job", "etl", "--config", str(config), "--state-dir", str(state)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)


def test_job_etl_as_a_whole_process(tmp_path: Path, creds: dict[str, str]) -> None:
    sink = Sink()
    try:
        with serve(UNAVAILABLE, UNAVAILABLE, OK) as (base, script):
            config = tmp_path / "config.toml"
            config.write_text(f'[etl]\nbase_url = "{base}"\nbackoff_sec = 0.01\n')
            proc = run_cli(config, tmp_path / "state", sink, creds)
            assert proc.returncode == 0, proc.stderr
            assert len(script.requests) == 3
            with serve((403, {}, b"forbidden")) as (base403, script403):
                config.write_text(f'[etl]\nurl = "{base403}/x"\nbackoff_sec = 0.01\n')
                failed = run_cli(config, tmp_path / "state", sink, creds)
            assert len(script403.requests) == 1
        payloads = sink.payloads()
    finally:
        sink.close()
    assert proc.stdout.startswith(f"etl: POST {base}/api/sync/reading -> HTTP 200 after 3 attempts")
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [
        f"reconciler job: cannot trigger ETL sync '{base403}/x': HTTP 403 Forbidden after 1 "
        f"attempt (hint: see {tmp_path}/state/etl-last.json and the endpoint's logs)"
    ]
    assert len(payloads) == 2
    fields = [dict(line.split("=", 1) for line in p.decode().splitlines()) for p in payloads]
    assert [f["RECONCILER_EVENT"] for f in fields] == ["job.etl", "job.etl"]
    assert fields[0]["MESSAGE_ID"] == "0210fd3ab71c4c0f83eaf5800c5e160b"
    assert fields[0]["PRIORITY"] == "6" and fields[1]["PRIORITY"] == "3"
    assert fields[0]["RECONCILER_HTTP_STATUS"] == "200"
    assert fields[0]["RECONCILER_ATTEMPTS"] == "3"
    assert fields[0]["RECONCILER_SUMMARY"] == '{"synced": 42}'
    assert int(fields[0]["RECONCILER_DURATION_MS"]) >= 0
    key = script.requests[0]["headers"]["Idempotency-Key"]
    assert fields[0]["RECONCILER_IDEMPOTENCY_KEY"] == key
    assert fields[1]["RECONCILER_HTTP_STATUS"] == "403"
    assert_no_token(proc.stdout, proc.stderr, failed.stdout, failed.stderr)
    assert all(TOKEN.encode() not in p for p in payloads)


def test_scrubber_replaces_whole_and_cut_off_secrets() -> None:
    scrub = etl.Scrubber("s3cret-token-value")
    assert scrub("a s3cret-token-value b s3cret-token-value") == "a *** b ***"
    assert scrub("body cut at the cap: s3cret-tok") == "body cut at the cap: ***"
    assert scrub("x" * 5000 + "s3cret-token-value", 10) == "x" * 10
    assert scrub("see https://user:pw@host/x") == "see https://***@host/x"
    assert etl.Scrubber(None)("plain") == "plain"
