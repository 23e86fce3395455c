"""``reconciler promote``: one rollout step (moves the wave refs whose gate passed)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from reconciler.cli import _options

HELP = "one rollout step: move each wave ref whose gate passed (Prometheus), or halt"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="config file ([promote] section)")
    parser.add_argument("--repo", metavar="URL", help="config repository (default: [promote] repo)")
    parser.add_argument("--state-dir", metavar="DIR", help="default /var/lib/reconciler")
    parser.add_argument("--dry-run", action="store_true", help="decide and say; move nothing")
    _options.add_json(parser)


def run(args: argparse.Namespace) -> int:
    from reconciler.fleet import promoter

    settings = _options.settings(args)
    step = promoter.Promoter(settings, repo=args.repo)
    outcome = step.step(dry_run=args.dry_run)
    promoter.record(outcome, settings)
    view = outcome.view
    if args.json:
        _options.print_json(as_json(outcome))
    else:
        verb = "would move" if args.dry_run else "moved"
        for decision in view.step.decisions:
            print(promoter.describe(decision))
        moved = ", ".join(f"{w} -> {new[:12]}" for w, (_, new) in outcome.moved.items())
        print(f"{verb}: {moved}" if moved else "nothing to move")
    if outcome.halted:
        prefix = "would halt: " if args.dry_run else ""
        print(
            f"reconciler promote: {prefix}{promoter.halted_line(outcome.halted)}", file=sys.stderr
        )
        return 0 if args.dry_run else 1
    return 0


def as_json(outcome: Any) -> dict[str, Any]:
    view = outcome.view
    refs = view.facts.refs
    return {
        "source": view.source,
        "source_revision": refs.source,
        "paused": refs.paused,
        "halted_targets": dict(refs.halted),
        "waves": [
            {
                "wave": d.wave,
                "verdict": d.verdict.value,
                "current": d.current,
                "target": d.target,
                "reason": d.reason,
            }
            for d in view.step.decisions
        ],
        "moved": {w: [old, new] for w, (old, new) in outcome.moved.items()},
        "halted": outcome.halted,
        "dry_run": outcome.dry_run,
        "timings": {k: round(v, 4) for k, v in view.timings.items()},
    }
