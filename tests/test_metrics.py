"""`yieldio serve --metrics HOST:PORT`: the Prometheus endpoint, scraped the way Prometheus does.

The server counts what it does anyway and the endpoint reads those counters at scrape time, so
every figure can be checked exactly against traffic the test sent itself: connections accepted and
open, bytes in and out (line framing: each line's reply is ``GOT:`` + the line, however TCP splits
it), datagrams and their bytes, a reply too large for UDP, a failed TLS handshake, a rejected PROXY
header, a connection closed at a deadline that a flag or its variable set (a silent client at
--proxy-timeout, half a ClientHello at --tls-handshake-timeout: one warning each). The text is
parsed by prometheus_client's own parser, as a scraper would read it, and every stream or datagram
listener has its own ``listener`` label, the one its ``listening on`` line shows.

The endpoint is plain HTTP on the server's kernel: only GET (and HEAD) of /metrics is answered, and
a scraper that connects and says nothing holds up no other scrape. A bad ``--metrics`` is refused
before anything listens, in one line.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from yieldio.io.sockets import HANDSHAKE_TIMEOUT
from yieldio.servers.proxy_protocol import DEFAULT_TIMEOUT as PROXY_HEADER_TIMEOUT
from yieldio.servers.proxy_protocol import build_proxy_header

from .harness import (
    SRC,
    MiB,
    ProcessServers,
    ServerProcess,
    connect,
    exchange,
    recv_exactly,
    refused_port,
    roundtrip,
    send_until_stalled,
    serve_command,
)

METRICS = re.compile(rb"metrics on http://127\.0\.0\.1:(\d+)/metrics")
PREFIX = b"GOT:"
Samples = dict[tuple[str, str | None], float]  # (sample name, its listener label or None) -> value
Response = tuple[int, http.client.HTTPMessage, bytes]


def start_with_metrics(
    serve_process: ProcessServers, *args: str, listeners: int
) -> tuple[ServerProcess, list[str], int]:
    """``yieldio serve ARGS --metrics 127.0.0.1:0``: the server, its listeners' labels, and its metrics port."""
    server = serve_process.launch(serve_command(*args, "--metrics", "127.0.0.1:0"))
    labels = server.wait_listeners(listeners)
    return server, labels, int(server.wait_log(METRICS).group(1))


def request(port: int, method: str = "GET", path: str = "/metrics", timeout: float = 10.0) -> Response:
    """One HTTP request to the metrics endpoint: its status, headers and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def scrape(port: int, timeout: float = 10.0) -> Samples:
    """GET /metrics, parsed as Prometheus would: every sample by name and ``listener`` label."""
    status, headers, body = request(port, timeout=timeout)
    assert status == 200, body
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST  # prometheus_client's text format
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = (sample.name, sample.labels.get("listener"))
            assert key not in samples, f"{key} twice"
            samples[key] = sample.value
    return samples


def close_and_wait(server: ServerProcess, client: socket.socket) -> None:
    """Close a client's TCP connection, and wait until the server has closed its end too."""
    port = client.getsockname()[1]
    client.close()
    server.wait_log(b"connection closed 127.0.0.1:%d\n" % port)


def address_of(label: str) -> tuple[str, int]:
    """The address in a listener's label: ``127.0.0.1:PORT``, ``udp://127.0.0.1:PORT``, ``tls://...``."""
    host, _, port = label.rpartition("//")[2].rpartition(":")
    return host, int(port)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, ssl.SSLContext]:
    """(certificate file, key file, a client context trusting them) for 127.0.0.1."""
    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("tls")
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    return str(cert), str(key), context


def test_the_counters_are_the_traffic_sent(serve_process: ProcessServers, tls: tuple[str, str, ssl.SSLContext]) -> None:
    cert, key, client_context = tls
    server, labels, metrics = start_with_metrics(
        serve_process,
        "--framing", "line", "--tls-cert", cert, "--tls-key", key,
        "--listen", "tcp://127.0.0.1:0", "--listen", "udp://127.0.0.1:0", "--listen", "tls://127.0.0.1:0",
        listeners=3,
    )  # fmt: skip
    tcp, udp, tls_label = labels
    assert (udp.startswith("udp://"), tls_label.startswith("tls://")) == (True, True), labels

    # TCP: five clients, each sends its lines (a reply for each); two of them leave
    messages = [[b"one\n"], [b"two\n", b"two again\n"], [b"three\n" * 3], [b"x" * 1000 + b"\n"], [b"\n", b"five\n"]]
    clients = [connect(address_of(tcp)) for _ in messages]
    try:
        for client, lines in zip(clients, messages, strict=True):
            for line in lines:
                roundtrip(client, line, b"".join(PREFIX + piece for piece in line.splitlines(keepends=True)))
        for client in clients[:2]:
            close_and_wait(server, client)
        sent = b"".join(line for lines in messages for line in lines)
        replied = len(sent) + len(PREFIX) * sent.count(b"\n")

        # UDP: three answered datagrams, and one whose reply (4 bytes longer) no longer fits in a datagram
        datagrams = [b"a", b"datagram two", b"\x00\xff" * 100]
        largest = 65507  # the largest UDP payload over IPv4
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp_client:
            udp_client.settimeout(10)
            udp_client.connect(address_of(udp))
            for datagram in datagrams:
                udp_client.send(datagram)
                assert udp_client.recv(65536) == PREFIX + datagram
            udp_client.send(b"y" * largest)
            server.wait_log(b"udp: a %d-byte reply to 127.0.0.1:" % (largest + len(PREFIX)))

        # TLS: one client talks, one sends no handshake at all
        secure = client_context.wrap_socket(connect(address_of(tls_label)), server_hostname="127.0.0.1")
        roundtrip(secure, b"secret\n", b"GOT:secret\n")
        close_and_wait(server, secure)
        garbage = connect(address_of(tls_label))
        garbage.sendall(b"GET / HTTP/1.0\r\n\r\n")
        server.wait_log(b"connection 127.0.0.1:%d: TLS handshake failed" % garbage.getsockname()[1])
        close_and_wait(server, garbage)

        samples = scrape(metrics)
        assert {name: value for (name, label), value in samples.items() if label == tcp} == {
            "yieldio_connections_open": 3,
            "yieldio_connections_accepted_total": 5,
            "yieldio_received_bytes_total": len(sent),
            "yieldio_sent_bytes_total": replied,
            "yieldio_accept_pauses_total": 0,
            "yieldio_tls_handshake_failures_total": 0,
            "yieldio_proxy_header_rejections_total": 0,
        }
        answered = sum(map(len, datagrams))
        assert {name: value for (name, label), value in samples.items() if label == udp} == {
            "yieldio_received_bytes_total": answered + largest,
            "yieldio_sent_bytes_total": answered + len(PREFIX) * len(datagrams),
            "yieldio_datagrams_received_total": len(datagrams) + 1,
            "yieldio_datagrams_sent_total": len(datagrams),
            "yieldio_datagrams_too_large_total": 0,
            "yieldio_replies_dropped_total": 1,
        }
        assert samples[("yieldio_connections_accepted_total", tls_label)] == 2
        assert samples[("yieldio_connections_open", tls_label)] == 0
        assert samples[("yieldio_tls_handshake_failures_total", tls_label)] == 1
        assert samples[("yieldio_received_bytes_total", tls_label)] == len(b"secret\n")  # plaintext
        assert samples[("yieldio_sent_bytes_total", tls_label)] == len(b"GOT:secret\n")
        assert {label for _, label in samples} == {tcp, udp, tls_label, None}

        # the kernel's tasks: one per open connection, among others
        alive = samples[("yieldio_tasks_alive", None)]
        assert alive > 3
        for client in clients[2:]:
            close_and_wait(server, client)
        after = scrape(metrics)
        assert after[("yieldio_tasks_alive", None)] == alive - 3
        assert after[("yieldio_connections_open", tcp)] == 0
        assert after[("yieldio_received_bytes_total", tcp)] == len(sent)  # moved from the open to the closed
        assert after[("yieldio_sent_bytes_total", tcp)] == replied
    finally:
        for client in clients:
            client.close()
    server.assert_healthy()


@pytest.mark.parametrize("loop", ["pure", "default"])
def test_byte_totals_are_exact_when_a_slow_reader_makes_the_sends_partial(
    serve_process: ProcessServers, loop: str
) -> None:
    # chunk framing, the plain echo: the compiled step's partial send (the rest sent as the pure loop
    # does), or the pure loop's own slow path; YIELDIO_PURE=1 picks the pure loop in either build
    env = {"YIELDIO_PURE": "1"} if loop == "pure" else {}
    server = serve_process.launch(serve_command("--listen", "tcp://127.0.0.1:0", "--metrics", "127.0.0.1:0"), env=env)
    (label,) = server.wait_listeners(1)
    metrics = int(server.wait_log(METRICS).group(1))
    payload = os.urandom(16 * MiB).replace(b"G", b"g")  # no G: every b"GOT:" in the reply is a prefix
    with connect(address_of(label)) as client:
        port = client.getsockname()[1]
        stalled = send_until_stalled(client, payload)  # not reading: the server is stuck in a send
        assert stalled < len(payload), "the server never had to wait to send"
        reply = exchange(client, payload[stalled:], timeout=60.0, read_size=4096)
    server.wait_log(b"connection closed 127.0.0.1:%d\n" % port)
    chunks = reply.split(PREFIX)
    assert chunks[0] == b"" and b"".join(chunks[1:]) == payload  # nothing lost, nothing repeated
    sent, received = len(payload), len(reply)  # by the client: the prefixes included in what it received
    samples = scrape(metrics)
    assert samples[("yieldio_received_bytes_total", label)] == sent
    assert samples[("yieldio_sent_bytes_total", label)] == received
    server.assert_healthy()


def test_a_rejected_proxy_header_is_counted(serve_process: ProcessServers) -> None:
    server, (label,), metrics = start_with_metrics(
        serve_process, "--proxy-protocol", "--listen", "tcp://127.0.0.1:0", listeners=1
    )
    with connect(address_of(label)) as bad:
        bad.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")  # no header: the wrong port, say
        server.wait_log(b"rejected: expected a PROXY header")
    with connect(address_of(label)) as good:
        good.sendall(build_proxy_header(2, ("192.0.2.1", 1234), ("198.51.100.1", 80)) + b"hi\n")
        assert recv_exactly(good, 7) == b"GOT:hi\n"
        samples = scrape(metrics)
    assert samples[("yieldio_proxy_header_rejections_total", label)] == 1
    assert samples[("yieldio_connections_accepted_total", label)] == 2
    assert samples[("yieldio_connections_open", label)] == 1
    assert samples[("yieldio_received_bytes_total", label)] == len(b"hi\n")  # the header is not the echo's
    server.assert_healthy()


def closed_by_server_within(sock: socket.socket, bound: float) -> float:
    """Read until the server closes ``sock`` (EOF or a reset); the seconds that took, failing after ``bound``."""
    sock.settimeout(bound)
    started = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server had not closed the connection after {bound}s") from None
    return time.monotonic() - started


def warnings_about(server: ServerProcess, port: int) -> list[str]:
    return [line for line in server.text().splitlines() if f"127.0.0.1:{port}" in line and " WARNING " in line]


PROXY_DEADLINE = 0.5  # the deadline given by the test, far below the default 5 s (PROXY_HEADER_TIMEOUT)


@pytest.mark.parametrize("given_by", ["flag", "environment"])
def test_a_silent_client_is_closed_at_the_proxy_timeout_and_counted(
    serve_process: ProcessServers, given_by: str
) -> None:
    timeout = ["--proxy-timeout", str(PROXY_DEADLINE)] if given_by == "flag" else []
    env = {"YIELDIO_PROXY_TIMEOUT": str(PROXY_DEADLINE)} if given_by == "environment" else {}
    server = serve_process.launch(
        serve_command("--proxy-protocol", *timeout, "--listen", "tcp://127.0.0.1:0", "--metrics", "127.0.0.1:0"),
        env=env,
    )
    (label,) = server.wait_listeners(1)
    metrics = int(server.wait_log(METRICS).group(1))
    with connect(address_of(label)) as silent:  # connects, never sends a byte
        port = silent.getsockname()[1]
        # closed after the deadline given, not the default's 5 s (the bound below, which fails the test)
        held = closed_by_server_within(silent, PROXY_HEADER_TIMEOUT - 1)
    assert held >= 0.9 * PROXY_DEADLINE, f"closed after {held:.2f}s, before the deadline"
    server.wait_log(b"connection 127.0.0.1:%d: rejected" % port)
    (warning,) = warnings_about(server, port)  # one line, and no other about that connection:
    assert warning.endswith(
        f" WARNING connection 127.0.0.1:{port}: rejected: "
        f"no complete PROXY header within {PROXY_DEADLINE:g}s (0 bytes received)"
    ), warning
    assert [line for line in server.text().splitlines() if f"127.0.0.1:{port}" in line] == [warning]
    samples = scrape(metrics)
    assert samples[("yieldio_proxy_header_rejections_total", label)] == 1
    assert samples[("yieldio_connections_accepted_total", label)] == 1
    assert samples[("yieldio_connections_open", label)] == 0
    server.assert_healthy()


def client_hello() -> bytes:
    """The first flight of a TLS client: a whole ClientHello record, made by Python's ssl module in memory."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) == 5 + int.from_bytes(hello[3:5], "big"), hello[:5]  # one record
    return hello


HANDSHAKE_DEADLINE = 1.0  # the deadline given by the test, far below the default 10 s (HANDSHAKE_TIMEOUT)


@pytest.mark.parametrize("given_by", ["flag", "environment"])
def test_half_a_client_hello_is_closed_at_the_handshake_timeout_and_counted(
    serve_process: ProcessServers, tls: tuple[str, str, ssl.SSLContext], given_by: str
) -> None:
    cert, key, client_context = tls
    timeout = ["--tls-handshake-timeout", str(HANDSHAKE_DEADLINE)] if given_by == "flag" else []
    env = {"YIELDIO_TLS_HANDSHAKE_TIMEOUT": str(HANDSHAKE_DEADLINE)} if given_by == "environment" else {}
    args = ["--listen", "tls://127.0.0.1:0", "--tls-cert", cert, "--tls-key", key, *timeout]
    server = serve_process.launch(serve_command(*args, "--metrics", "127.0.0.1:0"), env=env)
    (label,) = server.wait_listeners(1)
    metrics = int(server.wait_log(METRICS).group(1))
    hello = client_hello()
    with connect(address_of(label)) as stalled:
        port = stalled.getsockname()[1]
        stalled.sendall(hello[: len(hello) // 2])  # half the record, then silence
        # meanwhile a whole handshake is served: the stalled one holds up nothing
        with client_context.wrap_socket(connect(address_of(label)), server_hostname="127.0.0.1") as other:
            roundtrip(other, b"meanwhile", b"GOT:meanwhile")
        held = closed_by_server_within(stalled, HANDSHAKE_TIMEOUT - 2)
    assert held >= 0.5 * HANDSHAKE_DEADLINE, f"closed after {held:.2f}s, before the deadline"
    server.wait_log(b"connection 127.0.0.1:%d: TLS handshake failed" % port)
    (warning,) = warnings_about(server, port)
    assert warning.endswith(
        f" WARNING connection 127.0.0.1:{port}: TLS handshake failed: "
        f"TLS handshake not done after {HANDSHAKE_DEADLINE}s"
    ), warning
    samples = scrape(metrics)
    assert samples[("yieldio_tls_handshake_failures_total", label)] == 1
    assert samples[("yieldio_connections_accepted_total", label)] == 2
    assert samples[("yieldio_connections_open", label)] == 0
    server.assert_healthy()


def test_only_get_and_head_of_metrics_are_answered(serve_process: ProcessServers) -> None:
    server, _, metrics = start_with_metrics(serve_process, "--listen", "tcp://127.0.0.1:0", listeners=1)
    status, get_headers, body = request(metrics)
    assert status == 200 and b"yieldio_tasks_alive " in body
    status, head_headers, head_body = request(metrics, "HEAD")
    assert (status, head_body) == (200, b"")
    assert head_headers["Content-Length"] == get_headers["Content-Length"] == str(len(body))
    assert head_headers["Content-Type"] == get_headers["Content-Type"]
    assert request(metrics, path="/metrics?name[]=yieldio_tasks_alive")[0] == 200
    status, _, body = request(metrics, path="/")
    assert (status, body) == (404, b"try /metrics\n")
    status, headers, _ = request(metrics, "POST")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")
    server.assert_healthy()


def test_a_silent_scraper_holds_up_no_other(serve_process: ProcessServers) -> None:
    server, _, metrics = start_with_metrics(serve_process, "--listen", "tcp://127.0.0.1:0", listeners=1)
    with connect(("127.0.0.1", metrics)) as silent, connect(("127.0.0.1", metrics)) as halfway:
        halfway.sendall(b"GET /metr")
        for _ in range(3):  # well within the 5 s the silent ones are given
            assert ("yieldio_tasks_alive", None) in scrape(metrics, timeout=2.0)
        silent.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")  # still listened to, late as it is
        silent.settimeout(10)
        assert silent.recv(100).startswith(b"HTTP/1.1 200 OK\r\n")
    server.assert_healthy()


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:70000", "127.0.0.1", "[::1:9090"])
def test_a_bad_metrics_address_is_one_line_and_exit_2(serve_process: ProcessServers, address: str) -> None:
    server = serve_process.launch(serve_command("--metrics", address))
    assert server.proc.wait(10) == 2
    lines = server.text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yieldio serve: error: argument --metrics: "), lines
    assert address in lines[0]


def test_a_busy_metrics_port_is_one_line_and_exit_1(serve_process: ProcessServers) -> None:
    with refused_port() as port:  # bound by the test: the server cannot have it
        server = serve_process.launch(serve_command("--metrics", f"127.0.0.1:{port}"))
        assert server.proc.wait(10) == 1
    assert server.text().splitlines() == [
        f"yieldio: metrics: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_metrics_without_prometheus_client_is_one_line_and_exit_1(
    serve_process: ProcessServers, tmp_path: Path
) -> None:
    blocked = tmp_path / "prometheus_client"
    blocked.mkdir()
    (blocked / "__init__.py").write_text("raise ImportError('not installed, in this test')\n")
    server = serve_process.launch(serve_command("--metrics", "127.0.0.1:0"), env={"PYTHONPATH": f"{tmp_path}:{SRC}"})
    assert server.proc.wait(10) == 1
    assert server.text().splitlines() == ["yieldio: --metrics needs prometheus_client: pip install 'yieldio[metrics]'"]
