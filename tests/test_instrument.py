"""The instrument hook, the trace (--trace / YIELDIO_TRACE) and the SIGUSR1 task table."""

from __future__ import annotations

import itertools
import re
import signal
import socket
import subprocess
import sys
from typing import Any

import pytest

import yieldio
from yieldio import Kernel, Task, sleep, spawn
from yieldio.core.hooks import Instrument
from yieldio.core.instrument import task_table

from .harness import ProcessServers, ServerProcess, connect, python_env, recv_exactly


class Recorder(Instrument):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def task_spawned(self, task: Task) -> None:
        self.events.append(("spawned", task.name))

    def task_resumed(self, task: Task) -> None:
        self.events.append(("resumed", task.name))

    def task_woken(self, task: Task, why: str) -> None:
        self.events.append(("woken", f"{task.name} {why}"))

    def task_finished(self, task: Task) -> None:
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


def test_hooks_are_indexed_when_added_only_those_an_instrument_defines() -> None:
    """An event nobody listens to has an empty tuple: the kernel calls nothing for it. Instrument's
    no-op defaults are not filed; an object that merely has a hook (no base class) is filed too."""

    class OnlyFinished:
        def __init__(self) -> None:
            self.finished: list[str] = []

        def task_finished(self, task: Task) -> None:
            self.finished.append(task.name)

    recorder, duck = Recorder(), OnlyFinished()
    kernel = Kernel()
    kernel.add_instrument(recorder)
    kernel.add_instrument(duck)  # type: ignore[arg-type]  # typed callers subclass Instrument
    assert kernel.hooks.task_yielded == ()  # defined by neither: Instrument's no-op is not filed
    assert kernel.hooks.task_cancelled == ()
    assert kernel.hooks.task_resumed == (recorder.task_resumed,)
    assert kernel.hooks.task_finished == (recorder.task_finished, duck.task_finished)

    async def main() -> None:
        await sleep(0)

    kernel.run(main)
    assert duck.finished == ["main"]
    kernel.remove_instrument(recorder)
    assert list(kernel.hooks.task_resumed) == []
    assert list(kernel.hooks.task_finished) == [duck.task_finished]


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


def test_trace_of_two_clients_shows_events_in_a_valid_order(serve_process: ProcessServers) -> None:
    server = serve_process("--trace")
    a = connect(server.address)
    b = connect(server.address)
    for c, text in ((a, b"one"), (b, b"two")):
        c.sendall(text)
        assert recv_exactly(c, 4 + len(text)) == b"GOT:" + text
    peer_ports = a.getsockname()[1], b.getsockname()[1]
    a.close()
    b.close()
    for peer_port in peer_ports:  # logged after the handler's "finish" event
        server.wait_log(b"connection closed 127.0.0.1:%d" % peer_port)
    assert server.stop(signal.SIGTERM) == 0
    lines = server.text().splitlines()
    for peer_port in peer_ports:
        # the task is named after its peer once the server has it (not yet in the "spawn" line): find its id
        named = next(line for line in lines if f"echo_handler 127.0.0.1:{peer_port}" in line)
        task_id = named.split()[2]
        events = [line.split()[1] for line in lines if re.match(rf"\s*\d+\.\d+\s+\w+\s+{task_id}\s", line)]
        # spawned, run, parked, woken by the poll, run ... finished; each wake precedes a run
        assert events[0] == "spawn" and events[-1] == "finish", events
        assert "wake" in events and "yield" in events
        for earlier, later in itertools.pairwise(events):
            if later == "run":
                assert earlier in ("spawn", "wake", "yield"), events
        assert any("poll: fd" in line and f"echo_handler 127.0.0.1:{peer_port}" in line for line in lines)
    times = [float(line.split()[0]) for line in lines if re.match(r"\s*\d+\.\d+\s", line)]
    assert times == sorted(times)


def test_yieldio_trace_env_traces_any_program() -> None:
    code = "import yieldio\nasync def main():\n    await yieldio.sleep(0.01)\nyieldio.run(main)\n"
    env = python_env() | {"YIELDIO_TRACE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0
    assert re.search(r"wake\s+#1\s+main\s+timer", result.stderr)


def test_sigusr1_logs_the_task_table_with_peers_and_keeps_serving(echo_server: ServerProcess) -> None:
    with connect(echo_server.address) as c:
        c.sendall(b"hello")
        assert recv_exactly(c, 9) == b"GOT:hello"
        peer = re.escape(b"127.0.0.1:%d" % c.getsockname()[1])
        echo_server.proc.send_signal(signal.SIGUSR1)
        # the connection's row: its task, its state, its age, its peer, bytes in and out
        row = re.compile(rb"echo_handler\s+waiting to read fd \d+\s+\S+s\s+%s\s+5\s+9" % peer)
        echo_server.wait_log(row)
        c.sendall(b"again")
        assert recv_exactly(c, 9) == b"GOT:again"
    assert echo_server.stop(signal.SIGTERM) == 0


def test_an_instrument_that_raises_is_removed_and_logged_and_the_program_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Instrument):
        calls = 0

        def task_resumed(self, task: Task) -> None:
            Broken.calls += 1
            raise ValueError("instrument bug")

    async def main() -> int:
        for _ in range(3):
            await sleep(0)
        return 42

    broken, recorder = Broken(), Recorder()
    kernel = Kernel()
    kernel.add_instrument(broken)
    kernel.add_instrument(recorder)
    assert kernel.run(main) == 42
    assert Broken.calls == 1
    assert kernel.instruments == [recorder]
    assert kernel.hooks.task_resumed == (recorder.task_resumed,)  # its hook is gone from the index too
    assert ("finished", "main") in recorder.events  # the other instrument kept hearing everything
    assert any(
        r.exc_info and "instrument bug" in str(r.exc_info[1]) and "removed" in r.getMessage() for r in caplog.records
    )


def test_yieldio_trace_env_traces_the_serve_command(serve_process: ProcessServers) -> None:
    server = serve_process.start([sys.executable, "-m", "yieldio", "serve", "--port", "0"], env={"YIELDIO_TRACE": "1"})
    server.wait_log(re.compile(rb"spawn\s+#\d+\s+listener 127.0.0.1:\d+"))
    with connect(server.address) as client:
        client.sendall(b"traced")
        assert recv_exactly(client, 10) == b"GOT:traced"
    server.wait_log(re.compile(rb"wake\s+#\d+\s+echo_handler 127.0.0.1:\d+\s+poll: fd \d+ readable"))
    assert server.stop() == 0


def test_every_view_words_every_trap_from_one_decoding() -> None:
    # The tracer, the monitor (the trap as the tutorial writes it, and where it sends the task) and the
    # trace file each word a trap their own way, from decode_trap's (op, target): every kind, pinned.
    from yieldio.core.instrument import _describe_wait, decode_trap
    from yieldio.observe.monitor import destination, trap_text
    from yieldio.observe.tracefile import step_name

    def idle() -> Any:
        yield

    other = Task(idle())
    ours, theirs = socket.socketpair()
    with ours, theirs:
        fd = ours.fileno()
        cases = [
            (
                ("recv", ours),
                ("recv", fd),
                f"parked in the waiting area: read fd {fd}",
                f"('recv', fd {fd})",
                f"recv_wait[fd {fd}]",
                f"recv fd {fd}",
            ),
            (
                ("send", 7),
                ("send", 7),
                "parked in the waiting area: write fd 7",
                "('send', fd 7)",
                "send_wait[fd 7]",
                "send fd 7",
            ),
            (("sleep", 0.5), ("sleep", 0.5), "sleeping 0.5s", "('sleep', 0.5)", "sleeping 0.5s", "sleep 0.5s"),
            (
                ("sleep", 0),
                ("sleep", 0),
                "back to the ready queue (sleep 0)",
                "('sleep', 0)",
                "tasks (the end of the queue)",
                "sleep 0s",
            ),
            (
                ("join", other),
                ("join", other.id),
                f"waiting for task {other.id}",
                f"('join', task {other.id})",
                f"joined on task {other.id}",
                f"join #{other.id}",
            ),
            (
                ("wait", other),
                ("wait", other.id),
                f"waiting for task {other.id}",
                f"('wait', task {other.id})",
                f"joined on task {other.id}",
                f"wait #{other.id}",
            ),
            (
                ("cancel", (other, None)),
                ("cancel", other.id),
                f"cancelling task {other.id}",
                f"('cancel', task {other.id})",
                f"joined on task {other.id}",
                f"cancel #{other.id}",
            ),
            (("park", []), ("park", []), "parked", "('park', waiters)", "parked (a queue, lock or event)", "park"),
            (
                ("spawn", None),
                ("spawn", None),
                "trap spawn",
                "('spawn', ...)",
                "tasks (answered at once: it runs again next)",
                "spawn",
            ),
            ("junk", None, "yielded 'junk'", "'junk'", "tasks (answered at once: it runs again next)", "yield 'junk'"),
        ]
        for trap, decoded, tracer, tutorial, where, step in cases:
            assert decode_trap(trap) == decoded, trap
            assert (_describe_wait(trap), trap_text(trap), destination(trap), step_name(trap)) == (
                tracer,
                tutorial,
                where,
                step,
            ), trap
