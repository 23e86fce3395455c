"""Tools for tests and the demo: the disposable systemd host (``sandbox``, and what it
leaves behind removed: ``teardown``) and ``reconciler demo`` (``demo``). Never imported
by the sync, the monitor or the jobs.

May import: ``runtime``, ``systemd``, ``store``, ``host``, ``core``, ``config``, ``model``,
``errors`` (the demo drives the CLI as a process, never ``cli`` itself).
"""
