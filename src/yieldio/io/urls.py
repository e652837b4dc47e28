"""Listener URLs: what ``yieldio serve --listen URL`` accepts, parsed without I/O.

One echo server process can listen on several sockets at once, of four
kinds, each written as a URL so that one flag (and one environment
variable, ``YIELDIO_LISTEN``, a comma-separated list) says everything:

- ``tcp://HOST:PORT`` and ``tls://HOST:PORT``: a stream listener, plain or
  with TLS (the certificate comes from ``--tls-cert``/``--tls-key``);
- ``udp://HOST:PORT``: RFC 862's datagram echo;
- ``unix:PATH``: a Unix domain stream socket (``unix:@NAME`` is Linux's
  abstract namespace, as ``ss`` and systemd write it).

HOST is a name, an IPv4 address or an IPv6 address in brackets
(``tcp://[::1]:9000``); an empty host (``tcp://:9000``) means every
address, as in Istio's ``tcp-echo-server`` and Go's ``net.Listen``. PORT is
required (0 picks a free one). Anything else is refused here, with a
message that says what was expected, before any socket is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

Kind = Literal["tcp", "tls", "udp", "unix"]
KINDS: tuple[Kind, ...] = ("tcp", "tls", "udp", "unix")
EXAMPLES = "tcp://HOST:PORT, tls://HOST:PORT, udp://HOST:PORT or unix:PATH"


class BadListenURL(ValueError):
    """A ``--listen`` value that is not one of the four forms."""


@dataclass(frozen=True)
class ListenURL:
    """A parsed listener: ``kind`` and either ``host``/``port`` or ``path``."""

    kind: Kind
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_stream(self) -> bool:
        return self.kind != "udp"

    def display(self) -> str:
        """As logs and messages write it: a TCP listener as ``host:port``, the others as their URL."""
        if self.kind == "tcp":
            return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return str(self)

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path.replace(chr(0), '@', 1) if self.path.startswith(chr(0)) else self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind}://{host}:{self.port}"


def parse_listen_url(text: str) -> ListenURL:
    """``tcp://[::1]:9000`` -> ListenURL('tcp', '::1', 9000); raises BadListenURL with a readable reason."""
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in KINDS:
        raise BadListenURL(f"{text!r} is not a listener URL: use {EXAMPLES}")
    if scheme == "unix":
        path = rest.removeprefix("//")
        if not path:
            raise BadListenURL(f"{text!r}: the Unix socket path is missing (unix:/run/echo.sock)")
        if path.startswith("@"):
            path = "\0" + path[1:]  # the abstract namespace
        if "\0" in path[1:]:
            raise BadListenURL(f"{text!r}: a path cannot contain NUL")
        return ListenURL("unix", path=path)
    if not rest.startswith("//"):
        raise BadListenURL(f"{text!r}: expected {scheme}://HOST:PORT")
    hostport = rest[2:]
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or not after.startswith(":"):
            raise BadListenURL(f"{text!r}: an IPv6 address goes in brackets, followed by :PORT ({scheme}://[::1]:9000)")
        if ":" not in host:
            raise BadListenURL(f"{text!r}: brackets are for IPv6 addresses only")
        port_text = after[1:]
    else:
        host, colon, port_text = hostport.rpartition(":")
        if not colon:
            raise BadListenURL(f"{text!r}: the port is missing ({scheme}://HOST:PORT; 0 picks a free one)")
        if ":" in host:
            raise BadListenURL(f"{text!r}: put an IPv6 address in brackets ({scheme}://[{host}]:{port_text})")
    if "/" in port_text or "?" in port_text:
        raise BadListenURL(f"{text!r}: nothing may follow the port")
    if not port_text.isdigit() or not port_text.isascii():
        raise BadListenURL(f"{text!r}: the port must be a number from 0 to 65535, not {port_text!r}")
    port = int(port_text)
    if port > 65535:
        raise BadListenURL(f"{text!r}: the port must be a number from 0 to 65535, not {port}")
    return ListenURL(cast(Kind, scheme), host=host, port=port)


def parse_listen_list(text: str) -> list[ListenURL]:
    """``YIELDIO_LISTEN``'s form: URLs separated by commas (spaces around them are ignored)."""
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise BadListenURL("no listener URL given")
    return [parse_listen_url(item) for item in items if item]
