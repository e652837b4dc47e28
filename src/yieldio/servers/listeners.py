"""The echo server's listeners: all opened before any is served, then served by one kernel.

``yieldio serve`` may listen on TCP, TLS, UDP and Unix sockets at once
(:mod:`yieldio.io.urls` says how they are written). Two rules shape this module:

*Nothing half-started.* Every listener is opened, and the TLS certificate
loaded, before the first connection is accepted; if any of that fails (a
busy port, a missing directory, a key that does not match its certificate),
the ones already opened are closed again and the command ends with one line
saying which listener and why (:class:`SetupError`).

*One kernel, one task per listener.* Each listener's accept loop (or
datagram loop) is a task; connections are tasks of their own; SIGTERM
cancels them all, and each kind drains as it knows how: a stream connection
echoes what it had received (over TLS too, then close_notify), a datagram
loop answers the datagrams already waiting, and a Unix listener removes its
socket file when it closes.

An empty host (``tcp://:9000``) means every address of both families: an
IPv6 socket that also takes IPv4 (where the system has no IPv6, every IPv4
address).
"""

from __future__ import annotations

import errno
import os
import ssl
import types
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import Any

from ..core.scopes import TaskGroup
from ..io.sockets import Socket, format_address
from ..io.udp import udp_bind
from ..io.urls import ListenURL
from .echo import DEFAULT_MAX_LINE, DEFAULT_PREFIX, Framing, make_echo_handler
from .faults import NO_FAULTS, Faults, Injector
from .placeholders import Template
from .stream import DEFAULT_OPTIONS, ServerOptions, ServerStats, serve, tcp_listen
from .udp import DatagramCounters, serve_datagrams
from .unix import unix_listen


class SetupError(Exception):
    """The server cannot start as configured: one line for the user, nothing left listening."""


@dataclass
class Listener:
    """An opened listener: its URL (with the port it got), its socket, what it counts."""

    url: ListenURL
    sock: Socket
    stats: ServerStats | DatagramCounters

    @property
    def label(self) -> str:
        """How logs and metrics name it: ``127.0.0.1:9000`` for TCP, ``udp://[::]:9000``, ``unix:/path``."""
        if self.url.kind == "unix":
            return format_address(self.url.path)
        address = format_address(self.sock.getsockname())
        return address if self.url.kind == "tcp" else f"{self.url.kind}://{address}"


_GOT = Template.plain(DEFAULT_PREFIX)


@dataclass(frozen=True)
class EchoOptions:
    """What every listener's echo shares; each listener fills in its own ``{listener}``."""

    prefix: Template = _GOT  # before each reply; {client}: per connection or datagram
    framing: Framing = "chunk"  # of the stream listeners (a datagram is answered whole)
    max_line: int = DEFAULT_MAX_LINE
    banner: Template | None = None  # sent to each stream connection as it opens, as a line
    faults: Faults = NO_FAULTS
    server: ServerOptions = DEFAULT_OPTIONS  # for the stream listeners; its ssl for the tls:// ones only


def load_tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context (TLS 1.2 or newer, the ssl module's defaults) with this certificate and key."""
    for what, path in (("certificate", cert), ("key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            raise SetupError(f"cannot read the TLS {what} {path}: {error.strerror}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as error:
        if "KEY_VALUES_MISMATCH" in str(error):
            raise SetupError(f"the TLS key {key} does not belong to the certificate {cert}") from None
        raise SetupError(f"cannot load the TLS certificate {cert} and key {key}: {error.reason or error}") from None
    return context


def open_listener(url: ListenURL, *, backlog: int, reuse_port: bool) -> Listener:
    """Bind (and listen on) ``url``'s socket; OSError if the system refuses."""
    if url.kind == "unix":
        return Listener(url, unix_listen(url.path, backlog=backlog), ServerStats())
    if url.host != "":
        sock = _bind(url, url.host, backlog, reuse_port, dual_stack=False)
    else:
        try:
            sock = _bind(url, "::", backlog, reuse_port, dual_stack=True)
        except OSError as error:
            if error.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
            sock = _bind(url, "", backlog, reuse_port, dual_stack=False)  # no IPv6 here: every IPv4 address
    stats: ServerStats | DatagramCounters = DatagramCounters() if url.kind == "udp" else ServerStats()
    return Listener(replace(url, port=sock.getsockname()[1]), sock, stats)


def _bind(url: ListenURL, host: str, backlog: int, reuse_port: bool, dual_stack: bool) -> Socket:
    if url.kind == "udp":
        return udp_bind((host, url.port), reuse_port=reuse_port, dual_stack=dual_stack)
    return tcp_listen((host, url.port), backlog=backlog, reuse_port=reuse_port, dual_stack=dual_stack)


def open_listeners(urls: list[ListenURL], *, backlog: int, reuse_port: bool = False) -> list[Listener]:
    """Open every listener, or none: on the first failure the others are closed and SetupError raised."""
    opened: list[Listener] = []
    try:
        for url in urls:
            try:
                opened.append(open_listener(url, backlog=backlog, reuse_port=reuse_port))
            except (OSError, UnicodeError) as error:
                reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
                if isinstance(error, FileNotFoundError) and url.kind == "unix":
                    reason = f"no such directory: {os.path.dirname(url.path) or '.'}"
                raise SetupError(f"cannot listen on {url.display()}: {reason}") from None
    except BaseException:
        close_all(opened)
        raise
    return opened


def open_for_workers(urls: list[ListenURL], *, backlog: int, workers: int) -> list[list[Listener]]:
    """Every listener once per worker slot (``--workers``): the listeners of slot 0, 1, ... each.

    TCP, TLS and UDP listeners are opened ``workers`` times on one port (SO_REUSEPORT; the first
    one picks the port of a ``:0``); a Unix socket is opened once and shared by every slot. The
    caller holds them all for as long as it supervises, so that the port is never free between
    one worker and its replacement. All or none, as :func:`open_listeners`.
    """
    first = open_listeners(urls, backlog=backlog, reuse_port=True)
    slots = [first]
    try:
        ports = [listener.url for listener in first if listener.url.kind != "unix"]  # with the ports they got
        for _ in range(workers - 1):
            own = iter(open_listeners(ports, backlog=backlog, reuse_port=True))
            slots.append([listener if listener.url.kind == "unix" else next(own) for listener in first])
    except BaseException:
        for listeners in slots:
            close_all(listeners)
        raise
    return slots


def close_all(listeners: list[Listener]) -> None:
    for listener in listeners:
        listener.sock.close()


@types.coroutine
def serve_listener(listener: Listener, options: EchoOptions) -> Generator[Any, Any, None]:
    """Echo on one listener until cancelled; its socket is closed when it ends."""
    prefix = options.prefix.fill(listener.label)
    injector = Injector(options.faults)
    listener.stats.faults = injector.counts  # what the metrics read
    with listener.sock:
        if isinstance(listener.stats, DatagramCounters):
            yield from serve_datagrams(
                listener.sock,
                _datagram_echo(prefix, injector),
                counters=listener.stats,
                reply_delay=injector.delay if options.faults.delay else None,
            )
        else:
            server = replace(options.server, label=listener.label)
            if listener.url.kind != "tls":
                server = replace(server, ssl=None)
            if options.banner is not None:
                server = replace(server, banner=_by_client(options.banner.fill(listener.label), b"\n"))
            handler = make_echo_handler(
                _by_client(prefix) if prefix.per_client else prefix.render(),
                options.framing,
                options.max_line,
                faults=injector if options.faults.on_streams else None,
            )
            yield from serve(listener.sock, handler, server, stats=listener.stats)


def _by_client(template: Template, end: bytes = b"") -> Callable[[Any], bytes]:
    """``template`` as a function of the client's address (``{client}`` is its ``host:port``), ``end`` after it."""

    def render(address: Any) -> bytes:
        return template.render(format_address(address)) + end

    return render


def _datagram_echo(prefix: Template, injector: Injector) -> Callable[[bytes, Any], bytes | None]:
    """Each datagram answered with the prefix and itself (unless a fault drops it)."""
    drops = injector.faults.udp_drop > 0
    if prefix.per_client:

        def echo_to_each(data: bytes, address: Any) -> bytes | None:
            if drops and injector.drops():
                return None
            return prefix.render(format_address(address)) + data

        return echo_to_each
    fixed = prefix.render()
    if drops:

        def echo_or_drop(data: bytes, address: Any) -> bytes | None:
            return None if injector.drops() else fixed + data

        return echo_or_drop

    def echo(data: bytes, address: Any) -> bytes:
        return fixed + data

    return echo


async def serve_all(
    listeners: list[Listener], options: EchoOptions, metrics: tuple[Listener, Callable[[Socket, Any], Any]] | None
) -> None:
    """Every listener in one kernel, each an accept (or datagram) loop of its own; and the metrics endpoint."""
    async with TaskGroup() as group:
        for listener in listeners:
            await group.spawn(serve_listener(listener, options), name=f"listener {listener.label}")
        if metrics is not None:
            endpoint, handler = metrics
            await group.spawn(_serve_metrics(endpoint, handler), name=f"metrics {endpoint.label}")


_METRICS_OPTIONS = ServerOptions(max_clients=64, log_connections=False)  # scrapes are not news


@types.coroutine
def _serve_metrics(listener: Listener, handler: Callable[[Socket, Any], Any]) -> Generator[Any, Any, None]:
    with listener.sock:
        yield from serve(listener.sock, handler, _METRICS_OPTIONS)
