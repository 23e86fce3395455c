"""The render runs in a child process with bounded CPU time and memory (reconcile/jail.py).

Real forks and real rlimits, no systemd: each exhausting template is refused in one line, the
parent's memory does not grow, and a refusal keeps its class and hint across the pipe.
"""

from __future__ import annotations

import resource
import time

import pytest

from reconciler.core import inventory, render
from reconciler.errors import InventoryError, ReconcilerError, RenderError
from reconciler.model import DesiredUnit
from reconciler.reconcile import jail

UNIT = (
    "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
)
WHAT = "revision abc for host 'h'"

# (what, template tail, message part)
CASES = [
    ("nested range()", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
     "{% endfor %}", "range() asked for more than 1000000 items in all"),
    ("nested loops over a string", "{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
     "1 s of CPU time"),
    ("center", "{% set x = 'a' | center(2000000000) %}", "more than 128 MB of memory"),
    ("format", "{% set x = '%2000000000s' | format('a') %}", "more than 128 MB of memory"),
    ("~ doubling in a loop", "{% set ns = namespace(v='0123456789') %}{% for i in range(40) %}"
     "{% set ns.v = ns.v ~ ns.v %}{% endfor %}", "more than 128 MB of memory"),
    ("include loop", "{% include 't.j2' %}", "nested too deep (an include, extends or macro"),
    ("deep parentheses", "Environment=X={{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
     "templates/t.j2: nested too deep"),
    ("big integer squared in a loop", "{% set ns = namespace(v=10**64) %}{% for i in range(26) %}"
     "{% set ns.v = ns.v * ns.v %}{% endfor %}", "1 s of CPU time"),
    ("replace", "{% set x = ('x' * 1000000) | replace('x', 'x' * 1000000) %}",
     "more than 128 MB of memory"),
    ("macro recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
     "templates/t.j2:7: nested too deep (an include, extends or macro calling itself"),
]  # fmt: skip


def rendering(tail: str) -> list[DesiredUnit]:
    inst = inventory.ServiceInstance("a", "t.j2", {"s": "x" * 100_000}, True, True, None, None,
                                     "h", ())  # fmt: skip
    return render.render([inst], {"t.j2": UNIT + tail})


@pytest.mark.parametrize(("what", "tail", "expect"), CASES, ids=[c[0] for c in CASES])
def test_exhausting_template_is_refused_in_one_line(what: str, tail: str, expect: str) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(RenderError) as info:
        jail.render_bounded(lambda: rendering(tail), what=WHAT, cpu_sec=1, memory_mb=128)
    took = time.monotonic() - started
    message = str(info.value)
    assert expect in message and "\n" not in message, message
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 50, f"the parent grew by {grown_mb:.0f} MB"
    assert took < 40  # 1 s of CPU; the wall deadline (34 s) bounds a busy machine


def test_units_and_refusals_cross_the_pipe() -> None:
    units = jail.render_bounded(lambda: rendering(""), what=WHAT, cpu_sec=5, memory_mb=256)
    assert [u.name for u in units] == ["a.service"] and units[0].content.startswith("[Unit]")

    def refuse() -> list[DesiredUnit]:
        raise InventoryError("inventory/hosts.toml: hosts.x: bad", hint="fix it")

    with pytest.raises(InventoryError) as info:
        jail.render_bounded(refuse, what=WHAT, cpu_sec=5, memory_mb=256)
    assert str(info.value) == "inventory/hosts.toml: hosts.x: bad (hint: fix it)"

    def crash() -> list[DesiredUnit]:
        raise KeyError("bug")

    with pytest.raises(ReconcilerError, match=r"the render process failed: KeyError: 'bug'"):
        jail.render_bounded(crash, what=WHAT, cpu_sec=5, memory_mb=256)
