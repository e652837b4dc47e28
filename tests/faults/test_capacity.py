"""Running out of room: 5,000 simultaneous connections, and a server starved of descriptors (EMFILE)."""

from __future__ import annotations

import itertools
import re
import socket
import time

import pytest

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


@pytest.mark.timeout(60)
def test_emfile_pauses_quietly_serves_the_connected_and_recovers(serve_process: ProcessServers) -> None:
    limit = 64
    server = serve_process(nofile=limit)  # INFO, so each accepted connection is logged with its port
    waiting_extra = 40
    clients = [connect(server.address) for _ in range(limit + waiting_extra)]  # the rest wait in the backlog
    server.wait_log(PAUSING)
    log = server.output()
    assert b"Too many open files" in log
    before_pause = log[: log.index(PAUSING)]
    accepted_ports = {int(port) for port in ACCEPTED.findall(before_pause)}
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
    # ...and the retrying costs next to nothing: measure the server's CPU over a window of its back-off
    window = 1.5
    cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
    time.sleep(window)  # the measurement window itself; nothing is being waited for
    cpu_used = server.cpu_seconds() - cpu_before  # user + system, in clock ticks of 10 ms
    cpu_share = cpu_used / (time.monotonic() - wall_before)
    pausing_warnings = server.count(PAUSING)
    assert server.alive()

    # one client leaves: its descriptor frees, and the server accepts again at once, by itself...
    freed = time.monotonic()
    accepted.pop().close()
    server.wait_log(RECOVERED)
    resumed_after = time.monotonic() - freed
    # ...and serves what had been queued
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
    record(
        "emfile",
        nofile_limit=limit,
        clients=len(clients),
        accepted_before_pause=len(accepted),
        server_cpu_percent_while_paused=round(100 * cpu_share, 2),
        server_cpu_seconds_in_window=round(cpu_used, 3),
        window_seconds=window,
        pausing_warnings_during_window=pausing_warnings,
        pause_episodes=events.count(b"accept failed ("),
        resumed_seconds_after_a_descriptor_was_freed=round(resumed_after, 3),
    )
    assert pausing_warnings == 1, "the 'pausing' warning must be logged once, not once per retry"
    assert cpu_share < 0.30, f"server used {100 * cpu_share:.1f}% of a core while waiting for descriptors"
    # one warning per episode: pausing and recovering alternate, and it ends recovered
    assert events[0] == b"accept failed (" and events[-1] == b"accepting again"
    assert all(a != b for a, b in itertools.pairwise(events)), events
    server.assert_healthy()
