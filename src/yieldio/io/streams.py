"""Buffered streams: lines, exact sizes and separators over any stream socket.

A socket gives whatever bytes have arrived; a protocol wants a line, or
exactly 4 bytes of length and then that many bytes of body. Between the two
sits a buffer, and that buffer is where the parsing lives, so it is kept
apart from the I/O: :class:`StreamBuffer` never touches a socket. It is fed
bytes (``feed``) and end of input (``feed_eof``); each of its readers
returns a result, or ``None`` for "not yet, feed me more", or raises. It can
be tested byte by byte, and reused with any source of bytes.

:class:`Stream` is then only a loop: try the buffer; if it needs more,
``recv`` once and feed what came. That loop is what makes every read safe
to cancel. The one wait is inside ``recv``, before any byte is taken from
the kernel; bytes that did arrive go into the buffer at once, before
anything else can happen. A read cancelled or timed out at its wait point
therefore loses nothing: whatever arrived before stays buffered for the
next read. Only the socket's public coroutine methods are used (``recv``,
``sendall``, ``close``), so a stream over a TLS socket works unchanged.

Decisions, and why:

- *Limits keep bytes.* ``readline`` and ``readuntil`` look for the
  separator within ``limit`` bytes (the separator included). When it is not
  there, :class:`LimitOverrunError` is raised and every byte stays buffered:
  the caller can ``read`` them, or give up, but nothing is silently dropped.
- *End of input hands the rest over.* ``readexactly`` and ``readuntil``
  cut short by the end of input raise :class:`IncompleteReadError` carrying
  the bytes that did arrive (``partial``), as asyncio does; those bytes are
  taken out of the buffer, since the exception delivers them. ``readline``
  returns a final line that has no newline, then ``b""``.
- *``read(-1)`` reads to the end of input*, as asyncio's does; its memory is
  bounded only by what the peer sends. ``read(n)`` returns what is buffered
  (up to ``n`` bytes) without waiting, and waits only when nothing is.
- *``write`` is ``sendall``.* It returns once the kernel has taken every
  byte. There is no user-space write buffer, so there is nothing to
  ``drain`` or ``flush``, and a peer that does not read holds the writer
  back (TCP backpressure) instead of making it buffer without bound. The
  price is a system call per ``write``: join small pieces before writing.
- *Linear memory work.* The buffer is a ``bytearray`` with a read offset;
  consumed bytes are cut off only when they are at least as many as the
  bytes that remain, so moving the rest never costs more than reading did.
  A separator search resumes where the last one stopped, so a long line
  trickling in byte by byte is scanned once, not once per byte.

One task reads a stream at a time (a second reader waiting on the same
socket is refused by the kernel); likewise one task writes.
"""

from __future__ import annotations

import types
from collections.abc import Generator
from typing import Any, Protocol, Self, TypeVar

DEFAULT_LIMIT = 64 * 1024
RECV_SIZE = 64 * 1024
Bytes = bytes | bytearray | memoryview
T = TypeVar("T")
Waits = Generator[Any, Any, T]


class IncompleteReadError(EOFError):
    """End of input came before the read was complete; ``partial`` holds the bytes that did arrive.

    ``expected`` is the size asked of ``readexactly``, or None for ``readuntil``.
    """

    def __init__(self, partial: bytes, expected: int | None) -> None:
        wanted = "a separator" if expected is None else f"{expected} bytes"
        super().__init__(f"end of input after {len(partial)} bytes; expected {wanted}")
        self.partial = partial
        self.expected = expected


class LimitOverrunError(Exception):
    """No ``separator`` within ``limit`` bytes. The bytes stay buffered: a following ``read`` returns them."""

    def __init__(self, separator: bytes, limit: int) -> None:
        super().__init__(f"no {separator!r} within {limit} bytes (the bytes stay buffered)")
        self.separator = separator
        self.limit = limit


class StreamBuffer:
    """The parsing half of a stream, without I/O: ``feed`` it bytes, ask it for lines, sizes, separators.

    Each reader returns its result, or ``None`` when more input is needed
    (never once ``feed_eof`` has been called), or raises.
    """

    __slots__ = ("_buffer", "_searched", "_searched_for", "_start", "eof")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0  # bytes before this offset are consumed, not yet cut off
        self._searched_for = b""
        self._searched = 0  # leading buffered bytes where no ``_searched_for`` begins
        self.eof = False

    def __len__(self) -> int:
        """How many bytes are buffered."""
        return len(self._buffer) - self._start

    def __repr__(self) -> str:
        return f"<StreamBuffer {len(self)} bytes{', eof' if self.eof else ''}>"

    def feed(self, data: Bytes) -> None:
        self._buffer += data

    def feed_eof(self) -> None:
        self.eof = True

    def read(self, n: int = -1) -> bytes | None:
        """Up to ``n`` buffered bytes; ``b""`` at end of input. ``n < 0``: everything, once input has ended."""
        available = len(self._buffer) - self._start
        if n < 0:
            return self._take(available) if self.eof else None
        if available or self.eof or n == 0:
            return self._take(min(n, available))
        return None

    def readexactly(self, n: int) -> bytes | None:
        """Exactly ``n`` bytes; raises IncompleteReadError (with the rest) if input ends first."""
        if n < 0:
            raise ValueError("readexactly needs a size of 0 or more")
        available = len(self._buffer) - self._start
        if available >= n:
            return self._take(n)
        if self.eof:
            raise IncompleteReadError(self._take(available), n)
        return None

    def readuntil(self, separator: bytes = b"\n", limit: int = DEFAULT_LIMIT) -> bytes | None:
        """The bytes up to and including ``separator``, at most ``limit`` bytes in all.

        Raises LimitOverrunError (keeping every byte) if the separator is not
        within ``limit`` bytes, IncompleteReadError (with the rest) if input
        ends without it.
        """
        size = self._through(separator, limit)
        if size:
            return self._take(size)
        if self.eof:
            raise IncompleteReadError(self._take(len(self)), None)
        return None

    def readline(self, limit: int = DEFAULT_LIMIT) -> bytes | None:
        """A line, newline included, of at most ``limit`` bytes; a last line may lack its newline; then ``b""``."""
        size = self._through(b"\n", limit)
        if size or self.eof:
            return self._take(size or len(self))
        return None

    def _through(self, separator: bytes, limit: int) -> int:
        """How many bytes up to and including the first ``separator``; 0 if it is not there (yet)."""
        if not separator or limit < len(separator):
            raise ValueError(f"the separator {separator!r} must be non-empty and fit in limit {limit}")
        if separator != self._searched_for:
            self._searched_for = separator
            self._searched = 0
        start = self._start
        found = self._buffer.find(separator, start + self._searched, start + limit)
        if found >= 0:
            return found + len(separator) - start
        available = len(self._buffer) - start
        if available >= limit:
            raise LimitOverrunError(separator, limit)
        self._searched = max(0, available - len(separator) + 1)  # a separator may straddle what comes next
        return 0

    def _take(self, size: int) -> bytes:
        buffer = self._buffer
        start = self._start
        stop = start + size
        end = len(buffer)
        if stop == end:  # everything buffered: nothing is left to move
            data = bytes(buffer) if start == 0 else bytes(buffer[start:])
            buffer.clear()
            self._start = 0
        else:
            data = bytes(buffer[start:stop])
            if stop >= end - stop:  # consumed at least as much as remains: moving the rest is paid for
                del buffer[:stop]
                self._start = 0
            else:
                self._start = stop
        self._searched = 0
        return data


class StreamSocket(Protocol):
    """What a :class:`Stream` needs of its socket, as :class:`yieldio.Socket` provides it (generator coroutines)."""

    def recv(self, maxsize: int, /) -> Waits[bytes]: ...
    def sendall(self, data: Any, /) -> Waits[None]: ...
    def close(self) -> None: ...


class Stream:
    """A buffered reader and writer over a stream socket (see the module doc for the semantics).

    Every blocking method works as ``await stream.readline()`` and as
    ``yield from stream.readline()``; ``async for line in stream`` reads
    lines until the end of input. Closing the stream closes the socket.
    """

    __slots__ = ("_recv_size", "_sock", "buffer")

    def __init__(self, sock: StreamSocket, *, recv_size: int = RECV_SIZE) -> None:
        if recv_size < 1:
            raise ValueError("recv_size must be at least 1")
        self._sock = sock
        self._recv_size = recv_size
        self.buffer = StreamBuffer()

    @property
    def socket(self) -> StreamSocket:
        """The socket underneath."""
        return self._sock

    def __repr__(self) -> str:
        return f"<yieldio.Stream over {self._sock!r}, {len(self.buffer)} bytes buffered>"

    @types.coroutine
    def _fill(self) -> Waits[None]:
        """The one wait of every read: a single recv, whose bytes go straight into the buffer."""
        data = yield from self._sock.recv(self._recv_size)
        if data:
            self.buffer.feed(data)
        else:
            self.buffer.feed_eof()

    @types.coroutine
    def read(self, n: int = -1) -> Waits[bytes]:
        """Up to ``n`` bytes (waiting only if none are buffered); ``b""`` at end of input; ``n < 0``: all until then."""
        buffer = self.buffer
        while (data := buffer.read(n)) is None:
            yield from self._fill()
        return data

    @types.coroutine
    def readexactly(self, n: int) -> Waits[bytes]:
        """Exactly ``n`` bytes; IncompleteReadError, carrying what came, if input ends first."""
        buffer = self.buffer
        while (data := buffer.readexactly(n)) is None:
            yield from self._fill()
        return data

    @types.coroutine
    def readuntil(self, separator: bytes = b"\n", limit: int = DEFAULT_LIMIT) -> Waits[bytes]:
        """Bytes up to and including ``separator`` (at most ``limit`` in all); see StreamBuffer.readuntil."""
        buffer = self.buffer
        while (data := buffer.readuntil(separator, limit)) is None:
            yield from self._fill()
        return data

    @types.coroutine
    def readline(self, limit: int = DEFAULT_LIMIT) -> Waits[bytes]:
        """A line, newline included (at most ``limit`` bytes); the last may lack it; ``b""`` at end of input."""
        buffer = self.buffer
        while (line := buffer.readline(limit)) is None:
            yield from self._fill()
        return line

    @types.coroutine
    def write(self, data: Bytes) -> Waits[None]:
        """Send all of ``data`` now: returns once the kernel has taken every byte (nothing to drain)."""
        yield from self._sock.sendall(data)

    sendall = write

    def close(self) -> None:
        """Close the socket; buffered bytes not yet read are dropped."""
        self._sock.close()

    def __aiter__(self) -> Self:
        return self

    @types.coroutine
    def __anext__(self) -> Waits[bytes]:
        line = yield from self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
