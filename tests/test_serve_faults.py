"""Faults injected on purpose (``--delay``, ``--reset-after``, ``--close-after``, ``--throttle``,
``--udp-drop`` with ``--seed``), each measured from the client's side of a real ``yieldio serve``,
each counted in the metrics (``yieldio_faults_injected_total{fault=...}``), each settable by its variable.

With no fault asked for, the echo runs exactly its ordinary loop (the compiled or the pure one): the
loop with faults is another generator, picked per connection only when a fault is on.
"""

from __future__ import annotations

import random
import re
import socket
import subprocess
import time
import types
from urllib.request import urlopen

import pytest
from prometheus_client.parser import text_string_to_metric_families

import yieldio
from yieldio.compiled import echo_step
from yieldio.servers.echo import make_echo_handler
from yieldio.servers.faults import Faults, Injector

from .harness import ProcessServers, ServerProcess, connect, recv_exactly, serve_command, serve_refusal

METRICS = re.compile(rb"metrics on http://127\.0\.0\.1:(\d+)/metrics")
SLACK = 0.5  # seconds a busy 2-core machine may add to a reply


def start(
    serve_process: ProcessServers, *args: str, env: dict[str, str] | None = None
) -> tuple[ServerProcess, dict[str, tuple[str, int]], int]:
    """``yieldio serve ARGS --metrics``: the server, its listeners' addresses by kind, the metrics port."""
    server = serve_process.launch(serve_command(*args, "--metrics", "127.0.0.1:0"), env=env)
    kinds = {}
    for label in server.wait_listeners(args.count("--listen") or 1):
        kind = label.partition("://")[0] if "://" in label else "tcp"
        host, _, port = label.rpartition("//")[2].rpartition(":")
        kinds[kind] = (host, int(port))
    return server, kinds, int(server.wait_log(METRICS).group(1))


def faults_counted(port: int) -> dict[str, float]:
    """yieldio_faults_injected_total by fault, summed over the listeners."""
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    counted: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "yieldio_faults_injected_total":
                counted[sample.labels["fault"]] = counted.get(sample.labels["fault"], 0) + sample.value
    return counted


def round_trip(client: socket.socket, text: bytes, prefix: bytes = b"GOT:") -> float:
    started = time.monotonic()
    client.sendall(text)
    assert recv_exactly(client, len(prefix) + len(text)) == prefix + text
    return time.monotonic() - started


@pytest.mark.parametrize("given_by", ["flag", "environment"])
def test_delay_with_jitter_is_what_the_seed_draws(serve_process: ProcessServers, given_by: str) -> None:
    args = ("--delay", "150:100", "--seed", "11") if given_by == "flag" else ()
    env = {"YIELDIO_DELAY": "150:100", "YIELDIO_SEED": "11"} if given_by == "environment" else None
    server, listeners, metrics = start(serve_process, *args, env=env)
    drawn = random.Random(11)
    expected = [0.150 + drawn.uniform(-0.100, 0.100) for _ in range(8)]
    with connect(listeners["tcp"]) as client:
        waited = [round_trip(client, b"ping %d\n" % i) for i in range(8)]
    for took, wanted in zip(waited, expected, strict=True):
        assert wanted <= took < wanted + SLACK, (waited, expected)
    assert max(waited) - min(waited) > 0.02, waited  # the jitter is there
    assert faults_counted(metrics) == {"delay": 8}
    server.assert_healthy()


def test_delay_of_udp_replies_holds_up_no_other_datagram(serve_process: ProcessServers) -> None:
    server, listeners, metrics = start(serve_process, "--listen", "udp://127.0.0.1:0", "--delay", "300")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.connect(listeners["udp"])
        started = time.monotonic()
        for i in range(5):
            client.send(b"d%d" % i)
        replies = {client.recv(100) for _ in range(5)}
        took = time.monotonic() - started
    assert replies == {b"GOT:d%d" % i for i in range(5)}
    assert 0.3 <= took < 0.3 + SLACK, took  # side by side, not 5 x 0.3 s
    assert faults_counted(metrics) == {"delay": 5}
    server.assert_healthy()


def test_reset_after_answers_up_to_the_limit_then_sends_rst(serve_process: ProcessServers) -> None:
    server, listeners, metrics = start(serve_process, "--reset-after", "1000", "--prefix", "")
    with connect(listeners["tcp"]) as client:
        client.sendall(b"a" * 1500)
        received = b""
        with pytest.raises(ConnectionResetError):
            while chunk := client.recv(65536):
                received += chunk
        assert received == b"a" * 1000
    # exactly the limit, nothing left unread: a plain close would send a FIN, this is a reset still
    with connect(listeners["tcp"]) as exact:
        exact.sendall(b"b" * 1000)
        assert recv_exactly(exact, 1000) == b"b" * 1000
        with pytest.raises(ConnectionResetError):
            exact.recv(100)
    # and a client that sends less is served as usual
    with connect(listeners["tcp"]) as polite:
        assert round_trip(polite, b"short", b"") < SLACK
    assert faults_counted(metrics) == {"reset": 2}
    server.assert_healthy()


def test_close_after_answers_everything_then_sends_fin(serve_process: ProcessServers) -> None:
    server, listeners, metrics = start(serve_process, "--close-after", "1000", "--framing", "line")
    with connect(listeners["tcp"]) as client:
        client.sendall(b"x" * 600 + b"\n" + b"y" * 900)  # a line, then more than the limit without a newline
        received = b""
        while chunk := client.recv(65536):  # EOF, not a reset
            received += chunk
    assert received == b"GOT:" + b"x" * 600 + b"\n" + b"GOT:" + b"y" * 399
    assert faults_counted(metrics) == {"close": 1}
    server.assert_healthy()


def test_reset_and_close_at_zero_bytes_end_the_connection_at_once(serve_process: ProcessServers) -> None:
    _, listeners, _ = start(serve_process, "--reset-after", "0")
    with connect(listeners["tcp"]) as client:
        client.sendall(b"x")  # the first byte is awaited (a probe is no news), then the reset
        with pytest.raises(ConnectionResetError):
            client.recv(100)


def test_throttle_paces_the_replies(serve_process: ProcessServers) -> None:
    server, listeners, metrics = start(serve_process, "--throttle", "20000", "--prefix", "")
    payload = b"z" * 40_000
    with connect(listeners["tcp"]) as client:
        started = time.monotonic()
        client.sendall(payload)
        assert recv_exactly(client, len(payload)) == payload
        took = time.monotonic() - started
    # 40,000 bytes at 20,000 a second: 2 s, but for the first piece that goes at once
    assert 1.8 <= took < 2.0 + SLACK, took
    assert faults_counted(metrics)["throttle"] >= 1
    server.assert_healthy()


@pytest.mark.parametrize("given_by", ["flag", "environment"])
def test_udp_drop_drops_exactly_what_the_seed_draws(serve_process: ProcessServers, given_by: str) -> None:
    seed, fraction = 42, 0.3
    args = ["--listen", "udp://127.0.0.1:0"]
    if given_by == "flag":
        args += ["--udp-drop", str(fraction), "--seed", str(seed)]
    env = {"YIELDIO_UDP_DROP": str(fraction), "YIELDIO_SEED": str(seed)} if given_by == "environment" else None
    server, listeners, metrics = start(serve_process, *args, env=env)
    drawn = random.Random(seed)
    dropped = [drawn.random() < fraction for _ in range(60)]
    last = max(i for i, gone in enumerate(dropped) if not gone)  # the run ends on an answered datagram
    dropped = dropped[: last + 1]
    # nc -u, as a user would try it: its first datagram's fate is the first draw's
    first = subprocess.run(
        ["nc", "-u", "-w1", *map(str, listeners["udp"])], input=b"0\n", capture_output=True, timeout=20, check=False
    )
    assert first.stdout == (b"" if dropped[0] else b"GOT:0\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.connect(listeners["udp"])
        for i in range(1, len(dropped)):
            client.send(b"%d\n" % i)
            if not dropped[i]:  # the next reply is this one's: a dropped one's would have come first
                assert client.recv(100) == b"GOT:%d\n" % i
    assert faults_counted(metrics) == {"udp_drop": sum(dropped)}
    assert 0 < sum(dropped) < len(dropped)
    server.assert_healthy()


def test_with_no_fault_the_echo_is_the_ordinary_loop() -> None:
    a, b = socket.socketpair()
    with a, b:
        client = yieldio.Socket(a)
        ordinary = "_echo_plain" if echo_step is None else "_echo_compiled"
        made = [
            (make_echo_handler(b"GOT:"), ordinary),
            (make_echo_handler(b"GOT:", faults=Injector(Faults())), ordinary),  # faults, but none on
            (make_echo_handler(b"GOT:", faults=Injector(Faults(udp_drop=0.5))), ordinary),  # none for streams
            (make_echo_handler(b"GOT:", faults=Injector(Faults(delay=0.1))), "_echo_with_faults"),
        ]
        for handler, loop in made:
            generator = handler(client, None)
            assert isinstance(generator, types.GeneratorType)
            assert generator.gi_code.co_name == loop
            generator.close()


@pytest.mark.parametrize(
    "flag, variable, value, words",
    [
        ("--delay", "YIELDIO_DELAY", "-5", ["at least 0"]),
        ("--delay", "YIELDIO_DELAY", "100:150", ["between 0 and 100"]),
        ("--delay", "YIELDIO_DELAY", "soon", ["must be a number"]),
        ("--reset-after", "YIELDIO_RESET_AFTER", "-1", ["at least 0"]),
        ("--close-after", "YIELDIO_CLOSE_AFTER", "lots", ["must be a number"]),
        ("--throttle", "YIELDIO_THROTTLE", "0", ["at least 1"]),
        ("--udp-drop", "YIELDIO_UDP_DROP", "1.5", ["between 0 and 1"]),
        ("--udp-drop", "YIELDIO_UDP_DROP", "-0.1", ["between 0 and 1"]),
        ("--seed", "YIELDIO_SEED", "-3", ["at least 0"]),
    ],
)
def test_a_bad_value_is_one_line_naming_flag_and_variable(
    flag: str, variable: str, value: str, words: list[str]
) -> None:
    for args, env in (([f"{flag}={value}"], {}), ([], {variable: value})):
        line = serve_refusal(*args, env=env)
        assert all(word in line for word in [flag, variable, *words]), line
