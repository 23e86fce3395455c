"""``reconciler plan``: what a sync would do, with a unified diff; touches nothing."""

from __future__ import annotations

import argparse

from reconciler.cli import _options
from reconciler.config import Settings

HELP = "show the actions and the unit-file diff a sync would apply (touches nothing)"


def configure(parser: argparse.ArgumentParser) -> None:
    _options.add_settings(parser)
    _options.add_json(parser)


def run(args: argparse.Namespace) -> int:
    from reconciler import reconcile

    settings = _options.settings(args)
    check_systemd(settings)
    outcome = reconcile.run(settings, dry_run=True)
    return show(outcome, as_json=args.json)


def check_systemd(settings: Settings) -> None:
    """Refuse at once when systemd does not answer: a plan needs it, and must then leave
    nothing behind (no state dir, no git cache)."""
    from reconciler import runtime

    runtime.connect(settings).close()


def show(outcome: object, *, as_json: bool) -> int:
    from reconciler.core import plan as plan_mod
    from reconciler.reconcile import Outcome, Result

    assert isinstance(outcome, Outcome)
    if as_json:
        _options.print_json(
            {
                "revision": outcome.revision,
                "resolved": outcome.resolved,
                "commit": outcome.commit.__dict__ if outcome.commit else None,
                "commits": [c.__dict__ for c in outcome.commits],
                "result": outcome.result.value,
                "message": outcome.message,
                "actions": outcome.actions,
                "notes": list(outcome.plan.notes),
                "diff": plan_mod.diff(outcome.plan),
                "merged": outcome.merged,
            }
        )
        return 0
    rev = (outcome.revision or "")[:12]
    if outcome.message:
        print(outcome.message)  # a revision marked bad: what a sync would do instead
    if outcome.result is Result.HELD:
        return 0
    for line in describe_commits(outcome):
        print(line)
    if outcome.plan.empty:
        print(f"revision {rev}: host already matches; nothing to do")
    else:
        print(f"revision {rev}: {_options.count(len(outcome.actions), 'action')}")
        for line in outcome.actions:
            print(f"  {line}")
    for note in outcome.plan.notes:
        print(f"note: {note}")
    text = plan_mod.diff(outcome.plan)
    if text:
        print()
        print(text, end="" if text.endswith("\n") else "\n")
    for unit, merged in outcome.merged.items():
        print()
        print(f"{unit} after this plan, as systemd will load it (systemctl cat {unit}):")
        print(merged, end="" if merged.endswith("\n") else "\n")
    return 0


def describe_commits(outcome: object) -> list[str]:
    """``commit <id> <subject> (<author>)``, ref resolution, and the commits since the applied."""
    from reconciler.reconcile import Outcome

    assert isinstance(outcome, Outcome)
    lines = []
    if outcome.commit:
        c = outcome.commit
        via = f" [{outcome.resolved}]" if outcome.resolved else ""
        lines.append(f"commit {c.revision[:12]}{via}: {c.subject} ({c.author})")
    if outcome.commits:
        lines.append(
            f"{_options.count(len(outcome.commits), 'commit')} since the applied revision:"
        )
        lines += [f"  {c.revision[:12]} {c.subject} ({c.author})" for c in outcome.commits]
    return lines
