"""Plan a sync (pure: no I/O, no clock): desired units + live state + owned manifest -> actions.

The whole plan is built before anything runs (pyinfra), so ``reconciler plan`` and
``sync --dry-run`` are free and ``apply`` only executes. Like Flux's inventory, only files
in the owned manifest are ever overwritten or deleted; a desired unit that collides with
a foreign file is an error, and an empty inventory does not prune everything (Argo).
Everything is sorted: the same inputs always give the same plan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import PurePosixPath

from reconciler.core import unitkind
from reconciler.errors import ApplyError
from reconciler.model import (
    Action,
    DaemonReload,
    DesiredUnit,
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

RUNNING = frozenset({"active", "activating", "reloading"})
_STOPPABLE = RUNNING | {"failed"}
_ENABLED = frozenset({"enabled", "enabled-runtime"})
# EnableUnitFiles changes nothing for these: asking again on every sync would never converge.
_NOT_ENABLEABLE = frozenset({"static", "indirect", "generated", "transient", "alias"})
_MASKED = frozenset({"masked", "masked-runtime"})


def plan(
    desired: Sequence[DesiredUnit],
    live_files: Mapping[str, str | None],
    live_units: Mapping[str, LiveUnit],
    owned: frozenset[str],
    *,
    allow_empty: bool = False,
    foreign: frozenset[str] = frozenset(),
    interrupted: frozenset[str] = frozenset(),
    unit_dir: str = "/etc/systemd/system",
    taken: Mapping[str, str] | None = None,
) -> Plan:
    """The ordered actions that make the host match ``desired``.

    ``live_files``: current content of every file in ``desired`` and ``owned`` (None: absent);
    ``live_units``: systemd's view of the same names (a missing name: not loaded).
    ``foreign``: files in the unit dir that reconciler does not own; never touched.
    ``interrupted``: units whose new file an earlier, killed apply wrote but did not get to
    (re)start; they are handled as changed so that the next sync converges.
    ``taken``: unit names (and ``Alias=`` names) that exist elsewhere and are not ours, with
    where: a vendor unit in systemd's search path, another unit's alias link. Refused.

    A prune is a list of steps each done only while still needed, so that a sync killed at
    any of them is finished by the next: stop a running unit systemd loaded from our file
    (never a vendor unit that now answers to the name), clear a failed state, disable and
    remove a file that is still there, reload while systemd's view is stale.
    """
    units = _index(desired)
    if not units and owned and not allow_empty:
        n = len(owned)
        raise ApplyError(
            f"refusing to remove all {n} managed unit{'s' if n != 1 else ''}: "
            "the inventory selects no service for this host",
            "pass --allow-empty to prune everything",
        )

    def live(name: str) -> LiveUnit:
        return live_units.get(name) or LiveUnit(name)

    masked = {n for n in units if _is_masked(live(n))}
    # units and drop-ins we write; a Quadlet-generated unit is the generator's file
    generated = [units[n] for n in sorted(units) if units[n].generated_from and n not in masked]
    files = [units[n] for n in sorted(units) if n not in masked and not units[n].generated_from]
    # a unit file here would shadow what Quadlet generates (/etc before /run): refused, or
    # removed when it is ours (the service was a plain one and is now a container)
    _check_collisions([*files, *generated], live_files, owned, foreign, unit_dir)
    managed = sorted([d for d in files if unitkind.is_unit(d.name)] + generated, key=_name)
    _check_names(managed, units, taken or {})
    changed = {d.name for d in files if live_files.get(d.name) != d.content}
    removed = sorted(owned - {n for n, d in units.items() if not d.generated_from})
    adjusted = _adjusted(units, changed, [n for n in removed if live_files.get(n) is not None])
    targets = {unitkind.dropin_target(n) for n in units}
    adjusted |= {t for t in interrupted if t in targets or _template(t) in targets}
    touched = changed | (interrupted & {d.name for d in managed}) | (adjusted & units.keys())
    touched |= {d.name for d in generated if d.name in removed}  # stopped for its old file

    ours = {n for n in removed if _from_own_file(live(n), n, unit_dir)}
    actions: list[Action] = [
        StopUnit(n)
        for n in sorted(removed, key=_timers_first)
        if n in ours and live(n).active_state in RUNNING
    ]
    actions += [
        ResetFailedUnit(n)
        for n in removed
        if live(n).active_state == "failed" and (n in ours or live(n).load_state == "not-found")
    ]
    actions += _batch(
        DisableUnits,
        (
            n
            for n in removed
            if live_files.get(n) is not None and live(n).unit_file_state in _ENABLED
        ),
    )
    actions += [RemoveUnitFile(n, old) for n in removed if (old := live_files.get(n)) is not None]
    actions += [WriteUnitFile(n, units[n].content, live_files.get(n)) for n in sorted(changed)]
    files_changed = any(isinstance(a, WriteUnitFile | RemoveUnitFile) for a in actions)
    stale = any(
        _needs_reload(live(n), live_files.get(n) is not None)
        for n in [*units, *removed]
        if unitkind.is_unit(n)
    ) or any(not unitkind.is_unit(n) for n in interrupted)  # a drop-in a killed apply wrote
    stale |= any(live(d.name).load_state == "not-found" for d in generated)  # not generated yet
    disable, enable = _enablement(
        [d for d in managed if not d.generated_from], live, live_files
    )  # a generated unit cannot be enabled over D-Bus: Quadlet links its [Install] itself
    # enabled before the Reload, as `systemctl enable` does: systemd 257 marks a unit enabled
    # after its load as needing a reload (NeedDaemonReload), so the next sync reloaded again
    actions += _batch(DisableUnits, disable) + _batch(EnableUnits, enable)
    if files_changed or stale or disable or enable:
        actions.append(DaemonReload())

    timer_driven = _timer_driven(desired)
    jobs = {
        d.name: _job(d, live(d.name), d.name in touched, d.name in timer_driven) for d in managed
    }
    started = sorted(n for n, job in jobs.items() if job is StartUnit)
    restarted = sorted(n for n, job in jobs.items() if job is RestartUnit)
    # a unit that is not ours (a vendor's) restarted for its changed drop-ins, if it runs
    # (not one pruned with its drop-ins: it is stopped and its file gone); a template's
    # drop-ins restart its running instances
    vendor = adjusted - units.keys() - set(removed)
    vendor |= {i for t in vendor for i in unitkind.instances(t, live_units)}
    restarted += sorted(
        n for n in vendor - set(restarted) if n in live_units and live(n).active_state in RUNNING
    )
    actions += [StartUnit(n) for n in started] + [RestartUnit(n) for n in restarted]

    gated = set(started) | set(restarted)
    return Plan(
        actions=tuple(actions),
        owned_after=frozenset(units.keys() - (masked - owned) - {d.name for d in generated}),
        health_checks=tuple(
            (d.name, d.health_timeout_sec)
            for d in managed
            if d.health_timeout_sec is not None and d.name in gated
        ),
        notes=tuple(
            f"{n} is masked on this host: not written, enabled or started "
            f"(run 'systemctl unmask {n}' to let reconciler manage it again)"
            for n in sorted(masked)
        )
        + _dropin_notes(files, units, changed, live_units, set(restarted)),
    )


def _dropin_notes(
    files: Sequence[DesiredUnit],
    units: Mapping[str, DesiredUnit],
    changed: set[str],
    live_units: Mapping[str, LiveUnit],
    restarted: set[str],
) -> tuple[str, ...]:
    """What a drop-in written here does not do by itself (README-only users' trials): one for
    a unit this host has nowhere (no managed, vendor or loaded unit: a typo, or a package not
    installed yet; written all the same, as it is legitimate before the package), and one for
    a running unit whose drop-in changed with ``restart = false`` (the Reload alone leaves the
    running process on its old settings)."""
    notes: list[str] = []
    for d in files:
        target = unitkind.dropin_target(d.name)
        if target is None:
            continue
        if "@." in target:  # a template's: its instances are the units
            running = sorted(unitkind.instances(target, live_units))
        else:
            unit = live_units.get(target) or LiveUnit(target)
            if unit.load_state == "not-found" and target not in units:  # ours: written now
                notes.append(
                    f"{d.name}: {target} is not on this host (not managed, no unit file "
                    "systemd knows): the drop-in is written and takes effect only once "
                    f'{target} is installed; check the name in [dropins."{target}"]'
                )
                continue
            running = [target]
        if d.name in changed and not d.restart:
            pending = [
                n
                for n in running
                if n not in restarted and (live_units.get(n) or LiveUnit(n)).active_state in RUNNING
            ]
            notes += [
                f"{n} needs a restart to take its changed drop-in {d.name} (restart = false: "
                f"the Reload alone leaves it running on its old settings; run 'systemctl "
                f"restart {n}' when convenient)"
                for n in pending
            ]
    return tuple(notes)


def describe(plan: Plan) -> list[str]:
    """One line per action for operators and logs, then one ``note: ...`` line per note."""
    return [_describe(a) for a in plan.actions] + [f"note: {n}" for n in plan.notes]


def diff(plan: Plan) -> str:
    """A unified diff (``a/NAME`` -> ``b/NAME``, git-style ``/dev/null``) of every file change."""
    out: list[str] = []
    for a in plan.actions:
        if isinstance(a, WriteUnitFile):
            old = "/dev/null" if a.previous is None else f"a/{a.name}"
            out += _unified(a.previous or "", a.content, old, f"b/{a.name}")
        elif isinstance(a, RemoveUnitFile):
            out += _unified(a.previous, "", f"a/{a.name}", "/dev/null")
        elif isinstance(a, WriteFile | RemoveFile):
            new = a.content if isinstance(a, WriteFile) else None
            out += file_diff(a.path, a.previous, new)
    return "".join(out)


def _text(data: bytes | None) -> str | None:
    """``data`` as text if it is UTF-8 without NUL (else it is shown as binary)."""
    if data is None:
        return ""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def file_diff(path: str, old: bytes | None, new: bytes | None) -> list[str]:
    """A config file's change: a unified diff, or for a binary file its size and sha256."""
    if old == new:
        return []  # mode or owner only: the action line says it
    old_label = "/dev/null" if old is None else f"a{path}"
    new_label = "/dev/null" if new is None else f"b{path}"
    before, after = _text(old), _text(new)
    if before is not None and after is not None:
        return _unified(before, after, old_label, new_label)

    def summary(data: bytes | None) -> str:
        if data is None:
            return "none"
        import hashlib  # OpenSSL libcrypto (~3.6 MB): not for the watch daemon, which imports plan

        return f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}"

    return [f"Binary file {path}: {summary(old)} -> {summary(new)}\n"]


def _index(desired: Sequence[DesiredUnit]) -> dict[str, DesiredUnit]:
    units: dict[str, DesiredUnit] = {}
    for d in desired:
        if d.name in units:
            raise ApplyError(
                f"cannot plan unit '{d.name}': rendered by both services "
                f"'{units[d.name].service}' and '{d.service}'",
                "give the services distinct names in inventory/services.toml",
            )
        units[d.name] = d
    return units


def _name(d: DesiredUnit) -> str:
    return d.name


def _is_masked(unit: LiveUnit) -> bool:
    return unit.load_state == "masked" or unit.unit_file_state in _MASKED


def _check_collisions(
    managed: Sequence[DesiredUnit],
    live_files: Mapping[str, str | None],
    owned: frozenset[str],
    foreign: frozenset[str],
    unit_dir: str,
) -> None:
    clashes = [
        d.name
        for d in managed
        if d.name not in owned and (d.name in foreign or live_files.get(d.name) is not None)
    ]
    if clashes:
        path = PurePosixPath(unit_dir) / clashes[0]
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise ApplyError(
            f"cannot write unit '{clashes[0]}': {path} exists and is not managed by "
            f"reconciler{more}",
            "remove or move that file to let reconciler manage the unit (adopt it), "
            "or rename the service in the inventory",
        )


def _from_own_file(unit: LiveUnit, name: str, unit_dir: str) -> bool:
    """systemd loaded ``unit`` from our file ``unit_dir/name`` (None: not read, assume so).

    ``unit_dir`` may be seen through a prefix (``/proc/PID/root/etc/systemd/system``) that
    systemd's ``FragmentPath`` does not have, hence the suffix comparison.
    """
    fragment = unit.fragment_path
    if fragment is None:
        return True
    path = PurePosixPath(fragment)
    return path.name == name and unit_dir.rstrip("/").endswith(str(path.parent))


def aliases(content: str) -> list[str]:
    """The names ``[Install] Alias=`` gives a unit: links that enabling it creates."""
    return _install_names(content, "Alias")


def _install_names(content: str, key: str) -> list[str]:
    names: list[str] = []
    for line in _install(content):
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            names += value.split()
    return names


def _check_names(
    managed: Sequence[DesiredUnit], units: Mapping[str, DesiredUnit], taken: Mapping[str, str]
) -> None:
    """Every unit name and alias is free or ours: never shadow a vendor unit or alias one."""
    claimed: dict[str, str] = {}
    for d in managed:
        for alias in aliases(d.content):
            kind = d.name.rpartition(".")[2]
            if alias.rpartition(".")[2] != kind or "/" in alias:
                raise ApplyError(
                    f"cannot enable unit '{d.name}': Alias={alias} is not a .{kind} unit name",
                    f"an alias keeps the unit's type: NAME.{kind}",
                )
            other = claimed.get(alias) or (alias if alias in units else None)
            if other is not None:
                raise ApplyError(
                    f"cannot enable unit '{d.name}': Alias={alias} is also the name of '{other}'",
                    "give every unit and alias a distinct name",
                )
            claimed[alias] = d.name
        for also in _install_names(d.content, "Also"):
            if also not in units:  # enabling ours would enable (and own) another unit
                raise ApplyError(
                    f"cannot enable unit '{d.name}': Also={also} names a unit not managed by "
                    "reconciler",
                    "enable that unit through a service of its own in the inventory, or drop Also=",
                )
    for name in [d.name for d in managed] + sorted(claimed):
        if name in taken:
            what = f"alias '{name}' of unit '{claimed[name]}'" if name in claimed else name
            raise ApplyError(
                f"cannot write unit '{name}': {what} already exists ({taken[name]}) and "
                "is not managed by reconciler",
                'adjust a vendor unit with a drop-in ([dropins."UNIT"] in the inventory) '
                "instead of replacing it, or rename the service",
            )


def _adjusted(
    units: Mapping[str, DesiredUnit], changed: Iterable[str], removed: Iterable[str]
) -> set[str]:
    """Units whose drop-ins of ours changed and that are to be restarted for it (a removed
    drop-in restarts its unit; a changed one unless ``restart = false``: then the Reload
    alone applies it)."""
    out: set[str] = set()
    for name in changed:
        target = unitkind.dropin_target(name)
        if target is not None and units[name].restart:
            out.add(target)
    out |= {t for n in removed if (t := unitkind.dropin_target(n)) is not None}
    return out


def _template(name: str) -> str | None:
    """``foo@.service`` for an instance ``foo@1.service``; None for any other name."""
    stem, dot, kind = name.rpartition(".")
    prefix, at, instance = stem.partition("@")
    return f"{prefix}@{dot}{kind}" if at and instance else None


def _timers_first(name: str) -> tuple[bool, str]:
    """Stop a timer before its service, so it cannot fire the service during a prune."""
    return (not name.endswith(".timer"), name)


def _batch(kind: type[EnableUnits] | type[DisableUnits], names: Iterable[str]) -> list[Action]:
    batch = tuple(sorted(set(names)))
    return [kind(batch)] if batch else []


def _needs_reload(unit: LiveUnit, file_present: bool) -> bool:
    """systemd's view is stale: it says so, or a file is there that it never loaded."""
    return unit.need_daemon_reload or (file_present and unit.load_state == "not-found")


def _enablement(
    managed: Sequence[DesiredUnit],
    live: Callable[[str], LiveUnit],
    live_files: Mapping[str, str | None],
) -> tuple[list[str], list[str]]:
    """Units to disable and to enable; an enabled unit whose [Install] changed is re-enabled."""
    disable: list[str] = []
    enable: list[str] = []
    for d in managed:
        state = live(d.name).unit_file_state
        old = live_files.get(d.name)
        if not d.enable:
            disable += [d.name] if state in _ENABLED else []
        elif state not in _ENABLED | _NOT_ENABLEABLE:
            enable.append(d.name)
        elif state in _ENABLED and old is not None and _install(old) != _install(d.content):
            disable.append(d.name)  # drop the symlinks of the old WantedBy=/Alias=
            enable.append(d.name)
    return disable, enable


def _install(content: str) -> list[str]:
    """The [Install] section's lines: what enabling a unit acts on."""
    lines: list[str] = []
    inside = False
    for raw in content.splitlines():
        line = raw.strip()
        if line.startswith("["):
            inside = line == "[Install]"
        elif inside and line and not line.startswith(("#", ";")):
            lines.append(line)
    return lines


def _timer_driven(desired: Sequence[DesiredUnit]) -> set[str]:
    """Units run by a timer of the same inventory service, or started by a timer or path unit
    of this host: the sync never (re)starts them (a socket's service is restarted if running
    and changed, like any ``start = false`` unit)."""
    with_timer = {d.service for d in desired if d.name.endswith(".timer")}
    ours = {d.name for d in desired if d.service in with_timer and not d.name.endswith(".timer")}
    return ours | unitkind.scheduled(unitkind.activated((d.name, d.content) for d in desired))


def _job(
    d: DesiredUnit, unit: LiveUnit, touched: bool, timer_driven: bool
) -> type[StartUnit] | type[RestartUnit] | None:
    """Restart a running unit only if its file changed; start one that should run and doesn't.

    A unit with ``start=False`` is still restarted when changed and running (socket
    activation, a hand start), except a timer's service: that could kill a long job half-way,
    and its next run picks the new file up anyway.
    """
    if timer_driven:
        return None
    if unit.active_state in RUNNING:
        return RestartUnit if touched else None
    if d.start and (touched or not _finished_oneshot(unit)):
        return StartUnit
    return None


def _finished_oneshot(unit: LiveUnit) -> bool:
    """A oneshot without RemainAfterExit= that already ran fine: starting it reruns it."""
    return (
        unit.service_type == "oneshot"
        and unit.active_state == "inactive"
        and unit.result == "success"
        and bool(unit.invocation_id)
    )


def _describe(a: Action) -> str:
    match a:
        case WriteUnitFile(name=name, previous=previous):
            return f"write {name} ({'new' if previous is None else 'changed'})"
        case RemoveUnitFile(name=name):
            return f"remove {name}"
        case DaemonReload():
            return "reload systemd"
        case EnableUnits(names=names):
            return f"enable {', '.join(names)}"
        case DisableUnits(names=names):
            return f"disable {', '.join(names)}"
        case StartUnit(name=name):
            return f"start {name}"
        case RestartUnit(name=name):
            return f"restart {name}"
        case StopUnit(name=name):
            return f"stop {name}"
        case ResetFailedUnit(name=name):
            return f"reset failed state of {name}"
        case WriteFile(path=path, restore=True):
            return f"restore {path} (the original it had before reconciler adopted it)"
        case WriteFile(path=path, previous=previous, mode=mode, uid=uid, gid=gid):
            what = "new" if previous is None else "changed"
            return f"write {path} ({what}; mode {mode:04o}, owner {uid}:{gid})"
        case RemoveFile(path=path):
            return f"remove {path}"
        case ReloadUnit(name=name):
            return f"reload {name}"
    raise AssertionError(f"unknown action {a!r}")  # pragma: no cover - closed union


MAX_DIFF_PAIRS = 4_000_000  # old x new lines difflib may compare (its worst case is quadratic)


def _unified(old: str, new: str, old_label: str, new_label: str) -> list[str]:
    before, after = old.splitlines(keepends=True), new.splitlines(keepends=True)
    if len(before) * len(after) <= MAX_DIFF_PAIRS:
        import difflib  # only a plan with a diff to show needs it (not the watch daemon)

        lines: Iterable[str] = difflib.unified_diff(before, after, old_label, new_label)
    else:  # 40,000 lines with every other one changed: minutes; so replace the whole file
        lines = whole_file_diff(before, after, old_label, new_label)
    # Like git: a last line without a new line gets its own marker instead of merging.
    return [ln if ln.endswith("\n") else ln + "\n\\ No newline at end of file\n" for ln in lines]


def whole_file_diff(
    before: Sequence[str], after: Sequence[str], old_label: str, new_label: str
) -> list[str]:
    """One hunk replacing every line (linear), in difflib's format."""
    head = [f"--- {old_label}\n", f"+++ {new_label}\n"]
    head.append(f"@@ -{_range(len(before))} +{_range(len(after))} @@\n")
    return head + ["-" + ln for ln in before] + ["+" + ln for ln in after]


def _range(count: int) -> str:
    """A whole file's range in a hunk header, as difflib writes it (``1,N``, ``1``, ``0,0``)."""
    return "1" if count == 1 else f"{1 if count else 0},{count}"
