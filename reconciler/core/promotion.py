"""One rollout step decided from facts (pure): which wave ref moves, which waits, what halts.

The promoter (``reconciler.fleet``) gathers the facts, one ``ls-remote`` for the refs and a
few Prometheus queries for the hosts, and passes them here with ``now``; :func:`decide`
returns a :class:`Step` that says, per wave, advance / wait (why) / halt (why) / refused.
No git, no HTTP, no clock: every rule of the fleet contract is a row of
``tests/unit/test_promotion.py``.

The rules, in the order they are checked:

* ``pause`` held: every wave waits (its commit message says who and why).
* The first wave follows ``source``; wave N+1 follows wave N's target. A move is only ever a
  fast-forward (``descends``, worked out by the adapter with git), and wave N+1 is never
  ahead of wave N: a wave ref found ahead of its predecessor, or a first wave not on
  ``source``'s history, was moved by hand; the whole step is refused, nothing moves.
* A target named by the halt ref is held (only that target: a newer commit on ``source``
  is a new rollout).
* ``approve = true``: the wave moves only to a commit with a verified signed tag.
* Wave N+1 moves to wave N's target T when, of wave N's hosts, at least ``min_reporting``
  report T applied and healthy since ``now - soak_sec`` or earlier; it halts T when more
  than ``failure_budget`` of them failed T, or when a ``severity="page"`` alert fires on
  wave N (its ``host`` or ``wave`` label, or its ``instance`` mapped to a host through the
  reports) that T may have caused: its host runs T and it started after T got there
  (``caused_by``). A paging alert on wave N that started before (the revision T replaces,
  e.g. a bad commit whose revert is T) holds the wave without halting T. A host that does
  not report (offline, or never scraped) is *unknown*: never healthy, and harmless while
  the others are enough (``min_reporting`` < 1).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

SHA = re.compile(r"[0-9a-f]{40}")
# An alert that started this long before the target was healthy on its host (the health
# gate's settle time, a scrape, a rule evaluation) may still be the target's doing.
ATTRIBUTION_GRACE_SEC = 120.0
HALT_TRAILER = "Halted-Target"
MAX_HALTED = 20  # targets one halt commit keeps held (older halts are dropped)
_EPS = 1e-9


class Verdict(enum.Enum):
    CURRENT = "current"  # nothing to move: the wave is on what it follows
    ADVANCE = "advance"
    WAIT = "wait"
    HALT = "halt"
    REFUSED = "refused"  # the refs were moved by hand: nothing moves


@dataclass(frozen=True)
class WavePolicy:
    """One wave of ``inventory/rollout.toml``, its hosts resolved."""

    name: str
    hosts: tuple[str, ...]
    soak_sec: float = 300.0
    min_reporting: float = 0.9
    failure_budget: float = 0.0
    approve: bool = False


@dataclass(frozen=True)
class Report:
    """What Prometheus says of one host (an absent host is unknown, not a Report)."""

    host: str
    revision: str  # the applied commit
    target: str = ""  # what its wave ref pointed at when it last polled
    healthy_since: float = 0.0  # when ``revision`` last became healthy; 0 while unhealthy
    failed: frozenset[str] = frozenset()  # targets it tried and failed
    instance: str = ""  # Prometheus's ``instance`` label, to map alerts
    last_success: float = 0.0


@dataclass(frozen=True)
class Alert:
    name: str
    labels: Mapping[str, str]
    since: float = 0.0  # when it started firing (Prometheus activeAt, Alertmanager startsAt)


@dataclass(frozen=True)
class Refs:
    """The remote's refs as ``ls-remote`` showed them (commit ids)."""

    source: str
    waves: Mapping[str, str]  # wave name -> commit; a wave with no ref yet is absent
    paused: str | None = None  # the pause commit's message; None: not paused
    halted: Mapping[str, str] = field(default_factory=dict)  # target -> why


@dataclass(frozen=True)
class Facts:
    refs: Refs
    reports: Mapping[str, Report]  # by host
    alerts: Sequence[Alert] = ()
    descends: frozenset[tuple[str, str]] = frozenset()  # (new, old): new descends from old
    approved: frozenset[str] = frozenset()  # commits with a verified signed tag
    now: float = 0.0


@dataclass(frozen=True)
class Gate:
    """Wave N's hosts against its target: the counts a decision and ``fleet status`` use."""

    hosts: int
    applied: int  # on the target
    healthy: int  # on the target and healthy
    soaked: int  # healthy for soak_sec or more
    failed: int  # tried the target and failed
    unknown: int  # not reporting
    soak_left: float  # seconds until the next host has soaked (0: none soaking)
    slowest: str | None  # the host furthest from done
    slowest_why: str = ""


@dataclass(frozen=True)
class Decision:
    wave: str
    verdict: Verdict
    current: str | None  # the wave ref now (None: no ref yet)
    target: str | None  # what it would move to
    reason: str


@dataclass(frozen=True)
class Step:
    decisions: tuple[Decision, ...]

    @property
    def moves(self) -> dict[str, tuple[str | None, str]]:
        """wave -> (old, new) for every wave that advances; none when anything is refused."""
        if self.refused:
            return {}
        return {
            d.wave: (d.current, d.target)
            for d in self.decisions
            if d.verdict is Verdict.ADVANCE and d.target
        }

    @property
    def halts(self) -> dict[str, str]:
        """target -> why, for every target a gate halted."""
        if self.refused:
            return {}
        return {
            d.target: d.reason for d in self.decisions if d.verdict is Verdict.HALT and d.target
        }

    @property
    def refused(self) -> str | None:
        for d in self.decisions:
            if d.verdict is Verdict.REFUSED:
                return d.reason
        return None


def short(revision: str | None) -> str:
    return revision[:12] if revision else "none"


def share(count: int, total: int) -> str:
    return f"{count} of {total} host{'' if total == 1 else 's'}"


# ---- the gate -------------------------------------------------------------------------------


def gate(policy: WavePolicy, target: str, reports: Mapping[str, Report], now: float) -> Gate:
    """Count ``policy``'s hosts against ``target`` (a pure summary, no verdict)."""
    applied = healthy = soaked = failed = unknown = 0
    soak_left = math.inf
    ranked: list[tuple[tuple[int, float], str, str]] = []  # (rank, host, why): max = slowest
    for host in policy.hosts:
        report = reports.get(host)
        if report is None:
            unknown += 1
            ranked.append(((5, 0), host, "not reporting"))
            continue
        if target in report.failed:
            failed += 1
            ranked.append(((4, 0), host, f"failed {short(target)}"))
            continue
        if report.revision != target:
            ranked.append(((3, -report.last_success), host, f"on {short(report.revision)}"))
            continue
        applied += 1
        if report.healthy_since <= 0:
            ranked.append(((2, 0), host, "applied, not healthy"))
            continue
        healthy += 1
        left = report.healthy_since + policy.soak_sec - now
        if left <= _EPS:
            soaked += 1
            ranked.append(((0, report.healthy_since), host, "soaked"))
        else:
            soak_left = min(soak_left, left)
            ranked.append(((1, report.healthy_since), host, f"soaking, {left:.0f} s left"))
    slowest = max(ranked, default=None)
    return Gate(
        hosts=len(policy.hosts),
        applied=applied,
        healthy=healthy,
        soaked=soaked,
        failed=failed,
        unknown=unknown,
        soak_left=0.0 if soak_left is math.inf else soak_left,
        slowest=slowest[1] if slowest else None,
        slowest_why=slowest[2] if slowest else "",
    )


def needed(policy: WavePolicy) -> int:
    """Hosts that must have soaked for the wave to pass (``min_reporting`` of them)."""
    return max(0, math.ceil(policy.min_reporting * len(policy.hosts) - _EPS))


def allowed_failures(policy: WavePolicy) -> int:
    return max(0, math.floor(policy.failure_budget * len(policy.hosts) + _EPS))


def paging(
    policy: WavePolicy, alerts: Iterable[Alert], reports: Mapping[str, Report]
) -> list[Alert]:
    """The ``severity="page"`` alerts on this wave (by ``wave``, ``host`` or ``instance``)."""
    members = set(policy.hosts)
    by_instance = {r.instance: h for h, r in reports.items() if r.instance}
    found = []
    for alert in alerts:
        labels = alert.labels
        if labels.get("severity") != "page":
            continue
        host = labels.get("host") or by_instance.get(labels.get("instance", ""), "")
        if labels.get("wave") == policy.name or host in members:
            found.append(alert)
    return found


def caused_by(alert: Alert, target: str, policy: WavePolicy, reports: Mapping[str, Report]) -> bool:
    """Whether a paging alert on ``policy``'s wave may be ``target``'s doing: its host runs
    the target (for an alert naming only the wave: some host of it does) and it started
    firing after the target got there (less ``ATTRIBUTION_GRACE_SEC``). An alert still
    firing from the revision before (a revert on its way to the canaries) holds the wave but
    does not halt the revert; when either time is unknown, it is the target's doing."""
    labels = alert.labels
    by_instance = {r.instance: h for h, r in reports.items() if r.instance}
    host = labels.get("host") or by_instance.get(labels.get("instance", ""), "")
    if host in policy.hosts:
        report = reports.get(host)
        if report is None or report.revision != target:
            return False
        landed = report.healthy_since
    else:
        on = [reports[h] for h in policy.hosts if h in reports and reports[h].revision == target]
        if not on:
            return False
        landed = min((r.healthy_since for r in on if r.healthy_since > 0), default=0.0)
    if alert.since <= 0 or landed <= 0:
        return True
    return alert.since >= landed - ATTRIBUTION_GRACE_SEC


# ---- the step -------------------------------------------------------------------------------


def decide(waves: Sequence[WavePolicy], facts: Facts) -> Step:
    """One step: a :class:`Decision` per wave, in wave order."""
    refs = facts.refs
    refusal = _refusal(waves, facts)
    decisions = []
    for index, policy in enumerate(waves):
        current = refs.waves.get(policy.name)
        follows = refs.source if index == 0 else refs.waves.get(waves[index - 1].name)
        if refusal is not None:
            decisions.append(Decision(policy.name, Verdict.REFUSED, current, follows, refusal))
            continue
        decisions.append(_wave(waves, index, current, follows, facts))
    return Step(tuple(decisions))


def _refusal(waves: Sequence[WavePolicy], facts: Facts) -> str | None:
    """Why the refs cannot be trusted (a wave ref moved by hand), or None."""
    refs = facts.refs
    ahead, above = refs.source, "source"
    for policy in waves:
        current = refs.waves.get(policy.name)
        if current is None:
            continue  # no ref yet (a new wave): the next one is checked against the one before
        if current != ahead and (ahead, current) not in facts.descends:
            return (
                f"wave ref 'rollout/{policy.name}' ({short(current)}) is not behind "
                f"'{above}' ({short(ahead)}): it was moved by hand (backwards or aside)"
            )
        ahead, above = current, f"rollout/{policy.name}"
    return None


def _wave(
    waves: Sequence[WavePolicy], index: int, current: str | None, follows: str | None, facts: Facts
) -> Decision:
    policy = waves[index]
    refs = facts.refs

    def decision(verdict: Verdict, reason: str) -> Decision:
        return Decision(policy.name, verdict, current, follows, reason)

    if follows is None:
        return decision(Verdict.CURRENT, f"wave '{waves[index - 1].name}' has no ref yet")
    if follows == current:
        what = "source" if index == 0 else f"wave '{waves[index - 1].name}'"
        return decision(Verdict.CURRENT, f"on {short(current)}, as {what}")
    if refs.paused is not None:
        return decision(Verdict.WAIT, f"paused: {refs.paused}")
    if follows in refs.halted:
        return decision(Verdict.WAIT, f"{short(follows)} is halted: {refs.halted[follows]}")
    if index > 0:
        previous = waves[index - 1]
        counts = gate(previous, follows, facts.reports, facts.now)
        pages = paging(previous, facts.alerts, facts.reports)
        if counts.failed > allowed_failures(previous):
            budget = f"{previous.failure_budget:.0%}"
            return decision(
                Verdict.HALT,
                f"{share(counts.failed, counts.hosts)} of wave '{previous.name}' failed "
                f"{short(follows)} (failure budget {budget})",
            )
        caused = [a for a in pages if caused_by(a, follows, previous, facts.reports)]
        if caused:
            names = ", ".join(sorted({a.name for a in caused}))
            return decision(
                Verdict.HALT,
                f"paging alert {names} firing on wave '{previous.name}' at {short(follows)}",
            )
        if pages:  # firing since before the target reached those hosts: not its doing
            names = ", ".join(sorted({a.name for a in pages}))
            return decision(
                Verdict.WAIT,
                f"paging alert {names} firing on wave '{previous.name}' from before "
                f"{short(follows)} (not on a host running it, or older than it there): "
                "waiting for it to clear",
            )
        want = needed(previous)
        if counts.soaked < want:
            return decision(Verdict.WAIT, _waiting(previous, follows, counts, want))
    if policy.approve and follows not in facts.approved:
        return decision(Verdict.WAIT, f"needs approval: no verified signed tag on {short(follows)}")
    if index > 0:
        counts = gate(waves[index - 1], follows, facts.reports, facts.now)
        why = f"{share(counts.soaked, counts.hosts)} of wave '{waves[index - 1].name}' soaked"
    else:
        why = "follows source"
    return decision(Verdict.ADVANCE, f"{short(current)} -> {short(follows)}: {why}")


def _waiting(previous: WavePolicy, target: str, counts: Gate, want: int) -> str:
    parts = [f"{counts.soaked} of {want} needed hosts of wave '{previous.name}' soaked"]
    parts.append(f"on {short(target)}")
    if counts.unknown:
        parts.append(f"{counts.unknown} not reporting")
    if counts.healthy > counts.soaked:
        parts.append(f"next soaked in {counts.soak_left:.0f} s")
    if counts.applied < counts.hosts - counts.unknown:
        parts.append(f"{counts.hosts - counts.unknown - counts.applied} not on it yet")
    return ", ".join(parts)


# ---- the control refs' messages -------------------------------------------------------------


def halt_message(halts: Mapping[str, str], held: Mapping[str, str], by: str) -> str:
    """The halt commit's message: the new halts first, older ones kept (up to MAX_HALTED).

    The subject says what halted and why; one ``Halted-Target: <commit> <why>`` trailer per
    held target, so that a later halt does not release an earlier one.
    """
    merged = dict(halts)
    for target, why in held.items():
        merged.setdefault(target, why)
    first, why = next(iter(halts.items()))
    lines = [f"rollout halted at {short(first)}: {why}", "", f"Halted-By: {by}"]
    for target, reason in list(merged.items())[:MAX_HALTED]:
        lines.append(f"{HALT_TRAILER}: {target} {_one_line(reason)}")
    return "\n".join(lines) + "\n"


def parse_halt(message: str) -> dict[str, str]:
    """target -> why, from a halt commit's message (a hand-made one: its first 40-hex word)."""
    held: dict[str, str] = {}
    for line in message.splitlines():
        key, _, rest = line.partition(":")
        if key.strip() == HALT_TRAILER:
            target, _, why = rest.strip().partition(" ")
            if SHA.fullmatch(target):
                held[target] = why or "halted"
    if not held:  # written by hand: any full commit id in it is held
        for word in re.findall(r"\b[0-9a-f]{40}\b", message):
            held.setdefault(word, _one_line(message.splitlines()[0] if message else "halted"))
    return held


def pause_message(reason: str, by: str) -> str:
    return f"rollout paused: {_one_line(reason)}\n\nPaused-By: {by}\n"


def pause_reason(message: str) -> str:
    """What ``fleet status`` and a waiting wave say of a pause commit."""
    lines = message.splitlines()
    subject = lines[0].removeprefix("rollout paused: ") if lines else ""
    by = next((ln.partition(":")[2].strip() for ln in lines if ln.startswith("Paused-By:")), "")
    subject = subject or "no reason given"
    return f"{subject} (by {by})" if by else subject


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
