"""Running a program: ``run()``, the tutorial's ``tasks``, and signals.

The kernel only schedules. Starting a program takes a little more, and it
is the same for every program, the ``yieldio`` command included, so it
lives here, in one place:

- :func:`new_kernel` makes a kernel with the instruments the environment
  asks for (``YIELDIO_TRACE=1`` adds a :class:`~yieldio.core.instrument.Tracer`);
- :class:`SignalRoute` turns SIGINT and SIGTERM into an orderly shutdown of
  the kernel (every task cancelled at its wait point, a grace period for
  its cleanup; a second signal, or the end of the grace period, closes what
  is left) and SIGUSR1 into a log of the task table. It works the way
  CPython's own loops do: the C-level handler writes the signal number to
  a socket (``signal.set_wakeup_fd``) and a daemon task reads it, so
  signals arrive between two task steps, never in the middle of one;
- :data:`tasks` is the tutorial's ``tasks``: ``tasks.append(gen)``
  schedules a generator, before ``run()`` or from inside a task;
- an :data:`Extension` starts with a kernel and stops when it has run (a
  monitor, a trace file). Those live above the core, so the runner does not
  import them: the package registers them here (:func:`extend_from_environment`,
  called in ``yieldio/__init__.py``), and each looks at its own variable
  (``YIELDIO_MONITOR``, ``YIELDIO_TRACE_FILE``), so that any program run by
  :func:`run`, the tutorial's included, can be watched without a change. A
  caller that configures its own (``yieldio serve``, from its flags) passes them;
- :func:`run` puts these together.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Generator, Sequence
from types import FrameType
from typing import Any, Self

from .instrument import Tracer, task_table
from .kernel import Kernel, running_kernel
from .traps import Coro

log = logging.getLogger("yieldio")

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

# Called with a new kernel before its first task; what it returns is entered around the kernel's run.
Extension = Callable[[Kernel], contextlib.AbstractContextManager[object]]

_from_environment: list[Extension] = []


def extend_from_environment(extension: Extension) -> None:
    """Start ``extension`` with every kernel :func:`run` makes when it is not given extensions of its own.

    It decides from the environment whether it has anything to do (``contextlib.nullcontext()`` if not).
    """
    _from_environment.append(extension)


def new_kernel(*, trace: bool = False) -> Kernel:
    """A kernel, traced if ``trace`` is true or the environment says ``YIELDIO_TRACE=1``."""
    kernel = Kernel()
    if trace or os.environ.get("YIELDIO_TRACE", "") not in ("", "0"):
        kernel.add_instrument(Tracer())
    return kernel


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    """The C-level handler has already written the signal to the wakeup socket."""


class SignalRoute:
    """While entered (in the main thread), SIGINT, SIGTERM and SIGUSR1 reach ``kernel`` as described above.

    ``received`` is the first stopping signal, if any arrived. Outside the main thread it does nothing.
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.received: int | None = None
        self._restore: Callable[[], None] | None = None

    def __enter__(self) -> Self:
        if threading.current_thread() is not threading.main_thread():
            return self
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        old_handlers = {sig: signal.signal(sig, _ignore_signal) for sig in HANDLED_SIGNALS}
        # spawned at the kernel's first turn, behind the tasks it starts with: the program's own come first
        self.kernel.call_later(0, self._start_watching, wake_read)

        def restore() -> None:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            wake_read.close()
            wake_write.close()

        self._restore = restore
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None

    def _start_watching(self, wake: socket.socket) -> None:
        self.kernel.spawn(self._watch(wake), name="signal watcher", daemon=True)

    def _watch(self, wake: socket.socket) -> Generator[Any, Any, None]:
        while True:
            yield ("recv", wake.fileno())
            try:
                received = wake.recv(64)
            except BlockingIOError:
                continue
            for signum in received:
                self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        kernel = self.kernel
        if signum == signal.SIGUSR1:
            log.warning("SIGUSR1: %d tasks\n%s", len(kernel.tasks()), task_table(kernel))
            return
        name = signal.Signals(signum).name
        if kernel.stopping:
            log.warning("%s again: stopping now", name)
            kernel.close_all()
            return
        log.info("%s received: shutting down", name)
        self.received = signum
        kernel.shutdown()


class ClassicTasks:
    """The tutorial's ``tasks``: ``tasks.append(gen)`` schedules a generator.

    Before ``run()`` it collects them; inside a running kernel it spawns at once.
    """

    def __init__(self) -> None:
        self._pending: list[Coro] = []

    def append(self, coro: Coro) -> None:
        kernel = running_kernel()
        if kernel is None:
            self._pending.append(coro)
        else:
            kernel.spawn(coro)

    def take(self) -> list[Coro]:
        """The generators appended before ``run()``, handed over once."""
        pending, self._pending = self._pending, []
        return pending

    def __len__(self) -> int:
        kernel = running_kernel()
        return kernel.live_count if kernel is not None else len(self._pending)

    def __repr__(self) -> str:
        return f"<yieldio tasks: {len(self)}>"


tasks = ClassicTasks()


def run(
    main: Coro | Callable[[], Coro] | None = None,
    *,
    handle_signals: bool = True,
    trace: bool = False,
    extensions: Sequence[Extension] | None = None,
) -> Any:
    """Run ``main`` on a fresh kernel and return its result (its exception propagates).

    With no argument, run what was put in ``tasks`` until no task is left, as the tutorial does.
    On SIGINT or SIGTERM every task is cancelled; ``run`` then returns None once they have ended.
    ``extensions`` start with the kernel (by default, those the environment asks for).
    """
    kernel = new_kernel(trace=trace)
    with contextlib.ExitStack() as started:
        for extension in _from_environment if extensions is None else extensions:
            started.enter_context(extension(kernel))
        for coro in tasks.take():
            kernel.spawn(coro)
        if not handle_signals:
            return kernel.run(main)
        with SignalRoute(kernel):
            return kernel.run(main)
