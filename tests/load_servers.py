"""Echo servers that misbehave on purpose, for the tests of ``yieldio load`` (tests/test_load.py).

Each is a standalone program on plain ``socket`` + ``selectors`` (nothing of yieldio's, so a bug in
yieldio cannot hide a bug in the load generator it tests), run as a child process::

    python -m tests.load_servers KIND [--host 127.0.0.1] [--port 0] [--prefix GOT:] ...
    python tests/load_servers.py KIND ...          # the same, from any directory

It binds ``--port`` (0: the system picks one) on ``--host`` and prints ``listening on HOST:PORT``
(flushed) once it accepts, which tests/harness.py's ServerProcess reads. The kinds:

- ``corrupt``: a TCP echo with chunk framing (each ``recv`` answered with prefix + data) that flips
  one byte (the middle byte of the data) in every ``--every``-th reply (default 1000), counted over
  the whole server, not per connection: replies number 1000, 2000, ... are corrupted. It prints
  nothing else.
- ``stall``: the same echo, without corruption, that once, after ``--stall-after`` replies (default
  100), stops answering for ``--stall`` seconds (default 1.0): it goes on reading, and when the stall
  ends it answers everything it read meanwhile, in order, one reply per ``recv`` as before. It prints
  ``stalled after N replies`` and ``resumed after S s, answering M`` when it stalls and resumes.
- ``udp-drop``: a UDP echo (reply = prefix + datagram) that drops every ``--every``-th datagram it
  receives (default 10): datagrams number 10, 20, ... get no reply.
- ``udp-dup``: a UDP echo that answers every ``--every``-th datagram twice.
- ``udp-reorder``: a UDP echo that holds the reply to every ``--every``-th datagram back until it has
  answered the next datagram (so the two replies leave in swapped order), or until ``--hold`` seconds
  (default 0.2) have passed with no next datagram.

Every kind exits 0 at once on SIGTERM (or SIGINT).
"""

from __future__ import annotations

import argparse
import contextlib
import selectors
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

STREAM_KINDS = ("corrupt", "stall")
UDP_KINDS = ("udp-drop", "udp-dup", "udp-reorder")
DEFAULT_EVERY = {"corrupt": 1000, "udp-drop": 10, "udp-dup": 10, "udp-reorder": 10}
RECV_SIZE = 65536


def flip(reply: bytes, prefix_length: int) -> bytes:
    """``reply`` with one bit of its data's middle byte flipped (the prefix is left alone)."""
    data_length = len(reply) - prefix_length
    # nothing but the prefix: its last byte
    index = len(reply) - 1 if data_length <= 0 else prefix_length + data_length // 2
    corrupted = bytearray(reply)
    corrupted[index] ^= 0x01
    return bytes(corrupted)


def say(line: str) -> None:
    print(line, flush=True)


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- TCP ----------------------------------------------------------------------------------


@dataclass
class Connection:
    sock: socket.socket
    out: bytearray = field(default_factory=bytearray)
    closing: bool = False  # the client has closed its side: close once ``out`` is sent
    held: int = 0  # its messages read during the stall, not answered yet


class StreamEcho:
    """A chunk-framed TCP echo on one thread: every ``recv`` is answered with prefix + what it read."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.kind: str = args.kind
        self.prefix: bytes = args.prefix.encode()
        self.every: int = args.every
        self.stall_after: int = args.stall_after
        self.stall_seconds: float = args.stall
        self.replies = 0  # replies made so far, over all connections
        self.stall_started = 0.0
        self.stall_ends: float | None = None  # while stalled: when it ends (monotonic)
        self.stalled_once = False
        self.held: deque[tuple[Connection, bytes]] = deque()  # what arrived during the stall, in order
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(family_of(args.host), socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((args.host, args.port))
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.port: int = self.listener.getsockname()[1]

    def serve(self) -> None:
        while True:
            timeout = None if self.stall_ends is None else max(0.0, self.stall_ends - time.monotonic())
            for key, events in self.selector.select(timeout):
                if key.data is None:
                    self.accept()
                    continue
                connection: Connection = key.data
                if events & selectors.EVENT_WRITE:
                    self.flush(connection)
                if events & selectors.EVENT_READ and connection.sock.fileno() >= 0:
                    self.read(connection)
            if self.stall_ends is not None and time.monotonic() >= self.stall_ends:
                self.resume()

    def accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.selector.register(sock, selectors.EVENT_READ, Connection(sock))

    def read(self, connection: Connection) -> None:
        try:
            data = connection.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.close(connection)
            return
        if not data:
            connection.closing = True
            self.watch(connection)
            return
        if self.stall_ends is not None:
            self.held.append((connection, data))
            connection.held += 1
            return
        self.answer(connection, data)

    def answer(self, connection: Connection, data: bytes) -> None:
        self.replies += 1
        reply = self.prefix + data
        if self.kind == "corrupt" and self.replies % self.every == 0:
            reply = flip(reply, len(self.prefix))
        if connection.sock.fileno() >= 0:
            connection.out += reply
            self.flush(connection)
        if self.kind == "stall" and not self.stalled_once and self.replies >= self.stall_after:
            self.stalled_once = True
            self.stall_started = time.monotonic()
            self.stall_ends = self.stall_started + self.stall_seconds
            say(f"stalled after {self.replies} replies")

    def resume(self) -> None:
        self.stall_ends = None
        waited = time.monotonic() - self.stall_started
        say(f"resumed after {waited:.3f} s, answering {len(self.held)}")
        while self.held:
            connection, data = self.held.popleft()
            connection.held -= 1
            self.answer(connection, data)

    def flush(self, connection: Connection) -> None:
        if connection.sock.fileno() < 0:
            return
        try:
            while connection.out:
                sent = connection.sock.send(connection.out)
                del connection.out[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self.close(connection)
            return
        self.watch(connection)

    def watch(self, connection: Connection) -> None:
        """Register for what the connection waits for now; close it once the client has left and all is sent."""
        if connection.closing and not connection.out and not connection.held:
            self.close(connection)
            return
        events = 0 if connection.closing else selectors.EVENT_READ
        if connection.out:
            events |= selectors.EVENT_WRITE
        registered = self.selector.get_map().get(connection.sock)
        if not events:  # the client has left and its held messages are not answered yet
            if registered is not None:
                self.selector.unregister(connection.sock)
        elif registered is None:
            self.selector.register(connection.sock, events, connection)
        elif registered.events != events:
            self.selector.modify(connection.sock, events, connection)

    def close(self, connection: Connection) -> None:
        if connection.sock.fileno() < 0:
            return
        if self.selector.get_map().get(connection.sock) is not None:
            self.selector.unregister(connection.sock)
        connection.sock.close()
        connection.out.clear()


# -- UDP ----------------------------------------------------------------------------------


class DatagramEcho:
    """A UDP echo (reply = prefix + datagram) that drops, duplicates or reorders every ``every``-th datagram."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.kind: str = args.kind
        self.prefix: bytes = args.prefix.encode()
        self.every: int = args.every
        self.hold_seconds: float = args.hold
        self.received = 0  # datagrams received so far, from every client
        self.held: tuple[bytes, tuple[str, int], float] | None = None  # (reply, client, sent no later than)
        self.sock = socket.socket(family_of(args.host), socket.SOCK_DGRAM)
        self.sock.bind((args.host, args.port))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.port: int = self.sock.getsockname()[1]

    def serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            while True:
                timeout = None if self.held is None else max(0.0, self.held[2] - time.monotonic())
                if selector.select(timeout):
                    self.receive()
                if self.held is not None and time.monotonic() >= self.held[2]:
                    self.release()

    def receive(self) -> None:
        try:
            data, client = self.sock.recvfrom(RECV_SIZE)
        except (BlockingIOError, ConnectionRefusedError):
            return  # ICMP from an earlier reply's client that has gone
        self.received += 1
        reply = self.prefix + data
        marked = self.received % self.every == 0
        if self.kind == "udp-drop" and marked:
            return
        if self.kind == "udp-reorder" and marked:
            self.release()  # one held at a time
            self.held = (reply, client, time.monotonic() + self.hold_seconds)
            return
        self.send(reply, client)
        if self.kind == "udp-dup" and marked:
            self.send(reply, client)
        self.release()  # after this datagram's reply: the held one leaves second

    def release(self) -> None:
        if self.held is not None:
            reply, client, _ = self.held
            self.held = None
            self.send(reply, client)

    def send(self, reply: bytes, client: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):  # the client's buffer is full or it has gone: lost, as UDP allows
            self.sock.sendto(reply, client)


# -- the program ----------------------------------------------------------------------------


def stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.load_servers", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=STREAM_KINDS + UDP_KINDS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--prefix", default="GOT:")
    parser.add_argument("--every", type=int, default=None, help="the period of the fault (1000 corrupt, 10 udp-*)")
    parser.add_argument("--stall-after", type=int, default=100, help="stall: replies before the stall")
    parser.add_argument("--stall", type=float, default=1.0, help="stall: its length in seconds")
    parser.add_argument("--hold", type=float, default=0.2, help="udp-reorder: longest a reply is held, seconds")
    args = parser.parse_args(argv)
    if args.every is None:
        args.every = DEFAULT_EVERY.get(args.kind, 1)
    if args.every < 1:
        parser.error("--every must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server: StreamEcho | DatagramEcho = StreamEcho(args) if args.kind in STREAM_KINDS else DatagramEcho(args)
    say(f"listening on {label(args.host, server.port)}")
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
