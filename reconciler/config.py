"""Host settings from /etc/reconciler/config.toml, then RECONCILER_* env vars, then flags.

Reads one small TOML file; deliberately free of pydantic so every oneshot starts cheaply.
Sections for jobs and the monitor (``[backup]``, ``[etl]``, ``[monitor]``, ...) are kept raw
and validated by the module that uses them.
"""

from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from reconciler.errors import UsageError

DEFAULT_CONFIG = Path("/etc/reconciler/config.toml")
SECTIONS = ("monitor", "metrics", "backup", "etl", "webhook", "notify", "diagnostics")


@dataclass(frozen=True)
class Settings:
    repo: str | None = None
    ref: str = "main"
    host: str | None = None
    state_dir: Path = Path("/var/lib/reconciler")
    unit_dir: Path = Path("/etc/systemd/system")
    run_dir: Path = Path("/run/reconciler")
    bus: str | None = None  # None: the system bus (or systemd's private socket as root)
    database_url: str | None = None
    webhook_secret_file: Path | None = None
    verify_signatures: bool = False
    gpg_home: Path | None = None  # keyring with the trusted signing keys
    lock_timeout_sec: float = 60.0
    fetch_timeout_sec: float = 60.0  # one fetch (and signature check) of the config repo
    allow_empty: bool = False  # allow an inventory that prunes every owned unit
    sections: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)

    @property
    def host_name(self) -> str:
        return self.host or socket.gethostname()

    def section(self, name: str) -> dict[str, Any]:
        return self.sections.get(name, {})


_PATHS = {"state_dir", "unit_dir", "run_dir", "webhook_secret_file", "gpg_home"}
_BOOLS = {"verify_signatures", "allow_empty"}
_FLOATS = {"lock_timeout_sec", "fetch_timeout_sec"}


def _convert(source: str, key: str, value: Any) -> Any:
    if key in _PATHS:
        if not isinstance(value, str) or not value:
            raise UsageError(f"{source}: {key}: expected a path")
        return Path(value)
    if key in _BOOLS:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        if not isinstance(value, bool):
            raise UsageError(f"{source}: {key}: expected true or false")
        return value
    if key in _FLOATS:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{source}: {key}: expected a number") from None
    if not isinstance(value, str):
        raise UsageError(f"{source}: {key}: expected a string")
    return value


def load(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from the config file (if any), the environment, then ``overrides`` (flags)."""
    names = {f.name for f in fields(Settings)} - {"sections"}
    explicit = path or (
        Path(os.environ["RECONCILER_CONFIG"]) if "RECONCILER_CONFIG" in os.environ else None
    )
    config_path = explicit or DEFAULT_CONFIG
    values: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    try:
        with open(config_path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if explicit:
            raise UsageError(f"cannot read config '{config_path}': no such file") from None
        data = {}
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{config_path}: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot read config '{config_path}': {exc.strerror}") from None
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise UsageError(f"{config_path}: {key}: expected a table")
            sections[key] = value
        elif key in names:
            values[key] = _convert(str(config_path), key, value)
        else:
            raise UsageError(f"{config_path}: {key}: unknown key")
    for key in names:
        env = os.environ.get(f"RECONCILER_{key.upper()}")
        if env is not None:
            values[key] = _convert(f"${'RECONCILER_' + key.upper()}", key, env)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _convert("flag", key, value) if isinstance(value, str) else value
    return replace(Settings(sections=sections), **values)
