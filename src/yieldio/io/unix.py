"""Unix domain sockets: connecting, and naming them in logs.

A Unix socket is addressed by a path in the file system, or on Linux by an
*abstract* name: a string starting with NUL, which lives in no directory and
disappears with its last socket. Both work wherever a path is taken here.

Connecting differs from TCP in one way that matters to a non-blocking
client. A TCP connect is "in progress" and the socket becomes writable when
it completes; a Unix connect completes or fails at once, and when the
listener's backlog is full it fails with ``EAGAIN`` and no event will ever
say that there is room. So :func:`open_unix_connection` retries after a
short pause that doubles up to a bound, rather than waiting for
writability (which an unconnected Unix socket reports at once, connected
or not).
"""

from __future__ import annotations

import os
import socket
import types
from collections.abc import Generator
from typing import Any, TypeAlias

from ..core import traps
from .sockets import Socket

UnixPath: TypeAlias = str | bytes | os.PathLike[str] | os.PathLike[bytes]

_FIRST_PAUSE = 0.001  # seconds before connecting again to a listener whose backlog is full
_LONGEST_PAUSE = 0.1


def is_abstract(path: str | bytes) -> bool:
    """True for a Linux abstract name (it starts with NUL): no file, nothing to remove."""
    return path[:1] in ("\0", b"\0")


def format_unix_address(path: UnixPath) -> str:
    """``unix:PATH`` for logs and messages; an abstract name as ``unix:@name``, as ``ss`` prints it."""
    text = os.fsdecode(os.fspath(path))
    return f"unix:@{text[1:]}" if is_abstract(text) else f"unix:{text}"


@types.coroutine
def open_unix_connection(path: UnixPath) -> Generator[Any, Any, Socket]:
    """A :class:`~.sockets.Socket` connected to the Unix stream socket at ``path``."""
    address = os.fspath(path)
    sock = Socket(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    pause = _FIRST_PAUSE
    try:
        while True:
            try:
                sock.socket.connect(address)
                return sock
            except BlockingIOError:
                yield from traps.sleep(pause)
                pause = min(pause * 2, _LONGEST_PAUSE)
    except BaseException:  # refused, cancelled, timed out: don't leave the socket to the garbage collector
        sock.close()
        raise
