"""Plain data shared by the pure core and the adapters (pure: no I/O imports).

Adapters turn outside data into these types (``systemd`` -> ``LiveUnit``, ``render`` ->
``DesiredUnit``); the core (``plan``, ``patterns``) works only on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DesiredUnit:
    """One unit file the inventory wants on this host, as rendered."""

    name: str  # e.g. "web.service", "backup.timer"
    content: str
    service: str  # the inventory service it comes from
    enable: bool = True
    start: bool = True  # False for a service run by its timer
    health_timeout_sec: float | None = None  # None: no health gate
    restart: bool = True  # a drop-in (name UNIT.d/FILE.conf): restart UNIT when it changes
    # a unit Podman's Quadlet generator makes from this host file at the Reload: never
    # written, enabled or verified by the sync, only started, gated and monitored
    generated_from: str | None = None


@dataclass(frozen=True)
class DesiredFile:
    """One config file (``[files."PATH"]``) the inventory wants on this host, as rendered.

    ``path`` is the host's absolute path; ``owner``/``group`` are names, resolved on the host.
    """

    path: str
    content: bytes
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    restart: tuple[str, ...] = ()  # units restarted when the file changes
    reload: tuple[str, ...] = ()  # units reloaded (ReloadUnit) when the file changes
    adopt: bool = False  # overwrite a file already there (kept for restore) instead of refusing
    quadlet: bool = False  # a Quadlet file of a [services.NAME] (not under files_roots' rule)


@dataclass(frozen=True)
class FileMeta:
    """A regular file's content and metadata, as kept in the file manifest."""

    content: bytes
    mode: int
    uid: int
    gid: int


@dataclass(frozen=True)
class ManagedFile:
    """An entry of the file manifest: what a sync wrote at ``path``, and (adopted) what was
    there before it, restored when the entry goes."""

    path: str
    sha256: str
    mode: int
    uid: int
    gid: int
    original: FileMeta | None = None
    restart: tuple[str, ...] = ()  # units restarted when it changes (also when it goes)
    reload: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)  # thousands alive in a monitor: no __dict__ each
class LiveUnit:
    """What systemd says of one unit right now."""

    name: str
    load_state: str = "not-found"  # loaded, not-found, masked, error, ...
    active_state: str = "inactive"  # active, inactive, failed, activating, ...
    sub_state: str = "dead"
    unit_file_state: str = ""  # enabled, disabled, static, masked, "" when unknown
    result: str = ""  # success, exit-code, signal, start-limit-hit, ...
    n_restarts: int = 0
    invocation_id: str = ""
    exec_main_code: int = 0  # CLD_EXITED=1, CLD_KILLED=2, CLD_DUMPED=3
    exec_main_status: int = 0
    memory_current: int | None = None
    need_daemon_reload: bool = False
    service_type: str = ""  # simple, oneshot, notify, ... ("" for non-services)
    fragment_path: str | None = None  # the file systemd loaded it from; None: not read


# Actions: nouns, executed in order by ``apply``. ``plan`` builds them.


@dataclass(frozen=True)
class WriteUnitFile:
    name: str
    content: str
    previous: str | None = None  # None: a new file


@dataclass(frozen=True)
class RemoveUnitFile:
    name: str
    previous: str = ""


@dataclass(frozen=True)
class WriteFile:
    """Write a config file atomically (temp file, fsync, chmod/chown, rename)."""

    path: str  # the host's absolute path
    content: bytes
    mode: int
    uid: int
    gid: int
    previous: bytes | None = None  # None: a new file
    restore: bool = False  # an adopted file's original put back


@dataclass(frozen=True)
class RemoveFile:
    path: str
    previous: bytes = b""


@dataclass(frozen=True)
class ReloadUnit:
    """``ReloadUnit``: a running unit re-reads a config file it uses."""

    name: str


@dataclass(frozen=True)
class DaemonReload:
    pass


@dataclass(frozen=True)
class EnableUnits:
    names: tuple[str, ...]


@dataclass(frozen=True)
class DisableUnits:
    names: tuple[str, ...]


@dataclass(frozen=True)
class StartUnit:
    name: str


@dataclass(frozen=True)
class RestartUnit:
    name: str


@dataclass(frozen=True)
class StopUnit:
    name: str


@dataclass(frozen=True)
class ResetFailedUnit:
    """Clear a pruned unit's ``failed`` state (it has nothing to stop)."""

    name: str


Action = (
    WriteUnitFile
    | RemoveUnitFile
    | DaemonReload
    | EnableUnits
    | DisableUnits
    | StartUnit
    | RestartUnit
    | StopUnit
    | ResetFailedUnit
    | WriteFile
    | RemoveFile
    | ReloadUnit
)


@dataclass(frozen=True)
class Plan:
    """An ordered list of actions; empty means the host already matches."""

    actions: tuple[Action, ...] = ()
    owned_after: frozenset[str] = field(default_factory=frozenset)  # manifest once applied
    health_checks: tuple[tuple[str, float], ...] = ()  # (unit, timeout_sec) to gate on
    notes: tuple[str, ...] = ()  # warnings for the operator (e.g. a hand-masked unit left alone)
    files_during: tuple[ManagedFile, ...] = ()  # file manifest while applying (old and new)
    files_after: tuple[ManagedFile, ...] = ()  # file manifest once applied

    @property
    def empty(self) -> bool:
        return not self.actions


@dataclass(frozen=True)
class CommitInfo:
    """Who changed what: one commit of the config repository, as plan, history and logs show it."""

    revision: str  # full commit id
    author: str  # "Name <email>"
    subject: str  # first line of the message
    authored_at: int = 0  # epoch seconds


@dataclass(frozen=True)
class Snapshot:
    """The config repository at one commit: the files under inventory/ and templates/."""

    revision: str  # full commit id
    files: dict[str, bytes]  # repo-relative path -> content; symlinks are refused by source
    summary: str = ""  # first line of the commit message
    commit: CommitInfo | None = field(default=None, compare=False)  # author, subject
    resolved: str = field(default="", compare=False)  # what the ref named: refs/heads/main, ...
