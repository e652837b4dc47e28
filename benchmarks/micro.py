#!/usr/bin/env python3
"""Kernel micro-benchmarks: yieldio and its peers side by side, in one run.

What is measured, per framework:

* ``switch``  - task switches per second: one task does ``await sleep(0)``
  N times (the cost of one trip through the scheduler).
* ``spawn``   - spawn+join per second: spawn a trivial task and await it,
  N times (task creation, scheduling and result delivery).
* ``sendall`` - MiB/s of a 10 MiB ``sendall`` over a socketpair while a
  second task receives it all with ``recv_into`` into a 64 KiB buffer (the
  I/O wait path: readiness, wake-up, syscalls).
* ``queue``   - items/s through a queue bounded at ``QUEUE_MAXSIZE``: one
  task puts N items with the blocking put, another gets them with the
  blocking get (backpressure: the producer parks whenever it is full).
* ``queue_unbounded`` - the same through an unbounded queue (the producer
  never has to wait; what it costs to go through the queue at all).
* ``event``   - round trips/s of a ping-pong between two tasks on two
  events: set, wait, clear, each way (wake-up of one parked task).

The queue is each library's own: ``asyncio.Queue``, ``curio.Queue``,
``gevent.queue.Queue``, and for trio a memory channel (it has no queue;
its ``send`` is always a checkpoint). Trio's events cannot be cleared: its
ping-pong swaps in a fresh ``trio.Event`` where the others call ``clear()``.

Why a subprocess per framework x benchmark: each gets a fresh interpreter
pinned to the same CPU (``taskset -c 1``), one framework cannot disturb
another (gevent's hub, uvloop's policy), and a crash or a missing package
becomes an error in its row instead of ending the run.  Each subprocess runs
the benchmark several rounds and reports the median.

    benchmarks/.venv/bin/python benchmarks/micro.py [--frameworks a,b]
        [--benchmarks switch,spawn,sendall,queue,queue_unbounded,event] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

FRAMEWORKS = ["yieldio", "asyncio", "uvloop", "trio", "curio", "gevent"]
BENCHMARKS = {  # name -> (default N, unit)
    "switch": (200_000, "switches/s"),
    "spawn": (50_000, "spawn+join/s"),
    "sendall": (10 * 1024 * 1024, "MiB/s"),
    "queue": (200_000, "items/s"),
    "queue_unbounded": (200_000, "items/s"),
    "event": (100_000, "round trips/s"),
}
RECV_BUF = 65536
QUEUE_MAXSIZE = 16
CHILD_TIMEOUT_S = 180.0

# ------------------------------------------------- benchmark bodies
# Each ``bench_<framework>`` returns the elapsed seconds of one round,
# timed inside the framework's event loop so start-up is not counted.


def _socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def bench_yieldio(bench: str, n: int) -> float:
    import yieldio

    async def trivial() -> None:
        return None

    async def main() -> float:
        if bench == "switch":
            t0 = time.perf_counter()
            for _ in range(n):
                await yieldio.sleep(0)
            return time.perf_counter() - t0
        if bench == "spawn":
            t0 = time.perf_counter()
            for _ in range(n):
                task = await yieldio.spawn(trivial())
                await task.join()
            return time.perf_counter() - t0
        if bench in ("queue", "queue_unbounded"):
            queue: yieldio.Queue[int] = yieldio.Queue(QUEUE_MAXSIZE if bench == "queue" else 0)

            async def consume() -> int:
                total = 0
                for _ in range(n):
                    total += await queue.get()
                return total

            t0 = time.perf_counter()
            task = await yieldio.spawn(consume())
            for _ in range(n):
                await queue.put(1)
            total = await task.join()
            elapsed = time.perf_counter() - t0
            _check(total, n)
            return elapsed
        if bench == "event":
            ping, pong = yieldio.Event(), yieldio.Event()

            async def ponger() -> None:
                for _ in range(n):
                    await ping.wait()
                    ping.clear()
                    pong.set()

            t0 = time.perf_counter()
            task = await yieldio.spawn(ponger())
            for _ in range(n):
                ping.set()
                await pong.wait()
                pong.clear()
            await task.join()
            return time.perf_counter() - t0
        a, b = _socketpair()
        with a, b:
            sender, receiver = yieldio.Socket(a), yieldio.Socket(b)

            async def drain() -> int:
                buf, total = bytearray(RECV_BUF), 0
                while total < n:
                    got = await receiver.recv_into(buf)
                    if not got:
                        break
                    total += got
                return total

            payload = bytes(n)
            t0 = time.perf_counter()
            task = await yieldio.spawn(drain())
            await sender.sendall(payload)
            total = await task.join()
            elapsed = time.perf_counter() - t0
        _check(total, n)
        return elapsed

    return _run_yieldio(main)


def _run_yieldio(main: Callable[[], Awaitable[float]]) -> float:
    """``yieldio.run(main())``; fall back to passing the function itself."""
    import yieldio

    coro = main()
    try:
        return yieldio.run(coro)
    except TypeError:
        coro.close()  # type: ignore[attr-defined]
        return yieldio.run(main)
    finally:
        coro.close()  # type: ignore[attr-defined]  # no-op once it ran; silences "never awaited"


def bench_asyncio(bench: str, n: int, use_uvloop: bool = False) -> float:
    import asyncio

    async def trivial() -> None:
        return None

    async def main() -> float:
        if bench == "switch":
            t0 = time.perf_counter()
            for _ in range(n):
                await asyncio.sleep(0)
            return time.perf_counter() - t0
        if bench == "spawn":
            t0 = time.perf_counter()
            for _ in range(n):
                await asyncio.create_task(trivial())
            return time.perf_counter() - t0
        if bench in ("queue", "queue_unbounded"):
            queue: asyncio.Queue[int] = asyncio.Queue(QUEUE_MAXSIZE if bench == "queue" else 0)

            async def consume() -> int:
                total = 0
                for _ in range(n):
                    total += await queue.get()
                return total

            t0 = time.perf_counter()
            task = asyncio.create_task(consume())
            for _ in range(n):
                await queue.put(1)
            total = await task
            elapsed = time.perf_counter() - t0
            _check(total, n)
            return elapsed
        if bench == "event":
            ping, pong = asyncio.Event(), asyncio.Event()

            async def ponger() -> None:
                for _ in range(n):
                    await ping.wait()
                    ping.clear()
                    pong.set()

            t0 = time.perf_counter()
            ponging = asyncio.create_task(ponger())
            for _ in range(n):
                ping.set()
                await pong.wait()
                pong.clear()
            await ponging
            return time.perf_counter() - t0
        loop = asyncio.get_running_loop()
        a, b = _socketpair()
        with a, b:

            async def drain() -> int:
                buf, total = bytearray(RECV_BUF), 0
                while total < n:
                    got = await loop.sock_recv_into(b, buf)
                    if not got:
                        break
                    total += got
                return total

            payload = bytes(n)
            t0 = time.perf_counter()
            task = asyncio.create_task(drain())
            await loop.sock_sendall(a, payload)
            total = await task
            elapsed = time.perf_counter() - t0
        _check(total, n)
        return elapsed

    if use_uvloop:
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def bench_trio(bench: str, n: int) -> float:
    import trio

    async def trivial() -> None:
        return None

    async def main() -> float:
        if bench == "switch":
            t0 = time.perf_counter()
            for _ in range(n):
                await trio.sleep(0)  # noqa: ASYNC115 - the same call as the other frameworks
            return time.perf_counter() - t0
        if bench == "spawn":
            # trio has no bare spawn: a nursery is how one starts a task and waits for it.
            t0 = time.perf_counter()
            for _ in range(n):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(trivial)
            return time.perf_counter() - t0
        if bench in ("queue", "queue_unbounded"):
            sending, receiving = trio.open_memory_channel[int](QUEUE_MAXSIZE if bench == "queue" else math.inf)
            totals: list[int] = []

            async def consume() -> None:
                total = 0
                for _ in range(n):
                    total += await receiving.receive()
                totals.append(total)

            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                for _ in range(n):
                    await sending.send(1)
            elapsed = time.perf_counter() - t0
            _check(totals[0], n)
            return elapsed
        if bench == "event":
            # a trio.Event cannot be cleared: each side swaps in a fresh one before it sets the other's
            events = {"ping": trio.Event(), "pong": trio.Event()}

            async def ponger() -> None:
                for _ in range(n):
                    await events["ping"].wait()
                    events["ping"] = trio.Event()
                    events["pong"].set()

            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ponger)
                for _ in range(n):
                    events["ping"].set()
                    await events["pong"].wait()
                    events["pong"] = trio.Event()
            return time.perf_counter() - t0
        a, b = _socketpair()
        sender = trio.SocketStream(trio.socket.from_stdlib_socket(a))
        receiver = trio.socket.from_stdlib_socket(b)
        result: list[int] = []

        async def drain() -> None:
            buf, total = bytearray(RECV_BUF), 0
            while total < n:
                got = await receiver.recv_into(buf)
                if not got:
                    break
                total += got
            result.append(total)

        payload = bytes(n)
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await sender.send_all(payload)
        elapsed = time.perf_counter() - t0
        await sender.aclose()
        receiver.close()
        _check(result[0], n)
        return elapsed

    return trio.run(main)


def bench_curio(bench: str, n: int) -> float:
    import curio

    async def trivial() -> None:
        return None

    async def main() -> float:
        if bench == "switch":
            t0 = time.perf_counter()
            for _ in range(n):
                await curio.sleep(0)
            return time.perf_counter() - t0
        if bench == "spawn":
            t0 = time.perf_counter()
            for _ in range(n):
                task = await curio.spawn(trivial)
                await task.join()
            return time.perf_counter() - t0
        if bench in ("queue", "queue_unbounded"):
            queue = curio.Queue(QUEUE_MAXSIZE if bench == "queue" else 0)

            async def consume() -> int:
                total = 0
                for _ in range(n):
                    total += await queue.get()
                return total

            t0 = time.perf_counter()
            task = await curio.spawn(consume)
            for _ in range(n):
                await queue.put(1)
            total = await task.join()
            elapsed = time.perf_counter() - t0
            _check(total, n)
            return elapsed
        if bench == "event":
            ping, pong = curio.Event(), curio.Event()

            async def ponger() -> None:
                for _ in range(n):
                    await ping.wait()
                    ping.clear()
                    await pong.set()  # curio's set() is a coroutine

            t0 = time.perf_counter()
            task = await curio.spawn(ponger)
            for _ in range(n):
                await ping.set()
                await pong.wait()
                pong.clear()
            await task.join()
            return time.perf_counter() - t0
        a, b = _socketpair()
        sender, receiver = curio.io.Socket(a), curio.io.Socket(b)

        async def drain() -> int:
            buf, total = bytearray(RECV_BUF), 0
            while total < n:
                got = await receiver.recv_into(buf)
                if not got:
                    break
                total += got
            return total

        payload = bytes(n)
        t0 = time.perf_counter()
        task = await curio.spawn(drain)
        await sender.sendall(payload)
        total = await task.join()
        elapsed = time.perf_counter() - t0
        await sender.close()
        await receiver.close()
        _check(total, n)
        return elapsed

    return curio.run(main)


def bench_gevent(bench: str, n: int) -> float:
    import gevent
    import gevent.socket

    def trivial() -> None:
        return None

    if bench == "switch":
        t0 = time.perf_counter()
        for _ in range(n):
            gevent.sleep(0)
        return time.perf_counter() - t0
    if bench == "spawn":
        t0 = time.perf_counter()
        for _ in range(n):
            gevent.spawn(trivial).join()
        return time.perf_counter() - t0
    if bench in ("queue", "queue_unbounded"):
        import gevent.queue

        queue: gevent.queue.Queue = gevent.queue.Queue(QUEUE_MAXSIZE if bench == "queue" else None)

        def consume() -> int:
            total = 0
            for _ in range(n):
                total += queue.get()
            return total

        t0 = time.perf_counter()
        consumer = gevent.spawn(consume)
        for _ in range(n):
            queue.put(1)
        total = consumer.get()
        elapsed = time.perf_counter() - t0
        _check(total, n)
        return elapsed
    if bench == "event":
        import gevent.event

        ping, pong = gevent.event.Event(), gevent.event.Event()

        def ponger() -> None:
            for _ in range(n):
                ping.wait()
                ping.clear()
                pong.set()

        t0 = time.perf_counter()
        ponging = gevent.spawn(ponger)
        for _ in range(n):
            ping.set()
            pong.wait()
            pong.clear()
        ponging.join()
        return time.perf_counter() - t0
    a, b = gevent.socket.socketpair()
    with a, b:

        def drain() -> int:
            buf, total = bytearray(RECV_BUF), 0
            while total < n:
                got = b.recv_into(buf)
                if not got:
                    break
                total += got
            return total

        payload = bytes(n)
        t0 = time.perf_counter()
        task = gevent.spawn(drain)
        a.sendall(payload)
        total = task.get()
        elapsed = time.perf_counter() - t0
    _check(total, n)
    return elapsed


def _check(total: int, expected: int) -> None:
    if total != expected:
        raise RuntimeError(f"received {total} bytes, expected {expected}")


RUNNERS: dict[str, Callable[[str, int], float]] = {
    "yieldio": bench_yieldio,
    "asyncio": bench_asyncio,
    "uvloop": lambda bench, n: bench_asyncio(bench, n, use_uvloop=True),
    "trio": bench_trio,
    "curio": bench_curio,
    "gevent": bench_gevent,
}

# ------------------------------------------------------------ driver


def child(framework: str, bench: str, n: int, rounds: int) -> dict[str, Any]:
    """Run inside the pinned subprocess: ``rounds`` timings, median as the figure."""
    times = [RUNNERS[framework](bench, n) for _ in range(rounds)]
    per_round = [(n / (1024 * 1024) if bench == "sendall" else n) / t for t in times]
    return {"value": statistics.median(per_round), "unit": BENCHMARKS[bench][1], "rounds": per_round, "n": n}


def run_child(framework: str, bench: str, n: int, rounds: int, cpu: str) -> dict[str, Any]:
    """Start one pinned subprocess; turn any failure into an error entry."""
    cmd = [
        "taskset",
        "-c",
        cpu,
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        framework,
        bench,
        "--n",
        str(n),
        "--rounds",
        str(rounds),
    ]
    env = dict(os.environ)
    # Lets `import yieldio` work from a checkout even without the editable install.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env, cwd=REPO_ROOT, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT_S:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        err = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return {"error": err[:200]}


def versions() -> dict[str, str]:
    """Same version record as the echo benchmark (run.py)."""
    from run import versions as echo_versions

    return echo_versions()


def table(results: dict[str, dict[str, dict[str, Any]]], benches: list[str]) -> str:
    head = "| framework | " + " | ".join(f"{b} ({BENCHMARKS[b][1]})" for b in benches) + " |"
    lines = [head, "|---|" + "--:|" * len(benches)]
    for fw, row in results.items():
        cells = []
        for b in benches:
            r = row.get(b, {})
            cells.append(f"{r['value']:,.0f}" if "value" in r else f"error: {r.get('error', '?')[:60]}")
        lines.append(f"| {fw} | " + " | ".join(cells) + " |")
    mine = results.get("yieldio", {})
    if mine and any("value" in mine.get(b, {}) for b in benches):
        lines += ["", "| yieldio ÷ | " + " | ".join(benches) + " |", "|---|" + "--:|" * len(benches)]
        for fw, row in results.items():
            if fw == "yieldio":
                continue
            cells = []
            for b in benches:
                a, o = mine.get(b, {}).get("value"), row.get(b, {}).get("value")
                cells.append(f"{a / o:.2f}" if a and o else "–")
            lines.append(f"| {fw} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--benchmarks", default=",".join(BENCHMARKS))
    p.add_argument("--rounds", type=int, default=5, help="rounds per subprocess (median reported)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every N (e.g. 0.1 for a quick look)")
    p.add_argument("--cpu", default="1", help="CPU to pin each subprocess to (taskset -c)")
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "micro.json", help="where to write the JSON")
    p.add_argument("--child", nargs=2, metavar=("FRAMEWORK", "BENCH"), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        framework, bench = args.child
        try:
            out = child(framework, bench, args.n, args.rounds)
        except Exception as exc:  # noqa: BLE001 - reported in the table row, the run goes on
            out = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(out))
        return 0

    frameworks = [f for f in args.frameworks.split(",") if f]
    benches = [b for b in args.benchmarks.split(",") if b]
    unknown = [f for f in frameworks if f not in RUNNERS] + [b for b in benches if b not in BENCHMARKS]
    if unknown:
        p.error(f"unknown: {', '.join(unknown)}")
    if not 1 <= args.rounds <= 50 or not 0 < args.scale <= 10:
        p.error("need 1 <= --rounds <= 50 and 0 < --scale <= 10")

    from run import parse_cpus, softirq_threads, wait_for_quiet  # run.py sits beside this script

    cpus = parse_cpus(args.cpu)
    helpers = softirq_threads(cpus)
    started = time.monotonic()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for fw in frameworks:
        results[fw] = {}
        for b in benches:
            n = max(1, int(BENCHMARKS[b][0] * args.scale))
            wait_for_quiet(cpus, helpers)  # don't start inside someone else's burst
            r = run_child(fw, b, n, args.rounds, args.cpu)
            results[fw][b] = r
            shown = f"{r['value']:,.0f} {r['unit']}" if "value" in r else f"error: {r['error']}"
            print(f"{fw:8s} {b:8s} {shown}", file=sys.stderr, flush=True)

    meta = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            platform.processor(),
        ),
        "versions": versions(),
        "rounds": args.rounds,
        "n": {b: max(1, int(BENCHMARKS[b][0] * args.scale)) for b in benches},
        "cpu": args.cpu,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(
        f"## Micro-benchmarks {meta['date']}\n\n{meta['cpu_model']}, Python {meta['versions']['python']}, "
        f"pinned to CPU {args.cpu}, median of {args.rounds} rounds\n"
    )
    print(table(results, benches))
    return 0


if __name__ == "__main__":
    sys.exit(main())
