"""Unit names, object paths and the D-Bus wire format, as plain data (no systemd needed)."""

from __future__ import annotations

import pytest
from jeepney import DBusAddress, new_method_call

from reconciler.errors import SystemdError
from reconciler.systemd import wire
from reconciler.systemd.client import check_unit_name, unit_name_from_path, unit_path

P = "/org/freedesktop/systemd1/unit/"

PATHS = [
    ("avahi-daemon.service", P + "avahi_2ddaemon_2eservice"),
    ("dbus.service", P + "dbus_2eservice"),
    ("1password.service", P + "_31password_2eservice"),  # a leading digit is escaped
    ("a1.service", P + "a1_2eservice"),  # a digit elsewhere is not
    ("getty@tty1.service", P + "getty_40tty1_2eservice"),
    ("getty@.service", P + "getty_40_2eservice"),
    ("system-foo\\x2dbar.slice", P + "system_2dfoo_5cx2dbar_2eslice"),
    ("under_score.service", P + "under_5fscore_2eservice"),
    ("café.service", P + "caf_c3_a9_2eservice"),  # UTF-8 bytes, each escaped
    ("-.mount", P + "_2d_2emount"),
    ("", P + "_"),
]


@pytest.mark.parametrize(("name", "path"), PATHS)
def test_unit_path_escapes_like_systemd(name: str, path: str) -> None:
    assert unit_path(name) == path


@pytest.mark.parametrize(("name", "path"), PATHS)
def test_unit_name_from_path_round_trips(name: str, path: str) -> None:
    assert unit_name_from_path(path) == name
    assert unit_name_from_path(unit_path(name)) == name


def test_unit_name_from_path_refuses_other_paths() -> None:
    with pytest.raises(ValueError, match="not a systemd unit object path"):
        unit_name_from_path("/org/freedesktop/systemd1/job/12")


VALID = [
    "web.service",
    "backup.timer",
    "getty@tty1.service",
    "getty@.service",
    "user@1000.service",
    "a:b_c-d.e\\x2d.service",
    "inst@with@at.service",  # '@' is allowed in the instance part
    "x" * 247 + ".service",  # 255 characters
]


@pytest.mark.parametrize("name", VALID)
def test_valid_unit_names(name: str) -> None:
    check_unit_name(name)


INVALID = [
    ("", "empty"),
    ("web", "unknown unit type"),
    ("web.conf", "unknown unit type '.conf'"),
    (".service", "empty name"),
    ("@x.service", "empty name before '@'"),
    ("../etc/passwd.service", "contains '/'"),
    ("a/b.service", "contains '/'"),
    ("web app.service", "character ' ' not allowed"),
    ("web;rm.service", "character ';' not allowed"),
    ("caf\u00e9.service", "character 'é' not allowed"),
    ("new\nline.service", "not allowed"),
    ("x" * 248 + ".service", "longer than 255"),
]


@pytest.mark.parametrize(("name", "cause"), INVALID)
def test_invalid_unit_names(name: str, cause: str) -> None:
    with pytest.raises(SystemdError, match="invalid unit name") as info:
        check_unit_name(name)
    assert cause in info.value.message
    assert info.value.hint


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


def test_build_get_matches_build_call() -> None:
    path = unit_path("avahi-daemon.service")
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
    ("as", ["a", "b"]),
    ("a(sb)", [("x", True)]),
]


@pytest.mark.parametrize(("sig", "value"), VARIANTS)
def test_variant_value_fast_path_agrees_with_the_parser(sig: str, value: object) -> None:
    raw = wire.build_call(3, "/p", "a.b", "M", "v", ((sig, value),))
    (msg,) = wire.split_frames(bytearray(raw))
    assert msg.value() == value == msg.body()[0]
