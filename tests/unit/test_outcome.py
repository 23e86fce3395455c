"""A sync's result and reasons are enums whose values are the strings history and --json show."""

from __future__ import annotations

import json

from reconciler.reconcile.outcome import Outcome, Reason, Result, Unhealthy


def test_results_keep_the_strings_of_the_history() -> None:
    assert [r.value for r in Result] == [
        "applied", "noop", "rolled-back", "failed", "suspended", "held", "dry-run",
    ]  # fmt: skip
    assert json.dumps({"result": Result.ROLLED_BACK}) == '{"result": "rolled-back"}'


def test_unhealthy_reads_as_the_reason_text() -> None:
    cases = {
        Unhealthy(Reason.START_JOB, "failed"): "start job failed",
        Unhealthy(Reason.NOT_LOADED, "(not-found)"): "not loaded (not-found)",
        Unhealthy(Reason.FAILED, "(failed/failed, result exit-code)"): (
            "failed (failed/failed, result exit-code)"
        ),
        Unhealthy(Reason.FINISHED, "exit-code"): "finished with exit-code",
        Unhealthy(
            Reason.TIMEOUT, "5s (activating/start)"
        ): "not healthy after 5s (activating/start)",
    }
    assert {str(u): text for u, text in cases.items()} == {t: t for t in cases.values()}


def test_only_a_failed_or_rolled_back_outcome_is_settled() -> None:
    assert {r for r in Result if Outcome(r).settled} == {Result.FAILED, Result.ROLLED_BACK}
