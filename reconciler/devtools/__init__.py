"""Tools for tests and the demo: the disposable systemd host (``sandbox``) and
``reconciler demo`` (``demo``). Never imported by the sync, the monitor or the jobs.
"""
