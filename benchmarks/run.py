#!/usr/bin/env python3
"""Run the TCP echo benchmark: every server, the same load, on loopback.

Why this shape: comparisons between servers are only meaningful when each
one gets identical treatment, so one script starts each server in turn on
a fresh port, pinned to CPU 1, drives it with the same C load generator
pinned to CPU 0, samples the server's CPU and memory from /proc exactly at
the edges of the measured window, and stops it by PID.  Each
server x scenario is repeated and the median is reported, so one noisy run
does not decide a row.

A run counts only if the load generator saw no error at all (no
connect failure, mismatched echo, reset or failed handshake) and kept
every connection it was asked for; any other run is reported as failed
(with what went wrong), never averaged in.  Each yieldio server must say
which echo loop it runs (its ``echo loop: compiled|pure`` line): the run
fails if the line is missing or names another loop than its environment
asks for (compiled, unless YIELDIO_NO_EXTENSIONS=1 or YIELDIO_PURE=1), and
the loop is reported with every row.

TLS scenarios run the servers that can serve TLS with a self-signed
certificate made for this run (the generator does not verify it: both ends
are ours, on loopback); servers that cannot are skipped for them, not failed.

Run it with the benchmark venv's python (see benchmarks/README.md):

    benchmarks/.venv/bin/python benchmarks/run.py [--servers a,b]
        [--scenarios x,y] [--repeat 3] [--duration 4] [--warmup 1]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import math
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BUILD_DIR = BENCH_DIR / "build"
RESULTS_DIR = BENCH_DIR / "results"
SERVERS_DIR = BENCH_DIR / "servers"
LOADGEN_SRC = BENCH_DIR / "loadgen.c"
LOADGEN_LIBS = ("-lssl", "-lcrypto")  # its --tls mode (libssl-dev)
C_SERVER_SRC = SERVERS_DIR / "c_epoll.c"

SERVER_CPU = "1"
LOADGEN_CPU = "0"
READY_TIMEOUT_S = 15.0  # how long a server may take to accept its first connection
STOP_TIMEOUT_S = 3.0  # SIGTERM grace before SIGKILL
CONNECT_TIMEOUT_S = 45.0  # loadgen's bound on establishing all connections
IDLE_SETTLE_S = 1.0  # let an idle server settle before reading its RSS
IDLE_ECHO_TIMEOUT_S = 60.0  # idle scenarios: bound on the one echo per connection (10k threads take a while)
IDLE_HOLD_S = 60.0  # idle scenarios: loadgen lets go by itself after this if never told to
GENERATOR_LIMITED = 0.90  # loadgen CPU fraction from which a row is flagged
OTHER_LOAD = 0.10  # foreign busy time on the pinned CPUs (fraction of one core) from
# which a run counts as disturbed: retried, and flagged if it stays so
QUIET = 0.05  # before each run, wait until the pinned CPUs are this idle ...
QUIET_MAX_WAIT_S = 180.0  # ... but no longer than this
STARVED = 0.85  # with >= 10 busy connections the server or the generator must be
# saturated; if neither reaches this, the VM lost CPU to the host
NOISE_RETRIES = 3  # default --noise-retries
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------- servers


@dataclass(frozen=True)
class TlsFiles:
    """The run's self-signed certificate and its key (PEM)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Server:
    """How to start one echo server; ``argv(host, port)`` gives its command,
    ``tls(host, port, files)`` the same server over TLS (None: it has no TLS).
    ``echo_loop``: "required" for a yieldio of this checkout, which must log
    ``echo loop: compiled|pure`` (see expected_echo_loop); "if-logged" for one
    that may predate that line (recorded when there); None for the others."""

    name: str
    argv: Callable[[str, int], list[str]]
    default: bool = True
    description: str = ""
    tls: Callable[[str, int, TlsFiles], list[str]] | None = None
    echo_loop: str | None = None


def _py(script: str, *extra: str) -> Callable[[str, int], list[str]]:
    def argv(host: str, port: int) -> list[str]:
        return [sys.executable, str(SERVERS_DIR / script), "--host", host, "--port", str(port), *extra]

    return argv


def _py_tls(script: str, *extra: str) -> Callable[[str, int, TlsFiles], list[str]]:
    def argv(host: str, port: int, files: TlsFiles) -> list[str]:
        return [*_py(script, *extra)(host, port), "--tls-cert", str(files.cert), "--tls-key", str(files.key)]

    return argv


def _yieldio(level: str, *extra: str, build: str = "compiled") -> Callable[[str, int], list[str]]:
    """``yieldio serve`` from this checkout; ``build`` "compiled" (the default build: the echo step
    compiled by the install, which setup.sh's editable install makes) or "pure" (YIELDIO_PURE=1: the
    pure-Python loop, whatever was built)."""

    def argv(host: str, port: int) -> list[str]:
        if build == "compiled" and not list((REPO_ROOT / "src" / "yieldio").glob("_speedups.*.so")):
            raise SystemExit("yieldio: no compiled echo step in src/yieldio: pip install -e . with a C compiler")
        return [
            "env",
            f"YIELDIO_PURE={1 if build == 'pure' else 0}",
            sys.executable,
            "-m",
            "yieldio",
            "serve",
            "--host",
            host,
            "--port",
            str(port),
            "--prefix",
            "",
            "--log-level",
            level,
            *extra,
        ]

    return argv


def _yieldio_tls(level: str, build: str = "compiled") -> Callable[[str, int, TlsFiles], list[str]]:
    """The same over TLS, with the same build pinned as the server's plain runs (the TLS echo itself is the
    same in both builds, but the process says which loop it would run, and that is checked)."""

    def argv(host: str, port: int, files: TlsFiles) -> list[str]:
        return [
            "env",
            f"YIELDIO_PURE={1 if build == 'pure' else 0}",
            sys.executable,
            "-m",
            "yieldio",
            "serve",
            "--listen",
            f"tls://{host}:{port}",
            "--tls-cert",
            str(files.cert),
            "--tls-key",
            str(files.key),
            "--prefix",
            "",
            "--log-level",
            level,
        ]

    return argv


def _yieldio_ref_env() -> list[str]:
    """The command prefix that runs yieldio from another checkout's src/ (YIELDIO_REF_SRC)."""
    src = os.environ.get("YIELDIO_REF_SRC")
    if not src:
        raise SystemExit("yieldio-ref: set YIELDIO_REF_SRC to the src/ directory of the version to compare")
    return ["env", f"PYTHONPATH={src}"]


def _yieldio_ref(host: str, port: int) -> list[str]:
    """yieldio from another checkout's src/ (YIELDIO_REF_SRC), for before/after runs side by side."""
    return [*_yieldio_ref_env(), *_yieldio("warning")(host, port)]


def _yieldio_ref_tls(host: str, port: int, files: TlsFiles) -> list[str]:
    return [*_yieldio_ref_env(), *_yieldio_tls("warning")(host, port, files)]


def _asyncio_server(api: str, loop: str) -> Server:
    """servers/asyncio_echo.py with one API on one loop, e.g. uvloop-proto; TLS through the loop's own."""
    flags = ("--api", api, "--loop", loop)
    return Server(f"{loop}-{api}", _py("asyncio_echo.py", *flags), tls=_py_tls("asyncio_echo.py", *flags))


def _c_epoll(host: str, port: int) -> list[str]:
    return [str(BUILD_DIR / "c_epoll"), "--host", host, "--port", str(port)]


SERVERS: list[Server] = [
    Server(
        "yieldio",
        _yieldio("warning"),
        description="python -m yieldio serve, the default build (echo step compiled), log level warning",
        tls=_yieldio_tls("warning"),
        echo_loop="required",
    ),
    Server(
        "yieldio-pure",
        _yieldio("warning", build="pure"),
        description="the same with YIELDIO_PURE=1: the pure-Python echo loop",
        tls=_yieldio_tls("warning", build="pure"),
        echo_loop="required",
    ),
    Server(
        "yieldio-info",
        _yieldio("info"),
        default=False,
        description="same with --log-level info (per-connection log lines)",
        tls=_yieldio_tls("info"),
        echo_loop="required",
    ),
    Server(
        "yieldio-ref",
        _yieldio_ref,
        default=False,
        description="yieldio from $YIELDIO_REF_SRC (e.g. a git worktree of an earlier commit), log level warning",
        tls=_yieldio_ref_tls,
        echo_loop="if-logged",
    ),
    Server(
        "yieldio-workers2",
        _yieldio("warning", "--workers", "2"),
        default=False,
        description="same with --workers 2 (give it both CPUs: --server-cpu 0,1 --loadgen-cpu 0,1)",
        echo_loop="required",
    ),
    Server("tutorial", _py("tutorial.py"), description="python-mastery 8.5 select() scheduler"),
    _asyncio_server("streams", "asyncio"),
    _asyncio_server("proto", "asyncio"),
    _asyncio_server("streams", "uvloop"),
    _asyncio_server("proto", "uvloop"),
    Server("trio", _py("trio_echo.py")),
    Server("curio", _py("curio_echo.py")),
    Server("gevent", _py("gevent_echo.py")),
    Server("threads", _py("threads_echo.py"), description="socketserver.ThreadingTCPServer"),
    Server("c-epoll", _c_epoll, description="minimal C epoll server: the practical ceiling"),
]
SERVER_BY_NAME = {s.name: s for s in SERVERS}

# -------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    """One load shape; ``idle`` means hold connections open and read RSS,
    ``tls`` means over TLS 1.3, and ``handshakes`` (with ``tls``) that each of
    ``conns`` slots loops over new connections: connect, full handshake, one
    echo, close, so that requests/s is handshakes/s."""

    name: str
    conns: int
    size: int
    idle: bool = False
    description: str = ""
    tls: bool = False
    handshakes: bool = False


SCENARIOS: list[Scenario] = [
    Scenario("1k_x100", 100, 1024, description="1 KiB messages, 100 connections"),
    Scenario("10k_x100", 100, 10 * 1024, description="10 KiB messages, 100 connections"),
    Scenario("100k_x10", 10, 100 * 1024, description="100 KiB messages, 10 connections"),
    Scenario("1m_x10", 10, 1024 * 1024, description="1 MiB messages, 10 connections"),
    Scenario("1k_x1", 1, 1024, description="1 KiB, one connection: latency"),
    Scenario("c10k", 10_000, 1024, description="1 KiB, 10,000 busy connections"),
    Scenario("idle5k", 5_000, 1024, idle=True, description="5,000 connections, one echo each, then idle: server RSS"),
    Scenario(
        "idle10k", 10_000, 1024, idle=True, description="10,000 connections, one echo each, then idle: server RSS"
    ),
    Scenario("tls_1k_x100", 100, 1024, tls=True, description="1 KiB messages, 100 connections, over TLS 1.3"),
    Scenario(
        "tls_handshakes",
        20,
        1024,
        tls=True,
        handshakes=True,
        description="20 at a time: new connection, full TLS 1.3 handshake, one 1 KiB echo, close",
    ),
]
SCENARIO_BY_NAME = {s.name: s for s in SCENARIOS}


def runs_on(server: Server, scenario: Scenario) -> bool:
    """Whether ``server`` takes part in ``scenario``: a TLS scenario needs a TLS server."""
    return server.tls is not None or not scenario.tls


# ------------------------------------------------------------------ build


def ensure_built(src: Path, out: Path, libs: tuple[str, ...] = ()) -> None:
    """Compile ``src`` with gcc -O2 unless ``out`` is newer: the binaries are
    not committed, so a fresh checkout builds them on first use."""
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(out), str(src), *libs]
    print(f"building {out.relative_to(BENCH_DIR)}: {' '.join(cmd)}", file=sys.stderr)
    subprocess.run(cmd, check=True)


def ensure_loadgen() -> Path:
    """The load generator, built if needed; returns its path."""
    out = BUILD_DIR / "loadgen"
    ensure_built(LOADGEN_SRC, out, LOADGEN_LIBS)
    return out


def make_tls_files(directory: Path) -> TlsFiles:
    """A throw-away self-signed ECDSA P-256 certificate and key for this run,
    made with the openssl command: nothing secret is kept in the repository."""
    files = TlsFiles(directory / "cert.pem", directory / "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(files.key),
            "-out",
            str(files.cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return files


# ------------------------------------------------------------- processes


def raise_nofile() -> None:
    """Lift this process's soft fd limit to the hard one (c10k needs > 10k fds
    on each side); the servers and the load generator inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port(host: str) -> int:
    """A port the kernel just considered free; a fresh one per run avoids
    TIME_WAIT leftovers of the previous server."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def probe_tls_context() -> ssl.SSLContext:
    """A client context for the readiness probe of a TLS server: TLS 1.3, the
    run's self-signed certificate accepted unchecked, as the generator does."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def wait_accepting(
    proc: subprocess.Popen[bytes], host: str, port: int, timeout: float, tls: ssl.SSLContext | None = None
) -> bool:
    """Poll-connect until the server accepts, it exits, or ``timeout`` passes.
    With ``tls`` the probe also completes a handshake and closes with
    close_notify: a TLS server then logs nothing about it, where a bare
    connect-and-close would be a failed handshake in its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5) as sock:
                if tls is not None:
                    # it did handshake, so it serves; how it closes is not the question
                    with tls.wrap_socket(sock) as secure, contextlib.suppress(OSError):
                        secure.unwrap()
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stop_process(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM by PID, then SIGKILL if it has not exited within ``timeout``."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


def proc_cpu_ticks(pid: int) -> int | None:
    """utime+stime of the process (all threads) and of its children, live ones included (a server
    with --workers does its work in them), from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # comm may contain spaces
    return int(fields[11]) + int(fields[12]) + sum(proc_cpu_ticks(child) or 0 for child in _children(pid))


def _children(pid: int) -> list[int]:
    children: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for thread in threads:
        with contextlib.suppress(OSError):
            children += [int(child) for child in Path(f"/proc/{pid}/task/{thread}/children").read_text().split()]
    return children


def softirq_threads(cpus: set[int]) -> list[int]:
    """PIDs of the ksoftirqd/N kernel threads of ``cpus``.  Loopback traffic
    spills network processing to them under heavy load (c10k): that is the
    benchmark's own work, not a disturbance."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            name = comm.read_text().strip()
        except OSError:
            continue
        if name.startswith("ksoftirqd/") and name[10:].isdigit() and int(name[10:]) in cpus:
            pids.append(int(comm.parent.name))
    return pids


def foreign_busy_ticks(cpus: set[int], exclude: list[int]) -> int:
    """Busy ticks (everything but idle and iowait; steal included) summed over
    ``cpus`` from /proc/stat, minus the CPU time of the ``exclude`` PIDs.
    Subtracting the server's and the generator's own time from its delta
    over a window leaves the work of anything else that shared their cores."""
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(v) for v in vals[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks) - ticks[3] - ticks[4]
    return total - sum(proc_cpu_ticks(pid) or 0 for pid in exclude)


def wait_for_quiet(cpus: set[int], exclude: list[int]) -> float:
    """Wait (bounded) until the pinned CPUs are nearly idle, so a run does not
    start in the middle of someone else's burst; return the last busy fraction."""
    deadline = time.monotonic() + QUIET_MAX_WAIT_S
    while True:
        b0, t0 = foreign_busy_ticks(cpus, exclude), time.monotonic()
        time.sleep(0.5)
        busy = (foreign_busy_ticks(cpus, exclude) - b0) / CLK_TCK / (time.monotonic() - t0)
        if busy < QUIET or time.monotonic() > deadline:
            return busy


def parse_cpus(spec: str) -> set[int]:
    """taskset-style CPU list ("0", "1,3", "2-3") to a set."""
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM in KiB and the thread count from /proc/PID/status."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def tail(path: Path, lines: int = 1) -> str:
    """The last line(s) of a server log: usually the exception that ended it."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


ECHO_LOOP_LINE = re.compile(rb"echo loop: (compiled|pure)\b")


def expected_echo_loop(env: Mapping[str, str]) -> str:
    """The echo loop yieldio runs in ``env``: pure when the build was asked to be pure
    (YIELDIO_NO_EXTENSIONS=1) or the run is (YIELDIO_PURE=1); else compiled, the default build."""
    return "pure" if "1" in (env.get("YIELDIO_NO_EXTENSIONS"), env.get("YIELDIO_PURE")) else "compiled"


def command_env(command: Sequence[str], env: Mapping[str, str]) -> dict[str, str]:
    """The environment ``command`` runs in when started with ``env``: the assignments of its leading
    ``env NAME=VALUE ...`` words (how the yieldio servers pin their build; yieldio-ref has two) applied to it."""
    out = dict(env)
    words = list(command)
    while words and words[0] == "env":
        words.pop(0)
        while words and "=" in words[0]:
            name, _, value = words.pop(0).partition("=")
            out[name] = value
    return out


def logged_echo_loop(log_path: Path, proc: subprocess.Popen[bytes], wait: float) -> str | None:
    """The loop named by the server's ``echo loop:`` line; waits up to ``wait`` seconds for it (a server
    with --workers says it once every worker listens), less if the server exits; None if it never came."""
    deadline = time.monotonic() + wait
    while True:
        try:
            found = ECHO_LOOP_LINE.search(log_path.read_bytes())
        except OSError:
            found = None
        if found:
            return found.group(1).decode()
        if proc.poll() is not None or time.monotonic() >= deadline:
            return None
        time.sleep(0.05)  # polling a file the server writes; bounded


def loadgen_problem(scenario: Scenario, result: Mapping[str, Any]) -> str:
    """Why the load generator's ``result`` does not count ("" when it does): any error at all (connect
    failures, mismatched echoes, resets, failed handshakes), or a connection lost. Outside handshake mode
    every one of the scenario's connections must have connected and still be open at the end (and, idle,
    have echoed before going idle); in handshake mode each connection is one request and closes by design."""
    problems = []
    kinds = (
        ("connect_failed", "connect failures"),
        ("mismatches", "mismatched echoes"),
        ("resets", "resets"),
        ("handshake_failed", "failed handshakes"),
    )
    if result.get("errors", 0) or any(result.get(key, 0) for key, _ in kinds):
        detail = ", ".join(f"{result.get(key, 0)} {what}" for key, what in kinds if result.get(key, 0))
        problems.append(f"{result.get('errors', 0)} errors ({detail})")
    if not scenario.handshakes:
        conns = result.get("conns", scenario.conns)
        connected, still_open = result.get("conns_connected", 0), result.get("conns_open_at_end", 0)
        if connected < conns:
            problems.append(f"{connected} of {conns} connections connected")
        if still_open < connected:
            problems.append(f"{connected - still_open} of {connected} connections lost")
        if scenario.idle and result.get("idle_ready", 0) < conns:
            problems.append(f"{result.get('idle_ready', 0)} of {conns} connections echoed before going idle")
    return "; ".join(problems)


# ------------------------------------------------------------------- runs


@dataclass
class RunResult:
    """Everything measured in one server x scenario x repeat."""

    server: str
    scenario: str
    repeat: int
    # ok | failed_to_start | wrong_echo_loop | server_died | loadgen_failed | loadgen_errors (a result
    # with errors or lost connections: see loadgen_problem)
    status: str = "ok"
    error: str = ""
    echo_loop: str | None = None  # what a yieldio server said it runs: compiled | pure
    loadgen: dict[str, Any] = field(default_factory=dict)
    server_cpu_frac: float | None = None
    rss_base_kib: int | None = None
    rss_kib: int | None = None
    hwm_kib: int | None = None
    threads: int | None = None
    other_cpu_frac: float | None = None  # busy time on the two pinned CPUs not used by server/loadgen
    attempt: int = 1  # > 1 when earlier attempts were disturbed by other load and discarded

    @property
    def disturbance(self) -> str:
        """Why this run's figures are not trustworthy, or "" if they are."""
        if self.other_cpu_frac is not None and self.other_cpu_frac >= OTHER_LOAD:
            return f"other load {100 * self.other_cpu_frac:.0f}% on the pinned CPUs"
        scenario = SCENARIO_BY_NAME.get(self.scenario)
        gen_cpu = self.loadgen.get("cpu_frac")
        if (
            scenario
            and not scenario.idle
            and scenario.conns >= 10
            and self.server_cpu_frac is not None
            and gen_cpu is not None
            and self.loadgen.get("requests", 0) > 0
            and max(self.server_cpu_frac, gen_cpu) < STARVED
        ):
            return (
                f"starved: server {100 * self.server_cpu_frac:.0f}% and generator "
                f"{100 * gen_cpu:.0f}% CPU, neither saturated"
            )
        return ""

    @property
    def valid(self) -> bool:
        return self.status == "ok" and bool(self.loadgen)


class ServerDied(Exception):
    """The server exited while the load generator was still running."""


def read_events(
    proc: subprocess.Popen[bytes], deadline: float, server: subprocess.Popen[bytes]
) -> Iterator[dict[str, Any]]:
    """Yield the load generator's JSON lines as they arrive, until EOF or the
    deadline; stop early if the server dies (no point waiting out the run)."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("load generator exceeded its time bound")
            if not sel.select(timeout=min(remaining, 0.5)):
                if server.poll() is not None:
                    raise ServerDied()
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)
    finally:
        sel.close()


def server_env() -> dict[str, str]:
    """The environment every server starts with."""
    # The caller's PYTHONUNBUFFERED would make every print/log line a write(2)
    # in some servers and not others: start all from the same environment.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    # Let `python -m yieldio` work from a checkout even without the editable install.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def run_one(
    server: Server,
    scenario: Scenario,
    repeat: int,
    args: argparse.Namespace,
    log_dir: Path,
    tls_files: TlsFiles | None = None,
) -> RunResult:
    """Start the server, drive it with loadgen, sample /proc, stop both by PID.
    A TLS scenario needs ``tls_files`` and a server with ``tls``."""
    res = RunResult(server.name, scenario.name, repeat)
    host = args.host
    port = free_port(host)
    log_path = log_dir / f"{server.name}.{scenario.name}.{repeat}.log"
    env = server_env()
    if scenario.tls:
        assert server.tls is not None and tls_files is not None
        server_cmd, probe_tls = server.tls(host, port, tls_files), probe_tls_context()
    else:
        server_cmd, probe_tls = server.argv(host, port), None
    srv: subprocess.Popen[bytes] | None = None
    gen: subprocess.Popen[bytes] | None = None
    with open(log_path, "wb") as log:
        try:
            srv = subprocess.Popen(
                ["taskset", "-c", args.server_cpu, *server_cmd],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO_ROOT,
                env=env,
            )
            if not wait_accepting(srv, host, port, READY_TIMEOUT_S, probe_tls):
                res.status = "failed_to_start"
                code = srv.poll()
                res.error = (f"exit {code}: " if code is not None else "not accepting: ") + tail(log_path)
                return res
            if server.echo_loop is not None:
                wait = READY_TIMEOUT_S if server.echo_loop == "required" else 0.0
                res.echo_loop = logged_echo_loop(log_path, srv, wait)
                expected = expected_echo_loop(command_env(server_cmd, env))
                if server.echo_loop == "required" and res.echo_loop != expected:
                    res.status = "wrong_echo_loop"
                    said = f"the {res.echo_loop} one" if res.echo_loop else "nothing (no `echo loop:` line)"
                    res.error = (
                        f"expected the {expected} echo loop (YIELDIO_NO_EXTENSIONS/YIELDIO_PURE), it said {said}: "
                        + tail(log_path)
                    )
                    return res
            time.sleep(0.2)  # let the readiness probe's connection be torn down
            res.rss_base_kib = proc_status(srv.pid).get("VmRSS")

            # In --idle mode loadgen bounds the one-echo phase by warmup + duration.
            warmup, duration = (0.0, IDLE_ECHO_TIMEOUT_S) if scenario.idle else (args.warmup, args.duration)
            gen_cmd = [
                "taskset",
                "-c",
                args.loadgen_cpu,
                str(BUILD_DIR / "loadgen"),
                "--host",
                host,
                "--port",
                str(port),
                "--conns",
                str(scenario.conns),
                "--size",
                str(scenario.size),
                "--warmup",
                str(warmup),
                "--duration",
                str(duration),
                "--connect-timeout",
                str(CONNECT_TIMEOUT_S),
            ]
            if scenario.idle:
                gen_cmd += ["--idle", "--hold", str(IDLE_HOLD_S)]
            if scenario.tls:
                gen_cmd.append("--tls")
            if scenario.handshakes:
                gen_cmd.append("--handshakes")
            bound = CONNECT_TIMEOUT_S + warmup + duration + (IDLE_HOLD_S if scenario.idle else 0) + 20
            gen = subprocess.Popen(gen_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            ticks0 = t0 = None
            busy0, busy_frac = 0, None
            alive_in_window = False
            pinned = parse_cpus(args.server_cpu) | parse_cpus(args.loadgen_cpu)
            kernel_helpers = softirq_threads(pinned)
            for event in read_events(gen, time.monotonic() + bound, srv):
                kind = event.get("event")
                if kind == "measure_start":
                    ticks0, t0 = proc_cpu_ticks(srv.pid), time.monotonic()
                    busy0 = foreign_busy_ticks(pinned, kernel_helpers)
                elif kind == "measure_end":
                    ticks1, t1 = proc_cpu_ticks(srv.pid), time.monotonic()
                    busy1 = foreign_busy_ticks(pinned, kernel_helpers)
                    if ticks0 is not None and ticks1 is not None and t0 is not None and t1 > t0:
                        res.server_cpu_frac = (ticks1 - ticks0) / CLK_TCK / (t1 - t0)
                        busy_frac = (busy1 - busy0) / CLK_TCK / (t1 - t0)
                    _sample_memory(res, srv.pid)
                    alive_in_window = srv.poll() is None
                elif kind == "idle_ready":
                    time.sleep(IDLE_SETTLE_S)
                    _sample_memory(res, srv.pid)
                    alive_in_window = srv.poll() is None
                    assert gen.stdin is not None
                    gen.stdin.close()  # tells loadgen to let go of the connections
                elif kind == "result":
                    res.loadgen = event
                    if busy_frac is not None and res.server_cpu_frac is not None:
                        res.other_cpu_frac = max(0.0, busy_frac - res.server_cpu_frac - event["cpu_frac"])
            gen.wait(timeout=10)
            if not res.loadgen:
                res.status = "loadgen_failed"
                res.error = (gen.stderr.read().decode(errors="replace").strip() if gen.stderr else "")[-300:]
            elif problem := loadgen_problem(scenario, res.loadgen):
                res.status = "loadgen_errors"  # the figures stay in the JSON; no summary uses them
                res.error = problem
            if srv.poll() is not None:
                # Dying after the measured window (e.g. on the clients' hang-up)
                # does not void the figures; it is kept as a note in the JSON.
                if not alive_in_window:
                    res.status = "server_died"
                res.error = f"exit {srv.returncode}: {tail(log_path)}"
        except ServerDied:
            res.status = "server_died"
            res.error = f"exit {srv.returncode if srv else '?'}: {tail(log_path)}"
        except (TimeoutError, subprocess.TimeoutExpired, json.JSONDecodeError, OSError) as exc:
            res.status = "loadgen_failed"
            res.error = f"{type(exc).__name__}: {exc}"
        finally:
            if gen is not None:
                stop_process(gen)
                for pipe in (gen.stdin, gen.stdout, gen.stderr):
                    if pipe is not None and not pipe.closed:
                        pipe.close()
            if srv is not None:
                stop_process(srv)
    return res


def _sample_memory(res: RunResult, pid: int) -> None:
    status = proc_status(pid)
    res.rss_kib = status.get("VmRSS")
    res.hwm_kib = status.get("VmHWM")
    res.threads = status.get("Threads")


# -------------------------------------------------------------- summaries


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[RunResult]) -> list[dict[str, Any]]:
    """Median over the valid repeats of each server x scenario, ordered by
    server then scenario as listed in SERVERS and SCENARIOS."""
    server_rank = {s.name: i for i, s in enumerate(SERVERS)}
    scenario_rank = {s.name: i for i, s in enumerate(SCENARIOS)}
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in sorted(runs, key=lambda r: (server_rank.get(r.server, 99), scenario_rank.get(r.scenario, 99))):
        groups.setdefault((r.server, r.scenario), []).append(r)
    rows = []
    for (server, scenario), rs in groups.items():
        ok = [r for r in rs if r.valid]
        bad = [r for r in rs if not r.valid]
        row: dict[str, Any] = {"server": server, "scenario": scenario, "runs": len(rs), "valid_runs": len(ok)}
        row["echo_loop"] = "/".join(sorted({r.echo_loop for r in rs if r.echo_loop})) or None
        if ok:
            lg = [r.loadgen for r in ok]
            # Latency exists only for runs in which requests completed.
            timed = [g for g in lg if g["requests"] > 0]
            row.update(
                requests_per_s=_median([g["requests_per_s"] for g in lg]),
                requests_per_s_min=min(g["requests_per_s"] for g in lg),
                requests_per_s_max=max(g["requests_per_s"] for g in lg),
                mib_per_s=_median([g["mib_per_s"] for g in lg]),
                lat_p50_us=_median([g["lat_p50_us"] for g in timed]),
                lat_p99_us=_median([g["lat_p99_us"] for g in timed]),
                lat_max_us=_median([g["lat_max_us"] for g in timed]),
                server_cpu_pct=_pct(_median([r.server_cpu_frac for r in ok])),
                # the honest comparison when the generator is near its core's limit: CPU each request cost
                server_cpu_us_per_request=_median(
                    [
                        1e6 * r.server_cpu_frac / r.loadgen["requests_per_s"]
                        for r in ok
                        if r.server_cpu_frac is not None and r.loadgen["requests_per_s"] > 0
                    ]
                ),
                loadgen_cpu_pct=_pct(_median([g["cpu_frac"] for g in lg])),
                other_cpu_pct=_pct(_median([r.other_cpu_frac for r in ok])),
                rss_mib=_mib(_median([r.rss_kib for r in ok])),
                hwm_mib=_mib(_median([r.hwm_kib for r in ok])),
                rss_base_mib=_mib(_median([r.rss_base_kib for r in ok])),
                errors=_median([g["errors"] for g in lg]),
                conns_connected=_median([g["conns_connected"] for g in lg]),
            )
            if SCENARIO_BY_NAME.get(scenario, Scenario("", 0, 0)).handshakes:
                row["handshakes_per_s"] = row["requests_per_s"]
            if SCENARIO_BY_NAME.get(scenario, Scenario("", 0, 0)).idle:
                per_conn = [
                    ((r.rss_kib or 0) - (r.rss_base_kib or 0)) / r.loadgen["idle_ready"]
                    for r in ok
                    if r.rss_kib and r.rss_base_kib and r.loadgen.get("idle_ready", 0) > 0
                ]
                row["kib_per_conn"] = _median(per_conn)
                row["idle_ready"] = _median([g.get("idle_ready", 0) for g in lg])
                row["idle_incomplete_runs"] = sum(1 for g in lg if g.get("idle_ready", 0) < g["conns"])
            row["generator_limited"] = (row["loadgen_cpu_pct"] or 0) >= GENERATOR_LIMITED * 100
            row["other_load"] = (row["other_cpu_pct"] or 0) >= OTHER_LOAD * 100
            row["disturbed_runs"] = sum(1 for r in ok if r.disturbance)
            row["status"] = "ok" if not bad else f"{len(bad)}/{len(rs)} runs failed"
        else:
            row["status"] = bad[0].status
        row["note"] = bad[0].error[:200] if bad else ""
        rows.append(row)
    return rows


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def _mib(kib: float | None) -> float | None:
    return None if kib is None else kib / 1024.0


RATIO_BASES = ("uvloop-proto", "c-epoll", "tutorial")


def ratios(rows: list[dict[str, Any]], subject: str = "yieldio") -> dict[str, dict[str, float | None]]:
    """subject/base requests-per-second ratio per scenario (RSS ratio for idle ones)."""
    by = {(r["server"], r["scenario"]): r for r in rows}
    out: dict[str, dict[str, float | None]] = {}
    for sc in dict.fromkeys(r["scenario"] for r in rows):
        metric = "rss_mib" if SCENARIO_BY_NAME.get(sc, Scenario("", 0, 0)).idle else "requests_per_s"
        mine = by.get((subject, sc), {}).get(metric)
        out[sc] = {}
        for base in RATIO_BASES:
            theirs = by.get((base, sc), {}).get(metric)
            out[sc][base] = mine / theirs if mine and theirs else None
    return out


# ----------------------------------------------------------------- output


def _row(cells: list[str]) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def _fmt(x: Any, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def tls_summary(runs: list[RunResult]) -> dict[str, Any]:
    """What the TLS runs used: the client's settings and what was negotiated (from the first TLS run that reported)."""
    negotiated = next((r.loadgen for r in runs if r.loadgen.get("tls_version")), {})
    return {
        "certificate": "self-signed ECDSA P-256 (prime256v1), made for this run with the openssl command",
        "client": "OpenSSL, TLS 1.3 only, certificate not verified, no session cache (every handshake full)",
        "version": negotiated.get("tls_version"),
        "cipher": negotiated.get("tls_cipher"),
        "group": negotiated.get("tls_group"),
        "sessions_reused": sum(r.loadgen.get("sessions_reused", 0) for r in runs),
    }


def _load_notes(r: dict[str, Any]) -> str:
    """The notes cell of a row under load: flags, failures, the first error."""
    notes = [f"{r['echo_loop']} loop"] if r.get("echo_loop") else []
    if r.get("generator_limited"):
        notes.append("⚠ generator-limited")
    if r.get("other_load"):
        notes.append(f"⚠ other load {r['other_cpu_pct']:.0f}%")
    elif r.get("disturbed_runs"):
        notes.append(f"⚠ {r['disturbed_runs']} run(s) disturbed")
    if r.get("requests_per_s") == 0:
        notes.append("no request completed in the window")
    if r["status"] != "ok":
        notes.append(f"**{r['status']}**")
    if r.get("note"):
        notes.append(r["note"].replace("|", "/")[:120])
    return "; ".join(notes)


def markdown(rows: list[dict[str, Any]], ratio_table: dict[str, dict[str, float | None]], meta: dict[str, Any]) -> str:
    """The human report: load table, new-connections table, idle-RSS table, ratios."""
    out = [
        f"## Echo benchmark {meta['date']}",
        "",
        (
            f"{meta['cpu_model']}, Python {meta['python']}, server on CPU {meta['server_cpu']}, "
            f"loadgen on CPU {meta['loadgen_cpu']}; median of {meta['repeat']} run(s), "
            f"{meta['duration_s']} s measured after {meta['warmup_s']} s warm-up. "
            "MiB/s = echoed payload one way."
        ),
    ]
    tls = meta.get("tls")
    if tls:
        out += [
            "",
            (
                f"TLS: {tls['version']}, {tls['cipher']}, key exchange {tls['group']}, {tls['certificate']}; "
                f"client: {tls['client']}; sessions resumed: {tls['sessions_reused']}."
            ),
        ]
    kinds = {r["scenario"]: SCENARIO_BY_NAME.get(r["scenario"], Scenario("", 0, 0)) for r in rows}
    load_rows = [r for r in rows if not kinds[r["scenario"]].idle and not kinds[r["scenario"]].handshakes]
    handshake_rows = [r for r in rows if kinds[r["scenario"]].handshakes]
    idle_rows = [r for r in rows if kinds[r["scenario"]].idle]
    if load_rows:
        out += [
            "",
            (
                "| server | scenario | req/s | MiB/s | p50 µs | p99 µs | max µs | srv CPU % | srv µs/req | gen CPU % "
                "| RSS MiB | peak MiB | errors | notes |"
            ),
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
    for r in load_rows:
        out.append(
            _row(
                [
                    r["server"],
                    r["scenario"],
                    _fmt(r.get("requests_per_s")),
                    _fmt(r.get("mib_per_s"), 1),
                    _fmt(r.get("lat_p50_us")),
                    _fmt(r.get("lat_p99_us")),
                    _fmt(r.get("lat_max_us")),
                    _fmt(r.get("server_cpu_pct")),
                    _fmt(r.get("server_cpu_us_per_request"), 2),
                    _fmt(r.get("loadgen_cpu_pct")),
                    _fmt(r.get("rss_mib"), 1),
                    _fmt(r.get("hwm_mib"), 1),
                    _fmt(r.get("errors")),
                    _load_notes(r),
                ]
            )
        )
    if handshake_rows:
        out += [
            "",
            (
                "New connections (each: connect, full TLS 1.3 handshake, one echo, close; latency from connect() "
                "to the echo's last byte):"
            ),
            "",
            (
                "| server | scenario | handshakes/s | p50 µs | p99 µs | srv CPU % | srv µs/handshake | gen CPU % "
                "| errors | notes |"
            ),
            "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for r in handshake_rows:
            out.append(
                _row(
                    [
                        r["server"],
                        r["scenario"],
                        _fmt(r.get("handshakes_per_s")),
                        _fmt(r.get("lat_p50_us")),
                        _fmt(r.get("lat_p99_us")),
                        _fmt(r.get("server_cpu_pct")),
                        _fmt(r.get("server_cpu_us_per_request"), 0),
                        _fmt(r.get("loadgen_cpu_pct")),
                        _fmt(r.get("errors")),
                        _load_notes(r),
                    ]
                )
            )
    if idle_rows:
        out += [
            "",
            (
                "| server | scenario | idle conns | RSS before MiB | RSS idle MiB | KiB/conn "
                "| peak MiB | errors | notes |"
            ),
            "|---|---|--:|--:|--:|--:|--:|--:|---|",
        ]
        for r in idle_rows:
            notes = [f"{r['echo_loop']} loop"] if r.get("echo_loop") else []
            if r["status"] != "ok":
                notes.append(f"**{r['status']}**")
            if r.get("idle_incomplete_runs"):
                notes.append(f"{r['idle_incomplete_runs']} run(s) with connections that never echoed")
            if r.get("note"):
                notes.append(r["note"].replace("|", "/")[:120])
            out.append(
                _row(
                    [
                        r["server"],
                        r["scenario"],
                        _fmt(r.get("idle_ready")),
                        _fmt(r.get("rss_base_mib"), 1),
                        _fmt(r.get("rss_mib"), 1),
                        _fmt(r.get("kib_per_conn"), 2),
                        _fmt(r.get("hwm_mib"), 1),
                        _fmt(r.get("errors")),
                        "; ".join(notes),
                    ]
                )
            )
    out += [
        "",
        "Ratios (yieldio ÷ base; requests/s, handshakes/s for handshake scenarios, RSS for idle scenarios):",
        "",
        "| scenario | " + " | ".join(f"÷ {b}" for b in RATIO_BASES) + " |",
        "|---|" + "--:|" * len(RATIO_BASES),
    ]
    for sc, rs in ratio_table.items():
        out.append(f"| {sc} | " + " | ".join(_fmt(rs[b], 2) for b in RATIO_BASES) + " |")
    return "\n".join(out) + "\n"


CSV_FIELDS = [
    "server",
    "scenario",
    "status",
    "echo_loop",
    "runs",
    "valid_runs",
    "requests_per_s",
    "requests_per_s_min",
    "requests_per_s_max",
    "handshakes_per_s",
    "mib_per_s",
    "lat_p50_us",
    "lat_p99_us",
    "lat_max_us",
    "server_cpu_pct",
    "server_cpu_us_per_request",
    "loadgen_cpu_pct",
    "other_cpu_pct",
    "rss_mib",
    "hwm_mib",
    "rss_base_mib",
    "kib_per_conn",
    "errors",
    "conns_connected",
    "generator_limited",
    "other_load",
    "disturbed_runs",
    "note",
]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


# ------------------------------------------------------------------- meta


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def versions() -> dict[str, str]:
    """Versions of everything compared, so a chart says what it measured."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("yieldio", "uvloop", "trio", "curio", "gevent"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    if out["yieldio"] == "not installed":  # measured from src/ through PYTHONPATH
        probe = subprocess.run(
            [sys.executable, "-c", "import yieldio; print(yieldio.__version__)"],
            capture_output=True,
            text=True,
            env=server_env(),
            check=False,
        )
        out["yieldio"] = (probe.stdout.strip() + " (src)") if probe.returncode == 0 else "unavailable"
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    out["yieldio_commit"] = commit.stdout.strip() if commit.returncode == 0 else "uncommitted"
    try:
        out["gcc"] = subprocess.run(
            ["gcc", "-dumpfullversion"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["gcc"] = "unknown"
    return out


# -------------------------------------------------------------------- cli


def in_bench_venv() -> bool:
    venv = BENCH_DIR / ".venv"
    return venv.exists() and Path(sys.prefix).resolve() == venv.resolve()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="servers: "
        + ", ".join(s.name + ("" if s.default else " (opt-in)") for s in SERVERS)
        + "\nscenarios: "
        + ", ".join(s.name for s in SCENARIOS),
    )
    p.add_argument(
        "--servers",
        default=",".join(s.name for s in SERVERS if s.default),
        help="comma-separated server names (default: all but opt-in ones)",
    )
    p.add_argument(
        "--scenarios", default=",".join(s.name for s in SCENARIOS), help="comma-separated scenario names (default: all)"
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per server x scenario (median reported)")
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured warm-up seconds per run")
    p.add_argument("--host", default="127.0.0.1", help="loopback address to use")
    p.add_argument("--server-cpu", default=SERVER_CPU, help="CPU list for the server (taskset -c)")
    p.add_argument("--loadgen-cpu", default=LOADGEN_CPU, help="CPU list for the load generator")
    p.add_argument(
        "--noise-retries",
        type=int,
        default=NOISE_RETRIES,
        help="times to re-run a run disturbed by other load on the pinned CPUs",
    )
    p.add_argument("--no-chart", action="store_true", help="skip benchmarks/chart.py")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.server_list if s not in SERVER_BY_NAME] + [
        s for s in args.scenario_list if s not in SCENARIO_BY_NAME
    ]
    if unknown:
        p.error(f"unknown server/scenario: {', '.join(unknown)}")
    if not (args.repeat >= 1 and 0 < args.duration <= 600 and 0 <= args.warmup <= 120):
        p.error("need --repeat >= 1, 0 < --duration <= 600, 0 <= --warmup <= 120")
    if not args.host.startswith("127."):
        p.error("benchmarks run on loopback only (127.0.0.0/8)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    for tool in ("gcc", "taskset"):
        if shutil.which(tool) is None:
            print(f"missing {tool}: run benchmarks/setup.sh", file=sys.stderr)
            return 2
    ensure_loadgen()
    ensure_built(C_SERVER_SRC, BUILD_DIR / "c_epoll")
    if not in_bench_venv():
        print("note: not running in benchmarks/.venv; peer frameworks may be missing", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="yieldio-bench-tls-") as tls_dir:
        return run_all(args, tls_dir=Path(tls_dir))


def run_all(args: argparse.Namespace, tls_dir: Path) -> int:
    """Every run in order, then the report; TLS files (if a TLS scenario is
    selected) are made in ``tls_dir``, which outlives the runs."""
    tls_files = None
    if any(SCENARIO_BY_NAME[name].tls for name in args.scenario_list):
        if shutil.which("openssl") is None:
            print("missing the openssl command, needed for the TLS scenarios' certificate", file=sys.stderr)
            return 2
        tls_files = make_tls_files(tls_dir)
    # A TLS scenario runs only the servers that can serve TLS; the others are skipped, not failed.
    plan = [
        (scenario_name, server_name)
        for scenario_name in args.scenario_list
        for server_name in args.server_list
        if runs_on(SERVER_BY_NAME[server_name], SCENARIO_BY_NAME[scenario_name])
    ]
    skipped = [
        f"{server_name} × {scenario_name}"
        for scenario_name in args.scenario_list
        for server_name in args.server_list
        if not runs_on(SERVER_BY_NAME[server_name], SCENARIO_BY_NAME[scenario_name])
    ]
    if skipped:
        print(f"skipped (no TLS): {', '.join(skipped)}", file=sys.stderr)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = BUILD_DIR / "logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)

    total = len(plan) * args.repeat
    measured_versions = versions()  # before the runs: the code measured, even if it changes meanwhile
    started = time.monotonic()
    runs: list[RunResult] = []
    discarded: list[RunResult] = []  # disturbed attempts that were run again
    pinned = parse_cpus(args.server_cpu) | parse_cpus(args.loadgen_cpu)
    kernel_helpers = softirq_threads(pinned)
    n = 0
    # Repeats outermost and servers innermost: the machine's speed drifts (other
    # VMs on the host), and interleaving spreads that drift over all servers
    # instead of letting one server's every repeat land in a slow spell.
    for rep in range(1, args.repeat + 1):
        for scenario_name, server_name in plan:
            n += 1
            for attempt in range(1, args.noise_retries + 2):
                wait_for_quiet(pinned, kernel_helpers)
                r = run_one(SERVER_BY_NAME[server_name], SCENARIO_BY_NAME[scenario_name], rep, args, log_dir, tls_files)
                r.attempt = attempt
                if not r.disturbance or attempt == args.noise_retries + 1:
                    break
                print(
                    f"[{n}/{total}] {server_name} {scenario_name} #{rep}: {r.disturbance}, run again",
                    file=sys.stderr,
                    flush=True,
                )
                discarded.append(r)
            runs.append(r)
            lg = r.loadgen
            other = f", other CPU {100 * r.other_cpu_frac:.0f}%" if r.other_cpu_frac is not None else ""
            if SCENARIO_BY_NAME[scenario_name].idle and r.valid:
                brief = (
                    f"{lg.get('idle_ready')} idle connections, server RSS "
                    f"{(r.rss_kib or 0) / 1024:.1f} MiB, errors {lg.get('errors')}"
                )
            else:
                unit = "handshakes/s" if SCENARIO_BY_NAME[scenario_name].handshakes else "req/s"
                brief = (
                    f"{lg.get('requests_per_s', 0):,.0f} {unit}, errors {lg.get('errors')}{other}"
                    if r.valid
                    else f"{r.status}: {r.error[:100]}"
                )
            loop = f" [{r.echo_loop} loop]" if r.echo_loop else ""
            print(f"[{n}/{total}] {server_name}{loop} {scenario_name} #{rep}: {brief}", file=sys.stderr, flush=True)

    elapsed = time.monotonic() - started
    rows = summarize(runs)
    ratio_table = ratios(rows)
    meta = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": measured_versions,
        "server_cpu": args.server_cpu,
        "loadgen_cpu": args.loadgen_cpu,
        "repeat": args.repeat,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "elapsed_s": round(elapsed, 1),
        "disturbed_runs_repeated": len(discarded),
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "scenarios": {s.name: asdict(s) for s in SCENARIOS if s.name in args.scenario_list},
        "servers": {s.name: s.description for s in SERVERS if s.name in args.server_list},
        "skipped": skipped,
        "echo_loops": {r.server: r.echo_loop for r in runs if r.echo_loop},
        "failed_runs": len([r for r in runs if not r.valid]),
        "tls": tls_summary(runs) if tls_files else None,
        "mib_per_s": "echoed payload one way (requests/s x message size / 2^20)",
    }
    doc = {
        "meta": meta,
        "summary": rows,
        "ratios_yieldio": ratio_table,
        "runs": [asdict(r) for r in runs],
        "discarded_runs": [asdict(r) for r in discarded],
    }
    report = markdown(rows, ratio_table, meta)
    json_text = json.dumps(doc, indent=1)
    (args.results_dir / f"echo-{stamp}.json").write_text(json_text)
    (args.results_dir / "latest.json").write_text(json_text)
    write_csv(args.results_dir / f"echo-{stamp}.csv", rows)
    write_csv(args.results_dir / "latest.csv", rows)
    (args.results_dir / "latest.md").write_text(report)
    print(report)
    failed = [r for r in runs if not r.valid]
    for r in failed:
        print(f"failed: {r.server} {r.scenario} #{r.repeat}: {r.status}: {r.error[:200]}", file=sys.stderr)
    print(
        f"{total} runs in {elapsed:.0f} s, {len(failed)} failed (not counted); results in {args.results_dir}",
        file=sys.stderr,
    )

    if not args.no_chart:
        chart = subprocess.run(
            [
                sys.executable,
                str(BENCH_DIR / "chart.py"),
                str(args.results_dir / "latest.json"),
                "-o",
                str(args.results_dir / "echo.png"),
            ],
            check=False,
        )
        if chart.returncode != 0:
            print("chart.py failed (is matplotlib installed? run benchmarks/setup.sh)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
