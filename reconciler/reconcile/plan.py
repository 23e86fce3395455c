"""The sync's plan step: the pure core's plan over what was observed (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.config import Settings
from reconciler.core import plan as planner
from reconciler.model import DesiredUnit, Plan
from reconciler.reconcile.observe import Observed


def make_plan(desired: Sequence[DesiredUnit], observed: Observed, settings: Settings) -> Plan:
    return planner.plan(
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
