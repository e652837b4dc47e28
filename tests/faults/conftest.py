"""Fault tests' helpers: servers whose log a thread keeps reading, clients, measurements, the figures file.

A busy server at INFO writes two log lines per connection; nobody reading its
stderr would fill the pipe and block the server mid-test. So every server
started here gets a thread that reads its stderr into ``Server.log`` as it
comes, and tests wait for a logged line with :meth:`Server.wait_log`.

Measured figures go to stdout (``pytest -s``) and are merged into
``/tmp/yieldio-fault-figures.json``, one object per test.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from ..conftest import LISTENING, free_port, python_env, wait_for_port

FIGURES = os.environ.get("YIELDIO_FAULT_FIGURES", "/tmp/yieldio-fault-figures.json")
MiB = 1024 * 1024


# -- servers -------------------------------------------------------------------


class Server:
    """A ``yieldio serve`` process and everything it has logged so far."""

    def __init__(self, proc: subprocess.Popen[bytes], host: str, port: int) -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.log = bytearray()
        self.eof = False
        self._cond = threading.Condition()
        self._pump = threading.Thread(target=self._read_log, name=f"log of server {proc.pid}", daemon=True)
        self._pump.start()
        self.ps = psutil.Process(proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    self.eof = True
                    self._cond.notify_all()
                    return
                self.log += chunk
                self._cond.notify_all()

    def text(self) -> str:
        with self._cond:
            return self.log.decode(errors="replace")

    def count(self, pattern: bytes | re.Pattern[bytes]) -> int:
        with self._cond:
            if isinstance(pattern, bytes):
                return self.log.count(pattern)
            return len(pattern.findall(self.log))

    def wait_log(self, pattern: bytes | re.Pattern[bytes], count: int = 1, timeout: float = 10.0) -> Any:
        """Wait until ``pattern`` has been logged ``count`` times; return the last match (regex) or True."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                if isinstance(pattern, bytes):
                    if self.log.count(pattern) >= count:
                        return True
                else:
                    matches = list(pattern.finditer(self.log))
                    if len(matches) >= count:
                        return matches[count - 1]
                if self.eof:
                    raise AssertionError(f"server exited before logging {pattern!r} x{count}:\n{self.tail()}")
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{pattern!r} not logged {count} times in {timeout}s:\n{self.tail()}")
                self._cond.wait(left)

    def wait_until(self, predicate: Callable[[bytearray], bool], timeout: float = 10.0, or_exit: bool = False) -> bool:
        """Wait until ``predicate(log)`` holds; with ``or_exit``, the server's exit also ends the wait (False)."""
        end = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.log):
                if self.eof:
                    if or_exit:
                        self.proc.wait(10)
                        return False
                    raise AssertionError(f"server exited:\n{self.tail()}")
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"condition not met in {timeout}s:\n{self.tail()}")
                self._cond.wait(left)
            return True

    def tail(self, lines: int = 40) -> str:
        return "\n".join(bytes(self.log).decode(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the server by its PID and wait for it; SIGKILL if it is still there after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._pump.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def assert_healthy(self) -> None:
        """Still running, and nothing in its log that says a task or the server itself went wrong."""
        assert self.alive(), f"server died (exit {self.proc.returncode}):\n{self.tail()}"
        text = self.text()
        for bad in ("Traceback", " ERROR ", " CRITICAL "):
            assert bad not in text, f"{bad.strip()} in the server's log:\n{self.tail()}"

    # measurements of the server process
    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def fds(self) -> int:
        return int(self.ps.num_fds())

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def client_sockets(self) -> int:
        """TCP sockets the server holds other than its listener."""
        return sum(1 for c in self.ps.net_connections(kind="tcp") if c.status != psutil.CONN_LISTEN)

    def wait_fds(self, expected: int, timeout: float = 10.0) -> int:
        """Wait until the server holds exactly ``expected`` descriptors (it closes connections asynchronously)."""
        end = time.monotonic() + timeout
        while True:
            now = self.fds()
            if now == expected or time.monotonic() > end:
                return now
            time.sleep(0.02)  # polling a count the server changes on its own; bounded by timeout

    def idle_baseline(self, timeout: float = 10.0) -> int:
        """The server's descriptor count once it holds no client connection at all."""
        end = time.monotonic() + timeout
        while self.client_sockets():
            assert time.monotonic() < end, "the server kept client sockets open"
            time.sleep(0.02)  # as above
        return self.fds()


LIMIT_THEN_EXEC = """
import os, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
os.execv(sys.argv[2], sys.argv[2:])
"""


def launch(*args: str, host: str = "127.0.0.1", nofile: int | None = None) -> Server:
    """``python -m yieldio serve --port 0 ARGS``, optionally under a descriptor limit; returns once it listens."""
    quiet = "--log-level" in args and args[args.index("--log-level") + 1] in ("warning", "error")
    port = free_port(host) if quiet else 0  # a quiet server does not log its port: pick one and poll it
    command = [sys.executable, "-m", "yieldio", "serve", "--host", host, "--port", str(port), *args]

    if nofile is not None:
        # set the limit, then exec the server in the same process (same PID); no preexec_fn, which is
        # unsafe in a process with threads (every Server has one reading its log)
        command = [sys.executable, "-c", LIMIT_THEN_EXEC, str(nofile), *command]
    proc = subprocess.Popen(
        command, env=python_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    server = Server(proc, host, port)
    try:
        if quiet:
            wait_for_port(host, port)
        else:
            server.port = int(server.wait_log(LISTENING).group(2))
    except BaseException:
        server.kill()
        raise
    return server


@pytest.fixture
def spawn() -> Iterator[Callable[..., Server]]:
    """Start servers; every one is killed by its PID at teardown."""
    started: list[Server] = []

    def factory(*args: str, host: str = "127.0.0.1", nofile: int | None = None) -> Server:
        server = launch(*args, host=host, nofile=nofile)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.kill()


# -- clients -------------------------------------------------------------------


def connect(address: tuple[str, int], timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        chunk = sock.recv(min(size - len(received), 1 << 20))
        if not chunk:
            raise AssertionError(f"EOF after {len(received)} of {size} bytes")
        received += chunk
    return bytes(received)


def roundtrip(sock: socket.socket, payload: bytes, expected: bytes) -> float:
    """Send ``payload``, check the reply is exactly ``expected``; return the latency in seconds."""
    started = time.perf_counter()
    sock.sendall(payload)
    reply = recv_exactly(sock, len(expected))
    elapsed = time.perf_counter() - started
    assert reply == expected, (reply[:60], expected[:60])
    return elapsed


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets an RST, not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def unacked(sock: socket.socket) -> int:
    """Bytes in our send queue the peer has not acknowledged (SIOCOUTQ): the rest has reached the peer's kernel."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0])


def exchange(
    sock: socket.socket, payload: bytes, *, half_close: bool = True, expect: int | None = None, timeout: float = 30.0
) -> bytes:
    """Send ``payload`` while reading the echo (no deadlock whatever its size); half-close after the last
    byte and read until EOF, or (``half_close=False``) read until ``expect`` bytes came back."""
    sock.setblocking(False)
    view = memoryview(payload)
    received = bytearray()
    sent = 0
    done_sending = False
    end = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if view else 0))
        if not view:
            done_sending = True
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        while True:
            if not half_close and expect is not None and len(received) >= expect:
                break
            left = end - time.monotonic()
            assert left > 0, f"exchange timed out: sent {sent}/{len(payload)}, received {len(received)}"
            for _, events in sel.select(left):
                if events & selectors.EVENT_WRITE and not done_sending:
                    try:
                        sent += sock.send(view[sent : sent + 256 * 1024])
                    except BlockingIOError:
                        pass
                    if sent == len(view):
                        done_sending = True
                        sel.modify(sock, selectors.EVENT_READ)
                        if half_close:
                            sock.shutdown(socket.SHUT_WR)
                if events & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        assert done_sending, f"EOF while still sending ({sent}/{len(payload)})"
                        sock.setblocking(True)
                        return bytes(received)
                    received += chunk
    sock.setblocking(True)
    return bytes(received)


def send_until_stalled(sock: socket.socket, payload: bytes, quiet: float = 0.5) -> int:
    """Send without reading until the connection stops taking data (nothing for ``quiet`` seconds).

    The stall is the event: the server is blocked sending to us and every buffer between is full.
    """
    sock.setblocking(False)
    view = memoryview(payload)
    sent = 0
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_WRITE)
        while sent < len(view):
            try:
                sent += sock.send(view[sent : sent + 1024 * 1024])
            except BlockingIOError:
                if not sel.select(quiet):
                    break
    sock.setblocking(True)
    return sent


class Bystander:
    """A client that stays connected through a fault and must lose nothing."""

    def __init__(self, address: tuple[str, int], prefix: bytes = b"GOT:") -> None:
        self.sock = connect(address)
        self.prefix = prefix
        self.rounds = 0

    def check(self, rounds: int = 3) -> None:
        for _ in range(rounds):
            payload = b"bystander %d \x00\xff\n" % self.rounds
            roundtrip(self.sock, payload, self.prefix + payload)
            self.rounds += 1

    def close(self) -> None:
        self.sock.close()


def fresh_client_works(address: tuple[str, int], prefix: bytes = b"GOT:") -> None:
    with connect(address) as sock:
        roundtrip(sock, b"new client\n", prefix + b"new client\n")


# -- figures -------------------------------------------------------------------


def record(test: str, **figures: Any) -> None:
    """Print the figures and merge them into the figures file (one object per test)."""
    shown = ", ".join(f"{key}={value}" for key, value in figures.items())
    print(f"\n[figures] {test}: {shown}")
    try:
        with open(FIGURES) as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = {}
    data.setdefault(test, {}).update(figures)
    data[test]["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    data["_machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    tmp = FIGURES + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, FIGURES)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
