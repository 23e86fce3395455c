"""Install the reconciler's own units from ``units/`` through the same plan/apply path.

The installed units are tracked in a manifest of their own (not the sync's), so a sync
never prunes them and an inventory can never take them over by accident.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.config import DEFAULT_CONFIG, Settings
from reconciler.errors import ApplyError, UsageError
from reconciler.model import DesiredUnit, Plan

UNITS_DIR = Path(__file__).resolve().parent.parent / "units"
MANIFEST_KEY = "install_owned"
PLACEHOLDER = "@RECONCILER@"
# Started and enabled by install; every other unit is run by one of these.
ACTIVE = {"reconciler-watch.service"}


@dataclass(frozen=True)
class Installed:
    plan: Plan
    config_written: Path | None


def exec_command() -> tuple[str, str | None]:
    """How units should run this reconciler: ``python -m reconciler``, and a PYTHONPATH
    when the package is not importable from that interpreter's own site-packages."""
    package_parent = Path(__file__).resolve().parent.parent
    prefix = Path(sys.prefix).resolve()
    needs_path = not package_parent.is_relative_to(prefix)
    return f"{shlex.quote(sys.executable)} -m reconciler", (
        str(package_parent) if needs_path else None
    )


def build_units(units_dir: Path = UNITS_DIR) -> list[DesiredUnit]:
    """The own units as DesiredUnits, with the command line filled in."""
    if not units_dir.is_dir():
        raise UsageError(
            f"cannot install: no units directory '{units_dir}'",
            "run 'reconciler install' from a checkout of the project",
        )
    command, pythonpath = exec_command()
    units = []
    for path in sorted(units_dir.iterdir()):
        if path.suffix not in (".service", ".timer", ".socket"):
            continue
        text = path.read_text().replace(PLACEHOLDER, command)
        if pythonpath and "[Service]\n" in text:
            text = text.replace(
                "[Service]\n", f"[Service]\nEnvironment=PYTHONPATH={pythonpath}\n", 1
            )
        active = path.suffix in (".timer", ".socket") or path.name in ACTIVE
        units.append(
            DesiredUnit(
                name=path.name, content=text, service=path.stem, enable=active, start=active
            )
        )
    return units


def write_config(path: Path, settings: Settings) -> Path | None:
    """Write the host config once (never overwrite an operator's file); mode 0600."""
    if path.exists():
        return None
    if not settings.repo:
        raise UsageError(
            f"cannot install: no config at '{path}' and no --repo given",
            "pass --repo URL (and --ref) to write it",
        )
    lines = [f"repo = {json.dumps(settings.repo)}", f"ref = {json.dumps(settings.ref)}"]
    if settings.host:
        lines.append(f"host = {json.dumps(settings.host)}")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# reconciler host config, written by 'reconciler install'\n")
        fh.write("\n".join(lines) + "\n")
    return path


def install(
    settings: Settings,
    *,
    config_path: Path | None = None,
    units: Sequence[DesiredUnit] | None = None,
) -> Installed:
    written = write_config(config_path or DEFAULT_CONFIG, settings)
    return Installed(
        _converge(settings, list(units) if units is not None else build_units()), written
    )


def uninstall(settings: Settings) -> Plan:
    """Stop, disable and remove the own units; state, config and backups stay."""
    return _converge(settings, [])


def _converge(settings: Settings, desired: list[DesiredUnit]) -> Plan:
    from reconciler import apply, lock, sync
    from reconciler import plan as plan_mod

    with lock.hold(
        settings.run_dir / "sync.lock", timeout=settings.lock_timeout_sec, what="install"
    ):
        store = sync.open_store(settings)
        owned = frozenset(json.loads(store.kv_get(MANIFEST_KEY) or "[]"))
        systemd = sync.connect(settings)
        try:
            names = sorted({u.name for u in desired} | owned)
            files, live = sync.observe(systemd, settings.unit_dir, names)
            foreign = frozenset(n for n in names if n not in owned and files[n] is not None)
            plan = plan_mod.plan(desired, files, live, owned, allow_empty=True, foreign=foreign)
            if plan.empty:
                return plan
            sync.check_units(desired, plan)
            store.kv_set(MANIFEST_KEY, json.dumps(sorted(owned | plan.owned_after)))
            result = apply.apply(plan, settings.unit_dir, systemd)
            store.kv_set(
                MANIFEST_KEY, json.dumps(sorted(plan.owned_after | (owned - result.removed)))
            )
            if result.failed_jobs:
                failed = ", ".join(f"{u} ({r})" for u, r in sorted(result.failed_jobs.items()))
                raise ApplyError(f"cannot start the reconciler's units: {failed}")
            return plan
        finally:
            systemd.close()
