"""``reconciler validate``: render and verify a working tree's units (a config repo's CI)."""

from __future__ import annotations

import argparse

HELP = (
    "render and verify (systemd-analyze, offline) a config repository's units for one or "
    "every host; no systemd, no root, nothing written. A drop-in is verified with the unit "
    "it adjusts (the repository's, else this machine's; a note says when neither is here). "
    "Config files: protected paths are refused; each host's files_roots live in its own "
    "config and are not checked here. Exit 0 all valid, 1 refused, 2 usage"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir", nargs="?", default=".", metavar="DIR", help="the repository's root (default .)"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--host", metavar="NAME", action="append", help="only this host (repeat)")
    which.add_argument(
        "--all-hosts", action="store_true", help="every host of the inventory (the default)"
    )
    parser.add_argument("--json", action="store_true", help="print data as JSON")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reconciler.cli import _options
    from reconciler.errors import ReconcilerError, RenderError
    from reconciler.reconcile.validate import check_tree

    try:
        results = check_tree(Path(args.dir), args.host)
    except ReconcilerError as exc:
        if args.json:  # a CI job parsing stdout still gets a document; the line goes to stderr
            _options.print_json({"dir": args.dir, "valid": False, "error": str(exc), "hosts": []})
        raise
    failed = [r for r in results if r.error]
    if args.json:
        _options.print_json(
            {
                "dir": args.dir,
                "valid": not failed,
                "hosts": [
                    {"host": r.host, "valid": r.error is None, "units": list(r.units),
                     "files": list(r.files), "error": r.error, "notes": list(r.notes)}
                    for r in results
                ],
            }
        )  # fmt: skip
        return 1 if failed else 0
    for r in results:
        if r.error is None:
            units = _options.count(len(r.units), "unit")
            files = f", {_options.count(len(r.files), 'config file')}" if r.files else ""
            print(f"ok    {r.host}: {units} ({', '.join(r.units) or 'none'}){files}")
            for note in r.notes:
                print(f"      note: {note}")
        else:
            print(f"FAIL  {r.host}: {r.error}")
    if failed:
        more = f" (and {_options.count(len(failed) - 1, 'more host')})" if len(failed) > 1 else ""
        raise RenderError(f"host '{failed[0].host}': {failed[0].error}{more}")
    return 0
