"""A fleet for the promoter's tests: a real Prometheus (Debian's ``prometheus``) scraping a
small HTTP server that serves the fleet's textfile lines every 0.5 s, with the shipped rules
and a paging rule of the tests loaded, and a config repository served by ``git daemon``
(pushes enabled) on 127.0.0.1, with the real ``reconciler promote`` run against both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.gitrepo import ConfigRepo, git, git_daemon

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "reconciler-rollout.rules.yml"
DASHBOARD = ROOT / "monitoring" / "grafana-rollout.json"
PROMETHEUS = shutil.which("prometheus")
CANARY, EARLY, REST = ("c1", "c2"), ("e1", "e2", "e3", "e4"), ("r1", "r2")
HOSTS_TOML = "".join(
    f'[hosts.{h}]\ngroups = ["{g}"]\n\n'
    for g, names in (("canary", CANARY), ("early", EARLY), ("rest", REST))
    for h in names
)
ROLLOUT_TOML = """\
[rollout]
source = "main"

[[rollout.waves]]
name = "canary"
hosts = ["canary"]
soak_sec = 30
min_reporting = 1.0

[[rollout.waves]]
name = "early"
hosts = ["early"]
soak_sec = 30
min_reporting = 0.75

[[rollout.waves]]
name = "rest"
hosts = ["rest"]
soak_sec = 30
"""
PAGING_RULE = """\
groups:
  - name: test-paging
    rules:
      - alert: CanaryAnswersWrong
        expr: test_wrong_answers > 0
        labels:
          severity: page
"""
WAVE_OF = {
    h: w for w, names in (("canary", CANARY), ("early", EARLY), ("rest", REST)) for h in names
}

NEEDS_PROMETHEUS = pytest.mark.skipif(
    PROMETHEUS is None and os.environ.get("CI") != "true",
    reason="needs Debian's prometheus (ci/test installs it)",
)


# ---- the fleet's metrics, served to Prometheus ----------------------------------------------


class Metrics:
    """What every host's textfile would say; ``publish`` waits until Prometheus scraped it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation = 0
        self.text = "test_generation 0\n"

    def render(
        self, hosts: dict[str, tuple[str, str, float, bool]], wrong: tuple[str, ...] = ()
    ) -> str:
        lines = [f"test_generation {self.generation}"]
        for host, (revision, target, since, failed) in hosts.items():
            wave = WAVE_OF[host]
            lines.append(
                f'reconciler_rollout_info{{host="{host}",wave="{wave}",revision="{revision}",'
                f'target="{target}"}} 1'
            )
            lines.append(
                f'reconciler_rollout_healthy_since_timestamp_seconds{{host="{host}",'
                f'wave="{wave}",revision="{revision}"}} {since}'
            )
            lines.append(
                f'reconciler_rollout_failed{{host="{host}",wave="{wave}",target="{target}"}} '
                f"{int(failed)}"
            )
            lines.append(
                f'reconciler_last_success_timestamp_seconds{{host="{host}",wave="{wave}"}} '
                f"{time.time() - 5:.3f}"
            )
        lines += [f'test_wrong_answers{{host="{h}"}} 3' for h in wrong]
        return "\n".join(lines) + "\n"

    def publish(
        self,
        prom: str,
        hosts: dict[str, tuple[str, str, float, bool]],
        wrong: tuple[str, ...] = (),
    ) -> None:
        with self.lock:
            self.generation += 1
            self.text = self.render(hosts, wrong)
            want = self.generation
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            got = query(prom, "test_generation")
            # exactly the wrong hosts' alerts: the last evaluation's may still be listed
            firing = query(prom, 'ALERTS{alertstate="firing",severity="page"}')
            if got and got[0][1] >= want and {m.get("host") for m, _ in firing} == set(wrong):
                return
            time.sleep(0.1)
        raise AssertionError("Prometheus did not scrape the new metrics and alerts in 15 s")


def query(prom: str, promql: str) -> list[tuple[dict[str, str], float]]:
    answer = requests.get(f"{prom}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert answer["status"] == "success", answer
    return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]


@contextlib.contextmanager
def metrics_server(metrics: Metrics) -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            with metrics.lock:
                body = metrics.text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def fleet_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Metrics]]:
    """Registered by tests/conftest.py: one per session."""
    with running_prometheus(tmp_path_factory.mktemp("prometheus")) as found:
        yield found


@contextlib.contextmanager
def running_prometheus(base: Path) -> Iterator[tuple[str, Metrics]]:
    """Prometheus on 127.0.0.1 scraping a fleet ``Metrics`` server, its first scrape done."""
    assert PROMETHEUS, "prometheus is not installed (ci/test installs it)"
    metrics = Metrics()
    with metrics_server(metrics) as mport:
        (base / "paging.yml").write_text(PAGING_RULE)
        port = free_port()
        (base / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 500ms\n  evaluation_interval: 500ms\n"
            f"rule_files:\n  - {RULES}\n  - {base / 'paging.yml'}\n"
            "scrape_configs:\n  - job_name: fleet\n    honor_labels: true\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n"
        )
        argv = [
            PROMETHEUS,
            f"--config.file={base / 'prometheus.yml'}",
            f"--storage.tsdb.path={base / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        url = f"http://127.0.0.1:{port}"
        with running(argv, url, base / "prometheus.log"):
            # its scrape manager applies targets every 5 s: the first scrape comes ~5 s after
            # start (Prometheus 2.42 has no flag for it), paid here once per session
            metrics.publish(url, {})
            yield url, metrics


@contextlib.contextmanager
def running(
    argv: list[str],
    url: str,
    log_path: Path,
    network: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
) -> Iterator[subprocess.Popen[bytes]]:
    """A server (Prometheus, Alertmanager) started with ``argv`` until ``url/-/ready``
    answers 200 (asked from ``network``), terminated at the end."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(requests.RequestException), network():
                    if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                        break
                assert proc.poll() is None, f"{argv[0]}: {log_path.read_text()}"
                assert time.monotonic() < deadline, f"{argv[0]} did not get ready in 30 s"
                time.sleep(0.1)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---- the repository and the promoter ---------------------------------------------------------


class World:
    a: str = ""  # the first commit: every wave ref starts there

    def __init__(self, base: Path, prom: str, metrics: Metrics, port: int, repo: ConfigRepo):
        self.base, self.prom, self.metrics, self.repo = base, prom, metrics, repo
        self.url = f"git://127.0.0.1:{port}/remote.git"
        self.config = base / "config.toml"
        self.write_config(prom)

    def write_config(self, prometheus_url: str, extra: str = "", timeout: float = 5) -> None:
        self.config.write_text(
            f'state_dir = "{self.base / "state"}"\n\n[promote]\nrepo = "{self.url}"\n'
            f'prometheus_url = "{prometheus_url}"\ntimeout_sec = {timeout}\n{extra}'
        )

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return promoter_cli(self.config, self.base, args, env)

    def promote(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("promote", *args, **kw)

    def refs(self) -> dict[str, str]:
        out = git(self.repo.remote, "for-each-ref", "--format=%(refname) %(objectname)")
        return {ref: sha for ref, sha in (line.split() for line in out.splitlines())}

    def wave(self, name: str) -> str | None:
        return self.refs().get(f"refs/heads/rollout/{name}")

    def set_waves(self, **waves: str) -> None:
        for name, sha in waves.items():
            git(self.repo.remote, "update-ref", f"refs/heads/rollout/{name}", sha)

    def report(
        self,
        on: dict[tuple[str, ...], str],
        *,
        since: float | None = None,
        offline: tuple[str, ...] = (),
        failed: tuple[str, ...] = (),
        wrong: tuple[str, ...] = (),
    ) -> None:
        """Every host of each group on a revision (its wave's target), healthy ``since``."""
        when = time.time() - 600 if since is None else since
        hosts = {
            h: (rev, rev, when if h not in failed else 0.0, h in failed)
            for group, rev in on.items()
            for h in group
            if h not in offline
        }
        self.metrics.publish(self.prom, hosts, wrong)

    def hook(self, script: str) -> None:
        path = self.repo.remote / "hooks" / "pre-receive"
        path.write_text(f"#!/bin/sh\n{script}\n")
        path.chmod(0o755)


def promoter_cli(
    config: Path,
    base: Path,
    args: Sequence[str],
    env: dict[str, str] | None = None,
    wrap: Callable[[list[str]], list[str]] = list,
) -> subprocess.CompletedProcess[str]:
    """``reconciler ARGS --config CONFIG`` as the promoter's machine runs it (``wrap``: e.g.
    on a fleet's LAN), its journal entries dropped (no journald here)."""
    return subprocess.run(
        wrap([sys.executable, "-m", "reconciler", *args, "--config", str(config)]),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RECONCILER_JOURNAL_SOCKET": str(base / "no-journal"), **(env or {})},
        check=False,
    )


@pytest.fixture
def world(tmp_path: Path, fleet_prometheus: tuple[str, Metrics]) -> Iterator[World]:
    with new_world(tmp_path, *fleet_prometheus) as found:
        yield found


@contextlib.contextmanager
def new_world(base: Path, prom: str, metrics: Metrics) -> Iterator[World]:
    """A config repository with hosts.toml and rollout.toml (commit ``a``, every wave on it),
    served by ``git daemon`` with pushes enabled, and a promoter config for it."""
    repo = ConfigRepo(base / "srv")
    git(repo.remote, "config", "core.logAllRefUpdates", "always")
    with git_daemon(base / "srv", push=True) as port:
        world = World(base, prom, metrics, port, repo)
        world.a = repo.commit(
            {"inventory/hosts.toml": HOSTS_TOML, "inventory/rollout.toml": ROLLOUT_TOML}, "A"
        )
        world.set_waves(canary=world.a, early=world.a, rest=world.a)
        yield world


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the promoter's git children), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rpartition(")")[2].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
