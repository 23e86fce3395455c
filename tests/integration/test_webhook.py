"""The push webhook for real: HTTP on 127.0.0.1, systemd in the disposable host, its journal.

A fake but real ``gitops-sync.service`` (oneshot: appends its InvocationID to a file, sleeps
2 s) stands in for the sync. The webhook runs standalone in a subprocess (``--bus`` at the
host's bus, its journal entries sent to the host's journal), and socket-activated inside
the host with the hardening of ``units/reconciler-webhook.service``.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.devtools import sandbox
from reconciler.host import journal
from tests.conftest import PYTHON_INSIDE, REPO, SRC_INSIDE

pytestmark = pytest.mark.host

SYNC = "gitops-sync.service"
SECRET = "webhook-test-secret-" + uuid.uuid4().hex
ACCEPTED = journal.message_id("webhook.accepted")
REJECTED = journal.message_id("webhook.rejected")
ANY_ERR = "delivery already seen"
UNDER_HOME = any(Path(sys.executable).resolve().is_relative_to(d) for d in ("/root", "/home"))
CONFIG = 'ref = "main"\n\n[webhook]\ndebounce_sec = 1\n'


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@dataclass
class SyncUnit:
    host: sandbox.Host
    log: Path  # as seen from outside

    def runs(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    def state(self, prop: str) -> str:
        return self.host.systemctl("show", "-p", prop, "--value", SYNC).stdout.strip()

    def wait_idle(self) -> None:
        wait_for(lambda: self.state("ActiveState") in ("inactive", "failed"), 20, "sync idle")


@pytest.fixture(scope="module")
def sync_unit(host: sandbox.Host) -> Iterator[SyncUnit]:
    """gitops-sync.service in the host (any file there before is put back afterwards)."""
    path = host.unit_dir / SYNC
    before = path.read_text() if path.exists() else None
    inside = f"/run/webhook-test-{uuid.uuid4().hex[:8]}"
    (host.root / inside.lstrip("/")).mkdir()
    path.write_text(
        "[Unit]\nDescription=fake gitops-sync for the webhook tests\n\n[Service]\n"
        f"Type=oneshot\nExecStart=/bin/sh -c 'echo $$INVOCATION_ID >> {inside}/runs.log; sleep 2'\n"
    )
    host.systemctl("daemon-reload")
    try:
        yield SyncUnit(host, host.root / inside.lstrip("/") / "runs.log")
    finally:
        host.systemctl("stop", SYNC, check=False)
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(before)
        host.systemctl("daemon-reload", check=False)
        host.systemctl("reset-failed", SYNC, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def push_body(ref: str = "refs/heads/main") -> bytes:
    return json.dumps({"ref": ref, "after": uuid.uuid4().hex, "pusher": {"name": "t"}}).encode()


def signed(body: bytes, *, delivery: str | None = None, secret: str = SECRET) -> dict[str, str]:
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": f"sha256={sig}",
        "Content-Type": "application/json",
    }


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    return request(port, "POST", "/hooks/push", body, headers)


class Server:
    """``reconciler webhook`` standalone in a subprocess (stopped by its PID)."""

    def __init__(self, host: sandbox.Host, workdir: Path, port: int | None = None) -> None:
        self.host = host
        self.workdir = workdir
        self.port = port or free_port()
        secret = workdir / "secret"
        if not secret.exists():
            secret.write_text(SECRET + "\n")
            secret.chmod(0o600)
            (workdir / "config.toml").write_text(CONFIG)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
        env["RECONCILER_JOURNAL_SOCKET"] = str(host.journal_socket)
        self.stderr = (workdir / "stderr").open("ab")
        argv = [sys.executable, "-m", "reconciler", "webhook"]
        argv += ["--listen", f"127.0.0.1:{self.port}", "--secret-file", str(secret)]
        argv += ["--bus", host.bus_address, "--config", str(workdir / "config.toml")]
        argv += ["--state-dir", str(workdir / "state")]
        self.proc = subprocess.Popen(argv, env=env, cwd=REPO, stderr=self.stderr)
        wait_for(self._up, 15, "the webhook to listen")

    def _up(self) -> bool:
        assert self.proc.poll() is None, (self.workdir / "stderr").read_text()
        try:
            return request(self.port, "GET", "/healthz")[0] == 200
        except OSError:
            return False

    def health(self) -> dict[str, Any]:
        return request(self.port, "GET", "/healthz")[1]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.stderr.close()


@pytest.fixture
def server(host: sandbox.Host, tmp_path: Path) -> Iterator[Server]:
    srv = Server(host, tmp_path)
    try:
        yield srv
    finally:
        assert srv.stop() == 0  # SIGTERM is an orderly stop


def entries(host: sandbox.Host, message_id: str, deliveries: set[str]) -> list[dict[str, Any]]:
    host.journal_sync()
    found = host.journal(f"MESSAGE_ID={message_id}")
    return [e for e in found if e.get("RECONCILER_DELIVERY") in deliveries]


def test_systemd_merges_a_start_into_the_running_oneshot(
    host: sandbox.Host, sync_unit: SyncUnit
) -> None:
    """Why the webhook keeps its own follow-up slot: systemd queues none.

    While a oneshot's start job runs, StartUnit (mode "replace") is merged into that job:
    the same job path comes back and the unit runs once. A push arriving mid-sync would
    be lost without the webhook's pending follow-up.
    """
    from reconciler.systemd.connection import Connection
    from reconciler.systemd.wire import MANAGER, MANAGER_PATH

    sync_unit.wait_idle()
    runs = len(sync_unit.runs())
    conn = Connection(host.bus_address)
    try:
        jobs = []
        for _ in range(3):
            (job,) = conn.call("start", MANAGER_PATH, MANAGER, "StartUnit", "ss", (SYNC, "replace"))
            jobs.append(job)
            time.sleep(0.3)
    finally:
        conn.close()
    assert len(set(jobs)) == 1
    sync_unit.wait_idle()
    time.sleep(0.5)
    assert len(sync_unit.runs()) == runs + 1


def test_signed_push_starts_the_sync(server: Server, sync_unit: SyncUnit) -> None:
    sync_unit.wait_idle()
    runs, invocation = len(sync_unit.runs()), sync_unit.state("InvocationID")
    body = push_body()
    headers = signed(body)
    started = time.monotonic()
    status, answer = post(server.port, body, headers)
    latency = time.monotonic() - started
    assert (status, answer["status"]) == (202, "sync started"), answer
    assert latency < 1.0
    wait_for(lambda: len(sync_unit.runs()) == runs + 1, 10, "gitops-sync to run")
    assert sync_unit.state("InvocationID") not in ("", invocation)
    assert sync_unit.runs()[-1] == sync_unit.state("InvocationID")
    health = server.health()
    assert health["status"] == "ok" and health["syncs_started"] == 1
    assert health["last_delivery"] == headers["X-GitHub-Delivery"]
    assert health["last_accepted_at"] is not None and not health["socket_activated"]
    [entry] = entries(server.host, ACCEPTED, {headers["X-GitHub-Delivery"]})
    assert entry["RECONCILER_RESULT"] == "sync started" and entry["UNIT"] == SYNC
    sync_unit.wait_idle()


def test_the_readmes_plain_hmac_recipe_starts_a_sync(server: Server, sync_unit: SyncUnit) -> None:
    """The README's Push webhook recipe (openssl + curl), as written, against a real webhook;
    the sync it starts is marked as the webhook's for the history."""
    section = (REPO / "README.md").read_text().split("\n## Push webhook\n", 1)[1]
    [recipe] = re.findall(r"```sh\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    assert "sudo cat /etc/reconciler/webhook-secret" in recipe and ":9420/hooks/push" in recipe
    recipe = recipe.replace(
        "sudo cat /etc/reconciler/webhook-secret", f"cat {server.workdir / 'secret'}"
    ).replace(":9420/", f":{server.port}/")
    sync_unit.wait_idle()
    runs = len(sync_unit.runs())
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", recipe],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "sync started", proc.stdout
    wait_for(lambda: len(sync_unit.runs()) == runs + 1, 10, "gitops-sync to run")
    assert (server.workdir / "state" / "sync-trigger").read_text() == "webhook\n"
    sync_unit.wait_idle()


def oversized(port: int, length: int) -> tuple[bytes, float]:
    """Headers announcing ``length`` bytes and no body: the answer must not wait for it."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            f"POST /hooks/push HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
            "X-GitHub-Event: push\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data, time.monotonic() - started


def test_in_a_rollout_a_wave_refs_push_starts_the_sync(
    host: sandbox.Host, sync_unit: SyncUnit, tmp_path: Path
) -> None:
    """A first operator's report: with ``rollout = true`` the webhook answered the
    promoter's wave ref moves "ignored: other branch" and started a sync for pushes to
    ``main``, a branch the host does not follow."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    (tmp_path / "config.toml").write_text("rollout = true\n" + CONFIG)
    srv = Server(host, tmp_path)
    try:
        sync_unit.wait_idle()
        runs = len(sync_unit.runs())
        main, wave = push_body(), push_body("refs/heads/rollout/canary")
        assert post(srv.port, main, signed(main))[1]["status"] == "ignored: other branch"
        status, answer = post(srv.port, wave, signed(wave))
        assert (status, answer["status"]) == (202, "sync started"), answer
        wait_for(lambda: len(sync_unit.runs()) == runs + 1, 10, "gitops-sync to run")
        sync_unit.wait_idle()
    finally:
        assert srv.stop() == 0


def test_refusals_start_nothing_and_log_no_secret(server: Server, sync_unit: SyncUnit) -> None:
    sync_unit.wait_idle()
    runs = len(sync_unit.runs())
    body = push_body()
    wrong = signed(body, secret="not-the-secret")
    malformed = {**signed(body), "X-Hub-Signature-256": "sha256=" + uuid.uuid4().hex}
    unsigned = {k: v for k, v in signed(body).items() if k != "X-Hub-Signature-256"}
    other_branch = push_body("refs/heads/feature")
    not_json = b"{not json"
    ping = b'{"zen": "Keep it logically awesome."}'
    cases = [
        (body, wrong, 401),
        (body, malformed, 401),
        (body, unsigned, 401),
        (body, {**signed(body, secret="x"), "Authorization": f"Bearer {SECRET}"}, 401),
        (other_branch, signed(other_branch), 202),
        (not_json, signed(not_json), 400),
        (ping, {**signed(ping), "X-GitHub-Event": "ping"}, 200),
    ]
    got = [post(server.port, b, h) for b, h, _ in cases]
    assert [status for status, _ in got] == [c[2] for c in cases], got
    assert got[4][1]["status"] == "ignored: other branch"
    assert got[6][1]["status"] == "pong"
    assert request(server.port, "GET", "/hooks/push")[0] == 405
    assert request(server.port, "POST", "/nowhere", b"{}", signed(b"{}"))[0] == 404
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n")
        garbage = b""
        while chunk := s.recv(65536):
            garbage += chunk
    assert garbage.startswith(b"HTTP/1.0 431 ") and b'"request headers too large"' in garbage
    answer, seconds = oversized(server.port, 2 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.0 413 ") and seconds < 1.0, answer
    time.sleep(1.5)  # longer than the debounce: a follow-up would have gone out by now
    assert len(sync_unit.runs()) == runs and sync_unit.state("ActiveState") == "inactive"
    assert server.health()["syncs_started"] == 0

    [entry] = entries(server.host, REJECTED, {wrong["X-GitHub-Delivery"]})
    assert (entry["RECONCILER_STATUS"], entry["RECONCILER_REASON"]) == ("401", "bad-signature")
    assert entry["PRIORITY"] == "4" and entry["RECONCILER_REMOTE"] == "127.0.0.1"
    logged = json.dumps(server.host.journal("SYSLOG_IDENTIFIER=reconciler"))
    logged += (server.workdir / "stderr").read_text()
    for header in (wrong, malformed, signed(body)):
        assert header["X-Hub-Signature-256"][7:] not in logged
    assert SECRET not in logged and "not-the-secret" not in logged


def test_replayed_delivery_is_refused_also_after_a_restart(
    host: sandbox.Host, tmp_path: Path, sync_unit: SyncUnit
) -> None:
    sync_unit.wait_idle()
    srv = Server(host, tmp_path)
    body = push_body()
    headers = signed(body)
    try:
        assert post(srv.port, body, headers)[0] == 202
        assert post(srv.port, body, headers) == (409, {"status": "rejected", "error": ANY_ERR})
        # the delivery id is not signed: a new id on the same signed body is a replay too
        assert post(srv.port, body, signed(body))[0] == 409
        # a new body with the replayed id as well
        other = push_body()
        delivery = headers["X-GitHub-Delivery"]
        assert post(srv.port, other, signed(other, delivery=delivery))[0] == 409
    finally:
        assert srv.stop() == 0
    replay_file = tmp_path / "state" / "webhook-deliveries.json"
    assert replay_file.stat().st_mode & 0o777 == 0o600
    again = Server(host, tmp_path, port=srv.port)
    try:
        assert post(again.port, body, headers)[0] == 409
        assert again.health()["replay_entries"] == 1
    finally:
        assert again.stop() == 0
    sync_unit.wait_idle()


def test_flood_of_signed_pushes_runs_the_sync_at_most_twice(
    server: Server, sync_unit: SyncUnit
) -> None:
    sync_unit.wait_idle()
    runs = len(sync_unit.runs())
    bodies = [push_body() for _ in range(50)]
    requests = [(b, signed(b)) for b in bodies]
    with ThreadPoolExecutor(max_workers=10) as pool:
        got = list(pool.map(lambda r: post(server.port, *r), requests))
    statuses = sorted(answer["status"] for _, answer in got)
    assert {status for status, _ in got} == {202}
    assert statuses == ["sync already queued"] * 49 + ["sync started"]
    # the running sync (2 s) plus the one follow-up it queued, then nothing more
    wait_for(lambda: len(sync_unit.runs()) >= runs + 2, 15, "the queued follow-up")
    sync_unit.wait_idle()
    time.sleep(1.5)
    assert len(sync_unit.runs()) == runs + 2
    health = server.health()
    assert (health["accepted"], health["syncs_started"]) == (50, 2)
    assert not health["sync_pending"]


def test_flood_of_bad_requests_is_rate_limited(server: Server, sync_unit: SyncUnit) -> None:
    body = push_body()
    headers = signed(body, secret="wrong")
    since_us = int(time.time() * 1e6)
    started = time.monotonic()
    statuses = [post(server.port, body, headers)[0] for _ in range(200)]
    rate = len(statuses) / (time.monotonic() - started)
    assert statuses[:20] == [401] * 20  # the burst; then 429 (a token back per second)
    assert statuses.count(429) >= 175 and set(statuses) == {401, 429}
    health = server.health()
    assert health["rate_limited"] == statuses.count(429) and health["syncs_started"] == 0
    assert rate > 100, f"{rate:.0f} refused requests per second"
    server.host.journal_sync()
    limited = [
        e
        for e in server.host.journal(f"MESSAGE_ID={REJECTED}", "RECONCILER_REASON=rate-limited")
        if int(e["__REALTIME_TIMESTAMP"]) >= since_us
    ]
    assert len(limited) == 1  # logged once, not 180 times


def test_no_secret_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", "webhook", "--config", str(tmp_path / "config.toml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no secret configured" in proc.stderr


@pytest.mark.parametrize("kind", ["udp", "listening"])
def test_socket_activation_needs_a_listening_stream_socket(tmp_path: Path, kind: str) -> None:
    (tmp_path / "secret").write_text(SECRET)
    (tmp_path / "config.toml").write_text(CONFIG)
    if kind == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
    else:
        sock = socket.create_server(("127.0.0.1", 0))
    args = ["webhook", "--secret-file", str(tmp_path / "secret")]
    args += ["--config", str(tmp_path / "config.toml"), "--state-dir", str(tmp_path / "state")]
    # LISTEN_PID must be the pid of the process that serves: set it in the shell that execs
    script = f"exec 3<&{sock.fileno()}; LISTEN_PID=$$ LISTEN_FDS=1 exec " + shlex.join(
        [sys.executable, "-m", "reconciler", *args]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    env["RECONCILER_JOURNAL_SOCKET"] = str(tmp_path / "no-journal")
    with sock:
        proc = subprocess.Popen(
            ["/bin/bash", "-c", script], pass_fds=[sock.fileno()], env=env, cwd=REPO,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            if kind == "udp":
                assert proc.wait(timeout=30) == 2
                assert proc.stderr is not None
                assert "not a listening stream socket" in proc.stderr.read()
                return
            port = sock.getsockname()[1]
            wait_for(lambda: _healthy(port), 15, "the socket-activated webhook")
            assert request(port, "GET", "/healthz")[1]["socket_activated"] is True
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                assert proc.wait(timeout=10) in (0, 2)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                if proc.stderr is not None:
                    proc.stderr.close()


def _healthy(port: int) -> bool:
    try:
        return request(port, "GET", "/healthz")[0] == 200
    except OSError:
        return False


def hardened_units(tag: str, port: int, etc: str) -> tuple[str, str]:
    """units/reconciler-webhook.{socket,service} as installed, pointed at this test's files."""
    socket_text = (REPO / "units" / "reconciler-webhook.socket").read_text()
    socket_text = socket_text.replace(
        "ListenStream=127.0.0.1:9420", f"ListenStream=127.0.0.1:{port}"
    )
    assert f"ListenStream=127.0.0.1:{port}" in socket_text
    service = (REPO / "units" / "reconciler-webhook.service").read_text()
    command = shlex.join(
        [PYTHON_INSIDE, "-m", "reconciler", "webhook", "--secret-file", f"{etc}/secret"]
        + ["--config", f"{etc}/config.toml", "--state-dir", f"/var/lib/reconciler/test-{tag}"]
    )
    lines = []
    for line in service.splitlines():
        if line.startswith("ExecStart="):
            line = f"ExecStart={command}\nEnvironment=PYTHONPATH={SRC_INSIDE}"
        elif line.startswith("LoadCredential="):
            continue  # the disposable host hands services an empty credentials dir
        elif line == "ProtectHome=yes" and UNDER_HOME:
            line = "ProtectHome=read-only"  # the venv's interpreter lives under /root (pyenv)
        lines.append(line.replace("reconciler-webhook.socket", f"webhook-test-{tag}.socket"))
    return socket_text, "\n".join(lines) + "\n"


def test_socket_activated_inside_the_host(host: sandbox.Host, sync_unit: SyncUnit) -> None:
    tag = uuid.uuid4().hex[:8]
    with host.network():  # the host has a network of its own: ports and requests go there
        port = free_port()
    sock_name, svc_name = f"webhook-test-{tag}.socket", f"webhook-test-{tag}.service"
    etc = f"/etc/reconciler-test-{tag}"
    (host.root / etc.lstrip("/")).mkdir()
    (host.root / etc.lstrip("/") / "secret").write_text(SECRET + "\n")
    (host.root / etc.lstrip("/") / "secret").chmod(0o600)
    (host.root / etc.lstrip("/") / "config.toml").write_text(CONFIG)
    socket_text, service_text = hardened_units(tag, port, etc)
    socket_text = socket_text.replace(
        "ConditionPathExists=/etc/reconciler/webhook-secret", f"ConditionPathExists={etc}/secret"
    )
    (host.unit_dir / sock_name).write_text(socket_text)
    (host.unit_dir / svc_name).write_text(service_text)
    host.systemctl("daemon-reload")
    try:
        with host.network():
            host.systemctl("start", sock_name)
            assert host.systemctl("is-active", svc_name, check=False).stdout.strip() == "inactive"
            sync_unit.wait_idle()
            runs = len(sync_unit.runs())
            bad = push_body()
            assert post(port, bad, signed(bad, secret="nope"))[0] == 401
            show = host.systemctl("show", "-p", "TriggeredBy", "-p", "ActiveState", svc_name).stdout
            assert f"TriggeredBy={sock_name}" in show and "ActiveState=active" in show
            time.sleep(1.5)
            assert len(sync_unit.runs()) == runs  # refused: nothing started
            body = push_body()
            headers = signed(body)
            status, answer = post(port, body, headers)
            assert (status, answer["status"]) == (202, "sync started"), answer
            wait_for(lambda: len(sync_unit.runs()) == runs + 1, 10, "gitops-sync to run")
            assert request(port, "GET", "/healthz")[1]["socket_activated"] is True
            host.journal_sync()
            mine = host.journal(f"_SYSTEMD_UNIT={svc_name}", f"MESSAGE_ID={ACCEPTED}")
            assert [e["RECONCILER_DELIVERY"] for e in mine] == [headers["X-GitHub-Delivery"]]
            refused = host.journal(f"_SYSTEMD_UNIT={svc_name}", f"MESSAGE_ID={REJECTED}")
            assert [e["RECONCILER_REASON"] for e in refused] == ["bad-signature"]
            sync_unit.wait_idle()
    finally:
        host.systemctl("stop", svc_name, sock_name, check=False)
        for name in (svc_name, sock_name):
            (host.unit_dir / name).unlink(missing_ok=True)
        host.systemctl("daemon-reload", check=False)
        host.systemctl("reset-failed", svc_name, sock_name, check=False)
