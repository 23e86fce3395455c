"""Property changes of units as they happen (talks to systemd through a dbus_socket.Connection).

systemd emits ``PropertiesChanged`` for state changes (ActiveState, SubState, Result,
NRestarts, ExecMain*, timestamps, timers' NextElapse*), never for UnitFileState,
NeedDaemonReload or MemoryCurrent: those must still be read. On the system bus only
after ``Subscribe`` (``Systemd.watch`` does it); on the private socket always.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.systemd.connection import Connection, SignalQueue
from reconciler.systemd.wire import (
    PROPERTIES,
    UNIT_PATH_PREFIX,
    MatchRule,
    unit_name_from_path,
    unit_path,
)

if TYPE_CHECKING:
    from reconciler.systemd.wire import Message

MAX_PATH_RULES = 20  # beyond this, one rule for all units and a filter here


@dataclass(frozen=True, slots=True)
class PropertyChange:
    unit: str
    interface: str
    changed: dict[str, object]
    at: float  # time.monotonic() when the signal was received
    invalidated: tuple[str, ...] = ()


class PropertyStream:
    """``PropertiesChanged`` of units, queued (bounded) as the connection receives them.

    Iterate it, or call :meth:`next_change`. ``dropped`` counts signals that arrived while
    the queue was full: after a drop the caller should read the units' state again.
    """

    def __init__(self, conn: Connection, names: Sequence[str] | None, queue_size: int) -> None:
        # object path -> unit name of the units watched: the filter, and each signal's unit
        # (the caller's name strings, not one decoded per signal or cached apart)
        self.names_by_path = None if names is None else {unit_path(n): n for n in names}
        paths = self.names_by_path
        if paths is None or len(paths) > MAX_PATH_RULES:
            rules = [
                MatchRule(PROPERTIES, "PropertiesChanged", path_namespace=UNIT_PATH_PREFIX[:-1])
            ]
        else:
            rules = [MatchRule(PROPERTIES, "PropertiesChanged", path=p) for p in sorted(paths)]
        accept = None if paths is None else (lambda msg: msg.path in paths)
        self._queue: SignalQueue[object] = SignalQueue(
            conn, rules, queue_size, self._decode, accept
        )

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    @property
    def closed(self) -> bool:
        return self._queue.closed

    @property
    def depth(self) -> int:
        """Signals received and not yet taken."""
        return len(self._queue.items)

    def next_change(self, timeout: float | None = None) -> PropertyChange | None:
        """The next change, waiting up to ``timeout`` seconds (None: forever); None on timeout."""
        queued = self._queue.next(timeout, "watch unit properties")
        return None if queued is None else self._change(queued)

    def _change(self, queued: object) -> PropertyChange:
        """What :meth:`_decode` queued, as the change it stands for."""
        assert isinstance(queued, PropertyChange)
        return queued

    def _decode(self, msg: Message, at: float) -> object:
        """One signal as it is queued (subclasses may read less of it, or keep it in a
        smaller shape that :meth:`_change` turns back into a ``PropertyChange``)."""
        interface, changed, invalidated = msg.body()
        return PropertyChange(
            unit=self.unit_of(msg.path),
            interface=str(interface),
            changed=dict(changed),  # type: ignore[call-overload]
            at=at,
            invalidated=tuple(invalidated),  # type: ignore[arg-type]
        )

    def unit_of(self, path: str) -> str:
        """The unit name of an accepted signal's object path."""
        names = self.names_by_path
        return names[path] if names is not None else unit_name_from_path(path)

    def __iter__(self) -> Iterator[PropertyChange]:
        while not self.closed:
            change = self.next_change()
            if change is not None:
                yield change

    def close(self) -> None:
        self._queue.close()

    def __enter__(self) -> PropertyStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
