#!/usr/bin/env python3
"""The floor under any Python open-loop client: a bare epoll loop, no scheduler, no tasks.

Why: load_vs_loadgen.py compares ``yieldio load --rate`` with loadgen.c, and
yieldio's latencies come out higher. This separates what yieldio adds from
what any client written in Python pays on this machine: it sends on the same
schedule as ``loadgen --rate`` (request i overall at start + i/R, on
connection i mod N; a connection still waiting sends when its echo is back,
late), waits the way loadgen.c does (epoll_wait until about 1 ms before the
next send, then polls with a zero timeout), and counts latency from the
intended send time. It checks only each echo's length, keeps latencies in a
list, and has nothing else to do: what yieldio load does on top of this is
yieldio's; what this costs above loadgen.c is Python's.

It prints one JSON line in loadgen.c's result format (the fields
load_vs_loadgen.py reads). A benchmark tool, not a test::

    python benchmarks/python_floor.py --port P --rate 5000 [--conns 100] [--size 1024]
        [--warmup 1] [--duration 5] [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import select
import socket
import time

SPIN_S = 0.001  # wait in epoll until this close to the next send, then poll without waiting


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, default=100)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()

    socks = []
    poller = select.epoll()
    for _ in range(args.conns):
        sock = socket.create_connection((args.host, args.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        poller.register(sock.fileno(), select.EPOLLIN)
        socks.append(sock)
    index = {sock.fileno(): n for n, sock in enumerate(socks)}
    message = os.urandom(args.size)
    intended = [0.0] * args.conns  # of the request in flight on each connection; 0.0: none
    received = [0] * args.conns
    queued: list[collections.deque[float]] = [collections.deque() for _ in range(args.conns)]
    clock = time.perf_counter
    period = 1.0 / args.rate
    start = clock()
    window_start, window_end = start + args.warmup, start + args.warmup + args.duration
    latencies: list[float] = []
    sent = late = errors = 0
    slot = 0
    cpu_at_start = None

    def send(n: int, due: float) -> None:
        nonlocal sent, late
        now = clock()
        if now - due > 0.001 and now >= window_start:
            late += 1
        intended[n] = due
        socks[n].send(message)  # 1 KiB into an empty socket buffer: all of it
        sent += 1

    while (now := clock()) < window_end:
        if cpu_at_start is None and now >= window_start:
            cpu_at_start = cpu_seconds()
        while start + slot * period <= now:
            n = slot % args.conns
            due = start + slot * period
            if intended[n]:
                queued[n].append(due)
            else:
                send(n, due)
            slot += 1
        wait = start + slot * period - clock() - SPIN_S
        for fd, _ in poller.poll(max(wait, 0.0) if wait > SPIN_S else 0):
            n = index[fd]
            data = socks[n].recv(65536)
            if not data:
                raise SystemExit("the server closed a connection")
            received[n] += len(data)
            if received[n] < args.size:
                continue
            done = clock()
            if received[n] != args.size:
                errors += 1
            if intended[n] >= window_start:
                latencies.append(done - intended[n])
            received[n], intended[n] = 0, 0.0
            if queued[n]:
                send(n, queued[n].popleft())
    cpu = cpu_seconds() - (cpu_at_start or cpu_seconds())
    latencies.sort()
    us = [1e6 * x for x in latencies]
    result = {
        "event": "result",
        "mode": "open_loop",
        "client": "python-floor",
        "conns": args.conns,
        "size": args.size,
        "conns_open_at_end": args.conns,
        "requests": len(us),
        "requests_per_s": len(us) / args.duration,
        "lat_p50_us": percentile(us, 0.50),
        "lat_p90_us": percentile(us, 0.90),
        "lat_p99_us": percentile(us, 0.99),
        "lat_p999_us": percentile(us, 0.999),
        "lat_max_us": us[-1] if us else 0.0,
        "errors": errors,
        "rate_asked": args.rate,
        "requests_sent": sent,
        "sent_late": late,
        "cpu_s": cpu,
    }
    print(json.dumps(result), flush=True)
    for sock in socks:
        sock.close()


if __name__ == "__main__":
    main()
