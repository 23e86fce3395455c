"""A real fleet: N disposable systemd hosts side by side on a private LAN
(``reconciler/devtools/lan.py``), each with the reconciler installed (``reconciler install``
inside it, ``rollout = true``, the poll timer compressed by a runtime drop-in) and Debian's
``prometheus-node-exporter`` (textfile collector only) in a transient unit; on the LAN one
config repository served by git's ``http-backend`` behind a counting front
(``gitserver.py``, per client address), Debian's Prometheus scraping every host with the
shipped rules and a paging rule, Alertmanager receiving its alerts, and the real
``reconciler promote`` run on the LAN. For ``tests/scenarios/test_fleet.py`` and
``bench/bench_fleet.py``.

The hosts' config repository has one service, ``app``, whose unit writes
``fleet_app_wrong_answers`` into the textfile directory: a commit that sets it passes every
host's health gate (the unit runs) and fires the paging alert ``AppAnswersWrong``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from reconciler.devtools import lan, sandbox
from tests.conftest import ENV_INSIDE, PYTHON_INSIDE, REPO, SRC_INSIDE, VENV_INSIDE
from tests.integration.fleetworld import RULES, promoter_cli, query, running
from tests.integration.gitrepo import ConfigRepo, git
from tests.integration.gitserver import GitServer, git_http

TEXTFILE_DIR = "/var/lib/fleet-textfile"
CONFIG = "/etc/reconciler/config.toml"
GIT_PORT, PROMETHEUS_PORT, ALERTMANAGER_PORT, NODE_PORT = 8080, 9090, 9093, 9100
LS_REFS = ("POST", "/remote.git/git-upload-pack", "ls-refs")
APP = (
    "[Unit]\nDescription=fleet app, release {{ release }}, on {{ host.name }}\n\n"
    "[Service]\n"
    'ExecStartPre=/bin/sh -c \'echo "fleet_app_wrong_answers {{ wrong_answers }}" '
    f"> {TEXTFILE_DIR}/app.prom.tmp && mv {TEXTFILE_DIR}/app.prom.tmp {TEXTFILE_DIR}/app.prom'\n"
    "ExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n"
)
PAGING_RULE = """\
groups:
  - name: fleet-paging
    rules:
      - alert: AppAnswersWrong
        expr: fleet_app_wrong_answers > 0
        labels:
          severity: page
"""


def services(release: str, wrong_answers: int = 0) -> str:
    return (
        '[services.app]\ntemplate = "app.service.j2"\nhosts = ["all"]\n'
        f'vars = {{ release = "{release}", wrong_answers = {wrong_answers} }}\n\n'
        "[services.app.health]\ntimeout_sec = 20\n"
    )


def wave_sizes(count: int) -> dict[str, int]:
    """canary 3 hosts, early a quarter, rest the others."""
    canary = 3
    early = max(1, count // 4)
    return {"canary": canary, "early": early, "rest": count - canary - early}


def names_of(count: int) -> dict[str, list[str]]:
    return {
        wave: [f"{wave[0]}{i:02d}" for i in range(1, n + 1)]
        for wave, n in wave_sizes(count).items()
    }


def rollout_toml(soak_sec: float) -> str:
    text = '[rollout]\nsource = "main"\n'
    for wave in ("canary", "early", "rest"):
        text += (
            f'\n[[rollout.waves]]\nname = "{wave}"\nhosts = ["{wave}"]\nsoak_sec = {soak_sec}\n'
            "min_reporting = 0.9\n"
        )
    return text


def hosts_toml(waves: dict[str, list[str]]) -> str:
    return "".join(f'[hosts.{h}]\ngroups = ["{w}"]\n\n' for w, hs in waves.items() for h in hs)


def poll_dropin(period_sec: int) -> str:
    """Every ``period_sec`` at a fixed offset per machine, as the shipped timer every 15 min."""
    return (
        "[Timer]\nOnBootSec=\nOnCalendar=\n"
        f"OnCalendar=*:*:0/{period_sec}\nRandomizedDelaySec={period_sec}s\n"
        "FixedRandomDelay=true\nAccuracySec=1s\n"
    )


# Timers the fleet has no use for in a test, moved out of its way: the hosts' CPU is the limit.
QUIET_DROPIN = "[Timer]\nOnBootSec=\nOnUnitActiveSec=\nOnCalendar=\nOnCalendar=yearly\n"
POLL_DROPIN = "run/systemd/system/gitops-sync.timer.d/fleet.conf"


@dataclass
class Fleet:
    """The booted fleet and its LAN's servers, seen from the test."""

    base: Path
    net: lan.Lan
    hosts: dict[str, sandbox.Host]  # inventory name -> host
    address: dict[str, str]  # inventory name -> LAN address
    waves: dict[str, list[str]]
    repo: ConfigRepo
    server: GitServer
    prom: str = f"http://{lan.GATEWAY}:{PROMETHEUS_PORT}"
    alertmanager: str = f"http://{lan.GATEWAY}:{ALERTMANAGER_PORT}"
    figures: dict[str, Any] = field(default_factory=dict)
    offline: set[str] = field(default_factory=set)

    @property
    def config(self) -> Path:
        return self.base / "promoter.toml"

    def wave_of(self, host: str) -> str:
        return next(w for w, names in self.waves.items() if host in names)

    def online(self, wave: str | None = None) -> list[str]:
        names = self.waves[wave] if wave else list(self.hosts)
        return [h for h in names if h not in self.offline]

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``reconciler ARGS --config promoter.toml`` on the LAN, as an operator's machine."""
        return promoter_cli(self.config, self.base, args, env, self.net.nsenter)

    def promote_popen(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.net.nsenter(
                [sys.executable, "-m", "reconciler", "promote", "--json"]
                + ["--config", str(self.config)]
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RECONCILER_JOURNAL_SOCKET": str(self.base / "no-journal")},
        )

    def refs(self) -> dict[str, str]:
        out = git(self.repo.remote, "for-each-ref", "--format=%(refname) %(objectname)")
        return {ref: sha for ref, sha in (line.split() for line in out.splitlines())}

    def wave(self, name: str) -> str | None:
        return self.refs().get(f"refs/heads/rollout/{name}")

    def moves(self, wave: str) -> list[tuple[float, str]]:
        """(time, new revision) of every update of the wave's ref, oldest first: the
        promoter's record (``core.logAllRefUpdates``)."""
        out = git(
            self.repo.remote,
            "reflog",
            "show",
            "--date=unix",
            "--format=%gd %H",
            f"refs/heads/rollout/{wave}",
        )
        found = []
        for line in out.splitlines():
            selector, sha = line.split()
            found.append((float(selector.rsplit("@{", 1)[1].rstrip("}")), sha))
        return sorted(found)

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        with self.net.network():
            return query(self.prom, promql)

    def revisions(self) -> dict[str, str]:
        """Each reporting host's applied revision, as Prometheus has it."""
        return {m["host"]: m.get("revision", "") for m, _ in self.query("reconciler_rollout_info")}

    def on(self, revision: str) -> set[str]:
        return {h for h, r in self.revisions().items() if r == revision}

    def applied(self, revision: str) -> dict[str, float]:
        """When each host applied ``revision`` (its journal's ``sync.applied``), by host."""
        when: dict[str, float] = {}
        for name, host in self.hosts.items():
            if name in self.offline:
                continue
            for entry in host.journal("RECONCILER_EVENT=sync.applied"):
                if entry.get("RECONCILER_REVISION") == revision:
                    when[name] = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
                    break
        return when

    def alerts(self) -> list[dict[str, Any]]:
        with self.net.network():
            answer: list[dict[str, Any]] = requests.get(
                f"{self.alertmanager}/api/v2/alerts", timeout=5
            ).json()
        return answer

    def hook(self, script: str) -> None:
        path = self.repo.remote / "hooks" / "pre-receive"
        if script:
            path.write_text(f"#!/bin/sh\n{script}\n")
            path.chmod(0o755)
        else:
            path.unlink(missing_ok=True)

    def push(self, message: str, release: str, wrong_answers: int = 0) -> str:
        return self.repo.commit(
            {"inventory/services.toml": services(release, wrong_answers)}, message
        )

    def no_change_polls(
        self, names: Sequence[str], since: float, timeout: float
    ) -> dict[str, tuple[list[tuple[str, str, str]], int]]:
        """Per host of ``names`` (whose wave ref does not move meanwhile): the git requests
        it made since the last ``take_by_client`` and the polls its journal logged as no-ops
        since ``since``, once each has polled at least once."""
        asked: dict[str, list[tuple[str, str, str]]] = {}

        def each_polled() -> bool:
            for address, seen in self.server.take_by_client().items():
                asked.setdefault(address, []).extend(seen)
            return all(asked.get(self.address[h]) for h in names)

        wait_for(each_polled, timeout, "a poll of every host")
        until = time.time()
        found = {}
        for name in names:
            noops = [
                e
                for e in self.hosts[name].journal("RECONCILER_EVENT=sync.noop")
                if since <= int(e["__REALTIME_TIMESTAMP"]) / 1e6 <= until
            ]
            found[name] = (asked[self.address[name]], len(noops))
        return found

    def diagnose(self, names: Sequence[str], lines: int = 15) -> str:
        """The last lines of a few hosts' sync and node-exporter journals (a timeout's why)."""
        out = []
        for name in list(names)[:2]:
            log = self.hosts[name].run(
                [
                    "journalctl",
                    "--no-pager",
                    "-n",
                    str(lines),
                    "-u",
                    "gitops-sync.service",
                    "-u",
                    "fleet-node-exporter.service",
                    "-u",
                    "gitops-sync.timer",
                ],
                check=False,
            )
            out.append(f"--- {name}:\n{log.stdout}")
        return "\n".join(out)

    def power_off(self, names: Sequence[str]) -> None:
        sandbox.stop_many([self.hosts[n] for n in names])
        self.offline.update(names)


def wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.5) -> Any:
    """``condition()``'s first true answer, or an AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


def memory_mb(hosts: Sequence[sandbox.Host]) -> float:
    """The hosts' processes' proportional set size (PSS), summed: what the fleet costs."""
    namespaces = set()
    for host in hosts:
        with contextlib.suppress(OSError):
            namespaces.add(os.readlink(f"/proc/{host.pid}/ns/pid"))
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{entry}/ns/pid") not in namespaces:
                continue
            for line in Path(f"/proc/{entry}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return round(total / 1024, 1)


def _prepare(host: sandbox.Host, name: str, url: str) -> None:
    """What an operator's image would carry: the host config (the promoter's textfile
    directory shared with node-exporter), the compressed poll timer, quiet other timers."""
    root = host.root
    (root / "etc/reconciler").mkdir(parents=True, exist_ok=True)
    config = root / CONFIG.lstrip("/")
    config.write_text(
        f'repo = "{url}"\nhost = "{name}"\nrollout = true\nfetch_timeout_sec = 60\n'
        "poll_backoff_sec = 5\npoll_backoff_max_sec = 30\n\n"
        f'[monitor]\ntextfile = "{TEXTFILE_DIR}/reconciler.prom"\n'
    )
    config.chmod(0o600)
    (root / TEXTFILE_DIR.lstrip("/")).mkdir(mode=0o755, parents=True, exist_ok=True)
    for timer, text in (
        ("gitops-sync.timer", QUIET_DROPIN),  # until every host is installed: see start_polls
        ("metrics-sample.timer", QUIET_DROPIN),
        ("reconciler-monitor.timer", QUIET_DROPIN),
    ):
        dropin = root / f"run/systemd/system/{timer}.d/fleet.conf"
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text(text)
    host.run(
        [
            "systemd-run",
            "--unit=fleet-node-exporter",
            "--property=Restart=always",
            "/usr/bin/prometheus-node-exporter",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={TEXTFILE_DIR}",
            f"--web.listen-address=:{NODE_PORT}",
        ]
    )


def _start_polls(host: sandbox.Host, period_sec: int) -> None:
    (host.root / POLL_DROPIN).write_text(poll_dropin(period_sec))
    host.systemctl("daemon-reload")
    host.systemctl("restart", "gitops-sync.timer")


def _install(host: sandbox.Host) -> float:
    started = time.monotonic()
    host.run([PYTHON_INSIDE, "-m", "reconciler", "install"], env=ENV_INSIDE, timeout=600)
    return time.monotonic() - started


@contextlib.contextmanager
def real_fleet(
    count: int = 50, *, period_sec: int = 15, soak_sec: float = 5, base: Path | None = None
) -> Iterator[Fleet]:
    """The whole fleet, every host on the first commit ``A`` (every wave ref on it)."""
    assert shutil.which("prometheus"), "prometheus is not installed (ci/test installs it)"
    # The hosts run the checkout read-only: without bytecode every poll of every host would
    # compile the modules it imports anew (0.5 s of CPU a no-op poll, 0.33 s with it)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "reconciler")], check=True)
    made = base is None
    base = base or Path(tempfile.mkdtemp(prefix="realfleet-"))
    waves = names_of(count)
    names = [h for hs in waves.values() for h in hs]
    figures: dict[str, Any] = {"hosts": count, "period_sec": period_sec, "soak_sec": soak_sec}
    repo = ConfigRepo(base / "git")
    git(repo.remote, "config", "core.logAllRefUpdates", "always")
    git(repo.remote, "config", "http.receivepack", "true")
    a = repo.commit(
        {
            "inventory/hosts.toml": hosts_toml(waves),
            "inventory/services.toml": services("1"),
            "inventory/rollout.toml": rollout_toml(soak_sec),
            "templates/app.service.j2": APP,
        },
        "A: the fleet's app, release 1",
    )
    for wave in waves:
        git(repo.remote, "update-ref", f"refs/heads/rollout/{wave}", a)
    hosts: list[sandbox.Host] = []
    try:
        with contextlib.ExitStack() as stack:
            net = stack.enter_context(lan.lan())
            started = time.monotonic()
            hosts = sandbox.boot_many(
                names, binds={str(REPO): SRC_INSIDE, sys.prefix: VENV_INSIDE}, timeout=300
            )
            figures["boot_sec"] = round(time.monotonic() - started, 1)
            figures["boot_memory_mb"] = memory_mb(hosts)
            addresses = net.attach(hosts)
            with net.network():
                server = stack.enter_context(
                    git_http(base / "git", address=lan.GATEWAY, port=GIT_PORT)
                )
            url = f"http://{lan.GATEWAY}:{GIT_PORT}/remote.git"
            fleet = Fleet(
                base,
                net,
                dict(zip(names, hosts, strict=True)),
                dict(zip(names, addresses, strict=True)),
                waves,
                repo,
                server,
            )
            fleet.figures = figures
            fleet.config.write_text(
                f'state_dir = "{base / "promoter"}"\n\n[promote]\nrepo = "{url}"\n'
                f'prometheus_url = "{fleet.prom}"\nalertmanager_url = "{fleet.alertmanager}"\n'
                "timeout_sec = 20\n"
            )
            stack.enter_context(_alertmanager(fleet))
            stack.enter_context(_prometheus(fleet))
            started = time.monotonic()
            for name, host in fleet.hosts.items():
                _prepare(host, name, url)
            with ThreadPoolExecutor(2) as pool:  # CPU-bound: two at a time on 2 CPUs
                installs = list(pool.map(_install, hosts))
            for host in hosts:  # polls start once every install is done: none slows them
                _start_polls(host, period_sec)
            figures["install_sec"] = round(time.monotonic() - started, 1)
            figures["install_each_sec"] = {
                "median": round(sorted(installs)[len(installs) // 2], 2),
                "max": round(max(installs), 2),
            }
            started = time.monotonic()
            try:
                wait_for(
                    lambda: len(fleet.on(a)) == count,
                    int(os.environ.get("FLEET_FIRST_SYNC_SEC", "300")),
                    "every host on A",
                    every=2,
                )
            except AssertionError as exc:
                late = sorted(set(names) - fleet.on(a))
                raise AssertionError(f"{exc}: {late}\n{fleet.diagnose(late)}") from None
            figures["first_sync_sec"] = round(time.monotonic() - started, 1)
            figures["memory_mb"] = memory_mb(hosts)
            fleet.figures["a"] = a
            yield fleet
    finally:
        sandbox.stop_many(hosts)
        if made:
            shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def _prometheus(fleet: Fleet) -> Iterator[None]:
    base = fleet.base / "prometheus"
    base.mkdir()
    (base / "paging.yml").write_text(PAGING_RULE)
    targets = ", ".join(f"'{a}:{NODE_PORT}'" for a in fleet.address.values())
    (base / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n  - {base / 'paging.yml'}\n"
        "alerting:\n  alertmanagers:\n    - static_configs:\n"
        f"        - targets: ['{lan.GATEWAY}:{ALERTMANAGER_PORT}']\n"
        "scrape_configs:\n  - job_name: fleet\n"
        f"    static_configs:\n      - targets: [{targets}]\n"
    )
    argv = [
        "prometheus",
        f"--config.file={base / 'prometheus.yml'}",
        f"--storage.tsdb.path={base / 'data'}",
        f"--web.listen-address={lan.GATEWAY}:{PROMETHEUS_PORT}",
        "--log.level=warn",
    ]
    with running(fleet.net.nsenter(argv), fleet.prom, base / "prometheus.log", fleet.net.network):
        yield


@contextlib.contextmanager
def _alertmanager(fleet: Fleet) -> Iterator[None]:
    base = fleet.base / "alertmanager"
    base.mkdir()
    (base / "am.yml").write_text("route:\n  receiver: none\nreceivers:\n  - name: none\n")
    argv = [
        "prometheus-alertmanager",
        f"--config.file={base / 'am.yml'}",
        f"--storage.path={base / 'data'}",
        f"--web.listen-address={lan.GATEWAY}:{ALERTMANAGER_PORT}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    with running(fleet.net.nsenter(argv), fleet.alertmanager, base / "am.log", fleet.net.network):
        yield
