"""Render unit files from templates and the merged inventory vars (pure; jinja2).

Templates come only from the snapshot's ``templates/`` files, through a loader that knows
nothing else (no file system, no ``..``), into Jinja2's immutable sandbox with
``StrictUndefined`` (``trim_blocks`` on, like Ansible). Injection safety is enforced twice:

* every ``{{ expression }}`` value passes ``_finalize``: one line, no control characters,
  no trailing backslash; the value is wrapped in two reserved markers;
* the marked output is then checked line by line: section headers, directive names, the
  ``=`` and line continuations must all come from template text, never from a value.

The markers are removed before the content is returned. Same input, byte-identical output.
Values are not rewritten: ``{{ x | arg }}`` quotes one Exec*= argument (spaces, quotes,
``%``, ``$``) and ``{{ x | literal }}`` keeps ``%`` from being read as a specifier. The two
compose (each escapes the original value once, in either order, and is idempotent); text
made from their output by anything else (``~``, another filter) is plain text again.

A unit (``NAME.KIND``, ``kind`` from the inventory) without a timer and ``enable = true``
needs an ``[Install]`` section (else enabling would do nothing, every sync). A unit that a
socket, path or timer of the same host starts is never started by the sync itself. A timer
service is never started by the sync and is enabled only if its own ``[Install]`` section
asks for it; its timer carries ``enable`` and ``start``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

from reconciler.core import unitkind
from reconciler.core.inventory import (
    FILES_DIR,
    SERVICES_FILE,
    TEMPLATE_DIR,
    DropinInstance,
    FileInstance,
    ServiceInstance,
    Timer,
    key_path,
    line_problem,
    quote,
    template_name_ok,
)
from reconciler.errors import RenderError
from reconciler.model import DesiredFile, DesiredUnit

OPEN, CLOSE = "\ufdd0", "\ufdd1"  # Unicode non-characters: never in legitimate text
MAX_UNIT_CHARS = 1 << 20
MAX_RANGE_ITEMS = 1_000_000  # range() items in one unit's render (loops; CPU is bounded too)
INSTALL_KEYS = ("WantedBy", "RequiredBy", "UpheldBy", "Alias", "Also")
# inventory field -> directive, in the order they are written to NAME.timer
TIMER_KEYS = (
    ("on_calendar", "OnCalendar"),
    ("on_active_sec", "OnActiveSec"),
    ("on_boot_sec", "OnBootSec"),
    ("on_startup_sec", "OnStartupSec"),
    ("on_unit_active_sec", "OnUnitActiveSec"),
    ("on_unit_inactive_sec", "OnUnitInactiveSec"),
    ("accuracy_sec", "AccuracySec"),
    ("randomized_delay_sec", "RandomizedDelaySec"),
    ("fixed_random_delay", "FixedRandomDelay"),
    ("persistent", "Persistent"),
    ("wake_system", "WakeSystem"),
    ("remain_after_elapse", "RemainAfterElapse"),
    ("unit", "Unit"),
)
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_SECTION = re.compile(r"\[[^\[\]]+\]")


@dataclass(frozen=True)
class HostInfo:
    """``host`` in the template context."""

    name: str
    groups: tuple[str, ...]


class _Unsafe(Exception):
    def __init__(self, value: str, reason: str) -> None:
        super().__init__(reason)
        self.value = value
        self.reason = reason


def unsafe_reason(text: str) -> str | None:
    """Why ``text`` may not be substituted into a unit line, or None."""
    if OPEN in text or CLOSE in text:
        return "contains a reserved character (U+FDD0/U+FDD1)"
    return line_problem(text)


class _Escaped(str):
    """A filter's output that remembers the value it escaped and how, so that ``literal``
    and ``arg`` compose: each escapes the original value once, in either order."""

    raw: str
    kind: str  # "literal" or "arg"


def _escaped(text: str, raw: str, kind: str) -> _Escaped:
    out = _Escaped(text)
    out.raw, out.kind = raw, kind
    return out


def escape_specifiers(value: object) -> str:
    """Filter ``literal``: ``%`` doubled, so systemd reads no specifier; nothing else.

    A value ``arg`` or ``literal`` already escaped is returned as it is (never ``%%%%``).
    """
    if isinstance(value, _Escaped):
        return value
    raw = str(value)
    return _escaped(raw.replace("%", "%%"), raw, "literal")


def quote_arg(value: object) -> str:
    """Filter ``arg``: one Exec*= argument, whatever spaces, quotes, ``%`` or ``$`` it holds.

    ``\\`` and ``"`` are backslash-escaped inside double quotes, ``%`` and ``$`` doubled:
    the program gets exactly the value. After ``literal`` it quotes the original value
    (``%`` doubled once); after ``arg`` it changes nothing.
    """
    if isinstance(value, _Escaped) and value.kind == "arg":
        return value
    raw = value.raw if isinstance(value, _Escaped) else str(value)
    text = raw.replace("\\", "\\\\").replace('"', '\\"')
    return _escaped('"' + text.replace("%", "%%").replace("$", "$$") + '"', raw, "arg")


def _finalize(value: object) -> str:
    text = str(value).replace(OPEN, "").replace(CLOSE, "")  # nested output (macros) re-wrapped
    reason = unsafe_reason(text)
    if reason:
        raise _Unsafe(text, reason)
    return OPEN + text + CLOSE


class _Loader(jinja2.BaseLoader):
    """Only the snapshot's templates/ files; names relative to templates/."""

    def __init__(self, sources: Mapping[str, str]) -> None:
        self.sources = sources

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        if not template_name_ok(template):
            raise jinja2.TemplateNotFound(
                template, f"template name '{quote(template)}' refused: must stay inside templates/"
            )
        if template not in self.sources:
            raise jinja2.TemplateNotFound(
                template, f"template '{quote(template)}' not found in templates/"
            )
        return self.sources[template], TEMPLATE_DIR + template, lambda: True

    def list_templates(self) -> list[str]:
        return sorted(self.sources)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Also refuses ``'x' * n`` / ``n ** m`` that would build a huge value before output, and
    counts the items of every ``range()`` of one render (nested loops multiply)."""

    intercepted_binops = frozenset({"*", "**"})
    range_left = MAX_RANGE_ITEMS  # reset before each unit's render

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = self.counted_range

    def counted_range(self, *args: int) -> range:
        items = safe_range(*args)  # also refuses one range of more than 100,000 items
        self.range_left -= len(items)
        if self.range_left < 0:
            raise SecurityError(f"range() asked for more than {MAX_RANGE_ITEMS} items in all")
        return items

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        sizes = [len(v) for v in (left, right) if isinstance(v, str | list | tuple)]
        counts = [v for v in (left, right) if isinstance(v, int)]
        if operator == "*" and sizes and counts and sizes[0] * counts[0] > MAX_UNIT_CHARS:
            raise SecurityError(f"a repeated value would exceed {MAX_UNIT_CHARS} characters")
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise SecurityError("an exponent above 64 is not allowed")
        return super().call_binop(context, operator, left, right)


def build_environment(templates: Mapping[str, str], *, unit_lines: bool = True) -> _Sandbox:
    """The sandbox over ``templates``: names relative to templates/ -> text.

    ``unit_lines``: every value must stay on its unit-file line (off for config files,
    whose format is not systemd's)."""
    for name, text in templates.items():
        if not template_name_ok(name):
            raise RenderError(f"cannot load template '{quote(name)}': not a path inside templates/")
        if OPEN in text or CLOSE in text:
            raise RenderError(
                f"{TEMPLATE_DIR}{name}: contains a reserved character (U+FDD0/U+FDD1)"
            )
    env = _Sandbox(
        loader=_Loader(dict(templates)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,  # like Ansible: a {% tag %} line leaves no blank line
        finalize=_finalize if unit_lines else None,
        auto_reload=False,
        cache_size=-1,
    )
    env.globals.pop("lipsum", None)
    env.filters["arg"] = quote_arg
    env.filters["literal"] = escape_specifiers
    return env


def decode_templates(files: Mapping[str, bytes]) -> dict[str, str]:
    """A snapshot's templates/ files as ``render`` takes them: relative name -> UTF-8 text."""
    out = {}
    for path, data in files.items():
        if path.startswith(TEMPLATE_DIR):
            try:
                out[path.removeprefix(TEMPLATE_DIR)] = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RenderError(f"{path}: not valid UTF-8 at byte {exc.start}") from None
    return out


def _template_line(tb: TracebackType | None, default: str) -> str:
    """``file:line`` of the innermost template frame of a (Jinja-rewritten) traceback."""
    found = default
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith(TEMPLATE_DIR):
            found = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found


def _walk(prefix: str, item: object) -> Iterator[tuple[str, str]]:
    """Every scalar inside a variable, as (``name.key[i]``, text)."""
    if isinstance(item, Mapping):
        for key, sub in item.items():
            yield from _walk(f"{prefix}.{key}", sub)
    elif isinstance(item, list | tuple):
        for i, sub in enumerate(item):
            yield from _walk(f"{prefix}[{i}]", sub)
    else:
        yield prefix, str(item)


def _var_named(value: str, variables: Mapping[str, Any]) -> str | None:
    """The variable (or ``name.key`` / ``name[i]`` inside one) whose value is ``value``."""
    for name, item in variables.items():
        for path, text in _walk(name, item):
            if text == value:
                return path
    return None


def referenced_names(
    env: _Sandbox, templates: Mapping[str, str], roots: Iterable[str]
) -> frozenset[str] | None:
    """Every name the ``roots`` templates and those they include, import or extend may read
    from their context (None: one does not parse or names another dynamically: then all).

    A template sees only these of its vars: the render's cost then follows what the templates
    use, not the size of the inventory's vars (200,000 group vars times 100 services were
    copied and checked 100 times). Only reachable templates are parsed (~4 ms each).
    """
    names: set[str] = set()
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in templates:
            continue  # a missing template is reported when it is rendered
        seen.add(name)
        try:
            ast = env.parse(templates[name], name)
            # compiles it: an unknown filter or test fails here first (TemplateAssertionError)
            names |= meta.find_undeclared_variables(ast)
        except (jinja2.TemplateSyntaxError, RecursionError):
            return None  # reported with its line when that template is rendered
        for found in meta.find_referenced_templates(ast):
            if found is None:
                return None
            todo.append(found)
    return frozenset(names)


def _render_text(env: _Sandbox, inst: ServiceInstance, names: frozenset[str] | None = None) -> str:
    where = f"{TEMPLATE_DIR}{inst.template}"
    suffix = f" ({'file' if inst.name.startswith('/') else 'service'} '{inst.name}')"
    variables = inst.vars if names is None else {n: inst.vars[n] for n in names if n in inst.vars}
    for name, item in variables.items():
        for path, text in _walk(name, item):
            if OPEN in text or CLOSE in text:
                raise RenderError(
                    f"{where}: variable '{path}' contains a reserved character "
                    f"(U+FDD0/U+FDD1){suffix}"
                )
    context: dict[str, Any] = dict(variables)
    context["service"] = inst.name
    context["host"] = HostInfo(inst.host_name, inst.host_groups)
    env.range_left = MAX_RANGE_ITEMS
    try:
        template = env.get_template(inst.template)
        chunks, size = [], 0
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_UNIT_CHARS:
                raise RenderError(
                    f"{where}: output larger than {MAX_UNIT_CHARS} characters{suffix}"
                )
            chunks.append(chunk)
        return "".join(chunks)
    except jinja2.TemplateSyntaxError as exc:
        line = f"{exc.filename or where}:{exc.lineno}"
        raise RenderError(f"{line}: {exc.message}{suffix}") from None
    except jinja2.TemplateNotFound as exc:
        line = _template_line(exc.__traceback__, where)
        raise RenderError(f"{line}: {exc.message}{suffix}") from None
    except _Unsafe as exc:
        blamed = _var_named(exc.value, variables)
        what = f"variable '{blamed}'" if blamed else "an expression"
        line = _template_line(exc.__traceback__, where)
        raise RenderError(
            f"{line}: {what} {exc.reason}{suffix}",
            hint="a value must stay on its line: no new line, section or directive",
        ) from None
    except SecurityError as exc:
        line = _template_line(exc.__traceback__, where)
        reason = str(exc).rstrip(".")
        raise RenderError(f"{line}: refused by the sandbox: {reason}{suffix}") from None
    except (RenderError, MemoryError):  # out of memory: the render's process limit says so
        raise
    except RecursionError as exc:
        line = _template_line(exc.__traceback__, where)
        raise RenderError(
            f"{line}: nested too deep (an include, extends or macro calling itself, or deeply "
            f"nested expressions){suffix}"
        ) from None
    except Exception as exc:  # UndefinedError, TypeError, ZeroDivisionError... in a template
        line = _template_line(exc.__traceback__, where)
        raise RenderError(f"{line}: {exc}{suffix}") from None


_MARKERS = re.compile(f"[{OPEN}{CLOSE}]")


def _segments(line: str) -> list[tuple[bool, str]]:
    """Split a marked line into (is_value, text) pieces."""
    if OPEN not in line:
        return [(False, line)] if line else []
    return [(i % 2 == 1, p) for i, p in enumerate(_MARKERS.split(line)) if p]


def _continues(text: str) -> bool:
    """Does the line end in an unescaped backslash (systemd joins the next line)?"""
    return (len(text) - len(text.rstrip("\\"))) % 2 == 1


def check_structure(marked: str) -> tuple[int, str] | None:
    """The first line whose structure a value supplied, as (line number, problem)."""
    in_section = continuing = False
    for number, raw in enumerate(marked.split("\n"), 1):
        pieces = _segments(raw.removesuffix("\r"))
        marked_line = len(pieces) > 1 or OPEN in raw  # one empty value: no pieces at all
        text = _MARKERS.sub("", raw.removesuffix("\r")) if marked_line else raw.strip("\r")
        stripped = text.lstrip()
        if not stripped:
            continuing = False
            continue
        lead = next(v for v, t in pieces if t.strip())  # piece holding the first character
        if stripped[0] in "#;" and not lead:
            continue  # a comment, also inside a continuation (systemd skips it)
        if continuing:
            continuing = _continues(text)
        elif lead:
            return number, "a value starts the line (it would become a directive)"
        elif stripped[0] == "[":
            if len(pieces) > 1 or not _SECTION.fullmatch(text.strip()):
                return number, "a section header must be plain template text"
            in_section = True
        else:
            key, sep, _ = pieces[0][1].partition("=")
            if not sep:
                return number, "not a Key=value line, or its name or '=' comes from a value"
            if not _KEY.fullmatch(key.strip()):
                return number, f"'{quote(key.strip())}' is not a directive name"
            if not in_section:
                return number, "a directive outside any [Section]"
            continuing = _continues(text)
        if continuing and pieces[-1][0] and pieces[-1][1].rstrip().endswith("\\"):
            return number, "a value ends the line with a backslash"
    return None


def _check(content: str, inst: ServiceInstance, unit: str) -> str:
    problem = check_structure(content)
    if problem:
        number, reason = problem
        line = content.split("\n")[number - 1]
        values = [t for v, t in _segments(line) if v]
        names = [n for n in (_var_named(v, inst.vars) for v in values) if n]
        blamed = f" (variable '{names[0]}')" if names else ""
        raise RenderError(
            f"{TEMPLATE_DIR}{inst.template}: {unit} line {number}: {reason}{blamed} "
            f"(service '{inst.name}')",
            hint="put variables after 'Key=' on a line of the template",
        )
    plain = content.replace(OPEN, "").replace(CLOSE, "")
    return plain if plain.endswith("\n") else plain + "\n"


def has_install(content: str) -> bool:
    """Does the unit carry install information (what ``EnableUnitFiles`` acts on)?"""
    section = ""
    for line in content.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
        elif section == "[Install]" and stripped.split("=", 1)[0].strip() in INSTALL_KEYS:
            return True
    return False


def build_timer(name: str, timer: Timer) -> str:
    """``NAME.timer`` from the ``[timer]`` table, keys in ``TIMER_KEYS`` order."""
    lines = [
        f"# Rendered by reconciler from inventory/services.toml [services.{name}.timer].",
        "[Unit]",
        f"Description=Timer for {name}.service",
        "",
        "[Timer]",
    ]
    for field, directive in TIMER_KEYS:
        value = getattr(timer, field)
        if value is None:
            continue
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            text = ("true" if item else "false") if isinstance(item, bool) else str(item)
            lines.append(f"{directive}={text}")
    lines += ["", "[Install]", "WantedBy=timers.target", ""]
    return "\n".join(lines)


def render_one(
    env: _Sandbox, inst: ServiceInstance, names: frozenset[str] | None = None
) -> list[DesiredUnit]:
    """The units of one service instance: ``NAME.KIND`` and maybe ``NAME.timer``;
    ``names``: the vars its templates may read (``referenced_names``), None for all."""
    unit = f"{inst.name}.{inst.kind}"
    content = _check(_render_text(env, inst, names), inst, unit)
    health = inst.health_timeout_sec
    wrong_name = unitkind.path_name_problem(inst.name, inst.kind, content)
    if wrong_name:
        raise RenderError(
            f"{TEMPLATE_DIR}{inst.template}: {wrong_name} (service '{inst.name}')",
            hint=f"rename [services.{inst.name}] in {SERVICES_FILE}",
        )
    if inst.timer is None:
        if inst.enable and not has_install(content) and inst.kind not in unitkind.QUADLET_KINDS:
            raise RenderError(
                f"{TEMPLATE_DIR}{inst.template}: {unit} has no [Install] section but "
                f"enable = true (service '{inst.name}')",
                hint="add [Install] WantedBy=multi-user.target, or set enable = false",
            )
        return [DesiredUnit(unit, content, inst.name, inst.enable, inst.start, health)]
    enable_service = inst.enable and has_install(content)
    timer_text = build_timer(inst.name, inst.timer)
    if len(timer_text) > MAX_UNIT_CHARS:  # e.g. 100,000 on_calendar entries: 2.6 MB
        raise RenderError(
            f"{SERVICES_FILE}: {key_path(('services', inst.name, 'timer'))}: {inst.name}.timer "
            f"would be larger than {MAX_UNIT_CHARS} characters"
        )
    timer_text = _check(timer_text, inst, f"{inst.name}.timer")
    return [
        DesiredUnit(unit, content, inst.name, enable_service, False, health),
        DesiredUnit(f"{inst.name}.timer", timer_text, inst.name, inst.enable, inst.start),
    ]


def render_dropins(
    dropins: Sequence[DropinInstance], templates: Mapping[str, str]
) -> list[DesiredUnit]:
    """Each drop-in as a file ``UNIT.d/50-reconciler-NAME.conf`` (``DesiredUnit.name``), never
    enabled or started itself: its unit is restarted when it changes (``restart``), or not.

    Its template sees the merged vars, ``service`` (the unit it adjusts, ``dbus.service``)
    and ``host``; the same line checks as a unit's apply.
    """
    env = build_environment(templates)
    out = []
    for d in dropins:
        inst = ServiceInstance(d.unit, d.template, d.vars, False, False, None, None,
                               d.host_name, d.host_groups)  # fmt: skip
        content = _check(_render_text(env, inst), inst, d.path)
        out.append(DesiredUnit(d.path, content, d.unit, False, False, restart=d.restart))
    return out


def render_files(
    files: Sequence[FileInstance], templates: Mapping[str, str], sources: Mapping[str, bytes]
) -> list[DesiredFile]:
    """Each ``[files."PATH"]``: its template rendered (UTF-8; the context of a unit, with
    ``service`` the file's path, and no unit-line checks: the format is the file's own), or its
    source under ``files/`` copied byte for byte."""
    env = build_environment(templates, unit_lines=False) if files else None
    out = []
    for f in files:
        e = f.entry
        if e.source is not None:
            content = sources[FILES_DIR + e.source]
        else:
            assert env is not None and e.template is not None
            inst = ServiceInstance(f.path, e.template, f.vars, False, False, None, None,
                                   f.host_name, f.host_groups)  # fmt: skip
            content = _render_text(env, inst).encode("utf-8")
        out.append(
            DesiredFile(
                f.path,
                content,
                e.mode,
                e.owner,
                e.group,
                tuple(e.restart),
                tuple(e.reload),
                e.adopt,
            )  # fmt: skip
        )
    return out


def render(instances: Sequence[ServiceInstance], templates: Mapping[str, str]) -> list[DesiredUnit]:
    """Render every instance; ``templates``: name relative to templates/ -> text.

    ``decode_templates(snapshot.files)`` builds it (and refuses non-UTF-8 files).
    """
    env = build_environment(templates)
    names = referenced_names(env, templates, {inst.template for inst in instances})
    units: list[DesiredUnit] = []
    for inst in instances:
        units.extend(render_one(env, inst, names))
    # A unit that a socket, path or timer of this host starts is started by it, not the sync.
    by = unitkind.activated((u.name, u.content) for u in units)
    _refuse_ungated_health(units, by)
    return [replace(u, start=False) if u.start and u.name in by else u for u in units]


def _refuse_ungated_health(units: Sequence[DesiredUnit], by: Mapping[str, str]) -> None:
    """``[health]`` on a service a timer or path unit of another inventory entry starts: the
    gate judges what the sync started, and the sync never starts it (a README-only trial:
    accepted, never gated; the inventory refuses a ``[timer]`` table's the same way)."""
    scheduled = unitkind.scheduled(by)
    owner = {u.name: u.service for u in units}
    for u in units:
        if u.health_timeout_sec is None or u.name not in scheduled:
            continue
        if owner.get(by[u.name]) == u.service:
            continue  # its own [timer] table: the inventory's check
        raise RenderError(
            f"{SERVICES_FILE}: {key_path(('services', u.service, 'health'))}: nothing to gate: "
            f"{by[u.name]} starts {u.name}, never the sync",
            hint="remove [health] (the monitor watches the runs: a timer's missed runs, crashes)",
        )
