"""A soak: 60 s of mixed load with connection churn; afterwards no descriptor leaked and RSS barely moved.

Load, from four client threads against one server (plain echo, idle timeout 2 s):

- three churn threads open short connections of five kinds: echo one message of 1 B..256 KiB and
  half-close; a few round trips then close; reset (SO_LINGER 0) mid-message; read part of the
  echo and leave; connect and close at once;
- one thread keeps 16 long connections doing round trips of 1 B..128 KiB the whole time, plus a few
  silent connections that the idle timeout must close (each reopened when it is).

Every echo that is read is checked byte for byte. The duration can be shortened for a quick local
run with YIELDIO_SOAK_SECONDS (the issue asks for 60).
"""

from __future__ import annotations

import os
import random
import selectors
import socket
import threading
import time
from collections import Counter

import pytest

from ..harness import MiB, ProcessServers, connect, exchange, record, recv_exactly, reset, roundtrip

SOAK_SECONDS = float(os.environ.get("YIELDIO_SOAK_SECONDS", "60"))
WARMUP_SECONDS = 5.0
IDLE_TIMEOUT = 2.0
RSS_GROWTH_BOUND = 10 * MiB
BLOCK = random.Random(1).randbytes(2 * MiB)  # payloads are slices of this


def payload(rng: random.Random, largest: int) -> bytes:
    size = int(2 ** rng.uniform(0, largest.bit_length() - 1))  # log-uniform: many small, some large
    start = rng.randrange(len(BLOCK) - size)
    return BLOCK[start : start + size]


class Load:
    def __init__(self, address: tuple[str, int], seed: int) -> None:
        self.address = address
        self.seed = seed
        self.stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self.bytes_checked = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._guard, args=(self.churn, i), name=f"churn {i}") for i in range(3)]
        self.threads.append(threading.Thread(target=self._guard, args=(self.long_lived, 9), name="long-lived"))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        assert not any(t.is_alive() for t in self.threads), "a load thread did not stop"

    def _guard(self, work, n: int) -> None:  # type: ignore[no-untyped-def]
        try:
            work(random.Random(self.seed * 100 + n))
        except BaseException as error:  # noqa: BLE001 - reported by the test
            with self.lock:
                self.failures.append(f"{threading.current_thread().name}: {error!r}")

    def _count(self, kind: str, checked: int = 0) -> None:
        with self.lock:
            self.counts[kind] += 1
            self.bytes_checked += checked

    def churn(self, rng: random.Random) -> None:
        kinds = ["echo", "echo", "round trips", "reset mid-message", "read part and leave", "connect and close"]
        while not self.stop.is_set():
            kind = rng.choice(kinds)
            sock = connect(self.address)
            try:
                if kind == "echo":
                    data = payload(rng, 256 * 1024)
                    reply = exchange(sock, data)
                    assert reply == data, f"echo of {len(data)} bytes came back as {len(reply)} different bytes"
                    self._count(kind, len(data))
                elif kind == "round trips":
                    checked = 0
                    for _ in range(rng.randint(1, 5)):
                        data = payload(rng, 16 * 1024)
                        roundtrip(sock, data, data)
                        checked += len(data)
                    self._count(kind, checked)
                elif kind == "reset mid-message":
                    sock.sendall(payload(rng, 64 * 1024))
                    reset(sock)
                    self._count(kind)
                elif kind == "read part and leave":
                    data = payload(rng, 128 * 1024)
                    sock.sendall(data[:65536])
                    part = min(len(data), 65536) // 2
                    if part:
                        assert recv_exactly(sock, part) == data[:part]
                    self._count(kind, part)
                else:
                    self._count(kind)
            finally:
                sock.close()

    def long_lived(self, rng: random.Random) -> None:
        socks = [connect(self.address) for _ in range(16)]
        pending: dict[socket.socket, tuple[bytes, bytearray]] = {}
        silent: dict[socket.socket, float] = {}
        with selectors.DefaultSelector() as sel:

            def send_next(sock: socket.socket) -> None:
                data = payload(rng, 128 * 1024)
                pending[sock] = (data, bytearray())
                sock.sendall(data)  # at most 128 KiB: fits the socket buffers, so sending before reading can't deadlock

            def open_silent() -> None:
                sock = socket.create_connection(self.address, timeout=10)
                silent[sock] = time.monotonic()
                sel.register(sock, selectors.EVENT_READ, "silent")

            for sock in socks:
                sel.register(sock, selectors.EVENT_READ, "long")
                send_next(sock)
            for _ in range(3):
                open_silent()
            try:
                while not self.stop.is_set():
                    for key, _ in sel.select(0.5):
                        ready = key.fileobj
                        assert isinstance(ready, socket.socket)
                        if key.data == "silent":
                            assert ready.recv(10) == b"", "a silent connection was sent data"
                            waited = time.monotonic() - silent.pop(ready)
                            assert waited < 2 * IDLE_TIMEOUT + 1.5, f"silent connection closed after {waited:.1f}s"
                            sel.unregister(ready)
                            ready.close()
                            self._count("silent closed by idle timeout")
                            open_silent()
                            continue
                        data, got = pending[ready]
                        chunk = ready.recv(MiB)
                        assert chunk, "a long connection was closed by the server"
                        got += chunk
                        if len(got) >= len(data):
                            assert got == data, "long connection: echo differs"
                            self._count("long round trip", len(data))
                            send_next(ready)
                    for since in silent.values():
                        assert time.monotonic() - since < 2 * IDLE_TIMEOUT + 1.5, "the idle timeout never came"
            finally:
                for sock in [*socks, *silent]:
                    sock.close()


@pytest.mark.timeout(150)
def test_soak_60s_mixed_load_with_churn_leaks_nothing(serve_process: ProcessServers) -> None:
    server = serve_process("--prefix", "", "--idle-timeout", str(IDLE_TIMEOUT), "--log-level", "warning")
    rss_cold = server.rss()

    # warm-up: the same traffic briefly, so what the server allocates once is allocated before the baseline
    warmup = Load(server.address, seed=1)
    warmup.start()
    warmup.stop.wait(WARMUP_SECONDS)  # the warm-up's duration
    warmup.finish()
    assert not warmup.failures, warmup.failures
    fds_before = server.idle_baseline()
    rss_before = server.rss()

    load = Load(server.address, seed=2)
    cpu_start, started = server.cpu_seconds(), time.monotonic()
    load.start()
    rss_peak, fds_peak = rss_before, fds_before
    rss_every_10s: list[float] = []
    while time.monotonic() - started < SOAK_SECONDS and not load.failures:
        load.stop.wait(1.0)  # sampling pace of the soak's duration
        rss = server.rss()
        rss_peak, fds_peak = max(rss_peak, rss), max(fds_peak, server.fds())
        if time.monotonic() - started >= 10 * (len(rss_every_10s) + 1):
            rss_every_10s.append(round(rss / MiB, 1))
        assert server.alive(), server.tail()
    load.finish()
    elapsed = time.monotonic() - started
    cpu_share = (server.cpu_seconds() - cpu_start) / elapsed

    # after the churn settles: no client socket left on the server's side
    fds_after = server.idle_baseline(timeout=2 * IDLE_TIMEOUT + 10)
    rss_after = server.rss()
    connections = sum(n for kind, n in load.counts.items() if kind != "long round trip") + 16
    record(
        "soak",
        seconds=round(elapsed, 1),
        connections=connections,
        connections_per_second=round(connections / elapsed),
        by_kind=dict(load.counts),
        mib_echoed_and_checked=round(load.bytes_checked / MiB, 1),
        server_cpu_percent=round(100 * cpu_share, 1),
        server_fds_before=fds_before,
        server_fds_peak=fds_peak,
        server_fds_after=fds_after,
        server_rss_cold_mib=round(rss_cold / MiB, 2),
        server_rss_before_mib=round(rss_before / MiB, 2),
        server_rss_peak_mib=round(rss_peak / MiB, 2),
        server_rss_every_10s_mib=rss_every_10s,
        server_rss_after_mib=round(rss_after / MiB, 2),
        server_rss_growth_mib=round((rss_after - rss_before) / MiB, 2),
        failures=len(load.failures),
    )
    assert not load.failures, load.failures[:10]
    assert elapsed >= SOAK_SECONDS
    assert fds_after == fds_before, f"descriptor leak: {fds_before} before, {fds_after} after"
    assert rss_after - rss_before < RSS_GROWTH_BOUND, f"RSS grew by {(rss_after - rss_before) / MiB:.1f} MiB"
    assert load.counts["silent closed by idle timeout"] >= 3
    server.assert_healthy()


@pytest.mark.timeout(90)
def test_connection_churn_with_a_long_idle_timeout_keeps_memory_bounded(serve_process: ProcessServers) -> None:
    # 30,000 short connections, never more than two open at once, with the idle timeout at 60 s
    server = serve_process("--idle-timeout", "60", "--log-level", "warning")
    with connect(server.address) as warm:
        roundtrip(warm, b"warm", b"GOT:warm")
    server.idle_baseline()
    rss_before = server.rss()
    target, done = 30_000, [0, 0]
    deadline = time.monotonic() + 60
    failures: list[str] = []  # reported here: a failed assert in a thread would fail nothing

    def churn(n: int) -> None:
        try:
            while done[n] < target // 2 and time.monotonic() < deadline:
                with socket.create_connection(server.address, timeout=10) as sock:
                    sock.sendall(b"x")
                    reply = recv_exactly(sock, 5)
                if reply != b"GOT:x":
                    failures.append(f"connection {done[n]} of thread {n}: {reply!r}")
                    return
                done[n] += 1
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            failures.append(f"connection {done[n]} of thread {n}: {error!r}")

    threads = [threading.Thread(target=churn, args=(n,), name=f"churn {n}") for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(70)
    assert not any(thread.is_alive() for thread in threads)
    assert not failures, failures
    assert sum(done) == target, f"only {sum(done)} connections in time"
    server.idle_baseline()  # every one of them is closed on the server's side too
    growth = server.rss() - rss_before
    record(
        "churn_with_idle_timeout_60s",
        connections=target,
        open_at_the_end=0,
        server_rss_growth_mib=round(growth / MiB, 1),
        bytes_retained_per_closed_connection=round(growth / target),
    )
    assert growth < 16 * MiB, f"RSS grew by {growth / MiB:.0f} MiB with no connection open"
    server.assert_healthy()
