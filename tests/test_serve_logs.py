"""``yieldio serve``'s log as a cluster reads it: probes say nothing at INFO, and JSON lines on request.

- A probe (a Kubernetes ``tcpSocket`` probe, ``nc -z``) connects and closes without a byte: its opening
  and closing are logged at DEBUG only, on a plain, a TLS and a PROXY protocol listener alike (and on
  those two it is not a failed handshake or a rejected header either). A client that sends something is
  logged at INFO as before.
- ``--log-format json`` (or ``YIELDIO_LOG_FORMAT=json``): every line is one JSON object with ``time``,
  ``level`` and ``message``; a connection's lines add ``listener`` and ``client``, its closing line
  ``bytes_in`` and ``bytes_out``, the bytes that went each way.
"""

from __future__ import annotations

import datetime
import json
import re
import socket
import ssl
from urllib.request import urlopen

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from .harness import (
    ProcessServers,
    ServerProcess,
    connect,
    exchange,
    run_client,
    serve_command,
    serve_refusal,
)

METRICS = re.compile(rb"metrics on http://127\.0\.0\.1:(\d+)/metrics")


def probe(address: tuple[str, int]) -> int:
    """Connect and close without a byte, as a TCP probe does; the port it came from."""
    with socket.create_connection(address, timeout=10) as sock:
        return int(sock.getsockname()[1])


def served(server: ServerProcess, address: tuple[str, int], text: bytes = b"real\n") -> int:
    """One client that talks (its reply checked), once the server has logged its closing: the port it came from."""
    with connect(address) as client:
        port = int(client.getsockname()[1])
        assert exchange(client, text) == b"GOT:" + text
    server.wait_log(b"connection closed 127.0.0.1:%d" % port)
    return port


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("tls")
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def test_a_probe_is_logged_at_debug_only(serve_process: ProcessServers) -> None:
    server = serve_process()
    probes = [probe(server.address) for _ in range(3)]
    for _ in range(2):  # nc -z: what a shell's health check runs
        assert run_client(["nc", "-z", "-w", "5", *map(str, server.address)], b"").returncode == 0
    talker = served(server, server.address)
    log = server.text()
    assert re.findall(r"connection from 127\.0\.0\.1:(\d+)", log) == [str(talker)], log
    assert re.findall(r"connection closed 127\.0\.0\.1:(\d+)", log) == [str(talker)], log
    assert all(f":{port}" not in log for port in probes), log

    debug = serve_process("--log-level", "debug")
    quiet = probe(debug.address)
    debug.wait_log(b"DEBUG connection closed 127.0.0.1:%d\n" % quiet)
    assert b"DEBUG connection from 127.0.0.1:%d: closed without a byte" % quiet in debug.output()


def test_a_probe_of_a_tls_or_proxy_listener_is_no_failure(
    serve_process: ProcessServers, certificate: tuple[str, str]
) -> None:
    cert, key = certificate
    for args, counter in (
        (["--listen", "tls://127.0.0.1:0", "--tls-cert", cert, "--tls-key", key], "tls_handshake_failures"),
        (["--listen", "tcp://127.0.0.1:0", "--proxy-protocol"], "proxy_header_rejections"),
    ):
        server = serve_process.launch(serve_command(*args, "--metrics", "127.0.0.1:0"))
        (label,) = server.wait_listeners(1)
        address = ("127.0.0.1", int(label.rpartition(":")[2]))
        metrics = int(server.wait_log(METRICS).group(1))
        ports = [probe(address) for _ in range(3)]
        # a client with something to say is still refused, and that is the one warning
        with connect(address) as rude:
            rude.sendall(b"GET / HTTP/1.0\r\n\r\n")
            server.wait_log(b"connection 127.0.0.1:%d: " % rude.getsockname()[1])
        scraped = _scrape(metrics)
        assert scraped[f"yieldio_{counter}_total"] == 1, scraped
        assert scraped["yieldio_connections_accepted_total"] == 4
        assert all(b":%d" % port not in server.output() for port in ports), server.tail()
        assert server.text().count(" WARNING ") == 1, server.tail()


def _scrape(port: int) -> dict[str, float]:
    """The metrics of the one listener: sample name -> value."""
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("listener", "").startswith(("127.", "tls://"))
    }


@pytest.mark.parametrize("given_by", ["flag", "environment"])
def test_json_lines_carry_the_listener_the_client_and_the_bytes(serve_process: ProcessServers, given_by: str) -> None:
    command = serve_command("--log-format", "json") if given_by == "flag" else serve_command()
    env = {"YIELDIO_LOG_FORMAT": "json"} if given_by == "environment" else {}
    server = serve_process.launch(command, env=env)
    (label,) = server.wait_listeners(1)
    server.port = int(label.rpartition(":")[2])
    port = served(server, server.address, b"hello json\n")
    probe(server.address)
    lines = [json.loads(line) for line in server.text().splitlines()]  # every line is one object
    for line in lines:
        assert {"time", "level", "message"} <= set(line), line
        when = datetime.datetime.fromisoformat(line["time"])  # ISO 8601, in UTC (Z)
        assert when.utcoffset() == datetime.timedelta(0)
        assert line["level"] in ("debug", "info", "warning", "error")
    client = f"127.0.0.1:{port}"
    (opened,) = [line for line in lines if line["message"] == f"connection from {client}"]
    (closed,) = [line for line in lines if line["message"] == f"connection closed {client}"]
    assert opened == opened | {"level": "info", "listener": label, "client": client}
    assert closed == closed | {"level": "info", "listener": label, "client": client}
    assert (closed["bytes_in"], closed["bytes_out"]) == (len(b"hello json\n"), len(b"GOT:hello json\n"))
    assert any(line["message"].startswith(f"listening on {label} ") for line in lines)


def test_a_bad_log_format_is_one_line_naming_the_flag_and_variable() -> None:
    for args, env in ((["--log-format", "xml"], {}), ([], {"YIELDIO_LOG_FORMAT": "xml"})):
        line = serve_refusal(*args, env=env)
        assert "--log-format" in line and "YIELDIO_LOG_FORMAT" in line, line


def test_over_tls_too_the_connection_is_announced_once_it_speaks(
    serve_process: ProcessServers, certificate: tuple[str, str]
) -> None:
    cert, key = certificate
    server = serve_process.launch(serve_command("--listen", "tls://127.0.0.1:0", "--tls-cert", cert, "--tls-key", key))
    (label,) = server.wait_listeners(1)
    context = ssl.create_default_context(cafile=None)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(connect(("127.0.0.1", int(label.rpartition(":")[2]))), server_hostname="x") as tls:
        port = tls.getsockname()[1]
        tls.sendall(b"secret\n")
        assert tls.recv(100) == b"GOT:secret\n"
    server.wait_log(b"connection closed 127.0.0.1:%d" % port)
    assert b"INFO connection from 127.0.0.1:%d\n" % port in server.output()
