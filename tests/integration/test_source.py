"""fetch.fetch / read_revision against real git: bare repos, git daemon, hostile servers, gpg."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.errors import SourceError
from reconciler.reconcile import credentials, fetch
from tests.integration.gitrepo import git_daemon, tcp_server

IDENTITY = ["-c", "user.name=Tester", "-c", "user.email=tester@example.com"]


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["git", *IDENTITY, "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@dataclass
class Remote:
    """A bare repository and a working clone to commit and push from."""

    bare: Path
    work: Path

    def commit(self, files: dict[str, str | None], message: str, *opts: str) -> str:
        for name, text in files.items():
            path = self.work / name
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message, *opts)
        return git(self.work, "rev-parse", "HEAD")

    def push(self, *args: str) -> None:
        git(self.work, "push", "-q", "origin", *(args or ("main",)))


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    bare = tmp_path / "srv" / "config.git"
    bare.parent.mkdir()
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(bare), str(work))
    git(work, "checkout", "-q", "-b", "main")
    r = Remote(bare, work)
    r.commit(
        {
            "inventory/hosts.toml": "[hosts.h1]\n",
            "inventory/services.toml": "[services.web]\n",
            "templates/web.service.j2": "[Service]\nExecStart=/bin/true\n",
            "README.md": "not read\n",
        },
        "first: add web\n\nbody text",
    )
    r.push()
    return r


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "state" / "git"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def daemon(remote: Remote) -> Iterator[str]:
    """``git daemon`` serving the remote on 127.0.0.1; yields its git:// URL, killed by PID."""
    with git_daemon(remote.bare.parent) as port:
        yield f"git://127.0.0.1:{port}/{remote.bare.name}"


@pytest.fixture
def hung_port() -> Iterator[int]:
    """Accepts connections and never says a word."""
    with tcp_server(lambda conn: None) as port:
        yield port


@pytest.fixture
def garbage_port() -> Iterator[int]:
    def answer(conn: socket.socket) -> None:
        conn.settimeout(5)
        conn.recv(4096)  # git's request first, so the answer is what fails, not the write
        conn.sendall(b"\x00\xffthis is not git\r\n\r\n")
        conn.close()

    with tcp_server(answer) as port:
        yield port


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if "/auth" in self.path:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"<html>this is not a git server</html>\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join(5)


def fetch_error(url: str, cache: Path, ref: str = "main", timeout: float = 20) -> SourceError:
    with pytest.raises(SourceError) as info:
        fetch.fetch(url, ref, cache, timeout=timeout)
    assert "\n" not in str(info.value)
    return info.value


# --- fetching refs -----------------------------------------------------------------------


def test_fetch_branch_reads_only_inventory_and_templates(
    daemon: str, remote: Remote, cache: Path
) -> None:
    snap = fetch.fetch(daemon, "main", cache)
    assert snap.revision == git(remote.work, "rev-parse", "HEAD")
    assert snap.summary == "first: add web"
    assert snap.files == {
        "inventory/hosts.toml": b"[hosts.h1]\n",
        "inventory/services.toml": b"[services.web]\n",
        "templates/web.service.j2": b"[Service]\nExecStart=/bin/true\n",
    }
    assert (cache / "HEAD").is_file()
    assert cache.stat().st_mode & 0o777 == 0o700


def test_fetch_follows_new_commits_and_deleted_files(
    daemon: str, remote: Remote, cache: Path
) -> None:
    first = fetch.fetch(daemon, "main", cache)
    second_rev = remote.commit({"inventory/services.toml": "[services.db]\n"}, "second")
    remote.commit({"templates/web.service.j2": None}, "third: drop template")
    remote.push()
    snap = fetch.fetch(daemon, "main", cache)
    assert snap.revision != first.revision
    assert snap.summary == "third: drop template"
    assert "templates/web.service.j2" not in snap.files
    assert snap.files["inventory/services.toml"] == b"[services.db]\n"
    assert fetch.read_revision(cache, second_rev).summary == "second"


def test_fetch_tag_and_commit_ids(daemon: str, remote: Remote, cache: Path) -> None:
    first = git(remote.work, "rev-parse", "HEAD")
    git(remote.work, "tag", "-a", "v1", "-m", "release 1")
    git(remote.work, "tag", "light")
    remote.commit({"inventory/hosts.toml": "[hosts.h2]\n"}, "second")
    remote.push("main", "--tags")
    assert fetch.fetch(daemon, "v1", cache).revision == first  # annotated tag peeled
    assert fetch.fetch(daemon, "light", cache).revision == first
    assert fetch.fetch(daemon, "refs/tags/v1", cache).revision == first
    assert fetch.fetch(daemon, first, cache).revision == first
    assert fetch.fetch(daemon, first[:9], cache).revision == first
    assert fetch.fetch(daemon, "main", cache).summary == "second"


def test_full_commit_id_is_fetched_into_an_empty_cache(
    daemon: str, remote: Remote, cache: Path
) -> None:
    rev = git(remote.work, "rev-parse", "HEAD")
    assert fetch.fetch(daemon, rev, cache).revision == rev


def test_local_path_remote(remote: Remote, cache: Path) -> None:
    assert fetch.fetch(str(remote.bare), "main", cache).summary == "first: add web"


def test_many_files_in_nested_directories(remote: Remote, cache: Path) -> None:
    files: dict[str, str | None] = {
        f"templates/group{i % 7}/sub{i % 3}/unit{i:04d}.service.j2": f"# {i}\n" for i in range(700)
    }
    remote.commit(files, "700 templates")
    remote.push()
    snap = fetch.fetch(str(remote.bare), "main", cache)
    assert len(snap.files) == 703
    assert snap.files["templates/group3/sub2/unit0689.service.j2"] == b"# 689\n"
    assert list(snap.files) == sorted(snap.files)


@pytest.mark.parametrize("ref", ["nope", "feature/x", "0123abcd", "a" * 40])
def test_unknown_ref(daemon: str, cache: Path, ref: str) -> None:
    err = fetch_error(daemon, cache, ref)
    assert f"cannot resolve ref '{ref}'" in str(err)
    assert "no such branch, tag or commit" in str(err)


@pytest.mark.parametrize("ref", ["", "-upload-pack=evil", "a b", "x..y", "main\nx", "HEAD@{1}"])
def test_invalid_ref_refused(daemon: str, cache: Path, ref: str) -> None:
    err = fetch_error(daemon, cache, ref)
    assert "not a valid branch, tag or commit name" in str(err)


def test_force_pushed_branch(daemon: str, remote: Remote, cache: Path) -> None:
    base = git(remote.work, "rev-parse", "HEAD")
    old = remote.commit({"inventory/hosts.toml": "[hosts.old]\n"}, "to be rewritten")
    remote.push()
    assert fetch.fetch(daemon, "main", cache).revision == old
    git(remote.work, "reset", "-q", "--hard", base)
    new = remote.commit({"inventory/hosts.toml": "[hosts.new]\n"}, "rewritten history")
    remote.push("--force", "main")
    snap = fetch.fetch(daemon, "main", cache)
    assert snap.revision == new
    assert snap.files["inventory/hosts.toml"] == b"[hosts.new]\n"
    # The rewritten-away revision stays readable for a rollback.
    assert fetch.read_revision(cache, old).files["inventory/hosts.toml"] == b"[hosts.old]\n"


# --- refused content ---------------------------------------------------------------------


def test_symlink_to_etc_shadow_refused(daemon: str, remote: Remote, cache: Path) -> None:
    (remote.work / "templates" / "evil.service.j2").symlink_to("/etc/shadow")
    remote.commit({}, "sneaky")
    remote.push()
    err = fetch_error(daemon, cache)
    assert "'templates/evil.service.j2'" in str(err)
    assert "symlink" in str(err)


def test_symlinked_directory_refused(remote: Remote, cache: Path) -> None:
    shutil.rmtree(remote.work / "inventory")
    (remote.work / "inventory").symlink_to("/etc")
    remote.commit({}, "inventory is a link")
    remote.push()
    err = fetch_error(str(remote.bare), cache)
    assert "cannot read 'inventory'" in str(err)


def test_symlink_outside_read_dirs_is_ignored(remote: Remote, cache: Path) -> None:
    (remote.work / "docs-link").symlink_to("/etc/shadow")
    remote.commit({}, "harmless link elsewhere")
    remote.push()
    assert "docs-link" not in fetch.fetch(str(remote.bare), "main", cache).files


def test_oversized_file_refused(remote: Remote, cache: Path) -> None:
    remote.commit({"templates/huge.j2": "#" * (fetch.MAX_FILE_BYTES + 1)}, "huge")
    remote.push()
    err = fetch_error(str(remote.bare), cache)
    assert "'templates/huge.j2'" in str(err)
    assert "larger than 1024 KiB" in str(err)


def test_inventory_limit_fits_a_large_fleet(remote: Remote, cache: Path) -> None:
    """10,000 services are ~1.3 MB of TOML: inventory files may reach 16 MiB, not more."""
    big = "#" * (fetch.MAX_FILE_BYTES + 1)
    remote.commit({"inventory/big.toml": big}, "big")
    remote.push()
    assert fetch.fetch(str(remote.bare), "main", cache).files["inventory/big.toml"] == big.encode()
    remote.commit({"inventory/big.toml": "#" * (fetch.MAX_INVENTORY_BYTES + 1)}, "huge")
    remote.push()
    err = fetch_error(str(remote.bare), cache)
    assert "'inventory/big.toml'" in str(err) and "larger than 16384 KiB" in str(err)


# --- network faults ----------------------------------------------------------------------


def test_unreachable_remote_is_one_clear_line(cache: Path) -> None:
    url = f"git://127.0.0.1:{free_port()}/config.git"
    started = time.monotonic()
    err = fetch_error(url, cache)
    assert time.monotonic() - started < 5
    assert str(err).startswith(f"cannot fetch repository '{url}': ")
    assert "Connection refused" in str(err)
    assert err.hint and "nothing on the host was changed" in err.hint


@pytest.mark.parametrize("scheme", ["git", "http"])
def test_hung_remote_times_out_within_the_bound(hung_port: int, cache: Path, scheme: str) -> None:
    started = time.monotonic()
    err = fetch_error(f"{scheme}://127.0.0.1:{hung_port}/config.git", cache, timeout=1.5)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 3.5
    # git's own HTTP low-speed limit or, as a backstop, the killed process group.
    assert "did not answer in time" in str(err) or "Operation too slow" in str(err)


def test_garbage_from_a_tcp_remote(garbage_port: int, cache: Path) -> None:
    err = fetch_error(f"git://127.0.0.1:{garbage_port}/config.git", cache)
    assert "cannot fetch repository" in str(err)
    assert "protocol error" in str(err)


def test_garbage_from_an_http_remote(http_port: int, cache: Path) -> None:
    err = fetch_error(f"http://127.0.0.1:{http_port}/config.git", cache)
    assert "cannot fetch repository" in str(err)
    assert "not valid" in str(err) or "not found" in str(err)


@pytest.mark.parametrize("path", ["auth/config.git", "config.git"])
def test_credentials_never_in_errors(http_port: int, cache: Path, path: str) -> None:
    url = f"http://deploy:s3cretT0ken@127.0.0.1:{http_port}/{path}"
    err = fetch_error(url, cache)
    assert "s3cretT0ken" not in str(err) and "s3cretT0ken" not in repr(err)
    assert "deploy" not in str(err)
    assert f"http://***@127.0.0.1:{http_port}/{path}" in str(err)
    if path.startswith("auth"):
        assert "Authentication failed" in str(err)


def test_read_revision_from_cache_while_remote_is_gone(
    daemon: str, remote: Remote, cache: Path
) -> None:
    snap = fetch.fetch(daemon, "main", cache)
    shutil.rmtree(remote.bare)
    assert fetch.read_revision(cache, snap.revision) == snap
    assert fetch.read_revision(cache, snap.revision[:10]).revision == snap.revision
    # A full commit id already cached needs no remote at all.
    assert fetch.fetch(daemon, snap.revision, cache) == snap
    err = fetch_error(daemon, cache)  # a branch must be fetched: clear error
    assert "cannot fetch repository" in str(err)


def test_read_revision_not_in_cache(cache: Path, remote: Remote) -> None:
    for revision in ("0" * 40, "not-a-sha"):
        with pytest.raises(SourceError, match="not in the cache"):
            fetch.read_revision(cache, revision)
    fetch.fetch(str(remote.bare), "main", cache)
    with pytest.raises(SourceError, match="cannot read revision '000000000000'"):
        fetch.read_revision(cache, "0" * 40)


def test_cache_dir_that_is_not_a_repository(tmp_path: Path, remote: Remote) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "file").write_text("x")
    with pytest.raises(SourceError, match="not empty and not a git repository"):
        fetch.fetch(str(remote.bare), "main", junk)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert fetch.fetch(str(remote.bare), "main", empty).summary == "first: add web"


# --- signed commits ----------------------------------------------------------------------


@dataclass
class Keys:
    signer: Path
    signer_fpr: str
    other: Path
    other_fpr: str
    trusted: Path  # holds only the signer's public key


def gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    proc = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--quiet", *args],
        input=data,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def new_key(home: Path, uid: str) -> str:
    home.mkdir(mode=0o700)
    gpg(home, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
    listing = gpg(home, "--with-colons", "--list-secret-keys").decode()
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[Keys]:
    if shutil.which("gpg") is None:
        pytest.fail("gpg is needed for the signed-commit tests")
    root = tmp_path / "g"  # short: gpg-agent's socket path must stay short
    root.mkdir()
    k = Keys(root / "s", "", root / "o", "", root / "t")
    try:
        k.signer_fpr = new_key(k.signer, "Signer <signer@example.com>")
        k.other_fpr = new_key(k.other, "Other <other@example.com>")
        k.trusted.mkdir(mode=0o700)
        gpg(k.trusted, "--import", data=gpg(k.signer, "--export", k.signer_fpr))
        yield k
    finally:
        for home in (k.signer, k.other, k.trusted):  # the agents these tests started
            if home.exists():
                subprocess.run(
                    ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False
                )


def signed_commit(remote: Remote, home: Path, fpr: str, message: str) -> str:
    (remote.work / "inventory" / "hosts.toml").write_text(f"# {message}\n")
    git(remote.work, "add", "-A")
    git(
        remote.work,
        "-c",
        f"user.signingkey={fpr}",
        "commit",
        "-q",
        "-S",
        "-m",
        message,
        env={"GNUPGHOME": str(home)},
    )
    remote.push()
    return git(remote.work, "rev-parse", "HEAD")


def test_signed_commit_verifies(daemon: str, remote: Remote, cache: Path, keys: Keys) -> None:
    rev = signed_commit(remote, keys.signer, keys.signer_fpr, "signed change")
    verify = fetch.Verification(keys.trusted)
    snap = fetch.fetch(daemon, "main", cache, verify=verify)
    assert (snap.revision, snap.summary) == (rev, "signed change")
    assert fetch.read_revision(cache, rev, verify=verify) == snap


def test_unsigned_commit_refused(daemon: str, remote: Remote, cache: Path, keys: Keys) -> None:
    rev = git(remote.work, "rev-parse", "HEAD")
    with pytest.raises(SourceError) as info:
        fetch.fetch(daemon, "main", cache, verify=fetch.Verification(keys.trusted))
    assert info.value.message == f"cannot verify commit '{rev[:12]}': unsigned"
    assert info.value.hint and str(keys.trusted) in info.value.hint


def test_commit_signed_by_unknown_key_refused(
    daemon: str, remote: Remote, cache: Path, keys: Keys
) -> None:
    rev = signed_commit(remote, keys.other, keys.other_fpr, "signed by a stranger")
    verify = fetch.Verification(keys.trusted)
    with pytest.raises(SourceError) as info:
        fetch.fetch(daemon, "main", cache, verify=verify)
    assert info.value.message.startswith(
        f"cannot verify commit '{rev[:12]}': signed by unknown key"
    )
    assert keys.other_fpr[-16:] in info.value.message
    with pytest.raises(SourceError, match="signed by unknown key"):
        fetch.read_revision(cache, rev, verify=verify)


def test_missing_keyring_refused(remote: Remote, cache: Path, tmp_path: Path) -> None:
    verify = fetch.Verification(tmp_path / "no-such-keyring")
    with pytest.raises(SourceError, match="no keyring"):
        fetch.fetch(str(remote.bare), "main", cache, verify=verify)


@pytest.mark.parametrize(
    ("url", "plain", "user", "password"),
    [
        ("https://h/c.git", "https://h/c.git", None, None),
        ("https://deploy:s3cret@h:8443/c.git", "https://h:8443/c.git", "deploy", "s3cret"),
        ("http://d%40x:p%3Aw%40rd@h/c.git", "http://h/c.git", "d@x", "p:w@rd"),
        ("https://tok@h/c.git", "https://h/c.git", "tok", ""),
        ("https://deploy:pa/ss@h/c.git", "https://h/c.git", "deploy", "pa/ss"),
        ("ssh://git@h/c.git", "ssh://git@h/c.git", None, None),
        ("git@h:c.git", "git@h:c.git", None, None),
    ],
)
def test_credentials_go_to_a_helper_not_the_command_line(
    url: str, plain: str, user: str | None, password: str | None
) -> None:
    got, options, env = credentials.split_credentials(url)
    assert got == plain
    assert all(not password or password not in o for o in options)
    if user is None:
        assert (options, env) == ([], {})
    else:
        host = plain.split("/")[2]
        assert env == {
            "RECONCILER_GIT_USERNAME": user,
            "RECONCILER_GIT_PASSWORD": password,
            "RECONCILER_GIT_PROTOCOL": plain.split(":")[0],
            "RECONCILER_GIT_HOST": host,
        }


def test_ssh_url_with_a_password_is_refused(cache: Path) -> None:
    err = fetch_error("ssh://deploy:s3cret@127.0.0.1:1/c.git", cache)
    assert "a password in an ssh URL" in str(err) and "s3cret" not in str(err)


def test_a_rendered_revision_reads_no_blob(remote: Remote, cache: Path) -> None:
    """Issue 13: on a render-cache hit the sync reads no blob of the commit. The cache here
    holds no blob at all (``--filter=blob:none``) and reads may not fetch one: reading the
    files fails, so a snapshot without them proves that none was read."""
    git(remote.bare, "config", "uploadpack.allowFilter", "true")
    subprocess.run(
        ["git", "clone", "-q", "--bare", "--filter=blob:none", f"file://{remote.bare}", str(cache)],
        check=True,
    )
    rev = git(remote.work, "rev-parse", "HEAD")
    seen: list[str] = []

    def rendered(revision: str) -> bool:
        seen.append(revision)
        return True

    snap = fetch.fetch(f"file://{remote.bare}", "main", cache, rendered=rendered)
    assert (snap.revision, snap.files, snap.summary, seen) == (rev, {}, "first: add web", [rev])
    assert fetch.read_revision(cache, rev, rendered=rendered).files == {}
    with pytest.raises(SourceError):  # the same read with the files wanted needs the blobs
        fetch.fetch(f"file://{remote.bare}", "main", cache)
