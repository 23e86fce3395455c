"""Benchmark (boots disposable systemd hosts): the watch daemon's event handling and its memory.

1. Capture: a host runs 40 units crash-looping without a restart delay, 40 oneshots started
   and stopped in rounds and 20 sleepers restarted in rounds; every ``PropertiesChanged`` of
   them is captured raw (the bytes off the bus, from outside over the host's dbus-daemon),
   with the units' state read before the churn (as the daemon's first read).
2. Replay: the captured bytes are fed through the daemon's own handling path as fast as it
   goes: ``split_frames`` in a stand-in connection, the daemon's ``LookStream`` (bounded
   ``SignalQueue``, path filter, body read down to a look's properties), ``Watcher.step``
   (drain a batch, coalesce per unit, settled looks, ``Recorder.record`` into SQLite,
   ``evaluate`` of the units that moved, ``apply``).
   Only the outputs are a counter (journald, bundles and webhook are not event handling).
   Fresh state database per repeat; median of the repeats. Also, once, the first
   ``SINGLE_LIMIT`` signals with ``BATCH_MAX = 1`` (no coalescing: a record/evaluate per
   signal), for comparison.
   Unseen runs' exits are read as the daemon reads them: once every ``EXITS_EVERY_SEC`` of the
   replay and once at its end (timed), from the capture's journal; the replay's clock is
   the capture's. Then paced: the first signals fed at the pace of 2,000 crashes/min (and 10x
   that) through a queue of 1,000 (``--paced-*``), with the daemon's 0.5 s tick: the drops,
   the queue's peak, and how long a read waited for the daemon (live: in the socket).
3. Memory: a host with 1,000 loaded, desired units (as in bench_monitor); ``reconciler watch``
   runs there as a ``Type=notify`` unit (fresh state; re-read every 2 s, memory samples every
   5 s, a whole pass every 10 s: every periodic path runs within the window), the
   sleepers and a third of the oneshots are restarted twice, and after ~15 s (a full pass and
   several re-reads included) its ``VmHWM`` is read from ``/proc/PID/status``.

Targets (issue 13; issue 4 asked 10,000 and 40 MB): >= 20,000 PropertiesChanged per second
replayed, no drop with a queue of 1,000 at 2,000 crashes/min, VmHWM < 25 MB with 1,000 units.

    .venv/bin/python -m bench.bench_watch [--repeats 5] [--units 1000] [--rss-runs 3]
        [--only replay|memory]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.bench_monitor import SRC_INSIDE, VENV_INSIDE, prepare, unit_names
from bench.machine import describe_machine
from reconciler.monitor.watch.daemon import EXITS_EVERY_SEC, TICK_SEC

TARGET_RATE, TARGET_RSS_MB = 20_000.0, 25.0  # issue 13 (issue 4: 10,000 and 40)
REPO = Path(__file__).resolve().parent.parent
LOOPS, ONESHOTS, SLEEPERS = 40, 40, 20
LOOP = (
    "[Unit]\nStartLimitIntervalSec=0\n"
    "[Service]\nExecStart=/bin/false\nRestart=always\nRestartSec=0\n"
)
ONESHOT = "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n"
SLEEPER = "[Service]\nExecStart=/bin/sleep infinity\n"
SINGLE_LIMIT = 5000  # a record/evaluate per signal is slow: a prefix is enough to show it
STATE_INSIDE = "/var/lib/reconciler-bench-watch"
CONFIG_INSIDE = "/etc/reconciler-bench-watch.toml"
_sleep = time.sleep  # the pacing's own: _count_sleeps counts the daemon's


# -- 1. capture ------------------------------------------------------------------------


def capture_units() -> dict[str, str]:
    units = {f"wloop-{i:02d}.service": LOOP for i in range(LOOPS)}
    units |= {f"wshot-{i:02d}.service": ONESHOT for i in range(ONESHOTS)}
    units |= {f"wsleep-{i:02d}.service": SLEEPER for i in range(SLEEPERS)}
    return units


def capture(seconds: float) -> dict[str, Any]:
    """Boot a host, churn units, return the raw signals and the state read before."""
    from reconciler.devtools import sandbox
    from reconciler.systemd.client import Systemd
    from reconciler.systemd.connection import Connection, SignalQueue
    from reconciler.systemd.wire import PROPERTIES, UNIT_PATH_PREFIX, MatchRule

    host = sandbox.boot()
    try:
        units = capture_units()
        for name, text in units.items():
            (host.unit_dir / name).write_text(text)
        host.systemctl("daemon-reload")
        names = sorted(units)
        with Systemd(host.bus_address) as sd:
            lives = sd.read_units(names)
            policies = sd.get_properties(names, "org.freedesktop.systemd1.Service", ["Restart"])
        conn = Connection(host.bus_address)
        conn.call("subscribe", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
                  "Subscribe")  # fmt: skip
        rule = MatchRule(PROPERTIES, "PropertiesChanged", path_namespace=UNIT_PATH_PREFIX[:-1])
        queue = SignalQueue(conn, [rule], 10**7, lambda msg, at: (msg, at))
        frames: list[bytes] = []
        loops = [n for n in names if n.startswith("wloop")]
        shots = [n for n in names if n.startswith("wshot")]
        sleepers = [n for n in names if n.startswith("wsleep")]
        wall_start = time.time()
        host.systemctl("start", "--no-block", *loops)
        deadline = time.monotonic() + seconds
        rounds = 0
        while time.monotonic() < deadline:
            verb = "start" if rounds % 2 == 0 else "stop"
            host.systemctl(verb, "--no-block", *shots)
            host.systemctl("restart", "--no-block", *sleepers)
            rounds += 1
            until = time.monotonic() + 0.25
            while (got := queue.next(max(0.0, until - time.monotonic()), "capture")) is not None:
                frames.append(got[0].data)
        host.systemctl("stop", *loops, *shots, *sleepers, check=False)
        while (got := queue.next(0.5, "capture")) is not None:
            frames.append(got[0].data)
        conn.close()
        # systemd's exit entries of the churn: the daemon reads unseen runs' exits there
        host.run(["journalctl", "--sync"], check=False)
        journal = {
            str(p.relative_to(host.root)): p.read_bytes()
            for where in ("run/log/journal", "var/log/journal")
            for p in (host.root / where).rglob("*.journal")
        }
    finally:
        host.stop()
    return {
        "wall_start": wall_start,
        "journal": journal,
        "frames": frames,
        "lives": lives,
        "policies": {n: str(p.get("Restart", "")) for n, p in policies.items()},
        "seconds": seconds,
        "names": names,
    }


# -- 2. replay -------------------------------------------------------------------------


class ReplayConnection:
    """Stands in for ``systemd.connection.Connection`` as a ``SignalQueue`` uses it: signals come
    from captured bytes, a socket-read's worth (``RECV_SIZE``) per ``receive``."""

    def __init__(self, frames: list[bytes]) -> None:
        from reconciler.systemd.connection import RECV_SIZE

        self.chunks: deque[bytes] = deque()
        self.due: deque[int] = deque()  # signals before each chunk (for pacing)
        chunk: list[bytes] = []
        size = count = 0
        for frame in frames:
            chunk.append(frame)
            size += len(frame)
            if size >= RECV_SIZE:
                self.chunks.append(b"".join(chunk))
                self.due.append(count)
                count += len(chunk)
                chunk, size = [], 0
        if chunk:
            self.chunks.append(b"".join(chunk))
            self.due.append(count)
        self.pace: float | None = None  # signals/s; None: as fast as they are handled
        self.started = time.monotonic()
        self.late = 0.0  # the most a chunk waited (in the socket, live) for the daemon
        self.buf = bytearray()
        self.listeners: dict[int, tuple[Any, Callable[[Any], None]]] = {}

    def listen(self, rule: Any, sink: Callable[[Any], None]) -> int:
        self.listeners[len(self.listeners)] = (rule, sink)
        return len(self.listeners) - 1

    def unlisten(self, rule: Any, key: int) -> None:
        self.listeners.pop(key, None)

    def receive(self, deadline: float | None, what: str) -> bool:
        from reconciler.systemd.wire import split_frames

        if not self.chunks:
            return False
        if self.pace is not None:
            due = self.started + self.due[0] / self.pace
            now = time.monotonic()
            if due > now:
                if deadline is not None and deadline < due:
                    _sleep(max(0.0, deadline - now))
                    return False
                _sleep(due - now)
            self.late = max(self.late, time.monotonic() - due)
        self.due.popleft()
        self.buf += self.chunks.popleft()
        for msg in split_frames(self.buf):
            for rule, sink in list(self.listeners.values()):
                if rule.matches(msg):
                    sink(msg)
        return True


def replay(
    data: dict[str, Any],
    batch_max: int | None = None,
    limit: int | None = None,
    *,
    exits: bool = True,
    pace: float | None = None,
    queue: int | None = None,
) -> dict[str, float]:
    # Replayed in the capture's wall time, so the captured journal answers the daemon's
    # questions about unseen runs' exits as it would have (fresh looks otherwise find
    # nothing there and wait for journald each batch).
    real_time = time.time
    shift = data.get("wall_start", real_time()) - real_time()
    time.time = lambda: real_time() + shift  # type: ignore[method-assign]
    try:
        return _replay(data, batch_max, limit, exits, pace, queue)
    finally:
        time.time = real_time  # type: ignore[method-assign]


def _replay(
    data: dict[str, Any],
    batch_max: int | None,
    limit: int | None,
    exits: bool,
    pace: float | None,
    queue: int | None,
) -> dict[str, float]:
    from reconciler import config
    from reconciler.core.watch_state import WANTED
    from reconciler.model import DesiredUnit
    from reconciler.monitor.watch import handler
    from reconciler.store.sync_store import Store
    from reconciler.systemd.signals import LookStream

    names: list[str] = data["names"]
    if batch_max is not None:
        handler.BATCH_MAX = batch_max
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        journal = Path(tmp) / "journal"  # the capture's: exits of runs no look saw
        for name, blob in data.get("journal", {}).items():
            (journal / Path(name).name).parent.mkdir(parents=True, exist_ok=True)
            (journal / Path(name).name).write_bytes(blob)
        conf = Path(tmp) / "config.toml"
        conf.write_text(f'[diagnostics]\njournal_command = "journalctl --directory={journal}"\n')
        if queue is not None:
            with conf.open("a") as f:
                f.write(f"[monitor]\nwatch_queue_size = {queue}\n")
        settings = config.load(conf, {"state_dir": tmp})
        from reconciler.store import sync_store

        store = Store.open(Path(tmp) / "state.db")
        desired = [DesiredUnit(n, capture_units()[n], n[:-8]) for n in names]
        store.kv_set(sync_store.DESIRED_KEY, sync_store.encode_desired(desired))
        opened = [0, 0]

        def count(o: Any, r: Any, _now: float) -> None:
            opened[0] += len(o)
            opened[1] += len(r)

        w = handler.Watcher(settings, store, None, announce=count)
        w.units = names
        if not exits:  # the handling alone: no unseen run's exit read from the journal
            w.recorder.exits = w.recorder.pending = None
        w.take(names, data["lives"], data["policies"], 0.0)
        frames = data["frames"][:limit]
        conn = ReplayConnection(frames)
        conn.pace = pace
        w.stream = LookStream(conn, names, w.config.queue_size, WANTED)  # type: ignore[arg-type]
        sleeps = _count_sleeps()
        started = time.perf_counter()
        batches = 0
        next_exits = time.monotonic() + EXITS_EVERY_SEC
        conn.started = time.monotonic()
        peak = 0
        while w.step(0 if pace is None else TICK_SEC) or conn.chunks:
            batches += 1
            peak = max(peak, w.queue_peak)
            if time.monotonic() >= next_exits:  # as the daemon's loop does
                next_exits += EXITS_EVERY_SEC
                w.settle_exits()
        w.settle_exits(wait=True)  # what is still unread: as the daemon's next tick
        elapsed = time.perf_counter() - started
        reads = w.recorder.pending.reads if w.recorder.pending is not None else 0
        waited = sleeps()
        assert w.db is not None
        rows = {
            t: w.db._rows(f"SELECT count(*) FROM {t}")[0][0]
            for t in ("monitor_observation", "monitor_event")
        }
        crashes = sum(c.crashes for c in w.db.counters().values())
        unknown = w.db._rows(
            "SELECT count(*) FROM monitor_event WHERE kind = 'crash' AND exit_code IS NULL"
            " AND signal IS NULL"
        )[0][0]
        last_known = sum(
            c.last_exit_code is not None or c.last_signal is not None
            for c in w.db.counters().values()
            if c.crashes
        )
        w.close()
        store.close()
    handler.BATCH_MAX = 2048
    return {
        "seconds": elapsed,
        "rate": len(frames) / elapsed,
        "signals": len(frames),
        "handled": w.events,
        "dropped": w.dropped,
        "batches": batches,
        "observations": rows["monitor_observation"],
        "events": rows["monitor_event"],
        "crashes": crashes,
        "crashes_without_exit": unknown,
        "last_exit_known": last_known,
        "opened": opened[0],
        "resolved": opened[1],
        "journal_waits": waited,
        "journal_reads": reads,
        "queue_size": w.config.queue_size,
        "queue_peak": peak,
        "late_sec": conn.late,
    }


def _count_sleeps() -> Callable[[], int]:
    """Counts the daemon's waits for journald (``time.sleep``) until the result is called."""
    real_sleep, count = time.sleep, [0]

    def sleep(sec: float) -> None:
        count[0] += 1
        real_sleep(sec)

    time.sleep = sleep  # type: ignore[assignment]

    def done() -> int:
        time.sleep = real_sleep  # type: ignore[assignment]
        return count[0]

    return done


# -- 3. memory with 1,000 units ----------------------------------------------------------

DESIRE = """
import sys
from pathlib import Path
from bench.bench_monitor import content, unit_names
from reconciler.store import sync_store
from reconciler import reconcile as sync
from reconciler.model import DesiredUnit
from reconciler.store.sync_store import Store
n = int(sys.argv[1])
units = [DesiredUnit(u, content(i), u[:-8]) for i, u in enumerate(unit_names(n))]
with Store.open(Path(sys.argv[2]) / "state.db") as store:
    store.kv_set(sync_store.DESIRED_KEY, sync_store.encode_desired(units))
"""


def memory(n: int, runs: int) -> list[dict[str, Any]]:
    import compileall

    from reconciler.devtools import sandbox

    compileall.compile_dir(REPO / "reconciler", quiet=1)  # as installed: the host's copy is ro
    out = []
    host = sandbox.boot(binds={str(REPO): SRC_INSIDE, sys.prefix: VENV_INSIDE})
    try:
        prepare(host, n)
        (host.root / CONFIG_INSIDE.lstrip("/")).write_text(
            "[monitor]\nwatch_reread_sec = 2\nwatch_memory_sec = 5\nwatch_pass_sec = 10\n"
        )
        env = {"PYTHONPATH": SRC_INSIDE}
        names = unit_names(n)
        restart = [u for i, u in enumerate(names) if i % 10 == 5 or i % 3 == 1]
        for run in range(runs):
            state = f"{STATE_INSIDE}-{run}"
            host.run([f"{VENV_INSIDE}/bin/python", "-c", DESIRE, str(n), state], env=env)
            unit = f"bench-watch-{run}.service"
            started = time.monotonic()
            host.run(
                ["systemd-run", f"--unit={unit}", "-p", "Type=notify", "-p", "WatchdogSec=30",
                 f"--setenv=PYTHONPATH={SRC_INSIDE}", f"{VENV_INSIDE}/bin/python", "-m",
                 "reconciler", "watch", "--state-dir", state, "--config", CONFIG_INSIDE],
            )  # fmt: skip
            ready = time.monotonic() - started
            for _ in range(2):
                host.systemctl("restart", *restart, check=False)
            time.sleep(15)
            props = _show(host, unit, "MainPID", "StatusText", "NRestarts", "ActiveState")
            status = host.run(["cat", f"/proc/{props['MainPID']}/status"]).stdout
            kb = {
                k: int(v.split()[0])
                for k, v in (line.split(":", 1) for line in status.splitlines() if ":" in line)
                if k in ("VmHWM", "VmRSS")
            }
            host.systemctl("stop", unit)
            result = _show(host, unit, "Result")["Result"] if _loaded(host, unit) else "success"
            out.append(
                {
                    "ready_sec": ready,
                    "hwm_mb": kb["VmHWM"] / 1024,
                    "rss_mb": kb["VmRSS"] / 1024,
                    "status": props["StatusText"],
                    "active": props["ActiveState"],
                    "result": result,
                }
            )
    finally:
        host.stop()
    return out


def _show(host: Any, unit: str, *props: str) -> dict[str, str]:
    text = host.systemctl("show", "-p", ",".join(props), unit).stdout
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _loaded(host: Any, unit: str) -> bool:
    return _show(host, unit, "LoadState").get("LoadState") == "loaded"


# -- report ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_watch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--capture-sec", type=float, default=3.0)
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--rss-runs", type=int, default=3)
    parser.add_argument("--only", choices=("replay", "memory"), help="one half of the bench")
    parser.add_argument(
        "--capture-file", type=Path, help="replay this capture (made and kept if absent)"
    )
    parser.add_argument("--paced-crashes-per-min", type=float, default=2000.0)
    parser.add_argument("--paced-sec", type=float, default=20.0)
    parser.add_argument("--paced-queue", type=int, default=1000)
    opts = parser.parse_args(argv)
    if opts.only == "memory":
        mem = memory(opts.units, opts.rss_runs)
        hwm = statistics.median(m["hwm_mb"] for m in mem)
        print(describe_machine())
        hwms = ", ".join(f"{m['hwm_mb']:.1f}" for m in mem)
        rsss = ", ".join(f"{m['rss_mb']:.1f}" for m in mem)
        print(
            f"  memory with {opts.units} units watched: VmHWM median {hwm:.1f} MB ({hwms}), "
            f"VmRSS {rsss} MB; {mem[-1]['status']!r}"
        )
        print(json.dumps(mem), file=sys.stderr)
        return 0 if hwm < TARGET_RSS_MB else 1

    data = _capture_once(opts.capture_sec, opts.capture_file)
    frames: list[bytes] = data["frames"]
    size = sum(map(len, frames))
    runs = [replay(data) for _ in range(opts.repeats)]
    bare = [replay(data, exits=False) for _ in range(opts.repeats)]
    rate_bare = statistics.median(r["rate"] for r in bare)
    single = [replay(data, batch_max=1, limit=SINGLE_LIMIT)]
    rate = statistics.median(r["rate"] for r in runs)
    rate_single = statistics.median(r["rate"] for r in single)
    per_crash = len(frames) / max(runs[-1]["crashes"], 1)
    paced = [
        _paced(data, per_min, per_crash, opts.paced_sec, opts.paced_queue)
        for per_min in (opts.paced_crashes_per_min, 10 * opts.paced_crashes_per_min)
    ]
    mem = [] if opts.only == "replay" else memory(opts.units, opts.rss_runs)
    hwm = statistics.median(m["hwm_mb"] for m in mem) if mem else 0.0
    no_drop = all(p["dropped"] == 0 for p in paced)
    ok = rate >= TARGET_RATE and (not mem or hwm < TARGET_RSS_MB) and no_drop
    last = runs[-1]
    lines = [
        f"bench_watch: {opts.repeats} replays of {len(frames)} captured PropertiesChanged "
        f"({size / 1e6:.1f} MB, {len(frames) / data['seconds']:.0f}/s captured over "
        f"{data['seconds']:g}s from {len(data['names'])} units)",
        describe_machine(),
        f"  replay (batches of up to 2048, coalesced): median {rate:,.0f} signals/s "
        f"(min {min(r['rate'] for r in runs):,.0f}, max {max(r['rate'] for r in runs):,.0f}); "
        f"{last['batches']:.0f} batches, {last['observations']:.0f} looks stored, "
        f"{last['events']:.0f} start/stop/crash events, {last['crashes']:.0f} crashes counted "
        f"({last['crashes_without_exit']:.0f} stored without an exit code or signal), "
        f"{last['opened']:.0f} findings opened, {last['dropped']:.0f} dropped, "
        f"{last['journal_reads']:.0f} journal reads and {last['journal_waits']:.0f} waits for "
        "journald (unseen runs' exits)",
        f"  the same without reading unseen runs' exits from the journal: median "
        f"{rate_bare:,.0f} signals/s ({bare[-1]['crashes_without_exit']:.0f} crashes stored "
        "without an exit)",
        f"  replay of the first {single[0]['signals']:.0f} signals, one per batch (no coalescing):"
        f" {rate_single:,.0f} signals/s",
    ]
    for p in paced:
        lines.append(
            f"  paced at {p['crashes_per_min']:,.0f} crashes/min ({p['pace']:,.0f} signals/s, "
            f"{p['signals']:.0f} signals over {p['seconds']:.1f}s, queue of {p['queue_size']:.0f}):"
            f" {p['dropped']:.0f} dropped, queue peak {p['queue_peak']:.0f}, a read waited at "
            f"most {p['late_sec'] * 1000:.0f} ms for the daemon, {p['crashes']:.0f} crashes "
            f"counted, {p['opened']:.0f} findings opened"
        )
    if mem:
        hwms = ", ".join(f"{m['hwm_mb']:.1f}" for m in mem)
        rsss = ", ".join(f"{m['rss_mb']:.1f}" for m in mem)
        readies = ", ".join(f"{m['ready_sec']:.2f}" for m in mem)
        lines.append(
            f"  memory with {opts.units} units watched: VmHWM median {hwm:.1f} MB ({hwms}), "
            f"VmRSS {rsss} MB; READY after {readies} s; {mem[-1]['status']!r}; "
            f"stop: {', '.join(m['result'] for m in mem)}"
        )
    lines.append(
        f"  {rate:,.0f} signals/s (target >= {TARGET_RATE:,.0f}), "
        + ("no drop when paced" if no_drop else "DROPS when paced")
        + (f", VmHWM {hwm:.1f} MB (target < {TARGET_RSS_MB:.0f})" if mem else "")
        + (": OK" if ok else ": MISSED")
    )
    print("\n".join(lines))
    out = {"replay": runs, "bare": bare, "single": single, "paced": paced, "memory": mem}
    print(json.dumps(out), file=sys.stderr)
    return 0 if ok else 1


def _capture_once(seconds: float, path: Path | None) -> dict[str, Any]:
    """A capture, kept in ``path`` (pickle) to replay the same signals with another tree."""
    import pickle

    if path is not None and path.exists():
        with path.open("rb") as f:
            data: dict[str, Any] = pickle.load(f)  # noqa: S301 (this bench's own file)
            return data
    data = capture(seconds)
    if path is not None:
        with path.open("wb") as f:
            pickle.dump(data, f)
    return data


def _paced(
    data: dict[str, Any], per_min: float, per_crash: float, seconds: float, queue: int
) -> dict[str, float]:
    """The capture's first signals fed at the pace of ``per_min`` crashes a minute (at the
    capture's signals per crash) for ``seconds``, through a queue of ``queue``."""
    pace = per_min / 60 * per_crash
    limit = min(len(data["frames"]), int(pace * seconds))
    out = replay(data, limit=limit, pace=pace, queue=queue)
    return {**out, "pace": pace, "crashes_per_min": out["crashes"] / out["seconds"] * 60}


if __name__ == "__main__":
    raise SystemExit(main())
