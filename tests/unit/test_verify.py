"""The health gate's judgement over scripted unit states and a fake clock."""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.model import LiveUnit
from reconciler.reconcile.verify import wait_healthy


class Script:
    """Returns the next state of each unit at each poll; the clock advances 0.5 s a poll."""

    def __init__(self, states: dict[str, list[LiveUnit]]) -> None:
        self.states = states
        self.now = 0.0
        self.polls = 0

    def read_units(self, names: Sequence[str]) -> dict[str, LiveUnit]:
        out = {}
        for name in names:
            seq = self.states[name]
            out[name] = seq[min(self.polls, len(seq) - 1)]
        self.polls += 1
        return out

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += 0.5


def live(name: str, state: str, inv: str = "i1", restarts: int = 0, **kw: str) -> LiveUnit:
    return LiveUnit(
        name=name,
        load_state="loaded",
        active_state=state,
        sub_state="running",
        invocation_id=inv,
        n_restarts=restarts,
        service_type=kw.get("type", "simple"),
        result=kw.get("result", "success"),
    )


def run(states: dict[str, list[LiveUnit]], timeout: float = 5) -> dict[str, str]:
    s = Script(states)
    failed = wait_healthy(
        s, [(u, timeout) for u in states], settle_sec=1.0, clock=s.clock, sleep=s.sleep
    )
    return {unit: str(why) for unit, why in failed.items()}  # the text history shows


def test_stable_active_unit_is_healthy() -> None:
    assert run({"a.service": [live("a.service", "active")]}) == {}


def test_crash_looping_unit_never_settles() -> None:
    loop = [live("c.service", "active", inv=f"i{n}", restarts=n) for n in range(100)]
    failed = run({"c.service": loop})
    assert "not healthy after 5s" in failed["c.service"]


def test_failed_unit_fails_at_once() -> None:
    failed = run({"f.service": [live("f.service", "failed", result="exit-code")]})
    assert failed["f.service"].startswith("failed")


def test_oneshot_success_and_failure() -> None:
    ok = live("o.service", "inactive", type="oneshot", result="success")
    bad = live("p.service", "inactive", type="oneshot", result="exit-code")
    assert run({"o.service": [ok], "p.service": [bad]}) == {"p.service": "finished with exit-code"}


def test_slow_start_within_timeout_is_healthy() -> None:
    seq = [live("s.service", "activating")] * 4 + [live("s.service", "active")]
    assert run({"s.service": seq}) == {}
