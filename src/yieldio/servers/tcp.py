"""TCP servers: a listening socket, an accept loop, one task per connection.

The shape is the tutorial's ``tcp_server``: wait until the listening socket
is readable, accept, start a task for the client, repeat. What a real server
adds is here, around that loop, never inside a connection's per-message path:

- each connection runs ``handler(client, address)`` in a task of its own,
  closed when the handler ends, however it ends; a handler's exception is
  logged by the kernel and touches no other connection;
- accept errors that mean "out of descriptors or memory" pause accepting
  with a back-off instead of spinning, and recover by themselves; a client
  that gave up in the backlog (ECONNABORTED) is simply skipped;
- ``max_clients`` stops accepting while that many connections are open (new
  clients wait in the listen backlog), ``idle_timeout`` closes a connection
  whose peer has sent nothing for that long, measured from the byte counter
  the socket keeps anyway (no per-message timer, no timer per connection);
- with ``ssl=context`` each connection's TLS handshake runs in the
  connection's own task, before the handler is called and within
  ``handshake_timeout``, so a slow or silent client never holds up the accept
  loop; a failed handshake is one warning naming the peer and the reason, and
  closes that connection alone. A plain server's connection task is still the
  handler itself: the handshake's wrapper exists only when ``ssl`` is given.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
import types
from collections.abc import Callable, Generator
from ssl import SSLContext
from typing import Any

from ..core import traps
from ..core.kernel import Cancelled, Kernel, Task, Timer, current_kernel
from ..io.sockets import HANDSHAKE_TIMEOUT, Socket, check_tls_version, format_address

log = logging.getLogger("yieldio")

Handler = Callable[[Socket, Any], Any]

# accept() failures that say the process or the system is out of something:
# pause, then try again.
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# accept() failures that concern one client that has already gone: skip it.
_CLIENT_GONE = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET}
_ACCEPTS_PER_TURN = 64  # then let the connections run, so a connect storm can't starve them


def resolve(host: str, port: int) -> tuple[int, Any]:
    """(family, address) to bind; '' means every IPv4 address, as in the tutorial."""
    if host == "":
        return socket.AF_INET, ("", port)
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    return family, address


def tcp_listen(address: tuple[str, int], *, backlog: int = 1024, reuse_port: bool = False) -> Socket:
    """A bound, listening, non-blocking socket (IPv4 or IPv6, SO_REUSEADDR set)."""
    host, port = address[0], address[1]
    family, bind_address = resolve(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(bind_address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return Socket(sock)


class _Connections:
    """The open connections of one server, and the accept loop's wait for a free slot.

    It is the supervisor of every connection task: the kernel reports each
    one's end to :meth:`child_done`, which closes the socket and logs; the
    task table asks :meth:`connection_of` for the peer and byte counts.

    Idle connections are found by one sweep every quarter of ``idle_timeout``
    (not a timer per connection, which would keep every closed connection in
    memory until its timer came due): a connection whose byte counter has not
    moved since ``idle_timeout`` ago is cancelled.
    """

    def __init__(
        self,
        kernel: Kernel,
        handler: Handler,
        max_clients: int | None,
        idle_timeout: float | None,
        tls: SSLContext | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ):
        self.kernel = kernel
        self.handler = handler
        self.handler_name = getattr(handler, "__qualname__", "handler")
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.nodelay = False
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.clients: dict[Task, tuple[Socket, Any]] = {}  # connection task -> (its socket, peer address)
        self.slot_waiters: list[Task] = []
        self.activity: dict[Task, tuple[int, float]] = {}  # task -> (bytes_in seen, when it last moved)
        self.sweeper: Timer | None = None
        if idle_timeout:
            self.sweeper = kernel.call_later(idle_timeout / 4, self.sweep)

    def start(self, client: Socket, address: Any) -> None:
        # The handler's own generator or coroutine is the task (no wrapper
        # around it, which would cost a frame per message); the cleanup runs
        # in child_done when the kernel reports the task's end.
        peer = format_address(address)
        try:
            coro = self.handler(client, address) if self.tls is None else self.handshake_first(client, address)
            task = self.kernel.spawn(coro, name=f"{self.handler_name} {peer}")
        except Exception:
            log.exception("connection %s: could not start %s", peer, self.handler_name)
            client.close()
            return
        task.supervisor = self
        self.clients[task] = (client, address)
        log.info("connection from %s", peer)
        if self.idle_timeout:
            self.activity[task] = (client.bytes_in, time.monotonic())

    @types.coroutine
    def handshake_first(self, client: Socket, address: Any) -> Generator[Any, Any, Any]:
        """A TLS connection's task: the handshake, then the handler, which a failed handshake never reaches."""
        assert self.tls is not None
        try:
            yield from client.start_tls(self.tls, server_side=True, handshake_timeout=self.handshake_timeout)
        except OSError as error:  # ssl.SSLError, a reset, or TaskTimeout (a TimeoutError)
            reason = str(error) or type(error).__name__
            log.warning("connection %s: TLS handshake failed: %s", format_address(address), reason)
            return None
        return (yield from traps.run_awaitable(self.handler(client, address)))

    @property
    def open(self) -> int:
        return len(self.clients)

    def child_done(self, task: Task) -> None:
        client, address = self.clients.pop(task)
        client.close()
        self.activity.pop(task, None)
        if self.slot_waiters:
            self.kernel.wake_all(self.slot_waiters)
        error = task.exception
        if error is not None and not isinstance(error, Cancelled):
            log.error("connection %s: %r failed", format_address(address), task.name, exc_info=error)
        log.info("connection closed %s", format_address(address))

    def connection_of(self, task: Task) -> tuple[str, int, int] | None:
        if task not in self.clients:
            return None
        client, address = self.clients[task]
        return format_address(address), client.bytes_in, client.bytes_out

    def sweep(self, _: Any = None) -> None:
        assert self.idle_timeout
        now = time.monotonic()
        for task, (seen, since) in list(self.activity.items()):
            client, address = self.clients[task]
            received = client.bytes_in
            if received != seen:
                self.activity[task] = (received, now)
            elif now - since >= self.idle_timeout:
                log.info("closing %s: idle for %ss", format_address(address), self.idle_timeout)
                del self.activity[task]
                self.kernel.cancel_nowait(task)
        self.sweeper = self.kernel.call_later(self.idle_timeout / 4, self.sweep)

    def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()


@types.coroutine
def serve(
    listener: Socket,
    handler: Handler,
    *,
    max_clients: int | None = None,
    idle_timeout: float | None = None,
    nodelay: bool = True,
    ssl: SSLContext | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> Generator[Any, Any, None]:
    """Accept connections on ``listener`` forever, one task each running ``handler(client, address)``.

    ``nodelay`` turns off Nagle's algorithm on each TCP connection, as asyncio does: a reply
    goes out at once instead of waiting for the peer's (possibly delayed) acknowledgement.

    ``ssl`` (a server-side :class:`ssl.SSLContext`, accepting TLS 1.2 or newer) makes it a TLS
    server: ``handler`` gets a :class:`Socket` that reads and writes plaintext, once the
    handshake is done; a handshake not done within ``handshake_timeout`` seconds fails.
    """
    if ssl is not None:
        check_tls_version(ssl)
    connections = _Connections(current_kernel(), handler, max_clients, idle_timeout, ssl, handshake_timeout)
    connections.nodelay = nodelay and listener.family in (socket.AF_INET, socket.AF_INET6)
    try:
        yield from _accept_forever(listener, connections)
    finally:
        connections.stop()


def _accept_forever(listener: Socket, connections: _Connections) -> Generator[Any, Any, None]:
    max_clients = connections.max_clients
    accept = listener.socket.accept
    pause = 0.0
    while True:
        if max_clients is not None and connections.open >= max_clients:
            log.warning("%d clients connected (--max-clients): not accepting until one leaves", connections.open)
            while connections.open >= max_clients:
                yield from traps.park(connections.slot_waiters)
            log.info("accepting again (%d clients connected)", connections.open)
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                client, address = accept()
            except BlockingIOError:
                yield from listener.wait_readable()
                break
            except OSError as error:
                if error.errno in _CLIENT_GONE:
                    continue
                if error.errno not in _EXHAUSTED:
                    raise
                if not pause:
                    log.warning("accept failed (%s): pausing until resources free up", error.strerror)
                pause = min(pause * 2 or 0.05, 1.0)
                yield from traps.sleep(pause)
                break
            if pause:
                log.info("accepting again")
                pause = 0.0
            if connections.nodelay:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connections.start(Socket(client), address)
            if max_clients is not None and connections.open >= max_clients:
                break
        else:
            yield from traps.sleep(0)


@types.coroutine
def tcp_server(
    address: tuple[str, int],
    handler: Handler,
    *,
    backlog: int = 1024,
    reuse_port: bool = False,
    max_clients: int | None = None,
    idle_timeout: float | None = None,
    nodelay: bool = True,
    ssl: SSLContext | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> Generator[Any, Any, None]:
    """Listen on ``address`` and serve each connection with ``handler(client, address)`` (over TLS with ``ssl``)."""
    listener = tcp_listen(address, backlog=backlog, reuse_port=reuse_port)
    log.info("listening on %s%s", format_address(listener.getsockname()), " (TLS)" if ssl is not None else "")
    with listener:
        yield from serve(
            listener,
            handler,
            max_clients=max_clients,
            idle_timeout=idle_timeout,
            nodelay=nodelay,
            ssl=ssl,
            handshake_timeout=handshake_timeout,
        )
