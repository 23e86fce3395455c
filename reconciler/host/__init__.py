"""The host's own services the reconciler talks to: journald (``journal``), the service
manager's notify socket (``sd_notify``) and advisory file locks (``lock``).

May import: ``core``, ``config``, ``model``, ``errors``, the standard library.
"""
