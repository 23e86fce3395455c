"""The Prometheus textfile: built text checked by a strict text-format (0.0.4) parser."""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path

import pytest

from reconciler.monitor import textfile as tf

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_ESCAPE = re.compile(r'\\[\\"n]')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}

Series = tuple[str, tuple[tuple[str, str], ...]]


def parse(text: str) -> dict[Series, float]:
    """Samples by (name, sorted labels); AssertionError on anything the format forbids."""
    assert text.endswith("\n"), "the file must end with a new line"
    samples: dict[Series, float] = {}
    typed: dict[str, str] = {}
    helped: set[str] = set()
    finished: set[str] = set()
    current = ""
    for n, line in enumerate(text.splitlines(), 1):
        where = f"line {n}: {line!r}"
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert _NAME.fullmatch(name), where
                if parts[1] == "TYPE":
                    assert name not in typed, f"second TYPE: {where}"
                    assert name not in {s[0] for s in samples}, f"TYPE after samples: {where}"
                    assert len(parts) == 4 and parts[3] in _TYPES, where
                    typed[name] = parts[3]
                else:
                    assert name not in helped, f"second HELP: {where}"
                    helped.add(name)
                if name != current:
                    finished.add(current)
                    current = name
            continue
        m = _NAME.match(line)
        assert m, where
        name, rest = m.group(0), line[m.end() :]
        labels: dict[str, str] = {}
        if rest.startswith("{"):
            end = rest.index("}")
            body = rest[1:end]
            pos = 0
            while pos < len(body):
                lm = _LABEL.match(body, pos)
                assert lm, f"bad label: {where}"
                assert lm.group(1) not in labels, f"repeated label: {where}"
                labels[lm.group(1)] = _ESCAPE.sub(lambda e: _UNESCAPE[e.group(0)], lm.group(2))
                pos = lm.end()
                if pos < len(body):
                    assert body[pos] == ",", where
                    pos += 1
            rest = rest[end + 1 :]
        assert rest.startswith(" "), where
        fields = rest.split()
        assert 1 <= len(fields) <= 2, where
        value = float(fields[0])  # float() accepts NaN, +Inf, -Inf as the format does
        family = name if name in typed else name.rsplit("_", 1)[0]
        assert family in typed, f"sample without TYPE: {where}"
        assert family not in finished, f"family not contiguous: {where}"
        if family != current:
            finished.add(current)
            current = family
        if typed[family] == "counter":
            assert value >= 0 or math.isnan(value), where
        key = (name, tuple(sorted(labels.items())))
        assert key not in samples, f"duplicate series: {where}"
        samples[key] = value
    return samples


UNITS = [
    tf.UnitSample("web.service", "active", n_restarts=2, starts=3, crashes=2, memory_bytes=4096),
    tf.UnitSample('we"ird\\name\n.service', "failed", drifted=True),
    tf.UnitSample("odd.service", "maintenance"),  # a state not in the usual list
]


def test_whole_file_parses_strictly() -> None:
    text = tf.build(
        UNITS,
        [tf.OpenFinding("crash_loop", "web.service", "critical")],
        tf.LastSync(1_790_000_000.5, 1.25, "applied", "0123456789abcdef"),
        pass_at=1_790_000_100.0,
        pass_duration_sec=0.2,
    )
    s = parse(text)
    assert s[("reconciler_unit_state", (("state", "active"), ("unit", "web.service")))] == 1
    assert s[("reconciler_unit_state", (("state", "failed"), ("unit", "web.service")))] == 0
    weird = 'we"ird\\name\n.service'
    assert s[("reconciler_unit_drifted", (("unit", weird),))] == 1
    assert s[("reconciler_unit_state", (("state", "maintenance"), ("unit", "odd.service")))] == 1
    assert s[("reconciler_unit_crashes_total", (("unit", "web.service"),))] == 2
    assert s[("reconciler_unit_memory_bytes", (("unit", "web.service"),))] == 4096
    assert ("reconciler_unit_memory_bytes", (("unit", "odd.service"),)) not in s
    key = (("kind", "crash_loop"), ("severity", "critical"), ("unit", "web.service"))
    assert s[("reconciler_finding_open", key)] == 1
    assert s[("reconciler_findings_open", (("kind", "crash_loop"),))] == 1
    assert s[("reconciler_last_sync_timestamp_seconds", ())] == 1_790_000_000.5
    assert s[("reconciler_last_sync_success", ())] == 1
    assert s[("reconciler_last_sync_result", (("result", "applied"), ("revision", "0123456789ab")))]


@pytest.mark.parametrize(
    ("result", "success"), [("applied", 1), ("noop", 1), ("failed", 0), ("rolled-back", 0)]
)
def test_last_sync_success(result: str, success: int) -> None:
    text = tf.build([], [], tf.LastSync(1.0, 2.0, result), pass_at=3.0, pass_duration_sec=0.1)
    assert parse(text)[("reconciler_last_sync_success", ())] == success


def test_no_sync_no_units_still_valid() -> None:
    s = parse(tf.build([], [], None, pass_at=5.0, pass_duration_sec=0.0))
    assert ("reconciler_last_sync_timestamp_seconds", ()) not in s
    assert s[("reconciler_monitor_last_pass_timestamp_seconds", ())] == 5.0


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("x 1", "sample without TYPE"),
        ('# TYPE x gauge\nx{a="1"} 1\nx{a="1"} 2', "duplicate"),
        ("# TYPE x gauge\nx{a=1} 1", "bad label"),
        ("# TYPE x gauge\n# TYPE y gauge\ny 1\nx 2", "not contiguous"),
        ("# TYPE x gauge\nx 1", "new line"),
    ],
)
def test_parser_is_strict(bad: str, why: str) -> None:
    text = bad if why == "new line" else bad + "\n"
    with pytest.raises(AssertionError, match=why):
        parse(text)


def test_write_is_atomic_and_readable(tmp_path: Path) -> None:
    path = tmp_path / "collector" / "reconciler.prom"
    tf.write(path, "# TYPE x gauge\nx 1\n")
    tf.write(path, "# TYPE x gauge\nx 2\n")
    assert parse(path.read_text()) == {("x", ()): 2}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["reconciler.prom"]  # no temp files left


def test_watch_figures_parse_and_say_when_the_daemon_is_gone() -> None:
    figures = tf.WatchFigures(
        at=1_790_000_090.0,
        running=True,
        units=12,
        events_total=345,
        dropped_total=2,
        events_per_sec=4.5,
        queue_depth=7,
        queue_size=4096,
    )
    args: tuple[list[tf.UnitSample], list[tf.OpenFinding], None] = ([], [], None)
    s = parse(tf.build(*args, pass_at=1_790_000_100.0, pass_duration_sec=0.1, watch=figures))
    assert s[("reconciler_watch_up", ())] == 1
    assert s[("reconciler_watch_units", ())] == 12
    assert s[("reconciler_watch_events_total", ())] == 345
    assert s[("reconciler_watch_dropped_total", ())] == 2
    assert s[("reconciler_watch_events_per_second", ())] == 4.5
    assert s[("reconciler_watch_queue_depth", ())] == 7
    assert s[("reconciler_watch_queue_size", ())] == 4096
    later = 1_790_000_090.0 + tf.WatchFigures.FRESH_SEC + 1
    stale = parse(tf.build(*args, pass_at=later, pass_duration_sec=0.1, watch=figures))
    assert stale[("reconciler_watch_up", ())] == 0  # figures nobody refreshed: not up
    none = parse(tf.build(*args, pass_at=later, pass_duration_sec=0.1))
    assert not [k for k in none if k[0].startswith("reconciler_watch_")]


def every_family() -> str:
    """A file with every family the writer has: units, findings, a sync, the watch daemon."""
    figures = tf.WatchFigures(
        at=1_790_000_090.0,
        running=True,
        units=12,
        events_total=345,
        dropped_total=2,
        events_per_sec=4.5,
        queue_depth=7,
        queue_size=4096,
    )
    return tf.build(
        UNITS,
        [tf.OpenFinding("crash_loop", "web.service", "critical")],
        tf.LastSync(1_790_000_000.5, 1.25, "applied", "0123456789abcdef"),
        pass_at=1_790_000_100.0,
        pass_duration_sec=0.2,
        watch=figures,
        fleet=FLEET,
    )


APPLIED, TARGET = "a" * 40, "b" * 40
FLEET = tf.FleetSample(
    host="web-1",
    wave="canary",
    revision=APPLIED,
    target=TARGET,
    healthy_since=1_790_000_050.0,
    failed=True,
    last_success=1_790_000_040.5,
    rollbacks=2,
    health_gate_failures=3,
)


def test_fleet_metrics_are_the_contract() -> None:
    """Issue 15's fleet contract: every line carries host and wave; the values the promoter
    reads, as prometheus_client's parser reads them back."""
    from prometheus_client.parser import text_string_to_metric_families

    text = tf.build([], [], None, pass_at=1_790_000_100.0, pass_duration_sec=0.1, fleet=FLEET)
    samples = {
        s.name: (s.labels, s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith(("reconciler_rollout", "reconciler_last_success", "reconciler_roll"))
        or s.name.startswith("reconciler_health_gate")
    }
    who = {"host": "web-1", "wave": "canary"}
    assert samples == {
        "reconciler_rollout_info": ({**who, "revision": APPLIED, "target": TARGET}, 1.0),
        "reconciler_rollout_healthy_since_timestamp_seconds": (
            {**who, "revision": APPLIED},
            1_790_000_050.0,
        ),
        "reconciler_rollout_failed": ({**who, "target": TARGET}, 1.0),
        "reconciler_last_success_timestamp_seconds": (who, 1_790_000_040.5),
        "reconciler_rollbacks_total": (who, 2.0),
        "reconciler_health_gate_failures_total": (who, 3.0),
    }
    plain = tf.build([], [], None, pass_at=1_790_000_100.0, pass_duration_sec=0.1)
    assert "reconciler_rollout" not in plain, "outside a rollout: no fleet lines"


def test_prometheus_client_parser_reads_every_family_as_written() -> None:
    """prometheus_client's own parser is the oracle: every family the writer declares is
    read back with its type and help, and every sample with its labels and value."""
    from prometheus_client.parser import text_string_to_metric_families

    text = every_family()
    declared = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in declared.items():
        # prometheus_client names a counter family without its _total suffix
        family = families.get(name.removesuffix("_total") if kind == "counter" else name)
        assert family is not None, f"{name} not read back"
        assert family.type == kind, name
        assert family.documentation == helps[name].replace("\\\\", "\\").replace("\\n", "\n")
    assert len(families) == len(declared), "no family read that the writer did not declare"
    oracle = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert oracle == parse(text)
    for family in ("reconciler_unit_state", "reconciler_watch_events_total"):
        assert any(k[0] == family for k in oracle)
