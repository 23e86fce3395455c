"""Shared fixtures: the disposable systemd host (one per test session)."""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.devtools import sandbox
from reconciler.errors import SandboxError

# The fleet's Prometheus (one per session: its first scrape takes ~5 s), for
# tests/integration/test_promote.py and tests/faults/test_rollout_faults.py.
from tests.integration.fleetworld import fleet_prometheus as fleet_prometheus

pytest_plugins = ["tests.faultmatrix"]  # the fault matrix's summary (xdist's controller too)

REPO = Path(__file__).resolve().parent.parent
# Inside the host the checkout and the venv are bound read-only at fixed paths outside /tmp.
SRC_INSIDE = "/opt/reconciler"
VENV_INSIDE = "/opt/reconciler-venv"
# RECONCILER_TEST_ROOT=trixie: every host boots the Debian 13 root (systemd 257, Podman 5,
# built once into .roots/, see reconciler/devtools/rootfs.py) instead of the machine's /.
# The venv is built for the machine's Python: there the root's python3 runs the checkout.
TEST_ROOT = os.environ.get("RECONCILER_TEST_ROOT") or None
PYTHON_INSIDE = "/usr/bin/python3" if TEST_ROOT else f"{VENV_INSIDE}/bin/python"
ENV_INSIDE = {"PYTHONPATH": SRC_INSIDE}


@contextlib.contextmanager
def booted_host(root: str | None = TEST_ROOT, **kwargs: Any) -> Iterator[sandbox.Host]:
    """A disposable host with the checkout and venv bound in, stopped at the end; ``root``
    names a test root (``"trixie"``) to boot instead of the machine's own ``/``.

    CI=true turns 'cannot boot' into a failure, never a skip (the one place for that rule).
    """
    try:
        if root is not None:
            from reconciler.devtools import rootfs

            kwargs["root"] = rootfs.ensure(root)
        h = sandbox.boot(binds={str(REPO): SRC_INSIDE, sys.prefix: VENV_INSIDE}, **kwargs)
    except SandboxError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"disposable systemd host did not boot (CI=true): {exc}")
        pytest.skip(f"disposable systemd host not available: {exc}")
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="session")
def host() -> Iterator[sandbox.Host]:
    """The disposable systemd host shared by the whole test session."""
    with booted_host() as h:
        yield h


@pytest.fixture(scope="session")
def trixie_host() -> Iterator[sandbox.Host]:
    """A Debian 13 host (systemd 257, Podman 5) shared by the session's tests that need one."""
    with booted_host("trixie") as h:
        yield h


UnitWriter = Callable[[str, str], str]


@pytest.fixture
def make_unit(host: sandbox.Host) -> Iterator[UnitWriter]:
    """Write a unit file into the host; stopped, removed and reloaded after the test.

    ``make_unit("crash.service", text)`` returns the unit's real name, made unique per test
    (``crash-<id>.service``) so tests never see each other's units.
    """
    created: list[str] = []
    tag = uuid.uuid4().hex[:8]

    def write(name: str, content: str) -> str:
        stem, _, suffix = name.rpartition(".")
        unique = f"{stem}-{tag}.{suffix}"
        (host.unit_dir / unique).write_text(content)
        created.append(unique)
        return unique

    yield write
    if created:
        host.systemctl("stop", *created, check=False)
        host.systemctl("disable", *created, check=False)
        for unit in created:
            (host.unit_dir / unit).unlink(missing_ok=True)
        host.systemctl("daemon-reload", check=False)
        host.systemctl("reset-failed", *created, check=False)
