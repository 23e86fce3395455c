"""Security review as tests: file modes, secrets that must never show, signed commits, the
webhook's constant-time compare, and the exposure scores of the reconciler's own units.

The repository URL carries credentials (``http://deploy:TOKEN@...``) and is served by a real
git "dumb HTTP" server that demands them; everything an operator or another local user can
read afterwards is searched for the token: CLI output (``plan``, ``sync``, ``history``,
``status``, ``monitor``, errors, a ``--debug`` traceback), the host's journal, diagnostics
bundles, every file under the state dir, and the command lines of running processes.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import hmac
import inspect
import json
import os
import re
import stat
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reconciler.devtools import sandbox
from tests.faults.conftest import FaultEnv, Report, make_env
from tests.integration.gitrepo import GIT_ENV, git
from tests.integration.test_source import Keys, keys
from tests.integration.test_sync import RECONCILER, base_files, service

pytestmark = pytest.mark.host
__all__ = ["keys"]  # the gpg keys fixture of test_source

TOKEN = "tok" + uuid.uuid4().hex  # unique: any appearance anywhere is a leak


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def cli(env: FaultEnv, *args: str, state: Path | None = None) -> subprocess.CompletedProcess[str]:
    """A non-sync command pointed at the env's host (bus, unit dir) and state."""
    argv = [RECONCILER, *args, "--state-dir", str(state or env.state)]
    if args[0] in ("status", "monitor"):
        argv += ["--unit-dir", str(env.host.unit_dir), "--bus", env.host.bus_address]
    return subprocess.run(argv, capture_output=True, text=True, env=env.env(), timeout=60)


# ---- file modes ------------------------------------------------------------------------------


def test_every_file_written_has_the_intended_mode(
    host: sandbox.Host, tmp_path: Path, fault_report: Report
) -> None:
    from reconciler.config import Settings
    from reconciler.reconcile import install

    env = make_env(host, tmp_path / "env")
    fresh = tmp_path / "fresh-state"  # created by the sync itself
    a, crash = env.name("web"), env.name("crash")
    env.repo.commit(base_files(env, service(a), service(crash, template="crasher.service.j2")))
    proc = env.run("sync", state_dir=str(fresh))
    assert proc.returncode == 0, proc.stderr
    lock = env.state / "run" / "sync.lock"
    time.sleep(2)  # a few crashes: the next pass opens a finding and writes a bundle
    monitor = cli(env, "monitor", "--json", state=fresh)
    assert monitor.returncode == 0, monitor.stderr
    source = tmp_path / "data"
    source.mkdir()
    (source / "file").write_text("payload\n")
    backup_config = tmp_path / "backup.toml"
    backup_config.write_text(f'[backup]\n[[backup.sources]]\nname = "data"\npath = "{source}"\n')
    backup = subprocess.run(
        [RECONCILER, "job", "backup", "--config", str(backup_config), "--state-dir", str(fresh)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert backup.returncode == 0, backup.stderr
    etc = tmp_path / "etc"
    install.write_config(etc / "config.toml", Settings(repo="https://example.invalid/c.git"))
    install.write_secret(etc / "webhook-secret")

    expected: dict[str, tuple[Path, int]] = {
        "state dir": (fresh, 0o700),
        "state database": (fresh / "state.db", 0o600),
        "git cache": (fresh / "repo", 0o700),
        "sync lock": (lock, 0o600),
        "unit file": (host.unit_dir / f"{a}.service", 0o644),
        "diagnostics dir": (fresh / "diagnostics", 0o700),
        "backup dir": (fresh / "backups", 0o700),
        "host config": (etc / "config.toml", 0o600),
        "webhook secret": (etc / "webhook-secret", 0o600),
    }
    for suffix in ("-wal", "-shm"):  # while a connection is open (removed on the last close)
        if Path(f"{fresh}/state.db{suffix}").exists():
            expected[f"state database {suffix}"] = (Path(f"{fresh}/state.db{suffix}"), 0o600)
    bundles = list((fresh / "diagnostics").glob("*.tar.gz"))
    archives = [p for p in (fresh / "backups").rglob("*") if p.is_file()]
    expected |= {f"diagnostics bundle {p.name}": (p, 0o600) for p in bundles}
    expected |= {f"backup file {p.name}": (p, 0o600) for p in archives}
    wrong = {
        what: f"{mode(path):04o} (want {want:04o})"
        for what, (path, want) in expected.items()
        if mode(path) != want
    }
    not_root = [what for what, (path, _) in expected.items() if path.lstat().st_uid != 0]
    fault_report(
        "file owner and mode",
        "state, database, cache, lock, bundles, backups, config, secret 0600/0700; "
        "unit files 0644; all root-owned (ETL status and webhook replay file: network tests)",
        None,
        None,
    )
    assert bundles and archives, (monitor.stdout, backup.stdout)
    assert not wrong, wrong
    assert not not_root, not_root


# ---- secrets ---------------------------------------------------------------------------------


class _DumbGit(SimpleHTTPRequestHandler):
    """git's "dumb HTTP" protocol: static files of a bare repo, behind Basic auth."""

    server: DumbGitServer

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != self.server.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        time.sleep(self.server.stall)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class DumbGitServer(ThreadingHTTPServer):
    daemon_threads = True
    expected = ""
    stall = 0.0


@contextlib.contextmanager
def dumb_git(base: Path, user: str, password: str) -> Iterator[DumbGitServer]:
    import base64

    handler = functools.partial(_DumbGit, directory=str(base))
    server = DumbGitServer(("127.0.0.1", 0), handler)
    server.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def command_lines_with(secret: str, seconds: float) -> list[str]:
    """Command lines of any process (readable by every local user) holding ``secret``."""
    found: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    raw = Path(entry.path, "cmdline").read_bytes()
                    if secret.encode() in raw:
                        found.add(raw.replace(b"\0", b" ").decode(errors="replace"))
        time.sleep(0.01)
    return sorted(found)


def test_secrets_never_appear(fenv: FaultEnv, fault_report: Report) -> None:
    a, crash = fenv.name("web"), fenv.name("crash")
    fenv.repo.commit(base_files(fenv, service(a), service(crash, template="crasher.service.j2")))
    git(fenv.repo.remote, "update-server-info")
    since = time.time()
    texts: dict[str, str] = {}
    with dumb_git(fenv.repo.remote.parent, "deploy", TOKEN) as server:
        port = server.server_address[1]
        url = f"http://deploy:{TOKEN}@127.0.0.1:{port}/{fenv.repo.remote.name}"
        wrong = f"http://deploy:{TOKEN}x@127.0.0.1:{port}/{fenv.repo.remote.name}"
        fenv.configure(top=f'repo = "{url}"\n')  # in the config file (0600), as installed
        for what, args in {
            "plan": ("plan",),
            "plan --json": ("plan", "--json"),
            "sync --json": ("sync", "--json"),
        }.items():
            proc = fenv.run(*args, repo=None)
            assert proc.returncode == 0, proc.stderr
            texts[what] = proc.stdout + proc.stderr
        fenv.configure(top=f'repo = "{wrong}"\n')
        refused = fenv.run("sync", repo=None)
        texts["sync with a wrong password"] = refused.stdout + refused.stderr
        fenv.configure(top=f'repo = "{url}"\n')
        # a fetch that takes a while, while every process's command line is watched
        again = service(a, greeting="again"), service(crash, template="crasher.service.j2")
        fenv.repo.commit(base_files(fenv, *again))
        git(fenv.repo.remote, "update-server-info")
        server.stall = 0.3
        argv = fenv.argv("sync", "--no-monitor")
        del argv[argv.index("--repo") : argv.index("--repo") + 2]
        slow = subprocess.Popen(argv, env=fenv.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        in_ps = command_lines_with(TOKEN, 2.0)
        out, err = slow.communicate(timeout=60)
        texts["slow sync"] = out + err
    debug = {**fenv.env(), "RECONCILER_DEBUG": "1"}
    gone = subprocess.run(argv[:1] + ["sync"] + argv[3:], env=debug, capture_output=True,
                          text=True, timeout=60)  # the server is gone now  # fmt: skip
    texts["--debug traceback, remote gone"] = gone.stdout + gone.stderr
    time.sleep(1.5)  # the crasher crashes: the monitor opens a finding and writes a bundle
    for what in ("history", "status", "monitor"):
        proc = cli(fenv, what, "--json")
        assert proc.returncode == 0, proc.stderr
        texts[f"{what} --json"] = proc.stdout + proc.stderr
    fenv.host.journal_sync()
    texts["journal"] = fenv.host.run(
        ["journalctl", "--no-pager", "-o", "json", "--all", "--since", f"@{int(since)}"],
        check=False,
    ).stdout
    bundles = list((fenv.state / "diagnostics").glob("*.tar.gz"))
    for bundle in bundles:
        with tarfile.open(bundle) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member)
                if data is not None:
                    texts[f"bundle {member.name}"] = data.read().decode(errors="replace")
    for path in fenv.state.rglob("*"):
        if path.is_file() and path != fenv.config:  # the config holds the URL, on purpose
            texts[f"file {path.relative_to(fenv.state)}"] = path.read_bytes().decode(
                errors="replace"
            )
    leaks = sorted(what for what, text in texts.items() if TOKEN in text)
    fault_report(
        "secrets in output (repo URL credentials)",
        f"never shown: searched {len(texts)} outputs, journal, {len(bundles)} bundles, "
        "state files and process command lines",
        None,
        None,
    )
    assert refused.returncode == 1 and "https" not in refused.stderr
    assert "Authentication failed" in refused.stderr or "401" in refused.stderr, refused.stderr
    assert "Traceback" in gone.stderr, "the debug run shows a traceback, still without the token"
    assert bundles, "the crash loop was bundled"
    assert not leaks, f"the token appeared in {leaks}"
    assert not in_ps, f"the token is readable by every local user in {in_ps}"


# ---- signed commits --------------------------------------------------------------------------


def signed_commit(env: FaultEnv, files: dict[str, str], home: Path, key: str) -> str:
    env.repo.write(files)
    git(env.repo.work, "add", "-A")
    subprocess.run(
        ["git", "-c", f"user.signingkey={key}", "commit", "-q", "-S", "-m", f"signed by {key}"],
        cwd=env.repo.work,
        env={**GIT_ENV, "GNUPGHOME": str(home)},
        check=True,
        capture_output=True,
    )
    git(env.repo.work, "push", "-q", "origin", "HEAD:main")
    return git(env.repo.work, "rev-parse", "HEAD")


def test_signature_mode_refuses_unsigned_and_unknown_key(
    fenv: FaultEnv, keys: Keys, fault_report: Report
) -> None:
    fenv.configure(top=f'verify_signatures = true\ngpg_home = "{keys.trusted}"\n')
    a = fenv.name("signed")
    unit = f"{a}.service"
    signed_commit(fenv, base_files(fenv, service(a, greeting="one")), keys.signer, keys.signer_fpr)
    assert fenv.sync()["result"] == "applied"
    before = fenv.invocations(unit)
    unsigned = fenv.repo.commit(base_files(fenv, service(a, greeting="two")), message="unsigned")
    no_sig = fenv.run("sync")
    stranger = signed_commit(
        fenv, base_files(fenv, service(a, greeting="three")), keys.other, keys.other_fpr
    )
    unknown = fenv.run("sync")
    refused_at = time.monotonic()
    untouched = "one" in (fenv.host.unit_dir / unit).read_text()
    untouched = untouched and fenv.invocations(unit) == before
    signed_commit(fenv, base_files(fenv, service(a, greeting="four")), keys.signer, keys.signer_fpr)
    converge = fenv.converge(refused_at)
    results = [r["result"] for r in fenv.history()]
    fault_report(
        "unsigned and unknown-key commits (signature mode)",
        "refused before anything is read from the commit; the next signed commit applies",
        converge,
        untouched and results[:4] == ["applied", "failed", "failed", "applied"],
    )
    assert no_sig.returncode == 1
    assert f"cannot verify commit '{unsigned[:12]}': unsigned" in no_sig.stderr, no_sig.stderr
    assert unknown.returncode == 1
    assert f"cannot verify commit '{stranger[:12]}': signed by unknown key" in unknown.stderr
    assert untouched
    assert "four" in (fenv.host.unit_dir / unit).read_text()
    assert results[:4] == ["applied", "failed", "failed", "applied"], results


# ---- the webhook's compare, the own units' exposure ------------------------------------------


def test_webhook_compares_secrets_in_constant_time(fault_report: Report) -> None:
    """Read from the code (a timing measurement cannot tell ~60 ns apart reliably): both
    checks end in ``hmac.compare_digest`` and nothing compares secret material with ``==``."""
    from reconciler.core import push_policy

    tree = ast.parse(inspect.getsource(push_policy))
    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    secretish = re.compile(r"secret|expected|given|token|digest|signature")
    findings = {}
    for name in ("signature_matches", "token_matches"):
        node = functions[name]
        calls = {ast.unparse(c.func) for c in ast.walk(node) if isinstance(c, ast.Call)}
        equal = [
            ast.unparse(c)
            for c in ast.walk(node)
            if isinstance(c, ast.Compare)
            and any(isinstance(op, ast.Eq | ast.NotEq) for op in c.ops)
            and secretish.search(ast.unparse(c))
        ]
        findings[name] = ("hmac.compare_digest" in calls, equal)
    secret, body = b"s" * 32, b'{"ref": "refs/heads/main"}'
    good = hmac.new(secret, body, hashlib.sha256).hexdigest()
    first, last = (
        ("0" if good[0] != "0" else "1") + good[1:],
        good[:-1] + ("0" if good[-1] != "0" else "1"),
    )
    behaves = (
        push_policy.signature_matches(secret, body, f"sha256={good}") is True
        and push_policy.signature_matches(secret, body, first) is False
        and push_policy.signature_matches(secret, body, last) is False
        and push_policy.token_matches(secret, secret.decode())
        and not push_policy.token_matches(secret, secret.decode()[:-1])
    )
    fault_report(
        "webhook signature compare",
        "hmac.compare_digest on equal-length values (a token is hashed first); no == on secrets",
        None,
        None,
    )
    assert all(ok and not eq for ok, eq in findings.values()), findings
    assert behaves


def test_own_units_exposure_scores(fault_report: Report) -> None:
    """``systemd-analyze security --offline=yes`` of the units ``reconciler install`` writes
    (tests/unit/test_units.py holds the per-layout limits; this records the scores)."""
    from reconciler.reconcile import install

    scores = {}
    with contextlib.ExitStack() as stack:
        import tempfile

        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for unit in install.build_units():
            if not unit.name.endswith(".service"):
                continue
            path = folder / unit.name
            path.write_text(unit.content)
            proc = subprocess.run(
                ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
            assert match, proc.stdout + proc.stderr
            scores[unit.name] = float(match.group(1))
    fault_report(
        "own units' systemd-analyze security",
        ", ".join(f"{n.removesuffix('.service')} {s}" for n, s in sorted(scores.items())),
        None,
        None,
    )
    assert scores and max(scores.values()) <= 4.5, scores
    print(json.dumps(scores))
