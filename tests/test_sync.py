"""Event, Lock, Semaphore, Condition, Queue: semantics, fairness, both styles, and cancellation at every wait.

"Cancelled right after being woken" means: in one step, a task wakes a waiter (a release, a
put, a notify) and at once cancels it with ``kernel.cancel_nowait``, so the waiter was handed
something but gets the cancellation before it runs. Whatever it was handed must go on to the
next waiter, or back, and nothing may be lost.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import yieldio
from yieldio import (
    Cancelled,
    Condition,
    Event,
    Lock,
    Queue,
    QueueClosed,
    QueueEmpty,
    QueueFull,
    Semaphore,
    Task,
    current_kernel,
    sleep,
    spawn,
    timeout_after,
)


async def settle() -> None:
    """Let every task that can run, run (sleep(0) goes behind every ready task; twice covers a wake-up chain)."""
    for _ in range(3):
        await sleep(0)


# -- Event -------------------------------------------------------------------------------------


def test_event_set_wakes_every_waiter_and_clear_makes_waits_wait_again() -> None:
    woke: list[str] = []

    async def waiter(event: Event, name: str) -> None:
        await event.wait()
        woke.append(name)

    async def main() -> None:
        event = Event()
        for name in "abc":
            await spawn(waiter(event, name))
        await settle()
        assert woke == [] and not event.is_set()
        event.set()
        assert event.is_set()
        await settle()
        assert woke == ["a", "b", "c"]
        await event.wait()  # set: returns at once
        event.clear()
        late = await spawn(waiter(event, "late"))
        await settle()
        assert woke == ["a", "b", "c"]
        event.set()
        await late.join()
        assert woke[-1] == "late"

    yieldio.run(main)


def test_event_wait_cancelled_parked_or_just_woken_leaves_the_others_alone() -> None:
    outcome: dict[str, str] = {}

    async def waiter(event: Event, name: str) -> None:
        try:
            await event.wait()
        except Cancelled:
            outcome[name] = "cancelled"
            raise
        outcome[name] = "woke"

    async def main() -> None:
        kernel = current_kernel()
        event = Event()
        parked, woken, other = [await spawn(waiter(event, n)) for n in ("parked", "woken", "other")]
        await settle()
        await parked.cancel()  # cancelled while parked: set() later must not touch it
        event.set()
        kernel.cancel_nowait(woken)  # cancelled right after being woken
        await other.join()
        await woken.wait()

    yieldio.run(main)
    assert outcome == {"parked": "cancelled", "woken": "cancelled", "other": "woke"}


def test_event_in_a_generator_task() -> None:
    def waiter(event: Event) -> Generator[Any, Any, str]:
        yield from event.wait()
        return "woke"

    def main() -> Generator[Any, Any, str]:
        event = Event()
        task = yield from spawn(waiter(event))
        yield from sleep(0)
        event.set()
        result: str = yield from task.join()
        return result

    assert yieldio.run(main) == "woke"


# -- Lock --------------------------------------------------------------------------------------


def test_lock_excludes_and_serves_waiters_first_come_first_served() -> None:
    order: list[str] = []
    inside: list[int] = []

    async def worker(lock: Lock, name: str) -> None:
        async with lock:
            inside.append(1)
            assert len(inside) == 1
            order.append(name)
            await sleep(0)
            inside.pop()

    async def main() -> None:
        lock = Lock()
        await lock.acquire()
        assert lock.locked()
        workers = [await spawn(worker(lock, name)) for name in "abcde"]
        await settle()
        assert order == []
        lock.release()
        for task in workers:
            await task.join()
        assert not lock.locked()

    yieldio.run(main)
    assert order == list("abcde")


def test_lock_release_hands_over_so_a_task_cannot_barge_back_in() -> None:
    order: list[str] = []

    async def waiter(lock: Lock) -> None:
        async with lock:
            order.append("waiter")

    async def main() -> None:
        lock = Lock()
        await lock.acquire()
        other = await spawn(waiter(lock))
        await settle()
        lock.release()
        await lock.acquire()  # the waiter owns it already: this one queues behind it
        order.append("releaser again")
        lock.release()
        await other.join()

    yieldio.run(main)
    assert order == ["waiter", "releaser again"]


def test_lock_uncontended_acquire_does_not_switch_tasks() -> None:
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async def main() -> None:
        lock = Lock()
        await spawn(other())
        await lock.acquire()
        assert ran == []
        lock.release()

    yieldio.run(main)


def test_lock_misuse_is_a_clear_runtime_error() -> None:
    async def holder(lock: Lock, held: Event) -> None:
        async with lock:
            held.set()
            await sleep(10)

    async def main() -> None:
        lock = Lock()
        with pytest.raises(RuntimeError, match="not locked"):
            lock.release()
        held = Event()
        task = await spawn(holder(lock, held))
        await held.wait()
        with pytest.raises(RuntimeError, match="held by <Task"):
            lock.release()
        await task.cancel()
        await lock.acquire()
        with pytest.raises(RuntimeError, match="not reentrant"):
            await lock.acquire()
        lock.release()

    yieldio.run(main)


def test_lock_acquire_cancelled_while_parked_leaves_the_lock_as_it_was() -> None:
    order: list[str] = []

    async def waiter(lock: Lock, name: str) -> None:
        async with lock:
            order.append(name)

    async def main() -> None:
        lock = Lock()
        await lock.acquire()
        cancelled = await spawn(waiter(lock, "cancelled"))
        after = await spawn(waiter(lock, "after"))
        await settle()
        await cancelled.cancel()
        assert lock.locked()  # still the main task's
        lock.release()
        await after.join()
        assert not lock.locked()
        await lock.acquire()
        alone = await spawn(waiter(lock, "alone"))
        await settle()
        await alone.cancel()  # nobody else waits: the release below leaves it unlocked
        lock.release()
        assert not lock.locked()

    yieldio.run(main)
    assert order == ["after"]


@pytest.mark.parametrize("next_waiter", [True, False])
def test_lock_handed_to_a_waiter_cancelled_before_it_runs_goes_to_the_next_or_is_released(next_waiter: bool) -> None:
    order: list[str] = []

    async def waiter(lock: Lock, name: str) -> None:
        try:
            await lock.acquire()
        except Cancelled:
            order.append(f"{name} cancelled")
            raise
        order.append(name)
        lock.release()

    async def main() -> None:
        kernel = current_kernel()
        lock = Lock()
        await lock.acquire()
        first = await spawn(waiter(lock, "first"))
        second = await spawn(waiter(lock, "second")) if next_waiter else None
        await settle()
        lock.release()  # ownership goes to 'first'...
        kernel.cancel_nowait(first)  # ...which is cancelled before it runs
        await first.wait()
        if second is not None:
            await second.join()
        assert not lock.locked()
        await lock.acquire()  # and it is free for anyone
        lock.release()

    yieldio.run(main)
    assert order == ["first cancelled", "second"] if next_waiter else ["first cancelled"]


def test_lock_in_generator_tasks() -> None:
    order: list[int] = []

    def worker(lock: Lock, n: int) -> Generator[Any, Any, None]:
        yield from lock.acquire()
        try:
            order.append(n)
            yield from sleep(0)
        finally:
            lock.release()

    def main() -> Generator[Any, Any, None]:
        lock = Lock()
        workers = []
        for n in range(3):
            workers.append((yield from spawn(worker(lock, n))))  # noqa: PERF401 - a comprehension cannot yield
        for task in workers:
            yield from task.join()

    yieldio.run(main)
    assert order == [0, 1, 2]


# -- Semaphore ---------------------------------------------------------------------------------


def test_semaphore_admits_n_at_a_time_first_come_first_served() -> None:
    order: list[str] = []
    inside: list[str] = []
    most = [0]

    async def worker(sem: Semaphore, name: str) -> None:
        async with sem:
            order.append(name)
            inside.append(name)
            most[0] = max(most[0], len(inside))
            await sleep(0.001)
            inside.remove(name)

    async def main() -> None:
        sem = Semaphore(2)
        workers = [await spawn(worker(sem, name)) for name in "abcdef"]
        for task in workers:
            await task.join()
        assert sem.value == 2
        with pytest.raises(ValueError):
            Semaphore(-1)

    yieldio.run(main)
    assert order == list("abcdef") and most[0] == 2


def test_semaphore_release_hands_the_permit_over_no_barging() -> None:
    order: list[str] = []

    async def waiter(sem: Semaphore) -> None:
        await sem.acquire()
        order.append("waiter")

    async def main() -> None:
        sem = Semaphore(0)
        task = await spawn(waiter(sem))
        await settle()
        sem.release()
        assert sem.value == 0  # the permit went to the waiter, not to the pool
        await spawn(waiter(sem))
        await settle()
        assert order == ["waiter"]  # the second one waits: no permit left
        sem.release()
        await settle()
        await task.join()

    yieldio.run(main)
    assert order == ["waiter", "waiter"]


def test_semaphore_acquire_cancelled_parked_or_just_woken_loses_no_permit() -> None:
    order: list[str] = []

    async def waiter(sem: Semaphore, name: str) -> None:
        await sem.acquire()
        order.append(name)

    async def main() -> None:
        kernel = current_kernel()
        sem = Semaphore(0)
        parked = await spawn(waiter(sem, "parked"))
        woken = await spawn(waiter(sem, "woken"))
        last = await spawn(waiter(sem, "last"))
        await settle()
        await parked.cancel()
        assert sem.value == 0
        sem.release()  # to 'woken'...
        kernel.cancel_nowait(woken)  # ...cancelled before it runs: the permit goes to 'last'
        await last.join()
        assert sem.value == 0
        alone = await spawn(waiter(sem, "alone"))
        await settle()
        sem.release()
        kernel.cancel_nowait(alone)  # nobody after it: the permit goes back to the pool
        await alone.wait()
        assert sem.value == 1

    yieldio.run(main)
    assert order == ["last"]


def test_semaphore_in_generator_tasks() -> None:
    def worker(sem: Semaphore, log: list[int], n: int) -> Generator[Any, Any, None]:
        yield from sem.acquire()
        log.append(n)
        yield from sleep(0)
        sem.release()

    def main() -> Generator[Any, Any, list[int]]:
        sem, log = Semaphore(1), cast(list[int], [])
        tasks = []
        for n in range(3):
            tasks.append((yield from spawn(worker(sem, log, n))))  # noqa: PERF401 - a comprehension cannot yield
        for task in tasks:
            yield from task.join()
        return log

    assert yieldio.run(main) == [0, 1, 2]


# -- Condition ---------------------------------------------------------------------------------


def test_condition_notify_wait_for_and_notify_all() -> None:
    async def main() -> None:
        cond = Condition()
        box: list[int] = []
        woke: list[str] = []

        async def waiter(name: str) -> None:
            async with cond:
                await cond.wait()
                assert cond.locked()
                woke.append(name)

        async def wait_for_three() -> int:
            async with cond:
                return await cond.wait_for(lambda: len(box) >= 3 and len(box))

        waiters = [await spawn(waiter(name)) for name in "abc"]
        counter = await spawn(wait_for_three())
        await settle()
        async with cond:
            cond.notify()
            await settle()
            assert woke == []  # notified, but it needs the lock back first
        await settle()
        assert woke == ["a"]
        for n in range(3):
            async with cond:
                box.append(n)
                cond.notify_all()
            await settle()
        assert woke == ["a", "b", "c"]
        assert await counter.join() == 3
        for task in waiters:
            await task.join()
        with pytest.raises(RuntimeError, match="not locked"):
            cond.notify()
        with pytest.raises(RuntimeError, match="not locked"):
            await cond.wait()

    yieldio.run(main)


def test_condition_with_a_given_lock_and_notify_n_in_order() -> None:
    async def main() -> None:
        lock = Lock()
        cond = Condition(lock)
        woke: list[int] = []

        async def waiter(n: int) -> None:
            async with cond:
                await cond.wait()
                woke.append(n)

        for n in range(5):
            await spawn(waiter(n))
        await settle()
        async with lock:
            cond.notify(2)
        await settle()
        assert woke == [0, 1]
        async with lock:
            cond.notify(10)
        await settle()
        assert woke == [0, 1, 2, 3, 4]

    yieldio.run(main)


def test_condition_wait_cancelled_gets_the_lock_back_before_the_exception_leaves() -> None:
    seen: list[str] = []

    async def waiter(cond: Condition) -> None:
        async with cond:
            try:
                await cond.wait()
            except Cancelled:
                seen.append(f"cancelled, locked={cond.locked()}")
                raise

    async def main() -> None:
        cond = Condition()
        task = await spawn(waiter(cond))
        await settle()
        async with cond:  # hold the lock while cancelling: the waiter must wait for it
            current_kernel().cancel_nowait(task)
            await settle()
            assert seen == []
        await task.wait()
        assert isinstance(task.exception, Cancelled)
        assert not cond.locked()  # its async with released it on the way out

    yieldio.run(main)
    assert seen == ["cancelled, locked=True"]


def test_condition_notified_waiter_cancelled_before_it_runs_passes_the_notification_on() -> None:
    seen: list[str] = []

    async def waiter(cond: Condition, name: str) -> None:
        async with cond:
            try:
                await cond.wait()
            except Cancelled:
                seen.append(f"{name} cancelled, locked={cond.locked()}")
                raise
            seen.append(f"{name} notified")

    async def main() -> None:
        cond = Condition()
        first = await spawn(waiter(cond, "first"))
        second = await spawn(waiter(cond, "second"))
        third = await spawn(waiter(cond, "third"))
        await settle()
        async with cond:
            cond.notify(1)
            current_kernel().cancel_nowait(first)
        await second.join()
        await first.wait()
        await settle()
        assert "third notified" not in seen  # one notification, one waiter woken
        async with cond:
            cond.notify()
        await third.join()

    yieldio.run(main)
    assert seen == ["first cancelled, locked=True", "second notified", "third notified"]


def test_condition_in_generator_tasks() -> None:
    def consumer(cond: Condition, box: list[int]) -> Generator[Any, Any, int]:
        yield from cond.acquire()
        try:
            value: int = yield from cond.wait_for(lambda: box[0] if box else 0)
        finally:
            cond.release()
        return value

    def main() -> Generator[Any, Any, int]:
        cond, box = Condition(), cast(list[int], [])
        task = yield from spawn(consumer(cond, box))
        yield from sleep(0)
        yield from cond.acquire()
        box.append(7)
        cond.notify()
        cond.release()
        result: int = yield from task.join()
        return result

    assert yieldio.run(main) == 7


# -- Queue -------------------------------------------------------------------------------------


def test_queue_fifo_nowait_calls_and_their_errors() -> None:
    async def main() -> None:
        q: Queue[int] = Queue(maxsize=2)
        assert q.empty() and not q.full() and q.qsize() == 0
        with pytest.raises(QueueEmpty):
            q.get_nowait()
        q.put_nowait(1)
        await q.put(2)
        assert q.full() and q.qsize() == 2
        with pytest.raises(QueueFull):
            q.put_nowait(3)
        assert [q.get_nowait(), await q.get()] == [1, 2]
        assert q.empty()

    yieldio.run(main)


def test_queue_full_parks_the_producer_until_a_consumer_makes_room() -> None:
    log: list[str] = []

    async def producer(q: Queue[int]) -> None:
        for n in range(5):
            await q.put(n)
            log.append(f"put {n}")

    async def main() -> None:
        q: Queue[int] = Queue(maxsize=2)
        task = await spawn(producer(q))
        await settle()
        assert log == ["put 0", "put 1"] and q.full()
        got = [await q.get() for _ in range(5)]
        await task.join()
        assert got == [0, 1, 2, 3, 4]

    yieldio.run(main)


def test_queue_consumers_and_producers_are_served_in_arrival_order() -> None:
    async def main() -> None:
        got: list[tuple[str, int]] = []

        async def consumer(q: Queue[int], name: str) -> None:
            got.append((name, await q.get()))

        q: Queue[int] = Queue()
        consumers = [await spawn(consumer(q, name)) for name in "abc"]
        await settle()
        for n in range(3):
            q.put_nowait(n)  # each promised to the next consumer in line
            with pytest.raises(QueueEmpty):
                q.get_nowait()  # so nobody can take it from under them
        for task in consumers:
            await task.join()
        assert got == [("a", 0), ("b", 1), ("c", 2)]

        q = Queue(maxsize=1)
        q.put_nowait(-1)
        producers = [await spawn(q.put(n)) for n in range(3)]
        await settle()
        assert q.get_nowait() == -1  # frees a slot, promised to the first producer
        with pytest.raises(QueueFull):
            q.put_nowait(99)
        out = []
        for _ in range(3):
            await settle()
            out.append(q.get_nowait())
        for task in producers:
            await task.join()
        assert out == [0, 1, 2]

    yieldio.run(main)


def test_queue_get_cancelled_while_parked_takes_no_item() -> None:
    async def main() -> None:
        q: Queue[str] = Queue()
        cancelled = await spawn(q.get())
        waiting = await spawn(q.get())
        await settle()
        await cancelled.cancel()
        q.put_nowait("x")
        assert await waiting.join() == "x"
        alone = await spawn(q.get())
        await settle()
        await alone.cancel()
        q.put_nowait("y")
        assert q.get_nowait() == "y"

    yieldio.run(main)


def test_queue_put_cancelled_while_parked_puts_nothing() -> None:
    async def main() -> None:
        q: Queue[str] = Queue(maxsize=1)
        q.put_nowait("a")
        cancelled = await spawn(q.put("never"))
        waiting = await spawn(q.put("b"))
        await settle()
        await cancelled.cancel()
        assert q.get_nowait() == "a"
        await waiting.join()
        assert q.get_nowait() == "b"
        assert q.empty() and q.qsize() == 0

    yieldio.run(main)


@pytest.mark.parametrize("next_consumer", [True, False])
def test_queue_consumer_cancelled_after_being_promised_an_item_passes_it_on(next_consumer: bool) -> None:
    async def main() -> None:
        kernel = current_kernel()
        q: Queue[int] = Queue()
        first = await spawn(q.get())
        second = await spawn(q.get()) if next_consumer else None
        await settle()
        q.put_nowait(1)  # promised to 'first'...
        kernel.cancel_nowait(first)  # ...which is cancelled before it runs
        q.put_nowait(2)
        await first.wait()
        assert isinstance(first.exception, Cancelled)
        if second is not None:
            assert await second.join() == 1
            assert q.get_nowait() == 2
        else:
            assert [q.get_nowait(), q.get_nowait()] == [1, 2]  # 1 is still at the front
        assert q.empty()

    yieldio.run(main)


@pytest.mark.parametrize("next_producer", [True, False])
def test_queue_producer_cancelled_after_being_promised_a_slot_passes_it_on(next_producer: bool) -> None:
    async def main() -> None:
        kernel = current_kernel()
        q: Queue[str] = Queue(maxsize=1)
        q.put_nowait("a")
        first = await spawn(q.put("cancelled"))
        second = await spawn(q.put("b")) if next_producer else None
        await settle()
        assert q.get_nowait() == "a"  # the slot is promised to 'first'...
        kernel.cancel_nowait(first)  # ...which is cancelled before it runs
        await first.wait()
        assert isinstance(first.exception, Cancelled)
        if second is not None:
            await second.join()
            assert q.get_nowait() == "b"
        assert q.empty() and not q.full()
        q.put_nowait("c")  # the slot is free again
        assert q.get_nowait() == "c"

    yieldio.run(main)


def test_queue_task_done_and_join_and_a_cancelled_join() -> None:
    async def main() -> None:
        q: Queue[int] = Queue()
        await q.join()  # nothing unfinished: at once
        for n in range(3):
            q.put_nowait(n)
        joiner = await spawn(q.join())
        cancelled = await spawn(q.join())
        await settle()
        await cancelled.cancel()
        for _ in range(3):
            q.get_nowait()
            assert not joiner.done
            q.task_done()
            await settle()
        assert joiner.done and joiner.exception is None
        with pytest.raises(ValueError, match="more times"):
            q.task_done()

    yieldio.run(main)


def test_queue_close_ends_async_for_and_wakes_parked_producers_and_consumers() -> None:
    async def main() -> None:
        q: Queue[int] = Queue(maxsize=2)

        async def consume() -> list[int]:
            return [item async for item in q]

        consumer = await spawn(consume())
        for n in range(5):
            await q.put(n)
        q.close()
        assert await consumer.join() == [0, 1, 2, 3, 4]
        with pytest.raises(QueueClosed):
            q.put_nowait(5)
        with pytest.raises(QueueClosed):
            await q.get()

        full: Queue[int] = Queue(maxsize=1)
        full.put_nowait(0)
        producer = await spawn(full.put(1))
        await settle()
        full.close()
        with pytest.raises(QueueClosed, match="not put"):
            await producer.join()
        assert full.get_nowait() == 0  # what was in it can still be got
        with pytest.raises(QueueClosed):
            full.get_nowait()

        empty: Queue[int] = Queue()
        getter = await spawn(empty.get())
        await settle()
        empty.close()
        with pytest.raises(QueueClosed):
            await getter.join()

    yieldio.run(main)


def test_queue_in_generator_tasks() -> None:
    def producer(q: Queue[int]) -> Generator[Any, Any, None]:
        for n in range(10):
            yield from q.put(n)
        q.close()

    def consumer(q: Queue[int]) -> Generator[Any, Any, list[int]]:
        got = []
        while True:
            try:
                got.append((yield from q.get()))
            except QueueClosed:
                return got
            q.task_done()

    def main() -> Generator[Any, Any, list[int]]:
        q: Queue[int] = Queue(maxsize=3)
        consuming = yield from spawn(consumer(q))
        producing = yield from spawn(producer(q))
        yield from producing.join()
        yield from q.join()  # until the consumer has marked every item done
        result: list[int] = yield from consuming.join()
        return result

    assert yieldio.run(main) == list(range(10))


def test_a_thread_feeds_a_queue_through_call_soon_threadsafe() -> None:
    threads: list[threading.Thread] = []

    def feed(kernel: yieldio.Kernel, q: Queue[int]) -> None:
        for n in range(200):
            kernel.call_soon_threadsafe(q.put_nowait, n)
        kernel.call_soon_threadsafe(q.close)

    async def consume(q: Queue[int]) -> list[int]:
        return [item async for item in q]

    async def main() -> list[int]:
        q: Queue[int] = Queue()
        consumer = await spawn(consume(q))
        await settle()  # the consumer is parked in get(): only the thread's wake-up can move it
        thread = threading.Thread(target=feed, args=(current_kernel(), q))
        threads.append(thread)
        thread.start()
        async with timeout_after(20):  # the bound of this test; the poll must not wait it out
            result: list[int] = await consumer.join()
        return result

    try:
        assert yieldio.run(main) == list(range(200))
    finally:
        for thread in threads:
            thread.join(timeout=10)


# -- Queue, at random --------------------------------------------------------------------------

OPS = st.one_of(
    st.just(("put",)),
    st.just(("get",)),
    st.just(("put_nowait",)),
    st.just(("get_nowait",)),
    st.just(("step",)),
    st.just(("settle",)),
    st.tuples(st.just("cancel"), st.integers(0, 3)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(maxsize=st.integers(0, 2), ops=st.lists(OPS, max_size=50))
# the two hand-offs cancelled in the same step, which a random search seldom builds:
# a consumer promised an item, then a producer promised a slot, each with another in line behind it
@example(maxsize=0, ops=[("get",), ("get",), ("settle",), ("put_nowait",), ("cancel", 0), ("settle",)])
@example(maxsize=1, ops=[("put_nowait",), ("put",), ("put",), ("settle",), ("get_nowait",), ("cancel", 0), ("settle",)])
def test_queue_random_puts_gets_and_cancels_keep_every_item_once_in_order(
    maxsize: int, ops: list[tuple[Any, ...]]
) -> None:
    entered: list[int] = []  # items, in the order they went into the queue (the moment put returned)
    got: list[int] = []  # items, in the order they were taken
    refused: list[int] = []  # put_nowait that found the queue full
    producers: dict[Task, int] = {}

    async def producer(q: Queue[int], item: int) -> None:
        await q.put(item)
        entered.append(item)

    async def consumer(q: Queue[int]) -> None:
        got.append(await q.get())

    async def settle_and_check(q: Queue[int], tasks: list[Task]) -> None:
        """Once every task that can run has run, nobody may wait for what is there."""
        for _ in range(len(tasks) + 2):  # a chain of wake-ups is at most one task long per round
            await sleep(0)
        assert q.empty() == (q.qsize() == 0)  # no item is promised to a consumer that has not run
        assert q.full() == (0 < maxsize <= q.qsize())  # no slot is promised to a producer that has not run
        waiting = [task for task in tasks if not task.done]
        if any(task in producers for task in waiting):
            assert q.full()  # a producer waits only for room
        if any(task not in producers for task in waiting):
            assert q.empty()  # a consumer waits only for an item

    async def main() -> None:
        kernel = current_kernel()
        q: Queue[int] = Queue(maxsize)
        tasks: list[Task] = []
        counter = 0
        for op in ops:
            if op[0] == "put":
                counter += 1
                tasks.append(await spawn(producer(q, counter)))
                producers[tasks[-1]] = counter
            elif op[0] == "get":
                tasks.append(await spawn(consumer(q)))
            elif op[0] == "put_nowait":
                counter += 1
                try:
                    q.put_nowait(counter)
                    entered.append(counter)
                except QueueFull:
                    refused.append(counter)
            elif op[0] == "get_nowait":
                with contextlib.suppress(QueueEmpty):
                    got.append(q.get_nowait())
            elif op[0] == "step":
                await sleep(0)
            elif op[0] == "settle":
                await settle_and_check(q, tasks)
            elif alive := [task for task in tasks if not task.done]:
                # one of the oldest: first in line, so likely just served (woken, not yet run)
                kernel.cancel_nowait(alive[op[1] % len(alive)])
            assert maxsize == 0 or q.qsize() <= maxsize
        await settle_and_check(q, tasks)
        for task in tasks:
            kernel.cancel_nowait(task)
        for task in tasks:
            await task.wait()
        while not q.empty():
            got.append(q.get_nowait())
        assert q.qsize() == 0 and not q.full()
        cancelled_puts = [item for task, item in producers.items() if task.exception is not None]
        assert all(isinstance(task.exception, Cancelled) for task in producers if task.exception)
        assert sorted(entered + refused + cancelled_puts) == list(range(1, counter + 1))

    yieldio.run(main)
    assert got == entered  # every item that went in came out once, in the same order
