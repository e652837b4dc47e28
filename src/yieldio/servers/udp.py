"""UDP servers: one loop answers every datagram.

UDP has no connections, so there is nothing to start a task for: one task
reads a datagram, calls ``handler(data, address)``, sends back what the
handler returns (``None``: no reply) and reads the next. That order is the
server's backpressure, as "read only after the reply is written" is the TCP
echo's: datagrams that arrive while a handler runs wait in the socket's
receive buffer, and once that is full the system drops new ones, which is
what UDP promises anyway. Memory stays one receive buffer, however many
clients send.

The handler may be a plain function, which is the fast path (no generator,
no frame kept), or an ``async def`` / generator function whose awaitable
result is run to completion right there: it may sleep or talk to another
socket, and the server waits for it. A handler that needs datagrams handled
side by side spawns its own tasks.

Nothing is lost without a word. Each outcome is counted in a
:class:`DatagramCounters` and the unusual ones are logged: a datagram larger
than ``max_size`` (dropped whole, see :mod:`yieldio.io.udp`; the default
65,535 holds any UDP payload, so this only happens with a smaller limit), a
reply the system refuses to send (too large for UDP: ``EMSGSIZE``; it is
never split), a handler that raises or returns something that is not bytes.
Then the server goes on with the next datagram.

The loop calls the standard socket directly, as the echo handler does, and
reads as long as datagrams are waiting, but at most a batch per turn, so a
flood can't starve the other tasks.

``reply_delay`` makes each reply wait (a fault injected on purpose, see
:mod:`.faults`) without holding up the datagrams behind it: the reply is
sent by a timer, and at most :data:`MAX_DELAYED_BYTES` of replies wait at
once (more are dropped and counted); a shutdown sends those waiting at once.
"""

from __future__ import annotations

import errno
import logging
import socket
import types
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from ..core import traps
from ..core.kernel import Cancelled, Kernel, Timer, current_kernel
from ..io.sockets import Socket, format_address
from ..io.udp import DESTINATION_SPACE, ask_destination, reply_source, udp_bind

log = logging.getLogger("yieldio")

DatagramHandler = Callable[[bytes, Any], Any]
"""``handler(data, address)`` returns the reply (bytes-like), ``None``, or an awaitable or generator giving one."""

MAX_DATAGRAM = 65535  # larger than any UDP payload (65,507 bytes over IPv4, 65,527 over IPv6)
_DATAGRAMS_PER_TURN = 64  # then let the other tasks run
_DRAIN_LIMIT = 4096  # datagrams answered at most when cancelled: the buffer holds a few hundred
MAX_DELAYED_BYTES = 8 * 1024 * 1024  # replies waiting for their delay at once, at most


@dataclass(slots=True)
class DatagramCounters:
    """What a datagram server has done so far; pass one in to read it while the server runs."""

    datagrams_in: int = 0  # received, truncated ones included
    datagrams_out: int = 0  # replies sent
    truncated: int = 0  # larger than max_size: dropped, not handled
    dropped_replies: int = 0  # replies the system refused to send (EMSGSIZE and the like)
    handler_errors: int = 0  # the handler raised, or returned something that is not bytes
    bytes_in: int = 0  # of the datagrams handled
    bytes_out: int = 0  # of the replies sent
    faults: dict[str, int] = field(default_factory=dict)  # faults injected, by name (servers.faults)

    def __str__(self) -> str:
        return (
            f"{self.datagrams_in} datagrams in, {self.datagrams_out} out, {self.truncated} truncated, "
            f"{self.dropped_replies} dropped replies, {self.handler_errors} handler errors"
        )


@types.coroutine
def serve_datagrams(
    sock: Socket,
    handler: DatagramHandler,
    *,
    max_size: int = MAX_DATAGRAM,
    counters: DatagramCounters | None = None,
    reply_delay: Callable[[], float] | None = None,
) -> Generator[Any, Any, None]:
    """Answer every datagram arriving on ``sock`` with what ``handler(data, address)`` returns, forever.

    With ``reply_delay``, each reply is sent ``reply_delay()`` seconds later (see the module).

    On a socket bound to a wildcard address (``0.0.0.0``, ``::``) each reply leaves from the address
    its datagram was sent to (Linux; see :mod:`yieldio.io.udp`). When cancelled (a shutdown), it
    first answers the datagrams already waiting in the socket's buffer (those a plain function
    handler answers at once), as a stream server echoes what it had received before it closes.
    """
    if max_size < 1:
        raise ValueError("max_size must be at least 1")
    if counters is None:
        counters = DatagramCounters()
    buffer = bytearray(max_size)
    # Linux returns a datagram's real length with MSG_TRUNC, so one that did not fit is seen.
    flags = getattr(socket, "MSG_TRUNC", 0)
    handler_name = getattr(handler, "__qualname__", "handler")
    # Only a wildcard listener needs recvmsg and its ancillary data: a socket bound to one
    # address keeps the cheaper recvfrom_into and sendto. (udp_bind has asked already; a socket
    # bound elsewhere is asked now, and a datagram that came before is answered as sendto would.)
    space = DESTINATION_SPACE if ask_destination(sock.socket) else 0
    replies = _Replies(sock, counters, current_kernel())
    try:
        yield from _serve_forever(sock, handler, handler_name, max_size, buffer, flags, space, replies, reply_delay)
    except Cancelled:
        replies.send_delayed_now()
        _answer_waiting(sock, handler, max_size, counters, buffer, flags, space, replies)
        raise


def _serve_forever(
    sock: Socket,
    handler: DatagramHandler,
    handler_name: str,
    max_size: int,
    buffer: bytearray,
    flags: int,
    space: int,
    replies: _Replies,
    reply_delay: Callable[[], float] | None,
) -> Generator[Any, Any, None]:
    view = memoryview(buffer)
    counters = replies.counters
    raw = sock.socket
    receive = raw.recvfrom_into
    receive_message = raw.recvmsg_into
    buffers = [buffer]
    sendto = raw.sendto
    source: list[tuple[int, int, bytes]] = []  # the reply's ancillary data: from where it must leave
    while True:
        for _ in range(_DATAGRAMS_PER_TURN):
            try:
                if space:
                    size, ancillary, _, address = receive_message(buffers, space, flags)
                    source = reply_source(ancillary)
                else:
                    size, address = receive(buffer, 0, flags)
            except BlockingIOError:
                yield sock.readable
                break
            counters.datagrams_in += 1
            if size > max_size:
                counters.truncated += 1
                log.warning(
                    "udp: a %d-byte datagram from %s is over the %d-byte limit: dropped",
                    size,
                    format_address(address),
                    max_size,
                )
                continue
            counters.bytes_in += size
            try:
                reply = handler(bytes(view[:size]), address)
                if reply is None:
                    continue
                if type(reply) is not bytes:
                    reply = yield from _settle(reply)
                    if reply is None:
                        continue
            except Exception:
                counters.handler_errors += 1
                log.exception("udp: %s failed on a datagram from %s", handler_name, format_address(address))
                continue
            if reply_delay is not None:
                replies.later(reply_delay(), reply, address, source)
                continue
            try:
                counters.bytes_out += raw.sendmsg([reply], source, 0, address) if source else sendto(reply, address)
                counters.datagrams_out += 1
            except BlockingIOError:
                yield from replies.send_when_writable(reply, address, source)
            except OSError as error:
                replies.failed(reply, address, source, error)
        else:
            yield from traps.sleep(0)


class _Replies:
    """The replies' ways other than the fast one: waiting for room, retrying from the route's
    address, and counting what is dropped."""

    def __init__(self, sock: Socket, counters: DatagramCounters, kernel: Kernel) -> None:
        self.sock = sock
        self.counters = counters
        self.kernel = kernel
        self.delayed: dict[int, tuple[Timer, Any, Any, list[tuple[int, int, bytes]]]] = {}  # by a number of its own
        self.delayed_bytes = 0
        self.numbers = 0

    def later(self, seconds: float, reply: Any, address: Any, source: list[tuple[int, int, bytes]]) -> None:
        """Send ``reply`` in ``seconds``, from a timer; dropped and counted if too much waits already."""
        size = memoryview(reply).nbytes
        if self.delayed_bytes + size > MAX_DELAYED_BYTES:
            self.counters.dropped_replies += 1
            log.warning("udp: a delayed reply to %s dropped: %d bytes wait already", format_address(address), size)
            return
        self.numbers += 1
        timer = self.kernel.call_later(seconds, self._due, self.numbers)
        self.delayed[self.numbers] = (timer, reply, address, source)
        self.delayed_bytes += size

    def _due(self, number: int) -> None:
        _, reply, address, source = self.delayed.pop(number)
        self.delayed_bytes -= memoryview(reply).nbytes
        self.send_now(reply, address, source)

    def send_delayed_now(self) -> None:
        """A shutdown: the replies still waiting for their delay go now."""
        for number in list(self.delayed):
            self.delayed[number][0].cancel()
            self._due(number)

    def send_now(self, reply: Any, address: Any, source: list[tuple[int, int, bytes]]) -> None:
        """Send without waiting; a reply the system cannot take now is dropped and counted."""
        try:
            raw = self.sock.socket
            self.counters.bytes_out += (
                raw.sendmsg([reply], source, 0, address) if source else raw.sendto(reply, address)
            )
            self.counters.datagrams_out += 1
        except OSError as error:
            self.failed(reply, address, source, error)

    @types.coroutine
    def send_when_writable(
        self, reply: Any, address: Any, source: list[tuple[int, int, bytes]]
    ) -> Generator[Any, Any, None]:
        """The send buffer is full: wait (this server only) until the reply fits."""
        raw = self.sock.socket
        while True:
            yield self.sock.writable
            try:
                self.counters.bytes_out += (
                    raw.sendmsg([reply], source, 0, address) if source else raw.sendto(reply, address)
                )
            except BlockingIOError:
                continue
            except OSError as error:
                self.failed(reply, address, source, error)
                return
            self.counters.datagrams_out += 1
            return

    def failed(self, reply: Any, address: Any, source: list[tuple[int, int, bytes]], error: OSError) -> None:
        """The system refused the reply. From a destination it cannot send from (a broadcast or multicast
        address: EINVAL), it goes from the route's address instead; otherwise it is dropped and counted."""
        if source and error.errno == errno.EINVAL:
            self.send_now(reply, address, [])
            return
        self.counters.dropped_replies += 1
        log.warning(
            "udp: a %d-byte reply to %s dropped: %s", memoryview(reply).nbytes, format_address(address), error.strerror
        )


@types.coroutine
def _settle(result: Any) -> Generator[Any, Any, bytes | bytearray | memoryview | None]:
    """The reply a handler's result stands for: run it if it is a generator or awaitable; check its type."""
    if isinstance(result, Generator):  # a generator function's, or an @types.coroutine's
        result = yield from result
    elif isinstance(result, Awaitable):
        result = yield from result.__await__()
    if result is None or isinstance(result, (bytes, bytearray, memoryview)):
        return result
    raise TypeError(f"a datagram handler must return bytes or None, not {type(result).__name__}")


def _answer_waiting(
    sock: Socket,
    handler: DatagramHandler,
    max_size: int,
    counters: DatagramCounters,
    buffer: bytearray,
    flags: int,
    space: int,
    replies: _Replies,
) -> None:
    """Answer what is already in the receive buffer, without waiting for anything (bounded)."""
    raw = sock.socket
    source: list[tuple[int, int, bytes]] = []
    for _ in range(_DRAIN_LIMIT):
        try:
            if space:
                size, ancillary, _, address = raw.recvmsg_into([buffer], space, flags)
                source = reply_source(ancillary)
            else:
                size, address = raw.recvfrom_into(buffer, 0, flags)
        except OSError:  # BlockingIOError: nothing more is waiting
            return
        counters.datagrams_in += 1
        if size > max_size:
            counters.truncated += 1
            continue
        counters.bytes_in += size
        try:
            reply = handler(bytes(buffer[:size]), address)
        except Exception:
            counters.handler_errors += 1
            log.exception("udp: the handler failed on a datagram from %s", format_address(address))
            continue
        if isinstance(reply, (bytes, bytearray, memoryview)):
            replies.send_now(reply, address, source)


@types.coroutine
def udp_server(
    address: tuple[str, int],
    handler: DatagramHandler,
    *,
    max_size: int = MAX_DATAGRAM,
    reuse_port: bool = False,
    counters: DatagramCounters | None = None,
) -> Generator[Any, Any, None]:
    """Bind ``address`` and answer each datagram with what ``handler(data, address)`` returns.

    Logs where it listens (``listening on udp:HOST:PORT``) and, when it stops, its counters.
    """
    if counters is None:
        counters = DatagramCounters()
    sock = udp_bind(address, reuse_port=reuse_port)
    where = f"udp:{format_address(sock.getsockname())}"
    log.info("listening on %s", where)
    try:
        with sock:
            yield from serve_datagrams(sock, handler, max_size=max_size, counters=counters)
    finally:
        log.info("%s closed: %s", where, counters)
