"""``reconciler watch``: the event-driven monitor daemon (``daemon``) and its handling of
signals (``handler``); its pure per-unit state is ``reconciler.core.watch_state``.

May import: the rest of ``monitor``, and what ``monitor`` may import.
"""
