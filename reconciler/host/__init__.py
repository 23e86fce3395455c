"""The host's own services the reconciler talks to: journald (``journal``), the service
manager's notify socket (``sd_notify``), advisory file locks (``lock``) and the network,
for every outbound HTTP call (``http``, on requests).

May import: ``core``, ``config``, ``model``, ``errors``, the standard library, requests.
"""
