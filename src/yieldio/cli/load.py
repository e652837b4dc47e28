"""``yieldio load URL``: send echo traffic over TCP, TLS, UDP or Unix; check every byte; time it.

The load itself runs on yieldio's own kernel (:mod:`yieldio.clients.load`); this module
turns flags into a :class:`~yieldio.clients.load.LoadPlan`, checks that the target answers
before any load is sent (a refused port, an unknown name, a certificate that does not verify:
one line, exit status 2), runs it in this process or in ``--workers`` processes, and reports:
a live view while it runs (on a terminal), the final report, and on request JSON, JSON
lines per interval and HdrHistogram's interval log.

Exit status: 0 when every echo matched and every threshold held; 1 when one did not, or
the run could not finish (the server died: the report up to then is still given); 2 for a
usage error or a target that cannot be loaded; 130 when interrupted (Ctrl-C), after the
report so far.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import selectors
import signal
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import IO, Any, Self, TextIO

from ..clients.load import Load, LoadError, LoadPlan, Tally, client_loop
from ..core.kernel import Cancelled
from ..core.runner import SignalRoute, new_kernel
from ..core.scopes import TaskTimeout, timeout_after
from ..core.traps import sleep, spawn
from ..io.sockets import Socket, error_reason
from ..io.urls import BadListenURL, ListenURL, parse_listen_url
from .flags import bounded, count
from .results import Counts, MissingExtra, Results, decode, new_histogram, record_all, require, text_report

UDP_LIMIT = 65507  # the largest IPv4 UDP payload
INTERVAL = 1.0  # seconds between live lines, JSON lines and interval log entries


def add_parser(commands: Any) -> None:
    """``load URL`` and its flags."""
    load = commands.add_parser(
        "load",
        help="load an echo server, check every byte, measure latency",
        description=(
            "Send echo traffic to URL (tcp://HOST:PORT, tls://HOST:PORT, udp://HOST:PORT or unix:PATH), check "
            "that every echo comes back byte for byte, and measure each round trip's latency in an HdrHistogram. "
            "Closed loop by default: each connection sends its next message when the echo of the last is back. "
            "With --rate, open loop: each request has an intended send time and its latency is measured from "
            "that time, so a server that stalls shows the stall in every request it delayed (wrk2's correction "
            "of coordinated omission). Exit status: 0 when every echo matched and every threshold held, 1 when "
            "not, 2 for bad input or an unreachable target, 130 when interrupted."
        ),
    )
    load.add_argument("url", metavar="URL", type=_target_url, help="the server, in --listen's syntax")
    load.add_argument("-c", "--connections", type=count, default=10, metavar="N", help="connections (default: 10)")
    load.add_argument(
        "-s", "--size", type=count, default=1024, metavar="BYTES", help="message size in bytes (default: 1024)"
    )
    length = load.add_mutually_exclusive_group()
    length.add_argument(
        "-d", "--duration", type=_seconds, default=None, metavar="SECONDS", help="run this long (default: 10)"
    )
    length.add_argument("-n", "--requests", type=count, default=None, metavar="N", help="send N requests in all")
    load.add_argument(
        "--warmup",
        type=_nonnegative,
        default=1.0,
        metavar="SECONDS",
        help="not counted, before a --duration run (default: 1)",
    )
    load.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="per request: an echo not back by then is a timeout; a datagram, lost (default: 5; UDP: 1)",
    )
    load.add_argument(
        "--rate",
        type=_positive_float,
        default=None,
        metavar="R",
        help="open loop at R requests/s over all connections, latency from each intended send time",
    )
    load.add_argument("--prefix", default="GOT:", help="what the server puts before each reply ('' for RFC 862)")
    load.add_argument("--framing", choices=("chunk", "line"), default="chunk", help="as the server's --framing")
    load.add_argument("--tls-ca", metavar="FILE", help="trust this CA bundle (PEM) for tls:// (default: the system's)")
    load.add_argument("--insecure", action="store_true", help="tls://: do not verify the server's certificate")
    load.add_argument("--server-name", metavar="NAME", help="tls://: the name to verify and send (default: HOST)")
    load.add_argument(
        "--proxy-protocol",
        choices=("v1", "v2"),
        help="send a PROXY protocol header first on each connection, as a load balancer would",
    )
    load.add_argument(
        "--proxy-source",
        type=_host_port,
        metavar="HOST:PORT",
        help="the client address the header claims (default: 192.0.2.1 and the connection's own port)",
    )
    load.add_argument("--connect-rate", type=_positive_float, metavar="R", help="open at most R connections per second")
    load.add_argument("--churn", type=count, metavar="N", help="a new connection every N requests")
    load.add_argument("--workers", type=count, default=1, metavar="N", help="N processes (connections shared out)")
    load.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the random message content")
    load.add_argument("--json", metavar="FILE", help="write the final report as JSON ('-': stdout, and only it)")
    load.add_argument("--json-lines", metavar="FILE", help="one JSON object per second as it runs ('-': stdout)")
    load.add_argument("--hdr-log", metavar="FILE", help="HdrHistogram's interval log of the latencies")
    load.add_argument(
        "--max-loss", type=_fraction, default=0.0, metavar="FRACTION", help="fail above this datagram loss (default: 0)"
    )
    load.add_argument("--p99-max", type=_duration_us, metavar="DURATION", help="fail if p99 is above this (5ms, 800us)")
    load.add_argument(
        "--error-max",
        type=bounded(int, "--error-max", 0),
        default=0,
        metavar="N",
        help="fail with more than N errors: resets, timeouts, short or wrong echoes (default: 0)",
    )
    load.add_argument("--verbose", action="store_true", help="also report the client's CPU time per request")
    load.set_defaults(func=load_command)


# -- argument types -----------------------------------------------------------------------


def _target_url(text: str) -> ListenURL:
    try:
        url = parse_listen_url(text)
    except BadListenURL as error:
        raise argparse.ArgumentTypeError(str(error).replace("listener URL", "URL")) from None
    if url.kind != "unix" and (url.port == 0 or not url.host):
        raise argparse.ArgumentTypeError(f"{text!r}: name the server's host and port")
    return url


_seconds = bounded(float, "the number of seconds", 0.001)
_nonnegative = bounded(float, "the number of seconds", 0)
_positive_float = bounded(float, "the rate", 0.001)


def _fraction(text: str) -> float:
    value = float(text.removesuffix("%")) / (100 if text.endswith("%") else 1)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a fraction from 0 to 1 (or a percentage), not {text}")
    return value


_UNITS = {"us": 1, "µs": 1, "ms": 1000, "s": 1_000_000}


def _duration_us(text: str) -> float:
    found = re.fullmatch(r"\s*([0-9.]+)\s*(us|µs|ms|s)\s*", text)
    if not found:
        raise argparse.ArgumentTypeError(f"a duration such as 5ms, 800us or 1s, not {text!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def _host_port(text: str) -> tuple[str, int]:
    try:
        url = parse_listen_url(f"tcp://{text}")
    except BadListenURL:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}") from None
    return url.host, url.port


# -- the command ----------------------------------------------------------------------------


class _Failed(Exception):
    """Bad input or an unreachable target: one line on stderr, exit status 2."""


def load_command(args: argparse.Namespace) -> int:
    try:
        plan = _plan(args)
        require("hdrh.histogram")
        outputs = _Outputs.open(args)
    except (_Failed, MissingExtra) as error:
        print(f"yieldio load: {error}", file=sys.stderr)
        return 2
    with outputs:
        if args.workers == 1:
            results, interrupted = _run_here(plan, args, outputs)
        else:
            results, interrupted = _run_workers(plan, args, outputs)
        if results is None:
            return 2  # the probe failed: said already
        return _finish(results, args, outputs, interrupted, client_loop(plan))


def _plan(args: argparse.Namespace) -> LoadPlan:
    url: ListenURL = args.url
    prefix = os.fsencode(args.prefix)
    if url.kind == "udp" and args.size + len(prefix) > UDP_LIMIT:
        raise _Failed(f"--size {args.size}: with the prefix, an echo of more than {UDP_LIMIT} bytes fits no datagram")
    if url.kind == "udp" and args.size < 8:
        raise _Failed("--size: a datagram carries its 8-byte sequence number, so at least 8 bytes")
    if url.kind == "udp" and args.framing == "line":
        raise _Failed("--framing line is for streams: a datagram is always answered whole")
    if url.kind == "udp" and (args.proxy_protocol or args.churn):
        raise _Failed("--proxy-protocol and --churn are for stream connections")
    if args.connections < args.workers:
        raise _Failed(f"--workers {args.workers} needs at least as many --connections")
    context: ssl.SSLContext | None = None
    if url.kind == "tls":
        context = _tls_context(args)
    elif args.tls_ca or args.insecure or args.server_name:
        raise _Failed("--tls-ca, --insecure and --server-name are for tls:// URLs")
    duration = args.duration if args.duration is not None else 10.0
    return LoadPlan(
        target=url,
        connections=args.connections,
        size=args.size,
        requests=args.requests,
        duration=duration,
        warmup=0.0 if args.requests is not None else args.warmup,
        timeout=args.timeout if args.timeout is not None else (1.0 if url.kind == "udp" else 5.0),
        rate=args.rate,
        prefix=prefix,
        framing=args.framing,
        ssl=context,
        server_hostname=args.server_name,
        proxy_version=None if args.proxy_protocol is None else (1 if args.proxy_protocol == "v1" else 2),
        proxy_source=args.proxy_source,
        connect_rate=args.connect_rate,
        churn=args.churn,
        seed=args.seed,
    )


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if args.tls_ca:
        try:
            context.load_verify_locations(args.tls_ca)
        except (OSError, ssl.SSLError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise _Failed(f"cannot read the CA bundle {args.tls_ca}: {reason}") from None
    return context


def _setup(plan: LoadPlan, args: argparse.Namespace) -> dict[str, Any]:
    """How the run was made, as the JSON report and the text report's first line say it."""
    return {
        "url": str(plan.target),
        "connections": plan.connections,
        "size": plan.size,
        "mode": plan.mode,
        "rate_asked": plan.rate,
        "framing": plan.framing,
        "prefix": plan.prefix.decode("utf-8", "backslashreplace"),
        "workers": args.workers,
    }


# -- one process ----------------------------------------------------------------------------


class _Run:
    """A load on this process's kernel, told at every interval what it has measured since."""

    def __init__(self, plan: LoadPlan, on_interval: Callable[[Counts, Any, float], None]) -> None:
        self.plan = plan
        self.tally = Tally()
        self.on_interval = on_interval
        self.probe_error: str | None = None
        self.measured_since = 0.0  # perf_counter when counting began
        self.measured_until = 0.0
        self.cpu_since = 0.0  # this process's CPU seconds then
        self.cpu_seconds = 0.0  # and what it used while counting

    async def main(self) -> None:
        load = Load(self.plan, self.tally)
        first: Socket | None = None
        try:
            await load.resolve()
            first = await timeout_after(self.plan.timeout, load.connect(0))  # the probe: the first connection
            if self.plan.target.kind == "udp":
                with first:  # connecting proves nothing: a datagram must come back
                    await timeout_after(self.plan.timeout, _probe_datagram(first, self.plan.prefix))
                first = None
        except (LoadError, OSError, ssl.SSLError, TaskTimeout) as error:
            self.probe_error = _probe_failure(self.plan, error)
            return
        ticker = await spawn(self._tick(), name="load intervals", daemon=True)
        try:
            await load.run(first)
        finally:
            self.measured_until = time.perf_counter()
            self.cpu_seconds = _cpu_seconds() - self.cpu_since if self.measured_since else 0.0
            await ticker.cancel()
            self._interval()

    async def _tick(self) -> None:
        while not self.tally.measuring:
            await sleep(0.01)
        self.measured_since = time.perf_counter()
        self.cpu_since = _cpu_seconds()
        while True:
            await sleep(INTERVAL)
            self._interval()

    def _interval(self) -> None:
        if self.measured_since:
            histogram = new_histogram()
            record_all(histogram, self.tally.take_latencies())
            self.on_interval(Counts.of(self.tally), histogram, time.perf_counter() - self.measured_since)

    @property
    def elapsed(self) -> float:
        return (
            max(0.0, (self.measured_until or time.perf_counter()) - self.measured_since) if self.measured_since else 0
        )


async def _probe_datagram(sock: Socket, prefix: bytes) -> None:
    """One datagram out and its echo back, before any load."""
    probe = b"yieldio load probe " + os.urandom(8)
    await sock.send(probe)
    while await sock.recv(65536) != prefix + probe:  # anything else: a stray echo of someone's
        pass


def _probe_failure(plan: LoadPlan, error: BaseException) -> str:
    if isinstance(error, TaskTimeout):
        return f"{plan.target.display()}: no answer within {plan.timeout:g}s"
    if isinstance(error, ConnectionRefusedError) and plan.target.kind == "udp":
        return f"{plan.target.display()}: no UDP server there (ICMP port unreachable)"
    if isinstance(error, LoadError):
        return str(error)
    return f"cannot connect to {plan.target.display()}: {error_reason(error)}"


def _cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _run_here(plan: LoadPlan, args: argparse.Namespace, outputs: _Outputs) -> tuple[Results | None, bool]:
    total = new_histogram()
    latest = Counts()

    def on_interval(counts: Counts, histogram: Any, elapsed: float) -> None:
        nonlocal latest
        total.add(histogram)
        outputs.interval(counts, latest, histogram, elapsed)
        latest = counts

    run = _Run(plan, on_interval)
    kernel = new_kernel()
    with SignalRoute(kernel) as signals, outputs.live(plan), contextlib.suppress(Cancelled):
        kernel.run(run.main)
    if run.probe_error is not None:
        print(f"yieldio load: {run.probe_error}", file=sys.stderr)
        return None, False
    results = Results(latest, total, run.elapsed, _setup(plan, args), run.cpu_seconds)
    return results, signals.received is not None


# -- several processes ----------------------------------------------------------------------


def _share(total: int | None, workers: int, index: int) -> int | None:
    if total is None:
        return None
    return total // workers + (index < total % workers)


def _worker_plan(plan: LoadPlan, workers: int, index: int) -> LoadPlan:
    """This worker's share: connections, requests and rate divided as evenly as they go."""
    connections = _share(plan.connections, workers, index)
    assert connections is not None
    rate = None if plan.rate is None else plan.rate * connections / plan.connections
    connect_rate = None if plan.connect_rate is None else plan.connect_rate / workers
    return replace(
        plan,
        connections=connections,
        requests=_share(plan.requests, workers, index),
        rate=rate,
        connect_rate=connect_rate,
        seed=plan.seed * 1000 + index,  # each worker its own messages
    )


def _worker(plan: LoadPlan, out: int) -> int:
    """A worker process: the load, each interval written to ``out`` as one JSON line."""
    stream = os.fdopen(out, "w", buffering=1)

    def on_interval(counts: Counts, histogram: Any, elapsed: float) -> None:
        record = {"counts": counts.to_json(), "histogram": histogram.encode().decode("ascii"), "elapsed": elapsed}
        stream.write(json.dumps(record) + "\n")

    run = _Run(plan, on_interval)
    kernel = new_kernel()
    with SignalRoute(kernel), contextlib.suppress(Cancelled):
        kernel.run(run.main)
    if run.probe_error is not None:
        stream.write(json.dumps({"probe_error": run.probe_error}) + "\n")
        return 2
    stream.write(json.dumps({"final": True, "elapsed": run.elapsed, "cpu": run.cpu_seconds}) + "\n")
    return 0


def _run_workers(plan: LoadPlan, args: argparse.Namespace, outputs: _Outputs) -> tuple[Results | None, bool]:
    """Fork ``--workers`` processes; add up what each reports, interval by interval, exactly."""
    workers: dict[int, int] = {}  # read end -> pid
    sys.stdout.flush()
    sys.stderr.flush()
    for index in range(args.workers):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent alone, which passes it on once
            os.close(read_end)
            for other in workers:
                os.close(other)
            code = 1
            try:
                code = _worker(_worker_plan(plan, args.workers, index), write_end)
            finally:
                os._exit(code)
        os.close(write_end)
        workers[read_end] = pid
    total = new_histogram()
    latest: dict[int, Counts] = {}
    interval: dict[int, int] = {}
    pending: dict[int, list[tuple[Counts, Any, float]]] = {}  # intervals that wait for the other workers
    elapsed: list[float] = []
    cpu = 0.0
    probe_error: str | None = None
    shown = Counts()
    selector = selectors.DefaultSelector()
    buffers = {fd: b"" for fd in workers}
    for fd in workers:
        selector.register(fd, selectors.EVENT_READ)
    received: list[int] = []

    def pass_on(signum: int, _: Any) -> None:  # the workers stop and report what they have
        received.append(signum)
        for pid in workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    old = {signum: signal.signal(signum, pass_on) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with outputs.live(plan):
            while buffers:
                for key, _ in selector.select():
                    fd = int(key.fd)
                    try:
                        chunk = os.read(fd, 1 << 20)
                    except InterruptedError:
                        continue
                    if not chunk:
                        selector.unregister(fd)
                        os.close(fd)
                        del buffers[fd]
                        continue
                    data = buffers[fd] + chunk
                    *lines, buffers[fd] = data.split(b"\n")
                    for line in lines:
                        record = json.loads(line)
                        if "probe_error" in record:
                            probe_error = probe_error or record["probe_error"]
                        elif record.get("final"):
                            elapsed.append(record["elapsed"])
                            cpu += record["cpu"]
                        else:
                            counts, histogram = Counts.from_json(record["counts"]), decode(record["histogram"])
                            latest[fd] = counts
                            total.add(histogram)
                            number = interval[fd] = interval.get(fd, 0) + 1
                            pending.setdefault(number, []).append((counts, histogram, record["elapsed"]))
                            if len(pending[number]) == len(workers):
                                merged, merged_histogram = _merge_interval(pending.pop(number))
                                outputs.interval(merged, shown, merged_histogram, record["elapsed"])
                                shown = merged
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
        for pid in workers.values():
            os.waitpid(pid, 0)
    interrupted = bool(received)
    if probe_error is not None:
        print(f"yieldio load: {probe_error}", file=sys.stderr)
        return None, False
    counts = Counts()
    for each in latest.values():
        counts.add(each)
    return Results(counts, total, max(elapsed, default=0.0), _setup(plan, args), cpu), interrupted


def _merge_interval(parts: list[tuple[Counts, Any, float]]) -> tuple[Counts, Any]:
    counts, histogram = Counts(), new_histogram()
    for part_counts, part_histogram, _ in parts:
        counts.add(part_counts)
        histogram.add(part_histogram)
    return counts, histogram


# -- what it shows --------------------------------------------------------------------------


class _Outputs:
    """Where the report, the live view and the optional files go."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.verbose: bool = args.verbose
        self.json_path: str | None = args.json
        # with --json - (or --json-lines -), stdout holds JSON only: the person's view goes to stderr
        json_on_stdout = "-" in (args.json, args.json_lines)
        self.human: TextIO = sys.stderr if json_on_stdout else sys.stdout
        if self.human.isatty():
            require("rich.live")  # the live view: said now, before any file is made or load sent
        self.files: list[IO[str]] = []
        self.json_lines: TextIO | None = self._open(args.json_lines)
        self.hdr_log: Any = None
        hdr_file = self._open(args.hdr_log)
        if hdr_file is not None:
            log_module = require("hdrh.log")
            self.hdr_log = log_module.HistogramLogWriter(hdr_file)
            self.hdr_log.output_comment("yieldio load: latencies in microseconds")
            self.hdr_log.output_legend()
        self.started = time.time()
        self.live_view: Any = None
        self.requests_asked: int | None = args.requests

    @classmethod
    def open(cls, args: argparse.Namespace) -> _Outputs:
        try:
            return cls(args)
        except OSError as error:
            raise _Failed(f"cannot write {error.filename}: {error.strerror}") from None

    def _open(self, path: str | None) -> TextIO | None:
        if path is None:
            return None
        if path == "-":
            return sys.stdout
        stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        self.files.append(stream)
        return stream

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for stream in self.files:
            stream.close()

    @contextlib.contextmanager
    def live(self, plan: LoadPlan) -> Iterator[None]:
        """On a terminal, a small live table (rich) while the load runs; elsewhere nothing."""
        if not self.human.isatty():
            yield
            return
        live_module = require("rich.live")
        self.live_view = _LiveView(self.human, plan, self.requests_asked, live_module)
        with self.live_view.live:
            yield
        self.live_view = None

    def interval(self, counts: Counts, before: Counts, histogram: Any, elapsed: float) -> None:
        requests = counts.values["requests"] - before.values["requests"]
        errors = sum(counts.errors.values()) - sum(before.errors.values())
        line = {
            "elapsed_s": round(elapsed, 3),
            "requests": requests,
            "requests_total": counts.values["requests"],
            "errors": errors,
            "lost": counts.values["lost"] - before.values["lost"],
            "latency_us": {
                "p50": int(histogram.get_value_at_percentile(50)),
                "p99": int(histogram.get_value_at_percentile(99)),
                "max": int(histogram.get_max_value()),
            },
        }
        if self.json_lines is not None:
            self.json_lines.write(json.dumps(line) + "\n")
            self.json_lines.flush()
        if self.hdr_log is not None:
            end = self.started + elapsed
            self.hdr_log.output_interval_histogram(histogram, end - INTERVAL, end, max_value_unit_ratio=1.0)
        if self.live_view is not None:
            self.live_view.update(line, counts)


class _LiveView:
    """The live table: one row per interval, the latest few, and a progress bar for -n."""

    def __init__(self, stream: TextIO, plan: LoadPlan, requests: int | None, live_module: Any) -> None:
        console_module, table_module = require("rich.console"), require("rich.table")
        self.table_class = table_module.Table
        self.group_class = console_module.Group
        self.bar_class = require("rich.progress_bar").ProgressBar
        self.rows: list[tuple[str, ...]] = []
        self.plan = plan
        self.requests = requests
        self.done = 0
        self.live = live_module.Live(
            self._render(), console=console_module.Console(file=stream), refresh_per_second=4, transient=False
        )

    def _render(self) -> Any:
        table = self.table_class(title=f"yieldio load {self.plan.target} ({self.plan.mode} loop)")
        for column in ("time", "req/s", "p50", "p99", "max", "errors", "done"):
            table.add_column(column, justify="right")
        for row in self.rows[-10:]:
            table.add_row(*row)
        if not self.requests:
            return table
        return self.group_class(table, self.bar_class(total=self.requests, completed=self.done))

    def update(self, line: dict[str, Any], counts: Counts) -> None:
        from .results import human_duration

        latency = line["latency_us"]
        self.done = counts.values["requests"]
        done = f"{counts.values['requests']:,}"
        if self.requests:
            done += f" ({100 * counts.values['requests'] / self.requests:.0f}%)"
        self.rows.append(
            (
                f"{line['elapsed_s']:.0f}s",
                f"{line['requests'] / INTERVAL:,.0f}",
                human_duration(latency["p50"]),
                human_duration(latency["p99"]),
                human_duration(latency["max"]),
                f"{line['errors']:,}",
                done,
            )
        )
        self.live.update(self._render())


# -- the verdict ----------------------------------------------------------------------------


def _finish(results: Results, args: argparse.Namespace, outputs: _Outputs, interrupted: bool, loop: str) -> int:
    report = results.to_json()
    verdicts = _verdicts(results, args)
    report["failed"] = verdicts
    report["interrupted"] = interrupted
    warnings = _warnings(results, args)
    report["warnings"] = warnings
    if outputs.json_path is not None:
        text = json.dumps(report, indent=2)
        if outputs.json_path == "-":
            print(text)
        else:
            try:
                with open(outputs.json_path, "w", encoding="utf-8") as stream:
                    stream.write(text + "\n")
            except OSError as error:
                print(f"yieldio load: cannot write {outputs.json_path}: {error.strerror}", file=sys.stderr)
                return 1
    human = outputs.human
    print(text_report(results, verbose=args.verbose), file=human)
    if args.verbose:
        print(f"  client loop: {loop}", file=human)
    for warning in warnings:
        print(f"  warning: {warning}", file=human)
    for verdict in verdicts:
        print(f"  FAILED: {verdict}", file=human)
    if interrupted:
        return 130
    return 1 if verdicts else 0


def _verdicts(results: Results, args: argparse.Namespace) -> list[str]:
    """Why the run failed, if it did: the checks a CI pipeline gates on."""
    report = results.to_json()
    failed = []
    if report["mismatches"]:
        failed.append(f"{report['mismatches']} echoes differed from what was sent")
    if report["sent"]:
        loss = report["lost"] / report["sent"]
        if loss > args.max_loss:
            failed.append(
                f"{report['lost']} of {report['sent']} datagrams lost ({loss:.2%}; --max-loss {args.max_loss:g})"
            )
    if report["errors"] > args.error_max and report["errors"] > report["mismatches"]:  # (those said above)
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(report["errors_by_kind"].items()))
        failed.append(f"{report['errors']} errors ({kinds}; --error-max {args.error_max})")
    if args.p99_max is not None and report["latency_us"]["p99"] > args.p99_max:
        failed.append(f"p99 {report['latency_us']['p99']} µs (--p99-max {args.p99_max:g} µs)")
    if report["connections_lost"]:
        failed.append(f"{report['connections_lost']} connections lost (could not be opened again)")
    if args.requests is not None and report["requests"] + report["errors"] + report["lost"] < args.requests:
        failed.append(f"{report['requests']} of {args.requests} requests done")
    if not report["requests"]:
        failed.append("no request completed")
    return failed


def _warnings(results: Results, args: argparse.Namespace) -> list[str]:
    report = results.to_json()
    warnings = []
    asked = results.setup.get("rate_asked")
    if asked and report["rps"] < 0.9 * asked:
        warnings.append(
            f"open loop: {report['rps']:,.0f} requests/s achieved of {asked:,.0f} asked; latencies include the wait "
            "of requests queued behind slow echoes (one request in flight per connection: add connections)"
        )
    # (an open loop spends the last millisecond before each send polling, by design: its CPU says nothing)
    if not asked and report["elapsed_s"] and results.cpu_seconds / report["elapsed_s"] > 0.9 * args.workers:
        warnings.append(
            "the client used all of its CPU: it, not the server, may be what limits the load (try --workers)"
        )
    if asked and report["sent_late"] > 0.01 * max(report["sent"], 1):
        warnings.append(
            f"open loop: {report['sent_late']:,} requests were sent more than 1 ms after their intended time"
        )
    return warnings
