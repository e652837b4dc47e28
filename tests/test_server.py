"""tcp_server / serve: one task per connection, fault isolation, limits; real loopback clients."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import yieldio
from yieldio import Socket, sleep

from .conftest import recv_all


class ServerThread:
    """Runs ``serve(listener, handler, **options)`` on a yieldio kernel in a thread until closed."""

    def __init__(self, handler: Callable[..., Any], host: str = "127.0.0.1", **options: Any) -> None:
        self.listener = yieldio.tcp_listen((host, 0))
        self.address = self.listener.getsockname()[:2]
        self.stop_read, self.stop_write = socket.socketpair()
        self.failure: BaseException | None = None

        async def main() -> None:
            server = await yieldio.spawn(yieldio.serve(self.listener, handler, **options))
            await yieldio.wait_readable(self.stop_read)
            await server.cancel()
            self.listener.close()

        def target() -> None:
            try:
                yieldio.run(main)
            except BaseException as error:
                self.failure = error

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop_write.send(b"x")
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.stop_read.close()
        self.stop_write.close()
        if self.failure is not None:
            raise self.failure


@pytest.fixture
def serve_with() -> Iterator[Callable[..., ServerThread]]:
    servers: list[ServerThread] = []

    def start(handler: Callable[..., Any], **options: Any) -> ServerThread:
        servers.append(ServerThread(handler, **options))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


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
def test_handler_styles_serve_many_clients(serve_with, handler) -> None:  # type: ignore[no-untyped-def]
    server = serve_with(handler)
    clients = [socket.create_connection(server.address, timeout=5) for _ in range(50)]
    for i, c in enumerate(clients):
        c.sendall(b"client %d" % i)
    for i, c in enumerate(clients):
        assert c.recv(100) == b"CLIENT %d" % i
        c.close()


def test_ipv6(serve_with) -> None:  # type: ignore[no-untyped-def]
    server = ServerThread(upper, host="::1")
    try:
        with socket.create_connection(server.address, timeout=5) as c:
            c.sendall(b"six")
            assert c.recv(10) == b"SIX"
    finally:
        server.close()


def test_a_raising_handler_is_logged_and_touches_no_other_connection(serve_with, caplog) -> None:  # type: ignore[no-untyped-def]
    async def fragile(client: Socket, address: Any) -> None:
        while data := await client.recv(1000):
            if data == b"crash":
                raise RuntimeError("handler bug")
            await client.sendall(data)

    server = serve_with(fragile)
    with socket.create_connection(server.address, timeout=5) as steady:
        steady.sendall(b"before")
        assert steady.recv(100) == b"before"
        with socket.create_connection(server.address, timeout=5) as bad:
            bad.sendall(b"crash")
            assert bad.recv(100) == b""  # its connection was closed when the handler died
        steady.sendall(b"after")
        assert steady.recv(100) == b"after"
        with socket.create_connection(server.address, timeout=5) as newcomer:
            newcomer.sendall(b"new")
            assert newcomer.recv(100) == b"new"
    assert any("handler bug" in r.getMessage() or (r.exc_info and "handler bug" in str(r.exc_info[1])) for r in caplog.records)


def test_connection_is_closed_when_the_handler_returns(serve_with) -> None:  # type: ignore[no-untyped-def]
    async def one_shot(client: Socket, address: Any) -> None:
        await client.sendall(b"bye")

    server = serve_with(one_shot)
    with socket.create_connection(server.address, timeout=5) as c:
        assert recv_all(c) == b"bye"


def test_max_clients_holds_new_clients_in_the_backlog(serve_with) -> None:  # type: ignore[no-untyped-def]
    server = serve_with(upper, max_clients=2)
    first = socket.create_connection(server.address, timeout=5)
    second = socket.create_connection(server.address, timeout=5)
    for c in (first, second):
        c.sendall(b"in")
        assert c.recv(10) == b"IN"
    third = socket.create_connection(server.address, timeout=5)  # completes in the backlog
    third.sendall(b"waiting")
    third.settimeout(0.3)
    with pytest.raises(socket.timeout):
        third.recv(10)  # not served while two are open (a bounded wait for a non-event)
    first.close()
    third.settimeout(5)
    assert third.recv(10) == b"WAITING"
    second.close()
    third.close()


def test_idle_timeout_closes_silent_connections_only(serve_with) -> None:  # type: ignore[no-untyped-def]
    server = serve_with(upper, idle_timeout=0.3)
    silent = socket.create_connection(server.address, timeout=5)
    chatty = socket.create_connection(server.address, timeout=5)
    stop = threading.Event()

    def chat() -> None:
        while not stop.wait(0.05):
            chatty.sendall(b"x")
            assert chatty.recv(10)

    talker = threading.Thread(target=chat)
    talker.start()
    try:
        assert silent.recv(10) == b""  # closed by the server
    finally:
        stop.set()
        talker.join(5)
    chatty.sendall(b"alive")
    assert chatty.recv(10) == b"ALIVE"
    silent.close()
    chatty.close()


def test_handler_may_sleep_and_server_keeps_accepting(serve_with) -> None:  # type: ignore[no-untyped-def]
    async def slow(client: Socket, address: Any) -> None:
        await sleep(0.2)
        await client.sendall(b"slow")

    server = serve_with(slow)
    clients = [socket.create_connection(server.address, timeout=5) for _ in range(20)]
    assert [recv_all(c) for c in clients] == [b"slow"] * 20
    for c in clients:
        c.close()
