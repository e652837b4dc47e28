"""What the monitor costs the echo server: server CPU per request, side by side, in one run.

Each variant is a ``yieldio serve`` loaded by ``yieldio load tcp://127.0.0.1:PORT -c 100 -d 5
--prefix GOT:`` (1 KiB messages, 100 connections, closed loop), the project's own load generator.
The server's CPU time (user + system, from /proc through psutil) is read when the load's first
per-second line arrives and again at its last, and divided by the requests counted between
them: warm-up and connection set-up are left out. The server runs on one core and the load on
another. The variants take turns, round after round, so that the machine's drift falls on all of
them alike. The CPU of the monitor's own threads (its sampler, its HTTP endpoint) is also given
apart, from each thread's times: it is measured well where the kernel's share drowns in the noise.
The variants:

- ``base``: the server from ``--base-src`` (a checkout without the monitor's kernel changes);
- ``off``: this checkout, no monitor (the kernel's loop tests one local per step for it);
- ``on``: ``--monitor``, nobody watching (steps counted, run time sampled every 20 ms);
- ``page``: ``--monitor`` with a page open (its stream read as a browser would, here by a thread
  of this script): the events instrument attached, a state pushed up to ten times a second.

    python benchmarks/monitor_cost.py [--src PATH] [--base-src PATH] [--rounds N] [--duration S] [--only off,on]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
MONITOR = re.compile(r"monitor on http://127\.0\.0\.1:(\d+)/")
LOAD = [sys.executable, "-m", "yieldio", "load"]


def pin(pid: int, cpu: int) -> None:
    """Server on one core, load on the other (on a machine with two or more): the server's CPU per
    request then depends less on how the system happens to share the cores between them."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(pid, {cpus[cpu]})


def start_server(src: Path, monitor: bool) -> tuple[subprocess.Popen[str], int, int | None]:
    command = [sys.executable, "-m", "yieldio", "serve", "--port", "0", "--log-level", "warning"]
    if monitor:
        command += ["--monitor", "127.0.0.1:0"]
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONUNBUFFERED="1")
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    pin(server.pid, 0)
    assert server.stderr is not None
    port = monitor_port = None
    while port is None or (monitor and monitor_port is None):
        line = server.stderr.readline()
        if not line:
            raise SystemExit(f"the server did not start ({src})")
        if match := LISTENING.search(line):
            port = int(match.group(1))
        if match := MONITOR.search(line):
            monitor_port = int(match.group(1))
    threading.Thread(target=server.stderr.read, daemon=True).start()  # keep draining its log
    return server, port, monitor_port


def watch_page(port: int, stop: threading.Event) -> None:
    """Read the monitor's stream as an open page does, until ``stop``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/api/events", headers={"Host": f"127.0.0.1:{port}"})
    response = connection.getresponse()
    while not stop.is_set() and response.readline():
        pass
    connection.close()


def thread_cpu(process: psutil.Process) -> dict[int, float]:
    return {thread.id: thread.user_time + thread.system_time for thread in process.threads()}


def measure(variant: str, src: Path, duration: float) -> tuple[float, float]:
    """For one run of the load against ``variant``: µs of server CPU per request, and of that, ns spent by
    the threads other than the kernel's (the monitor's sampler and HTTP endpoint)."""
    server, port, monitor_port = start_server(src, monitor=variant in ("on", "page"))
    stop = threading.Event()
    if variant == "page":
        assert monitor_port is not None
        threading.Thread(target=watch_page, args=(monitor_port, stop), daemon=True).start()
    process = psutil.Process(server.pid)
    load = subprocess.Popen(
        [*LOAD, f"tcp://127.0.0.1:{port}", "-c", "100", "-d", str(duration), "--prefix", "GOT:", "--json-lines", "-"],
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    pin(load.pid, 1)
    assert load.stdout is not None
    first: tuple[dict[int, float], int] | None = None
    last: tuple[dict[int, float], int] = ({}, 0)
    try:
        for line in load.stdout:
            report = json.loads(line)
            last = (thread_cpu(process), report["requests_total"])
            first = first or last
        if load.wait(30) != 0 or first is None:
            raise SystemExit(f"the load failed against {variant}")
    finally:
        stop.set()
        server.terminate()
        server.wait(10)
    requests = last[1] - first[1]
    spent = {thread: seconds - first[0].get(thread, 0.0) for thread, seconds in last[0].items()}
    others = sum(seconds for thread, seconds in spent.items() if thread != server.pid)
    return sum(spent.values()) / requests * 1e6, others / requests * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="src/ of the checkout to measure")
    parser.add_argument("--base-src", type=Path, help="src/ of a checkout without the monitor (the base variant)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--only", default="base,off,on,page", help="the variants to run, comma-separated")
    args = parser.parse_args()
    variants = {"off": args.src, "on": args.src, "page": args.src}
    if args.base_src:
        variants = {"base": args.base_src, **variants}
    variants = {name: src for name, src in variants.items() if name in args.only.split(",")}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(args.rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:  # a different first each round
            results[name].append(measure(name, variants[name], args.duration))
            total, others = results[name][-1]
            print(
                f"round {round_ + 1} {name:>4}: {total:.2f} µs of server CPU per request, {others:.0f} ns of it in "
                "the monitor's threads",
                flush=True,
            )
    off = statistics.median(total for total, _ in results["off"])
    print(f"\nmedian of {args.rounds} runs, 1 KiB x 100 connections, {args.duration:g} s each:")
    for name, values in results.items():
        median = statistics.median(total for total, _ in values)
        others = statistics.median(others for _, others in values)
        print(
            f"{name:>5}: {median:6.2f} µs per request ({(median / off - 1) * 100:+5.1f} % against off), "
            f"{others:4.0f} ns of it in the monitor's threads"
        )


if __name__ == "__main__":
    main()
