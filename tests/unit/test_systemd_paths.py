"""Unit names and object paths, as plain data (no systemd needed); the codec: test_wire.py."""

from __future__ import annotations

import pytest

from reconciler.errors import SystemdError
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
