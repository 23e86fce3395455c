"""systemd's Manager and units over D-Bus (talks to systemd: system bus or private socket).

The API the rest of the project uses: unit states and properties of many units at once
(pipelined), Reload, batched Enable/Disable/Mask/Unmask, jobs that are waited for
(``Subscribe`` + ``JobRemoved``, listened for before the calls, so none is missed) and a
stream of ``PropertiesChanged``. The wire format is in ``reconciler.systemd.wire`` (pure), the
socket and the error mapping in ``reconciler.systemd.connection``.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial

from reconciler.core.plan import RUNNING  # a plan restarts these, never starts them
from reconciler.errors import SystemdError
from reconciler.model import LiveUnit
from reconciler.systemd.connection import PRIVATE_SOCKET, SYSTEM_BUS, Connection, dbus_error
from reconciler.systemd.properties import (
    MISSING,
    NEVER_RAN,
    PER_RUN,
    SETTLED,
    Prop,
    live_value,
    monitor_properties,
    parse_unit_infos,
)
from reconciler.systemd.subscribe import PropertyChange, PropertyStream
from reconciler.systemd.wire import (
    ERROR,
    MANAGER,
    MANAGER_PATH,
    PROPERTIES,
    SERVICE,
    UNIT,
    MatchRule,
    Message,
    build_call,
    build_get,
    check_unit_name,
    unit_name_from_path,
    unit_path,
)

Request = tuple[tuple[str, str], str, Callable[[int], bytes]]  # (unit, field), method, build

__all__ = [
    "JobResult",
    "PropertyChange",
    "PropertyStream",
    "Systemd",
    "UnitFileChange",
    "check_unit_name",
    "dbus_error",
    "default_address",
    "unit_name_from_path",
    "unit_path",
]

DEFAULT_JOB_TIMEOUT = 300.0  # seconds run_jobs waits when no timeout is given
# Bounds at scale (10,000 units): no single call whose answer takes systemd near the D-Bus
# timeout (a ListUnitsByNames loads every unit it names; an EnableUnitFiles links every
# file), and no more jobs in systemd's queue at once than it starts in a few seconds.
LIST_BATCH = 500  # names per ListUnitsByNames
FILE_BATCH = 500  # unit files per Enable/Disable/Mask/UnmaskUnitFiles
JOB_WINDOW = 500  # jobs queued and not yet finished
RELOAD_TIMEOUT = 300.0  # seconds a Reload may take (it reloads every unit before answering)
JOB_METHODS = {
    "start": "StartUnit",
    "stop": "StopUnit",
    "restart": "RestartUnit",
    "try-restart": "TryRestartUnit",
    "reload-or-restart": "ReloadOrRestartUnit",
    "reload": "ReloadUnit",
}


@dataclass(frozen=True)
class JobResult:
    unit: str
    job: str  # the job's object path ("" if none was queued)
    result: str  # done|canceled|timeout|failed|dependency|skipped|wait-timeout (we gave up)


@dataclass(frozen=True)
class UnitFileChange:
    kind: str  # symlink, unlink, ...
    path: str  # the file created or removed
    source: str  # what a symlink points to ("" for unlink)


def default_address() -> str:
    """$RECONCILER_BUS, else (as root) systemd's private socket, else the system bus."""
    env = os.environ.get("RECONCILER_BUS")
    if env:
        return env
    if os.geteuid() == 0 and os.path.exists(PRIVATE_SOCKET):
        return f"unix:path={PRIVATE_SOCKET}"
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS


def _check_names(names: Iterable[str]) -> list[str]:
    unique = list(dict.fromkeys(names))
    for name in unique:
        check_unit_name(name)
    return unique


def _check_files(files: Sequence[str]) -> list[str]:
    """Unit files for Enable*/Mask*: names are checked; absolute paths go to systemd as-is."""
    for f in files:
        if not f.startswith("/"):
            check_unit_name(f)
    return list(files)


def _runtime(props: tuple[Prop, ...], *, per_run: bool) -> tuple[Prop, ...]:
    """The runtime properties fixed for one run (``PER_RUN``), or those that move within
    it (MemoryCurrent)."""
    return tuple(p for p in props if (p[2] in PER_RUN) == per_run)


class Systemd:
    """A client of systemd's Manager and units: one blocking connection, not thread-safe."""

    list_batch = LIST_BATCH
    file_batch = FILE_BATCH
    job_window = JOB_WINDOW

    def __init__(self, address: str | None = None, *, timeout: float = 30.0) -> None:
        self._conn = Connection(address or default_address(), timeout=timeout)
        self.address = self._conn.address
        self.timeout = timeout
        self.calls: Counter[str] = self._conn.calls  # method name -> calls sent
        self._subscribed = False
        self._job_rule: MatchRule | None = None
        self._removed: dict[str, str] = {}  # job path -> result, from JobRemoved
        self._collecting = False

    @property
    def private(self) -> bool:
        """True on systemd's peer-to-peer socket (no dbus-daemon in between)."""
        return self._conn.private

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Systemd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _manager(self, what: str, method: str, sig: str = "", *args: object) -> tuple[object, ...]:
        return self._conn.call(what, MANAGER_PATH, MANAGER, method, sig, args)

    # -- reading ------------------------------------------------------------------------

    def list_units(self, names: Sequence[str]) -> dict[str, LiveUnit]:
        """Load and active/sub state of ``names`` (loads them): ListUnitsByNames calls of
        ``LIST_BATCH`` names, pipelined; one call for up to that many."""
        unique = _check_names(names)
        batches = [unique[i : i + self.list_batch] for i in range(0, len(unique), self.list_batch)]
        what = _units_what(unique)
        requests = [
            (
                i,
                "ListUnitsByNames",
                partial(_manager_call, member="ListUnitsByNames", signature="as", body=(b,)),
            )
            for i, b in enumerate(batches)
        ]
        found: dict[str, LiveUnit] = {}
        for i, reply in self._conn.pipeline(what, requests):
            rows = _unwrap_rows(what, reply)
            intern = sys.intern
            # systemd answers one row per name, in order (an alias: under the name asked)
            asked = batches[i] if len(rows) == len(batches[i]) else [r[0] for r in rows]
            found.update(
                (n, LiveUnit(n, intern(load), intern(active), intern(sub)))
                for n, (_, load, active, sub) in zip(asked, rows, strict=True)
            )
        return {n: found[n] for n in unique if n in found} | found

    def list_units_by_patterns(
        self, states: Sequence[str], patterns: Sequence[str]
    ) -> list[LiveUnit]:
        """Units in ``states`` (e.g. "failed"; none: any) matching glob ``patterns`` (none: all)."""
        (rows,) = self._manager(
            "list units", "ListUnitsByPatterns", "asas", list(states), list(patterns)
        )
        return parse_unit_infos(rows)

    def read_units(
        self,
        names: Sequence[str],
        *,
        runtime: bool = True,
        file_states: Mapping[str, str] | None = None,
        suspects: Collection[str] | None = None,
        last: Mapping[str, LiveUnit] | None = None,
        every_type: bool = True,
        unaccounted: Mapping[str, str] | None = None,
    ) -> dict[str, LiveUnit]:
        """What the monitor needs of ``names``: states in one call, then pipelined Gets.

        ``runtime=False`` (what a plan needs) skips the runtime properties of running
        units (Result, NRestarts, ExecMain*, MemoryCurrent): they keep their defaults.
        ``file_states``: the enablement already known (from the unit directories), not
        asked (systemd 252 rescans the directories per unit); ``suspects``: the only units
        whose ``NeedDaemonReload`` is asked (files changed since systemd last loaded).

        Inactive units go first: when their InvocationID is empty they never ran since
        systemd loaded them, so their runtime properties are the defaults and are not
        fetched (systemd unloads unreferenced inactive units, and every Get on one loads
        it again from disk, which is what makes reading them slow). States and properties
        are separate reads: a unit that changes meanwhile may show, say, a restart's
        ``Result=success`` next to the crash's ``auto-restart`` state.

        ``last``: each unit as the caller last saw it. A unit in the same settled state
        (running, exited, dead) of the same run (``InvocationID``) keeps that look's
        ``PER_RUN`` properties: systemd changes them only with the state or a new run, and
        not asking saves four Gets a running service (half of a steady pass's reads).
        ``every_type=False``: a service's ``Type`` is asked only while it is inactive, the
        one state where it matters (a finished oneshot is not down); "" for the others.
        ``unaccounted``: unit -> the run (``InvocationID``) whose ``MemoryCurrent`` systemd
        left unset (no memory accounting): not asked again in that run.
        """
        units = self.list_units(names)
        skip = set()
        if file_states is not None:
            skip.add("unit_file_state")
        if suspects is not None:
            skip.add("need_daemon_reload")
        suspects_ = suspects or ()
        unaccounted_ = unaccounted or {}
        order = sorted(
            (n for n, u in units.items() if u.load_state != "not-found"),
            key=lambda n: units[n].active_state != "inactive",
        )
        more: deque[Request] = deque()

        def gets(name: str, props: tuple[Prop, ...]) -> Iterator[Request]:
            path = unit_path(name)
            idle = units[name].active_state == "inactive"
            for i, p, field in props:
                if field in skip and (field != "need_daemon_reload" or name not in suspects_):
                    continue
                if field == "service_type" and not (idle or every_type):
                    continue
                yield (name, field), "Get", partial(build_get, path=path, interface=i, prop=p)

        def fetch(name: str, props: tuple[Prop, ...]) -> None:
            more.extend(gets(name, props))

        def reusable(name: str) -> LiveUnit | None:
            seen = last.get(name) if last is not None else None
            now = units[name].active_state, units[name].sub_state
            if seen is None or not seen.invocation_id or now not in SETTLED:
                return None
            return seen if now == (seen.active_state, seen.sub_state) else None

        def first() -> Iterator[Request]:  # built as the window frees (Connection.pipeline)
            for name in order:
                file_props, runtime_props = monitor_properties(name)
                if name in unaccounted_:  # MemoryCurrent: in ran(), if this is another run
                    runtime_props = _runtime(runtime_props, per_run=True)
                if units[name].active_state == "inactive" or not runtime:
                    yield from gets(name, file_props)
                elif reusable(name) is not None:  # the per-run ones once its run is known
                    yield from gets(name, file_props + _runtime(runtime_props, per_run=False))
                else:
                    yield from gets(name, file_props + runtime_props)

        def ran(name: str, invocation: object) -> None:
            """Its InvocationID read: the runtime properties still to ask, or known."""
            runtime_props = monitor_properties(name)[1]
            idle = units[name].active_state == "inactive"
            if not idle and not runtime:
                return
            if not idle and name in unaccounted_ and invocation != unaccounted_[name]:
                fetch(name, _runtime(runtime_props, per_run=False))  # another run than that
            seen = reusable(name)
            if seen is not None and invocation == seen.invocation_id:
                fields = {f for _, _, f in runtime_props} & PER_RUN
                values[name].update((f, getattr(seen, f)) for f in fields)
                if idle:
                    fetch(name, _runtime(runtime_props, per_run=False))
            elif idle and invocation:
                fetch(name, runtime_props)
            elif idle:
                values[name].update((f, NEVER_RAN[f]) for _, _, f in runtime_props)
            elif seen is not None:  # asked only the moving ones: a new run
                fetch(name, _runtime(runtime_props, per_run=True))

        values: dict[str, dict[str, object]] = {name: {} for name in units}
        if file_states is not None:
            for name in units:
                values[name]["unit_file_state"] = file_states.get(name, "")
        replies = self._conn.pipeline(_units_what(units), first(), more=more)
        for (name, field), reply in replies:
            if reply.type == ERROR:
                if reply.error_name in MISSING:
                    continue
                raise dbus_error(f"read unit '{name}'", reply.error_name, reply.error_text())
            value = values[name][field] = live_value(field, reply.value())
            if field == "invocation_id":
                ran(name, value)
        return {
            name: LiveUnit(name, unit.load_state, unit.active_state, unit.sub_state, **values[name])  # type: ignore[arg-type]
            for name, unit in units.items()
        }

    def units_loaded_at(self) -> float | None:
        """When systemd last loaded unit files (boot or daemon-reload), wall seconds.

        A unit file not changed since then cannot need a reload, so a plan asks
        ``NeedDaemonReload`` only of files changed later. None when systemd does not say.
        """
        for prop in ("UnitsLoadTimestamp", "UnitsLoadStartTimestamp"):
            try:
                (value,) = self._conn.call(
                    "read the manager's load time",
                    MANAGER_PATH,
                    PROPERTIES,
                    "Get",
                    "ss",
                    (MANAGER, prop),
                )
            except SystemdError:
                continue
            usec = value[1] if isinstance(value, tuple) else value
            if isinstance(usec, int) and usec:
                return usec / 1e6
        return None

    def read_for_plan(self, names: Sequence[str], suspects: Collection[str]) -> dict[str, LiveUnit]:
        """What a plan needs, in as few calls as the host allows.

        One ListUnitsByNames for load and active states; ``NeedDaemonReload`` only of the
        ``suspects`` (files changed since systemd last loaded units); for services that do
        not run, what tells a finished oneshot (Type, Result, InvocationID). Enablement is
        not asked here: ``reconciler.core.enablement`` computes it from the directories.
        A host with 10,000 running, unchanged units answers in one call.
        """
        units = self.list_units(names)
        queue: list[tuple[tuple[str, str], str, Callable[[int], bytes]]] = []
        for name, unit in units.items():
            if unit.load_state == "not-found":
                continue
            path = unit_path(name)
            props: list[Prop] = []
            if name in suspects:
                props.append((UNIT, "NeedDaemonReload", "need_daemon_reload"))
            if name.endswith(".service") and unit.active_state not in RUNNING:
                props += [
                    (SERVICE, "Type", "service_type"),
                    (SERVICE, "Result", "result"),
                    (UNIT, "InvocationID", "invocation_id"),
                ]
            queue += [
                ((name, f), "Get", partial(build_get, path=path, interface=i, prop=p))
                for i, p, f in props
            ]
        values: dict[str, dict[str, object]] = {name: {} for name in units}
        for (name, field), reply in self._conn.pipeline(_units_what(units), queue):
            if reply.type == ERROR:
                if reply.error_name in MISSING:
                    continue
                raise dbus_error(f"read unit '{name}'", reply.error_name, reply.error_text())
            values[name][field] = live_value(field, reply.value())
        return {
            name: replace(unit, **values[name])  # type: ignore[arg-type]
            for name, unit in units.items()
        }

    def get_properties(
        self, names: Sequence[str], interface: str, props: Sequence[str]
    ) -> dict[str, dict[str, object]]:
        """``props`` of ``interface`` for every unit, pipelined Gets; any error raises."""
        out: dict[str, dict[str, object]] = {n: {} for n in dict.fromkeys(names)}
        for name, prop, value in self.each_property(names, interface, props):
            out[name][prop] = value
        return out

    def each_property(
        self, names: Sequence[str], interface: str, props: Sequence[str]
    ) -> Iterator[tuple[str, str, object]]:
        """:meth:`get_properties` as (unit, property, value), in the order the replies
        come: for a caller that keeps less than all of them (the watch daemon's re-read,
        which held a dict a unit for a moment)."""
        unique = _check_names(names)
        requests = (  # built as the window frees (Connection.pipeline)
            ((n, p), "Get", partial(build_get, path=unit_path(n), interface=interface, prop=p))
            for n in unique
            for p in props
        )
        for (name, prop), reply in self._conn.pipeline(_units_what(unique), requests):
            if reply.type == ERROR:
                raise dbus_error(
                    f"read property {prop} of unit '{name}'", reply.error_name, reply.error_text()
                )
            yield name, prop, reply.value()

    def get_all(self, names: Sequence[str], interface: str = "") -> dict[str, dict[str, object]]:
        """Every property of ``interface`` ("" = all interfaces) per unit, pipelined GetAll."""
        unique = _check_names(names)
        requests = (  # built as the window frees (Connection.pipeline)
            (
                n,
                "GetAll",
                partial(
                    build_call,
                    path=unit_path(n),
                    interface=PROPERTIES,
                    member="GetAll",
                    signature="s",
                    body=(interface,),
                ),
            )
            for n in unique
        )
        out: dict[str, dict[str, object]] = {}
        for name, reply in self._conn.pipeline(_units_what(unique), requests):
            out[name] = dict(_unwrap(f"read unit '{name}'", reply)[0])  # type: ignore[call-overload]
        return out

    def unit_file_states(self, names: Sequence[str]) -> dict[str, str]:
        """Enablement of unit files (works for units not loaded); "" when there is no file."""
        unique = _check_names(names)
        requests = (  # built as the window frees (Connection.pipeline)
            (
                n,
                "GetUnitFileState",
                partial(_manager_call, member="GetUnitFileState", signature="s", body=(n,)),
            )
            for n in unique
        )
        out: dict[str, str] = {}
        for name, reply in self._conn.pipeline(_units_what(unique), requests):
            if reply.type == ERROR and reply.error_name in _NO_FILE:
                out[name] = ""
            else:
                out[name] = str(_unwrap(f"read the unit file state of '{name}'", reply)[0])
        return out

    # -- changing -----------------------------------------------------------------------

    def reload(self) -> None:
        """Manager.Reload (daemon-reload); returns once systemd has reloaded.

        The one call that cannot be split: systemd reloads every unit before answering
        (10,000 units on a loaded 2-CPU machine: over 30 s), so it waits ``RELOAD_TIMEOUT``.
        """
        self._conn.call(
            "reload systemd",
            MANAGER_PATH,
            MANAGER,
            "Reload",
            timeout=max(self.timeout, RELOAD_TIMEOUT),
        )

    def _file_changes(
        self, verb: str, method: str, files: Sequence[str], *flags: bool
    ) -> list[UnitFileChange]:
        """``method`` on ``files`` in calls of ``FILE_BATCH`` files, one after the other."""
        checked = _check_files(files)
        sig = "as" + "b" * len(flags)
        changes: list[UnitFileChange] = []
        for i in range(0, len(checked), self.file_batch):
            batch = checked[i : i + self.file_batch]
            reply = self._manager(f"{verb} {_files_what(batch)}", method, sig, batch, *flags)
            changes += [UnitFileChange(k, p, s) for k, p, s in reply[-1]]  # type: ignore[attr-defined]
        return changes

    def enable_unit_files(
        self, files: Sequence[str], *, runtime: bool = False, force: bool = False
    ) -> list[UnitFileChange]:
        return self._file_changes("enable", "EnableUnitFiles", files, runtime, force)

    def disable_unit_files(
        self, files: Sequence[str], *, runtime: bool = False
    ) -> list[UnitFileChange]:
        return self._file_changes("disable", "DisableUnitFiles", files, runtime)

    def mask_unit_files(
        self, files: Sequence[str], *, runtime: bool = False, force: bool = False
    ) -> list[UnitFileChange]:
        return self._file_changes("mask", "MaskUnitFiles", files, runtime, force)

    def unmask_unit_files(
        self, files: Sequence[str], *, runtime: bool = False
    ) -> list[UnitFileChange]:
        return self._file_changes("unmask", "UnmaskUnitFiles", files, runtime)

    def reset_failed(self, name: str) -> None:
        check_unit_name(name)
        self._manager(f"reset the failed state of unit '{name}'", "ResetFailedUnit", "s", name)

    def reset_failed_units(self, names: Sequence[str]) -> None:
        """ResetFailedUnit of each of ``names``, pipelined; units not loaded are skipped."""
        unique = _check_names(names)
        requests = (  # built as the window frees (Connection.pipeline)
            (
                n,
                "ResetFailedUnit",
                partial(_manager_call, member="ResetFailedUnit", signature="s", body=(n,)),
            )
            for n in unique
        )
        for name, reply in self._conn.pipeline(_units_what(unique), requests):
            if reply.type == ERROR and reply.error_name != "org.freedesktop.systemd1.NoSuchUnit":
                _unwrap(f"reset the failed state of unit '{name}'", reply)

    # -- jobs ---------------------------------------------------------------------------

    def subscribe(self) -> None:
        """Manager.Subscribe, once per connection: systemd then sends its signals."""
        if not self._subscribed:
            self._manager("subscribe to systemd signals", "Subscribe")
            self._subscribed = True

    def _listen_for_jobs(self) -> None:
        if self._job_rule is None:
            self.subscribe()
            self._job_rule = MatchRule(MANAGER, "JobRemoved", path=MANAGER_PATH)
            self._conn.listen(self._job_rule, self._job_removed)

    def _job_removed(self, msg: Message) -> None:
        if self._collecting:  # only while run_jobs waits: the dict must not grow forever
            _id, job, _unit, result = msg.body()
            self._removed[str(job)] = str(result)

    def run_jobs(
        self,
        jobs: Sequence[tuple[str, str]],
        *,
        mode: str = "replace",
        timeout: float | None = None,
    ) -> dict[str, JobResult]:
        """Queue (verb, unit) jobs pipelined and wait for all of them until one deadline.

        Returns a result per unit; "wait-timeout" for jobs still running at the deadline.
        A job systemd refuses raises SystemdError, after the accepted ones have finished.
        """
        for verb, unit in jobs:
            if verb not in JOB_METHODS:
                raise SystemdError(
                    f"cannot run job '{verb}' on unit '{unit}': unknown job type",
                    f"use one of {', '.join(JOB_METHODS)}",
                )
            check_unit_name(unit)
        if not jobs:
            return {}
        self._listen_for_jobs()  # before any call: a fast job's JobRemoved cannot be missed
        self._collecting = True
        try:
            return self._wait_jobs(jobs, mode, timeout)
        finally:
            self._collecting = False
            self._removed.clear()

    def _wait_jobs(
        self, jobs: Sequence[tuple[str, str]], mode: str, timeout: float | None
    ) -> dict[str, JobResult]:
        """At most ``JOB_WINDOW`` jobs in systemd's queue; each waited for ``timeout`` from
        when it was queued, so 10,000 starts are not judged by one job's deadline."""
        limit = DEFAULT_JOB_TIMEOUT if timeout is None else timeout
        what = _jobs_what(jobs)
        todo = deque(jobs)
        queued: dict[str, str] = {}  # unit -> job path
        running: dict[str, float] = {}  # job path -> deadline, oldest first
        errors: list[SystemdError] = []
        while todo or running:
            if todo and len(running) < self.job_window:
                batch = [
                    todo.popleft() for _ in range(min(len(todo), self.job_window - len(running)))
                ]
                requests = [
                    (
                        (verb, unit),
                        JOB_METHODS[verb],
                        partial(
                            _manager_call,
                            member=JOB_METHODS[verb],
                            signature="ss",
                            body=(unit, mode),
                        ),
                    )
                    for verb, unit in batch
                ]
                # systemd answers a job call once the job is queued; busy starting
                # thousands of units it may take longer than a read: up to a job's timeout
                replies = self._conn.pipeline(what, requests, timeout=max(self.timeout, limit))
                for (verb, unit), reply in replies:
                    try:
                        job = queued[unit] = str(_unwrap(f"{verb} unit '{unit}'", reply)[0])
                    except SystemdError as exc:
                        errors.append(exc)
                    else:
                        running[job] = time.monotonic() + limit
            for job in [j for j in running if j in self._removed]:
                del running[job]
            now = time.monotonic()
            while running and next(iter(running.values())) <= now:
                del running[next(iter(running))]  # gave up on it: "wait-timeout"
            if running and not (todo and len(running) < self.job_window):
                self._conn.receive(next(iter(running.values())), what)
        results = {
            unit: JobResult(unit, job, self._removed.pop(job, "wait-timeout"))
            for unit, job in queued.items()
        }
        if errors:
            raise errors[0]
        return results

    def _one_job(self, verb: str, name: str, mode: str, timeout: float | None) -> JobResult:
        return self.run_jobs([(verb, name)], mode=mode, timeout=timeout)[name]

    def start(self, name: str, mode: str = "replace", timeout: float | None = None) -> JobResult:
        return self._one_job("start", name, mode, timeout)

    def stop(self, name: str, mode: str = "replace", timeout: float | None = None) -> JobResult:
        return self._one_job("stop", name, mode, timeout)

    def restart(self, name: str, mode: str = "replace", timeout: float | None = None) -> JobResult:
        return self._one_job("restart", name, mode, timeout)

    def try_restart(
        self, name: str, mode: str = "replace", timeout: float | None = None
    ) -> JobResult:
        return self._one_job("try-restart", name, mode, timeout)

    # -- signals ------------------------------------------------------------------------

    def watch(
        self, names: Sequence[str] | None = None, *, queue_size: int = 10000
    ) -> PropertyStream:
        """PropertiesChanged of ``names`` (None: every unit), queued up to ``queue_size``."""
        if names is not None:
            _check_names(names)
        self.subscribe()
        return PropertyStream(self._conn, names, queue_size)


_NO_FILE = frozenset(
    {"org.freedesktop.DBus.Error.FileNotFound", "org.freedesktop.systemd1.NoSuchUnit"}
)


def _unwrap(what: str, reply: Message) -> tuple[object, ...]:
    return _checked(what, reply).body()


def _unwrap_rows(what: str, reply: Message) -> list[tuple[str, str, str, str]]:
    return _checked(what, reply).unit_states()


def _checked(what: str, reply: Message) -> Message:
    """``reply``, unless it is an error: then the error, as ``dbus_error`` maps it."""
    if reply.type == ERROR:
        raise dbus_error(what, reply.error_name, reply.error_text())
    return reply


_manager_call = partial(build_call, path=MANAGER_PATH, interface=MANAGER)


def _units_what(names: Iterable[str]) -> str:
    names = list(names)
    if len(names) == 1:
        return f"read unit '{names[0]}'"
    return f"read {len(names)} units"


def _files_what(files: Sequence[str]) -> str:
    return f"unit file '{files[0]}'" if len(files) == 1 else f"unit files '{', '.join(files)}'"


def _jobs_what(jobs: Sequence[tuple[str, str]]) -> str:
    if len(jobs) == 1:
        return f"{jobs[0][0]} unit '{jobs[0][1]}'"
    return f"run {len(jobs)} jobs"
