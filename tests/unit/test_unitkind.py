"""Unit kinds: path escaping against systemd-escape itself, and what starts what."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from reconciler import monitor
from reconciler.core import unitkind
from reconciler.model import DesiredUnit

PATHS = ["/", "/srv/data", "/srv/my-data/", "//srv//a.b", "/.hidden/x", "/a b/ä", "/x@y:z_1"]


@pytest.mark.parametrize("path", PATHS)
def test_escape_path_is_systemd_escape(path: str) -> None:
    tool = shutil.which("systemd-escape")
    if tool is None:
        pytest.skip("systemd-escape not installed")
    want = subprocess.run([tool, "--path", path], capture_output=True, text=True, check=True)
    assert unitkind.escape_path(path) == want.stdout.strip()
    back = unitkind.unescape_path(want.stdout.strip())
    assert back is not None and unitkind.escape_path(back) == want.stdout.strip()


@pytest.mark.parametrize("name", ["srv--data", "srv-", "-srv", "a\\x2", "a\\xzz", "a\\x2d-b-"])
def test_not_an_escaped_path(name: str) -> None:
    assert unitkind.unescape_path(name) is None


def test_timers_and_paths_schedule_their_units_sockets_do_not() -> None:
    desired = [
        DesiredUnit("in.path", "[Path]\nPathChanged=/x\nUnit=importer.service\n", "in"),
        DesiredUnit("importer.service", "[Service]\n", "importer"),
        DesiredUnit("nightly.timer", "[Timer]\nOnCalendar=daily\n", "nightly"),
        DesiredUnit("nightly.service", "[Service]\n", "nightly-job"),
        DesiredUnit("echo.socket", "[Socket]\nListenStream=1\n", "echo"),
        DesiredUnit("echo.service", "[Service]\n", "echo-server"),
        DesiredUnit("conn.socket", "[Socket]\nListenStream=2\nAccept=yes\n", "conn"),
    ]
    by = unitkind.activated((d.name, d.content) for d in desired)
    assert by == {
        "importer.service": "in.path",
        "nightly.service": "nightly.timer",
        "echo.service": "echo.socket",
        "conn@.service": "conn.socket",
    }
    assert monitor.scheduled_units(desired) == {"importer.service", "nightly.service"}


@pytest.mark.parametrize(
    ("unit", "dirs"),
    [
        ("nginx.service", ["nginx.service.d", "service.d"]),
        (
            "foo-bar@1.service",
            ["foo-bar@1.service.d", "foo-bar@.service.d", "foo-.service.d", "service.d"],
        ),
        ("a-b-c.socket", ["a-b-c.socket.d", "a-b-.socket.d", "a-.socket.d", "socket.d"]),
    ],
)
def test_dropin_dirs_as_systemd_reads_them(unit: str, dirs: list[str]) -> None:
    assert unitkind.dropin_dirs(unit) == dirs


def test_merged_dropins_first_found_wins_sorted_by_name() -> None:
    found = [
        ("/etc/systemd/system/x.service.d/50-a.conf", "etc"),
        ("/etc/systemd/system/x.service.d/90-z.conf", "z"),
        ("/usr/lib/systemd/system/x.service.d/50-a.conf", "vendor, masked by /etc"),
        ("/usr/lib/systemd/system/service.d/10-all.conf", "all"),
    ]
    merged = unitkind.merge_dropins(found)
    assert [t for _, t in merged] == ["all", "etc", "z"]
    text = unitkind.cat(("/usr/lib/systemd/system/x.service", "[Service]\n"), merged)
    assert text.splitlines()[0] == "# /usr/lib/systemd/system/x.service"
    assert text.index("10-all.conf") < text.index("50-a.conf") < text.index("90-z.conf")


def test_instances_of_a_template() -> None:
    names = ["w@1.service", "w@2.service", "w@.service", "w@1.socket", "ww@1.service"]
    assert unitkind.instances("w@.service", names) == ["w@1.service", "w@2.service"]
    assert unitkind.instances("w.service", names) == []
