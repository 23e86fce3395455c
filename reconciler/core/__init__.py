"""The pure core: inventory, render, plan, drift, counters, patterns, the watch's per-unit
state, the push and backup policies, /proc parsers.

May import: ``reconciler.model``, ``reconciler.errors``, the standard library's pure parts,
jinja2 and pydantic. Never an I/O module (subprocess, socket, sqlite3, requests, git,
``jeepney.io``) and never the clock: ``now`` is a parameter.
"""
