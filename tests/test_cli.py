"""End to end: the real ``yieldio serve`` process, driven by nc, socat and Python clients."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from .conftest import ROOT, free_port, python_env, raise_nofile, recv_all, wait_for_port


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "yieldio", *args], env=python_env(), capture_output=True, text=True, timeout=timeout
    )


def test_nc_typed_lines_come_back_as_got_lines(echo_server) -> None:  # type: ignore[no-untyped-def]
    # nc sends each line as it is "typed" (stdin from a pipe), then half-closes at EOF (-N)
    result = subprocess.run(
        ["nc", "-N", "-w", "5", "127.0.0.1", str(echo_server.port)],
        input=b"Hello\n",
        capture_output=True,
        timeout=20,
    )
    assert result.stdout == b"GOT:Hello\n"


def test_nc_interactive_lines_one_at_a_time(echo_server) -> None:  # type: ignore[no-untyped-def]
    nc = subprocess.Popen(["nc", "127.0.0.1", str(echo_server.port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert nc.stdin and nc.stdout
        for line in (b"Hello\n", b"second line\n"):
            nc.stdin.write(line)
            nc.stdin.flush()
            assert nc.stdout.readline() == b"GOT:" + line
    finally:
        nc.kill()
        nc.wait()


def test_socat_line_framing(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--framing", "line")
    result = subprocess.run(
        ["socat", "-t", "5", "-", f"TCP:127.0.0.1:{server.port}"],
        input=b"one\ntwo\nthree",
        capture_output=True,
        timeout=20,
    )
    assert result.stdout == b"GOT:one\nGOT:two\nGOT:three"


def test_plain_rfc862_echo_with_empty_prefix(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("--prefix", "")
    with socket.create_connection(server.address, timeout=5) as c:
        c.sendall(b"\x00\xff binary \xfe")
        assert c.recv(100) == b"\x00\xff binary \xfe"


def test_ipv6_server(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(host="::1")
    with socket.create_connection(("::1", server.port), timeout=5) as c:
        c.sendall(b"v6")
        assert c.recv(100) == b"GOT:v6"


def _many_clients(address: tuple[str, int], count: int) -> int:
    clients = []
    try:
        for _ in range(count):
            clients.append(socket.create_connection(address, timeout=20))
        for i, c in enumerate(clients):
            c.sendall(b"client-%05d" % i)
        ok = 0
        for i, c in enumerate(clients):
            expected = b"GOT:client-%05d" % i
            if recv_all(c, len(expected)) == expected:
                ok += 1
        return ok
    finally:
        for c in clients:
            c.close()


def test_200_concurrent_clients(echo_server) -> None:  # type: ignore[no-untyped-def]
    assert _many_clients(echo_server.address, 200) == 200


@pytest.mark.timeout(120)
def test_2000_simultaneous_connections_each_get_their_own_echo(server_factory) -> None:  # type: ignore[no-untyped-def]
    raise_nofile(4500)  # the server inherits this limit, and raises its own too
    server = server_factory("--log-level", "warning")
    assert _many_clients(server.address, 2000) == 2000


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_with_exit_0(echo_server, sig: int) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection(echo_server.address, timeout=5) as c:
        c.sendall(b"ping")
        assert c.recv(100) == b"GOT:ping"
        started = time.monotonic()
        assert echo_server.stop(sig, timeout=10) == 0
        assert time.monotonic() - started < 5
        assert c.recv(100) == b""  # the server closed our connection on its way out
    log = echo_server.rest_of_log()
    assert b"Traceback" not in log
    assert signal.Signals(sig).name.encode() in log


def test_sigterm_echoes_what_was_already_received(echo_server) -> None:  # type: ignore[no-untyped-def]
    import fcntl
    import struct
    import termios

    c = socket.create_connection(echo_server.address, timeout=10)
    payload = os.urandom(32 * 1024 * 1024)  # more than the buffers hold: the server is stuck sending
    c.setblocking(False)
    sent = 0
    try:
        while sent < len(payload):
            sent += c.send(payload[sent : sent + 65536])
    except BlockingIOError:
        pass
    assert sent < len(payload)
    unacked = struct.unpack("i", fcntl.ioctl(c, termios.TIOCOUTQ, b"\0" * 4))[0]  # SIOCOUTQ
    received_by_server = sent - unacked
    c.shutdown(socket.SHUT_WR)
    echo_server.proc.send_signal(signal.SIGTERM)
    c.settimeout(10)
    reply = recv_all(c)
    c.close()
    assert echo_server.proc.wait(10) == 0
    # with the prefixes taken out, the reply is exactly what the server had received, in order
    chunks = reply.split(b"GOT:")
    assert chunks[0] == b""
    data = b"".join(chunks[1:]) if payload.count(b"GOT:") == 0 else None
    assert data is not None, "payload happened to contain the prefix; rerun"
    assert payload.startswith(data)
    assert len(data) >= received_by_server


def test_busy_port_is_one_line_and_nonzero_exit(echo_server) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("serve", "--port", str(echo_server.port))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "already in use" in result.stderr.lower() and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["serve", "--bogus"], "unrecognized arguments"),
        (["serve", "--port", "70000"], "between 0 and 65535"),
        (["serve", "--port", "http"], "must be a number"),
        (["serve", "--framing", "words"], "invalid choice"),
        (["serve", "--host", "no.such.host.invalid", "--port", "0"], "cannot listen"),
        (["serve", "--host", "999.1.1.1", "--port", "0"], "cannot listen"),
        ([], "required"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_flag() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for flag in ("--host", "--port", "--prefix", "--framing", "--max-line", "--log-level", "--max-clients", "--idle-timeout"):
        assert flag in result.stdout


def test_installed_console_script_runs() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "yieldio")  # installed by pip beside this python
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=20)
    assert re.fullmatch(r"yieldio \d+\.\d+\.\d+\n", result.stdout), result


def test_logs_connections_opening_and_closing(echo_server) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection(echo_server.address, timeout=5) as c:
        port = c.getsockname()[1]
        c.sendall(b"x")
        c.recv(10)
    echo_server.read_log_until(f"connection closed 127.0.0.1:{port}".encode())
    assert f"connection from 127.0.0.1:{port}".encode() in echo_server.log


TUTORIAL_RUNNER = """
import runpy, sys
ns = runpy.run_path(sys.argv[1])          # the tutorial's module, its __main__ block not run
ns['tasks'].append(ns['tcp_server'](('127.0.0.1', int(sys.argv[2])), ns['echo_handler']))
ns['run']()
"""


def test_the_tutorials_code_unchanged_serves_nc() -> None:
    source = (ROOT / "examples" / "tutorial_server.py").read_text()
    assert "from yieldio import tasks, run" in source
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", TUTORIAL_RUNNER, str(ROOT / "examples" / "tutorial_server.py"), str(port)],
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port("127.0.0.1", port)
        outputs = [
            subprocess.run(["nc", "-N", "-w", "5", "127.0.0.1", str(port)], input=text, capture_output=True, timeout=20).stdout
            for text in (b"Hello\n", b"second client\n")
        ]
        assert outputs == [b"GOT:Hello\n", b"GOT:second client\n"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        out, err = proc.communicate(timeout=10)
        assert b"Connection from" in out and b"Connection closed" in out
        assert b"Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
