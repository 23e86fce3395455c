"""watchwire.read_changed against the full parser, on PropertiesChanged bodies of every shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import pytest

from reconciler.systemd.connection import Connection
from reconciler.systemd.signals import LookStream, read_changed, skip
from reconciler.systemd.wire import (
    MatchRule,
    Message,
    build_call,
    split_frames,
    unit_path,
    unmarshal,
)

WANTED = frozenset({b"ActiveState", b"SubState", b"InvocationID", b"NRestarts", b"Job"})
SPOOF = "\x0b\x00\x00\x00ActiveState\x00\x01s\x00\x06\x00\x00\x00active\x00"


def signal(
    props: dict[str, tuple[str, object]], invalidated: list[str], unit: str = "x.service"
) -> Message:
    data = build_call(
        7,
        unit_path(unit),
        "org.freedesktop.DBus.Properties",
        "PropertiesChanged",
        "sa{sv}as",
        ("org.freedesktop.systemd1.Service", props, invalidated),
    )
    (msg,) = split_frames(bytearray(data))
    return msg


CASES = {
    "unit": {
        "ActiveState": ("s", "failed"),
        "FreezerState": ("s", "running"),
        "SubState": ("s", "failed"),
        "StateChangeTimestamp": ("t", 1795309048170327),
        "Job": ("(uo)", (0, "/")),
        "ConditionResult": ("b", True),
        "InvocationID": ("ay", bytes(range(16))),
        "ActivationDetails": ("a(ss)", [("trigger_unit", "x.timer")]),
    },
    "service": {
        "MainPID": ("u", 0),
        "StatusText": ("s", SPOOF),  # a service's own text must not pass for a property
        "StatusErrno": ("i", -5),
        "NRestarts": ("u", 3),
        "ExecMainExitTimestamp": ("t", 2**64 - 1),
        "Nice": ("i", -10),
        "CPUWeight": ("t", 100),
        "Percent": ("d", 0.5),
        "Short": ("n", -2),
        "Byte": ("y", 9),
        "Nested": ("v", ("as", ["a", "bb"])),
        "Env": ("a{sv}", {"A": ("s", "1"), "B": ("u", 2)}),
        "Sig": ("g", "a{sv}"),
        "Paths": ("ao", ["/a", "/b/c"]),
        "Exec": ("a(sasbttttuii)", [("/bin/x", ["x", "-y"], False, 1, 2, 3, 4, 5, 6, 7)]),
    },
    "empty": {},
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("wanted", [WANTED, frozenset(), frozenset({b"Exec", b"Env"})])
def test_read_changed_matches_the_full_parser(name: str, wanted: frozenset[bytes]) -> None:
    msg = signal(CASES[name], ["ExecStart", "ExecStartPre"])
    interface, changed, _invalidated = msg.body()
    got = read_changed(msg, wanted)
    expected = {k: v for k, v in changed.items() if k.encode() in wanted}  # type: ignore[attr-defined]
    assert got == (interface, expected)


def test_spoofed_property_in_a_string_is_not_read() -> None:
    msg = signal(CASES["service"], [])
    assert read_changed(msg, WANTED)[1] == {"NRestarts": 3}


@pytest.mark.parametrize(
    ("sig", "value"),
    [("u", 1), ("t", 5), ("s", "abc"), ("as", ["a", "b"]), ("(uo)", (1, "/j")), ("v", ("u", 3))],
)
def test_skip_lands_where_the_parser_does(sig: str, value: object) -> None:
    msg = signal({"K": (sig, value)}, [])
    start = msg.data.index(b"K\x00") + 2
    inner = msg.data[start + 1 : start + 1 + msg.data[start]].decode()
    after_sig = start + 2 + msg.data[start]
    assert inner == sig
    parsed, end = unmarshal(msg.data, after_sig, sig, "<")
    assert parsed == (value[1] if sig == "v" else value)  # type: ignore[index]
    assert skip(msg.data, after_sig, sig, "<") == end


def test_names_and_string_values_are_shared_between_signals() -> None:
    first = read_changed(signal(CASES["unit"], []), WANTED)
    second = read_changed(signal(CASES["unit"], []), WANTED)
    assert first == second
    assert first[0] is second[0]
    for (k1, v1), (k2, v2) in zip(first[1].items(), second[1].items(), strict=True):
        assert k1 is k2
        if isinstance(v1, str):
            assert v1 is v2


class _Listened:
    """A connection as a stream uses it: the test hands it signals, routed by path."""

    def __init__(self) -> None:
        self.listeners: list[tuple[MatchRule, Callable[[Message], None]]] = []

    def listen(self, rule: MatchRule, sink: Callable[[Message], None]) -> int:
        self.listeners.append((rule, sink))
        return len(self.listeners)

    def unlisten(self, _rule: MatchRule, _key: int) -> None:
        pass

    def offer(self, msg: Message) -> None:
        for rule, sink in self.listeners:
            if rule.path in (None, "", msg.path):
                sink(msg)


@pytest.mark.parametrize("count", [3, 30])  # a match rule per unit; one for all, filtered
def test_a_stream_names_the_watched_units_with_the_callers_strings(count: int) -> None:
    names = [f"web-{i}@x-y.service" for i in range(count)]  # escaped in their paths
    conn = _Listened()
    stream = LookStream(cast(Connection, conn), names, 16, ["ActiveState"])
    for unit in (names[1], "other.service", names[-1]):
        conn.offer(signal(CASES["unit"], [], unit))
    taken = [stream.next_change(0) for _ in range(stream.depth)]
    assert [c.unit if c else None for c in taken] == [names[1], names[-1]]
    assert taken[0] is not None and taken[0].unit is names[1]  # not a string of its own
