"""Several processes on one port: ``yieldio serve --workers N``.

One kernel is one thread on one core. To use more cores, N worker processes
each serve their own listening socket on the same port with SO_REUSEPORT, and
the operating system spreads new connections across them (Linux balances by
a hash of the connection's addresses). Nothing is shared between workers, so
nothing needs locking.

The parent process only supervises: it starts the workers, restarts one
that dies (with a pause if they keep dying, so a broken configuration can't
make it spin), and on SIGTERM or SIGINT forwards SIGTERM to every worker and
waits for them to finish their graceful shutdown (a second signal forwards
it again: the workers then stop at once, as one process does). It waits for
signals with ``sigwaitinfo`` (all three blocked), so there is no handler to
race with; once it has stopped, it ignores them (a second SIGTERM must not
turn its exit status 0 into death by signal).

Each worker has a *slot*, 0 to N-1, and a replacement takes the slot of the
worker it replaces: what belongs to a slot (its listening sockets, which the
parent opens once and holds, see ``yieldio serve``) outlives the worker, so
the port is never free for another program to take, and the connections
waiting in a dead worker's backlog are accepted by its replacement. One
more process may run beside them (``aside``: the metrics endpoint of
``yieldio serve``), supervised the same way.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("yieldio")

RESTART_PAUSE = 1.0  # seconds between restarts of workers that die within that long of starting
READY_TIMEOUT = 10.0  # seconds the first workers get to open their sockets
STOP_GRACE = 6.0  # seconds a worker gets for its graceful shutdown before it is killed
_STOPPING = (signal.SIGTERM, signal.SIGINT)

Ready = Callable[[], None]


@dataclass(frozen=True)
class Aside:
    """One more process beside the workers: ``run(ready)``, named ``name`` in the log."""

    name: str
    run: Callable[[Ready], int]


def supervise(
    count: int,
    work: Callable[[int, Ready], int],
    *,
    on_ready: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
    aside: Aside | None = None,
) -> int:
    """Run ``work(slot, ready)`` in ``count`` forked processes (slots 0 to count-1), and ``aside`` in one
    more, until a signal asks them to stop; the exit status (1 if a process failed to stop cleanly).

    A process calls ``ready()`` once it can serve (its sockets are open); once every first one
    has (or READY_TIMEOUT has passed), the parent calls ``on_ready()``: where a server says it
    listens, so that nobody is told before the workers are there. ``on_stop()`` is called when a
    signal has come, before the processes are told to stop (the parent lets go of what it held
    for them). The process that called this should exit once it returns.
    """
    watched = {signal.SIGCHLD, *_STOPPING}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    processes: dict[int, tuple[int | None, float]] = {}  # pid -> (its slot, None for the aside; start time)
    ready_read, ready_write = os.pipe()

    def start(slot: int | None) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(ready_read)

            def ready() -> None:
                _say_ready(ready_write)

            if slot is None:
                assert aside is not None
                os._exit(_run_worker(lambda: aside.run(ready)))
            os._exit(_run_worker(lambda: work(slot, ready)))
        processes[pid] = (slot, time.monotonic())
        log.info("%s %d started", _name(slot, aside), pid)

    try:
        for slot in range(count):
            start(slot)
        if aside is not None:
            start(None)
        os.close(ready_write)
        ready_write = -1  # restarted workers inherit a closed end: only the first ones report
        _wait_ready(ready_read, len(processes))
        if on_ready is not None:
            on_ready()
        while True:
            info = signal.sigwaitinfo(watched)
            if info.si_signo != signal.SIGCHLD:
                log.info("%s received: stopping %d workers", signal.Signals(info.si_signo).name, count)
                if on_stop is not None:
                    on_stop()
                status = _stop(processes)
                for sig in _STOPPING:  # stopped: the process exits next, and a late signal must not kill it
                    signal.signal(sig, signal.SIG_IGN)
                return status
            for pid, vacant, status, lived in _reap(processes):
                log.warning(
                    "%s %d exited (%s) after %.1fs: restarting it", _name(vacant, aside), pid, _describe(status), lived
                )
                if lived < RESTART_PAUSE:
                    time.sleep(RESTART_PAUSE)  # the supervisor has nothing else to do meanwhile
                start(vacant)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(ready_read)
        if ready_write >= 0:
            os.close(ready_write)


def _name(slot: int | None, aside: Aside | None) -> str:
    return aside.name if slot is None and aside is not None else "worker"


def _say_ready(fd: int) -> None:
    if fd >= 0:
        os.write(fd, b"!")
        os.close(fd)


def _wait_ready(fd: int, count: int) -> None:
    """Until ``count`` workers said they are ready, or all have exited, or READY_TIMEOUT has passed."""
    deadline = time.monotonic() + READY_TIMEOUT
    ready = 0
    while ready < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            log.warning("%d of %d workers ready after %ss", ready, count, READY_TIMEOUT)
            return
        said = os.read(fd, count)
        if not said:  # every write end is closed: the rest exited before they were ready
            return
        ready += len(said)


def _run_worker(work: Callable[[], int]) -> int:
    """The worker's exit status. Its crash is logged here: ``os._exit``, which a forked child must
    use (no atexit handlers, no flushing the parent's buffers twice), would discard the traceback."""
    try:
        return work()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        log.exception("worker %d crashed", os.getpid())
        return 1
    finally:
        logging.shutdown()  # flush the log before os._exit


def _reap(processes: dict[int, tuple[int | None, float]]) -> list[tuple[int, int | None, int, float]]:
    """Collect the processes that have ended: (pid, its slot, wait status, seconds it lived)."""
    ended = []
    while processes:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        if pid in processes:
            slot, started = processes.pop(pid)
            ended.append((pid, slot, status, time.monotonic() - started))
    return ended


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _stop(processes: dict[int, tuple[int | None, float]]) -> int:
    for pid in processes:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    failed = False
    while processes:
        for _, _, status, _ in _reap(processes):
            failed |= os.waitstatus_to_exitcode(status) != 0
        if processes and time.monotonic() > deadline:
            for pid in processes:
                log.warning("worker %d did not stop in %ss: killing it", pid, STOP_GRACE)
                os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        if processes:
            info = signal.sigtimedwait({signal.SIGCHLD, *_STOPPING}, 0.1)
            if info is not None and info.si_signo != signal.SIGCHLD:
                # asked again: as one process does, stop now (each worker closes what is left)
                log.warning("%s again: stopping the workers now", signal.Signals(info.si_signo).name)
                for pid in processes:
                    os.kill(pid, signal.SIGTERM)
    return 1 if failed else 0
