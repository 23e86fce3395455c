"""``reconciler promote`` and ``fleet`` as real processes against a real Prometheus (Debian's
``prometheus``, scraping a small HTTP server of the test that serves the fleet's textfile
lines every 0.5 s, with the shipped rules and a paging rule of the test loaded) and a real
git repository served by ``git daemon`` (pushes enabled) on 127.0.0.1.

One Prometheus for the module; each test gets its own repository with the wave refs set
where its case needs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from reconciler.monitor import alert_webhook
from tests.integration.gitrepo import ConfigRepo, git, git_daemon, tcp_server

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
soak_sec = 2
min_reporting = 1.0

[[rollout.waves]]
name = "early"
hosts = ["early"]
soak_sec = 2
min_reporting = 0.75

[[rollout.waves]]
name = "rest"
hosts = ["rest"]
soak_sec = 2
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

pytestmark = pytest.mark.skipif(
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
            firing = not wrong or query(prom, 'ALERTS{alertstate="firing",severity="page"}')
            if got and got[0][1] >= want and firing:
                return
            time.sleep(0.1)
        raise AssertionError("Prometheus did not scrape the new metrics in 15 s")


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


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Metrics]]:
    assert PROMETHEUS, "prometheus is not installed (ci/test installs it)"
    base = tmp_path_factory.mktemp("prometheus")
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
        log = (base / "prometheus.log").open("w")
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={base / 'prometheus.yml'}",
                f"--storage.tsdb.path={base / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                        break
                assert proc.poll() is None, (base / "prometheus.log").read_text()
                assert time.monotonic() < deadline, "prometheus did not get ready in 30 s"
                time.sleep(0.1)
            yield url, metrics
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


# ---- the repository and the promoter ---------------------------------------------------------


class World:
    a: str = ""  # the first commit: every wave ref starts there

    def __init__(self, base: Path, prom: str, metrics: Metrics, port: int, repo: ConfigRepo):
        self.base, self.prom, self.metrics, self.repo = base, prom, metrics, repo
        self.url = f"git://127.0.0.1:{port}/remote.git"
        self.config = base / "config.toml"
        self.write_config(prom)

    def write_config(self, prometheus_url: str, extra: str = "") -> None:
        self.config.write_text(
            f'state_dir = "{self.base / "state"}"\n\n[promote]\nrepo = "{self.url}"\n'
            f'prometheus_url = "{prometheus_url}"\ntimeout_sec = 5\n{extra}'
        )

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **os.environ,
                "RECONCILER_JOURNAL_SOCKET": str(self.base / "no-journal"),
                **(env or {}),
            },
            check=False,
        )

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


@pytest.fixture
def world(tmp_path: Path, prometheus: tuple[str, Metrics]) -> Iterator[World]:
    prom, metrics = prometheus
    repo = ConfigRepo(tmp_path / "srv")
    git(repo.remote, "config", "core.logAllRefUpdates", "always")
    with git_daemon(tmp_path / "srv", push=True) as port:
        world = World(tmp_path, prom, metrics, port, repo)
        world.a = repo.commit(
            {"inventory/hosts.toml": HOSTS_TOML, "inventory/rollout.toml": ROLLOUT_TOML}, "A"
        )
        world.set_waves(canary=world.a, early=world.a, rest=world.a)
        yield world


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ---- the cases ---------------------------------------------------------------------------------


def test_advance_after_soak_wait_while_soaking(world: World) -> None:
    a = world.a
    b = world.repo.commit({"templates/x": "1"}, "B")
    world.report({CANARY: a, EARLY: a, REST: a})
    first = world.promote()
    assert first.returncode == 0, first.stderr
    assert world.wave("canary") == b and world.wave("early") == a  # the canaries follow main
    assert "canary: advance" in first.stdout

    world.report({CANARY: b, EARLY: a, REST: a}, since=time.time())
    soaking = world.promote()
    assert soaking.returncode == 0, soaking.stderr
    assert "early: wait: 0 of 2 needed hosts of wave 'canary' soaked" in soaking.stdout
    assert world.wave("early") == a

    time.sleep(2.1)  # soak_sec = 2
    started = time.monotonic()
    soaked = world.promote("--json")
    elapsed = time.monotonic() - started
    assert soaked.returncode == 0, soaked.stderr
    assert json.loads(soaked.stdout)["moved"] == {"early": [a, b]}
    assert world.wave("early") == b and world.wave("rest") == a
    assert elapsed < 3, f"a step took {elapsed:.2f} s"  # < 1 s on an idle machine (bench/)


def test_paging_alert_on_the_canaries_halts_and_a_revert_rolls_through(
    world: World, tmp_path: Path
) -> None:
    a = world.a
    bad = world.repo.commit({"templates/x": "bad"}, "bad")
    world.set_waves(canary=bad)
    received: list[tuple[dict[str, str], bytes]] = []

    def answer(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        headers = dict(
            line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
        )
        while len(body) < int(headers.get("Content-Length", "0")):
            body += conn.recv(65536)
        received.append((headers, body))
        conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    secret = tmp_path / "notify.secret"
    secret.write_text("s3cret\n")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(tmp_path / "journal.sock"))
    journal.settimeout(0.2)
    with tcp_server(answer) as port, journal:
        world.write_config(
            world.prom,
            f'webhook = "http://127.0.0.1:{port}/hook"\nwebhook_secret_file = "{secret}"\n',
        )
        world.report({CANARY: bad, EARLY: a, REST: a}, wrong=("c1",))
        halted = world.promote(env={"RECONCILER_JOURNAL_SOCKET": str(tmp_path / "journal.sock")})
        entries = []
        with contextlib.suppress(TimeoutError):
            while True:
                entries.append(journal.recv(1 << 20))
    assert halted.returncode == 1, halted.stdout + halted.stderr
    line = one_line(halted)
    assert line.startswith(f"reconciler promote: rollout halted at {bad[:12]}: paging alert")
    assert "CanaryAnswersWrong" in line
    assert world.wave("early") == a and world.wave("rest") == a  # 0 refs moved beyond canaries
    halt = world.refs()["refs/heads/rollout-control/halt"]
    assert f"Halted-Target: {bad}" in git(world.repo.remote, "log", "-1", "--format=%B", halt)
    assert any(b"RECONCILER_EVENT=rollout.halted" in e for e in entries), entries
    assert len(received) == 1
    headers, body = received[0]
    assert alert_webhook.verify(b"s3cret", body, headers["X-Reconciler-Signature-256"])
    assert json.loads(body)["events"][0]["target"] == bad

    world.write_config(world.prom)
    world.report({CANARY: bad, EARLY: a, REST: a}, since=time.time() - 600)
    again = world.promote()  # the alert has cleared; the halt still holds the bad target
    assert again.returncode == 0, again.stderr
    assert f"early: wait: {bad[:12]} is halted" in again.stdout
    assert world.wave("early") == a

    git(world.repo.work, "revert", "--no-edit", "HEAD")
    git(world.repo.work, "push", "-q", "origin", "HEAD:main")
    fix = git(world.repo.work, "rev-parse", "HEAD")
    rolled = world.promote()  # a newer commit is a new rollout: the canaries take it
    assert rolled.returncode == 0, rolled.stderr
    assert world.wave("canary") == fix and world.wave("early") == a


def test_offline_host_is_unknown_and_does_not_freeze_the_fleet(world: World) -> None:
    a = world.a
    b = world.repo.commit({"templates/x": "1"}, "B")
    world.set_waves(canary=b, early=b)
    world.report({CANARY: b, EARLY: b, REST: a}, offline=("e4",))
    status = world.run("fleet", "status", "--json")
    assert status.returncode == 0, status.stderr
    early = next(w for w in json.loads(status.stdout)["waves"] if w["wave"] == "early")
    assert (early["applied"], early["healthy"], early["unknown"]) == (3, 3, 1)
    assert (early["slowest"], early["slowest_why"]) == ("e4", "not reporting")
    moved = world.promote()  # min_reporting 0.75: 3 of 4 soaked is enough
    assert moved.returncode == 0, moved.stderr
    assert world.wave("rest") == b


def test_two_promoters_racing_one_wins(world: World) -> None:
    b = world.repo.commit({"templates/x": "1"}, "B")
    world.report({CANARY: world.a, EARLY: world.a, REST: world.a})
    world.hook("sleep 1")  # both read the refs before either push lands
    before = len(git(world.repo.remote, "reflog", "show", "refs/heads/rollout/canary").splitlines())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "reconciler", "promote", "--config", str(world.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RECONCILER_JOURNAL_SOCKET": str(world.base / "no-journal")},
        )
        for _ in range(2)
    ]
    results = [(p.wait(60), *p.communicate()) for p in procs]
    after = len(git(world.repo.remote, "reflog", "show", "refs/heads/rollout/canary").splitlines())
    assert world.wave("canary") == b
    assert after - before == 1, "the canary ref moved more than once"
    winners = [r for r in results if r[0] == 0 and "moved: canary" in r[1]]
    assert len(winners) == 1, results
    loser = next(r for r in results if r is not winners[0])
    assert (
        loser[0] == 75
        and "another promoter" in loser[2]
        or (loser[0] == 0 and "nothing to move" in loser[1])
    ), loser


def test_pause_holds_every_wave_until_resume(world: World) -> None:
    b = world.repo.commit({"templates/x": "1"}, "B")
    world.report({CANARY: world.a, EARLY: world.a, REST: world.a})
    paused = world.run("fleet", "pause", "--reason", "incident 7")
    assert paused.returncode == 0, paused.stderr
    held = world.promote()
    assert held.returncode == 0, held.stderr
    assert "canary: wait: paused: incident 7" in held.stdout
    assert world.wave("canary") == world.a
    status = world.run("fleet", "status")
    assert "PAUSED: incident 7" in status.stdout, status.stdout + status.stderr
    resumed = world.run("fleet", "resume")
    assert resumed.returncode == 0 and "pause lifted" in resumed.stdout, resumed.stderr
    assert world.promote().returncode == 0
    assert world.wave("canary") == b


def _garbage(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!")


@pytest.mark.parametrize("fault", ["unreachable", "garbage"])
def test_prometheus_fault_moves_nothing(world: World, fault: str) -> None:
    world.repo.commit({"templates/x": "1"}, "B")
    before = world.refs()
    with tcp_server(_garbage) as port:
        url = f"http://127.0.0.1:{free_port() if fault == 'unreachable' else port}"
        world.write_config(url)
        proc = world.promote()
    assert proc.returncode == 1, proc.stdout
    line = one_line(proc)
    assert line.startswith(f"reconciler promote: cannot reach Prometheus '{url}/api/v1/query'")
    assert "nothing was moved" in line
    assert world.refs() == before


def test_wave_ref_force_pushed_backwards_is_refused(world: World) -> None:
    b = world.repo.commit({"templates/x": "1"}, "B")
    world.set_waves(canary=world.a, early=b)  # canary reset behind early by hand
    world.report({CANARY: world.a, EARLY: b, REST: world.a})
    before = world.refs()
    proc = world.promote()
    assert proc.returncode == 1, proc.stdout
    line = one_line(proc)
    assert "wave ref 'rollout/early'" in line and "moved by hand" in line
    assert world.refs() == before


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rpartition(")")[2].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_promoter_killed_mid_push_moves_all_or_nothing(world: World, tmp_path: Path) -> None:
    a = world.a
    b = world.repo.commit({"templates/x": "1"}, "B")
    c = world.repo.commit({"templates/x": "2"}, "C")
    world.set_waves(canary=b)
    world.report({CANARY: b, EARLY: a, REST: a})  # two moves: canary b->c, early a->b
    marker = tmp_path / "in-hook"
    world.hook(f"touch {marker}; sleep 2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "promote", "--config", str(world.config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RECONCILER_JOURNAL_SOCKET": str(world.base / "no-journal")},
    )
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the push never started"
        time.sleep(0.02)
    for pid in [proc.pid, *_descendants(proc.pid)]:  # the promoter and its git push, at once
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2.5)  # the server side finishes (or drops) the atomic update
    waves = (world.wave("canary"), world.wave("early"))
    assert waves in ((b, a), (c, b)), f"half-moved: {waves}"
    world.hook("exit 0")
    again = world.promote()
    assert again.returncode == 0, again.stderr
    assert (world.wave("canary"), world.wave("early")) == (c, b)


def test_shipped_rules_and_dashboard_against_prometheus(world: World) -> None:
    """The recording rules compute the per-wave ratios, the alert expressions select the
    right hosts, and every dashboard query parses and runs."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus"
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    a, prom = world.a, world.prom
    b = world.repo.commit({"templates/x": "1"}, "B")
    hosts = {
        "c1": (b, b, time.time() - 60, False),
        "c2": (a, b, time.time() - 60, False),  # stuck on the old revision
        "e1": (a, a, 0.0, True),
    }
    world.metrics.publish(prom, hosts)
    deadline = time.monotonic() + 10
    while True:  # the rules are evaluated every 0.5 s, after the scrape
        done = {m["wave"]: v for m, v in query(prom, "wave:reconciler_rollout_done:ratio")}
        if done == {"canary": 0.5, "early": 1.0}:
            break
        assert time.monotonic() < deadline, done
        time.sleep(0.1)
    failed = {m["wave"]: v for m, v in query(prom, "wave:reconciler_rollout_failed:ratio")}
    assert failed == {"canary": 0.0, "early": 1.0}
    healthy = {m["wave"]: v for m, v in query(prom, "wave:reconciler_rollout_healthy:ratio")}
    assert healthy == {"canary": 1.0, "early": 0.0}
    stuck = query(
        prom,
        "reconciler_rollout_info == 1 unless on (host, revision) label_replace("
        'reconciler_rollout_info, "revision", "$1", "target", "(.*)")',
    )
    assert [m["host"] for m, _ in stuck] == ["c2"]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 8
    for expr in exprs:
        query(prom, expr.replace("$wave", ".*"))  # status success, or the assert says why
