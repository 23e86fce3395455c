"""What the render filters write is what a program gets, on the real systemd (issue 12.15).

A nightly backup named with ``$(date +%Y%m%d)`` must reach the shell as that text, so the
shell runs ``date``: with ``| arg`` and with ``| literal | arg`` alike (the latter was
escaped twice and the archive was called ``srv-%Y%m%d.tar.gz`` every night).
"""

from __future__ import annotations

import time

import pytest

from reconciler.core import render
from reconciler.core.inventory import ServiceInstance
from reconciler.devtools import sandbox
from tests.conftest import UnitWriter

pytestmark = pytest.mark.host

TEMPLATE = """\
[Service]
Type=oneshot
ExecStart=/bin/sh -c {{ command | FILTERS }}
"""


@pytest.mark.parametrize("filters", ["arg", "literal | arg", "arg | literal"])
def test_a_shell_substitution_reaches_the_shell(
    host: sandbox.Host, make_unit: UnitWriter, filters: str
) -> None:
    out = f"/run/render-{time.monotonic_ns()}"
    command = f"echo srv-$(date +%Y%m%d) 100% > {out}"
    inst = ServiceInstance(
        "nightly", "t.service.j2", {"command": command}, False, False, None, None, "h", ()
    )
    (unit,) = render.render([inst], {"t.service.j2": TEMPLATE.replace("FILTERS", filters)})
    name = make_unit("nightly.service", unit.content)
    host.systemctl("daemon-reload")
    host.systemctl("start", name)
    today = host.run(["date", "+%Y%m%d"]).stdout.strip()
    assert (host.root / out.lstrip("/")).read_text() == f"srv-{today} 100%\n"
