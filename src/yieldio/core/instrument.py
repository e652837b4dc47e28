"""Watching the scheduler: the trace, and the task table.

Both watch through the instrument interface of :mod:`yieldio.core.hooks`
(the events, in the tutorial's terms, are listed there). An instrument whose
hook raises is removed (and the error logged), as in trio: watching must
never break what is watched.

:class:`Tracer` turns the events into one line each, and :func:`task_table`
lists what every task is doing, in the tutorial's words (:func:`describe`).
A task's supervisor that knows more about it (a server knows each
connection's peer and byte counts) says so through :class:`ConnectionOwner`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, Protocol, TextIO, runtime_checkable

from .hooks import Instrument
from .kernel import Cancelled, Kernel, Task

trace_log = logging.getLogger("yieldio.trace")


def decode_trap(trap: Any) -> tuple[str, Any] | None:
    """``(op, target)`` of a well-formed trap, in the terms every view of the scheduler shows (the
    tracer, the monitor, the trace file): the descriptor for ``recv``/``send`` (a number, or a socket's;
    -1 once that socket is closed), the seconds for ``sleep``, the id of the task joined, waited for or
    cancelled, and the argument itself for any other trap; None for anything else a task yielded."""
    if type(trap) is not tuple or len(trap) != 2:
        return None
    op, arg = trap
    if op in ("recv", "send"):
        return op, arg if isinstance(arg, int) else int(arg.fileno())
    if op in ("join", "wait"):
        return op, arg.id
    if op == "cancel":
        return op, arg[0].id
    return op, arg


def word_trap(trap: Any, wordings: Mapping[str, str], other: str, undecodable: str) -> str:
    """A trap in one view's words: ``wordings[op]`` with the target in its ``{}``. A ``sleep`` of
    no time (back to the ready queue, not a wait) takes the ``"sleep 0"`` wording if there is one;
    an op without a wording takes ``other`` (``{op}`` names it); anything :func:`decode_trap`
    refuses takes ``undecodable`` (``{trap}`` is it)."""
    decoded = decode_trap(trap)
    if decoded is None:
        return undecodable.format(trap=trap)
    op, target = decoded
    if op == "sleep" and target <= 0:
        op = "sleep 0" if "sleep 0" in wordings else op
    return wordings.get(op, other).format(target, op=op)


_WAIT_TEXT = {
    "recv": "parked in the waiting area: read fd {}",
    "send": "parked in the waiting area: write fd {}",
    "join": "waiting for task {}",
    "wait": "waiting for task {}",
    "cancel": "cancelling task {}",
    "park": "parked",
    "sleep": "sleeping {:g}s",
    "sleep 0": "back to the ready queue (sleep 0)",
}


def _describe_wait(trap: Any) -> str:
    return word_trap(trap, _WAIT_TEXT, "trap {op}", "yielded {trap!r}")


class Tracer(Instrument):
    """One line per scheduling event on stderr, timestamped from the tracer's start."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.start = time.monotonic()
        self.stream = stream

    def _line(self, task: Task, event: str, detail: str = "") -> None:
        name = _name_with_peer(task)
        line = f"{time.monotonic() - self.start:10.6f}  {event:<9} #{task.id:<4} {name:<32} {detail}".rstrip()
        (self.stream or sys.stderr).write(line + "\n")

    def task_spawned(self, task: Task) -> None:
        self._line(task, "spawn", "created, into the ready queue")

    def task_resumed(self, task: Task) -> None:
        self._line(task, "run", "resumed from the ready queue")

    def task_yielded(self, task: Task, trap: Any) -> None:
        if trap is None or task.done:
            return
        self._line(task, "yield", _describe_wait(trap))

    def task_woken(self, task: Task, why: str) -> None:
        self._line(task, "wake", f"{why} -> ready queue")

    def task_cancelled(self, task: Task, exc: BaseException) -> None:
        self._line(task, "cancel", f"{type(exc).__name__} on its way")

    def task_finished(self, task: Task) -> None:
        if task.exception is None:
            self._line(task, "finish", f"returned {task.result!r:.40}")
        else:
            event = "finish" if isinstance(task.exception, Cancelled) else "crash"
            self._line(task, event, f"{type(task.exception).__name__} {task.exception}".rstrip())


@runtime_checkable
class ConnectionOwner(Protocol):
    """A supervisor whose tasks serve connections: for the task table's peer and byte columns."""

    def connection_of(self, task: Task) -> tuple[str, int, int] | None:
        """(peer, bytes in, bytes out) of the connection ``task`` serves, if it serves one."""
        ...


def _name_with_peer(task: Task) -> str:
    """A connection task's name with its peer (a server names its tasks after the handler alone: a
    string per connection would cost memory for every idle one)."""
    owner = task.supervisor
    connection = owner.connection_of(task) if isinstance(owner, ConnectionOwner) else None
    return task.name if connection is None else f"{task.name} {connection[0]}"


def describe(kernel: Kernel, task: Task) -> str:
    """What the task is doing now, in the tutorial's words."""
    if task.done:
        return "finished" if task.exception is None else f"crashed ({type(task.exception).__name__})"
    if task is kernel.current:
        return "running"
    where = kernel.where(task)
    if where is None:
        return "ready"
    kind, place = where
    if kind == "recv":
        return f"waiting to read fd {place}"
    if kind == "send":
        return f"waiting to write fd {place}"
    if kind == "sleep":
        return f"sleeping ({place.deadline - time.monotonic():.3f}s left)"
    if kind == "task":
        return f"waiting for task {place.id}"
    return "parked"


def task_table(kernel: Kernel) -> str:
    """Every live task: id, name, state, age, and for connections the peer and bytes in/out."""
    now = time.monotonic()
    rows = [("id", "name", "state", "age", "peer", "in", "out")]
    for task in sorted(kernel.tasks(), key=lambda t: t.id):
        owner = task.supervisor
        connection = owner.connection_of(task) if isinstance(owner, ConnectionOwner) else None
        peer, bytes_in, bytes_out = ("", "", "") if connection is None else map(str, connection)
        rows.append(
            (str(task.id), task.name, describe(kernel, task), f"{now - task.created:.1f}s", peer, bytes_in, bytes_out)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )
