"""Benchmark: the D-Bus codec (systemd/wire.py) against jeepney's, per message, CPU time.

One ``Get`` call built and one message parsed, each timed alone, best of 7 runs of 20,000
(``time.process_time``: CPU time, so a loaded shared machine inflates it less than wall
time). The figures back systemd/wire.py's docstring.

Run: .venv/bin/python -m bench.bench_wire
"""

from __future__ import annotations

import time
import timeit

from jeepney import DBusAddress, new_method_call
from jeepney.low_level import Parser

from bench.machine import describe_machine
from reconciler.systemd import wire
from reconciler.systemd.client import unit_path

N, REPEAT = 20_000, 7


def main() -> int:
    path = unit_path("avahi-daemon.service")
    address = DBusAddress(path, bus_name=wire.SYSTEMD, interface=wire.PROPERTIES)
    raw = new_method_call(address, "Get", "ss", (wire.SERVICE, "NRestarts")).serialise(serial=3)

    def jeepney_build() -> None:
        new_method_call(address, "Get", "ss", (wire.SERVICE, "NRestarts")).serialise(serial=7)

    def jeepney_parse() -> None:
        parser = Parser()
        parser.add_data(raw)
        parser.get_next_message()

    def wire_build() -> None:
        wire.build_get(7, path, wire.SERVICE, "NRestarts")

    def wire_parse() -> None:
        wire.split_frames(bytearray(raw))

    print("bench_wire: one Get built, one message parsed (CPU time, best of 7 x 20,000)")
    print(describe_machine())
    cost = {}
    for name, fn in [
        ("jeepney build", jeepney_build),
        ("jeepney parse", jeepney_parse),
        ("wire build", wire_build),
        ("wire parse", wire_parse),
    ]:
        cost[name] = min(timeit.repeat(fn, number=N, repeat=REPEAT, timer=time.process_time)) / N
        print(f"  {name:<14} {cost[name] * 1e6:6.1f} us per message")
    jeepney = cost["jeepney build"] + cost["jeepney parse"]
    ours = cost["wire build"] + cost["wire parse"]
    print(
        f"  build + parse: jeepney {jeepney * 1e6:.1f} us, wire {ours * 1e6:.1f} us "
        f"({jeepney / ours:.0f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
