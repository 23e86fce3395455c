"""The manifest of config files a sync wrote, ``files.json`` in the state dir (talks to it).

A file of its own next to the git cache and ``ledger.json``, not a table of the SQLite
state: it holds what an operator relies on (which paths are the reconciler's, and the
originals of adopted files, put back when their entries go), so it must survive the loss
of the database. Written atomically (temp file, fsync, rename), mode 0600: an adopted
original may be a secret.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reconciler.errors import StateError
from reconciler.model import FileMeta, ManagedFile

FILE_NAME = "files.json"


def _encode(entry: ManagedFile) -> dict[str, Any]:
    out: dict[str, Any] = {**entry.__dict__, "restart": list(entry.restart)}
    out["reload"] = list(entry.reload)
    if entry.original is not None:
        o = entry.original
        out["original"] = {
            "content": base64.b64encode(o.content).decode(),
            "mode": o.mode,
            "uid": o.uid,
            "gid": o.gid,
        }
    return out


def _decode(item: dict[str, Any]) -> ManagedFile:
    original = item.get("original")
    meta = None
    if original is not None:
        content = base64.b64decode(original["content"])
        meta = FileMeta(content, original["mode"], original["uid"], original["gid"])
    return ManagedFile(
        item["path"],
        item["sha256"],
        item["mode"],
        item["uid"],
        item["gid"],
        meta,
        tuple(item.get("restart", ())),
        tuple(item.get("reload", ())),
    )


def load(state_dir: Path) -> dict[str, ManagedFile]:
    """Path -> entry; empty when there is no manifest yet."""
    path = state_dir / FILE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {e.path: e for e in map(_decode, data["files"])}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(
            f"cannot read the file manifest '{path}': {exc}",
            "restore it from a backup; without it, managed config files are taken for "
            "foreign ones (refused, never overwritten)",
        ) from None


def save(state_dir: Path, entries: Iterable[ManagedFile]) -> None:
    """Replace the manifest atomically."""
    path = state_dir / FILE_NAME
    text = json.dumps({"files": [_encode(e) for e in entries]}, indent=1, sort_keys=True)
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".files-", suffix=".tmp", dir=state_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
        tmp = ""
    except OSError as exc:
        raise StateError(f"cannot write the file manifest '{path}': {exc.strerror}") from exc
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
