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

from .sockets import Socket, bind_socket


def udp_bind(address: tuple[str, int], *, reuse_port: bool = False, dual_stack: bool = False) -> Socket:
    """A datagram :class:`~.sockets.Socket` bound to ``(host, port)`` (IPv4 or IPv6; '' is every IPv4 address).

    ``dual_stack`` makes an IPv6 socket take IPv4 datagrams too (see ``tcp_listen``).
    """
    sock = bind_socket(address, socket.SOCK_DGRAM, reuse_port=reuse_port, dual_stack=dual_stack)
    return Socket(sock)
