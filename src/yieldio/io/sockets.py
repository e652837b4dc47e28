"""Sockets whose blocking calls suspend only the calling task.

:class:`Socket` wraps a standard socket, made non-blocking. Every call is
*optimistic*: it tries the system call first and parks the task (yielding the
tutorial's ``('recv', fd)`` or ``('send', fd)``) only when the call reports
``BlockingIOError``. When data is already waiting, nothing is parked and no
poll happens at all.

Each method is a generator marked with :func:`types.coroutine`, so the same
object works with ``await sock.recv(n)`` and ``yield from sock.recv(n)``.
The two trap tuples are built once per socket and yielded as they are: the
wait costs no allocation.

Closing goes through :meth:`Socket.close`, which tells the running kernel
first: the kernel keeps epoll registrations between waits, and a descriptor
number closed behind its back could be reused by the next socket.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import types
from collections.abc import Callable, Generator
from typing import Any, Self, TypeVar, cast

from ..core.kernel import running_kernel

T = TypeVar("T")
Waits = Generator[Any, Any, T]


def _forget(fd: int) -> None:
    running = running_kernel()
    if running is not None:
        running.forget_fd(fd)


def format_address(address: Any) -> str:
    """``host:port`` for logs and messages (``[v6::addr]:port`` for IPv6); anything else as ``str``."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else address[0]
        return f"{host}:{address[1]}"
    return str(address)


class Socket:
    """A non-blocking socket with awaitable ``accept``, ``connect``, ``recv``, ``send``... .

    Every attribute it does not define passes through to the wrapped socket.
    """

    __slots__ = ("__weakref__", "_fd", "_sock", "bytes_in", "bytes_out", "readable", "writable")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = fd = sock.fileno()
        # The two waits, built once: a loop that handles its own reads may ``yield sock.readable``
        # (the tutorial's ``yield 'recv', sock``) and costs no allocation per wait.
        self.readable = ("recv", fd)
        self.writable = ("send", fd)
        self.bytes_in = 0  # counted for the task list and for idle timeouts
        self.bytes_out = 0
        _forget(fd)  # a new socket on a reused number: drop the old one's registration

    @property
    def socket(self) -> socket.socket:
        """The wrapped standard socket."""
        return self._sock

    def fileno(self) -> int:
        return self._fd

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def __repr__(self) -> str:
        return f"<yieldio.Socket {self._sock!r}>"

    @types.coroutine
    def wait_readable(self) -> Waits[None]:
        yield self.readable

    @types.coroutine
    def wait_writable(self) -> Waits[None]:
        yield self.writable

    @types.coroutine
    def recv(self, maxsize: int, flags: int = 0) -> Waits[bytes]:
        while True:
            try:
                data = self._sock.recv(maxsize, flags)
            except BlockingIOError:
                yield self.readable
            else:
                self.bytes_in += len(data)
                return data

    @types.coroutine
    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> Waits[int]:
        while True:
            try:
                received = self._sock.recv_into(buffer, nbytes, flags)
            except BlockingIOError:
                yield self.readable
            else:
                self.bytes_in += received
                return received

    @types.coroutine
    def send(self, data: Any, flags: int = 0) -> Waits[int]:
        while True:
            try:
                sent = self._sock.send(data, flags)
            except BlockingIOError:
                yield self.writable
            else:
                self.bytes_out += sent
                return sent

    @types.coroutine
    def sendall(self, data: Any) -> Waits[None]:
        """Send every byte of ``data``, waiting as often as the peer makes it necessary."""
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        self.bytes_out += sent
        if sent == (data.nbytes if type(data) is memoryview else len(data)):
            return
        view = memoryview(data).cast("B")[sent:]
        while view:
            yield self.writable
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                continue
            self.bytes_out += sent
            view = view[sent:]

    @types.coroutine
    def recvfrom(self, maxsize: int, flags: int = 0) -> Waits[tuple[bytes, Any]]:
        """A datagram and its sender's address."""
        while True:
            try:
                data, address = self._sock.recvfrom(maxsize, flags)
            except BlockingIOError:
                yield self.readable
            else:
                self.bytes_in += len(data)
                return data, address

    @types.coroutine
    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> Waits[tuple[int, Any]]:
        while True:
            try:
                received, address = self._sock.recvfrom_into(buffer, nbytes, flags)
            except BlockingIOError:
                yield self.readable
            else:
                self.bytes_in += received
                return received, address

    @types.coroutine
    def sendto(self, data: Any, address: Any) -> Waits[int]:
        while True:
            try:
                sent = self._sock.sendto(data, address)
            except BlockingIOError:
                yield self.writable
            else:
                self.bytes_out += sent
                return sent

    @types.coroutine
    def accept(self) -> Waits[tuple[Socket, Any]]:
        while True:
            try:
                client, address = self._sock.accept()
            except BlockingIOError:
                yield self.readable
            else:
                return Socket(client), address

    @types.coroutine
    def connect(self, address: Any) -> Waits[None]:
        try:
            self._sock.connect(address)
            return
        except BlockingIOError:
            pass
        yield self.writable
        error = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))

    def shutdown_write(self) -> None:
        """Half-close: the peer reads EOF, and we can still read what it sends."""
        self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            _forget(self._fd)
        self._sock.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@types.coroutine
def run_in_thread(function: Callable[..., T], *args: Any) -> Waits[T]:
    """Run a blocking call (a DNS lookup, say) on a thread; the task waits, the others run."""
    done_read, done_write = socket.socketpair()
    outcome: list[Any] = []

    def work() -> None:
        try:
            outcome.append((True, function(*args)))
        except BaseException as error:  # noqa: BLE001 - raised again in the waiting task
            outcome.append((False, error))
        try:
            done_write.send(b"!")
        except OSError:
            pass  # the waiting task was cancelled and closed its end
        done_write.close()

    done_read.setblocking(False)
    threading.Thread(target=work, name=f"yieldio: {getattr(function, '__name__', function)}", daemon=True).start()
    try:
        while not outcome:
            yield ("recv", done_read)
    finally:
        done_read.close()
    ok, value = outcome[0]
    if not ok:
        raise value
    return cast(T, value)


def _is_numeric(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host.split("%")[0])
            return True
        except OSError:
            pass
    return False


@types.coroutine
def open_connection(host: str, port: int) -> Waits[Socket]:
    """A connected :class:`Socket` to ``host:port`` (a name is looked up on a thread)."""
    if _is_numeric(host):
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    else:
        infos = yield from run_in_thread(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    last_error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = Socket(socket.socket(family, kind, proto))
        try:
            yield from sock.connect(address)
            return sock
        except OSError as error:
            sock.close()
            last_error = error
        except BaseException:  # cancelled or timed out: don't leave the socket to the garbage collector
            sock.close()
            raise
    raise last_error or OSError(errno.EHOSTUNREACH, f"no address for {host}:{port}")
