"""Structured logging to journald over its native protocol (talks to the journal socket).

One AF_UNIX datagram per entry to ``/run/systemd/journal/socket`` (or
``$RECONCILER_JOURNAL_SOCKET``, so tests outside a host can target its journal). Each
field is ``KEY=value\\n``, or ``KEY\\n`` + 64-bit little-endian length + value + ``\\n``
when the value holds a new line. An entry too big for a datagram goes through a sealed
memfd passed with ``SCM_RIGHTS``, as ``sd_journal_send`` does. No libsystemd needed.

The rest of the project calls :func:`event`; every event kind has a fixed ``MESSAGE_ID``
so ``journalctl MESSAGE_ID=...`` finds every sync, rollback or crash loop.
"""

from __future__ import annotations

import atexit
import collections
import errno
import fcntl
import logging
import os
import socket
import stat
import struct
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from typing import TextIO

DEFAULT_SOCKET = "/run/systemd/journal/socket"
SOCKET_ENV = "RECONCILER_JOURNAL_SOCKET"
IDENTIFIER = "reconciler"
LOGGER = "reconciler"
NOTICE = 25  # between INFO and WARNING; journald priority 5
SEND_TIMEOUT_SEC = 5  # journald applies back-pressure; never hang a sync on it for longer

# Event kind -> MESSAGE_ID. Fixed forever: operators and alerts match on these ids.
EVENTS: dict[str, str] = {
    "sync.started": "0c45c4a4c6eb4e2c92daf880d52bd1eb",
    "sync.applied": "fdf5fabf6264481cb74e9efcff86c947",
    "sync.noop": "2942f6e1433e4ae9980f2ee6975a084d",
    "sync.failed": "f99c70d7712f4262a3425c4f97530ab2",
    "sync.suspended": "e8d0b341bc23476aa7087fd421bb1fe8",
    "sync.resumed": "eeafd2774dc34dda82440dd7895bbb26",
    "sync.downgrade": "89c7aa5a1d774ed1a4405c46aeaf1f72",
    "sync.reconnect": "50084072ddc8430cb6a7e9e4c3fd20f1",
    "sync.backoff": "fd362aed0dc74ca59b66bc17b5cdd2dc",
    "sync.interrupted": "87caf59954284d5b87be7d912ea0f439",
    "sync.note": "df2ba743a50a4f3b9df2db09d471d865",
    "action": "0095b3b553c34345bd25048b5a81b24f",
    "rollback": "8652ea395aec4a8a82ce880b5129a943",
    "health.failed": "f5f69824089147caa92d327d452fc534",
    "drift": "ccda48dbf7a34908af997abab090d420",
    "finding.opened": "2398d8f38af34bd2ae56a9adc1eb663d",
    "finding.resolved": "22e6d1801ee844338048634b7a300bed",
    "crash_loop": "28fbbf3d64f5446ca3f7b18d5e9b6965",
    "start_limit_hit": "3eb810de492c4aeeb4b5d9f3260c2a86",
    "flapping": "08ca131a5a024fbc9c2b2b952794e17c",
    "periodic_crash": "fad2fd67c1024e189efc7c0d6b02b9b3",
    "failure_clustering": "3787682fb9a44a29a578bbd4bb8fb836",
    "memory_growth": "1bdc891b65ae423d90ece17f89d5628e",
    "restart_anomaly": "5ad86882981647c1a13e465f320af95c",
    "missed_run": "66f4a3337cf24a7a99ff5d72fbce15fa",
    "failed_run": "2856bca5186d4cecb1dc65d99e4a90c7",
    "log": "27962002c44c4eaa800af039edff0fa3",
    "monitor.warning": "845bb83d92214c3c8dc8163518f17a77",
    "job.metrics": "089af8ac054444abbb086aedad7958fd",
    "job.backup": "eab3ca8d7dc34e8a9585ac8d22af2ac8",
    "job.etl": "0210fd3ab71c4c0f83eaf5800c5e160b",
    "webhook.accepted": "ee326a2ea646448e89cb96f587a00b96",
    "webhook.rejected": "69afa94fee0241ecb85ac9b3c4858bf1",
    "watch.started": "4ee7584278f0420497e1840b643bb957",
    "watch.stopped": "8edafb75d54748dba0fe10f530ee3cdb",
    "watch.dropped": "3d4da7ed133b48d4a14c0b01116df434",
    "watch.units": "b1f0d4c2a7e34f5c9d8e6a3b2c1f0e97",
    "install": "7fb5afc16ed64ca0b4de33d6b0ed2b51",
    "rollout.advanced": "71dcd58f173940f28b3e8546cd6e0675",
    "rollout.waiting": "271befd636b14ca4a24557fade8dbed9",
    "rollout.halted": "2ff1b8eef2ba4a8f881153f4caef7db2",
    "rollout.paused": "7c89b95133984ad4a1b0d38d7255b857",
    "rollout.resumed": "7b51d28b1ea5491eb2c49ad862e706d3",
}

# Fields journald and its tools already give a meaning; event() keeps these names as is.
# fmt: off
KNOWN_FIELDS = frozenset({
    "MESSAGE", "MESSAGE_ID", "PRIORITY", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "ERRNO",
    "INVOCATION_ID", "USER_INVOCATION_ID", "UNIT", "USER_UNIT", "UNIT_RESULT", "EXIT_CODE",
    "EXIT_STATUS", "OBJECT_PID", "SYSLOG_FACILITY", "SYSLOG_IDENTIFIER", "SYSLOG_PID",
    "SYSLOG_TIMESTAMP", "DOCUMENTATION", "TID",
})
# fmt: on

MAX_KEY_LENGTH = 64
_KEY_SEPARATORS = str.maketrans("-. ", "___")
_KEY_ALLOWED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")

logging.addLevelName(NOTICE, "NOTICE")


def message_id(event: str) -> str:
    """The fixed MESSAGE_ID of an event kind; KeyError for a kind nobody registered."""
    return EVENTS[event]


# -- encoding (pure) -------------------------------------------------------------------------


def normalise_key(name: str) -> str:
    """A journal field name: upper case A-Z0-9_, no leading ``_`` (journald drops those).

    ``reconciler-event`` -> ``RECONCILER_EVENT``. Raises ValueError for names that cannot
    be made valid (empty, other characters, a leading digit, longer than 64).
    """
    key = name.translate(_KEY_SEPARATORS).upper().lstrip("_")
    if not key or not set(key) <= _KEY_ALLOWED or key[0].isdigit() or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"cannot use {name!r} as a journal field name")
    return key


def value_bytes(value: object) -> bytes:
    """A field value as bytes: str as UTF-8, bytes as is, bools as true/false."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, bool):
        return b"true" if value else b"false"
    return str(value).encode("utf-8", "surrogateescape")


def encode_field(key: str, value: object) -> bytes:
    """One field in the native protocol; the binary form when the value has a new line."""
    name = normalise_key(key).encode("ascii")
    data = value_bytes(value)
    if b"\n" in data:
        return name + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name + b"=" + data + b"\n"


def encode_entry(fields: Mapping[str, object]) -> bytes:
    """A whole entry (one datagram); fields whose value is None are left out."""
    return b"".join(encode_field(k, v) for k, v in fields.items() if v is not None)


def field_name(name: str) -> str:
    """The name event() uses for an extra field: ``RECONCILER_`` + name unless journald knows it."""
    key = normalise_key(name)
    if key in KNOWN_FIELDS or key.startswith("RECONCILER_"):
        return key
    return normalise_key(f"RECONCILER_{key}")


def priority_of(levelno: int) -> int:
    """A logging level as a syslog priority (0 emerg .. 7 debug)."""
    for floor, priority in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4)):
        if levelno >= floor:
            return priority
    return 5 if levelno >= NOTICE else 6 if levelno >= logging.INFO else 7


def level_of(priority: int) -> int:
    """A syslog priority as a logging level (the inverse of priority_of)."""
    levels = (logging.ERROR, logging.WARNING, NOTICE, logging.INFO)
    return logging.CRITICAL if priority <= 2 else levels[priority - 3] if priority <= 6 else 10


# -- transport --------------------------------------------------------------------------------

_lock = threading.Lock()
_socket: socket.socket | None = None


def socket_path() -> str:
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def available() -> bool:
    """Whether a journald socket is there to write to."""
    try:
        return stat.S_ISSOCK(os.stat(socket_path()).st_mode)
    except OSError:
        return False


def _shared_socket() -> socket.socket:
    global _socket
    with _lock:
        if _socket is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", SEND_TIMEOUT_SEC, 0)
            )
            _socket = sock
            atexit.register(sock.close)
        return _socket


def send_payload(payload: bytes) -> str | None:
    """Deliver one encoded entry: ``"datagram"``, ``"memfd"``, or None if it could not be."""
    path = socket_path()
    sock = _shared_socket()
    try:
        sock.sendto(payload, path)
        return "datagram"
    except OSError as exc:
        # EMSGSIZE: bigger than a datagram may be; ENOBUFS: the kernel could not allocate
        # one that big right now. Either way a sealed memfd carries it, as sd_journal_send does.
        big = exc.errno == errno.EMSGSIZE or (exc.errno == errno.ENOBUFS and len(payload) > 4096)
        if not big:
            return None
    return _send_memfd(sock, payload, path)


def _send_memfd(sock: socket.socket, payload: bytes, path: str) -> str | None:
    try:
        fd = os.memfd_create("reconciler-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError:
        return None
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
        sock.sendmsg([], rights, 0, path)
        return "memfd"
    except OSError:
        return None
    finally:
        os.close(fd)


def send(message: str, *, priority: int = 6, **fields: object) -> bool:
    """Write one entry straight to journald; False when journald is not there."""
    entry: dict[str, object] = {"MESSAGE": message, "PRIORITY": priority}
    entry["SYSLOG_IDENTIFIER"] = IDENTIFIER
    entry.update((normalise_key(k), v) for k, v in fields.items())
    return send_payload(encode_entry(entry)) is not None


# -- logging integration ----------------------------------------------------------------------


def _record_fields(record: logging.LogRecord) -> Mapping[str, object]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


class JournalHandler(logging.Handler):
    """Writes each record as a journal entry; ``extra={"fields": {...}}`` become fields.

    MESSAGE stays the one-line message; an exception goes to RECONCILER_EXCEPTION (one
    line) and RECONCILER_TRACEBACK (multi-line). An entry journald refuses goes to stderr
    when ``fallback`` is set, so an operator message is never lost silently.
    """

    def __init__(self, level: int = logging.NOTSET, *, fallback: bool = True) -> None:
        super().__init__(level)
        self.fallback = fallback

    def entry(self, record: logging.LogRecord) -> dict[str, object]:
        entry: dict[str, object] = {
            "MESSAGE": record.getMessage(),
            "PRIORITY": priority_of(record.levelno),
            "SYSLOG_IDENTIFIER": IDENTIFIER,
            "CODE_FILE": record.pathname,
            "CODE_LINE": record.lineno,
            "CODE_FUNC": record.funcName,
            "RECONCILER_LOGGER": record.name,
        }
        entry.update((normalise_key(k), v) for k, v in _record_fields(record).items())
        if "RECONCILER_EVENT" not in entry:  # a plain log line: a kind too, as every entry
            given = entry.get("MESSAGE_ID")
            kinds = [k for k, v in EVENTS.items() if v == given] if given else []
            entry["RECONCILER_EVENT"] = kinds[0] if kinds else "log"
            entry.setdefault("MESSAGE_ID", EVENTS["log"])
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            entry["RECONCILER_EXCEPTION"] = f"{type(exc).__name__}: {exc}"
            entry["RECONCILER_TRACEBACK"] = "".join(traceback.format_exception(exc)).rstrip()
        if record.stack_info:
            entry["RECONCILER_STACK"] = record.stack_info
        return entry

    def emit(self, record: logging.LogRecord) -> None:
        try:
            delivered = send_payload(encode_entry(self.entry(record))) is not None
            if delivered:
                _delivered.append(record.getMessage())
            elif self.fallback:
                sys.stderr.write(HumanFormatter(timestamps=True).format(record) + "\n")
        except Exception:
            self.handleError(record)


class HumanFormatter(logging.Formatter):
    """One readable line: ``warning: message (unit web.service, revision 1a2b3c4d5e6f)``."""

    def __init__(self, *, timestamps: bool, verbose: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        fields = _record_fields(record)
        context = []
        if fields.get("UNIT"):
            context.append(f"unit {fields['UNIT']}")
        if fields.get("RECONCILER_REVISION"):
            context.append(f"revision {str(fields['RECONCILER_REVISION'])[:12]}")
        line = record.getMessage() + (f" ({', '.join(context)})" if context else "")
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if self.verbose:
                line += "\n" + "".join(traceback.format_exception(exc)).rstrip()
            else:
                line += f" [{type(exc).__name__}: {exc}]"
        if self.timestamps:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
            return f"{stamp} {record.levelname} {record.name}: {line}"
        return line if record.levelno < NOTICE else f"{record.levelname.lower()}: {line}"


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest swaps it per test)."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "echo", True) is False:
            return  # the command prints this itself (its error line, a job's summary)
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def stderr_is_journal(journal_stream: str | None, fd: int) -> bool:
    """Whether ``fd`` is the stream systemd connected to the journal (``$JOURNAL_STREAM``)."""
    if not journal_stream:
        return False
    try:
        dev, ino = (int(part) for part in journal_stream.split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


_delivered: collections.deque[str] = collections.deque(maxlen=256)  # this process's entries


def logged_natively(text: str, stream: TextIO, *, part: bool = False) -> bool:
    """Whether writing ``text`` to ``stream`` would log it twice: ``stream`` is the one systemd
    connects to the journal (``$JOURNAL_STREAM``) and an entry this process delivered through
    the native protocol is the text (``part``: holds it) already (``journalctl -u`` showed
    every line of an installed sync twice: as ``reconciler[PID]`` and as ``python[PID]``)."""
    text = text.strip()
    if not text:
        return False
    if not any((text in m) if part else (text == m.strip()) for m in _delivered):
        return False
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return stderr_is_journal(os.environ.get("JOURNAL_STREAM"), fd)


def _stderr_state() -> tuple[bool, bool]:
    """(stderr is a terminal, stderr already goes to the journal)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return False, False
    return os.isatty(fd), stderr_is_journal(os.environ.get("JOURNAL_STREAM"), fd)


_installed: list[logging.Handler] = []
_set_up_for = [False]  # whether journald was reachable when setup() last ran


def setup(verbose: bool = False) -> None:
    """Configure the ``reconciler`` logger; calling it again replaces what it set up.

    journald reachable: structured entries, plus a human mirror on stderr when stderr is
    a terminal (never when stderr already goes to the journal: that would log twice).
    No journald: plain timestamped lines on stderr.
    """
    logger = logging.getLogger(LOGGER)
    level = logging.DEBUG if verbose else logging.INFO
    reset()
    with _lock:
        tty, to_journal = _stderr_state()
        _set_up_for[0] = available()
        if _set_up_for[0]:
            mirror = tty and not to_journal
            _installed.append(JournalHandler(level, fallback=not mirror))
            if mirror:
                _installed.append(_stderr_handler(level, timestamps=False, verbose=verbose))
        else:
            _installed.append(_stderr_handler(level, timestamps=not tty, verbose=verbose))
        for handler in _installed:
            logger.addHandler(handler)
        logger.setLevel(level)


def reset() -> None:
    """Remove what setup() installed (for tests, and before a daemon re-execs)."""
    logger = logging.getLogger(LOGGER)
    with _lock:
        for handler in _installed:
            logger.removeHandler(handler)
        _installed.clear()


def _stderr_handler(level: int, *, timestamps: bool, verbose: bool) -> logging.Handler:
    handler = _StderrHandler(level)
    handler.setFormatter(HumanFormatter(timestamps=timestamps, verbose=verbose))
    return handler


def event(
    event: str,
    message: str,
    *,
    priority: int = 6,
    unit: str | None = None,
    revision: str | None = None,
    echo: bool = True,
    **fields: object,
) -> None:
    """Log one event: RECONCILER_EVENT, its MESSAGE_ID, UNIT, RECONCILER_REVISION, fields.

    ``echo=False``: journald only, never on stderr, because the command reports it itself
    (a failed sync's error line; a job's summary): one line, not the same line twice.

    Extra fields are named ``RECONCILER_<NAME>`` unless journald knows the name (ERRNO,
    INVOCATION_ID, ...). Goes through the ``reconciler`` logger (set up on first use).
    """
    entry: dict[str, object] = {
        "RECONCILER_EVENT": event,
        "MESSAGE_ID": message_id(event),
        "PRIORITY": priority,
        "UNIT": unit,
        "RECONCILER_REVISION": revision,
    }
    entry.update((field_name(k), v) for k, v in fields.items())
    if not _installed or _set_up_for[0] != available():
        setup()  # first use, or journald came or went (e.g. $RECONCILER_JOURNAL_SOCKET changed)
    logger = logging.getLogger(LOGGER)
    logger.log(level_of(priority), message, extra={"fields": entry, "echo": echo}, stacklevel=2)
