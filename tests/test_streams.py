"""Streams: the pure buffer byte by byte (no I/O), then yieldio.Stream over real sockets.

The property tests send random data in random pieces over a socketpair and
check that the reads give back exactly the bytes sent, cut where each read
promises to cut; the others pin down the edges: limits that keep every
byte, end of input in the middle of a read, cancellation at the wait point,
both task styles, ``async for``.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

import yieldio
from yieldio import (
    IncompleteReadError,
    LimitOverrunError,
    Socket,
    Stream,
    StreamBuffer,
    TaskGroup,
    TaskTimeout,
    sleep,
    spawn,
    timeout_after,
)

T = TypeVar("T")

# Data rich in separators and near-separators, so that lines are short and cuts fall everywhere.
DATA = st.lists(
    st.one_of(st.sampled_from([b"\n", b"\r\n", b"\r", b"-", b"--", b"abc", b"\x00"]), st.binary(max_size=40)),
    max_size=60,
).map(b"".join)
CUTS = st.lists(st.integers(min_value=0, max_value=2500), max_size=25)
RECV_SIZES = st.sampled_from([1, 2, 7, 64, 65536])


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def lines_of(data: bytes) -> list[bytes]:
    """What reading ``data`` line by line must give: each line with its newline, a last one without."""
    *complete, last = data.split(b"\n")
    return [line + b"\n" for line in complete] + ([last] if last else [])


# The pure buffer


def test_readline_byte_by_byte() -> None:
    buffer = StreamBuffer()
    results = []
    for byte in b"ab\n\ncd":
        buffer.feed(bytes([byte]))
        results.append(buffer.readline())
    assert results == [None, None, b"ab\n", b"\n", None, None]
    buffer.feed_eof()
    assert buffer.readline() == b"cd"  # the last line, without its newline
    assert buffer.readline() == b""
    assert buffer.readline() == b""


def test_readuntil_finds_a_separator_cut_in_two_by_the_feeds() -> None:
    buffer = StreamBuffer()
    for byte in b"one\r":
        buffer.feed(bytes([byte]))
        assert buffer.readuntil(b"\r\n") is None
    buffer.feed(b"\ntwo\r\n\r")
    assert buffer.readuntil(b"\r\n") == b"one\r\n"
    assert buffer.readuntil(b"\r\n") == b"two\r\n"
    assert buffer.readuntil(b"\r\n") is None
    assert buffer.readline() is None  # another separator: searched afresh
    buffer.feed(b"\r\n")
    assert buffer.readuntil(b"\r\n") == b"\r\r\n"


def test_a_line_longer_than_its_limit_raises_and_keeps_every_byte() -> None:
    buffer = StreamBuffer()
    buffer.feed(b"abcd\nabcde\n")
    assert buffer.readline(limit=5) == b"abcd\n"  # exactly the limit, newline included
    with pytest.raises(LimitOverrunError) as raised:
        buffer.readline(limit=5)
    assert raised.value.limit == 5 and raised.value.separator == b"\n"
    assert len(buffer) == 6
    assert buffer.readline(limit=6) == b"abcde\n"


def test_the_limit_is_known_to_be_exceeded_before_the_separator_arrives() -> None:
    buffer = StreamBuffer()
    buffer.feed(b"abc")
    assert buffer.readline(limit=4) is None
    buffer.feed(b"d")
    with pytest.raises(LimitOverrunError):  # 4 bytes and no newline yet: no line can fit any more
        buffer.readline(limit=4)
    buffer.feed(b"\n")
    with pytest.raises(LimitOverrunError):
        buffer.readuntil(b"d\n", limit=4)  # the separator ends past the limit
    assert buffer.read(100) == b"abcd\n"


def test_overrun_at_end_of_input_still_keeps_the_bytes() -> None:
    buffer = StreamBuffer()
    buffer.feed(b"abcdef")
    buffer.feed_eof()
    with pytest.raises(LimitOverrunError):
        buffer.readline(limit=3)
    assert buffer.read() == b"abcdef"


def test_readexactly_cut_short_by_end_of_input_hands_over_the_partial() -> None:
    buffer = StreamBuffer()
    buffer.feed(b"12")
    assert buffer.readexactly(3) is None
    buffer.feed(b"34")
    assert buffer.readexactly(3) == b"123"
    assert buffer.readexactly(3) is None
    buffer.feed_eof()
    with pytest.raises(IncompleteReadError) as raised:
        buffer.readexactly(3)
    assert (raised.value.partial, raised.value.expected) == (b"4", 3)
    assert isinstance(raised.value, EOFError)
    assert len(buffer) == 0  # handed over in the exception, not left behind
    assert buffer.readexactly(0) == b""


def test_readuntil_at_end_of_input_without_separator_hands_over_the_partial() -> None:
    buffer = StreamBuffer()
    buffer.feed(b"a--b-")
    buffer.feed_eof()
    assert buffer.readuntil(b"--") == b"a--"
    with pytest.raises(IncompleteReadError) as raised:
        buffer.readuntil(b"--")
    assert (raised.value.partial, raised.value.expected) == (b"b-", None)
    with pytest.raises(IncompleteReadError) as raised:
        buffer.readuntil(b"--")
    assert raised.value.partial == b""


def test_read_returns_what_is_buffered_and_minus_one_waits_for_the_end() -> None:
    buffer = StreamBuffer()
    assert buffer.read(5) is None
    assert buffer.read(0) == b""
    buffer.feed(b"abc")
    assert buffer.read(2) == b"ab"
    assert buffer.read(5) == b"c"  # fewer than asked: what there is, without waiting
    buffer.feed(b"def")
    assert buffer.read(-1) is None  # to the end of input, which has not come
    buffer.feed(b"g")
    buffer.feed_eof()
    assert buffer.read(-1) == b"defg"
    assert buffer.read(5) == b""
    assert buffer.read(-1) == b""


def test_bad_arguments_are_refused() -> None:
    buffer = StreamBuffer()
    with pytest.raises(ValueError):
        buffer.readexactly(-1)
    with pytest.raises(ValueError):
        buffer.readuntil(b"")
    with pytest.raises(ValueError):
        buffer.readuntil(b"\r\n", limit=1)
    with pytest.raises(ValueError):
        Stream(Socket(socket.socket()), recv_size=0)


@settings(max_examples=200, deadline=None)
@given(data=DATA, cuts=CUTS)
def test_buffer_lines_for_any_split(data: bytes, cuts: list[int]) -> None:
    buffer = StreamBuffer()
    lines = []
    for piece in split(data, cuts):
        buffer.feed(piece)
        while (line := buffer.readline(limit=len(data) + 1)) is not None:
            lines.append(line)
    buffer.feed_eof()
    while line := buffer.readline(limit=len(data) + 1):
        lines.append(line)
    assert lines == lines_of(data)


def test_many_small_reads_of_a_large_buffer_take_linear_time() -> None:
    # Copying the rest after each read would move ~128 GiB here, taking minutes; linear work takes ~0.1 s.
    size = 4 * 1024 * 1024
    buffer = StreamBuffer()
    buffer.feed(bytes(size))
    started = time.perf_counter()
    for _ in range(size // 64):
        assert buffer.readexactly(64) is not None
    assert time.perf_counter() - started < 5


def test_a_long_record_trickling_in_is_scanned_once() -> None:
    # Searching from the start after each piece would scan ~32 GiB here, taking minutes; once takes ~0.1 s.
    size = 2 * 1024 * 1024
    buffer = StreamBuffer()
    piece = b"x" * 64
    started = time.perf_counter()
    for _ in range(size // len(piece)):
        buffer.feed(piece)
        assert buffer.readuntil(b"\r\n", limit=size + 2) is None
    buffer.feed(b"\r\n")
    assert buffer.readuntil(b"\r\n", limit=size + 2) == b"x" * size + b"\r\n"
    assert time.perf_counter() - started < 5


def test_memory_stays_bounded_while_the_buffer_never_empties() -> None:
    buffer = StreamBuffer()
    piece = bytes(1000)
    buffer.feed(piece)
    tracemalloc.start()
    try:
        for _ in range(10_000):
            buffer.feed(piece)
            assert buffer.readexactly(1000) == piece
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100_000  # 10 MB went through; a buffer that never cut off its front would have kept it all


# Over real sockets


async def send_pieces(sock: Socket, pieces: list[bytes]) -> None:
    """Send each piece separately, letting the reader run in between, then half-close."""
    for piece in pieces:
        await sock.sendall(piece)
        await sleep(0)
    sock.shutdown_write()


def over_socketpair(pieces: list[bytes], reader: Callable[[Stream], Awaitable[T]], recv_size: int = 65536) -> T:
    async def main() -> T:
        left, right = socket.socketpair()
        sending, receiving = Socket(left), Socket(right)
        async with sending, Stream(receiving, recv_size=recv_size) as stream, TaskGroup() as group:
            await group.spawn(send_pieces(sending, pieces))
            result = await reader(stream)
        return result

    outcome: T = yieldio.run(main)
    return outcome


@settings(max_examples=60, deadline=None)
@given(data=DATA, cuts=CUTS, recv_size=RECV_SIZES, limit=st.integers(min_value=1, max_value=60))
def test_readline_over_a_socketpair_cuts_exactly_at_newlines(
    data: bytes, cuts: list[int], recv_size: int, limit: int
) -> None:
    async def reader(stream: Stream) -> list[tuple[str, bytes]]:
        got = []
        while True:
            try:
                line = await stream.readline(limit)
            except LimitOverrunError:
                got.append(("overrun", await stream.read(limit)))  # the bytes kept by the overrun
                continue
            if not line:
                return got
            got.append(("line", line))

    got = over_socketpair(split(data, cuts), reader, recv_size)
    assert b"".join(piece for _, piece in got) == data
    for index, (kind, piece) in enumerate(got):
        if kind == "line":
            assert len(piece) <= limit
            assert piece.find(b"\n") in (len(piece) - 1, -1)
            assert piece.endswith(b"\n") or index == len(got) - 1
        else:
            assert 1 <= len(piece) <= limit and b"\n" not in piece
    if limit >= len(data):
        assert [piece for _, piece in got] == lines_of(data)


@settings(max_examples=60, deadline=None)
@given(
    data=DATA,
    cuts=CUTS,
    recv_size=RECV_SIZES,
    sizes=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=10).filter(any),
)
def test_readexactly_over_a_socketpair_gives_exact_sizes(
    data: bytes, cuts: list[int], recv_size: int, sizes: list[int]
) -> None:
    async def reader(stream: Stream) -> tuple[list[bytes], bytes, int]:
        got: list[bytes] = []
        for size in itertools.cycle(sizes):
            try:
                got.append(await stream.readexactly(size))
            except IncompleteReadError as end:
                assert end.expected is not None
                return got, end.partial, end.expected
            assert len(got[-1]) == size
        raise AssertionError("unreachable: cycle() never ends")

    got, partial, expected = over_socketpair(split(data, cuts), reader, recv_size)
    assert b"".join(got) + partial == data
    assert len(partial) < expected


@settings(max_examples=40, deadline=None)
@given(
    data=DATA,
    cuts=CUTS,
    recv_size=RECV_SIZES,
    sizes=st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=10),
)
def test_readuntil_and_read_over_a_socketpair(data: bytes, cuts: list[int], recv_size: int, sizes: list[int]) -> None:
    async def reader(stream: Stream) -> tuple[list[bytes], bytes]:
        records = []
        while True:
            try:
                records.append(await stream.readuntil(b"\r\n", limit=len(data) + 2))
            except IncompleteReadError as end:
                return records, end.partial

    records, tail = over_socketpair(split(data, cuts), reader, recv_size)
    assert b"".join(records) + tail == data
    assert all(record.find(b"\r\n") == len(record) - 2 for record in records)
    assert b"\r\n" not in tail

    async def chunks(stream: Stream) -> list[bytes]:
        got: list[bytes] = []
        for size in itertools.cycle(sizes):
            chunk = await stream.read(size)
            if not chunk:
                return got
            assert len(chunk) <= size
            got.append(chunk)
        raise AssertionError("unreachable: cycle() never ends")

    assert b"".join(over_socketpair(split(data, cuts), chunks, recv_size)) == data

    async def everything(stream: Stream) -> bytes:
        return await stream.read(-1)

    assert over_socketpair(split(data, cuts), everything, recv_size) == data


def test_a_line_over_the_limit_stays_readable_over_a_socket() -> None:
    async def reader(stream: Stream) -> tuple[int, bytes, bytes, bytes]:
        with pytest.raises(LimitOverrunError):
            await stream.readline(limit=10)
        kept = len(stream.buffer)
        return kept, await stream.readexactly(31), await stream.readline(), await stream.read()

    kept, long_line, line, rest = over_socketpair([b"x" * 30 + b"\nnext\n"], reader, recv_size=4)
    assert kept >= 10
    assert (long_line, line, rest) == (b"x" * 30 + b"\n", b"next\n", b"")


def test_end_of_input_in_the_middle_of_readexactly_carries_the_partial() -> None:
    async def reader(stream: Stream) -> tuple[bytes, IncompleteReadError, IncompleteReadError, bytes]:
        head = await stream.readexactly(2)
        with pytest.raises(IncompleteReadError) as short:
            await stream.readexactly(10)
        with pytest.raises(IncompleteReadError) as none_left:
            await stream.readuntil(b"\n")
        return head, short.value, none_left.value, await stream.read()

    head, short, none_left, rest = over_socketpair([b"12", b"345", b"67"], reader, recv_size=3)
    assert head == b"12"
    assert (short.partial, short.expected) == (b"34567", 10)
    assert (none_left.partial, none_left.expected) == (b"", None)
    assert rest == b""


def test_readuntil_at_end_of_input_carries_the_partial() -> None:
    async def reader(stream: Stream) -> tuple[bytes, IncompleteReadError]:
        record = await stream.readuntil(b"||")
        with pytest.raises(IncompleteReadError) as end:
            await stream.readuntil(b"||")
        return record, end.value

    record, end = over_socketpair([b"ab|", b"|cd|"], reader)
    assert record == b"ab||"
    assert (end.partial, end.expected) == (b"cd|", None)


def test_a_timed_out_readline_loses_no_byte() -> None:
    async def main() -> tuple[int, bytes]:
        left, right = socket.socketpair()
        async with Socket(left) as peer, Stream(Socket(right), recv_size=2) as stream:
            await peer.sendall(b"hello, ")
            with pytest.raises(TaskTimeout):
                async with timeout_after(0.05):
                    await stream.readline()
            kept = len(stream.buffer)
            await peer.sendall(b"world\n")
            return kept, await stream.readline()

    assert yieldio.run(main) == (7, b"hello, world\n")


@pytest.mark.parametrize(
    ("method", "args", "expected"),
    [
        ("readline", (), b"abcdef\n"),
        ("readuntil", (b"--",), b"abcdef\n--"),
        ("readexactly", (9,), b"abcdef\n--"),
        ("read", (-1,), b"abcdef\n--tail"),
    ],
)
def test_a_read_cancelled_at_its_wait_loses_no_byte(method: str, args: tuple[Any, ...], expected: bytes) -> None:
    async def main() -> tuple[int, bytes]:
        left, right = socket.socketpair()
        async with Socket(left) as peer, Stream(Socket(right), recv_size=1) as stream:
            await peer.sendall(b"abc")
            waiting = await spawn(getattr(stream, method)(*args))
            await sleep(0)  # it reads the three bytes one by one, then parks in recv
            await waiting.cancel()
            kept = len(stream.buffer)
            await peer.sendall(b"def\n--tail")
            peer.shutdown_write()
            result: bytes = await getattr(stream, method)(*args)
            return kept, result

    assert yieldio.run(main) == (3, expected)


def test_both_styles_generator_tasks_use_yield_from() -> None:
    def uppercase_lines(sock: Socket) -> Generator[Any, Any, list[bytes]]:
        seen = []
        with Stream(sock) as stream:
            header = yield from stream.readexactly(4)
            seen.append(header)
            seen.append((yield from stream.readuntil(b";")))
            while line := (yield from stream.readline()):
                seen.append(line)
                yield from stream.write(line.upper())
            seen.append((yield from stream.read()))
        return seen

    async def main() -> tuple[list[bytes], list[bytes]]:
        left, right = socket.socketpair()
        server = await spawn(uppercase_lines(Socket(right)))
        sock = Socket(left)
        async with Stream(sock) as client:
            await client.sendall(b"HEADfield;one\ntwo\nthree")
            sock.shutdown_write()
            replies = [line async for line in client]
        return await server.join(), replies

    seen, replies = yieldio.run(main)
    assert seen == [b"HEAD", b"field;", b"one\n", b"two\n", b"three", b""]
    assert replies == [b"ONE\n", b"TWO\n", b"THREE"]


def test_async_for_yields_every_line_and_a_last_one_without_newline() -> None:
    async def reader(stream: Stream) -> list[bytes]:
        return [line async for line in stream]

    assert over_socketpair([b"one\ntw", b"o\n\nla", b"st"], reader, recv_size=3) == [b"one\n", b"two\n", b"\n", b"last"]
    assert over_socketpair([b"one\n"], reader) == [b"one\n"]
    assert over_socketpair([], reader) == []


def test_async_with_closes_the_socket() -> None:
    async def main() -> tuple[int, int]:
        left, right = socket.socketpair()
        with left:
            async with Stream(Socket(right)):
                inside = right.fileno()
            return inside, right.fileno()

    inside, after = yieldio.run(main)
    assert inside >= 0 and after == -1


def test_write_returns_once_the_kernel_took_everything() -> None:
    payload = bytes(range(256)) * 16384  # 4 MiB: far more than the socket buffers hold

    async def main() -> bytes:
        left, right = socket.socketpair()
        async with Stream(Socket(left)) as writer, Stream(Socket(right)) as reader:
            receiving = await spawn(reader.readexactly(len(payload)))
            assert writer.sendall == writer.write
            await writer.write(payload)  # waits, as sendall does, while the reader empties the buffers
            received: bytes = await receiving.join()
            return received

    assert yieldio.run(main) == payload


def test_line_protocol_over_loopback_tcp() -> None:
    async def shout(client: Socket, address: Any) -> None:
        stream = Stream(client)
        async for line in stream:
            await stream.write(line.upper())

    async def main() -> list[bytes]:
        listener = yieldio.tcp_listen(("127.0.0.1", 0))
        async with TaskGroup() as group:
            server = await group.spawn(yieldio.serve(listener, shout))
            port = listener.getsockname()[1]
            sock = await yieldio.open_connection("127.0.0.1", port)
            async with Stream(sock) as stream:
                replies = []
                for line in (b"hello\n", b"x" * 60_000 + b"\n"):
                    await stream.write(line)
                    replies.append(await stream.readline(limit=100_000))
                await stream.write(b"bye")
                sock.shutdown_write()
                replies.append(await stream.read())
            await server.cancel()
        listener.close()
        return replies

    assert yieldio.run(main) == [b"HELLO\n", b"X" * 60_000 + b"\n", b"BYE"]


def test_lines_over_tls_with_records_larger_than_each_recv() -> None:
    # recv_size 5 leaves most of each decrypted TLS record inside OpenSSL, where no poll can see it:
    # the stream must find it by trying recv first (the socket's optimistic reads), not by waiting.
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client_context)

    async def shout(client: Socket, address: Any) -> None:
        stream = Stream(client, recv_size=5)
        async for line in stream:
            await stream.write(line.upper())

    async def main() -> list[bytes]:
        with yieldio.tcp_listen(("127.0.0.1", 0)) as listener:
            server = await spawn(yieldio.serve(listener, shout, yieldio.ServerOptions(ssl=server_context)))
            port = listener.getsockname()[1]
            sock = await yieldio.open_connection("127.0.0.1", port, ssl=client_context)
            async with Stream(sock, recv_size=5) as stream:
                await stream.write(b"hello\n" + b"x" * 40_000 + b"\nbye\n")
                replies = [await stream.readline(), await stream.readexactly(40_001), await stream.readuntil(b"E\n")]
            await server.cancel()
            return replies

    assert yieldio.run(main) == [b"HELLO\n", b"X" * 40_000 + b"\n", b"BYE\n"]
