"""What the monitor costs the echo server: server CPU per request, side by side, in one run.

Each variant is a ``yieldio serve`` loaded by ``yieldio load tcp://127.0.0.1:PORT -c 100 -d 5
--prefix GOT:`` (1 KiB messages, 100 connections, closed loop), the project's own load generator.
The server's CPU time (user + system, from /proc through psutil) is read when the load's first
per-second line arrives and again at its last, and divided by the requests counted between
them: warm-up and connection set-up are left out. The variants take turns, round after round,
so that the machine's drift falls on all of them alike:

- ``base``: the server from ``--base-src`` (a checkout without the monitor's kernel changes);
- ``off``: this checkout, no monitor (the kernel's loop tests one local per step for it);
- ``on``: ``--monitor``, nobody watching (steps counted, run time sampled every 10 ms);
- ``page``: ``--monitor`` with a page open (its stream read as a browser would, here by a thread
  of this script): the events instrument attached, a state pushed up to ten times a second.

    python benchmarks/monitor_cost.py [--src PATH] [--base-src PATH] [--rounds N] [--duration S]
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


def start_server(src: Path, monitor: bool) -> tuple[subprocess.Popen[str], int, int | None]:
    command = [sys.executable, "-m", "yieldio", "serve", "--port", "0", "--log-level", "warning"]
    if monitor:
        command += ["--monitor", "127.0.0.1:0"]
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONUNBUFFERED="1")
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
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


def measure(variant: str, src: Path, duration: float) -> float:
    """µs of server CPU per request for one run of the load against ``variant``."""
    server, port, monitor_port = start_server(src, monitor=variant in ("on", "page"))
    stop = threading.Event()
    if variant == "page":
        assert monitor_port is not None
        threading.Thread(target=watch_page, args=(monitor_port, stop), daemon=True).start()
    cpu = psutil.Process(server.pid)
    load = subprocess.Popen(
        [*LOAD, f"tcp://127.0.0.1:{port}", "-c", "100", "-d", str(duration), "--prefix", "GOT:", "--json-lines", "-"],
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert load.stdout is not None
    first_cpu = last_cpu = 0.0
    first_total = last_total = 0
    try:
        for line in load.stdout:
            report = json.loads(line)
            times = cpu.cpu_times()
            now = times.user + times.system
            if not first_total:
                first_cpu, first_total = now, report["requests_total"]
            last_cpu, last_total = now, report["requests_total"]
        if load.wait(30) != 0:
            raise SystemExit(f"the load failed against {variant}")
    finally:
        stop.set()
        server.terminate()
        server.wait(10)
    return (last_cpu - first_cpu) / (last_total - first_total) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="src/ of the checkout to measure")
    parser.add_argument("--base-src", type=Path, help="src/ of a checkout without the monitor (the base variant)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    variants = {"off": args.src, "on": args.src, "page": args.src}
    if args.base_src:
        variants = {"base": args.base_src, **variants}
    results: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(args.rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:  # a different first each round
            results[name].append(measure(name, variants[name], args.duration))
            print(f"round {round_ + 1} {name:>4}: {results[name][-1]:.2f} µs of server CPU per request", flush=True)
    off = statistics.median(results["off"])
    print(f"\nmedian of {args.rounds} runs, 1 KiB x 100 connections, {args.duration:g} s each:")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:>5}: {median:6.2f} µs per request ({(median / off - 1) * 100:+5.1f} % against off)")


if __name__ == "__main__":
    main()
