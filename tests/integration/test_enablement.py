"""Enablement read from the unit directories equals systemd's ``UnitFileState``, case by case.

Each case is made on a real systemd with ``systemctl`` itself (enable, mask, link, alias,
``--runtime``, template instances, a custom target), then every unit's state is asked of
systemd over D-Bus and computed by ``reconciler.core.enablement`` from one read of the
directories. They must agree on every unit, including units nobody touched.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reconciler.core.enablement import unit_file_states
from reconciler.devtools import sandbox
from reconciler.systemd.client import Systemd
from reconciler.systemd.unit_files import read_content, read_unit_dirs
from tests.conftest import booted_host

pytestmark = pytest.mark.host

WANTED = "[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n"
STATIC = "[Service]\nExecStart=/bin/true\n"

# name -> (directory, content, systemctl commands run after every file is written)
CASES: dict[str, tuple[str, str, list[list[str]]]] = {
    "en-enabled.service": ("/etc/systemd/system", WANTED, [["enable", "en-enabled.service"]]),
    "en-disabled.service": ("/etc/systemd/system", WANTED, []),
    "en-static.service": ("/etc/systemd/system", STATIC, []),
    "en-runtime.service": (
        "/etc/systemd/system",
        WANTED,
        [["enable", "--runtime", "en-runtime.service"]],
    ),
    "en-required.service": (
        "/etc/systemd/system",
        "[Service]\nExecStart=/bin/true\n[Install]\nRequiredBy=multi-user.target\n",
        [["enable", "en-required.service"]],
    ),
    "en-custom.target": ("/etc/systemd/system", "[Unit]\nDescription=custom\n", []),
    "en-bytarget.service": (
        "/etc/systemd/system",
        "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=en-custom.target\n",
        [["enable", "en-bytarget.service"]],
    ),
    "en-aliased.service": (
        "/etc/systemd/system",
        WANTED + "Alias=en-alias.service\n",
        [["enable", "en-aliased.service"]],
    ),
    "en-also.service": (
        "/etc/systemd/system",
        "[Service]\nExecStart=/bin/true\n[Install]\nAlso=en-disabled.service\n",
        [],
    ),
    "en-vendor.service": ("/lib/systemd/system", WANTED, [["enable", "en-vendor.service"]]),
    "en-vendoroff.service": ("/lib/systemd/system", WANTED, []),
    "en-masked.service": ("/lib/systemd/system", WANTED, [["mask", "en-masked.service"]]),
    "en-rmasked.service": (
        "/lib/systemd/system",
        WANTED,
        [["mask", "--runtime", "en-rmasked.service"]],
    ),
    "en-etcwins.service": (
        "/etc/systemd/system",
        WANTED,
        [["enable", "en-etcwins.service"]],  # plus a /dev/null link in /run below
    ),
    "en-linked.service": (
        "/opt/en-outside",
        WANTED,
        [["link", "/opt/en-outside/en-linked.service"]],
    ),
    "en-rlinked.service": (
        "/opt/en-outside",
        WANTED,
        [["link", "--runtime", "/opt/en-outside/en-rlinked.service"]],
    ),
    "en-tmpl@.service": (
        "/etc/systemd/system",
        "[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n",
        [["enable", "en-tmpl@one.service"]],
    ),
    "en-deftmpl@.service": (
        "/etc/systemd/system",
        "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
        "DefaultInstance=dflt\n",
        [["enable", "en-deftmpl@.service"]],
    ),
}
# Asked about too, though no file of their own name was written.
EXTRA = [
    "en-alias.service",
    "en-tmpl@one.service",
    "en-tmpl@two.service",
    "en-deftmpl@dflt.service",
    "en-deftmpl@other.service",
    "en-missing.service",
    "dbus.service",
    "systemd-journald.service",
    "multi-user.target",
    "getty.target",
]


@pytest.fixture(scope="module")
def own_host() -> Iterator[sandbox.Host]:
    with booted_host() as h:
        yield h


def test_enablement_from_the_directories_equals_unit_file_state(own_host: sandbox.Host) -> None:
    root = own_host.root
    for name, (directory, content, _) in CASES.items():
        (root / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (root / directory.lstrip("/") / name).write_text(content)
    run_dir = root / "run/systemd/system"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "en-etcwins.service").symlink_to("/dev/null")  # /etc comes first on the path
    own_host.systemctl("daemon-reload")
    for _, _, commands in CASES.values():
        for argv in commands:
            own_host.systemctl(*argv)
    own_host.systemctl("daemon-reload")

    names = sorted({*CASES, *EXTRA} - {n for n, c in CASES.items() if c[0] == "/opt/en-outside"})
    names += ["en-linked.service", "en-rlinked.service"]
    with Systemd(own_host.bus_address, timeout=20) as client:
        expected = client.unit_file_states(names)
        on_disk = {
            n for n in read_unit_dirs(root).entries if "@." not in n or n.endswith("@.service")
        }
        loaded = {u.name for u in client.list_units_by_patterns([], ["*"])}
        every = sorted(loaded | on_disk | set(names))
        expected_every = client.unit_file_states(every)
    dirs = read_unit_dirs(root)
    got = unit_file_states(dirs, names, {n: read_content(root, dirs, n) for n in names})
    assert got == expected
    # the table covers every state the reconciler meets
    assert {
        "enabled",
        "enabled-runtime",
        "disabled",
        "static",
        "indirect",
        "masked",
        "masked-runtime",
        "linked",
        "linked-runtime",
        "alias",
        "",
    } <= set(expected.values())
    got_every = unit_file_states(dirs, every, {n: read_content(root, dirs, n) for n in every})
    assert len(every) > 250  # every unit file on the host and every loaded unit
    assert {n: s for n, s in got_every.items() if s != expected_every[n]} == {}
