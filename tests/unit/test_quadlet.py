"""Quadlet kinds (pure parts): the file and the service it generates, the plan around the
generator's Reload, the prune that stops first, the host without Podman >= 4.4."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core import files, unitkind
from reconciler.core import plan as planner
from reconciler.core.files import HostFile, Policy
from reconciler.core.quadlet import split_quadlets
from reconciler.errors import InventoryError
from reconciler.model import (
    DaemonReload,
    DesiredFile,
    DesiredUnit,
    EnableUnits,
    FileMeta,
    LiveUnit,
    ManagedFile,
    RemoveFile,
    RestartUnit,
    StartUnit,
    StopUnit,
    WriteFile,
)
from reconciler.reconcile import quadlet

CONTAINER = "[Container]\nImage=localhost/bb\nExec=/bin/sleep infinity\n"


@pytest.mark.parametrize(
    ("name", "content", "service"),
    [
        ("web.container", CONTAINER, "web.service"),
        ("app.kube", "[Kube]\nYaml=app.yaml\n", "app.service"),
        ("data.volume", "[Volume]\n", "data-volume.service"),
        ("lan.network", "[Network]\n", "lan-network.service"),
        ("grp.pod", "[Pod]\n", "grp-pod.service"),
        ("bb.image", "[Image]\nImage=x\n", "bb-image.service"),
        ("web.container", CONTAINER + "ServiceName=front\n", "front.service"),
    ],
)
def test_split_gives_the_file_and_the_generated_service(
    name: str, content: str, service: str
) -> None:
    plain = DesiredUnit("a.service", "[Service]\n", "a")
    unit = DesiredUnit(name, content, name.partition(".")[0], True, True, 5.0)
    units, quadlets = split_quadlets([plain, unit], lambda u: "# marker\n")
    assert quadlets == [
        DesiredFile(
            f"/etc/containers/systemd/{name}",
            ("# marker\n" + content).encode(),
            restart=(service,),
            quadlet=True,
        )
    ]
    assert units == [
        plain,
        DesiredUnit(
            service,
            "",
            unit.service,
            False,
            True,
            5.0,
            generated_from=f"/etc/containers/systemd/{name}",
        ),  # fmt: skip
    ]


def generated(name: str = "web.service") -> DesiredUnit:
    return DesiredUnit(name, "", "web", False, True, None, generated_from="/etc/c/web.container")


def test_a_new_generated_unit_is_reloaded_for_then_started_never_enabled_or_owned() -> None:
    p = planner.plan([generated()], {"web.service": None}, {}, frozenset())
    assert p.actions == (DaemonReload(), StartUnit("web.service"))
    assert not any(isinstance(a, EnableUnits) for a in p.actions)
    assert p.owned_after == frozenset()


def test_a_running_generated_unit_is_left_alone() -> None:
    live = {"web.service": LiveUnit("web.service", "loaded", "active", "running", "generated")}
    p = planner.plan([generated()], {"web.service": None}, live, frozenset())
    assert p.actions == ()


PATH = "/etc/containers/systemd/web.container"


def quadlet_file(content: bytes) -> DesiredFile:
    return DesiredFile(PATH, content, restart=("web.service",), quadlet=True)


def test_changed_quadlet_file_reloads_then_restarts_only_its_service() -> None:
    old = FileMeta(b"old\n", 0o644, 0, 0)
    manifest = {
        PATH: ManagedFile(PATH, files.sha256(b"old\n"), 0o644, 0, 0, restart=("web.service",))
    }
    fp = files.plan_files(
        [quadlet_file(b"new\n")], {PATH: HostFile(PATH, "file", old)}, manifest, Policy(),
        {"root": 0}, {"root": 0},
    )  # fmt: skip
    running = {"web.service": LiveUnit("web.service", "loaded", "active", "running")}
    merged = files.merge(planner.plan([generated()], {}, running, frozenset()), fp,
                         {"web.service": "active", "db.service": "active"})  # fmt: skip
    kinds = [type(a) for a in merged.actions]
    assert kinds == [WriteFile, DaemonReload, RestartUnit], merged.actions
    assert merged.actions[-1] == RestartUnit("web.service")


def test_removed_quadlet_file_stops_its_service_first_then_reloads() -> None:
    live = FileMeta(b"x\n", 0o644, 0, 0)
    manifest = {
        PATH: ManagedFile(PATH, files.sha256(b"x\n"), 0o644, 0, 0, restart=("web.service",))
    }
    fp = files.plan_files([], {PATH: HostFile(PATH, "file", live)}, manifest, Policy(), {}, {})
    merged = files.merge(planner.plan([], {}, {}, frozenset()), fp, {"web.service": "active"})
    assert merged.actions == (StopUnit("web.service"), RemoveFile(PATH, b"x\n"), DaemonReload())


def test_quadlet_dir_is_the_services_not_a_files_entrys() -> None:
    # no files_roots needed for a service's Quadlet file ...
    fp = files.plan_files([quadlet_file(b"a\n")], {}, {}, Policy(), {"root": 0}, {"root": 0})
    assert [type(a) for a in fp.actions] == [WriteFile]
    # ... but a [files."PATH"] entry can never write there
    with pytest.raises(InventoryError, match="protected path"):
        files.plan_files([DesiredFile(PATH, b"a\n")], {}, {}, Policy(("/etc",)),
                         {"root": 0}, {"root": 0})  # fmt: skip
    # a file already there that is not ours: refused, named by its service
    with pytest.raises(InventoryError, match=r"services\.web: exists and is not managed"):
        files.plan_files([quadlet_file(b"a\n")], {PATH: HostFile(PATH, "file")}, {}, Policy(),
                         {"root": 0}, {"root": 0})  # fmt: skip


def test_host_without_podman_is_refused_or_noted(tmp_path: Path) -> None:
    wanted = [quadlet_file(b"[Container]\n")]
    assert quadlet.missing(tmp_path) == "Podman is not installed (Quadlet needs Podman >= 4.4)"
    with pytest.raises(InventoryError, match=r"services\.web\.kind: this host cannot run"):
        quadlet.check(wanted, tmp_path)
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/podman").touch()  # Debian 12's Podman 4.3: no generator
    note = quadlet.check(wanted, tmp_path, required=False)
    assert note and "has no Quadlet generator (Quadlet needs Podman >= 4.4)" in note
    assert quadlet.check([DesiredFile("/etc/app/a", b"")], tmp_path) is None  # no Quadlet


def test_quadlet_paths() -> None:
    assert unitkind.is_quadlet_path(PATH)
    assert not unitkind.is_quadlet_path("/etc/containers/systemd/x.service")
    assert not unitkind.is_quadlet_path("/etc/app/web.container")


def test_a_generated_unit_has_no_file_drift() -> None:
    from reconciler.core import drift

    state = drift.UnitState(
        LiveUnit("web.service", "loaded", "active", "running", "generated"), None
    )
    assert drift.check(generated(), state) == []


def test_a_line_of_one_empty_value_renders_as_a_blank_line() -> None:
    from reconciler.core.render import CLOSE, OPEN, check_structure

    assert check_structure(f"[Container]\nImage=x\n{OPEN}{CLOSE}\n") is None


def test_the_test_roots_mirror_comes_from_apt_sources(tmp_path: Path) -> None:
    from reconciler.devtools import rootfs
    from reconciler.errors import SandboxError

    (tmp_path / "sources.list.d").mkdir()
    with pytest.raises(SandboxError, match="no Debian mirror"):
        rootfs.mirror(tmp_path)
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb [signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"
    )
    assert rootfs.mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://deb.example/debian-security\nSuites: x\n\n"
        "Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm\n"
    )
    assert rootfs.mirror(tmp_path) == "http://deb.example/debian"


def test_a_plain_service_turned_container_loses_its_unit_file_then_runs_generated() -> None:
    old = "# Managed by reconciler\n[Service]\nExecStart=/bin/sleep infinity\n"
    live = {"web.service": LiveUnit("web.service", "loaded", "active", "running", "enabled",
                                    fragment_path="/etc/systemd/system/web.service")}  # fmt: skip
    p = planner.plan([generated()], {"web.service": old}, live, frozenset({"web.service"}))
    assert planner.describe(p) == [
        "stop web.service",
        "disable web.service",
        "remove web.service",
        "reload systemd",
        "restart web.service",  # now the generator's unit
    ]
    assert p.owned_after == frozenset()


def test_a_foreign_unit_file_shadowing_a_generated_unit_is_refused() -> None:
    from reconciler.errors import ApplyError

    with pytest.raises(ApplyError, match="web.service exists and is not managed"):
        planner.plan([generated()], {"web.service": "[Service]\n"}, {}, frozenset())
