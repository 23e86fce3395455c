"""Config files (``[files."PATH"]``): where a repository may write, and what to do (pure).

The host, not the repository, says where files may go (``files_roots`` in its config; empty:
nowhere). Some paths are never written even inside a root: what grants root (shadow,
sudoers, ssh keys), what would bypass the unit checks (``/etc/systemd``, Quadlet's
``/etc/containers/systemd``) and the reconciler's own config, state and run dirs. A path
that exists and is not in the file manifest is never overwritten unless the entry says
``adopt = true``; its original (content, mode, owner) is then kept in the manifest and put
back when the entry goes. The facts (file kinds, symlinks on the way, users and groups) are
read by ``reconcile.host_files``; this module only decides, so every refusal happens before
anything is written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace

from reconciler.core.enablement import template_of
from reconciler.core.keys import SERVICES_FILE, key_path, quote
from reconciler.core.unitkind import is_quadlet_path, is_unit
from reconciler.errors import InventoryError
from reconciler.model import (
    Action,
    DaemonReload,
    DesiredFile,
    FileMeta,
    ManagedFile,
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

# Never written, whatever files_roots says (the paths and everything under them).
DENIED = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/root/.ssh",
    "/etc/systemd",
    "/etc/containers/systemd",
)
DENIED_NAMES = frozenset({"authorized_keys", "authorized_keys2"})  # anywhere
RUNNING = frozenset({"active", "activating", "reloading"})


def under(path: str, root: str) -> bool:
    """``path`` is ``root`` or inside it (plain string paths, already normalised)."""
    top = root.rstrip("/")
    return path == top or path.startswith(top + "/") or top == ""


@dataclass(frozen=True)
class Policy:
    """Where this host lets a repository write: ``roots`` (files_roots) minus ``denied``
    (``DENIED`` plus the reconciler's own config file, state, run and unit dirs)."""

    roots: tuple[str, ...] = ()
    denied: tuple[str, ...] = DENIED


def path_problem(path: str, policy: Policy) -> str | None:
    """Why this host refuses to write ``path``, or None."""
    for denied in policy.denied:
        if under(path, denied) or under(denied, path):
            return f"'{quote(path)}' is a protected path (never written: {denied})"
    if path.rpartition("/")[2] in DENIED_NAMES:
        return f"'{quote(path)}' is a protected path (never written: authorized_keys)"
    if not policy.roots:
        return "this host allows no config files (files_roots is empty in its config)"
    if not any(under(path, root) and path != root.rstrip("/") for root in policy.roots):
        return f"'{quote(path)}' is outside this host's files_roots ({', '.join(policy.roots)})"
    return None


def refuse_protected(desired: Sequence[DesiredFile]) -> None:
    """Refuse a path every host refuses (``DENIED``, ``authorized_keys``), whatever its
    files_roots: the part of the path rule a repository can be checked for offline."""
    refused = _Refusals()
    for f in desired:
        if f.quadlet and is_quadlet_path(f.path):
            continue
        problem = path_problem(f.path, Policy(roots=("/",)))
        if problem:
            refused.add(f.path, None, problem)
    refused.raise_first()


@dataclass(frozen=True)
class HostFile:
    """What is at a path on the host: ``kind`` absent, file, symlink, directory or other;
    ``blocked``: an ancestor that is a symlink or no directory (never followed)."""

    path: str
    kind: str = "absent"
    meta: FileMeta | None = None
    blocked: str | None = None


@dataclass(frozen=True)
class FilePlan:
    actions: tuple[Action, ...] = ()
    restart: frozenset[str] = frozenset()
    reload: frozenset[str] = frozenset()
    stop: frozenset[str] = frozenset()  # generated units whose Quadlet file goes
    during: tuple[ManagedFile, ...] = ()
    after: tuple[ManagedFile, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass
class _Refusals:
    problems: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str, key: str | None, why: str) -> None:
        loc = ("files", path, key) if key else ("files", path)
        if is_quadlet_path(path):  # a Quadlet file is a [services.NAME]'s
            loc = ("services", path.rpartition("/")[2].rpartition(".")[0])
        self.problems.append((key_path(loc), why))

    def raise_first(self) -> None:
        if not self.problems:
            return
        where, why = self.problems[0]
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        raise InventoryError(
            f"{SERVICES_FILE}: {where}: {why}{more}",
            "nothing was written; fix the entry, or the host's files_roots",
        )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plan_files(
    desired: Sequence[DesiredFile],
    host: Mapping[str, HostFile],
    manifest: Mapping[str, ManagedFile],
    policy: Policy,
    users: Mapping[str, int],
    groups: Mapping[str, int],
) -> FilePlan:
    """Writes, removals and restores that make the host's config files match ``desired``.

    ``host``: what is at every desired and managed path; ``manifest``: what a sync wrote
    (and adopted originals). Every refusal is raised before anything is planned.
    """
    refused = _Refusals()
    seen: set[str] = set()
    for f in desired:
        if f.path in seen:  # a TOML table cannot repeat a key; kept for direct callers
            refused.add(f.path, None, "listed twice")
        seen.add(f.path)
        problem = None if f.quadlet and is_quadlet_path(f.path) else path_problem(f.path, policy)
        facts = host.get(f.path, HostFile(f.path))
        if problem:
            refused.add(f.path, None, problem)
        elif facts.blocked:
            refused.add(
                f.path,
                None,
                f"'{quote(facts.blocked)}' is a symlink or not a directory "
                "(a path through a symlink is refused)",  # fmt: skip
            )
        elif facts.kind not in ("absent", "file"):
            refused.add(f.path, None, f"a {facts.kind} is there (only a regular file is written)")
        elif facts.kind == "file" and f.path not in manifest and not f.adopt:
            refused.add(
                f.path,
                None,
                "exists and is not managed by reconciler (set adopt = true to "
                "take it over: its content, mode and owner are kept and put back when the "
                "entry is removed)",  # fmt: skip
            )
        if f.owner not in users:
            refused.add(f.path, "owner", f"user '{quote(f.owner)}' does not exist on this host")
        if f.group not in groups:
            refused.add(f.path, "group", f"group '{quote(f.group)}' does not exist on this host")
    refused.raise_first()

    actions: list[Action] = []
    restart: set[str] = set()
    reload: set[str] = set()
    after: dict[str, ManagedFile] = {}
    during: dict[str, ManagedFile] = dict(manifest)
    for f in desired:
        facts = host.get(f.path, HostFile(f.path))
        uid, gid = users[f.owner], groups[f.group]
        live = facts.meta if facts.kind == "file" else None
        old = manifest.get(f.path)
        original = old.original if old else (live if f.adopt else None)
        entry = ManagedFile(
            f.path, sha256(f.content), f.mode, uid, gid, original, f.restart, f.reload
        )
        after[f.path] = during[f.path] = entry
        if live != FileMeta(f.content, f.mode, uid, gid):
            actions.append(
                WriteFile(f.path, f.content, f.mode, uid, gid, live.content if live else None)
            )
            restart |= set(f.restart)
            reload |= set(f.reload)
    notes: list[str] = []
    stop: set[str] = set()
    for path in sorted(manifest.keys() - after.keys()):
        old = manifest[path]
        facts = host.get(path, HostFile(path))
        if facts.blocked or facts.kind not in ("absent", "file"):
            notes.append(f"{path}: not removed (a symlink or non-file is in its place)")
            continue
        live = facts.meta
        if old.original is not None:
            o = old.original
            if live != o:
                actions.append(
                    WriteFile(
                        path,
                        o.content,
                        o.mode,
                        o.uid,
                        o.gid,
                        live.content if live else None,
                        restore=True,
                    )  # fmt: skip
                )
        elif live is not None:
            actions.append(RemoveFile(path, live.content))
        else:
            continue
        if is_quadlet_path(path):  # its generated unit is stopped first, and goes
            stop |= set(old.restart)
            continue
        restart |= set(old.restart)
        reload |= set(old.reload)
    return FilePlan(
        tuple(actions),
        frozenset(restart - stop),
        frozenset(reload - restart - stop),
        frozenset(stop),
        tuple(during[p] for p in sorted(during)),
        tuple(after[p] for p in sorted(after)),
        tuple(notes),
    )


def refuse_unknown_units(desired: Iterable[DesiredFile], unknown: AbstractSet[str]) -> None:
    """A ``restart``/``reload`` naming a unit that is neither in the inventory nor on the
    host is refused: a typo there meant the service never saw its new config, silently."""
    refused = _Refusals()
    for f in desired:
        for key, units in (("restart", f.restart), ("reload", f.reload)):
            for unit in sorted(set(units) & unknown):
                refused.add(
                    f.path, key, f"'{quote(unit)}' is no unit of this host or its inventory"
                )
    refused.raise_first()


def merge(
    plan: Plan,
    files: FilePlan,
    active: Mapping[str, str],
    interrupted: Iterable[str] = (),
    health: Mapping[str, float] | None = None,
    cannot_reload: Iterable[str] = (),
) -> Plan:
    """The unit plan with the file actions: files written after the units' writes and
    prunes (before the Reload, enabling and jobs), then restarts and reloads of the running
    units that use them (``active``: their ActiveState; a template's instances by name).

    ``interrupted``: units a killed apply was to restart or reload: asked again.
    ``cannot_reload``: running units without ``ExecReload=``: a reload of one is refused.
    """
    actions = list(plan.actions)
    unit_steps = (StopUnit, ResetFailedUnit, RemoveUnitFile, WriteUnitFile)
    at = max((i + 1 for i, a in enumerate(actions) if isinstance(a, unit_steps)), default=0)
    stops: list[Action] = [StopUnit(u) for u in sorted(files.stop) if active.get(u) in RUNNING]
    stops += [ResetFailedUnit(u) for u in sorted(files.stop) if active.get(u) == "failed"]
    generator = [a for a in files.actions if is_quadlet_path(getattr(a, "path", ""))]
    reload_after: list[Action] = (
        [DaemonReload()] if generator and DaemonReload() not in actions else []
    )
    actions[at:at] = stops + list(files.actions) + reload_after
    jobs = {a.name for a in actions if isinstance(a, StartUnit | RestartUnit)}
    pending = set(interrupted)
    asked = files.restart | (pending & {u for m in files.after for u in m.restart})
    reloads = files.reload | (pending & {u for m in files.after for u in m.reload})
    # a unit this plan stops for good or removes is neither restarted nor reloaded for a
    # file (a commit removing a service and its config file failed half-way on "reload")
    gone = {
        a.name
        for a in actions
        if isinstance(a, StopUnit) or (isinstance(a, RemoveUnitFile) and is_unit(a.name))
    }
    kept = {u for u in active if u not in gone and template_of(u) not in gone}
    restart = {u for u in expand(asked, active) if active.get(u) in RUNNING and u in kept}
    reload = {u for u in expand(reloads, active) if active.get(u) in RUNNING and u in kept}
    restart -= jobs
    reload -= jobs | restart
    refused = _Refusals()
    for unit in sorted(reload & set(cannot_reload)):
        for m in files.after:
            if unit in expand(m.reload, {unit: ""}):
                refused.add(
                    m.path,
                    "reload",
                    f"'{quote(unit)}' cannot reload (it has no ExecReload=): "
                    "name it in restart instead",  # fmt: skip
                )
    refused.raise_first()
    actions += [RestartUnit(u) for u in sorted(restart)]
    actions += [ReloadUnit(u) for u in sorted(reload)]
    gated = dict(plan.health_checks)
    gated.update((u, t) for u, t in (health or {}).items() if u in restart)
    return replace(
        plan,
        actions=tuple(actions),
        health_checks=tuple(sorted(gated.items())),
        notes=plan.notes + files.notes,
        files_during=files.during,
        files_after=files.after,
    )


def targets(desired: Iterable[DesiredFile], manifest: Mapping[str, ManagedFile]) -> set[str]:
    """Every unit a desired or managed file restarts or reloads (their state is read)."""
    units = {u for f in desired for u in (*f.restart, *f.reload)}
    return units | {u for m in manifest.values() for u in (*m.restart, *m.reload)}


def expand(names: Iterable[str], active: Mapping[str, str]) -> set[str]:
    """Names, a template (``foo@.service``) replaced by its instances known in ``active``."""
    out: set[str] = set()
    for name in names:
        stem, dot, kind = name.rpartition(".")
        if stem.endswith("@"):
            out |= {u for u in active if u.startswith(stem) and u.endswith(dot + kind)}
        else:
            out.add(name)
    return out
