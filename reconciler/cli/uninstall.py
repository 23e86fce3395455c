"""``reconciler uninstall``: remove the reconciler's own units; state and backups stay."""

from __future__ import annotations

import argparse

from reconciler.cli import _options

HELP = (
    "stop, disable and remove the reconciler's own units "
    "(keeps state, config, the webhook secret and backups)"
)


def configure(parser: argparse.ArgumentParser) -> None:
    _options.add_settings(parser, source=False)
    _options.add_json(parser)


def run(args: argparse.Namespace) -> int:
    from reconciler.core import plan as plan_mod
    from reconciler.host import journal
    from reconciler.reconcile import install

    journal.setup()
    done = install.uninstall(_options.settings(args))
    lines = plan_mod.describe(done.plan)
    journal.event(
        "install", f"uninstalled the reconciler's units: {_options.count(len(lines), 'action')}"
    )
    if args.json:
        _options.print_json(
            {
                "actions": lines,
                "dbus_calls": dict(done.dbus_calls),
                "mutating_dbus_calls": done.mutating_calls,
            }
        )
        return 0
    print("uninstalled: nothing to do" if not lines else "uninstalled:")
    for line in lines:
        print(f"  {line}")
    return 0
