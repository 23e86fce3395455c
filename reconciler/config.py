"""Host settings from /etc/reconciler/config.toml, then RECONCILER_* env vars, then flags (pure
but for ``load``, which reads the one file).

Every section of the file is declared here as a small schema class (``[notify]``,
``[diagnostics]``, ``[monitor]``, ``[metrics]``, ``[backup]``, ``[etl]``, ``[webhook]``,
``[promote]``) and read
by **one** generic reader, ``schema.read_section``: the key's annotation is its type (an
``int`` refuses ``2.7``, a ``bool`` refuses ``1``), ``opt(...)`` holds the default, the
range, the choices or a check, and a class may add a ``problem()`` for rules between keys.
An unknown key, a wrong type or an out-of-range value is a :class:`UsageError` (exit 2)
naming the file actually read and the key path (``backup.sources[0].path``). ``load`` reads
every section at once, so a typo in ``[notify]`` stops every command instead of silently
sending no alert; the modules get typed objects (``settings.backup``) and keep only what
they derive from them.

Why not pydantic (already used for the inventory): importing it and building one model costs
~170 ms over a bare interpreter on this machine (median of 7 runs), and every oneshot (the
minute metrics job, each monitor pass) reads this file. Why not ``@dataclass(frozen=True)``
for the schemas: executing this module took 13.5 ms that way, 3.0 ms with ``Section``
(1.6 ms before any schema existed; medians of 40 in-process runs).
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from reconciler.errors import UsageError
from reconciler.schema import ConfigError as ConfigError
from reconciler.schema import Section as Section
from reconciler.schema import keys as keys
from reconciler.schema import opt as opt
from reconciler.schema import read_section as read_section
from reconciler.schema import unknown_key

DEFAULT_CONFIG = Path("/etc/reconciler/config.toml")
T = TypeVar("T")


# ---- the sections ------------------------------------------------------------------------


def _http_url(value: str) -> str | None:
    parts = urlsplit(value)
    ok = parts.scheme in ("http", "https") and parts.hostname
    return None if ok else f"expected an http:// or https:// URL, got {value!r}"


def _listen(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return f"'{value}': expected HOST:PORT, e.g. 127.0.0.1:9420 (or :9420 for every address)"
    return None


def _duration(value: object) -> str | None:
    if isinstance(value, float):
        return None if value >= 1 else f"expected a duration of 1s or more, got {value!r}"
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$", str(value))
    return None if match else f"expected a duration such as 30m, 1h or 2d, got {value!r}"


def _size(value: object) -> str | None:
    if isinstance(value, int):
        return None if value > 0 else f"expected a positive size, got {value!r}"
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", str(value), re.IGNORECASE)
    ok = match and float(match[1]) > 0
    return None if ok else f"expected a positive size in bytes or like '10G', got {value!r}"


def _source_name(value: str) -> str | None:
    ok = re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", value)
    return None if ok else "expected a name of letters, digits, '.', '_' or '-'"


def _method(value: str) -> str | None:
    methods = ("POST", "PUT", "PATCH", "GET")
    return None if value.upper() in methods else f"expected one of {', '.join(methods)}"


def _url_path(value: str) -> str | None:
    return None if value.startswith("/") else f"expected a path starting with '/', got {value!r}"


def _volume(value: str) -> str | None:
    ok = value and not value.startswith("-") and "/" not in value
    return None if ok else "expected a Docker volume name"


class Notify(Section):
    """``[notify]``: the signed alert webhook for new and resolved findings."""

    url: str | None = opt(None, check=_http_url)  # no url: no webhook
    secret_file: Path | None = opt(None)
    timeout_sec: float = opt(5.0, above=0)
    retries: int = opt(3, min=0)  # attempts after the first one
    backoff_sec: float = opt(0.5, min=0)

    def problem(self) -> tuple[str, str] | None:
        if self.url and self.secret_file is None:
            return "secret_file", "required with notify.url (a root-only file with the secret)"
        return None


class Diagnostics(Section):
    """``[diagnostics]``: the bundle written when a finding opens."""

    directory: Path | None = opt(None)  # None: <state_dir>/diagnostics
    enabled: bool = opt(True)
    journal_command: tuple[str, ...] = opt(("journalctl",), split=True)
    window_sec: float = opt(600.0, min=0)
    max_lines: int = opt(5000, min=0)
    kernel_lines: int = opt(200, min=0)
    workers: int = opt(2, min=1)
    max_pending: int = opt(16, min=1)
    max_per_pass: int = opt(10, min=0)
    max_total_mb: float = opt(256.0, min=0)
    max_age_days: float = opt(14.0, min=0)
    command_timeout_sec: float = opt(30.0, above=0)


class Monitor(Section):
    """``[monitor]``: the pattern thresholds (None: ``patterns.Thresholds``' default), the
    pass's own keys, and the watch daemon's ``watch_*`` keys."""

    # patterns.Thresholds (ranges checked there too); tests/unit/test_config keeps them equal
    restart_threshold: int | None = opt(None, min=1)
    restart_window_sec: float | None = opt(None, above=0)
    rapid_restart_sec: float | None = opt(None, above=0)
    flap_transitions: int | None = opt(None, min=1)
    flap_window_sec: float | None = opt(None, above=0)
    periodic_min_events: int | None = opt(None, min=3)
    periodic_max_cv: float | None = opt(None, above=0)
    clustering_min_events: int | None = opt(None, min=1)
    clustering_share: float | None = opt(None, above=0, max=1)
    history_days: float | None = opt(None, above=0)
    memory_min_samples: int | None = opt(None, min=1)
    memory_min_span_sec: float | None = opt(None, above=0)
    memory_min_slope_bytes_per_hour: float | None = opt(None, above=0)
    memory_min_r2: float | None = opt(None, above=0, max=1)
    anomaly_factor: float | None = opt(None, above=0)
    anomaly_recent_sec: float | None = opt(None, above=0)
    anomaly_min_events: int | None = opt(None, min=1)
    anomaly_min_baseline_days: float | None = opt(None, above=0)
    missed_run_grace_sec: float | None = opt(None, above=0)
    hold_down_sec: float | None = opt(None, above=0)
    # the pass
    textfile: str | None = opt(None)  # None: <state_dir>/reconciler.prom; "": no textfile
    impact_depth: int = opt(3, min=0)
    detect_window_sec: float = opt(6 * 3600.0, min=0)
    observation_days: float | None = opt(None, min=0)
    observations_per_unit: int | None = opt(None, min=0)
    event_days: float | None = opt(None, min=0)
    events_per_unit: int | None = opt(None, min=0)
    resolved_days: float | None = opt(None, min=0)
    # the watch daemon
    watch_include: tuple[str, ...] = opt((), single=True)
    watch_exclude: tuple[str, ...] = opt((), single=True)
    watch_reread_sec: float = opt(60.0, min=1)
    watch_memory_sec: float = opt(300.0, min=1)
    watch_pass_sec: float = opt(300.0, min=10)
    watch_queue_size: int = opt(4096, min=16, max=1_000_000)

    def problem(self) -> tuple[str, str] | None:
        if self.textfile and not self.textfile.startswith("/"):
            return "textfile", 'expected an absolute path (or "" for none)'
        return None


class Metrics(Section):
    """``[metrics]``: what the minute job samples (None: every local one) and keeps."""

    mounts: tuple[str, ...] | None = opt(None)
    disks: tuple[str, ...] | None = opt(None)
    interfaces: tuple[str, ...] | None = opt(None)
    keep_raw: float | str | None = opt(None, check=_duration)
    keep_5m: float | str | None = opt(None, check=_duration)
    keep_1h: float | str | None = opt(None, check=_duration)


class BackupSource(Section):
    """One ``[[backup.sources]]`` table: a directory or a Docker volume."""

    name: str = opt(check=_source_name)
    path: Path | None = opt(None)
    docker_volume: str | None = opt(None, check=_volume)

    def problem(self) -> tuple[str, str] | None:
        if (self.path is None) == (self.docker_volume is None):
            return "", f"source '{self.name}' needs exactly one of path or docker_volume"
        return None


class Backup(Section):
    """``[backup]``: what the daily job archives, where, and how many it keeps."""

    dest: Path | None = opt(None)  # None: <state_dir>/backups
    sources: tuple[BackupSource, ...] = opt(())
    compression: str = opt("gzip", choices=("gzip", "bzip2", "xz", "none"))
    keep_last: int | None = opt(None, min=1)  # None (and no other limit): 7
    max_age_days: float | None = opt(None, above=0)
    max_total_bytes: int | str | None = opt(None, check=_size)

    def problem(self) -> tuple[str, str] | None:
        names = [s.name for s in self.sources]
        twice = sorted({n for n in names if names.count(n) > 1})
        return ("sources", f"source name '{twice[0]}' is used twice") if twice else None


class Etl(Section):
    """``[etl]``: the HTTP call that triggers the ETL sync (no url nor base_url: no call)."""

    url: str | None = opt(None, check=_http_url)
    base_url: str | None = opt(None, check=_http_url)
    path: str | None = opt(None, check=_url_path)
    method: str = opt("POST", check=_method)
    connect_timeout_sec: float = opt(5.0, min=0)
    read_timeout_sec: float = opt(30.0, min=0)
    retries: int = opt(3, min=0)  # after the first attempt
    backoff_sec: float = opt(1.0, min=0)
    backoff_max_sec: float = opt(60.0, min=0)
    retry_after_max_sec: float = opt(300.0, min=0)
    total_sec: float = opt(600.0, min=0)  # the whole call, retries and waits included
    max_body_bytes: int = opt(64 * 1024, min=1)
    token_file: Path | None = opt(None)
    body: dict[str, Any] | None = opt(None)

    def problem(self) -> tuple[str, str] | None:
        if self.url and (self.base_url or self.path):
            return "url", "set either url, or base_url and path, not both"
        return None


class Webhook(Section):
    """``[webhook]``: the push webhook. ``listen`` is where its socket listens (the socket
    unit follows it) and where ``reconciler webhook`` binds when run by hand."""

    listen: str = opt("127.0.0.1:9420", check=_listen)
    debounce_sec: float = opt(10.0, above=0)
    max_body_bytes: int = opt(1 << 20, above=0)
    replay_window_sec: float = opt(24 * 3600.0, above=0)
    replay_keep: int = opt(1000, above=0)
    reject_burst: int = opt(20, above=0)  # rejected requests an address may send at once ...
    reject_per_sec: float = opt(1.0, above=0)  # ... and then per second, before it gets 429
    max_connections: int = opt(64, above=0)
    max_connections_per_client: int = opt(16, above=0)  # one address's share (slowloris)
    header_timeout_sec: float = opt(5.0, above=0)  # request line and headers, in all
    body_timeout_sec: float = opt(10.0, above=0)  # the body, in all


class Promote(Section):
    """``[promote]``: the promoter (``reconciler promote``, ``fleet``), run on one machine."""

    repo: str | None = opt(None)  # None: the top-level repo
    source: str | None = opt(None)  # branch read first for rollout.toml; None: the top-level ref
    prometheus_url: str | None = opt(None, check=_http_url)
    alertmanager_url: str | None = opt(None, check=_http_url)  # set: alerts from it (silences)
    webhook: str | None = opt(None, check=_http_url)  # halts notified here (else [notify] url)
    webhook_secret_file: Path | None = opt(None)
    timeout_sec: float = opt(10.0, above=0)  # each git process and each HTTP call
    max_response_mb: float = opt(64.0, above=0)  # a Prometheus answer larger is refused
    cache_dir: Path | None = opt(None)  # None: <state_dir>/promote

    def problem(self) -> tuple[str, str] | None:
        if self.webhook and self.webhook_secret_file is None:
            return "webhook_secret_file", "required with promote.webhook"
        return None


SECTIONS: dict[str, type] = {
    "notify": Notify,
    "diagnostics": Diagnostics,
    "monitor": Monitor,
    "metrics": Metrics,
    "backup": Backup,
    "etl": Etl,
    "webhook": Webhook,
    "promote": Promote,
}


# ---- the settings ------------------------------------------------------------------------


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
    render_cpu_sec: float = 10.0  # CPU time of one render (reconcile/jail.py)
    render_memory_mb: float = 512.0  # memory a render may add to the sync process
    max_units: int = 20_000  # units one host may be given (10,000 services with timers)
    cache_max_mb: int = 512  # the git cache is trimmed to what is reachable past this
    allow_downgrade: bool = False  # allow a ref move that is not a fast-forward (signed, rollout)
    files_roots: tuple[str, ...] = ()  # where [files."PATH"] may write (empty: nowhere)
    root_dir: Path | None = None  # the host's / (None: the root unit_dir is under, else /)
    rollout: bool = False  # follow this host's wave ref (inventory/rollout.toml), not `ref`
    poll_backoff_sec: float = 60.0  # after a git server refused: the first wait, doubled ...
    poll_backoff_max_sec: float = 3600.0  # ... up to this (a Retry-After is capped here too)
    poll_retry_sec: float = 120.0  # a timer's run refused for at most this tries once more
    sections: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)
    path: Path | None = field(default=None, compare=False)  # the file read, if any

    @property
    def host_name(self) -> str:
        return self.host or socket.gethostname()

    @property
    def host_root(self) -> Path:
        """The host's ``/``: ``root_dir``, else the root ``unit_dir`` is the
        ``etc/systemd/system`` of (a disposable host's from outside), else ``/``."""
        if self.root_dir is not None:
            return self.root_dir
        text = str(self.unit_dir).rstrip("/")
        suffix = "/etc/systemd/system"
        return Path(text[: -len(suffix)] or "/") if text.endswith(suffix) else Path("/")

    @property
    def source(self) -> str:
        """The file the sections came from, as error messages name it."""
        return str(self.path) if self.path else "config.toml"

    def section(self, name: str) -> dict[str, Any]:
        """The raw table (prefer the typed properties below)."""
        return self.sections.get(name, {})

    def _read(self, name: str, schema: type[T]) -> T:
        return read_section(schema, self.sections.get(name, {}), name, self.source)

    @cached_property
    def notify(self) -> Notify:
        return self._read("notify", Notify)

    @cached_property
    def diagnostics(self) -> Diagnostics:
        return self._read("diagnostics", Diagnostics)

    @cached_property
    def monitor(self) -> Monitor:
        return self._read("monitor", Monitor)

    @cached_property
    def metrics(self) -> Metrics:
        return self._read("metrics", Metrics)

    @cached_property
    def backup(self) -> Backup:
        return self._read("backup", Backup)

    @cached_property
    def etl(self) -> Etl:
        return self._read("etl", Etl)

    @cached_property
    def webhook(self) -> Webhook:
        return self._read("webhook", Webhook)

    @cached_property
    def promote(self) -> Promote:
        return self._read("promote", Promote)


_PATHS = {"state_dir", "unit_dir", "run_dir", "webhook_secret_file", "gpg_home", "root_dir"}
_PATH_LISTS = {"files_roots"}


def _roots(source: str, key: str, value: Any, *, text: bool) -> tuple[str, ...]:
    """Absolute, plain directory paths (``..``, ``.``, ``//`` refused); ``:``-separated in
    the environment."""
    items = [v for v in value.split(":") if v] if text and isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ConfigError(source, key, f"expected a list of absolute paths, got {value!r}")
    out = []
    for item in items:
        parts = item.rstrip("/").split("/")
        if not item.startswith("/") or any(p in ("", ".", "..") for p in parts[1:]):
            raise ConfigError(source, key, f"expected a plain absolute path, got {item!r}")
        out.append(item.rstrip("/") or "/")
    return tuple(out)


_BOOLS = {"verify_signatures", "allow_empty", "allow_downgrade", "rollout"}
_FLOATS = {"lock_timeout_sec", "fetch_timeout_sec", "render_cpu_sec", "render_memory_mb"}
_FLOATS |= {"poll_backoff_sec", "poll_backoff_max_sec", "poll_retry_sec"}
_INTS = {"max_units", "cache_max_mb"}


def _top(source: str, key: str, value: Any, *, text: bool) -> Any:
    """A top-level key; ``text``: it came from the environment or a flag (always a string)."""
    if key in _PATH_LISTS:
        return _roots(source, key, value, text=text)
    if key in _PATHS:
        if not isinstance(value, str) or not value:
            raise ConfigError(source, key, "expected a path")
        return Path(value)
    if key in _BOOLS:
        if text and isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        if not isinstance(value, bool):
            raise ConfigError(source, key, f"expected true or false, got {value!r}")
        return value
    if key in _INTS:
        if text and isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(source, key, f"expected a whole number above 0, got {value!r}")
        return value
    if key in _FLOATS:
        if text:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ConfigError(source, key, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(source, key, f"expected a number above 0, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(source, key, f"expected a string, got {value!r}")
    return value


def load(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from the config file (if any), the environment, then ``overrides`` (flags).

    Every section is read here, so a bad value anywhere stops the command before it acts.
    """
    names = {f.name for f in fields(Settings)} - {"sections", "path"}
    explicit = path or (
        Path(os.environ["RECONCILER_CONFIG"]) if "RECONCILER_CONFIG" in os.environ else None
    )
    config_path = explicit or DEFAULT_CONFIG
    source = str(config_path)
    values: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    read: Path | None = config_path
    try:
        with open(config_path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if explicit:
            raise UsageError(f"cannot read config '{config_path}': no such file") from None
        data, read = {}, None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"cannot read config '{config_path}': {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot read config '{config_path}': {exc.strerror}") from None
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(source, key, "expected a table")
            sections[key] = value
        elif key in names:
            values[key] = _top(source, key, value, text=False)
        else:
            raise ConfigError(source, key, unknown_key(key, names | SECTIONS.keys()))
    for key in names:
        env = os.environ.get(f"RECONCILER_{key.upper()}")
        if env is not None:
            values[key] = _top(f"${'RECONCILER_' + key.upper()}", key, env, text=True)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = (
                _top(f"--{key}", key, value, text=True) if isinstance(value, str) else value
            )
    settings = replace(Settings(sections=sections, path=read), **values)
    for name in SECTIONS:
        getattr(settings, name)  # refuse a bad section now, not when a pass reaches it
    return settings
