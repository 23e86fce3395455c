"""Supply-chain faults: a dependency release with a known advisory must not be admitted.

``jinja2>=3.1`` admitted 3.1.4, where a crafted template file name runs code in the
``plan`` process (CVE-2024-56201), and 3.1.5, whose sandbox ``|attr`` escapes through
``str.format`` (CVE-2025-27516). The declared minimums in pyproject.toml are read and
compared with a table of advisories: a new advisory is a new row here and a raised minimum.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from tests.faults.conftest import Report

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

# package -> (advisory, first fixed release, what it allows); packages the reconciler uses
# directly or through requests (which admits vulnerable urllib3/idna/certifi releases).
ADVISORIES: dict[str, list[tuple[str, str, str]]] = {
    "jinja2": [
        ("CVE-2024-22195", "3.1.3", "xmlattr filter injects attributes"),
        ("CVE-2024-34064", "3.1.4", "xmlattr filter accepts keys with non-attribute chars"),
        ("CVE-2024-56201", "3.1.5", "template file name runs code in the compiler"),
        ("CVE-2024-56326", "3.1.5", "sandbox escape through str.format references"),
        ("CVE-2025-27516", "3.1.6", "sandbox escape through |attr and str.format"),
    ],
    "requests": [
        ("CVE-2023-32681", "2.31.0", "Proxy-Authorization leaked to the destination"),
        ("CVE-2024-35195", "2.32.0", "verify=False sticks to the connection pool"),
        ("CVE-2024-47081", "2.32.4", ".netrc credentials sent to the wrong host"),
        ("CVE-2026-25645", "2.33.0", "predictable temp file in extract_zipped_paths"),
    ],
    "urllib3": [
        ("CVE-2023-43804", "2.0.6", "Cookie header kept on a cross-origin redirect"),
        ("CVE-2023-45803", "2.0.7", "request body kept on a 303 redirect"),
        ("CVE-2024-37891", "2.2.2", "Proxy-Authorization kept on a cross-origin redirect"),
        ("CVE-2025-50181", "2.5.0", "redirects not disabled at the PoolManager level"),
        ("CVE-2025-66418", "2.6.0", "unbounded chain of content decoders"),
        ("CVE-2025-66471", "2.6.0", "streaming decompression bomb"),
        ("CVE-2026-21441", "2.6.3", "decompression bomb through a redirect body"),
    ],
    "idna": [("CVE-2024-3651", "3.7", "quadratic time on crafted input to idna.encode")],
    "certifi": [("CVE-2024-39689", "2024.7.4", "GLOBALTRUST root certificates still trusted")],
    "pydantic": [("CVE-2024-3772", "2.4.0", "ReDoS in email validation")],
    "gitpython": [
        ("CVE-2023-40590", "3.1.33", "git resolved from the current directory on Windows"),
        ("CVE-2023-41040", "3.1.35", "path traversal in reference names"),
        ("CVE-2024-22190", "3.1.41", "untrusted search path on Windows"),
    ],
    "ansible-core": [  # the bench extra: run as root against a disposable host
        ("CVE-2024-8775", "2.17.6", "vaulted variables shown by include_vars/debug"),
        ("CVE-2024-9902", "2.17.7", "user module writes any file as an unprivileged user"),
        ("CVE-2024-11079", "2.17.7", "unsafe tagging bypassed through hostvars"),
    ],
    "psycopg": [],
    "jeepney": [],
}


def declared() -> dict[str, Requirement]:
    """Runtime requirements and optional extras (not the test tooling) by package name."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    lines = [*project["dependencies"], *(r for k, v in extras.items() if k != "test" for r in v)]
    return {(req := Requirement(line)).name.lower(): req for line in lines}


def minimum(req: Requirement) -> Version | None:
    found = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(found) if found else None


def test_declared_minimums_have_no_known_advisory(fault_report: Report) -> None:
    problems = []
    requirements = declared()
    for name, req in sorted(requirements.items()):
        floor = minimum(req)
        if name not in ADVISORIES:
            problems.append(f"{name}: not in the advisory table (check it, add a row)")
        elif floor is None:
            problems.append(f"{name}: no minimum version declared")
        else:
            for advisory, fixed, what in ADVISORIES[name]:
                if floor < Version(fixed):
                    problems.append(f"{name}>={floor} admits {advisory} ({what}; fixed {fixed})")
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue  # an extra not installed here (bench)
        if floor is not None and installed < floor:
            problems.append(f"{name} {installed} installed, below the declared {floor}")
    fault_report(
        "dependency with a known advisory (jinja2 < 3.1.6: CVE-2025-27516)",
        f"every minimum in pyproject.toml is past its advisories ({len(requirements)} "
        f"packages, {sum(len(v) for v in ADVISORIES.values())} advisories)",
        None,
        not problems,
    )
    assert not problems, problems
    assert {"jinja2", "requests", "urllib3", "pydantic", "jeepney"} <= set(requirements)


def test_package_without_its_data_folders(fault_report: Report, tmp_path: Path) -> None:
    """An install that lost ``units/``, ``templates/``, ``inventory/`` (a wheel built without
    them, as ``pip install .`` gave before they were package data): one line, no traceback,
    before a host boots or anything is written."""
    import shutil
    import subprocess
    import sys
    import time

    shutil.copytree(
        PYPROJECT.parent / "reconciler",
        tmp_path / "site" / "reconciler",
        ignore=shutil.ignore_patterns("__pycache__", "data"),
    )
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(tmp_path / "site")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", "demo"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    seconds = time.monotonic() - started
    lines = proc.stderr.strip().splitlines()
    clear = proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr
    clear = clear and "cannot find the reconciler's 'inventory' folder" in lines[0]
    fault_report(
        "package installed without its data folders (units/, templates/, inventory/)",
        f"one line, exit {proc.returncode} in {seconds:.1f} s: {lines[0] if lines else ''}",
        None,
        clear,
    )
    assert clear, proc.stderr
