"""The Python cost of one echoed message in yieldio's kernel, without the operating system.

The echo benchmark is dominated by system calls, and this machine's speed
drifts by 10-20 % between runs, so a change of a few percent in the kernel's
own work can't be seen there. This script replaces the poller with one that
reports every connection readable at once, and the sockets with C builtins
(``recv_into`` and ``send`` are ``len``), then times the real kernel and the
real echo handler on CPU time. The pure echo loop runs (YIELDIO_PURE=1 is
set here): the compiled step reads and writes the descriptor itself, which
no fake socket can answer, and the kernel's part is the same. It is how "tracing off costs nothing" was
checked: run it on two checkouts and compare; ``--watched`` measures the
kernel a monitor watches (each task counting its steps).

    python benchmarks/kernel_overhead.py [--src PATH] [--rounds N] [--watched]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any

CONNECTIONS = 100


class _Done(Exception):
    pass


class _EveryoneReadable:
    """A poller whose every poll says all connections are readable, ``rounds`` times."""

    def __init__(self, fds: list[int], rounds: int) -> None:
        self.events = [(fd, 1) for fd in fds]
        self.left = rounds

    def register(self, fd: int, mask: int) -> None: ...
    def modify(self, fd: int, mask: int) -> None: ...
    def unregister(self, fd: int) -> None: ...
    def close(self) -> None: ...

    def poll(self, timeout: float = -1) -> list[tuple[int, int]]:
        self.left -= 1
        if self.left < 0:
            raise _Done
        return self.events


class _FakeSocket:
    recv_into = staticmethod(len)  # "received" a whole buffer
    send = staticmethod(len)  # "sent" all of it


class _FakeClient:
    is_tls = False

    def __init__(self, fd: int) -> None:
        self.socket = _FakeSocket()
        self.readable = ("recv", fd)
        self.writable = ("send", fd)
        self.bytes_in = self.bytes_out = 0


def measure(rounds: int, watched: bool = False) -> float:
    from yieldio.core.kernel import Kernel
    from yieldio.servers.echo import echo_handler

    fds = list(range(100, 100 + CONNECTIONS))
    kernel = Kernel(poller=_EveryoneReadable(fds, rounds))
    if watched:
        kernel.watch()  # as a monitor does: every task counts its steps
    clients: list[Any] = [_FakeClient(fd) for fd in fds]
    for client in clients:
        kernel.spawn(echo_handler(client, None, prefix=b""))
    start = time.process_time()
    with contextlib.suppress(_Done):
        kernel.run()
    elapsed = time.process_time() - start
    if any(client.bytes_in == 0 for client in clients):  # a handler that crashed at once measures nothing
        raise SystemExit("the echo handler did not echo: the fake client no longer fits it")
    return elapsed / (rounds * CONNECTIONS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=None, help="the src/ directory to import yieldio from")
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--watched", action="store_true", help="a watched kernel, as with --monitor")
    args = parser.parse_args()
    os.environ["YIELDIO_PURE"] = "1"  # before yieldio is imported: see the module doc
    if args.src:
        sys.path.insert(0, args.src)
    best = min(measure(args.rounds, args.watched) for _ in range(args.repeat))
    print(f"{best * 1e9:.0f} ns of kernel + handler work per echoed message (best of {args.repeat})")


if __name__ == "__main__":
    main()
