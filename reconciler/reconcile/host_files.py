"""Config files on the host (talks to the host's file system under its root, and to systemd).

Every host path is seen under the host's root (``Settings.host_root``: ``/``, or a disposable
host's ``/proc/PID/root`` from outside), and the users and groups an entry names are the
host's own (its ``/etc/passwd`` and ``/etc/group``), never this process's. Each component
of a path is ``lstat``-ed, never followed: a symlink on the way is reported, and the plan
refuses it. A write is a temp file of ours in the same directory (content, fsync, chmod and
chown on the descriptor), then a rename and an fsync of the directory: a kill leaves the
old file or the new one, and at worst a temp file the next sync removes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.config import Settings
from reconciler.core import files as policy
from reconciler.core.files import HostFile, Policy
from reconciler.errors import ApplyError
from reconciler.host.config_files import on_host, read_accounts, read_path
from reconciler.model import DesiredFile, ManagedFile, WriteFile
from reconciler.store import file_manifest

if TYPE_CHECKING:
    from reconciler.systemd.client import Systemd

TEMP_PREFIX = ".reconciler-file-"  # + random characters + TEMP_SUFFIX
TEMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class FileFacts:
    """What the file plan needs: the paths, the manifest, the host's accounts, the state of
    the units the files restart or reload."""

    host: dict[str, HostFile]
    manifest: dict[str, ManagedFile]
    users: dict[str, int]
    groups: dict[str, int]
    active: dict[str, str] = field(default_factory=dict)
    policy: Policy = Policy()
    cannot_reload: frozenset[str] = frozenset()  # running reload targets without ExecReload=
    not_found: frozenset[str] = frozenset()  # restart/reload targets systemd does not know


def host_policy(settings: Settings) -> Policy:
    """``files_roots`` minus what is never written, the reconciler's own paths included."""
    root = str(settings.host_root).rstrip("/")
    own = ["/etc/reconciler", str(settings.path or "/etc/reconciler/config.toml")]
    own += [str(settings.state_dir), str(settings.run_dir), str(settings.unit_dir)]
    inside = [p[len(root) :] if root and p.startswith(root + "/") else p for p in own]
    return Policy(settings.files_roots, policy.DENIED + tuple(dict.fromkeys(inside)))


def observe_files(
    desired: Sequence[DesiredFile], systemd: Systemd, settings: Settings
) -> FileFacts | None:
    """The facts for the file plan; None when no file is desired or managed (no reads)."""
    manifest = file_manifest.load(settings.state_dir)
    if not desired and not manifest:
        return None
    root = settings.host_root
    paths = sorted({f.path for f in desired} | manifest.keys())
    host = {p: read_path(root, p) for p in paths}
    users, groups = read_accounts(root)
    units = policy.targets(desired, manifest)
    active: dict[str, str] = {}
    plain = sorted(u for u in units if "@." not in u)
    not_found: frozenset[str] = frozenset()
    if plain:
        listed = systemd.list_units(plain)
        active = {n: u.active_state for n, u in listed.items()}
        not_found = frozenset(n for n, u in listed.items() if u.load_state == "not-found")
    templates = sorted(u.replace("@.", "@*.") for u in units if "@." in u)
    if templates:
        running = systemd.list_units_by_patterns([], templates)
        active |= {u.name: u.active_state for u in running}
    reloads = {u for f in desired for u in f.reload}
    reloading = [
        u for u in sorted(policy.expand(reloads, active)) if active.get(u, "") in policy.RUNNING
    ]
    cannot: frozenset[str] = frozenset()
    if reloading:  # ReloadUnit on a unit that cannot reload fails: refuse it in the plan
        from reconciler.systemd.wire import UNIT

        props = systemd.get_properties(reloading, UNIT, ["CanReload"])
        cannot = frozenset(n for n, p in props.items() if p.get("CanReload") is False)
    return FileFacts(
        host, manifest, users, groups, active, host_policy(settings), cannot, not_found
    )


def stage_file(root: Path, action: WriteFile) -> Path:
    """The new content as a temp file of ours next to the target (mode and owner set,
    fsynced); missing parent directories are made (0755, root)."""
    target = on_host(root, action.path)
    tmp = ""
    try:
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=target.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(action.content)
            fh.flush()
            os.fchown(fh.fileno(), action.uid, action.gid)
            os.fchmod(fh.fileno(), action.mode)  # after chown, which may clear set-id bits
            os.fsync(fh.fileno())
    except OSError as exc:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise ApplyError(
            f"cannot write file '{action.path}': {exc.strerror or exc}",
            "nothing was changed; free space or fix permissions, then sync again",
        ) from exc
    return Path(tmp)


def commit_file(root: Path, path: str, tmp: Path) -> None:
    """Rename the staged temp file over ``path`` and make the rename durable."""
    target = on_host(root, path)
    try:
        os.rename(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ApplyError(f"cannot write file '{path}': {exc.strerror or exc}") from exc
    _fsync_dir(target.parent)


def remove_file(root: Path, path: str) -> None:
    target = on_host(root, path)
    try:
        target.unlink(missing_ok=True)
    except OSError as exc:
        raise ApplyError(f"cannot remove file '{path}': {exc.strerror or exc}") from exc
    with contextlib.suppress(OSError):
        _fsync_dir(target.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_temp_files(root: Path, paths: Sequence[str]) -> None:
    """Remove the temp files a killed sync of ours left next to ``paths`` (and nothing else:
    only regular files named ``.reconciler-file-*.tmp``)."""
    for directory in sorted({on_host(root, p).parent for p in paths}):
        with contextlib.suppress(OSError):
            for entry in directory.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
                with contextlib.suppress(OSError):
                    if entry.is_file() and not entry.is_symlink():
                        entry.unlink()


def save_manifest(settings: Settings, entries: Sequence[ManagedFile]) -> None:
    """Write the manifest when it changes (a host without config files never gets one)."""
    current = file_manifest.load(settings.state_dir)
    wanted: Mapping[str, ManagedFile] = {e.path: e for e in entries}
    if current != wanted:
        file_manifest.save(settings.state_dir, entries)
