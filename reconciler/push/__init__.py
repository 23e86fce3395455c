"""The push webhook: the HTTP front (``server``) and the request pipeline that starts a
sync (``service``); its pure rules are ``reconciler.core.push_policy``.

May import: systemd, store, host, core, model, errors.
"""
