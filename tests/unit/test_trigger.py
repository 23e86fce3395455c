"""``push.trigger.of_unit``: what started a run of gitops-sync.service (pure, a table)."""

from __future__ import annotations

import pytest

from reconciler.push.trigger import of_unit

T = 1_000.0  # the last recorded sync started here
LATER, EARLIER = str(int((T + 5) * 1e6)), str(int((T - 5) * 1e6))
TIMER = {"TRIGGER_UNIT": "gitops-sync.timer"}
PATH = {"TRIGGER_UNIT": "reconciler-config.path", "TRIGGER_PATH": "/etc/reconciler/config.toml"}


@pytest.mark.parametrize(
    ("environ", "mark", "last", "changed", "want"),
    [
        ({}, None, T, None, "manual"),  # systemctl start, nothing ever triggered it
        ({}, "webhook", T, None, "webhook"),  # the webhook's mark
        ({}, "path", T, None, "path"),  # the config follow's mark
        ({**TIMER, "TRIGGER_TIMER_REALTIME_USEC": LATER}, None, T, None, "timer"),
        # systemd kept an old timer's details: a manual start after a later sync
        ({**TIMER, "TRIGGER_TIMER_REALTIME_USEC": EARLIER}, None, T, None, "manual"),
        ({**TIMER, "TRIGGER_TIMER_REALTIME_USEC": "1"}, None, None, None, "timer"),  # no history
        ({**TIMER, "TRIGGER_TIMER_REALTIME_USEC": LATER}, "webhook", T, None, "webhook"),
        (PATH, None, T, T + 1, "path"),  # the file changed since the last sync
        (PATH, None, T, T - 1, "manual"),  # an old path trigger's details, started by hand
        (PATH, None, None, None, "path"),
    ],
)  # fmt: skip
def test_of_unit(
    environ: dict[str, str], mark: str | None, last: float | None, changed: float | None, want: str
) -> None:
    assert of_unit(environ, mark, last, changed) == want
