"""Synchronisation between tasks: Event, Lock, Semaphore, Condition, Queue.

How waiting works. Nothing here touches the kernel's loop: a task that must
wait parks itself on a deque of waiters that the primitive owns
(``traps.park``), and whoever makes progress possible wakes it
(``Kernel.wake``). The deque keeps arrival order, so waiters are served
first come, first served.

Waking is a hand-off. ``Event.set`` and ``Queue.task_done`` wake everyone
and promise nothing (so a woken waiter that is cancelled has nothing to
pass on). Everything else serves one waiter at a time and *gives it
something* along with the wake-up: releasing a lock makes the first waiter
the owner before it even runs; a get that frees a slot promises that slot to
the first parked producer; a put promises its item to the first parked
consumer. A task that calls ``acquire`` or ``get`` in the meantime finds
nothing free and queues behind them: there is no barging, so a task cannot
starve in the line. Only a promise is handed over, never the data: the item
stays at the front of the queue until the consumer it was promised to runs,
so items come out in the order they went in.

Cancellation loses nothing. A task cancelled while parked is taken off the
deque by the kernel and was promised nothing, so nothing changes: a
cancelled ``get`` takes no item, a cancelled ``put`` puts none, a cancelled
``acquire`` leaves the lock as it was. The delicate case is a task cancelled
*after* it was served but before it ran: the kernel throws the cancellation
at its park all the same. :class:`_Line` notices (the task is among those
served but not yet run) and passes the promise on (to the next waiter, or
back to the primitive), and only then lets the exception through.

Every blocking method is a generator marked with :func:`types.coroutine`,
so ``await lock.acquire()`` and ``yield from lock.acquire()`` are the same
call; ``async with`` and ``async for`` are for coroutines. A call that need
not wait returns at once without yielding (no trip through the scheduler).

None of these objects is thread-safe (nothing of the kernel is): another
thread hands work over with ``kernel.call_soon_threadsafe``.
"""

from __future__ import annotations

import types
from collections import deque
from collections.abc import Callable, Generator
from typing import Any, Generic, Self, TypeVar

from . import traps
from .kernel import Task, current_kernel

T = TypeVar("T")
Waits = Generator[Any, Any, T]


def _running_task(what: str) -> Task:
    task = current_kernel().current
    if task is None:
        raise RuntimeError(f"{what} must be called from inside a task")
    return task


class _Line(deque[Task]):
    """Tasks parked in arrival order (the deque itself), and those served (woken with a promise)
    that have not run yet."""

    __slots__ = ("_served",)

    def __init__(self) -> None:
        super().__init__()
        self._served: set[Task] = set()

    def serve_first(self) -> Task:
        """Wake the first parked task with a promise (its ``wait`` returns True)."""
        task = self.popleft()
        self._served.add(task)
        current_kernel().wake(task, True)
        return task

    def dismiss_all(self) -> None:
        """Wake every parked task with no promise (their ``wait`` returns False)."""
        current_kernel().wake_all(self, False)

    @types.coroutine
    def wait(self, pass_on: Callable[[], None]) -> Waits[bool]:
        """Park at the end of the line until served (True) or dismissed (False).

        If an exception is thrown in after this task was served, ``pass_on()`` hands its
        promise on before the exception goes up.
        """
        task = _running_task("waiting on a Lock, Semaphore, Condition or Queue")
        try:
            served: bool = yield from traps.park(self)
        except BaseException:
            if task in self._served:
                self._served.discard(task)
                pass_on()
            raise
        self._served.discard(task)
        return served


class Event:
    """A flag tasks can wait for. ``set`` wakes every waiter; ``clear`` makes later waits wait again."""

    __slots__ = ("_flag", "_waiters")

    def __init__(self) -> None:
        self._flag = False
        self._waiters: deque[Task] = deque()

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        if self._waiters:
            current_kernel().wake_all(self._waiters)

    def clear(self) -> None:
        """Later waits wait again; tasks already woken by ``set`` still wake."""
        self._flag = False

    @types.coroutine
    def wait(self) -> Waits[None]:
        """Return once the flag is set (at once if it is)."""
        if not self._flag:
            yield from traps.park(self._waiters)


class Lock:
    """Mutual exclusion, first come first served, held by one task.

    Not reentrant: a task that acquires a lock it holds gets a RuntimeError instead of a
    deadlock, and only the task that holds it may release it.
    """

    __slots__ = ("_line", "_owner")

    def __init__(self) -> None:
        self._owner: Task | None = None
        self._line = _Line()

    def locked(self) -> bool:
        return self._owner is not None

    @types.coroutine
    def acquire(self) -> Waits[None]:
        task = _running_task("Lock.acquire()")
        if self._owner is None:
            self._owner = task
        elif self._owner is task:
            raise RuntimeError("Lock.acquire(): the calling task already holds this lock (it is not reentrant)")
        else:
            yield from self._line.wait(self._hand_over)  # the releaser made this task the owner

    def release(self) -> None:
        self._check_held("Lock.release()")
        self._hand_over()

    def _hand_over(self) -> None:
        """The owner lets go: the first waiter becomes the owner, or nobody."""
        self._owner = self._line.serve_first() if self._line else None

    def _check_held(self, what: str) -> None:
        if self._owner is None or self._owner is not current_kernel().current:
            held = "it is not locked" if self._owner is None else f"it is held by {self._owner!r}"
            raise RuntimeError(f"{what} needs the lock held by the calling task; {held}")

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class Semaphore:
    """``value`` permits, first come first served; ``acquire`` takes one, ``release`` gives one back.

    Permits belong to no task: any task may release, and a release without an acquire adds one.
    """

    __slots__ = ("_line", "_value")

    def __init__(self, value: int = 1) -> None:
        if value < 0:
            raise ValueError(f"a Semaphore needs a value >= 0, not {value}")
        self._value = value
        self._line = _Line()

    @property
    def value(self) -> int:
        """Permits free now."""
        return self._value

    @types.coroutine
    def acquire(self) -> Waits[None]:
        if self._value:
            self._value -= 1
        else:
            yield from self._line.wait(self.release)  # the releaser's permit came with the wake-up

    def release(self) -> None:
        """Give the permit to the first waiter, or back to the pool."""
        if self._line:
            self._line.serve_first()
        else:
            self._value += 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class Condition:
    """Wait, holding a lock, until another task says something changed.

    ``wait`` releases the lock, parks until notified, and holds the lock again when it
    returns, and when it raises: a task cancelled in ``wait`` still gets the lock back
    before the exception leaves (as in asyncio and trio), so its ``async with`` block
    can release it. A notified task that is cancelled before it runs passes its
    notification on to the next waiter.
    """

    __slots__ = ("_line", "lock")

    def __init__(self, lock: Lock | None = None) -> None:
        self.lock = lock if lock is not None else Lock()
        self._line = _Line()

    def locked(self) -> bool:
        return self.lock.locked()

    def acquire(self) -> Waits[None]:
        return self.lock.acquire()

    def release(self) -> None:
        self.lock.release()

    @types.coroutine
    def wait(self) -> Waits[None]:
        """Release the lock, park until notified, take the lock again."""
        self.lock._check_held("Condition.wait()")
        self.lock.release()
        error: BaseException | None = None
        try:
            yield from self._line.wait(self._notify_one)
        except GeneratorExit:  # the kernel is closing this task: it may not wait any more
            raise
        except BaseException as exc:  # noqa: BLE001 - raised again below, once the lock is held
            error = exc
        while True:  # take the lock back even if cancelled again while waiting for it
            try:
                yield from self.lock.acquire()
                break
            except GeneratorExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - likewise: the first one is raised
                error = error or exc
        if error is not None:
            raise error

    @types.coroutine
    def wait_for(self, predicate: Callable[[], T]) -> Waits[T]:
        """``wait`` until ``predicate()`` is true (checked first, then after each notification); return it."""
        result = predicate()
        while not result:
            yield from self.wait()
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wake the first ``n`` waiters (they run once they get the lock back)."""
        self.lock._check_held("Condition.notify()")
        for _ in range(min(n, len(self._line))):
            self._line.serve_first()

    def notify_all(self) -> None:
        self.notify(len(self._line))

    def _notify_one(self) -> None:
        if self._line:
            self._line.serve_first()

    async def __aenter__(self) -> None:
        await self.lock.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.lock.release()


class QueueEmpty(Exception):
    """``Queue.get_nowait()`` found no item."""


class QueueFull(Exception):
    """``Queue.put_nowait()`` found no room."""


class QueueClosed(Exception):
    """Put into a closed queue, or get from one that is closed and drained."""


class Queue(Generic[T]):
    """First in, first out, between tasks; ``maxsize`` > 0 bounds it, and a full queue parks producers.

    Consumers and producers each wait in line: an item put while consumers wait is promised
    to the first of them, and a slot freed while producers wait to the first of those, so
    ``get_nowait``/``put_nowait`` never jump the line. ``qsize()`` counts the items in the
    queue, those promised to woken consumers included; ``empty()`` says whether
    ``get_nowait`` would find no item free to take, ``full()`` whether ``put_nowait``
    would find no room.

    ``close()`` ends the stream: puts raise :class:`QueueClosed` (parked producers too,
    their items not put), gets go on returning what is left, then raise
    :class:`QueueClosed`, which ends ``async for item in queue``. Without it, iteration
    never ends (cancel the consumer).

    ``task_done()`` and ``join()`` count items as in :mod:`asyncio`: ``join`` returns once
    every item put has been marked done.

    Another thread feeds a queue through the kernel, the only thread-safe way in:
    ``kernel.call_soon_threadsafe(queue.put_nowait, item)``, then
    ``kernel.call_soon_threadsafe(queue.close)`` at the end if the consumer iterates.
    Use an unbounded queue for that: a ``QueueFull`` there is only logged, and the item lost.
    """

    __slots__ = (
        "_closed",
        "_consumers",
        "_items",
        "_items_promised",
        "_joiners",
        "_producers",
        "_slots_promised",
        "_unfinished",
        "maxsize",
    )

    def __init__(self, maxsize: int = 0) -> None:
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._consumers = _Line()
        self._producers = _Line()
        self._items_promised = 0  # items at the front promised to consumers woken but not yet run
        self._slots_promised = 0  # free slots promised to producers woken but not yet run
        self._unfinished = 0
        self._joiners: deque[Task] = deque()
        self._closed = False

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return len(self._items) <= self._items_promised

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._items) + self._slots_promised

    @property
    def closed(self) -> bool:
        return self._closed

    @types.coroutine
    def put(self, item: T) -> Waits[None]:
        """Put ``item`` at the end, waiting for room while the queue is full."""
        if self._closed:
            raise QueueClosed("put() on a closed queue")
        if self.full():
            if (yield from self._producers.wait(self._promise_slot_to_next)):
                self._slots_promised -= 1
            if self._closed:
                raise QueueClosed("the queue was closed while put() waited; the item was not put")
        self._append(item)

    def put_nowait(self, item: T) -> None:
        if self._closed:
            raise QueueClosed("put_nowait() on a closed queue")
        if self.full():
            raise QueueFull(f"the queue is full (maxsize {self.maxsize})")
        self._append(item)

    @types.coroutine
    def get(self) -> Waits[T]:
        """Remove and return the first item, waiting for one while the queue is empty."""
        if len(self._items) > self._items_promised:
            return self._take()
        if self._closed:
            raise QueueClosed("get() on a closed and drained queue")
        if not (yield from self._consumers.wait(self._promise_item_to_next)):
            raise QueueClosed("the queue was closed while get() waited")
        self._items_promised -= 1
        return self._take()

    def get_nowait(self) -> T:
        if len(self._items) > self._items_promised:
            return self._take()
        if self._closed:
            raise QueueClosed("get_nowait() on a closed and drained queue")
        raise QueueEmpty("the queue has no item to take")

    def close(self) -> None:
        """No more puts; waiting producers and (the queue being empty) consumers raise QueueClosed."""
        self._closed = True
        if self._consumers:
            self._consumers.dismiss_all()
        if self._producers:
            self._producers.dismiss_all()

    def task_done(self) -> None:
        """Mark one item got earlier as processed (see ``join``)."""
        if self._unfinished <= 0:
            raise ValueError("task_done() called more times than items were put")
        self._unfinished -= 1
        if not self._unfinished and self._joiners:
            current_kernel().wake_all(self._joiners)

    @types.coroutine
    def join(self) -> Waits[None]:
        """Return once every item put has been marked done with ``task_done``."""
        if self._unfinished:
            yield from traps.park(self._joiners)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.get()
        except QueueClosed:
            raise StopAsyncIteration from None

    def _append(self, item: T) -> None:
        self._items.append(item)
        self._unfinished += 1
        if self._consumers:  # they wait only when no item is free: this one is for the first of them
            self._items_promised += 1
            self._consumers.serve_first()

    def _take(self) -> T:
        item = self._items.popleft()
        if self._producers and not self.full():
            self._slots_promised += 1
            self._producers.serve_first()
        return item

    def _promise_item_to_next(self) -> None:
        """A consumer promised an item was cancelled before it ran: the next consumer gets it."""
        if self._consumers:
            self._consumers.serve_first()
        else:
            self._items_promised -= 1

    def _promise_slot_to_next(self) -> None:
        """A producer promised a slot was cancelled before it ran: the next producer gets it."""
        if self._producers:
            self._producers.serve_first()
        else:
            self._slots_promised -= 1
