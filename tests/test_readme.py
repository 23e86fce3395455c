"""The README's commands are the real ones: set-up commands, CI entry, every CLI command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
RECONCILER = str(Path(sys.executable).parent / "reconciler")


def setup_commands() -> list[str]:
    """The shell blocks of the 'Set up' section, in order: demo, then tests."""
    section = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_two_setup_commands_demo_then_tests() -> None:
    demo, tests = setup_commands()
    assert demo.endswith("reconciler demo")
    assert "pip install . " in demo  # the wheel, not the checkout (tests/integration/test_wheel.py)
    assert tests == "./ci/test"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    run = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert run[-1] == f"exec {setup_commands()[1]}"
    assert (REPO / "ci" / "test").stat().st_mode & 0o111


def test_no_placeholders_left() -> None:
    assert not re.search(r"\b[A-Z]+_TABLE\b", README)


def documented_commands() -> list[str]:
    """Commands named in the first column of the README's command table."""
    names: set[str] = set()
    table = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    for row in re.findall(r"^\| (`reconciler [^|]*)\|", table, re.M):
        names.update(re.findall(r"`reconciler ([a-z-]+)", row))
        names.update(re.findall(r"/ `([a-z-]+)`", row))
    return sorted(names)


COMMANDS = documented_commands()


def test_the_command_table_lists_every_command() -> None:
    proc = subprocess.run([RECONCILER, "--help"], capture_output=True, text=True, check=True)
    listed = set(re.findall(r"^    ([a-z-]+)\s", proc.stdout, re.M))
    assert listed - {"version"} <= set(COMMANDS), listed - {"version"} - set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_documented_command_exists(command: str) -> None:
    proc = subprocess.run(
        [RECONCILER, command, "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: reconciler {command}")
