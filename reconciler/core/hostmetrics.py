"""Host metrics from /proc text (pure): parsers, device filters, counter deltas, retention.

The metrics job reads ``/proc/stat``, ``/proc/loadavg``, ``/proc/meminfo``,
``/proc/diskstats``, ``/proc/net/dev`` and ``/proc/self/mountinfo`` and hands the text to
the parsers here; nothing in this module opens a file or reads a clock. Rates (CPU %,
bytes/s) come from two readings of monotonic kernel counters: the previous run's (kept in
the store) or, when there is none, a second reading a short window later. A counter
that went down (a reboot, a re-plugged device, a 32-bit wrap) yields no rate rather than
a negative one.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.config import Metrics, read_section
from reconciler.errors import UsageError

SECTOR = 512  # /proc/diskstats counts 512-byte sectors whatever the device's block size

# File systems backed by storage worth watching; pseudo and in-memory ones are skipped, as
# are network ones (a hung NFS server would hang statvfs and the every-minute job with it).
# fmt: off
LOCAL_FSTYPES = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "vfat", "exfat",
    "ntfs", "ntfs3", "fuseblk", "hfsplus", "nilfs2", "bcachefs",
})
# fmt: on
SKIP_DISK_PREFIXES = ("loop", "ram", "zram", "sr", "fd", "nbd")
# Patterns as strings: compiled (and cached by ``re``) on first use, not at every start.
_PARTITION = r"^(?:(?:sd|vd|xvd|hd)[a-z]+\d+|(?:nvme\d+n\d+|mmcblk\d+)p\d+)$"
_DURATION = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$"
_UNIT_SEC = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# --- data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One value of one series: ``metric`` plus at most one ``label`` (``mount=/``)."""

    metric: str
    value: float
    label: str = ""


@dataclass(frozen=True)
class Memory:
    total: int
    available: int
    swap_total: int
    swap_free: int


@dataclass(frozen=True)
class Mount:
    device: str  # major:minor
    root: str  # the path inside the file system that is mounted (bind mounts: not "/")
    mount_point: str
    fstype: str
    source: str


@dataclass(frozen=True)
class Counters:
    """The monotonic counters one run keeps for the next (all in bytes or clock ticks)."""

    clock: float  # CLOCK_MONOTONIC seconds: shared by every process of one boot
    boot_time: int  # /proc/stat btime: a different value means a reboot in between
    cpu_total: int
    cpu_idle: int  # idle + iowait
    disks: dict[str, tuple[int, int]] = field(default_factory=dict)  # read, written
    nets: dict[str, tuple[int, int]] = field(default_factory=dict)  # received, sent

    def to_dict(self) -> dict[str, Any]:
        return {
            "clock": self.clock,
            "boot_time": self.boot_time,
            "cpu": [self.cpu_total, self.cpu_idle],
            "disks": {k: list(v) for k, v in self.disks.items()},
            "nets": {k: list(v) for k, v in self.nets.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Counters | None:
        """The counters back from ``to_dict``; None for anything malformed (start afresh)."""
        try:
            return cls(
                clock=float(data["clock"]),
                boot_time=int(data["boot_time"]),
                cpu_total=int(data["cpu"][0]),
                cpu_idle=int(data["cpu"][1]),
                disks={str(k): (int(v[0]), int(v[1])) for k, v in data["disks"].items()},
                nets={str(k): (int(v[0]), int(v[1])) for k, v in data["nets"].items()},
            )
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            return None


@dataclass(frozen=True)
class Retention:
    """How long each resolution is kept: raw samples, 5-minute and hourly averages."""

    raw: int = 48 * 3600
    five_min: int = 30 * 86400
    hourly: int = 365 * 86400


@dataclass(frozen=True)
class MetricsConfig:
    """The ``[metrics]`` section: include lists (None: the automatic filter), retention."""

    mounts: tuple[str, ...] | None = None
    disks: tuple[str, ...] | None = None
    interfaces: tuple[str, ...] | None = None
    retention: Retention = Retention()


# --- parsers ------------------------------------------------------------------------------


def parse_stat(text: str) -> tuple[int, int, int]:
    """``/proc/stat`` -> (total CPU ticks, idle + iowait ticks, boot time in epoch seconds).

    Total is user..steal: guest and guest_nice are already counted in user and nice.
    """
    total = idle = boot = 0
    for line in text.splitlines():
        if line.startswith("cpu "):
            ticks = [int(x) for x in line.split()[1:9]]
            ticks += [0] * (8 - len(ticks))
            total, idle = sum(ticks), ticks[3] + ticks[4]
        elif line.startswith("btime "):
            boot = int(line.split()[1])
    return total, idle, boot


def parse_loadavg(text: str) -> tuple[float, float, float]:
    one, five, fifteen = (float(x) for x in text.split()[:3])
    return one, five, fifteen


def parse_meminfo(text: str) -> Memory:
    """``/proc/meminfo`` in bytes; kernels before 3.14 lack MemAvailable: free+buffers+cached."""
    kb: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            kb[key] = int(parts[0])
    available = kb.get("MemAvailable")
    if available is None:
        available = kb.get("MemFree", 0) + kb.get("Buffers", 0) + kb.get("Cached", 0)
    return Memory(
        total=kb.get("MemTotal", 0) * 1024,
        available=available * 1024,
        swap_total=kb.get("SwapTotal", 0) * 1024,
        swap_free=kb.get("SwapFree", 0) * 1024,
    )


def parse_diskstats(text: str) -> dict[str, tuple[int, int]]:
    """``/proc/diskstats`` -> device name -> (bytes read, bytes written), every device."""
    disks: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 10:
            disks[parts[2]] = (int(parts[5]) * SECTOR, int(parts[9]) * SECTOR)
    return disks


def parse_net_dev(text: str) -> dict[str, tuple[int, int]]:
    """``/proc/net/dev`` -> interface -> (bytes received, bytes sent)."""
    nets: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        parts = rest.split()
        if sep and len(parts) >= 9 and parts[0].isdigit():
            nets[name.strip()] = (int(parts[0]), int(parts[8]))
    return nets


def _unescape(field_: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo`` octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        a, b = left.split(), right.split()
        if not sep or len(a) < 5 or len(b) < 2:
            continue
        mounts.append(Mount(a[2], _unescape(a[3]), _unescape(a[4]), b[0], _unescape(b[1])))
    return mounts


# --- filters ------------------------------------------------------------------------------


def select_mounts(mounts: Sequence[Mount], include: Collection[str] | None) -> list[str]:
    """Mount points to measure: ``include`` as listed, else one per local file system.

    Automatic: local block file systems (``LOCAL_FSTYPES``) plus an overlay mounted at
    ``/`` (a container's root); a file system mounted several times (bind mounts) is
    measured once, at its shortest mount point of its own root.
    """
    if include is not None:
        present = {m.mount_point for m in mounts}
        return [p for p in include if p in present]
    best: dict[str, Mount] = {}
    for m in mounts:
        if m.fstype not in LOCAL_FSTYPES and not (m.fstype == "overlay" and m.mount_point == "/"):
            continue
        current = best.get(m.device)
        rank = (m.root != "/", len(m.mount_point), m.mount_point)
        if current is None or rank < (
            current.root != "/",
            len(current.mount_point),
            current.mount_point,
        ):
            best[m.device] = m
    return sorted(m.mount_point for m in best.values())


def is_partition(name: str) -> bool:
    return bool(re.match(_PARTITION, name))


def select_disks(
    names: Collection[str], include: Collection[str] | None, whole: Collection[str] | None
) -> list[str]:
    """Whole disks (``whole``: /sys/block's names, else guessed from the name), no loop/ram."""
    if include is not None:
        return [n for n in include if n in names]
    return sorted(
        n
        for n in names
        if not n.startswith(SKIP_DISK_PREFIXES)
        and (n in whole if whole is not None else not is_partition(n))
    )


def select_interfaces(names: Collection[str], include: Collection[str] | None) -> list[str]:
    if include is not None:
        return [n for n in include if n in names]
    return sorted(n for n in names if n != "lo")


# --- delta math ---------------------------------------------------------------------------


def same_boot(prev: Counters, cur: Counters) -> bool:
    """True when ``prev`` is from this boot and earlier (btime wobbles by a second)."""
    return abs(prev.boot_time - cur.boot_time) <= 2 and cur.clock > prev.clock


def cpu_percent(prev: Counters, cur: Counters) -> float | None:
    d_total = cur.cpu_total - prev.cpu_total
    d_idle = cur.cpu_idle - prev.cpu_idle
    if d_total <= 0 or d_idle < 0 or d_idle > d_total:
        return None
    return round(100.0 * (d_total - d_idle) / d_total, 2)


def _rates(
    prev: Mapping[str, tuple[int, int]], cur: Mapping[str, tuple[int, int]], seconds: float
) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for name, (a, b) in cur.items():
        old = prev.get(name)
        if old is None or a < old[0] or b < old[1]:
            continue  # new device, or its counters were reset: no rate this time
        out[name] = ((a - old[0]) / seconds, (b - old[1]) / seconds)
    return out


def rate_samples(prev: Counters, cur: Counters) -> list[Sample]:
    """CPU %, disk and network bytes/s between two readings; [] across a reboot."""
    if not same_boot(prev, cur):
        return []
    seconds = cur.clock - prev.clock
    samples: list[Sample] = []
    cpu = cpu_percent(prev, cur)
    if cpu is not None:
        samples.append(Sample("cpu.percent", cpu))
    for disk, (read, write) in sorted(_rates(prev.disks, cur.disks, seconds).items()):
        samples.append(Sample("disk.read_bps", round(read, 1), f"disk={disk}"))
        samples.append(Sample("disk.write_bps", round(write, 1), f"disk={disk}"))
    for iface, (rx, tx) in sorted(_rates(prev.nets, cur.nets, seconds).items()):
        samples.append(Sample("net.rx_bps", round(rx, 1), f"iface={iface}"))
        samples.append(Sample("net.tx_bps", round(tx, 1), f"iface={iface}"))
    return samples


def gauge_samples(
    load: tuple[float, float, float],
    memory: Memory,
    usage: Mapping[str, tuple[int, int]],
) -> list[Sample]:
    """Load, memory and per-mount usage (``usage``: mount -> (used, available) bytes).

    Disk used % is used / (used + available), as ``df`` shows it (root's reserve excluded).
    """
    used = max(0, memory.total - memory.available)
    samples = [
        Sample("load.1", load[0]),
        Sample("load.5", load[1]),
        Sample("load.15", load[2]),
        Sample("mem.total_bytes", float(memory.total)),
        Sample("mem.used_bytes", float(used)),
        Sample("mem.used_percent", round(100.0 * used / memory.total, 2) if memory.total else 0.0),
        Sample("swap.used_bytes", float(max(0, memory.swap_total - memory.swap_free))),
    ]
    for mount, (disk_used, avail) in sorted(usage.items()):
        label = f"mount={mount}"
        size = disk_used + avail
        samples.append(Sample("disk.used_bytes", float(disk_used), label))
        samples.append(Sample("disk.total_bytes", float(size), label))
        pct = round(100.0 * disk_used / size, 2) if size else 0.0
        samples.append(Sample("disk.used_percent", pct, label))
    return samples


# --- retention ----------------------------------------------------------------------------

RAW, FIVE_MIN, HOURLY = 0, 300, 3600
ROLLUP_LAG = 60  # a bucket is rolled up once every host had a run after its end


def rollup_window(
    resolution: int, last_bucket: int | None, first_source: int | None, now: int, keep: int
) -> tuple[int, int] | None:
    """[start, end) of the complete buckets not yet rolled up into ``resolution``, or None.

    ``last_bucket`` is the newest bucket already written at that resolution; without one
    rolling starts at the oldest source row. Buckets past their retention are skipped.
    """
    end = (now - ROLLUP_LAG) // FIVE_MIN * FIVE_MIN // resolution * resolution
    if last_bucket is not None:
        start = last_bucket + resolution
    elif first_source is not None:
        start = first_source // resolution * resolution
    else:
        return None
    start = max(start, (now - keep) // resolution * resolution)
    return (start, end) if start < end else None


def parse_duration(value: object, what: str) -> int:
    """``"90s"``, ``"30m"``, ``"1h"``, ``"2d"``, ``"1w"`` or a number of seconds -> seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value)
    match = re.match(_DURATION, value) if isinstance(value, str) else None
    seconds = float(match.group(1)) * _UNIT_SEC[match.group(2) or "s"] if match else 0
    if seconds < 1:
        raise UsageError(f"{what}: expected a duration such as 30m, 1h or 2d, got {value!r}")
    return int(seconds)


def from_section(section: Metrics) -> MetricsConfig:
    """The ``[metrics]`` section (read and checked by ``config``) as the job uses it."""
    default = Retention()
    retention = Retention(
        raw=parse_duration(section.keep_raw or default.raw, "metrics.keep_raw"),
        five_min=parse_duration(section.keep_5m or default.five_min, "metrics.keep_5m"),
        hourly=parse_duration(section.keep_1h or default.hourly, "metrics.keep_1h"),
    )
    return MetricsConfig(section.mounts, section.disks, section.interfaces, retention)


def parse_config(section: Mapping[str, Any]) -> MetricsConfig:
    """``[metrics]`` from a plain table (the config reader's checks, then ``from_section``)."""
    return from_section(read_section(Metrics, section, "metrics"))
