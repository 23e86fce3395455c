"""The watch daemon's handling of signals (talks to systemd, the state database, outputs).

Event-driven: one subscription to ``PropertiesChanged`` of the watched units, read in
batches. A batch is coalesced per unit (``watch_state.merge``), then every unit that moved
gives one ``Observation`` per run seen (``watch_state.due``); the batch is recorded, only
those units are evaluated, and new or resolved findings are announced at once (journald
with the ``MESSAGE_ID`` of their kind; the diagnostics bundle and the webhook from a forked
child, one announcement at a time, so that what they load stays out of the daemon's
memory): a crash loop is reported within milliseconds of the crash that crosses the
threshold. Nothing is polled
for state. What signals never carry is read (``reread``): ``Restart=`` and
``NeedDaemonReload`` (a unit newly needing a reload triggers a pass: drift), and a
``MemoryCurrent`` sample of running services; a whole monitoring pass runs every
``pass_sec`` as a safety net (and resolves findings whose condition cleared with time).
Crashes of runs no signal showed are counted at once; their exit codes are read from
systemd's journal once a second for all of them (``settle_exits``, ``monitor.exits``),
never per batch.

Bounded whatever the event rate: the signal queue has ``queue_size`` places (beyond, drops
are counted, shown in ``STATUS=`` and logged once per interval, and the units' state is read
again), a batch holds at most ``BATCH_MAX`` signals, and a unit keeps one ``UnitView``.
History lives in SQLite under the monitor's retention.

The process around it (signals, sd_notify, the periodic tasks, reconnecting) is
``reconciler.monitor.watch.daemon``; the per-unit rules (coalescing, settled looks) are
``reconciler.core.watch_state``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from reconciler import monitor, runtime
from reconciler.config import Settings
from reconciler.core import watch_state
from reconciler.core.counters import Finding, Observation
from reconciler.core.watch_state import UnitView, WatchConfig
from reconciler.host import journal
from reconciler.model import DesiredUnit, LiveUnit
from reconciler.monitor import live as unitstate
from reconciler.monitor import publish
from reconciler.monitor.exits import JournalExits
from reconciler.monitor.types import Changes
from reconciler.store import sync_store
from reconciler.store.finding_store import FindingStore, StoredFinding
from reconciler.store.sync_store import Store
from reconciler.systemd.client import PropertyChange, Systemd
from reconciler.systemd.signals import LookStream

log = logging.getLogger("reconciler")
BATCH_MAX = 2048  # signals coalesced into one round of record/evaluate
RESYNC_MIN_SEC = 5.0  # after drops: read everything again, at most this often
PASS_TIMEOUT_SEC = 300.0  # a pass's child running longer is killed (a hung read)
OUTPUTS_TIMEOUT_SEC = 120.0  # bundles and webhook of one announcement, in their child
DROP_REPORT_SEC = 60.0
EVALUATE_SLICE = 200  # units whose history one evaluation loads at once
DB_CACHE_KIB = 256  # SQLite page cache per connection (default 2,000 KiB: ~1.1 MB resident more)
SERVICE = "org.freedesktop.systemd1.Service"
REREAD = ("Restart", "MemoryCurrent", "ControlGroup")
RUNNING = frozenset({"active", "reloading", "deactivating"})
UNIT = "org.freedesktop.systemd1.Unit"
Announce = Callable[[Sequence[StoredFinding], Sequence[StoredFinding], float], None]


@dataclass(frozen=True)
class Selection:
    """What to watch, from flags (win when given) and ``[monitor] watch_*``."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


def pass_settings(settings: Settings) -> Settings:
    """Settings as the monitoring pass reads them (without the watch's own keys)."""
    sections = dict(settings.sections)
    sections["monitor"] = watch_state.without_watch_keys(settings.section("monitor"))
    return replace(settings, sections=sections)


def check_settings(settings: Settings) -> None:
    """Refuse a bad ``[monitor]`` before anything is connected (UsageError, exit 2)."""
    watch_state.from_section(settings.monitor)
    monitor.load_config(pass_settings(settings))


def _forked(work: Callable[[], object], what: str, on_stop: signal.Handlers) -> int:
    """Run ``work`` in a forked child and return its PID. The child keeps what it loads out
    of the daemon's memory and never touches the parent's sockets or databases; ``on_stop``
    is its disposition for SIGTERM/SIGINT/SIGHUP; a failure is its one log line."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_stop)
    try:
        work()
        code = 0
    except BaseException as exc:  # the child's one line, then exit
        log.warning("watch: cannot %s: %s", what, exc)
    finally:
        os._exit(code)  # no atexit, no finalizers of the parent's connections


def _no_exit(finding: Finding) -> bool:
    """A crash loop that names no crash's exit code or signal (all its crashes unseen)."""
    return finding.kind == "crash_loop" and not (
        {"last_exit_code", "last_signal"} & finding.evidence.keys()
    )


class Watcher:
    """The daemon's state and its handling of signals; one thread, one connection."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        systemd: Systemd | None,
        flags: Selection | None = None,
        *,
        announce: Announce | None = None,
    ) -> None:
        self.store = store
        self.systemd = systemd
        self.flags = flags or Selection()
        self._announce = announce
        self.views: dict[str, UnitView] = {}
        self.units: list[str] = []
        self.stream: LookStream | None = None
        self.events = self.dropped = self.open_findings = 0
        self._dropped_seen = self._dropped_unreported = 0
        self._drop_report = watch_state.Throttle(DROP_REPORT_SEC)
        self._resync_due = False
        self._last_resync = 0.0
        self.queue_peak = 0  # the fullest the queue was since the last figures
        self._figures_at, self._figures_events = time.monotonic(), 0
        self._data_version: int | None = None
        self._desired_hash: int | None = None  # of the stored desired set's text, last read
        self.db: FindingStore | None = None
        self._pass: tuple[int, float] | None = None  # the pass's child: pid, started
        self._outputs: tuple[int, float] | None = None  # bundles and webhook: pid, started
        self.configure(settings)

    # -- configuration ---------------------------------------------------------------

    def configure(self, settings: Settings) -> None:
        """Read ``[monitor]`` (thresholds, retention, watch_*) and the desired units."""
        self.settings = settings
        self.config: WatchConfig = watch_state.from_section(settings.monitor)
        self.pass_settings = pass_settings(settings)
        self.monitor_config = monitor.load_config(self.pass_settings)
        self.include = self.flags.include or self.config.include
        self.exclude = self.flags.exclude or self.config.exclude
        if self.db is not None:
            self.db.close()
        self.db = FindingStore(self.store.path, retention=self.monitor_config.retention)
        self.db.limit_cache(DB_CACHE_KIB)
        old = getattr(self, "recorder", None)
        command = self.pass_settings.diagnostics.journal_command
        self.recorder = monitor.Recorder(
            self.db, self.monitor_config, JournalExits(command), defer=True
        )
        if old is not None and old.pending is not None and self.recorder.pending is not None:
            self.recorder.pending.gaps = old.pending.gaps  # still to be read
        self._desired_hash = None
        self.set_desired(self._desired_if_changed() or [])

    def _desired_if_changed(self) -> list[DesiredUnit] | None:
        """The desired units when their stored text changed since the last read, else None:
        every write to the state database (a pass's findings, a bundle's path) moves its
        ``data_version``, and decoding every unit's content each time (~1 MB at 1,000 units,
        for a moment) was most of the daemon's transient then."""
        text = self.store.kv_get(sync_store.DESIRED_KEY)
        fingerprint = hash(text)
        if fingerprint == self._desired_hash:
            return None
        self._desired_hash = fingerprint
        return monitor.units_of(sync_store.decode_desired(text))

    def set_desired(self, desired: list[DesiredUnit]) -> None:
        self.scheduled = monitor.scheduled_units(desired)
        # names are all the watch keeps of them (a pass reads its own): ~0.25 KB less a
        # unit than a DesiredUnit without its content
        self.managed = tuple(d.name for d in desired)

    def select(self) -> list[str]:
        loaded: list[str] = []
        if self.include and self.systemd is not None:
            loaded = [u.name for u in self.systemd.list_units_by_patterns([], list(self.include))]
        return watch_state.select(self.managed, loaded, self.include, self.exclude)

    def wanted(self, unit: str) -> bool:
        """A unit the watch looks at: selected, or (with include patterns) newly matching."""
        if unit in self.views:
            return True
        return bool(self.include) and (
            watch_state.matches(unit, self.include) and not watch_state.matches(unit, self.exclude)
        )

    def start(self) -> None:
        """Subscribe first, then read: no change between the two is missed."""
        assert self.systemd is not None
        self.units = self.select()
        self.stream = self._watch(None if self.include else self.units)
        self.resync(self.units)
        self.count_findings()  # STATUS= says what is open from the first line, not "0"

    def follow_desired(self) -> tuple[int, int]:
        """Watch what a sync just applied: when another process committed to the state
        database (one ``PRAGMA``, every loop), read the desired units; if they changed,
        watch the new set at once (units added, removed). A pushed unit is watched within
        a tick of the sync writing it, not at the next pass."""
        assert self.db is not None
        version = self.db.data_version()
        if version == self._data_version:
            return 0, 0
        self._data_version = version
        desired = self._desired_if_changed()
        if desired is None:  # another write (a bundle, a pass's findings): not the units
            return 0, 0
        if tuple(d.name for d in desired) == self.managed:
            self.set_desired(desired)  # same units, new content: timers may differ
            return 0, 0
        self.set_desired(desired)
        added, removed = self.rewatch()
        journal.event(
            "watch.units",
            f"watch: the desired units changed: {added} added, {removed} removed; {self.status()}",
            added=added,
            removed=removed,
            units=len(self.units),
        )
        return added, removed

    def _watch(self, names: Sequence[str] | None) -> LookStream:
        """``Systemd.watch`` reading only what a look needs (``watchwire``)."""
        assert self.systemd is not None
        self.systemd.subscribe()
        conn = self.systemd._conn  # Systemd.watch has no way to pass the reader (yet)
        return LookStream(conn, names, self.config.queue_size, watch_state.WANTED)

    def reload(self, settings: Settings) -> tuple[int, int]:
        """New config and desired set: (units added, units removed)."""
        self.configure(settings)
        return self.rewatch()

    def rewatch(self) -> tuple[int, int]:
        """Watch the units selected now (the desired set may have changed)."""
        assert self.systemd is not None
        units = self.select()
        added = sorted(set(units) - set(self.units))
        removed = set(self.units) - set(units)
        old = self.stream
        self.stream = self._watch(None if self.include else units)
        if old is not None:
            batch: list[PropertyChange] = []
            while len(batch) < BATCH_MAX and (c := old.next_change(0)) is not None:
                batch.append(c)
            self.handle(batch)
            old.close()
        self._forget(removed)
        self.units = units
        if added:
            self.resync(added)
        return len(added), len(removed)

    # -- handling signals ------------------------------------------------------------

    def step(self, timeout: float) -> int:
        """Wait up to ``timeout`` for a signal, then handle every one queued (coalesced)."""
        assert self.stream is not None
        first = self.stream.next_change(timeout)
        handled = self.events
        if first is not None:
            self.queue_peak = max(self.queue_peak, self.stream.depth + 1)
            self.handle(self._drain(first))
        if self.stream.dropped != self._dropped_seen:
            new = self.stream.dropped - self._dropped_seen
            self._dropped_seen = self.stream.dropped
            self.dropped += new
            self._dropped_unreported += new
            self._resync_due = True
        return self.events - handled

    def _drain(self, first: PropertyChange) -> Iterator[PropertyChange]:
        """``first``, then what is queued, up to ``BATCH_MAX`` changes, each taken from the
        queue as :meth:`handle` comes to it: a batch taken at once held 2,048 changes with
        a dict each (~0.6 MB) on top of the queue, the daemon's peak after a re-read."""
        assert self.stream is not None
        yield first
        for _ in range(BATCH_MAX - 1):
            change = self.stream.next_change(0)
            if change is None:
                return
            yield change

    def handle(self, batch: Iterable[PropertyChange]) -> None:
        """Merge a batch per unit: one look per unit and run (the last state each run was
        seen in, so a burst never hides a run's end); record them, evaluate those units."""
        offset = time.time() - time.monotonic()
        touched: dict[str, UnitView] = {}
        looks: list[Observation] = []
        for change in batch:
            self.events += 1
            view = self.views.get(change.unit)
            if view is not None and change.at < view.read_at:
                continue  # older than the read the view comes from
            if view is None:
                if not self.wanted(change.unit):
                    continue
                view = self._adopt(change.unit, change.at + offset)
                if view is not None:  # read just now: newer than this change
                    continue
                view = self.views[change.unit] = UnitView(LiveUnit(change.unit, "loaded"))
            if watch_state.merge(view, change.changed, change.at + offset) and watch_state.due(
                view, end_of_batch=False
            ):
                looks.append(watch_state.look(view, view.changed_at))
            touched[change.unit] = view
        for view in touched.values():
            if watch_state.due(view, end_of_batch=True):
                looks.append(watch_state.look(view, view.changed_at))
        self.record(looks, sorted({o.unit for o in looks}))

    def _adopt(self, unit: str, at: float) -> UnitView | None:
        """A unit matching the include patterns seen for the first time: it was not loaded
        when the units were listed, so it was inactive (systemd unloads only those). That
        look, then one read: the run that woke it counts."""
        if self.systemd is None:
            return None
        self.units = sorted({*self.units, unit})
        self.recorder.record([Observation(unit, at - 0.001, "inactive", "dead", "", 0, "")])
        self.resync([unit])
        return self.views.get(unit)

    def record(self, looks: Sequence[Observation], units: Sequence[str]) -> None:
        """Counters and history, then patterns of ``units``; announces what changed."""
        if not looks:
            return
        self.recorder.record(looks, self.scheduled)
        self.evaluate(units, time.time())

    def evaluate(self, units: Sequence[str], now: float) -> None:
        """Findings of ``units`` (pattern kinds only: drift is the pass's) opened/resolved."""
        changes = self._changes(units, now)
        late = {f.unit for f in changes.opened if _no_exit(f)} & self.recorder.pending_units()
        if late:  # a crash loop opens with no crash's exit: those first, as journald has
            # them (no wait for it: what it stores later is filled in by settle_exits)
            self.recorder.settle(late)
            changes = self._changes(units, now)
        trouble = monitor.troubled(changes)
        impacts = (
            monitor.impacts_of(self.systemd, trouble, self.monitor_config.impact_depth)
            if self.systemd is not None and trouble
            else {}
        )
        applied = self.recorder.apply(changes, impacts, now)
        if applied.opened or applied.resolved:
            self.count_findings()
            self.announce(applied.opened, applied.resolved, now)

    def _changes(self, units: Sequence[str], now: float) -> Changes:
        """``Recorder.evaluate`` in slices of ``EVALUATE_SLICE`` units: a re-read's memory
        samples evaluate every unit, and their history loaded at once was the daemon's
        largest transient (~2 MB at 1,000 units). Patterns are per unit and each slice
        reconciles only its own units' findings, so the union is one evaluation's answer."""
        if len(units) <= EVALUATE_SLICE:
            return self.recorder.evaluate(
                units, now, kinds=monitor.PATTERN_KINDS, scheduled=self.scheduled
            )
        out = Changes()
        for i in range(0, len(units), EVALUATE_SLICE):
            part = self.recorder.evaluate(
                units[i : i + EVALUATE_SLICE],
                now,
                kinds=monitor.PATTERN_KINDS,
                scheduled=self.scheduled,
            )
            out.opened += part.opened
            out.still += part.still
            out.resolved += part.resolved
        out.resolved.sort(key=lambda f: (f.finding.first_seen, f.id))  # open_findings' order
        return out

    def announce(
        self, opened: Sequence[StoredFinding], resolved: Sequence[StoredFinding], now: float
    ) -> None:
        if self._announce is not None:
            self._announce(opened, resolved, now)
            return
        publish.journal_findings(opened, resolved, publish.revision_now(self.store))
        if not publish.has_outputs(self.pass_settings, opened, resolved):
            return
        self.outputs_done(wait=True)  # one announcement's outputs at a time, in order

        def write() -> None:  # in the child: its own connections, never the parent's
            db = FindingStore(self.store.path, retention=self.monitor_config.retention)
            systemd = runtime.connect(self.settings)
            publish.outputs(self.pass_settings, systemd, db, opened, resolved, now)

        # a stop waits for the outputs, as it waits for the daemon
        pid = _forked(write, "write the findings' bundles or webhook", signal.SIG_IGN)
        self._outputs = (pid, time.monotonic())

    def outputs_done(self, wait: bool = False) -> bool:
        """Whether the last announcement's bundles and webhook (written by a forked child:
        tarfile, gzip, a thread pool and journalctl's output stay out of the daemon's
        memory) are done; a child past ``OUTPUTS_TIMEOUT_SEC`` is killed."""
        if self._outputs is None:
            return True
        pid, started = self._outputs
        while True:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - started >= OUTPUTS_TIMEOUT_SEC:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                log.warning(
                    "watch: a finding's bundle or webhook took over %gs: stopped",
                    OUTPUTS_TIMEOUT_SEC,
                )
                break
            if not wait:
                return False
            time.sleep(0.01)
        self._outputs = None
        return True

    def count_findings(self) -> None:
        assert self.db is not None
        self.open_findings = len(self.db.open_findings())

    # -- reading what signals do not say ---------------------------------------------

    def settle_exits(self, wait: bool = False) -> int:
        """Unseen runs' exits (crashes recorded without one) read from the journal in one
        go and stored; those of units with an open finding evaluated again (its last exit).
        The daemon's loop calls it every ``EXITS_EVERY_SEC``, never per batch; the units
        settled."""
        if not self.recorder.pending_units():
            return 0
        assert self.db is not None
        units = self.recorder.settle(wait=wait)
        found = units & {unit for _, unit in self.db.open_findings()}  # their last exit
        if found:
            self.evaluate(sorted(found), time.time())
        return len(units)

    def resync(self, units: Sequence[str]) -> None:
        """Read ``units`` whole (start, after drops, at the end) and record a look at each."""
        if self.systemd is None or not units:
            return
        read_at = self._last_resync = time.monotonic()
        self._resync_due = False
        lives = self.systemd.read_units(list(units))
        policies = self._restart_policies([n for n, u in lives.items() if u.load_state == "loaded"])
        self.take(units, lives, policies, read_at)

    def take(
        self,
        units: Sequence[str],
        lives: Mapping[str, LiveUnit],
        policies: Mapping[str, str],
        read_at: float,
    ) -> None:
        """Views from a read (monotonic ``read_at``; older signals are stale), one look each."""
        now = time.time()
        looks = []
        for name in units:
            live = lives.get(name) or LiveUnit(name)
            view = self.views.get(name)
            if view is None:
                view = self.views[name] = UnitView(live, changed_at=now, read_at=read_at)
            view.live, view.job, view.read_at, view.came_from = live, False, read_at, ""
            view.restart_policy = policies.get(name)
            if live.load_state in ("loaded", "masked"):  # not found: nothing to count
                looks.append(watch_state.look(view, now, live.memory_current))
            view.dirty = False
        self.record(looks, list(units))

    def _restart_policies(self, names: Sequence[str]) -> dict[str, str]:
        """Restart= of the loaded services among ``names`` (see ``watch_state.settled``)."""
        assert self.systemd is not None
        services = [n for n in names if n.endswith(".service")]
        got = self.systemd.get_properties(services, SERVICE, ["Restart"]) if services else {}
        return {n: sys.intern(str(p.get("Restart", ""))) for n, p in got.items()}

    def resync_if_due(self) -> None:
        if self._resync_due and time.monotonic() - self._last_resync >= RESYNC_MIN_SEC:
            self.resync(self.units)

    def report_drops(self) -> None:
        if self._dropped_unreported and self._drop_report.due(time.monotonic()):
            journal.event(
                "watch.dropped",
                f"watch: {self._dropped_unreported} signals dropped (queue of "
                f"{self.config.queue_size} full); the units' state was read again",
                priority=4,
                dropped=self._dropped_unreported,
                dropped_total=self.dropped,
            )
            self._dropped_unreported = 0

    def reread(self, memory: bool = True) -> bool:
        """What signals never carry: Restart=, NeedDaemonReload and, with ``memory``, a
        MemoryCurrent sample per running service (one per ``memory_sec``: the trend wants
        minutes, and each sample is a row the patterns load). Units with a new look are
        evaluated. True when a unit newly needs a daemon-reload (drift: a pass is due)."""
        if self.systemd is None or not self.units:
            return False
        self._forget_gone()
        loaded = [
            v for n in self.units if (v := self.views.get(n)) and v.live.load_state == "loaded"
        ]
        services = [v.live.name for v in loaded if v.live.name.endswith(".service")]
        wanted = REREAD if memory else REREAD[:1]
        # the replies taken as they come (each_property), not a dict a unit held at once
        policies: dict[str, str] = {}
        samples: dict[str, int] = {}  # MemoryCurrent, when systemd accounts it
        groups: dict[str, str] = {}  # ControlGroup of running services, for the others
        for name, prop, value in self.systemd.each_property(services, SERVICE, wanted):
            if prop == "Restart":
                policies[name] = sys.intern(str(value))
            elif not memory or self.views[name].live.active_state not in RUNNING:
                continue
            elif prop == "MemoryCurrent" and isinstance(value, int) and value < 2**64 - 1:
                samples[name] = value
            elif prop == "ControlGroup":
                groups[name] = str(value or "")
        newly = False
        units = [v.live.name for v in loaded]
        for name, _, value in self.systemd.each_property(units, UNIT, ["NeedDaemonReload"]):
            view = self.views[name]
            need = bool(value)
            if need != view.live.need_daemon_reload:
                newly |= need
                view.live = replace(view.live, need_daemon_reload=need)
        now = time.time()
        looks = []
        for view in loaded:
            name = view.live.name
            view.restart_policy = policies.get(name)
            mem = samples.get(name)
            if mem is None and name in groups:
                mem = unitstate.read_cgroup_memory(groups[name])
            if mem is not None or view.dirty:  # a look left waiting that long is taken now
                looks.append(
                    watch_state.look(view, now if mem is not None else view.changed_at, mem)
                )
        self.record(looks, sorted({o.unit for o in looks}))
        return newly

    def _forget_gone(self) -> None:
        """Load states afresh (one call); units that came by an include pattern and are gone
        (transient units, say) are watched no more: the watched set stays bounded."""
        assert self.systemd is not None
        states = self.systemd.list_units(self.units)
        desired = set(self.managed)
        gone = set()
        for name in self.units:
            view = self.views.get(name)
            state = states.get(name)
            if view is None or state is None:
                continue
            if state.load_state != view.live.load_state:
                view.live = replace(view.live, load_state=state.load_state)
            if state.load_state == "not-found" and name not in desired:
                gone.add(name)
        self._forget(gone)
        self.units = [n for n in self.units if n not in gone]

    def _forget(self, names: Iterable[str]) -> None:
        for name in names:
            self.views.pop(name, None)
            self.recorder.latest.pop(name, None)
            self.recorder.counters.pop(name, None)

    def full_pass(self) -> None:
        """The monitoring pass over the desired units (drift, timers, textfile, and findings
        whose condition cleared with time) in a forked child with its own connections: what
        a pass holds for a moment (every unit read, history loaded: ~7 MB at 1,000 units)
        stays out of the daemon's memory for good, and signals are handled meanwhile.
        :meth:`pass_done` takes its outcome. One at a time."""
        if self._pass is not None:
            return
        keep = set(self.units)
        # a stop ends a pass (the daemon's own handlers would only set its flags)
        pid = _forked(
            lambda: monitor.run_pass(self.pass_settings, keep=keep),
            "run the monitoring pass",
            signal.SIG_DFL,
        )
        self._pass = (pid, time.monotonic())

    def pass_done(self, wait: bool = False) -> bool:
        """Whether a pass ended (then: findings counted, the other watched units' patterns,
        the desired set followed); a pass past ``PASS_TIMEOUT_SEC`` is killed."""
        if self._pass is None:
            return False
        pid, started = self._pass
        done, status = os.waitpid(pid, 0 if wait else os.WNOHANG)
        if done == 0:
            if time.monotonic() - started < PASS_TIMEOUT_SEC:
                return False
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            log.warning("watch: the monitoring pass took over %gs: stopped", PASS_TIMEOUT_SEC)
        self._pass = None
        if os.waitstatus_to_exitcode(status) != 0:
            return True  # the child said why
        assert self.systemd is not None
        self.count_findings()
        managed = set(self.managed)
        others = [u for u in self.units if u not in managed]  # by include patterns
        if others:
            self.evaluate(others, time.time())  # a crash loop that calmed down resolves
        desired = self._desired_if_changed()
        if desired is None:
            return True
        if tuple(d.name for d in desired) != self.managed:
            self.set_desired(desired)
            added, removed = self.rewatch()
            log.info("watch: the desired units changed: %d added, %d removed", added, removed)
        else:
            self.set_desired(desired)  # same units, new content: timers may differ
        return True

    def store_figures(self, running: bool = True) -> None:
        """The collector's figures for the Prometheus textfile (which every pass writes)."""
        assert self.db is not None
        now = time.monotonic()
        rate = (self.events - self._figures_events) / max(now - self._figures_at, 1e-3)
        figures = {
            "at": time.time(),
            "running": running,
            "units": len(self.units),
            "events_total": self.events,
            "dropped_total": self.dropped,
            "events_per_sec": round(rate, 3),
            "queue_depth": self.queue_peak,
            "queue_size": self.config.queue_size,
        }
        self.db.kv_set(publish.WATCH_FIGURES_KEY, json.dumps(figures))
        self._figures_at, self._figures_events, self.queue_peak = now, self.events, 0

    def status(self) -> str:
        return watch_state.status_line(
            len(self.units), self.open_findings, self.events, self.dropped
        )

    def close(self) -> None:
        self.outputs_done(wait=True)
        if self._pass is not None:
            os.kill(self._pass[0], signal.SIGTERM)
            self.pass_done(wait=True)
        if self.stream is not None:
            self.stream.close()
        if self.db is not None:
            self.db.close()
            self.db = None
