"""The PROXY protocol (versions 1 and 2): who the client really was, when a proxy relays the connection.

A proxy in TCP mode (HAProxy with ``send-proxy`` or ``send-proxy-v2``, stunnel, cloud load balancers)
opens a connection of its own to the server, so the server's ``accept()`` sees the proxy's address. The
PROXY protocol (HAProxy's ``doc/proxy-protocol.txt``, cited below as "spec" with its section numbers)
puts a header first on that connection saying what the original connection was: version 1 is one line
of text, ``PROXY TCP4 <source> <destination> <source port> <destination port>\\r\\n``; version 2 is
binary: a 12-byte signature, command, family, length, the addresses, then optional type-length-value
fields (TLVs).

Why it is built this way:

- **Pure protocol logic**, in the manner of h11 and of the echo framers: :func:`parse_proxy_header`
  and :class:`ProxyHeaderParser` take bytes and give a :class:`ProxyHeader`, ``None`` while more bytes
  are needed, or raise. No socket, no clock, so every rule can be tested byte by byte.
  :func:`read_proxy_header` is the only I/O: a few lines feeding the parser from a :class:`Socket`
  under a deadline (the spec, section 2, lets a receiver "apply a short timeout", of "at least 3
  seconds to cover a TCP retransmit"; the default is 5).
- **Fail at the first wrong byte.** The spec asks to abort "as soon as possible" on anything that does
  not match exactly (2.1). Everything received is judged again each time bytes are fed, so a request
  without a header fails on its first byte (``G`` of ``GET`` is neither ``P`` nor ``\\r``), a port of
  65536 on its last digit, a v2 length too large on the 16th byte, before the body is waited for. A
  prefix that could still become a valid header only asks for more.
- **Bounded memory.** A v1 line is at most 107 bytes with its CRLF (2.1: the ``UNKNOWN`` worst case);
  a v2 header may in principle be 16 + 65535 bytes (a 16-bit length). yieldio accepts at most
  :data:`DEFAULT_MAX_LENGTH` (4096) unless told otherwise (``max_length``, up to the protocol's own
  limit): the spec designs headers to fit in one 536-byte segment (2), and what real proxies add as
  TLVs (host name, ALPN, TLS names, a unique id of at most 128 bytes, a cloud endpoint id) stays far
  below that, while a connection nobody has identified yet should not make the server hold 64 KiB.
  The cap is checked on the length field, before the body arrives.
- **Strict version 1**, as the spec writes it: exactly one space between fields; addresses in the
  family's text form (checked with :mod:`ipaddress`, scope ids refused); ports in decimal 0..65535
  with no sign and no leading zero ("Heading zeroes are not permitted ... to avoid any possible
  confusion with octal numbers"; a lone ``0`` is the number zero); the line ends in CRLF, and "a
  single CR or LF character" does not end it (2.1).
- **The bytes after the header belong to the application.** A read often brings the header and the
  first request together: :attr:`ProxyHeader.length` says where the header ends, and the parser keeps
  the rest as :attr:`ProxyHeaderParser.leftover`. :func:`read_proxy_header` does better on a socket:
  it peeks, and takes off the stream exactly the header's bytes, so what follows is still in the
  socket for the handler or for a TLS handshake, and no handler needs to be told of bytes read early.
- **No addresses means "use the connection's own".** A v2 ``LOCAL`` header (the proxy's own
  connection, a health check) and ``UNKNOWN`` (v1, or v2's unspecified family) carry no usable
  addresses: they are reported with ``source`` and ``destination`` set to ``None``. For ``LOCAL`` the
  spec says to "discard the protocol block including the family which is ignored" (2.2), so neither
  the family byte nor the block behind it is read.
- **No guessing.** A server must be configured to require the header, never detect whether it is there
  (spec, section 5: guessing lets any client spoof its address). Here, bytes that do not start a
  header are :class:`MissingProxyHeader`, an error like any other; whether to listen with the
  PROXY protocol at all is the server's configuration.

TLVs are returned raw, as ``(type, value)`` pairs in the order received (``PP2_TYPE_*`` values in the
spec's section 2.2); a ``PP2_TYPE_CRC32C`` checksum is not verified, which the spec leaves to receivers
that support it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import types
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from ..core.scopes import TaskTimeout, timeout_after
from ..io.sockets import Socket

V1_PREFIX = b"PROXY"
V1_MAX_LENGTH = 107  # spec 2.1: "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # spec 2.2
V2_FIXED_LENGTH = 16  # signature, version and command, family and protocol, 16-bit length
V2_MAX_LENGTH = V2_FIXED_LENGTH + 0xFFFF
V2_UNIX_PATH_LENGTH = 108  # spec 2.2: "The addresses are exactly 108 bytes each"
DEFAULT_MAX_LENGTH = 4096
MIN_MAX_LENGTH = V2_FIXED_LENGTH + 2 * V2_UNIX_PATH_LENGTH  # room for the largest address block
DEFAULT_TIMEOUT = 5.0

Command: TypeAlias = Literal["PROXY", "LOCAL"]
Transport: TypeAlias = Literal["TCP4", "TCP6", "UDP4", "UDP6", "UNIX_STREAM", "UNIX_DGRAM", "UNKNOWN"]
InetAddress: TypeAlias = tuple[str, int]
UnixAddress: TypeAlias = str | bytes  # a path, or (bytes starting with NUL) a Linux abstract name
Address: TypeAlias = InetAddress | UnixAddress
TLV: TypeAlias = tuple[int, bytes]
Bytes: TypeAlias = bytes | bytearray | memoryview


class ProxyProtocolError(Exception):
    """The connection did not begin with a valid PROXY header; the message fits one log line."""


class MissingProxyHeader(ProxyProtocolError):
    """The first bytes are neither ``PROXY`` (v1) nor the v2 signature, or the peer sent nothing."""


class MalformedProxyHeader(ProxyProtocolError):
    """The bytes began a PROXY header, then broke its format (or the connection ended inside it)."""


class ProxyHeaderTooLong(ProxyProtocolError):
    """A v1 line with no CRLF within 107 bytes, or a v2 header longer than the accepted maximum."""


class ProxyHeaderTimeout(ProxyProtocolError):
    """No complete PROXY header arrived within the time allowed."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One parsed PROXY header.

    ``source`` is the original client, ``destination`` the address it connected to: ``(host, port)``
    for TCP and UDP (``host`` in :mod:`ipaddress`'s canonical text form), a path for UNIX sockets, and
    ``None`` for both when the header carries no addresses (``LOCAL``, ``UNKNOWN``): then the
    connection's own addresses are the real ones. ``length`` is how many bytes the header took on
    the wire; whatever follows it is application data.
    """

    version: Literal[1, 2]
    command: Command
    transport: Transport
    source: Address | None
    destination: Address | None
    tlvs: tuple[TLV, ...]
    length: int


# ---------------------------------------------------------------------------------------- parsing


def parse_proxy_header(data: bytes | bytearray, max_length: int = DEFAULT_MAX_LENGTH) -> ProxyHeader | None:
    """The PROXY header at the start of ``data``, or ``None`` if ``data`` is a prefix of one.

    Raises a :class:`ProxyProtocolError` as soon as ``data`` cannot begin a valid header.
    ``max_length`` caps a v2 header (v1 lines are at most 107 bytes whatever it says).
    """
    start = bytes(data[: len(V2_SIGNATURE)])
    if V2_SIGNATURE.startswith(start):  # spec 2.2: the 12-byte signature identifies version 2
        return _parse_v2(data, max_length)
    if V1_PREFIX.startswith(start[: len(V1_PREFIX)]):  # spec 2.2: "PROXY" identifies version 1
        return _parse_v1(data)
    raise MissingProxyHeader(f"expected a PROXY header, got {_show(data)}")


def _show(data: Bytes, limit: int = 24) -> str:
    """A short, escaped rendering of received bytes, safe to put in a log line."""
    shown = repr(bytes(data[:limit]))
    return shown + "..." if len(data) > limit else shown


def _parse_v2(data: bytes | bytearray, max_length: int) -> ProxyHeader | None:
    received = len(data)
    if received <= len(V2_SIGNATURE):
        return None
    version, command_code = data[12] >> 4, data[12] & 0x0F
    if version != 2:  # spec 2.2: "the receiver must only accept this value"
        raise MalformedProxyHeader(f"PROXY v2: version {version} in byte 13, expected 2")
    if command_code > 1:  # spec 2.2: "Receivers must drop connections presenting unexpected values"
        raise MalformedProxyHeader(f"PROXY v2: command {command_code} in byte 13, expected 0 (LOCAL) or 1 (PROXY)")
    local = command_code == 0
    if received < 14:
        return None
    family_protocol = data[13]
    transport = _V2_TRANSPORTS.get(family_protocol)
    if transport is None and not local:  # LOCAL: "the family which is ignored"
        raise MalformedProxyHeader(
            f"PROXY v2: family and protocol byte 0x{family_protocol:02x} is none of "
            + ", ".join(f"0x{known:02x}" for known in _V2_TRANSPORTS)
        )
    if received < V2_FIXED_LENGTH:
        return None
    block_length = int.from_bytes(data[14:16], "big")
    length = V2_FIXED_LENGTH + block_length
    if length > max_length:
        raise ProxyHeaderTooLong(f"PROXY v2: a header of {length} bytes is over the limit of {max_length}")
    if local or transport is None:
        return None if received < length else ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, (), length)
    addresses_length = _V2_ADDRESS_LENGTHS[family_protocol >> 4]
    if block_length < addresses_length:
        raise MalformedProxyHeader(
            f"PROXY v2: length {block_length} is too short for {transport} addresses ({addresses_length} bytes)"
        )
    if received < length:
        return None
    block = bytes(data[V2_FIXED_LENGTH:length])
    source, destination = _decode_v2_addresses(family_protocol >> 4, block[:addresses_length])
    return ProxyHeader(2, "PROXY", transport, source, destination, _parse_tlvs(block[addresses_length:]), length)


# spec 2.2, the family and protocol byte: "In practice, the following protocol bytes are expected"
_V2_TRANSPORTS: dict[int, Transport] = {
    0x00: "UNKNOWN",
    0x11: "TCP4",
    0x12: "UDP4",
    0x21: "TCP6",
    0x22: "UDP6",
    0x31: "UNIX_STREAM",
    0x32: "UNIX_DGRAM",
}
_V2_FAMILY_PROTOCOL = {transport: byte for byte, transport in _V2_TRANSPORTS.items()}
# by family (the byte's high nibble): UNSPEC carries none; two addresses, then two 16-bit ports for IP
_V2_ADDRESS_LENGTHS = {0x0: 0, 0x1: 2 * 4 + 2 * 2, 0x2: 2 * 16 + 2 * 2, 0x3: 2 * V2_UNIX_PATH_LENGTH}


def _decode_v2_addresses(family: int, block: bytes) -> tuple[Address | None, Address | None]:
    if family == 0x3:
        return _decode_unix_path(block[:V2_UNIX_PATH_LENGTH]), _decode_unix_path(block[V2_UNIX_PATH_LENGTH:])
    if family == 0x0:
        return None, None
    size = 4 if family == 0x1 else 16
    ports = block[2 * size :]
    return (
        (str(ipaddress.ip_address(block[:size])), int.from_bytes(ports[:2], "big")),
        (str(ipaddress.ip_address(block[size : 2 * size])), int.from_bytes(ports[2:], "big")),
    )


def _decode_unix_path(raw: bytes) -> UnixAddress:
    """A path up to its first NUL, as :func:`os.fsdecode` gives it; an abstract name stays bytes.

    This is how the socket module itself reports AF_UNIX addresses on Linux. The 108 bytes carry no
    length, so an abstract name loses its trailing NULs, which are indistinguishable from padding.
    """
    if raw[:1] == b"\0" and raw.strip(b"\0"):
        return raw.rstrip(b"\0")
    return os.fsdecode(raw.split(b"\0", 1)[0])


def _parse_tlvs(raw: bytes) -> tuple[TLV, ...]:
    """Type (1 byte), length (2 bytes, big-endian), value: repeated to the end of the header (spec 2.2)."""
    tlvs: list[TLV] = []
    offset = 0
    while offset < len(raw):
        if len(raw) - offset < 3:
            raise MalformedProxyHeader(f"PROXY v2: {len(raw) - offset} stray bytes after the TLVs (a TLV is 3 or more)")
        kind = raw[offset]
        end = offset + 3 + int.from_bytes(raw[offset + 1 : offset + 3], "big")
        if end > len(raw):
            raise MalformedProxyHeader(
                f"PROXY v2: TLV 0x{kind:02x} runs {end - len(raw)} bytes past the end of the header"
            )
        tlvs.append((kind, raw[offset + 3 : end]))
        offset = end
    return tuple(tlvs)


_V1_PROTOCOLS = (b"TCP4", b"TCP6", b"UNKNOWN")
_V1_FIELD_NAMES = ("source address", "destination address", "source port", "destination port")
_V1_ADDRESS_CHARACTERS = {4: b"0123456789.", 6: b"0123456789abcdefABCDEF:."}
_V1_ADDRESS_MAX = {4: len("255.255.255.255"), 6: len("0000:0000:0000:0000:0000:ffff:255.255.255.255")}


def _parse_v1(data: bytes | bytearray) -> ProxyHeader | None:
    line = bytes(data[:V1_MAX_LENGTH])
    if len(line) <= len(V1_PREFIX):
        return None
    if line[5] != 0x20:
        raise MalformedProxyHeader(f"PROXY v1: expected one space after PROXY, got {_show(line[5:6])}")
    line_break = min(position for position in (line.find(b"\r"), line.find(b"\n"), len(line)) if position >= 0)
    words = line[6:line_break].split(b" ")
    _check_v1_words(words, complete=line_break < len(line))  # after a CR (or LF), the line must end there
    end = _v1_line_end(line, line_break)
    if end is None:
        return None
    if words[0] == b"UNKNOWN":
        return ProxyHeader(1, "PROXY", "UNKNOWN", None, None, (), end)
    protocol, source, destination, source_port, destination_port = words
    version = 4 if protocol == b"TCP4" else 6
    return ProxyHeader(
        1,
        "PROXY",
        "TCP4" if version == 4 else "TCP6",
        (_v1_address(source, version, _V1_FIELD_NAMES[0]), int(source_port)),
        (_v1_address(destination, version, _V1_FIELD_NAMES[1]), int(destination_port)),
        (),
        end,
    )


def _v1_line_end(line: bytes, line_break: int) -> int | None:
    """Where the line ends, after its CRLF; None if the CRLF may still come within 107 bytes."""
    if line_break < len(line) and line[line_break] == 0x0A:
        raise MalformedProxyHeader("PROXY v1: LF without CR (the line must end in CRLF)")
    if line_break + 1 >= len(line):  # no line break yet, or a CR as the last byte so far
        if len(line) == V1_MAX_LENGTH:
            raise ProxyHeaderTooLong(f"PROXY v1: no CRLF within {V1_MAX_LENGTH} bytes")
        return None
    if line[line_break + 1] != 0x0A:
        raise MalformedProxyHeader("PROXY v1: CR not followed by LF (the line must end in CRLF)")
    return line_break + 2


def _check_v1_words(words: list[bytes], *, complete: bool) -> None:
    """Raise at the first of the words after ``PROXY `` that cannot be right.

    Unless ``complete``, the last word may still be growing, and only has to be the start of a valid one.
    """
    protocol, fields = words[0], words[1:]
    growing_protocol = not complete and not fields
    if protocol not in _V1_PROTOCOLS and not (
        growing_protocol and any(name.startswith(protocol) for name in _V1_PROTOCOLS)
    ):
        raise MalformedProxyHeader(f"PROXY v1: protocol {_show(protocol)} is not TCP4, TCP6 or UNKNOWN")
    if protocol == b"UNKNOWN":
        return  # "the receiver must ignore anything presented before the CRLF" (spec 2.1)
    if len(fields) > 4 or (complete and len(fields) < 4):
        raise MalformedProxyHeader(
            f"PROXY v1: {protocol.decode()} needs 4 fields (addresses, ports) after it, got {len(fields)}"
        )
    version = 4 if protocol == b"TCP4" else 6
    for index, field in enumerate(fields):
        name = _V1_FIELD_NAMES[index]
        growing = not complete and index == len(fields) - 1
        if not field and not growing:
            raise MalformedProxyHeader(f"PROXY v1: empty {name} (fields are separated by exactly one space)")
        if index >= 2:
            _check_v1_port_prefix(field, name)
        elif growing:
            _check_v1_address_prefix(field, version, name)
        else:
            _v1_address(field, version, name)


def _check_v1_address_prefix(field: bytes, version: int, name: str) -> None:
    """Raise unless ``field`` is the beginning (or the whole) of an address of this family."""
    possible = not field.translate(None, _V1_ADDRESS_CHARACTERS[version]) and len(field) <= _V1_ADDRESS_MAX[version]
    if possible:
        possible = _ipv4_prefix_possible(field) if version == 4 else _ipv6_prefix_possible(field)
    if not possible:
        raise MalformedProxyHeader(f"PROXY v1: {name} {_show(field)} is not an IPv{version} address")


def _ipv4_prefix_possible(text: bytes) -> bool:
    """Up to 4 decimals 0..255 with no leading zero (spec 2.1), separated by dots, the last one growing."""
    *octets, last = text.split(b".")
    return (
        len(octets) <= 3
        and all(_octet_possible(octet, growing=False) for octet in octets)
        and (_octet_possible(last, growing=True))
    )


def _octet_possible(octet: bytes, *, growing: bool) -> bool:
    if not octet:
        return growing
    return octet.isdigit() and (len(octet) == 1 or octet[0] != 0x30) and int(octet) <= 255


def _ipv6_prefix_possible(text: bytes) -> bool:
    """Groups of up to 4 hex digits; one ``::`` at most; 8 groups (7 with ``::``), a final dotted IPv4 counting 2."""
    *groups, last = text.split(b":")
    dotted = b"." in last
    compressed = b"::" in text
    return (
        all(len(group) <= 4 and b"." not in group for group in groups)
        and (_ipv4_prefix_possible(last) if dotted else len(last) <= 4)
        and b":::" not in text
        and text.count(b"::") <= 1
        and len(groups) <= (8 if compressed else 7)
        and sum(1 for group in groups if group) + (2 if dotted else 1 if last else 0) <= (7 if compressed else 8)
    )


def _v1_address(field: bytes, version: int, name: str) -> str:
    """The address in canonical form; the character check first keeps out what ipaddress allows (scope ids)."""
    _check_v1_address_prefix(field, version, name)
    try:
        address = ipaddress.IPv4Address(field.decode()) if version == 4 else ipaddress.IPv6Address(field.decode())
    except ValueError:
        raise MalformedProxyHeader(f"PROXY v1: {name} {_show(field)} is not an IPv{version} address") from None
    return str(address)


def _check_v1_port_prefix(field: bytes, name: str) -> None:
    """Raise unless ``field`` is (the start of) a decimal 0..65535 with no sign and no leading zero."""
    if field and not (field.isdigit() and (len(field) == 1 or field[0] != 0x30) and int(field) <= 0xFFFF):
        raise MalformedProxyHeader(f"PROXY v1: {name} {_show(field)} is not a port (0..65535, no leading zero)")


class ProxyHeaderParser:
    """Feed it the bytes a connection brings, as they come, until it returns the header.

    ``feed(data)`` returns ``None`` while the bytes so far are the beginning of a valid header, the
    :class:`ProxyHeader` once it is complete, and raises a :class:`ProxyProtocolError` at the first
    byte that cannot be part of one. ``feed(b"")`` means the connection ended (as in h11): it raises,
    unless the header was complete. Once the header is complete, :attr:`leftover` holds the bytes that
    came after it, which belong to the application.
    """

    __slots__ = ("_buffer", "header", "leftover", "max_length", "received")

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        if not MIN_MAX_LENGTH <= max_length <= V2_MAX_LENGTH:
            raise ValueError(f"max_length must be {MIN_MAX_LENGTH}..{V2_MAX_LENGTH}, not {max_length}")
        self.max_length = max_length
        self.received = 0
        self.header: ProxyHeader | None = None
        self.leftover = b""
        self._buffer = bytearray()

    def feed(self, data: Bytes) -> ProxyHeader | None:
        if self.header is not None:
            raise RuntimeError("the PROXY header is complete; the bytes after it are the application's")
        if not data:
            if not self._buffer:
                raise MissingProxyHeader("the connection ended before any PROXY header")
            raise MalformedProxyHeader(f"the connection ended inside the PROXY header, after {_show(self._buffer)}")
        self._buffer += data
        self.received += len(data)
        header = parse_proxy_header(self._buffer, self.max_length)
        if header is not None:
            self.header = header
            self.leftover = bytes(self._buffer[header.length :])
            self._buffer = bytearray()
        return header


@types.coroutine
def read_proxy_header(
    sock: Socket, timeout: float = DEFAULT_TIMEOUT, *, max_length: int = DEFAULT_MAX_LENGTH
) -> Generator[Any, Any, ProxyHeader]:
    """Take the PROXY header that begins ``sock``'s stream off it, and not one byte more.

    Whatever follows the header stays in the socket, for whoever reads next: the handler, or a
    TLS handshake (a proxy sends the header in the clear, before TLS). Raises
    :class:`ProxyHeaderTimeout` if no complete header arrives within ``timeout`` seconds, and the
    parser's errors as soon as the bytes go wrong. ``await`` or ``yield from`` it.
    """
    taken = bytearray()
    try:
        header: ProxyHeader = yield from timeout_after(timeout, _take_header(sock, max_length, taken))
    except TaskTimeout:
        raise ProxyHeaderTimeout(
            f"no complete PROXY header within {timeout:g}s ({len(taken)} bytes received)"
        ) from None
    return header


@types.coroutine
def _take_header(sock: Socket, max_length: int, taken: bytearray) -> Generator[Any, Any, ProxyHeader]:
    # Peek (MSG_PEEK leaves the bytes in the kernel's buffer) and judge what has arrived. While the
    # header is incomplete, every byte that arrived is part of it: take them all, so that the next
    # wait is for new bytes (the socket would stay readable otherwise). Once it is complete, take
    # exactly the rest of it.
    raw = sock.socket
    while True:
        try:
            peeked = raw.recv(max_length - len(taken), socket.MSG_PEEK)
        except BlockingIOError:
            yield from sock.wait_readable()
            continue
        if not peeked:
            parser = ProxyHeaderParser(max_length)
            parser.feed(bytes(taken))
            parser.feed(b"")  # raises: the connection ended before the header did
        header = parse_proxy_header(taken + peeked, max_length)
        wanted = len(peeked) if header is None else header.length - len(taken)
        taken += raw.recv(wanted)  # at hand: it was just peeked
        if header is not None:
            return header


# --------------------------------------------------------------------------------------- building


def build_proxy_header(
    version: Literal[1, 2],
    source: Address | None = None,
    destination: Address | None = None,
    *,
    datagram: bool = False,
    tlvs: Iterable[TLV] = (),
    local: bool = False,
) -> bytes:
    """The PROXY header a proxy would send for a connection from ``source`` to ``destination``.

    Addresses are ``(host, port)`` with a numeric IPv4 or IPv6 host, written in canonical form (TCP,
    or UDP with ``datagram``), or UNIX socket paths (v2 only; ``datagram`` for SOCK_DGRAM). Neither
    address gives ``UNKNOWN``. ``local`` (v2 only) gives the ``LOCAL`` header of the proxy's own
    connections, with no addresses and no TLVs ("it should not present any address", spec 2.2).
    """
    tlv_list = list(tlvs)
    if version == 1:
        if local or datagram or tlv_list:
            raise ValueError("PROXY v1 has no LOCAL command, no datagrams and no TLVs")
        if source is None and destination is None:
            return b"PROXY UNKNOWN\r\n"
        (source_ip, source_port), (destination_ip, destination_port) = _ip_endpoints(source, destination)
        return (
            f"PROXY TCP{source_ip.version} {source_ip} {destination_ip} {source_port} {destination_port}\r\n".encode()
        )
    if version != 2:
        raise ValueError(f"version must be 1 or 2, not {version!r}")
    if local:
        if source is not None or destination is not None or tlv_list or datagram:
            raise ValueError("a LOCAL header carries no addresses and no TLVs")
        return V2_SIGNATURE + bytes([0x20, 0x00, 0x00, 0x00])
    block = bytearray()
    if source is None and destination is None:
        family_protocol = 0x00
    elif isinstance(source, tuple) or isinstance(destination, tuple):
        (source_ip, source_port), (destination_ip, destination_port) = _ip_endpoints(source, destination)
        family_protocol = (0x10 if source_ip.version == 4 else 0x20) | (0x2 if datagram else 0x1)
        block += source_ip.packed + destination_ip.packed
        block += source_port.to_bytes(2, "big") + destination_port.to_bytes(2, "big")
    elif source is None or destination is None:
        raise ValueError("give both addresses, or neither")
    else:
        family_protocol = 0x32 if datagram else 0x31
        block += _encode_unix_path(source) + _encode_unix_path(destination)
    for kind, value in tlv_list:
        if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
            raise ValueError(f"a TLV has a type 0..255 and at most 65535 bytes, not type {kind}, {len(value)} bytes")
        block += bytes([kind]) + len(value).to_bytes(2, "big") + value
    if len(block) > 0xFFFF:
        raise ValueError(f"addresses and TLVs take {len(block)} bytes; a v2 header holds at most 65535")
    return V2_SIGNATURE + bytes([0x21, family_protocol]) + len(block).to_bytes(2, "big") + block


IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip_endpoints(
    source: Address | None, destination: Address | None
) -> tuple[tuple[IPAddress, int], tuple[IPAddress, int]]:
    if not isinstance(source, tuple) or not isinstance(destination, tuple):
        raise TypeError(f"expected two (host, port) addresses, got {source!r} and {destination!r}")
    endpoints = _ip_endpoint(source), _ip_endpoint(destination)
    if endpoints[0][0].version != endpoints[1][0].version:
        raise ValueError(f"{source[0]!r} and {destination[0]!r} are not of the same IP version")
    return endpoints


def _ip_endpoint(address: InetAddress) -> tuple[IPAddress, int]:
    host, port = address
    ip = ipaddress.ip_address(host)  # a ValueError for a host name or a malformed address
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        raise ValueError(f"{host!r}: the PROXY protocol carries no IPv6 scope id")
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port!r} is not 0..65535")
    return ip, port


def _encode_unix_path(path: UnixAddress) -> bytes:
    raw = os.fsencode(path)
    abstract = raw[:1] == b"\0"
    if len(raw) > V2_UNIX_PATH_LENGTH or (raw.endswith(b"\0") if abstract else b"\0" in raw):
        raise ValueError(
            f"UNIX address {path!r}: at most {V2_UNIX_PATH_LENGTH} bytes, no NUL in a path, "
            "no NUL at the end of an abstract name (it would read back as padding)"
        )
    return raw.ljust(V2_UNIX_PATH_LENGTH, b"\0")
