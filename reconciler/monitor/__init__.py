"""The monitoring pass (adapter-level orchestrator: systemd, the state database, outputs).

One pass, as its steps::

    desired (store) -> read (one pipelined read) -> drift -> observations -> record
    (counters, events) -> detect (patterns) -> reconcile findings -> impact -> outputs

:func:`run_pass` runs it (``reconciler monitor``, and the sync at its end with its open
connection and store). :func:`view_host` is the side-effect-free first half, for
``reconciler status``. :class:`Recorder` is the recording half on its own so the watch
daemon can call it per ``PropertiesChanged`` event: ``record`` folds observations into the
persistent counters, ``evaluate`` runs the patterns for the units given (leaving other
units' findings, and kinds it was not asked about, alone), ``apply`` stores the changes.
Outputs are in ``publish`` (``announce``: journald, bundles, webhook, per event too); the
types in ``types``; the sync's hooks (``reconcile.hooks.Monitoring``) in ``sync_hooks``.

May import: ``runtime``, ``systemd``, ``store``, ``host``, ``core``, ``config``, ``model``,
``errors``. Never ``reconcile``, ``push`` or ``jobs`` (siblings) nor ``cli``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler import runtime
from reconciler.config import Settings
from reconciler.core import drift as drift_mod
from reconciler.core import unitkind
from reconciler.core.counters import (
    STALE_SEC,
    Counters,
    Event,
    Exit,
    Observation,
    apply_exits,
    attribute,
    last_look,
    steady_look,
    unknown_exits,
    update_counters,
)
from reconciler.core.patterns import (
    Finding,
    Thresholds,
    detect,
    hold,
    impact,
    reconcile_findings,
)
from reconciler.model import DesiredUnit, LiveUnit
from reconciler.monitor import live as unitstate
from reconciler.monitor import publish
from reconciler.monitor.exits import EXITS_RETRY_SEC, PENDING_MAX, ExitReader, PendingExits
from reconciler.monitor.types import (
    Applied,
    Changes,
    HostView,
    MonitorConfig,
    PassResult,
    UnitReport,
)
from reconciler.store import sync_store
from reconciler.store.finding_store import FindingStore, Impacted, Retention
from reconciler.systemd.unit_files import Reloads, read_unit_texts

if TYPE_CHECKING:
    from reconciler.store.sync_store import Store
    from reconciler.systemd.client import Systemd

log = logging.getLogger("reconciler")
PATTERN_KINDS = frozenset(
    {
        "crash_loop", "start_limit_hit", "flapping", "periodic_crash", "failure_clustering",
        "memory_growth", "restart_anomaly",
    }
)  # fmt: skip
PASS_KINDS = PATTERN_KINDS | {"drift", "missed_run", "failed_run"}
TROUBLE_KINDS = frozenset({"crash_loop", "start_limit_hit", "flapping"})


def load_config(settings: Settings) -> MonitorConfig:
    """``[monitor]`` (read and checked by ``config``) as the pass uses it.

    ``textfile`` defaults to ``<state_dir>/reconciler.prom``; ``textfile = ""`` turns it off.
    """
    section = settings.monitor
    base = Retention()
    retention = Retention(
        **{
            f.name: getattr(section, f.name)
            if getattr(section, f.name) is not None
            else getattr(base, f.name)
            for f in fields(Retention)
            if f.name != "memory_sample_sec"
        },
        memory_sample_sec=section.detect_window_sec,
    )
    text = section.textfile
    if text is None:
        text = str(settings.state_dir / "reconciler.prom")
    return MonitorConfig(
        thresholds=Thresholds.from_section(section),
        retention=retention,
        textfile=Path(text) if text else None,
        impact_depth=section.impact_depth,
        detect_window_sec=section.detect_window_sec,
    )


# -- observing (no side effects) --------------------------------------------------------


def desired_units(store: Store) -> list[DesiredUnit]:
    """The desired units of the applied revision (what the last sync wrote; its drop-in files
    are not units: they are read with the unit they adjust)."""
    return units_of(sync_store.decode_desired(store.kv_get(sync_store.DESIRED_KEY)))


def units_of(applied: Sequence[DesiredUnit]) -> list[DesiredUnit]:
    """The units among an applied revision's files (not its drop-ins)."""
    return [d for d in applied if unitkind.is_unit(d.name)]


def dropins_by_unit(store: Store) -> dict[str, dict[str, str]]:
    """The applied revision's drop-ins: unit -> {file name: content}."""
    return _dropins_of(sync_store.decode_desired(store.kv_get(sync_store.DESIRED_KEY)))


def _dropins_of(applied: Sequence[DesiredUnit]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for d in applied:
        target = unitkind.dropin_target(d.name)
        if target is not None:
            out.setdefault(target, {})[d.name.rpartition("/")[2]] = d.content
    return out


def dropin_dirs(unit_dir: Path) -> set[str]:
    """The units with a ``UNIT.d/`` directory in ``unit_dir``."""
    try:
        with os.scandir(unit_dir) as entries:
            return {e.name[:-2] for e in entries if e.name.endswith(".d") and e.is_dir()}
    except OSError:
        return set()


def read_dropins(unit_dir: Path, unit: str) -> dict[str, str]:
    """The ``*.conf`` files in ``unit_dir/UNIT.d/`` (one listing; most units have none)."""
    out: dict[str, str] = {}
    try:
        entries = list(os.scandir(unit_dir / f"{unit}.d"))
    except OSError:
        return out
    for entry in entries:
        if entry.name.endswith(".conf"):
            try:
                out[entry.name] = Path(entry.path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                out[entry.name] = ""
    return out


def own_units(store: Store, unit_dir: Path, desired: Sequence[DesiredUnit]) -> list[DesiredUnit]:
    """The reconciler's own units ``install`` wrote (its manifest), as desired units, so its
    timers are monitored like an inventory's: missed runs, failed runs. A service with a
    timer or socket of its own is run by it (not started); the file is the one on disk
    (install, not the sync, decides its content). An opt-in unit (the promoter's timer) is
    wanted as the operator left it: monitored where enabled, never reported where not."""
    names = json.loads(store.kv_get(sync_store.INSTALLED_KEY) or "[]")
    if not isinstance(names, list):
        return []
    managed = {d.name for d in desired}
    stems = {n.rsplit(".", 1)[0] for n in names if n.endswith((".timer", ".socket"))}
    own = []
    for name in sorted(str(n) for n in names):
        if name in managed or not name.endswith((".service", ".timer", ".socket")):
            continue
        if name in sync_store.OPT_IN_UNITS and not any(unit_dir.glob(f"*.wants/{name}")):
            continue
        active = not name.endswith(".service") or name.removesuffix(".service") not in stems
        content = read_unit_texts(unit_dir, [name])[0].get(name) or ""
        own.append(DesiredUnit(name, content, name.rsplit(".", 1)[0], enable=active, start=active))
    return own


def view_host(
    settings: Settings,
    systemd: Systemd,
    store: Store,
    counters: Mapping[str, Counters] | None = None,
    *,
    own: bool = False,
) -> HostView:
    """Read the desired units' state; ``counters`` (the last looks) spare unchanged units'
    exit times. No counters: none are read (``status`` does not count). ``own``: the
    reconciler's own units too (the monitoring pass)."""
    started = time.monotonic()
    applied = sync_store.decode_desired(store.kv_get(sync_store.DESIRED_KEY))  # read once
    desired = units_of(applied)
    mine = own_units(store, settings.unit_dir, desired) if own else []
    desired = [*desired, *mine]
    names = [d.name for d in desired]
    known = counters or {}

    def changed(u: LiveUnit) -> bool:
        c = known.get(u.name)
        return counters is not None and (
            c is None
            or (u.invocation_id, u.active_state, u.sub_state, u.n_restarts)
            != (c.last_invocation_id, c.last_state, c.last_sub_state, c.last_n_restarts)
        )

    last = {u: seen for u, c in known.items() if (seen := last_look(c)) is not None}
    reloads = Reloads(store.kv_get(sync_store.RELOADS_KEY), systemd.units_loaded_at())
    cgroups = _control_groups(store.kv_get(sync_store.CGROUPS_KEY))
    before = dict(cgroups)
    states = (
        unitstate.read_state(
            systemd,
            names,
            settings.unit_dir,
            changed=changed,
            reloads=reloads,
            last=last,
            cgroups=cgroups,
        )
        if names
        else {}
    )
    del last
    if (text := reloads.dump()) is not None:
        store.kv_set(sync_store.RELOADS_KEY, text)
    if cgroups != before:
        store.kv_set(sync_store.CGROUPS_KEY, json.dumps(cgroups, separators=(",", ":")))
    drift = {d.name: drift_mod.check(d, states[d.name]) for d in desired}
    ours = _dropins_of(applied)
    del applied
    with_dirs = dropin_dirs(settings.unit_dir)  # one listing, not one a unit (10,000: 0.1 s)
    for d in desired:
        on_disk = read_dropins(settings.unit_dir, d.name) if d.name in with_dirs else {}
        if on_disk or d.name in ours:
            drift[d.name] += drift_mod.dropin_items(d.name, ours.get(d.name, {}), on_disk)
    for d in mine:  # their runs are watched (missed, failed); their schedule is install's
        drift[d.name] = [
            i for i in drift[d.name] if i.aspect != "timer" and not drift_mod.is_failed_run(i)
        ]
    scheduled = frozenset(scheduled_units(desired))
    for name in scheduled & drift.keys():  # a failed run, not drift: no sync
        drift[name] = [i for i in drift[name] if not drift_mod.is_failed_run(i)]
    for unit in sorted(ours.keys() - drift.keys()):  # a vendor unit: only ours are checked
        on_disk = read_dropins(settings.unit_dir, unit)
        mine_now = {n: t for n, t in on_disk.items() if n in ours[unit]}
        items = drift_mod.dropin_items(unit, ours[unit], mine_now)
        if items:
            drift[unit] = items
    drift |= config_file_drift(settings)
    own_names = frozenset(d.name for d in mine)
    return HostView(desired, states, drift, time.monotonic() - started, own_names, scheduled)


def _control_groups(text: str | None) -> dict[str, tuple[str, str]]:
    """The stored unit -> (run, ControlGroup) of services measured by their cgroup; {} if
    none or unreadable (then each is asked once more)."""
    try:
        data = json.loads(text) if text else {}
        return {str(n): (str(run), str(path)) for n, (run, path) in data.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def config_file_drift(settings: Settings) -> dict[str, list[drift_mod.DriftItem]]:
    """Managed config files changed by hand (the file manifest against the host), by path."""
    from reconciler.store import file_manifest

    manifest = file_manifest.load(settings.state_dir)
    if not manifest:
        return {}  # no managed files: not even the reader's imports (pydantic: ~0.15 s)
    from reconciler.host.config_files import read_path

    out = {}
    for path, entry in manifest.items():
        items = drift_mod.config_file_items(entry, read_path(settings.host_root, path))
        if items:
            out[path] = items
    return out


def observations(view: HostView, now: float) -> list[Observation]:
    """A look at every loaded service and timer (not-found units have nothing to count)."""
    out = []
    for name, state in view.states.items():
        live = state.live
        if live.load_state not in ("loaded", "masked") or not name.endswith((".service", ".timer")):
            continue
        out.append(
            Observation.from_live(
                live,
                now,
                state.exec_main_exit_at,
                result=drift_mod.effective_result(state),
                memory=state.memory,
            )
        )
    return out


# -- recording (shared with the watch daemon) -------------------------------------------


def exit_reader(settings: Settings) -> ExitReader:
    """Reads systemd's exit entries with the journal command of ``[diagnostics]``."""
    command = settings.diagnostics.journal_command  # not diagnostics: tarfile, a thread pool
    return lambda units, since, until: unitstate.read_exits(command, units, since, until)


def _gap_start(prev: Counters | None, obs: Observation) -> float:
    return prev.last_seen_at if prev and prev.last_seen_at else obs.at - STALE_SEC


def _within(exits: Sequence[Exit], gap: tuple[float, float, int]) -> int:
    return sum(gap[0] <= e.at <= gap[1] + 1.0 for e in exits)


class Recorder:
    """Counters, history and findings in the store; one per process (and thread)."""

    def __init__(
        self,
        db: FindingStore,
        config: MonitorConfig,
        exits: ExitReader | None = None,
        *,
        defer: bool = False,
    ) -> None:
        self.db = db
        self.config = config
        self.exits = exits  # how unseen runs ended (systemd's journal); None: unknown
        # defer (the watch): crashes recorded at once, their exits read later (``settle``)
        self.pending = PendingExits(exits) if defer and exits is not None else None
        # the counters as last recorded; a unit whose looks were steady keeps the object
        # read before them (its last_seen_at moved in the store alone)
        self.counters: dict[str, Counters] = {}
        self.latest: dict[str, Observation] = {}  # the last look recorded, kept or not

    def record(
        self, looks: Sequence[Observation], scheduled: Collection[str] = ()
    ) -> dict[str, list[Event]]:
        """Fold looks into the persistent counters (one transaction: never double-counted);
        each start or stop says who asked for it (``counters.attribute``)."""
        events: dict[str, list[Event]] = {}
        with self.db.transaction():
            current = self.db.counters({o.unit for o in looks})
            changed: dict[str, Counters] = {}
            # a steady unit's look moves its last_seen_at alone: that column is written
            # alone, and no counters are built for it (10,000 units: ~60 ms)
            seen: dict[str, float] = {}
            since: dict[str, float | None] = {}
            exits = {} if self.pending is not None else self._exits(looks, current)
            for obs in sorted(looks, key=lambda o: o.at):
                prev = changed.get(obs.unit) or current.get(obs.unit)
                if prev is not None and obs.unit in seen:  # another look of it in this batch
                    prev = replace(prev, last_seen_at=seen.pop(obs.unit))
                if steady_look(prev, obs):
                    seen[obs.unit] = obs.at
                    continue
                new, evs = update_counters(prev, obs)
                if self.pending is not None and unknown_exits(evs):
                    self.pending.add(obs.unit, _gap_start(prev, obs), obs.at, evs, new.crashes)
                elif self.exits is not None and unknown_exits(evs):
                    lo = _gap_start(prev, obs)
                    found = [e for e in exits.get(obs.unit, ()) if lo <= e.at <= obs.at + 1.0]
                    new, evs = apply_exits(new, evs, found)
                if new != prev:
                    changed[obs.unit] = new
                if evs:
                    events.setdefault(obs.unit, []).extend(evs)
                    if obs.unit not in since:
                        since[obs.unit] = prev.last_seen_at if prev else None
            if events:
                lo = min((t for t in since.values() if t is not None), default=looks[-1].at)
                actions = self.db.actions(events, min(lo, looks[0].at) - STALE_SEC)
                for unit, evs in events.items():
                    events[unit] = attribute(evs, actions, since, scheduled)
            self.db.save_counters(changed.values(), looks[0].at if looks else 0.0, seen=seen)
            kept: list[Observation] = []
            samples: list[Observation] = []  # the same state: kept for the memory trend
            for o in looks:
                if _news(o, current.get(o.unit)):
                    kept.append(o)
                elif o.memory_current is not None:
                    samples.append(o)
            self.db.add(kept, [e for evs in events.values() for e in evs], samples)
        self.counters.update(current)
        self.counters.update(changed)
        for obs in looks:
            self.latest[obs.unit] = obs
        if self.pending is not None and len(self.pending.gaps) > PENDING_MAX:
            self.settle()
        return events

    def pending_units(self) -> set[str]:
        """Units with crashes whose exits are still to be read (``defer``)."""
        return self.pending.units() if self.pending is not None else set()

    def settle(self, units: Collection[str] | None = None, *, wait: bool = False) -> set[str]:
        """Deferred exits (``defer``) of ``units`` (all by default) read and stored; the
        units settled (some may wait for journald until the next call)."""
        if self.pending is None:
            return set()
        before = self.pending.units()
        self.counters.update(self.pending.settle(self.db, units, wait=wait))
        return before - self.pending.units()

    def _exits(
        self, looks: Sequence[Observation], current: Mapping[str, Counters]
    ) -> Mapping[str, Sequence[Exit]]:
        """systemd's exit entries for the gaps ``looks`` leave unexplained (crashes of runs
        no look saw), in one read for all units; read once more a moment later when some
        are missing (journald stores what PID 1 sends asynchronously; a look right after a
        restart can come first)."""
        if self.exits is None:
            return {}
        gaps: dict[str, tuple[float, float, int]] = {}  # unit -> since, until, crashes
        state = dict(current)
        for obs in sorted(looks, key=lambda o: o.at):  # as ``record`` will see them
            prev = state.get(obs.unit)
            if prev is not None and not _news(obs, prev):
                continue  # nothing ended (no events); a later look's gap only grows: harmless
            state[obs.unit], evs = update_counters(prev, obs)
            if unknown_exits(evs):
                lo, hi, n = gaps.get(obs.unit, (_gap_start(prev, obs), obs.at, 0))
                crashes = sum(e.kind == "crash" for e in evs)
                gaps[obs.unit] = (min(lo, _gap_start(prev, obs)), max(hi, obs.at), n + crashes)
        if not gaps:
            return {}
        lo, hi = min(g[0] for g in gaps.values()), max(g[1] for g in gaps.values())
        found = self.exits(list(gaps), lo, hi)
        if any(_within(found.get(u, ()), g) < g[2] for u, g in gaps.items()):
            # journald had EXITS_RETRY_SEC after the newest look to store it, then no more:
            # a batch of old looks (a crash storm's backlog) is not held up again
            wait = hi + EXITS_RETRY_SEC - time.time()
            if wait > 0:
                time.sleep(wait)
                found = self.exits(list(gaps), lo, hi)
        return found

    def evaluate(
        self,
        units: Collection[str],
        now: float,
        *,
        extra: Sequence[Finding] = (),
        kinds: Collection[str] = PATTERN_KINDS,
        scheduled: Collection[str] = (),
    ) -> Changes:
        """Patterns for ``units`` plus ``extra`` findings, against the open ones of ``kinds``."""
        th = self.config.thresholds
        history = self.db.load(
            list(units),
            observations_since=now - th.flap_window_sec,
            memory_since=now - self.config.detect_window_sec,
            events_since=now - th.history_days * 86400,
        )
        acted = self.db.acted(units)
        current = list(extra)
        looks: dict[str, Observation] = {}
        for unit in units:
            obs = history.observations.get(unit, [])
            latest = self.latest.get(unit)
            if latest is not None and (not obs or obs[-1].at < latest.at):
                obs = [*obs, latest]  # a look equal to the one before is not stored
            first = history.first_seen.get(unit)
            if first is not None and (not obs or obs[0].at > first):
                # The anomaly baseline starts at the first look ever, not at the window.
                obs = [Observation(unit, first, "", "", "", 0, ""), *obs]
            if obs:
                looks[unit] = obs[-1]
            current += detect(
                unit,
                history.events.get(unit, []),
                obs,
                now,
                th,
                scheduled=unit in scheduled,
                since=acted.get(unit),
                memory=history.memory.get((unit, obs[-1].invocation_id)) if obs else None,
            )
        stored = {k: f for k, f in self.db.open_findings().items() if k[0] in kinds}
        opened, still, resolved = reconcile_findings(
            {k: f.finding for k, f in stored.items()}, current, set(units)
        )

        def healthy(unit: str) -> bool:
            look = looks.get(unit)
            return look is None or look.running or not look.failed

        def unhealthy_at(unit: str) -> float | None:
            """The unit's last crash or failed look: healthy time counts from there."""
            bad = [e.at for e in history.events.get(unit, []) if e.kind == "crash"]
            bad += [o.at for o in history.observations.get(unit, []) if _unhealthy(o)]
            return max(bad, default=None)

        resolved = [  # one incident, one finding: quiet for a while before it resolves
            f
            for f in resolved
            if not hold(
                f,
                stored[f.key].last_seen,
                now,
                th,
                unhealthy_at=unhealthy_at(f.unit),
                healthy=healthy(f.unit),
            )
        ]
        return Changes(
            opened=opened,
            still=[(stored[f.key], f) for f in still],
            resolved=[stored[f.key] for f in resolved],
        )

    def apply(
        self, changes: Changes, impacts: Mapping[str, Sequence[Impacted]], now: float
    ) -> Applied:
        out = Applied()
        with self.db.transaction():
            for f in changes.opened:
                out.opened.append(self.db.open(f, impacts.get(f.unit, ()), now))
            for stored, f in changes.still:
                out.still.append(self.db.update(stored, f, impacts.get(f.unit), now))
            for stored in changes.resolved:
                out.resolved.append(self.db.resolve(stored, now))
        return out


def _unhealthy(obs: Observation) -> bool:
    return not obs.running and obs.failed


def _news(obs: Observation, last: Counters | None) -> bool:
    """Whether a look says something new: another state, run or restart count. Only those
    are kept for long (and memory samples for the trend's window): a unit steady for days
    costs no rows; ``evaluate`` adds the current look itself, so patterns still see "now"."""
    if last is None:
        return True
    return (obs.active_state, obs.sub_state, obs.invocation_id, obs.n_restarts) != (
        last.last_state,
        last.last_sub_state,
        last.last_invocation_id,
        last.last_n_restarts,
    )


def troubled(changes: Changes) -> list[str]:
    """Units whose new findings call for an impact analysis (failed, crash-looping).

    A finding still open keeps the impact found when it opened (one D-Bus round per level
    spared every pass); it is computed again when the finding opens anew.
    """
    units = [f.unit for f in changes.opened if _is_trouble(f)]
    return sorted(set(units))


def _is_trouble(f: Finding) -> bool:
    if f.kind in TROUBLE_KINDS:
        return True
    state = str(f.evidence.get("active", "")) + str(f.evidence.get("load", ""))
    return f.kind == "drift" and ("failed" in state or "error" in state or "bad" in state)


def impacts_of(
    systemd: Systemd, units: Sequence[str], depth: int
) -> dict[str, tuple[Impacted, ...]]:
    if not units or depth <= 0:
        return {}
    graph = unitstate.read_dependants(systemd, units, depth)
    return {u: tuple(Impacted(n, d, h) for n, d, h in impact(u, graph, depth)) for u in units}


# -- one pass ------------------------------------------------------------------------------


def unit_reports(view: HostView, counters: Mapping[str, Counters]) -> list[UnitReport]:
    out = []
    for d in view.desired:
        s = view.states[d.name]
        c = counters.get(d.name)
        out.append(
            UnitReport(
                unit=d.name,
                service=d.service,
                file=drift_mod.file_status(d, s),
                enable=d.enable,
                unit_file_state=s.live.unit_file_state,
                load_state=s.live.load_state,
                active_state=s.live.active_state,
                sub_state=s.live.sub_state,
                n_restarts=s.live.n_restarts,
                memory=s.memory,
                counters={
                    "starts": c.starts,
                    "stops": c.stops,
                    "crashes": c.crashes,
                    "last_exit_code": c.last_exit_code,
                    "last_signal": c.last_signal,
                    "last_result": c.last_result,
                    "last_change_at": c.last_change_at,
                }
                if c
                else {},
                drift=[i.text() for i in view.drift.get(d.name, [])],
            )
        )
    return out


def run_pass(
    settings: Settings,
    *,
    systemd: Systemd | None = None,
    store: Store | None = None,
    now: float | None = None,
    keep: Collection[str] = (),
) -> PassResult:
    """One monitoring pass; uses (and leaves open) ``systemd`` and ``store`` when given.

    Findings of units no longer desired are resolved, except those of ``keep`` (units the
    watch daemon follows by its include patterns).
    """
    started = time.monotonic()
    config = load_config(settings)
    own_store, own_systemd = store is None, systemd is None
    store = store or runtime.open_store(settings)
    systemd = systemd or runtime.connect(settings)
    db = FindingStore(store.path, retention=config.retention)
    try:
        at = time.time() if now is None else now
        view = view_host(settings, systemd, store, db.counters(), own=True)
        recorder = Recorder(db, config, exit_reader(settings))
        scheduled = view.scheduled
        recorder.record(observations(view, at), scheduled)
        extra = [
            f
            for name, items in view.drift.items()
            if (f := drift_mod.drift_finding(name, items, at)) is not None
        ]
        intervals = publish.calendar_intervals(db, drift_mod.specs_needing_interval(view.states))
        starts = {d.name: d.start for d in view.desired}
        for name, state in view.states.items():
            if state.timer is not None and starts[name]:
                missed = drift_mod.missed_run(name, state.timer, at, config.thresholds, intervals)
                extra += [missed] if missed else []
        extra += failed_runs(systemd, store, view, recorder.counters, at, scheduled)
        # config files and vendor units with our drop-ins: drift only, no patterns
        others = [n for n in view.drift if n not in view.states]
        changes = recorder.evaluate(
            [*view.states, *others], at, extra=extra, kinds=PASS_KINDS, scheduled=scheduled
        )
        # A unit no longer managed (pruned, or rolled back away) has nothing left to fix.
        changes.resolved += [
            f
            for k, f in db.open_findings().items()
            if k[1] not in view.states and k[1] not in keep and k[1] not in others
        ]
        impacts = impacts_of(systemd, troubled(changes), config.impact_depth)
        applied = recorder.apply(changes, impacts, at)
        db.prune(at)
        open_now = sorted(db.open_findings().values(), key=lambda f: (f.finding.unit, f.key))
        result = PassResult(
            at=at,
            duration_sec=0.0,
            revision=store.applied_revision(),
            units=unit_reports(view, recorder.counters),
            drift=[i for items in view.drift.values() for i in items],
            open=open_now,
            opened=applied.opened,
            resolved=applied.resolved,
        )
        publish.publish(settings, config, systemd, db, store, view, result, started)
        return result
    finally:
        db.close()
        if own_systemd:
            systemd.close()
        if own_store:
            store.close()


def failed_runs(
    systemd: Systemd,
    store: Store,
    view: HostView,
    counters: Mapping[str, Counters],
    at: float,
    scheduled: Collection[str] = (),
) -> list[Finding]:
    """Failed runs of the reconciler's own units and of the ``scheduled`` services (a timer
    or path unit runs them: a sync does not start them, so their failure is no drift); the
    sync's is resolved by a later good sync (``history``: any trigger, a manual one too),
    which does not touch its unit's state."""
    runs = view.own | {n for n in scheduled if n.endswith(".service") and n in view.states}
    failed = [n for n in sorted(runs) if view.states[n].live.active_state == "failed"]
    if not failed:
        return []
    services = [n for n in failed if n.endswith(".service")]
    wanted = ("ExecMainExitTimestamp",)
    exits = systemd.get_properties(services, unitstate.SERVICE_IFACE, wanted) if services else {}
    synced = next(
        (r.started_at for r in store.history(50) if r.result in sync_store.GOOD_RESULTS), None
    )
    out = []
    for name in failed:
        state = view.states[name]
        failed_at = unitstate.usec(exits.get(name, {}).get("ExecMainExitTimestamp"))
        c = counters.get(name)
        failed_at = failed_at or state.exec_main_exit_at or (c.last_change_at if c else None)
        mine = name == sync_store.SYNC_UNIT
        found = drift_mod.failed_run(name, state, failed_at, at, sync=mine, synced_at=synced)
        out += [found] if found else []
    return out


def scheduled_units(desired: Sequence[DesiredUnit]) -> set[str]:
    """Services started by a timer or a path unit (flapping counts only failures for them):
    a timer of their inventory service, or a timer or path of the host naming them."""
    timers = {d.name.removesuffix(".timer") for d in desired if d.name.endswith(".timer")}
    by_timer = {d.name for d in desired if d.name.endswith(".service") and d.name[:-8] in timers}
    return by_timer | unitkind.scheduled(unitkind.activated((d.name, d.content) for d in desired))
