"""tcp_server / serve: one task per connection, fault isolation, limits; real loopback clients."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from typing import Any

import pytest

from yieldio import Socket, sleep

from .harness import ThreadServers, connect, recv_all, recv_exactly


async def upper(client: Socket, address: Any) -> None:
    while data := await client.recv(1000):
        await client.sendall(data.upper())


def gen_upper(client: Socket, address: Any) -> Generator[Any, Any, None]:
    while True:
        data = yield from client.recv(1000)
        if not data:
            return
        yield from client.sendall(data.upper())


@pytest.mark.parametrize("handler", [upper, gen_upper], ids=["coroutine", "generator"])
def test_handler_styles_serve_many_clients(serve_thread: ThreadServers, handler: Any) -> None:
    server = serve_thread(handler)
    clients = [connect(server.address) for _ in range(50)]
    for i, c in enumerate(clients):
        c.sendall(b"client %d" % i)
    for i, c in enumerate(clients):
        expected = b"CLIENT %d" % i
        assert recv_exactly(c, len(expected)) == expected
        c.close()


def test_ipv6(serve_thread: ThreadServers) -> None:
    server = serve_thread(upper, host="::1")
    with connect(server.address) as c:
        c.sendall(b"six")
        assert recv_exactly(c, 3) == b"SIX"


def test_a_raising_handler_is_logged_and_touches_no_other_connection(
    serve_thread: ThreadServers, caplog: pytest.LogCaptureFixture
) -> None:
    async def fragile(client: Socket, address: Any) -> None:
        while data := await client.recv(1000):
            if data == b"crash":
                raise RuntimeError("handler bug")
            await client.sendall(data)

    server = serve_thread(fragile)
    with connect(server.address) as steady:
        steady.sendall(b"before")
        assert recv_exactly(steady, 6) == b"before"
        with connect(server.address) as bad:
            bad.sendall(b"crash")
            assert bad.recv(100) == b""  # its connection was closed when the handler died
        steady.sendall(b"after")
        assert recv_exactly(steady, 5) == b"after"
        with connect(server.address) as newcomer:
            newcomer.sendall(b"new")
            assert recv_exactly(newcomer, 3) == b"new"
    # logged before the server went on to serve steady's "after"
    assert any(r.exc_info and "handler bug" in str(r.exc_info[1]) for r in caplog.records), caplog.records


def test_connection_is_closed_when_the_handler_returns(serve_thread: ThreadServers) -> None:
    async def one_shot(client: Socket, address: Any) -> None:
        await client.sendall(b"bye")

    server = serve_thread(one_shot)
    with connect(server.address) as c:
        assert recv_all(c) == b"bye"


def wait_accept_queue(port: int, length: int, timeout: float = 10.0) -> None:
    """Wait until the listening TCP socket on ``port`` holds ``length`` connections not yet accepted.

    connect() returns before the server's kernel has queued the connection (the client's last ACK is
    processed after), so a test that needs it queued waits for that. The kernel's own count (the
    listener's rx_queue in /proc/net/tcp), polled: nothing tells when it changes.
    """
    end = time.monotonic() + timeout
    while True:
        with open("/proc/net/tcp") as table:
            rows = [line.split() for line in table.readlines()[1:]]
        queued = [int(row[4].split(":")[1], 16) for row in rows if row[3] == "0A" and row[1].endswith(f":{port:04X}")]
        if queued == [length]:
            return
        assert time.monotonic() < end, f"listener on {port}: {queued} connections queued, {length} wanted"
        time.sleep(0.005)


def test_max_clients_holds_new_clients_in_the_backlog(serve_thread: ThreadServers) -> None:
    events: list[tuple[str, int]] = []  # in the server's own order: a connection's handler starting, ending

    async def recording_upper(client: Socket, address: Any) -> None:
        events.append(("start", address[1]))
        try:
            await upper(client, address)
        finally:
            events.append(("end", address[1]))

    server = serve_thread(recording_upper, max_clients=2)
    first = connect(server.address)
    second = connect(server.address)
    for c in (first, second):
        c.sendall(b"in")
        assert recv_exactly(c, 2) == b"IN"
    third = connect(server.address)  # completes in the backlog
    third.sendall(b"waiting")
    wait_accept_queue(server.address[1], 1)  # the kernel holds it, ready to be accepted
    # Then two round trips on the second client: the server polls, finds the listener readable, and runs
    # whatever waits for that, and whatever that started, before it answers the second round trip. So a
    # server that would accept the third has done so, and started its handler, by then.
    for _ in range(2):
        second.sendall(b"meanwhile")
        assert recv_exactly(second, 9) == b"MEANWHILE"
    one, two, three = (c.getsockname()[1] for c in (first, second, third))
    first.close()
    assert recv_exactly(third, 7) == b"WAITING"
    # not served while two were open (an order of events, not a wait for nothing to happen)
    assert events == [("start", one), ("start", two), ("end", one), ("start", three)]
    second.close()
    third.close()


def test_idle_timeout_closes_silent_connections_only(serve_thread: ThreadServers) -> None:
    server = serve_thread(upper, idle_timeout=1.0)  # 20 times the chatty client's pace: a stall can't reach it
    silent = connect(server.address)
    chatty = connect(server.address)
    stop = threading.Event()
    replies: list[bytes] = []  # checked here, not in the thread: a failed assert there would fail nothing
    failures: list[BaseException] = []

    def chat() -> None:
        try:
            while not stop.wait(0.05):  # the chatty client's pace, well inside the idle timeout
                chatty.sendall(b"x")
                replies.append(chatty.recv(10))
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            failures.append(error)

    talker = threading.Thread(target=chat, name="chatty client")
    talker.start()
    try:
        assert silent.recv(10) == b""  # closed by the server
    finally:
        stop.set()
        talker.join(5)
    assert not talker.is_alive()
    assert not failures, failures
    assert replies and all(reply == b"X" for reply in replies), replies  # never closed, never silent
    chatty.sendall(b"alive")
    assert recv_exactly(chatty, 5) == b"ALIVE"
    silent.close()
    chatty.close()


def test_handler_may_sleep_and_server_keeps_accepting(serve_thread: ThreadServers) -> None:
    clients = 20
    arrived: list[Any] = []

    async def slow(client: Socket, address: Any) -> None:
        arrived.append(address)
        # sleep until every client has arrived: only a server that accepts while its handlers sleep gets there
        for _ in range(200):
            if len(arrived) == clients:
                await client.sendall(b"all here")
                return
            await sleep(0.05)
        await client.sendall(b"alone")

    server = serve_thread(slow)
    connected = [connect(server.address) for _ in range(clients)]
    assert [recv_all(c) for c in connected] == [b"all here"] * clients
    for c in connected:
        c.close()
