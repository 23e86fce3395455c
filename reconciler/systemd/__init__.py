"""systemd over D-Bus: the wire codec (``wire``, pure), one connection (``connection``),
the Manager/unit client (``client``), property subscriptions (``subscribe``) and the fast
PropertiesChanged reader (``signals``).

May import: ``core``, ``config``, ``model``, ``errors``, jeepney.
"""
