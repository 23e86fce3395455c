"""The sync's monitoring hooks (pure interface): what a sync asks of the monitor.

The sync tells the monitor which jobs it is about to run, folds its health-gate reads into
the monitor's counters and runs a monitoring pass before it rolls back; it reaches the
monitor only through this Protocol, which the CLI fills from ``reconciler.monitor``, so
``reconcile`` and ``monitor`` stay independent siblings (neither imports the other).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from reconciler.model import LiveUnit, Plan

if TYPE_CHECKING:
    from reconciler.store.sync_store import Store
    from reconciler.systemd.client import Systemd

OnRead = Callable[[dict[str, LiveUnit]], None]  # sees every read of the health gate


class Monitoring(Protocol):
    def record_jobs(self, store: Store, plan: Plan, systemd: Systemd) -> None:
        """Note the start/restart/stop jobs a plan is about to run (so ``events`` says
        "sync" for what they cause), before they run."""
        ...

    def jobs_done(self, store: Store) -> None:
        """The jobs ``record_jobs`` noted have finished (their effects came by now)."""
        ...

    def recording(self, store: Store) -> AbstractContextManager[OnRead]:
        """A callback folding each health-gate read into the counters, open while gating."""
        ...

    def run_pass(self, systemd: Systemd | None, store: Store | None) -> object:
        """One monitoring pass; its failure is logged, it never fails the sync."""
        ...


class NoMonitoring:
    """The hooks of a sync run without the monitor (tests, tools): nothing recorded."""

    def record_jobs(self, store: Store, plan: Plan, systemd: Systemd) -> None:
        return None

    def jobs_done(self, store: Store) -> None:
        return None

    def recording(self, store: Store) -> AbstractContextManager[OnRead]:
        return contextlib.nullcontext(_ignore)

    def run_pass(self, systemd: Systemd | None, store: Store | None) -> object:
        return None


def _ignore(live: dict[str, LiveUnit]) -> None:
    del live
