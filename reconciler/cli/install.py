"""``reconciler install``: write the host config and install the reconciler's own units."""

from __future__ import annotations

import argparse

from reconciler.cli import _options
from reconciler.config import Settings

HELP = (
    "write /etc/reconciler/config.toml and the webhook secret (once), and install, enable "
    "and start the own timers, webhook socket and watch service"
)


def configure(parser: argparse.ArgumentParser) -> None:
    _options.add_settings(parser)
    parser.add_argument(
        "--follow",
        action="store_true",
        help="only bring the installed units in line with the host config, then start a "
        "sync (what reconciler-config.service runs when the config changes)",
    )
    _options.add_json(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reconciler.config import DEFAULT_CONFIG
    from reconciler.core import plan as plan_mod
    from reconciler.host import journal
    from reconciler.reconcile import install

    journal.setup()
    settings = _options.settings(args)
    if args.follow:
        return follow(settings)
    config_path = Path(args.config) if args.config else DEFAULT_CONFIG
    done = install.install(settings, config_path=config_path)
    lines = plan_mod.describe(done.plan)
    journal.event(
        "install", f"installed the reconciler's units: {_options.count(len(lines), 'action')}"
    )
    if args.json:
        _options.print_json(
            {
                "actions": lines,
                "config_written": done.config_written,
                "secret_written": done.secret_written,  # the path only, never the secret
                "notes": list(done.notes),
                "dbus_calls": dict(done.dbus_calls),
                "mutating_dbus_calls": done.mutating_calls,
            }
        )
        return 0
    for path, what in ((done.config_written, "config"), (done.secret_written, "webhook secret")):
        if path:
            print(f"wrote {what} {path} (mode 0600)")
    print("installed: nothing to do" if not lines else "installed:")
    for line in lines:
        print(f"  {line}")
    for note in done.notes:
        print(f"note: {note}")
    return 0


def follow(settings: Settings) -> int:
    """Follow the config, then start the sync whatever came of it: the sync runs under the
    units just written (its own new files roots writable), and the config change asked for
    one. Exit 1 when the units could not follow (logged; the sync retries it first)."""
    from reconciler.cli.sync import follow_config
    from reconciler.errors import SystemdError
    from reconciler.host import journal
    from reconciler.push.service import start_unit
    from reconciler.reconcile.install import SYNC

    followed = follow_config(settings) is not False
    _mark_path(settings)
    try:
        start_unit(settings.bus, SYNC)  # no wait: this unit is After= the sync, never the other way
    except SystemdError as exc:
        journal.event(
            "install", f"cannot start {SYNC} after following the config: {exc}", priority=4
        )
        return 1
    return 0 if followed else 1


def _mark_path(settings: Settings) -> None:
    """Started by ``reconciler-config.path`` for a config change (not a stale detail of an
    earlier one, not by hand): the sync this starts is recorded as ``path``."""
    import contextlib
    import os

    from reconciler.cli.sync import last_sync_at
    from reconciler.push import trigger as marks

    watched = os.environ.get("TRIGGER_PATH", "")
    try:
        changed_at = os.stat(watched).st_mtime if watched else None
    except OSError:
        changed_at = None
    if marks.of_unit(os.environ, None, last_sync_at(settings), changed_at) == "path":
        with contextlib.suppress(OSError):  # the sync still runs, recorded as manual
            marks.mark(settings.state_dir, "path")
