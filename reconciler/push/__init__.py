"""The push webhook: the HTTP front (``server``) and the request pipeline that starts a
sync (``service``); its pure rules are ``reconciler.core.push_policy``.

May import: ``runtime``, ``systemd``, ``store``, ``host``, ``core``, ``config``, ``model``,
``errors``. Never ``reconcile``, ``monitor`` or ``jobs`` (it starts a sync as a unit).
"""
