"""``yieldio serve --workers N`` as a pod runs it: one scrape for every worker, the port held, a clean exit.

- ``--metrics`` with ``--workers``: a scrape shows the sum of what every worker served, exact at the time
  of the scrape (connections are opened until both workers hold one, so both served some), and a worker
  killed and restarted takes nothing back (the next scrape is not lower; traffic after it adds up).
- The port is held by the parent for as long as the server runs: with the parent stopped (SIGSTOP)
  and every worker killed, another program still cannot bind it, and once the parent goes on the
  replacements serve on it.
- A second SIGTERM (during the workers' drain, or once a single process has said ``stopped``) ends it
  with exit status 0, not by the signal.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import urllib.request

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .harness import ProcessServers, ServerProcess, connect, exchange, recv_exactly, serve_command

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="SO_REUSEPORT needed")

METRICS = re.compile(rb"metrics on http://127\.0\.0\.1:(\d+)/metrics")
Samples = dict[tuple[str, str | None], float]


def scrape(port: int) -> Samples:
    """GET /metrics as Prometheus reads it: every sample by name and ``listener`` label."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, sample.labels.get("listener")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def workers_of(server: ServerProcess, count: int, timeout: float = 10.0) -> list[psutil.Process]:
    """The server's ``count`` workers once each has its slot's TCP socket listening (the metrics process aside)."""
    end = time.monotonic() + timeout
    while True:
        try:
            found = [
                child
                for child in server.ps.children()
                if any(c.status == psutil.CONN_LISTEN and c.laddr[1] == server.port for c in child.net_connections())
            ]
        except psutil.Error:
            found = []  # one ended while we looked: look again
        if len(found) == count:
            return found
        assert time.monotonic() < end, f"{len(found)} workers listening, {count} wanted"
        time.sleep(0.02)  # polling the process table: a worker logs nothing when it is ready; bounded


def owner(workers: list[psutil.Process], client: socket.socket) -> int:
    """The pid of the worker holding the server's end of ``client``'s connection."""
    port = client.getsockname()[1]
    for worker in workers:
        if any(c.raddr and c.raddr[1] == port for c in worker.net_connections("tcp")):
            return worker.pid
    raise AssertionError(f"no worker holds the connection from port {port}")


def spread_connections(server: ServerProcess, workers: list[psutil.Process]) -> list[socket.socket]:
    """Connections, each with one round trip done, until every worker holds at least one."""
    clients: list[socket.socket] = []
    owners: set[int] = set()
    while len(owners) < len(workers):
        assert len(clients) < 64, f"64 connections, all to the workers {owners}"
        client = connect(server.address)
        text = b"conn %d\n" % len(clients)
        client.sendall(text)
        assert recv_exactly(client, len(text) + 4) == b"GOT:" + text
        clients.append(client)
        owners.add(owner(workers, client))
    return clients


def close_all_and_wait(server: ServerProcess, clients: list[socket.socket]) -> None:
    for client in clients:
        port = client.getsockname()[1]
        client.close()
        server.wait_log(b"connection closed 127.0.0.1:%d\n" % port)


def udp_round_trips(address: tuple[str, int], datagrams: list[bytes]) -> None:
    """Each datagram from a socket of its own (the system spreads them over the workers by address)."""
    for datagram in datagrams:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.connect(address)
            client.send(datagram)
            assert client.recv(65535) == b"GOT:" + datagram


def test_one_scrape_counts_every_workers_traffic_and_never_goes_back(serve_process: ProcessServers) -> None:
    server = serve_process.launch(
        serve_command(
            "--workers", "2", "--listen", "tcp://127.0.0.1:0", "--listen", "udp://127.0.0.1:0",
            "--metrics", "127.0.0.1:0",
        )
    )  # fmt: skip
    tcp, udp = server.wait_listeners(2)
    server.port = int(tcp.rpartition(":")[2])
    udp_address = ("127.0.0.1", int(udp.rpartition(":")[2]))
    metrics = int(server.wait_log(METRICS).group(1))
    workers = workers_of(server, 2)

    clients = spread_connections(server, workers)
    sent = sum(len(b"conn %d\n" % i) for i in range(len(clients)))
    close_all_and_wait(server, clients)
    datagrams = [b"datagram %d" % i for i in range(12)]
    udp_round_trips(udp_address, datagrams)
    first = scrape(metrics)
    assert first[("yieldio_connections_accepted_total", tcp)] == len(clients)
    assert first[("yieldio_connections_open", tcp)] == 0
    assert first[("yieldio_received_bytes_total", tcp)] == sent
    assert first[("yieldio_sent_bytes_total", tcp)] == sent + 4 * len(clients)
    assert first[("yieldio_datagrams_received_total", udp)] == len(datagrams)
    assert first[("yieldio_datagrams_sent_total", udp)] == len(datagrams)
    assert first[("yieldio_received_bytes_total", udp)] == sum(map(len, datagrams))
    assert first[("yieldio_sent_bytes_total", udp)] == sum(map(len, datagrams)) + 4 * len(datagrams)

    # a worker dies and is replaced: what it had counted stays counted
    victim = workers[0]
    victim.kill()
    server.wait_log(b"worker %d exited (killed by SIGKILL)" % victim.pid)
    replaced = workers_of(server, 2)
    assert victim.pid not in {worker.pid for worker in replaced}
    assert scrape(metrics) == first

    more = spread_connections(server, replaced)
    more_sent = sum(len(b"conn %d\n" % i) for i in range(len(more)))
    close_all_and_wait(server, more)
    after = scrape(metrics)
    assert after[("yieldio_connections_accepted_total", tcp)] == len(clients) + len(more)
    assert after[("yieldio_received_bytes_total", tcp)] == sent + more_sent
    assert after[("yieldio_sent_bytes_total", tcp)] == sent + more_sent + 4 * (len(clients) + len(more))
    assert after[("yieldio_datagrams_received_total", udp)] == len(datagrams)
    assert server.stop(signal.SIGTERM, timeout=15) == 0
    assert b"Traceback" not in server.output()


def test_the_parent_holds_the_port_while_no_worker_does(serve_process: ProcessServers) -> None:
    server = serve_process("--workers", "2")
    workers = workers_of(server, 2)
    os.kill(server.pid, signal.SIGSTOP)  # the supervisor can restart nothing meanwhile
    try:
        for worker in workers:
            worker.kill()
        end = time.monotonic() + 10
        while not all(worker.status() == psutil.STATUS_ZOMBIE for worker in workers):  # dead, sockets closed
            assert time.monotonic() < end, "the workers did not die"
            time.sleep(0.01)  # the stopped parent cannot reap them: polling their state, bounded
        with socket.socket() as intruder:
            with pytest.raises(OSError) as refused:
                intruder.bind(server.address)
            assert refused.value.errno == 98, refused.value  # EADDRINUSE: the parent's sockets hold it
    finally:
        os.kill(server.pid, signal.SIGCONT)
    workers_of(server, 2)
    with connect(server.address) as client:
        assert exchange(client, b"still here\n") == b"GOT:still here\n"
    assert server.stop(signal.SIGTERM, timeout=15) == 0


def test_a_second_sigterm_while_the_workers_drain_ends_with_status_0(serve_process: ProcessServers) -> None:
    server = serve_process("--workers", "2")
    workers_of(server, 2)
    # A client that sends and never reads: its worker's drain owes it echoes it cannot send, and waits
    # (DRAIN_SECONDS). A single short line was not enough: echoed before the SIGTERM came, it left
    # nothing owed, and both workers could exit before the second SIGTERM was sent.
    owed = socket.socket()
    owed.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    owed.connect(server.address)
    owed.sendall(b"unread\n")
    server.wait_log(b"connection from 127.0.0.1:%d" % owed.getsockname()[1])
    owed.setblocking(False)
    chunk = b"x" * 65536
    for _ in range(10_000):  # until the kernel takes no more: the server's echoes back up to here
        try:
            owed.send(chunk)
        except BlockingIOError:
            break
    else:
        pytest.fail("the server kept reading what it could not echo")
    server.proc.send_signal(signal.SIGTERM)
    server.wait_log(b"SIGTERM received: stopping 2 workers")
    server.proc.send_signal(signal.SIGTERM)
    try:
        assert server.proc.wait(15) == 0, server.tail()
    finally:
        owed.close()
    assert b"SIGTERM again: stopping the workers now" in server.output()


def test_sigterm_after_stopped_ends_with_status_0(serve_process: ProcessServers) -> None:
    server = serve_process()
    server.proc.send_signal(signal.SIGTERM)
    server.wait_log(b"INFO stopped\n")
    end = time.monotonic() + 15
    while server.proc.poll() is None:  # SIGTERM again and again until it has exited: none may kill it
        assert time.monotonic() < end, "it did not exit"
        server.proc.send_signal(signal.SIGTERM)  # Popen checks that it has not reaped the process
        time.sleep(0.001)
    assert server.proc.returncode == 0, server.tail()


def test_sigterm_as_soon_as_it_says_it_listens_stops_it_cleanly(serve_process: ProcessServers) -> None:
    for _ in range(15):  # the line comes just before the kernel's own handlers are in place
        server = serve_process()  # returns as it reads the "listening on" line
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0, server.tail()
        server.wait_log(b"INFO stopped\n")
