"""UDP: udp_bind, Socket's datagram calls, serve_datagrams / udp_server, with nc -u and socat as clients.

Each test runs the server as a task and its clients in the same kernel; a command-line client
runs on a thread through run_in_thread (subprocess.run with a timeout kills it). "No reply"
is checked without waiting for silence: the client sends a datagram that must go unanswered,
then one that must be answered, and the first reply it gets must be the second one's.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import socket
from collections.abc import AsyncIterator, Generator
from typing import Any

import pytest

import yieldio
from yieldio import DatagramCounters, Socket, run_in_thread

from .harness import has_ipv6_loopback, run_client


def got(data: bytes, address: Any) -> bytes:
    return b"GOT:" + data


@contextlib.asynccontextmanager
async def serving(
    handler: Any = got, host: str = "127.0.0.1", counters: DatagramCounters | None = None, **options: Any
) -> AsyncIterator[tuple[Any, ...]]:
    """serve_datagrams on a fresh socket as a task for the block; yields the address to send to."""
    sock = yieldio.udp_bind((host, 0))
    server = await yieldio.spawn(yieldio.serve_datagrams(sock, handler, counters=counters, **options))
    try:
        yield sock.getsockname()
    finally:
        await server.cancel()
        sock.close()


def client_socket(family: int = socket.AF_INET) -> Socket:
    return Socket(socket.socket(family, socket.SOCK_DGRAM))


async def ask(sock: Socket, address: Any, payload: bytes) -> bytes:
    await sock.sendto(payload, address)
    async with yieldio.timeout_after(5):
        reply, sender = await sock.recvfrom(65535)
    assert sender[:2] == address[:2]
    return reply


def test_nc_and_socat_get_replies() -> None:
    async def main() -> tuple[Any, Any]:
        async with serving() as (host, port), yieldio.TaskGroup() as clients:
            # netcat-openbsd's UDP mode waits for replies until -w seconds of silence; socat for 0.5 s.
            nc = await clients.spawn(run_in_thread(run_client, ["nc", "-u", "-w1", host, str(port)], b"Hello\n"))
            via_socat = await clients.spawn(run_in_thread(run_client, ["socat", "-", f"UDP:{host}:{port}"], b"Hi\n"))
        return nc.result, via_socat.result

    nc, via_socat = yieldio.run(main)
    assert (nc.returncode, nc.stdout) == (0, b"GOT:Hello\n"), nc.stderr
    assert (via_socat.returncode, via_socat.stdout) == (0, b"GOT:Hi\n"), via_socat.stderr


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6() -> None:
    async def main() -> tuple[Any, bytes]:
        async with serving(host="::1") as address:
            via_socat = await run_in_thread(run_client, ["socat", "-", f"UDP6:[::1]:{address[1]}"], b"six\n")
            with client_socket(socket.AF_INET6) as sock:
                reply = await ask(sock, address, b"python")
        return via_socat, reply

    via_socat, reply = yieldio.run(main)
    assert (via_socat.returncode, via_socat.stdout) == (0, b"GOT:six\n"), via_socat.stderr
    assert reply == b"GOT:python"


def test_each_sender_gets_its_own_replies() -> None:
    senders, rounds = 8, 200
    counters = DatagramCounters()

    async def client(sock: Socket, address: Any, me: int) -> list[bytes]:
        return [await ask(sock, address, b"%d:%d" % (me, n)) for n in range(rounds)]

    async def main() -> list[list[bytes]]:
        async with serving(counters=counters) as address:
            socks = [client_socket() for _ in range(senders)]
            try:
                async with yieldio.TaskGroup() as group:
                    tasks = [await group.spawn(client(sock, address, me)) for me, sock in enumerate(socks)]
            finally:
                for sock in socks:
                    sock.close()
        return [task.result for task in tasks]

    results = yieldio.run(main)
    for me, replies in enumerate(results):
        assert replies == [b"GOT:%d:%d" % (me, n) for n in range(rounds)]
    assert (counters.datagrams_in, counters.datagrams_out) == (senders * rounds, senders * rounds)


def test_a_datagram_over_max_size_is_reported_not_cut(caplog: pytest.LogCaptureFixture) -> None:
    counters = DatagramCounters()

    async def main() -> bytes:
        async with serving(max_size=16, counters=counters) as address:
            with client_socket() as sock:
                await sock.sendto(b"x" * 100, address)
                return await ask(sock, address, b"fits")

    assert yieldio.run(main) == b"GOT:fits"
    assert (counters.datagrams_in, counters.truncated, counters.datagrams_out) == (2, 1, 1)
    assert re.search(r"a 100-byte datagram from 127\.0\.0\.1:\d+ is over the 16-byte limit: dropped", caplog.text)


def test_socket_recvfrom_reports_a_datagram_too_large() -> None:
    async def main() -> list[Any]:
        with yieldio.udp_bind(("127.0.0.1", 0)) as server, client_socket() as sock:
            address = server.getsockname()
            seen: list[Any] = []
            for payload in (b"a" * 100, b"small", b"b" * 50, b"tiny"):
                await sock.sendto(payload, address)
            with pytest.raises(yieldio.DatagramTooLarge) as too_large:
                await server.recvfrom(10)
            seen.append(too_large.value)
            seen.append(await server.recvfrom(10))  # the next datagram, whole
            buffer = bytearray(20)
            with pytest.raises(yieldio.DatagramTooLarge) as too_large:
                await server.recvfrom_into(buffer)
            seen.append(too_large.value)
            seen.append(await server.recvfrom_into(buffer, 8))
            seen.append(bytes(buffer[:4]))
            seen.append(("127.0.0.1", sock.getsockname()[1]))  # bound to 0.0.0.0 by its first sendto
        return seen

    first, small, second, (size, _), tiny, client_address = yieldio.run(main)
    assert isinstance(first, yieldio.DatagramTooLarge) and first.errno == errno.EMSGSIZE
    assert (first.size, first.limit, first.address) == (100, 10, client_address)
    assert str(first).endswith(f"a 100-byte datagram from 127.0.0.1:{client_address[1]} did not fit in 10 bytes")
    assert small == (b"small", client_address)
    assert (second.size, second.limit) == (50, 20)
    assert (size, tiny) == (4, b"tiny")


def test_stream_sockets_recvfrom_is_unchanged() -> None:
    # MSG_TRUNC is for datagram sockets only: on a stream socket it would discard what it reads.
    async def main() -> list[bytes]:
        left, right = socket.socketpair()
        with Socket(left) as a, Socket(right) as b:
            await a.sendall(b"abcdef")
            return [(await b.recvfrom(3))[0], (await b.recvfrom(3))[0]]

    assert yieldio.run(main) == [b"abc", b"def"]


def test_no_reply_for_none_and_a_failing_handler_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    counters = DatagramCounters()

    def picky(data: bytes, address: Any) -> Any:
        if data == b"ignore":
            return None
        if data == b"boom":
            raise RuntimeError("handler bug")
        if data == b"text":
            return "not bytes"
        return b"GOT:" + data

    async def main() -> list[bytes]:
        async with serving(picky, counters=counters) as address:
            with client_socket() as sock:
                replies = []
                for unanswered in (b"ignore", b"boom", b"text"):
                    await sock.sendto(unanswered, address)
                    replies.append(await ask(sock, address, b"after " + unanswered))
                return replies

    assert yieldio.run(main) == [b"GOT:after ignore", b"GOT:after boom", b"GOT:after text"]
    assert counters.handler_errors == 2 and counters.datagrams_in == 6 and counters.datagrams_out == 3
    assert "RuntimeError: handler bug" in caplog.text
    assert "a datagram handler must return bytes or None, not str" in caplog.text


async def async_handler(data: bytes, address: Any) -> bytes | None:
    await yieldio.sleep(0)
    return None if data == b"ignore" else b"async:" + data


def generator_handler(data: bytes, address: Any) -> Generator[Any, Any, bytearray]:
    yield from yieldio.sleep(0)
    return bytearray(b"gen:" + data)


def view_handler(data: bytes, address: Any) -> memoryview:
    return memoryview(b"view:" + data)


@pytest.mark.parametrize("handler", [async_handler, generator_handler, view_handler])
def test_handler_styles(handler: Any) -> None:
    async def main() -> bytes:
        async with serving(handler) as address:
            with client_socket() as sock:
                await sock.sendto(b"ignore", address)  # only async_handler ignores it: its reply comes first
                return await ask(sock, address, b"hi")

    prefix = {async_handler: b"async:", generator_handler: b"gen:", view_handler: b"view:"}[handler]
    reply = yieldio.run(main)
    assert reply == (b"async:hi" if handler is async_handler else prefix + b"ignore")


def test_a_reply_too_large_to_send_is_dropped_not_split(caplog: pytest.LogCaptureFixture) -> None:
    counters = DatagramCounters()

    def huge(data: bytes, address: Any) -> bytes:
        return b"z" * 70_000 if data == b"huge" else b"GOT:" + data

    async def main() -> bytes:
        async with serving(huge, counters=counters) as address:
            with client_socket() as sock:
                await sock.sendto(b"huge", address)
                return await ask(sock, address, b"normal")

    assert yieldio.run(main) == b"GOT:normal"
    assert (counters.dropped_replies, counters.datagrams_out) == (1, 1)
    assert re.search(r"a 70000-byte reply to 127\.0\.0\.1:\d+ dropped: Message too long", caplog.text)


def test_udp_server_logs_where_it_listens_and_its_counters(caplog: pytest.LogCaptureFixture) -> None:
    counters = DatagramCounters()

    async def main() -> bytes:
        server = await yieldio.spawn(yieldio.udp_server(("", 0), got, counters=counters))
        try:
            await yieldio.sleep(0)  # it binds and logs on its first step
            match = re.search(r"listening on udp:0\.0\.0\.0:(\d+)", caplog.text)
            assert match is not None, caplog.text
            with client_socket() as sock:
                return await ask(sock, ("127.0.0.1", int(match.group(1))), b"x")
        finally:
            await server.cancel()

    with caplog.at_level(logging.INFO, logger="yieldio"):
        assert yieldio.run(main) == b"GOT:x"
    assert re.search(
        r"udp:0\.0\.0\.0:\d+ closed: 1 datagrams in, 1 out, 0 truncated, 0 dropped replies, 0 handler errors",
        caplog.text,
    )


def test_udp_bind_shares_a_port_only_with_reuse_port() -> None:
    with yieldio.udp_bind(("127.0.0.1", 0), reuse_port=True) as first:
        port = first.getsockname()[1]
        with yieldio.udp_bind(("127.0.0.1", port), reuse_port=True) as second:
            assert second.getsockname() == first.getsockname()
        with pytest.raises(OSError) as busy:
            yieldio.udp_bind(("127.0.0.1", port))
    assert busy.value.errno == errno.EADDRINUSE


def test_max_size_must_hold_a_byte() -> None:
    with yieldio.udp_bind(("127.0.0.1", 0)) as sock, pytest.raises(ValueError, match="max_size"):
        yieldio.run(yieldio.serve_datagrams(sock, got, max_size=0))
