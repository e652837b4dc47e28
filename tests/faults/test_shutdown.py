"""SIGTERM under load: what the server had received is echoed, then it exits 0 within 5 s.

"Received" is measured as in tests/test_cli.py: a client's bytes sent minus
its SIOCOUTQ (bytes the server's kernel has not acknowledged yet) is a lower
bound of what the server had received when the signal was sent.
"""

from __future__ import annotations

import contextlib
import os
import random
import selectors
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest

from ..harness import MiB, ProcessServers, connect, record, roundtrip, send_until_stalled, unacked

EXIT_BOUND = 5.0


@dataclass
class Flow:
    sock: socket.socket
    payload: bytes  # what this client sent (the server's reply must be a prefix of it)
    received_by_server: int = 0
    reply: bytearray = field(default_factory=bytearray)
    ended: str = ""


def read_all_until_eof(flows: list[Flow], timeout: float) -> None:
    """Read every flow concurrently until EOF (or reset); a client that has not half-closed closes after EOF."""
    end = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for flow in flows:
            flow.sock.setblocking(False)
            sel.register(flow.sock, selectors.EVENT_READ, flow)
        while sel.get_map():
            left = end - time.monotonic()
            assert left > 0, [(len(f.reply), f.received_by_server, f.ended) for f in flows]
            for key, _ in sel.select(left):
                flow = key.data
                try:
                    chunk = flow.sock.recv(MiB)
                except BlockingIOError:
                    continue
                except ConnectionError as error:
                    chunk, flow.ended = b"", type(error).__name__
                if chunk:
                    flow.reply += chunk
                    continue
                flow.ended = flow.ended or "EOF"
                sel.unregister(flow.sock)
                flow.sock.close()


class Streamer(threading.Thread):
    """Load: sends a stream and reads its echo at the same time, until the server ends the connection."""

    def __init__(self, address: tuple[str, int], payload: bytes) -> None:
        super().__init__(name="streamer", daemon=True)
        self.sock = connect(address)
        self.payload = payload
        self.sent = 0
        self.reply = bytearray()
        self.ended = ""
        self.flowing = threading.Event()  # set once a first MiB has come back

    def run(self) -> None:
        sock, view = self.sock, memoryview(self.payload)
        sock.setblocking(False)
        end = time.monotonic() + 30
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            try:
                while time.monotonic() < end:
                    for _, events in sel.select(1):
                        if events & selectors.EVENT_WRITE:
                            with contextlib.suppress(BlockingIOError):
                                self.sent += sock.send(view[self.sent : self.sent + 16384])
                            if self.sent == len(view):
                                sel.modify(sock, selectors.EVENT_READ)
                        if events & selectors.EVENT_READ:
                            try:
                                chunk = sock.recv(MiB)
                            except BlockingIOError:
                                continue
                            if not chunk:
                                self.ended = "EOF"
                                return
                            self.reply += chunk
                            if len(self.reply) >= MiB:
                                self.flowing.set()
                self.ended = "timeout"
            except ConnectionError as error:
                self.ended = type(error).__name__
            finally:
                sock.close()


@pytest.mark.timeout(60)
def test_sigterm_under_load_echoes_in_flight_requests_and_exits_0(serve_process: ProcessServers) -> None:
    server = serve_process("--prefix", "")
    stream = os.urandom(48 * MiB)
    streamers = [Streamer(server.address, stream) for _ in range(4)]
    for s in streamers:
        s.start()
    # request/response clients, each with its last request in flight when the signal comes
    flows: list[Flow] = []
    for _ in range(12):
        sock = connect(server.address)
        for _ in range(5):
            message = os.urandom(random.randint(1, 8192))
            roundtrip(sock, message, message)
        last = os.urandom(random.randint(1, 8192))
        flows.append(Flow(sock, last))
    idle = [Flow(connect(server.address), b"") for _ in range(3)]
    for s in streamers:
        assert s.flowing.wait(10), "a streaming client never got going"
    for flow in flows:
        flow.sock.sendall(flow.payload)
    # wait until the server's kernel has acknowledged every last request (SIOCOUTQ drops to 0)
    end = time.monotonic() + 5
    while any(unacked(flow.sock) for flow in flows) and time.monotonic() < end:
        time.sleep(0.005)  # polling a kernel counter; bounded
    for i, flow in enumerate(flows):
        flow.received_by_server = len(flow.payload) - unacked(flow.sock)
        if i % 2:
            flow.sock.shutdown(socket.SHUT_WR)  # half of them have said their last word
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    read_all_until_eof(flows + idle, timeout=10)
    rc = server.proc.wait(10)
    exit_s = time.monotonic() - signalled
    for s in streamers:
        s.join(10)

    for flow in flows:
        assert flow.ended == "EOF", flow.ended
        assert bytes(flow.reply) == flow.payload[: len(flow.reply)], "echo corrupted"
        assert len(flow.reply) >= flow.received_by_server, (len(flow.reply), flow.received_by_server)
    assert sum(f.received_by_server for f in flows) == sum(len(f.payload) for f in flows), "not all acknowledged"
    for flow in idle:
        assert flow.ended == "EOF" and not flow.reply
    for s in streamers:
        assert s.ended in ("EOF", "ConnectionResetError", "BrokenPipeError"), s.ended
        assert bytes(s.reply) == stream[: len(s.reply)], "a streamed echo was corrupted"
    record(
        "sigterm_under_load",
        streaming_clients=len(streamers),
        streamed_mib_before_end=round(sum(len(s.reply) for s in streamers) / MiB, 1),
        in_flight_clients=len(flows),
        in_flight_bytes_received_by_server=sum(f.received_by_server for f in flows),
        in_flight_bytes_echoed=sum(len(f.reply) for f in flows),
        exit_code=rc,
        exit_seconds_after_sigterm=round(exit_s, 3),
    )
    assert rc == 0
    assert exit_s < EXIT_BOUND
    log = server.text()
    assert "SIGTERM received" in log and "stopped" in log
    assert "Traceback" not in log and " ERROR " not in log


@pytest.mark.timeout(60)
def test_sigterm_echoes_everything_received_to_clients_that_read_a_moment_later(serve_process: ProcessServers) -> None:
    server = serve_process("--prefix", "")
    payload = os.urandom(48 * MiB)
    flows = []
    for _i in range(4):
        sock = connect(server.address)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        sent = send_until_stalled(sock, payload)  # every buffer between us and the server is full
        assert sent < len(payload)
        flow = Flow(sock, payload[:sent])
        flow.received_by_server = sent - unacked(sock)
        flows.append(flow)
    for flow in flows[::2]:
        flow.sock.shutdown(socket.SHUT_WR)
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    # These clients react to the shutdown a moment later: a second after the server has said it is
    # shutting down. That delay is the scenario, not a synchronisation: it is well inside the
    # DRAIN_SECONDS (3 s) the server gives a cancelled connection to flush what it had received.
    server.wait_log(b"SIGTERM received")
    time.sleep(1.0)
    read_all_until_eof(flows, timeout=10)
    rc = server.proc.wait(10)
    exit_s = time.monotonic() - signalled
    record(
        "sigterm_slow_readers",
        clients=len(flows),
        received_by_server=[f.received_by_server for f in flows],
        echoed=[len(f.reply) for f in flows],
        exit_seconds_after_sigterm=round(exit_s, 3),
    )
    for flow in flows:
        assert bytes(flow.reply) == flow.payload[: len(flow.reply)], "echo corrupted"
    assert rc == 0 and exit_s < EXIT_BOUND
    lost = [f.received_by_server - len(f.reply) for f in flows if len(f.reply) < f.received_by_server]
    assert not lost, f"bytes received before SIGTERM but never echoed, per client: {lost}"
