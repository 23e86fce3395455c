"""`reconciler install` / `uninstall` inside the disposable systemd host, run as an operator would.

The CLI runs inside the host from the bound checkout and venv (the interpreter is pyenv's,
under /root: the installed units must cope with ProtectHome=). The config repository is a
bare repo created inside the host, holding the project's example inventory and templates.
Every job's service is then started for real: gitops-sync applies the examples,
volume-backup archives a small tree into a dest outside the state dir, reading-sync calls
a real HTTP server on the host's own 127.0.0.1 (its own network namespace) with the token
from the credential, metrics-sample and reconciler-monitor record their passes.

Everything is removed again at the end (the examples through a sync of an empty
inventory), so that the other tests of the session find the host as it was.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.devtools import sandbox
from reconciler.host import journal
from tests.conftest import ENV_INSIDE, PYTHON_INSIDE, REPO

pytestmark = pytest.mark.host

BASE = "/srv/reconciler-install-test"
CONFIG = "/etc/reconciler/config.toml"
SECRET = "/etc/reconciler/webhook-secret"
TOKEN_FILE = "/etc/reconciler/etl-token"
TOKEN = "etl-token-for-the-install-test-0123456789"
STATE = "/var/lib/reconciler"
GREETING = "/etc/greeter/greeting.conf"  # the examples' [files] entry for host "sandbox"
UNITS = sorted(p.name for p in (REPO / "units").iterdir() if p.suffix != ".md")
OPT_IN = {"reconciler-promote.timer"}  # installed, enabled by an operator on one machine
TIMERS = [u for u in UNITS if u.endswith(".timer") and u not in OPT_IN]
JOBS = [
    "gitops-sync.service",
    "metrics-sample.service",
    "volume-backup.service",
    "reading-sync.service",
    "reconciler-monitor.service",
]
WATCH = "reconciler-watch.service"
PASS = "monitor pass:"  # the monitor's one summary line (stdout, into the journal)
GIT = ["git", "-c", "user.name=Test Operator", "-c", "user.email=ops@example.invalid"]
GIT += ["-c", "init.defaultBranch=main", "-c", "safe.directory=*"]


def free_port(host: sandbox.Host) -> int:
    with host.network(), socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(host: sandbox.Host, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return host.run(
        [PYTHON_INSIDE, "-m", "reconciler", *args], env=ENV_INSIDE, check=check, timeout=240
    )


def install_json(host: sandbox.Host, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cli(host, "install", "--json", *args).stdout)
    return data


def show(host: sandbox.Host, unit: str, *props: str) -> dict[str, str]:
    out = host.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def busctl_u64(host: sandbox.Host, unit: str, interface: str, prop: str) -> int:
    path = "/org/freedesktop/systemd1/unit/" + "".join(
        c if c.isalnum() else f"_{ord(c):02x}" for c in unit
    )
    out = host.run(
        ["busctl", "get-property", "org.freedesktop.systemd1", path, interface, prop]
    ).stdout.split()
    assert out[0] == "t", out
    return int(out[1])


def since(entries: list[dict[str, Any]], start_us: int) -> list[dict[str, Any]]:
    # journalctl 252 --after-cursor together with a match returned nothing here: filter.
    return [e for e in entries if int(e["__REALTIME_TIMESTAMP"]) >= start_us]


def wait_for_entries(
    host: sandbox.Host, unit: str, pid: str, start_us: int
) -> list[dict[str, Any]]:
    """What ``unit`` logged since ``start_us`` (through the reconciler), waiting up to 10 s.

    journald fills _SYSTEMD_UNIT from the sender's cgroup, which it may not read once a
    quick job has exited: entries are matched by the unit and by the run's main PID.
    """
    deadline = time.monotonic() + 10
    while True:
        host.journal_sync()
        found = host.journal(f"_SYSTEMD_UNIT={unit}") + host.journal(f"_PID={pid}")
        ours = [
            e
            for e in since(found, start_us)
            if "RECONCILER_EVENT" in e or str(e.get("MESSAGE", "")).startswith(PASS)
        ]
        if ours or time.monotonic() > deadline:
            return ours
        time.sleep(0.2)


def idle(host: sandbox.Host) -> bool:
    """No follow of the config and no sync running (the follow starts the sync before it
    ends: the sync's job is queued by then)."""
    units = ("reconciler-config.service", "gitops-sync.service")
    return all(show(host, u, "ActiveState")["ActiveState"] == "inactive" for u in units)


def host_path(host: sandbox.Host, path: str) -> Path:
    return host.root / path.lstrip("/")


@dataclass
class EtlServer:
    """The ETL endpoint: answers 200 and remembers each request's path and headers."""

    port: int
    requests: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def etl(host: sandbox.Host) -> Iterator[EtlServer]:
    server_state = EtlServer(0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            server_state.requests.append({"path": self.path, **dict(self.headers.items())})
            body = b'{"synced": 3}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with host.network():  # the jobs inside the host reach it on their own loopback
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def example_repo(host: sandbox.Host, web_port: int) -> None:
    """A bare repo inside the host with the example inventory/templates, pushed from inside."""
    work = f"{BASE}/work"
    for sub in ("inventory", "templates"):
        for src in (REPO / sub).iterdir():
            dst = host_path(host, f"{work}/{sub}/{src.name}")
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(src.read_text())
    services = host_path(host, f"{work}/inventory/services.toml")
    text = services.read_text().replace("127.0.0.1:8080", f"127.0.0.1:{web_port}")
    services.write_text(text)
    hosts = host_path(host, f"{work}/inventory/hosts.toml")
    old_vars = 'vars = { environment = "demo", keep_days = 3 }'
    assert old_vars in hosts.read_text()
    hosts.write_text(hosts.read_text().replace(old_vars, old_vars[:-2] + f", port = {web_port} }}"))
    host.run(["git", "init", "-q", "--bare", "-b", "main", f"{BASE}/config.git"])
    host.run([*GIT, "-C", work, "init", "-q", "-b", "main"])
    host.run([*GIT, "-C", work, "add", "-A"])
    host.run([*GIT, "-C", work, "commit", "-q", "-m", "examples"])
    host.run([*GIT, "-C", work, "push", "-q", f"{BASE}/config.git", "HEAD:main"])


def prune_examples(host: sandbox.Host) -> None:
    """Push an empty inventory and sync it with --allow-empty: the examples are removed."""
    work = f"{BASE}/work"
    host_path(host, f"{work}/inventory/services.toml").write_text("")
    host.run([*GIT, "-C", work, "commit", "-q", "-am", "nothing"], check=False)
    host.run([*GIT, "-C", work, "push", "-q", f"{BASE}/config.git", "HEAD:main"], check=False)
    cli(host, "sync", "--allow-empty", "--no-monitor", "--force", check=False)


@dataclass
class Installed:
    """The first install's output."""

    stdout: str
    stderr: str
    roots_at_us: int = 0  # when files_roots was added to the host config
    roots_sec: float = 0.0  # until the file under it was written (or the wait gave up)


@pytest.fixture(scope="module")
def installed(host: sandbox.Host) -> Iterator[Installed]:
    leftovers = [p for p in (CONFIG, SECRET, TOKEN_FILE, BASE) if host_path(host, p).exists()]
    leftovers += [u for u in UNITS if (host.unit_dir / u).exists()]
    if leftovers:
        pytest.fail(f"the shared host is not clean for the install test: {leftovers}")
    state = host_path(host, STATE)
    state_existed = state.is_dir()
    state_before = {p.name for p in state.iterdir()} if state_existed else set()
    etc_existed = host_path(host, "/etc/reconciler").exists()
    web_port = free_port(host)
    example_repo(host, web_port)
    proc = cli(host, "install", "--repo", f"{BASE}/config.git", "--host", "sandbox", check=False)
    try:
        assert proc.returncode == 0, proc.stderr
        # The examples' config file for host "sandbox" (/etc/greeter/greeting.conf) is written
        # only where the host allows it, as the README says: the operator edits the config,
        # and nothing else. reconciler-config.path starts reconciler-config.service, which
        # gives gitops-sync.service the root, then starts the sync that writes the file.
        start_us = int(time.time() * 1e6)
        config = host_path(host, CONFIG)
        config.write_text('files_roots = ["/etc/greeter"]\n' + config.read_text())
        greeting = host_path(host, GREETING)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if greeting.exists() and idle(host):
                break
            time.sleep(0.5)
        followed = time.time() - start_us / 1e6
        yield Installed(proc.stdout, proc.stderr, start_us, followed)
    finally:
        cli(host, "uninstall", check=False)
        prune_examples(host)
        host.systemctl("reset-failed", *UNITS, check=False)
        host.run(["rm", "-rf", BASE, CONFIG, SECRET, TOKEN_FILE, "/etc/greeter"], check=False)
        if not etc_existed:
            host.run(["rmdir", "/etc/reconciler"], check=False)
        if not state_existed:
            host.run(["rm", "-rf", STATE], check=False)
        elif state.is_dir():
            for entry in state.iterdir():
                if entry.name not in state_before:
                    host.run(["rm", "-rf", str(Path(STATE) / entry.name)], check=False)


def test_install_writes_config_and_secret_and_starts_the_units(
    host: sandbox.Host, installed: Installed
) -> None:
    out = installed.stdout
    assert f"wrote config {CONFIG} (mode 0600)" in out
    assert f"wrote webhook secret {SECRET} (mode 0600)" in out
    secret = host_path(host, SECRET).read_text().strip()
    assert len(secret) == 64 and secret not in out + installed.stderr
    host.journal_sync()
    assert not [e for e in host.journal("--grep", secret[:16])]  # never logged either
    for path in (CONFIG, SECRET):
        assert host_path(host, path).stat().st_mode & 0o777 == 0o600, path
    config = host_path(host, CONFIG).read_text()
    assert f'repo = "{BASE}/config.git"' in config and 'host = "sandbox"' in config

    for unit in UNITS:
        props = show(host, unit, "LoadState", "ActiveState", "UnitFileState", "FragmentPath")
        assert props["LoadState"] == "loaded", (unit, props)
        assert props["FragmentPath"] == f"/etc/systemd/system/{unit}"
        if unit in OPT_IN:
            assert props["UnitFileState"] == "disabled", (unit, props)
        elif unit.endswith((".timer", ".socket")):
            assert props["ActiveState"] == "active", (unit, props)
            assert props["UnitFileState"] == "enabled", (unit, props)
    assert show(host, WATCH, "ActiveState")["ActiveState"] == "active"
    for timer in TIMERS:
        iface = "org.freedesktop.systemd1.Timer"
        realtime = busctl_u64(host, timer, iface, "NextElapseUSecRealtime")
        monotonic = busctl_u64(host, timer, iface, "NextElapseUSecMonotonic")
        # OnCalendar= timers elapse on the wall clock; OnBootSec=/OnUnitActiveSec= ones on
        # the monotonic clock (their NextElapseUSecRealtime stays 0).
        assert realtime > 0 or monotonic > 0, (timer, realtime, monotonic)
        if "OnCalendar=" in (REPO / "units" / timer).read_text():
            assert realtime > time.time() * 1e6 - 60e6, timer
    # The socket waits for the secret install created; it listens on 9420.
    # The socket listens where [webhook] listen says: 127.0.0.1:9420 by default.
    assert show(host, "reconciler-webhook.socket", "Listen")["Listen"] == "127.0.0.1:9420 (Stream)"

    installed_files = [f"/etc/systemd/system/{u}" for u in UNITS]
    proc = host.run(
        ["systemd-analyze", "verify", "--man=no", *installed_files],
        env={"SYSTEMD_LOG_LEVEL": "warning"},
        check=False,
    )
    complaints = [
        line for line in (proc.stderr + proc.stdout).splitlines() if any(u in line for u in UNITS)
    ]
    assert complaints == [] and proc.returncode == 0, proc.stderr


def test_a_new_files_root_is_written_by_the_sync_the_config_change_starts(
    host: sandbox.Host, installed: Installed
) -> None:
    """A first user's report: with files_roots added to the host config, the sync the path
    unit started ran under gitops-sync.service's old sandbox and failed with 'Read-only file
    system' on the new root; nothing synced until a manual start or the timer (16 min).
    Now reconciler-config.service follows the config, then starts the sync under the new
    unit: the file is written with no manual step (the fixture starts nothing)."""
    greeting = host_path(host, GREETING)
    host.journal_sync()
    journal = since(host.journal("_SYSTEMD_UNIT=gitops-sync.service"), installed.roots_at_us)
    journal += since(host.journal("_SYSTEMD_UNIT=reconciler-config.service"), installed.roots_at_us)
    messages = [str(e.get("MESSAGE")) for e in journal]
    assert greeting.exists(), (installed.roots_sec, messages)
    assert greeting.read_text().splitlines()[-1] == "hello"
    assert "-/etc/greeter" in (host.unit_dir / "gitops-sync.service").read_text()
    assert not [m for m in messages if "Read-only file system" in m], messages
    for unit in ("reconciler-config.service", "gitops-sync.service"):
        props = show(host, unit, "Result", "InvocationID")
        assert props["Result"] == "success" and props["InvocationID"], (unit, props, messages)
    assert installed.roots_sec < 90, messages
    print(f"files root followed and its file written {installed.roots_sec:.1f} s after the edit")


def test_a_sync_whose_own_unit_changes_hands_over_to_a_new_run(
    host: sandbox.Host, installed: Installed
) -> None:
    """A timer's sync that finds the host config widened its own sandbox (the path unit did
    not run: stopped here) cannot use it: it says so in one line, writes nothing, and
    reconciler-config.service (ordered after it) starts the sync again under the new unit."""
    extra = f"{BASE}/extra-root"
    config = host_path(host, CONFIG)
    host.systemctl("stop", "reconciler-config.path")
    try:
        config.write_text(
            config.read_text().replace(
                'files_roots = ["/etc/greeter"]', f'files_roots = ["/etc/greeter", "{extra}"]'
            )
        )
        before = show(host, "gitops-sync.service", "InvocationID")["InvocationID"]
        start_us = int(time.time() * 1e6)
        proc = host.systemctl("start", "gitops-sync.service", check=False)
        first = show(host, "gitops-sync.service", "InvocationID", "Result", "ExecMainPID")
        assert proc.returncode == 0 and first["Result"] == "success", (proc.stderr, first)
        deadline = time.monotonic() + 60
        while True:
            now = show(host, "gitops-sync.service", "InvocationID", "Result")
            if now["InvocationID"] not in (before, first["InvocationID"]) and idle(host):
                break
            assert time.monotonic() < deadline, (first, now)
            time.sleep(0.5)
        assert now["Result"] == "success", now
        assert f"-{extra}" in (host.unit_dir / "gitops-sync.service").read_text()
        assert host_path(host, extra).is_dir()  # made by the new unit's ExecStartPre=+mkdir
        pid = first["ExecMainPID"]
        entries = wait_for_entries(host, "gitops-sync.service", pid, start_us)
        ran = [e for e in entries if str(e.get("_PID")) == pid and "RECONCILER_EVENT" in e]
        said = [str(e.get("MESSAGE")) for e in ran]
        assert any("this run stops here" in m for m in said), said
        assert {e["RECONCILER_EVENT"] for e in ran} == {"install"}, said  # no sync step
    finally:
        host.systemctl("start", "reconciler-config.path")


def test_a_config_repository_under_var_tmp_is_fetched_by_the_units_sync(
    host: sandbox.Host, installed: Installed
) -> None:
    """A first operator's report: with ``repo`` a path under /var/tmp (or /tmp, /home,
    /root), every sync the units ran failed ("does not appear to be a git repository": the
    unit's PrivateTmp= and ProtectHome= hide it) while ``reconciler sync`` by hand worked.
    The sync's unit now binds a local repository there back read-only."""
    moved = "/var/tmp/reconciler-install-test/config.git"
    config = host_path(host, CONFIG)
    before = config.read_text()
    unit = host.unit_dir / "gitops-sync.service"

    def followed(present: bool) -> None:
        deadline = time.monotonic() + 90
        while (moved in unit.read_text()) != present or not idle(host):
            assert time.monotonic() < deadline, unit.read_text()
            time.sleep(0.5)

    host.run(["mkdir", "-p", str(Path(moved).parent)])
    host.run(["cp", "-a", f"{BASE}/config.git", moved])
    try:
        after = before.replace(f'"{BASE}/config.git"', f'"{moved}"')
        assert after != before, before
        config.write_text(after)  # reconciler-config.path: the units follow the config
        followed(True)
        binds = [line for line in unit.read_text().splitlines() if moved in line]
        assert binds and binds[0].startswith("BindReadOnlyPaths="), binds
        start_us = int(time.time() * 1e6)
        proc = host.systemctl("start", "gitops-sync.service", check=False)
        ran = show(host, "gitops-sync.service", "Result", "ExecMainPID")
        entries = wait_for_entries(host, "gitops-sync.service", ran["ExecMainPID"], start_us)
        said = [str(e.get("MESSAGE")) for e in entries]
        assert proc.returncode == 0 and ran["Result"] == "success", (proc.stderr, ran, said)
        assert not [m for m in said if "not appear to be a git repository" in m], said
        events = {e.get("RECONCILER_EVENT") for e in entries}
        assert events & {"sync.noop", "sync.applied"}, said
    finally:
        config.write_text(before)
        followed(False)
        host.run(["rm", "-rf", str(Path(moved).parent)], check=False)


def test_second_install_is_a_noop(host: sandbox.Host, installed: Installed) -> None:
    before = {u: show(host, u, "InvocationID")["InvocationID"] for u in UNITS}
    second = install_json(host)
    assert second["actions"] == [], second
    assert second["mutating_dbus_calls"] == 0, second["dbus_calls"]
    assert second["config_written"] is None and second["secret_written"] is None
    after = {u: show(host, u, "InvocationID")["InvocationID"] for u in UNITS}
    assert {u: v for u, v in after.items() if not u.endswith(".service")} == {
        u: v for u, v in before.items() if not u.endswith(".service")
    }


def test_every_job_runs_and_logs(host: sandbox.Host, installed: Installed, etl: EtlServer) -> None:
    small = host_path(host, f"{BASE}/small")
    (small / "sub").mkdir(parents=True)
    (small / "a.txt").write_text("alpha\n")
    (small / "sub" / "b.bin").write_bytes(bytes(range(256)))
    token = host_path(host, TOKEN_FILE)
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    with host_path(host, CONFIG).open("a") as fh:
        fh.write(
            f'\n[backup]\ndest = "{BASE}/backups"\n'
            f'[[backup.sources]]\nname = "small"\npath = "{BASE}/small"\n'
            f'\n[etl]\nurl = "http://127.0.0.1:{etl.port}/api/sync/reading"\nretries = 0\n'
            # The disposable host hands services an empty credentials directory (systemd
            # in a chroot; measured), so the job's own fallback reads the same file here.
            f'token_file = "{TOKEN_FILE}"\n'
            '\n[webhook]\nlisten = ":9421"\n'  # every address, another port
        )
    # The units follow the config without a re-install (issue 12.14): the config's change
    # starts a sync (reconciler-config.path), which first brings the own units in line:
    # the dest becomes writable (and is created on start), the token a credential.
    unit_dir = host.unit_dir
    deadline = time.monotonic() + 90
    while True:
        reading = (unit_dir / "reading-sync.service").read_text()
        backup = (unit_dir / "volume-backup.service").read_text()
        hook = (unit_dir / "reconciler-webhook.socket").read_text()
        if (
            f"LoadCredential=etl-token:{TOKEN_FILE}" in reading
            and f"ReadWritePaths=-{BASE}/backups" in backup
            and "ListenStream=9421" in hook
        ):
            break
        assert time.monotonic() < deadline, (
            reading,
            backup,
            host.systemctl("status", "gitops-sync.service", "-n", "30", check=False).stdout,
        )
        time.sleep(0.5)
    while not idle(host):
        assert time.monotonic() < deadline  # the config's sync goes on: the examples
        time.sleep(0.5)
    assert not host_path(host, f"{BASE}/backups").exists()  # made by the unit when it starts
    listen = show(host, "reconciler-webhook.socket", "Listen", "ActiveState")
    assert listen == {"Listen": "[::]:9421 (Stream)", "ActiveState": "active"}, listen
    assert install_json(host)["actions"] == []  # nothing left for a re-install to do

    start_us = int(time.time() * 1e6)
    pids: dict[str, str] = {}
    for job in JOBS:
        proc = host.systemctl("start", job, check=False)
        status = host.systemctl("status", job, "-n", "20", check=False).stdout
        assert proc.returncode == 0, (job, proc.stderr, status)
        props = show(host, job, "Result", "ExecMainPID")
        assert props["Result"] == "success", status
        pids[job] = props["ExecMainPID"]

    for job in JOBS:
        entries = wait_for_entries(host, job, pids[job], start_us)
        assert entries, (job, host.systemctl("status", job, "-n", "20", check=False).stdout)
        if job != "reconciler-monitor.service":  # a pass without findings logs only its line
            assert all("MESSAGE_ID" in e for e in entries if "RECONCILER_EVENT" in e)
            assert any("RECONCILER_EVENT" in e for e in entries), (job, entries)
    everything = json.dumps(since(host.journal(), start_us))
    assert TOKEN not in everything

    # gitops-sync applied the example services for host "sandbox".
    assert show(host, "web.service", "ActiveState")["ActiveState"] == "active"
    for timer in ("system-metrics.timer", "readings-etl.timer"):
        assert show(host, timer, "ActiveState")["ActiveState"] == "active", timer
    # volume-backup wrote an archive outside the state dir.
    assert list(host_path(host, f"{BASE}/backups").rglob("*.tar*"))
    # reading-sync called the endpoint once, with the token.
    assert [r["path"] for r in etl.requests] == ["/api/sync/reading"]
    assert etl.requests[0]["Authorization"] == f"Bearer {TOKEN}"
    assert etl.requests[0].get("Idempotency-Key")
    # metrics-sample stored a sample in the state dir's database.
    samples = json.loads(cli(host, "metrics", "--since", "10m", "--json").stdout)
    assert samples, samples


def test_the_installed_sync_logs_each_message_once(
    host: sandbox.Host, installed: Installed
) -> None:
    """A user's trial: ``journalctl -u gitops-sync`` showed every line of an applied sync
    twice, natively as ``reconciler[PID]`` and printed as ``python[PID]``."""
    work = f"{BASE}/work"
    services = host_path(host, f"{work}/inventory/services.toml")
    old = 'description = "Static web server (python3 http.server)"'
    assert old in services.read_text()
    services.write_text(services.read_text().replace(old, old[:-1] + ', once"', 1))
    host.run([*GIT, "-C", work, "commit", "-q", "-am", "describe web once"])
    host.run([*GIT, "-C", work, "push", "-q", f"{BASE}/config.git", "HEAD:main"])
    start_us = int(time.time() * 1e6)
    proc = host.systemctl("start", "gitops-sync.service", check=False)
    assert proc.returncode == 0, host.run(
        ["journalctl", "--no-pager", "-u", "gitops-sync.service", "-n", "20"], check=False
    ).stdout
    pid = show(host, "gitops-sync.service", "ExecMainPID")["ExecMainPID"]
    host.journal_sync()
    run = since(host.journal(f"_PID={pid}"), start_us)
    native = [str(e.get("MESSAGE")) for e in run if e.get("_TRANSPORT") == "journal"]
    printed = [str(e.get("MESSAGE")).strip() for e in run if e.get("_TRANSPORT") == "stdout"]
    assert "restart web.service" in native, (native, printed)
    assert not [line for line in printed if line in native], (native, printed)
    assert printed == [], printed  # the run's report is its entries: nothing printed beside
    applied = [e for e in run if e.get("RECONCILER_EVENT") == "sync.applied"]
    assert applied and str(applied[0]["MESSAGE"]).endswith("; 1 new commit"), applied


def own_findings(host: sandbox.Host, unit: str) -> set[tuple[str, str]]:
    data = json.loads(cli(host, "monitor", "--json").stdout)
    return {(f["kind"], f["severity"]) for f in data["findings"] if f["unit"] == unit}


def test_a_failed_run_of_the_sync_is_resolved_by_a_later_good_sync(
    host: sandbox.Host, installed: Installed
) -> None:
    """A user's trial (issue 12): one failed timer run of gitops-sync.service was "critical
    drift ... drifted from the applied revision: active: failed (want not failed)", and
    stayed so through later good manual syncs. It is a failed run, resolved by them."""
    work, unit = f"{BASE}/work", "gitops-sync.service"
    services = host_path(host, f"{work}/inventory/services.toml")
    good = services.read_text()

    def push(text: str, message: str) -> None:
        services.write_text(text)
        host.run([*GIT, "-C", work, "commit", "-q", "-am", message])
        host.run([*GIT, "-C", work, "push", "-q", f"{BASE}/config.git", "HEAD:main"])

    push(good + "\n[services.broken]\nnot_a_key = 1\n", "a bad key")
    start_us = int(time.time() * 1e6)
    try:
        assert host.systemctl("start", unit, check=False).returncode != 0
        assert show(host, unit, "ActiveState")["ActiveState"] == "failed"
        assert own_findings(host, unit) == {("failed_run", "warning")}
        # its own MESSAGE_ID (a README-only trial: it was finding.opened's, shared by none)
        host.journal_sync()
        found = since(host.journal(f"MESSAGE_ID={journal.message_id('failed_run')}"), start_us)
        assert [e.get("UNIT") for e in found] == [unit], found
        assert found[0].get("RECONCILER_EVENT") == "failed_run", found
        generic = since(
            host.journal(f"MESSAGE_ID={journal.message_id('finding.opened')}"), start_us
        )
        assert not [e for e in generic if e.get("UNIT") == unit], generic
        push(good, "the bad key removed")
        cli(host, "sync")  # a manual sync: the unit itself stays failed
        assert show(host, unit, "ActiveState")["ActiveState"] == "failed"
        assert own_findings(host, unit) == set()
    finally:
        host.systemctl("reset-failed", unit, check=False)
        if services.read_text() != good:
            push(good, "restored")


def test_install_over_an_existing_config_says_what_it_did_not_apply(
    host: sandbox.Host, installed: Installed
) -> None:
    data = install_json(host, "--repo", "https://git.example/other.git", "--ref", "prod")
    notes = "\n".join(data["notes"])
    assert "--repo https://git.example/other.git was not applied" in notes, notes
    assert f'says repo = "{BASE}/config.git"' in notes, notes
    assert "--ref prod was not applied" in notes, notes
    assert f'repo = "{BASE}/config.git"' in host_path(host, CONFIG).read_text()


def triggers_since(host: sandbox.Host, at: float) -> list[str]:
    rows = json.loads(cli(host, "history", "--json").stdout)
    return [r["trigger"] for r in reversed(rows) if r["started_at"] >= at]


def wait_idle(host: sandbox.Host, sec: float = 60) -> None:
    deadline = time.monotonic() + sec
    while not idle(host):
        assert time.monotonic() < deadline, "the sync did not end"
        time.sleep(0.3)


def test_each_sync_is_recorded_with_what_started_it(
    host: sandbox.Host, installed: Installed
) -> None:
    """A README-only trial: a sync started by the config's path unit, or by hand with
    ``systemctl start``, was recorded as ``timer``. systemd keeps a unit's first activation
    details while it stays loaded (252 and 257): a later manual start still sees the old
    ``TRIGGER_UNIT``; only a detail newer than the last sync is believed."""
    rows = json.loads(cli(host, "history", "--json").stdout)
    after_edit = [r["trigger"] for r in rows if r["started_at"] * 1e6 >= installed.roots_at_us]
    assert "path" in after_edit, rows[:4]  # the fixture's config edit (path -> follow -> sync)
    wait_idle(host)
    start = time.time()
    assert host.systemctl("start", "gitops-sync.service", check=False).returncode == 0
    assert triggers_since(host, start) == ["manual"]
    # a timer of its own (the installed one fires in minutes): what gitops-sync.timer does
    start = time.time()
    timer = host_path(host, "/run/systemd/system/sync-now.timer")
    timer.write_text("[Timer]\nOnActiveSec=1\nAccuracySec=10ms\nUnit=gitops-sync.service\n")
    try:
        host.systemctl("daemon-reload")
        host.systemctl("start", "sync-now.timer")
        deadline = time.monotonic() + 60
        while not triggers_since(host, start) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert triggers_since(host, start) == ["timer"]
        wait_idle(host)
        start = time.time()
        assert host.systemctl("start", "gitops-sync.service", check=False).returncode == 0
        assert triggers_since(host, start) == ["manual"]  # the timer's details are stale now
    finally:
        host.systemctl("stop", "sync-now.timer", check=False)
        timer.unlink(missing_ok=True)
        host.systemctl("daemon-reload", check=False)


def test_uninstall_removes_units_and_keeps_state(host: sandbox.Host, installed: Installed) -> None:
    assert "automatic syncs: on" in cli(host, "status").stdout
    proc = cli(host, "uninstall", "--json")
    data = json.loads(proc.stdout)
    assert any(line.startswith("remove ") for line in data["actions"]), data
    for unit in UNITS:
        assert not (host.unit_dir / unit).exists(), unit
        assert show(host, unit, "LoadState")["LoadState"] == "not-found", unit
    for kept in (CONFIG, SECRET, f"{STATE}/state.db", f"{BASE}/backups"):
        assert host_path(host, kept).exists(), kept
    again = json.loads(cli(host, "uninstall", "--json").stdout)
    assert again["actions"] == [] and again["mutating_dbus_calls"] == 0, again
    status = cli(host, "status").stdout
    assert "automatic syncs: off (gitops-sync.timer is not installed" in status, status
    assert json.loads(cli(host, "status", "--json").stdout)["automatic"]["on"] is False
