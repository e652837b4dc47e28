"""tcp_server / serve: one task per connection, fault isolation, limits; real loopback clients."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from yieldio import Socket, sleep

from .harness import ThreadServers, connect, recv_all, recv_exactly


async def upper(client: Socket, address: Any) -> None:
    while data := await client.recv(1000):
        await client.sendall(data.upper())


def gen_upper(client: Socket, address: Any):
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


def test_max_clients_holds_new_clients_in_the_backlog(serve_thread: ThreadServers) -> None:
    server = serve_thread(upper, max_clients=2)
    first = connect(server.address)
    second = connect(server.address)
    for c in (first, second):
        c.sendall(b"in")
        assert recv_exactly(c, 2) == b"IN"
    third = connect(server.address)  # completes in the backlog
    third.sendall(b"waiting")
    third.settimeout(0.3)
    with pytest.raises(socket.timeout):
        third.recv(10)  # not served while two are open (a bounded wait for a non-event)
    first.close()
    third.settimeout(5)
    assert recv_exactly(third, 7) == b"WAITING"
    second.close()
    third.close()


def test_idle_timeout_closes_silent_connections_only(serve_thread: ThreadServers) -> None:
    server = serve_thread(upper, idle_timeout=0.3)
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
    async def slow(client: Socket, address: Any) -> None:
        await sleep(0.2)
        await client.sendall(b"slow")

    server = serve_thread(slow)
    started = time.monotonic()
    clients = [connect(server.address) for _ in range(20)]
    assert [recv_all(c) for c in clients] == [b"slow"] * 20
    elapsed = time.monotonic() - started
    for c in clients:
        c.close()
    # the 20 sleeps overlap: one after the other they would take 4 s
    assert elapsed < 2.0, f"20 clients took {elapsed:.1f}s"
