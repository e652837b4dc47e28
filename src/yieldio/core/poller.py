"""The poller: one interface to the operating system's readiness notification.

The kernel asks one question of the operating system: which of the
descriptors I watch became readable or writable, waiting at most this long?
On Linux ``select.epoll`` answers it, and the kernel uses that object as it
is: its ``register``/``modify``/``unregister``/``poll`` methods *are* the
interface below, so the hot loop calls C directly with no adapter between.

Elsewhere (kqueue on BSD and macOS, poll on other systems)
:class:`SelectorPoller` gives a :mod:`selectors` selector the same
interface, translating event masks both ways, in the manner of CPython's
``selectors`` module: one interface, thin backends.

Registrations are level-triggered and kept between waits; the kernel
decides when interest is added or dropped.
"""

from __future__ import annotations

import contextlib
import select
import selectors
import socket
from typing import Protocol

IN = getattr(select, "EPOLLIN", 0x001)
OUT = getattr(select, "EPOLLOUT", 0x004)
# Errors and hang-ups are reported whatever the mask says; they wake both sides,
# whose next system call then reports what happened.
_TROUBLE = getattr(select, "EPOLLHUP", 0x010) | getattr(select, "EPOLLERR", 0x008)
READ_EVENTS = IN | _TROUBLE
WRITE_EVENTS = OUT | _TROUBLE


class Poller(Protocol):
    """What the kernel needs of a poller: epoll's own method names and semantics.

    ``register`` of a descriptor already registered raises ``FileExistsError``;
    ``modify`` or ``unregister`` of one not registered raises ``FileNotFoundError``.
    """

    def register(self, fd: int, mask: int) -> None: ...
    def modify(self, fd: int, mask: int) -> None: ...
    def unregister(self, fd: int) -> None: ...
    def poll(self, timeout: float = -1) -> list[tuple[int, int]]: ...
    def close(self) -> None: ...


class SelectorPoller:
    """epoll's interface over :mod:`selectors`, for systems without epoll."""

    def __init__(self, selector: selectors.BaseSelector | None = None) -> None:
        self._selector = selector or selectors.DefaultSelector()

    @staticmethod
    def _events(mask: int) -> int:
        return (selectors.EVENT_READ if mask & IN else 0) | (selectors.EVENT_WRITE if mask & OUT else 0)

    def register(self, fd: int, mask: int) -> None:
        try:
            self._selector.register(fd, self._events(mask))
        except KeyError:
            raise FileExistsError(fd) from None

    def modify(self, fd: int, mask: int) -> None:
        try:
            self._selector.modify(fd, self._events(mask))
        except KeyError:
            raise FileNotFoundError(fd) from None

    def unregister(self, fd: int) -> None:
        try:
            self._selector.unregister(fd)
        except KeyError:
            raise FileNotFoundError(fd) from None

    def poll(self, timeout: float = -1) -> list[tuple[int, int]]:
        ready = self._selector.select(None if timeout < 0 else timeout)
        return [
            (key.fd, (IN if events & selectors.EVENT_READ else 0) | (OUT if events & selectors.EVENT_WRITE else 0))
            for key, events in ready
        ]

    def close(self) -> None:
        self._selector.close()


class Waker:
    """A socketpair that wakes a waiting poll from another thread: write a byte to one end,
    and the other end, registered with the poller, becomes readable (the self-pipe trick)."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self.fd = self._read.fileno()

    def wake(self) -> None:
        """Safe from any thread. A full buffer means a wake-up is pending already."""
        with contextlib.suppress(OSError):  # BlockingIOError included
            self._write.send(b"\0")

    def drain(self) -> None:
        try:
            while self._read.recv(4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self._read.close()
        self._write.close()


def default_poller() -> Poller:
    """epoll where the system has it, else the best selector it has."""
    if hasattr(select, "epoll"):
        return select.epoll()
    return SelectorPoller()
