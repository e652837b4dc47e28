"""The echo protocol: framers byte by byte (no I/O), then the handler over real sockets."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import yieldio
import yieldio.servers.echo
from yieldio import ChunkFramer, Event, LineFramer, Socket, Task, open_connection, run_in_thread, spawn, timeout_after
from yieldio.compiled import echo_step as compiled_echo_step
from yieldio.core.hooks import Instrument
from yieldio.servers.echo import Framing, make_framer

from .harness import ProcessServers, ServerThread, connect, recv_all, recv_exactly, serve_command, split_line_replies


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


# -- over TLS: the handler's own TLS loop ---------------------------------------------------


def serve_tls_echo(
    server_context: ssl.SSLContext,
    client: Callable[[int], Awaitable[Any]],
    *,
    prefix: bytes = b"GOT:",
    framing: Framing = "chunk",
    instrument: Instrument | None = None,
) -> Any:
    """Serve the echo over TLS as a task and run ``client(port)`` beside it, in one kernel; its result."""

    async def main() -> Any:
        if instrument is not None:
            yieldio.current_kernel().add_instrument(instrument)
        with yieldio.tcp_listen(("127.0.0.1", 0)) as listener:
            handler = yieldio.make_echo_handler(prefix=prefix, framing=framing)
            server = await spawn(yieldio.serve(listener, handler, yieldio.ServerOptions(ssl=server_context)))
            try:
                return await timeout_after(20, client(listener.getsockname()[1]))
            finally:
                await server.cancel()

    return yieldio.run(main)


class ParkedForWriting(Instrument):
    """Sets ``event`` when the echo's connection task (``task``) parks waiting for its socket to be writable."""

    def __init__(self) -> None:
        self.event = Event()
        self.task: Task | None = None

    def task_yielded(self, task: Task, trap: Any) -> None:
        if task.name == "echo_handler" and type(trap) is tuple and trap[0] == "send" and not self.event.is_set():
            self.task = task
            self.event.set()


def test_tls_echo_waits_for_a_client_that_does_not_read_and_loses_nothing(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    upload = os.urandom(16 * 1024 * 1024)  # more than the server's send buffer can hold (tcp_wmem: 4 MiB)
    parked = ParkedForWriting()

    async def read_all(sock: Socket) -> bytes:
        await parked.event.wait()  # read nothing until the server has had to wait for us
        received = bytearray()
        while len(received) < len(upload) and (data := await sock.recv(65536)):
            received += data
        return bytes(received)

    async def client(port: int) -> bytes:
        async with await open_connection("127.0.0.1", port, ssl=client_context, server_hostname="localhost") as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # no autotuning: we fill up soon
            reader = await spawn(read_all(sock))
            await sock.sendall(upload)
            echoed: bytes = await reader.join()
            return echoed

    echoed = serve_tls_echo(server_context, client, prefix=b"", instrument=parked)
    assert parked.event.is_set()
    assert echoed == upload  # a reply that had to wait went out whole, in order, once


def test_tls_echo_cancelled_mid_write_sends_the_rest_once_then_close_notify(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    upload = os.urandom(16 * 1024 * 1024)
    parked = ParkedForWriting()

    async def send_all(sock: Socket) -> None:
        with contextlib.suppress(OSError):  # the server closes while we still send: expected
            await sock.sendall(upload)

    async def main() -> bytes:
        yieldio.current_kernel().add_instrument(parked)
        with yieldio.tcp_listen(("127.0.0.1", 0)) as listener:
            handler = yieldio.make_echo_handler(prefix=b"", framing="chunk")
            server = await spawn(yieldio.serve(listener, handler, yieldio.ServerOptions(ssl=server_context)))
            port = listener.getsockname()[1]
            async with await open_connection(
                "127.0.0.1", port, ssl=client_context, server_hostname="localhost"
            ) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                sender = await spawn(send_all(sock))
                await timeout_after(20, parked.event.wait())  # a TLS write of the server's is half done
                assert parked.task is not None
                stopping = await spawn(parked.task.cancel())  # as at shutdown: the connection drains
                echoed = bytearray()
                async with timeout_after(20):
                    while data := await sock.recv(65536):  # until close_notify
                        echoed += data
                await stopping.join()
                await sender.cancel()
            await server.cancel()
            return bytes(echoed)

    echoed = yieldio.run(main)
    assert len(echoed) > 64 * 1024
    assert echoed == upload[: len(echoed)]  # nothing lost between the half-done write and the drain, nothing twice


class CancelMidReply(Instrument):
    """Cancels the echo's task (as a shutdown does) the moment it parks for writability a second time
    without reading in between: part of one reply's rest has gone out since its first wait."""

    def __init__(self, handler_name: str) -> None:
        self.handler_name = handler_name
        self.cancelled = False
        self.waits = 0

    def task_yielded(self, task: Task, trap: Any) -> None:
        if self.cancelled or not task.name.endswith(self.handler_name) or type(trap) is not tuple:
            return
        self.waits = self.waits + 1 if trap[0] == "send" else 0
        if self.waits == 2:
            self.cancelled = yieldio.current_kernel().cancel_nowait(task)


@pytest.mark.parametrize("loop", ["pure", "compiled"])
def test_plain_echo_cancelled_mid_write_sends_the_rest_once(monkeypatch: pytest.MonkeyPatch, loop: str) -> None:
    """Cancelled after part of a reply's rest went out (``Socket.send_rest`` counts it in ``bytes_out``),
    the drain sends exactly what is left of it: not the whole rest again, not less."""
    if loop == "compiled" and compiled_echo_step is None:
        pytest.skip("the compiled build is not installed")
    if loop == "pure":
        monkeypatch.setattr(yieldio.servers.echo, "compiled_echo_step", None)
    upload = os.urandom(16 * 1024 * 1024)
    canceller = CancelMidReply("small_send_buffer")
    echo = yieldio.make_echo_handler(prefix=b"")

    def small_send_buffer(client: Socket, address: Any) -> Any:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # a 64 KiB reply goes in pieces
        return echo(client, address)

    async def send_all(sock: Socket) -> None:
        with contextlib.suppress(OSError):  # the server half-closes and discards while we still send
            await sock.sendall(upload)

    async def main() -> bytes:
        yieldio.current_kernel().add_instrument(canceller)
        with yieldio.tcp_listen(("127.0.0.1", 0)) as listener:
            server = await spawn(yieldio.serve(listener, small_send_buffer))
            async with await open_connection("127.0.0.1", listener.getsockname()[1]) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                sender = await spawn(send_all(sock))
                echoed = bytearray()
                async with timeout_after(20):
                    while data := await sock.recv(4096):  # slowly, until the server's half-close after the drain
                        echoed += data
                        await yieldio.sleep(0)
                await sender.cancel()
            await server.cancel()
            return bytes(echoed)

    echoed = yieldio.run(main)
    assert canceller.cancelled
    assert len(echoed) > 64 * 1024
    assert echoed == upload[: len(echoed)]  # nothing lost between the half-sent reply and the drain, nothing twice


def test_tls_echo_ends_quietly_when_a_peer_leaves_without_close_notify(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    def leave_without_close_notify(port: int) -> bytes:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with raw, client_context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"Hello\npartial")
            first = recv_exactly_tls(tls, len(b"GOT:Hello\n"))
            socket.socket.shutdown(tls, socket.SHUT_WR)  # TCP's FIN alone: no close_notify
            try:
                while tls.recv(100):
                    pass
            except ssl.SSLError:
                pass  # OpenSSL 3 takes such an end as fatal: the server may say so with an alert
            return first

    def well_behaved(port: int) -> bytes:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with raw, client_context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"next\n")
            return recv_exactly_tls(tls, len(b"GOT:next\n"))

    async def client(port: int) -> tuple[bytes, bytes]:
        return await run_in_thread(leave_without_close_notify, port), await run_in_thread(well_behaved, port)

    assert serve_tls_echo(server_context, client, framing="line") == (b"GOT:Hello\n", b"GOT:next\n")
    assert [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []


def recv_exactly_tls(tls: ssl.SSLSocket, size: int) -> bytes:
    received = bytearray()
    while len(received) < size and (data := tls.recv(size - len(received))):
        received += data
    return bytes(received)


# -- the compiled step (the default build; CI runs the suite with it and with YIELDIO_NO_EXTENSIONS=1) --

needs_compiled = pytest.mark.skipif(
    compiled_echo_step is None, reason="the compiled step is not in use (a pure build, or YIELDIO_PURE=1)"
)


@needs_compiled
def test_compiled_step_byte_by_byte_over_a_socketpair() -> None:
    assert compiled_echo_step is not None
    whole = memoryview(bytearray(b"GOT:") + bytearray(1024))
    ours, peer = socket.socketpair()
    with ours, peer:
        ours.setblocking(False)
        peer.settimeout(10)
        assert compiled_echo_step(ours.fileno(), whole, 4) is None  # nothing to read yet
        peer.sendall(b"Hello")
        assert compiled_echo_step(ours.fileno(), whole, 4) == 5
        assert recv_exactly(peer, 9) == b"GOT:Hello"
        peer.shutdown(socket.SHUT_WR)
        assert compiled_echo_step(ours.fileno(), whole, 4) == 0  # end of input
        with pytest.raises(ValueError):
            compiled_echo_step(ours.fileno(), whole, len(whole))
        with pytest.raises(TypeError):
            compiled_echo_step(ours.fileno(), whole)  # type: ignore[call-arg]


@needs_compiled
def test_compiled_step_reports_a_partial_reply_and_a_closed_peer() -> None:
    assert compiled_echo_step is not None
    big = memoryview(bytearray(b">") + bytearray(4 * 1024 * 1024))
    ours, peer = socket.socketpair()
    with ours, peer:
        ours.setblocking(False)
        peer.settimeout(10)
        outcome: int | tuple[int, int] | None = 0
        for _ in range(100):  # the peer reads nothing: soon a reply no longer fits in the buffers
            peer.sendall(b"x" * 100_000)
            outcome = compiled_echo_step(ours.fileno(), big, 1)
            if isinstance(outcome, tuple):
                break
        assert isinstance(outcome, tuple)
        received, sent = outcome
        assert received > 0 and 0 <= sent < 1 + received
    ours, peer = socket.socketpair()
    with ours:
        ours.setblocking(False)
        peer.sendall(b"bye")
        peer.close()
        with pytest.raises(BrokenPipeError):  # as sock.send raises it: the handler ends quietly
            compiled_echo_step(ours.fileno(), big, 1)


@pytest.mark.parametrize("pure", ["1", "0"], ids=["pure", "compiled"])
def test_pure_and_compiled_servers_answer_alike(serve_process: ProcessServers, pure: str) -> None:
    if pure == "0" and compiled_echo_step is None:
        pytest.skip("the compiled step is not in use (a pure build, or YIELDIO_PURE=1)")
    upload = os.urandom(8 * 1024 * 1024)
    server = serve_process.start(serve_command("--prefix", ""), env={"YIELDIO_PURE": pure})
    with connect(server.address) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # replies will have to wait
        sock.sendall(b"first")
        assert recv_exactly(sock, 5) == b"first"
        for start in range(0, len(upload), 256 * 1024):  # sent in pieces, each read back whole
            piece = upload[start : start + 256 * 1024]
            sock.sendall(piece)
            assert recv_exactly(sock, len(piece)) == piece
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""
