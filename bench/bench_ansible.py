"""Benchmark: `reconciler sync` against `ansible-playbook -c local` doing the same job.

What operators would otherwise run: a playbook that templates N unit files, reloads
systemd and enables and starts each unit, on the same disposable systemd host, from
inside it, as root. Measured for N = 50 and 200 (``--sizes``): the first converge and a
no-op converge of each tool, and their ratio, with a bare ``python -c pass`` beside them.

Needs ansible-core (``pip install '.[bench]'``). Run (as root):
.venv/bin/python -m bench.bench_ansible [--sizes 50 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.bench_sync import TEMPLATE, inventory
from bench.machine import describe_machine, run_measured
from reconciler.devtools import sandbox
from tests.integration.gitrepo import ConfigRepo

REPO = Path(__file__).resolve().parent.parent
SRC_INSIDE, VENV_INSIDE, WORK_INSIDE = "/opt/reconciler", "/opt/reconciler-venv", "/srv/bench"
BIN = f"{VENV_INSIDE}/bin"

PLAYBOOK = """\
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    names: "{{ range(0, count | int) | map('string') | list }}"
  tasks:
    - name: unit files
      ansible.builtin.template:
        src: bench.service.j2
        dest: "/etc/systemd/system/ans{{ '%04d' | format(item | int) }}.service"
        mode: "0644"
      loop: "{{ names }}"
      vars:
        service: "ans{{ '%04d' | format(item | int) }}"
        version: 0
      register: written
    - name: reload
      ansible.builtin.systemd_service:
        daemon_reload: true
      when: written is changed
    - name: enabled and started
      ansible.builtin.systemd_service:
        name: "ans{{ '%04d' | format(item | int) }}.service"
        enabled: true
        state: started
      loop: "{{ names }}"
"""


def inside(host: sandbox.Host, *argv: str) -> list[str]:
    env = [
        f"PATH={BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
        f"PYTHONPATH={SRC_INSIDE}",
        "LANG=C.UTF-8",
        "HOME=/root",
        "ANSIBLE_LOCALHOST_WARNING=False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING=False",
    ]
    return host.nsenter(["env", "-i", *env, *argv])


def timed(argv: list[str]) -> tuple[float, str]:
    elapsed, _, proc = run_measured(argv)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return elapsed, proc.stdout


def measure(n: int, repeat: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-ansible-", dir="/var/tmp"))
    repo = ConfigRepo(work / "git")
    repo.commit(inventory(n))
    (work / "bench.service.j2").write_text(TEMPLATE)
    (work / "site.yml").write_text(PLAYBOOK)
    host = sandbox.boot(
        hostname="bench",
        binds={str(REPO): SRC_INSIDE, sys.prefix: VENV_INSIDE, str(work): WORK_INSIDE},
    )
    try:
        sync = inside(
            host, f"{BIN}/python", "-m", "reconciler", "sync", "--json", "--no-monitor",
            "--repo", f"{WORK_INSIDE}/git/remote.git", "--host", "bench",
        )  # fmt: skip
        play = inside(
            host, f"{BIN}/ansible-playbook", "-i", "localhost,", "-c", "local",
            "-e", f"count={n}", f"{WORK_INSIDE}/site.yml",
        )  # fmt: skip
        bare = inside(host, f"{BIN}/python", "-c", "pass")
        r_first, out = timed(sync)
        assert json.loads(out)["result"] == "applied", out
        a_first, _ = timed(play)
        base, r_noop, a_noop = [], [], []
        for _ in range(repeat):
            base.append(timed(bare)[0])
            t, out = timed(sync)
            assert json.loads(out)["result"] == "noop", out
            r_noop.append(t)
            t, out = timed(play)
            assert "changed=0" in out, out[-500:]
            a_noop.append(t)
        return {
            "base": statistics.median(base),
            "r_first": r_first,
            "a_first": a_first,
            "r_noop": statistics.median(r_noop),
            "a_noop": statistics.median(a_noop),
        }
    finally:
        host.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    if not shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)):
        print("bench_ansible: ansible-core is not installed: pip install '.[bench]'")
        return 1
    print(f"bench_ansible: reconciler sync vs ansible-playbook -c local, {opts.repeat} repeats")
    print(describe_machine())
    ratios = []
    for n in opts.sizes:
        m = measure(n, opts.repeat)
        ratios.append(m["a_noop"] / m["r_noop"])
        print(
            f"  N={n:4d}  first: reconciler {m['r_first']:7.2f} s  ansible {m['a_first']:7.2f} s"
            f"  ({m['a_first'] / m['r_first']:.0f}x)   no-op: reconciler {m['r_noop']:6.2f} s  "
            f"ansible {m['a_noop']:7.2f} s  ({ratios[-1]:.0f}x)   python -c pass {m['base']:.2f} s"
        )
    if len(ratios) > 1:
        print(
            f"  no-op ratio grows {ratios[-1] / ratios[0]:.1f}x from N={opts.sizes[0]} "
            f"to N={opts.sizes[-1]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
