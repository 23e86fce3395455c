"""A Debian 13 (trixie: systemd 257, Podman 5) root for the disposable host (runs debootstrap).

The suite's hosts boot the machine's own ``/`` (Debian 12, systemd 252); a host booted on
this root instead runs what Debian 13, Fedora and RHEL 10 users run, and Podman's Quadlet.
It is built once into the work tree's ignored ``.roots/trixie`` (``.tmp`` while building,
then a stamp and an atomic rename) and rebuilt when missing or when its stamp (the package
list) changes. The mirror comes from the machine's own apt sources, read at build time; the
downloaded packages are kept in ``$RECONCILER_DEB_CACHE`` (default ``.roots/debs``), so a
rebuild (a clean checkout in CI) unpacks instead of downloading (measured: 76 s to 398 s
from deb.debian.org, depending on the network).

The root's own ``python3`` runs the reconciler inside (its Debian packages: the venv bound
into a 252 host is built for the machine's Python), with the checkout on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from reconciler.errors import SandboxError

SUITE = "trixie"
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "python3", "git", "podman", "crun", "conmon",
    "netavark", "aardvark-dns", "busybox-static", "procps",  # procps: kill, ps
    # what the reconciler imports, from Debian (their versions run it; pip's floors are
    # for installs, not for this test root)
    "python3-jinja2", "python3-pydantic", "python3-jeepney", "python3-git", "python3-requests",
)  # fmt: skip
REPO = Path(__file__).resolve().parents[2]
ROOTS = REPO / ".roots"
STAMP = ".reconciler-root"
# Podman in a disposable host: vfs ("'overlay' is not supported over overlayfs, a
# mount_program is required"); containers use Network=none or host (the default bridge
# needs nftables' nft, not in the root).
STORAGE_CONF = '[storage]\ndriver = "vfs"\nrunroot = "/run/containers/storage"\n' \
    'graphroot = "/var/lib/containers/storage"\n'  # fmt: skip
CONTAINERS_CONF = '[engine]\nevents_logger = "file"\ncgroup_manager = "systemd"\n'


def mirror(sources: Path = Path("/etc/apt")) -> str:
    """The first Debian mirror of this machine's apt sources (deb822 or one-line)."""
    files = sorted(sources.glob("sources.list.d/*.sources")) + [sources / "sources.list"]
    files += sorted(sources.glob("sources.list.d/*.list"))
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"^\s*(?:URIs:|deb)\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M):
            url = match.group(1)
            if "security" not in url and url.startswith(("http://", "https://", "file:")):
                return url
    raise SandboxError(
        "cannot build the Debian 13 root: no Debian mirror in /etc/apt/sources.list*",
        "add a deb.debian.org (or local mirror) entry to the machine's apt sources",
    )


def stamp_text() -> str:
    return json.dumps({"suite": SUITE, "packages": sorted(PACKAGES), "conf": STORAGE_CONF})


def path(name: str = SUITE) -> Path:
    return ROOTS / name


def _built(final: Path) -> bool:
    return (final / STAMP).is_file() and (final / STAMP).read_text() == stamp_text()


def ensure(name: str = SUITE, *, quiet: bool = True) -> Path:
    """The built root (built now when missing or stale: about 70-80 s and 600 MB). One
    build at a time: a second caller (ci/test's early build, a test) waits for the first."""
    if name != SUITE:
        raise SandboxError(f"unknown test root '{name}' (known: {SUITE})")
    final = path(name)
    if _built(final):
        return final
    ROOTS.mkdir(exist_ok=True)
    with open(ROOTS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return final if _built(final) else _build(final, quiet)


def _build(final: Path, quiet: bool) -> Path:
    if shutil.which("debootstrap") is None:
        raise SandboxError(
            "cannot build the Debian 13 root: debootstrap not found",
            "apt-get install debootstrap (ci/test installs it)",
        )
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cache = Path(os.environ.get("RECONCILER_DEB_CACHE") or ROOTS / "debs").absolute()
    cache.mkdir(parents=True, exist_ok=True)
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
            f"--cache-dir={cache}", SUITE, str(tmp), mirror()]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=quiet, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout or "").strip().splitlines()[-3:] if quiet else []
        raise SandboxError(
            f"cannot build the Debian 13 root: debootstrap exit {proc.returncode}: "
            + " / ".join(tail),
            f"see {tmp}/debootstrap/debootstrap.log",
        )
    _configure(tmp)
    (tmp / STAMP).write_text(stamp_text())
    old = final.with_name(final.name + ".old")
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    if not quiet:
        print(f"built {final} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return final


def _configure(root: Path) -> None:
    """What a disposable host needs on top of minbase: Podman's storage driver, apt off."""
    conf = root / "etc/containers"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "storage.conf").write_text(STORAGE_CONF)
    (conf / "containers.conf").write_text(CONTAINERS_CONF)
    (root / "etc/containers/systemd").mkdir(exist_ok=True)
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m reconciler.devtools.rootfs``: build (or keep) the root; print its path."""
    parser = argparse.ArgumentParser(prog="python -m reconciler.devtools.rootfs")
    parser.add_argument("name", nargs="?", default=SUITE)
    opts = parser.parse_args(argv)
    started = time.monotonic()
    try:
        root = ensure(opts.name, quiet=True)
    except SandboxError as exc:
        print(f"rootfs: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"root": str(root), "sec": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
