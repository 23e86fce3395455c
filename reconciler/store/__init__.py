"""The state database and the metrics store: sync history, owned-file manifest, bad
revisions (``sync_store``), counters and findings (``finding_store``), host samples
(``metric_store``; SQLite or PostgreSQL).

May import: ``reconciler.core``, ``reconciler.model``, ``reconciler.errors``, sqlite3, psycopg.
"""
