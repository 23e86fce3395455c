"""One blocking D-Bus connection to systemd (talks to a unix socket: dbus-daemon or systemd's own).

It authenticates (``auth``'s handshake), says ``Hello`` on a bus or, on systemd's
peer-to-peer ``/run/systemd/private``, a ``Ping`` that is resent until answered (systemd
252 can leave the first call unanswered). Replies are routed by serial, signals to
listeners; calls can be pipelined in bounded windows. Every D-Bus error and socket
failure becomes a ``SystemdError`` here, D-Bus errors in one function (:func:`dbus_error`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from errno import ECONNRESET
from itertools import count
from typing import Generic, TypeVar

from reconciler.errors import SystemdError
from reconciler.systemd.auth import BEGIN, AuthenticationError, Handshake, external, socket_path
from reconciler.systemd.wire import (
    ERROR,
    MANAGER_PATH,
    METHOD_RETURN,
    SIGNAL,
    SYSTEMD,
    MatchRule,
    Message,
    build_call,
    split_frames,
)

K = TypeVar("K")
T = TypeVar("T")

SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"
PRIVATE_SOCKET = "/run/systemd/private"
DBUS_NAME, DBUS_PATH = "org.freedesktop.DBus", "/org/freedesktop/DBus"
WINDOW = 100  # outstanding calls; dbus-daemon refuses more than 128 per connection
PING_RETRY = 0.002  # first wait for a Ping answer on the private socket; doubles per resend
RECV_SIZE = 1 << 18

ROOT_HINT = "run as root (or via sudo)"
BUS_HINT = "is systemd running? check --bus / RECONCILER_BUS"
PRIVATE_HINT = (
    "systemd's private socket answers only root in systemd's own PID namespace; "
    f"use the system bus ({SYSTEM_BUS})"
)
_INSTALLED_HINT = "check the name; is the unit file installed (e.g. in /etc/systemd/system)?"
_CAUSES: dict[str, tuple[str, str | None]] = {
    "org.freedesktop.systemd1.NoSuchUnit": ("no such unit", _INSTALLED_HINT),
    "org.freedesktop.DBus.Error.FileNotFound": ("no such unit file", _INSTALLED_HINT),
    "org.freedesktop.systemd1.LoadFailed": (
        "the unit failed to load",
        "check the unit file with 'systemd-analyze verify'",
    ),
    "org.freedesktop.systemd1.UnitMasked": ("the unit is masked", "unmask it first"),
    "org.freedesktop.systemd1.OnlyByDependency": ("the unit refuses manual start/stop", None),
    "org.freedesktop.systemd1.TransactionIsDestructive": (
        "it conflicts with a queued job",
        "retry when the pending jobs have finished",
    ),
    "org.freedesktop.systemd1.TransactionOrderIsCyclic": ("ordering cycle", "check After=/Before="),
    "org.freedesktop.systemd1.ShuttingDown": ("systemd is shutting down", None),
    "org.freedesktop.DBus.Error.AccessDenied": ("access denied", ROOT_HINT),
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired": ("not authorized", ROOT_HINT),
    "org.freedesktop.DBus.Error.ServiceUnknown": ("systemd is not on this bus", BUS_HINT),
    "org.freedesktop.DBus.Error.NoReply": ("systemd did not answer", "retry; is systemd busy?"),
    "org.freedesktop.DBus.Error.LimitsExceeded": ("too many calls at once", None),
    "org.freedesktop.DBus.Error.UnknownProperty": ("no such property", None),
    "org.freedesktop.DBus.Error.UnknownInterface": ("no such interface for this unit", None),
    "org.freedesktop.DBus.Error.UnknownObject": ("no such object", None),
}


def dbus_error(what: str, name: str, text: str = "") -> SystemdError:
    """THE mapping of a D-Bus error reply to what an operator reads; keeps the D-Bus name."""
    cause, hint = _CAUSES.get(name, (text or name, None))
    detail = f" ({text})" if text and text != cause else ""
    return SystemdError(f"cannot {what}: {cause}{detail}", hint, dbus_name=name)


@dataclass
class _Listener:
    rule: MatchRule
    sink: Callable[[Message], None]


NO_SERVER = "org.freedesktop.DBus.Error.NoServer"  # nobody answers at the address (yet)
TIMEOUT = "org.freedesktop.DBus.Error.Timeout"  # somebody is there but busy


class Connection:
    """An authenticated connection; ``what`` arguments name the operation for errors."""

    def __init__(self, address: str, *, timeout: float = 30.0) -> None:
        self.address = address
        self.timeout = timeout
        self.calls: Counter[str] = Counter()  # method name -> calls sent
        self.private = False
        self.window = WINDOW
        self._serials = count(1)
        self._buf = bytearray()
        self._awaiting: set[int] = set()
        self._replies: dict[int, Message] = {}
        self._listeners: dict[int, _Listener] = {}
        self._listener_ids = count()
        self._matches: Counter[str] = Counter()
        self._sock: socket.socket | None = self._connect()
        try:
            self._greet(f"connect to systemd at '{address}'")
        except BaseException:
            self.close()
            raise

    def _connect(self) -> socket.socket:
        what = f"connect to systemd at '{self.address}'"
        try:
            path = socket_path(self.address)
        except ValueError:
            raise SystemdError(
                f"cannot {what}: not a D-Bus unix socket address",
                f"use e.g. {SYSTEM_BUS}; check --bus / RECONCILER_BUS",
            ) from None
        self.private = path.endswith(PRIVATE_SOCKET)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(path)
            sock.sendall(b"\0" + external(os.geteuid()))
            auth = Handshake()
            while not auth.done:
                data = sock.recv(1024)
                if not data:
                    raise ConnectionResetError(ECONNRESET, "closed during authentication")
                auth.feed(data)
            sock.sendall(BEGIN)
        except AuthenticationError as exc:
            sock.close()
            raise SystemdError(
                f"cannot {what}: authentication refused ({exc})", ROOT_HINT
            ) from None
        except TimeoutError:
            sock.close()
            raise SystemdError(
                f"cannot {what}: no answer to the authentication within {self.timeout:g}s",
                "systemd may be busy (e.g. with thousands of jobs); retry",
                dbus_name=TIMEOUT,
            ) from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            sock.close()
            hint = PRIVATE_HINT if self.private else BUS_HINT
            raise SystemdError(
                f"cannot {what}: connection closed ({exc.strerror})", hint, dbus_name=NO_SERVER
            ) from None
        except OSError as exc:
            sock.close()
            raise SystemdError(
                f"cannot {what}: {exc.strerror or exc}", BUS_HINT, dbus_name=NO_SERVER
            ) from None
        return sock

    def _greet(self, what: str) -> None:
        """Hello on a bus; on the private socket a Ping, resent until answered."""
        if not self.private:
            self.call(what, DBUS_PATH, DBUS_NAME, "Hello", destination=DBUS_NAME)
            return
        deadline = time.monotonic() + self.timeout
        serials: list[int] = []
        answered = False
        wait = PING_RETRY
        while not answered and time.monotonic() < deadline:
            with self._io(what):
                serials.append(self.send_call(MANAGER_PATH, "org.freedesktop.DBus.Peer", "Ping"))
            retry_at = min(deadline, time.monotonic() + wait)
            wait = min(wait * 2, 1.0)
            while not (answered := any(s in self._replies for s in serials)):
                if not self.receive(retry_at, what):
                    break
        self._awaiting.difference_update(serials)
        for s in serials:
            self._replies.pop(s, None)
        if not answered:
            with self._io(what):
                raise TimeoutError

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @contextlib.contextmanager
    def _io(self, what: str) -> Iterator[None]:
        """Socket trouble during ``what`` -> one SystemdError."""
        try:
            yield
        except TimeoutError:
            raise SystemdError(
                f"cannot {what}: no reply from systemd within {self.timeout:g}s",
                "systemd may be busy (e.g. reloading) or hung; retry",
                dbus_name=TIMEOUT,
            ) from None
        except OSError as exc:
            self.close()
            raise SystemdError(
                f"cannot {what}: connection to systemd at '{self.address}' lost: "
                f"{exc.strerror or exc}",
                BUS_HINT,
                dbus_name="org.freedesktop.DBus.Error.Disconnected",
            ) from None

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            raise ConnectionResetError(ECONNRESET, "connection closed")
        self._sock.settimeout(self.timeout)
        self._sock.sendall(data)

    def send_call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[object] = (),
        destination: str = SYSTEMD,
    ) -> int:
        """Send one call without waiting; returns its serial (raises OSError)."""
        serial = next(self._serials)
        self._send(
            build_call(serial, path, interface, member, signature, body, destination=destination)
        )
        self.calls[member] += 1
        self._awaiting.add(serial)
        return serial

    def receive(self, deadline: float | None, what: str) -> bool:
        """Read once (until ``deadline``; None: forever) and route what came; False on timeout."""
        with self._io(what):
            if self._sock is None:
                raise ConnectionResetError(ECONNRESET, "connection closed")
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(RECV_SIZE)
            except (TimeoutError, BlockingIOError):
                return False
            if not data:
                raise ConnectionResetError(ECONNRESET, "closed by systemd")
        self._buf += data
        for msg in split_frames(self._buf):
            if msg.type == METHOD_RETURN or msg.type == ERROR:
                serial = msg.reply_serial
                if serial in self._awaiting:
                    self._awaiting.remove(serial)
                    self._replies[serial] = msg
            elif msg.type == SIGNAL:
                for listener in list(self._listeners.values()):
                    if listener.rule.matches(msg):
                        listener.sink(msg)
        return True

    def wait(self, serial: int, what: str, timeout: float | None = None) -> Message:
        """The reply to ``serial`` (error replies included), routing signals meanwhile."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while serial not in self._replies:
            if not self.receive(deadline, what):
                self._awaiting.discard(serial)
                with self._io(what):
                    raise TimeoutError
        return self._replies.pop(serial)

    def call(
        self,
        what: str,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[object] = (),
        *,
        destination: str = SYSTEMD,
        timeout: float | None = None,
    ) -> tuple[object, ...]:
        """One call and its reply's body; an error reply raises via :func:`dbus_error`."""
        with self._io(what):
            serial = self.send_call(path, interface, member, signature, body, destination)
        reply = self.wait(serial, what, timeout)
        if reply.type == ERROR:
            raise dbus_error(what, reply.error_name, reply.error_text())
        return reply.body()

    def pipeline(
        self,
        what: str,
        requests: Iterable[tuple[K, str, Callable[[int], bytes]]],
        *,
        timeout: float | None = None,
        more: deque[tuple[K, str, Callable[[int], bytes]]] | None = None,
    ) -> Iterator[tuple[K, Message]]:
        """Send (key, method, build(serial)) calls, at most ``window`` outstanding; yield replies.

        Replies come in arrival order, error replies included, for the caller to judge.
        ``requests`` is consumed as the window frees (a generator: never all built at once,
        which at 10,000 units was ~10 MB of pending calls); ``more``, a deque the caller
        extends while consuming replies, goes first. ``timeout``: how long to wait for the
        next reply (default: the connection's).
        """
        todo = iter(requests)
        extra: deque[tuple[K, str, Callable[[int], bytes]]] = deque() if more is None else more
        pending: dict[int, K] = {}
        while True:
            chunks = []
            while len(pending) < self.window:
                if extra:
                    key, member, build = extra.popleft()
                elif (item := next(todo, None)) is not None:
                    key, member, build = item
                else:
                    break
                serial = next(self._serials)
                chunks.append(build(serial))
                self.calls[member] += 1
                self._awaiting.add(serial)
                pending[serial] = key
            if chunks:
                with self._io(what):
                    self._send(b"".join(chunks))
            if not pending:
                return
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
            while not (ready := [s for s in self._replies if s in pending]):
                if not self.receive(deadline, what):
                    self._awaiting.difference_update(pending)
                    with self._io(what):
                        raise TimeoutError
            for serial in ready:
                yield pending.pop(serial), self._replies.pop(serial)

    def listen(self, rule: MatchRule, sink: Callable[[Message], None]) -> int:
        """Route matching signals to ``sink`` (asking dbus-daemon for them when on a bus)."""
        text = rule.serialise()
        if not self.private and self._matches[text] == 0:
            self.call(
                "listen to systemd signals",
                DBUS_PATH,
                DBUS_NAME,
                "AddMatch",
                "s",
                (text,),
                destination=DBUS_NAME,
            )
        self._matches[text] += 1
        key = next(self._listener_ids)
        self._listeners[key] = _Listener(rule, sink)
        return key

    def unlisten(self, rule: MatchRule, key: int) -> None:
        if self._listeners.pop(key, None) is None:
            return
        text = rule.serialise()
        self._matches[text] -= 1
        if self._matches[text] <= 0:
            del self._matches[text]
            if not self.private and self._sock is not None:
                self.call(
                    "stop listening to systemd signals",
                    DBUS_PATH,
                    DBUS_NAME,
                    "RemoveMatch",
                    "s",
                    (text,),
                    destination=DBUS_NAME,
                )


class SignalQueue(Generic[T]):
    """Signals matching ``rules``, queued as the connection receives them, up to ``size``.

    What arrives while the queue is full is dropped and counted (jeepney's own filter
    queue silently keeps only one message): a monitor must know it missed something.
    Each signal is queued as ``decode(message, monotonic time received)`` makes it, at
    once: a watcher's queue holds what it reads of a signal (~0.3 KB), not the signal
    (~1.3 KB a ``PropertiesChanged`` of a service; a full queue of 4,096 was ~5 MB).
    """

    def __init__(
        self,
        conn: Connection,
        rules: Sequence[MatchRule],
        size: int,
        decode: Callable[[Message, float], T],
        accept: Callable[[Message], bool] | None = None,
    ) -> None:
        self.items: deque[T] = deque()
        self.size = size
        self.dropped = 0
        self.closed = False
        self._conn = conn
        self._decode = decode
        self._accept = accept
        self._keys = [(rule, conn.listen(rule, self._offer)) for rule in rules]

    def _offer(self, msg: Message) -> None:
        if self._accept is not None and not self._accept(msg):
            return
        if len(self.items) >= self.size:
            self.dropped += 1
        else:
            self.items.append(self._decode(msg, time.monotonic()))

    def next(self, timeout: float | None, what: str) -> T | None:
        """The next signal, waiting up to ``timeout``; None then."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.items:
            if not self._conn.receive(deadline, what):
                return None
        return self.items.popleft()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for rule, key in self._keys:
                self._conn.unlisten(rule, key)
