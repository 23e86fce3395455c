"""The scheduled oneshot jobs. Each module provides ``run_job(settings) -> int``."""
