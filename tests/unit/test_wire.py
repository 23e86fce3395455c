"""The D-Bus codec (systemd/wire.py) against jeepney, the reference implementation: the
bytes of every call it builds are jeepney's, byte for byte, and what jeepney serialises
parses back to the same values."""

from __future__ import annotations

import pytest
from jeepney import DBusAddress, new_method_call
from jeepney.low_level import Message, Parser

from reconciler.systemd import wire
from reconciler.systemd.client import unit_path

P = "/org/freedesktop/systemd1/unit/"

CALLS = [
    ("/org/freedesktop/systemd1", wire.MANAGER, "Subscribe", "", ()),
    ("/org/freedesktop/systemd1", wire.MANAGER, "StartUnit", "ss", ("a.service", "replace")),
    (
        "/org/freedesktop/systemd1",
        wire.MANAGER,
        "EnableUnitFiles",
        "asbb",
        (["a.service", "b.timer"], False, True),
    ),
    (
        "/x/y",
        "a.b",
        "M",
        "a{sv}(ti)ayv",
        ({"k": ("s", "v"), "n": ("u", 3)}, (5, -2), b"\1", ("t", 9)),
    ),
]


@pytest.mark.parametrize(("path", "interface", "member", "sig", "body"), CALLS)
def test_build_call_matches_jeepney(
    path: str, interface: str, member: str, sig: str, body: tuple[object, ...]
) -> None:
    address = DBusAddress(path, bus_name=wire.SYSTEMD, interface=interface)
    expected = new_method_call(address, member, sig or None, body).serialise(serial=42)
    assert wire.build_call(42, path, interface, member, sig, body) == expected


@pytest.mark.parametrize(("path", "interface", "member", "sig", "body"), CALLS)
def test_split_frames_parses_what_jeepney_serialises(
    path: str, interface: str, member: str, sig: str, body: tuple[object, ...]
) -> None:
    address = DBusAddress(path, bus_name=wire.SYSTEMD, interface=interface)
    raw = new_method_call(address, member, sig or None, body).serialise(serial=9)
    (msg,) = wire.split_frames(bytearray(raw))
    parser = Parser()
    parser.add_data(raw)
    reference = parser.get_next_message()
    assert isinstance(reference, Message)
    assert (msg.serial, msg.path, msg.member) == (9, path, member)
    assert msg.body() == _unwrap(sig, reference.body)


def _unwrap(sig: str, value: object) -> object:
    """jeepney keeps variants as (signature, value); the codec unwraps them."""
    if sig == "v":
        assert isinstance(value, tuple)
        return _unwrap(value[0], value[1])
    if isinstance(value, tuple) and sig.startswith("("):
        return tuple(_unwrap(s, v) for s, v in zip(_split(sig[1:-1]), value, strict=True))
    if isinstance(value, tuple):  # the body
        return tuple(_unwrap(s, v) for s, v in zip(_split(sig), value, strict=True))
    if isinstance(value, dict):
        inner = _split(sig[2:-1])
        return {_unwrap(inner[0], k): _unwrap(inner[1], v) for k, v in value.items()}
    if isinstance(value, list) and sig.startswith("a"):
        return [_unwrap(sig[1:], v) for v in value]
    return value


def _split(sig: str) -> list[str]:
    """A signature's complete types: ``a{sv}(ti)ayv`` -> ``a{sv}``, ``(ti)``, ``ay``, ``v``."""
    out, i = [], 0
    while i < len(sig):
        j, depth = i, 0
        while True:
            c = sig[j]
            depth += c in "({"
            depth -= c in ")}"
            j += 1
            if depth == 0 and c != "a":
                break
        out.append(sig[i:j])
        i = j
    return out


@pytest.mark.parametrize("stem", ["a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "x-y"])
def test_build_get_matches_build_call(stem: str) -> None:
    # every padding of the path field (built per call, not cached)
    path = unit_path(f"avahi-daemon{stem}.service")
    expected = wire.build_call(7, path, wire.PROPERTIES, "Get", "ss", (wire.SERVICE, "NRestarts"))
    assert wire.build_get(7, path, wire.SERVICE, "NRestarts") == expected


def test_split_frames_parses_and_keeps_partial_rest() -> None:
    one = wire.build_call(1, "/p", "a.b", "M", "sa{sv}", ("x", {"k": ("ay", b"\xab")}))
    two = wire.build_call(2, "/q", "a.b", "N", "", ())
    buf = bytearray(one + two + two[:10])
    msgs = wire.split_frames(buf)
    assert [(m.serial, m.path, m.member) for m in msgs] == [(1, "/p", "M"), (2, "/q", "N")]
    assert msgs[0].body() == ("x", {"k": b"\xab"})  # variants come unwrapped
    assert bytes(buf) == two[:10]  # the partial message waits for more bytes


def test_match_rule_serialises_and_matches() -> None:
    rule = wire.MatchRule(wire.PROPERTIES, "PropertiesChanged", path_namespace=P[:-1])
    assert rule.serialise() == (
        "type='signal',interface='org.freedesktop.DBus.Properties',"
        "member='PropertiesChanged',path_namespace='/org/freedesktop/systemd1/unit'"
    )
    call = wire.split_frames(bytearray(wire.build_call(1, P + "x", wire.PROPERTIES, "Get")))[0]
    assert not rule.matches(call)  # a method call, not a signal


VARIANTS = [
    ("s", "exit-code"),
    ("o", "/org/freedesktop/systemd1/job/7"),
    ("b", True),
    ("b", False),
    ("i", -3),
    ("u", 7),
    ("x", -(2**40)),
    ("t", 2**64 - 1),
    ("d", 1.5),
    ("y", 7),
    ("n", -2),
    ("ay", bytes(range(16))),
    ("ay", b""),
    ("as", ["a", "b"]),
    ("a(sb)", [("x", True)]),
]


@pytest.mark.parametrize(("sig", "value"), VARIANTS)
def test_variant_value_fast_path_agrees_with_the_parser(sig: str, value: object) -> None:
    raw = wire.build_call(3, "/p", "a.b", "M", "v", ((sig, value),))
    (msg,) = wire.split_frames(bytearray(raw))
    assert msg.value() == value == msg.body()[0]


def test_read_units_states_are_shared_strings_with_the_same_values() -> None:
    from reconciler.systemd.properties import live_value, parse_unit_infos

    def fresh(word: str) -> str:  # a string of its own, as a decoded reply holds it
        return "".join(list(word))

    rows = [
        (f"u{i}.service", "", fresh("loaded"), fresh("active"), fresh("running"), "", "/", 0)
        for i in range(2)
    ]
    first, second = parse_unit_infos(rows)
    assert (first.load_state, first.active_state, first.sub_state) == (
        "loaded",
        "active",
        "running",
    )
    assert first.active_state is second.active_state and first.sub_state is second.sub_state
    assert live_value("result", fresh("exit-code")) is live_value("result", fresh("exit-code"))
    assert live_value("result", fresh("success")) == "success"
    assert live_value("n_restarts", 3) == 3
    assert live_value("invocation_id", bytes(range(16))) == bytes(range(16)).hex()
    assert live_value("memory_current", 2**64 - 1) is None


def test_unit_rows_read_in_place_equal_the_parser() -> None:
    rows = [
        (f"u{i}.service", "desc ü" * i, "loaded", "active", "running", "", f"/o/u{i}", i,
         "start" if i % 2 else "", "/" if i % 2 else "/j")
        for i in range(5)
    ]  # fmt: skip
    raw = wire.build_call(3, "/p", "a.b", "M", wire.UNIT_ROWS, (rows,))
    (msg,) = wire.split_frames(bytearray(raw))
    assert msg.unit_states() == [(r[0], r[2], r[3], r[4]) for r in msg.body()[0]]  # type: ignore[attr-defined]
    assert len(msg.unit_states()) == 5
    empty = wire.build_call(4, "/p", "a.b", "M", wire.UNIT_ROWS, ([],))
    assert wire.split_frames(bytearray(empty))[0].unit_states() == []
