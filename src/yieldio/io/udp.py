"""UDP sockets: bind one, and know when a datagram did not fit.

A datagram socket is the same :class:`~.sockets.Socket` as a TCP one; its
``recvfrom``, ``recvfrom_into`` and ``sendto`` are optimistic like ``recv``
(try the system call, park only on ``BlockingIOError``). What UDP adds is a
way to lose data silently, and two rules here stop that:

- *A datagram larger than the receive buffer is reported, not cut.* The
  system keeps the part that fits and drops the rest without a word. On
  Linux, asking with ``MSG_TRUNC`` makes it return the datagram's real length
  instead, so ``recvfrom`` and ``recvfrom_into`` can tell and raise
  :class:`DatagramTooLarge` (the datagram is consumed; the next call reads
  the next one). Other systems don't say, and there a datagram is cut as
  the standard library cuts it.
- *A datagram too large to send is refused, not split:* ``sendto`` raises
  ``OSError(EMSGSIZE)``, as the system does; UDP has no way to send half.

:func:`udp_bind` sets no ``SO_REUSEADDR``: for UDP on Linux it would let a
second program bind the same port and quietly take a share of the
datagrams. ``reuse_port=True`` asks for that sharing on purpose, between
processes of one server (``--workers``).
"""

from __future__ import annotations

import socket
from typing import Any

from .sockets import Socket


def _resolve(host: str, port: int) -> tuple[int, Any]:
    """(family, address) to bind; '' means every IPv4 address, as for ``tcp_listen``."""
    if host == "":
        return socket.AF_INET, ("", port)
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)[0]
    return family, address


def udp_bind(address: tuple[str, int], *, reuse_port: bool = False, dual_stack: bool = False) -> Socket:
    """A datagram :class:`~.sockets.Socket` bound to ``(host, port)`` (IPv4 or IPv6; '' is every IPv4 address).

    ``dual_stack`` makes an IPv6 socket take IPv4 datagrams too (see ``tcp_listen``).
    """
    family, bind_address = _resolve(address[0], address[1])
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if dual_stack and family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(bind_address)
    except BaseException:
        sock.close()
        raise
    return Socket(sock)
