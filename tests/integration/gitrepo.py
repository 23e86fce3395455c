"""Real git for tests: a config repository (bare + work clone), git daemon, raw TCP servers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from reconciler.devtools import sandbox

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Operator",
    "GIT_AUTHOR_EMAIL": "ops@example.invalid",
    "GIT_COMMITTER_NAME": "Test Operator",
    "GIT_COMMITTER_EMAIL": "ops@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
}


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


class ConfigRepo:
    """``remote`` is a bare repository (the URL a host syncs from); ``work`` pushes to it."""

    def __init__(self, base: Path, branch: str = "main") -> None:
        self.remote = base / "remote.git"
        self.work = base / "work"
        self.branch = branch
        self.remote.mkdir(parents=True)
        git(self.remote, "init", "-q", "--bare", f"--initial-branch={branch}")
        git(base, "clone", "-q", str(self.remote), str(self.work))
        git(self.work, "checkout", "-q", "-B", branch)

    @property
    def url(self) -> str:
        return str(self.remote)

    def write(self, files: Mapping[str, str | bytes]) -> None:
        for rel, text in files.items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(text, bytes):
                path.write_bytes(text)
            else:
                path.write_text(text)

    def remove(self, rel: str) -> None:
        git(self.work, "rm", "-q", rel)

    def commit(
        self, files: Mapping[str, str | bytes] | None = None, message: str = "change"
    ) -> str:
        if files:
            self.write(files)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "--allow-empty", "-m", message)
        git(self.work, "push", "-q", "origin", f"HEAD:{self.branch}")
        return git(self.work, "rev-parse", "HEAD")


@contextlib.contextmanager
def git_daemon(
    base: Path, host: sandbox.Host | None = None, *, push: bool = False
) -> Iterator[int]:
    """``git daemon`` serving the repositories under ``base`` on 127.0.0.1; yields its port.

    With ``host``, the daemon listens on that disposable host's own network (for a sync
    running inside it) while it reads ``base`` from this machine's files.
    ``git daemon`` runs ``git-daemon`` as a child: the whole process group is killed, or
    the daemon would outlive the test. ``push``: it accepts pushes too (receive-pack).
    """
    network = host.network if host is not None else contextlib.nullcontext
    with network(), socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    argv = ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}"]
    argv += ["--listen=127.0.0.1", f"--port={port}", str(base)]
    if push:
        argv.insert(2, "--enable=receive-pack")
    proc = subprocess.Popen(
        host.nsenter_net(argv) if host is not None else argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with network():
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "git daemon did not start"
                time.sleep(0.05)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def tcp_server(answer: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server on 127.0.0.1 in a thread; ``answer`` handles each connection."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.05)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            conns.append(conn)
            with contextlib.suppress(OSError):
                answer(conn)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        srv.close()
        for conn in conns:
            conn.close()
