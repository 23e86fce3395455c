"""``reconciler job metrics|backup|etl``: the scheduled oneshot jobs (run by their timers)."""

from __future__ import annotations

import argparse
import importlib

from reconciler.cli import _options

HELP = "run one scheduled job: metrics, backup or etl"
JOBS = {
    "metrics": "sample host metrics",
    "backup": "back up volumes",
    "etl": "trigger the ETL sync",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(JOBS), help="which job")
    _options.add_settings(parser, source=False)


def run(args: argparse.Namespace) -> int:
    from reconciler.host import journal

    journal.setup()
    settings = _options.settings(args)
    module = importlib.import_module(f"reconciler.jobs.{args.name}")
    code: int = module.run_job(settings)
    return code
