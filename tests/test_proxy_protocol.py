"""The PROXY protocol: headers fed byte by byte and split everywhere, round trips, early failures, a socketpair.

The wire bytes of the valid cases are written out by hand from the spec (HAProxy's proxy-protocol.txt),
not made by the module's builder, so parser and builder are each checked against the spec itself.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
import time
from collections.abc import Generator
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import yieldio
from yieldio import Socket, TaskTimeout, sleep, spawn, timeout_after
from yieldio.servers.proxy_protocol import (
    DEFAULT_MAX_LENGTH,
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    Address,
    MalformedProxyHeader,
    MissingProxyHeader,
    ProxyHeader,
    ProxyHeaderParser,
    ProxyHeaderTimeout,
    ProxyHeaderTooLong,
    ProxyProtocolError,
    Transport,
    build_proxy_header,
    parse_proxy_header,
    read_proxy_header,
)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
APP = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"
FFFF6 = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
UNIX_PATH = b"/run/haproxy/client.sock"


def v1(wire: bytes, transport: Any, source: Any = None, destination: Any = None) -> tuple[bytes, ProxyHeader]:
    return wire, ProxyHeader(1, "PROXY", transport, source, destination, (), len(wire))


def v2(wire: bytes, command: Any, transport: Any, source: Any, destination: Any, tlvs: Any = ()) -> Any:
    return wire, ProxyHeader(2, command, transport, source, destination, tlvs, len(wire))


VALID = {
    # spec 2.1's example line
    "v1 TCP4": v1(
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443)
    ),
    "v1 TCP6": v1(b"PROXY TCP6 2001:db8::1 ::1 0 65535\r\n", "TCP6", ("2001:db8::1", 0), ("::1", 65535)),
    # the longest TCP6 line (104 bytes in spec 2.1), upper case and leading zeros in groups: canonical on the way out
    "v1 TCP6 longest": v1(
        b"PROXY TCP6 2001:0DB8:0000:0000:0000:0000:0000:0001 " + FFFF6.upper() + b" 65535 65535\r\n",
        "TCP6",
        ("2001:db8::1", 65535),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
    ),
    "v1 TCP6 mapped IPv4": v1(b"PROXY TCP6 ::ffff:10.0.0.1 ::1 1 2\r\n", "TCP6", ("::ffff:a00:1", 1), ("::1", 2)),
    "v1 UNKNOWN": v1(b"PROXY UNKNOWN\r\n", "UNKNOWN"),
    # the worst case of spec 2.1: exactly 107 bytes, whatever follows UNKNOWN is ignored
    "v1 UNKNOWN 107 bytes": v1(b"PROXY UNKNOWN " + FFFF6 + b" " + FFFF6 + b" 65535 65535\r\n", "UNKNOWN"),
    "v1 UNKNOWN junk": v1(b"PROXY UNKNOWN not \xff parsed  at all\r\n", "UNKNOWN"),
    # a capture of HAProxy's send-proxy-v2: TCP over IPv4, 172.19.0.1:42578 -> 172.19.0.3:80
    "v2 TCP4": v2(
        SIG + bytes.fromhex("2111000c ac130001 ac130003 a652 0050"),
        "PROXY",
        "TCP4",
        ("172.19.0.1", 42578),
        ("172.19.0.3", 80),
    ),
    "v2 UDP6 with TLVs": v2(
        SIG
        + bytes.fromhex("2122 0036")  # 36 bytes of addresses + 18 of TLVs
        + bytes.fromhex("20010db8000000000000000000000001")
        + bytes.fromhex("00000000000000000000000000000001")
        + bytes.fromhex("1f90 0035")
        + bytes.fromhex("01 0002")
        + b"h2"  # PP2_TYPE_ALPN
        + bytes.fromhex("02 0007")
        + b"example"  # PP2_TYPE_AUTHORITY
        + bytes.fromhex("04 0000"),  # PP2_TYPE_NOOP, empty
        "PROXY",
        "UDP6",
        ("2001:db8::1", 8080),
        ("::1", 53),
        ((0x01, b"h2"), (0x02, b"example"), (0x04, b"")),
    ),
    "v2 UNIX stream": v2(
        SIG + bytes.fromhex("2131 00d8") + UNIX_PATH.ljust(108, b"\0") + b"\0abstract".ljust(108, b"\0"),
        "PROXY",
        "UNIX_STREAM",
        UNIX_PATH.decode(),
        b"\0abstract",
    ),
    "v2 UNIX datagram, unnamed": v2(SIG + bytes.fromhex("2132 00d8") + bytes(216), "PROXY", "UNIX_DGRAM", "", ""),
    "v2 LOCAL": v2(SIG + bytes.fromhex("2000 0000"), "LOCAL", "UNKNOWN", None, None),
    # LOCAL: "the protocol block including the family which is ignored" (spec 2.2): skipped, even a bad family
    "v2 LOCAL ignores its block": v2(
        SIG + bytes.fromhex("20ff 0005") + b"\x01\x02\x03\x04\x05", "LOCAL", "UNKNOWN", None, None
    ),
    "v2 UNSPEC with TLVs": v2(
        SIG + bytes.fromhex("2100 0009") + bytes.fromhex("e0 0003") + b"abc" + bytes.fromhex("05 0000"),
        "PROXY",
        "UNKNOWN",
        None,
        None,
        ((0xE0, b"abc"), (0x05, b"")),
    ),
}


@pytest.mark.parametrize("name", list(VALID))
def test_a_valid_header_fed_byte_by_byte(name: str) -> None:
    wire, expected = VALID[name]
    parser = ProxyHeaderParser()
    for index in range(len(wire) - 1):
        assert parser.feed(wire[index : index + 1]) is None, f"complete after {index + 1} of {len(wire)} bytes"
    assert parser.feed(wire[-1:]) == expected
    assert parser.leftover == b""
    assert expected.length == len(wire) <= (V1_MAX_LENGTH if expected.version == 1 else DEFAULT_MAX_LENGTH)


@pytest.mark.parametrize("name", list(VALID))
def test_a_valid_header_split_anywhere_keeps_the_application_bytes(name: str) -> None:
    wire, expected = VALID[name]
    stream = wire + APP
    assert parse_proxy_header(stream) == expected
    for split in range(1, len(stream)):
        parser = ProxyHeaderParser()
        first = parser.feed(stream[:split])
        if split < len(wire):
            assert first is None
            assert parser.feed(stream[split:]) == expected
        else:
            assert first == expected
        assert parser.leftover == (stream[len(wire) : split] if split >= len(wire) else APP)


def test_builder_writes_the_spec_bytes() -> None:
    assert build_proxy_header(1, ("192.168.0.1", 56324), ("192.168.0.11", 443)) == VALID["v1 TCP4"][0]
    assert build_proxy_header(1, ("2001:db8::1", 0), ("::1", 65535)) == VALID["v1 TCP6"][0]
    assert build_proxy_header(1) == b"PROXY UNKNOWN\r\n"
    assert build_proxy_header(2, ("172.19.0.1", 42578), ("172.19.0.3", 80)) == VALID["v2 TCP4"][0]
    tlvs = [(0x01, b"h2"), (0x02, b"example"), (0x04, b"")]
    assert (
        build_proxy_header(2, ("2001:db8::1", 8080), ("::1", 53), datagram=True, tlvs=tlvs)
        == VALID["v2 UDP6 with TLVs"][0]
    )
    assert build_proxy_header(2, UNIX_PATH.decode(), b"\0abstract") == VALID["v2 UNIX stream"][0]
    assert build_proxy_header(2, local=True) == VALID["v2 LOCAL"][0]
    assert build_proxy_header(2, tlvs=[(0xE0, b"abc"), (0x05, b"")]) == VALID["v2 UNSPEC with TLVs"][0]
    # hosts are written in canonical form
    assert (
        build_proxy_header(1, ("2001:0DB8::0001", 1), ("::FFFF:10.0.0.1", 2))
        == b"PROXY TCP6 2001:db8::1 ::ffff:a00:1 1 2\r\n"
    )


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((1, "/tmp/a", "/tmp/b"), {}, TypeError),  # v1 is TCP only
        ((1, ("1.2.3.4", 1), ("5.6.7.8", 2)), {"tlvs": [(1, b"x")]}, ValueError),
        ((1,), {"local": True}, ValueError),
        ((1, ("1.2.3.4", 1), ("5.6.7.8", 2)), {"datagram": True}, ValueError),
        ((2, ("1.2.3.4", 1), ("::1", 2)), {}, ValueError),  # two families
        ((2, ("1.2.3.4", 65536), ("5.6.7.8", 2)), {}, ValueError),
        ((2, ("1.2.3.4", -1), ("5.6.7.8", 2)), {}, ValueError),
        ((2, ("localhost", 1), ("5.6.7.8", 2)), {}, ValueError),  # names are not addresses
        ((2, ("fe80::1%eth0", 1), ("::1", 2)), {}, ValueError),  # no scope ids on the wire
        ((2, ("1.2.3.4", 1), None), {}, TypeError),
        ((2, "/tmp/a", None), {}, ValueError),
        ((2, "/" * 109, "/tmp/b"), {}, ValueError),
        ((2, "/tmp/a\0b", "/tmp/b"), {}, ValueError),
        ((2, b"\0abstract\0", "/tmp/b"), {}, ValueError),  # its last NUL would read back as padding
        ((2, ("1.2.3.4", 1), ("5.6.7.8", 2)), {"local": True}, ValueError),
        ((2,), {"local": True, "tlvs": [(1, b"")]}, ValueError),
        ((2,), {"tlvs": [(256, b"")]}, ValueError),
        ((2,), {"tlvs": [(1, bytes(0x10000))]}, ValueError),
        ((2,), {"tlvs": [(1, bytes(0xFFFF)), (2, b"")]}, ValueError),  # the whole block is over 65535
        ((3,), {}, ValueError),
    ],
)
def test_builder_refuses_what_the_protocol_cannot_carry(args: Any, kwargs: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        build_proxy_header(*args, **kwargs)


# ------------------------------------------------------------------------------------- round trips

ports = st.integers(0, 0xFFFF)


def ip_endpoint_pairs(version: Literal[4, 6]) -> st.SearchStrategy[tuple[tuple[str, int], tuple[str, int]]]:
    endpoint = st.tuples(st.ip_addresses(v=version).map(str), ports)
    return st.tuples(endpoint, endpoint)


unix_paths = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=40).filter(
        lambda path: len(os.fsencode(path)) <= 108
    ),
    st.binary(max_size=60).map(lambda name: b"\0" + name + b"!"),  # Linux abstract names
)
tlv_lists = st.lists(st.tuples(st.integers(0, 0xFF), st.binary(max_size=64)), max_size=5)


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    """A header built from random addresses and TLVs, with the ProxyHeader that says the same."""
    version: Literal[1, 2] = 1 if draw(st.booleans()) else 2
    kind = draw(st.sampled_from(["4", "6", "none"] + (["unix", "local"] if version == 2 else [])))
    datagram = version == 2 and draw(st.booleans())
    tlvs = tuple(draw(tlv_lists)) if version == 2 and kind != "local" else ()
    if kind == "local":
        return build_proxy_header(2, local=True), ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, (), 16)
    source: Address | None
    destination: Address | None
    transport: Transport
    if kind == "none":
        source = destination = None
        transport = "UNKNOWN"
    elif kind == "unix":
        source, destination = draw(unix_paths), draw(unix_paths)
        transport = "UNIX_DGRAM" if datagram else "UNIX_STREAM"
    elif kind == "4":
        source, destination = draw(ip_endpoint_pairs(4))
        transport = "UDP4" if datagram else "TCP4"
    else:
        source, destination = draw(ip_endpoint_pairs(6))
        transport = "UDP6" if datagram else "TCP6"
    wire = build_proxy_header(version, source, destination, datagram=datagram, tlvs=tlvs)
    return wire, ProxyHeader(version, "PROXY", transport, source, destination, tlvs, len(wire))


@settings(max_examples=200, deadline=None)
@given(headers(), st.binary(max_size=40), st.lists(st.integers(0, 600), max_size=8))
def test_round_trip_in_random_chunks(case: tuple[bytes, ProxyHeader], app: bytes, cuts: list[int]) -> None:
    wire, expected = case
    stream = wire + app
    points = sorted({0, len(stream), *(cut for cut in cuts if cut < len(stream))})
    chunks = [stream[start:end] for start, end in itertools.pairwise(points)]
    parser = ProxyHeaderParser()
    fed = 0
    after: list[bytes] = []
    for chunk in chunks:
        if parser.header is not None:
            after.append(chunk)  # the caller's: once the header is parsed, the rest goes to the application
            continue
        fed += len(chunk)
        result = parser.feed(chunk)
        assert (result is None) == (fed < len(wire))
    assert parser.header == expected
    assert parser.leftover + b"".join(after) == app


@settings(max_examples=200, deadline=None)
@given(headers(), st.data())
def test_a_corrupted_header_fails_for_good_or_stays_a_header(
    case: tuple[bytes, ProxyHeader], data: st.DataObject
) -> None:
    """Flip one byte: an error, once raised, is raised for every longer prefix; nothing else is raised."""
    wire, _ = case
    position = data.draw(st.integers(0, len(wire) - 1))
    corrupted = bytearray(wire)
    corrupted[position] ^= data.draw(st.integers(1, 0xFF))
    failed_at: int | None = None
    for size in range(1, len(corrupted) + 1):
        try:
            parse_proxy_header(corrupted[:size])
        except ProxyProtocolError:
            failed_at = failed_at or size
        else:
            assert failed_at is None, f"failed with {failed_at} bytes, then accepted {size}"
    if failed_at is not None:
        assert failed_at > position, "failed before the corrupted byte had arrived"


def ipv6_texts(address: ipaddress.IPv6Address, upper: bool, dotted: bool, strip_zeros: bool) -> str:
    """One of the ways to write ``address`` that IPv6 text allows (spec 2.1 follows the usual form)."""
    text = address.exploded
    if dotted:
        text = text[: -len("0000:0000")] + str(ipaddress.IPv4Address(address.packed[12:]))
    if strip_zeros:
        text = ":".join(group.lstrip("0") or "0" if "." not in group else group for group in text.split(":"))
    return text.upper() if upper else text


address_texts = st.one_of(
    st.tuples(st.just(4), st.ip_addresses(v=4).map(str)),
    st.tuples(st.just(4), st.text("0123456789.", max_size=17)),
    st.tuples(st.just(6), st.ip_addresses(v=6).map(str)),
    st.tuples(st.just(6), st.builds(ipv6_texts, st.ip_addresses(v=6), st.booleans(), st.booleans(), st.booleans())),
    st.tuples(st.just(6), st.text("0123456789abcdefABCDEF:.", max_size=46)),
)


@settings(max_examples=300, deadline=None)
@given(address_texts)
def test_the_early_address_checks_agree_with_ipaddress(case: tuple[int, str]) -> None:
    """A v1 address is refused early only if ipaddress refuses it too, and accepted only if ipaddress accepts it."""
    version, text = case
    line = f"PROXY TCP{version} {text} {'::1' if version == 6 else '1.2.3.4'} 1 2\r\n".encode()
    try:
        expected: str | None = str(ipaddress.ip_address(text)) if "%" not in text else None
        expected = expected if ipaddress.ip_address(text).version == version else None
    except ValueError:
        expected = None
    parser = ProxyHeaderParser()
    field_end = len("PROXY TCP4 ") + len(text)  # the space after the address: the last byte to judge it on
    for index in range(len(line)):
        try:
            header = parser.feed(line[index : index + 1])
        except MalformedProxyHeader:
            assert expected is None, f"refused a valid address at byte {index}"
            assert index <= field_end
            return
    assert header is not None and header.source == (expected, 1)


# ---------------------------------------------------------------------------------- early failures

MALFORMED = [
    # (what may arrive, the first byte that cannot, error, words of its message)
    (b"", b"GET / HTTP/1.1\r\n", MissingProxyHeader, "expected a PROXY header, got b'G'"),
    (b"", b"\x16\x03\x01\x02\x00", MissingProxyHeader, "expected a PROXY header"),  # a TLS ClientHello
    (b"", b"proxy TCP4", MissingProxyHeader, "expected a PROXY header"),
    (b"PROX", b"Z", MissingProxyHeader, "b'PROXZ'"),
    (b"\r\n\r\n\x00\r\nQUI", b"X\n", MissingProxyHeader, "expected a PROXY header"),
    (SIG, b"\x11\x11\x00\x0c", MalformedProxyHeader, "version 1 in byte 13, expected 2"),
    (SIG, b"\x31", MalformedProxyHeader, "version 3"),
    (SIG, b"\x22", MalformedProxyHeader, "command 2"),
    (SIG + b"\x21", b"\x41\x00\x0c", MalformedProxyHeader, "family and protocol byte 0x41"),
    (SIG + b"\x21", b"\x13", MalformedProxyHeader, "0x13"),
    (SIG + b"\x21", b"\x10", MalformedProxyHeader, "0x10"),  # a family without a protocol: not a listed combination
    (SIG + b"\x21\x11\x00", b"\x0b", MalformedProxyHeader, "length 11 is too short for TCP4 addresses (12 bytes)"),
    (SIG + b"\x21\x21\x00", b"\x0c", MalformedProxyHeader, "too short for TCP6 addresses (36 bytes)"),
    (SIG + b"\x21\x31\x00", b"\xd7", MalformedProxyHeader, "too short for UNIX_STREAM addresses (216 bytes)"),
    (SIG + b"\x21\x11\xff", b"\xff", ProxyHeaderTooLong, "65551 bytes is over the limit of 4096"),
    (SIG + b"\x21\x11\x10", b"\x01", ProxyHeaderTooLong, "4113 bytes"),
    (
        SIG + b"\x21\x11\x00\x12" + bytes(12) + b"\x01\x00\x04ab",
        b"c",
        MalformedProxyHeader,
        "TLV 0x01 runs 1 bytes past",
    ),
    (SIG + b"\x21\x11\x00\x0e" + bytes(12) + b"\x01", b"\x00", MalformedProxyHeader, "2 stray bytes"),
    (b"PROXY", b"TCP4", MalformedProxyHeader, "expected one space after PROXY, got b'T'"),
    (b"PROXY ", b" TCP4", MalformedProxyHeader, "protocol b''"),
    (b"PROXY TCP", b"5 ", MalformedProxyHeader, "protocol b'TCP5'"),
    (b"PROXY UNKNOWN", b"X\r\n", MalformedProxyHeader, "protocol b'UNKNOWNX'"),
    (b"PROXY TCP4", b"\r\n", MalformedProxyHeader, "TCP4 needs 4 fields"),
    (b"PROXY TCP4 ", b" 1.2.3.4 5.6.7.8 1 2\r\n", MalformedProxyHeader, "empty source address"),
    (b"PROXY TCP4 1.2.3.4 ", b" 5.6.7.8 1 2\r\n", MalformedProxyHeader, "empty destination address"),
    (
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2",
        b" 3\r\n",
        MalformedProxyHeader,
        "needs 4 fields (addresses, ports) after it, got 5",
    ),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", b" \r\n", MalformedProxyHeader, "got 5"),  # a space before the CRLF
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1", b"\r\n", MalformedProxyHeader, "got 3"),  # known at the CR
    (b"PROXY TCP", b"\r\n", MalformedProxyHeader, "protocol b'TCP'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 6553", b"6 80\r\n", MalformedProxyHeader, "source port b'65536' is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 6553", b"6\r\n", MalformedProxyHeader, "destination port b'65536'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 65535", b"0\r\n", MalformedProxyHeader, "b'655350'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 0", b"80 443\r\n", MalformedProxyHeader, "b'08' is not a port"),  # no leading zero
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 ", b"+80 443\r\n", MalformedProxyHeader, "b'+' is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 ", b"-1 443\r\n", MalformedProxyHeader, "is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 0", b"x50\r\n", MalformedProxyHeader, "b'0x' is not a port"),
    (b"PROXY TCP4 1.2.3.25", b"6 5.6.7.8 1 2\r\n", MalformedProxyHeader, "source address b'1.2.3.256' is not an IPv4"),
    (b"PROXY TCP4 1.2.3.0", b"1 5.6.7.8 1 2\r\n", MalformedProxyHeader, "b'1.2.3.01'"),  # no leading zero (octal)
    (b"PROXY TCP4 1.2.3.4", b".5 5.6.7.8 1 2\r\n", MalformedProxyHeader, "b'1.2.3.4.'"),
    (b"PROXY TCP4 1.2.3", b" 5.6.7.8 1 2\r\n", MalformedProxyHeader, "b'1.2.3' is not an IPv4"),
    (b"PROXY TCP4 1.2.", b".3 5.6.7.8 1 2\r\n", MalformedProxyHeader, "b'1.2..'"),
    (b"PROXY TCP4 ", b"::1 ::1 1 2\r\n", MalformedProxyHeader, "b':' is not an IPv4 address"),
    (b"PROXY TCP4 1.2.", b"\xff.4 5.6.7.8 1 2\r\n", MalformedProxyHeader, "b'1.2.\\xff'"),
    (b"PROXY TCP6 1.2.3.4", b" ::1 1 2\r\n", MalformedProxyHeader, "source address b'1.2.3.4' is not an IPv6"),
    (b"PROXY TCP6 fe80::1", b"%eth0 ::1 1 2\r\n", MalformedProxyHeader, "is not an IPv6 address"),
    (b"PROXY TCP6 ::", b":1 ::1 1 2\r\n", MalformedProxyHeader, "b':::'"),
    (b"PROXY TCP6 ::1:", b":2 ::1 1 2\r\n", MalformedProxyHeader, "b'::1::'"),
    (b"PROXY TCP6 ::1 1:2:3:4:5:6:7:8", b":9 1 2\r\n", MalformedProxyHeader, "destination address"),
    (b"PROXY TCP6 1:2:3:4:5:6:7:1", b".2.3.4 ::1 1 2\r\n", MalformedProxyHeader, "b'1:2:3:4:5:6:7:1.'"),
    (b"PROXY TCP6 1:2:3:4:5:6::7:", b"8 ::1 1 2\r\n", MalformedProxyHeader, "b'1:2:3:4:5:6::7:8'"),
    (b"PROXY TCP6 ::1234", b"5 ::1 1 2\r\n", MalformedProxyHeader, "b'::12345'"),
    (b"PROXY TCP6 ::ffff:1.2.3.25", b"6 ::1 1 2\r\n", MalformedProxyHeader, "b'::ffff:1.2.3.256'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", b"\n", MalformedProxyHeader, "LF without CR"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", b"\r\n", MalformedProxyHeader, "CR not followed by LF"),
    (b"PROXY UNKNOWN anything", b"\n\r\n", MalformedProxyHeader, "LF without CR"),
    (b"PROXY UNKNOWN " + b"x" * 92, b"x\r\n", ProxyHeaderTooLong, "no CRLF within 107 bytes"),
    (
        b"PROXY UNKNOWN " + b"x" * 92,
        b"\r\n",
        ProxyHeaderTooLong,
        "no CRLF within 107 bytes",
    ),  # its LF would be byte 108
]


@pytest.mark.parametrize(("accepted", "rest", "error", "message"), MALFORMED)
def test_a_malformed_header_fails_at_its_first_wrong_byte(
    accepted: bytes, rest: bytes, error: type[ProxyProtocolError], message: str
) -> None:
    parser = ProxyHeaderParser()
    for index in range(len(accepted)):
        assert parser.feed(accepted[index : index + 1]) is None
    with pytest.raises(error) as raised:
        parser.feed(rest[:1])
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)  # one log line
    with pytest.raises(error):  # the same verdict on everything at once
        parse_proxy_header(accepted + rest)
    with pytest.raises(error):  # and it stays
        parser.feed(rest[1:] + APP)


def test_the_end_of_input_inside_a_header_or_before_it() -> None:
    with pytest.raises(MissingProxyHeader, match="ended before any PROXY header"):
        ProxyHeaderParser().feed(b"")
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY TCP4 1.2") is None
    with pytest.raises(MalformedProxyHeader, match=r"ended inside the PROXY header, after b'PROXY TCP4 1.2'"):
        parser.feed(b"")
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY UNKNOWN\r\nrest") is not None
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


def test_max_length_bounds_v2_before_the_body_arrives() -> None:
    with pytest.raises(ValueError, match="max_length"):
        ProxyHeaderParser(max_length=231)  # a UNIX address block would not fit
    with pytest.raises(ValueError, match="max_length"):
        ProxyHeaderParser(max_length=V2_MAX_LENGTH + 1)
    addresses = (("1.2.3.4", 1), ("5.6.7.8", 2))
    fits = build_proxy_header(2, *addresses, tlvs=[(0xE0, bytes(300 - 16 - 12 - 3))])
    assert len(fits) == 300
    assert ProxyHeaderParser(max_length=300).feed(fits) is not None
    over = build_proxy_header(2, *addresses, tlvs=[(0xE0, bytes(301 - 16 - 12 - 3))])
    with pytest.raises(ProxyHeaderTooLong, match="301 bytes is over the limit of 300"):
        ProxyHeaderParser(max_length=300).feed(over[:16])
    largest = build_proxy_header(2, *addresses, tlvs=[(0xE0, bytes(0xFFFF - 12 - 3))])
    assert len(largest) == V2_MAX_LENGTH
    header = parse_proxy_header(largest + b"app", max_length=V2_MAX_LENGTH)
    assert header is not None and header.length == V2_MAX_LENGTH and len(header.tlvs[0][1]) == 0xFFFF - 15


# --------------------------------------------------------------------------- read_proxy_header, I/O


def socketpair() -> tuple[Socket, Socket]:
    """(the server's end, the proxy's end)."""
    server_end, proxy_end = socket.socketpair()
    return Socket(server_end), Socket(proxy_end)


def test_read_proxy_header_takes_the_header_and_leaves_the_bytes_after_it_in_the_socket() -> None:
    wire, expected = VALID["v2 UDP6 with TLVs"]

    async def main() -> tuple[ProxyHeader, bytes]:
        server, proxy = socketpair()
        with server, proxy:
            await proxy.sendall(wire + APP)
            header = await read_proxy_header(server, 2.0)
            return header, await server.recv(1000)

    assert yieldio.run(main) == (expected, APP)


def test_read_proxy_header_waits_for_a_header_sent_in_pieces() -> None:
    wire, expected = VALID["v1 TCP6 longest"]

    async def main() -> tuple[ProxyHeader, bytes, list[bool]]:
        server, proxy = socketpair()
        with server, proxy:
            reader = await spawn(read_proxy_header(server, 2.0))
            waiting: list[bool] = []
            for start in range(0, len(wire), 10):
                await sleep(0)  # the reader runs, takes what has come, and parks
                waiting.append(not reader.done)
                await proxy.sendall(wire[start : start + 10])
            await proxy.sendall(b"first")
            header = await reader.join()
            await proxy.sendall(b" second")
            later = await server.recv(100)
            return header, later, waiting

    header, later, waiting = yieldio.run(main)
    assert header == expected
    assert later == b"first second"  # nothing taken past the header
    assert all(waiting) and len(waiting) == 11


def test_read_proxy_header_from_a_generator_task() -> None:
    wire, expected = VALID["v2 UNIX stream"]

    def handler(server: Socket) -> Generator[Any, Any, tuple[ProxyHeader, bytes]]:
        header: ProxyHeader = yield from read_proxy_header(server, 2.0)
        return header, (yield from server.recv(100))

    def main() -> Generator[Any, Any, tuple[ProxyHeader, bytes]]:
        server, proxy = socketpair()
        with server, proxy:
            yield from proxy.sendall(wire + b"x")
            result: tuple[ProxyHeader, bytes] = yield from handler(server)
            return result

    assert yieldio.run(main) == (expected, b"x")


def test_read_proxy_header_times_out_with_a_protocol_error() -> None:
    async def main() -> tuple[str, float]:
        server, proxy = socketpair()
        with server, proxy:
            await proxy.sendall(b"PROXY TCP4 1.2")
            started = time.monotonic()
            with pytest.raises(ProxyHeaderTimeout) as raised:
                await read_proxy_header(server, 0.05)
            return str(raised.value), time.monotonic() - started

    message, elapsed = yieldio.run(main)
    assert message == "no complete PROXY header within 0.05s (14 bytes received)"
    assert 0.04 < elapsed < 5.0  # the deadline's, not early; the upper bound only says it did not hang


def test_an_outer_timeout_is_not_reported_as_the_headers() -> None:
    async def main() -> None:
        server, proxy = socketpair()
        with server, proxy, pytest.raises(TaskTimeout):
            await timeout_after(0.05, read_proxy_header(server, 10.0))

    yieldio.run(main)


@pytest.mark.parametrize(
    ("sent", "then_close", "error", "message"),
    [
        (b"", True, MissingProxyHeader, "ended before any PROXY header"),
        (b"\r\n\r\n\x00\r\nQU", True, MalformedProxyHeader, "ended inside the PROXY header"),
        (b"GET / HTTP/1.1\r\n", False, MissingProxyHeader, "expected a PROXY header, got b'GET / HTTP/1.1\\r\\n'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999", False, MalformedProxyHeader, "source port b'99999'"),
    ],
)
def test_read_proxy_header_fails_at_once_without_waiting_for_the_timeout(
    sent: bytes, then_close: bool, error: type[ProxyProtocolError], message: str
) -> None:
    async def main() -> float:
        server, proxy = socketpair()
        with server, proxy:
            if sent:
                await proxy.sendall(sent)
            if then_close:
                proxy.shutdown_write()
            started = time.monotonic()
            with pytest.raises(error) as raised:
                await read_proxy_header(server, 10.0)
            assert message in str(raised.value)
            return time.monotonic() - started

    assert yieldio.run(main) < 5.0  # half the 10 s deadline: wide, for a busy machine, and still not it
