"""Network faults: a git remote that is gone, hung or talks garbage; an ETL endpoint that is
down, failing, slow or huge; a webhook under a flood, forged, replayed or oversized.

Every request goes to a real server on 127.0.0.1 (git daemon semantics, raw TCP, HTTP in a
thread); every run is a whole process. A failed fetch must leave the host as it was, be
recorded as a failed sync, still end with the monitoring pass, and the first sync after the
remote is back converges.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reconciler.devtools import sandbox
from tests.faults.conftest import FaultEnv, Report
from tests.integration.gitrepo import tcp_server
from tests.integration.test_sync import base_files, service
from tests.integration.test_webhook import (
    Server,
    SyncUnit,
    oversized,
    post,
    push_body,
    signed,
    sync_unit,
)

pytestmark = pytest.mark.host
__all__ = ["sync_unit"]  # the module-scoped fake gitops-sync.service of test_webhook

CLI = str(Path(sys.executable).parent / "reconciler")


def journal_since(host: sandbox.Host, since: float) -> str:
    """Every journal entry of the host since ``since`` (epoch seconds), as raw JSON text."""
    host.journal_sync()
    return host.run(
        # floored: rounding 100.6 up to 101 lost what a fast run logged at 100.7 (CI, 5xx)
        ["journalctl", "--no-pager", "-o", "json", "--all", "--since", f"@{math.floor(since)}"],
        check=False,
    ).stdout


def hang(conn: socket.socket) -> None:
    pass  # accept, never answer


def garbage(conn: socket.socket) -> None:
    conn.settimeout(5)
    conn.recv(4096)
    conn.sendall(b"\x00\xffthis is not git\r\n\r\n")
    conn.close()


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port bound but not listening: connections are refused, and a parallel test cannot
    take it meanwhile (a closed "free" port can be, and then it answers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@pytest.fixture
def closed_port() -> Iterator[int]:
    with refused_port() as port:
        yield port


# ---- the git remote -------------------------------------------------------------------------


def git_children_with(marker: str) -> list[int]:
    """PIDs of processes whose command line holds ``marker`` (a git left behind)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in Path(entry.path, "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


@pytest.mark.parametrize("fault", ["unreachable", "slow", "garbage"])
def test_git_remote_fault(fenv: FaultEnv, fault_report: Report, fault: str) -> None:
    a = fenv.name("steady")
    unit = f"{a}.service"
    fenv.repo.commit(base_files(fenv, service(a)))
    fenv.sync()
    before, text = fenv.invocations(unit), (fenv.host.unit_dir / unit).read_text()
    fenv.repo.commit(base_files(fenv, service(a, greeting="changed")))
    fenv.configure(fetch_timeout=3)  # the bound under test
    since = time.time()
    with contextlib.ExitStack() as stack:
        if fault == "unreachable":
            port = stack.enter_context(refused_port())
            url = f"git://127.0.0.1:{port}/remote.git"
        else:
            port = stack.enter_context(tcp_server(hang if fault == "slow" else garbage))
            url = f"git://127.0.0.1:{port}/remote.git"
        started = time.monotonic()
        proc = fenv.run("sync", repo=url)
        seconds = time.monotonic() - started
    faulted = time.monotonic()
    lines = proc.stderr.strip().splitlines()
    clear = proc.returncode == 1 and len(lines) == 1 and "cannot fetch repository" in lines[0]
    untouched = fenv.invocations(unit) == before and (fenv.host.unit_dir / unit).read_text() == text
    monitored = (fenv.state / "reconciler.prom").stat().st_mtime >= since  # rewritten per pass
    leftovers = git_children_with(url)
    converge = fenv.converge(faulted)
    results = [r["result"] for r in fenv.history()]
    nothing_lost = untouched and results[:3] == ["applied", "failed", "applied"]
    fault_report(
        f"git remote {fault}",
        f"{lines[0] if lines else repr(proc.stderr)} after {seconds:.1f}s; host untouched, "
        "monitoring pass still ran",
        converge,
        nothing_lost,
    )
    assert clear, proc.stderr
    assert seconds < 3 + 2.5, "bounded by fetch_timeout_sec = 3"
    assert monitored, "the monitoring pass runs even when the fetch fails"
    assert not leftovers, "no git process outlives the sync"
    assert nothing_lost, results


# ---- the ETL endpoint -----------------------------------------------------------------------

TOKEN = "etl-" + uuid.uuid4().hex


class _Etl(BaseHTTPRequestHandler):
    server: EtlServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        mode = self.server.mode
        self.server.requests += 1
        with contextlib.suppress(OSError):
            if mode == "hang":
                time.sleep(5)
                return
            status, body = (503, b"busy " + TOKEN.encode()) if mode == "5xx" else (200, b"")
            if mode == "huge":
                self.send_response(200)
                self.send_header("Content-Length", str(64 << 20))
                self.end_headers()
                chunk = b"x" * (1 << 20)
                for _ in range(64):
                    self.wfile.write(chunk)
                return
            body = body or b'{"synced": 1}'
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class EtlServer(ThreadingHTTPServer):
    daemon_threads = True
    mode = "ok"
    requests = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up on a capped body is expected


@pytest.fixture
def etl_server() -> Iterator[EtlServer]:
    server = EtlServer(("127.0.0.1", 0), _Etl)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def run_etl(host: sandbox.Host, config: Path, state: Path) -> tuple[int, str, str, int]:
    """``reconciler job etl`` as a process: exit code, stdout, stderr, peak RSS in KiB."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env["RECONCILER_JOURNAL_SOCKET"] = str(host.journal_socket)
    argv = [CLI, "job", "etl", "--config", str(config), "--state-dir", str(state)]
    out, err = config.with_suffix(".out"), config.with_suffix(".err")
    rss = config.with_suffix(".rss")
    with out.open("w") as fo, err.open("w") as fe:
        # Measured by a small parent: a child spawned by this process (vfork) counts this
        # process's resident set in its own peak, which is a pytest-xdist worker's ~100 MB.
        proc = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, str(rss), *argv],
            env=env, stdout=fo, stderr=fe, timeout=120, check=False,
        )  # fmt: skip
    return proc.returncode, out.read_text(), err.read_text(), int(rss.read_text())


PEAK_RSS = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("fault", ["down", "5xx", "slow", "huge"])
def test_etl_endpoint_fault(
    host: sandbox.Host,
    etl_server: EtlServer,
    closed_port: int,
    tmp_path: Path,
    fault_report: Report,
    fault: str,
) -> None:
    token_file = tmp_path / "etl-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    state = tmp_path / "state"
    port = etl_server.server_address[1]
    url = f"http://127.0.0.1:{closed_port if fault == 'down' else port}/api/sync/reading"
    config = tmp_path / "config.toml"
    settings = (
        f'[etl]\nurl = "{url}"\ntoken_file = "{token_file}"\nretries = 1\nbackoff_sec = 0.05\n'
        "connect_timeout_sec = 1\nread_timeout_sec = 1\n"
    )
    config.write_text(settings)
    etl_server.mode = {"down": "ok", "5xx": "5xx", "slow": "hang", "huge": "huge"}[fault]
    since = time.time()
    started = time.monotonic()
    code, out, err, rss_kib = run_etl(host, config, state)
    seconds = time.monotonic() - started
    faulted = time.monotonic()
    lines = err.strip().splitlines()
    if fault == "huge":
        # the 64 MiB body is read up to max_body_bytes (64 KiB), then the connection dropped
        handled = code == 0 and "HTTP 200" in out and rss_kib < 100 * 1024
    else:
        handled = code == 1 and len(lines) == 1 and "cannot trigger ETL sync" in lines[0]
    status = json.loads((state / "etl-last.json").read_text())
    mode = (state / "etl-last.json").stat().st_mode & 0o777
    etl_server.mode = "ok"
    config.write_text(settings.replace(url, f"http://127.0.0.1:{port}/api/sync/reading"))
    code2, out2, err2, _ = run_etl(host, config, state)
    converge = time.monotonic() - faulted
    logged = journal_since(host, since)
    leaked = [
        where
        for where, text in {
            "stdout": out + out2,
            "stderr": err + err2,
            "journal": logged,
            "etl-last.json": json.dumps(status),
        }.items()
        if TOKEN in text
    ]
    fault_report(
        f"ETL endpoint {fault}",
        (lines[0] if lines else out.strip().splitlines()[0])
        + f" ({seconds:.1f}s, peak RSS {rss_kib // 1024} MiB)",
        converge,
        code2 == 0 and not leaked,
    )
    assert handled, (code, out, err)
    assert seconds < 10
    assert mode == 0o600
    assert code2 == 0, err2
    assert not leaked, f"the ETL token appeared in {leaked}"
    assert "job.etl" in logged


# ---- the push webhook -----------------------------------------------------------------------


def test_webhook_flood_forgery_replay_oversize(
    host: sandbox.Host, tmp_path: Path, sync_unit: SyncUnit, fault_report: Report
) -> None:
    """The matrix's one pass over the webhook (tests/integration/test_webhook.py has each in
    depth): a forged and an oversized request start nothing, a replay is refused, a flood of
    signed pushes during a running sync queues one follow-up, a flood of forged ones is
    rate-limited."""
    sync_unit.wait_idle()
    runs = len(sync_unit.runs())
    since = time.time()
    server = Server(host, tmp_path)
    try:
        body = push_body()
        forged = post(server.port, body, signed(body, secret="guess"))[0]
        big, big_sec = oversized(server.port, 4 * 1024 * 1024)
        headers = signed(body)
        first = post(server.port, body, headers)
        replay = post(server.port, body, headers)[0]
        flood_at = time.monotonic()
        bodies = [push_body() for _ in range(30)]
        with ThreadPoolExecutor(max_workers=10) as pool:
            answers = list(pool.map(lambda b: post(server.port, b, signed(b)), bodies))
        forged_flood = [post(server.port, body, signed(body, secret="x"))[0] for _ in range(40)]
        deadline = time.monotonic() + 20
        while server.health()["sync_pending"] or sync_unit.state("ActiveState") != "inactive":
            assert time.monotonic() < deadline, "the queued follow-up never ran"
            time.sleep(0.1)
        converge = time.monotonic() - flood_at
        health = server.health()
    finally:
        assert server.stop() == 0
    started = len(sync_unit.runs()) - runs
    logged = journal_since(host, since) + (tmp_path / "stderr").read_text()
    secret = (tmp_path / "secret").read_text().strip()
    fault_report(
        "webhook flood, bad signature, replay, oversized body",
        f"401 forged, 413 oversized ({big_sec:.2f}s, body unread), 409 replay, "
        f"{len(bodies)} pushes -> {started} syncs, forged flood -> 429",
        converge,
        started == 2 and secret not in logged,
    )
    assert forged == 401
    assert big.startswith(b"HTTP/1.0 413 ") and big_sec < 1.0
    assert first[0] == 202 and first[1]["status"] == "sync started"
    assert replay == 409
    assert {status for status, _ in answers} == {202}
    assert started == 2, "the running sync and one queued follow-up, never more"
    assert health["syncs_started"] == 2
    assert 429 in forged_flood and set(forged_flood) <= {401, 429}
    assert secret not in logged
    assert (tmp_path / "state" / "webhook-deliveries.json").stat().st_mode & 0o777 == 0o600
