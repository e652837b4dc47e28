"""``yieldio connect HOST PORT``: an interactive client that runs on the yieldio kernel itself.

Lines typed go to the server; whatever the server sends is printed as soon as
it arrives. It works at a terminal and in a pipe::

    $ printf 'Hello\\n' | yieldio connect 127.0.0.1 25000
    GOT:Hello

*Two tasks.* The terminal and the socket are independent streams: a reply
can arrive while the user is halfway through a line, and the user can type
while a reply is still on its way, or while the server sends something
nobody asked for. A loop that waits on one of them stalls the other. So one
task copies stdin to the socket and another copies the socket to stdout; the
kernel waits on both descriptors in one epoll. They share a
:class:`~yieldio.TaskGroup`, so when one fails the other is cancelled.

*Half-close at the end of input.* When stdin ends (end of a pipe, Ctrl-D at
a terminal), replies to the last lines may still be in flight. Closing the
socket then would lose them (``printf 'Hello\\n' | ...`` would print
nothing). Instead the input task shuts down only the sending side: the
server reads EOF, answers what it received and closes, and the output task
prints everything up to the server's EOF. That EOF is the end of the
session. If the server closes first while input is still open, the input
task is cancelled and a short note says so.

*Reading stdin.* stdin can be a terminal, a pipe, a socket, ``/dev/null`` or
a regular file, and epoll refuses the last two (EPERM). Every read is
therefore *optimistic*, as in :mod:`yieldio.io.sockets`: ``os.read`` on the
descriptor set non-blocking, and a wait for readability only when the read
reports ``BlockingIOError``, which a file or ``/dev/null`` never does.
O_NONBLOCK is a flag of the open file, which a terminal shares with stdout,
stderr and the shell that started us, so it is put back on exit (at the end
of the session, on an error, on SIGINT or SIGTERM; not on SIGKILL, SIGHUP or
a Ctrl-Z stop). With a terminal, stdout is non-blocking too while we run,
and writes to it wait for writability the same way.

*Exit status.* 0 when the session ends by the server's EOF (after the end of
input, or before it with the note on stderr); 1 with one line on stderr when
the connection cannot be made or breaks, or stdin or stdout fails; 2 for a
usage error (argparse). Ctrl-C (SIGINT) or SIGTERM, which the kernel turns
into cancellation of every task, ends the session silently with 128 + the
signal number (130, 143), the shell's convention for "stopped by a signal".
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from ..core.kernel import Task
from ..core.runner import SignalRoute, new_kernel
from ..core.scopes import TaskGroup
from ..core.traps import cancel, wait_readable, wait_writable
from ..io.sockets import Socket, error_reason, format_address, open_connection
from .flags import FromEnvironment, add_log_level, connect_port

log = logging.getLogger("yieldio")

STDIN = 0
STDOUT = 1
READ_SIZE = 65536

Outcome = tuple[int, str | None]  # exit status, and the line for stderr, if any


class _Failure(Exception):
    """Ends the session with exit status 1 and this message on stderr."""


async def _read(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, READ_SIZE)
        except BlockingIOError:
            await wait_readable(fd)


async def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            await wait_writable(fd)
        else:
            view = view[written:]


class _Session:
    """One connection: stdin to the socket, the socket to stdout, until the server's EOF."""

    def __init__(self, sock: Socket, peer: str, stdin: int | None) -> None:
        self.sock = sock
        self.peer = peer
        self.stdin = stdin  # None: descriptor 0 is not open, there is no input at all
        self.input_ended = False
        self.closed_by_server = False

    async def run(self) -> None:
        async with TaskGroup() as group:
            sender = await group.spawn(self._send_input(), name="stdin -> socket")
            await group.spawn(self._print_replies(sender), name="socket -> stdout")

    async def _read_input(self) -> bytes:
        if self.stdin is None:
            return b""
        try:
            return await _read(self.stdin)
        except OSError as error:
            raise _Failure(f"cannot read input: {error_reason(error)}") from None

    async def _send_input(self) -> None:
        while data := await self._read_input():
            try:
                await self.sock.sendall(data)
            except OSError as error:
                # The server is gone; the output task will read its EOF (after any
                # replies still buffered) or the reset, and decide how this ends.
                log.debug("sending to %s failed: %s", self.peer, error_reason(error))
                return
        self.input_ended = True
        log.debug("end of input: half-closing the connection to %s", self.peer)
        try:
            self.sock.shutdown_write()
        except OSError as error:
            log.debug("half-close of %s failed: %s", self.peer, error_reason(error))

    async def _print_replies(self, sender: Task) -> None:
        while True:
            try:
                data = await self.sock.recv(READ_SIZE)
            except OSError as error:
                raise _Failure(f"connection to {self.peer} lost: {error_reason(error)}") from None
            if not data:
                break
            try:
                await _write_all(STDOUT, data)
            except OSError as error:
                raise _Failure(f"cannot write output: {error_reason(error)}") from None
        log.debug("%s closed the connection", self.peer)
        if not self.input_ended:
            self.closed_by_server = True
            await cancel(sender)


async def talk(host: str, port: int, stdin: int | None) -> Outcome:
    """Connect, copy both ways until the server's EOF; (exit status, line for stderr or None)."""
    peer = format_address((host, port))
    try:
        sock = await open_connection(host, port)
    except (OSError, UnicodeError) as error:
        return 1, f"cannot connect to {peer}: {error_reason(error)}"
    log.info("connected to %s", format_address(sock.getpeername()))
    session = _Session(sock, peer, stdin)
    failures: tuple[BaseException, ...] = ()
    with sock:
        try:
            await session.run()
        except* _Failure as group:
            failures = group.exceptions
    if failures:
        return 1, str(failures[0])
    return 0, "connection closed by server" if session.closed_by_server else None


@contextmanager
def nonblocking(fd: int) -> Iterator[None]:
    """Make ``fd`` non-blocking for the block, and put the flag back afterwards."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & os.O_NONBLOCK:
        yield
        return
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        yield
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)


def stdin_is_open() -> bool:
    """Is descriptor 0 open? (ask before the kernel's epoll can take a free 0)"""
    try:
        os.fstat(STDIN)
    except OSError:
        return False
    return True


def add_parser(commands: Any) -> FromEnvironment:
    """``connect HOST PORT`` and its flags."""
    connect = commands.add_parser(
        "connect",
        help="talk to a server: lines typed go out, replies are printed",
        description=(
            "Connect to HOST:PORT; send what is typed (or piped in) and print what the server sends. "
            "At the end of input (Ctrl-D) the connection is half-closed and the replies still on their way "
            "are printed before exiting. Exit status: 0 when the server closed the connection, 1 when it "
            "could not be made or broke, 130 on Ctrl-C."
        ),
    )
    connect.add_argument("host", metavar="HOST", help="name or address of the server")
    connect.add_argument("port", metavar="PORT", type=connect_port, help="its TCP port")
    env = FromEnvironment()
    add_log_level(connect, env, "warning")
    connect.set_defaults(func=connect_command)
    return env


def connect_command(args: argparse.Namespace) -> int:
    """``yieldio connect HOST PORT``; returns the exit status."""
    stdin = STDIN if stdin_is_open() else None
    kernel = new_kernel()
    with nonblocking(STDIN) if stdin is not None else nullcontext(), SignalRoute(kernel) as signals:
        outcome: Outcome | None = kernel.run(talk(args.host, args.port, stdin))
    if outcome is None:  # the session was cancelled on SIGINT or SIGTERM
        assert signals.received is not None
        return 128 + signals.received
    status, message = outcome
    if message:
        print(f"yieldio: {message}", file=sys.stderr)
    return status
