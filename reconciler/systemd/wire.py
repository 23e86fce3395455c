"""D-Bus messages for systemd, built and parsed (pure: sans-I/O, no sockets, no clock).

``dbus_socket.py`` owns the socket; this module turns calls into bytes and bytes into
messages. jeepney costs ~26-31 us per message to build or to parse (a ``Get``: ~58 us
both ways, against ~3 us here; ``python -m bench.bench_wire``), which adds up over the
monitor's thousands of ``Get`` calls for 1,000 units, so the wire format (little-endian
out, either endianness in) is written out here, checked byte for byte against jeepney in
tests/unit/test_wire.py, and jeepney is used for authentication only. Variants are
unwrapped on parsing: a ``Get`` reply is the plain value, ``GetAll`` a plain ``dict``.
Unit names and object paths live here too, so the pure core can validate names without
importing any D-Bus machinery.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

from reconciler.errors import SystemdError

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit/"

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
NO_REPLY_EXPECTED = 0x1

UNIT_TYPES = frozenset(
    {"service", "socket", "target", "device", "mount", "automount", "swap", "timer", "path"}
    | {"slice", "scope"}
)
UNIT_NAME_MAX = 255
_NAME_CHARS = re.compile(r"[A-Za-z0-9:_.\\-]*")
_INSTANCE_CHARS = re.compile(r"[A-Za-z0-9:_.\\@-]*")
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_DIGITS = frozenset(b"0123456789")
_ESCAPED = [chr(b) if b in _PLAIN else f"_{b:02x}" for b in range(256)]


def unit_path(name: str) -> str:
    """The object path of a unit, escaped as systemd's ``bus_label_escape`` does."""
    raw = name.encode()
    if not raw:
        return UNIT_PATH_PREFIX + "_"
    head = f"_{raw[0]:02x}" if raw[0] in _DIGITS else _ESCAPED[raw[0]]
    return UNIT_PATH_PREFIX + head + "".join(map(_ESCAPED.__getitem__, raw[1:]))


def unit_name_from_path(path: str) -> str:
    """The unit name an object path stands for (the inverse of :func:`unit_path`)."""
    if not path.startswith(UNIT_PATH_PREFIX):
        raise ValueError(f"not a systemd unit object path: {path!r}")
    label = path[len(UNIT_PATH_PREFIX) :]
    if label == "_":
        return ""
    out = bytearray()
    i = 0
    while i < len(label):
        if label[i] == "_":
            out.append(int(label[i + 1 : i + 3], 16))
            i += 3
        else:
            out += label[i].encode()
            i += 1
    return out.decode()


def check_unit_name(name: str) -> None:
    """Raise SystemdError if systemd would refuse ``name`` (``unit_name_is_valid``)."""

    def refuse(cause: str) -> SystemdError:
        return SystemdError(
            f"invalid unit name {name!r}: {cause}",
            "unit names use letters, digits and ':-_.\\@' and end in a unit type "
            "such as .service or .timer",
        )

    if not name:
        raise refuse("empty")
    if len(name) > UNIT_NAME_MAX:
        raise refuse(f"longer than {UNIT_NAME_MAX} characters")
    if "/" in name:
        raise refuse("contains '/'")
    stem, dot, suffix = name.rpartition(".")
    if not dot or suffix not in UNIT_TYPES:
        raise refuse(f"unknown unit type {('.' + suffix) if dot else '(no suffix)'!r}")
    prefix, at, instance = stem.partition("@")
    if not prefix:
        raise refuse("empty name before the unit type" if not at else "empty name before '@'")
    bad = _first_bad(prefix, _NAME_CHARS) or (_first_bad(instance, _INSTANCE_CHARS) if at else "")
    if bad:
        raise refuse(f"character {bad!r} not allowed")


def _first_bad(text: str, allowed: re.Pattern[str]) -> str:
    match = allowed.match(text)
    end = match.end() if match else 0
    return text[end] if end < len(text) else ""


# -- marshalling ------------------------------------------------------------------------

_ALIGN = {"y": 1, "g": 1, "v": 1, "n": 2, "q": 2, "(": 8, "{": 8, "x": 8, "t": 8, "d": 8}
_FIXED = {"n": "h", "q": "H", "i": "i", "u": "I", "b": "I", "h": "I", "x": "q", "t": "Q", "d": "d"}
_U32 = {"<": struct.Struct("<I"), ">": struct.Struct(">I")}
_FIXED_STRUCTS = {(e, c): struct.Struct(e + f) for e in "<>" for c, f in _FIXED.items()}


@lru_cache(maxsize=256)
def split_signature(sig: str) -> tuple[str, ...]:
    """``"a{sv}as"`` -> ``("a{sv}", "as")``: the complete types of a signature."""
    types, i = [], 0
    while i < len(sig):
        j = _type_end(sig, i)
        types.append(sig[i:j])
        i = j
    return tuple(types)


def _type_end(sig: str, i: int) -> int:
    c = sig[i]
    if c == "a":
        return _type_end(sig, i + 1)
    if c in "({":
        close = ")" if c == "(" else "}"
        i += 1
        while sig[i] != close:
            i = _type_end(sig, i)
        return i + 1
    if c not in _ALIGN and c not in _FIXED and c not in "so":
        raise ValueError(f"bad D-Bus signature {sig!r}")
    return i + 1


def _pad(buf: bytearray, align: int) -> None:
    buf += b"\0" * (-len(buf) % align)


def marshal(buf: bytearray, sig: str, value: object) -> None:
    """Append one value of complete type ``sig`` (little-endian). Variants are (sig, value)."""
    c = sig[0]
    if c in _FIXED:
        _pad(buf, _ALIGN.get(c, 4))
        buf += _FIXED_STRUCTS["<", c].pack(value)
    elif c == "y":
        buf.append(value)  # type: ignore[arg-type]
    elif c in "so":
        data = str(value).encode()
        _pad(buf, 4)
        buf += _U32["<"].pack(len(data)) + data + b"\0"
    elif c == "g":
        data = str(value).encode()
        buf += bytes([len(data)]) + data + b"\0"
    elif c == "v":
        inner, inner_value = cast(tuple[str, object], value)
        marshal(buf, "g", inner)
        marshal(buf, inner, inner_value)
    elif c == "a":
        _pad(buf, 4)
        at = len(buf)
        buf += b"\0\0\0\0"
        elem = sig[1:]
        _pad(buf, _ALIGN.get(elem[0], 4))
        start = len(buf)
        if elem == "y":
            buf += bytes(value)  # type: ignore[call-overload]
        elif elem[0] == "{":
            key_sig, value_sig = split_signature(elem[1:-1])
            for k, v in value.items():  # type: ignore[attr-defined]
                _pad(buf, 8)
                marshal(buf, key_sig, k)
                marshal(buf, value_sig, v)
        else:
            for item in value:  # type: ignore[attr-defined]
                marshal(buf, elem, item)
        buf[at : at + 4] = _U32["<"].pack(len(buf) - start)
    elif c == "(":
        _pad(buf, 8)
        for member_sig, member in zip(split_signature(sig[1:-1]), value, strict=True):  # type: ignore[call-overload]
            marshal(buf, member_sig, member)
    else:
        raise ValueError(f"cannot marshal D-Bus type {sig!r}")


def unmarshal(buf: bytes, pos: int, sig: str, endian: str = "<") -> tuple[object, int]:
    """Read one value of complete type ``sig`` at ``pos``; returns (value, next position)."""
    c = sig[0]
    if c in "so":
        pos += -pos % 4
        (n,) = _U32[endian].unpack_from(buf, pos)
        return buf[pos + 4 : pos + 4 + n].decode(), pos + 5 + n
    if c in _FIXED:
        align = _ALIGN.get(c, 4)
        pos += -pos % align
        (v,) = _FIXED_STRUCTS[endian, c].unpack_from(buf, pos)
        return (bool(v) if c == "b" else v), pos + _FIXED_STRUCTS[endian, c].size
    if c == "y":
        return buf[pos], pos + 1
    if c == "g":
        n = buf[pos]
        return buf[pos + 1 : pos + 1 + n].decode(), pos + 2 + n
    if c == "v":
        n = buf[pos]
        inner = buf[pos + 1 : pos + 1 + n].decode()
        return unmarshal(buf, pos + 2 + n, inner, endian)
    if c == "a":
        pos += -pos % 4
        (n,) = _U32[endian].unpack_from(buf, pos)
        pos += 4
        elem = sig[1:]
        pos += -pos % _ALIGN.get(elem[0], 4)
        end = pos + n
        if elem == "y":
            return bytes(buf[pos:end]), end
        if elem[0] == "{":
            key_sig, value_sig = split_signature(elem[1:-1])
            result: dict[object, object] = {}
            while pos < end:
                pos += -pos % 8
                k, pos = unmarshal(buf, pos, key_sig, endian)
                result[k], pos = unmarshal(buf, pos, value_sig, endian)
            return result, end
        items = []
        while pos < end:
            item, pos = unmarshal(buf, pos, elem, endian)
            items.append(item)
        return items, end
    if c == "(":
        pos += -pos % 8
        members = []
        for member_sig in split_signature(sig[1:-1]):
            member, pos = unmarshal(buf, pos, member_sig, endian)
            members.append(member)
        return tuple(members), pos
    raise ValueError(f"cannot unmarshal D-Bus type {sig!r}")


# -- messages ---------------------------------------------------------------------------

_FIELD_PATH, _FIELD_INTERFACE, _FIELD_MEMBER, _FIELD_ERROR_NAME = 1, 2, 3, 4
_FIELD_REPLY_SERIAL, _FIELD_DESTINATION, _FIELD_SENDER, _FIELD_SIGNATURE = 5, 6, 7, 8
_PREAMBLE = struct.Struct("<cBBBII")


def _field(code: int, sig: str, text: str) -> bytes:
    """One header field (a ``(yv)`` struct) holding a string, without trailing padding."""
    buf = bytearray((code, 1, ord(sig), 0))
    marshal(buf, sig, text)
    return bytes(buf)


def _pad8(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 8)


@lru_cache(maxsize=4096)
def _fields_prefix(path: str, interface: str, member: str, destination: str) -> tuple[bytes, int]:
    """The padded header fields of a call, and their length without the final padding."""
    fields = [
        _field(code, "o" if code == _FIELD_PATH else "s", text)
        for code, text in (
            (_FIELD_PATH, path),
            (_FIELD_INTERFACE, interface),
            (_FIELD_MEMBER, member),
            (_FIELD_DESTINATION, destination),
        )
        if text
    ]
    padded = b"".join(_pad8(f) for f in fields)
    return padded, len(padded) - (-len(fields[-1]) % 8)


def build_call(
    serial: int,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: Sequence[object] = (),
    *,
    destination: str = SYSTEMD,
    no_reply: bool = False,
) -> bytes:
    """A method call message as bytes."""
    buf = bytearray()
    for sig, value in zip(split_signature(signature), body, strict=True):
        marshal(buf, sig, value)
    prefix, prefix_len = _fields_prefix(path, interface, member, destination)
    if signature:
        sig_field = _field(_FIELD_SIGNATURE, "g", signature)
        fields, fields_len = _pad8(prefix + sig_field), len(prefix) + len(sig_field)
    else:
        fields, fields_len = prefix, prefix_len
    flags = NO_REPLY_EXPECTED if no_reply else 0
    head = _PREAMBLE.pack(b"l", METHOD_CALL, flags, 1, len(buf), serial)
    return head + _U32["<"].pack(fields_len) + fields + bytes(buf)


_PATH_HEAD = struct.Struct("<BBBBI")  # a path field's code, its "o" signature, the length
_ZEROS = tuple(b"\0" * n for n in range(9))


def _path_field(path: str) -> bytes:
    """The padded header field of an object path, built for each call (0.3 us): a cache of
    them held ~0.3 KB a unit for good in the watch daemon (paths, fields, cache links)."""
    raw = path.encode()
    n = len(raw)
    return b"".join((_PATH_HEAD.pack(_FIELD_PATH, 1, 0x6F, 0, n), raw, _ZEROS[1 + -(n + 9) % 8]))


@lru_cache(maxsize=1024)
def _get_body(interface: str, prop: str) -> bytes:
    buf = bytearray()
    marshal(buf, "s", interface)
    marshal(buf, "s", prop)
    return bytes(buf)


_GET_FIELDS = b"".join(
    _pad8(_field(code, sig, text))
    for code, sig, text in (
        (_FIELD_INTERFACE, "s", PROPERTIES),
        (_FIELD_MEMBER, "s", "Get"),
        (_FIELD_DESTINATION, "s", SYSTEMD),
    )
) + _field(_FIELD_SIGNATURE, "g", "ss")
_GET_FIELDS_PADDED = _pad8(_GET_FIELDS)


def build_get(serial: int, path: str, interface: str, prop: str) -> bytes:
    """``Properties.Get(interface, prop)``, the monitor's hot path, assembled from cached parts."""
    path_field = _path_field(path)
    body = _get_body(interface, prop)
    return b"".join(
        (
            _PREAMBLE.pack(b"l", METHOD_CALL, 0, 1, len(body), serial),
            _U32["<"].pack(len(path_field) + len(_GET_FIELDS)),
            path_field,
            _GET_FIELDS_PADDED,
            body,
        )
    )


@dataclass(slots=True)
class Message:
    """An incoming message: header fields parsed, body parsed on demand by :meth:`body`."""

    type: int
    serial: int
    fields: dict[int, object]
    data: bytes
    body_start: int
    endian: str

    @property
    def reply_serial(self) -> int:
        return self.fields.get(_FIELD_REPLY_SERIAL, 0)  # type: ignore[return-value]

    @property
    def signature(self) -> str:
        return self.fields.get(_FIELD_SIGNATURE, "")  # type: ignore[return-value]

    @property
    def path(self) -> str:
        return self.fields.get(_FIELD_PATH, "")  # type: ignore[return-value]

    @property
    def interface(self) -> str:
        return self.fields.get(_FIELD_INTERFACE, "")  # type: ignore[return-value]

    @property
    def member(self) -> str:
        return self.fields.get(_FIELD_MEMBER, "")  # type: ignore[return-value]

    @property
    def error_name(self) -> str:
        return self.fields.get(_FIELD_ERROR_NAME, "")  # type: ignore[return-value]

    def value(self) -> object:
        """The single value of a ``v`` reply (a ``Get``), with a fast path for basic types."""
        if self.signature != "v":
            return self.body()[0]
        data, pos = self.data, self.body_start
        kind = data[pos + 2] if data[pos] == 1 else 0  # one-letter inner signature
        if kind == 0x73 or kind == 0x6F:  # s, o
            (n,) = _U32[self.endian].unpack_from(data, pos + 4)
            return data[pos + 8 : pos + 8 + n].decode()
        if kind in _FAST_FIXED:
            (v,) = _FIXED_STRUCTS[self.endian, chr(kind)].unpack_from(data, pos + _FAST_FIXED[kind])
            return bool(v) if kind == 0x62 else v
        if data[pos : pos + 4] == b"\x02ay\0":  # bytes (an InvocationID: one a unit a pass)
            (n,) = _U32[self.endian].unpack_from(data, pos + 4)
            return data[pos + 8 : pos + 8 + n]
        return self.body()[0]

    def unit_states(self) -> list[tuple[str, str, str, str]]:
        """The rows of a ``ListUnits*`` reply (``UNIT_ROWS``) as (name, load, active, sub),
        read in place: the general parser builds all ten fields of every row (10,000
        rows: 115 -> 40 ms)."""
        if self.signature != UNIT_ROWS:
            raise ValueError(f"not a list of units: {self.signature!r}")
        data, u32 = self.data, _U32[self.endian].unpack_from
        pos = self.body_start
        (size,) = u32(data, pos)
        end = pos + 8 + size  # the array's length, then padding to its 8-aligned rows
        pos += 8
        rows = []
        while pos < end:
            pos += -pos % 8
            row = []
            for kept in _UNIT_ROW_KEPT:  # ssssssouso: strings and paths, one u (skipped)
                pos += -pos % 4
                if kept is None:
                    pos += 4
                    continue
                (n,) = u32(data, pos)
                if kept:
                    row.append(data[pos + 4 : pos + 4 + n].decode())
                pos += 5 + n
            rows.append((row[0], row[1], row[2], row[3]))
        return rows

    def body(self) -> tuple[object, ...]:
        values, pos = [], self.body_start
        for sig in split_signature(self.signature):
            value, pos = unmarshal(self.data, pos, sig, self.endian)
            values.append(value)
        return tuple(values)

    def error_text(self) -> str:
        """The human text of an error reply (its first string argument), if any."""
        if self.signature.startswith("s"):
            return str(unmarshal(self.data, self.body_start, "s", self.endian)[0])
        return ""


# A ListUnits* reply: name, description, load, active, sub, following, path, job id, type,
# path; the fields unit_states keeps (True), skips (False) and the job id (None).
UNIT_ROWS = "a(ssssssouso)"
_UNIT_ROW_KEPT = (True, False, True, True, True, False, False, None, False, False)
_HEAD = {"<": struct.Struct("<III"), ">": struct.Struct(">III")}
# Where the value of a variant with a one-letter fixed type starts, from the variant's start
# (1 byte length, letter, NUL, then padding to the type's alignment; bodies start 8-aligned).
_FAST_FIXED = {ord(c): 8 if c in "xtd" else 4 for c in "biuxtd"}


def split_frames(buf: bytearray) -> list[Message]:
    """Take every complete message off the front of ``buf`` (which is consumed)."""
    out: list[Message] = []
    data = bytes(buf)
    pos, size = 0, len(data)
    while size - pos >= 16:
        endian = "<" if data[pos] == 0x6C else ">"
        body_len, serial, fields_len = _HEAD[endian].unpack_from(data, pos + 4)
        body_start = (16 + fields_len + 7) & ~7
        total = body_start + body_len
        if size - pos < total:
            break
        frame = data[pos : pos + total]
        out.append(
            Message(
                frame[1], serial, _fields(frame, 16 + fields_len, endian), frame, body_start, endian
            )
        )
        pos += total
    del buf[:pos]
    return out


def _fields(frame: bytes, end: int, endian: str) -> dict[int, object]:
    """Header fields: (yv) structs whose variants hold one-letter types."""
    u32 = _U32[endian]
    fields: dict[int, object] = {}
    pos = 16
    while pos < end:
        pos = (pos + 7) & ~7
        code, kind = frame[pos], frame[pos + 2]
        if kind == 0x73 or kind == 0x6F:  # s, o
            n = u32.unpack_from(frame, pos + 4)[0]
            fields[code] = frame[pos + 8 : pos + 8 + n].decode()
            pos += 9 + n
        elif kind == 0x75:  # u
            fields[code] = u32.unpack_from(frame, pos + 4)[0]
            pos += 8
        elif kind == 0x67:  # g
            n = frame[pos + 4]
            fields[code] = frame[pos + 5 : pos + 5 + n].decode()
            pos += 6 + n
        else:
            fields[code], pos = unmarshal(frame, pos + 4, chr(kind), endian)
    return fields


@dataclass(frozen=True)
class MatchRule:
    """A signal match rule: sent to dbus-daemon with AddMatch, and checked locally."""

    interface: str = ""
    member: str = ""
    path: str = ""
    path_namespace: str = ""
    sender: str = ""

    def serialise(self) -> str:
        pairs = [("type", "signal")] + [
            (key, getattr(self, key))
            for key in ("sender", "interface", "member", "path", "path_namespace")
            if getattr(self, key)
        ]
        return ",".join(f"{k}='{v}'" for k, v in pairs)

    def matches(self, msg: Message) -> bool:
        if msg.type != SIGNAL:
            return False
        if self.interface and msg.interface != self.interface:
            return False
        if self.member and msg.member != self.member:
            return False
        if self.path and msg.path != self.path:
            return False
        ns = self.path_namespace
        return not ns or msg.path == ns or msg.path.startswith(ns + "/")
