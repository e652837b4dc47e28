"""The echo protocol: framing without I/O, and the connection handler that drives it.

The tutorial's server answers every chunk it receives with ``b'GOT:' + data``.
The protocol logic lives in two small framers that never touch a socket, in
the manner of h11: feed them bytes, they return the bytes to send back, and
they can be tested byte by byte.

- :class:`ChunkFramer` answers each chunk as it arrives: ``prefix + chunk``.
  With an empty prefix this is a plain RFC 862 echo.
- :class:`LineFramer` answers once per line: ``prefix + line`` (newline
  included). A partial line is answered at end of input; a line longer than
  ``max_line`` is answered in ``max_line``-sized pieces so memory stays
  bounded whatever the client sends.

Either way, with the prefixes taken out, the replies are exactly the bytes
received, in order.

:func:`echo_handler` picks the connection loop: over TLS, one that follows
OpenSSL's rules; with chunk framing and the optional compiled module
(:mod:`yieldio.compiled` says whether it was built), one whose
per-message step is in C; otherwise the pure-Python loop, the reference both
must match. Each waits until the socket is
readable *before* reading (the tutorial's order), because in request/response
traffic the next message has not arrived yet when the reply has just gone
out, and an optimistic read would fail. It never reads more while a reply is
unsent, so a client that does not read gets backpressure through TCP and the
server's memory per connection stays bounded. When cancelled (shutdown,
idle timeout) it still echoes what the kernel has already received for it,
within a time limit, before the connection closes.

With faults injected on purpose (:mod:`.faults`: delays, a throttle, a reset
or a close after so many bytes) a loop of its own runs, so that the ordinary
loops stay exactly what they are when no fault is asked for.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
import types
from collections.abc import Callable, Generator
from typing import Any, Literal, Protocol, cast

from ..compiled import EchoStep
from ..compiled import echo_step as compiled_echo_step
from ..core import traps
from ..core.kernel import Cancelled
from ..core.scopes import TaskTimeout, timeout_after
from ..io.buffers import receive_buffer
from ..io.sockets import Socket, tls_records
from .faults import Injector, Pace

DEFAULT_PREFIX = b"GOT:"
DEFAULT_MAX_LINE = 64 * 1024
# The plain and TLS echoes read into one shared buffer per thread (_scratch_buffer), so a large read
# costs no allocation. READ_SIZE is its size: half a megabyte, so that a large message takes few
# system calls (measured best of 256 KiB to 1 MiB, see benchmarks/README.md), in a buffer placed so
# that the kernel's copy runs at full speed (yieldio.io.buffers); its pages are mapped as reads first
# reach them. Where a read makes bytes of its own (socket.recv), it asks for RECV_SIZE at most:
# above malloc's mmap threshold every call would map and unmap fresh pages.
READ_SIZE = 512 * 1024
RECV_SIZE = 64 * 1024
DRAIN_SECONDS = 3.0  # how long a cancelled connection may take to flush what it had received
Framing = Literal["chunk", "line"]
Bytes = bytes | bytearray | memoryview


class Framer(Protocol):
    def feed(self, data: Bytes) -> bytes: ...
    def close(self) -> bytes: ...


class ChunkFramer:
    """One reply per chunk received: ``prefix + chunk``."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: bytes = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    def feed(self, data: Bytes) -> bytes:
        return self.prefix + data if data else b""

    def close(self) -> bytes:
        return b""


class LineFramer:
    """One reply per line received: ``prefix + line``; bounded by ``max_line``."""

    __slots__ = ("_partial", "max_line", "prefix")

    def __init__(self, prefix: bytes = DEFAULT_PREFIX, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.prefix = prefix
        self.max_line = max_line
        self._partial = bytearray()

    def feed(self, data: Bytes) -> bytes:
        buffer = self._partial
        buffer += data
        replies: list[bytes | bytearray] = []
        start = 0
        end = len(buffer)
        prefix = self.prefix
        limit = self.max_line
        while start < end:
            newline = buffer.find(b"\n", start, min(end, start + limit))
            if newline >= 0:
                stop = newline + 1
            elif end - start >= limit:
                stop = start + limit  # an over-long line: answer this piece now
            else:
                break
            replies.append(prefix)
            replies.append(buffer[start:stop])
            start = stop
        del buffer[:start]
        return b"".join(replies)

    def close(self) -> bytes:
        """End of input: answer the partial line, if any."""
        if not self._partial:
            return b""
        reply = self.prefix + self._partial
        self._partial.clear()
        return reply


def make_framer(framing: Framing = "chunk", prefix: bytes = DEFAULT_PREFIX, max_line: int = DEFAULT_MAX_LINE) -> Framer:
    if framing == "chunk":
        return ChunkFramer(prefix)
    if framing == "line":
        return LineFramer(prefix, max_line)
    raise ValueError(f"unknown framing {framing!r} (use 'chunk' or 'line')")


class _Scratch(threading.local):
    buffers: dict[bytes, tuple[memoryview, memoryview]]


_scratch = _Scratch()


def _scratch_buffer(prefix: bytes) -> tuple[memoryview, memoryview]:
    """A receive buffer that starts with ``prefix``, shared by this thread's connections:
    (all of it, the part after the prefix).

    Sharing is safe because a connection never yields while the buffer holds
    bytes it still has to send (it copies them out first), and it spares
    each connection an allocation per read. The buffers are kept for
    good, one per prefix: a prefix is the server's or a listener's (a
    handful), never a connection's own (``prefix_per_connection``), which
    would add one for every client.
    """
    buffers: dict[bytes, tuple[memoryview, memoryview]] = _scratch.__dict__.setdefault("buffers", {})
    if prefix not in buffers:
        whole = receive_buffer(READ_SIZE, prefix)
        buffers[prefix] = (whole, whole[len(prefix) :])
    return buffers[prefix]


def echo_handler(
    client: Socket,
    address: Any = None,
    *,
    prefix: bytes = DEFAULT_PREFIX,
    framing: Framing = "chunk",
    max_line: int = DEFAULT_MAX_LINE,
    prefix_per_connection: bool = False,
) -> Generator[Any, Any, None]:
    """Echo everything ``client`` sends, framed, until it closes its side.

    A plain function that returns the loop for this connection (plain, compiled or TLS), so
    the task runs that generator itself: no delegating frame to pass through per message,
    and none to keep per idle connection. Like a generator, what it returns can be awaited.

    ``prefix_per_connection``: this connection's prefix is its own (it names the client, say).
    It is put before each reply as the line framing puts one, never kept in a buffer behind
    the bytes received: one such buffer per prefix would add one for every client.
    """
    # Chunk framing is inlined in the loops; its framer is made only if a drain needs it
    # (an idle connection holds as little memory as possible).
    inline = framing == "chunk" and not prefix_per_connection
    framer = None if inline else make_framer(framing, prefix, max_line)
    if client.is_tls:
        return _echo_tls(client, framer, prefix)
    if framer is None and compiled_echo_step is not None:
        return _echo_compiled(client, prefix, compiled_echo_step)
    return _echo_plain(client, framer, prefix)


@types.coroutine
def _echo_plain(client: Socket, framer: Framer | None, prefix: bytes) -> Generator[Any, Any, None]:
    """The echo over a plain socket, in Python: the reference the compiled step must match."""
    feed = None if framer is None else framer.feed
    head = len(prefix) if feed is None else 0
    whole, into = _scratch_buffer(prefix if feed is None else b"")
    # Every local here lives as long as the connection, idle or not, so the loop keeps few: no bound
    # methods (sock.recv_into costs a few ns more per message than a local, and 72 bytes less per
    # connection), and no view of the shared buffer while it waits (reply is let go before parking).
    sock = client.socket
    readable = client.readable
    reply: Any = None
    unsent: Any = b""  # the part of the current reply the socket did not take at once (our own copy)
    before = 0  # client.bytes_out when that part began to go out
    try:
        # The per-message loop: wait, read, answer. Dense on purpose; see the module doc.
        # Chunk framing reads right behind the prefix in the buffer and sends both
        # in one call: no allocation, no copy.
        while True:
            yield readable
            try:
                received = sock.recv_into(into)
            except BlockingIOError:
                continue
            if not received:
                break
            client.bytes_in += received
            reply = whole[: head + received] if feed is None else feed(into[:received])
            if not reply:
                continue
            try:
                sent = sock.send(reply)
            except BlockingIOError:
                sent = 0
            client.bytes_out += sent
            if sent == len(reply):
                reply = None
                continue
            unsent = memoryview(bytes(reply[sent:]))  # the buffer is shared: keep the rest before waiting
            reply = None
            before = client.bytes_out
            yield from client.send_rest(unsent)
            unsent = b""
        unsent = b"" if framer is None else framer.close()
        if unsent:
            before = client.bytes_out
            yield from client.sendall(unsent)
    except ConnectionError:
        pass  # the peer reset or vanished: nobody is left to answer
    except Cancelled:
        yield from _drain(client, framer or ChunkFramer(prefix), unsent[client.bytes_out - before :])
        raise


@types.coroutine
def _echo_compiled(client: Socket, prefix: bytes, step: EchoStep) -> Generator[Any, Any, None]:
    """The plain chunk echo with its per-message step compiled (:mod:`yieldio._speedups`).

    One C call receives behind the prefix and sends the reply: the same system calls as
    :func:`_echo_plain`, without the Python-level price of two socket calls and a slice per
    message. It returns what was received (all of it answered),
    0 at end of input, None if there was nothing to read yet, or (received, sent) when the
    reply went out only in part: then the rest is copied and sent as the plain loop does.
    """
    # As few locals as the loop can do with: each is a slot in this generator's frame, which an
    # idle connection keeps. The descriptor is the one in the readable trap, not fileno()'s own int
    # (above 256, a new 32-byte object per call).
    head = len(prefix)
    whole = _scratch_buffer(prefix)[0]
    readable = client.readable
    fd = readable[1]
    unsent: Any = b""
    before = 0
    try:
        while True:
            yield readable
            done = step(fd, whole, head)
            if type(done) is int:
                if done:
                    client.bytes_in += done
                    client.bytes_out += head + done
                    continue
                break
            if done is None:
                continue
            done = cast(tuple[int, int], done)  # (received, sent): the reply went out in part
            client.bytes_in += done[0]
            client.bytes_out += done[1]
            unsent = memoryview(bytes(whole[done[1] : head + done[0]]))  # the buffer is shared: keep the rest
            before = client.bytes_out
            yield from client.send_rest(unsent)
            unsent = b""
    except ConnectionError:
        pass  # the peer reset or vanished: nobody is left to answer
    except Cancelled:
        yield from _drain(client, ChunkFramer(prefix), unsent[client.bytes_out - before :])
        raise


@types.coroutine
def _drain(client: Socket, framer: Framer, unsent: Any) -> Generator[Any, Any, None]:
    """Cancelled: echo what was already received, then close without losing it.

    First the unsent part of the current reply, whatever sits in the kernel's
    receive buffer, and the partial line; then a half-close, so the client
    reads EOF after the last reply; then read and discard until the client
    closes too, because closing a socket with unread input would reset the
    connection and throw away replies still in flight. A connection that is
    owed nothing is closed at once. Over TLS there is no half-close (see
    :mod:`yieldio.io.sockets`): the replies are sent, and the caller's close
    sends close_notify after them.
    """
    replies = [bytes(unsent)]
    sock = client.socket
    try:
        while data := sock.recv(RECV_SIZE):  # only what is at hand: never waits
            client.bytes_in += len(data)
            replies.append(framer.feed(data))
    except (BlockingIOError, ConnectionError, ssl.SSLError):  # over TLS, SSLWantReadError: nothing more
        pass
    replies.append(framer.close())
    reply = b"".join(replies)
    if not reply:
        return  # nothing owed: close at once
    flush = client.sendall(reply) if client.is_tls else _flush_and_linger(client, reply)
    with contextlib.suppress(TaskTimeout, OSError):
        yield from timeout_after(DRAIN_SECONDS, flush)


@types.coroutine
def _flush_and_linger(client: Socket, reply: bytes) -> Generator[Any, Any, None]:
    yield from client.sendall(reply)
    client.shutdown_write()
    while (yield from client.recv(RECV_SIZE)):
        pass


@types.coroutine
def _echo_tls(client: Socket, framer: Framer | None, prefix: bytes) -> Generator[Any, Any, None]:
    """The echo over TLS: the plain loop's shape, with OpenSSL's rules for when to wait.

    It waits for readability before reading, as the plain loop does, unless OpenSSL already
    holds decrypted bytes (``pending()``), which no poll would report. Reading first would
    cost, per message, a ``recv`` that fails in the kernel and an ``SSLWantReadError`` raised
    and caught: about a third of the server's time per message in the 1 KiB benchmark. A read
    on a readable socket may still want more (half a record, a session ticket) or want the
    socket writable (a key update to answer): it waits for what OpenSSL asked. A TLS send
    writes all of its data or none, so a reply that must wait is copied out of the shared
    buffer and finished by ``Socket.sendall``, which repeats the same bytes as OpenSSL
    requires. When cancelled, it answers what OpenSSL and the kernel already hold, then the
    caller's close sends close_notify.

    Per message it calls OpenSSL's record layer directly (:func:`yieldio.io.sockets.tls_records`),
    without the SSLSocket's Python-level checks for a closed socket, which this task, the
    socket's only user, never needs. (That layer reports a peer that left without close_notify
    as :class:`ssl.SSLEOFError` where the SSLSocket would read end of file; either way the
    connection is over, as OpenSSL 3 will not write after it.)
    """
    feed = None if framer is None else framer.feed
    head = len(prefix) if feed is None else 0
    whole, into = _scratch_buffer(prefix if feed is None else b"")
    tls = cast(ssl.SSLSocket, client.socket)  # is_tls: the socket is wrapped
    records = tls_records(tls)
    readable = client.readable
    reply: Any = None
    unsent: Any = b""
    try:
        while True:
            if not records.pending():
                yield readable
            try:
                received = records.read(READ_SIZE, into)
            except ssl.SSLWantReadError:
                continue
            except ssl.SSLWantWriteError:
                yield client.writable
                continue
            if not received:
                break
            client.bytes_in += received
            reply = whole[: head + received] if feed is None else feed(into[:received])
            if not reply:
                continue
            try:
                client.bytes_out += records.write(reply)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                unsent = bytes(reply)  # the buffer is shared: keep the reply before waiting
                reply = None
                yield from client.sendall(unsent)
                unsent = b""
            reply = None
        unsent = b"" if framer is None else framer.close()
        if unsent:
            yield from client.sendall(unsent)
    except (ConnectionError, ssl.SSLError):
        pass  # the peer reset or broke the TLS session: nobody is left to answer
    except Cancelled:
        # unsent is the whole reply OpenSSL was writing: it skips what it had already taken
        yield from _drain(client, framer or ChunkFramer(prefix), unsent)
        raise


@types.coroutine
def _echo_with_faults(client: Socket, framer: Framer, injector: Injector) -> Generator[Any, Any, None]:
    """The echo with faults injected (:mod:`.faults`), plain or TLS: read, answer (after the delay, at
    the throttle's pace), read again; at the byte limit, answer what was received, then reset the
    connection or close it cleanly. It reads into bytes of its own: a reply that waits keeps them."""
    faults = injector.faults
    limit = faults.limit
    pace = None if faults.throttle is None else Pace(faults.throttle)
    received = 0
    unsent: Any = b""
    try:
        while limit is None or received < limit:
            data = yield from client.recv(RECV_SIZE if limit is None else min(RECV_SIZE, limit - received))
            if not data:
                unsent = framer.close()
                yield from _reply_with_faults(client, unsent, injector, pace)
                return
            received += len(data)
            unsent = framer.feed(data)
            yield from _reply_with_faults(client, unsent, injector, pace)
            unsent = b""
        injector.ended()
        if faults.resets:  # an RST, not a FIN: the close that follows (the server's) discards the rest
            client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        unsent = framer.close()
        yield from _reply_with_faults(client, unsent, injector, pace)
        unsent = b""
        if not client.is_tls:  # FIN now; then read until the client closes too, so the close sends no RST
            with contextlib.suppress(TaskTimeout):
                yield from timeout_after(DRAIN_SECONDS, _flush_and_linger(client, b""))
    except ConnectionError:
        pass  # the peer reset or vanished: nobody is left to answer
    except Cancelled:
        yield from _drain(client, framer, unsent)
        raise


@types.coroutine
def _reply_with_faults(
    client: Socket, reply: Bytes, injector: Injector, pace: Pace | None
) -> Generator[Any, Any, None]:
    if not reply:
        return
    wait = injector.delay()
    if wait > 0:
        yield from traps.sleep(wait)
    if pace is None:
        yield from client.sendall(reply)
        return
    view = memoryview(reply)
    held = False
    for start in range(0, len(view), pace.piece):
        piece = view[start : start + pace.piece]
        wait = pace.wait(time.monotonic(), len(piece))
        if wait > 0:
            held = True
            yield from traps.sleep(wait)
        yield from client.sendall(piece)
    if held:
        injector.counts["throttle"] += 1


def make_echo_handler(
    prefix: bytes | Callable[[Any], bytes] = DEFAULT_PREFIX,
    framing: Framing = "chunk",
    max_line: int = DEFAULT_MAX_LINE,
    *,
    faults: Injector | None = None,
) -> Callable[[Socket, Any], Generator[Any, Any, None]]:
    """A handler for :func:`yieldio.tcp_server` with these settings.

    ``prefix`` may be a function of the client's address: each connection's own prefix (see
    ``prefix_per_connection`` in :func:`echo_handler`). With ``faults`` that act on streams, every
    connection runs the loop with faults; without, exactly the ordinary loops.
    """
    make_framer(framing, b"", max_line)  # reject bad settings now, not at the first connection

    def prefix_for(address: Any) -> bytes:
        return prefix(address) if callable(prefix) else prefix

    handler: Callable[[Socket, Any], Generator[Any, Any, None]]
    if faults is not None and faults.faults.on_streams:

        def handler(client: Socket, address: Any) -> Generator[Any, Any, None]:
            return _echo_with_faults(client, make_framer(framing, prefix_for(address), max_line), faults)

    elif callable(prefix):

        def handler(client: Socket, address: Any) -> Generator[Any, Any, None]:
            own = prefix(address)
            return echo_handler(
                client, address, prefix=own, framing=framing, max_line=max_line, prefix_per_connection=True
            )

    else:
        fixed = prefix

        def handler(client: Socket, address: Any) -> Generator[Any, Any, None]:
            return echo_handler(client, address, prefix=fixed, framing=framing, max_line=max_line)

    handler.__qualname__ = "echo_handler"
    return handler
