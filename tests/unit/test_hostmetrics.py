"""The pure metrics core: /proc parsers, device filters, delta math, retention windows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from reconciler.cli import metrics
from reconciler.core import hostmetrics
from reconciler.core.hostmetrics import Counters, Memory, Mount, Sample
from reconciler.errors import UsageError

STAT = """\
cpu  4486 10 1152 79180 332 0 71 385 7 3
cpu0 1499 0 522 40345 220 0 35 184 0 0
intr 1 2 3
ctxt 123
btime 1700000000
processes 99
"""

MEMINFO = """\
MemTotal:       16000000 kB
MemFree:         2000000 kB
MemAvailable:   12000000 kB
Buffers:          100000 kB
Cached:          3000000 kB
SwapTotal:       1000000 kB
SwapFree:         750000 kB
HugePages_Total:       0
"""

DISKSTATS = """\
   7       0 loop0 10 0 80 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 6764 3932 862882 7172 1614 10273 582672 1788 0 3564 9138 3362 37 41496 174 73 3
 254       1 vda1 6000 3000 800000 7000 1600 10000 580000 1700 0 3500 9000 0 0 0 0 0 0
 259       0 nvme0n1 10 0 100 0 5 0 50 0 0 0 0
 259       1 nvme0n1p1 10 0 100 0 5 0 50 0 0 0 0
   1       0 ram0 0 0 0 0 0 0 0 0 0 0 0
"""

NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3493      35    0    0    0     0          0         0     3493      35    0    0    0     0       0          0
  eth0: 63647044    2316    0    0    0     0          0         0   166405    1906    0    0    0     0       0          0
wlan0:100 1 0 0 0 0 0 0 200 2 0 0 0 0 0 0
"""  # noqa: E501

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
28 27 254:0 /srv/data /mnt/bound rw,relatime shared:1 - ext4 /dev/vda rw
29 27 254:1 / /home/my\\040files rw - xfs /dev/vdb rw
30 27 0:40 / /var/lib/docker/overlay2/abc/merged rw - overlay overlay rw,lowerdir=/x
31 27 0:41 / /run rw - tmpfs tmpfs rw
32 27 0:42 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
33 27 0:43 / /mnt/nfs rw - nfs4 server:/export rw
34 27 7:0 / /snap/core/1 ro - squashfs /dev/loop0 ro
"""


def counters(
    clock: float = 100.0,
    boot: int = 1700000000,
    cpu: tuple[int, int] = (1000, 800),
    disks: dict[str, tuple[int, int]] | None = None,
    nets: dict[str, tuple[int, int]] | None = None,
) -> Counters:
    return Counters(clock, boot, cpu[0], cpu[1], disks or {}, nets or {})


# --- parsers ------------------------------------------------------------------------------


def test_parse_stat_counts_user_to_steal_only() -> None:
    total, idle, boot = hostmetrics.parse_stat(STAT)
    assert total == 4486 + 10 + 1152 + 79180 + 332 + 0 + 71 + 385  # no guest, guest_nice
    assert idle == 79180 + 332
    assert boot == 1700000000


def test_parse_stat_old_kernel_short_cpu_line() -> None:
    assert hostmetrics.parse_stat("cpu 1 2 3 4\n") == (10, 4, 0)


def test_parse_loadavg() -> None:
    assert hostmetrics.parse_loadavg("0.80 0.26 0.10 1/98 6750\n") == (0.8, 0.26, 0.1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MEMINFO, Memory(16000000 * 1024, 12000000 * 1024, 1000000 * 1024, 750000 * 1024)),
        (  # before Linux 3.14: no MemAvailable, estimated as free + buffers + cached
            "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n",
            Memory(1000 * 1024, 400 * 1024, 0, 0),
        ),
    ],
)
def test_parse_meminfo(text: str, expected: Memory) -> None:
    assert hostmetrics.parse_meminfo(text) == expected


def test_parse_diskstats_sectors_to_bytes() -> None:
    disks = hostmetrics.parse_diskstats(DISKSTATS)
    assert disks["vda"] == (862882 * 512, 582672 * 512)
    assert set(disks) == {"loop0", "vda", "vda1", "nvme0n1", "nvme0n1p1", "ram0"}


def test_parse_net_dev_with_and_without_space_after_colon() -> None:
    assert hostmetrics.parse_net_dev(NET_DEV) == {
        "lo": (3493, 3493),
        "eth0": (63647044, 166405),
        "wlan0": (100, 200),
    }


def test_parse_mountinfo_unescapes_and_skips_optional_fields() -> None:
    mounts = {m.mount_point: m for m in hostmetrics.parse_mountinfo(MOUNTINFO)}
    assert mounts["/"] == Mount("254:0", "/", "/", "ext4", "/dev/vda")
    assert mounts["/home/my files"].fstype == "xfs"
    assert mounts["/mnt/bound"].root == "/srv/data"


# --- filters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "include", "expected"),
    [
        # local file systems once each; bind mount, pseudo fs, docker overlay, nfs, snap skipped
        (MOUNTINFO, None, ["/", "/home/my files"]),
        # a container: overlay at / counts
        ("1 0 0:50 / / rw - overlay overlay rw\n2 1 0:5 / /proc rw - proc proc rw\n", None, ["/"]),
        # a bind mount seen first still loses to the file system's own root
        (
            "28 1 254:0 /srv /srv rw - ext4 /dev/vda rw\n"
            "27 1 254:0 / /data rw - ext4 /dev/vda rw\n",
            None,
            ["/data"],
        ),
        # the include list wins, in its order, whatever the type; absent mounts dropped
        (MOUNTINFO, ("/mnt/nfs", "/", "/not-mounted"), ["/mnt/nfs", "/"]),
    ],
)
def test_select_mounts(text: str, include: tuple[str, ...] | None, expected: list[str]) -> None:
    assert hostmetrics.select_mounts(hostmetrics.parse_mountinfo(text), include) == expected


@pytest.mark.parametrize(
    ("include", "whole", "expected"),
    [
        (None, {"loop0", "vda", "nvme0n1", "ram0"}, ["nvme0n1", "vda"]),  # /sys/block
        (None, None, ["nvme0n1", "vda"]),  # no /sys: partitions guessed by name
        (("vda1", "sdz"), None, ["vda1"]),  # include list as given, absent dropped
    ],
)
def test_select_disks(
    include: tuple[str, ...] | None, whole: set[str] | None, expected: list[str]
) -> None:
    assert (
        hostmetrics.select_disks(hostmetrics.parse_diskstats(DISKSTATS), include, whole) == expected
    )


@pytest.mark.parametrize(
    ("name", "partition"),
    [("sda1", True), ("sda", False), ("nvme0n1p2", True), ("nvme0n1", False), ("mmcblk0p1", True),
     ("vdb", False), ("xvda3", True), ("dm-0", False), ("md0", False)],
)  # fmt: skip
def test_is_partition(name: str, partition: bool) -> None:
    assert hostmetrics.is_partition(name) is partition


@pytest.mark.parametrize(
    ("include", "expected"),
    [(None, ["eth0", "wlan0"]), (("lo", "eth0", "gone0"), ["lo", "eth0"])],
)
def test_select_interfaces_skips_lo_unless_listed(
    include: tuple[str, ...] | None, expected: list[str]
) -> None:
    assert hostmetrics.select_interfaces(hostmetrics.parse_net_dev(NET_DEV), include) == expected


# --- delta math ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prev", "cur", "expected"),
    [
        ((1000, 800), (2000, 1550), 25.0),  # 1000 ticks, 750 idle
        ((1000, 800), (2000, 1800), 0.0),
        ((1000, 800), (2000, 800), 100.0),
        ((1000, 800), (1000, 800), None),  # no ticks elapsed
        ((5000, 4000), (2000, 1500), None),  # counters went down
        ((1000, 800), (2000, 700), None),  # idle went down
    ],
)
def test_cpu_percent(prev: tuple[int, int], cur: tuple[int, int], expected: float | None) -> None:
    assert hostmetrics.cpu_percent(counters(cpu=prev), counters(clock=160, cpu=cur)) == expected


def test_rate_samples_from_deltas() -> None:
    prev = counters(
        clock=100, cpu=(1000, 800), disks={"vda": (0, 6000)}, nets={"eth0": (1000, 2000)}
    )
    cur = counters(
        clock=160,
        cpu=(2000, 1550),
        disks={"vda": (60000, 6000), "vdb": (5, 5)},  # vdb is new: no rate yet
        nets={"eth0": (7000, 2600)},
    )
    assert hostmetrics.rate_samples(prev, cur) == [
        Sample("cpu.percent", 25.0),
        Sample("disk.read_bps", 1000.0, "disk=vda"),
        Sample("disk.write_bps", 0.0, "disk=vda"),
        Sample("net.rx_bps", 100.0, "iface=eth0"),
        Sample("net.tx_bps", 10.0, "iface=eth0"),
    ]


def test_counter_reset_gives_no_rate_never_a_negative_one() -> None:
    prev = counters(disks={"vda": (10**12, 10**12)}, nets={"eth0": (2**32 - 10, 5)})
    cur = counters(clock=160, cpu=(2000, 1800), disks={"vda": (5, 10**12)}, nets={"eth0": (3, 9)})
    samples = hostmetrics.rate_samples(prev, cur)
    assert [s.metric for s in samples] == ["cpu.percent"]
    assert all(s.value >= 0 for s in samples)


@pytest.mark.parametrize(
    ("prev", "same"),
    [
        (counters(clock=50, boot=1700000000), True),
        (counters(clock=50, boot=1700000001), True),  # btime wobbles with clock adjustments
        (counters(clock=50, boot=1690000000), False),  # rebooted
        (counters(clock=150, boot=1700000000), False),  # monotonic clock went back: rebooted
    ],
)
def test_same_boot(prev: Counters, same: bool) -> None:
    cur = counters(clock=100, cpu=(2000, 1500))
    assert hostmetrics.same_boot(prev, cur) is same
    assert (hostmetrics.rate_samples(prev, cur) != []) is same


def test_gauge_samples_memory_and_df_style_disk_usage() -> None:
    memory = Memory(total=1000, available=250, swap_total=100, swap_free=40)
    samples = hostmetrics.gauge_samples((0.5, 0.25, 0.1), memory, {"/": (300, 100)})
    by = {(s.metric, s.label): s.value for s in samples}
    assert by[("mem.used_bytes", "")] == 750
    assert by[("mem.used_percent", "")] == 75.0
    assert by[("swap.used_bytes", "")] == 60
    assert by[("load.1", "")] == 0.5
    assert by[("disk.used_percent", "mount=/")] == 75.0  # used / (used + available), as df
    assert by[("disk.total_bytes", "mount=/")] == 400


def test_counters_round_trip_and_malformed_state() -> None:
    c = counters(disks={"vda": (1, 2)}, nets={"eth0": (3, 4)})
    assert Counters.from_dict(c.to_dict()) == c
    assert Counters.from_dict({"clock": 1}) is None
    assert Counters.from_dict({**c.to_dict(), "cpu": "x"}) is None


# --- retention ----------------------------------------------------------------------------

NOW = 1_700_000_000 // 3600 * 3600 + 1830  # 30 min 30 s past an hour
END_5M = NOW - 330  # the newest 5-minute bucket that ended at least 60 s ago ends here


@pytest.mark.parametrize(
    ("res", "last", "first", "keep", "expected"),
    [
        (300, None, None, 86400, None),  # nothing to roll up
        # first rollup from the oldest raw row; the bucket ending < 60 s ago waits
        (300, None, NOW - 1000, 86400, ((NOW - 1000) // 300 * 300, END_5M)),
        (300, END_5M - 600, None, 86400, (END_5M - 300, END_5M)),  # one more bucket
        (300, END_5M - 300, None, 86400, None),  # up to date
        (300, NOW - 10 * 86400, None, 86400, ((NOW - 86400) // 300 * 300, END_5M)),  # too old
        (3600, None, NOW - 7200, 86400, (NOW // 3600 * 3600 - 7200, NOW // 3600 * 3600)),
        (3600, NOW // 3600 * 3600 - 3600, None, 86400, None),
    ],
)
def test_rollup_window(
    res: int, last: int | None, first: int | None, keep: int, expected: tuple[int, int] | None
) -> None:
    assert hostmetrics.rollup_window(res, last, first, NOW, keep) == expected


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30m", 1800), ("1h", 3600), ("2d", 172800), ("90s", 90), ("90", 90), (120, 120),
     ("1.5h", 5400), ("1w", 604800)],
)  # fmt: skip
def test_parse_duration(value: object, seconds: int) -> None:
    assert hostmetrics.parse_duration(value, "--since") == seconds


@pytest.mark.parametrize("value", ["", "1y", "-1h", "abc", "10ms", 0, True, None])
def test_parse_duration_refused(value: object) -> None:
    with pytest.raises(UsageError, match="--since: expected a duration"):
        hostmetrics.parse_duration(value, "--since")


def test_parse_config_defaults_and_values() -> None:
    assert hostmetrics.parse_config({}) == hostmetrics.MetricsConfig()
    cfg = hostmetrics.parse_config(
        {"mounts": ["/", "/data"], "interfaces": ["lo"], "keep_raw": "1d", "keep_1h": 86400 * 90}
    )
    assert cfg.mounts == ("/", "/data")
    assert cfg.interfaces == ("lo",)
    assert cfg.disks is None
    assert cfg.retention == hostmetrics.Retention(raw=86400, five_min=30 * 86400, hourly=90 * 86400)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"mount": ["/"]}, "metrics.mount: unknown key"),
        ({"mounts": "/"}, "metrics.mounts: expected a list"),
        ({"keep_5m": "forever"}, "metrics.keep_5m: expected a duration"),
    ],
)
def test_parse_config_refused(section: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        hostmetrics.parse_config(section)


# --- presentation (reconciler.cli.metrics, pure helpers) ------------------------------------


@pytest.mark.parametrize(
    ("values", "lo", "hi", "expected"),
    [
        ([0, 12.5, 25, 50, 75, 100], 0, 100, "▁▂▃▅▇█"),
        ([1, None, 1], 0, 0, "▁ ▁"),  # flat at zero: no division by zero
        ([], 0, 1, ""),
    ],
)
def test_sparkline(values: list[float | None], lo: float, hi: float, expected: str) -> None:
    assert metrics.sparkline(values, lo, hi) == expected


def test_resample_averages_into_buckets_and_leaves_gaps() -> None:
    points = [(0, 1.0), (10, 3.0), (95, 8.0)]
    assert metrics.resample(points, 0, 100, 4) == [2.0, None, None, 8.0]


@pytest.mark.parametrize(
    ("metric", "value", "text"),
    [("net.rx_bps", 512, "512 B/s"), ("disk.read_bps", 1_234_567, "1.2 MB/s"),
     ("mem.used_bytes", 2.5e9, "2.5 GB"), ("load.1", 0.5, "0.50"), ("cpu.percent", 12.34, "12.3")],
)  # fmt: skip
def test_human(metric: str, value: float, text: str) -> None:
    assert metrics.human(metric, value) == text


def test_render_table_orders_pairs_and_charts_the_points_shown() -> None:
    rows = [
        _Row(ts, metric, label, value)
        for ts in (0, 60, 120)
        for metric, label, value in [
            ("net.tx_bps", "iface=eth0", ts * 10.0),
            ("net.rx_bps", "iface=eth0", 2000.0),
            ("cpu.percent", "", ts / 2),
            ("mem.total_bytes", "", 1e9),  # JSON only
        ]
    ]
    series = metrics.build_series(rows)
    assert [s["metric"] for s in series] == [
        "cpu.percent", "mem.total_bytes", "net.rx_bps", "net.tx_bps"
    ]  # fmt: skip
    assert series[2]["labels"] == {"iface": "eth0"}
    plain = metrics.render_table(series, -3600, 600, chart=False)
    assert [line.split()[:2] for line in plain] == [
        ["METRIC", "OF"], ["cpu", "%"], ["net", "rx"], ["net", "tx"]
    ]  # fmt: skip
    charted = metrics.render_table(series, -3600, 600, chart=True)
    assert charted[1].endswith("▁▃▅")  # cpu 0, 30, 60 % on a 0-100 scale, one bar a point
    assert charted[3].endswith("▁▅█")  # net tx 0, 600, 1200 B/s up to its max
    assert "1.2 kB/s" in charted[3]


@dataclass(frozen=True)
class _Row:
    ts: int
    metric: str
    label: str
    value: float
