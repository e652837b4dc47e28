"""Sockets whose blocking calls suspend only the calling task.

:class:`Socket` wraps a standard socket, made non-blocking. Every call is
*optimistic*: it tries the system call first and parks the task (yielding the
tutorial's ``('recv', fd)`` or ``('send', fd)``) only when the call reports
``BlockingIOError``. When data is already waiting, nothing is parked and no
poll happens at all.

Each method is a generator marked with :func:`types.coroutine`, so the same
object works with ``await sock.recv(n)`` and ``yield from sock.recv(n)``.
The read wait's trap tuple is built once per socket and yielded as it is:
the common wait costs no allocation. The write wait's is built each time it
is needed (a 2-tuple): a socket rarely waits to write, and a
tuple kept for it would cost every idle connection 64 bytes.

Closing goes through :meth:`Socket.close`, which tells the running kernel
first: the kernel keeps epoll registrations between waits, and a descriptor
number closed behind its back could be reused by the next socket.

TLS
---

A TLS connection is the same :class:`Socket`: :meth:`Socket.start_tls` wraps
the standard socket in an :class:`ssl.SSLSocket` on the same descriptor (so
the kernel's registrations stay valid) and the methods go on calling it
optimistically. What changes is what "would block" means, in three ways:

- OpenSSL says :class:`ssl.SSLWantReadError` or :class:`ssl.SSLWantWriteError`
  instead of ``BlockingIOError``, and what it wants need not match the call. A
  read may need the socket *writable* (OpenSSL has to send something first: a
  TLS 1.2 renegotiation, an answer to a key update) and a write may need it
  *readable* (a handshake message must arrive before it can go on). Every
  method waits for what OpenSSL asked for, not for what the call is.
- Readable is not the only sign of data. OpenSSL decrypts a whole record (up to
  16 KiB) and hands out what was asked for; the rest sits in the SSL object
  (``pending()``), with nothing left in the kernel's buffer to wake the poll.
  The optimistic methods try first and find it; :meth:`Socket.wait_readable`
  looks at ``pending()`` before it parks. The other way round, a readable
  socket may hold half a record or a session ticket: the read then waits again.
- A write that had to wait must be repeated with the same bytes (OpenSSL has
  encrypted some of them already): :meth:`Socket.sendall` retries with the same
  view. Python does not enable partial TLS writes, so a TLS ``send`` sends all
  of its data or none.

A plain socket pays for none of this but one attribute test in
``wait_readable``: an ``except`` clause is free until an
exception is raised (Python 3.11's zero-cost ``try``), and ``BlockingIOError``
is matched first.

The handshake is a wait like the others, bounded by ``handshake_timeout``
(default :data:`HANDSHAKE_TIMEOUT`, 10 s) so a peer that connects and says
nothing cannot hold a task. :meth:`Socket.close` sends ``close_notify`` in one
attempt that never waits: close is synchronous (``finally`` blocks, context
managers and the server's bookkeeping call it, and none of them can park),
and a peer whose receive buffer is full is not reading anyway. There is no
half-close over TLS (TLS 1.2 has none, and the ssl module's only way to send
``close_notify``, ``unwrap()``, also reads and throws away whatever the peer
sent meanwhile), so :meth:`Socket.shutdown_write` refuses. A peer that closes
without ``close_notify`` reads as end of file, the ssl module's default:
protocols that must notice truncation frame their messages, as HTTP does.

Contexts yieldio makes (``ssl=True``) accept TLS 1.2 or newer, with the ssl
module's secure defaults. A context passed in that would accept anything
older is refused with ``ValueError``: Python's own contexts start at TLS 1.2,
so only one lowered on purpose is refused, and yieldio promises TLS 1.2.

Happy Eyeballs
--------------

A name often resolves to several addresses, an IPv6 one first, and an
unreachable IPv6 route would make a one-at-a-time connect wait minutes before
it tried IPv4. :func:`connect_staggered` follows RFC 8305: the addresses are
interleaved by family (the resolver's first family first), one attempt starts
every ``delay`` seconds (0.25 by default) or as soon as the previous one
fails, each in a task of its own; the first to connect wins and the others are
cancelled, which closes their sockets. One address is connected in the
caller's own task, with no extra task at all.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import socket
import threading
import types
from collections.abc import Callable, Generator, Sequence
from ssl import (
    SSLCertVerificationError,
    SSLContext,
    SSLError,
    SSLSocket,
    SSLWantReadError,
    SSLWantWriteError,
    TLSVersion,
    create_default_context,
)
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeAlias, TypeVar, cast

from ..core import traps
from ..core.kernel import Cancelled, Kernel, Task, current_kernel, running_kernel
from ..core.scopes import TaskTimeout, timeout_after

T = TypeVar("T")
Waits = Generator[Any, Any, T]
AddressInfo: TypeAlias = tuple[int, int, int, str, Any]  # as socket.getaddrinfo returns them

log = logging.getLogger("yieldio")
HANDSHAKE_TIMEOUT = 10.0  # seconds a TLS handshake may take
HAPPY_EYEBALLS_DELAY = 0.25  # seconds between connection attempts (RFC 8305's recommended value)


def _forget(fd: int) -> None:
    running = running_kernel()
    if running is not None:
        running.forget_fd(fd)


def bind_socket(
    address: tuple[str, int],
    kind: socket.SocketKind,
    *,
    reuse_address: bool = False,
    reuse_port: bool = False,
    dual_stack: bool = False,
) -> socket.socket:
    """A standard socket of ``kind`` bound to ``(host, port)`` (IPv4 or IPv6; '' is every IPv4
    address, as in the tutorial), closed again if binding fails.

    ``dual_stack`` makes an IPv6 socket take IPv4 peers too (``('::', port)`` is then every address
    of both families; IPv4 peers appear as ``::ffff:a.b.c.d``).
    """
    host, port = address[0], address[1]
    bind_address: Any
    if host == "":
        family, bind_address = socket.AF_INET, ("", port)
    else:
        family, _, _, _, bind_address = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind)
    try:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack and family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(bind_address)
    except BaseException:
        sock.close()
        raise
    return sock


def format_address(address: Any) -> str:
    """``host:port`` for logs and messages (``[v6::addr]:port`` for IPv6); a Unix socket's path as
    ``unix:PATH`` (``unix:@NAME`` for an abstract name; a client's socket usually has no name:
    ``unix:(unnamed)``); anything else as ``str``."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else address[0]
        return f"{host}:{address[1]}"
    if isinstance(address, (str, bytes)):
        path = os.fsdecode(address)
        if not path:
            return "unix:(unnamed)"
        return "unix:@" + path[1:] if path.startswith("\0") else "unix:" + path
    return str(address)


class DatagramTooLarge(OSError):
    """A datagram held more bytes than the buffer given to receive it; it was dropped whole.

    ``size`` is its real length, ``limit`` the buffer's, ``address`` its sender.
    """

    def __init__(self, size: int, limit: int, address: Any) -> None:
        super().__init__(
            errno.EMSGSIZE, f"a {size}-byte datagram from {format_address(address)} did not fit in {limit} bytes"
        )
        self.size = size
        self.limit = limit
        self.address = address


class Socket:
    """A non-blocking socket with awaitable ``accept``, ``connect``, ``recv``, ``send``... ; TLS or not.

    Every attribute it does not define passes through to the wrapped socket (over TLS, the
    :class:`ssl.SSLSocket`: ``version()``, ``cipher()``, ``getpeercert()``...).
    """

    # Few slots: an object's size counts in 16-byte steps, and every idle connection holds one.
    __slots__ = ("__weakref__", "_sock", "_tls", "bytes_in", "bytes_out", "readable")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        # The TLS layer once its handshake is done (one given already wrapped is trusted to have one):
        # what wait_readable asks about buffered plaintext, and what close() sends close_notify through.
        self._tls = sock if isinstance(sock, SSLSocket) else None
        fd = sock.fileno()
        # The read wait, built once (it also keeps the descriptor's number, for fileno()): a loop that
        # handles its own reads may ``yield sock.readable`` (the tutorial's ``yield 'recv', sock``) and
        # costs no allocation per wait.
        self.readable = ("recv", fd)
        self.bytes_in = 0  # counted for the task list and for idle timeouts (plaintext, over TLS)
        self.bytes_out = 0
        _forget(fd)  # a new socket on a reused number: drop the old one's registration

    @property
    def socket(self) -> socket.socket:
        """The wrapped standard socket (an :class:`ssl.SSLSocket` once TLS has started)."""
        return self._sock

    def fileno(self) -> int:
        return self.readable[1]

    @property
    def writable(self) -> tuple[str, int]:
        """The write wait, ``('send', fd)``: yield it to park until the socket is writable (made
        when asked for; see the module's docstring)."""
        return ("send", self.readable[1])

    if TYPE_CHECKING:  # for the type checker, every other attribute passes through (see _delegate)

        def __getattr__(self, name: str) -> Any: ...

    def __repr__(self) -> str:
        return f"<yieldio.Socket {self._sock!r}>"

    @property
    def is_tls(self) -> bool:
        """Whether the connection speaks TLS (``start_tls`` was done, or the socket came wrapped)."""
        return self._tls is not None

    @types.coroutine
    def wait_readable(self) -> Waits[None]:
        """Park until there is something to read; over TLS, return at once if OpenSSL holds plaintext."""
        if self._tls is not None and self._tls.pending():
            return
        yield self.readable

    @types.coroutine
    def wait_writable(self) -> Waits[None]:
        yield self.writable

    @types.coroutine
    def recv(self, maxsize: int, flags: int = 0) -> Waits[bytes]:
        while True:
            try:
                data = self._sock.recv(maxsize, flags)
            except (BlockingIOError, SSLWantReadError):
                yield self.readable
            except SSLWantWriteError:
                yield self.writable
            else:
                self.bytes_in += len(data)
                return data

    @types.coroutine
    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> Waits[int]:
        while True:
            try:
                received = self._sock.recv_into(buffer, nbytes, flags)
            except (BlockingIOError, SSLWantReadError):
                yield self.readable
            except SSLWantWriteError:
                yield self.writable
            else:
                self.bytes_in += received
                return received

    @types.coroutine
    def send(self, data: Any, flags: int = 0) -> Waits[int]:
        while True:
            try:
                sent = self._sock.send(data, flags)
            except (BlockingIOError, SSLWantWriteError):
                yield self.writable
            except SSLWantReadError:
                yield self.readable
            else:
                self.bytes_out += sent
                return sent

    @types.coroutine
    def sendall(self, data: Any) -> Waits[None]:
        """Send every byte of ``data``, waiting as often as the peer makes it necessary."""
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, SSLWantWriteError):
            sent = 0
        except SSLWantReadError:  # TLS: a record must come in before this one can go out
            yield from self.send_rest(memoryview(data).cast("B"), self.readable)
            return
        self.bytes_out += sent
        if sent == (data.nbytes if type(data) is memoryview else len(data)):
            return
        yield from self.send_rest(memoryview(data).cast("B")[sent:])

    @types.coroutine
    def send_rest(self, view: memoryview, wait: tuple[str, int] | None = None) -> Waits[None]:
        """The slow path of every send-it-all: wait (writable, or what the last attempt asked), send,
        until ``view`` is gone. ``bytes_out`` counts each piece as it goes, so a caller cancelled
        meanwhile can tell how much of ``view`` left: ``bytes_out`` minus its value before the call.
        """
        if wait is None:
            wait = self.writable
        while view:
            yield wait
            try:
                sent = self._sock.send(view)  # over TLS, after a wait: the same bytes again, as OpenSSL requires
            except (BlockingIOError, SSLWantWriteError):
                wait = self.writable
                continue
            except SSLWantReadError:
                wait = self.readable
                continue
            wait = self.writable
            self.bytes_out += sent
            view = view[sent:]

    @types.coroutine
    def recvfrom(self, maxsize: int, flags: int = 0) -> Waits[tuple[bytes, Any]]:
        """A datagram and its sender's address; ``DatagramTooLarge`` if it held more than ``maxsize`` bytes.

        On a datagram socket ``MSG_TRUNC`` is added: Linux then returns the datagram's real length
        (and Python sizes ``data`` to it), so one that did not fit is reported instead of silently cut.
        A stream socket is left alone: there ``MSG_TRUNC`` would mean "discard what you read".
        """
        if self._sock.type is not socket.SOCK_STREAM:
            flags |= socket.MSG_TRUNC
        while True:
            try:
                data, address = self._sock.recvfrom(maxsize, flags)
            except BlockingIOError:
                yield self.readable
            else:
                self.bytes_in += len(data)
                if len(data) > maxsize:
                    raise DatagramTooLarge(len(data), maxsize, address)
                return data, address

    @types.coroutine
    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> Waits[tuple[int, Any]]:
        """Receive a datagram into ``buffer``: (its length, its sender); ``DatagramTooLarge`` as :meth:`recvfrom`."""
        if self._sock.type is not socket.SOCK_STREAM:
            flags |= socket.MSG_TRUNC
        while True:
            try:
                received, address = self._sock.recvfrom_into(buffer, nbytes, flags)
            except BlockingIOError:
                yield self.readable
            else:
                self.bytes_in += received
                limit = nbytes or memoryview(buffer).nbytes
                if received > limit:
                    raise DatagramTooLarge(received, limit, address)
                return received, address

    @types.coroutine
    def sendto(self, data: Any, address: Any) -> Waits[int]:
        """Send one datagram; one too large for the network raises ``OSError(EMSGSIZE)``, never split."""
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

    # -- TLS (see the module's docstring)

    @types.coroutine
    def start_tls(
        self,
        context: SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> Waits[None]:
        """Upgrade this connection to TLS in place (STARTTLS): run the handshake, then every call is TLS.

        A client verifies the server's certificate against ``server_hostname`` (when the context
        says so, as :func:`ssl.create_default_context`'s does); a failed verification raises
        :class:`ssl.SSLCertVerificationError`, whose message names the reason. A handshake not
        finished within ``handshake_timeout`` seconds raises :class:`TaskTimeout`. Either way the
        connection is unusable: close it.
        """
        if isinstance(self._sock, SSLSocket):
            raise TypeError(f"start_tls needs a plain socket; {self!r} speaks TLS already")
        check_tls_version(context)
        plain = self._sock
        try:
            tls = context.wrap_socket(
                plain, server_side=server_side, server_hostname=server_hostname, do_handshake_on_connect=False
            )
        except BaseException:
            if plain.fileno() < 0:  # the ssl module had taken the descriptor over, then closed it
                _forget(self.fileno())
            raise
        self._sock = tls
        try:
            yield from timeout_after(handshake_timeout, self._handshake(tls))
        except TaskTimeout:
            raise TaskTimeout(f"TLS handshake not done after {handshake_timeout}s") from None
        self._tls = tls

    @types.coroutine
    def _handshake(self, tls: SSLSocket) -> Waits[None]:
        while True:
            try:
                tls.do_handshake()
                return
            except SSLWantReadError:
                yield self.readable
            except SSLWantWriteError:
                yield self.writable

    def shutdown_write(self) -> None:
        """Half-close: the peer reads EOF, and we can still read what it sends. Not over TLS (see the module doc)."""
        if isinstance(self._sock, SSLSocket):
            raise TypeError("no half-close over TLS (see yieldio.io.sockets): close() sends close_notify")
        self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Close the socket; over TLS, send ``close_notify`` first if that can be done without waiting."""
        if self._sock.fileno() >= 0:
            _forget(self.fileno())
            if self._tls is not None:
                # sends close_notify, never waiting on a non-blocking socket; if it could not be sent, or the
                # peer's is still to come, neither is worth waiting for
                with contextlib.suppress(OSError, ValueError):
                    self._tls.unwrap()
        self._sock.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class TLSRecords(Protocol):
    """OpenSSL's record layer as a TLS connection's owner calls it per message."""

    def pending(self) -> int: ...
    def read(self, size: int, buffer: memoryview, /) -> int: ...
    def write(self, data: Any, /) -> int: ...


_records_fallback_said = False


def tls_records(sock: SSLSocket) -> TLSRecords:
    """The C object inside ``sock`` (``SSLSocket._sslobj``, the ssl module's own private attribute,
    the same since Python 3.7), whose ``pending``, ``read`` and ``write`` are the SSLSocket's
    methods of those names without their Python-level checks for a closed socket: for the one
    task that owns a connection and calls them per message, those checks are pure cost.

    Should a Python rename or drop it, the SSLSocket itself serves (same methods, same results,
    a little slower), and a warning says so once; tests/test_tls.py fails on such a Python, so
    the change cannot go unnoticed.
    """
    records = getattr(sock, "_sslobj", None)
    if records is not None:
        return cast(TLSRecords, records)
    global _records_fallback_said
    if not _records_fallback_said:
        _records_fallback_said = True
        log.warning("ssl.SSLSocket has no _sslobj on this Python: TLS echo uses the slower public methods")
    return cast(TLSRecords, sock)


def error_reason(error: BaseException) -> str:
    """The plain reason of a connection's failure, for one line to a person: 'Connection refused',
    not the errno and the address again; a certificate's verification failure by its cause."""
    if isinstance(error, SSLCertVerificationError):
        return f"TLS certificate verification failed: {error.verify_message}"
    if isinstance(error, SSLError):
        return f"TLS: {error.reason or error}"
    if isinstance(error, socket.gaierror):
        return error.strerror or str(error)
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    return str(error) or type(error).__name__


def _delegate(name: str) -> property:
    def get(self: Socket) -> Any:
        return getattr(self._sock, name)

    return property(get, doc=f"The wrapped socket's ``{name}``.")


# Every public attribute of the standard socket and of an SSL socket that Socket does not define
# passes through to the wrapped one (``getsockname()``, ``setsockopt()``, ``family``, ``cipher()``...).
# Each is a property made here rather than a ``__getattr__``: a class with ``__getattr__`` makes
# CPython 3.11 slower at *every* attribute of its instances, ``client.bytes_in += n`` on the echo's
# per-message path included (benchmarks/micro.py measures attribute access).
for _name in sorted((set(dir(socket.socket)) | set(dir(SSLSocket))) - set(dir(Socket))):
    if not _name.startswith("_"):
        setattr(Socket, _name, _delegate(_name))


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
        with contextlib.suppress(OSError):  # the waiting task was cancelled and closed its end
            done_write.send(b"!")
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


def check_tls_version(context: SSLContext) -> None:
    """Refuse (``ValueError``) a context that would accept a protocol older than TLS 1.2."""
    minimum = context.minimum_version
    if minimum != TLSVersion.MAXIMUM_SUPPORTED and minimum < TLSVersion.TLSv1_2:
        raise ValueError(
            f"this SSLContext accepts {minimum.name}: yieldio speaks TLS 1.2 or newer "
            "(set context.minimum_version = ssl.TLSVersion.TLSv1_2)"
        )


def _client_context(ssl: SSLContext | bool | None) -> SSLContext | None:
    """What ``open_connection(ssl=...)`` means: None or False, no TLS; True, the ssl module's secure defaults."""
    if ssl is None or ssl is False:
        return None
    if ssl is True:
        context = create_default_context()
        context.minimum_version = TLSVersion.TLSv1_2
        return context
    check_tls_version(ssl)
    return ssl


# -- Happy Eyeballs (see the module's docstring)


def interleave_families(infos: Sequence[AddressInfo]) -> list[AddressInfo]:
    """``infos`` in RFC 8305's order: families alternate, starting with the first entry's.

    Within a family the resolver's order is kept: ``[v6a, v6b, v4a]`` becomes ``[v6a, v4a, v6b]``.
    """
    by_family: dict[int, list[AddressInfo]] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    rounds = itertools.zip_longest(*by_family.values())
    return [info for round_ in rounds for info in round_ if info is not None]


@types.coroutine
def _connect_to(info: AddressInfo) -> Waits[Socket]:
    family, kind, proto, _, address = info
    sock = Socket(socket.socket(family, kind, proto))
    try:
        yield from sock.connect(address)
    except BaseException:  # refused, cancelled or timed out: don't leave the socket to the garbage collector
        sock.close()
        raise
    return sock


class _Race:
    """Connection attempts under way at once, each a task; this is their supervisor.

    The kernel reports each attempt's end to :meth:`child_done`, which keeps the first socket
    that connected (closing any later one) and wakes the connecting task.
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.attempts: dict[Task, Any] = {}  # attempt still under way -> the address it tries
        self.winner: Socket | None = None
        self.errors: list[tuple[Any, BaseException]] = []  # (address, why it failed), in the order they failed
        self.waiting: list[Task] = []  # the connecting task, while it is parked
        self.over = False  # the connecting task has gone: a socket that connects now is closed at once

    def start(self, info: AddressInfo) -> None:
        address = info[4]
        task = self.kernel.spawn(_connect_to(info), name=f"connect {format_address(address)}")
        task.supervisor = self
        self.attempts[task] = address

    def child_done(self, task: Task) -> None:
        address = self.attempts.pop(task)
        if task.exception is None:
            if self.winner is None and not self.over:
                self.winner = task.result
            else:
                task.result.close()
        elif not isinstance(task.exception, Cancelled):
            self.errors.append((address, task.exception))
        self.wake()

    def wake(self, _: Any = None) -> None:
        if self.waiting:
            self.kernel.wake(self.waiting.pop())

    def failure(self) -> BaseException:
        """The first attempt's error, with every attempt's in its notes."""
        if not self.errors:
            return OSError(errno.ECANCELED, "every connection attempt was cancelled")
        error = self.errors[0][1]
        for address, each in self.errors:
            error.add_note(f"connecting to {format_address(address)}: {each}")
        return error

    def end(self) -> None:
        """The connecting task leaves, with the winner or not: cancel the others (which closes their sockets)."""
        self.over = True
        for task in self.attempts:
            self.kernel.cancel_nowait(task)
        if self.winner is not None:  # connected, but the connecting task was cancelled meanwhile
            self.winner.close()
            self.winner = None


@types.coroutine
def connect_staggered(infos: Sequence[AddressInfo], delay: float | None = HAPPY_EYEBALLS_DELAY) -> Waits[Socket]:
    """Connect to whichever of ``infos`` (``socket.getaddrinfo`` entries) answers first (RFC 8305).

    They are tried in :func:`interleave_families` order; a new attempt starts every ``delay``
    seconds, or at once when one fails (with ``delay=None``, only then: one at a time). The first
    socket to connect is returned, the other attempts are cancelled. If every attempt fails, the
    first error is raised, each attempt's error in its notes.
    """
    ordered = interleave_families(infos)
    if not ordered:
        raise OSError(errno.EHOSTUNREACH, "no address to connect to")
    if len(ordered) == 1:
        return (yield from _connect_to(ordered[0]))
    race = _Race(current_kernel())
    try:
        for info in ordered:
            race.start(info)
            timer = None if delay is None else race.kernel.call_later(delay, race.wake)
            try:
                yield from traps.park(race.waiting)  # until an attempt ends, or the delay is over
            finally:
                if timer is not None:
                    timer.cancel()
            if race.winner is not None:
                break
        while race.winner is None and race.attempts:
            yield from traps.park(race.waiting)
        winner, race.winner = race.winner, None
    finally:
        race.end()
    if winner is None:
        raise race.failure()
    return winner


@types.coroutine
def open_connection(
    host: str,
    port: int,
    *,
    ssl: SSLContext | bool | None = None,
    server_hostname: str | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    happy_eyeballs_delay: float | None = HAPPY_EYEBALLS_DELAY,
) -> Waits[Socket]:
    """A connected :class:`Socket` to ``host:port``.

    A name is looked up on a thread and its addresses raced as :func:`connect_staggered` does,
    ``happy_eyeballs_delay`` apart. With ``ssl`` (an :class:`ssl.SSLContext`, or True for
    :func:`ssl.create_default_context`) the TLS handshake is done before it returns, and the
    server's certificate checked against ``server_hostname`` (default: ``host``).
    """
    context = _client_context(ssl)
    if _is_numeric(host):
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    else:
        infos = yield from run_in_thread(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    sock = yield from connect_staggered(infos, happy_eyeballs_delay)
    if context is not None:
        try:
            yield from sock.start_tls(
                context, server_hostname=server_hostname or host, handshake_timeout=handshake_timeout
            )
        except BaseException:
            sock.close()
            raise
    return sock
