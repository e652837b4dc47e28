"""Where a monitor listens and how it is named: the small part of the monitor a command needs.

``yieldio serve --monitor`` and ``yieldio ps`` parse addresses and open the endpoint's socket
before anything runs; the endpoint itself (:mod:`.monitor_web`) brings an HTTP server and an
HTTP client, some megabytes of the standard library, which a server started without a monitor
should not carry in every process. So they live here, and the web side is imported when used.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket

DEFAULT_PORT = 48802  # curio's monitor port, where people look for one
DEFAULT_ADDRESS = ("127.0.0.1", DEFAULT_PORT)


class BadAddress(ValueError):
    """A monitor address that is not [HOST:]PORT with an IP address (or localhost)."""


def parse_monitor_address(text: str) -> tuple[str, int]:
    """``--monitor [HOST:]PORT``: ``PORT`` and ``:PORT`` mean 127.0.0.1 (unlike ``--listen``, where an empty
    host is every address: a monitor is reached from elsewhere only when an address is named);
    HOST is an IP address (IPv6 in brackets) or ``localhost``."""
    host, colon, port_text = text.strip().rpartition(":")
    if not colon:
        host = ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or int(port_text) > 65535:
        raise BadAddress(f"expected [HOST:]PORT, not {text!r}")
    if host in ("", "localhost"):
        return "127.0.0.1", int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise BadAddress(f"the monitor's host must be an IP address or localhost, not {host!r}") from None
    return host, int(port_text)


def parse_command_address(text: str) -> tuple[str, int]:
    """A command's ADDR: HOST:PORT, always with its colon (``:PORT`` is 127.0.0.1)."""
    if ":" not in text:
        raise BadAddress(f"an address is HOST:PORT, with a colon, not {text!r}")
    return parse_monitor_address(text)


def plain_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP address, IPv4 when it is an IPv4 address mapped into IPv6 (a dual-stack socket's peers)."""
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback(host: str) -> bool:
    return plain_address(host).is_loopback


def open_monitor_socket(host: str, port: int) -> socket.socket:
    """The endpoint's listening socket, opened before anything is served; OSError if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    return sock


def token_for(host: str, given: str | None) -> str | None:
    """The token a monitor on ``host`` requires: the one given; else one made now, unless on loopback."""
    if given or is_loopback(host):
        return given or None
    return secrets.token_urlsafe(18)
