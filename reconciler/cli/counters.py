"""``reconciler counters``: the per-unit start, stop and crash counters; ``--reset`` clears them."""

from __future__ import annotations

import argparse

from reconciler.cli import _options

HELP = "show the units' start/stop/crash counters, or clear them (--reset UNIT | --all)"


def configure(parser: argparse.ArgumentParser) -> None:
    _options.add_settings(parser, source=False)
    parser.add_argument(
        "--reset", nargs="?", const="", metavar="UNIT", help="clear this unit's counters"
    )
    parser.add_argument(
        "--all", action="store_true", help="clear every unit's counters (--reset --all, or alone)"
    )
    _options.add_json(parser)


def run(args: argparse.Namespace) -> int:
    from reconciler import monitor, runtime
    from reconciler.cli.events import unit_name
    from reconciler.errors import UsageError
    from reconciler.store.finding_store import FindingStore

    settings = _options.settings(args)
    store = runtime.open_store(settings)
    db = FindingStore(store.path, retention=monitor.load_config(settings).retention)
    try:
        if args.reset is not None or args.all:
            if args.all and args.reset:
                raise UsageError("counters: --reset UNIT or --all, not both")
            if not args.all and not args.reset:
                raise UsageError("counters: --reset needs a UNIT (or --all)")
            units = None if args.all else [unit_name(args.reset)]
            done = db.reset_counters(units)
            if units and not done:
                raise UsageError(
                    f"cannot reset counters of '{units[0]}': the monitor has never seen it",
                    "reconciler counters lists the units it counts",
                )
            if args.json:
                _options.print_json({"reset": done})
            else:
                print(f"counters reset: {', '.join(done) if done else 'none kept yet'}")
            return 0
        counters = db.counters()
    finally:
        db.close()
        store.close()
    rows = [c.to_dict() for _, c in sorted(counters.items())]
    if args.json:
        _options.print_json(rows)
        return 0
    print(f"{'UNIT':<32} {'STARTS':>7} {'STOPS':>7} {'CRASHES':>7}  LAST EXIT")
    for c in rows:
        last = c["last_signal"] or ("" if c["last_exit_code"] is None else c["last_exit_code"])
        if not last and c["crashes"]:
            last = "unknown"  # the crash's exit was not seen (nor in the journal): no guess
        if c.get("last_result") not in (None, "", "success", "exit-code", "signal", "core-dump"):
            last = f"{last} ({c['last_result']})"  # watchdog, timeout: more than the signal
        print(f"{c['unit']:<32} {c['starts']:>7} {c['stops']:>7} {c['crashes']:>7}  {last}")
    return 0
