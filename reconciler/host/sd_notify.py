"""sd_notify without libsystemd (talks to the service manager's ``$NOTIFY_SOCKET``).

A ``Type=notify`` service tells systemd it is ready (``READY=1``), what it is doing
(``STATUS=``), that it is alive (``WATCHDOG=1``, at least every ``WATCHDOG_USEC``) and
that it is shutting down (``STOPPING=1``). Each message is one datagram of
newline-separated assignments. Outside systemd (no ``$NOTIFY_SOCKET``) every call is a
no-op returning False, so the same code runs from a terminal.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from types import TracebackType


def _address(value: str) -> str | None:
    """``@name`` is an abstract socket, ``/path`` a file; anything else is not for us."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def notify(*assignments: str) -> bool:
    """Send ``KEY=value`` assignments in one datagram; False when not run by systemd.

    Raises ValueError for an assignment without ``=`` or with a new line (it would be
    read as a second assignment).
    """
    for item in assignments:
        if "=" not in item or "\n" in item:
            raise ValueError(f"cannot send {item!r} to the service manager: need one KEY=value")
    address = _address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None or not assignments:
        return False
    payload = "\n".join(assignments).encode("utf-8", "surrogateescape")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(payload, address)
    except OSError:
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def ready(status: str | None = None) -> bool:
    """``READY=1`` (and ``STATUS=`` when given): systemd now counts the service as started."""
    return notify("READY=1", *([f"STATUS={_one_line(status)}"] if status is not None else []))


def status(text: str) -> bool:
    """``STATUS=``: the line ``systemctl status`` shows (``StatusText``)."""
    return notify(f"STATUS={_one_line(text)}")


def stopping() -> bool:
    """``STOPPING=1``: the service is shutting down on purpose."""
    return notify("STOPPING=1")


def watchdog() -> bool:
    """``WATCHDOG=1``: one keep-alive ping."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds between pings (half of ``WATCHDOG_USEC``), or None without a watchdog.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for: a child
    that inherited the environment must not ping in its parent's place.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None


class Watchdog:
    """Pings ``WATCHDOG=1`` from a thread at :func:`watchdog_interval` until stopped.

    ``alive`` (optional) is asked before each ping; when it returns False the ping is
    skipped, so systemd's watchdog fires on a main loop that hung while this thread lives.
    Without a watchdog configured, start() does nothing. Use it as a context manager.
    """

    def __init__(
        self, interval: float | None = None, *, alive: Callable[[], bool] | None = None
    ) -> None:
        self.interval = interval if interval is not None else watchdog_interval()
        self.alive = alive
        self.pings = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.interval is None or self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        assert self.interval is not None
        while True:
            if (self.alive is None or self.alive()) and watchdog():
                self.pings += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Watchdog:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
