"""Load: many connections sending echo messages, every echo checked and timed, on one kernel.

Each connection is a task of its own, the tutorial's shape from the other side: send a
message, wait until the socket is readable, read the echo, check it, repeat. What it
measures is kept in a :class:`Tally` as plain counters and a growing array of latencies
(microseconds); turning those into a histogram, a report or a live view is the command's
business (:mod:`yieldio.cli.load`), so the per-request path pays for one array append.

*Closed loop* (the default): a connection sends its next message when the previous echo
is back. Latency is the time from the send to the last byte of the echo. A server that
stalls for a second is then sampled once per connection during the stall, and the
percentiles hide it: the coordinated omission Gil Tene named.

*Open loop* (``rate``): every request has an intended send time, ``start + i / rate``
(spread over the connections), and its latency is measured from that time, not from when
it could actually be sent (wrk2's correction). A connection still waiting for an echo
sends its next request late, and that lateness is part of the next latency: a stall shows
in every request that should have been sent during it.

*Datagrams* carry their sequence number in their first 8 bytes; a sender and a receiver
task per socket keep them apart, so losses, duplicates, reordering and late arrivals are
counted one by one (a datagram not answered within ``timeout`` is lost; if its echo
comes later after all, it is late instead).

Faults are counted by kind and the load goes on: a connection whose echo was wrong, cut
short, reset or too slow is closed and opened again (a wrong echo leaves the stream at
an unknown place). A connection that cannot be opened again is lost for the rest of the
run; when every connection is lost, the run ends.
"""

from __future__ import annotations

import socket
import ssl
import time
import types
from array import array
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

from ..compiled import RequestChain as CompiledRequestChain
from ..core import traps
from ..core.kernel import Kernel, Task, current_kernel
from ..core.scopes import TaskGroup
from ..io.buffers import receive_buffer
from ..io.sockets import AddressInfo, Socket, connect_staggered, error_reason, run_in_thread
from ..io.unix import open_unix_connection
from ..io.urls import ListenURL
from ..servers.proxy_protocol import build_proxy_header
from .echo_check import SEQUENCE, EchoCheck, Framing, Messages, Mismatch

# socket.recv(n) allocates n bytes first: above glibc's mmap threshold (128 KiB) each call would map
# and unmap fresh pages, many times the cost of the read itself
RECV_SIZE = 64 * 1024
WAKE_LEAD = 20e-6  # open loop: how much earlier than a send is due its task wakes (see _turn)
EXAMPLES_KEPT = 5  # the first few faults are described, the rest only counted
DOCUMENTATION_SOURCE = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}  # RFC 5737, RFC 3849


class RequestChain(Protocol):
    """One connection's requests while their echoes come back exact: an iterator a task delegates
    to (``yield from chain``), which yields only its wait to read. ``RequestChain`` in
    ``_speedups.c`` says what it does and where it stops; :class:`_PureRequestChain` is the same
    in Python."""

    number: int  # the request on the wire
    began: float  # when its latency began
    left: int  # requests it may still send itself (-1: no limit)
    done: int  # echoes back on the connection (the chain adds the exact ones)
    sent: int  # after a stop: how much of a next request went out, in part (-1: none)
    reply: bytes | None  # after a stop: a read that was not the exact echo

    def __iter__(self) -> Iterator[tuple[str, int]]: ...


def _request_chain(load: Load, client: Socket, index: int) -> RequestChain:
    if CompiledRequestChain is None or client_loop(load.plan) == "pure":
        return _PureRequestChain(client.socket, client.readable, load, index)
    return CompiledRequestChain(client.fileno(), client.readable, load, index)


def client_loop(plan: LoadPlan) -> Literal["compiled", "pure"]:
    """Which per-request loop a plan's connections run: the compiled chain serves plain streams only."""
    plain_stream = plan.target.kind in ("tcp", "unix") and plan.ssl is None
    return "compiled" if plain_stream and CompiledRequestChain is not None else "pure"


class LoadError(Exception):
    """The load cannot start (an unreachable target, a failed TLS verification): one line for the user."""


class RequestTimedOut(Exception):
    """Thrown into a connection whose echo has not come back within the timeout."""


@dataclass(frozen=True)
class LoadPlan:
    """What to send where, and how: one object for the whole run (each worker gets its share)."""

    target: ListenURL
    connections: int = 10
    size: int = 1024
    requests: int | None = None  # in all; None: until ``duration`` has passed
    duration: float = 10.0
    warmup: float = 1.0  # not counted (duration runs only)
    timeout: float = 5.0
    rate: float | None = None  # requests/s over all connections: open loop
    prefix: bytes = b"GOT:"
    framing: Framing = "chunk"
    ssl: ssl.SSLContext | None = None
    server_hostname: str | None = None
    proxy_version: Literal[1, 2] | None = None
    proxy_source: tuple[str, int] | None = None
    connect_rate: float | None = None  # new connections per second
    churn: int | None = None  # a new connection every this many requests
    seed: int = 0

    @property
    def mode(self) -> Literal["open", "closed"]:
        return "closed" if self.rate is None else "open"


class Tally:
    """What a load has measured so far; the command reads it between intervals."""

    __slots__ = (
        "behind",
        "connections_lost",
        "connections_opened",
        "duplicated",
        "errors",
        "examples",
        "late",
        "latencies",
        "lost",
        "measuring",
        "reordered",
        "sent",
        "sizes",
        "taken",
    )

    def __init__(self) -> None:
        self.measuring = False
        self.taken = 0  # latencies handed out by take_latencies() so far
        self.sent = 0  # datagrams sent while measuring, lost or not (a stream's requests are its sends)
        self.sizes = (0, 0)  # (message, echo) in bytes: the byte counts follow from the request counts
        self.latencies = array("q")  # microseconds, since the last take_latencies()
        self.errors: Counter[str] = Counter()
        self.examples: list[str] = []
        self.lost = 0
        self.duplicated = 0
        self.reordered = 0
        self.late = 0
        self.behind = 0  # open loop: requests sent more than 1 ms after their intended time
        self.connections_opened = 0
        self.connections_lost = 0

    @property
    def requests(self) -> int:
        """Echoes back, checked and counted: one latency each, so the count follows from them."""
        return self.taken + len(self.latencies)

    @property
    def bytes_out(self) -> int:
        return (self.sent or self.requests) * self.sizes[0]

    @property
    def bytes_in(self) -> int:
        return self.requests * self.sizes[1]

    def take_latencies(self) -> array[int]:
        """The latencies measured since the last call; the array itself is emptied in place, as the
        connections keep a reference to it."""
        taken = array("q", self.latencies)
        del self.latencies[:]
        self.taken += len(taken)
        return taken

    def fault(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append(f"{kind}: {detail}")


class Load:
    """One run of a :class:`LoadPlan` on the running kernel: ``await Load(plan, tally).run()``."""

    def __init__(self, plan: LoadPlan, tally: Tally) -> None:
        self.plan = plan
        self.tally = tally
        self.messages = Messages(
            plan.size, plan.prefix, plan.framing, seed=plan.seed, sequenced=plan.target.kind == "udp"
        )
        # the compiled step reads every echo here (one at a time: the kernel runs one task at a time),
        # with room for a byte more than the echo, to tell a long echo from an exact one
        self.receive_buffer = receive_buffer(max(RECV_SIZE, len(plan.prefix) + plan.size + 1))
        tally.sizes = (plan.size, len(plan.prefix) + plan.size)
        self.remaining = plan.requests  # requests not yet started (None: no limit)
        self.addresses: list[AddressInfo] = []
        self.started = 0.0  # perf_counter() when the load began (after connecting)
        # per connection: when its request in flight was sent (0: none), and its task, for the sweep
        self.inflight = array("d", bytes(8 * plan.connections))  # doubles: the compiled chain writes them in place
        self.tasks: list[Task | None] = [None] * plan.connections
        self.connect_turn = 0.0  # with connect_rate: when the next connection may be opened
        self.alive = 0  # connections not lost for good
        self.kernel: Kernel | None = None
        self.group: TaskGroup | None = None

    # -- connecting ---------------------------------------------------------------

    async def resolve(self) -> None:
        """Look the target up once (a name's addresses, for every connection to race)."""
        target = self.plan.target
        if target.kind == "unix":
            return
        kind = socket.SOCK_DGRAM if target.kind == "udp" else socket.SOCK_STREAM
        try:
            self.addresses = await run_in_thread(_lookup, target.host, target.port, kind)
        except (OSError, UnicodeError) as error:
            raise LoadError(f"cannot resolve {target.display()}: {error_reason(error)}") from None

    @types.coroutine
    def connect(self, number: int) -> Generator[Any, Any, Socket]:
        """A new connection (after its PROXY header and TLS handshake), paced by ``connect_rate``."""
        plan = self.plan
        if plan.connect_rate:
            now = time.perf_counter()
            turn = max(now, self.connect_turn)
            self.connect_turn = turn + 1 / plan.connect_rate
            if turn > now:
                yield from traps.sleep(turn - now)
        if plan.target.kind == "unix":
            sock = yield from open_unix_connection(plan.target.path)
        elif plan.target.kind == "udp":
            sock = yield from _connect_datagram(self.addresses)
        else:
            sock = yield from connect_staggered(self.addresses)
        try:
            if plan.proxy_version is not None:
                yield from sock.sendall(self._proxy_header(sock, number))
            if plan.ssl is not None:
                name = plan.server_hostname or plan.target.host
                yield from sock.start_tls(plan.ssl, server_hostname=name, handshake_timeout=plan.timeout)
        except BaseException:
            sock.close()
            raise
        if sock.family in (socket.AF_INET, socket.AF_INET6) and plan.target.kind != "udp":
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tally.connections_opened += 1
        return sock

    def _proxy_header(self, sock: Socket, number: int) -> bytes:
        version = self.plan.proxy_version
        assert version is not None
        if sock.family == socket.AF_UNIX:  # no addresses of its own: documentation ones
            source = self.plan.proxy_source or ("192.0.2.1", 1024 + number % 64512)
            return build_proxy_header(version, source, ("192.0.2.2", 7))
        own, peer = sock.getsockname(), sock.getpeername()
        source = self.plan.proxy_source or (DOCUMENTATION_SOURCE[sock.family], own[1])
        return build_proxy_header(version, source, (peer[0], peer[1]))

    # -- running --------------------------------------------------------------------

    async def run(self, first: Socket | None = None) -> None:
        """Open every connection, then load until done; ``first`` is an already open one (the probe)."""
        plan = self.plan
        self.kernel = current_kernel()
        # open loop: each send is due at a moment of its own, which the poll's millisecond timeout would
        # miss by up to a millisecond, all of it counted as latency
        self.kernel.precise_timers = plan.rate is not None
        sweeper = self.kernel.call_later(self._sweep_every(), self._sweep)
        try:
            async with TaskGroup() as group:
                self.group = group
                self.started = time.perf_counter()
                self.tally.measuring = plan.requests is not None or plan.warmup <= 0
                if plan.requests is None:
                    await group.spawn(self._clock(group), name="load clock")
                connection = self._datagrams if plan.target.kind == "udp" else self._stream
                for index in range(plan.connections):
                    sock, first = (first, None) if first is not None else (None, None)
                    self.alive += 1
                    await group.spawn(connection(index, sock), name=f"load #{index}")
        finally:
            sweeper.cancel()

    async def _clock(self, group: TaskGroup) -> None:
        """Duration runs: start counting after the warm-up, stop everything at the end."""
        plan = self.plan
        if plan.warmup > 0:
            await traps.sleep(plan.warmup)
            self.tally.measuring = True
        await traps.sleep(plan.duration)
        group.cancel_remaining()

    def _gone(self) -> None:
        """A connection's task ends: when none is left, neither is the run (a dead server, say)."""
        self.alive -= 1
        if self.alive == 0 and self.group is not None:
            self.group.cancel_remaining()

    def _take_ticket(self) -> bool:
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True

    def _give_ticket(self) -> None:
        """A request that did not go out after all."""
        if self.remaining is not None:
            self.remaining += 1

    def _sweep_every(self) -> float:
        return min(max(self.plan.timeout / 4, 0.005), 0.25)

    def _sweep(self, _: Any = None) -> None:
        """Every quarter of the timeout: throw RequestTimedOut into connections waiting too long."""
        assert self.kernel is not None
        now = time.perf_counter()
        limit = self.plan.timeout
        for index, since in enumerate(self.inflight):
            task = self.tasks[index]
            if since and now - since >= limit and task is not None:
                self.inflight[index] = 0.0
                self.kernel.cancel_nowait(task, RequestTimedOut())
        self.kernel.call_later(self._sweep_every(), self._sweep)

    def _schedule(self, index: int) -> Callable[[int], float] | None:
        """Open loop: the intended send time (perf_counter) of this connection's ``i``-th request."""
        if self.plan.rate is None:
            return None
        rate, connections = self.plan.rate, self.plan.connections
        start = self.started + index / rate  # the connections take turns
        return lambda i: start + i * connections / rate

    # -- a stream connection --------------------------------------------------------

    async def _stream(self, index: int, sock: Socket | None) -> None:
        """One connection's loop; on a fault it is counted and the connection opened again."""
        plan, tally = self.plan, self.tally
        self.tasks[index] = await traps.current_task()
        schedule = self._schedule(index)
        sent = 0  # requests this connection has started
        try:
            while True:
                if sock is None:
                    try:
                        sock = await self.connect(index)
                    except (OSError, ssl.SSLError) as error:
                        tally.fault("connect", f"{plan.target.display()}: {error_reason(error)}")
                        tally.connections_lost += 1
                        return
                try:
                    chain = _request_chain(self, sock, index)
                    done = await _stream_requests(self, sock, index, sent, schedule, chain)
                    sent += done
                    if self.remaining is not None and self.remaining <= 0:
                        return
                except _ConnectionFault as fault:
                    sent += fault.sent
                    if tally.measuring:
                        tally.fault(fault.kind, fault.detail)
                finally:
                    self.inflight[index] = 0.0
                    sock.close()
                    sock = None
        finally:
            self.tasks[index] = None
            self._gone()

    # -- a datagram socket ------------------------------------------------------------

    async def _datagrams(self, index: int, sock: Socket | None) -> None:
        plan, tally = self.plan, self.tally
        try:
            if sock is None:
                try:
                    sock = await self.connect(index)
                except OSError as error:
                    tally.fault("connect", f"{plan.target.display()}: {error_reason(error)}")
                    tally.connections_lost += 1
                    return
            with sock:
                await _DatagramFlow(self, sock, index).run()
        finally:
            self._gone()


class _ConnectionFault(Exception):
    """A connection's fault, by kind; ``sent``: the requests it had started, the failed one included
    (their slots in an open-loop schedule are used), filled in by the connection's loop."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.sent = 0

    @classmethod
    def of(cls, error: RequestTimedOut | OSError, timeout: float) -> _ConnectionFault:
        if isinstance(error, RequestTimedOut):
            return cls("timeout", f"no echo within {timeout:g}s")
        if isinstance(error, ssl.SSLError):
            return cls("tls", error_reason(error))
        return cls("reset", error_reason(error))


@types.coroutine
def _stream_requests(
    load: Load, client: Socket, index: int, sent: int, schedule: Callable[[int], float] | None, chain: RequestChain
) -> Generator[Any, Any, int]:
    """Requests over one connection until churn ends it (returns how many), the tickets run out, or a
    fault (:class:`_ConnectionFault`).

    A request goes out here, the plain way: the first, every one in open loop (at its intended
    time), and the one after an echo that needed the byte-by-byte check. Then ``chain`` takes
    over: it reads the echo, checks and times it, and in closed loop sends the next request
    itself the moment the echo matched, and so on while they match, yielding only its wait to
    read. This loop sees the connection again only where the chain stops: an echo that was not
    exact in one read, a next request that went out in part, churn's or the tickets' end.
    """
    plan, tally, messages = load.plan, load.tally, load.messages
    churn, stride = plan.churn, plan.connections
    first = number = index + sent * stride  # the next request's
    sock = client.socket
    readable = client.readable
    inflight = load.inflight
    chain.done = 0  # echoes back on this connection: the chain counts its own, this loop the others
    try:
        while True:
            if not load._take_ticket():
                return chain.done
            chain.number = number  # started: its slot in the schedule is used, come what may
            message = messages[number]
            if schedule is None:
                began = now = time.perf_counter()
            else:
                began, now = yield from _turn(tally, schedule(sent + chain.done))
            inflight[index] = now
            try:
                n = sock.send(message)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                n = 0  # (a TLS send takes all or nothing, and is then repeated whole)
            if n < len(message):
                yield from client.send_rest(memoryview(message)[n:])
            chain.began = began
            chain.left = 0 if schedule is not None else churn - 1 - chain.done % churn if churn else -1
            while True:
                yield readable
                yield from chain
                if chain.sent >= 0:  # its next request went out in part
                    rest, chain.sent = memoryview(messages[chain.number])[chain.sent :], -1
                    yield from client.send_rest(rest)
                    continue
                if chain.reply is not None:  # not the exact echo in one read
                    data, chain.reply = chain.reply, None
                    yield from _slow_echo(client, messages[chain.number], plan.prefix, data, sent + chain.done)
                    chain.done += 1
                    if tally.measuring:
                        tally.latencies.append(int((time.perf_counter() - chain.began) * 1e6))
                break
            inflight[index] = 0.0
            number = chain.number + stride
            if churn and chain.done % churn == 0:
                return chain.done
    except (_ConnectionFault, RequestTimedOut, ssl.SSLError, ConnectionError) as error:  # (a wrong echo is the first)
        fault = error if isinstance(error, _ConnectionFault) else _ConnectionFault.of(error, plan.timeout)
        fault.sent = (chain.number - first) // stride + 1
        raise fault from None


class _PureRequestChain:
    """``RequestChain`` in ``_speedups.c`` (see there) in Python, through the socket's own methods:
    the reference, and the chain over TLS and in a build without the compiled one."""

    def __init__(self, sock: socket.socket, trap: tuple[str, int], load: Load, index: int) -> None:
        self._sock, self._trap, self._load, self._index = sock, trap, load, index
        self.number = 0
        self.began = 0.0
        self.left = -1
        self.done = 0
        self.sent = -1
        self.reply: bytes | None = None

    def __iter__(self) -> Generator[tuple[str, int], None, None]:
        load, trap = self._load, self._trap
        tally, messages, inflight = load.tally, load.messages, load.inflight
        recv, send, clock = self._sock.recv, self._sock.send, time.perf_counter
        prefix, stride = load.plan.prefix, load.plan.connections
        while True:
            try:
                data = recv(RECV_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):  # TLS: half a record so far
                yield trap
                continue
            if data != prefix + messages[self.number]:
                self.reply = data
                return
            now = clock()
            self.done += 1
            if tally.measuring:
                tally.latencies.append(int((now - self.began) * 1e6))
            if self.left == 0 or not load._take_ticket():
                return
            self.number += stride
            following = messages[self.number]
            try:
                n = send(following)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                n = 0
            except BaseException:
                self.number -= stride
                load._give_ticket()
                raise
            self.began = now
            if self.left > 0:
                self.left -= 1
            inflight[self._index] = now
            if n < len(following):
                self.sent = n
                return
            yield trap


@types.coroutine
def _turn(tally: Tally, intended: float) -> Generator[Any, Any, tuple[float, float]]:
    """Open loop: wait for a request's intended send time; (intended, now), a late send counted.

    The kernel keeps precise timers for the load (see Load.run), but a task runs some microseconds
    after its timer's deadline: the poll that notices it, the timer's callback, the resumption. All
    of that would be counted as latency; so the sleep ends :data:`WAKE_LEAD` early and the rest is
    spent reading the clock. (It costs no CPU the load would not spend: within a millisecond of a
    deadline, a kernel with precise timers polls without waiting.)
    """
    clock = time.perf_counter
    now = clock()
    if intended - now > WAKE_LEAD:
        yield from traps.sleep(intended - now - WAKE_LEAD)
        now = clock()
    while now < intended:
        now = clock()
    if now - intended > 0.001 and tally.measuring:
        tally.behind += 1
    return intended, now


@types.coroutine
def _slow_echo(client: Socket, message: bytes, prefix: bytes, data: bytes, sent: int) -> Generator[Any, Any, None]:
    """The echo did not come back as one exact read: check it piece by piece as it arrives."""
    check = EchoCheck(message, prefix)
    try:
        while True:
            if not data:
                raise _ConnectionFault(
                    "short", f"connection closed after {check.done} of {len(message)} bytes of an echo"
                )
            if check.feed(data):
                return
            data = yield from client.recv(RECV_SIZE)
    except Mismatch as wrong:
        raise _ConnectionFault("mismatch", f"request {sent + 1}: {wrong}") from None


class _DatagramFlow:
    """One datagram socket: a sender task and this task as the receiver.

    Closed loop: the sender waits for the previous datagram's echo (or its timeout) before
    sending the next. Open loop: it sends on schedule whatever has come back.
    """

    def __init__(self, load: Load, sock: Socket, index: int) -> None:
        self.load = load
        self.sock = sock
        self.index = index
        self.pending: dict[int, tuple[float, float]] = {}  # sequence -> (latency's start, when sent)
        self.timed_out: set[int] = set()
        self.answered: set[int] = set()
        self.highest = -1
        self.sender_done = False
        self.waiting: list[Task] = []  # the sender, parked until a slot frees (closed loop)

    async def run(self) -> None:
        kernel = current_kernel()
        sender = kernel.spawn(self._send(), name=f"load #{self.index} sender")
        sweeper = kernel.call_later(self.load._sweep_every(), self._sweep)
        try:
            await self._receive()
        finally:
            sweeper.cancel()
            if not sender.done:
                await traps.cancel(sender)
            tally = self.load.tally
            if tally.measuring:
                tally.lost += len(self.timed_out) + len(self.pending)

    async def _send(self) -> None:
        load, plan = self.load, self.load.plan
        schedule = load._schedule(self.index)
        stride, number = plan.connections, self.index
        i = 0
        try:
            while load._take_ticket():
                if schedule is None:
                    while self.pending:
                        await traps.park(self.waiting)
                    began = time.perf_counter()
                else:
                    began = schedule(i)
                    now = time.perf_counter()
                    if began > now:
                        await traps.sleep(began - now)
                        now = time.perf_counter()
                    if now - began > 0.001 and load.tally.measuring:
                        load.tally.behind += 1
                datagram = load.messages[number]
                self.pending[number] = (began, time.perf_counter())
                await self.sock.send(datagram)
                if load.tally.measuring:
                    load.tally.sent += 1
                number += stride
                i += 1
        finally:
            self.sender_done = True
            self._free_slot()

    def _free_slot(self) -> None:
        if self.waiting:
            current_kernel().wake_all(self.waiting)

    async def _receive(self) -> None:
        load, plan, tally = self.load, self.load.plan, self.load.tally
        prefix, head = plan.prefix, len(plan.prefix)
        while not (self.sender_done and not self.pending):
            try:
                reply = await self._recv_or_idle()
            except ConnectionRefusedError:  # ICMP port unreachable: nobody listens (yet, or any more)
                if tally.measuring:
                    tally.fault("refused", f"{plan.target.display()}: no server (ICMP port unreachable)")
                continue
            if reply is None:
                continue
            ended = time.perf_counter()
            number = SEQUENCE.unpack_from(reply, head)[0] if len(reply) >= head + SEQUENCE.size else -1
            timing = self.pending.pop(number, None)
            if timing is None:
                self._unexpected(number, reply)
                continue
            if reply != prefix + load.messages[number]:
                if tally.measuring:
                    tally.fault("mismatch", f"datagram {number}: {_first_difference(reply, prefix, load, number)}")
                self._free_slot()
                continue
            self.answered.add(number)
            if number < self.highest and tally.measuring:
                tally.reordered += 1
            self.highest = max(self.highest, number)
            if tally.measuring:
                tally.latencies.append(int((ended - timing[0]) * 1e6))
            self._free_slot()

    async def _recv_or_idle(self) -> bytes | None:
        """A datagram, or None when the sweep has something to say (a timeout freed the slot)."""
        sock = self.sock.socket
        try:
            return sock.recv(65536)
        except BlockingIOError:
            pass
        self._receiver = await traps.current_task()
        try:
            await self.sock.wait_readable()
        except RequestTimedOut:
            return None
        finally:
            self._receiver = None
        try:
            return sock.recv(65536)
        except BlockingIOError:
            return None

    _receiver: Task | None = None

    def _unexpected(self, number: int, reply: bytes) -> None:
        tally = self.load.tally
        if not tally.measuring:
            return
        if number in self.timed_out:
            self.timed_out.discard(number)
            self.answered.add(number)
            tally.late += 1
        elif number in self.answered:
            tally.duplicated += 1
        else:
            tally.fault("mismatch", f"a datagram that was never sent ({len(reply)} bytes)")

    def _sweep(self, _: Any = None) -> None:
        """Datagrams unanswered for ``timeout`` are lost (late if their echo comes after all)."""
        now = time.perf_counter()
        limit = self.load.plan.timeout
        expired = [number for number, (_, sent) in self.pending.items() if now - sent >= limit]
        for number in expired:
            del self.pending[number]
            self.timed_out.add(number)
        kernel = current_kernel()
        if expired:
            self._free_slot()
            if self._receiver is not None and self.sender_done and not self.pending:
                kernel.cancel_nowait(self._receiver, RequestTimedOut())
        self._sweeper = kernel.call_later(self.load._sweep_every(), self._sweep)


def _lookup(host: str, port: int, kind: socket.SocketKind) -> list[AddressInfo]:
    return cast(list[AddressInfo], socket.getaddrinfo(host, port, 0, kind))


@types.coroutine
def _connect_datagram(addresses: list[AddressInfo]) -> Generator[Any, Any, Socket]:
    """A UDP socket connected to the first address (connect() on a datagram socket never waits)."""
    family, kind, proto, _, address = addresses[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return Socket(sock)
    yield  # a generator, like the other ways to connect


def _first_difference(reply: bytes, prefix: bytes, load: Load, number: int) -> str:
    wanted = prefix + load.messages[number]
    offset = next(
        (i for i, (a, b) in enumerate(zip(reply, wanted, strict=False)) if a != b), min(len(reply), len(wanted))
    )
    return f"echo differs at byte {offset - len(prefix)} ({len(reply)} bytes back, {len(wanted)} expected)"
