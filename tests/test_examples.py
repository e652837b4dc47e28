"""The runnable programs in examples/, run as their users run them, with real clients.

(tls_echo.py is exercised in test_tls.py, the tutorial's server in test_cli.py.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from .harness import ROOT, ProcessServers, ServerProcess, connect, exchange, recv_all, refused_port

EXAMPLES = ROOT / "examples"


class LineClient:
    """A chat client: lines in, lines out, every read bounded by the socket's timeout."""

    def __init__(self, address: tuple[str, int], rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(address)
        host, port = self.sock.getsockname()[:2]
        self.name = f"{host}:{port}"
        self.lines = self.sock.makefile("rb")

    def say(self, text: bytes) -> None:
        self.sock.sendall(text)

    def hear(self) -> bytes:
        line = self.lines.readline()
        assert line.endswith(b"\n"), f"{self.name}: connection ended: {line!r}"
        return line

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


@pytest.fixture
def chat(serve_process: ProcessServers) -> ServerProcess:
    return serve_process.start([sys.executable, str(EXAMPLES / "chat_server.py"), "--port", "0"])


@pytest.fixture
def clients() -> Iterator[list[LineClient]]:
    made: list[LineClient] = []
    yield made
    for client in made:
        client.close()


def test_chat_lines_go_to_every_other_member(chat: ServerProcess, clients: list[LineClient]) -> None:
    alice = LineClient(chat.address)
    clients.append(alice)
    bob = LineClient(chat.address)
    clients.append(bob)
    assert alice.hear() == b"* %s joined (2 here)\n" % bob.name.encode()
    carol = LineClient(chat.address)
    clients.append(carol)
    assert alice.hear() == bob.hear() == b"* %s joined (3 here)\n" % carol.name.encode()

    alice.say(b"hello\r\n")
    assert bob.hear() == carol.hear() == b"%s: hello\n" % alice.name.encode()
    carol.say(b"hi alice\n")
    assert alice.hear() == bob.hear() == b"%s: hi alice\n" % carol.name.encode()

    bob.close()
    clients.remove(bob)
    assert alice.hear() == carol.hear() == b"* %s left\n" % bob.name.encode()


def test_chat_disconnects_a_member_that_stops_reading_and_the_room_goes_on(
    chat: ServerProcess, clients: list[LineClient]
) -> None:
    alice = LineClient(chat.address)
    clients.append(alice)
    bob = LineClient(chat.address)
    clients.append(bob)
    alice.hear()
    silent = LineClient(chat.address, rcvbuf=4096)  # reads nothing from here on
    clients.append(silent)
    assert alice.hear() == bob.hear() == b"* %s joined (3 here)\n" % silent.name.encode()

    # Alice talks in batches smaller than an outbox, and Bob reads each batch: only the silent
    # member falls behind. Bounded: 200 batches are 20 MB, far beyond any socket buffer.
    line = b"x" * 1000 + b"\n"
    expected = b"%s: %s" % (alice.name.encode(), line)
    left_line = b"* %s left\n" % silent.name.encode()
    for _ in range(200):
        alice.say(line * 100)
        heard = [bob.hear() for _ in range(100)]
        if left_line in heard:
            heard.remove(left_line)
            heard.append(bob.hear())
            break
    else:
        pytest.fail("the silent member was never disconnected")
    assert heard == [expected] * 100  # Bob lost nothing while it happened
    assert alice.hear() == left_line
    chat.wait_log(b"%s is not reading: disconnected" % silent.name.encode())

    alice.say(b"still here\n")
    assert bob.hear() == b"%s: still here\n" % alice.name.encode()
    silent.sock.settimeout(10)
    assert not recv_all(silent.sock).endswith(b"still here\n")  # it was cut off: EOF after what it had
    chat.assert_healthy()


@pytest.fixture
def forward_to(serve_process: ProcessServers) -> Iterator[object]:
    def start(host: str, port: int) -> ServerProcess:
        return serve_process.start(
            [sys.executable, str(EXAMPLES / "port_forward.py"), "--port", "0", "--to", f"{host}:{port}"]
        )

    yield start


def test_port_forward_relays_nc_with_its_half_close(serve_process: ProcessServers, forward_to) -> None:  # type: ignore[no-untyped-def]
    echo = serve_process()
    forwarder = forward_to(*echo.address)
    # nc -N half-closes after its input; the reply still comes back through the forwarder, then EOF
    result = subprocess.run(
        ["nc", "-N", "127.0.0.1", str(forwarder.port)], input=b"Hello\n", capture_output=True, timeout=20, check=False
    )
    assert result.stdout == b"GOT:Hello\n"
    forwarder.wait_log(b"6 bytes up, 10 bytes down")


def test_port_forward_is_byte_exact_both_ways(serve_process: ProcessServers, forward_to) -> None:  # type: ignore[no-untyped-def]
    echo = serve_process("--prefix", "")
    forwarder = forward_to(*echo.address)
    payload = os.urandom(4 * 1024 * 1024)
    with connect(forwarder.address) as sock:
        assert exchange(sock, payload) == payload
    forwarder.wait_log(b"4194304 bytes up, 4194304 bytes down")


def test_port_forward_to_a_refused_target_closes_the_client_and_keeps_serving(forward_to) -> None:  # type: ignore[no-untyped-def]
    with refused_port() as port:
        forwarder = forward_to("127.0.0.1", port)
        for _ in range(2):
            with connect(forwarder.address) as sock:
                assert recv_all(sock) == b""
        forwarder.wait_log(b"cannot reach 127.0.0.1:%d: Connection refused" % port, count=2)
        forwarder.assert_healthy()
