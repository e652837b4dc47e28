"""The misbehaving servers of tests/load_servers.py, checked with plain sockets before they test ``yieldio load``.

A test of the load generator that expects exactly 3 mismatches or exactly 100 lost datagrams is only as
good as the server's fault is exact, so each fault is pinned down here: which reply is corrupted and
where, when the stall starts and that it answers what came meanwhile, which datagrams are dropped,
doubled or swapped. The UDP checks lean on loopback delivering one socket's datagrams in order: a
reply that should not exist would arrive before the next one expected, and the test would read it.
"""

from __future__ import annotations

import re
import signal
import socket
import sys
import time

import pytest

from .harness import ROOT, ProcessServers, ServerProcess, connect, recv_exactly

LOAD_SERVERS = ROOT / "tests" / "load_servers.py"
PREFIX = b"GOT:"


def load_server_command(kind: str, *args: str) -> list[str | bytes]:
    """``python tests/load_servers.py KIND ARGS``: by its path, so the test's working directory does not matter."""
    return [sys.executable, str(LOAD_SERVERS), kind, *args]


def start(servers: ProcessServers, kind: str, *args: str) -> ServerProcess:
    """Start a load_servers.py program with the ``serve_process`` fixture (killed by PID at teardown)."""
    return servers.start(load_server_command(kind, *args))


def payload(number: int, size: int = 64) -> bytes:
    """A distinct message of ``size`` bytes for the ``number``-th request."""
    return (b"%08d:" % number).ljust(size, b"abcdefghij"[number % 10 : number % 10 + 1])


def udp_client(server: ServerProcess) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.connect(server.address)
    return sock


# -- corrupt ------------------------------------------------------------------------------


def test_corrupt_flips_one_byte_of_every_thousandth_reply_counted_over_all_connections(
    serve_process: ProcessServers,
) -> None:
    server = start(serve_process, "corrupt")
    corrupted: list[tuple[int, int]] = []  # (reply number, index of the differing byte)
    with connect(server.address) as first, connect(server.address) as second:
        for number in range(1, 2501):
            sock = first if number <= 1500 else second  # the count goes on over connections
            message = payload(number)
            sock.sendall(message)
            reply = recv_exactly(sock, len(PREFIX) + len(message))
            expected = PREFIX + message
            if reply != expected:
                differing = [i for i, (a, b) in enumerate(zip(reply, expected, strict=True)) if a != b]
                assert len(differing) == 1, (number, reply, expected)
                assert (reply[differing[0]] ^ expected[differing[0]]).bit_count() == 1  # one bit
                corrupted.append((number, differing[0]))
    assert corrupted == [(1000, len(PREFIX) + 32), (2000, len(PREFIX) + 32)]  # the data's middle byte
    assert server.output().decode().splitlines() == [f"listening on 127.0.0.1:{server.port}"]


def test_corrupt_every_option_and_a_half_closed_client_gets_its_replies(serve_process: ProcessServers) -> None:
    server = start(serve_process, "corrupt", "--every", "2", "--prefix", "")
    with connect(server.address) as sock:
        sock.sendall(b"abc")
        assert recv_exactly(sock, 3) == b"abc"
        sock.sendall(b"abc")
        assert recv_exactly(sock, 3) == b"acc"  # b ^ 1 == c
        sock.sendall(b"xyz")
        sock.shutdown(socket.SHUT_WR)
        assert recv_exactly(sock, 3) == b"xyz"
        assert sock.recv(10) == b""  # the server closes once the client has and all is sent


# -- stall --------------------------------------------------------------------------------


def test_stall_stops_answering_once_then_answers_what_came_meanwhile(serve_process: ProcessServers) -> None:
    server = start(serve_process, "stall", "--stall-after", "3", "--stall", "0.5")
    with connect(server.address) as first, connect(server.address) as second:
        for number in range(3):
            message = payload(number)
            first.sendall(message)
            assert recv_exactly(first, len(PREFIX) + len(message)) == PREFIX + message
        server.wait_log(b"stalled after 3 replies\n")
        started = time.monotonic()
        first.sendall(b"during 1")
        second.sendall(b"during 2")
        assert recv_exactly(second, len(b"GOT:during 2")) == b"GOT:during 2"
        waited = time.monotonic() - started
        assert recv_exactly(first, len(b"GOT:during 1")) == b"GOT:during 1"
        assert 0.3 < waited < 3.0, waited  # the stall began at the third reply, before `started`
        resumed = server.wait_log(re.compile(rb"resumed after ([0-9.]+) s, answering 2\n"))
        assert float(resumed.group(1)) >= 0.5
        # once only: the next requests are answered at once
        started = time.monotonic()
        for number in range(20):
            message = payload(number)
            second.sendall(message)
            assert recv_exactly(second, len(PREFIX) + len(message)) == PREFIX + message
        assert time.monotonic() - started < 0.3
    assert server.count(b"stalled") == 1


# -- UDP ----------------------------------------------------------------------------------


def test_udp_drop_drops_exactly_every_tenth_datagram(serve_process: ProcessServers) -> None:
    server = start(serve_process, "udp-drop")
    with udp_client(server) as sock:
        for number in range(1, 101):
            sock.send(payload(number))
            if number % 10:
                # were the previous (a tenth) answered, its reply would come first
                assert sock.recv(65536) == PREFIX + payload(number), number
        sock.send(payload(101))
        assert sock.recv(65536) == PREFIX + payload(101)


def test_udp_drop_counts_datagrams_from_every_client(serve_process: ProcessServers) -> None:
    server = start(serve_process, "udp-drop", "--every", "3")
    with udp_client(server) as one, udp_client(server) as two:
        one.send(b"1")
        assert one.recv(100) == b"GOT:1"
        two.send(b"2")
        assert two.recv(100) == b"GOT:2"
        one.send(b"3")  # dropped: the third datagram of the server's
        one.send(b"4")
        assert one.recv(100) == b"GOT:4"


def test_udp_dup_answers_every_tenth_datagram_twice(serve_process: ProcessServers) -> None:
    server = start(serve_process, "udp-dup")
    with udp_client(server) as sock:
        for number in range(1, 31):
            sock.send(payload(number))
            assert sock.recv(65536) == PREFIX + payload(number)
            if number % 10 == 0:
                assert sock.recv(65536) == PREFIX + payload(number), number
        sock.send(b"last")
        assert sock.recv(65536) == b"GOT:last"  # no third copy came before it


def test_udp_reorder_sends_every_tenth_reply_after_the_next(serve_process: ProcessServers) -> None:
    server = start(serve_process, "udp-reorder", "--hold", "0.3")
    with udp_client(server) as sock:
        for number in range(1, 10):
            sock.send(payload(number))
            assert sock.recv(65536) == PREFIX + payload(number)
        sock.send(payload(10))
        sock.send(payload(11))
        assert [sock.recv(65536), sock.recv(65536)] == [PREFIX + payload(11), PREFIX + payload(10)]
        for number in range(12, 20):
            sock.send(payload(number))
            assert sock.recv(65536) == PREFIX + payload(number)
        # the 20th, with nothing after it: released when the hold ends
        started = time.monotonic()
        sock.send(payload(20))
        assert sock.recv(65536) == PREFIX + payload(20)
        assert 0.2 < time.monotonic() - started < 3.0


# -- every kind stops on SIGTERM -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["corrupt", "stall", "udp-drop", "udp-dup", "udp-reorder"])
def test_every_kind_exits_0_at_once_on_sigterm(serve_process: ProcessServers, kind: str) -> None:
    server = start(serve_process, kind, "--stall-after", "1", "--stall", "30")
    if kind in ("corrupt", "stall"):
        client = connect(server.address)
        client.sendall(b"hello")  # the stall server is in its 30 s stall after this reply
        assert recv_exactly(client, 9) == b"GOT:hello"
        client.sendall(b"held")
    else:
        client = udp_client(server)
        client.send(b"hello")
    with client:
        started = time.monotonic()
        assert server.stop(signal.SIGTERM, timeout=5) == 0, server.tail()
        assert time.monotonic() - started < 2.0
    assert "Traceback" not in server.text()
