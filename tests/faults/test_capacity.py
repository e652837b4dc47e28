"""Running out of room: 5,000 simultaneous connections, --max-clients and --backlog, and a server starved of
descriptors (EMFILE) that accepts again the moment one of its connections closes."""

from __future__ import annotations

import itertools
import re
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..harness import (
    Bystander,
    MiB,
    ProcessServers,
    connect,
    fresh_client_works,
    raise_nofile,
    record,
    recv_exactly,
    roundtrip,
)

CONNECTIONS = 5000


@pytest.mark.flagship  # under CI, a machine that cannot hold 5,000 connections fails this (conftest.py)
@pytest.mark.timeout(120)
def test_5000_simultaneous_connections_each_echoed(serve_process: ProcessServers) -> None:
    limit = raise_nofile(CONNECTIONS + 1000)  # this process holds every client; the server inherits the limit
    if limit < CONNECTIONS + 100:
        pytest.skip(f"RLIMIT_NOFILE is {limit} and cannot be raised (hard limit)")
    server = serve_process("--log-level", "warning")
    baseline = server.idle_baseline()
    clients: list[socket.socket] = []
    try:
        started = time.monotonic()
        clients.extend(socket.create_connection(server.address, timeout=30) for _ in range(CONNECTIONS))
        connect_s = time.monotonic() - started
        # every connection is open at once before any of them says anything
        started = time.monotonic()
        for i, c in enumerate(clients):
            c.sendall(b"client-%05d" % i)
        echoed = sum(recv_exactly(c, 16) == b"GOT:client-%05d" % i for i, c in enumerate(clients))
        echo_s = time.monotonic() - started
        held = server.fds() - baseline
        rss_held = server.rss()
        # and each one is still usable: a second message on every tenth connection
        for i in range(0, CONNECTIONS, 10):
            roundtrip(clients[i], b"again-%05d" % i, b"GOT:again-%05d" % i)
    finally:
        for c in clients:
            c.close()
    after = server.wait_fds(baseline)
    record(
        "connections_5000",
        connections=CONNECTIONS,
        echoed_correctly=echoed,
        server_descriptors_while_held=held,
        server_rss_mib_while_held=round(rss_held / MiB, 1),
        connect_seconds=round(connect_s, 2),
        echo_seconds=round(echo_s, 2),
        server_descriptors_baseline=baseline,
        server_descriptors_after_close=after,
    )
    assert echoed == CONNECTIONS
    assert held >= CONNECTIONS, "the server did not hold every connection at once"
    assert after == baseline, f"descriptors leaked: {after} open after every client left, {baseline} before"
    server.assert_healthy()


ACCEPTED = re.compile(rb"connection from 127\.0\.0\.1:(\d+)")
PAUSING = b"accept failed ("
RECOVERED = b"accepting again"
METRICS = re.compile(rb"metrics on http://127\.0\.0\.1:(\d+)/metrics")


def scrape(port: int) -> dict[str, float]:
    """The server's metrics of its one echo listener, as Prometheus would read them: sample name -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("listener", "").startswith("127.0.0.1:")
    }


def listen_queue(port: int) -> tuple[int, int]:
    """(connections waiting to be accepted, the backlog) of the listening TCP socket on ``port``, as ss shows them."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10, check=True
    ).stdout.split()
    assert out[0] == "LISTEN", out
    return int(out[1]), int(out[2])  # for a listening socket, Recv-Q and Send-Q


@pytest.mark.timeout(60)
def test_max_clients_and_backlog_flags_hold_new_clients_until_one_leaves(serve_process: ProcessServers) -> None:
    assert shutil.which("ss"), "ss (iproute2) is needed to read the listen queue"
    server = serve_process("--max-clients", "2", "--backlog", "7", "--metrics", "127.0.0.1:0")
    metrics = int(server.wait_log(METRICS).group(1))
    assert listen_queue(server.port) == (0, 7)  # --backlog reached listen()
    served = [connect(server.address) for _ in range(2)]
    for i, c in enumerate(served):
        roundtrip(c, b"in %d" % i, b"GOT:in %d" % i)
    server.wait_log(b"2 clients connected (--max-clients): not accepting until one leaves")
    waiting = [connect(server.address) for _ in range(3)]  # each completes its handshake in the backlog
    for i, c in enumerate(waiting):
        c.sendall(b"waiting %d" % i)
    # the kernel holds them, ready to be accepted (connect() returns before the server's side has queued
    # its connection: the kernel's count, polled, as nothing says when it changes)
    end = time.monotonic() + 10
    while (queue := listen_queue(server.port)) != (3, 7):
        assert time.monotonic() < end, f"(queued, backlog) = {queue}, (3, 7) wanted"
        time.sleep(0.01)
    # Then two round trips on a client it serves: the server polls, finds its listener readable, runs what
    # waits for that (and what that starts) before it answers the second. A server that would accept a
    # waiting client has done so, and logged it, by then; this one must not have.
    for _ in range(2):
        roundtrip(served[1], b"meanwhile", b"GOT:meanwhile")
    assert listen_queue(server.port) == (3, 7)

    # each client that leaves lets exactly the next one in, in the order they came
    for i, c in enumerate(waiting):
        leaving = served.pop(0)
        gone = leaving.getsockname()[1]
        leaving.close()
        expected = b"GOT:waiting %d" % i
        assert recv_exactly(c, len(expected)) == expected
        served.append(c)
        accepted_at = server.wait_log(b"connection from 127.0.0.1:%d\n" % c.getsockname()[1]).start()
        closed_at = server.output().find(b"connection closed 127.0.0.1:%d\n" % gone)
        assert closed_at >= 0, f"waiting client {i} was accepted, and the client that left is not logged as gone"
        assert closed_at < accepted_at, f"waiting client {i} was accepted before a client left"
        assert listen_queue(server.port)[0] == len(waiting) - i - 1
    for c in served:
        c.close()
    server.wait_log(b"connection closed", count=5)
    samples = scrape(metrics)
    assert samples["yieldio_connections_accepted_total"] == 5
    assert samples["yieldio_connections_open"] == 0
    # --max-clients holding clients back is not an accept pause: that counts running out of descriptors
    assert samples["yieldio_accept_pauses_total"] == 0
    assert server.count(b"not accepting until one leaves") == 1 + len(waiting)  # after the first two, each newcomer
    server.assert_healthy()


@pytest.mark.timeout(60)
def test_emfile_pauses_quietly_serves_the_connected_and_recovers(serve_process: ProcessServers) -> None:
    limit = 64
    # --metrics: one descriptor more, counted in
    server = serve_process("--metrics", "127.0.0.1:0", nofile=limit)
    metrics = int(server.wait_log(METRICS).group(1))
    # A scrape first: then the endpoint's accept loop is waiting for its next scraper. (Out of descriptors,
    # accept() fails with EMFILE even with no connection waiting: its first attempt, if it came after the
    # clients below had taken every descriptor, would log a pause of its own.)
    assert scrape(metrics)["yieldio_accept_pauses_total"] == 0
    waiting_extra = 40
    clients = [connect(server.address) for _ in range(limit + waiting_extra)]  # the rest wait in the backlog
    server.wait_log(PAUSING)
    log = server.output()
    assert b"Too many open files" in log
    # the connections it holds (not logged yet: a connection is, once it has sent a byte), unchanged while
    # it pauses
    accepted_ports = {c.raddr[1] for c in server.ps.net_connections("tcp") if c.raddr}
    accepted = [c for c in clients if c.getsockname()[1] in accepted_ports]
    waiting = [c for c in clients if c.getsockname()[1] not in accepted_ports]
    assert 30 <= len(accepted) < limit, len(accepted)
    assert len(waiting) >= waiting_extra

    # while it cannot accept, the connections it holds are served...
    for i, c in enumerate(accepted):
        roundtrip(c, b"held %d" % i, b"GOT:held %d" % i)
    # ...the waiting clients can already send (the kernel queues it)...
    for i, c in enumerate(waiting):
        c.sendall(b"queued %d" % i)

    # ...and the retrying costs next to nothing: the server's CPU over windows of its back-off, with no
    # new warning in any (one per episode, not one per retry). Between windows, descriptors are freed:
    # each time one of its connections closes, the server accepts at once, not at its next retry.
    # Two close one after the other: the second once the server has closed its end of the first (in
    # the same step as it wakes its accept loop). Accepting at once, the server has accepted again
    # before it even sees the second close; a server that merely retried on its back-off (by then
    # 250 ms) would see both closes first, then accept (the test fails with it unless its retry falls
    # in the moment between the two closes, three times over). These are events in the server's log,
    # in order: no time bound.
    window = 0.6  # a back-off that has stopped doubling (50, 100, 200, 250 ms...) fills it
    cpu_used = wall = 0.0
    rounds = 3
    resumed_after = []
    for round_ in range(rounds):
        warnings = server.count(PAUSING)
        cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
        time.sleep(window)  # the measurement window itself; nothing is being waited for
        cpu_used += server.cpu_seconds() - cpu_before  # user + system, in clock ticks of 10 ms
        wall += time.monotonic() - wall_before
        assert server.count(PAUSING) == warnings, "the 'pausing' warning must be logged once, not once per retry"
        assert server.alive()

        first, second = accepted.pop(), accepted.pop()
        freed = time.monotonic()
        first_port, second_port = first.getsockname()[1], second.getsockname()[1]
        before = server.count(ACCEPTED)
        first.shutdown(socket.SHUT_WR)
        assert first.recv(1) == b""  # the server has closed its end: it has seen the first close
        second.close()
        first.close()
        server.wait_log(ACCEPTED, count=before + 2)  # a waiting client for each descriptor freed
        resumed_after.append(time.monotonic() - freed)
        log = server.output()
        first_closed = log.index(b"connection closed 127.0.0.1:%d\n" % first_port)
        second_closed = log.index(b"connection closed 127.0.0.1:%d\n" % second_port)
        resumed = log.index(RECOVERED, first_closed)
        assert resumed < second_closed, f"round {round_}: accepting resumed only at a retry, not at the close"
        assert log.index(PAUSING, resumed) < second_closed  # one descriptor, one client, out of them again
        server.wait_log(PAUSING, count=1 + 2 * (round_ + 1))  # and once more after the second close
    cpu_share = cpu_used / wall

    # every held client leaves: the queued clients are all accepted and served what they had sent
    for c in accepted:
        c.close()
    for i, c in enumerate(waiting):
        c.settimeout(10)
        expected = b"GOT:queued %d" % i
        assert recv_exactly(c, len(expected)) == expected
    fresh_client_works(server.address)
    bystander = Bystander(server.address)
    bystander.check()
    for c in waiting:
        c.close()
    bystander.close()

    events = re.findall(rb"accept failed \(|accepting again", server.output())
    samples = scrape(metrics)
    record(
        "emfile",
        nofile_limit=limit,
        clients=len(clients),
        accepted_before_pause=len(accepted) + 2 * rounds,
        server_cpu_percent_while_paused=round(100 * cpu_share, 2),
        server_cpu_seconds_in_windows=round(cpu_used, 3),
        window_seconds=window * rounds,
        pause_episodes=events.count(b"accept failed ("),
        accept_pauses_total=samples["yieldio_accept_pauses_total"],
        resumed_seconds_after_two_descriptors_were_freed=[round(t, 3) for t in resumed_after],
    )
    assert cpu_share < 0.30, f"server used {100 * cpu_share:.1f}% of a core while waiting for descriptors"
    # one warning per episode: pausing and recovering alternate, and it ends recovered
    assert events[0] == b"accept failed (" and events[-1] == b"accepting again"
    assert all(a != b for a, b in itertools.pairwise(events)), events
    # yieldio_accept_pauses_total counts the episodes: at least the first, and one after each round's close
    assert samples["yieldio_accept_pauses_total"] == events.count(b"accept failed (") >= 1 + 2 * rounds
    server.assert_healthy()
