"""The inventory: ``inventory/hosts.toml`` and ``inventory/services.toml`` (pure; pydantic).

``load`` turns a snapshot's files into a validated ``Inventory``; ``Inventory.select`` picks
the services one host runs, with their vars merged (groups in the host's order, then the
host, then the service; later wins, tables are replaced, not deep-merged). Everything is
refused before anything on a host is touched, with one line naming the file and the key
path, because an operator reads it in a journal entry, not in a debugger.
"""

from __future__ import annotations

import re
import tomllib
from collections import ChainMap, Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from reconciler.core import unitkind
from reconciler.core.keys import HOSTS_FILE as HOSTS_FILE  # the names stay importable from here
from reconciler.core.keys import SERVICES_FILE as SERVICES_FILE
from reconciler.core.keys import key_path as key_path
from reconciler.core.keys import quote as quote
from reconciler.errors import InventoryError, UnknownHostError

TEMPLATE_DIR = "templates/"
FILES_DIR = "files/"  # [files."PATH"] source = "..." is copied verbatim from here
MAX_PATH = 4095  # PATH_MAX less the terminating NUL
ALL = "all"
RESERVED = frozenset({"service", "host"})  # names the template context sets itself
MAX_STEM = 255 - len(".service")  # systemd's unit name limit is 255 bytes
TRIGGERS: tuple[str, ...] = ("calendar", "active_sec", "boot_sec", "startup_sec")
TRIGGERS += ("unit_active_sec", "unit_inactive_sec")
UNIT_TYPES = (*unitkind.KINDS, "scope")
Kind = Literal[
    "service",
    "socket",
    "path",
    "mount",
    "automount",
    "swap",
    "target",
    "slice",
    "timer",
    "container",
    "volume",
    "network",
    "pod",
    "kube",
    "image",
]
MAX_NESTING = 64  # levels of tables and arrays in one file (deeper ones crash parsers)
# The reconciler's own units (the project's units/ folder, written by `reconciler install`;
# tests/unit/test_units.py checks the two agree): a service named like one would write over
# them, so it is refused.
OWN_UNIT_STEMS = frozenset(
    {
        "gitops-sync",
        "metrics-sample",
        "reading-sync",
        "reconciler-config",
        "reconciler-monitor",
        "reconciler-promote",
        "reconciler-watch",
        "reconciler-webhook",
        "volume-backup",
    }
)

_STEM_CHARS = re.compile(r"[A-Za-z0-9:_.@\\-]+")
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")
_DROPIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TIMESPAN = re.compile(
    r"\s*(infinity|(\d+(\.\d+)?\s*(usec|us|µs|msec|ms|seconds?|sec|s|minutes?|min|m|hours?|hr|h"
    r"|days?|d|weeks?|w|months?|M|years?|y)?\s*)+)\s*"
)
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_TOML_POSITION = re.compile(
    r"^(?P<msg>.*) \(at (line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$"
)


def listing(names: Iterable[str], limit: int = 12) -> str:
    """``a, b, c`` (sorted, at most ``limit``, then ``...``) for a one-line message."""
    items = sorted(names)
    shown = ", ".join(quote(n) for n in items[:limit]) or "none"
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def template_name_ok(name: str) -> bool:
    """A plain path inside templates/: no ``..``, no leading ``/``, no backslash, no ``//``."""
    parts = name.split("/")
    return not (name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts))


def check_stem(name: str) -> str | None:
    """Why ``name`` is no valid unit name stem (``NAME.service``), or None if it is."""
    if not name:
        return "the name is empty"
    bad = sorted({c for c in name if not _STEM_CHARS.fullmatch(c)})
    if bad:
        shown = ", ".join(f"'{quote(c)}'" for c in bad)
        return f"character {shown} not allowed (use ASCII letters, digits and ':_.@-')"
    if "\\" in name and not re.fullmatch(r"(?:[^\\]|\\x[0-9a-f]{2})*", name):
        return "'\\' only as a '\\xNN' escape, as systemd-escape writes it"
    if ".." in name:
        return "'..' is not allowed"
    if not (name[0].isalnum() or name[0] == "_"):
        return "it must start with a letter, a digit or '_'"
    if name.count("@") > 1 or name.endswith("@"):
        return "at most one '@', followed by an instance name"
    if len(name) > MAX_STEM:
        return f"longer than {MAX_STEM} characters"
    return None


def _refusing(kind: str, problem: Callable[[str], str | None]) -> AfterValidator:
    """A pydantic validator raising ``problem(value)`` when there is one."""

    def check(value: str) -> str:
        message = problem(value)
        if message:
            raise PydanticCustomError(kind, message)
        return value

    return AfterValidator(check)


def _service_problem(value: str) -> str | None:
    problem = check_stem(value)
    return problem and f"invalid service name '{quote(value)}': {problem}"


def _unit_problem(value: str) -> str | None:
    stem, _, suffix = value.rpartition(".")
    problem = check_stem(stem) if suffix in UNIT_TYPES else f"no unit type suffix {UNIT_TYPES}"
    return problem and f"invalid unit name '{quote(value)}': {problem}"


def _dropin_unit_problem(value: str) -> str | None:
    """A unit a drop-in may adjust: ``nginx.service``, ``foo@.service``, ``foo@1.service``."""
    stem, _, suffix = value.rpartition(".")
    template = stem.endswith("@") and stem.count("@") == 1
    problem = check_stem(stem.removesuffix("@") if template else stem)
    if suffix not in unitkind.KINDS:
        problem = f"no unit type suffix (one of {', '.join(unitkind.KINDS)})"
    return problem and f"invalid unit name '{quote(value)}': {problem}"


def _dropin_name_problem(value: str) -> str | None:
    if _DROPIN_NAME.fullmatch(value):
        return None
    return f"invalid drop-in name '{quote(value)}': use ASCII letters, digits and '_.-'"


def file_path_problem(value: str) -> str | None:
    """Why ``value`` is no plain absolute path for ``[files."PATH"]``, or None."""
    if not value.startswith("/"):
        return f"'{quote(value)}' is not an absolute path"
    parts = value.split("/")[1:]
    if any(p in ("", ".", "..") for p in parts):
        return f"'{quote(value)}': '..', '.', '//' and a trailing '/' are not allowed"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return f"'{quote(value)}' contains a control character"
    if len(value.encode()) > MAX_PATH:
        return f"longer than {MAX_PATH} bytes"
    return None


def _mode(value: object) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value):
        return int(value, 8)
    raise PydanticCustomError(
        "mode",
        'Input should be an octal mode string like "0644" (no setuid, setgid or sticky bit)',
    )


def _host_problem(value: str) -> str | None:
    if _HOST_NAME.fullmatch(value) and value != ALL:
        return None
    return f"invalid name '{quote(value)}': use ASCII letters, digits and '_.-' (not '{ALL}')"


def _var_problem(value: str) -> str | None:
    if not _VAR_NAME.fullmatch(value):
        return f"invalid variable name '{quote(value)}': use letters, digits and '_'"
    return f"variable name '{value}' is set by the template itself" if value in RESERVED else None


def line_problem(text: str) -> str | None:
    """Why ``text`` cannot stay on one unit-file line as it is, or None."""
    for c in text:
        code = ord(c)
        if c in "\n\r\v\f\u0085\u2028\u2029":
            return "contains a line break"
        if code < 32 or 127 <= code < 160:
            return f"contains the control character U+{code:04X}"
        if c in _BIDI:
            return f"contains the bidirectional control U+{code:04X}"
    if text.rstrip().endswith("\\"):
        return "ends with a backslash (it would continue the line)"
    return None


def _safe_text(value: str) -> str:
    """A string written verbatim into a unit line (timer settings)."""
    problem = "is empty" if not value.strip() else line_problem(value)
    if problem:
        raise PydanticCustomError("unsafe_text", f"Value {problem}")
    return value


def _timespan(value: object) -> str:
    if type(value) is int and value >= 0:
        return str(value)
    if isinstance(value, str) and _TIMESPAN.fullmatch(value):
        return _safe_text(value)
    raise PydanticCustomError(
        "timespan", "Input should be a number of seconds or a systemd time span like '30min'"
    )


def _calendar(value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list | tuple)
        or not items
        or not all(isinstance(i, str) for i in items)
    ):
        raise PydanticCustomError(
            "calendar", "Input should be a string or a non-empty list of strings"
        )
    return tuple(_safe_text(i) for i in items)


def _unique(names: list[str]) -> list[str]:
    twice = [n for n, count in Counter(names).items() if count > 1]  # linear: lists may be long
    if twice:
        raise PydanticCustomError("unique", f"listed twice: {listing(twice)}")
    return names


HostName = Annotated[str, _refusing("host_name", _host_problem)]
VarName = Annotated[str, _refusing("var_name", _var_problem)]
ServiceName = Annotated[str, _refusing("service_name", _service_problem)]
Timespan = Annotated[str, PlainValidator(_timespan)]
DropinUnit = Annotated[str, _refusing("unit_name", _dropin_unit_problem)]
DropinName = Annotated[str, _refusing("dropin_name", _dropin_name_problem)]
FilePath = Annotated[str, _refusing("file_path", file_path_problem)]
UserName = Annotated[
    str,
    _refusing(
        "user_name",
        lambda v: None if _USER.fullmatch(v) else (f"invalid user or group name '{quote(v)}'"),
    ),
]
Mode = Annotated[int, PlainValidator(_mode)]
Vars = dict[VarName, Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Timer(_Strict):
    """``[services.NAME.timer]``: rendered to ``NAME.timer`` (see render.TIMER_KEYS)."""

    on_calendar: Annotated[tuple[str, ...], PlainValidator(_calendar)] | None = None
    on_active_sec: Timespan | None = None
    on_boot_sec: Timespan | None = None
    on_startup_sec: Timespan | None = None
    on_unit_active_sec: Timespan | None = None
    on_unit_inactive_sec: Timespan | None = None
    accuracy_sec: Timespan | None = None
    randomized_delay_sec: Timespan | None = None
    fixed_random_delay: bool | None = None
    persistent: bool | None = None
    wake_system: bool | None = None
    remain_after_elapse: bool | None = None
    unit: Annotated[str, _refusing("unit_name", _unit_problem)] | None = None

    @model_validator(mode="after")
    def _has_trigger(self) -> Timer:
        if all(getattr(self, f"on_{t}") is None for t in TRIGGERS):
            names = ", ".join(f"on_{t}" for t in TRIGGERS)
            raise PydanticCustomError("no_trigger", f"a timer needs a trigger: one of {names}")
        return self


class Health(_Strict):
    timeout_sec: float = Field(gt=0, le=86400)


class Service(_Strict):
    template: str
    kind: Kind = "service"
    hosts: Annotated[list[str], AfterValidator(_unique)]
    vars: Vars = Field(default_factory=dict)
    enable: bool = True
    start: bool = True
    timer: Timer | None = None
    health: Health | None = None


class Dropin(_Strict):
    """``[dropins."UNIT".NAME]``: ``UNIT.d/50-reconciler-NAME.conf`` adjusting any unit."""

    template: str
    hosts: Annotated[list[str], AfterValidator(_unique)]
    vars: Vars = Field(default_factory=dict)
    restart: bool = True  # restart the unit when its drop-ins change (False: only Reload)


class FileEntry(_Strict):
    """``[files."PATH"]``: a config file written under the host's ``files_roots``."""

    template: str | None = None
    source: str | None = None
    hosts: Annotated[list[str], AfterValidator(_unique)]
    vars: Vars = Field(default_factory=dict)
    mode: Mode = 0o644
    owner: UserName = "root"
    group: UserName = "root"
    restart: Annotated[list[DropinUnit], AfterValidator(_unique)] = Field(default_factory=list)
    reload: Annotated[list[DropinUnit], AfterValidator(_unique)] = Field(default_factory=list)
    adopt: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> FileEntry:
        if (self.template is None) == (self.source is None):
            raise PydanticCustomError(
                "file_source", "give exactly one of template (rendered) or source (copied)"
            )
        return self


class Host(_Strict):
    groups: Annotated[list[HostName], AfterValidator(_unique)] = Field(default_factory=list)
    vars: Vars = Field(default_factory=dict)


class Group(_Strict):
    vars: Vars = Field(default_factory=dict)


class HostsFile(_Strict):
    hosts: dict[HostName, Host] = Field(default_factory=dict)
    groups: dict[HostName, Group] = Field(default_factory=dict)


class ServicesFile(_Strict):
    services: dict[ServiceName, Service] = Field(default_factory=dict)
    dropins: dict[DropinUnit, dict[DropinName, Dropin]] = Field(default_factory=dict)
    files: dict[FilePath, FileEntry] = Field(default_factory=dict)


@dataclass(frozen=True)
class ServiceInstance:
    """One service as one host runs it: what ``render`` needs, vars already merged."""

    name: str
    template: str  # path under templates/, e.g. "web.service.j2"
    vars: Mapping[str, Any]
    enable: bool
    start: bool
    timer: Timer | None
    health_timeout_sec: float | None
    host_name: str
    host_groups: tuple[str, ...]
    kind: str = "service"  # the unit's type: NAME.KIND is written


@dataclass(frozen=True)
class DropinInstance:
    """One drop-in as one host has it: ``unit`` is what it adjusts, ``name`` its own name."""

    unit: str
    name: str
    template: str
    vars: Mapping[str, Any]
    restart: bool
    host_name: str
    host_groups: tuple[str, ...]

    @property
    def path(self) -> str:
        """Its file, relative to the unit directory."""
        return f"{self.unit}.d/50-reconciler-{self.name}.conf"


@dataclass(frozen=True)
class FileInstance:
    """One config file as one host has it (vars merged as for services)."""

    path: str
    entry: FileEntry
    vars: Mapping[str, Any]
    host_name: str
    host_groups: tuple[str, ...]


@dataclass(frozen=True)
class Inventory:
    hosts_file: HostsFile
    services_file: ServicesFile

    @property
    def services(self) -> Mapping[str, Service]:
        return self.services_file.services

    def group_names(self) -> frozenset[str]:
        """Every group some host is in (one only declared in ``[groups]`` selects no host)."""
        return frozenset(g for h in self.hosts_file.hosts.values() for g in h.groups)

    def select_dropins(self, host: str) -> list[DropinInstance]:
        """The drop-ins ``host`` has, in services.toml order (vars merged as for services)."""
        found, base = self._host(host)
        targets = {host, ALL, *found.groups}
        return [
            DropinInstance(
                unit, name, d.template, ChainMap(d.vars, base), d.restart, host, tuple(found.groups)
            )
            for unit, table in self.services_file.dropins.items()
            for name, d in table.items()
            if targets.intersection(d.hosts)
        ]

    def select_files(self, host: str) -> list[FileInstance]:
        """The config files ``host`` has, in services.toml order."""
        found, base = self._host(host)
        targets = {host, ALL, *found.groups}
        return [
            FileInstance(path, f, ChainMap(f.vars, base), host, tuple(found.groups))
            for path, f in self.services_file.files.items()
            if targets.intersection(f.hosts)
        ]

    def _host(self, host: str) -> tuple[Host, dict[str, Any]]:
        found = self.hosts_file.hosts.get(host)
        if found is None:
            known = listing(self.hosts_file.hosts)
            raise UnknownHostError(
                f"{HOSTS_FILE}: host '{quote(host)}' is not in the inventory (known: {known})",
                hint="pass --host NAME or add a [hosts.NAME] table",
            )
        base: dict[str, Any] = {}
        for group in found.groups:
            base.update(self.hosts_file.groups.get(group, Group()).vars)
        base.update(found.vars)
        return found, base

    def select(self, host: str) -> list[ServiceInstance]:
        """The services ``host`` runs, in services.toml order."""
        found, base = self._host(host)
        targets = {host, ALL, *found.groups}
        return [
            ServiceInstance(
                name=name,
                template=svc.template,
                kind=svc.kind,
                vars=ChainMap(svc.vars, base),  # shared, not copied: base may be large
                enable=svc.enable,
                start=svc.start,
                timer=svc.timer,
                health_timeout_sec=svc.health.timeout_sec if svc.health else None,
                host_name=host,
                host_groups=tuple(found.groups),
            )
            for name, svc in self.services_file.services.items()
            if targets.intersection(svc.hosts)
        ]


def _message(error: ErrorDetails, known: Sequence[str]) -> str:
    if error["type"] != "extra_forbidden":
        given = error.get("input")  # a user's trial: "a valid number" said not what it got
        if isinstance(given, str | int | float) and not isinstance(given, bool):
            shown = f"'{quote(given[:60])}'" if isinstance(given, str) else repr(given)
            return f"{error['msg']} (got {shown})"
        return error["msg"]
    key = str(error["loc"][-1])
    if error["loc"][:1] == ("files",) and known is _KNOWN_KEYS:
        known = _FILE_KEYS
    import difflib  # only a refused key needs it

    if key in known:  # a key of another table: suggesting it back was no help
        return "unknown key in this table"
    close = difflib.get_close_matches(key, known, n=1)
    return "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")


def _one_line(path: str, problems: list[tuple[str, str]], count: int = 0) -> InventoryError:
    """The first problem, and where the others are (``count``: all, if not ``problems``):
    a bare "(and 1 more)" left the user guessing which key it was."""
    where, message = problems[0]
    count = count or len(problems)
    shown = [key or path for key, _ in problems[1:4]]
    hidden = count - 1 - len(shown)
    more = ""
    if shown:
        more = f" (also at {', '.join(shown)}" + (f" and {hidden} more)" if hidden > 0 else ")")
    prefix = f"{path}: {where}: " if where else f"{path}: "
    return InventoryError(prefix + message + more)


_MODELS = (Timer, Health, Service, Dropin, Host, Group, HostsFile, ServicesFile)
_KNOWN_KEYS = sorted({field for model in _MODELS for field in model.model_fields})
_FILE_KEYS = sorted(FileEntry.model_fields)  # [files."PATH"] keys: suggested only there


def parse_file(
    files: Mapping[str, bytes], path: str, model: type[BaseModel], known: Sequence[str] = ()
) -> Any:
    """One TOML file of the inventory validated as ``model`` (``known``: the keys an unknown
    key is compared with for a "did you mean"; default: the inventory's own)."""
    if path not in files:
        raise InventoryError(
            f"{path}: file missing from the config repository",
            hint="see the example inventory/ folder of the reconciler project",
        )
    try:
        text = files[path].decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise InventoryError(f"{path}: not valid UTF-8 at byte {exc.start}") from None
    except RecursionError:  # tomllib recurses once per level of nesting
        raise InventoryError(
            f"{path}:{_deep_line(text)}: tables and arrays nested deeper than {MAX_NESTING} levels"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_POSITION.match(str(exc))
        if not match:
            raise InventoryError(f"{path}: {exc}") from None
        where = f"{match['line']}:{match['col']}" if match["line"] else "end of file"
        raise InventoryError(f"{path}:{where}: {match['msg']}") from None
    deep = _too_deep(data)
    if deep is not None:
        raise InventoryError(
            f"{path}: {key_path(deep[:4])}...: tables and arrays nested deeper than "
            f"{MAX_NESTING} levels"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems = [(key_path(e["loc"]), _message(e, known or _KNOWN_KEYS)) for e in errors]
        raise _one_line(path, problems) from None


def _too_deep(data: object) -> tuple[str | int, ...] | None:
    """The key path of the first table or array deeper than ``MAX_NESTING`` (no recursion)."""
    stack: list[tuple[tuple[str | int, ...], object]] = [((), data)]
    while stack:  # only tables and arrays are pushed: scalars cost one isinstance each
        loc, item = stack.pop()
        pairs = item.items() if isinstance(item, dict) else enumerate(item)  # type: ignore[arg-type]
        for key, child in pairs:
            if isinstance(child, dict | list):
                if len(loc) >= MAX_NESTING:
                    return (*loc, key)
                stack.append(((*loc, key), child))
    return None


_TOML_TOKEN = re.compile(
    r'"""(?:[^"\\]|\\.|"(?!""))*"""'  # multi-line basic string
    r"|'''(?:[^']|'(?!''))*'''"  # multi-line literal string
    r'|"(?:[^"\\\n]|\\.)*"'  # basic string
    r"|'[^'\n]*'"  # literal string
    r"|#[^\n]*|[\[\]{}\n]",  # comment, bracket, line end
    re.S,
)


def _deep_line(text: str) -> int:
    """The line where brackets outside strings and comments first nest past ``MAX_NESTING``."""
    depth, line = 0, 1
    for token in _TOML_TOKEN.finditer(text):
        t = token.group()
        if t in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return line
        elif t in "]}":
            depth -= 1
        line += t.count("\n")
    return line


def _template_problem(template: str, files: Mapping[str, bytes]) -> str | None:
    if not template_name_ok(template):
        return f"'{quote(template)}' must be a relative path inside {TEMPLATE_DIR}"
    if TEMPLATE_DIR + template not in files:
        return f"template '{quote(template)}' not found in {TEMPLATE_DIR}"
    return None


def _kind_problem(name: str, svc: Service) -> tuple[str, str] | None:
    """(key, why) when the service's name or tables do not fit its ``kind``, else None."""
    if svc.timer is not None and svc.kind != "service":
        return "timer", f'only a kind = "service" has a [timer] table (this is a {svc.kind})'
    if len(name) + 1 + len(svc.kind) > 255:
        return "kind", f"'{quote(name)}.{svc.kind}' is longer than systemd's 255 characters"
    problem = unitkind.name_problem(name, svc.kind)
    return ("kind", f"invalid {svc.kind} name '{quote(name)}': {problem}") if problem else None


def _health_problem(name: str, svc: Service) -> str | None:
    """Why ``[health]`` cannot gate this service: the gate waits, after a sync, on a unit the
    sync started, and the sync never starts a timer's service nor one with ``start = false``
    (a README-only trial: accepted, and silently never gated)."""
    if svc.health is None:
        return None
    if svc.timer is not None:
        why = f"its [timer] runs {quote(name)}.service, never the sync"
    elif not svc.start:
        why = "start = false: the sync never starts it"
    else:
        return None
    return (
        f"nothing to gate: {why}; remove [health] (the monitor watches the runs: a timer's "
        "missed runs, every unit's crashes)"
    )


def _target_problem(target: str, hosts: HostsFile, known: set[str], full: bool = True) -> str:
    """Why a ``hosts`` entry selects no host, with the nearest group some host is in: a group
    declared in ``[groups]`` that no host lists (a typo on either side) would run nowhere."""
    if target not in hosts.groups:
        why = f"'{quote(target)}' is neither a host nor a group"
        return f"{why} (known: {listing(known)})" if full else why
    why = f"group '{quote(target)}' has no host (no [hosts.NAME] of {HOSTS_FILE} lists it)"
    if not full:
        return why
    import difflib  # only a refused target needs it

    used = sorted(known - {ALL} - set(hosts.hosts))
    near = difflib.get_close_matches(target, used, n=1)
    hint = f"; did you mean '{quote(near[0])}'?" if near else ""
    return f"{why}{hint} (groups with hosts: {listing(used)})"


def _check_services(
    services: ServicesFile, hosts: HostsFile, groups: frozenset[str], files: Mapping[str, bytes]
) -> tuple[list[tuple[str, str]], int]:
    """The problems (where, why) in order and how many there are."""
    first: list[tuple[str, str]] = []
    count = 0
    known = {ALL, *hosts.hosts, *groups}  # groups: those some host is in
    for name, svc in services.services.items():
        if name in OWN_UNIT_STEMS:
            count += 1
            why = (
                f"'{quote(name)}' is one of the reconciler's own units, which belong to its "
                "install ('reconciler install' writes them from units/): pick another name"
            )
            first += [(key_path(("services", name)), why)]
        kind_problem = _kind_problem(name, svc)
        if kind_problem:
            count += 1
            key, why = kind_problem
            first += [(key_path(("services", name, key)), why)]
        problem = _template_problem(svc.template, files)
        if problem:
            count += 1
            first += [(key_path(("services", name, "template")), problem)]
        health_problem = _health_problem(name, svc)
        if health_problem:
            count += 1
            first += [(key_path(("services", name, "health")), health_problem)]
        for i, target in enumerate(svc.hosts):
            if target not in known:
                count += 1
                if len(first) < 4:  # only four are named: a listing per problem is not free
                    where = key_path(("services", name, "hosts", i))
                    first += [(where, _target_problem(target, hosts, known))]
    for unit, table in services.dropins.items():
        for name, dropin in table.items():
            problem = _template_problem(dropin.template, files)
            if problem:
                count += 1
                first += [(key_path(("dropins", unit, name, "template")), problem)]
            for i, target in enumerate(dropin.hosts):
                if target not in known:
                    count += 1
                    why = _target_problem(target, hosts, known, full=len(first) < 4)
                    first += [(key_path(("dropins", unit, name, "hosts", i)), why)]
    for path, entry in services.files.items():
        if entry.source is not None:
            problem = None
            if not template_name_ok(entry.source):
                problem = f"'{quote(entry.source)}' must be a relative path inside {FILES_DIR}"
            elif FILES_DIR + entry.source not in files:
                problem = f"file '{quote(entry.source)}' not found in {FILES_DIR}"
            key = "source"
        else:
            problem, key = _template_problem(entry.template or "", files), "template"
        if problem:
            count += 1
            first += [(key_path(("files", path, key)), problem)]
        for i, target in enumerate(entry.hosts):
            if target not in known:
                count += 1
                why = _target_problem(target, hosts, known, full=len(first) < 4)
                first += [(key_path(("files", path, "hosts", i)), why)]
    return first, count


def _clashes(hosts: HostsFile) -> Iterator[tuple[str, str]]:
    """Hosts named like a group: a service for host ``db1`` would also run on group ``db1``."""
    for name, host in hosts.hosts.items():
        for i, group in enumerate(host.groups):
            if group in hosts.hosts:
                why = f"group '{quote(group)}' is also a host's name"
                yield key_path(("hosts", name, "groups", i)), why
    for group in hosts.groups:
        if group in hosts.hosts:
            yield key_path(("groups", group)), f"group '{quote(group)}' is also a host's name"


def load(files: Mapping[str, bytes]) -> Inventory:
    """Validate the inventory of a snapshot (repo-relative path -> bytes)."""
    hosts: HostsFile = parse_file(files, HOSTS_FILE, HostsFile)
    clashes = list(_clashes(hosts))
    if clashes:
        error = _one_line(HOSTS_FILE, clashes)
        raise InventoryError(error.message, hint="host and group names share one namespace")
    services: ServicesFile = parse_file(files, SERVICES_FILE, ServicesFile)
    inventory = Inventory(hosts, services)
    first, count = _check_services(services, hosts, inventory.group_names(), files)
    if first:
        raise _one_line(SERVICES_FILE, first, count)
    return inventory
