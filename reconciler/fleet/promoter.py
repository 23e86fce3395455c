"""One rollout step, and the fleet's state at a glance (talks to git and Prometheus).

A step reads as its parts: the refs (one ``ls-remote``; a fetch only for commits the cache
lacks) -> the rollout definition at the source tip -> the hosts' reports and paging alerts
(one Prometheus query) -> the pure decision (``core.promotion.decide``) -> one atomic
compare-and-swap push of the wave refs that advance and of the halt ref -> journald and the
notification webhook. Anything that cannot be read stops the step before the push: nothing
moves, nothing is halted. No state of its own: the refs are the state, so any machine (a
timer, an operator, the config repository's CI) may run a step, and two at once cannot both
move a ref.
"""

from __future__ import annotations

import getpass
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.config import DEFAULT_CONFIG, Settings
from reconciler.core import promotion

# the names of the contract, from the one module that defines them (pydantic comes with it,
# ~170 ms: every command of this package reads or writes the rollout's refs)
from reconciler.core.inventory import HOSTS_FILE
from reconciler.core.promotion import Facts, Refs, Step, Verdict, WavePolicy
from reconciler.core.rollout_refs import (
    CONTROL_PREFIX,
    HALT_REF,
    PAUSE_REF,
    ROLLOUT_FILE,
    WAVE_PREFIX,
)
from reconciler.errors import NoRolloutError, RolloutError, UsageError
from reconciler.fleet.remote import Remote, Update


@dataclass
class View:
    """Everything a step or ``fleet status`` read, and what the core made of it."""

    source: str  # the branch name
    waves: tuple[WavePolicy, ...]
    facts: Facts
    step: Step
    halt_commit: str | None
    pause_commit: str | None
    timings: dict[str, float] = field(default_factory=dict)

    def gates(self) -> list[dict[str, Any]]:
        """Per wave: its target and its hosts against it (``fleet status``)."""
        rows = []
        for policy, decision in zip(self.waves, self.step.decisions, strict=True):
            target = self.facts.refs.waves.get(policy.name)
            counts = promotion.gate(policy, target or "", self.facts.reports, self.facts.now)
            rows.append(
                {
                    "wave": policy.name,
                    "target": target,
                    "hosts": counts.hosts,
                    "applied": counts.applied if target else 0,
                    "healthy": counts.healthy if target else 0,
                    "failed": counts.failed if target else 0,
                    "unknown": counts.unknown,
                    "soaked": counts.soaked if target else 0,
                    "slowest": counts.slowest if counts.slowest_why != "soaked" else None,
                    "slowest_why": counts.slowest_why if counts.slowest_why != "soaked" else "",
                    "next": decision.verdict.value,
                    "reason": decision.reason,
                }
            )
        return rows


@dataclass
class Outcome:
    view: View
    moved: dict[str, tuple[str | None, str]]
    halted: dict[str, str]
    dry_run: bool


class Promoter:
    """The promoter of one config repository, from ``[promote]`` of the host config."""

    def __init__(self, settings: Settings, *, repo: str | None = None) -> None:
        section = settings.promote
        url = repo or section.repo or settings.repo
        if not url:
            raise UsageError(
                "cannot promote: no config repository configured",
                f"set repo in [promote] (or at the top) of {settings.path or DEFAULT_CONFIG}",
            )
        self.settings = settings
        self.section = section
        cache = section.cache_dir or settings.state_dir / "promote"
        self.remote = Remote(url, Path(cache), section.timeout_sec)
        self.by = f"{getpass.getuser()}@{socket.gethostname()}"

    def _prometheus(self) -> Any:
        from reconciler.fleet import prometheus

        if not self.section.prometheus_url:
            raise UsageError(
                "cannot promote: no Prometheus configured",
                f"set prometheus_url in [promote] of {self.settings.path or DEFAULT_CONFIG}",
            )
        return prometheus.Client(
            self.section.prometheus_url,
            alertmanager=self.section.alertmanager_url,
            timeout=self.section.timeout_sec,
            max_bytes=int(self.section.max_response_mb * (1 << 20)),
        )

    # ---- reading --------------------------------------------------------------------------

    def read(self, now: float | None = None) -> View:
        """The refs, the rollout definition, the hosts' reports, and the decision on them."""
        timings: dict[str, float] = {}
        mark = time.monotonic()
        self.remote.ensure()
        refs = self.remote.list_refs()
        timings["ls_remote"] = time.monotonic() - mark
        source = (self.section.source or self.settings.ref).removeprefix("refs/heads/")
        wanted = [r for r in refs if r.startswith((WAVE_PREFIX, CONTROL_PREFIX))]
        mark = time.monotonic()
        rollout = self._rollout(refs, source, wanted)
        if rollout.source != source:  # rollout.toml names another branch: that one counts
            source = rollout.source
            rollout = self._rollout(refs, source, wanted)
        timings["definition"] = time.monotonic() - mark
        tip = refs[f"refs/heads/{source}"]
        waves = tuple(
            WavePolicy(
                w.name,
                tuple(rollout.hosts_of(w)),
                soak_sec=w.soak_sec,
                min_reporting=w.min_reporting,
                failure_budget=w.failure_budget,
                approve=w.approve,
            )
            for w in rollout.waves
        )
        wave_refs = {
            w.name: refs[WAVE_PREFIX + w.name] for w in waves if WAVE_PREFIX + w.name in refs
        }
        pause_commit, halt_commit = refs.get(PAUSE_REF), refs.get(HALT_REF)
        paused = promotion.pause_reason(self.remote.message(pause_commit)) if pause_commit else None
        halted = promotion.parse_halt(self.remote.message(halt_commit)) if halt_commit else {}
        mark = time.monotonic()
        descends = self._descends(tip, waves, wave_refs)
        approved = self._approved(refs, tip, waves, wave_refs)
        timings["git_local"] = time.monotonic() - mark
        mark = time.monotonic()
        reports, alerts = self._prometheus().fleet()
        timings["prometheus"] = time.monotonic() - mark
        facts = Facts(
            Refs(tip, wave_refs, paused=paused, halted=halted),
            reports,
            tuple(alerts),
            descends=frozenset(descends),
            approved=frozenset(approved),
            now=time.time() if now is None else now,
        )
        step = promotion.decide(waves, facts)
        return View(source, waves, facts, step, halt_commit, pause_commit, timings)

    def _rollout(self, refs: dict[str, str], source: str, control: list[str]) -> Any:
        from reconciler.core import rollout

        ref = f"refs/heads/{source}"
        if ref not in refs:
            raise RolloutError(
                f"cannot read the rollout of '{self.remote.plain}': no branch '{source}'",
                hint="set source in [promote] or in inventory/rollout.toml",
            )
        commits = [refs[ref], *(refs[r] for r in control)]
        if not self.remote.has(*commits):
            self.remote.fetch([ref, *control])
        files = {}
        for path in (ROLLOUT_FILE, HOSTS_FILE):
            data = self.remote.read_file(refs[ref], path)
            if data is not None:
                files[path] = data
        found = rollout.parse(files)
        if found is None:
            raise NoRolloutError(
                f"no rollout configured: branch '{source}' ({refs[ref][:12]}) of "
                f"'{self.remote.plain}' has no {ROLLOUT_FILE}",
                hint=f"without it hosts follow their ref; to roll out by waves, add {ROLLOUT_FILE}"
                " with [[rollout.waves]] (README: Fleets)",
            )
        return found

    def _descends(
        self, tip: str, waves: tuple[WavePolicy, ...], wave_refs: dict[str, str]
    ) -> set[tuple[str, str]]:
        """(new, old) pairs, for each wave ref against the one it follows."""
        pairs = set()
        ahead = tip
        for policy in waves:
            current = wave_refs.get(policy.name)
            if current is None:
                continue
            if current != ahead and self.remote.descends(ahead, current):
                pairs.add((ahead, current))
            ahead = current
        return pairs

    def _approved(
        self,
        refs: dict[str, str],
        tip: str,
        waves: tuple[WavePolicy, ...],
        wave_refs: dict[str, str],
    ) -> set[str]:
        """The candidates of ``approve`` waves that carry a signed tag verified by gpg_home."""
        gpg_home = self.settings.gpg_home
        candidates = set()
        for index, policy in enumerate(waves):
            follows = tip if index == 0 else wave_refs.get(waves[index - 1].name)
            if policy.approve and follows:
                candidates.add(follows)
        if not candidates or gpg_home is None:
            return set()
        tags = {
            ref.removesuffix("^{}"): sha
            for ref, sha in refs.items()
            if ref.startswith("refs/tags/") and ref.endswith("^{}") and sha in candidates
        }  # annotated tags only: a lightweight tag cannot be signed
        if tags and not self.remote.has(*(refs[t] for t in tags)):
            self.remote.fetch(sorted(tags))
        return {
            sha for tag, sha in tags.items() if self.remote.verify_tag(refs[tag], gpg_home) is None
        }

    # ---- acting ---------------------------------------------------------------------------

    def step(self, *, dry_run: bool = False, now: float | None = None) -> Outcome:
        """Read, decide, and (unless ``dry_run``) push the moves and the halt at once."""
        view = self.read(now)
        if view.step.refused:
            raise RolloutError(
                f"cannot promote: {view.step.refused}; nothing was moved",
                hint="move the wave ref forward again (never backwards); roll back with a "
                "revert commit on the source branch",
            )
        moves, halts = view.step.moves, view.step.halts
        if dry_run or (not moves and not halts):
            return Outcome(view, moves, halts, dry_run)
        updates = [Update(WAVE_PREFIX + wave, old, new) for wave, (old, new) in moves.items()]
        if halts:
            message = promotion.halt_message(halts, view.facts.refs.halted, self.by)
            commit = self.remote.commit(message, view.halt_commit)
            updates.append(Update(HALT_REF, view.halt_commit, commit))
        mark = time.monotonic()
        self.remote.push(updates)
        view.timings["push"] = time.monotonic() - mark
        return Outcome(view, moves, halts, dry_run)

    def pause(self, reason: str) -> tuple[bool, str]:
        """Write the pause ref; (False, its reason) when it is already there."""
        self.remote.ensure()
        refs = self.remote.list_refs()
        if PAUSE_REF in refs:
            if not self.remote.has(refs[PAUSE_REF]):
                self.remote.fetch([PAUSE_REF])
            return False, promotion.pause_reason(self.remote.message(refs[PAUSE_REF]))
        commit = self.remote.commit(promotion.pause_message(reason, self.by), None)
        self.remote.push([Update(PAUSE_REF, None, commit)])
        return True, promotion.pause_reason(promotion.pause_message(reason, self.by))

    def resume(self, *, halt: bool) -> list[str]:
        """Delete the pause ref (and with ``halt`` the halt ref): what was lifted."""
        self.remote.ensure()
        refs = self.remote.list_refs()
        updates = [Update(PAUSE_REF, refs[PAUSE_REF], None)] if PAUSE_REF in refs else []
        if halt and HALT_REF in refs:
            updates.append(Update(HALT_REF, refs[HALT_REF], None))
        self.remote.push(updates)
        return [u.ref.removeprefix(CONTROL_PREFIX) for u in updates]


def describe(decision: promotion.Decision) -> str:
    """One line per wave: ``canary: advance 1a2b3c4d5e6f -> ...``."""
    return f"{decision.wave}: {decision.verdict.value}: {decision.reason}"


def halted_line(halts: dict[str, str]) -> str:
    target, why = next(iter(halts.items()))
    more = f" (and {len(halts) - 1} more)" if len(halts) > 1 else ""
    return f"rollout halted at {target[:12]}: {why}{more}"


__all__ = ["Outcome", "Promoter", "Verdict", "View", "describe", "halted_line"]


def record(outcome: Outcome, settings: Settings) -> None:
    """journald entries for the step (none for a dry run), and the halt's notification."""
    if outcome.dry_run:
        return
    from reconciler.host import journal

    short = promotion.short
    for d in outcome.view.step.decisions:
        if d.wave in outcome.moved:
            old, new = outcome.moved[d.wave]
            journal.event(
                "rollout.advanced",
                f"wave '{d.wave}' advanced {short(old)} -> {short(new)}",
                priority=5, revision=new, wave=d.wave, echo=False,
            )  # fmt: skip
        elif d.verdict is Verdict.WAIT:
            journal.event(
                "rollout.waiting", f"wave '{d.wave}' waits: {d.reason}",
                revision=d.target, wave=d.wave, echo=False,
            )  # fmt: skip
        elif d.verdict is Verdict.HALT:
            journal.event(
                "rollout.halted", f"wave '{d.wave}' halted: {d.reason}",
                priority=3, revision=d.target, wave=d.wave, echo=False,
            )  # fmt: skip
    if outcome.halted:
        notify(settings, outcome)


def notify(settings: Settings, outcome: Outcome) -> bool:
    """The halt, through the monitor's signed webhook (``[promote] webhook``, else
    ``[notify]``); never raises."""
    from reconciler.monitor import alert_webhook

    section = settings.promote
    if section.webhook and section.webhook_secret_file:
        from reconciler.config import Notify

        config = alert_webhook.load_config(
            Notify(
                url=section.webhook,
                secret_file=section.webhook_secret_file,
                timeout_sec=min(section.timeout_sec, 5.0),
                retries=2,
                backoff_sec=0.5,
            )
        )
    else:
        config = alert_webhook.load_config(settings.notify)
    if config is None:
        return False
    events = [
        {
            "event": "rollout.halted",
            "target": target,
            "reason": why,
            "source": outcome.view.source,
            "waves": dict(outcome.view.facts.refs.waves),
        }
        for target, why in outcome.halted.items()
    ]
    return alert_webhook.send(config, socket.gethostname(), events)
