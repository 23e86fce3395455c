"""Run the render in a child process with bounded CPU time and memory (talks to the kernel).

A template is code from the repository. Jinja2's sandbox keeps it away from Python
internals, not from spinning or allocating: nested ``range()`` loops rendered for 45 s of CPU
and more, and ``center``, ``~`` in a loop or ``format`` allocated 1.5-2.9 GB, all in the root
sync process holding the sync lock. So the whole render (parse the inventory, render every
unit) runs in a forked child under ``RLIMIT_CPU`` and ``RLIMIT_AS`` (its address space at the
fork plus ``render_memory_mb``), with a wall-clock deadline on top; the units come back as
JSON through a pipe, a refusal as its error class, message and hint.

A fork costs a few milliseconds and the child has every module the parent imported; a no-op
sync does not render at all (its render is cached), so it pays nothing.
"""

from __future__ import annotations

import json
import math
import os
import resource
import select
import signal
import time
from collections.abc import Callable
from typing import NoReturn

from reconciler import errors
from reconciler.errors import ReconcilerError, RenderError
from reconciler.model import DesiredUnit
from reconciler.store.sync_store import decode_desired, encode_desired

OUT_OF_MEMORY = b"M"
UNITS, REFUSED, CRASHED = b"U", b"E", b"X"
MAX_REPLY = 256 << 20  # 200 units of 1 MiB each fit; a child answering more is cut off


def render_bounded(
    render: Callable[[], list[DesiredUnit]], *, what: str, cpu_sec: float, memory_mb: float
) -> list[DesiredUnit]:
    """``render()`` in a child limited to ``cpu_sec`` of CPU and ``memory_mb`` more memory.

    Raises the child's ReconcilerError as is; exceeding a limit is a RenderError naming it.
    """
    text = run_bounded(
        lambda: encode_desired(render()), what=what, cpu_sec=cpu_sec, memory_mb=memory_mb
    )
    return decode_desired(text)


def run_bounded(produce: Callable[[], str], *, what: str, cpu_sec: float, memory_mb: float) -> str:
    """``produce()`` (a render, its result as text) in a bounded child, as ``render_bounded``."""
    hint = "simplify the templates or the inventory (loops, string sizes), or raise the limit"
    wait_sec = 4 * cpu_sec + 30  # CPU time is bounded by the kernel; waiting (a busy host) too
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _child(produce, write_fd, cpu_sec, memory_mb)
    os.close(write_fd)
    try:
        data, complete = _read_all(read_fd, time.monotonic() + wait_sec)
    finally:
        os.close(read_fd)
    if not complete:  # past the deadline or answering too much: it is not waited for
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    kind, body = data[:1], data[1:]
    if kind == UNITS and complete and os.waitstatus_to_exitcode(status) == 0:
        return body.decode("utf-8")
    if kind == REFUSED and complete:
        raise _error(json.loads(body))
    if kind == OUT_OF_MEMORY:
        raise RenderError(
            f"cannot render {what}: more than {memory_mb:g} MB of memory (render_memory_mb)", hint
        )
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
        raise RenderError(
            f"cannot render {what}: more than {cpu_sec:g} s of CPU time (render_cpu_sec)", hint
        )
    if not complete:
        raise RenderError(
            f"cannot render {what}: no answer within {wait_sec:g} s (render_cpu_sec is "
            f"{cpu_sec:g} s of CPU time; the host is busy or the render blocked)",
            hint,
        )
    crash = body.decode("utf-8", "replace")[:300] or f"exit status {status}"
    raise RenderError(f"cannot render {what}: the render process failed: {crash}")


def _read_all(fd: int, deadline: float) -> tuple[bytes, bool]:
    """What the child writes; True if it closed the pipe before the deadline and the cap."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_REPLY:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


def _address_space() -> int:
    """This process's address space in bytes (VmSize), 0 if unknown."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def _child(produce: Callable[[], str], fd: int, cpu_sec: float, memory_mb: float) -> NoReturn:
    """Limit, render, answer on ``fd``, exit without running the parent's clean-ups."""
    status = 0
    reply = CRASHED
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU dumps core by default
        cpu = max(1, math.ceil(cpu_sec))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL
        limit = _address_space() + int(memory_mb * (1 << 20))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            reply = UNITS + produce().encode("utf-8")
        except MemoryError:
            reply = OUT_OF_MEMORY
        except ReconcilerError as exc:
            body = {"kind": type(exc).__name__, "message": exc.message, "hint": exc.hint}
            reply = REFUSED + json.dumps(body).encode("utf-8")
    except MemoryError:
        reply = OUT_OF_MEMORY
    except BaseException as exc:  # a bug: the parent reports it in one line
        status = 1
        try:
            reply = CRASHED + f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")
        except MemoryError:
            reply = OUT_OF_MEMORY
    try:
        view = memoryview(reply)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os._exit(status)


def _error(body: dict[str, str | None]) -> ReconcilerError:
    """The child's error, as the same class (RenderError if the name is unknown)."""
    cls = getattr(errors, str(body.get("kind")), RenderError)
    if not (isinstance(cls, type) and issubclass(cls, ReconcilerError)):
        cls = RenderError
    return cls(str(body.get("message")), body.get("hint"))
