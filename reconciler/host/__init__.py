"""The host's own services the reconciler talks to: journald (``journal``) and the
service manager's notify socket (``sd_notify``).

May import: ``reconciler.core``, ``reconciler.model``, ``reconciler.errors``, the standard library.
"""
