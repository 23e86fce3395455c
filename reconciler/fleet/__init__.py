"""The fleet's rollout, driven from one machine (talks to git and Prometheus).

``promoter`` runs one step (``reconciler promote``) and reads the fleet's state
(``reconciler fleet status``); ``remote`` is the config repository (one ``ls-remote``, a
compare-and-swap push); ``prometheus`` the hosts' reports and the paging alerts; the
decision itself is pure, in ``core.promotion``. A layer above the sync and the monitor: it
reuses the sync's signature check and credential handling and the monitor's webhook.
"""
