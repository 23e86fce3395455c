"""The refs a rollout moves (pure, import-light).

Kept apart from ``core.rollout`` because a host's no-op poll needs only these names: that
module's pydantic models cost ~0.11 s of CPU to import, a fifth of a 50-host fleet's poll.
"""

from __future__ import annotations

ROLLOUT_FILE = "inventory/rollout.toml"
WAVE_PREFIX = "refs/heads/rollout/"  # the hosts poll this prefix only
CONTROL_PREFIX = "refs/heads/rollout-control/"  # outside the hosts' prefix: never polled
PAUSE_REF = CONTROL_PREFIX + "pause"  # exists: every wave holds
HALT_REF = CONTROL_PREFIX + "halt"  # its commit message names the halted target and why


ANY_WAVE = WAVE_PREFIX + "*"  # every wave's ref, as a push filter shows it


def wave_ref(wave: str) -> str:
    """The ref a wave follows: ``refs/heads/rollout/<wave>``."""
    return WAVE_PREFIX + wave


def wave_of(ref: str) -> str | None:
    """The wave whose ref ``ref`` is (``refs/heads/rollout/<wave>``); None: not a wave ref."""
    name = ref.removeprefix(WAVE_PREFIX)
    return name if name != ref and "/" not in name else None
