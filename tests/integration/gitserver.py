"""A smart-HTTP git server for tests: git's own ``http-backend`` behind a counting front.

Every request is recorded (method, path, the protocol v2 command of a POST: ``ls-refs`` or
``fetch``), and per client address, so a test proves what a poll costs the server (a fleet's
hosts each have an address of their own). ``refuse`` answers every request
with a status (429, 503) and an optional ``Retry-After`` instead of serving it.
"""

from __future__ import annotations

import contextlib
import http.server
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BACKEND = "/usr/lib/git-core/git-http-backend"


@dataclass
class GitServer:
    root: Path  # repositories are served as http://127.0.0.1:PORT/<name>
    port: int = 0
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, command
    refuse: int | None = None  # answer every request with this status
    retry_after: str | None = None  # with this Retry-After header
    refuse_count: int | None = None  # only this many requests (None: every one)
    lock: threading.Lock = field(default_factory=threading.Lock)
    by_client: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def take(self) -> list[tuple[str, str, str]]:
        """The requests since the last take."""
        with self.lock:
            out, self.requests = self.requests, []
        return out

    def take_by_client(self) -> dict[str, list[tuple[str, str, str]]]:
        """The requests since the last take of this, per client address."""
        with self.lock:
            out, self.by_client = self.by_client, {}
        return out


def _command(body: bytes) -> str:
    for name in (b"ls-refs", b"fetch"):
        if b"command=" + name in body[:100]:
            return name.decode()
    return "v0" if body else ""


def _handler(server: GitServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._serve()

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self._serve()

        def _serve(self) -> None:
            url = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                import gzip

                body = gzip.decompress(body)
            seen = (self.command, url.path, _command(body))
            with server.lock:
                server.requests.append(seen)
                server.by_client.setdefault(self.client_address[0], []).append(seen)
            with server.lock:
                refusing = bool(server.refuse) and server.refuse_count != 0
                if refusing and server.refuse_count is not None:
                    server.refuse_count -= 1
            if refusing:
                extra = [("Retry-After", server.retry_after)] if server.retry_after else []
                self._answer(server.refuse, b"refused by the test\n", extra)
                return
            env = {
                "GIT_PROJECT_ROOT": str(server.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "REQUEST_METHOD": self.command,
                "PATH_INFO": url.path,
                "QUERY_STRING": url.query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "PATH": "/usr/bin:/bin",
                "REMOTE_ADDR": self.client_address[0],
            }
            proc = subprocess.run(
                [BACKEND], input=body, env=env, capture_output=True, timeout=60, check=False
            )
            head, _, payload = proc.stdout.partition(b"\r\n\r\n")
            status, headers = 200, []
            for line in head.decode("latin-1").splitlines():
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.split()[0])
                elif name:
                    headers.append((name, value.strip()))
            self._answer(status, payload, headers)

        def _answer(self, status: int, payload: bytes, headers: Any = ()) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: 50 hosts polling a loaded machine overflowed it,
    # a reset connection made the host's client fall back to git's (GET + POST: 2 requests)
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up early (a refused poll) is expected


@contextlib.contextmanager
def git_http(root: Path, address: str = "127.0.0.1", port: int = 0) -> Iterator[GitServer]:
    """Serve the repositories under ``root`` on ``address`` (a free port) in a thread."""
    server = GitServer(root)
    httpd = _Server((address, port), _handler(server))
    server.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
