"""systemd over D-Bus: the wire codec (``wire``, pure), one connection (``connection``),
the Manager/unit client (``client``) and what it reads of a unit (``properties``, pure),
property subscriptions (``subscribe``), the fast PropertiesChanged reader (``signals``)
and the unit directories' enablement (``unit_files``).

May import: ``core``, ``config``, ``model``, ``errors``. (jeepney: only in tests, as the
reference the codec and the handshake are checked against.)
"""
