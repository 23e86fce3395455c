"""``reconciler job backup`` and ``reconciler backup list|verify|restore`` as whole processes on
real files; damaged, forged and hostile archives; the job as a oneshot unit under systemd."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.devtools import sandbox
from reconciler.errors import JobError
from reconciler.jobs.backup import archive, restore
from tests.conftest import PYTHON_INSIDE, SRC_INSIDE

CLI = str(Path(sys.executable).parent / "reconciler")
MiB = 1 << 20


# --- helpers ---------------------------------------------------------------------------------


class JournalSink:
    """A datagram socket standing in for journald (``$RECONCILER_JOURNAL_SOCKET``)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="jsink-")  # short: AF_UNIX paths max 108 bytes
        self.path = os.path.join(self.dir, "socket")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def entries(self) -> list[dict[str, str]]:
        found = []
        while True:
            try:
                payload = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return found
            entry = {}
            for line in payload.decode().split("\n"):  # entries here hold no multi-line values
                key, sep, value = line.partition("=")
                if sep:
                    entry[key] = value
            found.append(entry)

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sink() -> Iterator[JournalSink]:
    s = JournalSink()
    yield s
    s.close()


def run(
    *argv: str,
    config: Path,
    state: Path,
    sink: JournalSink | None = None,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    full_env["RECONCILER_JOURNAL_SOCKET"] = sink.path if sink else "/nonexistent/socket"
    full_env.update(env or {})
    return subprocess.run(
        [CLI, *argv, "--config", str(config), "--state-dir", str(state)],
        **({"stdout": subprocess.PIPE, "stderr": subprocess.PIPE} | kwargs),
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )


def write_config(path: Path, sources: list[dict[str, str]], **settings: object) -> Path:
    lines = ["[backup]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    for source in sources:
        lines.append("[[backup.sources]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in source.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def build_tree(root: Path, big: int = 3 * MiB) -> None:
    """Nested dirs, symlinks, an empty file, a 0600 file, odd mtimes, a few MB of random."""
    rng = random.Random(5)
    (root / "etc/app/conf.d").mkdir(parents=True)
    (root / "etc/app/app.conf").write_text("port = 8080\n")
    (root / "etc/app/conf.d/10-extra.conf").write_text("extra = true\n")
    (root / "empty").write_bytes(b"")
    (root / "secret.key").write_bytes(rng.randbytes(64))
    (root / "secret.key").chmod(0o600)
    (root / "bin").mkdir()
    (root / "bin/run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "bin/run.sh").chmod(0o750)
    (root / "data").mkdir()
    (root / "data/blob.bin").write_bytes(rng.randbytes(big))
    (root / "naïve résumé.txt").write_text("unicode name\n")
    os.symlink("etc/app/app.conf", root / "current.conf")
    os.symlink("/nonexistent/target", root / "dangling")
    os.utime(root / "dangling", ns=(1, 1_111_111_111_000_000_001), follow_symlinks=False)
    (root / "odd-mtime").write_text("odd\n")
    os.utime(root / "odd-mtime", ns=(1, 1_234_567_890_123_456_789))
    (root / "before-1970").write_text("old\n")
    os.utime(root / "before-1970", ns=(1, -86_400_123_456_789))
    (root / "private").mkdir(mode=0o700)
    (root / "private/token").write_text("t\n")
    (root / "readonly").mkdir()
    (root / "readonly/file").write_text("r\n")
    (root / "readonly").chmod(0o555)
    os.mkfifo(root / "pipe")  # not archived: counted as skipped
    os.utime(root / "etc/app", ns=(1, 1_500_000_000_987_654_321))
    os.utime(root, ns=(1, 1_600_000_000_000_000_007))


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything restore must reproduce, per path: type, mode, owner, mtime, content."""
    out: dict[str, tuple[object, ...]] = {}
    paths = [root, *sorted(root.rglob("*"))]
    for path in paths:
        st = os.lstat(path)
        if stat.S_ISFIFO(st.st_mode):
            continue
        if stat.S_ISLNK(st.st_mode):
            content: object = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content = None
        rel = "." if path == root else str(path.relative_to(root))
        out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size, content)
    return out


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(config, state dir, source dir) with the test tree and keep_last = 3."""
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src)
    config = write_config(
        tmp_path / "config.toml", [{"name": "data", "path": str(src)}], keep_last=3
    )
    return config, tmp_path / "state", src


def only_archive(state: Path) -> Path:
    archives = archive.list_archives(state / "backups")
    assert len(archives) == 1
    return archives[0].path


# --- backup, list, verify, restore -----------------------------------------------------------


def test_backup_then_restore_is_byte_identical(
    setup: tuple[Path, Path, Path], tmp_path: Path, sink: JournalSink
) -> None:
    config, state, src = setup
    before = snapshot(src)
    job = run("job", "backup", config=config, state=state, sink=sink)
    assert job.returncode == 0, job.stderr
    assert "backed up 'data'" in job.stdout and "skipped 1 special files" in job.stdout

    listing = run("backup", "list", "--json", config=config, state=state)
    assert listing.returncode == 0, listing.stderr
    (entry,) = json.loads(listing.stdout)
    assert entry["source"] == "data" and entry["complete"] is True
    path = Path(entry["path"])
    assert path.name.startswith("data-") and path.name.endswith(".tar.gz")
    for file in (path, Path(f"{path}.sha256"), Path(f"{path}.manifest.json")):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    for folder in (state / "backups", state / "backups/data"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(os.listdir(path.parent)) == sorted(
        [path.name, f"{path.name}.sha256", f"{path.name}.manifest.json"]
    )
    assert "data-" in run("backup", "list", config=config, state=state).stdout

    verify = run("backup", "verify", path.name, config=config, state=state)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith(f"ok    {path.name}")

    out = tmp_path / "restored"
    restored = run("backup", "restore", path.name, "--to", str(out), config=config, state=state)
    assert restored.returncode == 0, restored.stderr
    assert snapshot(out) == before
    assert not (out / "pipe").exists()
    assert snapshot(src) == before  # the backup itself changed nothing

    (entry_,) = [e for e in sink.entries() if e.get("RECONCILER_EVENT") == "job.backup"]
    assert entry_["MESSAGE_ID"] == "eab3ca8d7dc34e8a9585ac8d22af2ac8"
    assert entry_["PRIORITY"] == "6"
    assert entry_["RECONCILER_ARCHIVES"] == "1"
    assert int(entry_["RECONCILER_FILES"]) == 11
    assert int(entry_["RECONCILER_BYTES_IN"]) > 3 * MiB
    assert int(entry_["RECONCILER_BYTES_OUT"]) == path.stat().st_size
    assert entry_["RECONCILER_SKIPPED_SPECIAL"] == "1"
    assert int(entry_["RECONCILER_DURATION_MS"]) >= 0


def test_restore_to_the_original_path_needs_force(setup: tuple[Path, Path, Path]) -> None:
    config, state, src = setup
    before = snapshot(src)
    assert run("job", "backup", config=config, state=state).returncode == 0
    name = only_archive(state).name
    (src / "etc/app/app.conf").write_text("port = 9999\n")  # the damage to undo
    (src / "data/blob.bin").unlink()

    refused = run("backup", "restore", name, config=config, state=state)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"reconciler backup: cannot restore into '{src}': it is not empty "
        "(hint: pass --force to overwrite what is there, or --to an empty directory)"
    ]
    forced = run("backup", "restore", name, "--force", config=config, state=state)
    assert forced.returncode == 0, forced.stderr
    assert snapshot(src) == before


def test_verify_detects_a_flipped_byte(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    config, state, _ = setup
    assert run("job", "backup", config=config, state=state).returncode == 0
    path = only_archive(state)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    verify = run("backup", "verify", config=config, state=state)
    assert verify.returncode == 1
    assert f"BAD   {path.name}: archive digest mismatch" in verify.stdout
    assert verify.stderr.startswith("reconciler backup: cannot verify archive")
    assert "Traceback" not in verify.stderr
    report = json.loads(run("backup", "verify", "--json", config=config, state=state).stdout)
    assert report[0]["ok"] is False

    out = tmp_path / "restored"
    restored = run("backup", "restore", path.name, "--to", str(out), config=config, state=state)
    assert restored.returncode == 1
    assert "archive digest mismatch" in restored.stderr
    assert not out.exists()


def test_verify_detects_a_tampered_manifest(setup: tuple[Path, Path, Path]) -> None:
    config, state, _ = setup
    assert run("job", "backup", config=config, state=state).returncode == 0
    path = only_archive(state)
    manifest_path = Path(f"{path}.manifest.json")
    manifest = json.loads(manifest_path.read_text())
    member = next(m for m in manifest["members"] if m["path"] == "secret.key")
    member["mode"] = 0o644
    manifest_path.write_text(json.dumps(manifest))

    verify = run("backup", "verify", path.name, config=config, state=state)
    assert verify.returncode == 1
    assert "manifest digest mismatch" in verify.stdout
    assert "member 'secret.key' differs from the manifest: mode" in verify.stdout


def test_verify_checks_every_member_even_with_forged_digests(
    setup: tuple[Path, Path, Path],
) -> None:
    """Someone rewrote the manifest and its digest line: the members still disagree."""
    config, state, _ = setup
    assert run("job", "backup", config=config, state=state).returncode == 0
    path = only_archive(state)
    manifest_path = Path(f"{path}.manifest.json")
    manifest = json.loads(manifest_path.read_text())
    member = next(m for m in manifest["members"] if m["path"] == "data/blob.bin")
    member["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    lines = Path(f"{path}.sha256").read_text().splitlines()
    digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
    Path(f"{path}.sha256").write_text(f"{lines[0]}\n{digest}  {manifest_path.name}\n")

    verify = run("backup", "verify", path.name, config=config, state=state)
    assert verify.returncode == 1
    assert "digest mismatch" not in verify.stdout
    assert "member 'data/blob.bin' differs from the manifest: sha256" in verify.stdout


# --- hostile archives ------------------------------------------------------------------------


def forge(folder: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """An archive with consistent manifest and digests, as a hostile writer would make it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "evil-20250101T000000Z.tar.gz"
    entries = []
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, __import__("io").BytesIO(data) if info.isreg() else None)
            kind = restore.kind_of(info)
            entry: dict[str, Any] = {
                "path": info.name,
                "type": kind,
                "mode": info.mode,
                "uid": info.uid,
                "gid": info.gid,
                "mtime_ns": info.mtime * 10**9,
            }
            if kind == "file":
                entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
            if kind == "symlink":
                entry["target"] = info.linkname
            entries.append(entry)
    manifest = json.dumps({"format": 1, "source": {"name": "evil"}, "members": entries}).encode()
    Path(f"{path}.manifest.json").write_bytes(manifest)
    digests = (
        f"{restore.file_sha256(path)}  {path.name}\n"
        f"{hashlib.sha256(manifest).hexdigest()}  {path.name}.manifest.json\n"
    )
    Path(f"{path}.sha256").write_text(digests)
    return path


def info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname, member.mode, member.mtime = kind, linkname, 0o644, 1_700_000_000
    return member


HOSTILE = {
    "dot-dot": ([(info("../escaped"), b"x")], "unsafe member '../escaped': path with '..'"),
    "absolute": ([(info("/tmp/abs-escape"), b"x")], "absolute path"),
    "through-symlink": (
        [(info("link", tarfile.SYMTYPE, "OUTSIDE"), b""), (info("link/planted"), b"x")],
        "unsafe member 'link/planted': path goes through symlink 'link'",
    ),
    "device": ([(info("null", tarfile.CHRTYPE), b"")], "device file members are never restored"),
    "hard-link": ([(info("h", tarfile.LNKTYPE, "/etc/shadow"), b"")], "hard link members"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_restore_refuses_hostile_members(case: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    members, message = HOSTILE[case]
    for member, _ in members:
        member.linkname = member.linkname.replace("OUTSIDE", str(outside))
    path = forge(tmp_path / "dest/evil", members)
    report = restore.verify(path)
    assert not report.ok and message in report.problems[0]
    target = tmp_path / "work/target"
    with pytest.raises(JobError) as exc:
        restore.restore(path, target)
    assert message in str(exc.value)
    assert not target.exists()
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "work/escaped").exists()


# --- retention, crashes, docker --------------------------------------------------------------


def test_retention_keeps_the_last_n(tmp_path: Path, sink: JournalSink) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("x")
    config = write_config(tmp_path / "c.toml", [{"name": "data", "path": str(src)}], keep_last=2)
    state = tmp_path / "state"
    names = []
    for _ in range(4):
        assert run("job", "backup", config=config, state=state, sink=sink).returncode == 0
        names.append(archive.list_archives(state / "backups")[-1].name)
    left = [a.name for a in archive.list_archives(state / "backups")]
    assert left == names[-2:]
    assert len(set(names)) == 4  # same-second runs still get distinct names
    assert sorted(os.listdir(state / "backups/data")) == sorted(
        n + s for n in left for s in ("", ".sha256", ".manifest.json")
    )
    deleted = [e["RECONCILER_DELETED"] for e in sink.entries()]
    assert deleted == ["0", "0", "1", "1"]


def test_same_second_archives_keep_their_order(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    made = []
    for _ in range(3):
        written = archive.write_archive(
            "data", src, tmp_path / "dest", compression="none", now=now, origin={}
        )
        made.append(written.path.name)
        if len(made) == 2:
            archive.delete_archive(tmp_path / "dest/data" / made[0])  # a number is never reused
    assert made == [
        "data-20250102T030405Z.tar",
        "data-20250102T030405Z-2.tar",
        "data-20250102T030405Z-3.tar",
    ]
    listed = archive.list_archives(tmp_path / "dest")
    assert [(a.name, a.seq) for a in listed] == [(made[1], 2), (made[2], 3)]


def test_a_crash_mid_write_leaves_only_a_temp_file(tmp_path: Path, sink: JournalSink) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(random.Random(1).randbytes(24 * MiB))
    slow = write_config(
        tmp_path / "xz.toml", [{"name": "data", "path": str(src)}], compression="xz"
    )
    state = tmp_path / "state"
    folder = state / "backups/data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env["RECONCILER_JOURNAL_SOCKET"] = "/nonexistent/socket"
    argv = [CLI, "job", "backup", "--config", str(slow), "--state-dir", str(state)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (folder.is_dir() and any(n.endswith(".tmp") for n in os.listdir(folder))):
            assert proc.poll() is None and time.monotonic() < deadline, "no temp file seen"
            time.sleep(0.005)
        time.sleep(0.2)  # well inside the write
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    leftovers = os.listdir(folder)
    assert leftovers and all(n.startswith(".") and n.endswith(".tmp") for n in leftovers)
    assert archive.list_archives(state / "backups") == []

    fast = write_config(tmp_path / "gz.toml", [{"name": "data", "path": str(src)}])
    again = run("job", "backup", config=fast, state=state, sink=sink)
    assert again.returncode == 0, again.stderr
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]
    assert restore.verify(only_archive(state)).ok
    (entry,) = sink.entries()
    assert entry["RECONCILER_LEFTOVERS_REMOVED"] == str(len(leftovers))


def test_missing_docker_engine_is_one_clear_line(tmp_path: Path, sink: JournalSink) -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI on this machine (the 'not installed' case is tested below)")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    volume = f"reconciler-test-{uuid.uuid4().hex[:8]}"
    sources = [{"name": "db", "docker_volume": volume}, {"name": "data", "path": str(src)}]
    config = write_config(tmp_path / "c.toml", sources)
    state = tmp_path / "state"
    job = run("job", "backup", config=config, state=state, sink=sink)
    assert job.returncode == 1
    (line,) = job.stderr.strip().splitlines()
    assert line.startswith(f"reconciler job: cannot resolve docker volume '{volume}': ")
    # No engine here: the CLI cannot reach it. With an engine, the volume is just missing.
    assert "the Docker engine is not running" in line or "no such volume" in line
    assert "(1 of 2 sources failed)" in line
    # The other source was still backed up.
    assert [a.source for a in archive.list_archives(state / "backups")] == ["data"]
    (entry,) = sink.entries()
    assert entry["PRIORITY"] == "3" and entry["RECONCILER_FAILED_SOURCES"] == "db"
    assert entry["RECONCILER_ERROR"].startswith(f"cannot resolve docker volume '{volume}'")


def test_missing_docker_cli_is_one_clear_line(tmp_path: Path, sink: JournalSink) -> None:
    config = write_config(tmp_path / "c.toml", [{"name": "db", "docker_volume": "pgdata"}])
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = {"PATH": str(empty)}
    job = run("job", "backup", config=config, state=tmp_path / "s", sink=sink, env=env)
    assert job.returncode == 1
    assert job.stderr.strip().splitlines() == [
        "reconciler job: cannot resolve docker volume 'pgdata': the docker CLI is not installed "
        "(not on PATH) (hint: install docker, or back up the directory as a path source)"
    ]


def test_unknown_config_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[backup]\nkeep_lats = 3\n")
    job = run("job", "backup", config=config, state=tmp_path / "s")
    assert job.returncode == 2  # the README: 2 for bad usage or configuration
    assert job.stderr.startswith(
        f"reconciler job: cannot read config '{config}': backup.keep_lats: unknown key"
    )
    assert not (tmp_path / "s").exists()


def test_progress_line_on_a_terminal(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(random.Random(2).randbytes(12 * MiB))
    config = write_config(tmp_path / "c.toml", [{"name": "data", "path": str(src)}])
    master, slave = pty.openpty()
    try:
        job = run("job", "backup", config=config, state=tmp_path / "s", stderr=slave, stdout=None)
        os.close(slave)
        output = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed and drained
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
    assert job.returncode == 0
    assert b"backup data: " in output and b"/12.0 MiB (100%)" in output


# --- inside the disposable host --------------------------------------------------------------


@pytest.mark.host
def test_backup_job_as_a_oneshot_unit(host: sandbox.Host, make_unit: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    src, etc, state = f"/srv/backup-src-{tag}", f"/etc/reconciler-test-{tag}", f"/var/lib/rt-{tag}"
    build_tree(host.root / src.lstrip("/"), big=MiB)
    (host.root / etc.lstrip("/")).mkdir(parents=True)
    config = f"{etc}/config.toml"
    write_config(host.root / config.lstrip("/"), [{"name": "srv", "path": src}], keep_last=2)
    unit = make_unit(
        "volume-backup.service",
        "[Unit]\nDescription=volume backup (test)\n\n[Service]\nType=oneshot\n"
        f"Environment=PYTHONPATH={SRC_INSIDE}\n"
        f"ExecStart={PYTHON_INSIDE} -m reconciler job backup --config {config} "
        f"--state-dir {state}\n",
    )
    host.systemctl("daemon-reload")
    try:
        host.systemctl("start", unit)  # a oneshot: returns when the run has finished
        result = host.systemctl("show", "-p", "Result", "-p", "ExecMainStatus", unit).stdout
        assert "Result=success" in result and "ExecMainStatus=0" in result
        dest = host.root / state.lstrip("/") / "backups"
        (made,) = archive.list_archives(dest)
        assert restore.verify(made.path).ok
        host.journal_sync()
        (entry,) = host.journal("RECONCILER_EVENT=job.backup", f"_SYSTEMD_UNIT={unit}")
        assert entry["MESSAGE_ID"] == "eab3ca8d7dc34e8a9585ac8d22af2ac8"
        assert entry["RECONCILER_ARCHIVES"] == "1" and entry["RECONCILER_FILES"] == "11"
        assert int(entry["RECONCILER_BYTES_IN"]) > MiB
        assert entry["RECONCILER_DEST"] == f"{state}/backups"
    finally:
        for path in (src, etc, state):
            shutil.rmtree(host.root / path.lstrip("/"), ignore_errors=True)
