"""Unix domain socket servers: the stream server's accept loop, on a path.

Serving is :func:`yieldio.servers.stream.serve`, unchanged: a Unix stream
socket accepts like a TCP one, with the same :class:`~.stream.ServerOptions`.
What is Unix-specific is the file the socket leaves in the file system,
which outlives the process that made it:

- *A stale file is replaced, a live one never.* Binding fails with
  ``EADDRINUSE`` whenever the path exists. If it is a socket, connecting to
  it tells why: refused means nobody listens (a server died without
  cleaning up), so the file is removed and the bind tried again; accepted,
  or a full backlog, or a socket of another type, means it is in use, and
  :func:`unix_listen` refuses with ``EADDRINUSE``, as a busy TCP port does.
  A path that is not a socket (a regular file, a directory, a symlink) is
  never removed: ``FileExistsError``.
- *Only our own file is removed on close.* :class:`UnixListener` remembers
  the device and inode of the socket file it bound, and removes the path
  only if it still names that file, and only in the process that bound it
  (a forked child closing its inherited copy removes nothing). Another
  server that replaced the file in the meantime keeps it. The file is
  removed *before* the socket is closed: while it still listens, another
  server would find it live and leave it alone, so the check and the
  removal can't race with one; and a client finds no file rather than a
  dead socket.

Two limits remain, as with any file-based check: a server that has bound
but not yet called ``listen()`` looks stale for that instant, and a path
replaced between the check and the removal is removed anyway. Both need a
second server starting on the same path at the same moment.

Abstract names (Linux; a path starting with NUL) have no file: the kernel
forgets the name with the socket, so a name in use always belongs to a live
socket, and there is nothing to remove.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import types
from collections.abc import Generator
from typing import Any

from ..io.sockets import Socket
from ..io.unix import UnixPath, format_unix_address, is_abstract
from .stream import DEFAULT_OPTIONS, Handler, ServerOptions, ServerStats, serve

log = logging.getLogger("yieldio")


class UnixListener(Socket):
    """A listening Unix socket that removes its own socket file when closed."""

    __slots__ = ("_file", "_owner", "path")

    def __init__(self, sock: socket.socket, path: str | bytes) -> None:
        super().__init__(sock)
        self.path = path
        self._owner = os.getpid()
        # (st_dev, st_ino) of the file this socket created; None for an abstract name.
        self._file = None if is_abstract(path) else _identity(path)

    def close(self) -> None:
        if self._file is not None and os.getpid() == self._owner:
            if _identity(self.path) == self._file:
                os.unlink(self.path)
            self._file = None
        super().close()


def _identity(path: str | bytes) -> tuple[int, int] | None:
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def unix_listen(path: UnixPath, *, backlog: int = 1024) -> UnixListener:
    """A bound, listening, non-blocking Unix stream socket at ``path`` (a stale socket file is replaced)."""
    address = os.fspath(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(address)
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            _remove_stale(address)
            sock.bind(address)
    except BaseException:
        sock.close()
        raise
    listener = UnixListener(sock, address)
    try:
        sock.listen(backlog)
    except BaseException:
        listener.close()
        raise
    return listener


def _remove_stale(path: str | bytes) -> None:
    """Remove the socket file at ``path`` if no one listens there; raise if someone might."""
    if is_abstract(path):
        raise _in_use(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return  # removed since bind() saw it: just bind again
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, f"{format_unix_address(path)}: exists and is not a socket; left alone")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)  # a live listener with a full backlog answers EAGAIN instead of making us wait
        outcome = probe.connect_ex(path)
    if outcome == errno.ECONNREFUSED:
        log.info("%s: removing a stale socket file (no server listens there)", format_unix_address(path))
        os.unlink(path)
    elif outcome in (0, errno.EAGAIN, errno.EPROTOTYPE):  # accepted, backlog full, a socket of another type
        raise _in_use(path)
    elif outcome != errno.ENOENT:
        raise OSError(outcome, f"{format_unix_address(path)}: {os.strerror(outcome)}")


def _in_use(path: str | bytes) -> OSError:
    return OSError(errno.EADDRINUSE, f"{format_unix_address(path)}: a server is already listening there")


@types.coroutine
def unix_server(
    path: UnixPath,
    handler: Handler,
    options: ServerOptions = DEFAULT_OPTIONS,
    *,
    stats: ServerStats | None = None,
) -> Generator[Any, Any, None]:
    """Listen at ``path`` and serve each connection with ``handler(client, address)``, as ``tcp_server`` does.

    The socket file is removed when the server stops (``options.reuse_port`` means nothing here).
    """
    listener = unix_listen(path, backlog=options.backlog)
    log.info("listening on %s", format_unix_address(listener.path))
    with listener:
        yield from serve(listener, handler, options, stats=stats)
