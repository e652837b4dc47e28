"""The instrument hook, the trace (--trace / YIELDIO_TRACE) and the SIGUSR1 task table."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys

import yieldio
from yieldio import Kernel, sleep, spawn
from yieldio.core.instrument import Instrument, task_table

from .conftest import python_env, recv_all


class Recorder(Instrument):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def task_spawned(self, task):  # type: ignore[no-untyped-def]
        self.events.append(("spawned", task.name))

    def task_resumed(self, task):  # type: ignore[no-untyped-def]
        self.events.append(("resumed", task.name))

    def task_woken(self, task, why):  # type: ignore[no-untyped-def]
        self.events.append(("woken", f"{task.name} {why}"))

    def task_finished(self, task):  # type: ignore[no-untyped-def]
        self.events.append(("finished", task.name))


def test_instrument_sees_spawn_resume_wake_finish_in_order() -> None:
    async def napper() -> None:
        await sleep(0.01)

    async def main() -> None:
        await (await spawn(napper(), name="napper")).join()

    recorder = Recorder()
    kernel = Kernel()
    kernel.add_instrument(recorder)
    kernel.run(main)
    napper_events = [e for e in recorder.events if e[1].startswith("napper")]
    assert napper_events == [
        ("spawned", "napper"),
        ("resumed", "napper"),
        ("woken", "napper timer"),
        ("resumed", "napper"),
        ("finished", "napper"),
    ]


def test_task_table_lists_states() -> None:
    async def main() -> str:
        left, right = socket.socketpair()
        with yieldio.Socket(left) as a, right:
            await spawn(a.recv(10), name="reader")
            await spawn(sleep(10), name="sleeper")
            await sleep(0)
            table = task_table(yieldio.current_kernel())
            right.send(b"x")
            return table

    table = yieldio.run(main)
    assert re.search(r"reader\s+waiting to read fd \d+", table)
    assert re.search(r"sleeper\s+sleeping", table)
    assert re.search(r"main\s+running", table)


def _serve(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "yieldio", "serve", "--port", "0", *args],
        env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    match = re.search(rb"listening on 127.0.0.1:(\d+)", line)
    assert match, line
    return proc, int(match.group(1))


def _read_until(proc: subprocess.Popen[bytes], pattern: bytes) -> bytes:
    assert proc.stderr is not None
    seen = b""
    while pattern not in seen:
        line = proc.stderr.readline()
        assert line, f"{pattern!r} never logged; got:\n{seen.decode()}"
        seen += line
    return seen


def test_trace_of_two_clients_shows_events_in_a_valid_order() -> None:
    proc, port = _serve("--trace")
    try:
        a = socket.create_connection(("127.0.0.1", port), timeout=5)
        b = socket.create_connection(("127.0.0.1", port), timeout=5)
        for c, text in ((a, b"one"), (b, b"two")):
            c.sendall(text)
            assert recv_all(c, 4 + len(text)) == b"GOT:" + text
        a_port, b_port = a.getsockname()[1], b.getsockname()[1]
        a.close()
        b.close()
        trace = _read_until(proc, "finish    #".encode()) + _read_until(proc, b"connection closed 127.0.0.1:%d" % b_port)
        trace += _read_until(proc, b"connection closed 127.0.0.1:%d" % a_port) if b"closed 127.0.0.1:%d" % a_port not in trace else b""
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    lines = trace.decode().splitlines()
    for peer_port in (a_port, b_port):
        name = f"echo_handler 127.0.0.1:{peer_port}"
        events = [line.split()[1] for line in lines if name in line and re.match(r"\s*\d+\.\d+\s", line)]
        # spawned, run, parked, woken by the poll, run ... finished; each wake precedes a run
        assert events[0] == "spawn" and events[-1] == "finish", events
        assert "wake" in events and "yield" in events
        for earlier, later in zip(events, events[1:]):
            if later == "run":
                assert earlier in ("spawn", "wake", "yield"), events
        assert any("poll: fd" in line and name in line for line in lines)
    times = [float(line.split()[0]) for line in lines if re.match(r"\s*\d+\.\d+\s", line)]
    assert times == sorted(times)


def test_yieldio_trace_env_traces_any_program() -> None:
    code = "import yieldio\nasync def main():\n    await yieldio.sleep(0.01)\nyieldio.run(main)\n"
    env = python_env() | {"YIELDIO_TRACE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=20)
    assert result.returncode == 0
    assert re.search(r"wake\s+#1\s+main\s+timer", result.stderr)


def test_sigusr1_logs_the_task_table_with_peers_and_keeps_serving() -> None:
    proc, port = _serve()
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.sendall(b"hello")
        assert recv_all(c, 9) == b"GOT:hello"
        peer_port = c.getsockname()[1]
        proc.send_signal(signal.SIGUSR1)
        table = _read_until(proc, b"127.0.0.1:%d  5" % peer_port).decode()
        assert re.search(rf"echo_handler 127.0.0.1:{peer_port}\s+waiting to read fd \d+\s+\S+s\s+127.0.0.1:{peer_port}\s+5\s+9", table)
        c.sendall(b"again")
        assert recv_all(c, 9) == b"GOT:again"
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
