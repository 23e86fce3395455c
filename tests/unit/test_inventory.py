"""inventory.load and Inventory.select: strict models, one-line errors, vars merge order."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from reconciler.core import inventory
from reconciler.errors import InventoryError

REPO = Path(__file__).resolve().parents[2]

HOSTS = b"""
[groups.base.vars]
level = "base"
only_base = 1

[groups.web.vars]
level = "web"
only_web = 2

[hosts.h1]
groups = ["base", "web"]
vars = { level = "host", only_host = 3 }

[hosts.h2]
groups = ["web", "base"]

[hosts.h3]
"""

SERVICES = b"""
[services.web]
template = "web.service.j2"
hosts = ["web"]
vars = { level = "service" }

[services.web.health]
timeout_sec = 10

[services.job]
template = "job.service.j2"
hosts = ["h3"]
enable = false
start = false

[services.job.timer]
on_calendar = ["*-*-* 01:00:00", "Mon *-*-* 02:00"]
persistent = true
randomized_delay_sec = "30min"
accuracy_sec = 1

[services.metrics]
template = "job.service.j2"
hosts = ["all"]
"""


def files(hosts: bytes = HOSTS, services: bytes = SERVICES) -> dict[str, bytes]:
    return {
        "inventory/hosts.toml": hosts,
        "inventory/services.toml": services,
        "templates/web.service.j2": b"",
        "templates/job.service.j2": b"",
    }


def svc(body: str, name: str = "web") -> bytes:
    """services.toml with one service ``name`` made of ``body`` plus the required keys."""
    head = f'[services.{name}]\ntemplate = "web.service.j2"\nhosts = ["h1"]\n'
    return (head + body).encode()


S = "inventory/services.toml"
H = "inventory/hosts.toml"

# (what, files, expected message start, must also contain)
BAD: list[tuple[str, dict[str, bytes], str, str]] = [
    ("no hosts.toml", {S: SERVICES}, f"{H}: file missing", ""),
    ("no services.toml", {H: HOSTS}, f"{S}: file missing", ""),
    ("toml syntax", files(services=b'[services.web]\ntemplate = "x"\nhosts = [\n'), f"{S}:", ""),
    ("toml bad value", files(services=b"[services.web]\ntemplate = x\n"), f"{S}:2:12: ", ""),
    ("not utf-8", files(services=b"\xff\xfe"), f"{S}: not valid UTF-8", ""),
    (
        "unknown top key",
        files(services=b"[servicez.web]\n"),
        f"{S}: servicez: unknown key",
        "'services'",
    ),
    (
        "unknown service key",
        files(services=svc("templat = 1\n")),
        f"{S}: services.web.templat: unknown key",
        "did you mean 'template'",
    ),
    (
        "a key of another table",  # a drop-in's restart, not a service's: not suggested back
        files(services=svc("restart = true\n")),
        f"{S}: services.web.restart: unknown key in this table",
        "",
    ),
    (
        "unknown timer key",
        files(services=svc("[services.web.timer]\non_calender = 'daily'\n")),
        f"{S}: services.web.timer.on_calender: unknown key",
        "",
    ),
    (
        "unknown health key",
        files(services=svc("[services.web.health]\ntimeout_sec = 1\nretries = 3\n")),
        f"{S}: services.web.health.retries: unknown key",
        "",
    ),
    (
        "unknown host key",
        files(hosts=b"[hosts.h1]\ngroup = ['web']\n"),
        f"{H}: hosts.h1.group: unknown key",
        "'groups'",
    ),
    (
        "unknown group key",
        files(hosts=b"[groups.web]\nvar = {}\n"),
        f"{H}: groups.web.var: unknown key",
        "",
    ),
    (
        "enable not bool",
        files(services=svc('enable = "yes"\n')),
        f"{S}: services.web.enable: Input should be a valid boolean",
        "(got 'yes')",
    ),
    (
        "hosts not list",
        files(services=b'[services.web]\ntemplate = "web.service.j2"\nhosts = "all"\n'),
        f"{S}: services.web.hosts: Input should be a valid list",
        "",
    ),
    (
        "hosts item type",
        files(services=b'[services.web]\ntemplate = "web.service.j2"\nhosts = ["h1", 2]\n'),
        f"{S}: services.web.hosts[1]: Input should be a valid string",
        "",
    ),
    (
        "template missing key",
        files(services=b'[services.web]\nhosts = ["h1"]\n'),
        f"{S}: services.web.template: Field required",
        "",
    ),
    (
        "on_calendar type",
        files(services=svc("[services.web.timer]\non_calendar = 5\n")),
        f"{S}: services.web.timer.on_calendar: Input should be a string",
        "",
    ),
    (
        "on_calendar newline",
        files(services=svc('[services.web.timer]\non_calendar = "daily\\nUnit=evil.service"\n')),
        f"{S}: services.web.timer.on_calendar: Value contains a line break",
        "",
    ),
    (
        "timespan bad",
        files(services=svc('[services.web.timer]\non_boot_sec = "soon"\n')),
        f"{S}: services.web.timer.on_boot_sec: Input should be a number of seconds",
        "",
    ),
    (
        "timespan bool",
        files(services=svc("[services.web.timer]\non_boot_sec = true\n")),
        f"{S}: services.web.timer.on_boot_sec: Input should be a number",
        "",
    ),
    (
        "persistent str",
        files(services=svc("[services.web.timer]\non_calendar = 'daily'\npersistent = 'true'\n")),
        f"{S}: services.web.timer.persistent: Input should be a valid boolean",
        "",
    ),
    (
        "timer no trigger",
        files(services=svc("[services.web.timer]\npersistent = true\n")),
        f"{S}: services.web.timer: a timer needs a trigger",
        "",
    ),
    (
        "timer bad unit",
        files(services=svc("[services.web.timer]\non_calendar = 'daily'\nunit = '../x.service'\n")),
        f"{S}: services.web.timer.unit: invalid unit name",
        "",
    ),
    (
        "timeout negative",
        files(services=svc("[services.web.health]\ntimeout_sec = -1\n")),
        f"{S}: services.web.health.timeout_sec: Input should be greater than 0",
        "",
    ),
    (  # a README-only trial: accepted, and never gated (the sync never starts it)
        "health on a timer's service",
        files(
            services=svc(
                "[services.web.timer]\non_calendar = 'daily'\n"
                "[services.web.health]\ntimeout_sec = 10\n"
            )
        ),
        f"{S}: services.web.health: nothing to gate: its [timer] runs web.service, never the sync",
        "remove [health]",
    ),
    (
        "health with start = false",
        files(services=svc("start = false\n[services.web.health]\ntimeout_sec = 10\n")),
        f"{S}: services.web.health: nothing to gate: start = false",
        "remove [health]",
    ),
    (
        "timeout str",
        files(services=svc("[services.web.health]\ntimeout_sec = '10'\n")),
        f"{S}: services.web.health.timeout_sec: Input should be a valid number",
        "",
    ),
    (
        "unknown group",
        files(services=b'[services.web]\ntemplate = "web.service.j2"\nhosts = ["h1", "dbs"]\n'),
        f"{S}: services.web.hosts[1]: 'dbs' is neither a host nor a group",
        "known: all, base, h1",
    ),
    (  # a group declared for its vars that no host lists: the service would run nowhere
        "group no host has",
        files(
            hosts=HOSTS + b'[groups.dbs.vars]\npool = 1\n[hosts.d1]\ngroups = ["db"]\n',
            services=b'[services.web]\ntemplate = "web.service.j2"\nhosts = ["h1", "dbs"]\n',
        ),
        f"{S}: services.web.hosts[1]: group 'dbs' has no host (no [hosts.NAME] of {H} lists it); "
        "did you mean 'db'? (groups with hosts: base, db, web)",
        "",
    ),
    (
        "drop-in for a group no host has",
        files(
            hosts=HOSTS + b"[groups.db.vars]\n",
            services=b'[dropins."nginx.service".x]\ntemplate = "web.service.j2"\nhosts = ["db"]\n',
        ),
        f"{S}: dropins.\"nginx.service\".x.hosts[0]: group 'db' has no host",
        "(groups with hosts: base, web)",
    ),
    (
        "file for a group no host has",
        files(
            hosts=HOSTS + b"[groups.wbe]\n",
            services=b'[files."/etc/a"]\ntemplate = "web.service.j2"\nhosts = ["wbe"]\n',
        ),
        f"{S}: files.\"/etc/a\".hosts[0]: group 'wbe' has no host",
        "did you mean 'web'?",
    ),
    (
        "missing template",
        files(services=b'[services.web]\ntemplate = "nope.j2"\nhosts = ["h1"]\n'),
        f"{S}: services.web.template: template 'nope.j2' not found in templates/",
        "",
    ),
    (
        "template ../",
        files(services=b'[services.web]\ntemplate = "../inventory/hosts.toml"\nhosts = ["h1"]\n'),
        f"{S}: services.web.template: '../inventory/hosts.toml' must be a relative path",
        "",
    ),
    (
        "template absolute",
        files(services=b'[services.web]\ntemplate = "/etc/shadow"\nhosts = ["h1"]\n'),
        f"{S}: services.web.template: '/etc/shadow' must be a relative path",
        "",
    ),
    (
        "name with /",
        files(services=svc("", '"a/b"')),
        f"{S}: services.\"a/b\": invalid service name 'a/b'",
        "'/' not allowed",
    ),
    (
        "name ..",
        files(services=svc("", '".."')),
        f'{S}: services."..": invalid service name',
        "not allowed",
    ),
    (
        "name a..b",
        files(services=svc("", '"a..b"')),
        f'{S}: services."a..b": invalid service name',
        "'..' is not allowed",
    ),
    (
        "name with space",
        files(services=svc("", '"a b"')),
        f'{S}: services."a b": invalid service name',
        "' ' not allowed",
    ),
    (
        "name look-alike",
        files(services=svc("", '"\u0430pp"')),
        f'{S}: services."\\u0430pp": invalid service name',
        "'\\u0430' not allowed",
    ),
    (
        "name newline",
        files(services=svc("", '"a\\nb"')),
        f'{S}: services."a\\nb": invalid service name',
        "",
    ),
    (
        "name leading dash",
        files(services=svc("", '"-x"')),
        f"{S}: services.-x: invalid service name",
        "must start with",
    ),
    (
        "name template unit",
        files(services=svc("", '"x@"')),
        f'{S}: services."x@": invalid service name',
        "'@'",
    ),
    (
        "name too long",
        files(services=svc("", "a" * 248)),
        f"{S}: services.{'a' * 248}: invalid service name",
        "longer than 247",
    ),
    (
        "name empty",
        files(services=svc("", '""')),
        f'{S}: services."": invalid service name',
        "empty",
    ),
    (
        "var name",
        files(services=svc('vars = { "my-port" = 1 }\n')),
        f"{S}: services.web.vars.my-port: invalid variable name",
        "",
    ),
    (
        "var reserved",
        files(services=svc("vars = { host = 1 }\n")),
        f"{S}: services.web.vars.host: variable name 'host' is set by the template itself",
        "",
    ),
    ("host named all", files(hosts=b"[hosts.all]\n"), f"{H}: hosts.all: invalid name 'all'", ""),
    (
        "group named bad",
        files(hosts=b"[hosts.h1]\ngroups = ['a b']\n"),
        f"{H}: hosts.h1.groups[0]: invalid name 'a b'",
        "",
    ),
    (
        "group twice",
        files(hosts=b"[hosts.h1]\ngroups = ['a', 'a']\n"),
        f"{H}: hosts.h1.groups: listed twice: a",
        "",
    ),
    (
        "host named like a group of another host",
        files(hosts=b"[hosts.db1]\n[hosts.web2]\ngroups = ['db1']\n"),
        f"{H}: hosts.web2.groups[0]: group 'db1' is also a host's name",
        "share one namespace",
    ),
    (
        "host named like a declared group",
        files(hosts=b"[groups.db1]\n[hosts.db1]\n"),
        f"{H}: groups.db1: group 'db1' is also a host's name",
        "share one namespace",
    ),
    (
        "array 50,000 deep",
        files(services=svc("vars = { x = " + "[" * 50_000 + "]" * 50_000 + " }\n")),
        f"{S}:4: tables and arrays nested deeper than 64 levels",
        "",
    ),
    (
        "inline table 900 deep",
        files(services=svc("vars = { x = " + "{a=" * 900 + "1" + "}" * 900 + " }\n")),
        f"{S}:4: tables and arrays nested deeper than 64 levels",
        "",
    ),
    (
        "hosts vars 100 deep (parsed, then refused)",
        files(hosts=b"[hosts.h1]\nvars = { x = " + b"[" * 100 + b"]" * 100 + b" }\n"),
        f"{H}: hosts.h1.vars.x...: tables and arrays nested deeper than 64 levels",
        "",
    ),
    (
        "service named like one of the reconciler's own units",
        files(services=svc("", name="reading-sync")),
        f"{S}: services.reading-sync: 'reading-sync' is one of the reconciler's own units",
        "belong to its install ('reconciler install' writes them from units/)",
    ),
    (
        "service named like the reconciler's own timer job",
        files(
            services=svc(
                "[services.gitops-sync.timer]\non_calendar = 'daily'\n", name="gitops-sync"
            )
        ),
        f"{S}: services.gitops-sync: 'gitops-sync' is one of the reconciler's own units",
        "",
    ),
    (
        "unknown kind",
        files(services=svc('kind = "device"\n')),
        f"{S}: services.web.kind: Input should be 'service', 'socket', 'path', 'mount'",
        "",
    ),
    (
        "mount not named after a path",
        files(services=svc('kind = "mount"\n', name="srv--data")),
        f"{S}: services.srv--data.kind: invalid mount name 'srv--data': a mount unit is named "
        "after its escaped Where= path",
        "systemd-escape --path",
    ),
    (
        "mount named with a bare dash",
        files(services=svc('kind = "mount"\n', name="'srv-my-data\\x2g'")),
        f"{S}: services",
        "'\\' only as a '\\xNN' escape",
    ),
    (
        "swap named oddly",
        files(services=svc('kind = "swap"\n', name="swap-")),
        f"{S}: services",
        "a swap unit is named after its escaped What= path",
    ),
    (
        "escape outside a path-named unit",
        files(services=svc("", name="'srv-my\\x2ddata'")),
        f'{S}: services."srv-my\\\\x2ddata".kind: invalid service name',
        "'\\' escapes are for path-named units",
    ),
    (
        "slice with an empty part",
        files(services=svc('kind = "slice"\n', name="apps--web")),
        f"{S}: services.apps--web.kind: invalid slice name 'apps--web': a slice's name",
        "",
    ),
    (
        "timer table on a socket",
        files(services=svc('kind = "socket"\n[services.web.timer]\non_calendar = "daily"\n')),
        f'{S}: services.web.timer: only a kind = "service" has a [timer] table (this is a socket)',
        "",
    ),
    (
        "drop-in for no unit type",
        files(services=b'[dropins."nginx".limits]\ntemplate = "web.service.j2"\nhosts = ["h1"]\n'),
        f"{S}: dropins.nginx: invalid unit name 'nginx': no unit type suffix",
        "",
    ),
    (
        "drop-in for a unit with a slash",
        files(services=b'[dropins."a/b.service".x]\ntemplate = "web.service.j2"\nhosts = ["h1"]\n'),
        f'{S}: dropins."a/b.service": invalid unit name',
        "",
    ),
    (
        "drop-in name with a slash",
        files(
            services=b'[dropins."nginx.service"."../x"]\ntemplate = "web.service.j2"\n'
            b'hosts = ["h1"]\n'
        ),
        f'{S}: dropins."nginx.service"."../x": invalid drop-in name',
        "",
    ),
    (
        "drop-in restart not a boolean",
        files(
            services=b'[dropins."nginx.service".x]\ntemplate = "web.service.j2"\n'
            b'hosts = ["h1"]\nrestart = "no"\n'
        ),
        f'{S}: dropins."nginx.service".x.restart: Input should be a valid boolean',
        "",
    ),
    (
        "drop-in for an unknown host",
        files(
            services=b'[dropins."nginx.service".x]\ntemplate = "web.service.j2"\nhosts = ["nope"]\n'
        ),
        f"{S}: dropins.\"nginx.service\".x.hosts[0]: 'nope' is neither a host nor a group",
        "",
    ),
    (
        "drop-in template missing",
        files(services=b'[dropins."nginx.service".x]\ntemplate = "no.j2"\nhosts = ["h1"]\n'),
        f"{S}: dropins.\"nginx.service\".x.template: template 'no.j2' not found",
        "",
    ),
    (
        "several problems",
        files(services=svc("foo = 1\nbar = 2\nenable = 3\n")),
        f"{S}: services.web.enable: Input should be a valid boolean (got 3) "
        "(also at services.web.foo, services.web.bar)",
        "",
    ),
]


@pytest.mark.parametrize(("what", "given", "start", "contains"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_naming_file_and_key(
    what: str, given: dict[str, bytes], start: str, contains: str
) -> None:
    with pytest.raises(InventoryError) as info:
        inventory.load(given)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(start), message
    assert contains in message
    assert message.isascii()


def test_deep_line_skips_strings_and_comments() -> None:
    text = "a = \"[[[[\"\n# [[[[[[\nb = '''\n[[[[\n'''\nc = " + "[" * 70
    assert inventory._deep_line(text) == 6


@pytest.mark.parametrize("where", ["services", "groups"])
def test_150000_names_validate_in_linear_time(where: str) -> None:
    """A 150,000-name ``hosts`` list (or a host's ``groups``): the duplicate check was
    quadratic (``list.count`` per name: hours). Bounded by an alarm on CPU time (a loaded
    machine's wall clock is no measure) so a regression fails."""
    names = [f"g{i:06d}" for i in range(150_000)]
    listed = ", ".join(f'"{n}"' for n in names)
    hosts = f"[hosts.h1]\ngroups = [{listed}]\n" if where == "groups" else "[hosts.h1]\n"
    targets = listed if where == "groups" else '"h1", ' + listed
    services = f'[services.web]\ntemplate = "web.service.j2"\nhosts = [{targets}]\n'
    given = files(hosts=hosts.encode(), services=services.encode())
    assert len(given[S]) > 1_500_000

    def too_slow(signum: int, frame: object) -> None:
        raise TimeoutError("inventory.load took more than 10 s of CPU")

    previous = signal.signal(signal.SIGPROF, too_slow)
    signal.setitimer(signal.ITIMER_PROF, 10)
    try:
        started = time.process_time()
        if where == "groups":
            assert [s.name for s in inventory.load(given).select("h1")] == ["web"]
        else:  # the groups are unknown: refused, the first named, the rest counted
            with pytest.raises(InventoryError, match=r"hosts\[1\]: 'g000000' .* and 149996 more\)"):
                inventory.load(given)
        used = time.process_time() - started
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
    assert used < 1.5, f"{used:.2f} s of CPU"  # ~0.5 s here, most of it tomllib


def test_toml_syntax_error_names_line() -> None:
    with pytest.raises(InventoryError, match=r"^inventory/services.toml:3:\d+: "):
        inventory.load(files(services=b'[services.web]\ntemplate = "x"\nhosts = ]\n'))


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("h1", ["web", "metrics"]),  # by group "web", and "all"
        ("h2", ["web", "metrics"]),
        ("h3", ["job", "metrics"]),  # by host name, and "all"
    ],
)
def test_select_by_name_group_and_all(host: str, expected: list[str]) -> None:
    selected = inventory.load(files()).select(host)
    assert [s.name for s in selected] == expected
    assert all(s.host_name == host for s in selected)


@pytest.mark.parametrize(
    ("host", "service", "expected"),
    [
        # groups in the host's order, then host vars, then service vars; later wins
        ("h1", "metrics", {"level": "host", "only_base": 1, "only_web": 2, "only_host": 3}),
        ("h1", "web", {"level": "service", "only_base": 1, "only_web": 2, "only_host": 3}),
        ("h2", "metrics", {"level": "base", "only_base": 1, "only_web": 2}),
        ("h3", "metrics", {}),
    ],
)
def test_vars_merge_order(host: str, service: str, expected: dict[str, object]) -> None:
    selected = {s.name: s for s in inventory.load(files()).select(host)}
    assert dict(selected[service].vars) == expected


def test_instance_fields() -> None:
    selected = {s.name: s for s in inventory.load(files()).select("h3")}
    job, metrics = selected["job"], selected["metrics"]
    assert (job.enable, job.start, job.health_timeout_sec) == (False, False, None)
    assert job.timer is not None
    assert job.timer.on_calendar == ("*-*-* 01:00:00", "Mon *-*-* 02:00")
    assert (job.timer.persistent, job.timer.randomized_delay_sec) == (True, "30min")
    assert job.timer.accuracy_sec == "1"
    assert (metrics.enable, metrics.start, metrics.timer) == (True, True, None)
    assert job.host_groups == ()
    web = inventory.load(files()).select("h1")[0]
    assert web.health_timeout_sec == 10.0 and web.host_groups == ("base", "web")


def test_unknown_host_names_it_and_lists_known() -> None:
    with pytest.raises(InventoryError) as info:
        inventory.load(files()).select("nope")
    assert str(info.value).startswith(
        "inventory/hosts.toml: host 'nope' is not in the inventory (known: h1, h2, h3)"
    )


def test_empty_files_are_an_empty_inventory() -> None:
    inv = inventory.load(files(hosts=b"[hosts.h1]\n", services=b""))
    assert inv.select("h1") == [] and dict(inv.services) == {}


def test_example_content_loads() -> None:
    paths = [*REPO.glob("inventory/*.toml"), *REPO.glob("templates/*")]
    inv = inventory.load({str(p.relative_to(REPO)): p.read_bytes() for p in paths})
    names = [s.name for s in inv.select("sandbox")]
    assert names[:4] == ["web", "readings-etl", "system-metrics", "srv-backup"]
    assert names[4:] == ["echo", "echo-server", "inbox", "inbox-import", "greeter"]
    assert [s.kind for s in inv.select("sandbox")][4:] == [
        "socket",
        "service",
        "path",
        "service",
    ] + ["service"]
    assert [f.path for f in inv.select_files("sandbox")] == ["/etc/greeter/greeting.conf"]
    assert [s.name for s in inv.select("web1")] == ["web", "system-metrics"]
    assert [s.name for s in inv.select("nas1")] == ["system-metrics", "srv-backup"]
    nas = {s.name: s for s in inv.select("nas1")}["srv-backup"]
    assert nas.vars["memory_max"] == "512M" and nas.vars["source_dir"] == "/srv/volumes"


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        (("services", "web", "timer", "on_calendar"), "services.web.timer.on_calendar"),
        (("services", "web", "hosts", 2), "services.web.hosts[2]"),
        (("services", "a b", "[key]"), 'services."a b"'),
        (("services", "a\nb"), 'services."a\\nb"'),
    ],
)
def test_key_path(loc: tuple[str | int, ...], expected: str) -> None:
    assert inventory.key_path(loc) == expected


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("web", "socket"),
        ("web", "path"),
        ("srv-data", "mount"),
        ("srv-my\\x2ddata", "automount"),
        ("var-swap.img", "swap"),
        ("apps-web", "slice"),
        ("stack", "target"),
        ("nightly", "timer"),
    ],
)
def test_every_kind_loads(name: str, kind: str) -> None:
    body = f"[services.'{name}']\ntemplate = 'web.service.j2'\nhosts = ['h1']\nkind = '{kind}'\n"
    (inst,) = inventory.load(files(services=body.encode())).select("h1")
    assert (inst.name, inst.kind) == (name, kind)


def test_dropins_select_per_host_with_merged_vars() -> None:
    body = (
        b'[dropins."dbus.service".limits]\ntemplate = "web.service.j2"\nhosts = ["web"]\n'
        b'vars = { level = "dropin" }\n'
        b'[dropins."foo@.service".env]\ntemplate = "web.service.j2"\nhosts = ["h3"]\n'
        b"restart = false\n"
    )
    inv = inventory.load(files(services=body))
    (limits,) = inv.select_dropins("h1")
    assert (limits.unit, limits.path, limits.restart) == (
        "dbus.service",
        "dbus.service.d/50-reconciler-limits.conf",
        True,
    )
    assert (limits.vars["level"], limits.vars["only_web"]) == ("dropin", 2)
    (env,) = inv.select_dropins("h3")
    assert (env.path, env.restart) == ("foo@.service.d/50-reconciler-env.conf", False)
