"""The steady look's short cut in ``update_counters`` (``_steady``) answers what the general
fold does, and ``steady_look`` says exactly when only ``last_seen_at`` moves, for looks drawn
at random around a unit's last one."""

from __future__ import annotations

import random
from dataclasses import replace

from reconciler.core import counters as c
from reconciler.core.counters import Counters, Observation

STATES = [
    ("active", "running"), ("active", "exited"), ("inactive", "dead"), ("failed", "failed"),
    ("activating", "auto-restart"), ("activating", "start"),
]  # fmt: skip
RESULTS = ["success", "exit-code", "signal", "", None]
# the look is at 400: an older last look, the same time, a newer one (late, stale), none
SEEN_AT = [100.0, 100.0, 100.0, 400.0, 450.0, 800.0, None]


def test_the_short_cut_equals_the_fold_on_random_looks() -> None:
    rnd = random.Random(13)
    steady = 0
    for _ in range(20_000):
        state, sub = rnd.choice(STATES)
        prev = Counters(
            "u.service", starts=rnd.randint(0, 3), crashes=rnd.randint(0, 3),
            last_exit_code=rnd.choice([None, 1]), last_state=state, last_sub_state=sub,
            last_change_at=rnd.choice([None, 10.0]), last_invocation_id=rnd.choice(["", "a", "b"]),
            last_n_restarts=rnd.randint(0, 2), last_seen_at=rnd.choice(SEEN_AT),
            prev_invocation_id=rnd.choice(["", "z"]), seen_result=rnd.choice(RESULTS),
            seen_n_restarts=rnd.randint(0, 2), seen_exec_main_code=rnd.randint(0, 2),
            seen_exec_main_status=rnd.randint(0, 1),
        )  # fmt: skip
        if rnd.random() < 0.6:  # most looks: the last one again, one field maybe moved
            state, sub = prev.last_state, prev.last_sub_state
            run, result = prev.last_invocation_id, prev.seen_result or ""
            n, code, status = (
                prev.seen_n_restarts,
                prev.seen_exec_main_code,
                prev.seen_exec_main_status,
            )
            field = rnd.randrange(8)
            run = rnd.choice(["", "a", "b", "z"]) if field == 0 else run
            result = rnd.choice(["success", "exit-code", ""]) if field == 1 else result
            n = rnd.randint(0, 3) if field == 2 else n
            code = rnd.randint(0, 2) if field == 3 else code
        else:
            state, sub = rnd.choice(STATES)
            run, result = rnd.choice(["", "a", "b", "z"]), rnd.choice(["success", "exit-code", ""])
            n, code, status = rnd.randint(0, 3), rnd.randint(0, 2), rnd.randint(0, 1)
        obs = Observation("u.service", 400.0, state, sub, result, n, run, code, status)
        if c._steady(prev, obs):
            steady += 1
        early = _early(prev, obs) or _late(prev, obs)
        assert c.update_counters(prev, obs) == c._fold(prev, obs) or early
        moved_seen_alone = c.update_counters(prev, obs)[0] == replace(prev, last_seen_at=obs.at)
        assert c.steady_look(prev, obs) == (moved_seen_alone and prev.last_seen_at != obs.at)
    assert steady > 2_000  # the short cut was taken often enough to be tested


def _early(prev: Counters, obs: Observation) -> bool:
    """A look at the run before the last one: answered before either path."""
    return bool(obs.invocation_id) and obs.invocation_id == prev.prev_invocation_id


def _late(prev: Counters, obs: Observation) -> bool:
    """A look older than the last one (a stale read): answered before either path."""
    return prev.last_seen_at is not None and 0 < prev.last_seen_at - obs.at <= c.STALE_SEC
