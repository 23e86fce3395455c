"""What the monitor reads of the managed units (talks to systemd, the unit dir, cgroupfs, /proc).

One pass reads every desired unit in two pipelined rounds: ``Systemd.read_units`` (states,
restarts, invocation, exit status, memory, enablement, NeedDaemonReload), then only the
extra properties a unit needs: ``ExecMainExitTimestamp`` for a service that is not running
(when its last run ended), ``ControlGroup`` for a running service whose ``MemoryCurrent`` is
unset (cgroup v1 without the memory controller delegated, as in containers), and the
schedule of timers. Reverse dependencies (impact) are read later, only for units in trouble.

Memory fallback: the RSS of the processes in the unit's cgroup (``cgroup.procs``, then
``/proc/PID/statm``). ``ControlGroup`` is the path systemd sees; with no cgroup namespace
(the disposable host, and a plain host) it is the same path from everywhere, and
``cgroup.procs`` lists PIDs as the *reader's* PID namespace sees them, so this works both
inside a host and from outside it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

from reconciler.core.counters import Exit, signal_name
from reconciler.core.drift import TimerInfo, UnitState
from reconciler.errors import SystemdError
from reconciler.model import LiveUnit
from reconciler.systemd.client import Systemd
from reconciler.systemd.properties import UINT64_MAX
from reconciler.systemd.unit_files import (
    Reloads,
    changed_since,
    file_states,
    host_root,
    read_unit_texts,
)

UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
TIMER_IFACE = "org.freedesktop.systemd1.Timer"
TIMER_PROPS = (
    "LastTriggerUSec",
    "NextElapseUSecRealtime",
    "NextElapseUSecMonotonic",
    "TimersMonotonic",
    "TimersCalendar",
    "RandomizedDelayUSec",
    "AccuracyUSec",
    "Unit",
)
DEPENDANT_PROPS = ("RequiredBy", "WantedBy", "BoundBy", "ConsistsOf")
CGROUP_ROOTS = (
    Path("/sys/fs/cgroup/unified"),
    Path("/sys/fs/cgroup/systemd"),
    Path("/sys/fs/cgroup"),
)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_RUNNING = frozenset({"active", "activating", "deactivating", "reloading"})
# Targets every enabled unit hangs off: listing them as "impact" says nothing.
SPECIAL_TARGETS = frozenset(
    {
        "default.target", "multi-user.target", "graphical.target", "basic.target",
        "sysinit.target", "sockets.target", "timers.target", "paths.target",
        "local-fs.target", "remote-fs.target", "network.target", "network-online.target",
        "shutdown.target", "rescue.target", "emergency.target", "slices.target",
    }
)  # fmt: skip


def usec(value: object) -> float | None:
    """A realtime usec property as unix seconds; 0 and UINT64_MAX mean unset."""
    if not isinstance(value, int) or value in (0, UINT64_MAX):
        return None
    return value / 1e6


def read_cgroup_memory(
    control_group: str, roots: Sequence[Path] = CGROUP_ROOTS, proc: Path = Path("/proc")
) -> int | None:
    """Sum of the resident memory of the processes in ``control_group`` (None: none found).

    Joined strings and ``os.open``/``os.read``, not ``pathlib`` nor ``open``'s buffered
    files: a pass reads this for every running service where ``MemoryCurrent`` is unset
    (10,000 in a 10,000-unit host: 0.38 s with ``open``, 0.21 s this way).
    """
    if not control_group.startswith("/"):
        return None
    procs = f"{control_group.rstrip('/')}/cgroup.procs"
    proc_dir = str(proc).rstrip("/")
    for root in roots:
        pids = _read_all(str(root).rstrip("/") + procs)
        if pids is None:
            continue
        total, seen = 0, False
        for pid in pids.split():
            statm = _read_all(f"{proc_dir}/{pid.decode()}/statm")
            if statm is None:
                continue  # exited meanwhile
            try:
                total += int(statm.split()[1]) * PAGE_SIZE
            except (IndexError, ValueError):
                continue
            seen = True
        return total if seen else None
    return None


def _read_all(path: str) -> bytes | None:
    """The whole of a small kernel file (cgroupfs, procfs: sizes read as 0); None if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = chunk = os.read(fd, 65536)
        while len(chunk) == 65536:  # a short read is the end (seq_file fills the buffer)
            chunk = os.read(fd, 65536)
            data += chunk
        return data
    except OSError:
        return None
    finally:
        os.close(fd)


def _monotonic_to_wall(usec: object, wall: float, mono: float) -> float | None:
    if not isinstance(usec, int) or usec in (0, UINT64_MAX):
        return None
    return wall + (usec / 1e6 - mono)


def _timer_info(
    props: Mapping[str, object], wall: float, mono: float, running: Mapping[str, bool]
) -> TimerInfo:
    next_at = usec(props.get("NextElapseUSecRealtime"))
    mono_next = _monotonic_to_wall(props.get("NextElapseUSecMonotonic"), wall, mono)
    if mono_next is not None and (next_at is None or mono_next < next_at):
        next_at = mono_next
    monotonic = tuple(
        (str(base), int(value) / 1e6)
        for base, value, _next in props.get("TimersMonotonic", ()) or ()  # type: ignore[attr-defined]
    )
    calendar = tuple(
        str(spec)
        for _base, spec, _next in props.get("TimersCalendar", ()) or ()  # type: ignore[attr-defined]
    )
    return TimerInfo(
        last_trigger_at=usec(props.get("LastTriggerUSec")),
        next_elapse_at=next_at,
        monotonic=monotonic,
        calendar=calendar,
        randomized_delay_sec=int(props.get("RandomizedDelayUSec", 0) or 0) / 1e6,  # type: ignore[call-overload]
        accuracy_sec=int(props.get("AccuracyUSec", 0) or 0) / 1e6,  # type: ignore[call-overload]
        job_running=running.get(str(props.get("Unit", "")), False),
    )


def read_state(
    systemd: Systemd,
    names: Sequence[str],
    unit_dir: Path,
    *,
    changed: Callable[[LiveUnit], bool] | None = None,
    cgroup_roots: Sequence[Path] = CGROUP_ROOTS,
    reloads: Reloads | None = None,
    last: Mapping[str, LiveUnit] | None = None,
    cgroups: dict[str, tuple[str, str]] | None = None,
) -> dict[str, UnitState]:
    """Every unit in ``names`` (not loaded ones too: their LiveUnit says not-found).

    ``changed``: whether a unit moved since the caller's last look; only those that did
    (and are not running) get ``ExecMainExitTimestamp`` read, and ``Restart=`` only failed
    ones: in a steady state the second round is nearly empty. None: read them for all.
    ``last``: the units as last seen (``Systemd.read_units``). ``cgroups``: unit -> (run,
    ``ControlGroup``) of the services last measured by their cgroup (``MemoryCurrent``
    unset): in the same run neither is asked again (10,000 such units: 20,000 ``Get``s a
    pass); updated in place to this pass's.
    """
    known = cgroups if cgroups is not None else {}
    unaccounted = {n: run for n, (run, _) in known.items()}
    files, touched = read_unit_texts(unit_dir, names)
    root = host_root(unit_dir)
    if root is None:
        live = systemd.read_units(list(names), last=last, every_type=False, unaccounted=unaccounted)
    else:  # enablement from the directories, NeedDaemonReload only of changed files
        reloads = reloads or Reloads(None, systemd.units_loaded_at())
        suspects = changed_since(touched, names, reloads.loaded_at, reloads.clean)
        live = systemd.read_units(
            list(names),
            file_states=file_states(root, names, files),
            suspects=suspects,
            last=last,
            every_type=False,  # drift asks it of inactive services only
            unaccounted=unaccounted,
        )
        loaded = {n: u.need_daemon_reload for n, u in live.items() if u.load_state == "loaded"}
        reloads.learn(suspects, touched, loaded)
    wall, mono = time.time(), time.monotonic()
    exited = [
        n
        for n, u in live.items()
        if _is_service(n, u) and u.active_state not in _RUNNING and (changed is None or changed(u))
    ]
    failed = [n for n, u in live.items() if _is_service(n, u) and u.active_state == "failed"]
    unmeasured = [
        n
        for n, u in live.items()
        if _is_service(n, u) and u.active_state in _RUNNING and u.memory_current is None
    ]
    same_run = {
        n: known[n][1]
        for n in unmeasured
        if n in known and live[n].invocation_id and known[n][0] == live[n].invocation_id
    }
    need_cgroup = [n for n in unmeasured if n not in same_run]
    timers = [n for n, u in live.items() if n.endswith(".timer") and u.load_state == "loaded"]
    extra: dict[str, dict[str, object]] = {n: {} for n in live}
    rounds: tuple[tuple[list[str], str, tuple[str, ...]], ...] = (
        (exited, SERVICE_IFACE, ("ExecMainExitTimestamp",)),
        (failed, SERVICE_IFACE, ("Restart",)),
        (need_cgroup, SERVICE_IFACE, ("ControlGroup",)),
        (timers, TIMER_IFACE, TIMER_PROPS),
    )
    for group, iface, wanted in rounds:
        if group:
            for name, values in systemd.get_properties(group, iface, wanted).items():
                extra[name].update(values)
    for name, group_path in same_run.items():
        extra[name]["ControlGroup"] = group_path
    if cgroups is not None:
        cgroups.clear()
        cgroups.update(
            (n, (live[n].invocation_id, path))
            for n in unmeasured
            if live[n].invocation_id and (path := str(extra[n].get("ControlGroup", "") or ""))
        )
    running = _jobs_running(systemd, live, [extra[t] for t in timers])
    stalled = [t for t in timers if _stalled(_timer_info(extra[t], wall, mono, running), live[t])]
    if stalled:  # its service may have started (or ended) between the two reads: read again
        for name, values in systemd.get_properties(stalled, TIMER_IFACE, TIMER_PROPS).items():
            extra[name].update(values)
        triggered = {str(extra[t].get("Unit", "")) for t in stalled} - {""}
        fresh = systemd.list_units(sorted(triggered))
        running.update({n: u.active_state in _RUNNING for n, u in fresh.items()})
    states: dict[str, UnitState] = {}
    for name in names:
        unit = live.get(name, LiveUnit(name))
        props = extra.get(name, {})
        memory = unit.memory_current
        source = "MemoryCurrent" if memory is not None else ""
        cgroup = str(props.get("ControlGroup", "") or "")
        if memory is None and cgroup:
            memory = read_cgroup_memory(cgroup, cgroup_roots)
            source = "cgroup-rss" if memory is not None else ""
        states[name] = UnitState(
            live=unit,
            file=files.get(name),
            exec_main_exit_at=usec(props.get("ExecMainExitTimestamp")),
            memory=memory,
            memory_source=source,
            control_group=cgroup,
            restart_policy=str(props.get("Restart", "") or ""),
            timer=_timer_info(props, wall, mono, running) if name in timers else None,
        )
    return states


def _jobs_running(
    systemd: Systemd, live: Mapping[str, LiveUnit], timers: Sequence[Mapping[str, object]]
) -> dict[str, bool]:
    """Whether each timer-triggered unit is running now: while it does, systemd shows no
    next elapse (the next one is computed when the run ends), which is not drift. Units
    not read already (a timer whose service is not managed) cost one more call."""
    wanted = {str(p.get("Unit", "")) for p in timers}
    wanted.discard("")
    units = {n: live[n] for n in wanted if n in live}
    missing = sorted(wanted - set(units))
    if missing:
        units.update(systemd.list_units(missing))
    return {n: u.active_state in _RUNNING for n, u in units.items()}


def _stalled(timer: TimerInfo, unit: LiveUnit) -> bool:
    """An active repeating timer with no next elapse while its unit seems not to run: what
    drift reports, so confirmed by a second read first (a timer firing between the reads of
    the units and of the timers looked exactly like this: a false alarm)."""
    return (
        unit.active_state == "active"
        and timer.repeats
        and timer.next_elapse_at is None
        and not timer.job_running
    )


def _is_service(name: str, unit: LiveUnit) -> bool:
    return name.endswith(".service") and unit.load_state == "loaded"


def read_dependants(systemd: Systemd, units: Sequence[str], depth: int) -> dict[str, list[str]]:
    """Reverse dependencies (RequiredBy, WantedBy, BoundBy, ConsistsOf) of ``units``,
    followed ``depth`` levels out: one pipelined round per level, special targets skipped."""
    graph: dict[str, list[str]] = {}
    frontier = list(dict.fromkeys(units))
    for _ in range(max(depth, 0)):
        todo = [u for u in frontier if u not in graph and u not in SPECIAL_TARGETS]
        if not todo:
            break
        loaded = systemd.list_units(todo)
        todo = [u for u in todo if loaded.get(u) and loaded[u].load_state != "not-found"]
        props = systemd.get_properties(todo, UNIT_IFACE, DEPENDANT_PROPS) if todo else {}
        frontier = []
        for unit in todo:
            deps = [
                str(d)
                for p in DEPENDANT_PROPS
                for d in props.get(unit, {}).get(p, ()) or ()  # type: ignore[attr-defined]
                if str(d) not in SPECIAL_TARGETS
            ]
            graph[unit] = list(dict.fromkeys(deps))
            frontier += graph[unit]
    return graph


def read_all_properties(systemd: Systemd, unit: str) -> dict[str, object]:
    """Every property of one unit (all interfaces), for a diagnostics bundle; {} if unreadable."""
    try:
        return systemd.get_all([unit]).get(unit, {})
    except SystemdError:
        return {}


PROCESS_EXIT = "98e322203f7a4ed290d09fe03c09fe15"  # systemd: "Main process exited, ..."
UNIT_FAILURE = "d9b373ed55a64feb8242e02dbe79a49c"  # systemd: "Failed with result '...'"
EXITS_TIMEOUT_SEC = 5.0
EXIT_FIELDS = "MESSAGE_ID,UNIT,INVOCATION_ID,EXIT_CODE,EXIT_STATUS,UNIT_RESULT"


Run = dict[str, object]  # one run's end: at, exit_code or signal, result


def read_exits(
    command: Sequence[str], units: Collection[str], since: float, until: float
) -> dict[str, list[Exit]]:
    """How the runs of ``units`` ended between ``since`` and ``until``, from systemd's own
    journal entries (one per run, by ``INVOCATION_ID``), oldest first per unit; nothing
    for a unit when the journal cannot say. Once a crashed unit runs again its
    ``ExecMain*`` describe the new run: this is where an unseen crash's exit code, signal
    and ``watchdog`` result are still kept. One ``journalctl`` for all of them (a batch of
    the watch daemon in a crash storm asked once per unit: ~40 processes a batch)."""
    runs, _ = read_exit_runs(command, units, since=since)
    return exits_of(runs, units, since, until)


def read_exit_runs(
    command: Sequence[str],
    units: Collection[str] | None,
    *,
    since: float | None = None,
    until: float | None = None,
    cursor: str | None = None,
) -> tuple[dict[tuple[str, str], Run], str | None]:
    """systemd's exit entries (of ``units``; of every unit with None) since a time or after
    a journal cursor (up to ``until``), by (unit, invocation); and the cursor of the last
    entry read (None when none was). Only PID 1's two exit messages are asked for
    (``MESSAGE_ID`` matches: journalctl reads them from its field index, not every line of
    the journal), with only the fields read here (a third of the JSON)."""
    import json
    import subprocess

    argv = [*command, "--no-pager", "-o", "json", f"--output-fields={EXIT_FIELDS}"]
    argv += ["--after-cursor", cursor] if cursor else ["--since", f"@{int(since or 0)}"]
    argv += [f"--until=@{int(until) + 1}"] if until is not None else []
    argv += [f"UNIT={unit}" for unit in sorted(units or ())]  # UNIT=a UNIT=b: a or b
    argv += ["_PID=1", f"MESSAGE_ID={PROCESS_EXIT}", f"MESSAGE_ID={UNIT_FAILURE}"]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=EXITS_TIMEOUT_SEC,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}, None
    runs: dict[tuple[str, str], Run] = {}
    last = None
    for line in proc.stdout.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        last = entry.get("__CURSOR") or last
        kind = entry.get("MESSAGE_ID")
        unit = entry.get("UNIT")
        if kind not in (PROCESS_EXIT, UNIT_FAILURE) or not isinstance(unit, str):
            continue
        at = int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6
        run = runs.setdefault((unit, str(entry.get("INVOCATION_ID") or at)), {"at": at})
        if kind == PROCESS_EXIT:
            run["at"] = at
            status = str(entry.get("EXIT_STATUS", ""))
            code = entry.get("EXIT_CODE")
            if status.isdigit() and code == "exited":
                run["exit_code"] = int(status)
            elif status.isdigit() and code in ("killed", "dumped"):
                run["signal"] = signal_name(int(status))
        else:
            run["result"] = str(entry.get("UNIT_RESULT", ""))
    return runs, last


def exits_of(
    runs: Mapping[tuple[str, str], Run], units: Collection[str], since: float, until: float
) -> dict[str, list[Exit]]:
    """The exits among ``runs`` of ``units`` between ``since`` and ``until`` (+1 s)."""
    out: dict[str, list[Exit]] = {}
    for (unit, _), r in runs.items():
        at = float(r["at"])  # type: ignore[arg-type]
        if unit in units and since <= at <= until + 1.0 and ("exit_code" in r or "signal" in r):
            out.setdefault(unit, []).append(
                Exit(at, r.get("exit_code"), r.get("signal"), str(r.get("result", "")))  # type: ignore[arg-type]
            )
    return {unit: sorted(exits, key=lambda e: e.at) for unit, exits in out.items()}
