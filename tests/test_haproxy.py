"""`yieldio serve --proxy-protocol` behind a real HAProxy, and against clients that get the header wrong.

HAProxy (Debian's package; .ci/run installs it) runs in the foreground (``-db``) as a child of the
test, stopped by its PID. Its frontend needs a port, and no test may pick a port for a child to bind
(something else could take it in between), so the test binds port 0 itself, listens, and hands the
socket to HAProxy as an inherited descriptor (``bind fd@N``). The test's own copy is then closed:
clients that connect before HAProxy is up wait in the listen backlog, so there is nothing to poll,
and if HAProxy dies the port refuses at once instead of hanging.

What is proved, with HAProxy's ``send-proxy`` (v1) and ``send-proxy-v2``: the header never reaches
the echo (the reply is exactly ``GOT:`` + what the client sent), and the log names the original
client, ``connection from CLIENT via BALANCER``, where CLIENT is the port the client's own socket
has and BALANCER is the socket HAProxy holds towards yieldio (psutil sees it in HAProxy's table).
HAProxy's health checks with ``send-proxy-v2`` carry a ``LOCAL`` header, accepted as the proxy's own
connection. TLS passthrough (the header in the clear, then the client's TLS) works through HAProxy
and from a hand-written client, and a Unix listener takes the header too.

Without HAProxy: a connection whose first bytes are not a valid header is closed at once with one
``rejected`` warning, and the other clients are served meanwhile and afterwards; a client that has
not sent its header yet holds nothing up. The deadline for a header that never comes is
test_metrics' (--proxy-timeout, counted), and test_proxy_protocol's in-process.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from yieldio.servers.proxy_protocol import build_proxy_header

from .harness import ProcessServers, ServerProcess, connect, exchange, recv_exactly, roundtrip, serve_command

HAPROXY = shutil.which("haproxy", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]))
SEND_PROXY = ["send-proxy", "send-proxy-v2"]  # HAProxy's server options for PROXY protocol v1 and v2
REJECTED = re.compile(rb"WARNING connection 127\.0\.0\.1:(\d+): rejected: ([^\n]*)\n")
# The header deadline of the servers whose bad headers are rejected "at once" (--proxy-timeout), and the
# bound on "at once": far apart, so a busy machine cannot make the rejection look late, nor the deadline early.
DEADLINE = 60.0
A_MOMENT = 20.0


@dataclass
class Balancer:
    """A running HAProxy: its process and the address clients connect to."""

    process: ServerProcess
    address: tuple[str, int]

    def peer_of(self, local_port: int) -> tuple[str, int] | None:
        """Where HAProxy's TCP socket on ``local_port`` is connected to, if it holds one."""
        sockets = self.process.ps.net_connections(kind="tcp")
        return next(((c.raddr.ip, c.raddr.port) for c in sockets if c.laddr.port == local_port and c.raddr), None)

    def assert_healthy(self) -> None:
        assert self.process.alive(), f"haproxy died:\n{self.process.tail()}"
        assert "[ALERT]" not in self.process.text(), self.process.tail()


StartBalancer = Callable[..., Balancer]


@pytest.fixture
def haproxy(serve_process: ProcessServers, tmp_path: Path) -> StartBalancer:
    """``haproxy(server_address, server_options, *backend_lines)``: HAProxy in TCP mode, one frontend, one server."""
    assert HAPROXY, "haproxy is not installed (.ci/run installs Debian's haproxy)"

    def start(server: str, server_options: str, *backend_lines: str) -> Balancer:
        with socket.socket() as frontend:
            frontend.bind(("127.0.0.1", 0))
            frontend.listen(64)
            config = tmp_path / "haproxy.cfg"
            config.write_text(haproxy_config(frontend.fileno(), server, server_options, backend_lines))
            process = serve_process.launch([HAPROXY, "-db", "-f", str(config)], pass_fds=[frontend.fileno()])
            return Balancer(process, frontend.getsockname())

    return start


def haproxy_config(frontend_fd: int, server: str, server_options: str, backend_lines: Sequence[str]) -> str:
    backend = "".join(f"    {line}\n" for line in backend_lines)
    return f"""\
global
    maxconn 256
    log stderr format raw local0

defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout check 5s

frontend clients
    bind fd@{frontend_fd}
    default_backend echo

backend echo
{backend}    server yieldio {server} {server_options}
"""


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(certificate, key) files for 127.0.0.1, signed by the test CA."""
    directory = tmp_path_factory.mktemp("tls")
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts the test CA alone
    ca.configure_trust(context)
    return context


def bound_client() -> tuple[socket.socket, int]:
    """A TCP socket bound to a port of its own before it connects: the test knows the client's address."""
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends before it closes the connection (a reset counts as closed)."""
    received = bytearray()
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return bytes(received)


def address_of(label: str) -> tuple[str, int]:
    """The address in a listener's label, ``tls://127.0.0.1:PORT`` or ``127.0.0.1:PORT``."""
    host, _, port = label.rpartition("//")[2].rpartition(":")
    return host, int(port)


# -- HAProxy in front ------------------------------------------------------------------


@pytest.mark.parametrize("send_proxy", SEND_PROXY)
def test_through_haproxy_the_log_names_the_client_and_the_echo_never_sees_the_header(
    serve_process: ProcessServers, haproxy: StartBalancer, send_proxy: str
) -> None:
    server = serve_process("--proxy-protocol")
    balancer = haproxy(f"127.0.0.1:{server.port}", send_proxy)
    client, client_port = bound_client()
    with client:
        client.connect(balancer.address)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        roundtrip(client, b"hello\n", b"GOT:hello\n")
        proxied = re.compile(rb"connection from 127\.0\.0\.1:%d via 127\.0\.0\.1:(\d+)\n" % client_port)
        via = int(server.wait_log(proxied).group(1))
        # "via" is HAProxy's own connection to yieldio, open for as long as the client's is
        assert balancer.peer_of(via) == server.address, f"haproxy holds no socket from port {via} to yieldio"
        assert exchange(client, b"and more\n") == b"GOT:and more\n"  # then HAProxy passes on the half-close
    server.wait_log(b"connection closed 127.0.0.1:%d" % client_port)
    server.assert_healthy()
    balancer.assert_healthy()


@pytest.mark.parametrize("send_proxy", SEND_PROXY)
def test_nc_through_haproxy(serve_process: ProcessServers, haproxy: StartBalancer, send_proxy: str) -> None:
    server = serve_process("--proxy-protocol")
    balancer = haproxy(f"127.0.0.1:{server.port}", send_proxy)
    host, port = balancer.address
    nc = subprocess.run(["nc", "-N", host, str(port)], input=b"hello\n", capture_output=True, timeout=10, check=False)
    assert (nc.returncode, nc.stdout, nc.stderr) == (0, b"GOT:hello\n", b""), balancer.process.tail()
    logged = server.wait_log(re.compile(rb"connection from 127\.0\.0\.1:(\d+) via 127\.0\.0\.1:(\d+)\n"))
    original, via = int(logged.group(1)), int(logged.group(2))
    assert original not in (via, port, server.port)  # nc's own port, not HAProxy's nor a listener's
    server.wait_log(b"connection closed 127.0.0.1:%d" % original)
    server.assert_healthy()
    balancer.assert_healthy()


def test_haproxy_health_checks_send_a_local_header_and_get_the_echo(
    serve_process: ProcessServers, haproxy: StartBalancer
) -> None:
    # With send-proxy-v2, HAProxy's checks carry a LOCAL header (its own connection, no client's address);
    # this check then says hello and expects the echo, so it passes only if the header was taken off cleanly.
    server = serve_process("--proxy-protocol")
    balancer = haproxy(
        f"127.0.0.1:{server.port}",
        "send-proxy-v2 check inter 100ms rise 1 fall 1",
        "option tcp-check",
        "option log-health-checks",
        r"tcp-check send hello\n",
        "tcp-check expect string GOT:hello",
    )
    balancer.process.wait_log(b"Health check for server echo/yieldio succeeded, reason: Layer7 check passed")
    server.wait_log(re.compile(rb"connection from 127\.0\.0\.1:\d+ \(PROXY LOCAL\)\n"), count=2)
    assert b"rejected" not in server.output()
    assert b"is DOWN" not in balancer.process.output()
    server.assert_healthy()
    balancer.assert_healthy()


def test_tls_passthrough_behind_haproxy(
    serve_process: ProcessServers,
    haproxy: StartBalancer,
    tls_files: tuple[str, str],
    client_context: ssl.SSLContext,
) -> None:
    # HAProxy in TCP mode does not terminate TLS: it sends the header, then the client's ClientHello as it came
    cert, key = tls_files
    server = serve_process("--listen", "tls://127.0.0.1:0", "--tls-cert", cert, "--tls-key", key, "--proxy-protocol")
    balancer = haproxy(f"127.0.0.1:{server.port}", "send-proxy-v2")
    raw, client_port = bound_client()
    raw.connect(balancer.address)
    with client_context.wrap_socket(raw, server_hostname="127.0.0.1") as client:
        roundtrip(client, b"secret\n", b"GOT:secret\n")
    server.wait_log(re.compile(rb"connection from 127\.0\.0\.1:%d via 127\.0\.0\.1:\d+\n" % client_port))
    server.wait_log(b"connection closed 127.0.0.1:%d" % client_port)
    server.assert_healthy()
    balancer.assert_healthy()


def test_haproxy_in_front_of_a_unix_listener(
    serve_process: ProcessServers, haproxy: StartBalancer, tmp_path: Path
) -> None:
    path = tmp_path / "echo.sock"
    server = serve_process.launch(serve_command("--listen", f"unix:{path}", "--proxy-protocol"))
    server.wait_listeners(1)
    balancer = haproxy(str(path), "send-proxy-v2")  # an absolute path is a Unix socket to HAProxy
    client, client_port = bound_client()
    with client:
        client.connect(balancer.address)
        assert exchange(client, b"over a unix socket\n") == b"GOT:over a unix socket\n"
    server.wait_log(b"connection from 127.0.0.1:%d via unix:(unnamed)\n" % client_port)
    server.assert_healthy()
    balancer.assert_healthy()


# -- clients that get the header wrong, straight to yieldio -------------------------------------


@pytest.mark.parametrize(
    ("first_bytes", "reason"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n", b"PROXY v1: TCP4 needs 4 fields (addresses, ports) after it, got 3"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\n", b"PROXY v1: LF without CR (the line must end in CRLF)"),
        (b"GET / HTTP/1.0\r\n\r\n", b"expected a PROXY header, got b'GET / HTTP/1.0\\r\\n\\r\\n'"),
        # the fixed part of a v2 header whose length field says 8192: refused before the body is awaited
        (
            build_proxy_header(2, ("1.2.3.4", 1), ("5.6.7.8", 2))[:14] + (8192).to_bytes(2, "big"),
            b"PROXY v2: a header of 8208 bytes is over the limit of 4096",
        ),
    ],
    ids=["v1-missing-port", "v1-bare-lf", "http-request", "v2-too-long"],
)
def test_a_bad_header_closes_that_connection_at_once_and_no_other(
    serve_process: ProcessServers, first_bytes: bytes, reason: bytes
) -> None:
    server = serve_process("--proxy-protocol", "--proxy-timeout", str(DEADLINE))
    with connect(server.address) as good:
        good.sendall(build_proxy_header(1, ("192.0.2.10", 40000), ("198.51.100.1", 25000)))
        roundtrip(good, b"before\n", b"GOT:before\n")
        with connect(server.address, timeout=A_MOMENT) as bad:
            bad_port = bad.getsockname()[1]
            bad.sendall(first_bytes)
            assert read_until_closed(bad) == b""  # within A_MOMENT: the socket timeout would raise otherwise
        rejected = server.wait_log(REJECTED)
        assert (int(rejected.group(1)), rejected.group(2)) == (bad_port, reason)
        roundtrip(good, b"after\n", b"GOT:after\n")
    with connect(server.address) as later:
        later.sendall(build_proxy_header(2, ("2001:db8::5", 50000), ("2001:db8::1", 25000)) + b"later\n")
        assert recv_exactly(later, len(b"GOT:later\n")) == b"GOT:later\n"
    server.wait_log(b"connection from [2001:db8::5]:50000 via 127.0.0.1:")
    server.wait_log(b"connection closed [2001:db8::5]:50000")
    lines = [line for line in server.text().splitlines() if f"127.0.0.1:{bad_port}" in line]
    assert len([line for line in lines if "WARNING" in line]) == 1, lines
    assert not any("connection from" in line for line in lines), lines
    assert server.count(REJECTED) == 1
    server.assert_healthy()


def test_a_client_that_has_not_sent_its_header_yet_holds_nothing_up(serve_process: ProcessServers) -> None:
    server = serve_process("--proxy-protocol", "--proxy-timeout", str(DEADLINE))  # the slow one's time is ours
    with connect(server.address) as slow:
        for number in range(3):  # served while the slow client's header is still awaited
            with connect(server.address) as other:
                other.sendall(build_proxy_header(1, (f"192.0.2.{number + 1}", 1000), ("198.51.100.1", 25000)))
                assert exchange(other, b"meanwhile\n") == b"GOT:meanwhile\n"
        header = build_proxy_header(2, ("192.0.2.99", 9999), ("198.51.100.1", 25000))
        slow.sendall(header[:7])  # part of it, then the rest with the first message
        roundtrip(slow, header[7:] + b"at last\n", b"GOT:at last\n")
    server.wait_log(b"connection from 192.0.2.99:9999 via 127.0.0.1:")
    assert server.count(REJECTED) == 0
    server.assert_healthy()


# -- the header before TLS, and on a Unix socket, from hand-written clients ------------------


def test_tls_listener_reads_the_header_in_the_clear_then_the_handshake(
    serve_process: ProcessServers, tls_files: tuple[str, str], client_context: ssl.SSLContext, tmp_path: Path
) -> None:
    cert, key = tls_files
    path = tmp_path / "echo.sock"
    server = serve_process(
        "--listen", "tls://127.0.0.1:0", "--listen", f"unix:{path}", "--tls-cert", cert, "--tls-key", key,
        "--proxy-protocol",
    )  # fmt: skip
    tls_label, unix_label = server.wait_listeners(2)
    assert (tls_label.startswith("tls://127.0.0.1:"), unix_label) == (True, f"unix:{path}")

    raw = socket.create_connection(address_of(tls_label), timeout=10)
    raw.sendall(build_proxy_header(1, ("203.0.113.7", 40443), ("198.51.100.1", 443)))
    with client_context.wrap_socket(raw, server_hostname="127.0.0.1") as client:
        roundtrip(client, b"over tls\n", b"GOT:over tls\n")
    server.wait_log(b"connection from 203.0.113.7:40443 via 127.0.0.1:")

    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(str(path))
        header = build_proxy_header(2, ("2001:db8::7", 5555), ("2001:db8::1", 9000), tlvs=[(0x02, b"echo.example")])
        client.sendall(header + b"over unix\n")  # one segment: the header, a TLV, and the first message
        assert recv_exactly(client, len(b"GOT:over unix\n")) == b"GOT:over unix\n"
    server.wait_log(b"connection from [2001:db8::7]:5555 via unix:(unnamed)\n")
    server.wait_log(b"connection closed [2001:db8::7]:5555")
    assert server.count(REJECTED) == 0
    server.assert_healthy()
