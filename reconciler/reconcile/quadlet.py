"""Quadlet files checked by Podman's own generator, dry (talks to the host's files, runs it).

A ``kind = "container"`` (``volume``, ``network``, ``pod``, ``kube``, ``image``) service is
a file for Podman's Quadlet generator, which systemd runs at every Reload. Its rules
(known keys, an ``Image=``) are Podman's, so Podman judges them: the generator's
``--dryrun`` over the rendered files in a scratch directory (``QUADLET_UNIT_DIRS``), before
anything is written. Quadlet came with Podman 4.4: a host without its generator runs no
container kind, and the sync refuses it rather than leave files nothing reads.

A host seen from outside (a disposable host's ``/proc/PID/root``) runs its own generator
``chroot``-ed into its root, on a scratch directory in its ``/tmp``, removed afterwards.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from reconciler.core.keys import SERVICES_FILE, key_path
from reconciler.core.unitkind import QUADLET_GENERATOR
from reconciler.errors import InventoryError, RenderError
from reconciler.model import DesiredFile

TIMEOUT_SEC = 30.0
_CONVERTING = re.compile(r'converting "([^"]+)": (.*)$')


def missing(root: Path) -> str | None:
    """Why ``root`` cannot run Quadlet files (no Podman, or one older than 4.4), or None."""
    if (root / QUADLET_GENERATOR.lstrip("/")).exists():
        return None
    if (root / "usr/bin/podman").exists():
        return "its Podman has no Quadlet generator (Quadlet needs Podman >= 4.4)"
    return "Podman is not installed (Quadlet needs Podman >= 4.4)"


def _where(name: str) -> str:
    return f"{SERVICES_FILE}: {key_path(('services', name.rpartition('.')[0], 'kind'))}"


def check(files: Sequence[DesiredFile], root: Path, *, required: bool = True) -> str | None:
    """Refuse (``RenderError``) a Quadlet file of ``files`` that the host's generator rejects.

    Without a generator: ``required`` (a sync, a plan) refuses the container kinds in one
    line; else (``validate`` away from the hosts) the same line comes back as a note.
    """
    quadlets = [f for f in files if f.quadlet]
    if not quadlets:
        return None
    first = quadlets[0].path.rpartition("/")[2]
    why = missing(root)
    if why is not None:
        line = f"{_where(first)}: this host cannot run a Quadlet unit: {why}"
        if required:
            raise InventoryError(line, "nothing was written; install Podman >= 4.4 on the host, "
                                 "or leave the host out of the service's hosts")  # fmt: skip
        return line
    outside = root.resolve() != Path("/")
    with tempfile.TemporaryDirectory(
        prefix=".reconciler-quadlet-", dir=root / "tmp" if outside else None
    ) as scratch:
        for f in quadlets:
            (Path(scratch) / f.path.rpartition("/")[2]).write_bytes(f.content)
        inside = "/tmp/" + Path(scratch).name if outside else scratch
        argv = [QUADLET_GENERATOR, "--dryrun"]
        if outside:
            argv = ["chroot", str(root), *argv]
        try:
            proc = subprocess.run(
                argv,
                env={"QUADLET_UNIT_DIRS": inside, "LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin"},
                capture_output=True,
                text=True,
                timeout=TIMEOUT_SEC,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RenderError(
                f"{_where(first)}: cannot run Podman's Quadlet generator: {exc}"
            ) from exc
    if proc.returncode == 0:
        return None
    for raw in proc.stderr.splitlines():
        found = _CONVERTING.search(raw)
        if found:
            name, message = found.groups()
            message = re.sub(r" in /\S+$", "", message)
            raise RenderError(
                f"{_where(name)}: Quadlet refuses {name}: {message}",
                "nothing was written; see podman-systemd.unit(5) for the keys of each section",
            )
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RenderError(f"{_where(first)}: Quadlet's dry run failed (exit {proc.returncode}): {tail}")
