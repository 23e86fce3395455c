"""The one generic reader of config sections (pure): a schema class in, typed values out.

A section is a small class (``Section``) whose annotations are its keys' types and whose
``opt(...)`` defaults hold the range, the choices or a check; :func:`read_section` reads a
table into it and refuses, with the key path (``backup.sources[0].path``) and the file,
anything unknown, mistyped or out of range. ``config`` declares the sections.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from reconciler.errors import UsageError

T = TypeVar("T")
_NESTED: dict[str, type] = {}  # every Section subclass by name (tables inside a section)


class ConfigError(UsageError):
    """A refused value; ``key`` is its path in the file (``backup.sources[0].name``)."""

    def __init__(self, source: str, key: str, cause: str) -> None:
        super().__init__(f"cannot read config '{source}': {key}: {cause}", f"fix {key} in {source}")
        self.key = key


class Spec:
    """One key of a section: its default (``REQUIRED``: none) and the checks beyond its type."""

    def __init__(self, default: Any, meta: dict[str, Any]) -> None:
        self.default = default
        self.meta = meta


REQUIRED: Any = object()


def opt(
    default: Any = REQUIRED,
    *,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,  # strictly greater than
    choices: tuple[str, ...] = (),
    check: Callable[[Any], str | None] | None = None,  # returns why the value is refused
    split: bool = False,  # a string is accepted for a list: split like a shell would
    single: bool = False,  # a string is accepted for a list of that one string
) -> Any:
    """A schema key: its default and what the reader checks beyond the type."""
    meta = {"min": min, "max": max, "above": above, "choices": choices, "check": check}
    meta.update(split=split, single=single)
    return Spec(default, meta)


class Section:
    """Base of the section schemas: each annotated class attribute set to ``opt(...)`` is a
    key, its annotation the type. Instances are read-only and compare by value.

    Not ``@dataclass(frozen=True)``: generating those methods for the ~90 keys below cost
    ~12 ms at every start (measured, module body 13.5 ms against 1.6 ms before); this costs
    nothing until a section is read.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A section may hold tables of another (``tuple[BackupSource, ...]``): the reader
        finds that schema by the name its annotation gives."""
        super().__init_subclass__(**kwargs)
        _NESTED[cls.__name__] = cls

    def __init__(self, **values: Any) -> None:
        for name, (_, spec) in keys(type(self)).items():
            value = values.get(name, spec.default)
            if value is REQUIRED:
                raise TypeError(f"{type(self).__name__}: {name} is required")
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(tuple(map(repr, vars(self).values())))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({inner})"


def keys(schema: type) -> dict[str, tuple[str, Spec]]:
    """A section's keys: name -> (annotation, spec), in declaration order."""
    found = schema.__dict__.get("_keys")
    if found is None:
        found = {
            name: (str(kind), schema.__dict__[name])
            for name, kind in schema.__dict__.get("__annotations__", {}).items()
            if isinstance(schema.__dict__.get(name), Spec)
        }
        type.__setattr__(schema, "_keys", found)
    return dict(found)


def _describe(kind: str) -> str:
    return {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "str": "a string",
        "Path": "an absolute path",
        "dict[str, Any]": "a table",
    }.get(kind, "a list" if kind.startswith("tuple[") else kind)


def _convert(kind: str, value: Any, meta: Mapping[str, Any], schemas: Mapping[str, type]) -> Any:
    """``value`` as ``kind`` (one alternative of an annotation), or raise ValueError(cause)."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # 4096.0 is 4096; 2.7 is refused, never cut to 2
    elif kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind == "str":
        if isinstance(value, str):
            return value
    elif kind == "Path":
        if isinstance(value, str) and value.startswith("/"):
            return Path(value)
    elif kind == "dict[str, Any]":
        if isinstance(value, dict):
            return value
    elif kind == "tuple[str, ...]":
        if isinstance(value, str) and meta.get("split"):
            value = shlex.split(value)
        elif isinstance(value, str) and meta.get("single"):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
            return tuple(value)
        raise ValueError("expected a list of non-empty strings")
    elif kind.startswith("tuple[") and kind[6:-6] in schemas:
        if isinstance(value, list):
            return tuple(value)  # the tables are read by the caller, each with its index
        raise ValueError("expected a list of tables ([[{section}]])")
    raise ValueError(f"expected {_describe(kind)}, got {value!r}")


def unknown_key(key: str, known: Iterable[str]) -> str:
    """ "unknown key", the closest known one first (a typo is the usual cause), then all."""
    import difflib  # only a refused key needs it

    names = sorted(known)
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown key ({hint}known: {', '.join(names)})"


def read_section(schema: type[T], raw: object, where: str, source: str = "config.toml") -> T:
    """``raw`` (a TOML table) as an instance of the dataclass ``schema``; ``where`` is the
    key path of the table (``backup``), ``source`` the file it came from."""
    if not isinstance(raw, Mapping):
        raise ConfigError(source, where, "expected a table")
    known = keys(schema)
    for key in raw:
        if key not in known:
            raise ConfigError(source, f"{where}.{key}", unknown_key(key, known))
    values: dict[str, Any] = {}
    for name, (kind, spec) in known.items():
        key = f"{where}.{name}"
        if name not in raw:
            if spec.default is REQUIRED:
                raise ConfigError(source, key, "missing (required)")
            continue
        values[name] = _read_value(kind, raw[name], spec.meta, key, source)
    obj = schema(**values)
    problem: Callable[[], tuple[str, str] | None] | None = getattr(obj, "problem", None)
    if problem is not None and (found := problem()):
        raise ConfigError(source, f"{where}.{found[0]}" if found[0] else where, found[1])
    return obj


def _read_value(annotation: str, value: Any, meta: Mapping[str, Any], key: str, src: str) -> Any:
    kinds = [k.strip() for k in annotation.split("|") if k.strip() != "None"]
    result: Any = REQUIRED
    causes = []
    for kind in kinds:
        try:
            result = _convert(kind, value, meta, _NESTED)
            break
        except ValueError as exc:
            causes.append(str(exc))
    if result is REQUIRED:
        cause = causes[0] if len(kinds) == 1 else " or ".join(_describe(k) for k in kinds)
        cause = cause if len(kinds) == 1 else f"expected {cause}, got {value!r}"
        raise ConfigError(src, key, cause.replace("{section}", key))
    inner = annotation.partition("[")[2].partition(",")[0]
    if isinstance(result, tuple) and inner in _NESTED:
        schema = _NESTED[inner]
        result = tuple(
            read_section(schema, item, f"{key}[{i}]", src) for i, item in enumerate(result)
        )
    low, high, above = meta.get("min"), meta.get("max"), meta.get("above")
    if isinstance(result, int | float) and not isinstance(result, bool):
        if low is not None and result < low:
            raise ConfigError(src, key, f"expected {low:g} or more, got {value!r}")
        if high is not None and result > high:
            raise ConfigError(src, key, f"expected at most {high:g}, got {value!r}")
        if above is not None and result <= above:
            raise ConfigError(src, key, f"expected a number above {above:g}, got {value!r}")
    if meta.get("choices") and result not in meta["choices"]:
        raise ConfigError(src, key, f"expected one of {', '.join(meta['choices'])}, got {value!r}")
    check = meta.get("check")
    if check is not None and (cause := check(result)):
        raise ConfigError(src, key, cause)
    return result
