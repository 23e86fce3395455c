"""What a monitoring pass tells the world (talks to journald, HTTP, the disk, systemd-analyze).

Every new finding goes to journald with the ``MESSAGE_ID`` of its kind and a ``PRIORITY``
from its severity (critical 2, warning 4, info 6); a resolved one as ``finding.resolved``.
New findings (not ``info`` ones) get a diagnostics bundle; new and resolved ones go to the
optional webhook in one signed POST; the Prometheus textfile is rewritten every pass. An
output that fails is a warning in the pass result and the log, never a failed pass: the
sync calls this at its end and must not fail because a webhook is down.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.config import Settings
from reconciler.host import journal
from reconciler.monitor import live
from reconciler.monitor import textfile as tf
from reconciler.store.finding_store import FindingStore, StoredFinding
from reconciler.store.ledger import UNVERIFIED_KEY
from reconciler.store.sync_store import FLEET_KEY

if TYPE_CHECKING:
    from reconciler.monitor.types import HostView, MonitorConfig, PassResult
    from reconciler.store.sync_store import Store
    from reconciler.systemd.client import Systemd

PRIORITY = {"critical": 2, "warning": 4, "info": 6}
_ELAPSE = re.compile(r"(?:Next elapse|Iter\. #\d+):\s+\w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


def revision_now(store: Store) -> str | None:
    """The revision the host is at or being taken to: while a sync applies and gates a
    revision (its note, ``reconcile.interrupted``), that one; a crash loop the watch sees
    during the gate is the new revision's, not the last applied one's (issue 12)."""
    noted = store.kv_json(UNVERIFIED_KEY).get("revision")
    return str(noted) if noted else store.applied_revision()


def journal_finding(f: StoredFinding, revision: str | None) -> None:
    kind = f.finding.kind if f.finding.kind in journal.EVENTS else "finding.opened"
    journal.event(
        kind,
        f.finding.summary,
        priority=PRIORITY.get(f.finding.severity, 5),
        unit=f.finding.unit,
        revision=revision,
        finding_kind=f.finding.kind,
        severity=f.finding.severity,
        evidence=json.dumps(f.finding.evidence, sort_keys=True),
        impact=",".join(i.unit for i in f.impact) or None,
        first_seen=f.finding.first_seen,
    )


def journal_resolved(f: StoredFinding, revision: str | None) -> None:
    journal.event(
        "finding.resolved",
        f"resolved: {f.finding.kind} on {f.finding.unit} (open since "
        f"{datetime.fromtimestamp(f.finding.first_seen, UTC):%Y-%m-%d %H:%M:%S} UTC)",
        priority=5,
        unit=f.finding.unit,
        revision=revision,
        finding_kind=f.finding.kind,
        severity=f.finding.severity,
    )


def calendar_intervals(db: FindingStore, specs: Sequence[str]) -> dict[str, float]:
    """Period of each OnCalendar spec (``systemd-analyze calendar``; cached in the store)."""
    out: dict[str, float] = {}
    for spec in specs:
        cached = db.kv_get(f"calendar:{spec}")
        if cached is not None:
            if cached:
                out[spec] = float(cached)
            continue
        period = read_calendar_interval(spec)
        db.kv_set(f"calendar:{spec}", "" if period is None else repr(period))
        if period is not None:
            out[spec] = period
    return out


def read_calendar_interval(spec: str) -> float | None:
    """The gap between the next two elapses of ``spec``; None if systemd-analyze cannot say."""
    try:
        proc = subprocess.run(
            ["systemd-analyze", "calendar", "--iterations=2", spec],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            env={"TZ": "UTC", "LANG": "C", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    stamps = [
        datetime.strptime(m, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
        for m in _ELAPSE.findall(proc.stdout)
    ]
    return stamps[1] - stamps[0] if len(stamps) >= 2 and stamps[1] > stamps[0] else None


def bundles(
    settings: Settings,
    systemd: Systemd,
    db: FindingStore,
    opened: Sequence[StoredFinding],
) -> tuple[dict[int, str], list[str]]:
    """One diagnostics bundle per new (non-info) finding; ({finding id: path}, warnings)."""
    wanted = [f for f in opened if f.finding.severity != "info"]
    if not wanted:
        return {}, []
    # diagnostics loads tarfile, subprocess and a thread pool: only when a finding opens
    from reconciler.monitor import diagnostics

    config = diagnostics.load_config(settings)
    if not config.enabled:
        return {}, []
    rank = {"critical": 0, "warning": 1}
    wanted.sort(key=lambda f: rank.get(f.finding.severity, 2))
    skipped = len(wanted) - config.max_per_pass
    late = [f"{f.finding.kind} on {f.finding.unit}" for f in wanted[config.max_per_pass :]]
    wanted = wanted[: config.max_per_pass]
    collector = diagnostics.Collector(config)
    futures = []
    for f in wanted:
        unit = f.finding.unit
        if unit.startswith("/"):  # a config file's drift: no unit to read, its content stays out
            incident = diagnostics.Incident(
                f.finding.kind, unit, f.finding.first_seen, f.to_dict(), {}, None
            )
            futures.append((f, collector.submit(incident)))
            continue
        props = live.read_all_properties(systemd, unit)
        path = settings.unit_dir / unit
        if (
            not path.exists()
            and isinstance(props.get("FragmentPath"), str)
            and props["FragmentPath"]
        ):
            path = Path(str(props["FragmentPath"]))
        incident = diagnostics.Incident(
            f.finding.kind,
            unit,
            f.finding.first_seen,
            f.to_dict(),
            props,
            path if path.exists() else None,
        )
        futures.append((f, collector.submit(incident)))
    written: dict[int, str] = {}
    open_bundles = [Path(f.bundle) for f in db.open_findings().values() if f.bundle]
    collector.close(keep=open_bundles)
    for f, future in futures:
        result = future.result() if future is not None else None
        if result is not None:
            db.set_bundle(f.id, str(result))
            written[f.id] = str(result)
    warnings = []
    if skipped > 0:
        warnings.append(
            f"{skipped} diagnostics bundle{'s' * (skipped > 1)} not written ([diagnostics] "
            f"max_per_pass = {config.max_per_pass}): {', '.join(late)}"
        )
    if collector.dropped:
        warnings.append(
            f"{collector.dropped} diagnostics bundle{'s' * (collector.dropped > 1)} not "
            f"written ([diagnostics] max_pending = {config.max_pending} in the backlog)"
        )
    return written, warnings


def webhook(
    settings: Settings,
    opened: Sequence[StoredFinding],
    resolved: Sequence[StoredFinding],
    at: float,
) -> str | None:
    """Send new and resolved findings; a warning text when it could not."""
    if not settings.notify.url or not (opened or resolved):
        return None
    # urllib.request loads http.client, email and ssl: only when a URL is configured
    from reconciler.monitor import alert_webhook

    config = alert_webhook.load_config(settings.notify)
    if config is None:
        return None
    events = [{"event": "finding.opened", "finding": f.to_dict()} for f in opened]
    events += [{"event": "finding.resolved", "finding": f.to_dict()} for f in resolved]
    if alert_webhook.send(config, settings.host_name, events, now=at):
        return None
    return f"notify webhook: {len(events)} event(s) not delivered"


WATCH_FIGURES_KEY = "watch_figures"  # monitor_kv: the watch daemon's collector figures


def watch_figures(db: FindingStore) -> tf.WatchFigures | None:
    """What the watch daemon last stored (None: it never ran, or the row is unreadable)."""
    text = db.kv_get(WATCH_FIGURES_KEY)
    try:
        return tf.WatchFigures(**json.loads(text)) if text else None
    except (ValueError, TypeError):
        return None


def fleet_sample(settings: Settings, store: Store, result: PassResult) -> tf.FleetSample | None:
    """The host's place in a rollout for the textfile, and when its applied revision became
    healthy (no open critical finding; kept in the sync store); None outside a rollout."""
    if not settings.rollout:
        return None
    fleet = store.kv_json(FLEET_KEY)
    wave = str(fleet.get("wave") or "")
    if not wave:
        return None  # never polled its wave yet
    applied = store.applied_revision() or ""
    healthy = bool(applied) and not any(f.finding.severity == "critical" for f in result.open)
    since = float(fleet.get("healthy_since") or 0.0)
    if not healthy:
        since = 0.0
    elif fleet.get("healthy_revision") != applied or not since:
        since = result.at
    if since != fleet.get("healthy_since") or applied != fleet.get("healthy_revision"):
        store.kv_update(FLEET_KEY, healthy_revision=applied, healthy_since=since)
    target = str(fleet.get("target") or "")
    return tf.FleetSample(
        host=settings.host_name,
        wave=wave,
        revision=applied,
        target=target,
        healthy_since=since,
        failed=bool(target) and fleet.get("failed_target") == target,
        last_success=store.last_success(),
        rollbacks=int(fleet.get("rollbacks", 0)),
        health_gate_failures=int(fleet.get("health_gate_failures", 0)),
    )


def textfile(
    config: MonitorConfig,
    store: Store,
    view: HostView,
    result: PassResult,
    db: FindingStore | None = None,
    fleet: tf.FleetSample | None = None,
) -> None:
    if config.textfile is None:
        return
    history = store.history(1)
    last = (
        tf.LastSync(
            history[0].started_at, history[0].duration_sec, history[0].result, history[0].revision
        )
        if history
        else None
    )
    units = [
        tf.UnitSample(
            unit=u.unit,
            active_state=u.active_state,
            drifted=bool(u.drift),
            n_restarts=u.n_restarts,
            starts=int(u.counters.get("starts", 0)),
            stops=int(u.counters.get("stops", 0)),
            crashes=int(u.counters.get("crashes", 0)),
            memory_bytes=u.memory,
        )
        for u in result.units
    ]
    findings = [
        tf.OpenFinding(f.finding.kind, f.finding.unit, f.finding.severity) for f in result.open
    ]
    text = tf.build(
        units,
        findings,
        last,
        pass_at=result.at,
        pass_duration_sec=result.duration_sec,
        watch=watch_figures(db) if db is not None else None,
        fleet=fleet,
    )
    tf.write(config.textfile, text)


def announce(
    settings: Settings,
    systemd: Systemd,
    db: FindingStore,
    opened: Sequence[StoredFinding],
    resolved: Sequence[StoredFinding],
    *,
    revision: str | None,
    at: float,
) -> tuple[dict[int, str], list[str]]:
    """Journal entries, diagnostics bundles and the webhook for findings that opened or
    resolved: the pass calls it once (the watch daemon calls its two halves, the second in
    a child). Returns the bundles written (finding id -> path) and warnings; an output that
    fails is a warning."""
    journal_findings(opened, resolved, revision)
    return outputs(settings, systemd, db, opened, resolved, at)


def journal_findings(
    opened: Sequence[StoredFinding], resolved: Sequence[StoredFinding], revision: str | None
) -> None:
    """One journal entry per finding that opened or resolved."""
    for f in opened:
        journal_finding(f, revision)
    for f in resolved:
        journal_resolved(f, revision)


def has_outputs(
    settings: Settings, opened: Sequence[StoredFinding], resolved: Sequence[StoredFinding]
) -> bool:
    """Whether :func:`outputs` may write anything: a bundle (a non-info finding opened) or
    the webhook (a URL, an event)."""
    return any(f.finding.severity != "info" for f in opened) or bool(
        settings.notify.url and (opened or resolved)
    )


def outputs(
    settings: Settings,
    systemd: Systemd,
    db: FindingStore,
    opened: Sequence[StoredFinding],
    resolved: Sequence[StoredFinding],
    at: float,
) -> tuple[dict[int, str], list[str]]:
    """Diagnostics bundles and the webhook (what :func:`announce` sends besides the
    journal): ({finding id: bundle path}, warnings), each warning logged."""
    written: dict[int, str] = {}
    warnings: list[str] = []
    try:
        written, more = bundles(settings, systemd, db, opened)
        warnings += more
    except Exception as exc:
        warnings.append(f"diagnostics: {exc}")
    try:
        text = webhook(settings, opened, resolved, at)
        warnings += [text] if text else []
    except Exception as exc:
        warnings.append(f"webhook: {exc}")
    for text in warnings:
        journal.event("monitor.warning", f"monitor output: {text}", priority=4)
    return written, warnings


def publish(
    settings: Settings,
    config: MonitorConfig,
    systemd: Systemd,
    db: FindingStore,
    store: Store,
    view: HostView,
    result: PassResult,
    started: float,
) -> None:
    """Every output of one pass, each on its own: one failing never stops the others."""
    written, warnings = announce(
        settings,
        systemd,
        db,
        result.opened,
        result.resolved,
        revision=result.revision,
        at=result.at,
    )
    result.bundles += written.values()
    result.warnings += warnings
    result.opened = [replace(f, bundle=written.get(f.id, f.bundle)) for f in result.opened]
    result.open = [replace(f, bundle=written.get(f.id, f.bundle)) for f in result.open]
    result.duration_sec = time.monotonic() - started
    try:
        textfile(config, store, view, result, db, fleet_sample(settings, store, result))
    except Exception as exc:
        journal.event(
            "monitor.warning",
            f"cannot write the monitor textfile '{config.textfile}': {exc}",
            priority=4,
        )
        result.warnings.append(f"textfile: {exc}")
