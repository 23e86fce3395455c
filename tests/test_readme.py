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


def toml_snippets() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", README, re.S)


def test_toml_snippets_are_a_valid_repository() -> None:
    """The Config repository format snippets, loaded by the real inventory models and
    rendered with this project's templates/ for every host they declare."""
    from reconciler.core import inventory, render, rollout

    snippets = toml_snippets()
    hosts = [s for s in snippets if "[hosts." in s or "[groups." in s]
    services = [s for s in snippets if "[services." in s]
    config_files = [s for s in snippets if s.startswith('[files."')]
    waves = [s for s in snippets if "[rollout" in s]
    assert len(hosts) == 1 and len(services) == 1 and len(waves) == 1, snippets
    assert len(snippets) == 3 + len(config_files), snippets
    files = {
        "inventory/hosts.toml": hosts[0].encode(),
        "inventory/services.toml": "\n".join([services[0], *config_files]).encode(),
        "inventory/rollout.toml": waves[0].encode(),
    }
    templates = {p.name: p.read_text() for p in (REPO / "templates").iterdir()}
    files.update({f"templates/{n}": t.encode() for n, t in templates.items()})
    inv = inventory.load(files)
    definition = rollout.parse(files, inv)
    assert definition is not None and definition.wave_of("web1").name == "canary"
    rendered = []
    for host in inv.hosts_file.hosts:
        rendered += [u.name for u in render.render(inv.select(host), templates)]
    assert {"web.service", "readings-etl.service", "readings-etl.timer"} <= set(rendered)
    assert {"echo.socket", "echo-server.service"} <= set(rendered)
    written = [f.path for h in inv.hosts_file.hosts for f in inv.select_files(h)]
    assert "/etc/greeter/greeting.conf" in written


def test_no_snippet_service_is_named_like_an_own_unit() -> None:
    from reconciler.core.inventory import OWN_UNIT_STEMS

    named = {n for s in toml_snippets() for n in re.findall(r"^\[services\.([\w-]+)", s, re.M)}
    assert named and not named & OWN_UNIT_STEMS


def _help(command: tuple[str, ...]) -> str:
    proc = subprocess.run(
        [RECONCILER, *command, "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, (command, proc.stderr)
    return proc.stdout


def referenced_commands() -> list[tuple[str, ...]]:
    """Every ``reconciler ...`` command the README shows (code spans and shell blocks):
    its leading command words, then every ``--flag`` after them."""
    blocks = re.findall(r"```\w*\n(.*?)```", README, re.S)
    prose = re.sub(r"```\w*\n.*?```", "", README, flags=re.S)
    spans = [part for line in prose.splitlines() for part in line.split("`")[1::2]]
    lines = [line for block in blocks[:-1] for line in block.splitlines()]  # not the drawing
    found = set()
    for text in [*spans, *lines]:
        for match in re.finditer(r"(?:^|[\s/])reconciler( [^#\n]*|$)", text):
            tokens = re.split(r"[\s|\[\]]+", match[1].replace("\\|", "|").strip())
            words = []
            for token in tokens:
                if not re.fullmatch(r"[a-z][\w-]*", token):
                    break
                words.append(token)
            flags = [t.split("=")[0] for t in tokens if re.fullmatch(r"--[\w-]+(=\S*)?", t)]
            found.add((*words, *flags))
    return sorted(found)


def _is_command(words: tuple[str, ...]) -> bool:
    proc = subprocess.run(
        [RECONCILER, *words, "--help"], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0 and proc.stdout.startswith(f"usage: reconciler {' '.join(words)} ")


@pytest.mark.parametrize("words", referenced_commands(), ids=" ".join)
def test_every_referenced_command_and_flag_exists(words: tuple[str, ...]) -> None:
    """``reconciler sync --force``: the command runs ``--help``, the flag is in it."""
    path = [w for w in words if not w.startswith("-")]
    flags = [w for w in words if w.startswith("--")]
    command: tuple[str, ...] = ()
    for word in path:  # the longest prefix that is a command (the rest are arguments)
        if not _is_command((*command, word)):
            break
        command += (word,)
    if not command:
        assert not path, f"'reconciler {' '.join(words)}': no such command"
    texts = [_help(command)]  # and its alternatives: `backup list|verify|restore [--to]`
    for word in path[len(command) :]:
        for parent in (command, command[:-1]):
            if _is_command((*parent, word)):
                texts.append(_help((*parent, word)))
    for flag in flags:
        assert any(flag in t for t in texts), f"'reconciler {' '.join(words)}': no {flag}"


def test_message_ids_table_matches_the_journal_module() -> None:
    """Operators look MESSAGE_IDs up in the README (they used to be only in the source)."""
    from reconciler.host.journal import EVENTS

    table = README.split("| event kind (`RECONCILER_EVENT`) | `MESSAGE_ID` |", 1)[1]
    rows = re.findall(r"^\| `([a-z_.]+)` \| `([0-9a-f]{32})` \|$", table.split("\n\n", 1)[0], re.M)
    assert dict(rows) == EVENTS and len(rows) == len(EVENTS)
