"""Several processes on one port: ``yieldio serve --workers N``.

One kernel is one thread on one core. To use more cores, N worker processes
each open their own listening socket on the same port with SO_REUSEPORT, and
the operating system spreads new connections across them (Linux balances by
a hash of the connection's addresses). Nothing is shared between workers, so
nothing needs locking.

The parent process only supervises: it starts the workers, restarts one
that dies (with a pause if they keep dying, so a broken configuration can't
make it spin), and on SIGTERM or SIGINT forwards SIGTERM to every worker and
waits for them to finish their graceful shutdown. It waits for signals with
``sigwaitinfo`` (all three blocked), so there is no handler to race with.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from collections.abc import Callable

log = logging.getLogger("yieldio")

RESTART_PAUSE = 1.0  # seconds between restarts of workers that die within that long of starting
READY_TIMEOUT = 10.0  # seconds the first workers get to open their sockets
STOP_GRACE = 6.0  # seconds a worker gets for its graceful shutdown before it is killed


def supervise(count: int, work: Callable[[Callable[[], None]], int], on_ready: Callable[[], None] | None = None) -> int:
    """Run ``work(ready)`` in ``count`` forked processes until a signal asks them to stop.

    A worker calls ``ready()`` once it can serve (its sockets are open); once every first
    worker has (or READY_TIMEOUT has passed), the parent calls ``on_ready()``: where a server
    says it listens, so that nobody is told before the workers are there.
    """
    watched = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    workers: dict[int, float] = {}  # pid -> start time
    ready_read, ready_write = os.pipe()

    def start() -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(ready_read)
            os._exit(_run_worker(lambda: work(lambda: _say_ready(ready_write))))
        workers[pid] = time.monotonic()
        log.info("worker %d started", pid)

    try:
        for _ in range(count):
            start()
        os.close(ready_write)
        ready_write = -1  # restarted workers inherit a closed end: only the first ones report
        _wait_ready(ready_read, count)
        if on_ready is not None:
            on_ready()
        while True:
            info = signal.sigwaitinfo(watched)
            if info.si_signo != signal.SIGCHLD:
                log.info("%s received: stopping %d workers", signal.Signals(info.si_signo).name, len(workers))
                return _stop(workers)
            for pid, status, lived in _reap(workers):
                log.warning("worker %d exited (%s) after %.1fs: restarting it", pid, _describe(status), lived)
                if lived < RESTART_PAUSE:
                    time.sleep(RESTART_PAUSE)  # the supervisor has nothing else to do meanwhile
                start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(ready_read)
        if ready_write >= 0:
            os.close(ready_write)


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


def _reap(workers: dict[int, float]) -> list[tuple[int, int, float]]:
    """Collect the workers that have ended: (pid, wait status, seconds it lived)."""
    ended = []
    while workers:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        if pid in workers:
            ended.append((pid, status, time.monotonic() - workers.pop(pid)))
    return ended


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _stop(workers: dict[int, float]) -> int:
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    failed = False
    while workers:
        for _, status, _ in _reap(workers):
            failed |= os.waitstatus_to_exitcode(status) != 0
        if workers and time.monotonic() > deadline:
            for pid in workers:
                log.warning("worker %d did not stop in %ss: killing it", pid, STOP_GRACE)
                os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        if workers:
            signal.sigtimedwait({signal.SIGCHLD}, 0.1)
    return 1 if failed else 0
