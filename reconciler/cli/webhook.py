"""``reconciler webhook``: serve the push webhook (socket-activated, or on --listen)."""

from __future__ import annotations

import argparse
from pathlib import Path

from reconciler.cli import _options

HELP = "serve the push webhook: a verified push starts gitops-sync.service"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="address to bind when not socket-activated (default 127.0.0.1:9420, "
        "or [webhook] listen)",
    )
    parser.add_argument(
        "--secret-file",
        metavar="PATH",
        help="shared secret for signatures/tokens (default: $CREDENTIALS_DIRECTORY/"
        "webhook-secret, then webhook_secret_file in the config)",
    )
    parser.add_argument("--ref", metavar="BRANCH", help="branch whose pushes start a sync")
    _options.add_settings(parser, source=False)


def run(args: argparse.Namespace) -> int:
    from reconciler.host import journal
    from reconciler.push import server

    journal.setup()
    settings = _options.settings(args)
    secret_file = Path(args.secret_file) if args.secret_file else None
    return server.serve(settings, listen=args.listen, secret_file=secret_file)
