"""Stream servers: a listening socket, an accept loop, one task per connection.

TCP, TLS and Unix stream sockets are all served here (:mod:`.unix` adds only
the socket file's life cycle); what a server does is set by one frozen
:class:`ServerOptions`, shared by :func:`serve`, :func:`tcp_server` and
:func:`~yieldio.servers.unix.unix_server`.

The shape is the tutorial's ``tcp_server``: wait until the listening socket
is readable, accept, start a task for the client, repeat. What a real server
adds is here, around that loop, never inside a connection's per-message path:

- each connection runs ``handler(client, address)`` in a task of its own,
  closed when the handler ends, however it ends; a handler's exception is
  logged by the kernel and touches no other connection;
- accept errors that mean "out of descriptors or memory" pause accepting
  instead of spinning, and recover by themselves: the accept loop waits until
  one of its connections closes (a descriptor is free again: it tries at
  once) or a back-off runs out (50 ms, doubling up to 250 ms, for descriptors
  freed elsewhere); a client that gave up in the backlog (ECONNABORTED) is
  simply skipped;
- ``max_clients`` stops accepting while that many connections are open (new
  clients wait in the listen backlog), ``idle_timeout`` closes a connection
  whose peer has sent nothing for that long, measured from the byte counter
  the socket keeps anyway (no per-message timer, no timer per connection);
- with ``ssl=context`` each connection's TLS handshake runs in the
  connection's own task, before the handler is called and within
  ``handshake_timeout``, so a slow or silent client never holds up the accept
  loop; a failed handshake is one warning naming the peer and the reason, and
  closes that connection alone. A plain server's connection task is still the
  handler itself: the handshake's wrapper exists only when ``ssl`` is given;
- with ``proxy_protocol=True`` each connection must begin with a PROXY
  protocol header (v1 or v2, :mod:`.proxy_protocol`), sent by the load
  balancer in front: it is taken off the stream (nothing more), and the
  handler is given the original client's address instead of the balancer's.
  A missing, malformed or late header closes that connection with one log
  line. (TLS comes after the header, as proxies send it.)
- a connection's opening is logged (INFO) when it is accepted; with
  ``quiet_probes``, for protocols where the client speaks first (the echo),
  once its first byte arrives instead: one that closes without sending a
  byte (a load balancer's or Kubernetes' TCP probe) is then logged at DEBUG
  only, and never reaches the handler. (Not the default: a server that
  greets its clients, a chat room say, must start its handler at once.)
  With ``banner`` the server greets each connection first (after its PROXY
  header and TLS handshake), before it waits for the client. Whatever
  runs before the handler (the greeting, the wait for the first byte, the
  PROXY header, the handshake) runs in a task of its own, which hands the
  connection over to a task running the handler: so the handler's task is
  still the handler itself, with no frame of ours to pass through per
  message. Log lines about a connection carry ``listener`` and ``client``
  (and, at its close, ``bytes_in`` and ``bytes_out``) for a structured log;
- a :class:`ServerStats` counts what happened (connections accepted and
  open, bytes in and out, accept pauses, failed handshakes, rejected PROXY
  headers) from what the server keeps anyway: bytes are summed from the
  sockets' own counters when someone asks, so the per-message path pays
  nothing for it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import time
import types
from collections.abc import Callable, Generator
from dataclasses import dataclass
from ssl import SSLContext
from sys import intern
from typing import Any, cast

from ..core import traps
from ..core.kernel import Cancelled, Kernel, Task, Timer, current_kernel
from ..core.scopes import TaskTimeout, timeout_after
from ..io.sockets import HANDSHAKE_TIMEOUT, Socket, bind_socket, check_tls_version, format_address
from .proxy_protocol import DEFAULT_TIMEOUT as PROXY_HEADER_TIMEOUT
from .proxy_protocol import ProxyProtocolError, read_proxy_header

log = logging.getLogger("yieldio")

Handler = Callable[[Socket, Any], Any]

# accept() failures that say the process or the system is out of something:
# pause, then try again.
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# accept() failures that concern one client that has already gone: skip it.
_CLIENT_GONE = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET}
_ACCEPTS_PER_TURN = 64  # then let the connections run, so a connect storm can't starve them
_LONGEST_PAUSE = 0.25  # the back-off's ceiling: a descriptor freed elsewhere is noticed within it


def tcp_listen(
    address: tuple[str, int], *, backlog: int = 1024, reuse_port: bool = False, dual_stack: bool = False
) -> Socket:
    """A bound, listening, non-blocking socket (IPv4 or IPv6, SO_REUSEADDR set; see ``bind_socket``)."""
    sock = bind_socket(address, socket.SOCK_STREAM, reuse_address=True, reuse_port=reuse_port, dual_stack=dual_stack)
    try:
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return Socket(sock)


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How a stream server treats its connections: one object for :func:`serve`, :func:`tcp_server` and
    :func:`~yieldio.servers.unix.unix_server`, so that each takes every option and none is copied by hand.

    - ``max_clients``: stop accepting while this many connections are open (new ones wait in the backlog);
    - ``idle_timeout``: close a connection that has sent nothing for this many seconds;
    - ``nodelay``: turn off Nagle's algorithm on each TCP connection, as asyncio does, so a reply goes
      out at once instead of waiting for the peer's (possibly delayed) acknowledgement;
    - ``ssl``: a server-side :class:`ssl.SSLContext` (TLS 1.2 or newer) makes it a TLS server; the
      handshake must be done within ``handshake_timeout`` seconds;
    - ``proxy_protocol``: each connection must begin with a PROXY protocol header, within
      ``proxy_timeout`` seconds; the handler then gets the original client's address;
    - ``log_connections``: the INFO lines of each connection opening and closing;
    - ``quiet_probes``: for a protocol where the client speaks first: the handler starts at the
      client's first byte, and a connection that closes without one (a health probe) is logged at
      DEBUG, not INFO;
    - ``label``: how the log lines about its connections name the listener (``listener``; default: its address);
    - ``banner``: ``banner(address)`` is sent to each connection once it opens (after its PROXY header
      and TLS handshake, before the client has said anything), ``address`` being the client's;
    - ``backlog``, ``reuse_port``: for the functions that open their own listening socket.
    """

    max_clients: int | None = None
    idle_timeout: float | None = None
    nodelay: bool = True
    ssl: SSLContext | None = None
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    proxy_protocol: bool = False
    proxy_timeout: float = PROXY_HEADER_TIMEOUT
    log_connections: bool = True
    quiet_probes: bool = False
    label: str | None = None
    banner: Callable[[Any], bytes] | None = None
    backlog: int = 1024
    reuse_port: bool = False


DEFAULT_OPTIONS = ServerOptions()


class ServerStats:
    """What one stream server has done, for metrics; the byte totals are read when asked for."""

    __slots__ = (
        "_closed_bytes_in",
        "_closed_bytes_out",
        "_connections",
        "accept_pauses",
        "accepted",
        "faults",
        "handshake_failures",
        "proxy_rejections",
    )

    def __init__(self) -> None:
        self.accepted = 0
        self.accept_pauses = 0
        self.handshake_failures = 0
        self.proxy_rejections = 0
        self.faults: dict[str, int] = {}  # faults injected, by name (servers.faults)
        self._closed_bytes_in = 0  # of the connections that have ended
        self._closed_bytes_out = 0
        self._connections: _Connections | None = None  # the open ones, while serving

    @property
    def open(self) -> int:
        return 0 if self._connections is None else self._connections.open

    @property
    def bytes_in(self) -> int:
        return self._closed_bytes_in + sum(client.bytes_in for client in self._open_clients())

    @property
    def bytes_out(self) -> int:
        return self._closed_bytes_out + sum(client.bytes_out for client in self._open_clients())

    def _open_clients(self) -> list[_Accepted]:
        return [] if self._connections is None else self._connections.open_clients()


class _Accepted(Socket):
    """A connection's socket, which also supervises the connection's task: it keeps the peer's
    address (accept's, or the original client's from a PROXY header) for the logs and the task
    table, and passes the task's end on to its server.

    So a server keeps no table from task to socket and address: for every open connection, a
    ``(socket, address)`` tuple and a dict entry less (some 90 bytes), while the socket stays in
    its 96-byte size class. To the handler it is a :class:`Socket` like any other.
    """

    __slots__ = ("peer", "server")

    def __init__(self, sock: socket.socket, server: _Connections, peer: Any) -> None:
        super().__init__(sock)
        self.server = server
        self.peer = peer

    def child_done(self, task: Task) -> None:
        self.server.closed(task, self)

    def connection_of(self, task: Task) -> tuple[str, int, int]:
        return format_address(self.peer), self.bytes_in, self.bytes_out


class _Connections:
    """The open connections of one server, and the accept loop's wait for a free slot.

    Each connection task's supervisor is its socket (:class:`_Accepted`),
    which passes the task's end on to :meth:`closed`: that closes the socket
    and logs. The open connections are not listed here but found among the
    kernel's tasks when asked for (metrics, the idle sweep): a list kept here
    would cost every connection an entry.

    Idle connections are found by one sweep every quarter of ``idle_timeout``
    (not a timer per connection, which would keep every closed connection in
    memory until its timer came due): a connection whose byte counter has not
    moved since ``idle_timeout`` ago is cancelled.
    """

    def __init__(
        self, kernel: Kernel, handler: Handler, options: ServerOptions, stats: ServerStats | None, label: str
    ) -> None:
        self.kernel = kernel
        self.label = label
        self.handler = handler
        self.handler_name = getattr(handler, "__qualname__", "handler")
        self.options = options
        self.max_clients = options.max_clients
        self.idle_timeout = options.idle_timeout
        self.nodelay = False
        self.tls = options.ssl
        self.proxy_protocol = options.proxy_protocol
        self.stats = stats or ServerStats()
        self.stats._connections = self
        self.log_connections = options.log_connections
        self.banner = options.banner
        # An opening is logged at the first byte (a probe sends none), which a task must wait for
        # before the handler runs; so must a greeting, a PROXY header or a TLS handshake. A server
        # that needs none of them (logging at WARNING, say) starts the handler at once.
        self.announcing = self.log_connections and log.isEnabledFor(logging.INFO)
        self.quiet_probes = options.quiet_probes
        self.opens_first = (
            (self.announcing and self.quiet_probes)
            or self.banner is not None
            or self.tls is not None
            or self.proxy_protocol
        )
        # connections whose opening was not logged at INFO (not yet, or never: a probe, a refused
        # PROXY header): their closing is logged at DEBUG, so a probe says nothing and a refusal one
        # line. Kept only when openings are announced: otherwise every closing is at DEBUG, and an
        # entry per connection would be memory for nothing.
        self.quiet: set[_Accepted] = set()
        self.open = 0  # connections whose task has not ended
        self.slot_waiters: list[Task] = []
        self.activity: dict[Task, tuple[int, float]] = {}  # task -> (bytes_in seen, when it last moved)
        self.sweeper: Timer | None = None
        if self.idle_timeout:
            self.sweeper = kernel.call_later(self.idle_timeout / 4, self.sweep)

    def start(self, sock: socket.socket, address: Any) -> None:
        # The handler's own generator or coroutine is the task (no wrapper
        # around it, which would cost a frame per message); what must come
        # first runs in a task of its own (opening), which hands over to it.
        # The cleanup runs in closed() when the kernel reports the task's end.
        client = _Accepted(sock, self, address)
        try:
            coro = self.opening(client, address) if self.opens_first else self.handler(client, address)
            task = self.kernel.spawn(coro, name=self.handler_name)  # the peer is in its socket, its supervisor
        except Exception:
            log.exception("connection %s: could not start %s", format_address(address), self.handler_name)
            client.close()
            return
        task.supervisor = client
        self.open += 1
        self.stats.accepted += 1
        if self.announcing:
            self.quiet.add(client)
        if not (self.quiet_probes or self.proxy_protocol):  # (a PROXY header names the client: after it)
            self.announce(client, "connection from %s", address)
        if self.idle_timeout:
            self.activity[task] = (client.bytes_in, time.monotonic())

    def fields(self, peer: Any) -> dict[str, Any]:
        """What a structured log line about a connection says besides its message."""
        return {"listener": self.label, "client": format_address(peer)}

    @types.coroutine
    def opening(self, client: _Accepted, address: Any) -> Generator[Any, Any, None]:
        """A connection's first task: the greeting (before anything else, unless a PROXY header or a TLS
        handshake must come first), the first byte (none: a probe, which ends here), the PROXY header,
        the TLS handshake; then it hands the connection over to a task running the handler. The PROXY
        timeout, or else the handshake timeout, runs from the start: a client that sends nothing is
        refused when it is over, as one that sends part of its header or handshake."""
        limit = self.options.proxy_timeout if self.proxy_protocol else self.options.handshake_timeout
        deadline = time.monotonic() + limit
        plain = self.tls is None and not self.proxy_protocol  # nothing to wait for but the client
        if plain:
            yield from self.greet(client, address)
        try:
            if self.quiet_probes:
                first = _first_byte(client)
                spoke = yield from (first if plain else timeout_after(limit, first))
            else:
                spoke = True  # (whatever it sends, or not, is the handshake's or the handler's business)
        except TaskTimeout:  # said as a header or a handshake that has not begun would be
            silent = (
                f"no complete PROXY header within {limit:g}s (0 bytes received)"
                if self.proxy_protocol
                else f"TLS handshake not done after {limit}s"
            )
            self.refuse(address, silent, header=self.proxy_protocol)
            return
        if not spoke:
            log.debug("connection from %s: closed without a byte", format_address(address), extra=self.fields(address))
            return
        if self.proxy_protocol:
            try:
                header = yield from read_proxy_header(client, max(deadline - time.monotonic(), 0.001))
            except (ProxyProtocolError, OSError) as error:
                self.refuse(address, str(error), header=True)
                return
            if header.source is not None:
                client.peer = header.source
                self.announce(client, "connection from %s via %s", header.source, format_address(address))
                address = header.source
            else:  # LOCAL (the proxy's own health check) or UNKNOWN: its own address
                self.announce(client, "connection from %s (PROXY %s)", address, header.command)
        else:
            self.announce(client, "connection from %s", address)
        if self.tls is not None:
            left = self.options.handshake_timeout if self.proxy_protocol else max(deadline - time.monotonic(), 0.001)
            try:
                yield from client.start_tls(self.tls, server_side=True, handshake_timeout=left)
            except OSError as error:  # ssl.SSLError, a reset, or TaskTimeout (a TimeoutError)
                reason = str(error) or type(error).__name__
                if isinstance(error, TaskTimeout):  # the whole time it had, not what was left after the first byte
                    reason = f"TLS handshake not done after {self.options.handshake_timeout}s"
                self.refuse(address, reason, header=False)
                return
        if not plain:
            yield from self.greet(client, address)
        me = yield from traps.current_task()
        try:
            task = self.kernel.spawn(self.handler(client, address), name=self.handler_name)
        except Exception:
            log.exception("connection %s: could not start %s", format_address(address), self.handler_name)
            return  # this task ends as the connection's: closed() closes it
        task.supervisor = client
        me.supervisor = None  # handed over: its end is not the connection's
        if self.idle_timeout:
            self.activity[task] = self.activity.pop(me, (client.bytes_in, time.monotonic()))

    @types.coroutine
    def greet(self, client: _Accepted, address: Any) -> Generator[Any, Any, None]:
        if self.banner is not None:
            with contextlib.suppress(ConnectionError):  # gone already: the next read will say so
                yield from client.sendall(self.banner(address))

    def announce(self, client: _Accepted, message: str, peer: Any, *args: Any) -> None:
        """The connection's opening, at INFO (once: with quiet_probes, when it has sent something)."""
        if self.announcing and client in self.quiet:
            self.quiet.discard(client)
            log.info(message, format_address(peer), *args, extra=self.fields(peer))

    def refuse(self, address: Any, reason: str, *, header: bool) -> None:
        """A PROXY ``header`` or a TLS handshake that failed, or never came: one warning, and counted."""
        if header:
            self.stats.proxy_rejections += 1
            log.warning("connection %s: rejected: %s", format_address(address), reason, extra=self.fields(address))
        else:
            self.stats.handshake_failures += 1
            log.warning(
                "connection %s: TLS handshake failed: %s", format_address(address), reason, extra=self.fields(address)
            )

    def open_clients(self) -> list[_Accepted]:
        """The sockets of the open connections; safe to call from another thread (a metrics scrape):
        the kernel copies its task list in one C call."""
        return [c for task in self.kernel.tasks() if isinstance(c := task.supervisor, _Accepted) and c.server is self]

    def closed(self, task: Task, client: _Accepted) -> None:
        """A connection's task has ended (the kernel told its socket, which tells us)."""
        self.open -= 1
        address = client.peer
        self.stats._closed_bytes_in += client.bytes_in
        self.stats._closed_bytes_out += client.bytes_out
        client.close()
        self.activity.pop(task, None)
        if self.slot_waiters:
            self.kernel.wake_all(self.slot_waiters)
        error = task.exception
        if error is not None and not isinstance(error, Cancelled):
            log.error("connection %s: %r failed", format_address(address), task.name, exc_info=error)
        fields = self.fields(address) | {"bytes_in": client.bytes_in, "bytes_out": client.bytes_out}
        if not self.announcing or client in self.quiet:
            self.quiet.discard(client)
            log.debug("connection closed %s", format_address(address), extra=fields)
        else:
            log.info("connection closed %s", format_address(address), extra=fields)

    def sweep(self, _: Any = None) -> None:
        assert self.idle_timeout
        now = time.monotonic()
        for task, (seen, since) in list(self.activity.items()):
            client = cast(_Accepted, task.supervisor)  # as start() set it
            received = client.bytes_in
            if received != seen:
                self.activity[task] = (received, now)
            elif now - since >= self.idle_timeout:
                log.info(
                    "closing %s: idle for %ss",
                    format_address(client.peer),
                    self.idle_timeout,
                    extra=self.fields(client.peer),
                )
                del self.activity[task]
                self.kernel.cancel_nowait(task)
        self.sweeper = self.kernel.call_later(self.idle_timeout / 4, self.sweep)

    def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        self.stats._connections = None


@types.coroutine
def _first_byte(client: Socket) -> Generator[Any, Any, bool]:
    """Wait until the client has sent its first byte (True; it stays unread), or has closed or reset
    the connection without one (False)."""
    raw = client.socket
    while True:
        yield client.readable
        try:
            return bool(raw.recv(1, socket.MSG_PEEK))
        except BlockingIOError:
            continue
        except OSError:
            return False


@types.coroutine
def serve(
    listener: Socket,
    handler: Handler,
    options: ServerOptions = DEFAULT_OPTIONS,
    *,
    stats: ServerStats | None = None,
) -> Generator[Any, Any, None]:
    """Accept connections on ``listener`` forever, one task each running ``handler(client, address)``.

    Over TLS (``options.ssl``) ``handler`` gets a :class:`Socket` that reads and writes plaintext,
    once the handshake is done. ``stats`` is counted into, for whoever reports on the server.
    """
    if options.ssl is not None:
        check_tls_version(options.ssl)
    label = options.label or format_address(listener.getsockname())
    connections = _Connections(current_kernel(), handler, options, stats, label)
    connections.nodelay = options.nodelay and listener.family in (socket.AF_INET, socket.AF_INET6)
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
                    connections.stats.accept_pauses += 1
                    where = format_address(listener.getsockname())  # several listeners may share the log
                    log.warning("accept failed (%s) on %s: pausing until resources free up", error.strerror, where)
                pause = min(pause * 2 or 0.05, _LONGEST_PAUSE)
                yield from _until_a_connection_ends(connections, pause)
                break
            if pause:
                log.info("accepting again")
                pause = 0.0
            if connections.nodelay:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if type(address) is tuple and type(address[0]) is str:  # one string per client host, not per connection
                address = (intern(address[0]), *address[1:])
            connections.start(client, address)
            if max_clients is not None and connections.open >= max_clients:
                break
        else:
            yield from traps.sleep(0)


@types.coroutine
def _until_a_connection_ends(connections: _Connections, seconds: float) -> Generator[Any, Any, None]:
    """Out of descriptors: wait until one of this server's connections closes (its descriptor is
    free again: try at once), or ``seconds`` pass (something else may have freed one)."""
    with contextlib.suppress(TaskTimeout):
        yield from timeout_after(seconds, traps.park(connections.slot_waiters))


@types.coroutine
def tcp_server(
    address: tuple[str, int],
    handler: Handler,
    options: ServerOptions = DEFAULT_OPTIONS,
    *,
    stats: ServerStats | None = None,
) -> Generator[Any, Any, None]:
    """Listen on ``address`` and serve each connection with ``handler(client, address)`` (see :func:`serve`)."""
    listener = tcp_listen(address, backlog=options.backlog, reuse_port=options.reuse_port)
    log.info("listening on %s%s", format_address(listener.getsockname()), " (TLS)" if options.ssl is not None else "")
    with listener:
        yield from serve(listener, handler, options, stats=stats)
