"""Prometheus's and Alertmanager's answers into the core's types (``fleet.prometheus``, pure
parts): well-formed answers read, anything else refused with one line (table-driven)."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.errors import RolloutError
from reconciler.fleet.prometheus import (
    alertmanager_alerts,
    prometheus_alerts,
    reports,
    timestamp,
    vector,
)

C = "c" * 40


def answer(*series: tuple[dict[str, str], str]) -> dict[str, Any]:
    result = [{"metric": m, "value": [1796418000.0, v]} for m, v in series]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def test_reports_join_the_series_by_host() -> None:
    data = answer(
        ({"__name__": "reconciler_rollout_info", "host": "c1", "wave": "canary",
          "revision": C, "target": C, "instance": "10.0.0.1:9100"}, "1"),
        ({"__name__": "reconciler_rollout_healthy_since_timestamp_seconds", "host": "c1",
          "revision": C}, "1796417000"),
        ({"__name__": "reconciler_rollout_failed", "host": "c1", "target": "d" * 40}, "1"),
        ({"__name__": "reconciler_rollout_failed", "host": "c1", "target": C}, "0"),
        ({"__name__": "reconciler_last_success_timestamp_seconds", "host": "c1"}, "1796417900"),
        ({"__name__": "reconciler_rollout_healthy_since_timestamp_seconds", "host": "gone",
          "revision": C}, "5"),  # no info series: not reporting
    )  # fmt: skip
    found = reports(vector(data, "http://prom"))
    assert list(found) == ["c1"]
    c1 = found["c1"]
    assert (c1.revision, c1.target, c1.healthy_since) == (C, C, 1796417000.0)
    assert c1.failed == frozenset({"d" * 40}) and c1.instance == "10.0.0.1:9100"
    assert c1.last_success == 1796417900.0


@pytest.mark.parametrize(
    "data",
    [
        None,
        "not json",
        [],
        {"status": "error", "error": "parse error"},
        {"status": "success", "data": {"resultType": "matrix", "result": []}},
        {"status": "success", "data": {"resultType": "vector", "result": {}}},
        {"status": "success", "data": {"resultType": "vector", "result": [1]}},
        {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}},
        answer(({"host": "x"}, "NaN-ish")),
    ],
)
def test_garbage_is_refused_in_one_line(data: Any) -> None:
    with pytest.raises(RolloutError) as info:
        vector(data, "http://user:secret@prom:9090")
    assert "cannot use the answer of Prometheus 'http://***@prom:9090' (HTTP 200): not a " in (
        str(info.value)
    )
    assert "\n" not in str(info.value) and "secret" not in str(info.value)


def test_alerts_firing_pages_only_with_their_start() -> None:
    data = {
        "status": "success",
        "data": {
            "alerts": [
                {"labels": {"alertname": "A", "severity": "page", "host": "c1"},
                 "state": "firing", "activeAt": "2026-12-04T21:00:00.5Z"},
                {"labels": {"alertname": "B", "severity": "page"}, "state": "pending"},
                {"labels": {"alertname": "C", "severity": "warning"}, "state": "firing"},
            ]
        },
    }  # fmt: skip
    (alert,) = prometheus_alerts(data, "http://prom/api/v1/alerts")
    assert (alert.name, alert.labels["host"], alert.since) == ("A", "c1", 1796418000.5)
    am = [
        {"labels": {"alertname": "D", "severity": "page"}, "status": {"state": "active"},
         "startsAt": "2026-12-04T21:00:00.123456789+00:00"},
        {"labels": {"alertname": "E", "severity": "page"}, "status": {"state": "suppressed"}},
    ]  # fmt: skip
    (found,) = alertmanager_alerts(am, "http://am/api/v2/alerts")
    assert found.name == "D" and abs(found.since - 1796418000.123) < 0.001


P, AM = "http://user:secret@prom:9090/api/v1/alerts", "http://am:9093/api/v2/alerts"


@pytest.mark.parametrize(
    ("data", "where", "expected"),
    [  # a README-only user's trial: a 200 without an alert list named an empty URL ('')
        ({"status": "success", "data": {}}, P,
         "cannot use the answer of Prometheus 'http://***@prom:9090/api/v1/alerts' (HTTP 200): "
         "no alert list (no data.alerts list: data is an empty object)"),
        ({"status": "success", "data": {"resultType": "vector", "result": []}}, P,
         "no alert list (no data.alerts list: data is an object with keys result, resultType)"),
        ({"alerts": []}, P, "no alert list (no status 'success' (an object with keys alerts))"),
        ({"status": "error", "error": "not found"}, P, "no alert list (status 'error': not found)"),
        ({"status": "success", "data": {"alerts": [1]}}, P,
         "no alert list (data.alerts[0] has no labels object)"),
        ([], P, "no alert list (a list, not an object with data.alerts)"),
        ({"status": "success", "data": {"alerts": []}}, AM,
         "cannot use the answer of Alertmanager 'http://am:9093/api/v2/alerts' (HTTP 200): "
         "no alert list (an object with keys data, status, not a list of alerts)"),
        ([1], AM, "no alert list (alert [0] has no labels object)"),
    ],
)  # fmt: skip
def test_an_answer_without_an_alert_list_names_the_url_and_what_was_wrong(
    data: Any, where: str, expected: str
) -> None:
    read = alertmanager_alerts if where == AM else prometheus_alerts
    with pytest.raises(RolloutError) as info:
        read(data, where)
    assert expected in str(info.value), str(info.value)
    assert "\n" not in str(info.value) and "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-04T21:00:00Z", 1796418000.0),
        ("2026-12-04T22:00:00+01:00", 1796418000.0),
        ("0001-01-01T00:00:00Z", 0.0),  # Go's zero time: unknown
        ("yesterday", 0.0),
        (None, 0.0),
    ],
)
def test_timestamps(text: Any, expected: float) -> None:
    assert timestamp(text) == expected
