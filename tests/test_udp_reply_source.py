"""A wildcard UDP listener answers from the address each datagram was sent to (``yieldio serve``).

On Linux every 127.x.y.z address is local, so a client that sends to 127.0.0.2 tests a second address
on loopback. ``nc -u`` connects its socket, so the system drops a reply from any other source: it prints
the reply only if it came from 127.0.0.2. A plain socket, not connected, shows the source of the reply.
An empty host is a dual-stack IPv6 socket: IPv4 arrives there IPv4-mapped, and must be answered the same.
"""

from __future__ import annotations

import socket

import pytest

from .harness import ProcessServers, ServerProcess, has_ipv6_loopback, run_client, serve_command


def start(serve_process: ProcessServers, url: str) -> tuple[ServerProcess, int]:
    """``yieldio serve --listen URL``: the server and the port its one UDP listener got."""
    server = serve_process.launch(serve_command("--listen", url))
    (label,) = server.wait_listeners(1)
    return server, int(label.rpartition(":")[2])


def reply_and_source(host: str, port: int, payload: bytes) -> tuple[bytes, str]:
    """Send ``payload`` from an unconnected socket; the reply and the address it came from."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(payload, (host, port))
        reply, source = client.recvfrom(65535)
    return reply, source[0]


def nc_udp(host: str, port: int, line: bytes) -> bytes:
    """``nc -u HOST PORT`` (a connected UDP socket) with ``line`` on its input: what it printed."""
    done = run_client(["nc", "-u", "-w1", host, str(port)], line)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("url", ["udp://0.0.0.0:0", "udp://:0"], ids=["ipv4-wildcard", "dual-stack"])
def test_the_reply_comes_from_the_address_the_client_sent_to(serve_process: ProcessServers, url: str) -> None:
    server, port = start(serve_process, url)
    for host in ("127.0.0.2", "127.0.0.3", "127.0.0.1"):
        assert reply_and_source(host, port, b"who") == (b"GOT:who", host)
    assert nc_udp("127.0.0.2", port, b"hello\n") == b"GOT:hello\n"
    server.assert_healthy()


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_on_a_wildcard_listener(serve_process: ProcessServers) -> None:
    _, port = start(serve_process, "udp://[::]:0")
    assert reply_and_source("::1", port, b"six") == (b"GOT:six", "::1")
    assert nc_udp("::1", port, b"hello six\n") == b"GOT:hello six\n"


def test_a_listener_on_one_address_answers_from_it(serve_process: ProcessServers) -> None:
    _, port = start(serve_process, "udp://127.0.0.2:0")
    assert reply_and_source("127.0.0.2", port, b"one") == (b"GOT:one", "127.0.0.2")
