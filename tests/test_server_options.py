"""ServerOptions: one options object, taken alike by every public stream server function.

Before it, ``tcp_server`` and ``unix_server`` copied ``serve``'s keyword list by hand and had
fallen behind it (no ``proxy_timeout``, no ``log_connections``). Each function is run here
with the same options, over a real socket, and must honour every one of them.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import yieldio
from yieldio import ServerOptions, Socket, open_connection, open_unix_connection, sleep, spawn, timeout_after
from yieldio.servers.proxy_protocol import DEFAULT_TIMEOUT, build_proxy_header

SERVERS = [yieldio.serve, yieldio.tcp_server, yieldio.unix_server]


@pytest.mark.parametrize("server", SERVERS, ids=lambda f: f.__name__)
def test_each_takes_one_server_options_and_no_option_of_its_own(server: Callable[..., Any]) -> None:
    parameters = inspect.signature(server).parameters
    assert parameters["options"].default == ServerOptions()
    assert [p.name for p in parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY] == ["stats"]
    assert len(parameters) == 4  # where (listener, address or path), handler, options, stats


def test_options_are_frozen() -> None:
    options = ServerOptions(max_clients=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_clients = 3  # type: ignore[misc]


# what every function is given: a PROXY header within 0.2 s (the default is 5 s), no connection lines
OPTIONS = ServerOptions(proxy_protocol=True, proxy_timeout=0.2, log_connections=False)


def _listening_on(caplog: pytest.LogCaptureFixture) -> str:
    found = re.search(r"listening on (\S+)", caplog.text)
    assert found, caplog.text
    return found.group(1)


@pytest.mark.parametrize("kind", ["serve", "tcp_server", "unix_server"])
def test_each_honours_the_same_options(kind: str, sock_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="yieldio")
    path = str(sock_dir / "echo.sock")

    async def start() -> tuple[yieldio.Task, Callable[[], Awaitable[Socket]]]:
        if kind == "serve":
            listener = yieldio.tcp_listen(("127.0.0.1", 0))
            port = listener.getsockname()[1]
            task = await spawn(yieldio.serve(listener, yieldio.echo_handler, OPTIONS))
            return task, lambda: open_connection("127.0.0.1", port)
        if kind == "tcp_server":
            task = await spawn(yieldio.tcp_server(("127.0.0.1", 0), yieldio.echo_handler, OPTIONS))
            await sleep(0)  # it binds and logs where
            port = int(_listening_on(caplog).rsplit(":", 1)[1])
            return task, lambda: open_connection("127.0.0.1", port)
        task = await spawn(yieldio.unix_server(path, yieldio.echo_handler, OPTIONS))
        await sleep(0)
        return task, lambda: open_unix_connection(path)

    async def main() -> tuple[bytes, float, bytes]:
        server, dial = await start()
        try:
            async with timeout_after(10):
                async with await dial() as silent:  # says nothing: closed at the PROXY deadline
                    started = time.monotonic()
                    closed = await silent.recv(100)
                    waited = time.monotonic() - started
                async with await dial() as proxied:
                    await proxied.sendall(build_proxy_header(1, ("203.0.113.7", 4000), ("127.0.0.1", 9)) + b"hi")
                    reply = await proxied.recv(100)
            return closed, waited, reply
        finally:
            await server.cancel()

    closed, waited, reply = yieldio.run(main)
    assert closed == b""
    assert waited < DEFAULT_TIMEOUT / 2  # its own 0.2 s, not the default
    assert reply == b"GOT:hi"
    rejections = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejections) == 1, caplog.text
    assert "connection from" not in caplog.text  # log_connections=False
    assert "connection closed" not in caplog.text


@pytest.mark.parametrize("quiet_probes", [False, True])
def test_a_greeting_handler_starts_at_once_unless_quiet_probes(
    quiet_probes: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that speaks first (a chat room, SMTP) must get its handler run when the connection is
    accepted, whatever the log level; only ``quiet_probes`` (for the echo, whose client speaks first)
    waits for the client's first byte, so that a probe that sends none is not logged at INFO."""
    caplog.set_level(logging.INFO, logger="yieldio")

    async def greet(client: Socket, address: Any) -> None:
        await client.sendall(b"hello\n")
        await client.recv(100)

    async def main() -> tuple[bytes, str]:
        listener = yieldio.tcp_listen(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        server = await spawn(yieldio.serve(listener, greet, ServerOptions(quiet_probes=quiet_probes)))
        try:
            async with await open_connection("127.0.0.1", port) as client:
                greeting = b""
                if quiet_probes:
                    await client.sendall(b"hi")  # its first byte: now the handler runs
                async with timeout_after(10):
                    greeting = await client.recv(100)
            async with await open_connection("127.0.0.1", port):  # a probe: connects, says nothing, leaves
                pass
            for _ in range(5):
                await sleep(0)  # its task sees the end and closes it
            return greeting, caplog.text
        finally:
            await server.cancel()
            listener.close()

    greeting, logged = yieldio.run(main)
    assert greeting == b"hello\n"
    assert logged.count("connection from") == (1 if quiet_probes else 2)  # the probe: at DEBUG with quiet_probes
