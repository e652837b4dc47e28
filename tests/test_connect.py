"""Happy Eyeballs (RFC 8305): connect_staggered and open_connection over loopback only.

A slow address without leaving the machine: a listening socket whose accept queue is full.
Linux drops a SYN that finds the queue full (SYN cookies or not), so a connect to it hangs
and the client retransmits after 1 s, then 3 s...: to the connecting program that is exactly
an address that does not answer. ``black_hole`` makes one (backlog 0 holds one connection,
which a first client fills) and checks that it really swallows a connect before handing it out.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

import yieldio
from yieldio import TaskTimeout, connect_staggered, open_connection, sleep, timeout_after
from yieldio.core.hooks import Instrument
from yieldio.io.sockets import AddressInfo, interleave_families

from .harness import refused_port

V4, V6 = socket.AF_INET, socket.AF_INET6


def info(host: str, port: int) -> AddressInfo:
    """One entry as socket.getaddrinfo gives it."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A plain listener on 127.0.0.1: the address that answers."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


@pytest.fixture
def black_hole() -> Iterator[tuple[str, int]]:
    """([::1] or 127.0.0.1, port) where a connect is never answered while the test runs."""
    host = "::1" if socket.has_ipv6 else "127.0.0.1"
    try:
        hole = socket.create_server((host, 0), family=V6 if host == "::1" else V4, backlog=0)
    except OSError:
        host = "127.0.0.1"
        hole = socket.create_server((host, 0), backlog=0)
    address = hole.getsockname()[:2]
    filler = socket.create_connection(address, timeout=5)  # the one connection the queue holds
    probe = socket.socket(hole.family)
    probe.setblocking(False)
    try:
        if probe.connect_ex(address) != errno.EINPROGRESS or select.select([], [probe], [], 0.1)[1]:
            pytest.skip("this system answers a connect to a full accept queue: no slow address on loopback")
        yield address
    finally:
        probe.close()
        filler.close()
        hole.close()


def test_interleave_families_alternates_starting_with_the_first() -> None:
    a6, b6, c6 = (V6, 1, 6, "", ("::1", 1)), (V6, 1, 6, "", ("::2", 1)), (V6, 1, 6, "", ("::3", 1))
    a4, b4 = (V4, 1, 6, "", ("10.0.0.1", 1)), (V4, 1, 6, "", ("10.0.0.2", 1))
    assert interleave_families([a6, b6, c6, a4, b4]) == [a6, a4, b6, b4, c6]
    assert interleave_families([a4, a6, b6, b4]) == [a4, a6, b4, b6]
    assert interleave_families([a4, b4]) == [a4, b4]
    assert interleave_families([]) == []


def test_an_address_that_never_answers_does_not_hold_up_the_next(
    black_hole: tuple[str, int], listener: socket.socket
) -> None:
    fast = listener.getsockname()[:2]
    delay = 0.05

    async def main() -> tuple[Any, float, int, int]:
        before = open_fds()
        started = time.monotonic()
        sock = await connect_staggered([info(*black_hole), info(*fast)], delay)
        took = time.monotonic() - started
        peer = sock.getpeername()[:2]
        sock.close()
        await sleep(0)  # the losing attempt, cancelled, closes its socket when it next runs
        return peer, took, before, open_fds()

    peer, took, before, after = yieldio.run(main)
    assert peer == fast
    assert took >= delay  # the second attempt waited its turn (a kernel timer never fires early)
    assert took < 5.0  # and did not wait for the first, which never connects (its SYN goes unanswered)
    assert after == before  # the black hole's attempt was closed


def test_open_connection_races_a_names_addresses(
    black_hole: tuple[str, int], listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This machine's resolver maps no name to two loopback addresses, so a stand-in getaddrinfo
    gives the name its two (the black hole first, as an IPv6 address would come first); the
    connections are real."""
    fast = listener.getsockname()[:2]
    real_getaddrinfo = socket.getaddrinfo
    entries = [info(*black_hole), info(*fast)]

    def two_addresses(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return entries if host == "dual.test" else real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", two_addresses)

    async def main() -> Any:
        async with await open_connection("dual.test", 1, happy_eyeballs_delay=0.05) as sock:
            return sock.getpeername()[:2]

    assert yieldio.run(main) == fast


@pytest.mark.parametrize("delay", [30.0, None])
def test_a_refused_attempt_starts_the_next_at_once(delay: float | None, listener: socket.socket) -> None:
    fast = listener.getsockname()[:2]

    async def main(refused: tuple[str, int]) -> tuple[Any, float]:
        started = time.monotonic()
        async with await connect_staggered([info(*refused), info(*fast)], delay) as sock:
            return sock.getpeername()[:2], time.monotonic() - started

    with refused_port() as port:
        peer, took = yieldio.run(main(("127.0.0.1", port)))
    assert peer == fast
    assert took < 10.0  # not the 30 s delay: the refusal started the next attempt


def test_when_every_attempt_fails_the_first_error_is_raised_naming_them_all() -> None:
    async def main(first: tuple[str, int], second: tuple[str, int]) -> ConnectionRefusedError:
        with pytest.raises(ConnectionRefusedError) as caught:
            await connect_staggered([info(*first), info(*second)], 0.05)
        return caught.value

    with refused_port() as port1, refused_port() as port2:
        first, second = ("127.0.0.1", port1), ("127.0.0.1", port2)
        error = yieldio.run(main(first, second))
    notes = getattr(error, "__notes__", [])
    assert [note.split(":")[1].strip() for note in notes] == [str(first[1]), str(second[1])]
    assert all("Connection refused" in note for note in notes)


def test_a_timed_out_race_closes_every_attempt(black_hole: tuple[str, int]) -> None:
    hole_v4 = socket.create_server(("127.0.0.1", 0), backlog=0)
    filler = socket.create_connection(hole_v4.getsockname(), timeout=5)

    async def main() -> tuple[int, int, int, int]:
        kernel = yieldio.current_kernel()
        fds, tasks = open_fds(), len(kernel.tasks())
        with pytest.raises(TaskTimeout):
            await timeout_after(0.2, connect_staggered([info(*black_hole), info(*hole_v4.getsockname())], 0.05))
        await sleep(0)
        return fds, open_fds(), tasks, len(kernel.tasks())

    try:
        fds_before, fds_after, tasks_before, tasks_after = yieldio.run(main)
    finally:
        filler.close()
        hole_v4.close()
    assert fds_after == fds_before
    assert tasks_after == tasks_before  # both attempts have ended


def test_one_address_is_connected_in_the_callers_task(listener: socket.socket) -> None:
    spawned: list[str] = []

    class SpawnWatcher(Instrument):
        def task_spawned(self, task: yieldio.Task) -> None:
            spawned.append(task.name)

    async def main() -> None:
        yieldio.current_kernel().add_instrument(SpawnWatcher())
        async with await open_connection(*listener.getsockname()[:2]):
            pass

    yieldio.run(main)
    assert spawned == []
