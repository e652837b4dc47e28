"""Kernel semantics: order, time, join, cancel, timeouts, groups, errors, bad yields, scale."""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Generator
from typing import Any

import pytest

import yieldio
from yieldio import Cancelled, Kernel, TaskGroup, TaskTimeout, sleep, spawn, tasks, timeout_after
from yieldio.core.instrument import describe
from yieldio.core.kernel import CountedTask
from yieldio.core.poller import SelectorPoller

from .harness import raise_nofile


def test_run_returns_result_and_propagates_exception(caplog: pytest.LogCaptureFixture) -> None:
    async def answer() -> int:
        return 42

    async def fail() -> None:
        raise KeyError("no")

    assert yieldio.run(answer) == 42
    assert yieldio.run(answer()) == 42
    with caplog.at_level(logging.ERROR, logger="yieldio"), pytest.raises(KeyError):
        yieldio.run(fail)
    assert not caplog.records  # the caller gets the main task's failure: it is not also logged as a crash


def test_scheduling_order_is_fifo_round_robin() -> None:
    order: list[str] = []

    def worker(name: str, steps: int) -> Generator[Any, Any, None]:  # the tutorial's style: a plain generator
        for i in range(steps):
            order.append(f"{name}{i}")
            yield from sleep(0)

    async def main() -> None:
        a = await spawn(worker("a", 3))
        b = await spawn(worker("b", 3))
        await a.join()
        await b.join()

    yieldio.run(main)
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_spawn_does_not_switch_and_child_runs_later() -> None:
    events: list[str] = []

    async def child() -> None:
        events.append("child")

    async def main() -> None:
        await spawn(child())
        events.append("parent after spawn")
        await sleep(0)
        events.append("parent after sleep(0)")

    yieldio.run(main)
    assert events == ["parent after spawn", "child", "parent after sleep(0)"]


def test_sleep_accuracy_and_ordering_by_deadline() -> None:
    woke: list[tuple[str, float]] = []
    start = time.monotonic()

    async def sleeper(name: str, seconds: float) -> None:
        await sleep(seconds)
        woke.append((name, time.monotonic() - start))

    async def main() -> None:
        tasks_ = [await spawn(sleeper(n, s)) for n, s in (("slow", 0.12), ("fast", 0.03), ("mid", 0.06))]
        for t in tasks_:
            await t.join()

    yieldio.run(main)
    assert [name for name, _ in woke] == ["fast", "mid", "slow"]
    for (name, elapsed), wanted in zip(woke, (0.03, 0.06, 0.12), strict=True):
        assert wanted <= elapsed < wanted + 1.0, (name, elapsed)  # never early; late only by a busy machine


def test_join_returns_result_or_raises_in_both_styles() -> None:
    # each child gives up control once before it returns: whoever joins it has to wait
    async def double(n: int) -> int:
        await sleep(0)
        return 2 * n

    def gen_double(n: int) -> Generator[Any, Any, int]:
        yield from sleep(0)
        return 2 * n

    async def crash() -> None:
        await sleep(0)
        raise ValueError("child failed")

    def gen_main() -> Generator[Any, Any, Any]:
        t = yield from spawn(double(4))
        u = yield from spawn(gen_double(5))
        return (yield from t.join()), (yield from u.join())

    async def main() -> None:
        assert await (await spawn(gen_double(3))).join() == 6
        t = await spawn(crash())
        with pytest.raises(ValueError, match="child failed"):
            await t.join()
        # joining again after it ended gives the same outcome
        with pytest.raises(ValueError):
            await t.join()

    assert yieldio.run(gen_main) == (8, 10)
    yieldio.run(main)


def test_cancel_during_io_wait_runs_finally_and_returns_after_end() -> None:
    log: list[str] = []

    async def reader(sock: yieldio.Socket) -> None:
        try:
            await sock.recv(10)
            log.append("received?!")
        finally:
            log.append("finally ran")

    async def main() -> None:
        left, right = socket.socketpair()
        with yieldio.Socket(left) as a, right:
            t = await spawn(reader(a))
            await sleep(0)  # the reader runs first and parks in recv (ready tasks run in order)
            assert await t.cancel() is True
            assert t.done and isinstance(t.exception, Cancelled)
            log.append("cancel returned")
            assert await t.cancel() is False  # already over

    yieldio.run(main)
    assert log == ["finally ran", "cancel returned"]


def test_cancel_a_sleeping_task_and_one_that_never_started() -> None:
    async def sleeper() -> None:
        await sleep(100)

    async def main() -> None:
        sleeping = await spawn(sleeper())
        other = await spawn(sleeper())
        await sleep(0)  # both run first and park in their sleep
        started = time.monotonic()
        await sleeping.cancel()
        assert time.monotonic() - started < 5  # not a wait for its 100 s timer
        assert isinstance(sleeping.exception, Cancelled)
        fresh = await spawn(sleeper())
        assert await fresh.cancel() is True  # before it ever ran
        assert fresh.done and isinstance(fresh.exception, Cancelled)
        assert other.done is False  # the cancellations touched no other task
        await other.cancel()

    yieldio.run(main)


def test_a_sleeper_is_sleeping_until_its_timer_fires_and_a_cancelled_one_lets_its_timer_go() -> None:
    seen: list[str] = []

    async def main() -> None:
        kernel = yieldio.current_kernel()
        sleeper = await spawn(sleep(0.01), name="sleeper")
        await sleep(0)  # it runs and parks in its sleep
        seen.append(describe(kernel, sleeper))
        kernel.call_later(0.01, lambda _: seen.append(describe(kernel, sleeper)))  # due right after its timer
        time.sleep(0.05)  # noqa: ASYNC251 - both come due while the kernel is held here: they fire in order, next turn
        await sleep(0)
        await sleeper.join()
        seen.append(describe(kernel, sleeper))

        long = await spawn(sleep(100))
        await sleep(0)
        where = kernel.where(long)
        assert where is not None and where[0] == "sleep"
        timer = where[1]
        assert not timer.cancelled
        await long.cancel()
        assert timer.cancelled and kernel.where(long) is None

    yieldio.run(main)
    assert seen[0].startswith("sleeping") and seen[1:] == ["ready", "finished"]


def test_cancelled_is_not_caught_by_except_exception() -> None:
    async def stubborn() -> str:
        try:
            await sleep(100)
        except Exception:  # noqa: BLE001 - the point: Cancelled must get through it
            return "swallowed"
        return "not reached"

    async def main() -> None:
        t = await spawn(stubborn())
        await sleep(0)
        await t.cancel()
        assert isinstance(t.exception, Cancelled)

    yieldio.run(main)


def test_timeout_after_raises_task_timeout_and_leaves_time_for_cleanup() -> None:
    cleaned: list[bool] = []

    async def main() -> float:
        start = time.monotonic()
        with pytest.raises(TaskTimeout):
            async with timeout_after(0.05):
                try:
                    await sleep(10)
                finally:
                    cleaned.append(True)
        return time.monotonic() - start

    elapsed = yieldio.run(main)
    assert cleaned == [True]
    assert 0.05 <= elapsed < 5  # at its deadline, not the 10 s sleep's end
    assert issubclass(TaskTimeout, TimeoutError)


def test_timeout_not_reached_changes_nothing_and_its_timer_is_cancelled() -> None:
    async def main() -> str:
        async with timeout_after(0.05):
            await sleep(0.01)
        await sleep(0.1)  # the old deadline passes here: nothing must be thrown
        return "fine"

    assert yieldio.run(main) == "fine"


def test_nested_timeouts_each_reports_its_own() -> None:
    async def main() -> list[str]:
        seen = []
        try:
            async with timeout_after(0.05):
                try:
                    async with timeout_after(5):
                        await sleep(1)
                except TaskTimeout:
                    seen.append("inner caught the outer's timeout?!")
        except TaskTimeout:
            seen.append("outer expired")
        async with timeout_after(5):
            try:
                async with timeout_after(0.02):
                    await sleep(1)
            except TaskTimeout:
                seen.append("inner expired")
            await sleep(0.01)
        seen.append("outer still fine")
        return seen

    assert yieldio.run(main) == ["outer expired", "inner expired", "outer still fine"]


def test_timeout_after_call_form_in_generators_and_coroutines() -> None:
    async def slow() -> None:
        await sleep(10)

    def gen_main() -> Generator[Any, Any, Any]:
        value = yield from timeout_after(1, sleep_then(7))
        try:
            yield from timeout_after(0.02, slow())
        except TaskTimeout:
            return value, "timed out"

    async def sleep_then(value: int) -> int:
        await sleep(0.01)
        return value

    assert yieldio.run(gen_main) == (7, "timed out")


def test_task_group_waits_for_all_children() -> None:
    async def child(n: int) -> int:
        await sleep(0.01 * n)
        return n

    async def main() -> list[int]:
        async with TaskGroup() as group:
            children = [await group.spawn(child(n)) for n in (3, 1, 2)]
        assert all(c.done for c in children)
        return [c.result for c in children]

    assert yieldio.run(main) == [3, 1, 2]


def test_task_group_error_cancels_siblings_and_body() -> None:
    cleanup: list[str] = []

    async def fails() -> None:
        await sleep(0)  # the sibling runs first and parks in its sleep, as the body already has
        raise ValueError("child error")

    async def long_running(name: str) -> None:
        try:
            await sleep(10)
        finally:
            cleanup.append(name)

    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(ExceptionGroup) as caught:
            async with TaskGroup() as group:
                await group.spawn(fails())
                await group.spawn(long_running("sibling"))
                await long_running("body")
        assert time.monotonic() - started < 5  # the sibling and the body were cancelled, not waited for (10 s)
        assert [type(e) for e in caught.value.exceptions] == [ValueError]

    yieldio.run(main)
    assert sorted(cleanup) == ["body", "sibling"]


def test_task_group_cancelled_from_outside_cancels_children() -> None:
    started: list[str] = []
    cleanup: list[str] = []

    async def child() -> None:
        started.append("child")
        try:
            await sleep(10)
        finally:
            cleanup.append("child")

    async def holder() -> None:
        async with TaskGroup() as group:
            await group.spawn(child())
            await group.spawn(child())

    async def main() -> None:
        t = await spawn(holder())
        await sleep(0)  # the holder runs and spawns its children...
        await sleep(0)  # ...which run and park in their sleep
        assert started == ["child", "child"]
        await t.cancel()
        assert isinstance(t.exception, Cancelled)

    yieldio.run(main)
    assert cleanup == ["child", "child"]


def test_crashed_task_is_logged_and_others_go_on(caplog: pytest.LogCaptureFixture) -> None:
    async def crash() -> None:
        raise RuntimeError("handler bug")

    async def main() -> str:
        await spawn(crash(), name="crasher")
        await sleep(0)  # the crasher runs (and crashes) first
        return "still running"

    with caplog.at_level(logging.ERROR, logger="yieldio"):
        assert yieldio.run(main) == "still running"
    records = [r for r in caplog.records if "crasher" in r.getMessage()]
    assert records and records[0].exc_info and records[0].exc_info[0] is RuntimeError


@pytest.mark.parametrize("bad", [42, None, ("recv",), ("fly", 1), "recv", ("recv", 3.5)])
def test_bad_yield_raises_inside_the_task_naming_the_value(bad: object) -> None:
    def task() -> Generator[Any, Any, str]:
        try:
            yield bad
        except TypeError as error:
            return str(error)
        return "no error"

    async def main() -> str:
        other = await spawn(sleep_and_return())
        message: str = await (await spawn(task())).join()
        assert await other.join() == "unaffected"
        return message

    async def sleep_and_return() -> str:
        await sleep(0.01)
        return "unaffected"

    message = yieldio.run(main)
    assert repr(bad) in message


def test_classic_tasks_append_and_run_until_no_task_left() -> None:
    log: list[str] = []

    def child(n: int) -> Generator[Any, Any, None]:
        yield from sleep(0)
        log.append(f"child {n}")

    def parent() -> Generator[Any, Any, None]:
        for n in range(3):
            tasks.append(child(n))  # scheduling from inside a running task, as the tutorial does
        yield from sleep(0)
        log.append("parent")

    tasks.append(parent())
    assert len(tasks) == 1
    yieldio.run()
    assert sorted(log) == ["child 0", "child 1", "child 2", "parent"]
    assert len(tasks) == 0


def test_classic_recv_send_traps_with_socket_objects_and_ints() -> None:
    left, right = socket.socketpair()
    got: list[bytes] = []

    def reader(sock: socket.socket) -> Generator[Any, Any, None]:
        yield "recv", sock
        got.append(sock.recv(100))
        yield "recv", sock.fileno()
        got.append(sock.recv(100))

    def writer(sock: socket.socket) -> Generator[Any, Any, None]:
        yield "send", sock
        sock.send(b"one")
        yield from sleep(0)  # one turn: the next poll wakes the reader, which takes "one" before "two" is sent
        yield "send", sock.fileno()
        sock.send(b"two")

    tasks.append(reader(left))
    tasks.append(writer(right))
    yieldio.run()
    left.close()
    right.close()
    assert got == [b"one", b"two"]


def test_a_readiness_wake_resumes_with_none_even_after_a_trap_that_answered() -> None:
    # the tutorial's ``yield 'recv', sock`` gives None; the answer to an earlier trap (here the task
    # itself, from current_task) is not sent again (a task delegating to an iterator relies on it)
    left, right = socket.socketpair()
    woken_with: list[object] = []

    def reader(sock: socket.socket) -> Generator[Any, Any, None]:
        me = yield from yieldio.traps.current_task()
        assert me is not None
        woken_with.append((yield "recv", sock))
        woken_with.append((yield "send", sock))

    right.send(b"x")
    yieldio.run(reader(left))
    left.close()
    right.close()
    assert woken_with == [None, None]


def test_two_readers_on_one_socket_is_an_error_for_the_second() -> None:
    left, right = socket.socketpair()

    def reader() -> Generator[Any, Any, str]:
        try:
            yield "recv", left
        except RuntimeError as error:
            return str(error)
        return "woke"

    async def main() -> list[object]:
        first = await spawn(reader())
        second = await spawn(reader())
        await sleep(0)  # both run first: the first parks, the second is refused
        right.send(b"x")
        return [await first.join(), await second.join()]

    results = yieldio.run(main)
    left.close()
    right.close()
    assert results[0] == "woke" and "already has a task waiting to read" in str(results[1])


def test_thousands_of_descriptors_beyond_select_limit() -> None:
    pairs_wanted = 1500  # 3000 descriptors: far past select()'s 1024
    raise_nofile(2 * pairs_wanted + 100)
    pairs = [socket.socketpair() for _ in range(pairs_wanted)]
    assert max(b.fileno() for _, b in pairs) > 1024
    try:

        async def echo_once(sock: socket.socket) -> bytes:
            s = yieldio.Socket(sock)
            data = await s.recv(100)
            await s.sendall(data)
            return data

        async def main() -> int:
            workers = [await spawn(echo_once(b)) for _, b in pairs]
            await sleep(0)
            for i, (a, _) in enumerate(pairs):
                a.send(b"%d" % i)
            for w in workers:
                await w.join()
            return sum(1 for i, (a, _) in enumerate(pairs) if a.recv(100) == b"%d" % i)

        assert yieldio.run(main) == pairs_wanted
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_selector_poller_fallback_runs_the_same_programs() -> None:
    async def main() -> bytes:
        left, right = socket.socketpair()
        async with yieldio.Socket(left) as a, yieldio.Socket(right) as b:
            reader = await spawn(a.recv(100))
            await sleep(0)  # the reader runs first and parks: the selector has to wake it
            await b.sendall(b"via selectors")
            received: bytes = await reader.join()
            return received

    kernel = Kernel(poller=SelectorPoller(selectors.PollSelector()))
    assert kernel.run(main) == b"via selectors"


def test_deadlock_is_reported_not_hung() -> None:
    async def main() -> None:
        await yieldio.traps.park([])

    with pytest.raises(RuntimeError, match="deadlock"):
        Kernel().run(main)


def test_main_ending_cancels_the_tasks_left_behind() -> None:
    cleanup: list[str] = []

    async def background() -> None:
        try:
            await sleep(100)
        finally:
            cleanup.append("background")

    async def main() -> str:
        await spawn(background())
        await sleep(0)  # the background task runs first and parks in its sleep
        return "main done"

    assert yieldio.run(main) == "main done"
    assert cleanup == ["background"]


def test_work_handed_over_by_a_thread_that_has_already_ended_is_run_not_called_a_deadlock() -> None:
    kernel = Kernel()
    waiters: list[yieldio.Task] = []
    got: list[int] = []

    def deliver(value: int) -> None:
        got.append(value)
        kernel.wake_all(waiters)

    async def main() -> list[int]:
        thread = threading.Thread(target=kernel.call_soon_threadsafe, args=(deliver, 7))
        thread.start()
        thread.join()  # the only other thread is gone before this task parks
        await yieldio.traps.park(waiters)
        return got

    assert kernel.run(main) == [7]


# -- watching: step counts and step mode (what a monitor drives) ---------------------------------


def steps_of(task: yieldio.Task) -> int:
    assert isinstance(task, CountedTask), f"{task!r} is not a watched kernel's task"
    return task.steps


def test_only_a_watched_kernel_counts_steps_and_its_tasks_alone_carry_the_counters() -> None:
    def worker(rounds: int) -> Generator[Any, Any, None]:
        for _ in range(rounds):
            yield from sleep(0)

    plain = Kernel()
    unwatched = plain.spawn(worker(3))
    plain.run()
    assert type(unwatched) is yieldio.Task and not hasattr(unwatched, "steps")

    kernel = Kernel()
    kernel.watch()
    watched = kernel.spawn(worker(3))
    kernel.run()
    assert steps_of(watched) == 4  # three sleeps, and the resumption that returns

    late = Kernel()
    late.spawn(worker(1))
    with pytest.raises(RuntimeError, match="before its first task"):
        late.watch()


def test_step_mode_runs_one_ready_task_per_step_in_queue_order_and_release_lets_the_rest_run() -> None:
    kernel = Kernel()
    kernel.watch()
    ran: list[str] = []

    def worker(name: str) -> Generator[Any, Any, None]:
        for i in range(3):
            ran.append(f"{name}{i}")
            yield from sleep(0)

    a, b = kernel.spawn(worker("a")), kernel.spawn(worker("b"))
    kernel.hold()
    stepped: list[tuple[str, list[str]]] = []

    async def conductor() -> None:  # a daemon: step mode does not hold it
        for _ in range(4):
            done: list[yieldio.Task | None] = []
            kernel.step(done.append)
            while not done:
                await sleep(0)
            task = done[0]
            assert task is not None
            stepped.append(("a" if task is a else "b", list(ran)))
            assert kernel.ready_queue()[-1] is task  # back at the end of the queue, as sleep(0) puts it
        kernel.release()

    kernel.spawn(conductor(), name="conductor", daemon=True)
    kernel.run()
    assert a.done and b.done
    # each step ran exactly one step of the first ready task, the two workers taking turns
    assert stepped == [
        ("a", ["a0"]),
        ("b", ["a0", "b0"]),
        ("a", ["a0", "b0", "a1"]),
        ("b", ["a0", "b0", "a1", "b1"]),
    ]
    assert ran == ["a0", "b0", "a1", "b1", "a2", "b2"]  # released: the rest, in the same order


def test_a_step_with_nothing_ready_says_so_at_once_and_shutdown_ends_step_mode() -> None:
    kernel = Kernel()
    kernel.watch()
    answers: list[yieldio.Task | None] = []
    finished: list[str] = []

    async def sleeper() -> None:
        try:
            await sleep(60)
        finally:
            finished.append("sleeper cleaned up")

    async def conductor() -> None:
        await sleep(0.01)  # the sleeper is parked: nothing is ready
        kernel.hold()
        kernel.step(answers.append)
        assert answers == [None]
        kernel.shutdown()  # cancels the sleeper, which must run to clean up: step mode ends
        assert not kernel.holding

    kernel.spawn(sleeper())
    kernel.spawn(conductor(), daemon=True)
    kernel.run()
    assert finished == ["sleeper cleaned up"]


def test_hold_needs_a_watched_kernel() -> None:
    with pytest.raises(RuntimeError, match="watched kernel"):
        Kernel().hold()


def test_a_joiner_woken_by_the_end_of_the_task_it_joins_is_reported_to_instruments() -> None:
    woken: list[tuple[str, str]] = []
    children: list[yieldio.Task] = []

    class Wakes(yieldio.core.hooks.Instrument):
        def task_woken(self, task: yieldio.Task, why: str) -> None:
            woken.append((task.name, why))

    async def child() -> int:
        await sleep(0)
        return 1

    async def parent() -> int:
        children.append(await spawn(child()))
        return int(await children[0].join())

    kernel = Kernel()
    kernel.add_instrument(Wakes())
    assert kernel.run(parent) == 1
    assert [why for name, why in woken if name == "parent"] == [f"task {children[0].id} ended"]
