"""The sync's apply step (talks to systemd over D-Bus and the unit dir): execute a Plan.

Every new file is first staged as a temp file of ours (fsynced) before the first action
runs, so what can fail in the unit directory (read-only, full, a name too long) fails
while the host is untouched; the actions then run in order and a write is a rename (plus
an fsync of the directory), so a kill at any point leaves each file either old or new,
never half-written, and the next sync converges. Nothing here decides *what* to do:
that is ``plan``'s job.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from reconciler.config import Settings
from reconciler.core.plan import describe
from reconciler.errors import ApplyError, SystemdError
from reconciler.host import journal
from reconciler.model import (
    Action,
    DaemonReload,
    DisableUnits,
    EnableUnits,
    LiveUnit,
    Plan,
    ReloadUnit,
    RemoveFile,
    RemoveUnitFile,
    ResetFailedUnit,
    RestartUnit,
    StartUnit,
    StopUnit,
    WriteFile,
    WriteUnitFile,
)
from reconciler.reconcile import host_files
from reconciler.reconcile.hooks import Monitoring
from reconciler.reconcile.render import MARKER
from reconciler.store.sync_store import DESIRED_KEY, encode_desired

if TYPE_CHECKING:
    from reconciler.model import DesiredUnit
    from reconciler.store.sync_store import Store
    from reconciler.systemd.client import Systemd

PENDING_KEY = "pending_jobs"  # units an apply is about to (re)start; cleared when done

UNIT_FILE_MODE = 0o644
# One journal entry (and stderr line) per action up to this many; past it, one entry with
# the counts per kind: 10,000 entries cost a 10,000-unit first apply ~10 s on a loaded host.
ACTION_ENTRIES_MAX = 200
TEMP_PREFIX = ".reconciler-"  # + 8 random characters: a fixed length, whatever the unit name
TEMP_SUFFIX = ".tmp"
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"


class JobOutcome(Protocol):
    @property
    def result(self) -> str: ...


class SystemdPort(Protocol):
    """The part of ``reconciler.systemd.client.Systemd`` that applying a plan needs."""

    def reload(self) -> None: ...

    def enable_unit_files(self, files: Sequence[str]) -> object: ...

    def disable_unit_files(self, files: Sequence[str]) -> object: ...

    def run_jobs(
        self, jobs: Sequence[tuple[str, str]], *, timeout: float | None = None
    ) -> Mapping[str, JobOutcome]: ...

    def read_units(self, names: Sequence[str]) -> dict[str, LiveUnit]: ...

    def reset_failed(self, name: str) -> None: ...

    def reset_failed_units(self, names: Sequence[str]) -> None: ...


@dataclass
class ApplyResult:
    done: list[Action] = field(default_factory=list)
    failed_jobs: dict[str, str] = field(default_factory=dict)  # unit -> job result
    removed: set[str] = field(default_factory=set)


def write_unit_file(unit_dir: Path, name: str, content: str) -> None:
    """Atomically replace ``unit_dir/name`` (mode 0644)."""
    commit_staged(unit_dir, name, stage_file(unit_dir, name, content))


def stage_file(unit_dir: Path, name: str, content: str) -> Path:
    """Write ``content`` to a temp file of ours in ``unit_dir`` (fsynced); returns its path.

    The temp name has a fixed length (``.reconciler-XXXXXXXX.tmp``), so every unit name
    systemd accepts fits next to it; ``name`` only appears in errors.
    """
    check_name_fits(unit_dir, name)
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=unit_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
            fh.flush()
            os.fchmod(fh.fileno(), UNIT_FILE_MODE)
            os.fsync(fh.fileno())
    except OSError as exc:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise ApplyError(
            f"cannot write unit file '{unit_dir / name}': {exc.strerror or exc}",
            "nothing was changed; free space or fix permissions, then sync again",
        ) from exc
    return Path(tmp)


def commit_staged(unit_dir: Path, name: str, tmp: Path) -> None:
    """Rename a staged temp file over ``unit_dir/name`` and make the rename durable."""
    target = unit_dir / name
    try:
        if target.parent != unit_dir:  # a drop-in: UNIT.d/ is made on its first write
            target.parent.mkdir(mode=0o755, exist_ok=True)
        os.rename(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ApplyError(
            f"cannot write unit file '{unit_dir / name}': {exc.strerror or exc}",
            "the previous file is intact; fix the unit directory, then sync again",
        ) from exc
    _fsync_dir(target.parent)
    if target.parent != unit_dir:
        _fsync_dir(unit_dir)


def check_name_fits(unit_dir: Path, name: str) -> None:
    """Refuse a name longer than the unit directory's file system allows (NAME_MAX)."""
    try:
        limit = os.pathconf(unit_dir, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(os.fsencode(name)) > limit:
        raise ApplyError(
            f"cannot write unit file '{name[:40]}...': the name is "
            f"{len(os.fsencode(name))} bytes, the file system of '{unit_dir}' allows {limit}",
            "shorten the service name in inventory/services.toml",
        )


def stage(plan: Plan, unit_dir: Path, root: Path = Path("/")) -> dict[str, Path]:
    """Before the first stop: write every new file as a temp file (or probe the directory).

    What can fail in the unit directory (read-only, full, names too long, permissions)
    fails here, while the host is untouched; afterwards only renames and unlinks remain.
    """
    writes = [a for a in plan.actions if isinstance(a, WriteUnitFile)]
    for a in writes:
        check_name_fits(unit_dir, a.name)
    staged: dict[str, Path] = {}
    try:
        for a in writes:
            staged[a.name] = stage_file(unit_dir, a.name, a.content)
        for f in plan.actions:  # config files: keyed by their absolute path
            if isinstance(f, WriteFile):
                staged[f.path] = host_files.stage_file(root, f)
        if not writes and any(isinstance(a, RemoveUnitFile) for a in plan.actions):
            name = next(a.name for a in plan.actions if isinstance(a, RemoveUnitFile))
            stage_file(unit_dir, name, "").unlink()  # removing needs a writable directory
    except BaseException:
        discard(staged)
        raise
    return staged


def discard(staged: Mapping[str, Path]) -> None:
    for tmp in staged.values():
        with contextlib.suppress(OSError):
            tmp.unlink()


def remove_unit_file(unit_dir: Path, name: str) -> None:
    try:
        (unit_dir / name).unlink(missing_ok=True)
    except OSError as exc:
        raise ApplyError(f"cannot remove unit file '{unit_dir / name}': {exc.strerror}") from exc
    with contextlib.suppress(FileNotFoundError):
        _fsync_dir((unit_dir / name).parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_temp_files(unit_dir: Path, marker: str) -> None:
    """Remove the temp files a killed run of ours left behind, and nothing else.

    Ours: named ``.reconciler-*.tmp`` and empty (killed before writing) or starting with
    ``marker`` (every unit file we write does). Another tool's ``.*.tmp`` stays.
    """
    head = marker.encode()
    with contextlib.suppress(FileNotFoundError):
        for path in unit_dir.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                if path.is_symlink() or not path.is_file():
                    continue
                with path.open("rb") as fh:
                    start = fh.read(len(head))
                if start in (b"", head):
                    path.unlink()


def apply(
    plan: Plan,
    unit_dir: Path,
    systemd: SystemdPort,
    *,
    job_timeout: float = 90.0,
    on_action: Callable[[Action], None] | None = None,
    root: Path = Path("/"),
) -> ApplyResult:
    """Run the plan's actions in order; consecutive start/stop jobs are waited on together.

    Job failures are collected, not raised: the health gate and the caller decide.
    ``root``: the host's ``/``, under which config files are written.
    """
    result = ApplyResult()
    actions = list(plan.actions)
    staged = stage(plan, unit_dir, root)
    try:
        _run(actions, staged, unit_dir, systemd, result, job_timeout, on_action, root)
    finally:
        discard(staged)  # left only when an action failed half-way
    return result


def _run(
    actions: list[Action],
    staged: dict[str, Path],
    unit_dir: Path,
    systemd: SystemdPort,
    result: ApplyResult,
    job_timeout: float,
    on_action: Callable[[Action], None] | None,
    root: Path = Path("/"),
) -> None:
    i = 0
    while i < len(actions):
        action = actions[i]
        if isinstance(action, WriteFile | RemoveFile):
            if isinstance(action, WriteFile):
                host_files.commit_file(root, action.path, staged.pop(action.path))
            else:
                host_files.remove_file(root, action.path)
            result.done.append(action)
            if on_action:
                on_action(action)
        elif isinstance(action, StartUnit | RestartUnit | StopUnit | ReloadUnit):
            batch = [action]
            while i + 1 < len(actions) and type(actions[i + 1]) is type(action):
                i += 1
                batch.append(actions[i])  # type: ignore[arg-type]
            verbs = {StartUnit: "start", RestartUnit: "restart", StopUnit: "stop"}
            verb = verbs.get(type(action), "reload")
            if verb == "start":  # a unit that hit its start limit starts only once reset
                systemd.reset_failed_units([a.name for a in batch])
            outcomes = systemd.run_jobs([(verb, a.name) for a in batch], timeout=job_timeout)
            if verb == "stop":  # stopped on purpose: a failed state left is stale (degraded)
                systemd.reset_failed_units([a.name for a in batch])
            for a in batch:
                outcome = outcomes.get(a.name)
                if outcome is not None and outcome.result != "done":
                    result.failed_jobs[a.name] = outcome.result
                result.done.append(a)
                if on_action:
                    on_action(a)
        else:
            _run_one(action, unit_dir, systemd, result, staged)
            result.done.append(action)
            if on_action:
                on_action(action)
        i += 1


def _reset_failed(systemd: SystemdPort, name: str) -> None:
    try:
        systemd.reset_failed(name)
    except SystemdError as exc:
        if exc.dbus_name != NO_SUCH_UNIT:  # not loaded yet: nothing to reset
            raise


def _run_one(
    action: Action,
    unit_dir: Path,
    systemd: SystemdPort,
    result: ApplyResult,
    staged: dict[str, Path],
) -> None:
    if isinstance(action, WriteUnitFile):
        commit_staged(unit_dir, action.name, staged.pop(action.name))
    elif isinstance(action, RemoveUnitFile):
        remove_unit_file(unit_dir, action.name)
        result.removed.add(action.name)
    elif isinstance(action, DaemonReload):
        systemd.reload()
    elif isinstance(action, EnableUnits):
        systemd.enable_unit_files(list(action.names))
    elif isinstance(action, DisableUnits):
        systemd.disable_unit_files(list(action.names))
    elif isinstance(action, ResetFailedUnit):
        _reset_failed(systemd, action.name)
    else:  # pragma: no cover - the plan types are closed
        raise ApplyError(f"cannot apply action {action!r}: unknown kind")


def apply_plan(
    plan: Plan,
    desired: Sequence[DesiredUnit],
    systemd: Systemd,
    store: Store,
    settings: Settings,
    revision: str,
    monitoring: Monitoring,
) -> ApplyResult:
    """The sync's apply step: the plan on the host, the manifest kept crash-safe around it.

    The manifest is widened to every file about to be written *before* writing, so a kill
    half-way never leaves files the next sync would take for foreign; the units about to
    be (re)started are noted so a kill before their jobs has them redone. Both narrow
    only once the apply is done.
    """
    pending = sorted(
        a.name for a in plan.actions if isinstance(a, StartUnit | RestartUnit | ReloadUnit)
    )
    # systemd does not flag a unit whose new drop-in it never loaded: a kill before the
    # Reload leaves it to the next sync to know (drop-in files are noted as pending too)
    pending += sorted(
        a.name
        for a in plan.actions
        if isinstance(a, WriteUnitFile | RemoveUnitFile) and "/" in a.name
    )
    with store.transaction():
        store.set_owned(store.owned() | plan.owned_after)  # widen before writing anything
        store.kv_set(PENDING_KEY, json.dumps(pending))  # a kill before the jobs: redo them
    if plan.files_during:  # widen: adopted originals are kept before anything is written
        host_files.save_manifest(settings, plan.files_during)
    monitoring.record_jobs(store, plan, systemd)
    clean_temp_files(settings.unit_dir, MARKER)
    host_files.clean_temp_files(settings.host_root, [m.path for m in plan.files_during])
    lines = iter(describe(plan))
    told = 0
    untold: Counter[str] = Counter()

    def on_action(action: Action) -> None:
        nonlocal told
        line = next(lines, str(action))
        if told < ACTION_ENTRIES_MAX:
            told += 1
            journal.event("action", line, revision=revision)
        else:
            untold[line.partition(" ")[0]] += 1

    try:
        result = apply(
            plan, settings.unit_dir, systemd, on_action=on_action, root=settings.host_root
        )
    finally:
        if untold:
            kinds = ", ".join(f"{verb} {n}" for verb, n in sorted(untold.items()))
            journal.event(
                "action",
                f"and {untold.total()} more actions ({kinds})",
                revision=revision,
                more=untold.total(),
            )
    monitoring.jobs_done(store)
    if plan.files_during:
        host_files.save_manifest(settings, plan.files_after)
    with store.transaction():
        store.set_owned(plan.owned_after)  # every prune step is done: narrow
        store.kv_set(DESIRED_KEY, encode_desired(desired))
        store.kv_set(PENDING_KEY, "[]")
    return result
