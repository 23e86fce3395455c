"""Rollout faults, each refused or survived with one line and nothing half-moved: Prometheus
unreachable or answering garbage, a wave ref force-pushed backwards, two promoters racing,
a promoter killed mid-push (real processes, a real Prometheus and ``git daemon``:
``tests/integration/fleetworld.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.faults.conftest import Report
from tests.integration.fleetworld import (
    CANARY,
    EARLY,
    NEEDS_PROMETHEUS,
    REST,
    World,
    descendants,
    free_port,
    one_line,
    world,
)
from tests.integration.gitrepo import git, tcp_server

pytestmark = NEEDS_PROMETHEUS
__all__ = ["world"]  # the fixture, used by name


def test_two_promoters_racing_one_wins(world: World, fault_report: Report) -> None:
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
    lost_push = loser[0] == 75 and "another promoter" in loser[2]
    assert lost_push or (loser[0] == 0 and "nothing to move" in loser[1]), loser
    fault_report(
        "two promoters racing (a pre-receive hook holds each push 1 s)",
        "one moved the canary ref; the other "
        + ("lost the compare-and-swap: exit 75, one line" if lost_push else "found it moved"),
        None,
        True,
    )


def _garbage(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!")


@pytest.mark.parametrize("fault", ["unreachable", "garbage"])
def test_prometheus_fault_moves_nothing(world: World, fault: str, fault_report: Report) -> None:
    world.repo.commit({"templates/x": "1"}, "B")
    before = world.refs()
    started = time.monotonic()
    with tcp_server(_garbage) as port:
        url = f"http://127.0.0.1:{free_port() if fault == 'unreachable' else port}"
        world.write_config(url)
        proc = world.promote()
    assert proc.returncode == 1, proc.stdout
    line = one_line(proc)
    if fault == "unreachable":
        assert line.startswith(f"reconciler promote: cannot reach Prometheus '{url}/api/v1/query'")
    else:
        assert line.startswith(
            f"reconciler promote: cannot use the answer of Prometheus '{url}/api/v1/query' "
            "(HTTP 200): not JSON (it starts 'not json!')"
        )
    assert "nothing was moved" in line
    assert world.refs() == before
    fault_report(
        f"Prometheus {fault}",
        f"exit 1 in {time.monotonic() - started:.1f} s, one line; no ref moved, no halt written",
        None,
        True,
    )


@contextlib.contextmanager
def proxy(upstream: str, wrong_path: str, body: bytes) -> Iterator[str]:
    """A reverse proxy to the real Prometheus that answers ``wrong_path`` itself with HTTP 200
    and ``body`` (a proxy that lets only queries through, another service at that path)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.partition("?")[0] == wrong_path:
                status, data = 200, body
            else:
                answer = requests.get(upstream + self.path, timeout=5)
                status, data = answer.status_code, answer.content
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_answer_without_an_alert_list_names_the_url(world: World, fault_report: Report) -> None:
    """A README-only user's trial: Prometheus answered the query, then a 200 without an alert
    list, and the line named an empty URL (``cannot reach Prometheus ''``)."""
    world.repo.commit({"templates/x": "1"}, "B")
    world.report({CANARY: world.a, EARLY: world.a, REST: world.a})
    before = world.refs()
    with proxy(world.prom, "/api/v1/alerts", b'{"status":"success","data":{}}') as url:
        world.write_config(url)
        proc = world.promote()
    assert proc.returncode == 1, proc.stdout
    line = one_line(proc)
    assert line.startswith(
        f"reconciler promote: cannot use the answer of Prometheus '{url}/api/v1/alerts' "
        "(HTTP 200): no alert list (no data.alerts list: data is an empty object)"
    ), line
    assert "nothing was moved" in line and world.refs() == before
    fault_report(
        "Prometheus answers 200 without an alert list",
        "exit 1, one line naming the alerts URL and what was missing; no ref moved",
        None,
        True,
    )


def test_no_rollout_toml_says_no_rollout_is_configured(world: World) -> None:
    """A README-only user's trial: ``fleet status`` on a repository without rollout.toml said
    "cannot promote from 'main'". No rollout is configured: a configuration matter, exit 2."""
    world.repo.remove("inventory/rollout.toml")
    tip = world.repo.commit(message="no rollout")
    before = world.refs()
    for args in (("fleet", "status"), ("fleet", "status", "--json"), ("promote",)):
        proc = world.run(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        line = one_line(proc)
        command = " ".join(args[:1])
        assert line.startswith(
            f"reconciler {command}: no rollout configured: branch 'main' ({tip[:12]}) of "
            f"'{world.url}' has no inventory/rollout.toml (hint: without it hosts follow their "
            "ref"
        ), line
        assert proc.stdout == "", proc.stdout
    assert world.refs() == before


def test_wave_ref_force_pushed_backwards_is_refused(world: World, fault_report: Report) -> None:
    b = world.repo.commit({"templates/x": "1"}, "B")
    world.set_waves(canary=world.a, early=b)  # canary reset behind early by hand
    world.report({CANARY: world.a, EARLY: b, REST: world.a})
    before = world.refs()
    proc = world.promote()
    assert proc.returncode == 1, proc.stdout
    line = one_line(proc)
    assert "wave ref 'rollout/early'" in line and "moved by hand" in line
    assert world.refs() == before
    fault_report("a wave ref force-pushed backwards", "refused: exit 1, one line", None, True)


def test_promoter_killed_mid_push_moves_all_or_nothing(
    world: World, tmp_path: Path, fault_report: Report
) -> None:
    a = world.a
    b = world.repo.commit({"templates/x": "1"}, "B")
    c = world.repo.commit({"templates/x": "2"}, "C")
    world.set_waves(canary=b)
    world.report({CANARY: b, EARLY: a, REST: a})  # two moves: canary b->c, early a->b
    marker = tmp_path / "in-hook"
    done = tmp_path / "hook-done"
    world.hook(f"touch {marker}; sleep 2; touch {done}")
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
    for pid in [proc.pid, *descendants(proc.pid)]:  # the promoter and its git push, at once
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    while not done.exists():  # the server side finishes (or drops) the atomic update
        assert time.monotonic() < deadline + 30, "the hook never finished"
        time.sleep(0.05)
    time.sleep(0.5)
    waves = (world.wave("canary"), world.wave("early"))
    assert waves in ((b, a), (c, b)), f"half-moved: {waves}"
    world.hook("exit 0")
    started = time.monotonic()
    again = world.promote()
    assert again.returncode == 0, again.stderr
    assert (world.wave("canary"), world.wave("early")) == (c, b)
    fault_report(
        "promoter kill -9 (with its git push) during a 2-ref push",
        "atomic push: "
        + ("both refs moved" if waves == (c, b) else "neither ref moved")
        + "; the next step converges",
        time.monotonic() - started,
        True,
    )
