"""The sync's verify step, the health gate (talks to systemd over D-Bus).

A long-running unit is healthy once it has stayed active with the same InvocationID and
NRestarts for a settle period: a crash-looping service is briefly "active" between
crashes, so one look is not enough. A oneshot is healthy once it finished with success
(or stays active with RemainAfterExit=yes). Every other kind is read the same way, since
systemd says ``active`` for what each means by up: a socket listening (or running its
service), a mount mounted, a path or timer waiting, a target reached. A unit that does not
get there within its ``timeout_sec`` fails the gate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from reconciler.model import LiveUnit, Plan
from reconciler.reconcile.apply import ApplyResult
from reconciler.reconcile.hooks import Monitoring
from reconciler.reconcile.outcome import Reason, Unhealthy

if TYPE_CHECKING:
    from reconciler.store.sync_store import Store

log = logging.getLogger("reconciler")


class UnitReader(Protocol):
    def read_units(self, names: Sequence[str]) -> dict[str, LiveUnit]: ...


@dataclass
class _Watch:
    deadline: float
    settle: float
    stable_since: float | None = None
    identity: tuple[str, int] | None = None
    last: LiveUnit | None = None


def describe_state(live: LiveUnit | None) -> str:
    if live is None:
        return "unknown"
    text = f"{live.active_state}/{live.sub_state}"
    if live.result and live.result != "success":
        text += f", result {live.result}"
    if live.n_restarts:
        text += f", {live.n_restarts} restarts"
    return text


def wait_healthy(
    systemd: UnitReader,
    checks: Sequence[tuple[str, float]],
    *,
    settle_sec: float = 2.0,
    poll_sec: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_read: Callable[[dict[str, LiveUnit]], None] | None = None,
) -> dict[str, Unhealthy]:
    """Return ``{unit: reason}`` for every unit that failed its gate (empty: all healthy).

    ``on_read`` sees every read: the sync records them, so the restarts of a unit that
    crash-loops during the gate are counted before the rollback removes it.
    """
    start = clock()
    pending = {
        unit: _Watch(deadline=start + timeout, settle=min(settle_sec, timeout / 3))
        for unit, timeout in checks
    }
    failed: dict[str, Unhealthy] = {}
    while pending:
        now = clock()
        live = systemd.read_units(sorted(pending))
        if on_read is not None:
            on_read(live)
        for unit in list(pending):
            watch = pending[unit]
            state = live.get(unit)
            watch.last = state
            verdict = _judge(watch, state, now)
            if verdict is True:
                del pending[unit]
            elif isinstance(verdict, Unhealthy):
                failed[unit] = verdict
                del pending[unit]
            elif now >= watch.deadline:
                timeout = watch.deadline - start
                detail = f"{timeout:g}s ({describe_state(state)})"
                failed[unit] = Unhealthy(Reason.TIMEOUT, detail)
                del pending[unit]
        if pending:
            sleep(poll_sec)
    return failed


def _judge(watch: _Watch, live: LiveUnit | None, now: float) -> bool | Unhealthy | None:
    """True: healthy; Unhealthy: failed, and why; None: not decided yet."""
    if live is None or live.load_state != "loaded":
        return Unhealthy(Reason.NOT_LOADED, f"({live.load_state if live else 'unknown'})")
    if live.active_state == "failed":
        return Unhealthy(Reason.FAILED, f"({describe_state(live)})")
    if live.service_type == "oneshot" and live.active_state == "inactive":
        if live.result == "success" and live.invocation_id:
            return True
        return Unhealthy(Reason.FINISHED, live.result) if live.invocation_id else None
    if live.active_state != "active":
        watch.stable_since = None
        return None
    identity = (live.invocation_id, live.n_restarts)
    if identity != watch.identity:
        watch.identity, watch.stable_since = identity, now
        return None
    assert watch.stable_since is not None
    return True if now - watch.stable_since >= watch.settle else None


def gate(
    plan: Plan,
    applied: ApplyResult,
    systemd: UnitReader,
    store: Store,
    monitoring: Monitoring,
    carried: Sequence[tuple[str, float]] = (),
) -> dict[str, Unhealthy]:
    """The sync's verify step: ``{unit: why}`` of the gated units that failed (empty: healthy).

    ``carried``: the checks an interrupted sync of the same revision left unfinished
    (``interrupted``), gated too.

    A gated unit whose start job failed fails at once; the others are waited on, each read
    folded into the monitor's counters. A failed job of a unit without a gate is logged,
    never rolled back.
    """
    all_checks = [*plan.health_checks]
    all_checks += [c for c in carried if c[0] not in {u for u, _ in all_checks}]
    gated = {unit for unit, _ in all_checks}
    failed = {
        u: Unhealthy(Reason.START_JOB, r) for u, r in applied.failed_jobs.items() if u in gated
    }
    checks = [(u, t) for u, t in all_checks if u not in failed]
    if checks:
        with monitoring.recording(store) as on_read:
            failed.update(wait_healthy(systemd, checks, on_read=on_read))
    for unit, result_text in applied.failed_jobs.items():
        if unit not in gated:
            log.warning("%s: start job %s (no health gate: not rolled back)", unit, result_text)
    return failed
