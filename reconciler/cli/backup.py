"""``reconciler backup list|verify|restore``: look at, check and restore backup archives."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reconciler.cli import _options

HELP = "list, verify or restore backup archives"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="list archives, oldest first")
    listing.add_argument("--source", metavar="NAME", help="only this source's archives")
    _options.add_json(listing)
    _options.add_settings(listing, source=False)
    verify = sub.add_parser("verify", help="check archive and member digests")
    verify.add_argument(
        "archive", nargs="?", metavar="ARCHIVE", help="archive name or path (default: all)"
    )
    _options.add_json(verify)
    _options.add_settings(verify, source=False)
    restore = sub.add_parser("restore", help="restore an archive byte for byte")
    restore.add_argument("archive", metavar="ARCHIVE", help="archive name or path")
    restore.add_argument(
        "--to", metavar="DIR", help="restore here (default: the source's original path)"
    )
    restore.add_argument(
        "--force", action="store_true", help="restore into a non-empty directory, overwriting"
    )
    _options.add_settings(restore, source=False)


def run(args: argparse.Namespace) -> int:
    from reconciler.core import backup_policy as policy

    settings = _options.settings(args)
    config = policy.from_section(settings.backup, settings.state_dir)
    if args.action == "list":
        return _list(config.dest, args.source, args.json)
    if args.action == "verify":
        return _verify(config.dest, args.archive, args.json)
    return _restore(config.dest, args.archive, Path(args.to) if args.to else None, args.force)


def find(dest: Path, name: str) -> Path:
    """An archive given by path, or by name under ``dest/<source>/``."""
    from reconciler.errors import JobError
    from reconciler.jobs.backup import archive

    parsed = archive.parse_name(Path(name).name)
    path = Path(name)
    if not path.is_file() and parsed and "/" not in name:
        path = dest / parsed[0] / name
    if not path.is_file() or parsed is None:
        raise JobError(
            f"cannot find archive '{name}' under '{dest}'", "see `reconciler backup list`"
        )
    return path


def _list(dest: Path, source: str | None, as_json: bool) -> int:
    from reconciler.jobs.backup import archive

    archives = archive.list_archives(dest, source)
    if as_json:
        _options.print_json([a.as_dict() for a in archives])
        return 0
    if not archives:
        print(f"no archives under {dest}")
        return 0
    width = max(len(a.name) for a in archives)
    print(f"{'SOURCE':<16} {'ARCHIVE':<{width}} {'CREATED (UTC)':<20} {'SIZE':>10}  STATUS")
    for a in archives:
        size = f"{a.size / (1 << 20):.1f} MiB"
        status = "complete" if a.complete else "incomplete"
        created = a.created.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{a.source:<16} {a.name:<{width}} {created:<20} {size:>10}  {status}")
    return 0


def _verify(dest: Path, name: str | None, as_json: bool) -> int:
    from reconciler.errors import JobError
    from reconciler.jobs.backup import archive, restore

    paths = [find(dest, name)] if name else [a.path for a in archive.list_archives(dest)]
    reports = [restore.verify(path) for path in paths]
    if as_json:
        _options.print_json([r.as_dict() for r in reports])
    else:
        for r in reports:
            if r.ok:
                print(f"ok    {r.archive.name} ({r.members} members, {r.bytes} bytes)")
            for problem in r.problems:
                print(f"BAD   {r.archive.name}: {problem}")
    bad = [r for r in reports if not r.ok]
    if bad:
        raise JobError(
            f"cannot verify archive '{bad[0].archive.name}': {bad[0].problems[0]}"
            + (f" ({len(bad)} of {len(reports)} archives bad)" if len(reports) > 1 else ""),
            "restore from another archive; the next backup run writes a fresh one",
        )
    if not reports and not as_json:
        print(f"no archives under {dest}")
    return 0


def _restore(dest: Path, name: str, to: Path | None, force: bool) -> int:
    from reconciler.errors import JobError
    from reconciler.jobs.backup import archive, restore

    path = find(dest, name)
    if to is None:
        try:
            manifest = json.loads(path.with_name(path.name + archive.MANIFEST).read_bytes())
            to = Path(manifest["source"]["path"])
        except (OSError, ValueError, KeyError, TypeError):
            raise JobError(
                f"cannot restore archive '{path.name}': its manifest does not name the source",
                "pass --to DIR",
            ) from None
    report = restore.restore(path, to, force=force)
    print(f"restored {report.members} members ({report.bytes} bytes) from {path.name} into {to}")
    return 0
