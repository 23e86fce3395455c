"""The watch's batches (``Watcher.step``): at most ``BATCH_MAX`` signals handled a step, taken
from the queue one at a time as they are handled, the rest left queued in order (real
SQLite; signals as systemd's bytes, handed to the stream by a stand-in connection)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from reconciler import config
from reconciler.core.watch_state import WANTED
from reconciler.model import LiveUnit
from reconciler.monitor.watch import handler
from reconciler.store.sync_store import Store
from reconciler.systemd.connection import Connection
from reconciler.systemd.signals import LookStream
from reconciler.systemd.wire import MatchRule, Message, build_call, split_frames, unit_path

UNIT = "web.service"


class _Listened:
    def __init__(self) -> None:
        self.sinks: list[Callable[[Message], None]] = []

    def listen(self, _rule: MatchRule, sink: Callable[[Message], None]) -> int:
        self.sinks.append(sink)
        return len(self.sinks)

    def unlisten(self, _rule: MatchRule, _key: int) -> None:
        pass

    def receive(self, _deadline: float | None, _what: str) -> bool:
        return False  # nothing more on the socket


def changed(state: str, sub: str) -> Message:
    props = {"ActiveState": ("s", state), "SubState": ("s", sub)}
    data = build_call(
        1,
        unit_path(UNIT),
        "org.freedesktop.DBus.Properties",
        "PropertiesChanged",
        "sa{sv}as",
        ("org.freedesktop.systemd1.Unit", props, []),
    )
    (msg,) = split_frames(bytearray(data))
    return msg


def test_a_step_handles_at_most_a_batch_and_leaves_the_rest_queued(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text("")
    settings = config.load(conf, {"state_dir": str(tmp_path)})
    store = Store.open(tmp_path / "state.db")
    watcher = handler.Watcher(settings, store, None, announce=lambda *_: None)
    live = LiveUnit(UNIT, "loaded", "active", "running", invocation_id="a")
    watcher.take([UNIT], {UNIT: live}, {}, time.monotonic() - 1)
    conn = _Listened()
    watcher.stream = LookStream(cast(Connection, conn), [UNIT], 4096, WANTED)
    states = [("active", "running"), ("deactivating", "stop-sigterm")]
    for i in range(handler.BATCH_MAX + 5):
        for sink in conn.sinks:
            sink(changed(*states[i % 2]))
    try:
        assert watcher.step(0) == handler.BATCH_MAX
        assert watcher.stream.depth == 5 and watcher.events == handler.BATCH_MAX
        assert watcher.step(0) == 5  # the rest, in order: the last one is the unit's state
        view = watcher.views[UNIT].live
        assert (view.active_state, view.sub_state) == states[(handler.BATCH_MAX + 4) % 2]
        assert watcher.step(0) == 0 and watcher.events == handler.BATCH_MAX + 5
    finally:
        watcher.close()
        store.close()
