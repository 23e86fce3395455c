"""The sync's plan step: the pure core's plan over what was observed (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.config import Settings
from reconciler.core import files as file_planner
from reconciler.core import plan as planner
from reconciler.model import DesiredFile, DesiredUnit, Plan
from reconciler.reconcile.host_files import FileFacts
from reconciler.reconcile.observe import Observed


def make_plan(
    desired: Sequence[DesiredUnit],
    observed: Observed,
    settings: Settings,
    files: Sequence[DesiredFile] = (),
    facts: FileFacts | None = None,
) -> Plan:
    """The units' plan, with the config files' writes, restarts and reloads merged in
    (``facts`` None: no file desired or managed)."""
    plan = planner.plan(
        desired,
        observed.files,
        observed.live,
        observed.owned,
        allow_empty=settings.allow_empty,
        foreign=observed.foreign,
        interrupted=observed.interrupted,
        unit_dir=str(settings.unit_dir),
        taken=observed.taken,
    )
    if facts is None:
        return plan
    file_plan = file_planner.plan_files(
        files, facts.host, facts.manifest, facts.policy, facts.users, facts.groups
    )
    health = {d.name: d.health_timeout_sec for d in desired if d.health_timeout_sec is not None}
    file_planner.refuse_unknown_units(files, facts.not_found - {d.name for d in desired})
    return file_planner.merge(
        plan, file_plan, facts.active, observed.interrupted, health, facts.cannot_reload
    )
