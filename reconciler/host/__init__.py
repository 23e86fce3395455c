"""The host's own services the reconciler talks to: journald (``journal``), the service
manager's notify socket (``sd_notify``) and advisory file locks (``lock``).

May import: ``reconciler.core``, ``reconciler.model``, ``reconciler.errors``, the standard library.
"""
