"""The promotion rules of the fleet contract, one row each (pure, table-driven)."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.core.promotion import (
    Alert,
    Facts,
    Refs,
    Report,
    WavePolicy,
    decide,
    gate,
    halt_message,
    parse_halt,
    pause_message,
    pause_reason,
)

A, B, C = "a" * 40, "b" * 40, "c" * 40  # a linear history: A <- B <- C
LINEAR = frozenset({(B, A), (C, A), (C, B)})
NOW = 10_000.0
CANARY = WavePolicy("canary", ("c1", "c2"), soak_sec=60, min_reporting=1.0)
EARLY = WavePolicy(
    "early", tuple(f"e{i}" for i in range(10)), soak_sec=60, min_reporting=0.9, failure_budget=0.1
)
REST = WavePolicy("rest", ("r1", "r2", "r3"), soak_sec=60)
WAVES = (CANARY, EARLY, REST)


def on(rev: str, since: float = NOW - 100, **kw: Any) -> Report:
    return Report(host="", revision=rev, target=rev, healthy_since=since, **kw)


def hosts(names: tuple[str, ...], report: Report | None) -> dict[str, Report]:
    if report is None:
        return {}
    return {n: Report(n, *[getattr(report, f) for f in _FIELDS[1:]]) for n in names}


_FIELDS = ("host", "revision", "target", "healthy_since", "failed", "instance", "last_success")


def facts(
    source: str = C,
    waves: dict[str, str] | None = None,
    reports: dict[str, Report] | None = None,
    **kw: Any,
) -> Facts:
    refs = Refs(
        source,
        waves if waves is not None else {"canary": C, "early": B, "rest": B},
        paused=kw.pop("paused", None),
        halted=kw.pop("halted", {}),
    )
    return Facts(refs, reports or {}, descends=kw.pop("descends", LINEAR), now=NOW, **kw)


CANARY_ON_C = hosts(CANARY.hosts, on(C))
EARLY_ON_B = hosts(EARLY.hosts, on(B))


def verdicts(step_facts: Facts, waves: tuple[WavePolicy, ...] = WAVES) -> list[str]:
    return [f"{d.wave}:{d.verdict.value}" for d in decide(waves, step_facts).decisions]


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [
        (
            "first wave follows source at once",
            facts(source=C, waves={"canary": B, "early": B, "rest": B}),
            ["canary:advance", "early:current", "rest:current"],
        ),
        (
            "next wave advances after the soak",
            facts(reports=CANARY_ON_C),
            ["canary:current", "early:advance", "rest:current"],
        ),
        (
            "waits while soaking",
            facts(reports=hosts(CANARY.hosts, on(C, since=NOW - 30))),
            ["canary:current", "early:wait", "rest:current"],
        ),
        (
            "applied but unhealthy waits",
            facts(reports=hosts(CANARY.hosts, on(C, since=0))),
            ["canary:current", "early:wait", "rest:current"],
        ),
        (
            "a host still on the old revision holds a min_reporting=1 wave",
            facts(reports={**CANARY_ON_C, "c2": Report("c2", B, C, NOW - 500)}),
            ["canary:current", "early:wait", "rest:current"],
        ),
        (
            "an offline canary is unknown, never healthy (min_reporting 1.0)",
            facts(reports={"c1": CANARY_ON_C["c1"]}),
            ["canary:current", "early:wait", "rest:current"],
        ),
        (
            "one dead host of ten does not freeze the fleet (min_reporting 0.9)",
            facts(
                waves={"canary": C, "early": C, "rest": B},
                reports={k: v for k, v in hosts(EARLY.hosts, on(C)).items() if k != "e3"},
            ),
            ["canary:current", "early:current", "rest:advance"],
        ),
        (
            "two dead hosts of ten hold it",
            facts(
                waves={"canary": C, "early": C, "rest": B},
                reports={
                    k: v for k, v in hosts(EARLY.hosts, on(C)).items() if k not in ("e3", "e4")
                },
            ),
            ["canary:current", "early:current", "rest:wait"],
        ),
        (
            "a failed canary with a zero budget halts its target",
            facts(reports={**CANARY_ON_C, "c2": Report("c2", B, C, NOW - 500, frozenset({C}))}),
            ["canary:current", "early:halt", "rest:current"],
        ),
        (
            "a failure within the budget does not halt",
            facts(
                waves={"canary": C, "early": C, "rest": B},
                reports={
                    **hosts(EARLY.hosts, on(C)),
                    "e0": Report("e0", B, C, NOW - 500, frozenset({C})),
                },
            ),
            ["canary:current", "early:current", "rest:advance"],
        ),
        (
            "a paging alert labelled with a canary host halts",
            facts(
                reports=CANARY_ON_C,
                alerts=(Alert("Down", {"severity": "page", "host": "c1"}),),
            ),
            ["canary:current", "early:halt", "rest:current"],
        ),
        (
            "a paging alert labelled with the wave halts",
            facts(
                reports=CANARY_ON_C,
                alerts=(Alert("Slow", {"severity": "page", "wave": "canary"}),),
            ),
            ["canary:current", "early:halt", "rest:current"],
        ),
        (
            "a paging alert on an instance mapped to a canary host halts",
            facts(
                reports={
                    **CANARY_ON_C,
                    "c1": Report("c1", C, C, NOW - 100, instance="10.0.0.1:9100"),
                },
                alerts=(Alert("Err", {"severity": "page", "instance": "10.0.0.1:9100"}),),
            ),
            ["canary:current", "early:halt", "rest:current"],
        ),
        (
            "a warning alert, or a page on another wave, does not halt the canaries' gate",
            facts(
                reports=CANARY_ON_C,
                alerts=(
                    Alert("Warn", {"severity": "warning", "host": "c1"}),
                    Alert("Other", {"severity": "page", "host": "r1"}),
                ),
            ),
            ["canary:current", "early:advance", "rest:current"],
        ),
        (
            "pause holds every wave",
            facts(
                source=C,
                waves={"canary": B, "early": A, "rest": A},
                reports={**hosts(CANARY.hosts, on(B)), **hosts(EARLY.hosts, on(A))},
                paused="incident 42 (by alice)",
            ),
            ["canary:wait", "early:wait", "rest:current"],
        ),
        (
            "a halt holds only its target: the first wave takes a newer source",
            facts(
                source=C,
                waves={"canary": B, "early": A, "rest": A},
                reports=hosts(CANARY.hosts, on(B)),
                halted={B: "alert"},
            ),
            ["canary:advance", "early:wait", "rest:current"],
        ),
        (
            "a halted source holds the first wave",
            facts(source=C, waves={"canary": B, "early": B, "rest": B}, halted={C: "bad"}),
            ["canary:wait", "early:current", "rest:current"],
        ),
        ("approve: no signed tag, the wave waits", facts(reports=CANARY_ON_C), None),
        (
            "approve: a verified signed tag lets it advance",
            facts(reports=CANARY_ON_C, approved=frozenset({C})),
            None,
        ),
        (
            "a wave ref ahead of the one before it (force-pushed backwards) is refused",
            facts(source=C, waves={"canary": A, "early": B, "rest": A}),
            ["canary:refused", "early:refused", "rest:refused"],
        ),
        (
            "a first wave not on source's history is refused",
            facts(source=C, waves={"canary": "d" * 40, "early": B, "rest": B}),
            ["canary:refused", "early:refused", "rest:refused"],
        ),
        (
            "a new wave with no ref: it is created at the one before's target",
            facts(source=C, waves={"canary": C, "rest": B}, reports=CANARY_ON_C),
            ["canary:current", "early:advance", "rest:current"],
        ),
        (
            "no refs at all: the first wave is created at source",
            facts(source=C, waves={}),
            ["canary:advance", "early:current", "rest:current"],
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_decide(name: str, given: Facts, expected: list[str] | None) -> None:
    waves = WAVES
    if name.startswith("approve"):
        waves = (CANARY, WavePolicy("early", EARLY.hosts, soak_sec=60, approve=True), REST)
        expected = ["canary:current", f"early:{'advance' if given.approved else 'wait'}"]
        expected.append("rest:current")
    assert verdicts(given, waves) == expected


def test_moves_and_halts_of_a_step() -> None:
    step = decide(
        WAVES,
        facts(
            source=C,
            waves={"canary": B, "early": B, "rest": A},
            reports={**hosts(CANARY.hosts, on(B)), **hosts(EARLY.hosts, on(B, since=0))},
            alerts=(Alert("Err", {"severity": "page", "wave": "early"}),),
        ),
    )
    assert step.moves == {"canary": (B, C)}  # the canaries take the new source ...
    assert list(step.halts) == [B]  # ... while early's B is halted by its alert
    assert "paging alert Err" in step.halts[B]


def test_wave_n_plus_1_is_never_ahead_of_wave_n() -> None:
    """Every step's moves keep each wave at or behind the one before (pre-step targets)."""
    given = facts(
        source=C,
        waves={"canary": B, "early": A, "rest": A},
        reports={**hosts(CANARY.hosts, on(B)), **hosts(EARLY.hosts, on(A))},
    )
    step = decide(WAVES, given)
    assert step.moves == {"canary": (B, C), "early": (A, B)}  # rest waits for early's gate
    assert step.moves["early"][1] == given.refs.waves["canary"]


def test_refused_step_moves_nothing() -> None:
    step = decide(WAVES, facts(source=C, waves={"canary": A, "early": B, "rest": A}))
    assert step.refused and "moved by hand" in step.refused
    assert step.moves == {} and step.halts == {}


def test_empty_wave_passes_at_once() -> None:
    empty = WavePolicy("early", (), soak_sec=60)
    step = decide((CANARY, empty, REST), facts(waves={"canary": C, "early": C, "rest": B}))
    assert step.moves == {"rest": (B, C)}


def test_gate_counts_and_slowest() -> None:
    reports = {
        "e0": Report("e0", C, C, NOW - 100),  # soaked
        "e1": Report("e1", C, C, NOW - 10),  # soaking
        "e2": Report("e2", C, C, 0),  # applied, unhealthy
        "e3": Report("e3", B, C, NOW - 900, frozenset({C})),  # failed
        "e4": Report("e4", B, B, NOW - 900),  # old revision
    }
    counts = gate(EARLY, C, reports, NOW)
    assert (counts.applied, counts.healthy, counts.soaked, counts.failed) == (3, 2, 1, 1)
    assert counts.unknown == 5 and counts.soak_left == pytest.approx(50)
    assert counts.slowest in {f"e{i}" for i in range(5, 10)}  # not reporting ranks last
    assert counts.slowest_why == "not reporting"


def test_waiting_reason_says_why() -> None:
    step = decide(WAVES, facts(reports={"c1": Report("c1", C, C, NOW - 30)}))
    reason = step.decisions[1].reason
    assert "0 of 2 needed hosts of wave 'canary' soaked" in reason
    assert "1 not reporting" in reason and "next soaked in 30 s" in reason


def test_halt_message_round_trip_keeps_earlier_halts() -> None:
    first = halt_message({B: "paging alert X on wave 'canary'"}, {}, "promote@h1")
    assert parse_halt(first) == {B: "paging alert X on wave 'canary'"}
    second = halt_message({C: "2 of 2 hosts failed"}, parse_halt(first), "promote@h1")
    assert second.startswith(f"rollout halted at {C[:12]}: 2 of 2 hosts failed\n")
    assert parse_halt(second) == {C: "2 of 2 hosts failed", B: "paging alert X on wave 'canary'"}


def test_hand_written_halt_holds_the_commit_it_names() -> None:
    assert parse_halt(f"stop {B} please\n") == {B: f"stop {B} please"}


def test_pause_message() -> None:
    assert pause_reason(pause_message("incident\n42", "alice@ops")) == "incident 42 (by alice@ops)"


def test_an_alert_from_before_the_target_holds_without_halting_it() -> None:
    """A revert on its way to the canaries: the bad commit's alert still fires; it holds the
    next wave but does not halt the revert. Once it started after the target landed, it
    halts."""
    reports = hosts(CANARY.hosts, on(C, since=NOW - 100))
    old = Alert("Err", {"severity": "page", "wave": "canary"}, since=NOW - 1800)
    step = decide(WAVES, facts(reports=reports, alerts=(old,)))
    assert step.decisions[1].verdict.value == "wait" and not step.halts
    assert "from before" in step.decisions[1].reason
    new = Alert("Err", {"severity": "page", "wave": "canary"}, since=NOW - 50)
    assert list(decide(WAVES, facts(reports=reports, alerts=(new,))).halts) == [C]


def test_a_host_alert_counts_only_while_its_host_runs_the_target() -> None:
    reports = {**hosts(CANARY.hosts, on(C)), "c2": Report("c2", B, C, NOW - 900)}
    alert = Alert("Err", {"severity": "page", "host": "c2"}, since=NOW - 10)
    step = decide(WAVES, facts(reports=reports, alerts=(alert,)))
    assert step.decisions[1].verdict.value == "wait" and not step.halts
    on_target = Alert("Err", {"severity": "page", "host": "c1"}, since=NOW - 10)
    assert list(decide(WAVES, facts(reports=reports, alerts=(on_target,))).halts) == [C]
