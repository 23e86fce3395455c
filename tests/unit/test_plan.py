"""Plan tables (pure): facts in (desired units, live files and units, manifest), actions out.

Every case is also replayed through ``simulate`` (a tiny model of what applying does to
the host) and planned again: the second plan must be empty (pyinfra's idempotence check).
"""

from __future__ import annotations

import difflib
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import pytest

from reconciler.core.plan import RUNNING, describe, diff, plan, whole_file_diff
from reconciler.errors import ApplyError
from reconciler.model import (
    DaemonReload,
    DesiredUnit,
    DisableUnits,
    EnableUnits,
    LiveUnit,
    Plan,
    RemoveUnitFile,
    ResetFailedUnit,
    RestartUnit,
    StartUnit,
    StopUnit,
    WriteUnitFile,
)

Files = dict[str, str | None]
Units = dict[str, LiveUnit]
_Setter = Callable[..., None]


def service(
    name: str, body: str = "sleep infinity", *, wanted_by: str = "multi-user.target"
) -> str:
    install = f"\n[Install]\nWantedBy={wanted_by}\n" if wanted_by else ""
    return f"[Unit]\nDescription={name}\n\n[Service]\nExecStart=/bin/{body}\n{install}"


def timer(calendar: str = "daily") -> str:
    return f"[Timer]\nOnCalendar={calendar}\n\n[Install]\nWantedBy=timers.target\n"


def svc(name: str, body: str = "sleep infinity", **kw: object) -> DesiredUnit:
    return DesiredUnit(f"{name}.service", service(name, body), name, **kw)  # type: ignore[arg-type]


def job(name: str, calendar: str = "daily", body: str = "true") -> tuple[DesiredUnit, ...]:
    """A service run by its timer, as render produces it."""
    return (
        DesiredUnit(f"{name}.service", service(name, body, wanted_by=""), name, False, False),
        DesiredUnit(f"{name}.timer", timer(calendar), name),
    )


def live(name: str, active: str = "active", file_state: str = "enabled", **kw: object) -> LiveUnit:
    sub = {"active": "running", "failed": "failed", "activating": "start"}.get(active, "dead")
    return LiveUnit(
        name,
        "loaded",
        active,
        sub,
        file_state,
        invocation_id="i0",
        **kw,  # type: ignore[arg-type]
    )


WEB, API = svc("web"), svc("api")
DROPIN = "nginx.service.d/50-reconciler-limits.conf"
WEB2 = svc("web", "sleep 1000")  # web with a new rendered content
BACKUP = job("backup")
BACKUP_HOURLY = job("backup", "hourly")
BACKUP_NEWCMD = job("backup", body="false")


def on_host(*units: DesiredUnit) -> Files:
    return {u.name: u.content for u in units}


@dataclass(frozen=True)
class Case:
    id: str
    desired: tuple[DesiredUnit, ...]
    files: Files
    units: Units
    owned: frozenset[str]
    expect: list[str]  # describe() of the actions
    foreign: frozenset[str] = frozenset()
    allow_empty: bool = False
    interrupted: frozenset[str] = frozenset()
    health: tuple[tuple[str, float], ...] = ()
    notes: tuple[str, ...] = ()  # the unit each note is about
    owned_after: frozenset[str] | None = None  # None: the desired names


def owned(*names: str) -> frozenset[str]:
    return frozenset(names)


CASES = [
    Case(
        "new service",
        (WEB,),
        {"web.service": None},
        {},
        owned(),
        ["write web.service (new)", "enable web.service", "reload systemd", "start web.service"],
    ),
    Case(
        "unchanged: empty plan, no reload",
        (WEB, API),
        on_host(WEB, API),
        {"web.service": live("web.service"), "api.service": live("api.service")},
        owned("web.service", "api.service"),
        [],
    ),
    Case(
        "changed running unit: write, reload, restart exactly it",
        (replace(WEB2, health_timeout_sec=30.0), API),
        on_host(WEB, API),
        {"web.service": live("web.service"), "api.service": live("api.service")},
        owned("web.service", "api.service"),
        ["write web.service (changed)", "reload systemd", "restart web.service"],
        health=(("web.service", 30.0),),
    ),
    Case(
        "changed stopped unit with start=False: write and reload only",
        (replace(WEB2, start=False, health_timeout_sec=5.0),),
        on_host(WEB),
        {"web.service": live("web.service", "inactive")},
        owned("web.service"),
        ["write web.service (changed)", "reload systemd"],
    ),
    Case(
        "changed running unit with start=False (socket activated): restarted",
        (replace(WEB2, start=False),),
        on_host(WEB),
        {"web.service": live("web.service")},
        owned("web.service"),
        ["write web.service (changed)", "reload systemd", "restart web.service"],
    ),
    Case(
        "changed unit that should run but is stopped: started",
        (WEB2,),
        on_host(WEB),
        {"web.service": live("web.service", "inactive")},
        owned("web.service"),
        ["write web.service (changed)", "reload systemd", "start web.service"],
    ),
    Case(
        "removed service running and enabled: stop, disable, remove, reload",
        (API,),
        on_host(WEB, API),
        {"web.service": live("web.service"), "api.service": live("api.service")},
        owned("web.service", "api.service"),
        ["stop web.service", "disable web.service", "remove web.service", "reload systemd"],
    ),
    Case(
        "removed service failed and disabled: reset its failed state (nothing to stop), remove, "
        "reload",
        (API,),
        on_host(WEB, API),
        {
            "web.service": live("web.service", "failed", "disabled"),
            "api.service": live("api.service"),
        },
        owned("web.service", "api.service"),
        ["reset failed state of web.service", "remove web.service", "reload systemd"],
    ),
    Case(
        "removed file already gone (killed after remove): reload only",
        (API,),
        {"web.service": None, "api.service": API.content},
        {
            "web.service": live("web.service", "inactive", "", need_daemon_reload=True),
            "api.service": live("api.service"),
        },
        owned("web.service", "api.service"),
        ["reload systemd"],
    ),
    Case(
        "removed file gone, stale UnitFileState=enabled (killed before Reload): reload only, "
        "no disable of a file that is gone",
        (API,),
        {"web.service": None, "api.service": API.content},
        {
            "web.service": live("web.service", "inactive", "enabled", need_daemon_reload=True),
            "api.service": live("api.service"),
        },
        owned("web.service", "api.service"),
        ["reload systemd"],
    ),
    Case(
        "removed failed unit, file gone (killed at Reload): reset its failed state, reload",
        (API,),
        {"web.service": None, "api.service": API.content},
        {
            "web.service": live(
                "web.service",
                "failed",
                "enabled",
                need_daemon_reload=True,
                fragment_path="/etc/systemd/system/web.service",
            ),
            "api.service": live("api.service"),
        },
        owned("web.service", "api.service"),
        ["reset failed state of web.service", "reload systemd"],
    ),
    Case(
        "removed unit now loaded from a vendor file: not stopped or disabled, only unowned",
        (API,),
        {"web.service": None, "api.service": API.content},
        {
            "web.service": live("web.service", fragment_path="/usr/lib/systemd/system/web.service"),
            "api.service": live("api.service"),
        },
        owned("web.service", "api.service"),
        [],
    ),
    Case(
        "removed unit loaded from our file (seen through a prefix): stopped, disabled, removed",
        (API,),
        on_host(WEB, API),
        {
            "web.service": live("web.service", fragment_path="/etc/systemd/system/web.service"),
            "api.service": live("api.service"),
        },
        owned("web.service", "api.service"),
        ["stop web.service", "disable web.service", "remove web.service", "reload systemd"],
    ),
    Case(
        "foreign files are never touched",
        (WEB,),
        {"web.service": None},
        {"sshd.service": live("sshd.service")},
        owned(),
        ["write web.service (new)", "enable web.service", "reload systemd", "start web.service"],
        foreign=owned("sshd.service", "legacy.service"),
    ),
    Case(
        "empty inventory, nothing owned: nothing to do",
        (),
        {},
        {},
        owned(),
        [],
    ),
    Case(
        "empty inventory with allow_empty: prune everything",
        (),
        on_host(WEB),
        {"web.service": live("web.service")},
        owned("web.service"),
        ["stop web.service", "disable web.service", "remove web.service", "reload systemd"],
        allow_empty=True,
    ),
    Case(
        "timer added: the timer is enabled and started, its service is not",
        BACKUP,
        {"backup.service": None, "backup.timer": None},
        {},
        owned(),
        [
            "write backup.service (new)",
            "write backup.timer (new)",
            "enable backup.timer",
            "reload systemd",
            "start backup.timer",
        ],
    ),
    Case(
        "timer changed: restart the timer only",
        BACKUP_HOURLY,
        on_host(*BACKUP),
        {
            "backup.service": live("backup.service", "inactive", "static"),
            "backup.timer": live("backup.timer"),
        },
        owned("backup.service", "backup.timer"),
        ["write backup.timer (changed)", "reload systemd", "restart backup.timer"],
    ),
    Case(
        "timer removed: stop the timer first, disable, remove both",
        (),
        on_host(*BACKUP),
        {
            "backup.service": live("backup.service", "activating", "static"),
            "backup.timer": live("backup.timer"),
        },
        owned("backup.service", "backup.timer"),
        [
            "stop backup.timer",
            "stop backup.service",
            "disable backup.timer",
            "remove backup.service",
            "remove backup.timer",
            "reload systemd",
        ],
        allow_empty=True,
    ),
    Case(
        "service changed behind unchanged timer, job running: not restarted",
        BACKUP_NEWCMD,
        on_host(*BACKUP),
        {
            "backup.service": live("backup.service", "activating", "static"),
            "backup.timer": live("backup.timer"),
        },
        owned("backup.service", "backup.timer"),
        ["write backup.service (changed)", "reload systemd"],
    ),
    Case(
        "service behind a path unit changed while running: not restarted (the path starts it)",
        (
            DesiredUnit("spool.path", "[Path]\nPathChanged=/srv/in\nUnit=run.service\n", "spool"),
            DesiredUnit("run.service", service("run", "true", wanted_by=""), "run", False),
        ),
        {"spool.path": "[Path]\nPathChanged=/srv/in\nUnit=run.service\n", "run.service": None},
        {
            "spool.path": live("spool.path"),
            "run.service": live("run.service", "activating", "static"),
        },
        owned("spool.path"),
        ["write run.service (new)", "reload systemd"],
    ),
    Case(
        "socket's service changed while running: restarted; not started when idle",
        (
            DesiredUnit("echo.socket", "[Socket]\nListenStream=7000\n", "echo"),
            DesiredUnit("echo.service", service("echo", wanted_by=""), "echo", False, False),
            DesiredUnit("idle.socket", "[Socket]\nListenStream=7001\n", "idle"),
            DesiredUnit("idle.service", service("idle", wanted_by=""), "idle", False, False),
        ),
        {
            "echo.socket": "[Socket]\nListenStream=7000\n",
            "echo.service": "old",
            "idle.socket": "[Socket]\nListenStream=7001\n",
            "idle.service": "old",
        },
        {
            "echo.socket": live("echo.socket"),
            "echo.service": live("echo.service", file_state="static"),
            "idle.socket": live("idle.socket"),
            "idle.service": live("idle.service", "inactive", "static"),
        },
        owned("echo.socket", "echo.service", "idle.socket", "idle.service"),
        [
            "write echo.service (changed)",
            "write idle.service (changed)",
            "reload systemd",
            "restart echo.service",
        ],
    ),
    Case(
        "new drop-in on a running vendor unit: written, reloaded, the unit restarted",
        (DesiredUnit(DROPIN, "[Service]\nNice=5\n", "nginx.service", False, False),),
        {DROPIN: None},
        {"nginx.service": live("nginx.service")},
        owned(),
        [f"write {DROPIN} (new)", "reload systemd", "restart nginx.service"],
    ),
    Case(
        "drop-in changed with restart = false: reloaded only",
        (DesiredUnit(DROPIN, "[Service]\nNice=5\n", "nginx.service", False, False, restart=False),),
        {DROPIN: "[Service]\nNice=1\n"},
        {"nginx.service": live("nginx.service")},
        owned(DROPIN),
        [f"write {DROPIN} (changed)", "reload systemd"],
        notes=("nginx.service",),  # needs a restart to take it: said once, by this plan
    ),
    Case(
        "drop-in unchanged: nothing (no reload for a file systemd does not name)",
        (DesiredUnit(DROPIN, "[Service]\nNice=5\n", "nginx.service", False, False),),
        {DROPIN: "[Service]\nNice=5\n"},
        {"nginx.service": live("nginx.service")},
        owned(DROPIN),
        [],
    ),
    Case(
        "drop-in removed: removed, reloaded, its (running) unit restarted; a stopped one not",
        (WEB,),
        {"web.service": WEB.content, DROPIN: "x", "idle.service.d/50-reconciler-a.conf": "y"},
        {
            "web.service": live("web.service"),
            "nginx.service": live("nginx.service"),
            "idle.service": live("idle.service", "inactive"),
        },
        owned("web.service", DROPIN, "idle.service.d/50-reconciler-a.conf"),
        [
            "remove idle.service.d/50-reconciler-a.conf",
            f"remove {DROPIN}",
            "reload systemd",
            "restart nginx.service",
        ],
    ),
    Case(
        "a unit pruned with its drop-in: stopped and removed, never restarted",
        (WEB,),
        {
            "web.service": WEB.content,
            "app.service": "[Service]\nExecStart=/bin/true\n",
            "app.service.d/50-reconciler-a.conf": "y",
        },
        {"web.service": live("web.service"), "app.service": live("app.service")},
        owned("web.service", "app.service", "app.service.d/50-reconciler-a.conf"),
        [
            "stop app.service",
            "disable app.service",
            "remove app.service",
            "remove app.service.d/50-reconciler-a.conf",
            "reload systemd",
        ],
    ),
    Case(
        "drop-in on a template: its running instances restarted, a stopped one not",
        (
            DesiredUnit(
                "tpl@.service.d/50-reconciler-a.conf", "[Service]\nNice=2\n", "tpl@.service"
            ),
        ),
        {"tpl@.service.d/50-reconciler-a.conf": "[Service]\nNice=1\n"},
        {
            "tpl@1.service": live("tpl@1.service"),
            "tpl@2.service": live("tpl@2.service", "inactive"),
            "other@1.service": live("other@1.service"),
        },
        owned("tpl@.service.d/50-reconciler-a.conf"),
        [
            "write tpl@.service.d/50-reconciler-a.conf (changed)",
            "reload systemd",
            "restart tpl@1.service",
        ],
    ),
    Case(
        "a template instance's restart killed before it ran: restarted by the next sync",
        (
            DesiredUnit(
                "tpl@.service.d/50-reconciler-a.conf", "[Service]\nNice=2\n", "tpl@.service"
            ),
        ),
        {"tpl@.service.d/50-reconciler-a.conf": "[Service]\nNice=2\n"},
        {"tpl@1.service": live("tpl@1.service"), "tpl@2.service": live("tpl@2.service")},
        owned("tpl@.service.d/50-reconciler-a.conf"),
        ["restart tpl@1.service"],
        interrupted=frozenset({"tpl@1.service"}),
    ),
    Case(
        "drop-in on a managed unit: that unit restarted once",
        (
            WEB,
            DesiredUnit(
                "web.service.d/50-reconciler-m.conf",
                "[Service]\nNice=1\n",
                "web.service",
                False,
                False,
            ),
        ),
        {"web.service": WEB.content, "web.service.d/50-reconciler-m.conf": None},
        {"web.service": live("web.service")},
        owned("web.service"),
        ["write web.service.d/50-reconciler-m.conf (new)", "reload systemd", "restart web.service"],
    ),
    Case(
        "vendor restart killed before it ran (interrupted): restarted by the next sync",
        (DesiredUnit(DROPIN, "[Service]\nNice=5\n", "nginx.service", False, False),),
        {DROPIN: "[Service]\nNice=5\n"},
        {"nginx.service": live("nginx.service")},
        owned(DROPIN),
        ["restart nginx.service"],
        interrupted=frozenset({"nginx.service"}),
    ),
    Case(
        "drop-in written by a killed apply before its Reload: reloaded, restarted",
        (DesiredUnit(DROPIN, "[Service]\nNice=5\n", "nginx.service", False, False),),
        {DROPIN: "[Service]\nNice=5\n"},
        {"nginx.service": live("nginx.service")},
        owned(DROPIN),
        ["reload systemd", "restart nginx.service"],
        interrupted=frozenset({"nginx.service", DROPIN}),
    ),
    Case(
        "timer stopped by hand: started again",
        BACKUP,
        on_host(*BACKUP),
        {
            "backup.service": live("backup.service", "inactive", "static"),
            "backup.timer": live("backup.timer", "inactive"),
        },
        owned("backup.service", "backup.timer"),
        ["start backup.timer"],
    ),
    Case(
        "enable flips: no file change, a reload after (systemd 257 marks them stale)",
        (replace(WEB, enable=False), API),
        on_host(WEB, API),
        {
            "web.service": live("web.service"),
            "api.service": live("api.service", file_state="disabled"),
        },
        owned("web.service", "api.service"),
        ["disable web.service", "enable api.service", "reload systemd"],
    ),
    Case(
        "[Install] changed on an enabled unit: re-enabled",
        (DesiredUnit("web.service", service("web", wanted_by="graphical.target"), "web"),),
        on_host(WEB),
        {"web.service": live("web.service")},
        owned("web.service"),
        [
            "write web.service (changed)",
            "disable web.service",
            "enable web.service",
            "reload systemd",
            "restart web.service",
        ],
    ),
    Case(
        "static unit (no [Install]) with enable=True: enabled once, then left",
        (DesiredUnit("helper.service", service("helper", wanted_by=""), "helper"),),
        {"helper.service": None},
        {},
        owned(),
        [
            "write helper.service (new)",
            "enable helper.service",
            "reload systemd",
            "start helper.service",
        ],
    ),
    Case(
        "need_daemon_reload only: reload only",
        (WEB,),
        on_host(WEB),
        {"web.service": live("web.service", need_daemon_reload=True)},
        owned("web.service"),
        ["reload systemd"],
    ),
    Case(
        "file written but never loaded (killed before reload): reload and start",
        (WEB,),
        on_host(WEB),
        {"web.service": LiveUnit("web.service")},
        owned("web.service"),
        ["enable web.service", "reload systemd", "start web.service"],
    ),
    Case(
        "failed unit unchanged: start, health-gated",
        (replace(WEB, health_timeout_sec=10.0),),
        on_host(WEB),
        {"web.service": live("web.service", "failed", result="exit-code")},
        owned("web.service"),
        ["start web.service"],
        health=(("web.service", 10.0),),
    ),
    Case(
        "activating unit unchanged: left alone",
        (WEB,),
        on_host(WEB),
        {"web.service": live("web.service", "activating")},
        owned("web.service"),
        [],
    ),
    Case(
        "oneshot that already ran fine: not run again",
        (svc("migrate", "true"),),
        on_host(svc("migrate", "true")),
        {
            "migrate.service": live(
                "migrate.service", "inactive", service_type="oneshot", result="success"
            )
        },
        owned("migrate.service"),
        [],
    ),
    Case(
        "oneshot changed: run again",
        (svc("migrate", "false"),),
        on_host(svc("migrate", "true")),
        {
            "migrate.service": live(
                "migrate.service", "inactive", service_type="oneshot", result="success"
            )
        },
        owned("migrate.service"),
        ["write migrate.service (changed)", "reload systemd", "start migrate.service"],
    ),
    Case(
        "interrupted apply (killed after reload, before restart): restart",
        (replace(WEB, health_timeout_sec=3.0),),
        on_host(WEB),
        {"web.service": live("web.service")},
        owned("web.service"),
        ["restart web.service"],
        interrupted=owned("web.service", "gone.service"),
        health=(("web.service", 3.0),),
    ),
    Case(
        "hand-masked managed unit: not written or started, a note",
        (WEB2, API),
        on_host(WEB, API),
        {
            "web.service": LiveUnit("web.service", "masked", unit_file_state="masked"),
            "api.service": live("api.service"),
        },
        owned("web.service", "api.service"),
        [],
        notes=("web.service",),
    ),
    Case(
        "runtime-masked new unit: not written, not owned",
        (WEB,),
        {"web.service": None},
        {"web.service": LiveUnit("web.service", "masked", unit_file_state="masked-runtime")},
        owned(),
        [],
        notes=("web.service",),
        owned_after=owned(),
    ),
    Case(
        "unit masked by a foreign symlink in the unit dir: left alone, never owned",
        (WEB,),
        {"web.service": ""},
        {"web.service": LiveUnit("web.service", "masked", unit_file_state="masked")},
        owned(),
        [],
        foreign=owned("web.service"),
        notes=("web.service",),
        owned_after=owned(),
    ),
]


def run(case: Case, files: Mapping[str, str | None], units: Units, own: frozenset[str]) -> Plan:
    return plan(
        case.desired,
        files,
        units,
        own,
        allow_empty=case.allow_empty,
        foreign=case.foreign,
        interrupted=case.interrupted,
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan_table(case: Case) -> None:
    p = run(case, case.files, case.units, case.owned)
    assert describe(p) == case.expect + [f"note: {n}" for n in p.notes]
    assert p.health_checks == case.health
    assert tuple(n.split()[0] for n in p.notes) == case.notes
    expected_owned = case.owned_after
    if expected_owned is None:
        expected_owned = frozenset(d.name for d in case.desired)
    assert p.owned_after == expected_owned
    check_invariants(case, p)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan_is_idempotent(case: Case) -> None:
    p = run(case, case.files, case.units, case.owned)
    files, units = simulate(p, case.files, case.units)
    again = plan(
        case.desired,
        files,
        units,
        p.owned_after,
        allow_empty=case.allow_empty,
        foreign=case.foreign,
    )
    assert describe(again) == [f"note: {n}" for n in again.notes]
    assert set(again.notes) <= set(p.notes)  # a change's note (restart = false) is said once
    assert again.empty


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan_is_deterministic(case: Case) -> None:
    shuffled = replace(
        case,
        desired=tuple(reversed(case.desired)),
        files=dict(reversed(case.files.items())),
        units=dict(reversed(case.units.items())),
    )
    assert run(shuffled, shuffled.files, shuffled.units, case.owned) == run(
        case, case.files, case.units, case.owned
    )


def check_invariants(case: Case, p: Plan) -> None:
    """Files outside the manifest are never touched; one reload, after every file change
    and every enabling."""
    for a in p.actions:
        if isinstance(a, RemoveUnitFile):
            assert a.name in case.owned
        if isinstance(a, WriteUnitFile):
            new = case.files.get(a.name) is None and a.name not in case.foreign
            assert a.name in case.owned or new
    kinds = [type(a) for a in p.actions]
    assert kinds.count(DaemonReload) <= 1
    if DaemonReload in kinds:
        reload_at = kinds.index(DaemonReload)
        assert all(k not in (WriteUnitFile, RemoveUnitFile, StopUnit) for k in kinds[reload_at:])
        assert all(k not in (StartUnit, RestartUnit) for k in kinds[:reload_at])
        # enabling changes what systemd 257 loaded (NeedDaemonReload): the Reload comes after
        assert all(k not in (EnableUnits, DisableUnits) for k in kinds[reload_at:])


ERRORS = [
    pytest.param(
        (WEB,),
        {"web.service": "[Service]\nExecStart=/usr/bin/legacy\n"},
        owned(),
        owned("web.service"),
        "cannot write unit 'web.service': /etc/systemd/system/web.service exists and is "
        "not managed by reconciler",
        id="foreign file collision",
    ),
    pytest.param(
        (WEB, API),
        {"web.service": None, "api.service": "x"},
        owned(),
        owned(),
        "cannot write unit 'api.service': /etc/systemd/system/api.service exists",
        id="unowned file present (not listed as foreign) is a collision too",
    ),
    pytest.param(
        (),
        on_host(WEB, API),
        owned("web.service", "api.service"),
        owned(),
        "refusing to remove all 2 managed units: the inventory selects no service for this host",
        id="empty inventory guard",
    ),
    pytest.param(
        (WEB, replace(WEB2, service="www")),
        {"web.service": None},
        owned(),
        owned(),
        "cannot plan unit 'web.service': rendered by both services 'web' and 'www'",
        id="two services render the same unit",
    ),
    pytest.param(
        (DesiredUnit("web.service", service("web") + "Alias=sshd.service\n", "web"),),
        {"web.service": None},
        owned(),
        owned(),
        "cannot write unit 'sshd.service': alias 'sshd.service' of unit 'web.service' already "
        "exists (/lib/systemd/system/sshd.service)",
        id="alias of a unit systemd has",
    ),
    pytest.param(
        (DesiredUnit("web.service", service("web") + "Alias=web.socket\n", "web"),),
        {"web.service": None},
        owned(),
        owned(),
        "cannot enable unit 'web.service': Alias=web.socket is not a .service unit name",
        id="alias of another type",
    ),
    pytest.param(
        (DesiredUnit("web.service", service("web") + "Alias=api.service\n", "web"), API),
        {"web.service": None, "api.service": None},
        owned(),
        owned(),
        "cannot enable unit 'web.service': Alias=api.service is also the name of 'api.service'",
        id="alias of another desired unit",
    ),
    pytest.param(
        (DesiredUnit("web.service", service("web") + "Also=debug-shell.service\n", "web"),),
        {"web.service": None},
        owned(),
        owned(),
        "cannot enable unit 'web.service': Also=debug-shell.service names a unit not managed "
        "by reconciler",
        id="Also= naming a unit not ours",
    ),
    pytest.param(
        (svc("systemd-logind"),),
        {"systemd-logind.service": None},
        owned(),
        owned(),
        "cannot write unit 'systemd-logind.service': systemd-logind.service already exists "
        "(/lib/systemd/system/systemd-logind.service)",
        id="vendor unit name",
    ),
]

TAKEN = {
    "sshd.service": "/lib/systemd/system/sshd.service",
    "systemd-logind.service": "/lib/systemd/system/systemd-logind.service",
}


@pytest.mark.parametrize(("desired", "files", "own", "foreign", "message"), ERRORS)
def test_plan_refuses(
    desired: tuple[DesiredUnit, ...],
    files: Files,
    own: frozenset[str],
    foreign: frozenset[str],
    message: str,
) -> None:
    with pytest.raises(ApplyError) as err:
        plan(desired, files, {}, own, foreign=foreign, taken=TAKEN)
    assert err.value.message.startswith(message)
    assert err.value.hint


def test_empty_inventory_hint_names_the_flag() -> None:
    with pytest.raises(ApplyError) as err:
        plan((), on_host(WEB), {}, owned("web.service"))
    assert err.value.message == (
        "refusing to remove all 1 managed unit: the inventory selects no service for this host"
    )
    assert err.value.hint == "pass --allow-empty to prune everything"


def test_collision_names_the_configured_unit_dir() -> None:
    with pytest.raises(ApplyError, match=r"/srv/units/web\.service exists") as err:
        plan((WEB,), {"web.service": "x"}, {}, owned(), unit_dir="/srv/units")
    assert "adopt" in (err.value.hint or "")


def test_actions_carry_content_and_previous() -> None:
    p = plan(
        (WEB2,),
        {"web.service": WEB.content, "old.service": "[Service]\n"},
        {"web.service": live("web.service"), "old.service": live("old.service", "inactive", "")},
        owned("web.service", "old.service"),
    )
    assert p.actions == (
        RemoveUnitFile("old.service", "[Service]\n"),
        WriteUnitFile("web.service", WEB2.content, WEB.content),
        DaemonReload(),
        RestartUnit("web.service"),
    )


def test_masked_note_text() -> None:
    p = plan((WEB,), on_host(WEB), {"web.service": LiveUnit("web.service", "masked")}, owned())
    assert p.notes == (
        "web.service is masked on this host: not written, enabled or started "
        "(run 'systemctl unmask web.service' to let reconciler manage it again)",
    )


GOLDEN_DESCRIBE = [
    "stop old.service",
    "disable old.service",
    "remove old.service",
    "write new.service (new)",
    "write web.service (changed)",
    "enable new.service",
    "reload systemd",
    "start new.service",
    "restart web.service",
    "note: db.service is masked on this host: not written, enabled or started "
    "(run 'systemctl unmask db.service' to let reconciler manage it again)",
]

GOLDEN_DIFF = """\
--- a/old.service
+++ /dev/null
@@ -1,2 +0,0 @@
-[Service]
-ExecStart=/bin/old
--- /dev/null
+++ b/new.service
@@ -0,0 +1,2 @@
+[Service]
+ExecStart=/bin/new
\\ No newline at end of file
--- a/web.service
+++ b/web.service
@@ -2,7 +2,7 @@
 Description=web
 
 [Service]
-ExecStart=/bin/sleep infinity
+ExecStart=/bin/sleep 1000
 
 [Install]
 WantedBy=multi-user.target
"""


def golden_plan() -> Plan:
    new = DesiredUnit("new.service", "[Service]\nExecStart=/bin/new", "new")
    return plan(
        (WEB2, new, svc("db")),
        {"web.service": WEB.content, "old.service": "[Service]\nExecStart=/bin/old\n"}
        | {"new.service": None, "db.service": svc("db").content},
        {
            "web.service": live("web.service"),
            "old.service": live("old.service"),
            "db.service": LiveUnit("db.service", "masked"),
        },
        owned("web.service", "old.service", "db.service"),
    )


def test_describe_golden() -> None:
    assert describe(golden_plan()) == GOLDEN_DESCRIBE


def test_diff_golden() -> None:
    assert diff(golden_plan()) == GOLDEN_DIFF


def test_diff_of_empty_plan_is_empty() -> None:
    assert diff(Plan()) == ""
    assert describe(Plan()) == []


def test_200_units_deterministic_and_idempotent() -> None:
    rng = random.Random(200)
    desired: list[DesiredUnit] = []
    for i in range(100):
        desired.append(svc(f"svc{i:03}", f"sleep {i}", health_timeout_sec=float(i % 7) or None))
    for i in range(50):
        desired.extend(job(f"job{i:03}", f"*-*-* {i % 24:02}:00:00"))
    files: Files = {}
    units: Units = {}
    for d in desired:  # a host half-way: some files missing, some stale, units in every state
        roll = rng.random()
        files[d.name] = None if roll < 0.2 else d.content if roll < 0.7 else d.content + "# old\n"
        state = rng.choice(["active", "inactive", "failed", "activating"])
        units[d.name] = live(d.name, state, rng.choice(["enabled", "disabled", "static"]))
    for i in range(20):  # owned units no longer desired
        files[f"gone{i:02}.service"] = service(f"gone{i}")
        units[f"gone{i:02}.service"] = live(f"gone{i:02}.service", rng.choice(["active", "failed"]))
    own = frozenset(n for n, c in files.items() if c is not None)

    first = plan(desired, files, units, own)
    for _ in range(5):
        order = desired[:]
        rng.shuffle(order)
        keys = list(files)
        rng.shuffle(keys)
        assert plan(order, {k: files[k] for k in keys}, dict(reversed(units.items())), own) == first
    assert sum(isinstance(a, DaemonReload) for a in first.actions) == 1
    assert sum(isinstance(a, EnableUnits | DisableUnits) for a in first.actions) <= 3
    files2, units2 = simulate(first, files, units)
    assert plan(desired, files2, units2, first.owned_after).empty


# --- a tiny model of the host, to check that applying a plan converges ---------------------


def simulate(p: Plan, files: Mapping[str, str | None], units: Units) -> tuple[Files, Units]:
    """What applying ``p`` does to the unit dir and to systemd's view of the units (pure)."""
    files_after: Files = dict(files)
    after: Units = dict(units)
    starts = 0

    def get(name: str) -> LiveUnit:
        return after.get(name) or LiveUnit(name)

    def set_(name: str, **changes: object) -> None:
        after[name] = replace(get(name), **changes)  # type: ignore[arg-type]

    for a in p.actions:
        if isinstance(a, StopUnit | ResetFailedUnit):
            set_(a.name, active_state="inactive", sub_state="dead")
        elif isinstance(a, DisableUnits):
            for name in a.names:
                set_(name, unit_file_state="disabled")
        elif isinstance(a, RemoveUnitFile | WriteUnitFile):
            files_after[a.name] = a.content if isinstance(a, WriteUnitFile) else None
            set_(a.name, need_daemon_reload=get(a.name).load_state != "not-found")
        elif isinstance(a, DaemonReload):
            for name in set(after) | set(files_after):
                _reload(name, get(name), files_after.get(name), set_)
        elif isinstance(a, EnableUnits):
            for name in a.names:
                if "[Install]" in (files_after.get(name) or ""):
                    set_(name, unit_file_state="enabled")
        elif isinstance(a, StartUnit | RestartUnit):
            starts += 1
            oneshot = get(a.name).service_type == "oneshot"
            state = "inactive" if oneshot else "active"
            set_(a.name, active_state=state, result="success", invocation_id=f"run{starts}")
    return files_after, after


def _reload(name: str, unit: LiveUnit, content: str | None, set_: _Setter) -> None:
    if unit.load_state == "masked":
        set_(name, need_daemon_reload=False)
    elif content is not None:
        fresh = "disabled" if "[Install]" in content else "static"
        set_(name, load_state="loaded", unit_file_state=unit.unit_file_state or fresh)
        set_(name, need_daemon_reload=False)
    elif unit.active_state not in RUNNING:
        set_(name, load_state="not-found", unit_file_state="", need_daemon_reload=False)


def test_simulate_models_a_full_prune() -> None:
    p = plan(
        (),
        on_host(WEB),
        {"web.service": live("web.service")},
        owned("web.service"),
        allow_empty=True,
    )
    files, units = simulate(p, on_host(WEB), {"web.service": live("web.service")})
    assert files == {"web.service": None}
    assert units["web.service"].load_state == "not-found"
    assert isinstance(p.actions[0], StopUnit)


@pytest.mark.parametrize(
    ("old", "new"), [(["a\n"], ["b\n", "c\n"]), ([], ["x\n"]), (["x\n", "y\n"], [])]
)
def test_whole_file_diff_is_difflib_format(old: list[str], new: list[str]) -> None:
    expected = list(difflib.unified_diff(old, new, "a/u.service", "b/u.service"))
    assert whole_file_diff(old, new, "a/u.service", "b/u.service") == expected


def test_diff_of_a_large_unit_is_linear() -> None:
    """40,000 lines, every other one changed: difflib compared for minutes (quadratic)."""
    old = "".join(f"Environment=K{i}=v{i}\n" for i in range(40_000))
    new = "".join(f"Environment=K{i}=v{i}{'' if i % 2 else 'x'}\n" for i in range(40_000))
    changed = Plan(actions=(WriteUnitFile("u.service", new, old),))
    started = time.process_time()
    text = diff(changed)
    assert time.process_time() - started < 2
    lines = text.splitlines(keepends=True)[3:]
    assert "".join(ln[1:] for ln in lines if ln[0] == "-") == old
    assert "".join(ln[1:] for ln in lines if ln[0] == "+") == new


NICE5 = DesiredUnit(DROPIN, "[Service]\nNice=5\n", "nginx.service", False, False, restart=False)


@pytest.mark.parametrize(
    ("what", "dropin", "previous", "nginx", "expected"),
    [  # README-only users' trials: both were written silently
        ("unit nowhere", NICE5, None, None,
         f"{DROPIN}: nginx.service is not on this host (not managed, no unit file systemd "
         "knows): the drop-in is written and takes effect only once nginx.service is "
         'installed; check the name in [dropins."nginx.service"]'),
        ("unit nowhere, unchanged drop-in", NICE5, NICE5.content, None, "is not on this host"),
        ("restart = false, running", NICE5, "[Service]\nNice=1\n", live("nginx.service"),
         f"nginx.service needs a restart to take its changed drop-in {DROPIN} (restart = false: "
         "the Reload alone leaves it running on its old settings; run 'systemctl restart "
         "nginx.service' when convenient)"),
        ("restart = false, stopped", NICE5, "[Service]\nNice=1\n",
         live("nginx.service", "inactive"), None),
        ("restart = false, unchanged", NICE5, NICE5.content, live("nginx.service"), None),
        ("restart = true, running", replace(NICE5, restart=True), "[Service]\nNice=1\n",
         live("nginx.service"), None),
    ],
)  # fmt: skip
def test_dropin_notes(
    what: str,
    dropin: DesiredUnit,
    previous: str | None,
    nginx: LiveUnit | None,
    expected: str | None,
) -> None:
    units = {"nginx.service": nginx} if nginx else {}
    p = plan((dropin,), {DROPIN: previous}, units, owned(DROPIN) if previous else owned())
    if expected is None:
        assert p.notes == (), what
    else:
        assert len(p.notes) == 1 and expected in p.notes[0], (what, p.notes)


def test_a_managed_units_changed_dropin_without_restart_is_noted() -> None:
    """A user's trial: ``restart = false`` on a drop-in of the inventory's own service got
    no note (only vendor units' drop-ins did): the running unit stays on its old settings."""
    worker = svc("worker")
    dropin = DesiredUnit(
        "worker.service.d/50-reconciler-env.conf", "[Service]\nEnvironment=LEVEL=trace\n",
        "worker.service", False, False, restart=False,
    )  # fmt: skip
    before = {worker.name: worker.content, dropin.name: "[Service]\nEnvironment=LEVEL=info\n"}
    running = {worker.name: live(worker.name)}
    p = plan((worker, dropin), before, running, owned(worker.name, dropin.name))
    assert [n for n in p.notes if "needs a restart" in n] == [
        "worker.service needs a restart to take its changed drop-in "
        "worker.service.d/50-reconciler-env.conf (restart = false: the Reload alone leaves "
        "it running on its old settings; run 'systemctl restart worker.service' when "
        "convenient)"
    ]
    changed = svc("worker", "sleep 999")  # restarted for its own file: nothing to note
    p = plan((changed, dropin), before, running, owned(worker.name, dropin.name))
    assert p.notes == ()
