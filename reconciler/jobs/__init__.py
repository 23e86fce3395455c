"""The scheduled oneshot jobs: host metrics (``metrics``), the HTTP ETL sync (``etl``),
volume backups (``backup``). Each provides ``run_job(settings) -> int``.

May import: ``runtime``, ``systemd``, ``store``, ``host``, ``core``, ``config``, ``model``,
``errors``, requests. Never ``reconcile``, ``monitor`` or ``push`` (siblings) nor ``cli``.
"""
