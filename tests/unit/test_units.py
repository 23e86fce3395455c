"""The reconciler's own units (units/): fitted to a layout (pure tables), then checked by systemd.

``adapt`` is tested with plain data. The built units are then handed to
``systemd-analyze verify`` and ``systemd-analyze security --offline=yes`` on this machine
(offline: no running systemd needed): verify must be clean, and every service except
gitops-sync (it must write /etc/systemd/system) must score 4.0 or better.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from reconciler import package_data
from reconciler.config import Settings
from reconciler.errors import UsageError
from reconciler.model import DesiredUnit
from reconciler.reconcile import validate
from reconciler.reconcile.install import (
    Layout,
    adapt,
    build_units,
    local_repos,
    notes_for,
    outermost,
    read_layout,
    writable_paths,
)

PY = "/usr/bin/python3 -m reconciler"
MAX_EXPOSURE = 4.0
UNITS_DIR = package_data.find("units")
EXEMPT = {"gitops-sync.service": 4.5}  # writes /etc/systemd/system and talks to PID 1 as root
SERVICES = sorted(p.name for p in UNITS_DIR.glob("*.service"))


def keys(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def section_of(text: str, key: str) -> set[str]:
    """The sections in which ``key=`` lines appear."""
    found, section = set(), ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line
        elif line.startswith(f"{key}="):
            found.add(section)
    return found


@dataclass(frozen=True)
class Case:
    id: str
    unit: str
    layout: Layout
    expect: dict[str, list[str]]  # key -> its values in the adapted unit ([] = absent)
    unchanged: list[str] = field(default_factory=list)  # keys whose lines stay as in units/


CASES = [
    Case(
        "code under /opt: homes stay hidden",
        "metrics-sample.service",
        Layout(PY, code_paths=("/opt/venv", "/usr")),
        {"ProtectHome": ["yes"], "BindReadOnlyPaths": [], "Environment": []},
    ),
    Case(
        "pyenv under /root: tmpfs homes, the interpreter bound back",
        "metrics-sample.service",
        Layout(PY, "/opt/src", code_paths=("/opt/src", "/root/.pyenv/versions/3.11.7")),
        {
            "ProtectHome": ["tmpfs"],
            "BindReadOnlyPaths": ["/root/.pyenv/versions/3.11.7"],
            "Environment": ["PYTHONPATH=/opt/src"],
        },
    ),
    Case(
        "checkout and venv under /home: one bind per outermost dir",
        "gitops-sync.service",
        Layout(PY, code_paths=("/home/ci/src", "/home/ci/src/.venv", "/root/py")),
        {"ProtectHome": ["tmpfs"], "BindReadOnlyPaths": ["/home/ci/src /root/py"]},
    ),
    Case(
        "read-only homes need no bind",
        "volume-backup.service",
        Layout(PY, code_paths=("/root/py",)),
        {"ProtectHome": ["read-only"], "BindReadOnlyPaths": []},
    ),
    Case(
        "checkout under /tmp: bound through PrivateTmp",
        "reconciler-monitor.service",
        Layout(PY, "/tmp/ci/src", code_paths=("/tmp/ci/src", "/usr")),
        {"ProtectHome": ["yes"], "BindReadOnlyPaths": ["/tmp/ci/src"], "PrivateTmp": ["yes"]},
    ),
    Case(
        "no ETL token file: no LoadCredential (243/CREDENTIALS otherwise)",
        "reading-sync.service",
        Layout(PY, etl_token=None),
        {"LoadCredential": []},
    ),
    Case(
        "ETL token file present: loaded as a credential",
        "reading-sync.service",
        Layout(PY, etl_token="/etc/reconciler/etl-token"),
        {"LoadCredential": ["etl-token:/etc/reconciler/etl-token"]},
    ),
    Case(
        "webhook secret elsewhere: credential follows",
        "reconciler-webhook.service",
        Layout(PY, webhook_secret="/srv/secrets/hook"),
        {"LoadCredential": ["webhook-secret:/srv/secrets/hook"]},
    ),
    Case(
        "webhook secret elsewhere: the socket's condition follows",
        "reconciler-webhook.socket",
        Layout(PY, webhook_secret="/srv/secrets/hook"),
        {"ConditionPathExists": ["/srv/secrets/hook"], "Environment": []},
    ),
    Case(
        "backup dest outside the state dir: writable, optional",
        "volume-backup.service",
        Layout(PY, writable={"volume-backup.service": ("/srv/backups",)}),
        {
            "ReadWritePaths": ["/var/lib/reconciler", "-/srv/backups"],
            "ExecStartPre": ["+mkdir -p -m 0700 /srv/backups"],  # strict: cannot create it
        },
    ),
    Case(
        "files_roots: the sync may write config files there (a user's trial: EROFS)",
        "gitops-sync.service",
        Layout(PY, files_roots=("/etc/nginx", "/etc/nginx/conf.d", "/etc/greeter")),
        {
            "ReadWritePaths": [
                "/etc/systemd/system /var/lib/reconciler /run/reconciler -/etc/containers/systemd",
                "-/etc/greeter -/etc/nginx",
            ],
            "ExecStartPre": ["+mkdir -p -m 0755 /etc/greeter /etc/nginx"],
        },
    ),
    Case(
        "files_roots concern the sync alone",
        "reconciler-monitor.service",
        Layout(PY, files_roots=("/etc/nginx",)),
        {"ExecStartPre": []},
    ),
    Case(
        "webhook socket: 127.0.0.1:9420 by default ([webhook] listen's default)",
        "reconciler-webhook.socket",
        Layout(PY),
        {"ListenStream": ["127.0.0.1:9420"]},
    ),
    Case(
        "webhook socket follows [webhook] listen (':PORT': every address)",
        "reconciler-webhook.socket",
        Layout(PY, listen=":8443"),
        {"ListenStream": ["8443"]},
    ),
    Case(
        "webhook socket on an IPv6 address",
        "reconciler-webhook.socket",
        Layout(PY, listen="[::1]:9420"),
        {"ListenStream": ["[::1]:9420"]},
    ),
    Case(
        "the path unit watches the config file install was given",
        "reconciler-config.path",
        Layout(PY, config="/srv/conf/reconciler.toml"),
        {"PathChanged": ["/srv/conf/reconciler.toml"], "Unit": ["reconciler-config.service"]},
    ),
    Case(
        "a config file elsewhere: every command reads it",
        "gitops-sync.service",
        Layout(PY, config="/srv/conf/reconciler.toml"),
        {"Environment": ["RECONCILER_CONFIG=/srv/conf/reconciler.toml"]},
    ),
    Case(
        "a config file under /root: bound back in past ProtectHome=",
        "reconciler-monitor.service",
        Layout(PY, config="/root/rc/config.toml"),
        {
            "Environment": ["RECONCILER_CONFIG=/root/rc/config.toml"],
            "BindReadOnlyPaths": ["/root/rc/config.toml"],
        },
    ),
    Case(
        "the default config file: nothing added",
        "gitops-sync.service",
        Layout(PY),
        {"Environment": []},
    ),
    Case(
        "no user namespaces here: PrivateUsers= left out (217/USER otherwise)",
        "metrics-sample.service",
        Layout(PY, user_namespaces=False),
        {"PrivateUsers": []},
    ),
    Case(
        "user namespaces: PrivateUsers= kept",
        "reading-sync.service",
        Layout(PY),
        {"PrivateUsers": ["yes"]},
    ),
    Case(
        "config repository under /var/tmp: bound into the sync that fetches it",
        "gitops-sync.service",
        Layout(PY, code_paths=("/usr",), reads={"gitops-sync.service": ("/var/tmp/cfg.git",)}),
        {"PrivateTmp": ["yes"], "BindReadOnlyPaths": ["/var/tmp/cfg.git"]},
    ),
    Case(
        "config repository under /home: the sync's homes tmpfs, the repository bound back",
        "gitops-sync.service",
        Layout(PY, code_paths=("/usr",), reads={"gitops-sync.service": ("/home/ops/cfg",)}),
        {"ProtectHome": ["tmpfs"], "BindReadOnlyPaths": ["/home/ops/cfg"]},
    ),
    Case(
        "a unit that does not fetch gets no bind of the repository",
        "reconciler-monitor.service",
        Layout(PY, code_paths=("/usr",), reads={"gitops-sync.service": ("/var/tmp/cfg.git",)}),
        {"BindReadOnlyPaths": []},
    ),
    Case(
        "timers are copied as they are",
        "metrics-sample.timer",
        Layout(PY, "/opt/src", code_paths=("/root/py",)),
        {"Environment": [], "BindReadOnlyPaths": [], "OnCalendar": ["minutely"]},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_adapt(case: Case) -> None:
    source = (UNITS_DIR / case.unit).read_text()
    text = adapt(case.unit, source, case.layout)
    for key, values in case.expect.items():
        assert keys(text, key) == values, (key, text)
    assert "@RECONCILER@" not in text
    if "[Service]" in text:
        assert keys(text, "ExecStart")[0].startswith(PY + " ")
        for added in ("Environment", "BindReadOnlyPaths"):
            assert section_of(text, added) <= {"[Service]"}
    assert adapt(case.unit, source, case.layout) == text  # deterministic: install converges


def test_adapt_keeps_everything_else() -> None:
    source = (UNITS_DIR / "metrics-sample.service").read_text()
    text = adapt("metrics-sample.service", source, Layout(PY))
    assert text == source.replace("@RECONCILER@", PY)


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (["/a/b", "/a", "/c"], ("/a", "/c")),
        (["/a/b", "/a/bc"], ("/a/b", "/a/bc")),  # a prefix string is not a parent
        (["/x", "/x", "/x/y/z"], ("/x",)),
        ([], ()),
    ],
)
def test_outermost(paths: list[str], expected: tuple[str, ...]) -> None:
    assert outermost(paths) == expected


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (Settings(), {}),
        (
            Settings(sections={"backup": {"dest": "/var/lib/reconciler/elsewhere"}}),
            {},  # inside the state dir: already writable
        ),
        (
            Settings(sections={"backup": {"dest": "/srv/backups"}}),
            {"volume-backup.service": ("/srv/backups",)},
        ),
        (
            Settings(
                sections={
                    "monitor": {"textfile": "/var/lib/node_exporter/reconciler.prom"},
                    "diagnostics": {"directory": "/srv/diag"},
                }
            ),
            {
                name: ("/srv/diag", "/var/lib/node_exporter")
                for name in (
                    "gitops-sync.service",
                    "reconciler-monitor.service",
                    "reconciler-watch.service",
                )
            },
        ),
        (Settings(sections={"monitor": {"textfile": ""}}), {}),  # "" turns it off
        (
            Settings(state_dir=Path("/srv/state"), sections={"backup": {"dest": "/srv/state/b"}}),
            {
                name: ("/srv/state",)
                for name in (
                    "gitops-sync.service",
                    "metrics-sample.service",
                    "reading-sync.service",
                    "reconciler-config.service",  # follow_config opens the state database
                    "reconciler-monitor.service",
                    "reconciler-watch.service",
                    "reconciler-webhook.service",  # its replay file and the sync's mark
                    "volume-backup.service",
                )
            },
        ),
    ],
)
def test_writable_paths(settings: Settings, expected: dict[str, tuple[str, ...]]) -> None:
    assert writable_paths(settings) == expected


@pytest.mark.parametrize(
    ("repo", "promote", "expected"),
    [
        ("https://git.example/cfg.git", None, {}),
        ("/srv/cfg.git", None, {}),  # visible to every unit: nothing to bind
        (
            "/var/tmp/ops/cfg.git",
            None,
            {
                "gitops-sync.service": ("/var/tmp/ops/cfg.git",),
                "reconciler-promote.service": ("/var/tmp/ops/cfg.git",),
            },
        ),
        (
            "file:///root/cfg.git/",
            "/home/ops/fleet.git",
            {
                "gitops-sync.service": ("/root/cfg.git",),
                "reconciler-promote.service": ("/home/ops/fleet.git",),
            },
        ),
        ("ops@git.example:/home/ops/cfg.git", None, {}),  # ssh: the server's path
    ],
)
def test_local_repos(repo: str, promote: str | None, expected: dict[str, tuple[str, ...]]) -> None:
    sections = {"promote": {"repo": promote}} if promote else {}
    assert local_repos(Settings(repo=repo, sections=sections)) == expected


def test_notes_name_what_a_temporary_directory_does_to_code_and_repository() -> None:
    layout = Layout(
        PY,
        code_paths=("/tmp/ci/venv", "/usr"),
        reads={"gitops-sync.service": ("/var/tmp/cfg.git",)},
    )
    notes = notes_for(layout, Settings())
    assert len(notes) == 2, notes
    repo = next(n for n in notes if n.startswith("/var/tmp/cfg.git"))
    assert "systemd-tmpfiles" in repo and "keep the config repository outside" in repo, repo
    assert "next boot" not in repo, repo
    code = next(n for n in notes if n.startswith("/tmp/ci/venv"))
    assert "emptied at the next boot" in code and "install from a path outside" in code, code


def test_paths_needing_escapes_are_refused() -> None:
    with pytest.raises(UsageError, match="'/srv/my backups'"):
        writable_paths(Settings(sections={"backup": {"dest": "/srv/my backups"}}))


def test_every_unit_file_is_installed() -> None:
    units = build_units(layout=Layout(PY))
    names = {u.name for u in units}
    assert names == {p.name for p in UNITS_DIR.iterdir() if p.suffix != ".md"}
    started = {u.name for u in units if u.start}
    assert started == {u.name for u in units if u.enable}
    assert started == {n for n in names if n.endswith((".timer", ".socket", ".path"))} - {
        "reconciler-promote.timer"  # opt-in: the promoter runs on one machine of a fleet
    } | {"reconciler-watch.service"}


# ---- systemd's own checks, on this machine ---------------------------------------------

LAYOUTS = {
    "this machine": None,
    "everything adapted": Layout(
        "",  # filled in below with this machine's interpreter: verify checks it exists
        "/home/ci/src",
        code_paths=("/home/ci/src", "/root/.pyenv/versions/3.11.7", "/tmp/ci"),
        etl_token="/etc/reconciler/etl-token",
        webhook_secret="/srv/secrets/hook",
        writable=writable_paths(
            Settings(sections={"backup": {"dest": "/srv/b"}, "diagnostics": {"directory": "/d"}})
        ),
        user_namespaces=False,
        files_roots=("/etc/nginx", "/srv/app"),
    ),
}


def built(layout_id: str) -> list[DesiredUnit]:
    here = read_layout(Settings())
    layout = LAYOUTS[layout_id]
    return build_units(layout=here if layout is None else replace(layout, command=here.command))


@pytest.mark.parametrize("layout_id", sorted(LAYOUTS))
def test_verify_is_clean(layout_id: str) -> None:
    assert validate.verify(built(layout_id)) == []


def exposure(tmp_path: Path, unit: DesiredUnit) -> float:
    path = tmp_path / unit.name
    path.write_text(unit.content)
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        env={**validate.ENV, "PATH": "/usr/bin:/bin"},
        check=False,
        timeout=30,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1))


@pytest.mark.parametrize("layout_id", sorted(LAYOUTS))
@pytest.mark.parametrize("name", SERVICES)
def test_exposure_score(tmp_path: Path, layout_id: str, name: str) -> None:
    unit = next(u for u in built(layout_id) if u.name == name)
    assert exposure(tmp_path, unit) <= EXEMPT.get(name, MAX_EXPOSURE)


def test_the_inventory_knows_every_own_unit() -> None:
    """A service named like one of these is refused (core/inventory.py, pure: no units/)."""
    from reconciler.core.inventory import OWN_UNIT_STEMS

    assert {p.stem for p in UNITS_DIR.iterdir() if p.suffix != ".md"} == OWN_UNIT_STEMS
