"""yieldio.core.runner: run(), the tutorial's tasks, and the signal route around a kernel."""

from __future__ import annotations

import os
import signal
import threading

import yieldio
from yieldio import Kernel, sleep, tasks
from yieldio.core.instrument import Tracer
from yieldio.core.runner import SignalRoute, new_kernel


def test_len_of_tasks_counts_pending_then_live_tasks() -> None:
    seen: list[int] = []

    def worker(rounds: int):  # type: ignore[no-untyped-def]
        for _ in range(rounds):
            seen.append(len(tasks))
            yield ("sleep", 0)

    tasks.append(worker(1))
    tasks.append(worker(2))
    assert len(tasks) == 2  # not started yet: what run() will start
    yieldio.run()
    assert seen == [2, 2, 1]  # inside the kernel: tasks not yet ended
    assert len(tasks) == 0


def test_run_works_outside_the_main_thread_where_signals_cannot_be_routed() -> None:
    outcome: list[object] = []

    async def main() -> str:
        await sleep(0)
        return "ran"

    def in_thread() -> None:
        try:
            outcome.append(yieldio.run(main))
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread, which asserts
            outcome.append(error)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(10)
    assert outcome == ["ran"]


def test_sigterm_shuts_the_kernel_down_and_run_returns_none() -> None:
    cleaned: list[str] = []

    async def main() -> str:
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the wakeup socket, read by the watcher task
        try:
            await sleep(30)
        finally:
            cleaned.append("main")
        return "not reached"

    previous = signal.getsignal(signal.SIGTERM)
    assert yieldio.run(main) is None
    assert cleaned == ["main"]
    assert signal.getsignal(signal.SIGTERM) is previous  # the route is taken down with the kernel


def test_signal_route_records_the_signal_and_a_second_one_closes_at_once() -> None:
    kernel = Kernel(shutdown_grace=30)
    closed: list[str] = []

    async def stubborn() -> None:
        try:
            await sleep(30)
        finally:
            closed.append("first cancellation")
            os.kill(os.getpid(), signal.SIGINT)  # the second signal: close what is left now
            await sleep(30)  # cleanup that would take the whole grace period

    async def main() -> None:
        kernel.spawn(stubborn())
        await sleep(0)
        os.kill(os.getpid(), signal.SIGTERM)
        await sleep(30)

    with SignalRoute(kernel) as route:
        assert kernel.run(main) is None
    assert route.received == signal.SIGTERM
    assert closed == ["first cancellation"]


def test_new_kernel_is_traced_when_asked_or_when_the_environment_says_so(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("YIELDIO_TRACE", raising=False)
    assert new_kernel().instruments == []
    assert [type(i) for i in new_kernel(trace=True).instruments] == [Tracer]
    monkeypatch.setenv("YIELDIO_TRACE", "1")
    assert [type(i) for i in new_kernel().instruments] == [Tracer]
