"""--workers N: processes sharing the port with SO_REUSEPORT, supervised by the parent."""

from __future__ import annotations

import os
import signal
import socket
import time

import psutil
import pytest

from .harness import ProcessServers, ServerProcess, connect, exchange


def _children(pid: int, count: int, timeout: float = 10.0) -> list[psutil.Process]:
    end = time.monotonic() + timeout
    while True:
        kids = psutil.Process(pid).children()
        if len(kids) == count or time.monotonic() > end:
            return kids
        time.sleep(0.05)  # polling the process table until the restart happened; bounded


def _echo(server: ServerProcess, text: bytes) -> bytes:
    with connect(server.address) as sock:
        return exchange(sock, text)


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="SO_REUSEPORT needed")
def test_workers_share_the_port_restart_and_stop_on_sigterm(serve_process: ProcessServers) -> None:
    server = serve_process("--workers", "3")
    workers = _children(server.pid, 3)
    assert len(workers) == 3
    for i in range(30):  # spread across the workers by the kernel's hash
        assert _echo(server, b"n%d" % i) == b"GOT:n%d" % i
    victim = workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    server.wait_log(b"worker %d exited (killed by SIGKILL)" % victim.pid)
    server.wait_log(b"restarting it")
    replaced = _children(server.pid, 3)
    assert len(replaced) == 3 and victim.pid not in {w.pid for w in replaced}
    for i in range(30):
        assert _echo(server, b"m%d" % i) == b"GOT:m%d" % i
    assert server.stop(signal.SIGTERM, timeout=15) == 0
    log = server.output()
    assert log.count(b"SIGTERM received: shutting down") == 3
    assert b"Traceback" not in log
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in replaced)
