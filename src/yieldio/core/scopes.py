"""Scopes: blocks of code whose tasks or time are bounded.

``timeout_after(seconds)`` is a cancellation with a deadline. Entering the
block sets a kernel timer; if it fires first, the task is cancelled at its
wait point with a private ``Cancelled`` subclass that names the block, so
``except Exception`` inside cannot swallow it and an outer block's deadline
cannot be mistaken for an inner one's. At the block's edge it becomes
:class:`TaskTimeout` (a ``TimeoutError``); leaving the block in time cancels
the timer.

``TaskGroup`` holds child tasks to the block that started them: the block
does not end before every child has. When a child fails, its siblings are
cancelled, so is the block's own body if it is still running, and the
failures come out together as an ``ExceptionGroup``.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Generator
from types import TracebackType
from typing import Any, Self, cast

from . import traps
from .kernel import Cancelled, Kernel, Task, Timer, current_kernel
from .traps import Coro


class TaskTimeout(TimeoutError):
    """Raised out of a :func:`timeout_after` block whose time ran out."""


class _Expired(Cancelled):
    """The cancellation a timeout delivers inside its block; turned into TaskTimeout at the block's edge."""

    def __init__(self, scope: object) -> None:
        super().__init__("timeout")
        self.scope = scope


class _TimeoutScope:
    __slots__ = ("_task", "_timer", "expired", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timer: Timer | None = None
        self._task: Task | None = None
        self.expired = False

    def _enter(self, task: Task) -> None:
        self._task = task
        self._timer = current_kernel().call_later(self.seconds, self._expire)

    def _expire(self, _: Any) -> None:
        assert self._task is not None
        self.expired = True
        current_kernel().cancel_nowait(self._task, _Expired(self))

    def _exit(self, error: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if isinstance(error, _Expired) and error.scope is self:
            raise TaskTimeout(f"timed out after {self.seconds}s") from None

    async def __aenter__(self) -> Self:
        self._enter(await traps.current_task())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit(error)


@types.coroutine
def _call_with_timeout(seconds: float, awaitable: Awaitable[Any] | Coro) -> Generator[Any, Any, Any]:
    scope = _TimeoutScope(seconds)
    scope._enter((yield from traps.current_task()))
    try:
        result = yield from traps.run_awaitable(awaitable)
    except BaseException as error:
        scope._exit(error)
        raise
    scope._exit(None)
    return result


def timeout_after(seconds: float, awaitable: Awaitable[Any] | Coro | None = None) -> Any:
    """Raise :class:`TaskTimeout` if the block (or ``awaitable``) takes longer than ``seconds``.

    ``async with timeout_after(5): ...`` in coroutines; ``yield from timeout_after(5, gen)`` or
    ``await timeout_after(5, coro)`` wraps a single call, and works in generators too.
    """
    if awaitable is None:
        return _TimeoutScope(seconds)
    return _call_with_timeout(seconds, awaitable)


class _GroupFailed(Cancelled):
    """Cancels a group's body when one of its children has failed."""


class TaskGroup:
    """``async with TaskGroup() as g: await g.spawn(...)`` waits for every child before it ends."""

    def __init__(self) -> None:
        self._children: set[Task] = set()
        self._errors: list[BaseException] = []
        self._parent: Task | None = None
        self._kernel: Kernel | None = None
        self._closing = False
        self._failed = False

    async def __aenter__(self) -> Self:
        self._parent = await traps.current_task()
        self._kernel = current_kernel()
        return self

    async def spawn(self, coro: Coro, *, name: str | None = None) -> Task:
        """Start ``coro`` as a child of this group."""
        if self._closing and not self._children:
            raise RuntimeError("this TaskGroup has ended")
        task = await traps.spawn(coro, name=name)
        task.supervisor = self
        self._children.add(task)
        return task

    def cancel_remaining(self) -> None:
        """Cancel every child still running (without waiting)."""
        assert self._kernel is not None
        for child in self._children:
            self._kernel.cancel_nowait(child)

    def child_done(self, task: Task) -> None:
        """Called by the kernel as each child ends (the kernel's Supervisor protocol)."""
        self._children.discard(task)
        error = task.exception
        if error is None or isinstance(error, Cancelled):
            return
        self._errors.append(error)
        if not self._failed:
            self._failed = True
            self.cancel_remaining()
            if not self._closing and self._kernel is not None and self._parent is not None:
                self._kernel.cancel_nowait(self._parent, _GroupFailed())

    async def __aexit__(
        self, exc_type: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self._closing = True
        if error is not None and not isinstance(error, _GroupFailed):
            self.cancel_remaining()
        outside: BaseException | None = None
        while self._children:
            try:
                await traps.wait(next(iter(self._children)))
            except Cancelled as cancelled:  # cancelled from outside while waiting: pass it on after the children
                outside = outside or cancelled
                self.cancel_remaining()
        if error is not None and not isinstance(error, _GroupFailed):
            if isinstance(error, Cancelled) and not self._errors:
                return False  # a plain cancellation of the block: let it through
            self._errors.insert(0, error)
        if outside is not None and not self._errors:
            raise outside
        if self._errors:
            if all(isinstance(e, Exception) for e in self._errors):
                raise ExceptionGroup("a TaskGroup's task failed", cast(list[Exception], self._errors))
            raise BaseExceptionGroup("a TaskGroup's task failed", self._errors)
        return isinstance(error, _GroupFailed)
