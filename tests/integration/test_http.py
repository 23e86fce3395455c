"""host/http.py, the one outbound HTTP helper, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import ast
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from reconciler.core.retry import RetryPolicy
from reconciler.host import http
from reconciler.monitor import alert_webhook

PACKAGE = Path(__file__).resolve().parents[2] / "reconciler"


class Script:
    """Answers with the queued (status, headers) (then 200) and notes when each came."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.times: list[float] = []
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                script.times.append(time.monotonic())
                status, headers = script.answers.pop(0) if script.answers else (200, {})
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self.thread.daemon = True
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/x"

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


@pytest.fixture
def script() -> Iterator[Script]:
    s = Script()
    yield s
    s.server.shutdown()
    s.server.server_close()
    s.thread.join(5)


def test_backoff_is_jittered_into_the_upper_half(script: Script) -> None:
    script.answers = [(503, {}), (500, {})]
    policy = RetryPolicy(retries=3, backoff_sec=0.4, backoff_max_sec=10)
    with http.request("POST", script.url, policy=policy, timeout=5, rand=lambda: 0.5) as call:
        assert call.response is not None and call.response.status_code == 200
    assert [a.status for a in call.attempts] == [503, 500, 200]
    assert [a.delay_sec for a in call.attempts] == [0.3, 0.6, None]  # 0.4/2+0.2*.5, 0.8/2+...
    first, second = script.gaps()
    assert 0.28 <= first < 0.6 and 0.58 <= second < 0.9


def test_retry_after_is_honoured_and_capped(script: Script) -> None:
    script.answers = [(429, {"Retry-After": "1"}), (503, {"Retry-After": "3600"})]
    policy = RetryPolicy(retries=3, backoff_sec=0.01, retry_after_max_sec=0.5)
    with http.request("POST", script.url, policy=policy, timeout=5) as call:
        assert call.response is not None and call.response.status_code == 200
    first, second = script.gaps()
    assert first >= 0.5 and second < 1.0  # 1 s capped at 0.5; 3600 s capped at 0.5
    assert [a.delay_sec for a in call.attempts][:2] == [0.5, 0.5]


def test_the_whole_call_is_bounded_in_time(script: Script) -> None:
    script.answers = [(503, {"Retry-After": "1"})] * 50
    policy = RetryPolicy(retries=40, backoff_sec=0.2, total_sec=1.5)
    started = time.monotonic()
    with http.request("POST", script.url, policy=policy, timeout=5) as call:
        assert call.response is not None and call.response.status_code == 503
    assert time.monotonic() - started < 2.5
    assert 2 <= len(call.attempts) <= 3


def test_the_last_retried_status_is_returned_with_every_attempt(script: Script) -> None:
    script.answers = [(500, {})] * 3
    policy = RetryPolicy(retries=2, backoff_sec=0.01)
    with http.request("POST", script.url, policy=policy, timeout=5) as call:
        assert call.response is not None and call.response.status_code == 500
    assert [a.status for a in call.attempts] == [500, 500, 500]


def test_connection_refused_is_an_error_not_a_timeout() -> None:
    with http.request(
        "POST", "http://127.0.0.1:9/none", policy=RetryPolicy(1, 0.01), timeout=2
    ) as call:
        assert call.response is None
    assert len(call.attempts) == 2
    assert call.error is not None and call.error.startswith("connection failed: ")
    assert "Connection refused" in call.error


def test_alert_webhook_honours_retry_after(script: Script) -> None:
    """The alert webhook used its own urllib loop: no jitter, Retry-After ignored."""
    script.answers = [(503, {"Retry-After": "1"})]
    config = alert_webhook.AlertConfig(script.url, b"s", timeout_sec=2, retries=2, backoff_sec=0)
    assert alert_webhook.send(config, "web1", [{"event": "finding.opened"}])
    assert len(script.times) == 2 and script.gaps()[0] >= 0.95


def test_requests_is_the_only_http_client() -> None:
    """Every outbound call goes through host/http.py: no urllib.request, http.client or a
    requests session of its own anywhere else in the package."""
    offenders = []
    clients = {"urllib", "http", "requests", "urllib3", "httpx", "aiohttp", "pycurl"}
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "host" / "http.py":
            continue
        tree = ast.parse(path.read_text())
        typing_only = {  # imports for annotations (under ``if TYPE_CHECKING:``) make no call
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import) and id(node) not in typing_only:
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and id(node) not in typing_only:
                names = [node.module]
            for name in names:
                if name in ("urllib.parse", "http.server"):
                    continue  # URLs, and the inbound webhook
                if name == "http.client" and "HTTPConnection" not in path.read_text():
                    continue  # the webhook server parses headers with it: no outbound call
                if name.split(".")[0] in clients:
                    offenders.append(f"{path.relative_to(PACKAGE)}: {name}")
    assert not offenders, offenders
