"""Input faults: what an operator can push. Each one is a real commit to a real bare repo and
a whole ``reconciler sync`` process against the disposable systemd.

Every bad input must be refused in one line naming the file and key (or template and
line) before anything on the host is touched, recorded in the history and the journal as
a failed sync, and the host converges as soon as a good commit follows. The unit tests of
inventory and render (tests/unit/) hold the exhaustive tables; this is the end-to-end run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.devtools import sandbox
from reconciler.host import journal
from tests.faults.conftest import FaultEnv, Report, clean_units, make_env
from tests.integration.gitrepo import git
from tests.integration.test_sync import APP, HOSTS, base_files, service

pytestmark = pytest.mark.host

FAILED = journal.message_id("sync.failed")
Mutation = Callable[[Path, str], None]  # (work tree, a managed service name)


@dataclass
class Applied:
    env: FaultEnv
    units: list[str]


@pytest.fixture(scope="module")
def applied(host: sandbox.Host, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applied]:
    """Two running services, applied once for the whole module."""
    env = make_env(host, tmp_path_factory.mktemp("input"))
    env.configure(top="render_cpu_sec = 3\nrender_memory_mb = 256\n")  # exhausting templates
    a, b = env.name("alpha"), env.name("beta")
    env.repo.commit(base_files(env, service(a), service(b)), message="good")
    assert env.sync()["result"] == "applied"
    try:
        yield Applied(env, [f"{a}.service", f"{b}.service"])
    finally:
        clean_units(env)


def edit(rel: str, old: str, new: str) -> Mutation:
    def mutate(work: Path, _name: str) -> None:
        path = work / rel
        text = path.read_text()
        assert old in text, (rel, old)
        path.write_text(text.replace(old, new, 1))

    return mutate


def template(text: str) -> Mutation:
    def mutate(work: Path, _name: str) -> None:
        (work / "templates/app.service.j2").write_text(text)

    return mutate


def append(text: str) -> Mutation:
    def mutate(work: Path, name: str) -> None:
        with (work / "inventory/services.toml").open("a") as fh:
            fh.write("\n" + text.replace("NAME", name) + "\n")

    return mutate


def misnamed_mount(work: Path, name: str) -> None:
    """A mount whose Where= is not its name: systemd would refuse to load it."""
    (work / "templates/data.mount.j2").write_text("[Mount]\nWhat=tmpfs\nWhere=/srv/my-data\n")
    append(
        f'[services."srv-{name}"]\nkind = "mount"\ntemplate = "data.mount.j2"\n'
        'hosts = ["web"]\nenable = false'
    )(work, name)


def symlink_template(work: Path, name: str) -> None:
    os.symlink("/etc/shadow", work / "templates/shadow.j2")
    edit("inventory/services.toml", '"app.service.j2"', '"shadow.j2"')(work, name)


SVC = '[services."{}"]\ntemplate = "app.service.j2"\nhosts = ["web"]\nvars = {{ greeting = "x" }}'
SANDBOX_LINE = "Description={{ service }} on {{ host.name }}"

# (fault, mutation, text the one line must hold)
CASES: list[tuple[str, Mutation, str]] = [
    ("unknown key", append("[services.NAME-x]\ntemplate = 'app.service.j2'\nhosts = ['web']\n"
                           "bogus = 1"), "unknown key"),
    ("wrong type", edit("inventory/services.toml", 'hosts = ["web"]', 'hosts = "web"'),
     "Input should be a valid list"),
    ("missing template", edit("inventory/services.toml", '"app.service.j2"', '"nope.j2"'),
     "template 'nope.j2' not found"),
    ("undefined variable", template(APP.replace("greeting", "nosuch")), "'nosuch' is undefined"),
    ("template syntax error", template(APP + "{% if %}\n"),
     "templates/app.service.j2:10: Expected an expression"),
    ("template includes ../", template(APP + "{% include '../inventory/hosts.toml' %}\n"),
     "must stay inside templates/"),
    ("template includes /etc/shadow", template(APP + "{% include '/etc/shadow' %}\n"),
     "must stay inside templates/"),
    ("service template outside templates/",
     edit("inventory/services.toml", '"app.service.j2"', '"../inventory/hosts.toml"'),
     "must be a relative path inside templates/"),
    ("repo symlink to /etc/shadow", symlink_template, "a symlink (symlinks are never followed)"),
    ("sandbox: ''.__class__.__mro__",
     template(APP.replace(SANDBOX_LINE, "Description={{ ''.__class__.__mro__ }}")),
     "refused by the sandbox"),
    ("sandbox: cycler.__init__.__globals__",
     template(APP.replace(SANDBOX_LINE, "Description={{ cycler.__init__.__globals__.os }}")),
     "refused by the sandbox"),
    ("sandbox: __subclasses__()",
     template(APP + "{% set x = ().__class__.__base__.__subclasses__() %}\n"),
     "refused by the sandbox"),
    ("sandbox: str.format attribute walk",
     template(APP.replace(SANDBOX_LINE, "Description={{ '{0.__class__}'.format(service) }}")),
     "refused by the sandbox"),
    ("sandbox: 'x' * 10**9",
     template(APP.replace(SANDBOX_LINE, "Description={{ 'x' * 1000000000 }}")),
     "refused by the sandbox"),
    ("unit name with /", append(SVC.format("a/b")), "invalid service name 'a/b'"),
    ("unit name with ..", append(SVC.format("a..b")), "'..' is not allowed"),
    ("unit name with a space", append(SVC.format("a b")), "character ' ' not allowed"),
    ("unit name with a unicode look-alike", append(SVC.format("\u0430pp")),
     "character '\\u0430' not allowed"),
    ("value with a new line",
     edit("inventory/hosts.toml", '"hello from the host"', '"x\\n[Service]\\nUser=root"'),
     "variable 'greeting' contains a line break"),
    ("value with a \\ continuation",
     edit("inventory/hosts.toml", '"hello from the host"', '"x \\\\"'),
     "variable 'greeting' ends with a backslash"),
    ("render CPU: nested range() loops",
     template(APP + "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
              "{% endfor %}\n"),
     "range() asked for more than 1000000 items in all"),
    ("render CPU: nested loops over a string",
     template(APP + "{% for a in 'x' * 100000 %}{% for b in 'x' * 100000 %}{% endfor %}"
              "{% endfor %}\n"),
     "3 s of CPU time"),  # "more than ..." or, on a busy host, "no answer within ..."
    ("render memory: center", template(APP + "{% set x = 'a' | center(1500000000) %}\n"),
     "more than 256 MB of memory (render_memory_mb)"),
    ("render memory: format", template(APP + "{% set x = '%1500000000s' | format('a') %}\n"),
     "more than 256 MB of memory (render_memory_mb)"),
    ("render memory: ~ in a loop",
     template(APP + "{% set ns = namespace(v='0123456789') %}{% for i in range(40) %}"
              "{% set ns.v = ns.v ~ ns.v %}{% endfor %}\n"),
     "more than 256 MB of memory (render_memory_mb)"),
    ("render CPU: big integer squared in a loop",
     template(APP + "{% set ns = namespace(v=10**64) %}{% for i in range(26) %}"
              "{% set ns.v = ns.v * ns.v %}{% endfor %}\n"),
     "3 s of CPU time"),  # "more than ..." or, on a busy host, "no answer within ..."
    ("render memory: replace", template(APP + "{% set x = ('x' * 1000000) | replace('x', "
                                        "'x' * 1000000) %}\n"),
     "more than 256 MB of memory (render_memory_mb)"),
    ("template includes itself", template(APP + "{% include 'app.service.j2' %}\n"),
     "nested too deep (an include, extends or macro calling itself"),
    ("macro calls itself",
     template(APP + "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}\n"),
     "nested too deep (an include, extends or macro calling itself"),
    ("timer with 100,000 on_calendar entries (2.6 MB unit)",
     append("[services.NAME-t]\ntemplate = 'app.service.j2'\nhosts = ['web']\nenable = false\n"
            "[services.NAME-t.timer]\non_calendar = ["
            + ", ".join(f"'*-*-* 00:00:{i % 60:02d}'" for i in range(100_000)) + "]"),
     "timer would be larger than 1048576 characters"),
    ("unknown unit kind", append("[services.NAME-k]\ntemplate = 'app.service.j2'\n"
                                 "hosts = ['web']\nkind = 'device'"),
     ".kind: Input should be 'service', 'socket'"),
    ("mount not named after its Where= path", misnamed_mount,
     "Where=/srv/my-data needs the unit name 'srv-my\\x2ddata.mount'"),
    ("socket with a [timer] table", append("[services.NAME-s]\ntemplate = 'app.service.j2'\n"
                                           "hosts = ['web']\nkind = 'socket'\n"
                                           "[services.NAME-s.timer]\non_calendar = 'daily'"),
     'only a kind = "service" has a [timer] table (this is a socket)'),
    ("host named like a group", lambda work, _name: (work / "inventory/hosts.toml").write_text(
        (work / "inventory/hosts.toml").read_text() + "\n[hosts.web]\n"),
     "hosts.testhost.groups[0]: group 'web' is also a host's name"),
    ("service named like an own unit (reading-sync)", append(SVC.format("reading-sync")),
     "'reading-sync' is one of the reconciler's own units, which belong to its install"),
    ("TOML array 50,000 deep", append("[services.NAME-deep]\ntemplate = 'app.service.j2'\n"
                                      "hosts = ['web']\nvars = { x = " + "[" * 50_000
                                      + "]" * 50_000 + " }"),
     "tables and arrays nested deeper than 64 levels"),
    ("TOML inline table 900 deep", append("[services.NAME-deep]\ntemplate = 'app.service.j2'\n"
                                          "hosts = ['web']\nvars = { x = " + "{a=" * 900 + "1"
                                          + "}" * 900 + " }"),
     "tables and arrays nested deeper than 64 levels"),
]  # fmt: skip


def files_of(env: FaultEnv, units: list[str]) -> dict[str, str]:
    return {u: (env.host.unit_dir / u).read_text() for u in units}


@pytest.mark.parametrize(("fault", "mutate", "expect"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_the_host_untouched(
    applied: Applied, fault_report: Report, fault: str, mutate: Mutation, expect: str
) -> None:
    env, units = applied.env, applied.units
    before_files, before_ids = files_of(env, units), env.invocations(*units)
    before_history = env.history()
    mutate(env.repo.work, units[0].removesuffix(".service"))
    bad = env.repo.commit(message=fault)
    proc = env.run("sync")
    faulted = time.monotonic()
    lines = proc.stderr.strip().splitlines()
    refused = proc.returncode == 1 and len(lines) == 1 and expect in lines[0]
    refused = refused and "Traceback" not in proc.stderr
    untouched = files_of(env, units) == before_files and env.invocations(*units) == before_ids

    git(env.repo.work, "revert", "--no-edit", "HEAD")  # the operator pushes the fix
    git(env.repo.work, "push", "-q", "origin", "HEAD:main")
    converge = env.converge(faulted)
    history = env.history()
    new_rows = [(r["result"], r["revision"]) for r in history[: len(history) - len(before_history)]]
    recorded = [r for r, _ in new_rows] == ["noop", "failed"]
    env.host.journal_sync()
    logged = [e for e in env.host.journal(f"MESSAGE_ID={FAILED}") if expect in e.get("MESSAGE", "")]
    nothing_lost = (
        untouched
        and files_of(env, units) == before_files
        and env.invocations(*units) == before_ids
        and recorded
    )
    fault_report(
        fault,
        f"refused in one line: {lines[0] if lines else repr(proc.stderr)}",
        converge,
        nothing_lost,
    )
    assert refused, (fault, proc.returncode, proc.stderr)
    assert untouched, fault
    assert recorded, (new_rows, bad)
    assert logged, "a sync.failed journal entry names the problem"
    assert nothing_lost


def empty_exec_dropin(work: Path, name: str) -> None:
    """A drop-in emptying the ExecStart= of a vendor unit (the machine's own)."""
    (work / "templates/no-exec.conf.j2").write_text("[Service]\nExecStart=\n")
    append('[dropins."systemd-tmpfiles-clean.service".noexec]\ntemplate = "no-exec.conf.j2"\n'
           'hosts = ["web"]')(work, name)  # fmt: skip


def group_without_hosts(work: Path, name: str) -> None:
    """A group declared for its vars that no host lists, and a service for it: it ran
    nowhere, silently."""
    edit("inventory/hosts.toml", "[groups.web]", "[groups.wbe.vars]\nx = 1\n\n[groups.web]")(
        work, name
    )
    append(SVC.format(f"{name}-g").replace('["web"]', '["wbe"]'))(work, name)


VERIFY_CASES: list[tuple[str, Mutation, str]] = [
    ("drop-in empties a vendor unit's ExecStart", empty_exec_dropin,
     'inventory/services.toml: dropins."systemd-tmpfiles-clean.service".noexec: systemd-analyze '
     "refused systemd-tmpfiles-clean.service: Service has no ExecStart=, ExecStop=, or "
     "SuccessAction=. Refusing. (and 1 more)"),
    ("timer on_calendar systemd cannot parse",
     append("[services.NAME-t]\ntemplate = 'app.service.j2'\nhosts = ['web']\nenable = false\n"
            "[services.NAME-t.timer]\non_calendar = 'every tuesday'"),
     "-t: systemd-analyze refused NAME-t.timer:"),
    ("service for a group no host has (a README-only user's trial)", group_without_hosts,
     "-g.hosts[0]: group 'wbe' has no host (no [hosts."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fault", "mutate", "expect"), VERIFY_CASES, ids=[c[0] for c in VERIFY_CASES]
)
def test_plan_refuses_what_the_sync_refuses(
    applied: Applied, fault: str, mutate: Mutation, expect: str
) -> None:
    """plan is sync --dry-run: it runs the sync's validate step (systemd-analyze on the units
    and drop-ins it would write) and refuses the same revision in the same line."""
    env, units = applied.env, applied.units
    name = units[0].removesuffix(".service")
    expect = expect.replace("NAME", name)
    before_files, before_ids = files_of(env, units), env.invocations(*units)
    mutate(env.repo.work, name)
    env.repo.commit(message=fault)
    try:
        plan, sync = env.run("plan"), env.run("sync")
        for proc in (plan, sync):
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 1 and len(lines) == 1, (fault, proc.stderr, proc.stdout)
            assert expect in lines[0] and "Traceback" not in proc.stderr, (fault, proc.stderr)
        assert plan.stderr.partition(": ")[2] == sync.stderr.partition(": ")[2], (plan, sync)
        assert plan.stdout == "", plan.stdout  # no list of actions
        assert files_of(env, units) == before_files and env.invocations(*units) == before_ids
        assert not (env.host.unit_dir / "systemd-tmpfiles-clean.service.d").exists()
    finally:
        git(env.repo.work, "revert", "--no-edit", "HEAD")
        git(env.repo.work, "push", "-q", "origin", "HEAD:main")
        env.converge(time.monotonic())


def test_ten_thousand_service_inventory(fenv: FaultEnv, fault_report: Report) -> None:
    """10,000 services (1.3 MB of TOML, over the old 1 MiB limit): 100 run on this host."""
    mine = 100
    hosts = HOSTS + '\n[hosts.other]\ngroups = ["db"]\n'
    entries = [
        f'[services.s{i:05d}-{fenv.tag}]\ntemplate = "app.service.j2"\n'
        f'hosts = ["{"web" if i < mine else "db"}"]\nenable = true\nstart = true\n'
        f'vars = {{ greeting = "hello {i}" }}\n'
        for i in range(10_000)
    ]
    files = {**base_files(fenv), "inventory/hosts.toml": hosts}
    files["inventory/services.toml"] = "\n".join(entries)
    assert len(files["inventory/services.toml"]) > 1024 * 1024
    fenv.repo.commit(files, message="10,000 services")
    started = time.monotonic()
    first = fenv.sync()
    first_sec = time.monotonic() - started
    units = [f"s{i:05d}-{fenv.tag}.service" for i in range(mine)]
    ids = fenv.invocations(*units)
    started = time.monotonic()
    noop = fenv.sync()
    noop_sec = time.monotonic() - started
    nothing_lost = fenv.invocations(*units) == ids and all(ids.values())
    fault_report(
        "10,000-service inventory (100 on this host)",
        f"first sync {first_sec:.1f}s (fetch, validate 10,000, render and start 100), "
        f"no-op {noop_sec:.1f}s",
        noop_sec,
        nothing_lost,
    )
    assert first["result"] == "applied" and noop["result"] == "noop"
    starts = [a for a in first["actions"] if a.startswith("start ")]  # type: ignore[union-attr]
    assert len(starts) == mine
    assert first_sec < 60 and noop_sec < 15
    assert nothing_lost


def test_150000_name_hosts_list(fenv: FaultEnv, fault_report: Report) -> None:
    """A service's ``hosts`` and a host's ``groups``, 150,000 names each (1.7 MB apiece):
    the duplicate check was quadratic (still validating after 60 s, holding the lock)."""
    groups = [f"g{i:06d}" for i in range(150_000)]
    listed = ", ".join(f'"{g}"' for g in groups)
    a = fenv.name("many")
    files = base_files(fenv, service(a).replace('hosts = ["web"]', f"hosts = [{listed}]"))
    files["inventory/hosts.toml"] = HOSTS.replace('groups = ["web"]', f'groups = ["web", {listed}]')
    assert len(files["inventory/services.toml"]) > 1_600_000
    fenv.repo.commit(files, message="150,000 names")
    started = time.monotonic()
    proc = fenv.run("sync", "--json")
    took = time.monotonic() - started
    applied = proc.returncode == 0 and json.loads(proc.stdout)["result"] == "applied"
    fenv.settled([f"{a}.service"])
    fault_report(
        "150,000-name hosts and groups lists (1.7 MB each)",
        f"validated in linear time; the whole first sync took {took:.1f}s",
        took,
        applied,
    )
    assert applied, proc.stderr
    assert took < 20


def test_200000_group_vars_for_100_services(fenv: FaultEnv, fault_report: Report) -> None:
    """A group with 200,000 vars (3.4 MB) and 100 services of its hosts: every service got a
    copy of every var (over 1 GB: refused by render_memory_mb). Vars are shared, and a
    template's context holds only the names the templates use."""
    many = ", ".join(f"v{i} = {i}" for i in range(200_000))
    hosts = HOSTS.replace('[groups.web]\nvars = { greeting = "hello from the group" }',
                          f'[groups.web]\nvars = {{ greeting = "g", {many} }}')  # fmt: skip
    assert len(hosts) > 3_000_000
    names = [fenv.name(f"v{i:03d}") for i in range(100)]
    files = {**base_files(fenv, *(service(n) for n in names)), "inventory/hosts.toml": hosts}
    fenv.repo.commit(files, message="200,000 group vars")
    started = time.monotonic()
    proc = fenv.run("sync", "--json")
    took = time.monotonic() - started
    applied = proc.returncode == 0 and json.loads(proc.stdout)["result"] == "applied"
    fault_report(
        "200,000 group vars x 100 services",
        f"vars shared, contexts hold only used names; first sync (100 starts) {took:.1f}s",
        took,
        applied,
    )
    assert applied, proc.stderr
    fenv.settled([f"{n}.service" for n in names[:3]])
    assert took < 60


def test_plan_of_a_40000_line_change(fenv: FaultEnv, fault_report: Report) -> None:
    """A unit of 40,000 lines (500 KB, under the 1 Mi cap) with every other line changed:
    ``reconciler plan``'s diff ran difflib for minutes (quadratic); now one linear hunk."""
    name = fenv.name("wide")

    def unit(mark: str) -> str:  # comments: systemd reads 40,000 Environment= slowly itself
        lines = [f"# {i:05d} note{mark if i % 2 else ''}\n" for i in range(40_000)]
        return "[Unit]\nDescription=wide\n\n[Service]\nExecStart=/bin/true\n" + "".join(lines)

    entry = f'[services.{name}]\ntemplate = "wide.j2"\nhosts = ["web"]\nenable = false\n'
    entry += "start = false\n"
    fenv.repo.commit({**base_files(fenv, entry), "templates/wide.j2": unit("")}, "wide")
    assert fenv.sync()["result"] == "applied"
    fenv.repo.commit({"templates/wide.j2": unit("x")}, "every other line changed")
    started = time.monotonic()
    proc = fenv.run("plan")
    took = time.monotonic() - started
    hunks = proc.stdout.count("\n@@ ")
    fault_report(
        "plan of a 40,000-line unit, every other line changed",
        f"`plan` answered in {took:.1f}s with a whole-file hunk ({len(proc.stdout) >> 10} KiB)",
        None,
        proc.returncode == 0,
    )
    assert proc.returncode == 0, proc.stderr
    assert hunks == 1 and took < 30
    assert fenv.sync()["result"] == "applied"


def test_empty_inventory_needs_allow_empty(fenv: FaultEnv, fault_report: Report) -> None:
    a, b = fenv.name("keep1"), fenv.name("keep2")
    units = [f"{a}.service", f"{b}.service"]
    fenv.repo.commit(base_files(fenv, service(a), service(b)), message="good")
    fenv.sync()
    ids = fenv.invocations(*units)
    refusals = []
    for what, text in (
        ("empty services.toml", ""),
        ("no service for this host", service(a).replace('["web"]', '["other"]')),
    ):
        other = HOSTS + "\n[hosts.other]\n"
        fenv.repo.commit({"inventory/services.toml": text, "inventory/hosts.toml": other}, what)
        proc = fenv.run("sync")
        refusals.append(proc)
    faulted = time.monotonic()
    refused = all(
        p.returncode == 1 and "refusing to remove all 2 managed units" in p.stderr
        and "--allow-empty" in p.stderr and len(p.stderr.strip().splitlines()) == 1
        for p in refusals
    )  # fmt: skip
    kept = fenv.invocations(*units) == ids and all((fenv.host.unit_dir / u).exists() for u in units)
    pruned = fenv.run("sync", "--json", "--allow-empty")
    gone = not any((fenv.host.unit_dir / u).exists() for u in units)
    fenv.repo.commit(base_files(fenv, service(a), service(b)), message="back")
    converge = fenv.converge(faulted)
    fenv.settled(units)
    results = [r["result"] for r in fenv.history()]
    nothing_lost = kept and results[:4] == ["applied", "applied", "failed", "failed"]
    fault_report(
        "empty inventory",
        "refused without --allow-empty (host unchanged); --allow-empty prunes everything",
        converge,
        nothing_lost,
    )
    assert refused, [p.stderr for p in refusals]
    assert kept
    assert pruned.returncode == 0 and json.loads(pruned.stdout)["result"] == "applied"
    assert gone
    assert nothing_lost, results


def test_force_pushed_branch(fenv: FaultEnv, fault_report: Report) -> None:
    a = fenv.name("web")
    unit = f"{a}.service"
    first = fenv.repo.commit(base_files(fenv, service(a, greeting="one")), message="one")
    fenv.sync()
    second = fenv.repo.commit(base_files(fenv, service(a, greeting="two")), message="two")
    fenv.sync()
    work = fenv.repo.work
    git(work, "reset", "-q", "--hard", first)  # rewrite history: "two" is gone from the branch
    fenv.repo.write(base_files(fenv, service(a, greeting="three")))
    git(work, "commit", "-q", "-am", "three")
    third = git(work, "rev-parse", "HEAD")
    git(work, "push", "-q", "--force", "origin", "HEAD:main")
    faulted = time.monotonic()
    out = fenv.sync()
    converge = time.monotonic() - faulted
    rewritten = out["result"] == "applied" and out["revision"] == third
    three = "three" in (fenv.host.unit_dir / unit).read_text()
    # the commit no branch holds any more is still in the cache: rollback works
    rolled = fenv.run("rollback", second[:10])
    two = "two" in (fenv.host.unit_dir / unit).read_text()
    fenv.reconciler("resume")
    # back to an older commit of the same branch
    git(work, "push", "-q", "--force", "origin", f"{first}:main")
    back = fenv.sync()
    revisions = [r["revision"] for r in fenv.history() if r["result"] == "applied"]
    nothing_lost = {first, second, third} <= set(revisions)
    fault_report(
        "force-pushed branch (history rewritten)",
        "the rewritten branch is applied; dropped commits stay rollback targets from the cache",
        converge,
        nothing_lost,
    )
    assert rewritten and three
    assert rolled.returncode == 0 and two, rolled.stderr
    assert back["result"] == "applied" and back["revision"] == first
    assert "one" in (fenv.host.unit_dir / unit).read_text()
    fenv.settled([unit])
    assert nothing_lost, revisions


def test_more_units_than_the_host_allows(fenv: FaultEnv, fault_report: Report) -> None:
    names = [fenv.name(f"cap{i}") for i in range(4)]
    units = [f"{n}.service" for n in names[:2]]
    fenv.configure(top="max_units = 3\n")
    fenv.repo.commit(base_files(fenv, *(service(n) for n in names[:2])), message="two")
    fenv.sync()
    ids = fenv.invocations(*units)
    fenv.repo.commit(base_files(fenv, *(service(n) for n in names)), message="four")
    proc = fenv.run("sync")
    faulted = time.monotonic()
    lines = proc.stderr.strip().splitlines()
    refused = (
        proc.returncode == 1
        and len(lines) == 1
        and "4 units, more than this host's max_units (3)" in lines[0]
        and str(fenv.config) in lines[0]
    )
    untouched = fenv.invocations(*units) == ids and not any(
        (fenv.host.unit_dir / f"{n}.service").exists() for n in names[2:]
    )
    fenv.repo.commit(base_files(fenv, *(service(n) for n in names[:3])), message="three")
    converge = fenv.converge(faulted)
    results = [r["result"] for r in fenv.history()]
    fault_report(
        "more units than the host allows (max_units)",
        "refused after the render, before anything is written: one line naming the count, "
        "the limit and the config file",
        converge,
        untouched and results[:2] == ["applied", "failed"],
    )
    assert refused, proc.stderr
    assert untouched
    assert results[:3] == ["applied", "failed", "applied"], results


HOST_CONFIG_FAULTS = {
    "[notify] urll (a typo: no alert would ever be sent)": (
        ("notify", "urll = 'https://alerts.example/hook'"),
        "notify.urll: unknown key",
    ),
    "[diagnostics] max_lines = 2.7 (not an integer)": (
        ("diagnostics", "max_lines = 2.7"),
        "diagnostics.max_lines: expected an integer, got 2.7",
    ),
    "[backup] keep_last = 0 (out of range)": (
        ("backup", "keep_last = 0"),
        "backup.keep_last: expected 1 or more, got 0",
    ),
}


@pytest.mark.parametrize("case", list(HOST_CONFIG_FAULTS))
def test_bad_host_config_is_refused_before_anything(
    fenv: FaultEnv, fault_report: Report, case: str
) -> None:
    """The host config (not the repository) is wrong: every command refuses at once, exit 2,
    naming the file read and the key path; nothing is touched or recorded."""
    a = fenv.name("steady")
    fenv.repo.commit(base_files(fenv, service(a)))
    fenv.sync()
    before = fenv.invocations(f"{a}.service")
    rows = len(fenv.history())
    good = fenv.config.read_text()
    (section, line), expect = HOST_CONFIG_FAULTS[case]
    if f"[{section}]\n" in good:
        fenv.config.write_text(good.replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1))
    else:
        fenv.config.write_text(f"{good}\n[{section}]\n{line}\n")
    faulted = time.monotonic()
    procs = [fenv.run("sync"), fenv.run("plan"), fenv.reconciler("status", check=False)]
    fenv.config.write_text(good)  # the operator fixes the file
    again = fenv.sync()
    converge = time.monotonic() - faulted
    nothing_lost = fenv.invocations(f"{a}.service") == before and len(fenv.history()) == rows + 1
    fault_report(
        f"host config: {case}",
        "every command refuses at once: one line naming the file read and the key path, exit 2",
        converge,
        nothing_lost,
    )
    for proc in procs:
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and f"cannot read config '{fenv.config}': {expect}" in lines[0]
    assert again["result"] == "noop" and nothing_lost
