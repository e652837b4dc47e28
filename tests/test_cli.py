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

from .harness import (
    ROOT,
    SERVE_FLAGS,
    ProcessServers,
    ServerProcess,
    connect,
    python_env,
    raise_nofile,
    read_until,
    recv_all,
    recv_exactly,
    send_until_stalled,
    unacked,
    yieldio_command,
)


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    command = yieldio_command(*args)
    return subprocess.run(command, check=False, env=python_env(), capture_output=True, text=True, timeout=timeout)


def nc(port: int, text: bytes) -> bytes:
    """What ``nc`` prints when ``text`` is typed into it and then the input ends (-N: it half-closes)."""
    command = ["nc", "-N", "-w", "5", "127.0.0.1", str(port)]
    return subprocess.run(command, check=False, input=text, capture_output=True, timeout=20).stdout


def test_nc_typed_lines_come_back_as_got_lines(echo_server: ServerProcess) -> None:
    assert nc(echo_server.port, b"Hello\n") == b"GOT:Hello\n"


def test_nc_interactive_lines_one_at_a_time(echo_server: ServerProcess) -> None:
    client = subprocess.Popen(["nc", "127.0.0.1", str(echo_server.port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert client.stdin and client.stdout
        for line in (b"Hello\n", b"second line\n"):
            client.stdin.write(line)
            client.stdin.flush()
            assert read_until(client.stdout.fileno(), b"\n") == b"GOT:" + line
    finally:
        client.kill()
        client.wait(10)


def test_socat_line_framing(serve_process: ProcessServers) -> None:
    server = serve_process("--framing", "line")
    result = subprocess.run(
        ["socat", "-t", "5", "-", f"TCP:127.0.0.1:{server.port}"],
        check=False,
        input=b"one\ntwo\nthree",
        capture_output=True,
        timeout=20,
    )
    assert result.stdout == b"GOT:one\nGOT:two\nGOT:three"


def test_plain_rfc862_echo_with_empty_prefix(serve_process: ProcessServers) -> None:
    server = serve_process("--prefix", "")
    with connect(server.address) as c:
        payload = b"\x00\xff binary \xfe"
        c.sendall(payload)
        assert recv_exactly(c, len(payload)) == payload


def test_ipv6_server(serve_process: ProcessServers) -> None:
    server = serve_process(host="::1")
    assert re.search(rb"listening on \[::1\]:%d " % server.port, server.output())
    with connect(("::1", server.port)) as c:
        c.sendall(b"v6")
        assert recv_exactly(c, 6) == b"GOT:v6"


def _many_clients(address: tuple[str, int], count: int) -> int:
    clients: list[socket.socket] = []
    try:
        clients.extend(socket.create_connection(address, timeout=20) for _ in range(count))
        for i, c in enumerate(clients):
            c.sendall(b"client-%05d" % i)
        ok = 0
        for i, c in enumerate(clients):
            expected = b"GOT:client-%05d" % i
            if recv_exactly(c, len(expected)) == expected:
                ok += 1
        return ok
    finally:
        for c in clients:
            c.close()


def test_200_concurrent_clients(echo_server: ServerProcess) -> None:
    assert _many_clients(echo_server.address, 200) == 200


@pytest.mark.timeout(120)
def test_2000_simultaneous_connections_each_get_their_own_echo(serve_process: ProcessServers) -> None:
    raise_nofile(4500)  # the server inherits this limit, and raises its own too
    server = serve_process("--log-level", "warning")
    assert _many_clients(server.address, 2000) == 2000


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_with_exit_0(echo_server: ServerProcess, sig: int) -> None:
    with connect(echo_server.address) as c:
        c.sendall(b"ping")
        assert recv_exactly(c, 8) == b"GOT:ping"
        started = time.monotonic()
        assert echo_server.stop(sig, timeout=10) == 0
        assert time.monotonic() - started < 5
        assert c.recv(100) == b""  # the server closed our connection on its way out
    log = echo_server.output()
    assert b"Traceback" not in log
    assert signal.Signals(sig).name.encode() in log


def test_sigterm_echoes_what_was_already_received(echo_server: ServerProcess) -> None:
    # no "G" in the payload, so every "GOT:" in the reply is a prefix the server put there
    payload = os.urandom(32 * 1024 * 1024).replace(b"G", b"g")  # more than the buffers hold
    with connect(echo_server.address) as c:
        sent = send_until_stalled(c, payload)  # the server is stuck sending to us
        assert sent < len(payload)
        received_by_server = sent - unacked(c)
        c.shutdown(socket.SHUT_WR)
        echo_server.proc.send_signal(signal.SIGTERM)
        reply = recv_all(c)
    assert echo_server.proc.wait(10) == 0
    # with the prefixes taken out, the reply is exactly what the server had received, in order
    chunks = reply.split(b"GOT:")
    assert chunks[0] == b""
    data = b"".join(chunks[1:])
    assert payload.startswith(data)
    assert len(data) >= received_by_server


def test_busy_port_is_one_line_and_nonzero_exit(echo_server: ServerProcess) -> None:
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


@pytest.mark.parametrize(
    "flag, variable",
    [("--proxy-timeout", "YIELDIO_PROXY_TIMEOUT"), ("--tls-handshake-timeout", "YIELDIO_TLS_HANDSHAKE_TIMEOUT")],
)
@pytest.mark.parametrize(
    "value, message",
    [("soon", "must be a number, not 'soon'"), ("0", "must be at least 0.001, not 0"), ("-5", "at least 0.001")],
)
def test_a_bad_timeout_from_a_flag_or_the_environment_is_one_line_and_exit_2(
    flag: str, variable: str, value: str, message: str
) -> None:
    by_flag = run_cli("serve", "--port", "0", f"{flag}={value}")
    by_variable = subprocess.run(
        yieldio_command("serve", "--port", "0"),
        check=False,
        env=python_env() | {variable: value},
        capture_output=True,
        text=True,
        timeout=20,
    )
    for done, named in ((by_flag, f"argument {flag}: "), (by_variable, f"{variable}={value!r}: ")):
        assert done.returncode == 2, done
        assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
        assert named in done.stderr and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_help_lists_every_flag() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    assert [flag for flag in SERVE_FLAGS if not re.search(rf"^\s+{flag}\b", result.stdout, re.MULTILINE)] == []
    result = run_cli("connect", "--help")
    assert result.returncode == 0
    for word in ("HOST", "PORT", "--log-level"):
        assert re.search(rf"^\s+{word}\b", result.stdout, re.MULTILINE), word


def test_installed_console_script_runs() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "yieldio")  # installed by pip beside this python
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=20, check=False)
    assert re.fullmatch(r"yieldio \d+\.\d+\.\d+\n", result.stdout), result


def test_logs_connections_opening_and_closing(echo_server: ServerProcess) -> None:
    with connect(echo_server.address) as c:
        port = c.getsockname()[1]
        c.sendall(b"x")
        assert recv_exactly(c, 5) == b"GOT:x"
    echo_server.wait_log(b"connection closed 127.0.0.1:%d" % port)
    assert b"connection from 127.0.0.1:%d" % port in echo_server.output()


# The tutorial's server binds ('', 25000): every interface, on a port a test must not take (anything may
# hold it, a developer's own server for one). This runs the tutorial's file unchanged, as __main__, and
# changes one thing around it: asked for port 25000, bind() takes a free loopback port instead; once that
# socket listens, it says which port, in the words `yieldio serve` uses.
TUTORIAL_ON_A_FREE_PORT = """
import runpy, socket, sys
bind, listen = socket.socket.bind, socket.socket.listen
redirected = []
def bind_elsewhere(self, address):
    if address == ('', 25000):
        redirected.append(self)
        address = ('127.0.0.1', 0)
    bind(self, address)
def listen_and_say_where(self, *backlog):
    listen(self, *backlog)
    if self in redirected:
        print('listening on %s:%d (the tutorial asked for port 25000)' % self.getsockname(), file=sys.stderr)
socket.socket.bind = bind_elsewhere
socket.socket.listen = listen_and_say_where
runpy.run_path(sys.argv[1], run_name='__main__')
"""


def test_the_tutorials_code_unchanged_serves_nc(serve_process: ProcessServers) -> None:
    tutorial = ROOT / "examples" / "tutorial_server.py"
    source = tutorial.read_text()
    assert "from yieldio import tasks, run" in source
    assert "tasks.append(tcp_server(('', 25000), echo_handler))" in source
    server = serve_process.start([sys.executable, "-c", TUTORIAL_ON_A_FREE_PORT, str(tutorial)])
    assert nc(server.port, b"Hello\n") == b"GOT:Hello\n"
    assert nc(server.port, b"second client\n") == b"GOT:second client\n"
    server.wait_log(b"Connection closed", count=2)
    assert server.stop(signal.SIGINT) == 0
    output = server.output()
    assert output.count(b"Connection from") == 2
    assert b"Traceback" not in output
