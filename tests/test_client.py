"""``yieldio connect`` end to end: the real client process against the real server, in pipes and on a terminal."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect  # type: ignore[import-untyped]
import pytest

from .harness import MiB, ProcessServers, ServerProcess, python_env, read_until, refused_port, yieldio_command


def run_connect(*args: str, timeout: float = 30, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    command = yieldio_command("connect", *args)
    return subprocess.run(command, check=False, env=python_env(), capture_output=True, timeout=timeout, **kwargs)


class Processes:
    """Starts client processes, and kills whatever is still running at teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes] | pexpect.spawn] = []

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        options: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        proc = subprocess.Popen(yieldio_command("connect", *args), env=python_env(), **{**options, **kwargs})
        self.started.append(proc)
        return proc

    def terminal(self, *args: str) -> pexpect.spawn:
        command = yieldio_command("connect", *args)
        child = pexpect.spawn(command[0], command[1:], env=python_env(), timeout=10)
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        for proc in self.started:
            if isinstance(proc, pexpect.spawn):
                if proc.isalive():
                    proc.close(force=True)
            elif proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def processes() -> Iterator[Processes]:
    started = Processes()
    yield started
    started.stop_all()


def finish(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> tuple[int, bytes, bytes]:
    """Wait for ``proc`` to exit; its status and the rest of its (short) output.

    Not communicate(): that closes the client's stdin, an end of input, which some tests must not cause.
    """
    assert proc.stdout and proc.stderr
    status = proc.wait(timeout)
    return status, proc.stdout.read(), proc.stderr.read()


def terminal_exit(child: pexpect.spawn) -> tuple[int | None, str]:
    """Wait for a terminal session to end; its exit status and the output since the last match."""
    child.expect(pexpect.EOF, timeout=10)
    child.wait()
    return child.exitstatus, child.before.decode(errors="replace")


# -- (a) in a pipe -------------------------------------------------------------------


def test_piped_line_is_answered_and_the_client_exits_0(echo_server: ServerProcess) -> None:
    result = run_connect("127.0.0.1", str(echo_server.port), input=b"Hello\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"GOT:Hello\n", b"")


def test_piped_lines_each_answered(serve_process: ProcessServers) -> None:
    server = serve_process("--framing", "line")
    result = run_connect("127.0.0.1", str(server.port), input=b"one\ntwo\nthree\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"GOT:one\nGOT:two\nGOT:three\n", b"")


def test_a_mebibyte_of_lines_arrives_whole_and_in_order(serve_process: ProcessServers) -> None:
    server = serve_process("--framing", "line", "--log-level", "warning")
    lines: list[bytes] = []
    size = 0
    while size < MiB:
        lines.append(b"line %07d of the big input\n" % len(lines))
        size += len(lines[-1])
    result = run_connect("127.0.0.1", str(server.port), input=b"".join(lines))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"".join(b"GOT:" + line for line in lines)


def test_binary_megabytes_pass_through_a_plain_echo_unchanged(serve_process: ProcessServers) -> None:
    server = serve_process("--prefix", "", "--log-level", "warning")
    payload = os.urandom(4 * MiB)
    result = run_connect("127.0.0.1", str(server.port), input=payload)
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload


def test_replies_are_printed_while_input_is_still_open(echo_server: ServerProcess, processes: Processes) -> None:
    client = processes.popen("127.0.0.1", str(echo_server.port))
    assert client.stdin and client.stdout
    for line in (b"Hello\n", b"second line\n"):
        client.stdin.write(line)
        client.stdin.flush()
        assert read_until(client.stdout.fileno(), b"\n") == b"GOT:" + line
    client.stdin.close()
    assert finish(client) == (0, b"", b"")


def test_stdin_from_dev_null_sends_nothing_and_exits_0(echo_server: ServerProcess) -> None:
    result = run_connect("127.0.0.1", str(echo_server.port), stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_stdin_from_a_regular_file_which_epoll_cannot_watch(echo_server: ServerProcess, tmp_path: Path) -> None:
    text = tmp_path / "input.txt"
    text.write_bytes(b"Hello\n")
    with text.open("rb") as stdin:
        result = run_connect("127.0.0.1", str(echo_server.port), stdin=stdin)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"GOT:Hello\n", b"")


@pytest.mark.parametrize("ending", ["end of input", "SIGINT", "SIGTERM"])
def test_stdin_is_made_blocking_again_on_exit(echo_server: ServerProcess, processes: Processes, ending: str) -> None:
    # O_NONBLOCK belongs to the open pipe, which this process shares with the client: it sees the flag too
    read_end, write_end = os.pipe()
    try:
        client = processes.popen("127.0.0.1", str(echo_server.port), stdin=read_end)
        assert client.stdout
        os.write(write_end, b"ping\n")
        assert read_until(client.stdout.fileno(), b"\n") == b"GOT:ping\n"
        assert fcntl.fcntl(read_end, fcntl.F_GETFL) & os.O_NONBLOCK  # set while the client runs
        if ending == "end of input":
            os.close(write_end)
            write_end = -1
            expected = 0
        else:
            sig = signal.Signals[ending]
            client.send_signal(sig)
            expected = 128 + sig
        status, _, err = finish(client)
        assert (status, err) == (expected, b"")
        assert not fcntl.fcntl(read_end, fcntl.F_GETFL) & os.O_NONBLOCK
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


# -- (b) on a terminal ---------------------------------------------------------------


def test_terminal_lines_are_answered_and_ctrl_d_exits_0(echo_server: ServerProcess, processes: Processes) -> None:
    child = processes.terminal("127.0.0.1", str(echo_server.port))
    child.sendline("Hello")
    child.expect_exact("GOT:Hello", timeout=10)
    child.sendline("another line")
    child.expect_exact("GOT:another line", timeout=10)
    child.sendeof()
    status, rest = terminal_exit(child)
    assert status == 0
    assert "Traceback" not in rest and "yieldio:" not in rest


def test_terminal_ctrl_d_after_a_partial_line_sends_it_and_a_second_ends(
    echo_server: ServerProcess, processes: Processes
) -> None:
    child = processes.terminal("127.0.0.1", str(echo_server.port))
    child.send("no newline")
    child.sendeof()  # the terminal hands over the partial line: not the end of input yet
    child.expect_exact("GOT:no newline", timeout=10)
    assert child.isalive()
    child.sendeof()
    assert terminal_exit(child)[0] == 0


def test_terminal_ctrl_c_exits_130_without_a_traceback(echo_server: ServerProcess, processes: Processes) -> None:
    child = processes.terminal("127.0.0.1", str(echo_server.port))
    child.sendline("Hello")
    child.expect_exact("GOT:Hello", timeout=10)
    child.sendintr()
    status, rest = terminal_exit(child)
    assert status == 130
    assert child.signalstatus is None
    assert "Traceback" not in rest and "Error" not in rest and "yieldio:" not in rest


def test_terminal_server_closing_first_ends_with_a_note_and_0(echo_server: ServerProcess, processes: Processes) -> None:
    child = processes.terminal("127.0.0.1", str(echo_server.port))
    child.sendline("Hello")
    child.expect_exact("GOT:Hello", timeout=10)
    assert echo_server.stop(signal.SIGTERM) == 0
    child.expect_exact("yieldio: connection closed by server", timeout=10)
    status, rest = terminal_exit(child)
    assert status == 0
    assert "Traceback" not in rest


# -- (c) errors ----------------------------------------------------------------------


def test_refused_connection_is_one_line_and_exit_1() -> None:
    with refused_port() as port:
        result = run_connect("127.0.0.1", str(port), stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr == f"yieldio: cannot connect to 127.0.0.1:{port}: Connection refused\n".encode()


def test_unknown_host_is_one_line_and_exit_1() -> None:
    result = run_connect("no.such.host.invalid", "7", stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.startswith(b"yieldio: cannot connect to no.such.host.invalid:7: ")
    assert result.stderr.count(b"\n") == 1 and b"Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["127.0.0.1", "http"], b"must be a number"),
        (["127.0.0.1", "0"], b"between 1 and 65535"),
        (["127.0.0.1"], b"required"),
        (["127.0.0.1", "7", "--bogus"], b"unrecognized arguments"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], message: bytes) -> None:
    result = run_connect(*args, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count(b"\n") == 1 and b"Traceback" not in result.stderr


# -- (d) the server ends the connection -----------------------------------------------


def test_server_stopped_while_client_is_connected_exits_0_with_a_note(
    echo_server: ServerProcess, processes: Processes
) -> None:
    client = processes.popen("127.0.0.1", str(echo_server.port))
    assert client.stdin and client.stdout
    client.stdin.write(b"Hello\n")
    client.stdin.flush()
    assert read_until(client.stdout.fileno(), b"\n") == b"GOT:Hello\n"
    assert echo_server.stop(signal.SIGTERM) == 0
    assert finish(client) == (0, b"", b"yieldio: connection closed by server\n")  # stdin still open


def _one_shot_server(reset: bool) -> tuple[int, threading.Thread, socket.socket]:
    """A listener that accepts one client and says goodbye and closes, or waits for a line and resets."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)

    def serve_once() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # the test has ended and closed the listener
        with conn:
            if reset:  # once the client is surely past connect(), whose wait would report the reset instead
                conn.recv(100)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                conn.sendall(b"bye\n")

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread, listener


def test_listener_that_closes_at_once_ends_the_session_with_a_note(processes: Processes) -> None:
    port, thread, listener = _one_shot_server(reset=False)
    with listener:
        client = processes.popen("127.0.0.1", str(port))
        assert finish(client) == (0, b"bye\n", b"yieldio: connection closed by server\n")
        thread.join(10)


def test_reset_connection_is_one_line_and_exit_1(processes: Processes) -> None:
    port, thread, listener = _one_shot_server(reset=True)
    with listener:
        client = processes.popen("127.0.0.1", str(port))
        assert client.stdin
        client.stdin.write(b"Hello\n")
        client.stdin.flush()
        status, _, err = finish(client)  # its stdin still open
        thread.join(10)
    assert status == 1
    assert err == f"yieldio: connection to 127.0.0.1:{port} lost: Connection reset by peer\n".encode()
