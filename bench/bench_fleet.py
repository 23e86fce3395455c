"""Benchmark (boots 50 disposable systemd hosts on a private LAN; runs git http-backend,
Prometheus, Alertmanager and node-exporters): the real fleet of tests/scenarios/test_fleet.py
(``tests/integration/realfleet.py``) taking one good commit through 3 waves (3 canaries, a
quarter, the rest) with a 60 s soak each, the promoter run every 5 s (its timer, compressed),
the hosts polling every 30 s (``RandomizedDelaySec=`` with ``FixedRandomDelay=``).

Targets (issue 15): every host on the commit < 5 min after its push; 1 git request per poll
that finds nothing new (counted per host at the server against the polls in the hosts'
journals); ``reconciler promote`` < 1 s per step, whole process (beside a bare
``python -c pass`` on the same LAN, interleaved). Also printed: boot time and memory of the
fleet, install and first-sync times.

    sudo .venv/bin/python -m bench.bench_fleet [--hosts 50] [--period 30] [--soak 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from bench.machine import describe_machine
from tests.integration.realfleet import LS_REFS, Fleet, real_fleet, wait_for

TARGET_ROLLOUT_SEC = 300.0
TARGET_STEP_SEC = 1.0


def bare_python(fleet: Fleet) -> float:
    started = time.monotonic()
    subprocess.run(fleet.net.nsenter([sys.executable, "-c", "pass"]), check=True)
    return time.monotonic() - started


def quiesce(fleet: Fleet) -> None:
    """Stop every host's poll timer and wait until no poll runs."""
    for host in fleet.hosts.values():
        host.systemctl("stop", "gitops-sync.timer")

    def idle() -> bool:
        return all(
            h.systemctl("is-active", "gitops-sync.service", check=False).stdout.strip()
            in ("inactive", "failed")
            for h in fleet.hosts.values()
        )

    wait_for(idle, 120, "the polls in flight to end")


def no_change_polls(fleet: Fleet, period: int) -> tuple[float, int, int]:
    """Requests per no-change poll over every host, without a poll cut by the window's
    edges (the timers are stopped and no poll runs at both ends): (ratio, requests, polls)."""
    quiesce(fleet)
    fleet.server.take_by_client()
    since = time.time()
    for host in fleet.hosts.values():
        host.systemctl("start", "gitops-sync.timer")
    found = fleet.no_change_polls(list(fleet.hosts), since, 4 * period)
    quiesce(fleet)
    late = fleet.server.take_by_client()
    asked = {h: [*found[h][0], *late.get(fleet.address[h], [])] for h in fleet.hosts}
    odd = {h: a for h, a in asked.items() if set(a) != {LS_REFS}}
    assert not odd, f"a no-change poll asked more than ls-refs: {odd}"
    polls = 0
    for host in fleet.hosts.values():
        host.journal_sync()
        polls += len(
            [
                e
                for e in host.journal("RECONCILER_EVENT=sync.noop")
                if int(e["__REALTIME_TIMESTAMP"]) / 1e6 >= since
            ]
        )
    requests = sum(len(a) for a in asked.values())
    return requests / max(polls, 1), requests, polls


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_fleet")
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--period", type=int, default=30, help="each host polls every N s")
    parser.add_argument("--soak", type=float, default=60)
    parser.add_argument("--promote-every", type=float, default=5)
    opts = parser.parse_args()
    print(describe_machine(), flush=True)
    with real_fleet(opts.hosts, period_sec=opts.period, soak_sec=opts.soak) as fleet:
        b = fleet.push("B: release 2", "2")
        pushed = time.time()
        steps: list[float] = []
        baseline: list[float] = []
        done_at: dict[str, float] = {}

        def step() -> bool:
            for wave in fleet.waves:
                if wave not in done_at and fleet.on(b) >= set(fleet.online(wave)):
                    done_at[wave] = time.time() - pushed
            if len(done_at) == len(fleet.waves):
                return True
            baseline.append(bare_python(fleet))
            started = time.monotonic()
            proc = fleet.cli("promote")
            steps.append(time.monotonic() - started)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            return False

        wait_for(step, 3 * TARGET_ROLLOUT_SEC, "every host on B", every=opts.promote_every)
        applied = fleet.applied(b)  # the hosts' journals: when each applied it
        assert set(applied) == set(fleet.hosts), sorted(set(fleet.hosts) - set(applied))
        everywhere = max(applied.values()) - pushed
        by_wave = {w: max(applied[h] for h in n) - pushed for w, n in fleet.waves.items()}
        moved = {w: min(t for t, sha in fleet.moves(w) if sha == b) - pushed for w in fleet.waves}
        ratio, requests, polls = no_change_polls(fleet, opts.period)  # all on B now
        figures = fleet.figures
    step_median, base_median = statistics.median(steps), statistics.median(baseline)
    print(
        f"{opts.hosts} hosts on a private LAN, polling every {opts.period} s; 3 waves "
        f"({', '.join(f'{w} {len(n)}' for w, n in fleet.waves.items())}), soak {opts.soak:.0f} s, "
        f"min_reporting 0.9; promoter every {opts.promote_every:.0f} s"
    )
    print(
        f"  fleet: booted in {figures['boot_sec']} s ({figures['boot_memory_mb']} MB PSS), "
        f"installed in {figures['install_sec']} s "
        f"(each: {json.dumps(figures['install_each_sec'])}), "
        f"first syncs {figures['first_sync_sec']} s; {figures['memory_mb']} MB PSS running"
    )
    print(
        f"  good commit on every host {everywhere:.1f} s after its push (target < "
        f"{TARGET_ROLLOUT_SEC:.0f} s; the hosts' journals); waves applied by "
        + ", ".join(f"{w} {t:.1f} s" for w, t in by_wave.items())
        + " (seen in Prometheus at "
        + ", ".join(f"{w} {t:.1f} s" for w, t in done_at.items())
        + ")"
        + "; refs moved at "
        + ", ".join(f"{w} {t:.1f} s" for w, t in moved.items())
    )
    print(
        f"  git requests per no-change poll: {ratio:.2f} ({requests} ls-refs requests, {polls} "
        f"no-op polls in the hosts' journals after the rollout, timers stopped at both ends "
        "of the window; every request an ls-refs; target 1)"
    )
    print(
        f"  reconciler promote per step: median {step_median:.2f} s, max {max(steps):.2f} s over "
        f"{len(steps)} steps; bare python -c pass on the LAN {base_median:.2f} s (ratio "
        f"{step_median / base_median:.1f}); target < {TARGET_STEP_SEC:.0f} s"
    )
    met = (
        everywhere < TARGET_ROLLOUT_SEC and abs(ratio - 1) < 0.05 and step_median < TARGET_STEP_SEC
    )
    print(f"targets {'met' if met else 'MISSED'}")
    print(describe_machine())
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
