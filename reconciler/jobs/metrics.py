"""``reconciler job metrics``: sample the host (talks to /proc, statvfs) into the metrics store.

Run every minute by ``metrics-sample.timer``; one run must stay well under 300 ms as a
whole process, so this reads a few small /proc files, does one transaction and exits.

Rates need two readings of the kernel's counters. A run takes the previous run's
counters from the store when they are from this boot; otherwise (first run, reboot,
corrupt state) it reads the counters again 100 ms (``WINDOW``) after the first reading,
the job's own work overlapping the wait. So every run records CPU %, disk and network
rates: the first of a boot over that short window, later ones over the minute between
runs. (Recording counters only would save those 100 ms once per boot, but leave a fresh
host, or a manual first run, without a CPU value.) A counter that went down gives no
rate, never a negative one. Then completed 5-minute and hourly buckets are rolled up and
rows past their retention deleted, in the same transaction (``reconciler.store.metric_store``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from reconciler.config import Settings
from reconciler.core import hostmetrics
from reconciler.core.hostmetrics import Counters, MetricsConfig, Sample
from reconciler.errors import JobError
from reconciler.host import journal
from reconciler.store import metric_store

WINDOW = 0.1  # seconds between two readings when there is no usable previous one
PROC = Path("/proc")
SYS_BLOCK = Path("/sys/block")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise JobError(
            f"cannot read '{path}': {exc.strerror}", "the metrics job needs /proc mounted"
        ) from None


def read_counters(config: MetricsConfig, proc: Path = PROC) -> Counters:
    """The kernel's monotonic counters now: CPU ticks, disk and interface bytes."""
    total, idle, boot = hostmetrics.parse_stat(_read(proc / "stat"))
    disks = hostmetrics.parse_diskstats(_read(proc / "diskstats"))
    try:
        whole: set[str] | None = set(os.listdir(SYS_BLOCK))
    except OSError:
        whole = None  # no /sys: guess partitions from their names
    keep_disks = hostmetrics.select_disks(disks, config.disks, whole)
    nets = hostmetrics.parse_net_dev(_read(proc / "net/dev"))
    keep_nets = hostmetrics.select_interfaces(nets, config.interfaces)
    return Counters(
        clock=time.monotonic(),
        boot_time=boot,
        cpu_total=total,
        cpu_idle=idle,
        disks={d: disks[d] for d in keep_disks},
        nets={n: nets[n] for n in keep_nets},
    )


def read_usage(
    config: MetricsConfig, proc: Path = PROC
) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Per-mount (used, available) bytes from statvfs, and the configured mounts missing."""
    mounts = hostmetrics.parse_mountinfo(_read(proc / "self/mountinfo"))
    points = hostmetrics.select_mounts(mounts, config.mounts)
    missing = [m for m in config.mounts or () if m not in points]
    usage: dict[str, tuple[int, int]] = {}
    for point in points:
        try:
            st = os.statvfs(point)
        except OSError:
            missing.append(point)
            continue
        usage[point] = ((st.f_blocks - st.f_bfree) * st.f_frsize, st.f_bavail * st.f_frsize)
    return usage, missing


def read_gauges(config: MetricsConfig, proc: Path = PROC) -> tuple[list[Sample], list[str]]:
    load = hostmetrics.parse_loadavg(_read(proc / "loadavg"))
    memory = hostmetrics.parse_meminfo(_read(proc / "meminfo"))
    usage, missing = read_usage(config, proc)
    return hostmetrics.gauge_samples(load, memory, usage), missing


def run_job(settings: Settings) -> int:
    started = time.monotonic()
    config = hostmetrics.from_section(settings.metrics)
    host = settings.host_name
    now = int(time.time())
    cur = read_counters(config)
    gauges, missing = read_gauges(config)
    store = metric_store.open_store(settings)
    try:
        with store.transaction() as tx:
            prev = store.load_counters(tx, host)
            if prev is None or not hostmetrics.same_boot(prev, cur):
                prev, source = cur, "window"  # the window began with the first reading
                time.sleep(max(0.0, WINDOW - (time.monotonic() - cur.clock)))
                cur = read_counters(config)
            else:
                source = "previous run"
            rates = hostmetrics.rate_samples(prev, cur)
            samples = rates + gauges
            store.write(tx, host, now, samples)
            store.save_counters(tx, host, cur)
            done = store.maintain(tx, now, config.retention)
    finally:
        store.close()
    values = {s.metric: s.value for s in samples if not s.label}
    cpu = values.get("cpu.percent")
    interval = cur.clock - prev.clock
    message = (
        f"sampled {len(samples)} metrics into {store.kind}: cpu "
        f"{'n/a' if cpu is None else f'{cpu:.1f}%'} over {interval:.2f}s ({source}), "
        f"load {values['load.1']:.2f}, memory {values['mem.used_percent']:.1f}% used"
    )
    if missing:
        message += f"; mounts not measured: {', '.join(missing)}"
    journal.event(
        "job.metrics",
        message,
        priority=4 if missing else 6,
        echo=False,
        samples=len(samples),
        store=store.kind,
        cpu_percent=cpu,
        interval_sec=round(interval, 3),
        rate_source=source,
        rolled_up=done.rolled_up,
        deleted=done.deleted,
        duration_ms=round((time.monotonic() - started) * 1000, 1),
    )
    return 0
