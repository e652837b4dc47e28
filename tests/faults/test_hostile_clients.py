"""Clients that misbehave: resets mid-message, half-closes, vanishing during accept, binary junk, endless lines.

After each fault the server must go on serving, and a client that stays
connected through it (the bystander) must lose nothing.
"""

from __future__ import annotations

import os
import random
import socket

import pytest

from ..harness import (
    LISTENING,
    Bystander,
    MiB,
    ProcessServers,
    connect,
    exchange,
    fresh_client_works,
    record,
    recv_exactly,
    reset,
    send_until_stalled,
    serve_command,
    split_line_replies,
)


@pytest.mark.timeout(60)
def test_peer_reset_mid_message(serve_process: ProcessServers) -> None:
    server = serve_process()
    baseline = server.idle_baseline()
    bystander = Bystander(server.address)
    bystander.check()
    ports = []
    # 1. reset while the server is reading: half a message, then RST
    for _ in range(20):
        sock = connect(server.address)
        sock.sendall(os.urandom(random.randint(1, 200_000)))
        ports.append(sock.getsockname()[1])
        reset(sock)
    # 2. reset while the server is blocked writing to us (we never read, every buffer is full)
    for _ in range(3):
        sock = connect(server.address)
        assert send_until_stalled(sock, os.urandom(32 * MiB)) < 32 * MiB
        ports.append(sock.getsockname()[1])
        reset(sock)
    # 3. reset with an echo pending in our receive buffer
    for i in range(20):
        sock = connect(server.address)
        sock.sendall(b"unread reply %d" % i)
        ports.append(sock.getsockname()[1])
        reset(sock)
    for port in ports:
        server.wait_log(f"connection closed 127.0.0.1:{port}".encode())
    bystander.check()
    fresh_client_works(server.address)
    bystander.close()
    after = server.wait_fds(baseline)
    record("peer_reset", resets=len(ports), server_descriptors_before=baseline, server_descriptors_after=after)
    assert after == baseline
    server.assert_healthy()


@pytest.mark.timeout(60)
def test_half_close_still_gets_the_full_echo(serve_process: ProcessServers) -> None:
    server = serve_process("--prefix", "")
    bystander = Bystander(server.address, prefix=b"")
    sizes = [0, 1, 100, 65535, 65536, 65537, 1 * MiB, 4 * MiB + 3]
    for size in sizes:
        payload = os.urandom(size)
        with connect(server.address) as sock:
            reply = exchange(sock, payload)  # SHUT_WR after the last byte, read until EOF
        assert len(reply) == size and reply == payload, f"size {size}: got {len(reply)} bytes"
        bystander.check()
    # half-close before the echo of a big message has even started coming back
    payload = os.urandom(2 * MiB)
    with connect(server.address) as sock:
        sock.sendall(payload[: 256 * 1024])
        reply = exchange(sock, payload[256 * 1024 :])
    assert reply == payload
    # line framing: a partial last line is answered at the half-close
    lines = serve_process("--framing", "line")
    with connect(lines.address) as sock:
        assert exchange(sock, b"one\ntwo\nno newline") == b"GOT:one\nGOT:two\nGOT:no newline"
    bystander.check()
    bystander.close()
    server.assert_healthy()
    lines.assert_healthy()


@pytest.mark.timeout(60)
def test_connections_closed_during_accept(serve_process: ProcessServers) -> None:
    server = serve_process()
    baseline = server.idle_baseline()
    bystander = Bystander(server.address)
    bystander.check()
    # a burst: open many, then drop them all, most before the server got to accept them
    burst = [socket.create_connection(server.address, timeout=10) for _ in range(200)]
    for i, sock in enumerate(burst):
        if i % 3 == 0:
            reset(sock)
        elif i % 3 == 1:
            sock.close()
        else:
            sock.sendall(b"bye")
            sock.close()
    # and one at a time: connect and vanish at once, RST or FIN
    for i in range(200):
        sock = socket.create_connection(server.address, timeout=10)
        if i % 2:
            reset(sock)
        else:
            sock.close()
    bystander.check()
    # the accept queue is FIFO: once a new client is served, every connection before it was accepted
    fresh_client_works(server.address)
    after = server.wait_fds(baseline + 1)  # only the bystander is left
    accepted = server.count(b"connection from")
    server.wait_log(b"connection closed", count=accepted - 1)
    bystander.check()
    bystander.close()
    record(
        "closed_during_accept",
        connections=400,
        accepted_then_closed=accepted - 2,  # not the bystander, not the fresh client
        server_descriptors_before=baseline,
        server_descriptors_after=after - 1,
    )
    assert after == baseline + 1
    server.assert_healthy()


BINARY = (
    bytes(range(256)) * 16
    + b"\x00" * 1000
    + b"\xff\xfe\xfd"  # not UTF-8 at all
    + b"\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc"  # invalid sequences
    + b"\xed\xa0\x80\xed\xbf\xbf"  # UTF-8-encoded surrogates
    + b"\xc0\x80"  # overlong NUL
    + b"GOT:\r\n\x1b[2J"
)


@pytest.mark.timeout(60)
def test_binary_data_with_nul_and_invalid_utf8(serve_process: ProcessServers) -> None:
    plain = serve_process("--prefix", "")
    bystander = Bystander(plain.address, prefix=b"")
    with connect(plain.address) as sock:
        assert exchange(sock, BINARY) == BINARY
    payload = os.urandom(3 * MiB) + BINARY
    with connect(plain.address) as sock:
        assert exchange(sock, payload) == payload
    bystander.check()

    lines = serve_process("--framing", "line")
    records = [line + b"\n" for line in BINARY.split(b"\n")[:-1]] + [BINARY.rsplit(b"\n", 1)[1]]
    assert b"".join(records) == BINARY
    with connect(lines.address) as sock:
        reply = exchange(sock, BINARY)
    assert reply == b"".join(b"GOT:" + r for r in records)
    bystander.check()
    bystander.close()
    for server in (plain, lines):
        server.assert_healthy()


@pytest.mark.timeout(60)
def test_lines_far_over_max_line_are_answered_in_pieces(serve_process: ProcessServers) -> None:
    max_line = 1024
    server = serve_process("--framing", "line", "--max-line", str(max_line))
    bystander = Bystander(server.address)
    rss_before = server.rss()
    with connect(server.address) as sock:
        # no newline at all, yet it is answered as it comes, in max_line pieces
        body = bytes(random.choice(b"abcdefghij\x00\xff") for _ in range(10 * max_line))
        sock.sendall(body)
        assert recv_exactly(sock, 10 * (4 + max_line)) == b"".join(
            b"GOT:" + body[i : i + max_line] for i in range(0, len(body), max_line)
        )
        bystander.check()
        # a 4 MiB line, then short lines, then a partial one: nothing lost, no piece over max_line
        huge = os.urandom(4 * MiB + 17).replace(b"\n", b" ")
        tail = huge + b"\n" + b"short\n" + b"x" * (max_line - 1) + b"\n" + b"partial"
        reply = exchange(sock, tail)
    rss_after = server.rss()
    pieces = split_line_replies(reply, b"GOT:", max_line)
    assert b"".join(pieces) == tail
    assert all(0 < len(p) <= max_line for p in pieces)
    assert pieces[-4:] == [
        huge[-(len(huge) % max_line) :] + b"\n",
        b"short\n",
        b"x" * (max_line - 1) + b"\n",
        b"partial",
    ]
    bystander.check()
    bystander.close()
    record(
        "long_lines",
        max_line=max_line,
        line_mib=4,
        pieces=len(pieces),
        server_rss_growth_mib=round((rss_after - rss_before) / MiB, 2),
    )
    server.assert_healthy()


@pytest.mark.timeout(30)
def test_non_utf8_prefix_is_served_or_refused_in_one_line(serve_process: ProcessServers) -> None:
    # Either answer is fine: serve with the raw bytes as the prefix, or refuse in one readable line.
    server = serve_process.launch(serve_command("--prefix", b"\xff\x01"))
    if server.wait_until(lambda log: LISTENING.search(log) is not None, or_exit=True):
        server.wait_listening()
        with connect(server.address) as sock:
            sock.sendall(b"data")
            assert recv_exactly(sock, 6) == b"\xff\x01data"
        server.assert_healthy()
    else:
        assert server.proc.returncode not in (0, None)
        text = server.text().strip()
        assert "Traceback" not in text, text
        assert text.count("\n") == 0, text
