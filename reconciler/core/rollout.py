"""Rollout waves: ``inventory/rollout.toml`` and which host is in which wave (pure; pydantic).

A fleet rolls a commit out wave by wave: each wave follows its own ref,
``refs/heads/rollout/<wave>``, which the promoter moves forward once the wave before it
passed its gate (``reconciler promote``). A host finds its wave here and syncs that ref.

A wave takes hosts by name or group (``hosts``, as services do), or a share of the hosts
no ``hosts`` wave names (``percent``) by a stable hash bucket of the host name:
``int(sha256(name).hexdigest()[:8], 16) % 10000``, so a host keeps its wave while hosts come
and go, and every machine (the host itself, the promoter, a simulation) agrees without
talking. The ``percent`` waves, in order, take consecutive bucket ranges (``percent = 20``:
2,000 of the 10,000 buckets). Every host of hosts.toml must be in exactly one wave: a host
named twice, percents over 100 or a host left in no wave are refused in one line naming the
file, the key and the host, before anything on a host is touched.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from reconciler.core.inventory import (
    ALL,
    HOSTS_FILE,
    HostsFile,
    Inventory,
    key_path,
    listing,
    parse_file,
    quote,
)
from reconciler.core.rollout_refs import ROLLOUT_FILE, wave_ref
from reconciler.errors import InventoryError, UnknownHostError

BUCKETS = 10_000  # percent = 1 is 100 buckets: shares down to 0.01 %
_WAVE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_BRANCH = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._/-]{0,199}")


def bucket(host: str) -> int:
    """The stable hash bucket (0..9999) of a host name: the same on every machine."""
    return int(hashlib.sha256(host.encode("utf-8")).hexdigest()[:8], 16) % BUCKETS


def _wave_name(value: str) -> str:
    if not _WAVE_NAME.fullmatch(value):
        raise PydanticCustomError(
            "wave_name",
            f"invalid wave name '{quote(value)}': use a-z, 0-9 and '-' (a letter or digit "
            "first, at most 63): it names the ref refs/heads/rollout/<wave>",
        )
    return value


def _branch(value: str) -> str:
    name = value.removeprefix("refs/heads/")
    if not _BRANCH.fullmatch(name) or ".." in name or name.endswith((".lock", "/", ".")):
        raise PydanticCustomError("branch", f"invalid branch name '{quote(value)}'")
    if name.split("/")[0] in ("rollout", "rollout-control"):
        raise PydanticCustomError(
            "branch",
            f"'{quote(value)}' is under rollout/ or rollout-control/, which the promoter "
            "writes: name the branch operators push to (e.g. 'main')",
        )
    return name


WaveName = Annotated[str, AfterValidator(_wave_name)]
Share = Annotated[float, Field(ge=0, le=1)]


class Wave(BaseModel):
    """One ``[[rollout.waves]]`` table: who is in it and what its gate asks."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: WaveName
    hosts: list[str] | None = None  # host names, group names or "all"
    percent: Annotated[float, Field(gt=0, le=100)] | None = None
    soak_sec: Annotated[float, Field(ge=0, le=30 * 86400)] = 0.0
    min_reporting: Share = 0.9  # share of the wave's hosts that must report
    failure_budget: Share = 0.0  # share of the wave's hosts allowed to fail the target
    approve: bool = False  # advances only to a commit with a signed tag

    @property
    def ref(self) -> str:
        return wave_ref(self.name)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    source: Annotated[str, AfterValidator(_branch)] = "main"
    waves: Annotated[list[Wave], Field(min_length=1)]


class RolloutFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    rollout: _Section


_KEYS = sorted({f for m in (Wave, _Section, RolloutFile) for f in m.model_fields})


@dataclass(frozen=True)
class Rollout:
    """The validated waves and the wave of every host of hosts.toml."""

    source: str  # the branch operators push to, e.g. "main"
    waves: tuple[Wave, ...]
    assignment: Mapping[str, str]  # host name -> wave name, in hosts.toml order

    @property
    def first(self) -> Wave:
        return self.waves[0]

    def wave(self, name: str) -> Wave:
        """The wave called ``name``."""
        for wave in self.waves:
            if wave.name == name:
                return wave
        known = listing(w.name for w in self.waves)
        raise InventoryError(f"{ROLLOUT_FILE}: no wave '{quote(name)}' (waves: {known})")

    def wave_of(self, host: str) -> Wave:
        """The wave ``host`` is in (every host of hosts.toml is in exactly one)."""
        name = self.assignment.get(host)
        if name is None:
            raise UnknownHostError(
                f"{HOSTS_FILE}: host '{quote(host)}' is not in the inventory, so in no wave "
                f"of {ROLLOUT_FILE}",
                hint="pass --host NAME or add a [hosts.NAME] table",
            )
        return self.wave(name)

    def hosts_of(self, wave: str | Wave) -> list[str]:
        """The hosts of a wave, in hosts.toml order (a wave may have none)."""
        name = wave.name if isinstance(wave, Wave) else self.wave(wave).name
        return [host for host, w in self.assignment.items() if w == name]

    def next_of(self, wave: str | Wave) -> Wave | None:
        """The wave after ``wave``, or None for the last."""
        name = wave.name if isinstance(wave, Wave) else wave
        names = [w.name for w in self.waves]
        i = names.index(self.wave(name).name)
        return self.waves[i + 1] if i + 1 < len(self.waves) else None


def _fail(where: tuple[str | int, ...], why: str, hint: str | None = None) -> InventoryError:
    return InventoryError(f"{ROLLOUT_FILE}: {key_path(('rollout', *where))}: {why}", hint=hint)


def _named(waves: list[Wave], hosts: HostsFile) -> dict[str, tuple[int, int]]:
    """Host -> (wave index, index in its ``hosts``) for the hosts the ``hosts`` waves name."""
    members: dict[str, list[str]] = {}  # group -> hosts, in hosts.toml order
    for host, table in hosts.hosts.items():
        for group in table.groups:
            members.setdefault(group, []).append(host)
    known = {ALL, *hosts.hosts, *hosts.groups, *members}
    named: dict[str, tuple[int, int]] = {}
    for w, wave in enumerate(waves):
        for i, target in enumerate(wave.hosts or ()):
            if target not in known:
                why = f"'{quote(target)}' is neither a host nor a group of {HOSTS_FILE}"
                raise _fail(("waves", w, "hosts", i), f"{why} (known: {listing(known)})")
            if target == ALL:
                found = list(hosts.hosts)
            else:
                found = [target] if target in hosts.hosts else members.get(target, [])
            for host in found:
                before = named.get(host)
                if before is not None and before[0] != w:
                    first = key_path(("rollout", "waves", before[0], "hosts", before[1]))
                    raise _fail(
                        ("waves", w, "hosts", i),
                        f"host '{quote(host)}' is in two waves: '{waves[before[0]].name}' "
                        f"({first}) and '{wave.name}'",
                        hint="a host is in exactly one wave",
                    )
                named.setdefault(host, (w, i))
    return named


def _check_waves(waves: list[Wave]) -> None:
    seen: dict[str, int] = {}
    total = 0
    for w, wave in enumerate(waves):
        if wave.name in seen:
            raise _fail(
                ("waves", w, "name"), f"wave '{wave.name}' is also waves[{seen[wave.name]}]"
            )
        seen[wave.name] = w
        if (wave.hosts is None) == (wave.percent is None):
            raise _fail(("waves", w), "a wave has either 'hosts' or 'percent' (one of them)")
        if wave.percent is not None:
            total += round(wave.percent * 100)
            if total > BUCKETS:
                raise _fail(
                    ("waves", w, "percent"),
                    f"the percents of the waves sum to {total / 100:g} by this wave (over 100)",
                )


def resolve(section: _Section, hosts: HostsFile) -> Rollout:
    """Assign every host of ``hosts`` to one wave, or refuse the definition in one line."""
    waves = section.waves
    _check_waves(waves)
    named = _named(waves, hosts)
    ranges: list[tuple[int, Wave]] = []  # (end bucket, exclusive; wave) of the percent waves
    end = 0
    for wave in waves:
        if wave.percent is not None:
            end += round(wave.percent * 100)
            ranges.append((end, wave))
    assignment: dict[str, str] = {}
    for host in hosts.hosts:
        if host in named:
            assignment[host] = waves[named[host][0]].name
            continue
        b = bucket(host)
        found = next((w for stop, w in ranges if b < stop), None)
        if found is None:
            covered = f"the percent waves take buckets 0..{end - 1}" if end else "no percent wave"
            raise _fail(
                ("waves",),
                f"host '{quote(host)}' is in no wave (its bucket is {b}; {covered})",
                hint="name it in a wave's 'hosts', or let the percents sum to 100",
            )
        assignment[host] = found.name
    return Rollout(section.source, tuple(waves), assignment)


def parse(files: Mapping[str, bytes], inventory: Inventory | None = None) -> Rollout | None:
    """The rollout of a snapshot (repo-relative path -> bytes), or None without rollout.toml.

    ``inventory``: the snapshot's validated inventory, if loaded already (otherwise only
    hosts.toml is read: a host needs no templates to find its wave).
    """
    if ROLLOUT_FILE not in files:
        return None
    hosts = inventory.hosts_file if inventory else parse_file(files, HOSTS_FILE, HostsFile)
    data: RolloutFile = parse_file(files, ROLLOUT_FILE, RolloutFile, _KEYS)
    return resolve(data.rollout, hosts)
