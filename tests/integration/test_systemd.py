"""The D-Bus client against a real systemd: the host's bus, and its private socket from inside."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from itertools import count
from pathlib import Path

import pytest
from jeepney.low_level import HeaderFields

from reconciler import runtime
from reconciler.config import Settings
from reconciler.devtools import sandbox
from reconciler.errors import SystemdError
from reconciler.model import LiveUnit
from reconciler.monitor import live
from reconciler.systemd.client import Systemd
from tests.conftest import ENV_INSIDE, PYTHON_INSIDE, UnitWriter

pytestmark = pytest.mark.host

ONESHOT = "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n"
ENABLEABLE = ONESHOT + "[Install]\nWantedBy=multi-user.target\n"
FAILING = "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'exit 1'\n"
CRASHING = (
    "[Unit]\nStartLimitIntervalSec=0\n"
    "[Service]\nExecStart=/bin/sh -c 'exit 3'\nRestart=on-failure\nRestartSec=100ms\n"
)
SLOW = "[Service]\nType=oneshot\nExecStart=/bin/sleep 30\n"
WATCHED = "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sleep 0.2\n"


@pytest.fixture
def sd(host: sandbox.Host) -> Iterator[Systemd]:
    with Systemd(host.bus_address, timeout=20) as client:
        yield client


def wait_for(sd: Systemd, name: str, ok: object, timeout: float = 10.0) -> LiveUnit:
    deadline = time.monotonic() + timeout
    while True:
        unit = sd.read_units([name])[name]
        if ok(unit) or time.monotonic() > deadline:  # type: ignore[operator]
            return unit
        time.sleep(0.05)


def test_reads_properties_of_real_units(sd: Systemd) -> None:
    units = sd.read_units(["dbus.service", "systemd-journald.service", "no-such-x.service"])
    for name in ("dbus.service", "systemd-journald.service"):
        unit = units[name]
        assert (unit.load_state, unit.active_state, unit.sub_state) == (
            "loaded",
            "active",
            "running",
        )
        assert len(unit.invocation_id) == 32 and int(unit.invocation_id, 16)
        assert unit.service_type == "notify"
        assert unit.unit_file_state == "static"
        assert unit.result == "success" and unit.exec_main_code == 0
    assert units["no-such-x.service"].load_state == "not-found"
    assert sd.calls["ListUnitsByNames"] == 1  # states of all three in one call

    props = sd.get_properties(
        ["dbus.service"], "org.freedesktop.systemd1.Service", ["MainPID", "Type"]
    )
    assert props["dbus.service"]["Type"] == "notify"
    assert int(props["dbus.service"]["MainPID"]) > 1  # type: ignore[call-overload]
    both = ["dbus.service", "systemd-journald.service"]
    each = list(sd.each_property(both, "org.freedesktop.systemd1.Service", ["Type", "Restart"]))
    assert sorted(each) == sorted(  # the same values, one tuple a reply
        (n, p, v)
        for n, values in sd.get_properties(
            both, "org.freedesktop.systemd1.Service", ["Type", "Restart"]
        ).items()
        for p, v in values.items()
    )
    assert len(each) == 4
    everything = sd.get_all(["systemd-journald.service"])["systemd-journald.service"]
    assert everything["Id"] == "systemd-journald.service"  # Unit interface
    assert everything["Type"] == "notify"  # Service interface, same GetAll
    journald = sd.list_units_by_patterns([], ["systemd-journald.*"])
    assert {u.name for u in journald} >= {"systemd-journald.service", "systemd-journald.socket"}


def test_write_reload_enable_start(sd: Systemd, make_unit: UnitWriter) -> None:
    name = make_unit("web.service", ENABLEABLE)
    sd.reload()
    assert sd.unit_file_states([name, "no-such-x.service"]) == {
        name: "disabled",
        "no-such-x.service": "",
    }
    changes = sd.enable_unit_files([name])
    assert [(c.kind, c.path, c.source) for c in changes] == [
        (
            "symlink",
            f"/etc/systemd/system/multi-user.target.wants/{name}",
            f"/etc/systemd/system/{name}",
        )
    ]
    assert sd.unit_file_states([name]) == {name: "enabled"}
    job = sd.start(name)
    assert (job.unit, job.result) == (name, "done")
    assert job.job.startswith("/org/freedesktop/systemd1/job/")
    unit = sd.read_units([name])[name]
    assert (unit.active_state, unit.sub_state, unit.unit_file_state) == (
        "active",
        "exited",
        "enabled",
    )
    assert unit.service_type == "oneshot" and len(unit.invocation_id) == 32
    assert sd.calls["EnableUnitFiles"] == 1 and sd.calls["Reload"] == 1


def test_crash_loop_shows_rising_restarts_and_exit_status(
    sd: Systemd, make_unit: UnitWriter
) -> None:
    name = make_unit("crash.service", CRASHING)
    sd.reload()
    assert sd.start(name).result == "done"  # Type=simple: the job ends once it forked
    first = wait_for(sd, name, lambda u: u.n_restarts >= 2)
    # Each restart resets Result to success until the next crash; states and properties
    # are separate reads, so poll until one sample falls between a crash and its restart.
    later = wait_for(
        sd, name, lambda u: u.n_restarts > first.n_restarts and u.result == "exit-code"
    )
    assert first.n_restarts >= 2 and later.n_restarts > first.n_restarts
    assert later.result == "exit-code"
    assert (later.exec_main_code, later.exec_main_status) == (1, 3)  # CLD_EXITED, status 3
    sd.stop(name)


def test_failing_start_returns_failed_and_reset_failed_clears_it(
    sd: Systemd, make_unit: UnitWriter
) -> None:
    name = make_unit("fail.service", FAILING)
    sd.reload()
    assert sd.start(name).result == "failed"
    unit = sd.read_units([name])[name]
    assert (unit.active_state, unit.result, unit.exec_main_status) == ("failed", "exit-code", 1)
    sd.reset_failed(name)
    assert sd.read_units([name])[name].active_state == "inactive"


def test_many_jobs_are_waited_for_together(sd: Systemd, make_unit: UnitWriter) -> None:
    ok, bad, slow = (
        make_unit("ok.service", ONESHOT),
        make_unit("bad.service", FAILING),
        make_unit("slow.service", SLOW),
    )
    sd.reload()
    results = sd.run_jobs([("start", ok), ("start", bad), ("start", slow)], timeout=1.5)
    assert {u: r.result for u, r in results.items()} == {
        ok: "done",
        bad: "failed",
        slow: "wait-timeout",  # still starting at the deadline
    }
    assert sd.calls["StartUnit"] == 3
    stopped = sd.run_jobs([("stop", ok), ("stop", slow), ("try-restart", bad)], timeout=20)
    assert {r.result for r in stopped.values()} == {"done"}


def test_many_units_go_in_bounded_batches_and_job_windows(
    sd: Systemd, make_unit: UnitWriter
) -> None:
    """At 10,000 units no call may take systemd past the D-Bus timeout and no more jobs
    than a window wait in its queue: reads, enables and jobs are split, answers whole."""
    sd.list_batch, sd.file_batch, sd.job_window = 2, 2, 2
    names = [make_unit(f"many{i}.service", ENABLEABLE) for i in range(5)]
    slow = make_unit("many-slow.service", SLOW)
    sd.reload()
    changes = sd.enable_unit_files(names)
    assert sorted(c.path.rpartition("/")[2] for c in changes) == sorted(names)
    assert sd.calls["EnableUnitFiles"] == 3
    sd.reset_failed_units([*names, "never-loaded-x.service"])  # not loaded: skipped
    results = sd.run_jobs([("start", slow), *(("start", n) for n in names)], timeout=3)
    assert {u: r.result for u, r in results.items()} == {
        slow: "wait-timeout",  # its own deadline passed; the others still ran
        **dict.fromkeys(names, "done"),
    }
    units = sd.list_units([*names, "no-such-x.service"])
    assert list(units) == [*names, "no-such-x.service"]
    assert {u.active_state for n, u in units.items() if n in names} == {"active"}
    assert units["no-such-x.service"].load_state == "not-found"
    assert sd.calls["ListUnitsByNames"] == 3
    sd.run_jobs([("stop", slow)], timeout=20)


def test_monitor_read_takes_enablement_from_the_directories(
    sd: Systemd, host: sandbox.Host, make_unit: UnitWriter
) -> None:
    """The monitor's read asks no UnitFileState (systemd 252 rescans every .wants dir per
    unit) and NeedDaemonReload only of files changed since the last load; the answers
    still equal systemd's."""
    names = [make_unit(f"mon{i}.service", ENABLEABLE) for i in range(4)]
    sd.reload()
    sd.enable_unit_files(names[:2])
    sd.run_jobs([("start", n) for n in names])
    time.sleep(1.1)  # past the slack around systemd's load time
    changed = names[3]
    (host.unit_dir / changed).write_text(ENABLEABLE + "# changed\n")
    states = live.read_state(sd, names, host.unit_dir)
    for name in names:
        want = host.systemctl("show", "-p", "UnitFileState", "-p", "NeedDaemonReload", name)
        got = states[name].live
        have = f"NeedDaemonReload={'yes' if got.need_daemon_reload else 'no'}\n"
        have += f"UnitFileState={got.unit_file_state}"
        assert sorted(want.stdout.split()) == sorted(have.split()), name
    assert states[changed].live.need_daemon_reload
    gets = []
    for kwargs in ({}, {"file_states": {}, "suspects": {changed}}):
        before = sd.calls["Get"]
        sd.read_units(names, **kwargs)  # type: ignore[arg-type]
        gets.append(sd.calls["Get"] - before)
    assert gets[0] - gets[1] == 2 * len(names) - 1  # no UnitFileState, one NeedDaemonReload


def test_a_run_seen_in_the_same_settled_state_keeps_its_per_run_properties(
    sd: Systemd, make_unit: UnitWriter
) -> None:
    """``last``: a unit in the same settled state of the same run is not asked its Result,
    NRestarts and ExecMain* again (four Gets a service); a new run, or another state, is."""
    names = [
        make_unit("exited.service", ONESHOT),  # active/exited
        make_unit("running.service", "[Service]\nExecStart=/bin/sleep 600\n"),
        make_unit("dead.service", "[Service]\nType=oneshot\nExecStart=/bin/true\n"),
    ]
    exited, running, dead = names
    timer = make_unit("dead.timer", "[Timer]\nOnActiveSec=1h\n")  # keeps it loaded
    sd.reload()
    sd.run_jobs([("start", n) for n in [timer, *names]])
    before = sd.calls["Get"]
    full = sd.read_units(names)
    asked_types = sd.calls["Get"] - before
    assert [full[n].sub_state for n in names] == ["exited", "running", "dead"]
    assert full[exited].exec_main_code == 1  # CLD_EXITED: read, then kept
    # the monitor's read asks Type only where it tells something: an inactive service
    before = sd.calls["Get"]
    typed = sd.read_units(names, every_type=False)
    assert [typed[n].service_type for n in names] == ["", "", "oneshot"]
    assert [full[n].service_type for n in names] == ["oneshot", "simple", "oneshot"]
    assert sd.calls["Get"] - before == asked_types - 2

    before = sd.calls["Get"]
    again = sd.read_units(names)
    asked_all = sd.calls["Get"] - before
    before = sd.calls["Get"]
    kept = sd.read_units(names, last=full)
    assert sd.calls["Get"] - before == asked_all - 4 * len(names)

    def steady(units: dict[str, LiveUnit]) -> dict[str, LiveUnit]:  # memory moves
        return {n: replace(u, memory_current=None) for n, u in units.items()}

    assert steady(kept) == steady(again)

    # what is kept is the last look's, not systemd's: a stand-in shows which are asked
    stand_in = {n: replace(u, result="stand-in", n_restarts=7) for n, u in full.items()}
    sd.restart(running)  # a new run: its InvocationID moved
    moved = {exited: replace(full[exited], sub_state="running")}
    read = sd.read_units(names, last={**stand_in, **moved})
    assert (read[dead].result, read[dead].n_restarts) == ("stand-in", 7)
    for name in (running, exited):  # a new run; another state
        assert (read[name].result, read[name].n_restarts) == ("success", 0), name
    assert read[running].invocation_id != full[running].invocation_id
    sd.stop(running)


def test_missing_unit_is_a_clear_error_keeping_the_dbus_name(sd: Systemd) -> None:
    with pytest.raises(SystemdError) as info:
        sd.stop("no-such-x.service")
    err = info.value
    assert err.dbus_name == "org.freedesktop.systemd1.NoSuchUnit"
    assert err.message.startswith("cannot stop unit 'no-such-x.service': no such unit")
    assert err.hint and "installed" in err.hint
    with pytest.raises(SystemdError, match="cannot start unit 'no-such-x.service'") as started:
        sd.start("no-such-x.service")
    assert started.value.dbus_name == "org.freedesktop.systemd1.NoSuchUnit"
    with pytest.raises(
        SystemdError, match="cannot enable unit file 'no-such-x.service'"
    ) as enabled:
        sd.enable_unit_files(["no-such-x.service"])
    assert "does not exist" in enabled.value.message


def test_illegal_unit_name_is_refused_before_any_call(sd: Systemd) -> None:
    before = dict(sd.calls)
    for call in (
        lambda: sd.start("web app.service"),
        lambda: sd.read_units(["ok.service", "../x.service"]),
        lambda: sd.enable_unit_files(["x;y.service"]),
        lambda: sd.run_jobs([("start", "web")]),
    ):
        with pytest.raises(SystemdError, match="invalid unit name"):
            call()
    with pytest.raises(SystemdError, match="unknown job type"):
        sd.run_jobs([("explode", "web.service")])
    assert dict(sd.calls) == before


def test_mask_and_unmask_report_changes(sd: Systemd) -> None:
    name = f"masked-{uuid.uuid4().hex[:8]}.service"
    masked = sd.mask_unit_files([name])
    try:
        assert [(c.kind, c.path, c.source) for c in masked] == [
            ("symlink", f"/etc/systemd/system/{name}", "/dev/null")
        ]
        assert sd.unit_file_states([name]) == {name: "masked"}
    finally:
        unmasked = sd.unmask_unit_files([name])
    assert [(c.kind, c.path) for c in unmasked] == [("unlink", f"/etc/systemd/system/{name}")]
    assert sd.unit_file_states([name]) == {name: ""}


def test_watch_yields_property_changes(sd: Systemd, make_unit: UnitWriter) -> None:
    name = make_unit("watched.service", WATCHED)
    sd.reload()
    with sd.watch([name]) as stream:
        sd.start(name)  # signals queue up while the job is waited for
        seen = []
        while (change := stream.next_change(timeout=2)) is not None:
            assert change.unit == name and change.at <= time.monotonic()
            seen.append(change.changed.get("ActiveState"))
            if "active" in seen:
                break
        assert "activating" in seen and "active" in seen
        assert stream.dropped == 0
    with sd.watch() as everything:  # all units: one match rule on the path namespace
        sd.stop(name)
        units = set()
        while (change := everything.next_change(timeout=2)) is not None and name not in units:
            units.add(change.unit)
        assert name in units


def test_watch_counts_what_a_full_queue_drops(sd: Systemd, make_unit: UnitWriter) -> None:
    name = make_unit("burst.service", ONESHOT)
    sd.reload()
    with sd.watch([name], queue_size=1) as stream:
        sd.start(name)
        sd.stop(name)
        assert stream.dropped > 0
        assert stream.next_change(timeout=1) is not None  # the one that fit


def test_unreachable_bus_is_one_clear_error(tmp_path: Path) -> None:
    missing = f"unix:path={tmp_path}/nothing-here"
    with pytest.raises(SystemdError) as info:
        Systemd(missing)
    assert str(info.value.message) == (
        f"cannot connect to systemd at '{missing}': No such file or directory"
    )
    assert info.value.hint and "RECONCILER_BUS" in info.value.hint
    with pytest.raises(SystemdError, match="not a D-Bus unix socket address"):
        Systemd("tcp:host=localhost,port=1")


def test_silent_peer_gives_a_reply_timeout(tmp_path: Path) -> None:
    """A server that authenticates but never answers: the Hello times out, clearly."""
    path = str(tmp_path / "silent")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(4096):
                if b"AUTH" in data:
                    conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with pytest.raises(SystemdError, match="no reply from systemd within 0.5s") as info:
        Systemd(f"unix:path={path}", timeout=0.5)
    assert info.value.dbus_name == "org.freedesktop.DBus.Error.Timeout"
    server.close()
    thread.join(timeout=5)


def test_reload_waits_longer_than_a_read(tmp_path: Path) -> None:
    """A Reload of 10,000 units took systemd over the 30 s a read may take: it is one call
    that cannot be split, so it is awaited up to RELOAD_TIMEOUT (a peer answering late)."""
    from jeepney import new_method_return
    from jeepney.low_level import Parser

    path = str(tmp_path / "slow-reload")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()

    def serve() -> None:
        conn, _ = server.accept()
        parser, serial, began = Parser(), count(1), False
        with conn:
            while data := conn.recv(4096):
                if not began and b"AUTH" in data:
                    conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
                if not began and b"BEGIN" in data:
                    began, data = True, data[data.index(b"BEGIN") + len(b"BEGIN\r\n") :]
                for msg in parser.feed(data) if began else ():
                    member = msg.header.fields.get(HeaderFields.member)
                    if member == "Reload":
                        time.sleep(1.0)  # past the connection's 0.3 s
                    body = (":1.1",) if member == "Hello" else ()
                    reply = new_method_return(msg, "s" if body else "", body)
                    conn.sendall(reply.serialise(next(serial)))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with Systemd(f"unix:path={path}", timeout=0.3) as client:
        client.reload()
        assert client.calls["Reload"] == 1
    server.close()
    thread.join(timeout=5)


def test_a_manager_too_busy_to_authenticate_is_tried_a_bounded_number_of_times(
    tmp_path: Path,
) -> None:
    """After a 10,000-unit apply systemd accepted but did not authenticate within the
    timeout: that is one clear "busy" error after BUSY_ATTEMPTS connections, not a hang."""
    path = str(tmp_path / "busy")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)
    server.settimeout(10)
    accepted: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while len(accepted) < runtime.BUSY_ATTEMPTS + 1:
                accepted.append(server.accept()[0])  # and never answer AUTH

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with pytest.raises(SystemdError, match="no answer to the authentication within 0.3s") as info:
        runtime.connect(Settings(bus=f"unix:path={path}"), timeout=0.3)
    assert info.value.dbus_name == "org.freedesktop.DBus.Error.Timeout"
    assert info.value.hint and "busy" in info.value.hint
    assert len(accepted) == runtime.BUSY_ATTEMPTS
    server.close()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()


def test_private_socket_from_outside_the_host_is_refused_clearly(host: sandbox.Host) -> None:
    with pytest.raises(SystemdError, match="cannot connect to systemd at") as info:
        Systemd(host.private_bus_address, timeout=5)
    assert info.value.hint and "PID namespace" in info.value.hint


INSIDE = """
import json
from reconciler.errors import SystemdError
from reconciler.systemd.client import Systemd, default_address

name = {name!r}
out = {{"default": default_address()}}
with Systemd("unix:path=/run/systemd/private", timeout=20) as sd:
    sd.reload()
    unit = sd.read_units(["dbus.service"])["dbus.service"]
    out["dbus"] = [unit.active_state, unit.service_type, len(unit.invocation_id)]
    out["start"] = sd.start(name).result
    out["state"] = sd.read_units([name])[name].active_state
    out["stop"] = sd.run_jobs([("stop", name)])[name].result
    try:
        sd.stop("no-such-x.service")
    except SystemdError as exc:
        out["error"] = [exc.dbus_name, exc.message]
    out["calls"] = dict(sd.calls)
print(json.dumps(out))
"""


def test_private_socket_inside_the_host(host: sandbox.Host, make_unit: UnitWriter) -> None:
    """systemd answers its private socket only to root in its own PID namespace."""
    name = make_unit("private.service", ONESHOT)
    proc = host.run([PYTHON_INSIDE, "-c", INSIDE.format(name=name)], env=ENV_INSIDE)
    out = json.loads(proc.stdout)
    assert out["default"] == "unix:path=/run/systemd/private"  # as root, where it exists
    assert out["dbus"] == ["active", "notify", 32]
    assert (out["start"], out["state"], out["stop"]) == ("done", "active", "done")
    assert out["error"][0] == "org.freedesktop.systemd1.NoSuchUnit"
    assert out["error"][1].startswith("cannot stop unit 'no-such-x.service': no such unit")
    assert out["calls"]["Ping"] >= 1 and "Hello" not in out["calls"]  # peer to peer: no Hello
