"""``reconciler uninstall``: remove the reconciler's own units; state and backups stay."""

from __future__ import annotations

import argparse

from reconciler.cli import _options

HELP = "stop, disable and remove the reconciler's own units (keeps state and backups)"


def configure(parser: argparse.ArgumentParser) -> None:
    _options.add_settings(parser, source=False)


def run(args: argparse.Namespace) -> int:
    from reconciler import install, journal
    from reconciler import plan as plan_mod

    journal.setup()
    lines = plan_mod.describe(install.uninstall(_options.settings(args)))
    journal.event("install", f"uninstalled the reconciler's units: {len(lines)} actions")
    print("uninstalled: nothing to do" if not lines else "uninstalled:")
    for line in lines:
        print(f"  {line}")
    return 0
