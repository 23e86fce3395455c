"""``reconciler events``: the kept starts, stops and crashes of the units, and who did them."""

from __future__ import annotations

import argparse

from reconciler.cli import _options

HELP = "list the units' state changes: start, stop, crash (exit code or signal), by whom"


def configure(parser: argparse.ArgumentParser) -> None:
    _options.add_settings(parser, source=False)
    parser.add_argument("unit", nargs="?", help="only this unit (web: web.service)")
    parser.add_argument(
        "--since", default="1h", metavar="AGE", help="how far back: 30m, 1h, 2d (default 1h)"
    )
    _options.add_json(parser)


def unit_name(text: str) -> str:
    """``web`` -> ``web.service``; a name with a unit suffix is kept."""
    return text if "." in text else f"{text}.service"


def run(args: argparse.Namespace) -> int:
    import time

    from reconciler import monitor, runtime
    from reconciler.core.hostmetrics import parse_duration
    from reconciler.store.finding_store import FindingStore

    since_sec = parse_duration(args.since, "--since")
    settings = _options.settings(args)
    store = runtime.open_store(settings)
    db = FindingStore(store.path, retention=monitor.load_config(settings).retention)
    try:
        unit = unit_name(args.unit) if args.unit else None
        events = db.events(time.time() - since_sec, unit)
    finally:
        db.close()
        store.close()
    if args.json:
        _options.print_json([e.to_dict() for e in events])
        return 0
    if not events:
        print(f"no events{f' of {unit}' if unit else ''} in the last {args.since}")
        return 0
    print(f"{'WHEN (UTC)':<20} {'UNIT':<32} {'EVENT':<6} {'BY':<9} DETAIL")
    for e in events:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.at))
        detail = []
        if e.exit_code is not None:
            detail.append(f"exit code {e.exit_code}")
        if e.signal:
            detail.append(f"signal {e.signal}")
        if e.estimated:
            detail.append("time estimated (not seen, inferred from NRestarts)")
        print(f"{when:<20} {e.unit:<32} {e.kind:<6} {e.by or '-':<9} {', '.join(detail)}")
    return 0
