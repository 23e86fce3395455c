"""``reconciler fleet status|pause|resume``: the rollout's waves at a glance; hold them all."""

from __future__ import annotations

import argparse
from typing import Any

from reconciler.cli import _options

HELP = "the rollout's waves: status (per wave: target, hosts applied/healthy/failed), pause, resume"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = sub.add_parser("status", help="per wave: target revision, hosts, the slowest host")
    pause = sub.add_parser("pause", help="hold every wave (writes rollout-control/pause)")
    resume = sub.add_parser("resume", help="lift the pause (and with --halt, the halt)")
    for cmd in (status, pause, resume):
        cmd.add_argument("--config", metavar="PATH", help="config file ([promote] section)")
        cmd.add_argument("--repo", metavar="URL", help="config repository")
        cmd.add_argument("--state-dir", metavar="DIR", help="default /var/lib/reconciler")
    _options.add_json(status)
    pause.add_argument("--reason", default="paused by an operator", help="why, for everyone")
    resume.add_argument("--halt", action="store_true", help="also lift the halt ref")


def run(args: argparse.Namespace) -> int:
    from reconciler.fleet import promoter
    from reconciler.host import journal

    settings = _options.settings(args)
    fleet = promoter.Promoter(settings, repo=args.repo)
    if args.action == "pause":
        wrote, reason = fleet.pause(args.reason)
        if wrote:
            journal.event("rollout.paused", f"rollout paused: {reason}", priority=5, echo=False)
        print(f"rollout paused: {reason}" if wrote else f"rollout already paused: {reason}")
        return 0
    if args.action == "resume":
        lifted = fleet.resume(halt=args.halt)
        if lifted:
            what = " and ".join(lifted)
            journal.event(
                "rollout.resumed", f"rollout resumed: {what} lifted", priority=5, echo=False
            )
            print(f"rollout resumed: {what} lifted")
        else:
            print("rollout not paused: nothing to lift")
        return 0
    view = fleet.read()
    rows = view.gates()
    if args.json:
        _options.print_json(as_json(view, rows))
        return 0
    refs = view.facts.refs
    print(f"source {view.source}: {refs.source[:12]}")
    if refs.paused:
        print(f"PAUSED: {refs.paused}")
    for target, why in refs.halted.items():
        print(f"HALTED at {target[:12]}: {why}")
    for row in rows:
        target = row["target"][:12] if row["target"] else "(no ref)"
        counts = (
            f"{row['applied']}/{row['hosts']} applied, {row['healthy']} healthy, "
            f"{row['failed']} failed, {row['unknown']} unknown"
        )
        slowest = f"; slowest {row['slowest']} ({row['slowest_why']})" if row["slowest"] else ""
        print(f"{row['wave']}: {target}: {counts}{slowest}; next: {row['next']}: {row['reason']}")
    return 0


def as_json(view: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    refs = view.facts.refs
    return {
        "source": view.source,
        "source_revision": refs.source,
        "paused": refs.paused,
        "halted": dict(refs.halted),
        "waves": rows,
    }
