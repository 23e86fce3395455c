"""The config-file policy and plan (pure): where a repository may write, what is refused
before anything is written, and what is written, restored, removed, restarted, reloaded."""

from __future__ import annotations

import pytest

from reconciler.core import files
from reconciler.core.files import HostFile, Policy
from reconciler.core.plan import describe, diff
from reconciler.errors import InventoryError
from reconciler.model import (
    DaemonReload,
    DesiredFile,
    FileMeta,
    ManagedFile,
    Plan,
    ReloadUnit,
    RemoveFile,
    RemoveUnitFile,
    RestartUnit,
    StartUnit,
    StopUnit,
    WriteFile,
    WriteUnitFile,
)

POLICY = Policy(("/etc/app", "/srv/conf"), files.DENIED + ("/etc/reconciler",))
USERS, GROUPS = {"root": 0, "www": 33}, {"root": 0, "www": 33}


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/etc/app/a.conf", None),
        ("/etc/app/sub/dir/b.conf", None),
        ("/etc/application.conf", "outside this host's files_roots"),
        ("/etc/app", "outside this host's files_roots"),  # the root itself is no file
        ("/etc/shadow", "protected path"),
        ("/etc/sudoers.d/x", "protected path"),
        ("/root/.ssh/config", "protected path"),
        ("/etc/app/.ssh/authorized_keys", "protected path"),
        ("/etc/systemd/system/x.service", "protected path"),
        ("/etc/containers/systemd/x.container", "protected path"),
        ("/etc/reconciler/config.toml", "protected path"),
        ("/etc", "protected path"),  # a parent of a protected path
    ],
)
def test_path_policy(path: str, why: str | None) -> None:
    problem = files.path_problem(path, POLICY)
    assert (problem is None) if why is None else (why in (problem or "")), problem


def test_no_roots_no_files() -> None:
    assert "files_roots is empty" in (files.path_problem("/etc/app/a", Policy()) or "")


def wanted(path: str = "/etc/app/a.conf", **kw: object) -> DesiredFile:
    return DesiredFile(path, b"new\n", **kw)  # type: ignore[arg-type]


def meta(content: bytes = b"new\n", mode: int = 0o644, uid: int = 0, gid: int = 0) -> FileMeta:
    return FileMeta(content, mode, uid, gid)


def plan(
    desired: list[DesiredFile],
    host: dict[str, HostFile] | None = None,
    manifest: dict[str, ManagedFile] | None = None,
) -> files.FilePlan:
    return files.plan_files(desired, host or {}, manifest or {}, POLICY, USERS, GROUPS)


@pytest.mark.parametrize(
    ("desired", "host", "message"),
    [
        (wanted("/etc/other/x"), None, "files.\"/etc/other/x\": '/etc/other/x' is outside"),
        (wanted("/etc/shadow"), None, "protected path"),
        (
            wanted(),
            HostFile("/etc/app/a.conf", blocked="/etc/app"),
            "'/etc/app' is a symlink or not a directory",
        ),
        (wanted(), HostFile("/etc/app/a.conf", "symlink"), "a symlink is there"),
        (wanted(), HostFile("/etc/app/a.conf", "directory"), "a directory is there"),
        (
            wanted(),
            HostFile("/etc/app/a.conf", "file", meta(b"old")),
            "exists and is not managed by reconciler (set adopt = true",
        ),
        (wanted(owner="nginx"), None, "files.\"/etc/app/a.conf\".owner: user 'nginx' does not"),
        (wanted(group="nginx"), None, "files.\"/etc/app/a.conf\".group: group 'nginx' does not"),
    ],
)
def test_refused_before_anything(desired: DesiredFile, host: HostFile | None, message: str) -> None:
    with pytest.raises(InventoryError) as exc:
        plan([desired], {desired.path: host} if host else {})
    text = str(exc.value)
    assert text.startswith("inventory/services.toml: files.") and message in text, text
    assert "\n" not in text


def test_new_changed_unchanged() -> None:
    fresh = plan([wanted(restart=("app.service",))])
    assert fresh.actions == (WriteFile("/etc/app/a.conf", b"new\n", 0o644, 0, 0, None),)
    assert fresh.restart == {"app.service"}
    entry = fresh.after[0]
    ours = {entry.path: entry}
    same = plan([wanted()], {entry.path: HostFile(entry.path, "file", meta())}, ours)
    assert same.actions == () and same.restart == frozenset()
    mode = plan(
        [wanted(mode=0o600, owner="www", reload=("app.service",))],
        {entry.path: HostFile(entry.path, "file", meta())},
        ours,
    )
    assert mode.actions == (WriteFile(entry.path, b"new\n", 0o600, 33, 0, b"new\n"),)
    assert mode.reload == {"app.service"}


def test_adopt_keeps_the_original_and_restores_it() -> None:
    theirs = HostFile("/etc/app/a.conf", "file", meta(b"theirs", 0o600, 33, 33))
    adopted = plan([wanted(adopt=True)], {theirs.path: theirs})
    assert adopted.after[0].original == theirs.meta
    assert adopted.during == adopted.after
    ours = {theirs.path: adopted.after[0]}
    back = plan([], {theirs.path: HostFile(theirs.path, "file", meta())}, ours)
    assert back.actions == (
        WriteFile(theirs.path, b"theirs", 0o600, 33, 33, b"new\n", restore=True),
    )
    assert back.during == adopted.after and back.after == ()


def test_prune_removes_ours_and_never_follows_a_symlink() -> None:
    entry = plan([wanted()]).after[0]
    gone = plan([], {entry.path: HostFile(entry.path, "file", meta())}, {entry.path: entry})
    assert gone.actions == (RemoveFile(entry.path, b"new\n"),)
    swapped = plan([], {entry.path: HostFile(entry.path, "symlink")}, {entry.path: entry})
    assert swapped.actions == () and "not removed" in swapped.notes[0]


def test_merge_orders_files_before_the_reload_and_jobs() -> None:
    units = Plan(
        actions=(
            WriteUnitFile("app.service", "x"),
            DaemonReload(),
            StartUnit("new.service"),
        )
    )
    fp = plan([wanted(restart=("app.service", "new.service"), reload=("web.service",))])
    active = {"app.service": "active", "new.service": "inactive", "web.service": "active"}
    merged = files.merge(units, fp, active, health={"app.service": 5.0})
    kinds = [type(a).__name__ for a in merged.actions]
    assert kinds == [
        "WriteUnitFile",
        "WriteFile",
        "DaemonReload",
        "StartUnit",
        "RestartUnit",
        "ReloadUnit",
    ]
    assert RestartUnit("app.service") in merged.actions
    assert ReloadUnit("web.service") in merged.actions
    assert merged.health_checks == (("app.service", 5.0),)
    lines = describe(merged)
    assert "write /etc/app/a.conf (new; mode 0644, owner 0:0)" in lines
    assert "reload web.service" in lines
    assert "+++ b/etc/app/a.conf" in diff(merged)


def test_merge_template_restarts_its_running_instances() -> None:
    fp = plan([wanted(restart=("worker@.service",))])
    active = {"worker@1.service": "active", "worker@2.service": "inactive"}
    merged = files.merge(Plan(), fp, active)
    assert [a for a in merged.actions if isinstance(a, RestartUnit)] == [
        RestartUnit("worker@1.service")
    ]


def test_binary_diff_shows_sizes_and_sha256() -> None:
    fp = plan([DesiredFile("/etc/app/b.bin", b"\0\1\2")])
    text = diff(files.merge(Plan(), fp, {}))
    assert text.startswith("Binary file /etc/app/b.bin: none -> 3 bytes, sha256 ")


def test_reload_of_a_unit_that_cannot_reload_is_refused() -> None:
    fp = plan([wanted(reload=("oneshot.service",))])
    with pytest.raises(InventoryError) as exc:
        files.merge(Plan(), fp, {"oneshot.service": "active"}, cannot_reload={"oneshot.service"})
    assert ".reload: 'oneshot.service' cannot reload" in str(exc.value)
    stopped = files.merge(Plan(), fp, {"oneshot.service": "inactive"}, cannot_reload=())
    assert not [a for a in stopped.actions if isinstance(a, ReloadUnit)]


def test_a_unit_removed_with_its_config_file_is_not_reloaded_or_restarted() -> None:
    """A user's trial: one commit removing a service and the config file that reloads it
    planned "remove greet.service ... reload greet.service": the sync failed half-way on the
    reload of a unit it had just removed. A unit the plan stops for good or removes (and a
    removed template's instances) gets no restart or reload for a file; the others do."""
    manifest = {
        "/etc/app/a.conf": ManagedFile(
            "/etc/app/a.conf", "x", 0o644, 0, 0, None,
            restart=("worker@.service", "web.service"), reload=("greet.service",),
        ),
    }  # fmt: skip
    fp = plan([], {"/etc/app/a.conf": HostFile("/etc/app/a.conf", "file", meta())}, manifest)
    units = Plan(
        actions=(
            StopUnit("greet.service"),
            RemoveUnitFile("greet.service", "old"),
            RemoveUnitFile("worker@.service", "old"),
            RemoveUnitFile("web.service.d/env.conf", "old"),  # a drop-in: web stays
        )
    )
    active = dict.fromkeys(["greet.service", "worker@1.service", "web.service"], "active")
    merged = files.merge(units, fp, active)
    jobs = [a for a in merged.actions if isinstance(a, RestartUnit | ReloadUnit)]
    assert jobs == [RestartUnit("web.service")]
