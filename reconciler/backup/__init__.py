"""Volume and directory backups: config and retention (``policy``, pure), archives on disk
(``archive``), checking and restoring them (``restore``). The job is ``reconciler.jobs.backup``.
"""
