"""The notification webhook against a real HTTP server on 127.0.0.1: signature, retries."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from reconciler.errors import UsageError
from reconciler.monitor import alert_webhook


class Receiver:
    """Answers with the queued status codes (then 200) and keeps what it was sent."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                code = receiver.codes.pop(0) if receiver.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


SECRET = b"s3cret-for-tests"
EVENTS = [{"event": "finding.opened", "finding": {"kind": "crash_loop", "unit": "web.service"}}]


def config(url: str, retries: int = 3) -> alert_webhook.AlertConfig:
    return alert_webhook.AlertConfig(url, SECRET, timeout_sec=2.0, retries=retries, backoff_sec=0.0)


def test_signed_post_retried_after_5xx(receiver: Receiver) -> None:
    receiver.codes = [500, 503]
    assert alert_webhook.send(config(receiver.url), "web1", EVENTS, now=1000.0)
    assert len(receiver.requests) == 3
    bodies = {body for _, body in receiver.requests}
    assert len(bodies) == 1, "a retry sends the same delivery"
    headers, body = receiver.requests[-1]
    assert alert_webhook.verify(SECRET, body, headers[alert_webhook.SIGNATURE_HEADER])
    assert not alert_webhook.verify(b"other", body, headers[alert_webhook.SIGNATURE_HEADER])
    payload = json.loads(body)
    assert payload["host"] == "web1" and payload["events"] == EVENTS
    assert payload["delivery"] == headers[alert_webhook.DELIVERY_HEADER]
    assert headers[alert_webhook.EVENT_HEADER] == "finding.opened"


def test_4xx_is_not_retried(receiver: Receiver) -> None:
    receiver.codes = [403]
    assert not alert_webhook.send(config(receiver.url), "web1", EVENTS)
    assert len(receiver.requests) == 1


def test_unreachable_gives_up_after_retries() -> None:
    assert not alert_webhook.send(config("http://127.0.0.1:9/none", retries=2), "web1", EVENTS)


def test_nothing_to_send_sends_nothing(receiver: Receiver) -> None:
    assert alert_webhook.send(config(receiver.url), "web1", [])
    assert receiver.requests == []


def test_config(tmp_path: Path) -> None:
    assert alert_webhook.load_config({}) is None
    secret = tmp_path / "secret"
    secret.write_text("abc\n")
    got = alert_webhook.load_config(
        {"url": "https://x.example/h", "secret_file": str(secret), "retries": 1}
    )
    assert got is not None and got.secret == b"abc" and got.retries == 1
    with pytest.raises(UsageError, match="secret_file"):
        alert_webhook.load_config({"url": "https://x.example/h"})
    with pytest.raises(UsageError, match="notify.url"):
        alert_webhook.load_config({"url": "ftp://x", "secret_file": str(secret)})
    with pytest.raises(UsageError, match="cannot read notify secret"):
        alert_webhook.load_config(
            {"url": "https://x.example/h", "secret_file": str(tmp_path / "none")}
        )
