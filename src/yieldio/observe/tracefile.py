"""``--trace-file FILE``: the scheduling events as a Chrome trace, to open in Perfetto's UI.

``--trace`` prints one line per event, which is right for a few tasks and a few
seconds. To see hundreds of steps at once, who ran when and for how long, a
timeline is better, and there is no need to draw one: the Chrome trace event
format (a JSON object whose ``traceEvents`` list holds events with a ``name``,
a phase ``ph``, a time ``ts`` in microseconds, a ``pid`` and a ``tid``) is read
by Perfetto's UI (ui.perfetto.dev, which reads the file in the browser and
uploads nothing) and by chrome://tracing. The mapping is the scheduler's own:

- one track per task: the task's id is the ``tid``, and the track is named
  after the task (and its peer, for a connection) when it first runs;
- one complete slice (``ph: X``, with ``dur``) per step, from the moment the
  kernel resumes the task to the moment it yields; the slice is named after
  what the task yielded (``recv fd 9``, ``sleep 0.5s``, ``join #3``) or how it
  ended (``return``, ``raise ValueError``), since a track already says which task;
- an arrow (a flow: ``ph: s`` on the waker's track during its step, ``ph: f`` on
  the woken task's track, binding to its next step, the two sharing an ``id``)
  wherever one task woke another: spawned it, ended while it waited to join,
  handed it an item, cancelled it;
- an instant (``ph: i``) where nothing ran to do the waking: the poll found
  its descriptor ready (``fd 9 readable``), or a timer fired.

Since one thread runs every task, no two slices overlap, whatever their tracks.

The events come through the instrument interface (:mod:`yieldio.core.hooks`):
a Python call and a JSON line per event, several microseconds for each message
echoed. That is a price for a run you mean to look at, not for production: the
file grows by some 300 bytes per step. It is written as the events come (a
process killed outright leaves a file without its closing bracket, which
Perfetto still reads) and closed when the kernel has run.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from ..core.hooks import Instrument
from ..core.instrument import ConnectionOwner, word_trap
from ..core.kernel import Kernel, Task
from ..core.runner import Extension
from ..io.sockets import format_address

_STEP_NAME = {
    "recv": "recv fd {}",
    "send": "send fd {}",
    "sleep": "sleep {:g}s",
    "join": "join #{}",
    "wait": "wait #{}",
    "cancel": "cancel #{}",
}


def step_name(trap: Any) -> str:
    """What a step ended in, in a few words: the slice's name."""
    return word_trap(trap, _STEP_NAME, "{op}", "yield {trap!r:.30}")


def peer_of(task: Task) -> str | None:
    """A connection task's peer: its supervisor knows it (a yieldio server), or the socket it waits on (the
    tutorial's ``yield 'recv', client``) does; None for any other task."""
    owner = task.supervisor
    if isinstance(owner, ConnectionOwner):
        connection = owner.connection_of(task)
        return None if connection is None else connection[0]
    trap = task.trap
    if type(trap) is tuple and len(trap) == 2 and trap[0] in ("recv", "send") and hasattr(trap[1], "getpeername"):
        try:
            return format_address(trap[1].getpeername())
        except OSError:  # a listening socket has no peer; a closed one neither
            return None
    return None


class ChromeTrace(Instrument):
    """Writes the scheduling events to ``out`` as a Chrome trace (see above); :meth:`close` completes the file."""

    def __init__(self, kernel: Kernel, out: TextIO) -> None:
        self.kernel = kernel
        self.out = out
        self.pid = os.getpid()
        self.origin = time.monotonic_ns()
        self.flow_ids = itertools.count(1)
        self.step_began = 0.0  # µs: when the running task was resumed
        self.last_slice = (0, 0.0)  # (task id, µs in the middle of its last slice)
        self.named: set[int] = set()  # tasks whose track has its name
        self.separator = ""
        out.write('{"displayTimeUnit": "ms", "traceEvents": [\n')
        program = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
        self._write({"name": "process_name", "ph": "M", "pid": self.pid, "tid": 0, "args": {"name": program}})

    def _now(self) -> float:
        return (time.monotonic_ns() - self.origin) / 1000

    def _write(self, event: dict[str, Any]) -> None:
        self.out.write(self.separator + json.dumps(event, separators=(",", ":")))
        self.separator = ",\n"

    def _instant(self, task: Task, name: str) -> None:
        self._write(
            {"name": name, "cat": "wake", "ph": "i", "s": "t", "ts": self._now(), "pid": self.pid, "tid": task.id}
        )

    def _arrow(self, woken: Task, name: str) -> None:
        """An arrow from the running task (if one is running, and is not ``woken``) to ``woken``'s next step."""
        waker = self.kernel.current
        if waker is None or waker is woken:
            self._instant(woken, name)
            return
        flow = next(self.flow_ids)
        # a task that has just ended wakes its joiners after its slice is written: draw from the slice's middle
        now = self.last_slice[1] if waker.done and self.last_slice[0] == waker.id else self._now()
        common = {"name": name, "cat": "wake", "id": flow, "ts": now, "pid": self.pid}
        self._write({**common, "ph": "s", "tid": waker.id})  # binds to the waker's step, under way
        self._write({**common, "ph": "f", "tid": woken.id})  # binds to the woken task's next step

    def task_spawned(self, task: Task) -> None:
        self._arrow(task, "spawn")

    def task_resumed(self, task: Task) -> None:
        if task.id not in self.named:
            self.named.add(task.id)
            peer = peer_of(task)
            label = f"#{task.id} {task.name}" + ("" if peer is None else f" {peer}")
            for name, args in (("thread_name", {"name": label}), ("thread_sort_index", {"sort_index": task.id})):
                self._write({"name": name, "ph": "M", "pid": self.pid, "tid": task.id, "args": args})
        self.step_began = self._now()

    def _slice(self, task: Task, name: str) -> None:
        began = self.step_began
        took = self._now() - began
        self.last_slice = (task.id, began + took / 2)
        self._write({"name": name, "cat": "step", "ph": "X", "ts": began, "dur": took, "pid": self.pid, "tid": task.id})

    def task_yielded(self, task: Task, trap: Any) -> None:
        self._slice(task, step_name(trap))

    def task_woken(self, task: Task, why: str) -> None:
        self._arrow(task, why)

    def task_cancelled(self, task: Task, exc: BaseException) -> None:
        self._arrow(task, f"cancel ({type(exc).__name__})")

    def task_finished(self, task: Task) -> None:
        self.named.discard(task.id)
        error = task.exception
        outcome = "return" if error is None else f"raise {type(error).__name__}"
        if task is self.kernel.current:
            self._slice(task, outcome)  # it ended in its step
        else:
            self._instant(task, f"closed ({outcome})")  # closed from outside at the end (close_all)

    def close(self) -> None:
        self.out.write("\n]}\n")
        self.out.close()


def trace_file(path: str) -> Extension:
    """An extension (:data:`yieldio.core.runner.Extension`) that writes ``path`` while the kernel runs.

    The file is created at once, when the extension starts: OSError if it cannot be."""

    @contextlib.contextmanager
    def write_trace(kernel: Kernel) -> Iterator[ChromeTrace]:
        trace = ChromeTrace(kernel, open(path, "w", encoding="utf-8", buffering=1 << 16))  # noqa: SIM115 - closed below
        kernel.add_instrument(trace)
        try:
            yield trace
        finally:
            if trace in kernel.instruments:  # (a broken instrument is removed by the kernel)
                kernel.remove_instrument(trace)
            trace.close()

    return write_trace
