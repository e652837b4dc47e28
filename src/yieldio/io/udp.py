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

*A reply leaves from the address the datagram was sent to.* A socket bound to
a wildcard address (``0.0.0.0``, ``::``) receives datagrams sent to any of the
host's addresses, and a reply sent with plain ``sendto`` takes its source
address from the route to the client, which need not be the address the
client sent to (a second address on the interface, 127.0.0.2 on loopback, a
VIP): a connected UDP client (``nc -u``, resolvers, probes) drops it. On
Linux :func:`ask_destination` makes the system report each datagram's
destination (``IP_PKTINFO``, ``IPV6_RECVPKTINFO``) in ``recvmsg``'s ancillary
data, and :func:`reply_source` turns that into the ancillary data ``sendmsg``
needs to send from it. A dual-stack IPv6 socket reports IPv4 traffic as
IPv4-mapped ``IPV6_PKTINFO``, which Linux also takes back for the reply.
"""

from __future__ import annotations

import ipaddress
import socket
import sys

from .sockets import Socket, bind_socket

# Linux's number for IP_PKTINFO (the socket module names it only in newer Pythons).
IP_PKTINFO: int = getattr(socket, "IP_PKTINFO", 8)
# Room for the ancillary data of one datagram: an in6_pktinfo (20 bytes) or an in_pktinfo (12).
DESTINATION_SPACE = socket.CMSG_SPACE(20)
_NO_INTERFACE = bytes(4)


def udp_bind(address: tuple[str, int], *, reuse_port: bool = False, dual_stack: bool = False) -> Socket:
    """A datagram :class:`~.sockets.Socket` bound to ``(host, port)`` (IPv4 or IPv6; '' is every IPv4 address).

    ``dual_stack`` makes an IPv6 socket take IPv4 datagrams too (see ``tcp_listen``). On a wildcard
    address it asks for each datagram's destination at once (:func:`ask_destination`), so that even
    the first datagram, arriving before anyone serves the socket, is answered from the right address.
    """
    sock = bind_socket(address, socket.SOCK_DGRAM, reuse_port=reuse_port, dual_stack=dual_stack)
    try:
        ask_destination(sock)
    except BaseException:
        sock.close()
        raise
    return Socket(sock)


def ask_destination(sock: socket.socket) -> bool:
    """On a socket bound to a wildcard address, ask the system to report the address each datagram
    was sent to (see the module); whether it will (Linux, IPv4 or IPv6). On a socket bound to one
    address there is nothing to ask: replies leave from that address anyway."""
    if not sys.platform.startswith("linux") or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    if not ipaddress.ip_address(sock.getsockname()[0]).is_unspecified:
        return False
    if sock.family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    else:  # IPv6, and on a dual-stack socket IPv4 too (IPv4-mapped)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    return True


def reply_source(ancillary: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """``sendmsg``'s ancillary data for a reply from the address ``recvmsg``'s ``ancillary`` names as
    the datagram's destination; empty if it names none (then the route picks, as ``sendto`` does).

    The interface index is cleared, so the route still chooses the way out (where the client's
    route is not the way the datagram came in), but for an IPv6 link-local address, which means
    nothing without its interface.
    """
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            # struct in_pktinfo {ipi_ifindex; ipi_spec_dst (the local address: the source); ipi_addr}
            return [(level, kind, _NO_INTERFACE + data[4:12])]
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            # struct in6_pktinfo {ipi6_addr; ipi6_ifindex}
            link_local = data[0] == 0xFE and data[1] & 0xC0 == 0x80
            return [(level, kind, data[:20] if link_local else data[:16] + _NO_INTERFACE)]
    return []
