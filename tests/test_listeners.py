"""End to end: ``yieldio serve --listen`` with TCP, UDP, Unix and TLS listeners, driven by real clients.

Every test runs the real ``yieldio serve`` process (tests/harness.py starts it and reads its
output) and talks to it with the clients people use: nc (``-N``, ``-u``, ``-U``), socat and
``openssl s_client``, or Python sockets where a test needs to control the timing. The server
logs one ``listening on LABEL (echo, ...)`` line per listener before it serves, so the tests
learn every port it picked from that (the one port a test gives it is one the test holds, below).

Shutdown tests make sure the drain is what answers: a stream server framing lines answers an
unfinished line only at the end of the input or when cancelled, so its echo can only come from the
drain; a UDP server is stopped (SIGSTOP) while more datagrams arrive than it reads in one turn,
then sent SIGTERM and SIGCONT, so the signal cancels it while most are still waiting.

Setup failures are checked for what they leave behind: a Unix socket file of a listener opened
before the failure, and a TCP port whose reservation only the test holds (a bound, not listening
socket with SO_REUSEADDR: the server may listen on it, nobody else can take it, and the test
can tell when the server's listener has gone by listening there itself).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import trustme

from .harness import (
    SERVE_FLAGS,
    ProcessServers,
    ServerProcess,
    connect,
    exchange,
    has_ipv6_loopback,
    python_env,
    read_until,
    recv_exactly,
    run_client,
    serve_command,
    yieldio_command,
)

# the line every listener logs before the server serves: LABEL is 127.0.0.1:PORT for TCP,
# [::]:PORT for every address, udp://..., tls://..., unix:/path
LABEL = re.compile(rb"listening on (\S+) \(echo")
CLIENT_TIMEOUT = 10.0


# -- fixtures --------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    """A throwaway CA and a server certificate for ``localhost`` (only: clients must ask for that name)."""

    ca: Path
    cert: Path  # the chain, as --tls-cert takes it
    key: Path
    other_key: Path  # the key of another certificate


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    where = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    paths = Certs(where / "ca.pem", where / "cert.pem", where / "key.pem", where / "other-key.pem")
    ca.cert_pem.write_to_path(str(paths.ca))
    paths.cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(paths.key))
    ca.issue_cert("localhost").private_key_pem.write_to_path(str(paths.other_key))
    return paths


HAS_IPV6 = has_ipv6_loopback()


# -- the server and its listeners ------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A listener as the server announced it: its kind and where to reach it."""

    label: str
    kind: str  # tcp, udp, tls, unix
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @classmethod
    def parse(cls, label: str) -> Endpoint:
        if label.startswith("unix:"):
            return cls(label, "unix", path=label.removeprefix("unix:"))
        scheme, _, hostport = label.rpartition("://")
        host, _, port = hostport.rpartition(":")
        return cls(label, scheme or "tcp", host.strip("[]"), int(port))


def start(
    serve_process: ProcessServers, *args: str, listeners: int, env: dict[str, str] | None = None
) -> tuple[ServerProcess, list[Endpoint]]:
    """``yieldio serve ARGS``; returns once all its ``listeners`` have said where they listen."""
    server = serve_process.launch(serve_command(*args), env=env)
    server.wait_log(LABEL, count=listeners)
    endpoints = [Endpoint.parse(label.decode()) for label in LABEL.findall(server.output())]
    assert len(endpoints) == listeners, server.tail()
    return server, endpoints


def wait_stopped(server: ServerProcess, timeout: float = 5.0) -> None:
    """Wait until SIGSTOP has taken effect (the kernel changes the state; nothing is logged, so poll, bounded)."""
    end = time.monotonic() + timeout
    while server.ps.status() != psutil.STATUS_STOPPED:
        assert time.monotonic() < end, "the server did not stop on SIGSTOP"
        time.sleep(0.005)


def exit_after(server: ServerProcess, since: float) -> tuple[int, float]:
    """Wait for the exit the SIGTERM sent at ``since`` (monotonic) asked for: (exit status, seconds since).

    No second signal: once the server has stopped serving, its handlers are gone and one would kill it.
    """
    try:
        status = server.proc.wait(10)
    finally:
        server.kill()
    return status, time.monotonic() - since


def signals_caught(pid: int) -> int:
    """The SigCgt mask of /proc/PID/status: the signals the process has a handler for."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


def processes_mentioning(marker: str) -> list[str]:
    """Command lines of running processes that contain ``marker`` (there should be none)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(marker in part for part in cmdline):
            found.append(" ".join(cmdline))
    return found


# -- clients ---------------------------------------------------------------------


def run_clients(*runs: Callable[[], subprocess.CompletedProcess[bytes]]) -> list[subprocess.CompletedProcess[bytes]]:
    """Run command-line clients side by side (UDP clients each wait a second for late replies)."""
    with ThreadPoolExecutor(len(runs)) as pool:
        return list(pool.map(lambda run: run(), runs))


def s_client(endpoint: Endpoint, ca: Path, line: bytes) -> tuple[bytes, subprocess.CompletedProcess[bytes]]:
    """``openssl s_client``, verifying the server's chain: type ``line``, read its echo, then end the input.

    s_client quits at the end of its input (``-no_ign_eof``) without waiting for replies, so the
    input stays open until the echo has been read; then it sends close_notify and exits.
    """
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{endpoint.port}", "-servername", "localhost"]
    command += ["-CAfile", str(ca), "-verify_return_error", "-quiet", "-no_ign_eof"]
    client = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(line)
        client.stdin.flush()
        echoed = read_until(client.stdout.fileno(), b"GOT:" + line, timeout=CLIENT_TIMEOUT)
        stdout, stderr = client.communicate(timeout=CLIENT_TIMEOUT)
        return echoed + stdout, subprocess.CompletedProcess(command, client.returncode, stdout, stderr)
    finally:
        client.kill()
        client.wait(CLIENT_TIMEOUT)


def udp_client(endpoint: Endpoint) -> socket.socket:
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(CLIENT_TIMEOUT)
    sock.connect(endpoint.address)  # replies from anyone else are not taken for the server's
    return sock


def udp_echo(endpoint: Endpoint, payload: bytes) -> bytes:
    with udp_client(endpoint) as sock:
        sock.send(payload)
        return sock.recv(65536)


def unix_connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CLIENT_TIMEOUT)
    sock.connect(path)
    return sock


def tls_connect(endpoint: Endpoint, ca: Path) -> ssl.SSLSocket:
    """A verified TLS connection; a close without close_notify raises instead of reading as EOF."""
    context = ssl.create_default_context(cafile=str(ca))
    return context.wrap_socket(connect(endpoint.address), server_hostname="localhost", suppress_ragged_eofs=False)


def read_to_eof(sock: socket.socket) -> bytes:
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    return bytes(received)


# -- each kind with its real clients ----------------------------------------------


def test_tcp_listener_answers_nc_and_socat(serve_process: ProcessServers) -> None:
    server, [tcp] = start(serve_process, "--listen", "tcp://127.0.0.1:0", listeners=1)
    assert tcp.kind == "tcp" and tcp.host == "127.0.0.1"
    nc = run_client(["nc", "-N", "127.0.0.1", str(tcp.port)], b"Hello nc\n")
    via_socat = run_client(["socat", "-", f"TCP:127.0.0.1:{tcp.port}"], b"Hello socat\n")
    assert (nc.returncode, nc.stdout) == (0, b"GOT:Hello nc\n"), nc.stderr
    assert (via_socat.returncode, via_socat.stdout) == (0, b"GOT:Hello socat\n"), via_socat.stderr
    server.assert_healthy()


def test_udp_listener_answers_nc_and_socat(serve_process: ProcessServers) -> None:
    server, [udp] = start(serve_process, "--listen", "udp://127.0.0.1:0", listeners=1)
    assert udp.kind == "udp" and udp.label == f"udp://127.0.0.1:{udp.port}"
    nc, via_socat = run_clients(
        lambda: run_client(["nc", "-u", "-w1", "127.0.0.1", str(udp.port)], b"Hello nc\n"),
        lambda: run_client(["socat", "-t", "1", "-", f"UDP:127.0.0.1:{udp.port}"], b"Hello socat\n"),
    )
    assert (nc.returncode, nc.stdout) == (0, b"GOT:Hello nc\n"), nc.stderr
    assert (via_socat.returncode, via_socat.stdout) == (0, b"GOT:Hello socat\n"), via_socat.stderr
    server.assert_healthy()


def test_unix_listener_answers_nc_and_socat(serve_process: ProcessServers, sock_dir: Path) -> None:
    path = sock_dir / "echo.sock"
    server, [unix] = start(serve_process, "--listen", f"unix:{path}", listeners=1)
    assert (unix.kind, unix.path) == ("unix", str(path))
    nc = run_client(["nc", "-N", "-U", str(path)], b"Hello nc\n")
    via_socat = run_client(["socat", "-", f"UNIX-CONNECT:{path}"], b"Hello socat\n")
    assert (nc.returncode, nc.stdout) == (0, b"GOT:Hello nc\n"), nc.stderr
    assert (via_socat.returncode, via_socat.stdout) == (0, b"GOT:Hello socat\n"), via_socat.stderr
    server.assert_healthy()


def test_tls_listener_answers_openssl_s_client_and_socat(serve_process: ProcessServers, certs: Certs) -> None:
    tls_args = ("--tls-cert", str(certs.cert), "--tls-key", str(certs.key))
    server, [tls] = start(serve_process, "--listen", "tls://127.0.0.1:0", *tls_args, listeners=1)
    assert tls.label == f"tls://127.0.0.1:{tls.port}"
    echoed, done = s_client(tls, certs.ca, b"Hello s_client\n")
    assert (echoed, done.returncode) == (b"GOT:Hello s_client\n", 0), done.stderr.decode(errors="replace")
    # socat checks the chain against the CA and the name against commonname (the certificate is for localhost)
    target = f"OPENSSL:127.0.0.1:{tls.port},cafile={certs.ca},commonname=localhost,verify=1"
    via_socat = run_client(["socat", "-", target], b"Hello socat\n")
    assert (via_socat.returncode, via_socat.stdout) == (0, b"GOT:Hello socat\n"), via_socat.stderr
    # and the verification is real: a client that trusts another CA is refused by its own side
    other_ca = certs.ca.parent / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    refused = run_client(["socat", "-", target.replace(str(certs.ca), str(other_ca))], b"never\n")
    assert refused.returncode != 0 and refused.stdout == b""
    server.assert_healthy()


# -- several listeners in one process -------------------------------------------------


def test_tcp_udp_unix_and_tls_listeners_in_one_process(
    serve_process: ProcessServers, certs: Certs, sock_dir: Path
) -> None:
    path = sock_dir / "echo.sock"
    urls = ["tcp://127.0.0.1:0", "udp://127.0.0.1:0", f"unix:{path}", "tls://127.0.0.1:0"]
    args = [arg for url in urls for arg in ("--listen", url)]
    server, endpoints = start(
        serve_process, *args, "--tls-cert", str(certs.cert), "--tls-key", str(certs.key), listeners=4
    )
    tcp, udp, unix, tls = endpoints
    assert [e.kind for e in endpoints] == ["tcp", "udp", "unix", "tls"]  # in the order given
    assert len(psutil.Process(server.pid).children()) == 0  # one process serves them all
    # clients of every kind at once: connected first, then each answered in turn
    with connect(tcp.address) as c_tcp, unix_connect(unix.path) as c_unix, tls_connect(tls, certs.ca) as c_tls:
        for round_ in range(3):
            for name, sock in (("tcp", c_tcp), ("unix", c_unix), ("tls", c_tls)):
                message = b"%s %d\n" % (name.encode(), round_)
                sock.sendall(message)
                assert recv_exactly(sock, 4 + len(message)) == b"GOT:" + message
            assert udp_echo(udp, b"udp %d\n" % round_) == b"GOT:udp %d\n" % round_
        c_tls.unwrap()
    server.assert_healthy()


def test_istio_three_tcp_ports_answer_hello_world(serve_process: ProcessServers) -> None:
    """Istio's tcp-echo-server: ``--framing line --prefix 'hello '`` on three TCP ports (here on loopback)."""
    three = ["--listen", "tcp://127.0.0.1:0"] * 3
    server, endpoints = start(serve_process, "--framing", "line", "--prefix", "hello ", *three, listeners=3)
    assert len({e.port for e in endpoints}) == 3 and {e.kind for e in endpoints} == {"tcp"}
    for endpoint in endpoints:
        done = run_client(["nc", "-N", "127.0.0.1", str(endpoint.port)], b"world\n")
        assert (done.returncode, done.stdout) == (0, b"hello world\n"), (endpoint, done.stderr)
    assert server.count(b"framing=line, prefix=b'hello '") == 3
    server.assert_healthy()


def test_an_empty_host_listens_on_every_address(serve_process: ProcessServers) -> None:
    server, [tcp, udp] = start(serve_process, "--listen", "tcp://:0", "--listen", "udp://:0", listeners=2)
    every = "::" if HAS_IPV6 else "0.0.0.0"
    assert (tcp.kind, tcp.host, udp.kind, udp.host) == ("tcp", every, "udp", every)
    for host in ("127.0.0.1", "::1") if HAS_IPV6 else ("127.0.0.1",):
        with connect((host, tcp.port)) as sock:
            assert exchange(sock, b"over %s\n" % host.encode()) == b"GOT:over %s\n" % host.encode()
        assert udp_echo(Endpoint("", "udp", host, udp.port), host.encode()) == b"GOT:" + host.encode()
    server.assert_healthy()


# -- SIGTERM drains each kind -------------------------------------------------------


# with --framing line, the last, unfinished line is answered only by the drain: at the end of input, or when cancelled
LINES = b"a line sent before SIGTERM\n" * 200  # no "G": each GOT: in a reply is a prefix
UNFINISHED = b"and the unfinished one"


def stream_client(kind: str, endpoint: Endpoint, certs: Certs) -> socket.socket:
    if kind == "tcp":
        return connect(endpoint.address)
    if kind == "unix":
        return unix_connect(endpoint.path)
    return tls_connect(endpoint, certs.ca)


@pytest.mark.parametrize("kind", ["tcp", "unix", "tls"])
def test_sigterm_echoes_what_a_stream_client_sent_then_closes(
    serve_process: ProcessServers, certs: Certs, sock_dir: Path, kind: str
) -> None:
    url = f"unix:{sock_dir / 'echo.sock'}" if kind == "unix" else f"{kind}://127.0.0.1:0"
    tls_args = ("--tls-cert", str(certs.cert), "--tls-key", str(certs.key)) if kind == "tls" else ()
    server, [endpoint] = start(serve_process, "--framing", "line", "--listen", url, *tls_args, listeners=1)
    with stream_client(kind, endpoint, certs) as sock:
        sock.sendall(b"ready?\n")  # accepted, handshake done, the handler waits for more
        assert recv_exactly(sock, 11) == b"GOT:ready?\n"
        sock.sendall(LINES + UNFINISHED)
        terminated = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        reply = read_to_eof(sock)  # over TLS: b"" only after close_notify, else SSLEOFError
    assert reply == b"".join(b"GOT:" + line for line in (LINES + UNFINISHED).splitlines(keepends=True))
    status, took = exit_after(server, terminated)
    assert (status, took < 5) == (0, True), server.tail()
    assert b"SIGTERM received" in server.output() and b"Traceback" not in server.output()
    if kind == "unix":
        assert not os.path.exists(endpoint.path), "the socket file outlived the server"


def test_sigterm_answers_the_datagrams_already_waiting(serve_process: ProcessServers) -> None:
    """Datagrams waiting when SIGTERM arrives are answered.

    The server is stopped while they are sent, so on SIGCONT the datagrams and the signal are both
    pending. It reads at most 64 datagrams per turn; then the signal cancels it, and it answers the
    rest, still waiting in the socket, on its way out.
    """
    server, [udp] = start(serve_process, "--listen", "udp://127.0.0.1:0", listeners=1)
    clients = [udp_client(udp) for _ in range(3)]
    try:
        assert udp_echo(udp, b"ready?") == b"GOT:ready?"
        os.kill(server.pid, signal.SIGSTOP)
        try:
            wait_stopped(server)
            for i in range(40):  # 120 datagrams: more than a turn's 64, fewer than the ~250 the buffer holds
                for n, sock in enumerate(clients):
                    sock.send(b"client %d datagram %d" % (n, i))
            os.kill(server.pid, signal.SIGTERM)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        terminated = time.monotonic()
        replies = [[sock.recv(65536) for _ in range(40)] for sock in clients]
    finally:
        for sock in clients:
            sock.close()
    assert replies == [[b"GOT:client %d datagram %d" % (n, i) for i in range(40)] for n in range(3)]
    status, took = exit_after(server, terminated)
    assert (status, took < 5) == (0, True), server.tail()


# -- workers ---------------------------------------------------------------------


def wait_workers_ready(server: ServerProcess, count: int, tcp_port: int, udp_port: int, timeout: float = 10.0) -> None:
    """Wait until ``count`` workers each listen on both ports and catch SIGTERM.

    The parent announces the ports, then each worker opens sockets of its own on them: until
    then a connection is refused and a datagram lost. Workers log nothing when ready, so this
    polls the process table (bounded).
    """
    end = time.monotonic() + timeout
    while True:
        workers = server.ps.children()
        try:
            ready = [
                worker
                for worker in workers
                if signals_caught(worker.pid) >> (signal.SIGTERM - 1) & 1
                and {(c.type, c.laddr.port) for c in worker.net_connections("inet4")}
                >= {(socket.SOCK_STREAM, tcp_port), (socket.SOCK_DGRAM, udp_port)}
            ]
        except (psutil.Error, OSError):
            ready = []  # a worker ended while we looked: look again
        if len(workers) == len(ready) == count:
            return
        assert time.monotonic() < end, f"{len(ready)} of {len(workers)} workers ready, {count} wanted"
        time.sleep(0.02)


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="--workers needs SO_REUSEPORT")
def test_two_workers_answer_tcp_udp_and_unix_clients_and_stop_on_sigterm(
    serve_process: ProcessServers, sock_dir: Path
) -> None:
    path = sock_dir / "echo.sock"
    args = ("--listen", "tcp://127.0.0.1:0", "--listen", "udp://127.0.0.1:0", "--listen", f"unix:{path}")
    server, (tcp, udp, unix) = start(serve_process, "--workers", "2", *args, listeners=3)
    wait_workers_ready(server, 2, tcp.port, udp.port)
    tcp_clients = [connect(tcp.address) for _ in range(50)]
    unix_clients = [unix_connect(unix.path) for _ in range(20)]
    udp_clients = [udp_client(udp) for _ in range(50)]  # 50 source ports: spread across the workers
    try:
        for i, sock in enumerate(tcp_clients + unix_clients):
            sock.sendall(b"stream %d" % i)
        for i, sock in enumerate(udp_clients):
            sock.send(b"datagram %d" % i)
        stream_replies = [
            recv_exactly(sock, len(b"GOT:stream %d" % i)) for i, sock in enumerate(tcp_clients + unix_clients)
        ]
        datagram_replies = [sock.recv(65536) for sock in udp_clients]
    finally:
        for sock in tcp_clients + unix_clients + udp_clients:
            sock.close()
    assert stream_replies == [b"GOT:stream %d" % i for i in range(70)]
    assert datagram_replies == [b"GOT:datagram %d" % i for i in range(50)]
    os.kill(server.pid, signal.SIGTERM)
    status, took = exit_after(server, time.monotonic())
    assert (status, took < 8) == (0, True), server.tail()
    assert not path.exists(), "the shared socket file outlived the server"
    assert b"Traceback" not in server.output()


# -- UDP: a reply too large for a datagram ----------------------------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=CLIENT_TIMEOUT) as response:
        return str(response.read().decode())


def test_a_reply_too_large_for_a_datagram_is_dropped_counted_and_logged_never_split(
    serve_process: ProcessServers,
) -> None:
    server, [udp] = start(serve_process, "--listen", "udp://127.0.0.1:0", "--metrics", "127.0.0.1:0", listeners=1)
    metrics_port = int(server.wait_log(re.compile(rb"metrics on http://127\.0\.0\.1:(\d+)/metrics")).group(1))
    with udp_client(udp) as sock:
        sock.send(b"x" * 65507)  # the largest IPv4 datagram; with GOT: the reply would be 65,511 bytes
        server.wait_log(b"udp: a 65511-byte reply to 127.0.0.1:%d dropped" % sock.getsockname()[1])
        sock.send(b"small")
        assert sock.recv(65536) == b"GOT:small"  # the first datagram back: no piece of the large one came
        sock.setblocking(False)  # and nothing else waits (a timeout socket would wait for one)
        with pytest.raises(BlockingIOError):
            sock.recv(65536)
    text = scrape(metrics_port)
    label = f'listener="udp://127.0.0.1:{udp.port}"'
    assert f"yieldio_replies_dropped_total{{{label}}} 1.0" in text, text
    assert f"yieldio_datagrams_received_total{{{label}}} 2.0" in text, text
    assert f"yieldio_datagrams_sent_total{{{label}}} 1.0" in text, text
    server.assert_healthy()


# -- configuration from the environment ---------------------------------------------------


PROXY_V1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 25000\r\n"


def test_the_environment_configures_listeners_prefix_framing_and_proxy_protocol(
    serve_process: ProcessServers, sock_dir: Path
) -> None:
    path = sock_dir / "echo.sock"
    env = {
        "YIELDIO_LISTEN": f" tcp://127.0.0.1:0, udp://127.0.0.1:0,unix:{path}",
        "YIELDIO_PREFIX": "env:",
        "YIELDIO_FRAMING": "line",
        "YIELDIO_PROXY_PROTOCOL": "yes",
    }
    # serve_command passes --host/--port too: they are only the default listener, which YIELDIO_LISTEN replaces
    server, (tcp, udp, unix) = start(serve_process, listeners=3, env=env)
    assert [e.kind for e in (tcp, udp, unix)] == ["tcp", "udp", "unix"] and unix.path == str(path)
    assert server.count(b", PROXY protocol)") == 2  # the stream listeners; UDP has no header to read
    with connect(tcp.address) as sock:
        assert exchange(sock, PROXY_V1 + b"one\ntwo") == b"env:one\nenv:two"  # lines; the partial one at EOF
    server.wait_log(b"connection from 203.0.113.7:40000 via 127.0.0.1:")
    with unix_connect(unix.path) as sock:
        assert exchange(sock, PROXY_V1 + b"three\n") == b"env:three\n"
    assert udp_echo(udp, b"four\n") == b"env:four\n"
    server.assert_healthy()


def test_a_flag_on_the_command_line_wins_over_its_variable(serve_process: ProcessServers) -> None:
    env = {
        "YIELDIO_LISTEN": "udp://127.0.0.1:0,udp://127.0.0.1:0",
        "YIELDIO_PREFIX": "env:",
        "YIELDIO_FRAMING": "line",
        "YIELDIO_PROXY_PROTOCOL": "0",
    }
    flags = ("--listen", "tcp://127.0.0.1:0", "--prefix", "flag:", "--framing", "chunk")
    server, [tcp] = start(serve_process, *flags, listeners=1, env=env)
    assert tcp.kind == "tcp" and server.count(LABEL) == 1
    with connect(tcp.address) as sock:
        sock.sendall(b"no newline")  # chunk framing answers at once; line framing would wait for the line
        assert recv_exactly(sock, 15) == b"flag:no newline"
    server.assert_healthy()


@pytest.mark.parametrize(
    "variable, value",
    [
        ("YIELDIO_LISTEN", "ftp://127.0.0.1:21"),
        ("YIELDIO_LISTEN", " , "),
        ("YIELDIO_FRAMING", "words"),
        ("YIELDIO_PROXY_PROTOCOL", "maybe"),
        ("YIELDIO_PORT", "http"),
        ("YIELDIO_WORKERS", "0"),
        ("YIELDIO_IDLE_TIMEOUT", "soon"),
        ("YIELDIO_METRICS", "nowhere"),
        ("YIELDIO_LOG_LEVEL", "loud"),
    ],
)
def test_a_bad_variable_is_one_line_naming_it_and_exit_2(variable: str, value: str) -> None:
    # no flag: a flag would win over its variable; YIELDIO_LISTEN keeps a wrongly accepted value harmless
    env = python_env() | {"YIELDIO_LISTEN": "tcp://127.0.0.1:0", variable: value}
    done = subprocess.run(yieldio_command("serve"), env=env, capture_output=True, text=True, timeout=10, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and variable in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_help_names_the_variable_of_every_flag() -> None:
    done = subprocess.run(
        yieldio_command("serve", "--help"), env=python_env(), capture_output=True, text=True, timeout=20, check=False
    )
    assert done.returncode == 0, done.stderr
    options = done.stdout.partition("\noptions:\n")[2]
    # one entry per flag: its line, and the wrapped lines of its help (indented deeper)
    entries = re.split(r"\n(?=  -)", options.strip("\n"))
    helps = {entry.split()[0].rstrip(","): " ".join(entry.split()) for entry in entries}
    assert set(helps) == set(SERVE_FLAGS) | {"-h"}
    for flag in SERVE_FLAGS:
        variable = "YIELDIO_" + flag.removeprefix("--").replace("-", "_").upper()
        assert f"[env {variable}" in helps[flag], helps[flag]
    assert "[env" not in helps["-h"]


# -- bad input: one line, non-zero exit, nothing left listening -------------------------------


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        yieldio_command("serve", *args),
        env=python_env() | (env or {}),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    assert done.returncode == status, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert [word for word in words if word not in done.stderr] == [], done.stderr


@pytest.mark.parametrize(
    "url, words",
    [
        ("ftp://127.0.0.1:21", ["is not a listener URL"]),
        ("tcp:127.0.0.1:9000", ["expected tcp://HOST:PORT"]),
        ("tcp://127.0.0.1", ["the port is missing"]),
        ("udp://127.0.0.1:", ["the port must be a number"]),
        ("tcp://127.0.0.1:99999", ["from 0 to 65535"]),
        ("tls://127.0.0.1:https", ["the port must be a number"]),
        ("tcp://::1:9000", ["put an IPv6 address in brackets"]),
        ("tcp://[::1:9000", ["an IPv6 address goes in brackets"]),
        ("tcp://[127.0.0.1]:9000", ["brackets are for IPv6 addresses only"]),
        ("tcp://127.0.0.1:9000/echo", ["nothing may follow the port"]),
        ("unix:", ["the Unix socket path is missing"]),
        ("", ["is not a listener URL"]),
    ],
)
def test_a_malformed_listen_url_is_one_line_and_nothing_is_opened(url: str, words: list[str], sock_dir: Path) -> None:
    first = sock_dir / "first.sock"
    done = run_serve("--listen", f"unix:{first}", "--listen", url)
    assert_one_line(done, 2, "--listen", *words)
    assert not first.exists()


@dataclass
class Setup:
    """What a setup-failure case can use: certificates, a directory, a busy port of each kind."""

    certs: Certs
    dir: Path
    busy_tcp: int
    busy_udp: int


SETUP_FAILURES: dict[str, Callable[[Setup], tuple[list[str], list[str]]]] = {
    # case: setup -> (the serve arguments after the listeners every case opens first, words of the message)
    "tls without certificate and key": lambda s: (["--listen", "tls://127.0.0.1:0"], ["--tls-cert", "--tls-key"]),
    "tls without key": lambda s: (
        ["--listen", "tls://127.0.0.1:0", "--tls-cert", str(s.certs.cert)],
        ["--tls-cert", "--tls-key"],
    ),
    "missing certificate": lambda s: (
        ["--listen", "tls://127.0.0.1:0", "--tls-cert", str(s.dir / "no.pem"), "--tls-key", str(s.certs.key)],
        ["certificate", str(s.dir / "no.pem"), "No such file"],
    ),
    "missing key": lambda s: (
        ["--listen", "tls://127.0.0.1:0", "--tls-cert", str(s.certs.cert), "--tls-key", str(s.dir / "no.pem")],
        ["key", str(s.dir / "no.pem"), "No such file"],
    ),
    "certificate is a directory": lambda s: (
        ["--listen", "tls://127.0.0.1:0", "--tls-cert", str(s.dir), "--tls-key", str(s.certs.key)],
        ["cannot read the TLS certificate", str(s.dir)],
    ),
    "key of another certificate": lambda s: (
        ["--listen", "tls://127.0.0.1:0", "--tls-cert", str(s.certs.cert), "--tls-key", str(s.certs.other_key)],
        ["does not belong to the certificate", str(s.certs.other_key)],
    ),
    "key is not a key": lambda s: (
        ["--listen", "tls://127.0.0.1:0", "--tls-cert", str(s.certs.cert), "--tls-key", str(s.certs.ca)],
        ["cannot load the TLS certificate", str(s.certs.ca)],
    ),
    "unix path in a missing directory": lambda s: (
        ["--listen", f"unix:{s.dir / 'missing' / 'echo.sock'}"],
        ["cannot listen on unix:", "no such directory", str(s.dir / "missing")],
    ),
    "tcp port taken": lambda s: (
        ["--listen", f"tcp://127.0.0.1:{s.busy_tcp}"],
        [f"cannot listen on 127.0.0.1:{s.busy_tcp}", "Address already in use"],
    ),
    "udp port taken": lambda s: (
        ["--listen", f"udp://127.0.0.1:{s.busy_udp}"],
        [f"cannot listen on udp://127.0.0.1:{s.busy_udp}", "Address already in use"],
    ),
}


@pytest.mark.parametrize("case", list(SETUP_FAILURES))
def test_a_setup_failure_is_one_line_and_leaves_nothing_listening(case: str, certs: Certs, sock_dir: Path) -> None:
    # Every case opens a Unix and a TCP listener first, on a path and a port only this test knows.
    with (
        socket.socket() as reserved,
        socket.socket() as busy_tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy_udp,
    ):
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserved.bind(("127.0.0.1", 0))  # bound, not listening: the server (SO_REUSEADDR too) may listen here
        busy_tcp.bind(("127.0.0.1", 0))
        busy_tcp.listen()
        busy_udp.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        setup = Setup(certs, sock_dir, busy_tcp.getsockname()[1], busy_udp.getsockname()[1])
        args, words = SETUP_FAILURES[case](setup)
        first = sock_dir / "first.sock"
        marker = f"marker-{uuid.uuid4().hex}"  # in the server's command line: no process may keep it
        done = run_serve("--prefix", marker, "--listen", f"unix:{first}", "--listen", f"tcp://127.0.0.1:{port}", *args)
        assert_one_line(done, 1, *words)
        assert done.stderr.startswith("yieldio: "), done.stderr
        assert not first.exists(), "the first listener's socket file was left behind"
        assert processes_mentioning(marker) == []
        with socket.socket() as probe:  # the first TCP listener is closed: its port can be listened on again
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
            probe.listen()


# Root reads a file whatever its mode, by two capabilities: CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH. Run
# as root (CI is), the server is started without them (util-linux's setpriv takes them out of the bounding
# and inheritable sets, so the exec cannot give them back), and a file's mode applies to it as to anyone.
# (Not as another user: the interpreter may live where only root can reach it, under /root.)
WITHOUT_FILE_OVERRIDES = ["--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


def unprivileged(command: list[str | bytes]) -> list[str | bytes]:
    """``command``, as root without the capabilities that ignore file modes; as it is for anyone else."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to run this test as root"
    return [setpriv, *WITHOUT_FILE_OVERRIDES, *command]


def test_an_unreadable_certificate_is_one_line(certs: Certs, tmp_path: Path, serve_process: ProcessServers) -> None:
    locked = tmp_path / "locked.pem"
    shutil.copy(certs.cert, locked)
    args = ("--listen", "tls://127.0.0.1:0", "--tls-cert", str(locked), "--tls-key", str(certs.key))
    # the same command serves while the copy can be read: the mode alone is what refuses it below
    readable = serve_process.launch(unprivileged(serve_command(*args)))
    assert readable.wait_listeners(1)[0].startswith("tls://127.0.0.1:")
    readable.kill()
    locked.chmod(0)
    done = subprocess.run(
        unprivileged(yieldio_command("serve", *args)),
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert_one_line(done, 1, "cannot read the TLS certificate", str(locked), "Permission denied")


NO_PROMETHEUS = "import runpy, sys; sys.modules['prometheus_client'] = None; sys.argv[0] = 'yieldio'; "
NO_PROMETHEUS += "runpy.run_module('yieldio', run_name='__main__')"


def test_metrics_without_prometheus_client_is_one_line(sock_dir: Path) -> None:
    # prometheus_client is installed here: a None in sys.modules makes importing it fail, as if it were not
    first = sock_dir / "first.sock"
    command = [sys.executable, "-c", NO_PROMETHEUS, "serve", "--listen", f"unix:{first}", "--metrics", "127.0.0.1:0"]
    done = subprocess.run(command, env=python_env(), capture_output=True, text=True, timeout=20, check=False)
    assert_one_line(done, 1, "--metrics needs prometheus_client", "yieldio[metrics]")
    assert not first.exists()
