#!/usr/bin/env python3
"""yieldio load side by side with the C load generator, against the C epoll server.

Why: a load generator must not be what limits the measurement. ``yieldio
load`` runs on yieldio's own kernel, in Python; ``loadgen.c`` is the C
reference every other figure in benchmarks/ comes from. This runs both,
interleaved, against the same ``c_epoll`` server (pinned to its own CPU), at
1 KiB x 100 connections:

* closed loop, one process each on the client CPU: requests/s, and each
  client's own CPU per request (its figure over its measured window:
  loadgen's ``cpu_s``, yieldio's ``client_cpu_s``), which is what bounds a
  client that has its core to itself;
* ``yieldio load --workers N`` on the same client CPU(s): with the default
  pinning the workers share CPU 0, since the server owns CPU 1;
* open loop at a fixed ``--rate`` well below both limits: p50/p90/p99 of
  both, and their ratios. Both count latency from each request's intended
  send time (wrk2's correction) and both report requests sent more than
  1 ms late, so the percentiles measure the same thing. Beside them
  ``python_floor.py``, a bare Python epoll client on the same schedule:
  what any Python client pays here, apart from what yieldio adds.

For each run it also samples, over the middle of the run (after the warm-up,
before the end), the server's and the client's CPU (``/proc/PID/stat``) and
the busy time of the pinned CPUs that neither used ("other load", as
``run.py`` does): a run with other load is noisy, and the client or the
server at ~100 % of its core says which one set the pace.

The server's port: a free one is found by binding port 0 and reading the
number back, then released and handed to ``c_epoll --port``. Something else
may take it in between (a small race; it is a benchmark): the server then
fails to start and another port is tried, three times at most.

A benchmark, not a test: it prints figures and asserts nothing. Run it with
an interpreter that has yieldio's ``load`` extra (hdrhistogram), e.g. the
repository's venv::

    .venv/bin/python benchmarks/load_vs_loadgen.py [--repeats 3] [--rate 5000]
        [--duration 4] [--open-duration 5] [--json OUT]
        [--server-cpu 1] [--client-cpu 0] [--workers 2] [--no-wait-quiet]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from run import (  # run.py sits beside this script
    BUILD_DIR,
    C_SERVER_SRC,
    CLK_TCK,
    REPO_ROOT,
    cpu_model,
    ensure_built,
    ensure_loadgen,
    foreign_busy_ticks,
    free_port,
    parse_cpus,
    proc_cpu_ticks,
    raise_nofile,
    softirq_threads,
    stop_process,
    wait_accepting,
    wait_for_quiet,
)

HOST = "127.0.0.1"
CONNS = 100
SIZE = 1024
WARMUP_S = 1.0
PORT_TRIES = 3
SAMPLE_SKIP_S = 0.6  # sampling starts this long after launch + warm-up (Python's start-up, the connects)
SAMPLE_END_S = 0.2  # ... and ends this long before launch + warm-up + duration
SATURATED = 0.90  # a process at this fraction of a core or more is what sets the pace
PERCENTILES = ("p50", "p90", "p99", "p999", "max")


@dataclass
class Run:
    """One client run: what it said, and what /proc said about it."""

    client: str  # loadgen | yieldio | yieldio-workers | python-floor
    mode: str  # closed | open
    repeat: int
    command: list[str]
    ok: bool = False
    error: str = ""
    requests: int = 0
    rps: float = 0.0
    client_cpu_s: float = 0.0  # the client's own figure, over its measured window
    client_cpu_us_per_request: float | None = None
    client_process_cpu_s: float | None = None  # getrusage of the child: its whole life
    latency_us: dict[str, float] = field(default_factory=dict)
    sent_late: int | None = None
    rate_asked: float | None = None
    server_cpu_frac: float | None = None  # over the middle of the run
    client_cpu_frac: float | None = None
    client_user_frac: float | None = None  # of which user time (the rest: the kernel's, for the client)
    other_cpu_frac: float | None = None
    report: dict[str, Any] = field(default_factory=dict)  # the client's result, less the histogram


# ------------------------------------------------------------------ commands


def loadgen_cmd(binary: Path, port: int, duration: float, rate: float | None) -> list[str]:
    cmd = [str(binary), "--host", HOST, "--port", str(port), "--conns", str(CONNS), "--size", str(SIZE)]
    cmd += ["--warmup", str(WARMUP_S), "--duration", str(duration)]
    return cmd + (["--rate", str(rate)] if rate else [])


def yieldio_cmd(python: str, port: int, duration: float, rate: float | None, workers: int) -> list[str]:
    cmd = [python, "-m", "yieldio", "load", f"tcp://{HOST}:{port}", "--prefix", "", "-c", str(CONNS)]
    cmd += ["-s", str(SIZE), "-d", str(duration), "--warmup", str(WARMUP_S), "--json", "-", "--verbose"]
    if rate:
        cmd += ["--rate", str(rate)]
    return cmd + (["--workers", str(workers)] if workers > 1 else [])


def python_floor_cmd(python: str, port: int, duration: float, rate: float) -> list[str]:
    cmd = [python, str(Path(__file__).with_name("python_floor.py")), "--host", HOST, "--port", str(port)]
    cmd += ["--conns", str(CONNS), "--size", str(SIZE), "--rate", str(rate)]
    return [*cmd, "--warmup", str(WARMUP_S), "--duration", str(duration)]


def parse_loadgen(run: Run, stdout: str) -> None:
    """loadgen.c's result line (python_floor.py prints the same fields)."""
    result = next((json.loads(line) for line in reversed(stdout.splitlines()) if '"result"' in line), None)
    if result is None:
        run.error = "no result line"
        return
    run.report = result
    run.requests = result["requests"]
    run.rps = result["requests_per_s"]
    run.client_cpu_s = result["cpu_s"]
    run.latency_us = {
        "p50": result["lat_p50_us"],
        "p90": result.get("lat_p90_us"),
        "p99": result["lat_p99_us"],
        "p999": result.get("lat_p999_us"),
        "max": result["lat_max_us"],
    }
    run.sent_late = result.get("sent_late")
    run.rate_asked = result.get("rate_asked")
    run.ok = result["errors"] == 0 and result["conns_open_at_end"] == CONNS and run.requests > 0
    if not run.ok:
        run.error = f"{result['errors']} errors, {result['conns_open_at_end']} connections open at the end"


def parse_yieldio(run: Run, stdout: str) -> None:
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        run.error = "no JSON report"
        return
    report.pop("histogram", None)
    run.report = report
    run.requests = report["requests"]
    run.rps = report["rps"]
    run.client_cpu_s = report["client_cpu_s"]
    run.latency_us = {name: report["latency_us"][name] for name in PERCENTILES}
    run.sent_late = report.get("sent_late")
    run.rate_asked = report.get("rate_asked")
    run.ok = not report["failed"] and not report["errors"] and run.requests > 0
    if not run.ok:
        run.error = "; ".join(report["failed"]) or f"{report['errors']} errors"


# ------------------------------------------------------------------- running


def start_server(server_cpu: str) -> tuple[subprocess.Popen[bytes], int]:
    """c_epoll on a free port, pinned; a port taken in the race (see the top) means another try."""
    binary = BUILD_DIR / "c_epoll"
    for _ in range(PORT_TRIES):
        port = free_port(HOST)
        proc = subprocess.Popen(
            ["taskset", "-c", server_cpu, str(binary), "--host", HOST, "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if wait_accepting(proc, HOST, port, 15.0):
            return proc, port
        stop_process(proc)
    raise SystemExit(f"c_epoll did not start on a free port in {PORT_TRIES} tries")


def client_env() -> dict[str, str]:
    """As run.py's servers: without the caller's PYTHONUNBUFFERED, with this checkout's src/ first."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def user_ticks(pid: int) -> int | None:
    """utime of a process and its live descendants (/proc/PID/stat), as run.proc_cpu_ticks counts both."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    total = int(stat[stat.rindex(")") + 2 :].split()[11])
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            total += sum(user_ticks(int(child)) or 0 for child in task.read_text().split())
    return total


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_client(run: Run, args: argparse.Namespace, server: subprocess.Popen[bytes], duration: float) -> Run:
    """Run one client pinned to the client CPU(s); sample /proc over the middle of its run."""
    pinned = parse_cpus(args.server_cpu) | parse_cpus(args.client_cpu)
    helpers = softirq_threads(pinned)
    if args.wait_quiet:
        wait_for_quiet(pinned, helpers)
    before = children_cpu_s()
    launched = time.monotonic()
    proc = subprocess.Popen(
        ["taskset", "-c", args.client_cpu, *run.command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=client_env(),
        cwd=REPO_ROOT,
    )
    try:
        samples = []
        for at in (launched + WARMUP_S + SAMPLE_SKIP_S, launched + WARMUP_S + duration - SAMPLE_END_S):
            time.sleep(max(0.0, at - time.monotonic()))
            if proc.poll() is not None:
                break
            exclude = [server.pid, proc.pid, *helpers]
            samples.append(
                (
                    time.monotonic(),
                    proc_cpu_ticks(server.pid),
                    proc_cpu_ticks(proc.pid),  # with its children: --workers
                    user_ticks(proc.pid),
                    foreign_busy_ticks(pinned, exclude),
                )
            )
        stdout, stderr = proc.communicate(timeout=45 + WARMUP_S + duration + 30)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        run.error = "timed out"
        return run
    run.client_process_cpu_s = children_cpu_s() - before
    if len(samples) == 2 and None not in samples[0] and None not in samples[1]:
        (t0, s0, c0, u0, o0), (t1, s1, c1, u1, o1) = samples
        span = (t1 - t0) * CLK_TCK
        run.server_cpu_frac, run.client_cpu_frac = (s1 - s0) / span, (c1 - c0) / span
        run.client_user_frac = (u1 - u0) / span
        run.other_cpu_frac = max(0.0, (o1 - o0) / span)
    text = stdout.decode(errors="replace")
    if run.client in ("loadgen", "python-floor"):
        parse_loadgen(run, text)
    else:
        parse_yieldio(run, text)
    if run.requests:
        run.client_cpu_us_per_request = 1e6 * run.client_cpu_s / run.requests
    if proc.returncode not in (0, 1) and not run.error:
        run.ok, run.error = False, f"exit {proc.returncode}: {stderr.decode(errors='replace').strip()[-200:]}"
    return run


def plan(args: argparse.Namespace, loadgen: Path, port: int, repeat: int) -> list[tuple[Run, float]]:
    """The runs of one repeat; odd repeats go in the reverse order, so that drift evens out."""
    d, od, rate = args.duration, args.open_duration, args.rate
    closed = [
        (Run("loadgen", "closed", repeat, loadgen_cmd(loadgen, port, d, None)), d),
        (Run("yieldio", "closed", repeat, yieldio_cmd(args.python, port, d, None, 1)), d),
    ]
    if args.workers > 1:
        workers = yieldio_cmd(args.python, port, d, None, args.workers)
        closed.append((Run("yieldio-workers", "closed", repeat, workers), d))
    opened = [
        (Run("loadgen", "open", repeat, loadgen_cmd(loadgen, port, od, rate)), od),
        (Run("yieldio", "open", repeat, yieldio_cmd(args.python, port, od, rate, 1)), od),
        (Run("python-floor", "open", repeat, python_floor_cmd(args.python, port, od, rate)), od),
    ]
    if repeat % 2 == 0:
        closed.reverse()
        opened.reverse()
    return closed + opened


# ----------------------------------------------------------------- reporting


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(x: float | None, digits: int = 0, suffix: str = "") -> str:
    return "–" if x is None else f"{x:,.{digits}f}{suffix}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def summarize(runs: list[Run]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for client, mode in dict.fromkeys((r.client, r.mode) for r in runs):
        ok = [r for r in runs if r.client == client and r.mode == mode and r.ok]
        row: dict[str, Any] = {"runs": len([r for r in runs if r.client == client and r.mode == mode])}
        row["valid_runs"] = len(ok)
        row["rps"] = median([r.rps for r in ok])
        row["rps_min"] = min((r.rps for r in ok), default=None)
        row["rps_max"] = max((r.rps for r in ok), default=None)
        row["client_cpu_us_per_request"] = median([r.client_cpu_us_per_request for r in ok])
        row["client_cpu_pct"] = pct(median([r.client_cpu_frac for r in ok]))
        # the split of the client's CPU per request, from the mid-run sample: user (the program) and system
        row["client_user_us_per_request"] = median(
            [1e6 * r.client_user_frac / r.rps for r in ok if r.client_user_frac is not None and r.rps]
        )
        row["client_sys_us_per_request"] = median(
            [
                1e6 * (r.client_cpu_frac - r.client_user_frac) / r.rps
                for r in ok
                if r.client_cpu_frac is not None and r.client_user_frac is not None and r.rps
            ]
        )
        row["server_cpu_pct"] = pct(median([r.server_cpu_frac for r in ok]))
        row["server_cpu_us_per_request"] = median(
            [1e6 * r.server_cpu_frac / r.rps for r in ok if r.server_cpu_frac is not None and r.rps]
        )
        row["other_cpu_pct"] = pct(median([r.other_cpu_frac for r in ok]))
        row["latency_us"] = {p: median([r.latency_us.get(p) for r in ok]) for p in PERCENTILES}
        row["sent_late"] = median([r.sent_late for r in ok])
        out[f"{client} {mode}"] = row
    return out


def limit_of(row: dict[str, Any]) -> str:
    """Which side set the pace of a closed-loop row, from the CPU it used."""
    client, server = (row["client_cpu_pct"] or 0) / 100, (row["server_cpu_pct"] or 0) / 100
    if client >= SATURATED and client >= server:
        return "client"
    if server >= SATURATED:
        return "server"
    return "neither saturated"


def report(runs: list[Run], summary: dict[str, Any], meta: dict[str, Any], args: argparse.Namespace) -> str:
    workers = f"yieldio load --workers {args.workers}"
    names = {
        "loadgen": "loadgen.c",
        "yieldio": "yieldio load",
        "yieldio-workers": workers,
        "python-floor": "python_floor.py",
    }
    lines = [
        f"## yieldio load vs loadgen.c, {meta['date']}",
        "",
        (
            f"{meta['cpu_model']}, {os.cpu_count()} CPUs, Linux {meta['kernel']}, Python {meta['python']}, "
            f"yieldio {meta['yieldio_commit']}; c_epoll on CPU {args.server_cpu}, every client on CPU "
            f"{args.client_cpu} (the --workers processes share it); {CONNS} connections × {SIZE} B; "
            f"median of {args.repeats} (min–max); closed loop {args.duration:g} s, open loop "
            f"{args.open_duration:g} s, each after {WARMUP_S:g} s of warm-up. CPU % sampled over the middle "
            "of each run."
        ),
        "",
        "Closed loop:",
        "",
        (
            "| client | requests/s | min–max | ÷ loadgen.c | client CPU µs/req | user + sys µs/req (mid-run) "
            "| client CPU % | server CPU % | server µs/req | other load % | limited by |"
        ),
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    base = summary.get("loadgen closed", {}).get("rps")
    for client in ("loadgen", "yieldio", "yieldio-workers"):
        row = summary.get(f"{client} closed")
        if row is None:
            continue
        spread = f"{fmt(row['rps_min'])}–{fmt(row['rps_max'])}"
        lines.append(
            f"| {names[client]} | {fmt(row['rps'])} | {spread} | {fmt(ratio(row['rps'], base), 2)} "
            f"| {fmt(row['client_cpu_us_per_request'], 2)} "
            f"| {fmt(row['client_user_us_per_request'], 2)} + {fmt(row['client_sys_us_per_request'], 2)} "
            f"| {fmt(row['client_cpu_pct'])} "
            f"| {fmt(row['server_cpu_pct'])} | {fmt(row['server_cpu_us_per_request'], 2)} "
            f"| {fmt(row['other_cpu_pct'])} | {limit_of(row)} |"
        )
    lg, yl = summary.get("loadgen closed"), summary.get("yieldio closed")
    if lg and yl and lg["client_cpu_us_per_request"] and yl["client_cpu_us_per_request"]:
        mine, theirs = yl["client_cpu_us_per_request"], lg["client_cpu_us_per_request"]
        lines += [
            "",
            (
                f"Client CPU per request: yieldio load {mine:.2f} µs, loadgen.c {theirs:.2f} µs "
                f"({mine / theirs:.1f}×); on a core of its own, that bounds one yieldio load process at about "
                f"{1e6 / mine:,.0f} requests/s (loadgen.c: {1e6 / theirs:,.0f})."
            ),
        ]
    lo, yo = summary.get("loadgen open"), summary.get("yieldio open")
    fo = summary.get("python-floor open") or {"latency_us": dict.fromkeys(PERCENTILES)}
    if lo and yo:
        lines += [
            "",
            (
                f"Open loop at {args.rate:,.0f} requests/s (latency from each intended send time; python_floor.py "
                "is a bare Python epoll client on the same schedule, the floor under any Python client):"
            ),
            "",
            (
                "| | loadgen.c µs | yieldio load µs | yieldio ÷ loadgen.c | per-repeat ratios | python_floor.py µs "
                "| python_floor ÷ loadgen.c |"
            ),
            "|---|--:|--:|--:|---|--:|--:|",
        ]
        for p in PERCENTILES:
            a, b, c = lo["latency_us"][p], yo["latency_us"][p], fo["latency_us"][p]
            per = []
            for rep in sorted({r.repeat for r in runs}):
                pair = [r for r in runs if r.mode == "open" and r.repeat == rep and r.ok]
                x = next((r.latency_us.get(p) for r in pair if r.client == "loadgen"), None)
                y = next((r.latency_us.get(p) for r in pair if r.client == "yieldio"), None)
                per.append(fmt(ratio(y, x), 2))
            lines.append(
                f"| {p} | {fmt(a, 1)} | {fmt(b, 1)} | {fmt(ratio(b, a), 2)} | {', '.join(per)} "
                f"| {fmt(c, 1)} | {fmt(ratio(c, a), 2)} |"
            )
        lines += [
            "",
            "| | achieved requests/s | sent > 1 ms late | client CPU % | server CPU % | other load % |",
            "|---|--:|--:|--:|--:|--:|",
            *(
                f"| {names[client]} | {fmt(row['rps'])} | {fmt(row['sent_late'])} | {fmt(row['client_cpu_pct'])} "
                f"| {fmt(row['server_cpu_pct'])} | {fmt(row['other_cpu_pct'])} |"
                for client, row in (
                    ("loadgen", lo),
                    ("yieldio", yo),
                    ("python-floor", summary.get("python-floor open")),
                )
                if row is not None
            ),
        ]
    failed = [r for r in runs if not r.ok]
    if failed:
        lines += ["", *(f"failed: {r.client} {r.mode} #{r.repeat}: {r.error}" for r in failed)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------- cli


def yieldio_commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="rounds of every run (median reported; default 3)")
    p.add_argument("--rate", type=float, default=5000.0, help="open loop: requests/s over all connections")
    p.add_argument("--duration", type=float, default=4.0, help="closed loop: measured seconds (default 4)")
    p.add_argument("--open-duration", type=float, default=5.0, help="open loop: measured seconds (default 5)")
    p.add_argument("--workers", type=int, default=2, help="yieldio load --workers N run (1: none; default 2)")
    p.add_argument("--server-cpu", default="1", help="CPU list for c_epoll (taskset -c; default 1)")
    p.add_argument("--client-cpu", default="0", help="CPU list for every client (default 0)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write every run and the summary here")
    p.add_argument("--python", default=sys.executable, help="the interpreter that runs yieldio load")
    p.add_argument(
        "--no-wait-quiet",
        dest="wait_quiet",
        action="store_false",
        help="start each run at once instead of waiting (up to 3 min) for the pinned CPUs to be idle",
    )
    args = p.parse_args(argv)
    if not (args.repeats >= 1 and 1 <= args.duration <= 600 and 1 <= args.open_duration <= 600 and args.rate > 0):
        p.error("need --repeats >= 1, durations of 1-600 s and --rate > 0")
    if args.workers < 1 or args.workers > CONNS:
        p.error(f"--workers: 1 to {CONNS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("gcc", "taskset"):
        if shutil.which(tool) is None:
            print(f"missing {tool}: run benchmarks/setup.sh", file=sys.stderr)
            return 2
    probe = subprocess.run(
        [args.python, "-c", "import yieldio, hdrh"], capture_output=True, env=client_env(), check=False
    )
    if probe.returncode != 0:
        print(f"{args.python} cannot run yieldio load (the load extra: pip install -e '.[load]')", file=sys.stderr)
        return 2
    raise_nofile()
    loadgen = ensure_loadgen()
    ensure_built(C_SERVER_SRC, BUILD_DIR / "c_epoll")
    meta = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "yieldio_commit": yieldio_commit(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "conns": CONNS,
        "size": SIZE,
        "warmup_s": WARMUP_S,
    }
    print(f"{meta['cpu_model']}, {meta['date']}", file=sys.stderr)
    server, port = start_server(args.server_cpu)
    runs: list[Run] = []
    try:
        total = args.repeats * len(plan(args, loadgen, port, 1))
        for repeat in range(1, args.repeats + 1):
            for run, duration in plan(args, loadgen, port, repeat):
                if server.poll() is not None:
                    raise SystemExit(f"c_epoll exited ({server.returncode})")
                runs.append(run_client(run, args, server, duration))
                cpu = f"client {fmt(pct(run.client_cpu_frac))} %, server {fmt(pct(run.server_cpu_frac))} %"
                brief = f"{run.rps:,.0f} req/s, p50 {fmt(run.latency_us.get('p50'), 1)} µs, {cpu}"
                status = brief if run.ok else f"FAILED: {run.error}"
                print(f"[{len(runs)}/{total}] {run.client} {run.mode} #{repeat}: {status}", file=sys.stderr)
    finally:
        stop_process(server)
    summary = summarize(runs)
    text = report(runs, summary, meta, args)
    print(text)
    if args.json:
        doc = {"meta": meta, "summary": summary, "runs": [asdict(r) for r in runs]}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
