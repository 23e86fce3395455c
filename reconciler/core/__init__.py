"""The pure core: inventory, render, plan, drift, counters, patterns, the watch's per-unit
state, the push and backup policies, /proc parsers.

May import: ``config`` (its section readers), ``model``, ``errors``, the standard library's
pure parts, jinja2 and pydantic. Never an I/O module (subprocess, socket, sqlite3,
requests, git, jeepney, os, time: ``now`` is a parameter); the ``pure-core`` contract in
pyproject.toml checks it.
"""
