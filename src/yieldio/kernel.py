"""The kernel: one thread, many tasks, one poll.

This is the tutorial's scheduler, grown up. The tutorial keeps a deque of
ready generators (``tasks``), two waiting areas (``recv_wait``,
``send_wait``) and a loop that, when nothing is ready, asks ``select()``
which sockets became ready and moves their tasks back to the queue. The
kernel keeps exactly that shape:

- ``Kernel._ready`` is the ready queue; ``_readers`` and ``_writers`` are the
  waiting areas, keyed by file descriptor;
- a task is any generator or coroutine. It runs until it yields a *trap*, a
  2-tuple ``(operation, argument)``: ``('recv', sock)`` and ``('send', sock)``
  are the tutorial's own; the others are made by :mod:`yieldio.traps`;
- the loop polls, moves woken tasks to the ready queue, runs every ready
  task once, and polls again.

What changed, and why:

*epoll instead of select().* ``select()`` costs time in proportion to every
socket watched, on every call, and cannot watch descriptor 1024 or above.
The kernel uses ``select.epoll`` (elsewhere ``selectors``, i.e. kqueue or
poll), and keeps registrations between waits, level-triggered: a connection
that waits to read, is woken, echoes and waits to read again costs no
``epoll_ctl`` call at all. Interest is dropped only when an event arrives
that no task waits for, or when the socket is closed.

*Time.* A heap of timers serves ``sleep()`` and timeouts; the poll waits no
longer than the nearest deadline.

*Cancellation.* A parked task is taken out of its waiting area and resumed
with an exception thrown at its wait point, so its ``finally`` blocks run as
usual. A task already in the ready queue gets the exception when it next
runs. Timeouts are cancellations with a deadline.

*Faults stay local.* An exception that escapes a task ends that task alone;
it is logged (logger ``yieldio``) unless someone is there to receive it.

*Signals.* While running in the main thread, SIGUSR1 logs the task table
and SIGINT and SIGTERM start an orderly shutdown: every task is cancelled at its wait point and given a grace
period for its cleanup; a second signal, or the end of the grace period,
closes what is left.

The kernel does no I/O of its own besides polling; sockets are wrapped in
:mod:`yieldio.sockets`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import selectors
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from typing import Any, Protocol, cast

from . import traps
from .traps import Coro

log = logging.getLogger("yieldio")

IN = getattr(select, "EPOLLIN", 0x001)
OUT = getattr(select, "EPOLLOUT", 0x004)
# Errors and hang-ups are reported whatever the mask says; they wake both sides,
# whose next system call then reports what happened.
READ_EVENTS = IN | getattr(select, "EPOLLHUP", 0x010) | getattr(select, "EPOLLERR", 0x008)
WRITE_EVENTS = OUT | getattr(select, "EPOLLHUP", 0x010) | getattr(select, "EPOLLERR", 0x008)


class Cancelled(BaseException):
    """Thrown into a task at its wait point to make it stop.

    A BaseException, so that ``except Exception`` in application code lets it pass.
    """


class TaskTimeout(TimeoutError):
    """Raised out of a :func:`timeout_after` block whose time ran out."""


class _Expired(Cancelled):
    """The cancellation a timeout delivers inside its block; turned into TaskTimeout at the block's edge."""

    def __init__(self, scope: object) -> None:
        super().__init__("timeout")
        self.scope = scope


class Poller(Protocol):
    def register(self, fd: int, mask: int) -> None: ...
    def modify(self, fd: int, mask: int) -> None: ...
    def unregister(self, fd: int) -> None: ...
    def poll(self, timeout: float = -1) -> list[tuple[int, int]]: ...
    def close(self) -> None: ...


class SelectorPoller:
    """epoll's interface over :mod:`selectors`, for systems without epoll (kqueue on BSD and macOS)."""

    def __init__(self, selector: selectors.BaseSelector | None = None) -> None:
        self._selector = selector or selectors.DefaultSelector()

    @staticmethod
    def _events(mask: int) -> int:
        return (selectors.EVENT_READ if mask & IN else 0) | (selectors.EVENT_WRITE if mask & OUT else 0)

    def register(self, fd: int, mask: int) -> None:
        try:
            self._selector.register(fd, self._events(mask))
        except KeyError:
            raise FileExistsError(fd) from None

    def modify(self, fd: int, mask: int) -> None:
        try:
            self._selector.modify(fd, self._events(mask))
        except KeyError:
            raise FileNotFoundError(fd) from None

    def unregister(self, fd: int) -> None:
        try:
            self._selector.unregister(fd)
        except KeyError:
            raise FileNotFoundError(fd) from None

    def poll(self, timeout: float = -1) -> list[tuple[int, int]]:
        ready = self._selector.select(None if timeout < 0 else timeout)
        return [
            (key.fd, (IN if events & selectors.EVENT_READ else 0) | (OUT if events & selectors.EVENT_WRITE else 0))
            for key, events in ready
        ]

    def close(self) -> None:
        self._selector.close()


def default_poller() -> Poller:
    if hasattr(select, "epoll"):
        return select.epoll()
    return SelectorPoller()


class Task:
    """A generator or coroutine the kernel runs, with what it takes to resume, join and cancel it."""

    __slots__ = (
        "id", "name", "coro", "daemon", "created", "trap", "done", "result", "exception",
        "watched", "supervisor", "peer", "connection", "_send", "_throw", "_next", "_exc", "_joiners", "_timer",
    )  # fmt: skip

    _ids = itertools.count(1)

    def __init__(self, coro: Coro, name: str | None = None, daemon: bool = False) -> None:
        if not hasattr(coro, "send") or not hasattr(coro, "throw"):
            raise TypeError(f"a task must be a generator or a coroutine, not {coro!r}")
        self.id = next(Task._ids)
        self.name: str = name or str(getattr(coro, "__qualname__", type(coro).__name__))
        self.coro = coro
        self.daemon = daemon
        self.created = time.monotonic()
        self.trap: Any = None  # the trap it last yielded: what it waits for, while parked
        self.done = False
        self.result: Any = None
        self.exception: BaseException | None = None
        self.watched = False  # someone will receive its outcome (run's main task), so don't log it
        self.supervisor: Any = None  # told when it ends (TaskGroup, server), and reports its failure
        self.peer: Any = None  # for connection tasks, the peer's address...
        self.connection: Any = None  # ... and its Socket (whose byte counters the task table shows)
        self._send = coro.send
        self._throw = coro.throw
        self._next: Any = None  # the value to send at its next resumption
        self._exc: BaseException | None = None  # ... or the exception to throw
        # (task, wants the outcome) waiting for this one; a list only once someone waits (memory per task)
        self._joiners: list[tuple[Task, bool]] | tuple[()] = ()
        self._timer: list[Any] | None = None  # its sleep's heap entry

    def _add_joiner(self, task: Task, wants_outcome: bool) -> None:
        if not self._joiners:
            self._joiners = []
        self._joiners.append((task, wants_outcome))

    def join(self) -> Any:
        """Wait for the task to end; return its result or raise its exception."""
        return traps.join(self)

    def wait(self) -> Any:
        """Wait for the task to end, raising nothing of its."""
        return traps.wait(self)

    def cancel(self, exc: BaseException | None = None) -> Any:
        """Cancel the task at its wait point and wait until it has ended."""
        return traps.cancel(self, exc)

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.name!r}{' done' if self.done else ''}>"


class Kernel:
    """Runs tasks on one thread until none is left (or until a main task ends)."""

    def __init__(self, *, poller: Poller | None = None, shutdown_grace: float = 4.0) -> None:
        self._poller = poller or default_poller()
        self.shutdown_grace = shutdown_grace
        self._ready: deque[Task] = deque()
        self._readers: dict[int, Task] = {}
        self._writers: dict[int, Task] = {}
        self._masks: dict[int, int] = {}  # fd -> interest registered with the poller
        self._owners: dict[int, Any] = {}  # fd -> the object a classic trap named, to notice reuse
        self._timers: list[list[Any]] = []  # heap of [deadline, seq, callback or None, arg]
        self._seq = itertools.count()
        self._tasks: dict[int, Task] = {}
        self._live = 0  # tasks that are not daemons and not done
        self.current: Task | None = None
        self.instruments: list[Any] = []  # objects with some of yieldio.instrument.Instrument's methods
        self.stopping = False
        self.signalled: int | None = None
        self._traps: dict[str, Callable[[Task, Any], bool]] = {
            "sleep": self._trap_sleep,
            "spawn": self._trap_spawn,
            "current": self._trap_current,
            "join": self._trap_join,
            "wait": self._trap_wait,
            "cancel": self._trap_cancel,
            "park": self._trap_park,
        }

    # -- public, callable from tasks (none of these blocks) ----------------

    def spawn(self, coro: Coro, *, name: str | None = None, daemon: bool = False) -> Task:
        """Create a task and put it at the end of the ready queue."""
        task = Task(coro, name, daemon)
        self._tasks[task.id] = task
        if not daemon:
            self._live += 1
        self._ready.append(task)
        if self.instruments:
            self._emit("task_spawned", task)
        return task

    def tasks(self) -> list[Task]:
        """Every task that has not ended yet."""
        return list(self._tasks.values())

    def call_later(self, delay: float, callback: Callable[[Any], None], arg: Any = None) -> list[Any]:
        """Run ``callback(arg)`` from the kernel after ``delay`` seconds; cancel with ``cancel_timer``."""
        entry = [time.monotonic() + delay, next(self._seq), callback, arg]
        heapq.heappush(self._timers, entry)
        return entry

    @staticmethod
    def cancel_timer(entry: list[Any]) -> None:
        entry[2] = entry[3] = None  # the heap drops the entry when it comes due; let go of its argument now

    def cancel_nowait(self, task: Task, exc: BaseException | None = None) -> bool:
        """Arrange for ``exc`` to be thrown into ``task`` at its wait point; don't wait for it."""
        if task.done:
            return False
        if task._exc is None:
            task._exc = exc if exc is not None else Cancelled()
        if self.instruments:
            self._emit("task_cancelled", task, task._exc)
        if self._unpark(task):
            self._ready.append(task)
        return True

    def wake_all(self, waiters: list[Task], value: Any = None) -> None:
        """Resume every task parked on ``waiters`` (see traps.park)."""
        for task in waiters:
            task._next = value
            self._ready.append(task)
        waiters.clear()

    def forget_fd(self, fd: int) -> None:
        """The descriptor is being closed: drop its registration and wake whoever waits on it."""
        if self._masks.pop(fd, 0):
            try:
                self._poller.unregister(fd)
            except OSError:
                pass
        self._owners.pop(fd, None)
        for waiting in (self._readers, self._writers):
            task = waiting.pop(fd, None)
            if task is not None:
                self._ready.append(task)

    def add_instrument(self, instrument: Any) -> None:
        """Have ``instrument`` told of every scheduling event (see :mod:`yieldio.instrument`)."""
        self.instruments.append(instrument)

    def _emit(self, event: str, task: Task, *details: Any) -> None:
        for instrument in self.instruments:
            hook = getattr(instrument, event, None)
            if hook is not None:
                hook(task, *details)

    def describe(self, task: Task) -> str:
        """What the task is doing now, in the tutorial's words."""
        if task.done:
            return "finished" if task.exception is None else f"crashed ({type(task.exception).__name__})"
        if task is self.current:
            return "running"
        where = self._where(task)
        if where is None:
            return "ready"
        kind, place = where
        if kind == "recv":
            return f"waiting to read fd {place}"
        if kind == "send":
            return f"waiting to write fd {place}"
        if kind == "sleep":
            return f"sleeping ({place[0] - time.monotonic():.3f}s left)"
        if kind == "task":
            return f"waiting for task {place.id}"
        return "parked"

    # -- running ------------------------------------------------------------

    def run(self, main: Coro | Callable[[], Coro] | None = None, *, handle_signals: bool = True) -> Any:
        """Run ``main`` to completion and return its result; with no main, run until no task is left."""
        if running_kernel() is not None:
            raise RuntimeError("a yieldio kernel is already running in this thread")
        if main is not None and not hasattr(main, "send"):
            main = main()  # a coroutine function or generator function
        main_task = self.spawn(cast(Coro, main), name=getattr(main, "__name__", None)) if main is not None else None
        if main_task is not None:
            main_task.watched = True
        _this_thread.kernel = self
        restore = self._catch_signals() if handle_signals else None
        try:
            self._loop(main_task)
            if self._tasks:
                self._stop_all()
        finally:
            _this_thread.kernel = None
            self.current = None
            if restore is not None:
                restore()
            self._poller.close()
        if main_task is None:
            return None
        if main_task.exception is not None:
            if self.signalled is not None and isinstance(main_task.exception, Cancelled):
                return None
            raise main_task.exception
        return main_task.result

    def _loop(self, until: Task | None) -> None:
        # The hot loop. Everything it touches per event is bound to a local, and
        # the tutorial's two traps are dispatched inline before any lookup: an
        # echoed message costs one poll entry, one resumption and one dict store.
        ready = self._ready
        popleft = ready.popleft
        append = ready.append
        readers = self._readers
        writers = self._writers
        masks = self._masks
        timers = self._timers
        traps_ = self._traps
        poll = self._poller.poll
        monotonic = time.monotonic
        instruments = self.instruments  # each hook below costs one falsy check when nobody listens
        while (self._live if until is None else not until.done):
            if ready:
                timeout = 0.0
            elif timers:
                timeout = max(timers[0][0] - monotonic(), 0.0)
            elif readers or writers:
                timeout = -1.0
            else:
                raise RuntimeError(f"deadlock: no task can ever wake up: {list(self._tasks.values())}")
            for fd, events in poll(timeout):
                reader = readers.pop(fd, None) if events & READ_EVENTS else None
                writer = writers.pop(fd, None) if events & WRITE_EVENTS else None
                if reader is not None:
                    append(reader)
                if writer is not None:
                    append(writer)
                elif reader is None:
                    self._drop_interest(fd)  # nobody waits for what happened
                if instruments:
                    for woken, what in ((reader, "readable"), (writer, "writable")):
                        if woken is not None:
                            self._emit("task_woken", woken, f"poll: fd {fd} {what}")
            if timers and timers[0][0] <= monotonic():
                self._fire_timers()
            n = len(ready)
            while n:
                n -= 1
                task = popleft()
                self.current = task
                if instruments:
                    self._emit("task_resumed", task)
                try:
                    if task._exc is None:
                        trap = task._send(task._next)
                    else:
                        exc, task._exc = task._exc, None
                        trap = task._throw(exc)
                except StopIteration as stop:
                    self._finish(task, stop.value, None)
                    continue
                except BaseException as error:
                    self._finish(task, None, error)
                    if isinstance(error, (SystemExit, KeyboardInterrupt)):
                        raise
                    continue
                task.trap = trap
                try:
                    op, arg = trap
                    if op == "recv":
                        if type(arg) is not int:
                            arg = self._fileno(arg)
                        if arg in readers:
                            raise RuntimeError(f"fd {arg} already has a task waiting to read: {readers[arg]!r}")
                        readers[arg] = task
                        if not masks.get(arg, 0) & IN:
                            self._add_interest(arg, IN)
                    elif op == "send":
                        if type(arg) is not int:
                            arg = self._fileno(arg)
                        if arg in writers:
                            raise RuntimeError(f"fd {arg} already has a task waiting to write: {writers[arg]!r}")
                        writers[arg] = task
                        if not masks.get(arg, 0) & OUT:
                            self._add_interest(arg, OUT)
                    elif traps_[op](task, arg):
                        ready.appendleft(task)  # the trap answered at once: resume it next
                        n += 1
                except Exception as error:
                    self._reject(task, trap, error)
                    n += 1
                if instruments:
                    self._emit("task_yielded", task, trap)
            self.current = None

    def _reject(self, task: Task, trap: Any, error: Exception) -> None:
        """Throw a trap's failure back into the task that yielded it; the kernel goes on."""
        well_formed = type(trap) is tuple and len(trap) == 2 and isinstance(trap[0], str)
        if well_formed:
            self._unpark(task)
        task.trap = None
        if not well_formed or (trap[0] not in ("recv", "send") and trap[0] not in self._traps):
            error = TypeError(
                f"task {task.name!r} yielded {trap!r}; a task may yield ('recv', sock), "
                f"('send', sock) or a trap from yieldio.traps"
            )
        elif isinstance(error, AttributeError):
            error = TypeError(f"task {task.name!r} yielded {trap!r}: {trap[1]!r} is neither a descriptor nor has fileno()")
        task._exc = error
        self._ready.appendleft(task)

    def _fileno(self, fileobj: Any) -> int:
        """The descriptor of an object named in a classic trap, noticing when its number was reused."""
        fd: int = fileobj.fileno()
        if fd < 0:
            raise OSError(9, f"{fileobj!r} is closed")
        if self._owners.get(fd) is not fileobj:
            # A new object on this number: whatever was registered belonged to a
            # socket closed behind our back (the kernel lost it when it closed).
            if self._masks.pop(fd, 0):
                try:
                    self._poller.unregister(fd)
                except OSError:
                    pass
            self._owners[fd] = fileobj
        return fd

    def _add_interest(self, fd: int, bit: int) -> None:
        old = self._masks.get(fd, 0)
        mask = old | bit
        try:
            if old:
                self._poller.modify(fd, mask)
            else:
                self._poller.register(fd, mask)
        except FileExistsError:
            self._poller.modify(fd, mask)
        except FileNotFoundError:
            self._poller.register(fd, mask)
        self._masks[fd] = mask

    def _drop_interest(self, fd: int) -> None:
        mask = (IN if fd in self._readers else 0) | (OUT if fd in self._writers else 0)
        try:
            if mask:
                self._poller.modify(fd, mask)
            else:
                self._poller.unregister(fd)
        except OSError:
            pass
        if mask:
            self._masks[fd] = mask
        else:
            self._masks.pop(fd, None)
            self._owners.pop(fd, None)

    def _fire_timers(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, callback, arg = heapq.heappop(timers)
            if callback is not None:
                callback(arg)

    def _where(self, task: Task) -> tuple[str, Any] | None:
        """Where a task is parked: ('recv' or 'send', fd), ('sleep', timer), ('task', target),
        ('park', waiters); None if it is not parked (it is ready, running or done)."""
        trap = task.trap
        if trap is None:
            return None
        op, arg = trap
        if op == "recv" or op == "send":
            waiting = self._readers if op == "recv" else self._writers
            fd = arg if type(arg) is int else next((f for f, t in waiting.items() if t is task), None)
            return (op, fd) if fd is not None and waiting.get(fd) is task else None
        if op == "sleep":
            return None if task._timer is None else ("sleep", task._timer)
        if op in ("join", "wait", "cancel"):
            target = arg[0] if op == "cancel" else arg
            return ("task", target) if any(waiter is task for waiter, _ in target._joiners) else None
        if op == "park":
            return ("park", arg) if any(waiter is task for waiter in arg) else None
        return None

    def _unpark(self, task: Task) -> bool:
        """Take a parked task out of whatever it waits on; False if it was not parked."""
        where = self._where(task)
        if where is None:
            return False
        kind, place = where
        if kind == "recv":
            del self._readers[place]
        elif kind == "send":
            del self._writers[place]
        elif kind == "sleep":
            place[2] = None
            task._timer = None
        elif kind == "task":
            place._joiners = [joiner for joiner in place._joiners if joiner[0] is not task]
        else:
            place.remove(task)
        return True

    def _finish(self, task: Task, result: Any, error: BaseException | None) -> None:
        task.done = True
        task.trap = None
        task.result = result
        task.exception = error
        self._tasks.pop(task.id, None)
        if not task.daemon:
            self._live -= 1
        if self.instruments:
            self._emit("task_finished", task)
        joiners = task._joiners
        if (
            error is not None
            and not joiners
            and not task.watched
            and task.supervisor is None
            and not isinstance(error, Cancelled)
        ):
            log.error("task %r crashed", task.name, exc_info=error)
        for waiter, wants_outcome in joiners:
            if wants_outcome and error is not None:
                waiter._exc = error
            else:
                waiter._next = result if wants_outcome else True
            self._ready.append(waiter)
        task._joiners = ()
        if task.supervisor is not None:
            task.supervisor._child_done(task)

    # -- traps other than the two I/O waits: return True to resume the task at once

    def _trap_sleep(self, task: Task, seconds: float) -> bool:
        if seconds <= 0:
            task._next = None
            self._ready.append(task)  # behind everyone else that is ready
        else:
            task._timer = self.call_later(seconds, self._wake_sleeper, task)
        return False

    def _wake_sleeper(self, task: Task) -> None:
        task._timer = None
        task._next = None
        self._ready.append(task)
        if self.instruments:
            self._emit("task_woken", task, "timer")

    def _trap_spawn(self, task: Task, arg: tuple[Coro, str | None, bool]) -> bool:
        coro, name, daemon = arg
        task._next = self.spawn(coro, name=name, daemon=daemon)
        return True

    def _trap_current(self, task: Task, _: None) -> bool:
        task._next = task
        return True

    def _trap_join(self, task: Task, target: Task) -> bool:
        if not isinstance(target, Task):
            raise TypeError(f"join() needs a Task, not {target!r}")
        if target.done:
            if target.exception is not None:
                task._exc = target.exception
            else:
                task._next = target.result
            return True
        target._add_joiner(task, True)
        return False

    def _trap_wait(self, task: Task, target: Task) -> bool:
        if target.done:
            task._next = True
            return True
        target._add_joiner(task, False)
        return False

    def _trap_cancel(self, task: Task, arg: tuple[Task, BaseException | None]) -> bool:
        target, exc = arg
        if target is task:
            raise RuntimeError("a task cannot cancel itself (raise yieldio.Cancelled instead)")
        if target.done:
            task._next = False
            return True
        self.cancel_nowait(target, exc)
        target._add_joiner(task, False)
        return False

    def _trap_park(self, task: Task, waiters: list[Task]) -> bool:
        waiters.append(task)
        return False

    # -- shutdown -----------------------------------------------------------

    def _catch_signals(self) -> Callable[[], None] | None:
        """Route SIGINT and SIGTERM into the loop as an orderly shutdown (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        caught = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
        old_handlers = {sig: signal.signal(sig, _ignore_signal) for sig in caught}
        self.spawn(self._watch_signals(wake_read), name="signal watcher", daemon=True)

        def restore() -> None:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            wake_read.close()
            wake_write.close()

        return restore

    def _watch_signals(self, wake: socket.socket) -> Generator[Any, Any, None]:
        while True:
            yield ("recv", wake.fileno())
            try:
                received = wake.recv(64)
            except BlockingIOError:
                continue
            for signum in received:
                self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGUSR1:
            from .instrument import task_table

            log.warning("SIGUSR1: %d tasks\n%s", len(self._tasks), task_table(self))
            return
        name = signal.Signals(signum).name
        if self.stopping:
            log.warning("%s again: stopping now", name)
            self._close_all()
            return
        log.info("%s received: shutting down", name)
        self.signalled = signum
        self.shutdown()

    def shutdown(self) -> None:
        """Cancel every task; close whatever is still running after the grace period."""
        self.stopping = True
        for task in list(self._tasks.values()):
            if not task.daemon and task is not self.current:
                self.cancel_nowait(task)
        self.call_later(self.shutdown_grace, lambda _: self._close_all())

    def _stop_all(self) -> None:
        """After the main task: cancel what is left, let it clean up, then close the daemons."""
        if self._live:
            if not self.stopping:  # after a signal they were cancelled already: don't cut their cleanup short
                self.shutdown()
            self._loop(None)
        self._close_all()

    def _close_all(self) -> None:
        """Close every remaining coroutine at once: its finally blocks run, its waits do not."""
        for task in list(self._tasks.values()):
            if task is self.current:
                continue
            self._unpark(task)
            try:
                task.coro.close()
            except BaseException as error:
                log.error("task %r did not close cleanly", task.name, exc_info=error)
            self._finish(task, None, Cancelled())
        self._ready.clear()


def _ignore_signal(signum: int, frame: Any) -> None:
    """The C-level handler has already written the signal to the wakeup socket."""


class _ThreadState(threading.local):
    kernel: Kernel | None = None  # each thread may run a kernel of its own


_this_thread = _ThreadState()


def running_kernel() -> Kernel | None:
    """The kernel running in this thread, if any."""
    return _this_thread.kernel


def current_kernel() -> Kernel:
    """The kernel running in this thread."""
    kernel = _this_thread.kernel
    if kernel is None:
        raise RuntimeError("no yieldio kernel is running")
    return kernel


class _ClassicTasks:
    """The tutorial's ``tasks``: ``tasks.append(gen)`` schedules a generator.

    Before ``run()`` it collects them; inside a running kernel it spawns at once.
    """

    def __init__(self) -> None:
        self._pending: list[Coro] = []

    def append(self, coro: Coro) -> None:
        kernel = _this_thread.kernel
        if kernel is None:
            self._pending.append(coro)
        else:
            kernel.spawn(coro)

    def _take(self) -> list[Coro]:
        pending, self._pending = self._pending, []
        return pending

    def __len__(self) -> int:
        kernel = _this_thread.kernel
        return kernel._live if kernel is not None else len(self._pending)

    def __repr__(self) -> str:
        return f"<yieldio tasks: {len(self)}>"


tasks = _ClassicTasks()


def run(main: Coro | Callable[[], Coro] | None = None, *, handle_signals: bool = True) -> Any:
    """Run ``main`` on a fresh kernel and return its result (its exception propagates).

    With no argument, run what was put in ``tasks`` until no task is left, as the tutorial does.
    """
    kernel = Kernel()
    if os.environ.get("YIELDIO_TRACE", "") not in ("", "0"):
        from .instrument import Tracer

        kernel.add_instrument(Tracer())
    for coro in tasks._take():
        kernel.spawn(coro)
    return kernel.run(main, handle_signals=handle_signals)
