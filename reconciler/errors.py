"""The one error tree of the project (pure). Messages are written for operators.

    ReconcilerError(message, hint)          root; the CLI prints one line and exits 1
    ├── UsageError                          bad flag or config value (exit 2)
    ├── SourceError                         git: fetch, ref, signature          (waiting)
    ├── InventoryError                      inventory/*.toml refused            (stalling)
    │   └── UnknownHostError                this host is not in the inventory   (exit 2)
    ├── RenderError                         template or unit validation failed  (stalling)
    ├── SystemdError(dbus_name)             D-Bus call refused or bus down      (waiting)
    ├── ApplyError                          a plan could not be applied/health gate failed
    │   └── LockedError                     another sync holds the lock        (waiting)
    ├── StateError                          the SQLite store                    (generic)
    ├── JobError                            a scheduled job (metrics, backup, etl)
    ├── RolloutError                        the promoter: refs, Prometheus, a halt (waiting)
    │   ├── LeaseError                      another promoter moved a ref first  (exit 75)
    │   └── NoRolloutError                  the repository has no rollout.toml  (exit 2)
    └── SandboxError                        the disposable systemd host could not boot

Whether to retry follows Flux's split: *stalling* errors need a new commit or an
operator (retrying the same input cannot help), *waiting* errors may clear by
themselves. Only ``cli.py`` prints these and picks exit codes.
"""

from __future__ import annotations

import re

# user@, or user:password@ where the password may hold an unencoded '/' (git and urlsplit
# would take it for the path; it must not show either way)
_CREDENTIALS_IN_URL = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]{0,31}://)(?:[^/@:\s]{0,256}:[^@\s]{0,512}|[^/@\s]{1,512})@"
)


def redact(text: str) -> str:
    """Strip credentials from URLs (``https://user:token@host`` -> ``https://***@host``)."""
    return _CREDENTIALS_IN_URL.sub(r"\g<scheme>***@", text)


class ReconcilerError(Exception):
    """Root of every error an operator may see; ``hint`` says what to do next."""

    exit_code = 1
    stalling = False  # True: retrying with the same input cannot succeed

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = redact(message)
        self.hint = redact(hint) if hint else None
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class UsageError(ReconcilerError):
    exit_code = 2
    stalling = True


class SourceError(ReconcilerError):
    pass


class InventoryError(ReconcilerError):
    stalling = True


class UnknownHostError(InventoryError, UsageError):
    """``--host`` (or the host name) names no host of the inventory: bad usage, exit 2."""


class RenderError(ReconcilerError):
    stalling = True


class SystemdError(ReconcilerError):
    """A D-Bus error, keeping systemd's error name (``org.freedesktop.systemd1.NoSuchUnit``)."""

    def __init__(self, message: str, hint: str | None = None, dbus_name: str | None = None) -> None:
        super().__init__(message, hint)
        self.dbus_name = dbus_name

    @property
    def disconnected(self) -> bool:
        """The connection itself was lost or refused (systemd re-executing, dbus restarted):
        a new connection may well succeed, unlike a call systemd refused."""
        return self.dbus_name in DISCONNECTED


DISCONNECTED = frozenset(
    {"org.freedesktop.DBus.Error.Disconnected", "org.freedesktop.DBus.Error.NoServer"}
)


class ApplyError(ReconcilerError):
    pass


class LockedError(ApplyError):
    exit_code = 75  # EX_TEMPFAIL: another sync runs; the timer will try again


class StateError(ReconcilerError):
    pass


class JobError(ReconcilerError):
    pass


class RolloutError(ReconcilerError):
    """``reconciler promote`` / ``fleet``: nothing was moved (or the rollout was halted)."""


class LeaseError(RolloutError):
    """A compare-and-swap push lost: the ref moved since it was read (another promoter)."""

    exit_code = 75  # EX_TEMPFAIL: the next step reads the new refs


class NoRolloutError(RolloutError, UsageError):
    """``promote`` / ``fleet status`` on a config repository without ``inventory/rollout.toml``:
    no rollout is configured (a configuration matter, exit 2), not a failed step."""


class SandboxError(ReconcilerError):
    pass
