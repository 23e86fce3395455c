"""``reconciler validate``: a config repository's CI check, on this machine, no systemd running.

Each case copies the project's example tree, breaks it in one way and runs the real CLI:
as root and as ``nobody`` (``setpriv --reuid=65534``), against a read-only tree whose
listing must not change (nothing written).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.reconcile import quadlet
from tests.conftest import REPO

RECONCILER = str(Path(sys.executable).parent / "reconciler")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

Breakage = Callable[[Path], None]


@pytest.fixture
def tree() -> Iterator[Path]:
    """A copy of the example inventory/ and templates/, readable by everyone, read-only."""
    base = Path(tempfile.mkdtemp(prefix="reconciler-validate-"))
    base.chmod(0o755)
    for name in ("inventory", "templates"):
        shutil.copytree(REPO / name, base / name)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def freeze(root: Path) -> dict[str, tuple[int, float]]:
    """Make the tree read-only for everyone; its listing (size, mtime) to compare later."""
    listing = {}
    for path in sorted(root.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    for path in sorted(root.rglob("*")):
        listing[str(path)] = (path.lstat().st_size, path.lstat().st_mtime)
    return listing


def validate(tree: Path, *args: str, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/nonexistent"}
    argv = [*(NOBODY if as_nobody else []), RECONCILER, "validate", str(tree), *args]
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd="/", timeout=120, check=False
    )


@pytest.mark.parametrize("as_nobody", [False, True], ids=["root", "nobody"])
def test_the_example_tree_is_valid_for_every_host(tree: Path, as_nobody: bool) -> None:
    before = freeze(tree)
    proc = validate(tree, "--json", as_nobody=as_nobody)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["valid"] is True
    hosts = {h["host"]: h for h in data["hosts"]}
    assert set(hosts) == {"sandbox", "web1", "nas1", "apps1"}
    assert "web.service" in hosts["web1"]["units"] and "srv-backup.timer" in hosts["nas1"]["units"]
    assert all(h["valid"] and h["error"] is None for h in hosts.values())
    assert hosts["sandbox"]["files"] == ["/etc/greeter/greeting.conf"]
    # a Quadlet container: its generated service
    assert "whoami.service" in hosts["apps1"]["units"] and hosts["apps1"]["files"] == []
    if quadlet.missing(Path("/")):  # Debian 12: no Quadlet here, said as a note
        assert "Quadlet needs Podman >= 4.4" in hosts["apps1"]["notes"][0]
    assert freeze(tree) == before  # nothing written
    if as_nobody:
        who = subprocess.run([*NOBODY, "id", "-u"], capture_output=True, text=True, check=True)
        assert who.stdout.strip() == "65534"


def test_one_host_in_text(tree: Path) -> None:
    proc = validate(tree, "--host", "web1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "ok    web1: 4 units (web.service, system-metrics.service, system-metrics.timer, "
        "systemd-tmpfiles-clean.service.d/50-reconciler-idle.conf)"
    ]


def edit(path: str, old: str, new: str) -> Breakage:
    def apply(root: Path) -> None:
        text = (root / path).read_text()
        assert old in text, (path, old)
        (root / path).write_text(text.replace(old, new, 1))

    return apply


def both(*breakages: Breakage) -> Breakage:
    def apply(root: Path) -> None:
        for breakage in breakages:
            breakage(root)

    return apply


def bad_dropin_template(root: Path) -> None:
    (root / "templates/bad.conf.j2").write_text("[Service]\nFrobnicate=yes\n")


def symlink(root: Path) -> None:
    (root / "templates/web.service.j2").unlink()
    os.symlink("/etc/passwd", root / "templates/web.service.j2")


# (id, breakage, exit code, text the one stderr line holds, hosts that fail)
BROKEN: list[tuple[str, Breakage, int, str, set[str]]] = [
    ("undefined variable", edit("templates/web.service.j2", "{{ port }}", "{{ nosuch }}"), 1,
     "'nosuch' is undefined", {"sandbox", "web1"}),
    ("systemd-analyze refuses", edit("templates/srv-backup.service.j2", "[Service]",
                                     "[Service]\nType=sometimes"), 1,
     "inventory/services.toml: services.srv-backup: systemd-analyze refused "
     "srv-backup.service:7: Failed to parse service type",
     {"sandbox", "nas1"}),
    ("inventory unknown key", edit("inventory/services.toml", "[services.web]\n",
                                   "[services.web]\nbogus = 1\n"), 1,
     "inventory/services.toml: services.web.bogus: unknown key", set()),
    ("own unit name", edit("inventory/services.toml", "[services.web]",
                           '[services.reading-sync]\ntemplate = "web.service.j2"\n'
                           'hosts = ["web1"]\n\n[services.web]'),
     1, "belong to its install", set()),
    ("service for a group no host has", edit("inventory/services.toml", 'hosts = ["web"]',
                                             'hosts = ["webs"]'), 1,
     "inventory/services.toml: services.web.hosts[0]: 'webs' is neither a host nor a group",
     set()),
    ("service for a group declared but no host's", both(
        edit("inventory/hosts.toml", "[groups.web.vars]", "[groups.db.vars]\npool = 1\n\n"
             "[groups.web.vars]"),
        edit("inventory/services.toml", 'hosts = ["web"]', 'hosts = ["db"]')), 1,
     "inventory/services.toml: services.web.hosts[0]: group 'db' has no host (no [hosts.NAME] "
     "of inventory/hosts.toml lists it) (groups with hosts: backup, base, containers, web)",
     set()),
    ("config file template", edit("templates/greeting.conf.j2", "{{ greeting }}",
                                  "{{ nosuch_greeting }}"), 1,
     "'nosuch_greeting' is undefined (file '/etc/greeter/greeting.conf')", {"sandbox"}),
    ("symlinked template", symlink, 1,
     "cannot read 'templates/web.service.j2'", set()),
    # a drop-in is verified with the vendor unit it adjusts (this machine's unit file)
    ("drop-in unknown key", edit("templates/tmpfiles-clean-idle.conf.j2", "[Service]",
                                 "[Service]\nFrobnicate=yes"), 1,
     'inventory/services.toml: dropins."systemd-tmpfiles-clean.service".idle: systemd-analyze '
     "refused systemd-tmpfiles-clean.service.d/50-reconciler-idle.conf:3: Unknown key "
     "'Frobnicate' in section [Service], ignoring.", {"sandbox", "web1", "nas1", "apps1"}),
    ("drop-in empties ExecStart", edit("templates/tmpfiles-clean-idle.conf.j2", "[Service]",
                                       "[Service]\nExecStart="), 1,
     'inventory/services.toml: dropins."systemd-tmpfiles-clean.service".idle: systemd-analyze '
     "refused systemd-tmpfiles-clean.service: Service has no ExecStart=, ExecStop=, or "
     "SuccessAction=. Refusing. (and 1 more) (and 3 more hosts)",
     {"sandbox", "web1", "nas1", "apps1"}),
    # ... and with the repository's own unit
    ("drop-in on an own unit", both(bad_dropin_template, edit(
        "inventory/services.toml", "[services.web]\n", '[dropins."web.service".x]\n'
        'template = "bad.conf.j2"\nhosts = ["web1"]\n\n[services.web]\n')), 1,
     'inventory/services.toml: dropins."web.service".x: systemd-analyze refused '
     "web.service.d/50-reconciler-x.conf:3: Unknown key 'Frobnicate'", {"web1"}),
    ("protected config file", edit("inventory/services.toml", '[files."/etc/greeter',
                                   '[files."/etc/systemd/system/evil.service"]\n'
                                   'template = "greeting.conf.j2"\nhosts = ["sandbox"]\n'
                                   'vars = { greeting = "hi" }\n\n[files."/etc/greeter'), 1,
     'inventory/services.toml: files."/etc/systemd/system/evil.service": '
     "'/etc/systemd/system/evil.service' is a protected path (never written: /etc/systemd)",
     {"sandbox"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "breakage", "code", "line", "failing"), BROKEN, ids=[b[0] for b in BROKEN]
)
def test_a_broken_tree_is_one_line(
    tree: Path, what: str, breakage: Breakage, code: int, line: str, failing: set[str]
) -> None:
    breakage(tree)
    before = freeze(tree)
    proc = validate(tree, as_nobody=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (what, proc.stderr)
    assert len(lines) == 1 and line in lines[0], (what, proc.stderr)
    assert lines[0].startswith("reconciler validate: ") and "Traceback" not in proc.stderr
    assert freeze(tree) == before
    if failing:
        data = json.loads(validate(tree, "--json").stdout)
        assert {h["host"] for h in data["hosts"] if not h["valid"]} == failing


def test_a_refused_inventory_is_still_a_json_document(tree: Path) -> None:
    """A user's trial: ``validate --json`` printed nothing when the inventory was refused."""
    edit("inventory/services.toml", "[services.web]\n", "[services.web]\nbogus = 1\n")(tree)
    proc = validate(tree, "--json")
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert data["valid"] is False and data["hosts"] == []
    assert "services.web.bogus: unknown key" in data["error"]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("--host", "ghost"), "cannot validate host 'ghost': not in inventory/hosts.toml"),
        (("--host", "web1", "--all-hosts"), "not allowed with argument"),
    ],
)
def test_usage_errors_exit_2(tree: Path, args: tuple[str, ...], line: str) -> None:
    proc = validate(tree, *args)
    assert proc.returncode == 2 and line in proc.stderr, proc.stderr


def test_not_a_config_repository_exits_2(tmp_path: Path) -> None:
    proc = validate(tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"reconciler validate: cannot validate '{tmp_path}': no inventory/ folder (hint: pass "
        "the root of a config repository (the folder holding inventory/ and templates/))"
    )


def test_a_drop_in_for_a_unit_not_on_this_machine_is_a_note(tree: Path) -> None:
    """validate has no host: a vendor unit missing here cannot be verified with its drop-in."""
    edit("inventory/services.toml", "[services.web]\n",
         '[dropins."nosuch-vendor.service".idle]\ntemplate = "tmpfiles-clean-idle.conf.j2"\n'
         'hosts = ["web1"]\nvars = { nice = 19 }\n\n[services.web]\n')(tree)  # fmt: skip
    proc = validate(tree, "--host", "web1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1:] == [
        '      note: not checked here: dropins."nosuch-vendor.service".idle: '
        "nosuch-vendor.service is not on this machine to verify the drop-in against (the "
        "host's own unit is verified with it by the sync)"
    ], proc.stdout


def test_config_files_say_files_roots_are_not_checked(tree: Path) -> None:
    proc = validate(tree, "--host", "sandbox")
    assert proc.returncode == 0, proc.stderr
    assert "note: not checked here: whether each host's files_roots" in proc.stdout
    assert "files_roots" in validate(tree, "--help").stdout
