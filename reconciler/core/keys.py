"""Where a value sits in the config repository, written for one-line messages (pure).

Kept apart from ``core.inventory`` (pydantic, ~0.1 s to import) because modules on a no-op
sync's path name files and keys in their messages too; a poll that changes nothing
imports no pydantic.
"""

from __future__ import annotations

import json
import re

HOSTS_FILE = "inventory/hosts.toml"
SERVICES_FILE = "inventory/services.toml"
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def quote(text: str) -> str:
    """A name as it may appear in a one-line message: ASCII only, look-alikes escaped."""
    return json.dumps(text, ensure_ascii=True)[1:-1]


def key_path(loc: tuple[str | int, ...]) -> str:
    """``('services', 'web', 'hosts', 1)`` -> ``services.web.hosts[1]``; odd keys quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            continue
        else:
            text = part if _BARE_KEY.fullmatch(part) else f'"{quote(part)}"'
            out += f".{text}" if out else text
    return out
