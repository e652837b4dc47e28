"""The tests' one helper module: servers (a process, or a thread of this process), clients, figures.

Test modules import it (``from .harness import ...``, ``from ..harness import ...`` in tests/faults);
the conftest files only wrap it in fixtures. The conventions it keeps (shared/README.md):

- loopback only, and the server picks its port: it binds port 0 and logs ``listening on HOST:PORT``,
  which :meth:`ServerProcess.wait_listening` reads; no test picks a port for a child to bind, since
  something else can take it in between;
- a child's output is read as it comes, by a thread: a server that logs a line per connection would
  otherwise block once the pipe nobody reads is full;
- every wait is bounded, and waits are for events (a line logged, bytes arriving), not for time;
- every process a test starts is stopped by its PID, by the test or by the fixture's teardown.

Measured figures (the fault tests') go to stdout (``pytest -s``) and are merged into
``/tmp/yieldio-fault-figures.json``, one object per test.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import itertools
import json
import os
import re
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Self, TypeVar

import psutil

import yieldio

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
MiB = 1024 * 1024
# what every server says once it listens, whatever --log-level is; an IPv6 host is in brackets
LISTENING = re.compile(rb"listening on (\S+):(\d+)")
LISTENER = re.compile(rb"listening on (\S+) \(")  # yieldio serve's line for each listener: its label
ECHO_LOOP = re.compile(rb"echo loop: (\w+)")  # yieldio serve's line at start: the build of the echo step that runs
FIGURES = os.environ.get("YIELDIO_FAULT_FIGURES", "/tmp/yieldio-fault-figures.json")

T = TypeVar("T")


# -- the environment -------------------------------------------------------------


def expected_echo_loop(env: Mapping[str, str] | None = None) -> str:
    """The echo loop a yieldio process with environment ``env`` (this one's by default) must run: the rule.

    ``pure`` when the build was asked to be pure (``YIELDIO_NO_EXTENSIONS=1``, which test.sh and CI give
    both the install and the tests) or the run is (``YIELDIO_PURE=1``); else ``compiled``, the default build.
    """
    env = os.environ if env is None else env
    return "pure" if "1" in (env.get("YIELDIO_NO_EXTENSIONS"), env.get("YIELDIO_PURE")) else "compiled"


def is_yieldio_serve(command: Sequence[str | bytes]) -> bool:
    """Whether ``command`` runs ``yieldio serve`` (``python -m yieldio serve``, the ``yieldio`` script, under a wrapper)."""
    words = [os.fsdecode(word) for word in command]
    return "serve" in words and any(word == "yieldio" or word.endswith("/yieldio") for word in words)


def python_env() -> dict[str, str]:
    """The environment of a child Python: this checkout's yieldio first, output unbuffered (read as it comes)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def yieldio_command(*args: str | bytes) -> list[str | bytes]:
    """``python -m yieldio ARGS`` with this interpreter."""
    return [sys.executable, "-m", "yieldio", *args]


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``yieldio serve --port 0 ARGS`` for a run that must end by itself (bad input): its status and output."""
    return subprocess.run(
        yieldio_command("serve", "--port", "0", *args),
        env=python_env() | (env or {}),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def serve_refusal(*args: str, env: dict[str, str] | None = None) -> str:
    """``yieldio serve --port 0 ARGS`` given bad input, by flag or by variable: it must refuse with exit
    status 2, one line on stderr, no traceback and nothing on stdout. That line."""
    done = run_serve(*args, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == "", done.stdout
    return done.stderr


def raise_nofile(wanted: int) -> int:
    """Raise this process's descriptor limit towards ``wanted`` (children inherit it); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- a server as a process -------------------------------------------------------


class ChildProcess:
    """A child process and everything it has written so far, stdout and stderr merged into ``output()``.

    A thread reads the output as it comes, so the child never blocks on a full pipe, and the waits
    (:meth:`wait_log`, :meth:`wait_until`) are waits on a condition that thread signals.
    """

    def __init__(
        self, command: Sequence[str | bytes], env: dict[str, str] | None = None, pass_fds: Sequence[int] = ()
    ) -> None:
        # pass_fds: descriptors the child inherits, e.g. a socket the test bound and listens on (HAProxy's fd@N)
        self.proc = subprocess.Popen(
            command,
            env=python_env() | (env or {}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
        )
        self.ps = psutil.Process(self.proc.pid)
        self._log = bytearray()
        self._eof = False
        self._cond = threading.Condition()  # its lock is reentrant: output() and tail() work inside a wait
        self._reader = threading.Thread(target=self._read, name=f"output of {self.proc.pid}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self._cond:
                if chunk:
                    self._log += chunk
                else:
                    self._eof = True
                self._cond.notify_all()
            if not chunk:
                return

    def output(self) -> bytes:
        """Everything written so far."""
        with self._cond:
            return bytes(self._log)

    def text(self) -> str:
        return self.output().decode(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def count(self, pattern: bytes | re.Pattern[bytes]) -> int:
        with self._cond:
            return len(_regex(pattern).findall(self._log))

    def wait_log(self, pattern: bytes | re.Pattern[bytes], count: int = 1, timeout: float = 10.0) -> re.Match[bytes]:
        """Wait until ``pattern`` (bytes, or a regex) has been written ``count`` times; the last of those matches."""
        regex = _regex(pattern)

        def found(log: bytearray) -> re.Match[bytes] | None:
            return next(itertools.islice(regex.finditer(log), count - 1, None), None)

        match = self._wait(found, timeout, f"{pattern!r} x{count}")
        assert match is not None
        return match

    def wait_until(self, predicate: Callable[[bytearray], bool], timeout: float = 10.0, or_exit: bool = False) -> bool:
        """Wait until ``predicate(output)`` holds: True; with ``or_exit``, the child's exit ends the wait too: False."""
        return self._wait(lambda log: predicate(log) or None, timeout, "the condition", or_exit) is not None

    def _wait(
        self, check: Callable[[bytearray], T | None], timeout: float, what: str, or_exit: bool = False
    ) -> T | None:
        end = time.monotonic() + timeout
        with self._cond:
            while (result := check(self._log)) is None:
                if self._eof:
                    if or_exit:
                        self.proc.wait(timeout)
                        return None
                    raise AssertionError(f"process {self.pid} ended its output before {what}:\n{self.tail()}")
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{what} not written in {timeout}s:\n{self.tail()}")
                self._cond.wait(left)
            return result

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the process by its PID and wait for its exit status; SIGKILL if it is still there after ``timeout``.

        Once it has returned, ``output()`` holds everything the process wrote.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the process and the processes it started (a server's workers), by their PIDs; idempotent."""
        if self.proc.poll() is None:
            try:
                children = self.ps.children(recursive=True)
            except psutil.Error:
                children = []
            self.proc.kill()  # first: a supervisor killed first can't start a replacement for a child killed below
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.kill()  # psutil checks the PID still names that process
        self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()


def _regex(pattern: bytes | re.Pattern[bytes]) -> re.Pattern[bytes]:
    return re.compile(re.escape(pattern)) if isinstance(pattern, bytes) else pattern


class ServerProcess(ChildProcess):
    """A server process (``yieldio serve``, or any program that logs ``listening on HOST:PORT``), and its measures.

    ``echo_loop``: the ``echo loop: X`` line it must log once it listens (``yieldio serve`` logs it at start),
    checked by :meth:`check_echo_loop`; None checks nothing (a program other than ``yieldio serve``).
    """

    def __init__(
        self,
        command: Sequence[str | bytes],
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        echo_loop: str | None = None,
    ) -> None:
        super().__init__(command, env, pass_fds)
        self.host = host
        self.port = 0  # known once it has said it
        self.echo_loop = echo_loop
        self.echo_loop_checked = False

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def wait_listening(self, timeout: float = 10.0) -> int:
        """Wait for its ``listening on HOST:PORT`` line; the port (also in ``address`` from now on)."""
        self.port = int(self.wait_log(LISTENING, timeout=timeout).group(2))
        self.check_echo_loop()
        return self.port

    def wait_listeners(self, count: int, timeout: float = 10.0) -> list[str]:
        """Wait for ``yieldio serve``'s ``count`` ``listening on LABEL (...)`` lines (one per --listen); the labels,
        in order: ``127.0.0.1:PORT``, ``tls://127.0.0.1:PORT``, ``udp://127.0.0.1:PORT``, ``unix:PATH``."""
        self.wait_log(LISTENER, count=count, timeout=timeout)
        self.check_echo_loop()
        return [label.decode() for label in LISTENER.findall(self.output())[:count]]

    def check_echo_loop(self) -> None:
        """Once it listens: its ``echo loop: X`` lines all name the loop expected (``echo_loop``), if one is."""
        if self.echo_loop is None:
            return
        self.echo_loop_checked = True
        logged = [loop.decode() for loop in ECHO_LOOP.findall(self.output())]
        assert logged and set(logged) == {self.echo_loop}, (
            f"expected `echo loop: {self.echo_loop}` (tests.harness.expected_echo_loop), logged {logged}: is the"
            f" install the build the environment names (./test.sh, YIELDIO_NO_EXTENSIONS=1 ./test.sh)?\n{self.tail()}"
        )

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
            time.sleep(0.02)  # polling a count the server changes on its own and logs nothing about; bounded

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


def serve_command(*args: str | bytes, host: str = "127.0.0.1", nofile: int | None = None) -> list[str | bytes]:
    """``python -m yieldio serve --host HOST --port 0 ARGS``, optionally under a descriptor limit ``nofile``."""
    command = yieldio_command("serve", "--host", host, "--port", "0", *args)
    if nofile is not None:
        # set the limit, then exec the server in the same process (same PID); no preexec_fn, which is
        # unsafe in a process with threads (every ChildProcess has one reading its output)
        command = [sys.executable, "-c", LIMIT_THEN_EXEC, str(nofile), *command]
    return command


class ProcessServers:
    """Starts server processes for one test; :meth:`close` kills every one still running, by its PID."""

    def __init__(self) -> None:
        self.started: list[ServerProcess] = []

    def __call__(self, *args: str | bytes, host: str = "127.0.0.1", nofile: int | None = None) -> ServerProcess:
        """``yieldio serve --host HOST --port 0 ARGS``; returns once it has said which port it listens on."""
        return self.start(serve_command(*args, host=host, nofile=nofile), host=host)

    def start(
        self, command: Sequence[str | bytes], host: str = "127.0.0.1", env: dict[str, str] | None = None
    ) -> ServerProcess:
        """Any ``command`` that serves on ``host`` and logs ``listening on HOST:PORT``; returns once it has.

        ``env`` is added to the test's environment."""
        server = self.launch(command, host=host, env=env)
        server.wait_listening()
        return server

    def launch(
        self,
        command: Sequence[str | bytes],
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        echo_loop: str | None = None,
    ) -> ServerProcess:
        """Start ``command`` and return at once: for a server that may refuse to start (or logs no port).

        A ``yieldio serve`` command must log the echo loop ``echo_loop``, by default the one
        :func:`expected_echo_loop` expects of its environment (checked once it listens)."""
        if echo_loop is None and is_yieldio_serve(command):
            echo_loop = expected_echo_loop(python_env() | (env or {}))
        server = ServerProcess(command, host, env, pass_fds, echo_loop)
        self.started.append(server)
        return server

    def close(self) -> None:
        for server in self.started:
            server.kill()
        # a server the test waited for by other means than wait_listening(): checked now that it is gone
        for server in self.started:
            if not server.echo_loop_checked and LISTENING.search(server.output()):
                server.check_echo_loop()


# -- a server in a thread --------------------------------------------------------


class ServerThread:
    """``yieldio.serve(listener, handler, **options)`` on a kernel in a thread of this process.

    For library tests: no process to start, and the handler can be any function of the test. The
    listener is bound before the thread starts, so ``address`` accepts connections at once. :meth:`close`
    stops the kernel and re-raises whatever ended it, or ended ``serve()``, other than the stop.
    """

    def __init__(self, handler: Callable[..., Any], host: str = "127.0.0.1", **options: Any) -> None:
        self.listener = yieldio.tcp_listen((host, 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self._stop_read, self._stop_write = socket.socketpair()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(handler, options), name="yieldio server", daemon=True)
        self.thread.start()

    def _run(self, handler: Callable[..., Any], options: dict[str, Any]) -> None:
        async def main() -> None:
            server = await yieldio.spawn(yieldio.serve(self.listener, handler, yieldio.ServerOptions(**options)))
            await yieldio.wait_readable(self._stop_read)
            await server.cancel()
            assert isinstance(server.exception, yieldio.Cancelled), f"serve() ended by itself: {server.exception!r}"

        try:
            with self.listener:
                yieldio.run(main)
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread by close()
            self.failure = error

    def close(self, timeout: float = 10.0) -> None:
        self._stop_write.send(b"x")
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the server thread did not stop in {timeout}s"
        self._stop_read.close()
        self._stop_write.close()
        if self.failure is not None:
            raise self.failure

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ThreadServers:
    """Starts :class:`ServerThread` servers for one test; :meth:`close` stops them all."""

    def __init__(self) -> None:
        self.started: list[ServerThread] = []

    def __call__(self, handler: Callable[..., Any], host: str = "127.0.0.1", **options: Any) -> ServerThread:
        self.started.append(ServerThread(handler, host, **options))
        return self.started[-1]

    def close(self) -> None:
        failures = []
        for server in self.started:
            try:
                server.close()
            except BaseException as error:  # noqa: BLE001 - every server is stopped, then the first failure raised
                failures.append(error)
        if failures:
            raise failures[0]


# -- clients ---------------------------------------------------------------------


def run_client(command: Sequence[str], stdin: bytes, timeout: float = 10.0) -> subprocess.CompletedProcess[bytes]:
    """Run a command-line client (nc, socat...) to the end with ``stdin``; never raises for its exit status.

    From inside a kernel, run it in a thread: ``await yieldio.run_in_thread(run_client, command, stdin)``."""
    return subprocess.run(list(command), input=stdin, capture_output=True, timeout=timeout, check=False)


def has_ipv6_loopback() -> bool:
    """Whether ::1 can be bound here (containers often have no IPv6)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def connect(address: tuple[str, int], timeout: float = 10.0) -> socket.socket:
    """A TCP connection (Nagle off: a test's small message leaves at once), every operation bounded by ``timeout``."""
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@contextmanager
def refused_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port that refuses connections for as long as the block runs.

    A socket bound to it but not listening: the OS answers connections with a reset, and no one else
    can bind the port meanwhile (a port merely found free could be taken before the test uses it).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as holder:
        holder.bind((host, 0))
        yield holder.getsockname()[1]


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes; fail on an early EOF."""
    received = bytearray()
    while len(received) < size:
        chunk = sock.recv(min(size - len(received), MiB))
        if not chunk:
            raise AssertionError(f"EOF after {len(received)} of {size} bytes: {bytes(received[:60])!r}")
        received += chunk
    return bytes(received)


def recv_all(sock: socket.socket) -> bytes:
    """Read until EOF."""
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    return bytes(received)


def read_until(fd: int, expected: bytes, timeout: float = 10.0) -> bytes:
    """Read a pipe (a client process's stdout) until ``expected`` has arrived; fail after ``timeout``."""
    received = bytearray()
    end = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while expected not in received:
            left = end - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise AssertionError(f"{expected!r} did not arrive in {timeout}s; got {bytes(received)!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"EOF before {expected!r}; got {bytes(received)!r}")
            received += chunk
    return bytes(received)


def exchange(sock: socket.socket, payload: bytes, timeout: float = 30.0, read_size: int = MiB) -> bytes:
    """Send ``payload`` while reading the echo (no deadlock whatever its size), half-close after the last
    byte, and return everything read until the server's EOF. A small ``read_size`` makes a slow reader:
    the server's sends keep filling the connection and go out in part."""
    blocking_timeout = sock.gettimeout()
    sock.setblocking(False)
    view = memoryview(payload)
    received = bytearray()
    sent = 0
    end = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while True:
            if sent == len(view) and sel.get_key(sock).events & selectors.EVENT_WRITE:
                sel.modify(sock, selectors.EVENT_READ)
                sock.shutdown(socket.SHUT_WR)
            left = end - time.monotonic()
            assert left > 0, f"exchange timed out: sent {sent}/{len(payload)}, received {len(received)}"
            for _, events in sel.select(left):
                if events & selectors.EVENT_WRITE and sent < len(view):
                    with suppress(BlockingIOError):
                        sent += sock.send(view[sent : sent + 256 * 1024])
                if events & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(read_size)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        assert sent == len(view), f"EOF while still sending ({sent}/{len(payload)})"
                        sock.settimeout(blocking_timeout)
                        return bytes(received)
                    received += chunk


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


def send_until_stalled(sock: socket.socket, payload: bytes, quiet: float = 0.5) -> int:
    """Send without reading until the connection stops taking data (nothing for ``quiet`` seconds).

    The stall is the event: the server is blocked sending to us and every buffer between is full.
    """
    blocking_timeout = sock.gettimeout()
    sock.setblocking(False)
    view = memoryview(payload)
    sent = 0
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_WRITE)
        while sent < len(view):
            try:
                sent += sock.send(view[sent : sent + MiB])
            except BlockingIOError:
                if not sel.select(quiet):
                    break
    sock.settimeout(blocking_timeout)  # bounded again, as it was
    return sent


def split_line_replies(reply: bytes, prefix: bytes, max_line: int) -> list[bytes]:
    """The pieces of a line-framed reply: each is ``prefix`` + (a line, or ``max_line`` bytes of one)."""
    pieces = []
    pos = 0
    while pos < len(reply):
        assert reply.startswith(prefix, pos), (reply[pos : pos + 40], prefix)
        pos += len(prefix)
        newline = reply.find(b"\n", pos, pos + max_line)
        end = newline + 1 if newline >= 0 else min(pos + max_line, len(reply))
        pieces.append(reply[pos:end])
        pos = end
    return pieces


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


# -- figures ---------------------------------------------------------------------


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


# Every flag of `yieldio serve`: the help tests check that each is there and that there is no other.
SERVE_FLAGS = (
    "--listen",
    "--host",
    "--port",
    "--tls-cert",
    "--tls-key",
    "--proxy-protocol",
    "--proxy-timeout",
    "--tls-handshake-timeout",
    "--metrics",
    "--prefix",
    "--framing",
    "--max-line",
    "--max-clients",
    "--idle-timeout",
    "--workers",
    "--backlog",
    "--trace",
    "--log-level",
)

# Flags added to `yieldio serve` since the tuple above was written: this file grows at its end only, so they are
# added here (mypy types the tuple above by its length, hence the ignore).
SERVE_FLAGS = (*SERVE_FLAGS, "--trace-file", "--monitor", "--monitor-token", "--monitor-read-only")  # type: ignore[assignment]


# -- the monitor (yieldio serve --monitor, YIELDIO_MONITOR) ----------------------------------

MONITOR_AT = re.compile(rb"monitor on http://(\S+?):(\d+)/")  # what a monitored program says at start


def monitor_address(child: ChildProcess, timeout: float = 10.0) -> tuple[str, int]:
    """Wait for a program's ``monitor on http://HOST:PORT/`` line; the monitor's address."""
    match = child.wait_log(MONITOR_AT, timeout=timeout)
    return match.group(1).decode().strip("[]"), int(match.group(2))


def http_request(
    address: tuple[str, int], method: str, path: str, headers: Mapping[str, str] | None = None
) -> tuple[int, Any]:
    """One HTTP request with exactly these headers (no Host unless given); the status and the JSON body."""
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


class MonitorEvents:
    """The monitor's stream (``GET /api/events``), read message by message: what the page receives."""

    def __init__(self, address: tuple[str, int], token: str | None = None) -> None:
        self.connection = http.client.HTTPConnection(*address, timeout=10)
        query = "" if token is None else f"?token={token}"
        self.connection.request("GET", "/api/events" + query, headers={"Host": f"127.0.0.1:{address[1]}"})
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.status

    def next(self) -> dict[str, Any]:
        """The next message (a state, the events since the last one, a step's report); bounded by the timeout."""
        data = b""
        while True:
            line = self.response.readline()
            assert line, "the monitor closed its stream"
            if line.startswith(b"data: "):
                data += line[6:]
            elif line == b"\n" and data:
                message: dict[str, Any] = json.loads(data)
                return message

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        """Read messages until one's state satisfies ``predicate``; that state."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            state: dict[str, Any] = self.next()["state"]
            if predicate(state):
                return state
        raise AssertionError(f"no state satisfied the condition within {timeout}s")

    def close(self) -> None:
        self.connection.close()


class Netcat:
    """A real ``nc`` connected to a server, kept open: lines typed into it, replies read as they come."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.proc = subprocess.Popen(["nc", address[0], str(address[1])], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.ps = psutil.Process(self.proc.pid)

    def say(self, line: bytes, reply: bytes) -> None:
        """Type ``line``; wait for ``reply`` on its output."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line)
        self.proc.stdin.flush()
        read_until(self.proc.stdout.fileno(), reply)

    def connection(self) -> Any:
        """Its TCP connection, as the system sees it."""
        (connection,) = [c for c in self.ps.net_connections(kind="tcp") if c.raddr]
        return connection

    def local_address(self) -> str:
        """HOST:PORT of its end: the peer the server sees."""
        laddr = self.connection().laddr
        return f"{laddr.ip}:{laddr.port}"

    def wait_closed_by_server(self, timeout: float = 10.0) -> None:
        """Until the server has closed its end (this one is then in CLOSE_WAIT)."""
        end = time.monotonic() + timeout
        while self.connection().status != psutil.CONN_CLOSE_WAIT:
            assert time.monotonic() < end, f"the server did not close {self.local_address()} in {timeout}s"
            time.sleep(0.02)  # a socket state the system changes and reports to nobody: polled, bounded

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


# yieldio serve's flags for who answered, injected faults and structured logs
SERVE_FLAGS = (  # type: ignore[assignment]
    *SERVE_FLAGS,
    "--banner",
    "--delay",
    "--reset-after",
    "--close-after",
    "--throttle",
    "--udp-drop",
    "--seed",
    "--log-format",
)
