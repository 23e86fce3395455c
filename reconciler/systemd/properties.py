"""What is read of a unit beyond its states, and how it becomes a ``LiveUnit`` (pure).

``read_units`` and ``read_for_plan`` (``client``) fetch these properties per unit kind; a
unit that never ran since it was loaded holds systemd's defaults for the runtime ones.
"""

from __future__ import annotations

import sys

from reconciler.model import LiveUnit
from reconciler.systemd.wire import SERVICE, UNIT

UINT64_MAX = 2**64 - 1  # systemd's "unknown" for counters such as MemoryCurrent
# Errors that mean "this unit has no such thing", not "systemd refused": read_units skips them.
MISSING = frozenset(
    {
        "org.freedesktop.DBus.Error.UnknownObject",
        "org.freedesktop.DBus.Error.UnknownInterface",
        "org.freedesktop.DBus.Error.UnknownProperty",
        "org.freedesktop.systemd1.NoSuchUnit",
    }
)


# What the monitor reads beyond ListUnitsByNames: (interface, property, LiveUnit field).
# "Runtime" properties only change when the unit runs; an inactive unit with no
# InvocationID has never run since it was loaded, so systemd holds their defaults.
Prop = tuple[str, str, str]
_IFACE = "org.freedesktop.systemd1."
_FILE_PROPS: tuple[Prop, ...] = (
    (UNIT, "InvocationID", "invocation_id"),
    (UNIT, "UnitFileState", "unit_file_state"),
    (UNIT, "NeedDaemonReload", "need_daemon_reload"),
)
_SERVICE_RUNTIME: tuple[Prop, ...] = (
    (SERVICE, "Result", "result"),
    (SERVICE, "NRestarts", "n_restarts"),
    (SERVICE, "ExecMainCode", "exec_main_code"),
    (SERVICE, "ExecMainStatus", "exec_main_status"),
    (SERVICE, "MemoryCurrent", "memory_current"),
)
NEVER_RAN = {
    "result": "success",
    "n_restarts": 0,
    "exec_main_code": 0,
    "exec_main_status": 0,
    "memory_current": None,
}
# Runtime properties fixed for one run in a settled state (the others, MemoryCurrent, move).
PER_RUN = frozenset({"result", "n_restarts", "exec_main_code", "exec_main_status"})
SETTLED = frozenset({("active", "running"), ("active", "exited"), ("inactive", "dead")})
_WITH_RESULT = ("socket", "mount", "swap", "timer", "path", "automount", "scope")


def monitor_properties(name: str) -> tuple[tuple[Prop, ...], tuple[Prop, ...]]:
    """(file-level, runtime) properties ``read_units`` fetches for one unit."""
    kind = name.rpartition(".")[2]
    if kind == "service":
        return (*_FILE_PROPS, (SERVICE, "Type", "service_type")), _SERVICE_RUNTIME
    if kind in _WITH_RESULT:
        return _FILE_PROPS, ((_IFACE + kind.capitalize(), "Result", "result"),)
    return _FILE_PROPS, ()


def live_value(field_name: str, value: object) -> object:
    """A property's value as a ``LiveUnit`` field holds it. Strings (states, results, unit
    file states, service types) are interned: a unit held ~7 of its own, decoded from its
    reply (~0.35 MB at 1,000 units in the watch daemon), where a few dozen distinct words
    are shared by all."""
    if field_name == "invocation_id":
        return bytes(value).hex() if isinstance(value, bytes | bytearray) else str(value)
    if field_name == "memory_current":
        return None if value == UINT64_MAX else value
    return sys.intern(value) if isinstance(value, str) else value


def parse_unit_infos(rows: object) -> list[LiveUnit]:
    """``a(ssssssouso)`` rows of ListUnits* -> LiveUnit (states only, interned)."""
    intern = sys.intern
    return [
        LiveUnit(
            name=r[0], load_state=intern(r[2]), active_state=intern(r[3]), sub_state=intern(r[4])
        )
        for r in rows  # type: ignore[attr-defined]
    ]
