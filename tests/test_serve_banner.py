"""Who answered: ``--banner`` and the placeholders of ``--banner`` and ``--prefix``, end to end.

The banner is one line, sent as a stream connection opens, before the client says anything (``nc``
prints it at once). Each placeholder is checked on its own: ``{hostname}``, ``{listener}`` (which
listener took the connection), ``{client}`` (the client's own address, the original one behind a
PROXY header), ``{env:NAME}``. A prefix with ``{client}`` differs per connection and per datagram.
Such a prefix is put before each reply by the framer, not kept in a receive buffer of its own
(one per prefix, 256 KiB each, for as long as the server runs): 300 clients must not cost 300 buffers.
A bad text (an unknown placeholder, a variable that is not set, a lone brace) is one line naming the
flag and its variable, exit status 2, nothing listening.
"""

from __future__ import annotations

import socket
import subprocess

import pytest

from yieldio.servers.echo import RECV_SIZE
from yieldio.servers.proxy_protocol import build_proxy_header

from .harness import (
    MiB,
    ProcessServers,
    ServerProcess,
    connect,
    exchange,
    read_until,
    recv_exactly,
    serve_command,
    serve_refusal,
)


def greeting(address: tuple[str, int], before: bytes = b"") -> tuple[bytes, int]:
    """Connect (sending ``before`` first: a PROXY header), read the banner line; it and the client's port."""
    with connect(address) as client:
        client.sendall(before)
        line = b""
        while not line.endswith(b"\n"):
            chunk = client.recv(4096)
            assert chunk, f"EOF after {line!r}"
            line += chunk
        return line, int(client.getsockname()[1])


def labels_and_addresses(server: ServerProcess, count: int) -> list[tuple[str, tuple[str, int]]]:
    """Each listener's label (``127.0.0.2:PORT``, ``udp://127.0.0.1:PORT``) and the address in it."""
    found = []
    for label in server.wait_listeners(count):
        host, _, port = label.rpartition("//")[2].rpartition(":")
        found.append((label, (host, int(port))))
    return found


def test_the_banner_comes_first_and_once_with_nc(serve_process: ProcessServers) -> None:
    server = serve_process("--banner", "echo here", "--framing", "line")
    nc = subprocess.Popen(["nc", *map(str, server.address)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert nc.stdin is not None and nc.stdout is not None
        assert read_until(nc.stdout.fileno(), b"\n") == b"echo here\n"  # before a byte was sent
        nc.stdin.write(b"one\ntwo\n")
        nc.stdin.flush()
        assert read_until(nc.stdout.fileno(), b"GOT:two\n") == b"GOT:one\nGOT:two\n"
    finally:
        nc.kill()
        nc.wait(10)
        for stream in (nc.stdin, nc.stdout):
            if stream is not None:
                stream.close()


def test_hostname(serve_process: ProcessServers) -> None:
    server = serve_process("--banner", "host {hostname}")
    assert greeting(server.address)[0] == f"host {socket.gethostname()}\n".encode()


def test_listener_names_the_one_that_took_the_connection(serve_process: ProcessServers) -> None:
    server = serve_process.launch(
        serve_command("--listen", "tcp://127.0.0.1:0", "--listen", "tcp://127.0.0.2:0", "--banner", "on {listener}")
    )
    for label, address in labels_and_addresses(server, 2):
        assert greeting(address)[0] == f"on {label}\n".encode()


def test_client_is_the_client_and_behind_a_proxy_the_original_one(serve_process: ProcessServers) -> None:
    server = serve_process("--banner", "hello {client}")
    line, port = greeting(server.address)
    assert line == b"hello 127.0.0.1:%d\n" % port
    proxied = serve_process("--banner", "hello {client}", "--proxy-protocol")
    header = build_proxy_header(1, ("203.0.113.7", 40000), ("192.0.2.1", 9000))
    assert greeting(proxied.address, header)[0] == b"hello 203.0.113.7:40000\n"


def test_env_names_a_variable_of_the_server(serve_process: ProcessServers) -> None:
    server = serve_process.start(
        serve_command("--banner", "pod {env:POD_NAME} on {env:NODE_NAME}"),
        env={"POD_NAME": "tcp-echo-v1-7d9f", "NODE_NAME": "node-3"},
    )
    assert greeting(server.address)[0] == b"pod tcp-echo-v1-7d9f on node-3\n"


def test_placeholders_in_the_prefix_per_connection_and_per_datagram(serve_process: ProcessServers) -> None:
    server = serve_process.launch(
        serve_command(
            "--listen", "tcp://127.0.0.1:0", "--listen", "udp://127.0.0.1:0", "--prefix", "{client} via {listener}: "
        )
    )  # fmt: skip
    (tcp, tcp_address), (udp, udp_address) = labels_and_addresses(server, 2)
    for _ in range(2):
        with connect(tcp_address) as client:
            mine = f"127.0.0.1:{client.getsockname()[1]}"
            assert exchange(client, b"hi\n") == f"{mine} via {tcp}: hi\n".encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagrams:
        datagrams.settimeout(10)
        datagrams.connect(udp_address)
        datagrams.send(b"dgram")
        mine = f"127.0.0.1:{datagrams.getsockname()[1]}"
        assert datagrams.recv(65535) == f"{mine} via {udp}: dgram".encode()


def test_a_prefix_per_client_keeps_no_buffer_per_client(serve_process: ProcessServers) -> None:
    server = serve_process("--prefix", "{client}>")
    clients = 300
    with connect(server.address) as first:  # the server's first buffers are made
        roundtrip_text = b"x" * 1000
        assert exchange(first, roundtrip_text).endswith(roundtrip_text)
    before = server.rss()
    for _ in range(clients):
        with connect(server.address) as client:
            mine = b"127.0.0.1:%d>" % client.getsockname()[1]
            client.sendall(b"y" * 1000)
            assert recv_exactly(client, len(mine) + 1000) == mine + b"y" * 1000
    grown = server.rss() - before
    assert grown < clients * RECV_SIZE / 10, f"{grown / MiB:.1f} MiB more after {clients} clients"


@pytest.mark.parametrize(
    "flag, variable, text, words",
    [
        ("--banner", "YIELDIO_BANNER", "hi {nobody}", ["unknown placeholder {nobody}"]),
        ("--prefix", "YIELDIO_PREFIX", "{env:YIELDIO_TEST_UNSET_VARIABLE}", ["YIELDIO_TEST_UNSET_VARIABLE is not set"]),
        ("--banner", "YIELDIO_BANNER", "a { b", ["a lone '{'"]),
        ("--prefix", "YIELDIO_PREFIX", "{env:}", ["is not a variable's name"]),
    ],
)
def test_a_bad_text_is_one_line_naming_flag_and_variable(flag: str, variable: str, text: str, words: list[str]) -> None:
    for args, env in (([flag, text], {}), ([], {variable: text})):
        line = serve_refusal(*args, env=env)
        assert all(word in line for word in [flag, variable, *words]), line
