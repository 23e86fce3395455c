"""Quadlet kinds in the rendered units (pure): each ``NAME.container`` (volume, network, pod,
kube, image) becomes a file for Podman's generator and the service the generator makes of it.

The file is the service's own (not a ``[files]`` entry, so no ``files_roots``); its
generated service is never written, enabled or verified by the sync, only started,
restarted when the file changes, health-gated and monitored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from reconciler.core import unitkind
from reconciler.model import DesiredFile, DesiredUnit


def split_quadlets(
    units: Sequence[DesiredUnit], header: Callable[[DesiredUnit], str]
) -> tuple[list[DesiredUnit], list[DesiredFile]]:
    """Quadlet files (``NAME.container``, ...) out of ``units``: each becomes a file in
    ``QUADLET_DIR`` (``header`` first, mode 0644, root's; it restarts its generated
    service when it changes) and, in its place, that service, which the generator writes.

    Enabling is the file's own business (Quadlet links ``[Install] WantedBy=`` itself).
    """
    plain: list[DesiredUnit] = []
    files: list[DesiredFile] = []
    for u in units:
        stem, _, kind = u.name.rpartition(".")
        if kind not in unitkind.QUADLET_KINDS:
            plain.append(u)
            continue
        path = f"{unitkind.QUADLET_DIR}/{u.name}"
        service = unitkind.generated_unit(stem, kind, u.content)
        content = (header(u) + u.content).encode("utf-8")
        files.append(
            DesiredFile(path, content, 0o644, "root", "root", restart=(service,), quadlet=True)
        )
        plain.append(
            DesiredUnit(
                service, "", u.service, False, u.start, u.health_timeout_sec, generated_from=path
            )  # fmt: skip
        )
    return plain, files
