"""yieldio.Socket over real loopback sockets: big partial sends, resets, half-close, refusal."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import struct

import pytest

import yieldio
from yieldio import Socket, TaskGroup, open_connection, run_in_thread, sleep, spawn
from yieldio.core.instrument import describe
from yieldio.io.sockets import tls_records

from .harness import MiB, refused_port


def _listener(host: str = "127.0.0.1") -> Socket:
    return yieldio.tcp_listen((host, 0), backlog=16)


def test_sendall_of_several_mib_arrives_whole_and_in_order() -> None:
    payload = os.urandom(8 * MiB)

    async def main() -> tuple[str, int]:
        with _listener() as listener:
            port = listener.getsockname()[1]
            # a small receive buffer forces many partial sends
            client = Socket(socket.socket())
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await client.connect(("127.0.0.1", port))
            server_side, _ = await listener.accept()

            async def slow_reader() -> bytes:
                chunks = bytearray()
                while len(chunks) < len(payload):
                    data = await client.recv(7919)
                    assert data
                    chunks += data
                return bytes(chunks)

            async with server_side, client:
                reader = await spawn(slow_reader())
                await server_side.sendall(payload)
                received = await reader.join()
                return hashlib.sha256(received).hexdigest(), server_side.bytes_out

    digest, counted = yieldio.run(main)
    assert digest == hashlib.sha256(payload).hexdigest()
    assert counted == len(payload)


def test_sendall_accepts_memoryviews_of_any_format() -> None:
    import array

    numbers = array.array("i", range(100_000))

    async def main() -> bytes:
        left, right = socket.socketpair()
        async with Socket(left) as a, Socket(right) as b:
            reader = await spawn(_read_exactly(b, numbers.itemsize * len(numbers)))
            await a.sendall(memoryview(numbers))
            received: bytes = await reader.join()
            return received

    assert yieldio.run(main) == numbers.tobytes()


async def _read_exactly(sock: Socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = await sock.recv_into(view[got:])
        assert n
        got += n
    return bytes(buffer)


def test_peer_reset_raises_connection_reset() -> None:
    async def main() -> None:
        with _listener() as listener:
            port = listener.getsockname()[1]
            raw = socket.create_connection(("127.0.0.1", port))
            server_side, _ = await listener.accept()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw.send(b"partial")
            raw.close()  # RST
            async with server_side:
                assert await server_side.recv(100) in (b"partial", b"")  # data before the reset may survive
                with pytest.raises(ConnectionResetError):
                    for _ in range(3):
                        await server_side.recv(100)
                        await server_side.sendall(b"x" * 65536)

    yieldio.run(main)


def test_half_close_peer_still_receives_everything() -> None:
    async def main() -> bytes:
        left, right = socket.socketpair()
        async with Socket(left) as a, Socket(right) as b:
            await a.sendall(b"request")
            a.shutdown_write()
            assert await b.recv(100) == b"request"
            assert await b.recv(100) == b""  # EOF, but b may still send
            await b.sendall(b"reply after EOF")
            return await a.recv(100)

    assert yieldio.run(main) == b"reply after EOF"


def test_connect_refused() -> None:
    async def main(port: int) -> None:
        with pytest.raises(ConnectionRefusedError):
            await open_connection("127.0.0.1", port)

    with refused_port() as port:
        yieldio.run(main(port))


def test_open_connection_by_name_and_ipv6() -> None:
    async def serve_once(listener: Socket) -> None:
        client, _ = await listener.accept()
        async with client:
            await client.sendall(await client.recv(100))

    async def main() -> list[bytes]:
        replies = []
        for host, connect_to in (("127.0.0.1", "localhost"), ("::1", "::1")):
            with _listener(host) as listener:
                server = await spawn(serve_once(listener))
                async with await open_connection(connect_to, listener.getsockname()[1]) as sock:
                    await sock.sendall(host.encode())
                    replies.append(await sock.recv(100))
                await server.join()
        return replies

    assert yieldio.run(main) == [b"127.0.0.1", b"::1"]


def test_run_in_thread_lets_other_tasks_run() -> None:
    import threading

    release = threading.Event()
    ticks: list[int] = []

    async def ticker() -> None:
        for i in range(3):
            ticks.append(i)
            await sleep(0.005)
        release.set()

    async def main() -> str:
        async with TaskGroup() as group:
            await group.spawn(ticker())
            result = await run_in_thread(lambda: "released" if release.wait(5) else "timed out")
        return result

    assert yieldio.run(main) == "released"
    assert ticks == [0, 1, 2]


def test_closing_a_socket_wakes_the_task_waiting_on_it() -> None:
    async def main() -> type[BaseException]:
        left, right = socket.socketpair()
        a = Socket(left)
        waiter = await spawn(a.recv(10))
        await sleep(0)  # the waiter runs first and parks in recv (ready tasks run in order)
        assert describe(yieldio.current_kernel(), waiter).startswith("waiting to read")
        a.close()
        right.close()
        with pytest.raises(OSError) as caught:
            await waiter.join()
        return type(caught.value)

    assert issubclass(yieldio.run(main), OSError)


def test_other_attributes_pass_through() -> None:
    sock = Socket(socket.socket())
    try:
        assert sock.family == socket.AF_INET
        assert sock.gettimeout() == 0.0
    finally:
        sock.close()


def test_tls_records_is_the_ssl_modules_c_object(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    """The TLS echo calls OpenSSL's record layer through ``SSLSocket._sslobj``, a private attribute of
    the ssl module. Should a Python rename or drop it, the echo would quietly fall back to the slower
    public methods: this test is what makes that loud."""

    async def main() -> tuple[object, object, bytes]:
        with _listener() as listener:
            port = listener.getsockname()[1]
            client = await spawn(open_connection("127.0.0.1", port, ssl=client_context, server_hostname="localhost"))
            server_side, _ = await listener.accept()
            with server_side:
                await server_side.start_tls(server_context, server_side=True)
                async with await client.join() as peer:
                    tls = server_side.socket
                    assert isinstance(tls, ssl.SSLSocket)
                    records = tls_records(tls)
                    await peer.sendall(b"ping")
                    await server_side.wait_readable()
                    into = memoryview(bytearray(16))
                    received = records.read(16, into)
                    return records, tls, bytes(into[:received])

    records, tls, received = yieldio.run(main)
    assert type(records) is ssl._ssl._SSLSocket  # type: ignore[attr-defined]
    assert records is not tls
    assert received == b"ping"
    assert "_sslobj" not in caplog.text  # no fallback was announced
