"""Webhook faults that hold connections: slowloris from one address, legitimate pushes from
another. Real sockets on loopback (127.0.0.1 attacks, 127.0.0.2 pushes), the webhook as a
whole process (tests/integration/test_webhook.py's ``Server``), bounded in count and time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.devtools import sandbox
from tests.faults.conftest import Report
from tests.integration.test_webhook import (
    CONFIG,
    SECRET,
    Server,
    SyncUnit,
    push_body,
    signed,
    sync_unit,
)

pytestmark = pytest.mark.host
__all__ = ["sync_unit"]  # the module-scoped fake gitops-sync.service of test_webhook

ATTACKER, LEGIT = "127.0.0.1", "127.0.0.2"  # both loopback: every 127/8 address is local
TRICKLE = b"POST /hooks/push HTTP/1.1\r\nHost: x\r\n"


class Slowloris:
    """``count`` connections from ``ATTACKER``, each sending one byte every ``every`` seconds;
    a connection the server closes is opened again at its next tick. Records how long the
    server kept each connection that it accepted (did not answer at once)."""

    def __init__(self, port: int, count: int, every: float) -> None:
        self.port, self.count, self.every = port, count, every
        self.stop = threading.Event()
        self.opened = 0
        self.refused_at_once = 0  # answered (503) or closed within 0.5 s
        self.held: list[float] = []  # seconds a trickling connection was kept, once cut
        self.statuses: list[bytes] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Slowloris:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(30)

    def _open(self) -> tuple[socket.socket, float, int] | None:
        if self.opened >= self.count * 12:  # bounded: at most 12 connections per slot
            return None
        self.opened += 1
        try:
            s = socket.create_connection((ATTACKER, self.port), timeout=2)
            s.setblocking(False)
            return s, time.monotonic(), 0
        except OSError:
            return None

    def _closed(self, s: socket.socket, since: float) -> bool:
        """True if the server answered or closed this connection (and account for it)."""
        try:
            data = s.recv(4096)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        kept = time.monotonic() - since
        self.statuses.append(data.split(b"\r\n", 1)[0][:12])
        if kept < 0.5:
            self.refused_at_once += 1
        else:
            self.held.append(kept)
        s.close()
        return True

    def _run(self) -> None:
        slots: list[tuple[socket.socket, float, int] | None] = [
            self._open() for _ in range(self.count)
        ]
        next_tick = time.monotonic()
        while not self.stop.is_set():
            tick = time.monotonic() >= next_tick
            for i, slot in enumerate(slots):
                if slot is None:
                    slots[i] = self._open() if tick else None
                elif self._closed(slot[0], slot[1]):
                    slots[i] = None
                elif tick:
                    s, since, sent = slot
                    with contextlib.suppress(OSError):
                        s.send(TRICKLE[sent % len(TRICKLE) : sent % len(TRICKLE) + 1])
                    slots[i] = (s, since, sent + 1)
            if tick:
                next_tick += self.every
            self.stop.wait(0.1)
        for slot in slots:
            if slot is not None:
                slot[0].close()


def legit(port: int, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """A request from ``LEGIT``; status 0 if the connection was cut (a refusal mid-request)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(LEGIT, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    except (OSError, http.client.HTTPException) as exc:
        return 0, {"error": repr(exc)}
    finally:
        conn.close()


def test_webhook_slowloris_from_one_address(
    host: sandbox.Host, tmp_path: Path, sync_unit: SyncUnit, fault_report: Report
) -> None:
    sync_unit.wait_idle()
    runs = len(sync_unit.runs())
    server = Server(host, tmp_path)
    answers: list[tuple[float, str, int]] = []
    try:
        with Slowloris(server.port, count=70, every=4.0) as attack:
            started = time.monotonic()
            time.sleep(2.0)  # every connection open, the first bytes sent
            for _ in range(3):
                status, _ = legit(server.port, "GET", "/healthz")
                answers.append((time.monotonic() - started, "healthz", status))
                body = push_body()
                status, _ = legit(server.port, "POST", "/hooks/push", body, signed(body))
                answers.append((time.monotonic() - started, "push", status))
                time.sleep(3.5)
            attacked_sec = time.monotonic() - started
        ok = [a for a in answers if a[2] in (200, 202)]
        healthy = server.health()["status"] == "ok"
    finally:
        assert server.stop() == 0
    sync_unit.wait_idle()
    started_syncs = len(sync_unit.runs()) - runs
    longest = max(attack.held, default=0.0)
    fault_report(
        "webhook slowloris: 70 connections, 1 byte every 4 s, one address",
        f"{len(ok)}/{len(answers)} requests from another address answered 200/202 during "
        f"{attacked_sec:.0f}s of attack; the attacker got {attack.refused_at_once} refusals at "
        f"once and its held connections were cut after {longest:.1f}s at most",
        None,
        started_syncs >= 1 and healthy,
    )
    assert len(ok) == len(answers), answers
    assert started_syncs >= 1
    assert attack.refused_at_once > 0, "one address must not hold every connection"
    assert attack.held and longest < 9, attack.held  # header deadline 5 s, with slack


def test_webhook_body_trickle_is_cut(
    host: sandbox.Host, tmp_path: Path, sync_unit: SyncUnit, fault_report: Report
) -> None:
    """Headers in time, then a body of 64 bytes at one byte a second: cut at the body deadline
    (a per-read timeout of 10 s never fires); nothing is started."""
    (tmp_path / "secret").write_text(SECRET + "\n")
    (tmp_path / "secret").chmod(0o600)
    (tmp_path / "config.toml").write_text(CONFIG + "body_timeout_sec = 2\n")
    sync_unit.wait_idle()
    runs = len(sync_unit.runs())
    server = Server(host, tmp_path)
    try:
        body = push_body()
        head = "".join(f"{k}: {v}\r\n" for k, v in signed(body).items())
        address = ("127.0.0.1", server.port)
        with socket.create_connection(address, timeout=10, source_address=(LEGIT, 0)) as s:
            s.sendall(
                f"POST /hooks/push HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}"
                "\r\n".encode()
            )
            started = time.monotonic()
            sent, answer = 0, b""
            while sent < len(body) and time.monotonic() - started < 15:
                try:
                    s.sendall(body[sent : sent + 1])
                except OSError:
                    break
                sent += 1
                s.settimeout(1.0)
                try:
                    answer = s.recv(4096)  # an answer, or the close: the server cut it
                except TimeoutError:
                    continue
                break
            cut_after = time.monotonic() - started
        healthz = legit(server.port, "GET", "/healthz")[0]
    finally:
        assert server.stop() == 0
    started_syncs = len(sync_unit.runs()) - runs
    fault_report(
        "webhook body trickled one byte a second",
        f"connection cut after {cut_after:.1f}s ({sent} of {len(body)} bytes; "
        f"body_timeout_sec = 2); nothing started",
        None,
        started_syncs == 0 and healthz == 200,
    )
    assert sent < len(body) and cut_after < 5, (sent, cut_after, answer)
    assert started_syncs == 0 and healthz == 200


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_webhook_header_flood(
    host: sandbox.Host, tmp_path: Path, sync_unit: SyncUnit, fault_report: Report
) -> None:
    """32 connections at once, each sending 98 header lines of 60 KiB (http.server admits 100
    of 64 KiB: 6.4 MB per connection, held twice while parsed): 431 after 96 KiB."""
    sync_unit.wait_idle()
    server = Server(host, tmp_path)
    try:
        base = peak_rss_mb(server.proc.pid)
        line = b"X-Pad: " + b"a" * 60_000 + b"\r\n"
        request = b"POST /hooks/push HTTP/1.1\r\nHost: x\r\n" + line * 98 + b"\r\n"
        statuses: list[bytes] = []

        def flood() -> None:
            address = ("127.0.0.1", server.port)
            with socket.create_connection(address, timeout=10) as s:
                with contextlib.suppress(OSError):
                    s.sendall(request)
                with contextlib.suppress(OSError):
                    statuses.append(s.recv(64).split(b"\r\n", 1)[0])

        threads = [threading.Thread(target=flood) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        grown = peak_rss_mb(server.proc.pid) - base
        body = push_body()
        after = legit(server.port, "POST", "/hooks/push", body, signed(body))[0]
    finally:
        assert server.stop() == 0
    sync_unit.wait_idle()
    refused = [s for s in statuses if s.startswith(b"HTTP/1.0 431")]
    fault_report(
        "webhook header flood: 32 x 98 header lines of 60 KiB",
        f"{len(refused)}/32 answered 431; the webhook's peak RSS grew {grown:.0f} MB; "
        f"a signed push afterwards: {after}",
        None,
        after == 202,
    )
    assert grown < 20, f"{grown:.0f} MB"
    assert refused, statuses
    assert after == 202
