"""D-Bus addresses and the SASL ``EXTERNAL`` handshake (pure: bytes in, bytes out).

Written out because importing ``jeepney.auth`` imports the whole of jeepney (23 modules,
~1.6 MB of RSS in every process that connects: the watch daemon, the sync, the monitor),
for two lines of protocol. Checked against jeepney's ``Authenticator`` and
``get_connectable_addresses`` in tests/unit/test_auth.py.
"""

from __future__ import annotations

import re

BEGIN = b"BEGIN\r\n"
MAX_LINE = 8192  # a server that says more without a line end is not a D-Bus server
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


class AuthenticationError(ValueError):
    """The server refused the handshake or answered something else."""


def socket_path(address: str) -> str:
    """The first unix socket of a D-Bus address (``unix:path=`` or ``unix:abstract=``, an
    abstract one as a path starting with NUL); ValueError when there is none."""
    for entry in address.split(";"):
        transport, _, info = entry.partition(":")
        if transport != "unix":
            continue
        keys = {}
        for pair in info.split(","):
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"not a key=value pair: {pair!r}")
            keys[key] = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value)
        if "abstract" in keys:
            return "\0" + keys["abstract"]
        if "path" in keys:
            return keys["path"]
    raise ValueError(f"no unix socket in D-Bus address {address!r}")


def external(uid: int) -> bytes:
    """The ``AUTH EXTERNAL`` line for ``uid`` (the effective one; sent after the NUL byte)."""
    return b"AUTH EXTERNAL " + str(uid).encode().hex().encode() + b"\r\n"


class Handshake:
    """The client side: feed what the server sends; ``done`` once it said ``OK``."""

    def __init__(self) -> None:
        self.buffer = b""
        self.done = False

    def feed(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE:
                raise AuthenticationError("too much data without a line end")
            return
        line, _, rest = self.buffer.partition(b"\r\n")
        if rest:
            raise AuthenticationError(f"unexpected data after {line!r}")
        if not line.startswith(b"OK "):
            raise AuthenticationError(line.decode(errors="replace"))
        self.done = True
