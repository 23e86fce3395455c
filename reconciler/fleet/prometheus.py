"""What the fleet reports, read from Prometheus's HTTP API (talks HTTP through requests).

One instant query (``/api/v1/query``) fetches every host's rollout series at once (the
``__name__`` label tells them apart), and ``/api/v1/alerts`` the firing ``severity="page"``
alerts with the time each started (``activeAt``: the core tells an alert the target caused
from one still firing from the revision before). With ``alertmanager_url`` the alerts come
from Alertmanager's ``/api/v2/alerts`` instead (active, neither silenced nor inhibited: a
silence there is an operator's decision; ``startsAt``). The answers are turned into the
core's plain types (``promotion.Report``, ``promotion.Alert``).

Anything but a well-formed answer (unreachable, a timeout, an HTTP error, a body over
``max_bytes``, JSON that is not a Prometheus vector or alert list) is a :class:`RolloutError`
naming the URL asked and what was wrong: the step stops before it moves or halts anything.
A host that Prometheus does not report (its exporter down: the series go stale) is simply
absent, which the core counts as unknown.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from reconciler.core.promotion import Alert, Report
from reconciler.core.retry import RetryPolicy
from reconciler.errors import RolloutError, redact

INFO = "reconciler_rollout_info"
HEALTHY_SINCE = "reconciler_rollout_healthy_since_timestamp_seconds"
FAILED = "reconciler_rollout_failed"
LAST_SUCCESS = "reconciler_last_success_timestamp_seconds"
QUERY = f'{{__name__=~"{INFO}|{HEALTHY_SINCE}|{FAILED}|{LAST_SUCCESS}"}}'


class Client:
    """Prometheus (and optionally Alertmanager) at the configured URLs."""

    def __init__(
        self,
        url: str,
        *,
        alertmanager: str | None = None,
        timeout: float = 10.0,
        max_bytes: int = 64 << 20,
    ) -> None:
        self.url = url.rstrip("/")
        self.alertmanager = alertmanager.rstrip("/") if alertmanager else None
        self.timeout = timeout
        self.max_bytes = max_bytes

    def fleet(self) -> tuple[dict[str, Report], list[Alert]]:
        """Every reporting host's report, and the firing paging alerts."""
        where = f"{self.url}/api/v1/query"
        series = vector(self._get(where, {"query": QUERY}, "Prometheus"), where)
        if self.alertmanager:
            where = f"{self.alertmanager}/api/v2/alerts"
            alerts = alertmanager_alerts(self._get(where, {}, "Alertmanager"), where)
        else:
            where = f"{self.url}/api/v1/alerts"
            alerts = prometheus_alerts(self._get(where, {}, "Prometheus"), where)
        return reports(series), alerts

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """One instant query (the dashboard check uses it too)."""
        where = f"{self.url}/api/v1/query"
        return vector(self._get(where, {"query": promql}, "Prometheus"), where)

    def _get(self, url: str, params: Mapping[str, str], what: str) -> Any:
        from reconciler.host import http  # requests (~50 ms): only when a step asks

        where = redact(url)
        policy = RetryPolicy(
            retries=1, backoff_sec=0.2, backoff_max_sec=1.0, retry_after_max_sec=1.0,
            total_sec=self.timeout,
        )  # fmt: skip
        query = "&".join(f"{k}={_quote(v)}" for k, v in params.items())
        full = f"{url}?{query}" if query else url
        with http.request(
            "GET", full, policy=policy, timeout=(min(3.0, self.timeout), self.timeout),
            headers={"Accept": "application/json"}, stream=True,
        ) as call:  # fmt: skip
            response = call.response
            if response is None:
                raise _unreachable(what, where, call.error or "no answer")
            if response.status_code != 200:
                raise _unreachable(what, where, f"HTTP {response.status_code}")
            body = bytearray()
            try:
                for chunk in response.iter_content(65536):
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise _unreachable(
                            what, where, f"answer larger than {self.max_bytes >> 20} MiB"
                        )
            except OSError as exc:  # requests' own errors derive from OSError
                raise _unreachable(what, where, f"answer cut short: {exc}") from None
        try:
            return json.loads(body)
        except ValueError:
            start = body[:40].decode("utf-8", "replace")
            raise _unexpected(what, where, f"not JSON (it starts {start!r})") from None


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _unreachable(what: str, where: str, cause: str) -> RolloutError:
    return RolloutError(
        f"cannot reach {what} '{where}': {cause}",
        hint="nothing was moved or halted; the hosts keep their revisions",
    )


def _unexpected(what: str, where: str, why: str) -> RolloutError:
    """An answer (HTTP 200) that is not what ``what`` answers at ``where``: a proxy, another
    service at that URL, another API version. Named with the URL asked and what was wrong."""
    return RolloutError(
        f"cannot use the answer of {what} '{redact(where)}' (HTTP 200): {why}",
        hint="is that URL the server's API (no proxy or other service in between)? nothing "
        "was moved or halted; the hosts keep their revisions",
    )


def _shape(data: Any) -> str:
    """What a JSON answer is, in a few words: ``an object with keys data, status``."""
    if isinstance(data, dict):
        keys = ", ".join(sorted(str(k) for k in data)[:6])
        return f"an object with keys {keys}"[:120] if keys else "an empty object"
    return {list: "a list", str: "a string", type(None): "null"}.get(type(data), "a number")


def _status_problem(data: Any, expected: str) -> str | None:
    """Why ``data`` is no successful Prometheus API answer holding ``expected``, or None."""
    if not isinstance(data, dict):
        return f"{_shape(data)}, not an object with {expected}"
    if data.get("status") != "success":
        error = data.get("error")
        if error:
            return f"status {str(data.get('status'))[:20]!r}: {str(error)[:200]}"
        return f"no status 'success' ({_shape(data)})"
    if not isinstance(data.get("data"), dict):
        return f"no 'data' object ({_shape(data)})"
    return None


def vector(data: Any, where: str) -> list[tuple[dict[str, str], float]]:
    """An instant-vector answer as (labels, value) pairs, or a RolloutError naming ``where``
    (the URL asked)."""

    def bad(why: str) -> RolloutError:
        return _unexpected("Prometheus", where, f"not a Prometheus answer ({why})")

    problem = _status_problem(data, "data.result")
    if problem:
        raise bad(problem)
    inner = data["data"]
    if inner.get("resultType") != "vector":
        raise bad(f"resultType {str(inner.get('resultType'))[:20]!r}, not 'vector'")
    result = inner.get("result")
    if not isinstance(result, list):
        raise bad(f"no data.result list (data is {_shape(inner)})")
    found = []
    for item in result:
        if not isinstance(item, dict):
            raise bad("a result is not an object")
        metric, value = item.get("metric"), item.get("value")
        if not isinstance(metric, dict) or not isinstance(value, list) or len(value) != 2:
            raise bad("a result has no metric or value")
        try:
            number = float(value[1])
        except (TypeError, ValueError):
            raise bad(f"value {str(value[1])[:40]!r}") from None
        found.append(({str(k): str(v) for k, v in metric.items()}, number))
    return found


def reports(series: list[tuple[dict[str, str], float]]) -> dict[str, Report]:
    """The per-host reports from the rollout series (hosts without an info series: absent)."""
    info: dict[str, dict[str, str]] = {}
    healthy: dict[tuple[str, str], float] = {}
    failed: dict[str, set[str]] = {}
    last: dict[str, float] = {}
    for labels, value in series:
        name, host = labels.get("__name__"), labels.get("host", "")
        if not host:
            continue
        if name == INFO and value == 1:
            info[host] = labels
        elif name == HEALTHY_SINCE:
            key = (host, labels.get("revision", ""))
            healthy[key] = max(healthy.get(key, 0.0), value)
        elif name == FAILED and value == 1:
            failed.setdefault(host, set()).add(labels.get("target", ""))
        elif name == LAST_SUCCESS:
            last[host] = max(last.get(host, 0.0), value)
    out = {}
    for host, labels in info.items():
        revision = labels.get("revision", "")
        out[host] = Report(
            host=host,
            revision=revision,
            target=labels.get("target", ""),
            healthy_since=healthy.get((host, revision), 0.0),
            failed=frozenset(failed.get(host, ())),
            instance=labels.get("instance", ""),
            last_success=last.get(host, 0.0),
        )
    return out


def timestamp(text: Any) -> float:
    """RFC 3339 (``2026-12-04T21:00:00.123456789Z``) as epoch seconds; 0 when unreadable or
    before 1970."""
    from datetime import datetime

    match = re.fullmatch(r"(.{19})(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", str(text))
    if match is None:
        return 0.0
    zone = "+00:00" if match[3] == "Z" else match[3]
    try:
        whole = datetime.fromisoformat(match[1] + zone).timestamp()
    except ValueError:
        return 0.0
    value = whole + (float(f"0.{match[2]}") if match[2] else 0.0)
    return max(value, 0.0)  # Go's zero time (0001-01-01) means unknown


def prometheus_alerts(data: Any, where: str) -> list[Alert]:
    """Prometheus's ``/api/v1/alerts`` (asked at ``where``): the firing paging alerts, with
    ``activeAt``."""

    def bad(why: str) -> RolloutError:
        return _unexpected("Prometheus", where, f"no alert list ({why})")

    problem = _status_problem(data, "data.alerts")
    if problem:
        raise bad(problem)
    items = data["data"].get("alerts")
    if not isinstance(items, list):
        raise bad(f"no data.alerts list: data is {_shape(data['data'])}")
    found = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("labels"), dict):
            raise bad(f"data.alerts[{index}] has no labels object")
        labels = {str(k): str(v) for k, v in item["labels"].items()}
        if item.get("state") == "firing" and labels.get("severity") == "page":
            found.append(
                Alert(labels.get("alertname", "?"), labels, timestamp(item.get("activeAt")))
            )
    return found


def alertmanager_alerts(data: Any, where: str) -> list[Alert]:
    """Alertmanager's ``/api/v2/alerts`` (asked at ``where``): the active, unsilenced paging
    alerts."""

    def bad(why: str) -> RolloutError:
        return _unexpected("Alertmanager", where, f"no alert list ({why})")

    if not isinstance(data, list):
        raise bad(f"{_shape(data)}, not a list of alerts")
    found = []
    for index, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("labels"), dict):
            raise bad(f"alert [{index}] has no labels object")
        status = item.get("status")
        state = status.get("state") if isinstance(status, dict) else None
        labels = {str(k): str(v) for k, v in item["labels"].items()}
        if state == "active" and labels.get("severity") == "page":
            since = timestamp(item.get("startsAt"))
            found.append(Alert(labels.get("alertname", "?"), labels, since))
    return found
