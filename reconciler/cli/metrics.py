"""``reconciler metrics``: recent host samples from the metrics store, as a table or JSON.

On a terminal each metric gets a sparkline (``▁▂▃▄▅▆▇█``) over the period; piped, the same
table without it; ``--json`` gives every series with its points. The resolution is the
finest one still kept for the whole period: raw samples, then 5-minute, then hourly
averages (``keep_raw``, ``keep_5m``, ``keep_1h`` in ``[metrics]``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from reconciler.cli import _options

HELP = "show recent host metrics (CPU, load, memory, disk, network)"
BARS = "▁▂▃▄▅▆▇█"
WIDTH = 30
# The metrics the table shows, in order, with their display name; JSON has them all.
SHOWN = {
    "cpu.percent": "cpu %",
    "load.1": "load1",
    "mem.used_percent": "mem used %",
    "disk.used_percent": "disk used %",
    "disk.read_bps": "disk read",
    "disk.write_bps": "disk write",
    "net.rx_bps": "net rx",
    "net.tx_bps": "net tx",
}
PAIRED = {"disk.write_bps": "disk.read_bps", "net.tx_bps": "net.rx_bps"}  # shown together


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since", default="1h", metavar="AGE", help="how far back: 30m, 1h, 2d (default 1h)"
    )
    _options.add_json(parser)
    _options.add_settings(parser, source=False)


def sparkline(values: Sequence[float | None], lo: float, hi: float) -> str:
    """One bar per value scaled to [lo, hi]; a gap (None) is a space."""
    span = hi - lo
    out = []
    for v in values:
        if v is None:
            out.append(" ")
            continue
        frac = (v - lo) / span if span > 0 else 0.0
        out.append(BARS[min(len(BARS) - 1, max(0, int(frac * len(BARS))))])
    return "".join(out)


def resample(
    points: Sequence[tuple[int, float]], start: int, end: int, width: int
) -> list[float | None]:
    """Average the points into ``width`` equal time buckets over [start, end]."""
    sums = [0.0] * width
    counts = [0] * width
    span = max(1, end - start)
    for ts, value in points:
        i = min(width - 1, max(0, (ts - start) * width // span))
        sums[i] += value
        counts[i] += 1
    return [s / c if c else None for s, c in zip(sums, counts, strict=True)]


def human(metric: str, value: float) -> str:
    if metric.endswith("_bps"):
        for unit in ("B/s", "kB/s", "MB/s", "GB/s"):
            if abs(value) < 1000 or unit == "GB/s":
                return f"{value:.0f} {unit}" if unit == "B/s" else f"{value:.1f} {unit}"
            value /= 1000
    if metric.endswith("_bytes"):
        for unit in ("B", "kB", "MB", "GB", "TB"):
            if abs(value) < 1000 or unit == "TB":
                return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            value /= 1000
    return f"{value:.2f}" if metric.startswith("load") else f"{value:.1f}"


def build_series(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows (ts, metric, label, value) -> one dict per series with points and summary."""
    by_key: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for row in rows:
        by_key.setdefault((row.metric, row.label), []).append((row.ts, row.value))
    series = []
    for (metric, label), points in sorted(by_key.items()):
        values = [v for _, v in points]
        key, _, value = label.partition("=")
        series.append(
            {
                "metric": metric,
                "labels": {key: value} if label else {},
                "points": [[ts, v] for ts, v in points],
                "last": values[-1],
                "min": min(values),
                "max": max(values),
            }
        )
    return series


def render_table(
    series: Sequence[dict[str, Any]], start: int, end: int, *, chart: bool
) -> list[str]:
    order = list(SHOWN)
    shown = sorted(
        (s for s in series if s["metric"] in SHOWN),
        key=lambda s: (
            order.index(PAIRED.get(s["metric"], s["metric"])),
            sorted(s["labels"].values()),
            order.index(s["metric"]),
        ),
    )
    # The time axis spans the points shown: a young store still gets a whole chart.
    start = max(start, min((s["points"][0][0] for s in shown), default=start))
    end = min(end, max((s["points"][-1][0] for s in shown), default=end) + 1)
    width = min(WIDTH, len({p[0] for s in shown for p in s["points"]}))  # bars <= points
    head = f"{'METRIC':<12} {'OF':<16} {'LAST':>11} {'MIN':>11} {'MAX':>11}"
    lines = [head + ("  TREND" if chart else "")]
    for s in shown:
        metric = s["metric"]
        label = next(iter(s["labels"].values()), "")
        cells = [human(metric, s[k]) for k in ("last", "min", "max")]
        line = f"{SHOWN[metric]:<12} {label:<16} {cells[0]:>11} {cells[1]:>11} {cells[2]:>11}"
        if chart:
            hi = 100.0 if metric.endswith("percent") else max(s["max"], 0.0)
            values = resample([(p[0], p[1]) for p in s["points"]], start, end, width)
            line += "  " + sparkline(values, min(0.0, s["min"]), hi)
        lines.append(line.rstrip())
    return lines


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from reconciler.core import hostmetrics
    from reconciler.store import metric_store

    settings = _options.settings(args)
    config = hostmetrics.from_section(settings.metrics)
    since_sec = hostmetrics.parse_duration(args.since, "--since")
    keep = config.retention
    if since_sec <= keep.raw:
        res, res_name = hostmetrics.RAW, "raw samples"
    elif since_sec <= keep.five_min:
        res, res_name = hostmetrics.FIVE_MIN, "5-minute averages"
    else:
        res, res_name = hostmetrics.HOURLY, "hourly averages"
    now = int(time.time())
    start = now - since_sec
    where = str(metric_store.sqlite_path(settings))
    rows: list[metric_store.Row] = []
    if metric_store.is_postgres(settings) or Path(where).exists():  # reading creates nothing
        store = metric_store.open_store(settings)
        where = store.where
        try:
            rows = store.query(settings.host_name, start, res)
        finally:
            store.close()
    series = build_series(rows)
    if args.json:
        _options.print_json(
            {
                "host": settings.host_name,
                "store": where,
                "since": start,
                "until": now,
                "resolution_sec": res or 60,
                "series": series,
            }
        )
        return 0
    if not series:
        print(f"no metrics for {settings.host_name} since {args.since} ago in {where}")
        print("(the metrics-sample timer runs 'reconciler job metrics' every minute)")
        return 0
    samples = len({p[0] for s in series for p in s["points"]})
    print(f"{settings.host_name}: last {args.since}, {samples} points ({res_name})")
    chart = sys.stdout.isatty()
    for line in render_table(series, start, now, chart=chart):
        print(line)
    return 0
