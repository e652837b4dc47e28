"""Unix domain sockets: unix_listen / unix_server / open_unix_connection, with nc -U and socat as clients.

Each test runs the server as a task and its clients in the same kernel; a command-line
client runs on a thread through run_in_thread (subprocess.run with a timeout kills it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import yieldio
from yieldio import Socket, run_in_thread

from .harness import run_client

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix domain sockets")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract names are Linux's")


def abstract_name() -> str:
    return f"\0yieldio-test-{uuid.uuid4().hex}"


@contextlib.asynccontextmanager
async def serving(
    listener: Socket, handler: Callable[..., Any] = yieldio.echo_handler, **options: Any
) -> AsyncIterator[None]:
    """``serve(listener, handler)`` as a task for the block; then cancel it and close the listener."""
    server = await yieldio.spawn(yieldio.serve(listener, handler, yieldio.ServerOptions(**options)))
    try:
        yield
    finally:
        await server.cancel()
        listener.close()


async def ask(path: Any, payload: bytes) -> bytes:
    """One round trip with open_unix_connection: send, half-close, read everything back."""
    async with yieldio.timeout_after(5):
        sock = await yieldio.open_unix_connection(path)
        with sock:
            await sock.sendall(payload)
            sock.shutdown_write()
            received = b""
            while data := await sock.recv(65536):
                received += data
    return received


def leave_stale_socket_file(path: Path) -> None:
    """What a killed server leaves behind: a socket file nobody listens on."""
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.listen(1)
    dead.close()


def test_nc_and_socat_talk_to_a_unix_server(sock_dir: Path) -> None:
    path = sock_dir / "echo.sock"

    async def main() -> tuple[Any, Any]:
        async with serving(yieldio.unix_listen(path)):
            # nc -N half-closes after its input, as socat does by itself; the server then closes.
            nc = await run_in_thread(run_client, ["nc", "-N", "-U", str(path)], b"Hello\n")
            via_socat = await run_in_thread(run_client, ["socat", "-", f"UNIX-CONNECT:{path}"], b"Hi there\n")
        return nc, via_socat

    nc, via_socat = yieldio.run(main)
    assert (nc.returncode, nc.stdout) == (0, b"GOT:Hello\n"), nc.stderr
    assert (via_socat.returncode, via_socat.stdout) == (0, b"GOT:Hi there\n"), via_socat.stderr


@pytest.mark.parametrize("kind", [str, os.fsencode, Path])
def test_open_unix_connection_takes_str_bytes_and_paths(sock_dir: Path, kind: Callable[[str], Any]) -> None:
    path = kind(str(sock_dir / "echo.sock"))

    async def main() -> list[bytes]:
        async with serving(yieldio.unix_listen(path)):
            return [await ask(path, b"one"), await ask(path, b"two")]

    assert yieldio.run(main) == [b"GOT:one", b"GOT:two"]
    assert not os.path.exists(path)


def test_stale_socket_file_is_replaced(sock_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = sock_dir / "stale.sock"
    leave_stale_socket_file(path)
    assert path.is_socket()

    async def main() -> bytes:
        async with serving(yieldio.unix_listen(path)):
            return await ask(path, b"fresh")

    with caplog.at_level(logging.INFO, logger="yieldio"):
        assert yieldio.run(main) == b"GOT:fresh"
    assert f"unix:{path}: removing a stale socket file" in caplog.text


def test_live_path_is_refused_and_the_first_server_keeps_serving(sock_dir: Path) -> None:
    path = sock_dir / "live.sock"

    async def main() -> tuple[OSError, bytes]:
        async with serving(yieldio.unix_listen(path)):
            with pytest.raises(OSError) as refused:
                yieldio.unix_listen(path)
            return refused.value, await ask(path, b"still here")

    error, reply = yieldio.run(main)
    assert error.errno == errno.EADDRINUSE
    assert str(error) == f"[Errno {errno.EADDRINUSE}] unix:{path}: a server is already listening there"
    assert reply == b"GOT:still here"


def test_a_live_listener_with_a_full_backlog_is_still_live(sock_dir: Path) -> None:
    path = str(sock_dir / "busy.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.bind(path)
        busy.listen(0)
        fillers = fill_backlog(path)
        try:
            with pytest.raises(OSError) as refused:
                yieldio.unix_listen(path)
        finally:
            for filler in fillers:
                filler.close()
    assert refused.value.errno == errno.EADDRINUSE
    assert os.path.exists(path)


def test_a_path_that_is_not_a_socket_is_refused_and_left_alone(sock_dir: Path) -> None:
    regular = sock_dir / "precious.txt"
    regular.write_bytes(b"keep me")
    link = sock_dir / "link.sock"
    link.symlink_to(sock_dir / "nowhere")
    for path in (regular, link, sock_dir):
        with pytest.raises(FileExistsError, match=f"unix:{path}: exists and is not a socket"):
            yieldio.unix_listen(path)
    assert regular.read_bytes() == b"keep me"
    assert link.is_symlink()


def test_the_socket_file_is_removed_at_close_but_not_a_newer_servers(sock_dir: Path) -> None:
    path = sock_dir / "mine.sock"
    first = yieldio.unix_listen(path)
    first.close()
    assert not path.exists()
    first.close()  # twice is harmless

    # A listener whose file was replaced (by hand, here) must not remove the replacement.
    old = yieldio.unix_listen(path)
    path.unlink()
    new = yieldio.unix_listen(path)
    old.close()
    assert path.is_socket()
    new.close()
    assert not path.exists()


def test_a_forked_child_closing_its_copy_removes_nothing(sock_dir: Path) -> None:
    path = sock_dir / "parent.sock"
    listener = yieldio.unix_listen(path)
    try:
        pid = os.fork()
        if pid == 0:  # the child: close the inherited listener and leave at once, whatever happens
            try:
                listener.close()
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert path.is_socket()
    finally:
        listener.close()
    assert not path.exists()


@linux_only
def test_abstract_names_work_with_socat_and_python(sock_dir: Path) -> None:
    name = abstract_name()

    async def main() -> tuple[Any, bytes, OSError]:
        async with serving(yieldio.unix_listen(name)):
            via_socat = await run_in_thread(run_client, ["socat", "-", f"ABSTRACT-CONNECT:{name[1:]}"], b"abstract\n")
            reply = await ask(name.encode(), b"bytes name")
            with pytest.raises(OSError) as refused:
                yieldio.unix_listen(name)
        return via_socat, reply, refused.value

    via_socat, reply, refused = yieldio.run(main)
    assert (via_socat.returncode, via_socat.stdout) == (0, b"GOT:abstract\n"), via_socat.stderr
    assert reply == b"GOT:bytes name"
    assert refused.errno == errno.EADDRINUSE and f"unix:@{name[1:]}" in str(refused)
    assert list(sock_dir.iterdir()) == []
    yieldio.unix_listen(name).close()  # the name was freed with the socket


def test_unix_server_logs_passes_options_and_cleans_up(sock_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = sock_dir / "server.sock"

    async def main() -> tuple[bytes, bytes]:
        server = await yieldio.spawn(
            yieldio.unix_server(path, yieldio.echo_handler, yieldio.ServerOptions(idle_timeout=0.2))
        )
        try:
            await yieldio.sleep(0)  # it binds and logs on its first step
            reply = await ask(path, b"served")
            async with yieldio.timeout_after(5):  # a silent client is closed after idle_timeout
                silent = await yieldio.open_unix_connection(path)
                with silent:
                    closed = await silent.recv(100)
        finally:
            await server.cancel()
        return reply, closed

    with caplog.at_level(logging.INFO, logger="yieldio"):
        reply, closed = yieldio.run(main)
    assert (reply, closed) == (b"GOT:served", b"")
    assert f"listening on unix:{path}" in caplog.text
    assert "idle for 0.2s" in caplog.text
    assert not path.exists()


def fill_backlog(path: str) -> list[socket.socket]:
    """Connect until the listener's backlog is full (the next connect would fail with EAGAIN)."""
    fillers: list[socket.socket] = []
    for _ in range(100):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        if probe.connect_ex(path) == errno.EAGAIN:
            probe.close()
            return fillers
        fillers.append(probe)
    raise AssertionError("the backlog never filled")


def test_open_unix_connection_waits_for_room_in_a_full_backlog(sock_dir: Path) -> None:
    path = str(sock_dir / "full.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(0)
        listener.settimeout(5)
        fillers = fill_backlog(path)

        async def main() -> bytes:
            client = await yieldio.spawn(yieldio.open_unix_connection(path))
            await yieldio.sleep(0)  # it tried, found the backlog full, and waits to try again
            assert not client.done
            accepted = [listener.accept()[0] for _ in fillers]  # room again: it gets in
            sock = await yieldio.timeout_after(5, client.join())
            with sock:
                await sock.sendall(b"in")
                accepted.append(listener.accept()[0])  # ours: last in the queue
                received = accepted[-1].recv(10)
            for conn in accepted:
                conn.close()
            return received

        try:
            assert yieldio.run(main) == b"in"
        finally:
            for filler in fillers:
                filler.close()


def test_open_unix_connection_errors(sock_dir: Path) -> None:
    stale = sock_dir / "stale.sock"
    leave_stale_socket_file(stale)

    async def main() -> None:
        with pytest.raises(FileNotFoundError):
            await yieldio.open_unix_connection(sock_dir / "missing.sock")
        with pytest.raises(ConnectionRefusedError):
            await yieldio.open_unix_connection(stale)

    yieldio.run(main)


def test_format_unix_address() -> None:
    assert yieldio.format_unix_address("/run/x.sock") == "unix:/run/x.sock"
    assert yieldio.format_unix_address(b"/run/x.sock") == "unix:/run/x.sock"
    assert yieldio.format_unix_address(Path("/run/x.sock")) == "unix:/run/x.sock"
    assert yieldio.format_unix_address("\0name") == "unix:@name"
    assert yieldio.format_unix_address(b"\0name") == "unix:@name"
