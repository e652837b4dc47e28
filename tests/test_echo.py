"""The echo protocol: framers byte by byte (no I/O), then the handler over real sockets."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import yieldio
from yieldio import ChunkFramer, LineFramer
from yieldio.apps.echo import make_framer

from .harness import ServerThread, connect, recv_all, recv_exactly, split_line_replies


def strip_prefixes(reply: bytes, prefix: bytes, max_line: int) -> bytes:
    """Undo line framing: what the client sent, if nothing was lost, duplicated or reordered.

    (Chunk replies can't be split without knowing the chunk sizes; the framer tests cover those.)
    """
    return b"".join(split_line_replies(reply, prefix, max_line))


def test_chunk_framer_prefixes_each_chunk() -> None:
    framer = ChunkFramer(b"GOT:")
    assert framer.feed(b"Hello") == b"GOT:Hello"
    assert framer.feed(b"") == b""
    assert framer.close() == b""
    assert ChunkFramer(b"").feed(b"plain") == b"plain"


def test_line_framer_byte_by_byte() -> None:
    framer = LineFramer(b"GOT:", max_line=100)
    replies = [framer.feed(bytes([b])) for b in b"ab\ncd\n\nef"]
    assert b"".join(replies) == b"GOT:ab\nGOT:cd\nGOT:\n"
    assert replies[2] == b"GOT:ab\n"  # answered exactly when the newline arrives
    assert framer.close() == b"GOT:ef"
    assert framer.close() == b""


def test_line_framer_answers_long_lines_in_pieces() -> None:
    framer = LineFramer(b">", max_line=4)
    assert framer.feed(b"abcdefghij\nxy") == b">abcd>efgh>ij\n"
    assert framer.feed(b"z\n") == b">xyz\n"
    assert LineFramer(b">", max_line=3).feed(b"ab\n") == b">ab\n"


def test_make_framer_rejects_unknown_framing() -> None:
    with pytest.raises(ValueError):
        make_framer("words")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LineFramer(max_line=0)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=30),
    prefix=st.sampled_from([b"GOT:", b"", b"\n", b"GOT:\n"]),
    max_line=st.integers(min_value=1, max_value=64),
    framing=st.sampled_from(["chunk", "line"]),
)
def test_framers_lose_nothing_for_any_split(
    data: bytes, cuts: list[int], prefix: bytes, max_line: int, framing: str
) -> None:
    framer = make_framer(framing, prefix, max_line)  # type: ignore[arg-type]
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    recovered = bytearray()
    for piece in pieces:
        reply = framer.feed(piece)
        if framing == "chunk":
            assert reply == (prefix + piece if piece else b"")
            recovered += piece
        else:
            recovered += strip_prefixes(reply, prefix, max_line) if prefix else reply
    tail = framer.close()
    if framing == "line":
        recovered += strip_prefixes(tail, prefix, max_line) if prefix else tail
    assert bytes(recovered) == data


@pytest.fixture(scope="module")
def line_server() -> Iterator[ServerThread]:
    with ServerThread(yieldio.make_echo_handler(prefix=b"GOT:", framing="line", max_line=50)) as server:
        yield server


@pytest.fixture(scope="module")
def plain_server() -> Iterator[ServerThread]:
    with ServerThread(yieldio.make_echo_handler(prefix=b"", framing="chunk")) as server:
        yield server


@settings(max_examples=40, deadline=None)
@given(
    messages=st.lists(st.binary(min_size=0, max_size=400), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=3200), max_size=12),
)
def test_real_sockets_random_messages_random_splits(
    line_server: ServerThread, plain_server: ServerThread, messages: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(messages)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for server, framing in ((line_server, "line"), (plain_server, "chunk")):
        with connect(server.address) as sock:
            for a, b in itertools.pairwise(bounds):
                sock.sendall(data[a:b])
            sock.shutdown(socket.SHUT_WR)  # half-close: we must still get the echo of everything
            reply = recv_all(sock)
        recovered = strip_prefixes(reply, b"GOT:", 50) if framing == "line" else reply
        assert recovered == data


def test_line_framing_over_a_socket_answers_each_line(line_server: ServerThread) -> None:
    with connect(line_server.address) as sock:
        sock.sendall(b"Hello\nWor")
        assert recv_exactly(sock, 10) == b"GOT:Hello\n"
        sock.sendall(b"ld\npartial")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"GOT:World\nGOT:partial"
