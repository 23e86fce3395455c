"""The push webhook's HTTP front (talks to HTTP clients; systemd socket activation).

A stdlib ``ThreadingHTTPServer`` on the listening socket systemd passes (``LISTEN_FDS``,
fd 3, ``Accept=no``) or, run by hand, bound to ``--listen``. It only moves bytes: each
request goes to ``reconciler.push.service.Webhook``, which runs the checks and starts
the sync. A body refused unread is drained briefly before the close so the client reads the
answer instead of a reset.

Slowloris (70 connections from one address, one byte every 4 s, kept every slot busy and
made the webhook answer real pushes with 503): connections are capped in all
(``max_connections``) and per client address (``max_connections_per_client``); the last
quarter of the slots is kept for addresses holding none; and the request line with the
headers must arrive within ``header_timeout_sec`` in all, the body within
``body_timeout_sec`` (a per-read timeout alone never fires on a byte every 4 s). Refusals
for too many connections are a bare 503, neither logged nor parsed. http.server's own access
log is off: the journal entries of the service say what happened, without header values.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping, MutableMapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from reconciler.config import Settings
from reconciler.core.push_policy import Rejection, WebhookConfig, parse_listen
from reconciler.errors import UsageError
from reconciler.host import sd_notify
from reconciler.push.service import REPLAY_FILE, Replays, Reply, Starter, Webhook

log = logging.getLogger("reconciler")

CREDENTIAL = "webhook-secret"
SD_LISTEN_FDS_START = 3
READ_TIMEOUT_SEC = 10.0  # per socket read: a client that stalls is cut off
PROTOCOL_ERRORS = {
    400: "malformed request",
    408: "request not received in time",
    414: "request line too long",
    431: "request headers too large",
    501: "method not supported",
    505: "HTTP version not supported",
}
HEAD_BYTES = (1 << 16) + (1 << 15)  # request line (http.server: 64 KiB) plus 32 KiB of headers
DRAIN_BYTES, DRAIN_SEC = 256 * 1024, 1.0  # what is discarded of a refused body, at most


def read_secret(
    settings: Settings, secret_file: Path | None, environ: Mapping[str, str]
) -> tuple[bytes, list[str]]:
    """The shared secret and warnings: ``$CREDENTIALS_DIRECTORY``, the flag, the config."""
    warnings: list[str] = []
    creds = environ.get("CREDENTIALS_DIRECTORY")
    credential = Path(creds) / CREDENTIAL if creds else None
    if credential is not None and credential.is_file():
        path = credential
    elif (path_or_none := secret_file or settings.webhook_secret_file) is not None:
        path = path_or_none
    else:
        raise UsageError(
            "cannot start the webhook: no secret configured",
            "set webhook_secret_file in /etc/reconciler/config.toml, pass --secret-file, "
            "or LoadCredential=webhook-secret:PATH in the unit",
        )
    try:
        mode = os.stat(path).st_mode
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise UsageError(f"cannot read webhook secret file '{path}': {exc.strerror}") from None
    if not secret:
        raise UsageError(f"cannot use webhook secret file '{path}': it is empty")
    if path != credential and mode & 0o004:
        warnings.append(
            f"webhook secret file '{path}' is readable by every user; run chmod 600 on it"
        )
    if len(secret) < 16:
        warnings.append(f"webhook secret in '{path}' is shorter than 16 bytes; use a long one")
    return secret, warnings


def activated_socket(environ: MutableMapping[str, str], pid: int) -> socket.socket | None:
    """The listening socket systemd passed (fd 3), or None when not socket-activated."""
    if environ.get("LISTEN_PID") != str(pid):
        return None
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(name, None)  # children must not think the fds are theirs
    if count < 1:
        return None
    what = f"cannot serve the webhook on the socket systemd passed (fd {SD_LISTEN_FDS_START})"
    hint = "use ListenStream= with Accept=no in the .socket unit"
    try:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    except OSError as exc:
        raise UsageError(f"{what}: {exc.strerror}", hint) from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_ACCEPTCONN
    ):
        sock.detach()
        raise UsageError(f"{what}: not a listening stream socket", hint)
    sock.set_inheritable(False)
    return sock


class _HeadersTooLarge(http.client.HTTPException):
    """Raised inside header parsing: http.server answers 431 for any HTTPException there."""


class _DeadlineReader(io.RawIOBase):
    """The socket's bytes, each read bounded by what is left until ``deadline``, and the
    request line with the headers bounded by ``HEAD_BYTES`` (http.server alone admits 100
    header lines of 64 KiB each: 6.4 MB held per connection, twice over while parsed)."""

    def __init__(self, conn: socket.socket, deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self.head_left: int | None = HEAD_BYTES  # None once the headers are read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        view = memoryview(buffer)
        if self.head_left is not None:
            if self.head_left <= 0:
                raise _HeadersTooLarge(f"request headers larger than {HEAD_BYTES} bytes")
            view = view[: self.head_left]
        self.conn.settimeout(min(remaining, READ_TIMEOUT_SEC))
        count = self.conn.recv_into(view)
        if self.head_left is not None:
            self.head_left -= count
        return count


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = READ_TIMEOUT_SEC
    server_version = "reconciler-webhook"
    reader: _DeadlineReader

    def setup(self) -> None:
        """Reads from a deadline reader: the request line and headers first."""
        super().setup()
        self.rfile.close()  # the plain reader; the socket stays open
        config = self.server.config
        self.reader = _DeadlineReader(self.connection, time.monotonic() + config.header_timeout_sec)
        self.rfile = io.BufferedReader(self.reader)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Off: the service logs each refusal and acceptance itself (no header values)."""

    def _read(self, length: int) -> bytes:
        return self.rfile.read(length)

    def _handle(self) -> None:
        self.reader.deadline = time.monotonic() + self.server.config.body_timeout_sec
        self.reader.head_left = None  # the body is bounded by max_body_bytes
        headers = {k.lower(): v for k, v in self.headers.items()}
        remote = self.client_address[0] if self.client_address else "?"
        self._send(self.server.hook.handle(self.command, self.path, headers, remote, self._read))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals as JSON, with a fixed text (its own quotes the request)."""
        remote = self.client_address[0] if self.client_address else "?"
        text = PROTOCOL_ERRORS.get(code, "malformed request")
        self._send(self.server.hook.reject(remote, Rejection(code, "protocol", text), unread=True))

    def _send(self, reply: Reply) -> None:
        data = json.dumps(reply.body, sort_keys=True).encode() + b"\n"
        self.close_connection = True
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            return
        if reply.unread:
            _drain(self.connection)


def _drain(conn: socket.socket) -> None:
    """Half-close, then discard a bounded part of the unread body so the close is no reset."""
    deadline = time.monotonic() + DRAIN_SEC
    received = 0
    try:
        conn.shutdown(socket.SHUT_WR)
        while received < DRAIN_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            conn.settimeout(remaining)
            data = conn.recv(65536)
            if not data:
                return
            received += len(data)
    except OSError:
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self, hook: Webhook, config: WebhookConfig, sock: socket.socket | None, listen: str
    ) -> None:
        self.hook = hook
        self.config = config
        self._lock = threading.Lock()
        self._used = 0
        self._by_client: dict[str, int] = {}  # connections held per client address
        self._reserve = config.max_connections // 4  # for addresses holding none
        if sock is not None:
            self.address_family = sock.family
            super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
            self.socket.close()
            self.socket = sock
            return
        host, port = parse_listen(listen)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            raise UsageError(
                f"cannot listen on '{listen}': {exc.strerror}",
                "pick another --listen (or [webhook] listen), or stop what uses the port",
            ) from None

    def server_bind(self) -> None:
        """Bind only: HTTPServer's reverse lookup of the host name is not needed."""
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    def _admit(self, client: str) -> bool:
        """Take a slot for ``client`` unless it holds its share or the rest is reserved."""
        config = self.config
        with self._lock:
            held = self._by_client.get(client, 0)
            if (
                self._used >= config.max_connections
                or held >= config.max_connections_per_client
                or (held and self._used >= config.max_connections - self._reserve)
            ):
                return False
            self._used += 1
            self._by_client[client] = held + 1
            return True

    def _release(self, client: str) -> None:
        with self._lock:
            self._used -= 1
            held = self._by_client.pop(client) - 1
            if held:
                self._by_client[client] = held

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._admit(_client(client_address)):
            body = b'{"error": "too many connections", "status": "rejected"}\n'
            head = b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            head += b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
            with contextlib.suppress(OSError):
                request.setblocking(False)  # a client that reads nothing cannot stall the loop
                request.send(head + body)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(_client(client_address))


def _client(address: Any) -> str:
    """The client's address (its host part) as the per-client limit counts it."""
    return str(address[0]) if isinstance(address, tuple) and address else "?"


def serve(
    settings: Settings,
    *,
    listen: str | None = None,
    secret_file: Path | None = None,
    environ: MutableMapping[str, str] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; 0 then. Refuses to start without a secret."""
    env = os.environ if environ is None else environ
    config = settings.webhook
    secret, warnings = read_secret(settings, secret_file, env)
    sock = activated_socket(env, os.getpid())
    replays = Replays(settings.state_dir / REPLAY_FILE, config)
    starter = Starter(settings.bus, state_dir=settings.state_dir)
    hook = Webhook(
        config,
        secret,
        settings.ref,
        starter,
        replays,
        socket_activated=sock is not None,
        rollout=settings.rollout,
    )
    try:
        server = _Server(hook, config, sock, listen or config.listen)
    except BaseException:
        hook.close()
        raise
    for warning in warnings:
        log.warning(f"webhook: {warning}")
    host, port = (str(part) for part in server.server_address[:2])
    where = f"socket from systemd ({host}:{port})" if sock else f"{host}:{port}"
    log.info(f"webhook: listening on {where} for pushes to {hook.ref}")
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        """shutdown() from another thread: serve_forever returns between two requests."""
        if not stopping.is_set():
            stopping.set()
            sd_notify.stopping()
            threading.Thread(target=server.shutdown, name="webhook-stop", daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    sd_notify.ready(f"listening on {where}")
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
        hook.close()
    return 0
