"""The monitor and its commands: ``yieldio ps``, ``where``, ``cancel``, ``top``, against running programs.

The programs are real: ``yieldio serve --monitor`` with ``nc`` clients connected, the tutorial's
own server run with ``YIELDIO_MONITOR``, a program whose task blocks the scheduler for 4 s. The
commands run as a user runs them, in their own processes. The page itself, in a browser, is
tests/test_monitor_page.py's.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pexpect  # type: ignore[import-untyped]
import pytest

import yieldio
from yieldio import Kernel
from yieldio.observe.monitor import LiveFeed
from yieldio.observe.monitor_address import BadAddress, parse_command_address, parse_monitor_address, token_for
from yieldio.observe.monitor_web import allowed_hosts

from .harness import (
    MONITOR_AT,
    ROOT,
    ChildProcess,
    MonitorEvents,
    Netcat,
    ProcessServers,
    ServerProcess,
    connect,
    http_request,
    monitor_address,
    python_env,
    recv_exactly,
    refused_port,
    run_serve,
    yieldio_command,
)
from .test_cli import TUTORIAL_ON_A_FREE_PORT

TUTORIAL = ROOT / "examples" / "tutorial_server.py"

# A task that never yields for 4 s, as a handler calling time.sleep would. A thread says when the
# block has lasted longer than ps's threshold (0.5 s): the event the test waits for.
BLOCKS_FOR_4_SECONDS = """
import sys, threading, time
import yieldio

def say(line):
    print(line, file=sys.stderr, flush=True)

async def hog():
    await yieldio.sleep(0)
    threading.Timer(0.7, say, ("blocked for 0.7s",)).start()
    time.sleep(4)  # never yields: no other task runs meanwhile

async def main():
    await yieldio.spawn(hog(), name="hog")
    await yieldio.sleep(60)

yieldio.run(main)
"""


def yieldio_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        yieldio_command(*args), env=python_env() | (env or {}), capture_output=True, text=True, timeout=30, check=False
    )


def where(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def start_tutorial(programs: list[ChildProcess], **env: str) -> tuple[ChildProcess, tuple[str, int], int]:
    """The tutorial's server, its code unchanged, with a monitor; (process, monitor address, echo port)."""
    program = ServerProcess(
        [sys.executable, "-c", TUTORIAL_ON_A_FREE_PORT, str(TUTORIAL)], env={"YIELDIO_MONITOR": "127.0.0.1:0", **env}
    )
    programs.append(program)
    monitor = monitor_address(program)
    return program, monitor, program.wait_listening()


def rows_of(ps_output: str) -> dict[str, list[str]]:
    """``yieldio ps``'s table, by task id: each row's cells (split on runs of two spaces)."""
    lines = ps_output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("id "))
    return {line.split()[0]: re.split(r"\s{2,}", line.strip()) for line in lines[start + 1 :]}


# -- addresses and tokens ---------------------------------------------------------------------


def test_a_monitor_address_is_loopback_unless_one_is_named() -> None:
    assert parse_monitor_address("48802") == ("127.0.0.1", 48802)
    assert parse_monitor_address(":48802") == ("127.0.0.1", 48802)  # unlike --listen's :PORT, every address
    assert parse_monitor_address("localhost:9") == ("127.0.0.1", 9)
    assert parse_monitor_address("0.0.0.0:48802") == ("0.0.0.0", 48802)
    assert parse_monitor_address("[::1]:48802") == ("::1", 48802)
    for bad in ("", "host.example:80", "127.0.0.1:70000", "127.0.0.1:port", "[::1]"):
        with pytest.raises(BadAddress):
            parse_monitor_address(bad)
    # a command's ADDR always has its colon: a lone number is a task id
    assert parse_command_address(":9") == ("127.0.0.1", 9)
    with pytest.raises(BadAddress, match="with a colon"):
        parse_command_address("9")


def test_the_host_header_must_name_the_address_connected_to() -> None:
    assert allowed_hosts(("127.0.0.1", 9), "127.0.0.1") == {"127.0.0.1:9", "localhost:9", "[::1]:9"}
    assert allowed_hosts(("192.0.2.7", 9), "0.0.0.0") == {"192.0.2.7:9"}
    # a dual-stack socket's IPv4 client: the address it typed, not the mapped form
    assert allowed_hosts(("::ffff:192.0.2.7", 9, 0, 0), "::") == {"192.0.2.7:9"}
    assert allowed_hosts(("2001:db8::1", 80, 0, 0), "::") == {"[2001:db8::1]:80", "[2001:db8::1]"}


def test_any_address_but_loopback_needs_a_token_and_one_is_made_if_none_is_given() -> None:
    assert token_for("127.0.0.1", None) is None and token_for("::1", None) is None
    made = token_for("0.0.0.0", None)
    assert made is not None and len(made) >= 20 and made != token_for("0.0.0.0", None)
    assert token_for("::", "given") == "given" and token_for("127.0.0.1", "given") == "given"


# -- the tutorial's server, watched through YIELDIO_MONITOR ------------------------------------


def test_ps_and_where_show_the_tutorials_tasks_in_its_words_with_each_nc_clients_peer(
    programs: list[ChildProcess], netcats: list[Netcat]
) -> None:
    program, monitor, port = start_tutorial(programs)
    for line in (b"Hello\n", b"again\n"):
        client = Netcat(("127.0.0.1", port))
        netcats.append(client)
        client.say(line, b"GOT:" + line)
    peers = [client.local_address() for client in netcats]

    listed = yieldio_cli("ps", where(monitor))
    assert listed.returncode == 0, listed.stderr
    rows = rows_of(listed.stdout)
    assert rows["1"][1:3] == ["tcp_server", f"waiting to read fd {rows['1'][2].split()[-1]}"]
    handlers = {row[-1]: row for row in rows.values() if row[1] == "echo_handler"}
    assert set(handlers) == set(peers), listed.stdout  # each connection's task, with its peer
    for row in handlers.values():
        # three steps: to its first wait; read, then wait to send; send, then wait to read again
        assert row[2].startswith("waiting to read fd ") and row[3] == "3"

    task_id = next(row[0] for row in handlers.values() if row[-1] == peers[0])
    stack = yieldio_cli("where", where(monitor), task_id)
    assert stack.returncode == 0, stack.stderr
    assert stack.stdout.splitlines() == [
        f"task {task_id} echo_handler {peers[0]}: waiting to read fd {handlers[peers[0]][2].split()[-1]}",
        f'  File "{TUTORIAL}", line 18, in echo_handler',
        "    yield 'recv', client",
    ]
    program.wait_log(b"Connection from", count=2)


def test_the_state_as_json_lists_tasks_the_ready_queue_the_sleepers_and_the_waiting_areas(
    programs: list[ChildProcess], netcats: list[Netcat]
) -> None:
    _, monitor, port = start_tutorial(programs)
    client = Netcat(("127.0.0.1", port))
    netcats.append(client)
    client.say(b"x\n", b"GOT:x\n")
    status, state = http_request(monitor, "GET", "/api/state", {"Host": where(monitor)})
    assert status == 200
    assert {"tasks", "ready", "sleeping", "waiting"} <= state.keys()
    assert state["consistent"] and state["blocked"] is None and state["ready"] == [] and state["sleeping"] == []
    by_name = {task["name"]: task for task in state["tasks"]}
    assert by_name["echo_handler"]["peer"] == client.local_address()
    assert by_name["tcp_server"]["peer"] is None and by_name["tcp_server"]["state"].startswith("waiting to read")
    assert {entry["id"] for entry in state["waiting"]["recv_wait"]} == {task["id"] for task in state["tasks"]}
    assert state["waiting"]["send_wait"] == []


def test_step_mode_runs_the_tutorials_handler_one_step_at_a_time(programs: list[ChildProcess]) -> None:
    _, monitor, port = start_tutorial(programs)
    headers = {"Host": where(monitor)}
    events = MonitorEvents(monitor)
    try:
        with connect(("127.0.0.1", port)) as client:
            handler = events.wait(
                lambda s: any(t["name"] == "echo_handler" and t["area"] == "recv_wait" for t in s["tasks"])
            )
            handler_id = next(t["id"] for t in handler["tasks"] if t["name"] == "echo_handler")
            assert http_request(monitor, "POST", "/api/pause", headers) == (200, {"stepping": True})
            client.sendall(b"step by step\n")
            # the poll moves it to tasks, and there it stays: nothing runs without a step
            events.wait(lambda s: s["stepping"] and handler_id in s["ready"])
            client.setblocking(False)
            with pytest.raises(BlockingIOError):
                client.recv(100)

            status, step = http_request(monitor, "POST", "/api/step", headers)
            assert status == 200 and step["ran"]["id"] == handler_id
            assert step["yielded"].startswith("('send', fd ") and step["went"].startswith("send_wait[fd ")
            with pytest.raises(BlockingIOError):
                client.recv(100)  # it has read the line, and waits to be allowed to send: no reply yet

            events.wait(lambda s: handler_id in s["ready"])  # writable at once: ready again
            status, step = http_request(monitor, "POST", "/api/step", headers)
            assert status == 200 and step["ran"]["id"] == handler_id
            assert step["yielded"].startswith("('recv', fd ") and step["went"].startswith("recv_wait[fd ")
            client.settimeout(10)
            assert recv_exactly(client, 17) == b"GOT:step by step\n"

            status, nothing = http_request(monitor, "POST", "/api/step", headers)
            assert status == 200 and nothing["ran"] is None and "no task is ready" in nothing["text"]
            assert http_request(monitor, "POST", "/api/resume", headers) == (200, {"stepping": False})
            client.setblocking(True)
            client.sendall(b"free again\n")
            assert recv_exactly(client, 15) == b"GOT:free again\n"
    finally:
        events.close()


def test_a_paused_scheduler_still_stops_on_ctrl_c(programs: list[ChildProcess]) -> None:
    program, monitor, port = start_tutorial(programs)
    with connect(("127.0.0.1", port)) as client:
        assert http_request(monitor, "POST", "/api/pause", {"Host": where(monitor)}) == (200, {"stepping": True})
        client.sendall(b"held\n")  # its handler is woken and held: it will not run again
        # the runner's signal watcher is a daemon task, which step mode does not hold: Ctrl-C is still heard
        assert program.stop(signal.SIGINT) == 0, program.tail()


# -- a blocked scheduler --------------------------------------------------------------------


def test_ps_answers_within_a_second_while_a_task_blocks_the_scheduler_and_names_it(
    programs: list[ChildProcess], tmp_path: Path
) -> None:
    source = tmp_path / "blocks.py"
    source.write_text(BLOCKS_FOR_4_SECONDS)
    program = ChildProcess([sys.executable, str(source)], env={"YIELDIO_MONITOR": "127.0.0.1:0"})
    programs.append(program)
    monitor = monitor_address(program)
    program.wait_log(b"blocked for 0.7s")
    started = time.monotonic()
    listed = yieldio_cli("ps", where(monitor))
    took = time.monotonic() - started
    assert listed.returncode == 0, listed.stderr
    assert took < 1.0, f"ps took {took:.2f}s"
    lines = listed.stdout.splitlines()
    assert lines[1].startswith("BLOCKED: task ") and " hog has held the scheduler for " in lines[1], listed.stdout
    assert (
        lines[2].endswith(", in hog") and lines[3] == "    time.sleep(4)  # never yields: no other task runs meanwhile"
    )
    rows = rows_of(listed.stdout)
    hog = next(row for row in rows.values() if row[1] == "hog")
    assert hog[2] == "running"
    main = next(row for row in rows.values() if row[1] == "main")
    assert main[2].startswith("sleeping until ")

    # where, for a parked task, still answers; a cancel waits for the scheduler
    stack = yieldio_cli("where", where(monitor), main[0])
    assert stack.returncode == 0 and "await yieldio.sleep(60)" in stack.stdout, stack.stdout
    assert "(read from the monitor's thread: the scheduler is busy)" in stack.stdout


# -- bad input --------------------------------------------------------------------------------


def test_bad_input_is_one_line_and_a_non_zero_exit(programs: list[ChildProcess]) -> None:
    with refused_port() as port:
        nobody = yieldio_cli("ps", f"127.0.0.1:{port}")
    assert nobody.returncode == 1
    assert nobody.stderr == f"yieldio ps: no monitor at 127.0.0.1:{port}: Connection refused\n"

    _, monitor, _ = start_tutorial(programs)
    for command in ("where", "cancel"):
        unknown = yieldio_cli(command, where(monitor), "999999")
        assert unknown.returncode == 1
        assert unknown.stderr == f"yieldio {command}: the monitor at {where(monitor)}: no task 999999\n"
    for args in (("ps", "4"), ("where",), ("where", where(monitor)), ("cancel", "x"), ("ps", "a:b")):
        usage = yieldio_cli(*args)
        assert usage.returncode == 2, (args, usage)
        assert usage.stderr.count("\n") == 1 and "Traceback" not in usage.stderr, usage.stderr
    # without ADDR: YIELDIO_MONITOR's address
    listed = yieldio_cli("ps", env={"YIELDIO_MONITOR": where(monitor)})
    assert listed.returncode == 0 and "tcp_server" in listed.stdout


# -- safety -----------------------------------------------------------------------------------


def test_foreign_host_headers_are_refused_and_changes_from_a_foreign_origin_too(programs: list[ChildProcess]) -> None:
    _, monitor, _ = start_tutorial(programs)
    port = monitor[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LOCALHOST:{port}"):
        assert http_request(monitor, "GET", "/api/state", {"Host": host})[0] == 200, host
    for host in (f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}", f"10.0.0.1:{port}", ""):
        status, body = http_request(monitor, "GET", "/api/state", {"Host": host} if host else {})
        assert status == 403 and "refused" in body["error"], (host, body)
    own = {"Host": f"127.0.0.1:{port}"}
    assert http_request(monitor, "GET", "/", {"Host": f"rebound.example:{port}"})[0] == 403  # the page as well
    status, body = http_request(monitor, "POST", "/api/pause", own | {"Origin": "http://evil.example"})
    assert status == 403 and "http://evil.example" in body["error"]
    status, body = http_request(monitor, "POST", "/api/pause", own | {"Origin": "null"})
    assert status == 403
    assert http_request(monitor, "POST", "/api/pause", own | {"Origin": f"http://localhost:{port}"})[0] == 200
    assert http_request(monitor, "POST", "/api/resume", own)[0] == 200  # no Origin: not a browser, allowed


def test_a_token_given_is_required_by_every_request_and_the_commands_send_it(programs: list[ChildProcess]) -> None:
    _, monitor, _ = start_tutorial(programs, YIELDIO_MONITOR_TOKEN="s3cret-token")
    own = {"Host": where(monitor)}
    for headers, path in ((own, "/api/state"), (own, "/"), (own | {"Authorization": "Bearer wrong"}, "/api/state")):
        status, body = http_request(monitor, "GET", path, headers)
        assert status == 401 and "token" in body["error"]
    assert http_request(monitor, "GET", "/api/state?token=s3cret-token", own)[0] == 200
    assert http_request(monitor, "GET", "/api/state", own | {"Authorization": "Bearer s3cret-token"})[0] == 200

    refused = yieldio_cli("ps", where(monitor))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "token" in refused.stderr
    assert yieldio_cli("ps", where(monitor), "--token", "s3cret-token").returncode == 0
    assert yieldio_cli("ps", where(monitor), env={"YIELDIO_MONITOR_TOKEN": "s3cret-token"}).returncode == 0


def test_a_read_only_monitor_refuses_cancel_and_step_but_shows_everything(
    programs: list[ChildProcess], netcats: list[Netcat]
) -> None:
    _, monitor, port = start_tutorial(programs, YIELDIO_MONITOR_READ_ONLY="1")
    client = Netcat(("127.0.0.1", port))
    netcats.append(client)
    client.say(b"hi\n", b"GOT:hi\n")
    state = yieldio_cli("ps", where(monitor))
    assert state.returncode == 0
    task_id = next(row[0] for row in rows_of(state.stdout).values() if row[1] == "echo_handler")
    refused = yieldio_cli("cancel", where(monitor), task_id)
    assert refused.returncode == 1 and "read-only" in refused.stderr and refused.stderr.count("\n") == 1
    for action in ("pause", "step", "resume"):
        status, body = http_request(monitor, "POST", f"/api/{action}", {"Host": where(monitor)})
        assert status == 409 and "read-only" in body["error"]
    client.say(b"still here\n", b"GOT:still here\n")


# -- top --------------------------------------------------------------------------------------


def test_top_redraws_the_table_until_ctrl_c(programs: list[ChildProcess]) -> None:
    _, monitor, _ = start_tutorial(programs)
    top: Any = pexpect.spawn(
        sys.executable, ["-m", "yieldio", "top", where(monitor), "--interval", "0.2"], env=python_env(), timeout=10
    )
    try:
        top.expect("tcp_server")
        top.expect("in recv_wait")
        top.expect("tcp_server")  # drawn again
        top.sendintr()
        top.expect(pexpect.EOF)
    finally:
        top.close(force=True)
    assert top.exitstatus == 0, top.before


def test_top_without_rich_says_which_extra_brings_it(programs: list[ChildProcess], tmp_path: Path) -> None:
    _, monitor, _ = start_tutorial(programs)
    (tmp_path / "rich.py").write_text("raise ImportError('rich is not installed here')\n")
    env = python_env()
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    done = subprocess.run(
        yieldio_command("top", where(monitor)), env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 1
    assert done.stderr == "yieldio top: rich is not installed: pip install 'yieldio[monitor]'\n"


# -- yieldio serve --monitor ------------------------------------------------------------------


def serve_monitored(serve_process: ProcessServers, *args: str) -> tuple[ServerProcess, tuple[str, int]]:
    server = serve_process("--monitor", "127.0.0.1:0", *args)
    return server, monitor_address(server)


def test_serve_lists_each_nc_connection_with_its_peer_where_shows_its_stack_cancel_closes_exactly_it(
    serve_process: ProcessServers, netcats: list[Netcat]
) -> None:
    server, monitor = serve_monitored(serve_process)
    for line in (b"first\n", b"second\n"):
        client = Netcat(server.address)
        netcats.append(client)
        client.say(line, b"GOT:" + line)
    first, second = netcats
    listed = yieldio_cli("ps", where(monitor))
    assert listed.returncode == 0, listed.stderr
    rows = {row[-1]: row for row in rows_of(listed.stdout).values() if row[1] == "echo_handler"}
    assert set(rows) == {first.local_address(), second.local_address()}, listed.stdout
    target = rows[first.local_address()]
    assert target[2].startswith("waiting to read fd ")

    stack = yieldio_cli("where", where(monitor), target[0])
    assert stack.returncode == 0, stack.stderr
    lines = stack.stdout.splitlines()
    assert lines[0] == f"task {target[0]} echo_handler {first.local_address()}: {target[2]}"
    assert any(line.strip().startswith("yield") for line in lines[1:]) and "servers/echo.py" in stack.stdout

    cancelled = yieldio_cli("cancel", where(monitor), target[0])
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == f"cancelled task {target[0]} echo_handler {first.local_address()}\n"
    first.wait_closed_by_server()
    server.wait_log(f"connection closed {first.local_address()}".encode())
    second.say(b"unharmed\n", b"GOT:unharmed\n")
    assert second.connection().status == "ESTABLISHED"
    after = rows_of(yieldio_cli("ps", where(monitor)).stdout)
    assert [row[-1] for row in after.values() if row[1] == "echo_handler"] == [second.local_address()]
    assert server.stop(signal.SIGTERM) == 0


def test_serve_monitor_port_alone_is_loopback_and_a_busy_port_is_one_line(serve_process: ProcessServers) -> None:
    server = serve_process("--monitor", "0")
    host, _ = monitor_address(server)
    assert host == "127.0.0.1"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        done = run_serve("--monitor", f"127.0.0.1:{busy}")
    assert done.returncode == 1
    assert done.stderr == f"yieldio: monitor: cannot listen on 127.0.0.1:{busy}: Address already in use\n"


def test_with_workers_each_answers_on_a_port_of_its_own_says_which_it_is_and_where_the_others_are(
    serve_process: ProcessServers, netcats: list[Netcat]
) -> None:
    server = serve_process("--workers", "2", "--monitor", "127.0.0.1:0")
    server.wait_log(MONITOR_AT, count=2)
    monitors = [(host.decode(), int(port)) for host, port in MONITOR_AT.findall(server.output())]
    assert len(set(monitors)) == 2
    states = [http_request(monitor, "GET", "/api/state", {"Host": where(monitor)})[1] for monitor in monitors]
    children = {child.pid for child in server.ps.children()}
    assert [state["worker"] for state in states] == ["1 of 2", "2 of 2"]
    assert {state["pid"] for state in states} <= children and states[0]["pid"] != states[1]["pid"]
    assert all(state["workers"] == [where(monitor) for monitor in monitors] for state in states)
    listed = yieldio_cli("ps", where(monitors[0]))
    assert listed.stdout.splitlines()[:2] == [
        f"{where(monitors[0])}: pid {states[0]['pid']}, worker 1 of 2, {states[0]['program']}",
        f"the other workers' monitors: {where(monitors[1])}",
    ]

    client = Netcat(server.address)
    netcats.append(client)
    client.say(b"which worker?\n", b"GOT:which worker?\n")
    peers = [
        [task["peer"] for task in http_request(m, "GET", "/api/state", {"Host": where(m)})[1]["tasks"]]
        for m in monitors
    ]
    assert sum(peers_of_one.count(client.local_address()) for peers_of_one in peers) == 1  # in one worker, once

    # a worker that dies is replaced in its slot: the same port answers, from the new process
    os.kill(states[0]["pid"], signal.SIGKILL)
    server.wait_log(re.compile(rb"worker %d exited .* restarting it" % states[0]["pid"]))
    server.wait_log(re.compile(rb"worker \d+ started"), count=3)
    replaced = yieldio_cli("ps", where(monitors[0]))
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stdout.startswith(f"{where(monitors[0])}: pid ") and ", worker 1 of 2," in replaced.stdout
    assert f"pid {states[0]['pid']}," not in replaced.stdout


# -- what a page costs ------------------------------------------------------------------------


class EveryEvent(LiveFeed):
    """Counts the same events as the feed, never resting."""

    def _add(self, event: str, task: yieldio.Task, detail: Any) -> None:
        self.seq += 1


def test_the_pages_feed_keeps_every_event_at_a_learners_pace_and_bursts_of_them_under_load() -> None:
    kernel = Kernel()
    pages = [True]
    feed = LiveFeed(kernel, wanted=lambda: pages[0])
    every = EveryEvent(kernel, wanted=lambda: True)

    async def spin(turns: int) -> None:
        for _ in range(turns):
            await yieldio.sleep(0)

    async def main() -> tuple[int, float | None, int, float | None]:
        every.attach()
        feed.attach()
        await (await yieldio.spawn(spin(10))).join()
        calm = (feed.seq - every.seq, feed.busy)
        await (await yieldio.spawn(spin(20_000))).join()  # tens of thousands of events a second
        busy = feed.busy
        pages[0] = False  # the page closes: the feed does not come back from its rest
        await yieldio.sleep(1.2)
        return (*calm, feed.seq, busy)

    calm_seq, calm_busy, seq, busy = kernel.run(main)
    assert calm_busy is None and calm_seq == 0  # every event recorded
    assert busy is not None and busy > 2000
    assert seq < 2 * 20_000 / 4, seq  # bursts only: most of the 40,000 events were not recorded
    assert feed not in kernel.instruments
