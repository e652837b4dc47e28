"""Shared fixtures: real server processes, free ports, raised descriptor limits.

Every process a test starts is stopped by its PID in the fixture's teardown.
Tests wait for events (a line printed, a port accepting), never for a fixed time.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
LISTENING = re.compile(rb"listening on (\S+):(\d+)")


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wait_for_port(host: str, port: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.02)  # polling a port that is not up yet; bounded by the deadline


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    log: bytearray = field(default_factory=bytearray)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def read_log_until(self, pattern: bytes, timeout: float = 10.0) -> bytes:
        """Read the server's stderr until ``pattern`` appears (or fail after ``timeout``)."""
        import selectors

        assert self.proc.stderr is not None
        end = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stderr, selectors.EVENT_READ)
            while pattern not in self.log:
                left = end - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise AssertionError(f"{pattern!r} not logged in {timeout}s; log so far:\n{self.log.decode(errors='replace')}")
                chunk = os.read(self.proc.stderr.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"server exited before logging {pattern!r}:\n{self.log.decode(errors='replace')}")
                self.log += chunk
        return bytes(self.log)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def rest_of_log(self) -> bytes:
        assert self.proc.stderr is not None
        self.log += self.proc.stderr.read()
        return bytes(self.log)


def start_server(*args: str, host: str = "127.0.0.1", cmd: list[str] | None = None) -> ServerProcess:
    """``python -m yieldio serve --port 0 ...``; returns once it logged the port it listens on."""
    quiet = "--log-level" in args and args[args.index("--log-level") + 1] in ("warning", "error")
    port = free_port(host) if quiet else 0  # a quiet server doesn't log its port: pick one and poll it
    command = cmd or [sys.executable, "-m", "yieldio", "serve", "--host", host, "--port", str(port), *args]
    proc = subprocess.Popen(command, env=python_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    server = ServerProcess(proc, host, port)
    try:
        if quiet:
            wait_for_port(host, port)
        else:
            match = LISTENING.search(server.read_log_until(b"listening on"))
            assert match is not None
            server.port = int(match.group(2))
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


@pytest.fixture
def server_factory() -> Iterator[object]:
    started: list[ServerProcess] = []

    def factory(*args: str, host: str = "127.0.0.1") -> ServerProcess:
        server = start_server(*args, host=host)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop(signal.SIGKILL)


@pytest.fixture
def echo_server(server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    return server_factory()


def exchange(address: tuple[str, int], payload: bytes, expect: int, timeout: float = 10.0) -> bytes:
    """Send ``payload``, half-close, and read until ``expect`` bytes (or EOF) came back."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock, expect)


def recv_all(sock: socket.socket, expect: int | None = None) -> bytes:
    received = bytearray()
    while expect is None or len(received) < expect:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return bytes(received)
