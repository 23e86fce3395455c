"""``reconciler monitor``: one monitoring pass (drift, restart patterns, findings, outputs)."""

from __future__ import annotations

import argparse
import time

from reconciler.cli import _options

HELP = "one monitoring pass: drift and restart patterns; findings recorded, logged and exported"


def configure(parser: argparse.ArgumentParser) -> None:
    _options.add_settings(parser, source=False)
    _options.add_json(parser)


def run(args: argparse.Namespace) -> int:
    from reconciler import monitor
    from reconciler.host import journal

    journal.setup()
    result = monitor.run_pass(_options.settings(args))
    if args.json:
        _options.print_json(result.to_dict())
        return 0
    drifted = len({d.unit for d in result.drift})
    print(
        f"monitor pass: {_options.count(len(result.units), 'managed unit')}, {drifted} drifted, "
        f"{_options.count(len(result.open), 'finding')} open ({len(result.opened)} new, "
        f"{len(result.resolved)} resolved) in {result.duration_sec:.2f}s"
    )
    new = {f.id for f in result.opened}
    for f in result.open:
        tag = "NEW " if f.id in new else "open"
        print(f"  {tag} {f.finding.severity:<8} {f.finding.kind:<18} {f.finding.summary}")
        if f.impact:
            hits = ", ".join(i.unit + (" (high impact)" if i.high else "") for i in f.impact)
            print(f"       impact: {hits}")
        if f.bundle:
            print(f"       diagnostics: {f.bundle}")
    for f in result.resolved:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(f.finding.first_seen))
        print(f"  resolved {f.finding.kind} on {f.finding.unit} (open since {since} UTC)")
    for warning in result.warnings:
        print(f"  warning: {warning}")
    return 0
