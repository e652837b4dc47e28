"""Traps: the only way a task talks to the kernel.

A task runs until it *yields*; what it yields is a trap, a 2-tuple
``(operation, argument)`` that the kernel reads and acts on. The tutorial's
two traps keep their names: ``('recv', sock)`` parks the task until ``sock``
is readable, ``('send', sock)`` until it is writable. Every other trap is
built here, so that this module (plus the socket wrapper's hot path, which
yields the very same tuples prebuilt once per socket) is the only code that
suspends a task.

Each function is a generator marked with :func:`types.coroutine`, which makes
one definition serve both styles: ``await sleep(1)`` in an ``async def`` and
``yield from sleep(1)`` in a plain generator.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Coroutine, Generator, MutableSequence
from typing import TYPE_CHECKING, Any, TypeAlias, cast

if TYPE_CHECKING:
    from .kernel import Task

Coro: TypeAlias = Generator[Any, Any, Any] | Coroutine[Any, Any, Any]
FileLike: TypeAlias = Any  # an int descriptor, or anything with fileno()


@types.coroutine
def wait_readable(fileobj: FileLike) -> Generator[Any, Any, None]:
    """Park until ``fileobj`` is readable (or closed, or in error)."""
    yield ("recv", fileobj)


@types.coroutine
def wait_writable(fileobj: FileLike) -> Generator[Any, Any, None]:
    """Park until ``fileobj`` is writable (or closed, or in error)."""
    yield ("send", fileobj)


@types.coroutine
def sleep(seconds: float) -> Generator[Any, Any, None]:
    """Park for ``seconds``; ``sleep(0)`` just lets every other ready task run first."""
    yield ("sleep", seconds)


@types.coroutine
def spawn(coro: Coro, *, name: str | None = None, daemon: bool = False) -> Generator[Any, Any, Task]:
    """Start ``coro`` (a coroutine or generator) as a new task; the caller keeps running."""
    task: Task = yield ("spawn", (coro, name, daemon))
    return task


@types.coroutine
def current_task() -> Generator[Any, Any, Task]:
    """The task that is running this code."""
    task: Task = yield ("current", None)
    return task


@types.coroutine
def join(task: Task) -> Generator[Any, Any, Any]:
    """Wait for ``task`` to end; return its result or raise its exception."""
    return (yield ("join", task))


@types.coroutine
def wait(task: Task) -> Generator[Any, Any, None]:
    """Wait for ``task`` to end, whatever the outcome; raise nothing of its."""
    yield ("wait", task)


@types.coroutine
def cancel(task: Task, exc: BaseException | None = None) -> Generator[Any, Any, bool]:
    """Throw ``exc`` (default :class:`Cancelled`) into ``task`` and wait for it to end.

    Returns True if the task was still running, False if it had already ended.
    """
    was_running: bool = yield ("cancel", (task, exc))
    return was_running


@types.coroutine
def park(waiters: MutableSequence[Task]) -> Generator[Any, Any, Any]:
    """Append the current task to ``waiters`` and park it there until it is woken.

    ``Kernel.wake_all(waiters)`` wakes them all; ``Kernel.wake(task)`` one that the caller has
    taken off ``waiters``. Returns the value given to the wake-up. A cancellation takes the
    task off ``waiters`` and throws at this point instead.
    """
    return (yield ("park", waiters))


@types.coroutine
def run_awaitable(awaitable: Awaitable[Any] | Coro) -> Generator[Any, Any, Any]:
    """Drive an awaitable or a generator from either style of task."""
    if isinstance(awaitable, Generator | Coroutine):
        return (yield from cast(Generator[Any, Any, Any], awaitable))
    return (yield from awaitable.__await__())
