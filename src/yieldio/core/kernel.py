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
  are the tutorial's own; the others are made by :mod:`yieldio.core.traps`;
- the loop polls, moves woken tasks to the ready queue, runs every ready
  task once, and polls again.

What changed, and why:

*epoll instead of select().* ``select()`` costs time in proportion to every
socket watched, on every call, and cannot watch descriptor 1024 or above.
The kernel asks a poller (:mod:`yieldio.core.poller`: epoll, or a selector
elsewhere) and keeps registrations between waits, level-triggered: a
connection that waits to read, is woken, echoes and waits to read again
costs no ``epoll_ctl`` call at all. Interest is dropped only when an event
arrives that no task waits for, or when the socket is closed.

*Time.* A heap of :class:`Timer` entries serves ``sleep()`` and timeouts;
the poll waits no longer than the nearest deadline.

*Cancellation.* A parked task is taken out of its waiting area and resumed
with an exception thrown at its wait point, so its ``finally`` blocks run as
usual. A task already in the ready queue gets the exception when it next
runs. Timeouts (:mod:`yieldio.core.scopes`) are cancellations with a deadline.

*Watching costs nothing unless asked for.* A kernel told to :meth:`Kernel.watch`
(by a monitor, before its first task) makes :class:`CountedTask` tasks, which
count their steps, and can hold its ready tasks and let them through one
step at a time (step mode: :meth:`Kernel.hold`, :meth:`Kernel.step`,
:meth:`Kernel.release`). A kernel nobody watches makes plain tasks, 16 bytes
smaller, and its loop pays a test of a local per step and two per turn.

*Faults stay local.* An exception that escapes a task ends that task alone;
it is logged (logger ``yieldio``) unless someone is there to receive it: a
task joining it, or its :class:`Supervisor`. An instrument that raises is
removed and logged; the tasks go on.

That is all the kernel does. It does no I/O besides polling (sockets live
in :mod:`yieldio.io`); signals, the module-level ``run()`` and the
tutorial's ``tasks`` live in :mod:`yieldio.core.runner`; the words that
describe a task's state live with the task table in
:mod:`yieldio.core.instrument`; the interface instruments follow, in
:mod:`yieldio.core.hooks`.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, MutableSequence
from typing import Any, Protocol, cast

from . import traps
from .hooks import Hook, HookIndex, Instrument
from .poller import IN, OUT, READ_EVENTS, WRITE_EVENTS, Poller, Waker, default_poller
from .traps import Coro

log = logging.getLogger("yieldio")

WaitPoint = tuple[str, Any]  # see Kernel.where


class Cancelled(BaseException):
    """Thrown into a task at its wait point to make it stop.

    A BaseException, so that ``except Exception`` in application code lets it pass.
    """


class Supervisor(Protocol):
    """Told by the kernel when a task it supervises has ended (a TaskGroup, a server).

    A supervised task's failure is the supervisor's to report: the kernel does not log it.
    """

    def child_done(self, task: Task) -> None: ...


class Timer:
    """``callback(arg)``, due at ``deadline`` (``time.monotonic()``).

    The kernel's heap holds ``(deadline, seq, timer)`` tuples rather than timers: the heap's
    comparisons are then made in C, on floats, where a ``__lt__`` would be a Python call per
    comparison, a dozen of them per timer among a hundred, and they fall between a deadline and
    the task it wakes. ``seq`` gives ties between equal deadlines to the older timer.
    """

    __slots__ = ("arg", "callback", "deadline")

    def __init__(self, deadline: float, callback: Callable[[Any], None], arg: Any) -> None:
        self.deadline = deadline
        self.callback: Callable[[Any], None] | None = callback
        self.arg = arg

    @property
    def cancelled(self) -> bool:
        return self.callback is None

    def cancel(self) -> None:
        """Don't run it. The heap drops the entry when it comes due; its argument is let go now."""
        self.callback = None
        self.arg = None


class Task:
    """A generator or coroutine the kernel runs, with what it takes to resume, join and cancel it."""

    # Every idle connection holds a task, and an object's size counts in 16-byte steps: what only a few
    # tasks need (a sleeping task's timer, run's main task) is kept by the kernel, not in a slot of each.
    __slots__ = (
        "_exc",
        "_joiners",
        "_next",
        "coro",
        "created",
        "daemon",
        "done",
        "exception",
        "id",
        "name",
        "result",
        "supervisor",
        "trap",
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
        self.supervisor: Supervisor | None = None  # told when it ends, and reports its failure
        self._next: Any = None  # the value to send at its next resumption
        self._exc: BaseException | None = None  # ... or the exception to throw
        # (task, wants the outcome) waiting for this one; a list only once someone waits (memory per task)
        self._joiners: list[tuple[Task, bool]] | tuple[()] = ()

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


class CountedTask(Task):
    """A task of a watched kernel (:meth:`Kernel.watch`): it counts its steps; a monitor's sampler adds up
    its run time (a clock read per step would cost the loop more than the step itself).

    A subclass, so that a kernel nobody watches pays nothing for it: its tasks would otherwise grow
    from 144 to 160 bytes each, and an idle connection is mostly its task and its socket.
    """

    __slots__ = ("run_time", "steps")

    def __init__(self, coro: Coro, name: str | None = None, daemon: bool = False) -> None:
        super().__init__(coro, name, daemon)
        self.steps = 0  # resumptions so far, counted by the kernel as each begins
        self.run_time = 0.0  # seconds, as sampled from another thread (the kernel never writes it)


class Kernel:
    """Runs tasks on one thread until none is left (or until a main task ends).

    Nothing here is safe to call from another thread.
    """

    def __init__(self, *, poller: Poller | None = None, shutdown_grace: float = 4.0) -> None:
        self._poller = poller or default_poller()
        self.shutdown_grace = shutdown_grace
        self._ready: deque[Task] = deque()
        self._readers: dict[int, Task] = {}
        self._writers: dict[int, Task] = {}
        self._masks: dict[int, int] = {}  # fd -> interest registered with the poller
        self._owners: dict[int, Any] = {}  # fd -> the object a classic trap named, to notice reuse
        self._timers: list[tuple[float, int, Timer]] = []  # a heap (see Timer)
        self._sleepers: dict[Task, Timer] = {}  # each sleeping task's entry in the heap
        self._seq = itertools.count()
        self._tasks: dict[int, Task] = {}
        self._live = 0  # tasks that are not daemons and not done
        self._main: Task | None = None  # run's main task: its outcome is returned, so its failure is not logged
        self.current: Task | None = None
        self.instruments: list[Instrument] = []  # see yieldio.core.hooks; empty: the hot loop pays one test
        self.hooks = HookIndex()  # per event, the hooks the instruments define
        self.stopping = False
        # Timers fire within microseconds, not within the millisecond the poll's timeout is counted in: the
        # last millisecond before a deadline is spent polling without waiting. For an open-loop load
        # generator, whose every send is due at a moment of its own; it costs that millisecond's CPU.
        self.precise_timers = False
        self.watched = False  # see watch(): tasks count their steps, and step mode is possible
        self._held: deque[Task] | None = None  # in step mode, the ready tasks held back (see hold())
        self._let_through: Task | None = None  # the held task step() lets run, until its step is done
        self._after_step: Callable[[Task | None], None] | None = None  # told when it is
        self._steps_before = 0  # the let-through task's steps when step() let it: it has run once they grow
        # work handed over by other threads, and the socket that wakes the poll when it comes
        self._from_threads: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._waker = Waker()
        self._poller.register(self._waker.fd, IN)
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
        task = (CountedTask if self.watched else Task)(coro, name, daemon)
        self._tasks[task.id] = task
        if not daemon:
            self._live += 1
        self._ready.append(task)
        if self.instruments:
            self._emit(self.hooks.task_spawned, task)
        return task

    def tasks(self) -> list[Task]:
        """Every task that has not ended yet."""
        return list(self._tasks.values())

    @property
    def live_count(self) -> int:
        """Tasks not ended, daemons aside: the kernel runs until this is 0 (with no main task)."""
        return self._live

    def call_later(self, delay: float, callback: Callable[[Any], None], arg: Any = None) -> Timer:
        """Run ``callback(arg)`` from the kernel after ``delay`` seconds; ``Timer.cancel()`` takes it back."""
        deadline = time.monotonic() + delay
        timer = Timer(deadline, callback, arg)
        heapq.heappush(self._timers, (deadline, next(self._seq), timer))
        return timer

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        """Have the kernel call ``callback(*args)`` on its own thread, soon, waking its poll at once.

        This is the only method of a kernel that is safe to call from another thread (a
        ``deque.append`` and one byte written to a socket; the GIL makes both atomic). Everything
        else, including the task-facing objects (queues, events, sockets), belongs to the kernel's
        thread: hand it work through here, e.g. ``kernel.call_soon_threadsafe(queue.put_nowait, item)``.
        A callback that raises is logged; the kernel goes on.
        """
        self._from_threads.append((callback, args))
        self._waker.wake()

    def cancel_nowait(self, task: Task, exc: BaseException | None = None) -> bool:
        """Arrange for ``exc`` to be thrown into ``task`` at its wait point; don't wait for it."""
        if task.done:
            return False
        if task._exc is None:
            task._exc = exc if exc is not None else Cancelled()
        if self.instruments:
            self._emit(self.hooks.task_cancelled, task, task._exc)
        if self._unpark(task):
            self._ready.append(task)
        return True

    def wake(self, task: Task, value: Any = None) -> None:
        """Resume a task parked by ``traps.park(waiters)``, which the caller has taken off ``waiters``.

        ``value`` is what its ``park`` returns. A task cancelled before it runs again gets the
        cancellation instead: code that hands it something along with the wake-up must check.
        """
        task._next = value
        self._ready.append(task)
        if self.instruments:
            self._emit(self.hooks.task_woken, task, "woken")

    def wake_all(self, waiters: MutableSequence[Task], value: Any = None) -> None:
        """Resume every task parked on ``waiters`` (see traps.park), first parked first."""
        for task in waiters:
            self.wake(task, value)
        waiters.clear()

    def forget_fd(self, fd: int) -> None:
        """The descriptor is being closed: drop its registration and wake whoever waits on it."""
        if self._masks.pop(fd, 0):
            with contextlib.suppress(OSError):
                self._poller.unregister(fd)
        self._owners.pop(fd, None)
        for waiting in (self._readers, self._writers):
            task = waiting.pop(fd, None)
            if task is not None:
                self._ready.append(task)
                if self.instruments:
                    self._emit(self.hooks.task_woken, task, f"fd {fd} closed")

    def add_instrument(self, instrument: Instrument) -> None:
        """Have ``instrument`` told of the scheduling events it has hooks for (see :mod:`yieldio.core.hooks`)."""
        self.instruments.append(instrument)
        self.hooks.add(instrument)

    def remove_instrument(self, instrument: Instrument) -> None:
        self.instruments.remove(instrument)
        self.hooks.remove(instrument)

    def _emit(self, hooks: tuple[Hook, ...], task: Task, *details: Any) -> None:
        for hook in hooks:
            try:
                hook(task, *details)
            except Exception:
                # as trio does: a broken instrument must not take the program down with it
                instrument = self.hooks.owner(hook)
                log.exception("instrument %r raised in %s: removed", instrument, getattr(hook, "__name__", hook))
                if instrument in self.instruments:
                    self.remove_instrument(instrument)

    def where(self, task: Task) -> WaitPoint | None:
        """Where a parked task waits: ``('recv' or 'send', fd)``, ``('sleep', timer)``,
        ``('task', target)`` (join, wait, cancel), ``('park', waiters)``; None if it is not
        parked (it is ready, running or done)."""
        trap = task.trap
        if trap is None:
            return None
        op, arg = trap
        if op == "recv" or op == "send":
            waiting = self._readers if op == "recv" else self._writers
            fd = arg if type(arg) is int else next((f for f, t in waiting.items() if t is task), None)
            return (op, fd) if fd is not None and waiting.get(fd) is task else None
        if op == "sleep":
            timer = self._sleepers.get(task)
            return None if timer is None else ("sleep", timer)
        if op in ("join", "wait", "cancel"):
            target = arg[0] if op == "cancel" else arg
            return ("task", target) if any(waiter is task for waiter, _ in target._joiners) else None
        if op == "park":
            return ("park", arg) if any(waiter is task for waiter in arg) else None
        return None

    # -- watching: a monitor's view and its step mode (kernel thread only) ---

    def watch(self) -> None:
        """Count each task's steps (:class:`CountedTask`) and allow step mode; before the first task.

        A monitor asks for this when it is attached to a new kernel; nothing else does.
        """
        if self._tasks:
            raise RuntimeError("a kernel is watched from before its first task")
        self.watched = True

    def ready_queue(self) -> list[Task]:
        """The ready queue, in the order the tasks will run (in step mode the held ones come first)."""
        return list(self._ready) if self._held is None else [*self._held, *self._ready]

    @property
    def holding(self) -> bool:
        """In step mode (see :meth:`hold`)."""
        return self._held is not None

    def hold(self) -> None:
        """Step mode: from the next turn on, ready tasks are held in the ready queue until :meth:`step`
        lets one run. I/O, timers and calls from other threads go on; daemon tasks (the runner's signal
        watcher) are not held, so a signal still stops the program. The kernel must be watched."""
        if not self.watched:
            raise RuntimeError("step mode needs a watched kernel (Kernel.watch)")
        if self._held is None:
            self._held = deque()

    def step(self, done: Callable[[Task | None], None]) -> None:
        """In step mode, let the first ready task run one step; ``done(task)`` once it has, at the end
        of that turn (``done(None)`` at once when no task is ready)."""
        if self._held is None:
            raise RuntimeError("step() is for step mode (Kernel.hold)")
        if self._after_step is not None:
            raise RuntimeError("a step is already under way")
        self._hold_ready()
        if not self._held:
            done(None)
            return
        task = self._held.popleft()
        self._ready.appendleft(task)
        self._let_through = task
        self._after_step = done
        self._steps_before = task.steps  # type: ignore[attr-defined]  # a watched kernel's tasks are CountedTasks

    def release(self) -> None:
        """Leave step mode: the held tasks go back to the front of the ready queue, in their order."""
        held, self._held = self._held, None
        if held:
            self._ready.extendleft(reversed(held))

    def _hold_ready(self) -> None:
        """Move the ready tasks behind the held ones, except the task let through and the daemons."""
        ready, held, through = self._ready, self._held, self._let_through
        if not ready or held is None:
            return
        passing = [task for task in ready if task is through or task.daemon]
        held.extend(task for task in ready if task is not through and not task.daemon)
        ready.clear()
        ready.extend(passing)

    def _end_step(self) -> None:
        """At the end of a turn: if the task let through has had its step, say so."""
        done, task = self._after_step, self._let_through
        if done is None or task is None or (task.steps == self._steps_before and not task.done):  # type: ignore[attr-defined]
            return  # step() was called in the middle of a turn: the task runs in the next one
        self._after_step = self._let_through = None
        done(task)

    # -- running ------------------------------------------------------------

    def run(self, main: Coro | Callable[[], Coro] | None = None) -> Any:
        """Run ``main`` to completion and return its result; with no main, run until no task is left.

        Returns None when ``main`` was cancelled by :meth:`shutdown` (a signal, say).
        """
        if running_kernel() is not None:
            raise RuntimeError("a yieldio kernel is already running in this thread")
        if main is not None and not hasattr(main, "send"):
            main = main()  # a coroutine function or generator function
        main_task = self.spawn(cast(Coro, main), name=getattr(main, "__name__", None)) if main is not None else None
        self._main = main_task
        _this_thread.kernel = self
        try:
            self._loop(main_task)
            if self._tasks:
                self._stop_all()
        finally:
            _this_thread.kernel = None
            self.current = None
            self._poller.close()
            self._waker.close()
        if main_task is None:
            return None
        if main_task.exception is not None:
            if self.stopping and isinstance(main_task.exception, Cancelled):
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
        watched = self.watched  # the same for a monitor: one test per step, and two per turn
        while self._live if until is None else not until.done:
            if ready:
                timeout = 0.0
            elif timers:
                timeout = max(timers[0][0] - monotonic(), 0.0)
                if self.precise_timers:  # the poll's timeout is whole milliseconds, rounded up: wait less, poll again
                    timeout = timeout - 0.001 if timeout > 0.001 else 0.0
            elif readers or writers or self._from_threads or threading.active_count() > 1:
                timeout = -1.0  # (another thread may yet hand work over: see call_soon_threadsafe)
            else:
                raise RuntimeError(f"deadlock: no task can ever wake up: {list(self._tasks.values())}")
            for fd, events in poll(timeout):
                if events == IN and not instruments:  # the common case, a reader woken, in half the steps
                    reader = readers.pop(fd, None)
                    if reader is not None:
                        append(reader)
                        continue
                reader = readers.pop(fd, None) if events & READ_EVENTS else None
                writer = writers.pop(fd, None) if events & WRITE_EVENTS else None
                if reader is not None:
                    append(reader)
                if writer is not None:
                    append(writer)
                elif reader is None:
                    self._unclaimed(fd)  # nobody waits for what happened
                if instruments and self.hooks.task_woken:
                    for woken, what in ((reader, "readable"), (writer, "writable")):
                        if woken is not None:
                            self._emit(self.hooks.task_woken, woken, f"poll: fd {fd} {what}")
            if timers and timers[0][0] <= monotonic():
                self._fire_timers()
            if watched and self._held is not None:
                self._hold_ready()
            n = len(ready)
            while n:
                n -= 1
                try:
                    task = popleft()
                except IndexError:  # close_all(), called by a task of this batch, emptied the queue
                    break
                self.current = task
                if watched:
                    task.steps += 1  # type: ignore[attr-defined]  # a watched kernel's tasks are CountedTasks
                if instruments:
                    self._emit(self.hooks.task_resumed, task)
                try:
                    if task._exc is None:
                        trap = task.coro.send(task._next)
                    else:
                        exc, task._exc = task._exc, None
                        trap = task.coro.throw(exc)
                except StopIteration as stop:
                    self._finish(task, stop.value, None)
                    continue
                except BaseException as error:
                    self._finish(task, None, error)
                    if isinstance(error, (SystemExit, KeyboardInterrupt)):
                        raise
                    continue
                task.trap = trap
                task._next = None  # sent once: what wakes it next sets its own (a readiness wake sends None)
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
                except Exception as error:  # noqa: BLE001 - whatever a bad trap raises goes back into its task
                    self._reject(task, trap, error)
                    n += 1
                if instruments:
                    self._emit(self.hooks.task_yielded, task, trap)
            self.current = None
            if watched and self._after_step is not None:
                self._end_step()

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
            error = TypeError(
                f"task {task.name!r} yielded {trap!r}: {trap[1]!r} is neither a descriptor nor has fileno()"
            )
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
                with contextlib.suppress(OSError):
                    self._poller.unregister(fd)
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

    def _unclaimed(self, fd: int) -> None:
        """An event no task waits for: the waker (work from other threads), or interest to drop."""
        if fd == self._waker.fd:
            self._waker.drain()
            self._run_thread_calls()
        else:
            self._drop_interest(fd)

    def _run_thread_calls(self) -> None:
        calls = self._from_threads
        while calls:
            callback, args = calls.popleft()
            try:
                callback(*args)
            except Exception:
                log.exception("%r, handed over from another thread, raised", callback)

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
            timer = heapq.heappop(timers)[2]
            if timer.callback is not None:
                timer.callback(timer.arg)

    def _unpark(self, task: Task) -> bool:
        """Take a parked task out of whatever it waits on; False if it was not parked."""
        where = self.where(task)
        if where is None:
            return False
        kind, place = where
        if kind == "recv":
            del self._readers[place]
        elif kind == "send":
            del self._writers[place]
        elif kind == "sleep":
            place.cancel()
            del self._sleepers[task]
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
            self._emit(self.hooks.task_finished, task)
        joiners = task._joiners
        if (
            error is not None
            and not joiners
            and task is not self._main
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
            if self.instruments:
                self._emit(self.hooks.task_woken, waiter, f"task {task.id} ended")
        task._joiners = ()
        if task.supervisor is not None:
            task.supervisor.child_done(task)

    # -- traps other than the two I/O waits: return True to resume the task at once

    def _trap_sleep(self, task: Task, seconds: float) -> bool:
        if seconds <= 0:
            self._ready.append(task)  # behind everyone else that is ready
        else:
            self._sleepers[task] = self.call_later(seconds, self._wake_sleeper, task)
        return False

    def _wake_sleeper(self, task: Task) -> None:
        del self._sleepers[task]
        self._ready.append(task)
        if self.instruments:
            self._emit(self.hooks.task_woken, task, "timer")

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

    def _trap_park(self, task: Task, waiters: MutableSequence[Task]) -> bool:
        waiters.append(task)
        return False

    # -- shutdown -----------------------------------------------------------

    def shutdown(self) -> None:
        """Cancel every task; close whatever is still running after the grace period."""
        self.stopping = True
        self.release()  # a held task could not clean up
        for task in list(self._tasks.values()):
            if not task.daemon and task is not self.current:
                self.cancel_nowait(task)
        self.call_later(self.shutdown_grace, lambda _: self.close_all())

    def _stop_all(self) -> None:
        """After the main task: cancel what is left, let it clean up, then close the daemons."""
        if self._live:
            if not self.stopping:  # after a shutdown they were cancelled already: don't cut their cleanup short
                self.shutdown()
            self._loop(None)
        self.close_all()

    def close_all(self) -> None:
        """Close every remaining task at once: its finally blocks run, its waits do not."""
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
        self._held = None


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
