"""rollout.parse: waves by name, group and hash bucket; every host in exactly one wave."""

from __future__ import annotations

import hashlib

import pytest

from reconciler.core import rollout
from reconciler.errors import InventoryError

HOSTS = b"""
[groups.canaries]
[hosts.c1]
groups = ["canaries"]
[hosts.c2]
groups = ["canaries"]
[hosts.db1]
groups = ["db"]
""" + b"".join(b"[hosts.h%d]\n" % i for i in range(200))

GOOD = b"""
[rollout]
source = "main"
[[rollout.waves]]
name = "canary"
hosts = ["canaries", "db1"]
soak_sec = 300
min_reporting = 0.9
failure_budget = 0.0
approve = true
[[rollout.waves]]
name = "early"
percent = 20
[[rollout.waves]]
name = "rest"
percent = 80
"""


def parse(text: bytes, hosts: bytes = HOSTS) -> rollout.Rollout | None:
    return rollout.parse({"inventory/hosts.toml": hosts, "inventory/rollout.toml": text})


def test_no_rollout_file_means_no_waves() -> None:
    assert rollout.parse({"inventory/hosts.toml": HOSTS}) is None


def test_bucket_is_the_contract_hash() -> None:
    for name in ("c1", "web-17", "ünïcode"):
        digest = hashlib.sha256(name.encode()).hexdigest()
        assert rollout.bucket(name) == int(digest[:8], 16) % 10000
    assert rollout.bucket("h0") == rollout.bucket("h0")  # stable, not Python's hash()


def test_waves_by_name_group_and_bucket() -> None:
    ro = parse(GOOD)
    assert ro is not None
    assert ro.source == "main"
    assert [w.name for w in ro.waves] == ["canary", "early", "rest"]
    assert ro.first.name == "canary" and ro.first.approve and ro.first.soak_sec == 300
    assert ro.hosts_of("canary") == ["c1", "c2", "db1"]
    assert ro.wave_of("db1").name == "canary"
    early, rest = ro.hosts_of("early"), ro.hosts_of(ro.wave("rest"))
    assert len(early) + len(rest) == 200
    for host in early:
        assert rollout.bucket(host) < 2000
    for host in rest:
        assert rollout.bucket(host) >= 2000
    assert 20 <= len(early) <= 60  # about a fifth of 200
    assert ro.wave("rest").ref == "refs/heads/rollout/rest"
    assert ro.wave("early").min_reporting == 0.9 and ro.wave("early").failure_budget == 0.0
    assert ro.next_of("canary") == ro.wave("early") and ro.next_of("rest") is None


def test_all_and_defaults() -> None:
    ro = parse(b'[[rollout.waves]]\nname = "everyone"\nhosts = ["all"]\n')
    assert ro is not None and ro.source == "main"
    assert len(ro.hosts_of("everyone")) == 203


def test_source_given_as_full_ref() -> None:
    text = b'[rollout]\nsource = "refs/heads/prod"\n[[rollout.waves]]\nname = "a"\npercent = 100\n'
    ro = parse(text)
    assert ro is not None and ro.source == "prod"


def test_percent_waves_take_consecutive_ranges() -> None:
    text = b"".join(
        b'[[rollout.waves]]\nname = "w%d"\npercent = %s\n' % (i, p)
        for i, p in enumerate([b"0.5", b"49.5", b"50"])
    )
    ro = parse(text, b"".join(b"[hosts.n%d]\n" % i for i in range(300)))
    assert ro is not None
    for host, wave in ro.assignment.items():
        b = rollout.bucket(host)
        assert wave == ("w0" if b < 50 else "w1" if b < 5000 else "w2")


def test_unknown_host_is_one_line() -> None:
    ro = parse(GOOD)
    assert ro is not None
    with pytest.raises(InventoryError, match="host 'nope' is not in the inventory"):
        ro.wave_of("nope")


BAD = [
    (
        "unknown key",
        b'[[rollout.waves]]\nname = "a"\npercent = 100\nprecent = 1\n',
        "inventory/rollout.toml: rollout.waves[0].precent: unknown key (did you mean 'percent'?)",
    ),
    (
        "wrong type",
        b'[[rollout.waves]]\nname = "a"\npercent = "all"\n',
        "inventory/rollout.toml: rollout.waves[0].percent:",
    ),
    (
        "percent over 100",
        b'[[rollout.waves]]\nname = "a"\npercent = 101\n',
        "rollout.waves[0].percent: Input should be less than or equal to 100",
    ),
    (
        "percents sum over 100",
        b'[[rollout.waves]]\nname = "a"\npercent = 60\n[[rollout.waves]]\nname = "b"\n'
        b"percent = 50\n",
        "rollout.waves[1].percent: the percents of the waves sum to 110 by this wave (over 100)",
    ),
    (
        "host in no wave",
        b'[[rollout.waves]]\nname = "a"\nhosts = ["canaries"]\n',
        "inventory/rollout.toml: rollout.waves: host 'db1' is in no wave (its bucket is",
    ),
    (
        "host in no wave under 100 percent",
        b'[[rollout.waves]]\nname = "a"\npercent = 1\n',
        "is in no wave (its bucket is",
    ),
    (
        "overlap by group",
        b'[[rollout.waves]]\nname = "a"\nhosts = ["c1"]\n[[rollout.waves]]\nname = "b"\n'
        b'hosts = ["canaries"]\n',
        "rollout.waves[1].hosts[0]: host 'c1' is in two waves: 'a' (rollout.waves[0].hosts[0]) "
        "and 'b'",
    ),
    (
        "both hosts and percent",
        b'[[rollout.waves]]\nname = "a"\nhosts = ["c1"]\npercent = 100\n',
        "rollout.waves[0]: a wave has either 'hosts' or 'percent'",
    ),
    (
        "neither hosts nor percent",
        b'[[rollout.waves]]\nname = "a"\n',
        "rollout.waves[0]: a wave has either 'hosts' or 'percent'",
    ),
    (
        "bad wave name",
        b'[[rollout.waves]]\nname = "Canary/1"\npercent = 100\n',
        "rollout.waves[0].name: invalid wave name 'Canary/1'",
    ),
    (
        "duplicate wave name",
        b'[[rollout.waves]]\nname = "a"\nhosts = ["c1"]\n[[rollout.waves]]\nname = "a"\n'
        b"percent = 100\n",
        "rollout.waves[1].name: wave 'a' is also waves[0]",
    ),
    (
        "unknown host or group",
        b'[[rollout.waves]]\nname = "a"\nhosts = ["ghost"]\n',
        "rollout.waves[0].hosts[0]: 'ghost' is neither a host nor a group",
    ),
    ("no waves", b"[rollout]\nwaves = []\n", "rollout.waves: List should have at least 1 item"),
    ("no rollout table", b"", "inventory/rollout.toml: rollout: Field required"),
    (
        "source under the rollout prefix",
        b'[rollout]\nsource = "rollout/x"\n[[rollout.waves]]\nname = "a"\npercent = 100\n',
        "rollout.source: 'rollout/x' is under rollout/ or rollout-control/",
    ),
    (
        "share out of range",
        b'[[rollout.waves]]\nname = "a"\npercent = 100\nmin_reporting = 1.5\n',
        "rollout.waves[0].min_reporting: Input should be less than or equal to 1",
    ),
    ("toml syntax", b"[[rollout.waves]\n", "inventory/rollout.toml:1:"),
]


@pytest.mark.parametrize(("text", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_rollout_is_refused_in_one_line(text: bytes, message: str) -> None:
    with pytest.raises(InventoryError) as caught:
        parse(text)
    line = str(caught.value)
    assert message in line
    assert "\n" not in caught.value.message
