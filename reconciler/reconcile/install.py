"""Install the reconciler's own units from ``units/`` (talks to the filesystem and systemd).

The units go through the same plan/apply path as a sync, but are tracked in a manifest of
their own (not the sync's), so a sync never prunes them and an inventory can never take
them over by accident. A second install with nothing changed makes no mutating D-Bus call.

The files in ``units/`` are hardened for the usual layout (code under /usr or /opt).
``adapt`` (pure) fits them to where this interpreter and package really live and to the
host config, because hardening that hides the code makes a unit fail with 203/EXEC:

* code under /home, /root or /run/user: ``ProtectHome=yes`` becomes ``tmpfs`` and only the
  code's directories are bound back read-only (``BindReadOnlyPaths=``; systemd's documented
  use of ``tmpfs``), which scores the same as ``yes`` in ``systemd-analyze security``;
* code under /tmp or /var/tmp: bound read-only through ``PrivateTmp=`` (systemd 252 resolves
  bind sources before it mounts the private /tmp; measured). It works until the next boot
  empties /tmp (or systemd-tmpfiles ages /var/tmp out), so install says so;
* a config repository given as a local path (``repo``, ``[promote] repo``) under those
  directories: bound read-only in the unit that fetches it (the sync, the promoter) the same
  way; else every timer's sync failed with "does not appear to be a git repository" while
  ``reconciler sync`` by hand worked (found by a first operator trial);
* ``LoadCredential=etl-token:/etc/reconciler/etl-token`` only when that file exists: with a
  missing source systemd 252 fails the unit with 243/CREDENTIALS (measured; the bare
  ``LoadCredential=ID`` form does not search /etc/credstore before systemd 254). Without
  it the job reads ``token_file`` from ``[etl]``. Run install again after adding the file;
* ``PrivateUsers=`` dropped where this host cannot create a user namespace (probed:
  a chroot, as in the disposable test host, or ``user.max_user_namespaces=0``); systemd
  would fail the unit with 217/USER. It costs 0.2 of exposure score;
* writable paths named in the config outside the state dir (``[backup] dest``,
  ``[monitor] textfile``, ``[diagnostics] directory``, ``state_dir``) get
  ``ReadWritePaths=-PATH`` in the units that write them, and install creates them;
* ``files_roots`` are writable for the sync (``ReadWritePaths=-ROOT``; a missing root is
  created 0755 before it starts: ``ProtectSystem=strict`` would refuse the first file).

A config change reaches the units through ``reconciler-config.service`` (``follow_config``,
then a sync under the unit it wrote): a running sync cannot widen its own sandbox, so one
that finds its own unit changed (``changes_sync_unit``) hands over to that service.

Install also creates the webhook secret (random, 0600) the webhook socket waits for, and
writes ``/etc/reconciler/config.toml`` once (never over an operator's file).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from reconciler import package_data, runtime
from reconciler.config import DEFAULT_CONFIG, Settings
from reconciler.core import plan as plan_mod
from reconciler.errors import ApplyError, UsageError
from reconciler.host import lock
from reconciler.model import DesiredUnit, Plan, WriteUnitFile
from reconciler.reconcile import apply, validate
from reconciler.reconcile.observe import read_host
from reconciler.store.sync_store import INSTALLED_KEY, OPT_IN_UNITS, SYNC_UNIT

MANIFEST_KEY = INSTALLED_KEY  # the monitor reads it too: the own timers are monitored
USERNS_KEY = "install_user_namespaces"  # what install probed; a sync cannot probe it
PLACEHOLDER = "@RECONCILER@"
# Started and enabled by install; every other unit is run by one of these.
ACTIVE = {"reconciler-watch.service"}
OPT_IN = OPT_IN_UNITS  # installed, never enabled by install
DEFAULT_STATE_DIR = PurePosixPath("/var/lib/reconciler")
DEFAULT_SECRET = PurePosixPath("/etc/reconciler/webhook-secret")
DEFAULT_LISTEN = "127.0.0.1:9420"
_LISTEN = re.compile(r"^(?:\[[0-9A-Fa-f:.%]+\]|[A-Za-z0-9.%-]*):[0-9]{1,5}$")
ETL_TOKEN = PurePosixPath("/etc/reconciler/etl-token")
HOME_DIRS = ("/home", "/root", "/run/user")  # what ProtectHome= hides
TMP_DIRS = ("/tmp", "/var/tmp")  # what PrivateTmp= replaces
# Units that run a monitoring pass (and so write the textfile and diagnostics bundles).
MONITORS = ("gitops-sync.service", "reconciler-monitor.service", "reconciler-watch.service")
BACKUP = "volume-backup.service"
SYNC = SYNC_UNIT
CONFIG_UNIT = "reconciler-config.service"  # follows the host config, then starts SYNC
PROMOTE = "reconciler-promote.service"
WEBHOOK = "reconciler-webhook.service"
# Paths written into unit files unquoted: anything else would need systemd escaping.
_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._+@:,=~/-]*$")
_MUTATING = frozenset(
    {"Reload", "EnableUnitFiles", "DisableUnitFiles", "StartUnit", "RestartUnit", "StopUnit"}
    | {"ResetFailedUnit"}
)


@dataclass(frozen=True)
class Layout:
    """Where things are on this host, as far as the own units care (plain data)."""

    command: str  # what replaces @RECONCILER@
    pythonpath: str | None = None
    code_paths: tuple[str, ...] = ()  # directories the interpreter and the package live in
    webhook_secret: str = str(DEFAULT_SECRET)
    etl_token: str | None = None  # None: no token file, no LoadCredential=etl-token
    writable: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # unit -> paths
    user_namespaces: bool = True  # False: PrivateUsers= would fail every unit using it
    listen: str = DEFAULT_LISTEN  # the webhook socket's ListenStream= ([webhook] listen)
    config: str = str(DEFAULT_CONFIG)  # the host config the path unit watches
    files_roots: tuple[str, ...] = ()  # where the sync writes config files (files_roots)
    reads: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # unit -> local repos


@dataclass(frozen=True)
class Installed:
    plan: Plan
    config_written: Path | None = None
    secret_written: Path | None = None
    notes: tuple[str, ...] = ()
    dbus_calls: Mapping[str, int] = field(default_factory=dict)  # D-Bus method -> calls

    @property
    def mutating_calls(self) -> int:
        return sum(n for method, n in self.dbus_calls.items() if method in _MUTATING)


# ---- the pure part ---------------------------------------------------------------------


def _under(path: str, tops: Iterable[str]) -> bool:
    return any(PurePosixPath(path).is_relative_to(top) for top in tops)


def outermost(paths: Iterable[str]) -> tuple[str, ...]:
    """Sorted, without duplicates and without paths inside another one of them."""
    kept: list[str] = []
    for path in sorted(set(paths), key=lambda p: (len(PurePosixPath(p).parts), p)):
        if not _under(path, kept):
            kept.append(path)
    return tuple(sorted(kept))


def _settings(text: str, section: str) -> dict[str, str]:
    """The last value of each key in one section (systemd's "later wins" for scalars)."""
    values: dict[str, str] = {}
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            inside = line == f"[{section}]"
        elif inside and "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def adapt(name: str, text: str, layout: Layout) -> str:
    """One unit file of ``units/`` as installed on a host with ``layout`` (see module doc)."""
    text = text.replace(PLACEHOLDER, layout.command)
    service = _settings(text, "Service")
    home = service.get("ProtectHome", "no")
    # A config file install was given elsewhere than the default: every command the units
    # run reads that one (RECONCILER_CONFIG), and it is bound back in where hidden.
    own_config = layout.config != str(DEFAULT_CONFIG)
    needed = (*layout.code_paths, layout.config) if own_config else layout.code_paths
    needed = (*needed, *layout.reads.get(name, ()))
    hidden_home = [p for p in needed if home in ("yes", "tmpfs") and _under(p, HOME_DIRS)]
    hidden_tmp = [p for p in needed if service.get("PrivateTmp") == "yes" and _under(p, TMP_DIRS)]
    extra: list[str] = []
    if "[Service]" in text and layout.pythonpath:
        extra.append(f"Environment=PYTHONPATH={layout.pythonpath}")
    if "[Service]" in text and own_config:
        extra.append(f"Environment=RECONCILER_CONFIG={layout.config}")
    if hidden_home or hidden_tmp:
        extra.append("BindReadOnlyPaths=" + " ".join(outermost(hidden_home + hidden_tmp)))
    if writable := layout.writable.get(name):
        paths = outermost(writable)
        extra.append("ReadWritePaths=" + " ".join(f"-{p}" for p in paths))
        # ReadWritePaths= cannot grant what does not exist, and the unit cannot create it
        # under ProtectSystem=strict: made first, outside the sandbox ("+"), when missing.
        extra.append("ExecStartPre=+mkdir -p -m 0700 " + " ".join(paths))
    if name == SYNC and layout.files_roots:
        # The sync writes config files under the host's files_roots, which
        # ProtectSystem=strict keeps read-only; a missing root is made as a config directory.
        roots = outermost(layout.files_roots)
        extra.append("ReadWritePaths=" + " ".join(f"-{p}" for p in roots))
        extra.append("ExecStartPre=+mkdir -p -m 0755 " + " ".join(roots))
    lines: list[str] = []
    section = ""
    for line in text.splitlines():
        if line.startswith("["):
            if section == "[Service]":
                _append(lines, extra)
            section = line.strip()
        key, _, value = line.partition("=")
        if key == "ProtectHome" and value == "yes" and hidden_home:
            line = "ProtectHome=tmpfs"  # hide homes, bind the code back read-only
        elif key == "ConditionPathExists" and value == str(DEFAULT_SECRET):
            line = f"ConditionPathExists={layout.webhook_secret}"
        elif key == "LoadCredential" and value.startswith("webhook-secret:"):
            line = f"LoadCredential=webhook-secret:{layout.webhook_secret}"
        elif key == "ListenStream":
            line = f"ListenStream={listen_stream(layout.listen)}"
        elif key == "PathChanged" and value == str(DEFAULT_CONFIG):
            line = f"PathChanged={layout.config}"
        elif key == "PrivateUsers" and not layout.user_namespaces:
            continue  # 217/USER otherwise
        elif key == "LoadCredential" and value.startswith("etl-token:"):
            if layout.etl_token is None:
                continue  # a missing source fails the unit (243/CREDENTIALS)
            line = f"LoadCredential=etl-token:{layout.etl_token}"
        lines.append(line)
    if section == "[Service]":
        _append(lines, extra)
    return "\n".join(lines) + "\n"


def listen_stream(listen: str) -> str:
    """``[webhook] listen`` as systemd's ``ListenStream=``: ``:9420`` (every address) is
    ``9420``; ``HOST:PORT`` and ``[V6]:PORT`` are written as they are."""
    if not _LISTEN.match(listen):
        raise UsageError(
            f"cannot install: [webhook] listen '{listen}' is not HOST:PORT",
            "use an address and a port, e.g. 127.0.0.1:9420, [::1]:9420 or :9420",
        )
    return listen[1:] if listen.startswith(":") else listen


def _append(lines: list[str], extra: Sequence[str]) -> None:
    """Add ``extra`` at the end of the section being built, before its trailing blank lines."""
    blanks = 0
    while lines and not lines[-1].strip():
        lines.pop()
        blanks += 1
    lines.extend(extra)
    lines.extend([""] * blanks)


def build_units(
    settings: Settings | None = None,
    *,
    units_dir: Path | None = None,
    layout: Layout | None = None,
) -> list[DesiredUnit]:
    """The own units as DesiredUnits, fitted to this host (``read_layout``) or ``layout``."""
    if units_dir is None:
        units_dir = package_data.find("units")
    if not units_dir.is_dir():
        raise UsageError(
            f"cannot install: no units directory '{units_dir}'",
            "run 'reconciler install' from a checkout of the project",
        )
    if layout is None:
        layout = read_layout(settings or Settings())
    units = []
    for path in sorted(units_dir.iterdir()):
        if path.suffix not in (".service", ".timer", ".socket", ".path"):
            continue
        active = path.suffix in (".timer", ".socket", ".path") or path.name in ACTIVE
        active = active and path.name not in OPT_IN
        units.append(
            DesiredUnit(
                name=path.name,
                content=adapt(path.name, path.read_text(), layout),
                service=path.stem,
                enable=active,
                start=active,
            )
        )
    return units


# ---- reading this host -----------------------------------------------------------------


def exec_command() -> tuple[str, str | None]:
    """How units should run this reconciler: ``python -m reconciler``, and a PYTHONPATH
    when the package is not importable from that interpreter's own site-packages."""
    package_parent = Path(__file__).resolve().parents[2]
    prefix = Path(sys.prefix).resolve()
    needs_path = not package_parent.is_relative_to(prefix)
    return f"{shlex.quote(sys.executable)} -m reconciler", (
        _plain(str(package_parent)) if needs_path else None
    )


def code_paths() -> tuple[str, ...]:
    """Directories a unit must see to run this interpreter and package (as given and real)."""
    package_parent = Path(__file__).resolve().parents[2]
    found = [
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(sys.executable).parent,
        Path(sys.executable).resolve().parent,
        package_parent,
    ]
    found += [p.resolve() for p in found]
    return outermost(_plain(str(p)) for p in found)


def writable_paths(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Per own unit, the paths the config tells it to write outside the default state dir."""

    state = Path(settings.state_dir)
    common = [] if state.is_relative_to(DEFAULT_STATE_DIR) else [state]
    textfile = Path(settings.monitor.textfile) if settings.monitor.textfile else None
    wanted = {
        BACKUP: [settings.backup.dest],
        **{
            m: [textfile.parent if textfile else None, settings.diagnostics.directory]
            for m in MONITORS
        },
    }
    result: dict[str, tuple[str, ...]] = {}
    jobs = (*MONITORS, BACKUP, "metrics-sample.service", "reading-sync.service", WEBHOOK)
    for name in (*jobs, CONFIG_UNIT):
        extra = [p for p in wanted.get(name, []) if p is not None]
        extra = [
            p for p in extra if not (p.is_relative_to(DEFAULT_STATE_DIR) or p.is_relative_to(state))
        ]
        if common or extra:
            result[name] = outermost(_plain(str(p)) for p in [*common, *extra])
    return result


def read_layout(settings: Settings, user_namespaces: bool | None = None) -> Layout:
    """This host's layout; ``user_namespaces`` given: not probed again (see follow_config)."""
    command, pythonpath = exec_command()
    return Layout(
        command=command,
        pythonpath=pythonpath,
        code_paths=code_paths(),
        webhook_secret=_plain(str(settings.webhook_secret_file or DEFAULT_SECRET)),
        etl_token=str(ETL_TOKEN) if Path(ETL_TOKEN).is_file() else None,
        writable=writable_paths(settings),
        user_namespaces=user_namespaces_work() if user_namespaces is None else user_namespaces,
        listen=settings.webhook.listen,
        config=_plain(str(settings.path or DEFAULT_CONFIG)),
        files_roots=tuple(_plain(r) for r in settings.files_roots),
        reads=local_repos(settings),
    )


def local_repos(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Per own unit, the config repository it fetches when that is a local path the unit's
    sandbox hides (under ``HOME_DIRS`` or ``TMP_DIRS``): to be bound back read-only."""
    wanted = {SYNC: settings.repo, PROMOTE: settings.promote.repo or settings.repo}
    found: dict[str, tuple[str, ...]] = {}
    for unit, url in wanted.items():
        path = url.removeprefix("file://") if url else ""
        if path.startswith("/") and _under(path, (*HOME_DIRS, *TMP_DIRS)):
            found[unit] = (_plain(str(PurePosixPath(path))),)
    return found


def user_namespaces_work() -> bool:
    """Whether a process here can create a user namespace (what PrivateUsers= needs)."""
    try:
        proc = subprocess.run(
            ["unshare", "--user", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return True  # cannot tell: keep the hardening as written
    return proc.returncode == 0


def _plain(path: str) -> str:
    if not _PLAIN_PATH.match(path):
        raise UsageError(
            f"cannot install: path '{path}' holds characters a unit file would need escaped",
            "install from (or configure) a path of letters, digits and . _ - + @ / only",
        )
    return path


def notes_for(layout: Layout, settings: Settings) -> tuple[str, ...]:
    repos = {p for paths in layout.reads.values() for p in paths}
    notes = [
        f"{p} is under a temporary directory: the units bind it read-only, but "
        + (
            "systemd-tmpfiles removes what is left unused in /var/tmp (30 days by default)"
            if _under(p, ("/var/tmp",))
            else "it may be emptied at the next boot"
        )
        + f"; {'keep the config repository' if p in repos else 'install from a path'} "
        "outside /tmp and /var/tmp to keep them working"
        for p in sorted({*layout.code_paths, *repos})
        if _under(p, TMP_DIRS)
    ]
    if not layout.user_namespaces:
        notes.append(
            "no user namespaces on this host: PrivateUsers= left out of the units "
            "(systemd would fail them with 217/USER)"
        )
    etl = settings.etl
    if (etl.url or etl.base_url) and layout.etl_token is None and etl.token_file is None:
        notes.append(
            f"no {ETL_TOKEN}: reading-sync.service sends no token (create it, mode 0600, "
            "and run 'reconciler install' again, or set token_file in [etl])"
        )
    return tuple(notes)


# ---- writing ---------------------------------------------------------------------------


def write_config(path: Path, settings: Settings) -> Path | None:
    """Write the host config once (never overwrite an operator's file); mode 0600."""
    if path.exists():
        return None
    if not settings.repo:
        raise UsageError(
            f"cannot install: no config at '{path}' and no --repo given",
            "pass --repo URL (and --ref) to write it",
        )
    lines = [f"repo = {json.dumps(settings.repo)}", f"ref = {json.dumps(settings.ref)}"]
    if settings.host:
        lines.append(f"host = {json.dumps(settings.host)}")
    secret = settings.webhook_secret_file or DEFAULT_SECRET
    lines.append(f"webhook_secret_file = {json.dumps(str(secret))}")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# reconciler host config, written by 'reconciler install'\n")
        fh.write("\n".join(lines) + "\n")
    return path


def unapplied_flags(path: Path, settings: Settings) -> tuple[str, ...]:
    """What ``--repo``/``--ref``/``--host`` asked that the existing config file does not say:
    install never rewrites an operator's file, so it says so instead of seeming to apply."""
    from reconciler.config import load

    on_file = load(path, {})
    notes = []
    for key in ("repo", "ref", "host"):
        wanted, kept = getattr(settings, key), getattr(on_file, key)
        if wanted is not None and wanted != kept:
            notes.append(
                f"--{key} {wanted} was not applied: {path} exists and says {key} = "
                f"{json.dumps(kept)} (install never rewrites it; edit it, and the next sync "
                "follows it)"
            )
    return tuple(notes)


def write_secret(path: Path) -> Path | None:
    """Create the webhook secret (64 hex digits, 0600) unless it exists; never shown."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path


def install(
    settings: Settings,
    *,
    config_path: Path | None = None,
    units: Sequence[DesiredUnit] | None = None,
) -> Installed:
    """Config, webhook secret, writable dirs, then the own units through plan/apply."""
    units_dir = package_data.find("units") if units is None else None  # before any write
    path = config_path or DEFAULT_CONFIG
    kept = unapplied_flags(path, settings) if path.exists() else ()
    written = write_config(path, settings)
    secret = write_secret(Path(settings.webhook_secret_file or DEFAULT_SECRET))
    layout = read_layout(settings)
    textfile = settings.monitor.textfile
    shared = Path(textfile).parent if textfile else None
    for paths in layout.writable.values():
        for p in map(Path, paths):  # ReadWritePaths= cannot grant what does not exist
            p.mkdir(parents=True, exist_ok=True, mode=0o755 if p == shared else 0o700)
    desired = list(units) if units is not None else build_units(units_dir=units_dir, layout=layout)
    plan, calls = _converge(settings, desired, user_namespaces=layout.user_namespaces)
    return Installed(plan, written, secret, (*kept, *notes_for(layout, settings)), calls)


def follow_config(settings: Settings) -> Plan | None:
    """Bring the installed own units in line with the host config, as ``install`` would
    (what every sync does first; ``reconciler-config.path`` starts one when the file
    changes). Nothing installed here (or uninstalled): None, and nothing is touched."""
    store = runtime.open_store(settings)
    if not json.loads(store.kv_get(MANIFEST_KEY) or "[]"):
        return None
    # The sync runs with RestrictNamespaces=yes: a probe there would always say "no user
    # namespaces" and flip PrivateUsers= back and forth. Install's answer stands.
    userns = store.kv_get(USERNS_KEY)
    layout = read_layout(settings, None if userns is None else userns == "1")
    plan, _ = _converge(settings, build_units(layout=layout))
    return plan


def changes_sync_unit(plan: Plan | None) -> bool:
    """Whether ``plan`` rewrites gitops-sync.service (a sync running under it keeps the old
    sandbox: ``ReadWritePaths=`` of a new files root, a new textfile directory...)."""
    return plan is not None and any(
        isinstance(a, WriteUnitFile) and a.name == SYNC for a in plan.actions
    )


def uninstall(settings: Settings) -> Installed:
    """Stop, disable and remove the own units; state, config, secret and backups stay."""
    plan, calls = _converge(settings, [])
    return Installed(plan, dbus_calls=calls)


def _converge(
    settings: Settings, desired: list[DesiredUnit], *, user_namespaces: bool | None = None
) -> tuple[Plan, dict[str, int]]:
    with lock.hold(
        settings.run_dir / "sync.lock", timeout=settings.lock_timeout_sec, what="install"
    ):
        store = runtime.open_store(settings)
        owned = frozenset(json.loads(store.kv_get(MANIFEST_KEY) or "[]"))
        if user_namespaces is not None:
            store.kv_set(USERNS_KEY, "1" if user_namespaces else "0")
        systemd = runtime.connect(settings)
        try:
            names = sorted({u.name for u in desired} | owned)
            files, live = read_host(systemd, settings.unit_dir, names)
            foreign = frozenset(n for n in names if n not in owned and files[n] is not None)
            plan = plan_mod.plan(
                desired,
                files,
                live,
                owned,
                allow_empty=True,
                foreign=foreign,
                unit_dir=str(settings.unit_dir),
            )
            if plan.empty:
                return plan, dict(systemd.calls)
            validate.check_units(desired, plan, inventory=False)  # units/: no inventory key
            store.kv_set(MANIFEST_KEY, json.dumps(sorted(owned | plan.owned_after)))
            result = apply.apply(plan, settings.unit_dir, systemd)
            store.kv_set(
                MANIFEST_KEY, json.dumps(sorted(plan.owned_after | (owned - result.removed)))
            )
            if result.failed_jobs:
                failed = ", ".join(f"{u} ({r})" for u, r in sorted(result.failed_jobs.items()))
                raise ApplyError(
                    f"cannot start the reconciler's units: {failed}",
                    "see 'journalctl -u UNIT'; run 'reconciler install' again once fixed",
                )
            return plan, dict(systemd.calls)
        finally:
            systemd.close()
