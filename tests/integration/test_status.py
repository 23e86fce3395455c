"""``reconciler status`` after a real sync: JSON for tools, a table for people; read-only."""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.test_monitor import Mon, mon, synced  # noqa: F401  (fixtures)

pytestmark = pytest.mark.host


def test_status_json_and_table(synced: tuple[Mon, list[str]]) -> None:  # noqa: F811
    m, (stopped, disabled, edited) = synced
    data = json.loads(m.cli("status", "--json").stdout)
    assert data["revision"] and len(data["revision"]) == 40
    assert data["last_sync"]["result"] == "applied"
    assert data["last_sync"]["started_at"] <= time.time()
    assert data["suspended"] is None
    units = {u["unit"]: u for u in data["units"]}
    assert set(units) == {stopped, disabled, edited}
    for u in units.values():
        assert (u["file"], u["unit_file_state"], u["active_state"]) == (
            "matches",
            "enabled",
            "active",
        )
        assert u["enable"] is True and u["n_restarts"] == 0 and u["drift"] == []
    assert data["findings"] == [] and data["drift"] == []

    m.host.systemctl("stop", stopped)
    m.host.systemctl("disable", disabled)
    (m.host.unit_dir / edited).write_text("[Service]\nExecStart=/bin/true\n")
    m.cli("suspend", "--reason", "incident 7")
    m.cli("monitor")  # records drift findings; status itself records nothing
    data = json.loads(m.cli("status", "--json").stdout)
    units = {u["unit"]: u for u in data["units"]}
    assert units[stopped]["active_state"] == "inactive"
    assert units[disabled]["unit_file_state"] == "disabled"
    assert units[edited]["file"] == "drifted"
    assert data["suspended"]["reason"] == "incident 7"
    assert {(f["kind"], f["unit"]) for f in data["findings"]} == {
        ("drift", stopped),
        ("drift", disabled),
        ("drift", edited),
    }
    assert all(f["first_seen"] > 0 and f["summary"] for f in data["findings"])

    table = m.cli("status").stdout
    lines = table.splitlines()
    assert lines[0].startswith("host ") and data["revision"][:12] in lines[0]
    assert "applied" in lines[1]
    assert "SUSPENDED" in lines[2] and "incident 7" in lines[2]
    header = next(line for line in lines if line.startswith("UNIT"))
    assert header.split() == ["UNIT", "FILE", "ENABLED", "ACTIVE", "RESTARTS", "CRASHES", "DRIFT"]
    row = next(line for line in lines if line.startswith(disabled))
    assert "disabled (want enabled)" in row and row.rstrip().endswith("yes")
    assert next(line for line in lines if line.startswith(edited)).split()[1] == "drifted"
    assert "open findings: 3" in table
    m.cli("resume")

    before = json.loads(m.cli("status", "--json").stdout)["findings"]
    again = json.loads(m.cli("status", "--json").stdout)["findings"]
    assert before == again  # status only reads
