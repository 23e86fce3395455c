"""``reconciler demo``: the whole loop on a disposable systemd host (talks to it and git).

Every step runs the real CLI as an operator would and prints its real output: first sync,
status, a pushed change (one unit restarted), a pushed crash-looping service (found by the
health gate and the monitor, rolled back), history. The host and the temp repos are
removed at the end, also on Ctrl-C, unless ``--keep``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from reconciler import package_data
from reconciler.devtools import sandbox
from reconciler.errors import ReconcilerError
from reconciler.host.journal import message_id

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Demo Operator",
    "GIT_AUTHOR_EMAIL": "ops@example.invalid",
    "GIT_COMMITTER_NAME": "Demo Operator",
    "GIT_COMMITTER_EMAIL": "ops@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}
FLAKY_TEMPLATE = """\
[Unit]
Description=A service that crashes a moment after it starts

[Service]
Type=simple
ExecStart=/bin/sh -c 'sleep 0.5; echo "fatal: cannot open {{ database }}" >&2; exit 3'
Restart=always
RestartSec=300ms

[Install]
WantedBy=multi-user.target
"""
FLAKY_SERVICE = """
[services.flaky]
template = "flaky.service.j2"
hosts = ["sandbox"]
vars = { database = "/var/lib/flaky/db.sqlite" }

[services.flaky.health]
timeout_sec = 6
"""


class Demo:
    def __init__(self, out: Callable[[str], None] = print, *, keep: bool = False) -> None:
        self.out = out
        self.keep = keep
        self.work = Path(tempfile.mkdtemp(prefix="reconciler-demo-"))
        self.host: sandbox.Host | None = None

    # ---- narration -------------------------------------------------------------------

    def step(self, title: str) -> None:
        self.out(f"\n==> {title}")

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the reconciler CLI against the demo host and print what it printed."""
        assert self.host is not None
        shown = " ".join(args)
        self.out(f"$ reconciler {shown}")
        # -P: the directory it was started in is not put first on the path (a user's trial
        # ran it in the checkout: every step ran the checkout's code, not the installed one)
        argv = [sys.executable, "-P", "-m", "reconciler", *args]
        env = {
            **os.environ,
            "RECONCILER_CONFIG": str(self.work / "config.toml"),
            "RECONCILER_JOURNAL_SOCKET": str(self.host.journal_socket),
        }
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, check=False, timeout=120
        )
        for line in (proc.stdout + proc.stderr).rstrip().splitlines():
            self.out(f"  {line}")
        if check and proc.returncode != 0:
            raise ReconcilerError(f"demo step 'reconciler {shown}' failed (exit {proc.returncode})")
        return proc

    def cli_line(self, command: str) -> str:
        """The shell line that runs the CLI against the kept host as ``run`` does: its config,
        and its journal socket (without it the events go to stderr only, and
        ``journalctl MESSAGE_ID=...`` on the host finds nothing)."""
        assert self.host is not None
        cli = Path(sys.executable).parent / "reconciler"
        return (
            f"RECONCILER_CONFIG={self.work / 'config.toml'} "
            f"RECONCILER_JOURNAL_SOCKET={self.host.journal_socket} "
            f"{cli if cli.exists() else 'reconciler'} {command}"
        )

    def journal(self, event: str) -> None:
        """What an operator on the host would run: journalctl MESSAGE_ID=<the event's id>."""
        assert self.host is not None
        match = f"MESSAGE_ID={message_id(event)}"
        self.out(f"$ journalctl -o cat {match}   # on the host")
        self.host.journal_sync()
        proc = self.host.run(["journalctl", "--no-pager", "-o", "cat", match], check=False)
        for line in proc.stdout.rstrip().splitlines():
            self.out(f"  {line}")

    def git(self, *args: str) -> str:
        proc = subprocess.run(
            ["git", *args],
            cwd=self.work / "clone",
            capture_output=True,
            text=True,
            env={**os.environ, **GIT_ENV},
            check=True,
        )
        return proc.stdout.strip()

    def push(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        self.git("push", "-q", "origin", "HEAD:main")
        rev = self.git("rev-parse", "--short=12", "HEAD")
        self.out(f"$ git commit -m {message!r} && git push   # {rev}")
        return rev

    # ---- the story -------------------------------------------------------------------

    def boot(self) -> None:
        self.step(
            "boot a disposable systemd host (namespaces + overlay; nothing touches this machine)"
        )
        started = time.monotonic()
        self.host = sandbox.boot(hostname="sandbox", kept=self.keep)
        self.out(
            f"  systemd {self.host.systemctl('--version').stdout.split()[1]} up as PID "
            f"{self.host.pid} in {time.monotonic() - started:.1f}s; bus "
            f"{self.host.bus_address}"
        )

    def make_repo(self) -> None:
        assert self.host is not None
        self.step("make a config repository from the project's inventory/ and templates/")
        bare, clone = self.work / "config.git", self.work / "clone"
        subprocess.run(
            ["git", "init", "-q", "--bare", "--initial-branch=main", str(bare)],
            check=True,
            env={**os.environ, **GIT_ENV},
        )
        subprocess.run(
            ["git", "clone", "-q", str(bare), str(clone)],
            check=True,
            capture_output=True,
            env={**os.environ, **GIT_ENV},
        )
        shutil.copytree(package_data.find("inventory"), clone / "inventory")
        shutil.copytree(package_data.find("templates"), clone / "templates")
        # The examples' ports (web on 8080) are the host's own: it has a network of its own.
        self.git("checkout", "-q", "-B", "main")
        self.push(
            "example host: web, readings-etl, system-metrics, srv-backup, echo (socket), "
            "inbox (path)"
        )
        state = self.work / "state"
        config = self.work / "config.toml"
        config.touch(mode=0o600)  # as a host's config: it may name credentials
        config.write_text(
            f'repo = "{bare}"\nref = "main"\nhost = "sandbox"\n'
            f'state_dir = "{state}"\nunit_dir = "{self.host.unit_dir}"\n'
            f'run_dir = "{self.work / "run"}"\nbus = "{self.host.bus_address}"\n'
            'files_roots = ["/etc/greeter"]\n'  # the example's config file (this host only)
            f"\n[monitor]\nrestart_threshold = 3\nrestart_window_sec = 60\n"
            # bundles read the host's journal, not this machine's (the CLI runs out here)
            f'\n[diagnostics]\njournal_command = ["journalctl", "--root={self.host.root}"]\n'
        )
        self.out(f"  bare repo {bare}; host config {self.work / 'config.toml'}")

    def story(self) -> None:
        self.boot()
        self.make_repo()
        self.step("first sync: units created, enabled and started")
        self.run("sync")
        self.step("status: desired vs live")
        self.run("status")
        self.step("push a change to one variable: exactly one unit restarts")
        services = self.work / "clone" / "inventory" / "services.toml"
        services.write_text(
            services.read_text().replace(
                'description = "Static web server (python3 http.server)"',
                'description = "Static web server, v2"',
            )
        )
        self.push("web: new description")
        self.run("plan")
        self.run("sync")
        self.step("push a config-file and a drop-in change: the file's service is reloaded")
        services.write_text(
            services.read_text()
            .replace('vars = { greeting = "hello" }', 'vars = { greeting = "hello again" }')
            .replace("vars = { nice = 19 }", "vars = { nice = 15 }")
        )
        self.push("greeter: new greeting; tmpfiles-clean: nice 15")
        self.run("plan")
        self.run("sync")
        self.step("push a crash-looping service: the health gate fails and rolls back")
        (self.work / "clone" / "templates" / "flaky.service.j2").write_text(FLAKY_TEMPLATE)
        with services.open("a") as fh:
            fh.write(FLAKY_SERVICE)
        self.push("add flaky, a service that crashes")
        self.run("sync", check=False)
        self.step("the crash loop was found before the rollback: journald has it by MESSAGE_ID")
        self.journal("crash_loop")
        self.run("monitor")
        self.step("history: what was applied when")
        self.run("history")

    def close(self) -> None:
        if self.host is None:
            shutil.rmtree(self.work, ignore_errors=True)
            return
        if self.keep:
            self.host.keep(remove=[self.work])
            enter = " ".join(self.host.nsenter(["bash"]))
            self.out(f"\nhost {self.host.name} kept (systemd PID {self.host.pid})")
            self.out(f"  enter it:       {enter}")
            self.out(f"  the CLI on it:  {self.cli_line('status')}")
            cli = Path(sys.executable).parent / "reconciler"  # a venv's is not on PATH
            stop = f"{cli if cli.exists() else 'reconciler'} demo --stop {self.host.name}"
            self.out(f"  stop it:        {stop}")
            self.out("                  (powers it off, removes its work dir, cgroups and repos)")
            return
        self.host.stop()
        shutil.rmtree(self.work, ignore_errors=True)
        self.out("\nhost stopped and removed")


def stop(name: str) -> int:
    """``reconciler demo --stop NAME``: what ``--keep`` left running, gone for good."""
    sandbox.check_supported()
    sandbox.stop_kept(name)
    print(f"host {name} stopped and removed")
    return 0


def main(argv: Sequence[str] = (), *, keep: bool = False) -> int:
    del argv
    sandbox.check_supported()
    for name in ("inventory", "templates"):  # before a host boots: one line if missing
        package_data.find(name)
    started = time.monotonic()
    demo = Demo(keep=keep)
    try:
        demo.story()
    finally:
        demo.close()
    print(f"\ndemo finished in {time.monotonic() - started:.0f}s")
    return 0
