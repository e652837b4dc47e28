"""--workers N: processes sharing the port with SO_REUSEPORT, supervised by the parent."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from .harness import ChildProcess, ProcessServers, ServerProcess, connect, exchange


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (the SigCgt mask of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def _ready_workers(server: ServerProcess, count: int, timeout: float = 10.0) -> list[psutil.Process]:
    """Wait until the server runs ``count`` workers, each listening on its port and catching SIGTERM.

    A worker logs nothing when it is ready, so this polls the process table. Ready matters: a worker
    that doesn't listen yet gets no connection (none at all, if no worker listens), and one that doesn't
    catch SIGTERM yet would be killed by it instead of shutting down gracefully.
    """
    end = time.monotonic() + timeout
    while True:
        workers = server.ps.children()
        try:
            ready = [
                w
                for w in workers
                if _catches(w.pid, signal.SIGTERM)
                and any(c.laddr.port == server.port for c in w.net_connections("tcp") if c.status == psutil.CONN_LISTEN)
            ]
        except (psutil.Error, OSError):
            ready = []  # a worker ended while we looked: look again
        if len(workers) == len(ready) == count:
            return workers
        assert time.monotonic() < end, f"{len(ready)} of {len(workers)} workers ready, {count} wanted"
        time.sleep(0.02)  # polling the process table; bounded by the deadline


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _echo(server: ServerProcess, text: bytes) -> bytes:
    with connect(server.address) as sock:
        return exchange(sock, text)


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="SO_REUSEPORT needed")
def test_workers_share_the_port_restart_and_stop_on_sigterm(serve_process: ProcessServers) -> None:
    server = serve_process("--workers", "3")
    workers = _ready_workers(server, 3)
    for i in range(30):  # spread across the workers by the kernel's hash
        assert _echo(server, b"n%d" % i) == b"GOT:n%d" % i
    victim = workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    server.wait_log(b"worker %d exited (killed by SIGKILL)" % victim.pid)
    server.wait_log(b"restarting it")
    replaced = _ready_workers(server, 3)
    assert victim.pid not in {w.pid for w in replaced}
    for i in range(30):
        assert _echo(server, b"m%d" % i) == b"GOT:m%d" % i
    assert server.stop(signal.SIGTERM, timeout=15) == 0
    log = server.output()
    assert log.count(b"SIGTERM received: shutting down") == 3
    assert b"Traceback" not in log
    assert all(_gone(w) for w in replaced)


CRASHING_WORKER = """
import logging, sys
from yieldio.servers.workers import supervise

def work(slot, ready) -> int:
    raise RuntimeError("worker bug")

logging.basicConfig(level="INFO", stream=sys.stderr)
sys.exit(supervise(1, work))
"""


def test_a_crashing_worker_logs_its_traceback_and_is_restarted() -> None:
    supervisor = ChildProcess([sys.executable, "-c", CRASHING_WORKER])
    try:
        supervisor.wait_log(re.compile(rb"worker (\d+) crashed\nTraceback[^\n]*\n(.*\n)*?RuntimeError: worker bug\n"))
        supervisor.wait_log(re.compile(rb"worker \d+ exited \(exit status 1\) after [\d.]+s: restarting it"))
        status = supervisor.stop(signal.SIGTERM)
    finally:
        supervisor.kill()
    assert status == 1, supervisor.tail()  # SIGTERM stops it, and it reports that its workers failed
