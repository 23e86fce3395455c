"""``reconciler job metrics|backup|etl``: the scheduled oneshot jobs (run by their timers)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os

from reconciler.cli import _options

HELP = "run one scheduled job: metrics, backup or etl (no name: list them)"
JOBS = {
    "metrics": "sample host metrics (metrics-sample.timer, every minute)",
    "backup": "back up volumes ([backup]; volume-backup.timer, daily)",
    "etl": "trigger the ETL sync ([etl]; reading-sync.timer, daily)",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", choices=sorted(JOBS), help="which job")
    _options.add_settings(parser, source=False)


class _Summary(logging.Handler):
    """Keeps the message of the job's last ``job.*`` journal event: its one-line summary."""

    def __init__(self) -> None:
        super().__init__()
        self.line: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None) or {}
        if str(fields.get("RECONCILER_EVENT", "")).startswith("job."):
            self.line = record.getMessage()


def run(args: argparse.Namespace) -> int:
    from reconciler.host import journal

    if args.name is None:
        for name, what in JOBS.items():
            print(f"{name:<8} {what}")
        return 0
    journal.setup()
    settings = _options.settings(args)
    module = importlib.import_module(f"reconciler.jobs.{args.name}")
    summary = _Summary()
    logger = logging.getLogger(journal.LOGGER)
    logger.addHandler(summary)
    try:
        code: int = module.run_job(settings)
    finally:
        logger.removeHandler(summary)
    # The summary is a journal entry; printed too, unless stdout is the journal already
    # (a timer's run: the same line twice there).
    if summary.line and not journal.stderr_is_journal(os.environ.get("JOURNAL_STREAM"), 1):
        print(summary.line)
    return code
