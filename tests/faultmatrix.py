"""The fault matrix (issue 7): one row per fault test, printed at the end of a session.

Each fault test attaches its row to its report (``user_properties``); the rows and outcomes
are collected from the reports here, so the matrix is whole in one process as under
pytest-xdist, whose workers send their reports to the controller. The same rows are written
as JSON under pytest's base temp dir, never into the tree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROW = "fault_row"  # the user_properties name of a fault's row
ROWS = pytest.StashKey[list[dict[str, Any]]]()
OUTCOMES = pytest.StashKey[dict[str, str]]()
_CONFIG: list[pytest.Config] = []


def _is_fault_test(nodeid: str) -> bool:
    return nodeid.startswith("tests/faults/")


def pytest_configure(config: pytest.Config) -> None:
    _CONFIG[:] = [config]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not _CONFIG or not _is_fault_test(report.nodeid):
        return
    config = _CONFIG[0]
    if report.when == "call" or report.outcome != "passed":
        outcomes = config.stash.setdefault(OUTCOMES, {})
        if outcomes.get(report.nodeid) in (None, "passed"):
            outcomes[report.nodeid] = report.outcome
    if report.when == "teardown":
        config.stash.setdefault(ROWS, []).extend(
            dict(value) for name, value in report.user_properties if name == ROW
        )


def _json_path(config: pytest.Config) -> Path | None:
    factory = getattr(config, "_tmp_path_factory", None)  # pytest's tmp_path plugin
    return None if factory is None else factory.getbasetemp() / "fault-matrix.json"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    outcomes = config.stash.get(OUTCOMES, {})
    if not outcomes:
        return  # no fault test ran in this session
    rows = [dict(r) for r in config.stash.get(ROWS, [])]
    reported = {r["test"] for r in rows}
    for nodeid in outcomes:
        if nodeid not in reported:  # failed (or skipped) before it could report
            rows.append(
                {
                    "area": nodeid.split("/")[-1].split("::")[0][5:].removesuffix("_faults.py"),
                    "fault": nodeid.split("::")[-1],
                    "behaviour": "",
                    "converge_sec": None,
                    "nothing_lost": None,
                    "test": nodeid,
                }
            )
    for row in rows:
        outcome = outcomes.get(row["test"], "")
        row["result"] = {"passed": "pass", "failed": "FAIL", "skipped": "skip"}.get(outcome, "?")
    tr = terminalreporter
    tr.section("fault matrix")
    tr.write_line(f"{'area':<9} {'fault':<52} {'result':<6} {'converge':>8}  lost  test")
    for r in rows:
        conv = "-" if r["converge_sec"] is None else f"{r['converge_sec']:.2f}s"
        lost = {True: "none", False: "LOST", None: "-"}[r["nothing_lost"]]
        test = r["test"].split("::", 1)[1]
        tr.write_line(
            f"{r['area']:<9} {r['fault'][:52]:<52} {r['result']:<6} {conv:>8}  {lost:<4}  {test}"
        )
    counts = {k: sum(1 for r in rows if r["result"] == k) for k in ("pass", "FAIL", "skip")}
    tr.write_line(
        f"{len(rows)} faults: {counts['pass']} passed, {counts['FAIL']} failed"
        + (f", {counts['skip']} skipped" if counts["skip"] else "")
    )
    path = _json_path(config)
    if path is not None:
        path.write_text(json.dumps(rows, indent=2) + "\n")
        tr.write_line(f"machine-readable: {path}")
