"""Check rendered units with ``systemd-analyze verify``, offline (talks to systemd-analyze).

``verify`` loads unit files the way the manager would (unknown keys, bad values, missing
executables, a timer without a unit to trigger) without a running systemd and without
touching the host. It is a separate, slower step than rendering (a process start, ~15 ms
for one unit, ~40 ms for 200): callers run it only when rendered content changed, so a
no-op sync stays fast.

Its output mixes our units with noise about the units they reference (``multi-user.target``
and its dependencies). Only lines naming one of our units are kept, prefixed with the
service that unit comes from.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from reconciler.config import Settings
from reconciler.errors import ReconcilerError, RenderError, SystemdError, UsageError
from reconciler.model import DesiredUnit, Plan, RemoveUnitFile, WriteUnitFile
from reconciler.reconcile import quadlet, working_tree
from reconciler.reconcile.render import render_bounded

ANALYZE = "systemd-analyze"
ARGS = ("verify", "--man=no", "--generators=no", "--recursive-errors=no", "--no-pager")
ENV = {
    "SYSTEMD_LOG_LEVEL": "warning",  # errors and warnings; no info chatter
    "SYSTEMD_LOG_TARGET": "console",
    "SYSTEMD_LOG_COLOR": "0",
    "SYSTEMD_LOG_LOCATION": "0",
    "SYSTEMD_LOG_TIME": "0",
    "SYSTEMD_LOG_TID": "0",
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_PAGER": "",
    "LC_ALL": "C",
}
_UNIT_IN_LINE = re.compile(r"[A-Za-z0-9:_.@\\-]+\.(?:service|timer|socket|target|path|mount)")
NOT_EXECUTABLE = re.compile(r": Command \S+ is not executable")


def _attribute(line: str, units: dict[str, DesiredUnit]) -> str | None:
    """The unit (or drop-in) a line is about, if it is one of ours."""
    head = line.partition(":")[0]
    if head in units:  # a drop-in's own line: "UNIT.d/FILE.conf:3: ..."
        return head
    for match in _UNIT_IN_LINE.finditer(line):
        candidate = match.group(0)
        if candidate in units:
            return candidate
    return None


def complaints_of(
    output: str, directory: str, units: Sequence[DesiredUnit], *, check_executables: bool = True
) -> list[tuple[str, str]]:
    """``(file, line)`` for each line about one of our files, in output order, no repeats."""
    by_name = {u.name: u for u in units}
    found: list[tuple[str, str]] = []
    for raw in output.splitlines():
        line = raw.replace(directory.rstrip("/") + "/", "").strip()
        name = _attribute(line, by_name)
        if name is None:
            continue  # about a unit we do not write (a dependency, a system unit)
        if not check_executables and NOT_EXECUTABLE.search(line):
            continue
        if (name, line) not in found:
            found.append((name, line))
    return found


VERIFY_CHUNK = 1000  # units per systemd-analyze process (10,000 in one took 14.7 s loaded)


def verify(
    units: Sequence[DesiredUnit],
    *,
    timeout: float = 30,
    check_executables: bool = True,
    chunk: int = VERIFY_CHUNK,
) -> list[tuple[str, str]]:
    """Run ``systemd-analyze verify`` on ``units``: ``(file, line)`` of each complaint about
    one of them (file "": systemd-analyze itself failed); [] when it has nothing to say.

    ``check_executables=False`` drops "Command ... is not executable" complaints: use it
    only when verifying for another machine (e.g. linting a config repo in CI), since on
    the host itself a missing ExecStart binary is a real fault. Commands prefixed with
    ``-`` are never checked by systemd.

    Up to ``chunk`` units per process (all in one directory: a timer finds its service),
    as many processes at once as there are CPUs, each with its own ``timeout``: 10,000
    units are not one call that a loaded host cannot finish in time.
    """
    if not units:
        return []
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **ENV}
    complaints: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="reconciler-verify-") as directory:
        paths = []
        for unit in units:
            dropin = unit.name.count("/") == 1 and unit.name.endswith(".conf")
            if ("/" in unit.name and not dropin) or unit.name.startswith("."):
                raise SystemdError(f"cannot verify unit '{unit.name}': not a plain unit name")
            path = Path(directory) / unit.name
            path.parent.mkdir(exist_ok=True)
            path.write_text(unit.content, encoding="utf-8")
            if not dropin:  # a drop-in is read with its unit, from the unit's directory
                paths.append(str(path))
        chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
        at_once = max(1, min(len(chunks), os.cpu_count() or 1))
        for k in range(0, len(chunks), at_once):
            batch = chunks[k : k + at_once]
            procs: list[subprocess.Popen[str]] = []
            try:
                procs += (_analyze(chunk_paths, env) for chunk_paths in batch)
                for proc in procs:  # every unit named: a line is about its own chunk's
                    complaints += _complaints(proc, timeout, directory, units, check_executables)
            finally:
                for proc in procs:  # none left running when one failed
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
    return list(dict.fromkeys(complaints))  # a unit another chunk's unit loads: said once


def _analyze(paths: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    try:
        return subprocess.Popen(
            [ANALYZE, *ARGS, *paths],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
        )
    except FileNotFoundError:
        raise SystemdError(
            f"cannot verify units: {ANALYZE} not found", hint="install the systemd package"
        ) from None


def _complaints(
    proc: subprocess.Popen[str],
    timeout: float,
    directory: str,
    units: Sequence[DesiredUnit],
    check_executables: bool,
) -> list[tuple[str, str]]:
    """One process's complaints about its ``units`` (killed past ``timeout``)."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise SystemdError(f"cannot verify units: {ANALYZE} took over {timeout:g}s") from None
    output = stderr + "\n" + stdout
    everything = complaints_of(output, directory, units)
    complaints = complaints_of(output, directory, units, check_executables=check_executables)
    if proc.returncode != 0 and not everything:
        first = next((line for line in output.splitlines() if line.strip()), "no output")
        first = first.replace(directory, "<units>")
        complaints.append(("", f"{ANALYZE}: exit status {proc.returncode}: {first.strip()}"))
    return complaints


def source_of(name: str, units: Sequence[DesiredUnit]) -> str:
    """Where a verified file comes from in the repository: ``services.NAME`` for a unit of
    ours, ``dropins."UNIT".NAME`` for each of our drop-ins adjusting it (or for the drop-in
    itself); "" when neither (systemd-analyze itself, an operator's drop-in)."""
    from reconciler.core import unitkind
    from reconciler.core.inventory import key_path

    def dropin_key(file: str) -> str | None:
        unit = unitkind.dropin_target(file)
        if unit is None:
            return None
        own = file.partition(".d/")[2].removeprefix(unitkind.DROPIN_PREFIX).removesuffix(".conf")
        return key_path(("dropins", unit, own))

    if "/" in name:
        return dropin_key(name) or ""
    keys = [key_path(("services", u.service)) for u in units if name == u.name != u.service]
    for u in units:
        key = dropin_key(u.name) if unitkind.dropin_target(u.name) == name else None
        keys += [key] if key else []
    return " with ".join(dict.fromkeys(keys))


def refusal(
    found: Sequence[tuple[str, str]], units: Sequence[DesiredUnit], *, inventory: bool = True
) -> RenderError:
    """One line for an operator: where the first complaint comes from (the inventory key;
    ``inventory=False``: units not from a config repository), what systemd-analyze said, and
    how many more it said."""
    from reconciler.core.inventory import SERVICES_FILE

    name, line = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    what = line if not name or line.startswith(name + ":") else f"{name}: {line}"
    source = source_of(name, units) if inventory else ""
    where = f"{SERVICES_FILE}: {source}: " if source else ""
    return RenderError(f"{where}systemd-analyze refused {what}{more}")


View = tuple[tuple[str, str] | None, list[tuple[str, str]]]  # (unit file, drop-ins), host paths


def merged_views(plan: Plan, desired: Sequence[DesiredUnit], settings: Settings) -> dict[str, View]:
    """Each unit whose drop-ins this plan changes, as systemd will load it afterwards: its unit
    file (ours as rendered, else the one on disk, a vendor's) and every drop-in in systemd's
    order (ours as rendered or gone, an operator's and the distribution's as they are)."""
    from reconciler.core import unitkind
    from reconciler.core.enablement import SEARCH_PATH
    from reconciler.systemd.unit_files import read_unit_view

    root = str(settings.host_root).rstrip("/")
    unit_dir = str(settings.unit_dir).rstrip("/")
    if root and unit_dir.startswith(root + "/"):
        unit_dir = unit_dir[len(root) :]
    changes: dict[str, dict[str, str | None]] = {}
    for a in plan.actions:
        target = unitkind.dropin_target(getattr(a, "name", ""))
        if target is not None and isinstance(a, WriteUnitFile | RemoveUnitFile):
            text = a.content if isinstance(a, WriteUnitFile) else None
            changes.setdefault(target, {})[f"{unit_dir}/{a.name}"] = text
    by_name = {d.name: d for d in desired}

    def priority(item: tuple[str, str]) -> int:
        directory = item[0].rpartition("/")[0].rpartition("/")[0]
        return SEARCH_PATH.index(directory) if directory in SEARCH_PATH else 0

    views: dict[str, View] = {}
    for unit, ours in sorted(changes.items()):
        fragment, found = read_unit_view(settings.host_root, unit)
        if unit in by_name:
            fragment = (f"{unit_dir}/{unit}", by_name[unit].content)
        files = [(p, t) for p, t in found if p not in ours]
        files += [(p, t) for p, t in ours.items() if t is not None]
        views[unit] = (fragment, unitkind.merge_dropins(sorted(files, key=priority)))
    return views


def check_units(
    desired: Sequence[DesiredUnit],
    plan: Plan,
    settings: Settings | None = None,
    *,
    inventory: bool = True,
) -> None:
    """The sync's validate step: verify the units this plan writes, and each unit whose
    drop-ins it changes as merged (``settings``: where to read the rest of it); refuse before
    touching the host. ``inventory=False``: the units are not a config repository's (the
    reconciler's own), so the refusal names no inventory key."""
    written = {a.name for a in plan.actions if isinstance(a, WriteUnitFile)}
    units = [u for u in desired if u.name in written and "/" not in u.name]
    views = merged_views(plan, desired, settings) if settings is not None else {}
    for unit, (fragment, dropins) in views.items():
        if fragment is None or "@." in unit:  # nothing to verify yet; a template: no instance
            continue
        service = next((u.service for u in desired if u.name == unit), unit)
        units = [u for u in units if u.name != unit]
        units.append(DesiredUnit(unit, fragment[1], service))
        units += [DesiredUnit(f"{unit}.d/{p.rpartition('/')[2]}", t, unit) for p, t in dropins]
    if not units:
        return
    found = verify(units)
    if found:
        raise refusal(found, units, inventory=inventory)


@dataclass(frozen=True)
class HostCheck:
    """One host of a working tree: its rendered units, or the one-line reason it failed."""

    host: str
    units: tuple[str, ...] = ()
    error: str | None = None  # the line a sync would print for this host
    files: tuple[str, ...] = ()  # its config files ([files."PATH"]), rendered
    notes: tuple[str, ...] = ()  # what could not be checked here (Quadlet without Podman)


def check_tree(directory: Path, hosts: Sequence[str] | None = None) -> list[HostCheck]:
    """Render and verify (offline) the units of ``hosts`` (default: every host) from the
    working tree ``directory``; touches nothing outside a temp dir, needs no systemd.

    A problem shared by every host (the inventory, a read) raises; a host's render or
    verify problem is that host's ``error``.
    """
    from reconciler.core import files as files_core
    from reconciler.core import inventory, rollout  # pydantic: only the commands that render

    snapshot = working_tree.read(directory)
    inv = inventory.load(snapshot.files)
    rollout.parse(snapshot.files, inv)  # the waves, every host in exactly one
    known = list(inv.hosts_file.hosts)
    for name in hosts or ():
        if name not in inv.hosts_file.hosts:
            raise UsageError(
                f"cannot validate host '{name}': not in {inventory.HOSTS_FILE} "
                f"(known: {inventory.listing(known)})",
                "pass --host NAME of a [hosts.NAME] table, or --all-hosts",
            )
    defaults = Settings()
    results = []
    for name in hosts or known:
        try:
            # units and config files (their templates too), bounded like a sync's render
            units, files = render_bounded(snapshot, replace(defaults, host=name))
            files_core.refuse_protected(files)  # the host-independent part of the path rule
            # a Quadlet unit is checked by Podman's generator
            plain = [u for u in units if "/" not in u.name and not u.generated_from]
            with_dropins, unchecked = with_their_units(plain, units, Path("/"))
            found = verify(with_dropins, check_executables=False)
            if found:
                raise refusal(found, with_dropins)
            note = quadlet.check(files, Path("/"), required=False)
        except ReconcilerError as exc:
            results.append(HostCheck(name, error=str(exc)))
            continue
        notes = [f"not checked here: {n}" for n in unchecked + ([note] if note else [])]
        own = tuple(f.path for f in files if not f.quadlet)  # Quadlet: its unit's
        if own:
            notes.append(f"not checked here: {FILES_ROOTS_NOTE}")
        results.append(HostCheck(name, tuple(u.name for u in units), files=own, notes=tuple(notes)))
    return results


FILES_ROOTS_NOTE = (
    "whether each host's files_roots (its own config) allow these paths; protected paths "
    "were checked"
)


def with_their_units(
    plain: Sequence[DesiredUnit], units: Sequence[DesiredUnit], root: Path
) -> tuple[list[DesiredUnit], list[str]]:
    """``plain`` units plus each drop-in with the unit it adjusts, to verify together (a
    drop-in is only read with its unit): the repository's own, else the unit file found under
    ``root`` (this machine's vendor unit). The drop-ins that cannot be verified here, said why."""
    from reconciler.core import unitkind
    from reconciler.systemd.unit_files import read_unit_view

    out = list(plain)
    ours = {u.name for u in plain}
    unchecked: list[str] = []
    for d in units:
        unit = unitkind.dropin_target(d.name)
        if unit is None:
            continue
        if unit in ours:
            out.append(d)
            continue
        key = source_of(d.name, [d])
        if "@." in unit:
            unchecked.append(f"{key}: {unit} is a template (verified per instance on the host)")
            continue
        fragment, _ = read_unit_view(root, unit)
        if fragment is None:
            unchecked.append(
                f"{key}: {unit} is not on this machine to verify the drop-in against "
                "(the host's own unit is verified with it by the sync)"
            )
            continue
        if unit not in {u.name for u in out}:
            out.append(DesiredUnit(unit, fragment[1], unit))
        out.append(d)
    return out, unchecked
