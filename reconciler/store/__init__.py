"""The state database and the metrics store, on one SQLite base (``db``: connect,
transactions, errors, migrations by ``user_version``): sync history, owned-file manifest,
bad revisions (``sync_store``), counters and findings (``finding_store``), host samples
(``metric_store``; SQLite or PostgreSQL).

May import: ``core``, ``config``, ``model``, ``errors``, sqlite3, psycopg.
"""
