"""``yieldio serve``: the echo server on every listener, in this process or in ``--workers`` processes.

Everything that can be refused is checked before anything is served: the flags and
variables, then the listeners (all opened or none), the certificate, the metrics library.
A refusal is one line on stderr and exit status 1 (2 for a usage error), nothing left
listening.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import resource
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..compiled import ECHO_LOOP
from ..core.runner import Extension, run
from ..core.traps import spawn
from ..io.sockets import HANDSHAKE_TIMEOUT, Socket, format_address
from ..io.urls import BadListenURL, ListenURL, parse_listen_list, parse_listen_url
from ..observe.metrics import Gatherer, MetricsUnavailable, answer_gatherer, local_source, prometheus
from ..observe.metrics import make_handler as make_metrics_handler
from ..observe.monitor_address import DEFAULT_ADDRESS as DEFAULT_MONITOR
from ..observe.monitor_address import BadAddress, open_monitor_socket, parse_monitor_address, token_for
from ..observe.tracefile import trace_file
from ..servers.echo import DEFAULT_MAX_LINE, DEFAULT_PREFIX
from ..servers.faults import Faults
from ..servers.listeners import (
    EchoOptions,
    Listener,
    SetupError,
    close_all,
    load_tls_context,
    open_for_workers,
    open_listeners,
    serve_all,
)
from ..servers.placeholders import PlaceholderError, Template
from ..servers.proxy_protocol import DEFAULT_TIMEOUT as PROXY_HEADER_TIMEOUT
from ..servers.stream import ServerOptions
from ..servers.workers import Aside, supervise
from .flags import (
    FromEnvironment,
    add_log_format,
    add_log_level,
    announce,
    bounded,
    count,
    listen_port,
    listen_url,
    seconds,
)

log = logging.getLogger("yieldio")


def add_parser(commands: Any) -> FromEnvironment:
    """``serve`` and its flags, each of which a ``YIELDIO_*`` variable can also set."""
    serve = commands.add_parser(
        "serve",
        help="run the echo server",
        description="Run the echo server: every message received is answered with PREFIX + message. "
        "Every flag can also be set by the environment variable named in its help; a flag given here wins.",
    )
    env = FromEnvironment()
    serve.add_argument(
        "--listen",
        action="append",
        type=listen_url,
        metavar="URL",
        help="a listener: tcp://HOST:PORT, tls://HOST:PORT, udp://HOST:PORT or unix:PATH; repeat for several "
        "(an empty HOST is every address, IPv6 in brackets; default: the --host/--port TCP listener) "
        "[env YIELDIO_LISTEN, comma-separated]",
    )
    env.add(
        serve,
        "--host",
        "YIELDIO_HOST",
        "127.0.0.1",
        help="address to listen on; '' or 0.0.0.0 for all IPv4, :: for all IPv6",
    )
    env.add(serve, "--port", "YIELDIO_PORT", 25000, type=listen_port, help="TCP port; 0 picks a free one")
    env.add(serve, "--tls-cert", "YIELDIO_TLS_CERT", None, metavar="FILE", help="certificate chain for tls:// (PEM)")
    env.add(serve, "--tls-key", "YIELDIO_TLS_KEY", None, metavar="FILE", help="its private key (PEM)")
    env.add(
        serve,
        "--tls-handshake-timeout",
        "YIELDIO_TLS_HANDSHAKE_TIMEOUT",
        HANDSHAKE_TIMEOUT,
        type=seconds,
        metavar="SECONDS",
        help="on tls:// listeners, close a connection whose TLS handshake is not done within this long",
    )
    env.add(
        serve,
        "--proxy-protocol",
        "YIELDIO_PROXY_PROTOCOL",
        False,
        action="store_true",
        help="expect a PROXY protocol header (v1 or v2) first on each TCP, TLS and Unix connection, "
        "as a load balancer sends it; the original client's address is logged",
    )
    env.add(
        serve,
        "--proxy-timeout",
        "YIELDIO_PROXY_TIMEOUT",
        PROXY_HEADER_TIMEOUT,
        type=seconds,
        metavar="SECONDS",
        help="with --proxy-protocol, close a connection whose header has not arrived within this long",
    )
    env.add(
        serve,
        "--metrics",
        "YIELDIO_METRICS",
        None,
        type=_metrics_address,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (needs yieldio[metrics]); "
        "with --workers, one endpoint: the sum of every worker's counts",
    )
    env.add(
        serve,
        "--prefix",
        "YIELDIO_PREFIX",
        Template.plain(DEFAULT_PREFIX),
        type=_template,
        help="bytes put before each reply; '' gives a plain RFC 862 echo; placeholders as in --banner",
    )
    env.add(
        serve,
        "--banner",
        "YIELDIO_BANNER",
        None,
        type=_template,
        metavar="TEXT",
        help="a line sent to each TCP, TLS and Unix connection as it opens; placeholders: {hostname}, "
        "{listener}, {client} (the real one behind a PROXY header), {env:NAME}; {{ and }} for braces",
    )
    env.add(
        serve,
        "--framing",
        "YIELDIO_FRAMING",
        "chunk",
        choices=("chunk", "line"),
        help="answer each chunk received, or each line",
    )
    env.add(
        serve,
        "--max-line",
        "YIELDIO_MAX_LINE",
        DEFAULT_MAX_LINE,
        type=count,
        metavar="BYTES",
        help="with --framing line, answer longer lines in pieces of this size",
    )
    env.add(
        serve,
        "--max-clients",
        "YIELDIO_MAX_CLIENTS",
        None,
        type=count,
        metavar="N",
        help="stop accepting while N connections are open (default: no limit)",
    )
    env.add(
        serve,
        "--idle-timeout",
        "YIELDIO_IDLE_TIMEOUT",
        None,
        type=seconds,
        metavar="SECONDS",
        help="close a connection that has sent nothing for this long "
        "(default: never; 300 is sensible on the open internet)",
    )
    env.add(
        serve,
        "--workers",
        "YIELDIO_WORKERS",
        1,
        type=count,
        metavar="N",
        help="run N processes sharing the port with SO_REUSEPORT (Linux); the parent restarts any that dies",
    )
    env.add(serve, "--backlog", "YIELDIO_BACKLOG", 1024, type=count, metavar="N", help="listen backlog")
    env.add(
        serve,
        "--trace",
        "YIELDIO_TRACE",
        False,
        action="store_true",
        help="print every scheduling event to stderr",
    )
    env.add(
        serve,
        "--trace-file",
        "YIELDIO_TRACE_FILE",
        None,
        metavar="FILE",
        help="write the scheduling events to FILE as a Chrome trace, for Perfetto's UI "
        "(with --workers, one file per worker: its pid is added to the name)",
    )
    env.add(
        serve,
        "--monitor",
        "YIELDIO_MONITOR",
        None,
        type=_monitor_address,
        nargs="?",
        const=DEFAULT_MONITOR,
        metavar="[HOST:]PORT",
        help="serve the monitor (yieldio ps, where, cancel, top; a live page at http://HOST:PORT/) on HOST:PORT; "
        f"a port alone, or :PORT, is 127.0.0.1; any other address needs a token (--monitor alone: "
        f"{format_address(DEFAULT_MONITOR)}; with --workers, one port per worker: PORT, PORT+1...)",
    )
    env.add(
        serve,
        "--monitor-token",
        "YIELDIO_MONITOR_TOKEN",
        None,
        metavar="TOKEN",
        help="the token every request to the monitor must carry (made and printed at start when the monitor "
        "is not on loopback and none is given)",
    )
    env.add(
        serve,
        "--monitor-read-only",
        "YIELDIO_MONITOR_READ_ONLY",
        False,
        action="store_true",
        help="the monitor shows everything and changes nothing: no cancel, no step mode",
    )
    env.add(
        serve,
        "--delay",
        "YIELDIO_DELAY",
        None,
        type=_delay,
        metavar="MS[:JITTER]",
        help="fault: wait MS milliseconds (± JITTER, uniformly) before each reply, TCP, TLS, Unix or UDP",
    )
    env.add(
        serve,
        "--reset-after",
        "YIELDIO_RESET_AFTER",
        None,
        type=_byte_count,
        metavar="BYTES",
        help="fault: once a connection has sent BYTES, answer them and reset it (RST, not FIN)",
    )
    env.add(
        serve,
        "--close-after",
        "YIELDIO_CLOSE_AFTER",
        None,
        type=_byte_count,
        metavar="BYTES",
        help="fault: once a connection has sent BYTES, answer them and close it cleanly (FIN)",
    )
    env.add(
        serve,
        "--throttle",
        "YIELDIO_THROTTLE",
        None,
        type=count,
        metavar="BYTES_PER_S",
        help="fault: send each connection's replies at most this many bytes a second",
    )
    env.add(
        serve,
        "--udp-drop",
        "YIELDIO_UDP_DROP",
        None,
        type=_fraction,
        metavar="FRACTION",
        help="fault: drop this fraction of the datagrams, unanswered (0 to 1, drawn with --seed)",
    )
    env.add(
        serve,
        "--seed",
        "YIELDIO_SEED",
        None,
        type=_seed,
        metavar="N",
        help="seed of the faults' random draws (--udp-drop, --delay's jitter), so that a run can be repeated "
        "(default: a new one, logged at start)",
    )
    add_log_level(serve, env, "info")
    add_log_format(serve, env)
    serve.set_defaults(func=serve_command, resolve=resolve_listen_urls)
    return env


def resolve_listen_urls(parser: argparse.ArgumentParser, args: argparse.Namespace, environ: dict[str, str]) -> None:
    """``args.listen_urls``: --listen URLs (or YIELDIO_LISTEN's), else the --host/--port TCP listener."""
    if args.listen:
        args.listen_urls = list(args.listen)
    elif environ.get("YIELDIO_LISTEN", "").strip():
        try:
            args.listen_urls = parse_listen_list(environ["YIELDIO_LISTEN"])
        except BadListenURL as error:
            parser.error(f"YIELDIO_LISTEN: {error}")
    else:
        args.listen_urls = [ListenURL("tcp", host=args.host, port=args.port)]


def _metrics_address(text: str) -> tuple[str, int]:
    """--metrics HOST:PORT (an empty host is every address; IPv6 in brackets)."""
    try:
        url = parse_listen_url(f"tcp://{text}")
    except BadListenURL:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (':9090' for every address), not {text!r}") from None
    return url.host, url.port


def _template(text: str) -> Template:
    """--banner and --prefix: a text with placeholders, {hostname} and {env:NAME} filled in now."""
    try:
        return Template.parse(text)
    except PlaceholderError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _delay(text: str) -> tuple[float, float]:
    """--delay MS[:JITTER]: (delay, jitter) in seconds; the jitter at most the delay."""
    delay, _, jitter = text.partition(":")
    milliseconds = bounded(float, "the delay (ms)", 0)(delay)
    spread = bounded(float, "the jitter (ms)", 0, milliseconds)(jitter) if jitter else 0.0
    return milliseconds / 1000, spread / 1000


_byte_count = bounded(int, "the byte count", 0)
_fraction = bounded(float, "the fraction", 0, 1)
_seed = bounded(int, "the seed", 0)


def _faults(args: argparse.Namespace) -> Faults:
    """The faults the flags ask for; drawn with --seed, or a seed of its own (said at start)."""
    delay, jitter = args.delay or (0.0, 0.0)
    seed = args.seed
    if seed is None and (jitter or args.udp_drop):
        seed = random.SystemRandom().randrange(2**32)
    return Faults(
        delay=delay,
        jitter=jitter,
        reset_after=args.reset_after,
        close_after=args.close_after,
        throttle=args.throttle,
        udp_drop=args.udp_drop or 0.0,
        seed=seed,
    )


def _describe_faults(faults: Faults) -> str:
    said = {
        "delay": f"delay {faults.delay * 1000:g} ms" + (f" ± {faults.jitter * 1000:g}" if faults.jitter else ""),
        "reset": f"reset after {faults.reset_after} bytes",
        "close": f"close after {faults.close_after} bytes",
        "throttle": f"throttle {faults.throttle} bytes/s",
        "udp_drop": f"udp-drop {faults.udp_drop:g}",
    }
    seeded = f" (seed {faults.seed})" if faults.seed is not None else ""
    return ", ".join(said[name] for name in faults.on) + seeded


def _monitor_address(text: str) -> tuple[str, int]:
    """--monitor [HOST:]PORT: a port alone is 127.0.0.1 (see observe.monitor_web)."""
    try:
        return parse_monitor_address(text)
    except BadAddress as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _open_monitors(address: tuple[str, int], count: int) -> list[socket.socket]:
    """The monitor's listening sockets, opened before anything is served: one, or one per worker
    (PORT, PORT+1...; each a free port of its own with port 0)."""
    host, port = address
    opened: list[socket.socket] = []
    try:
        for slot in range(count):
            wanted = port + slot if port else 0
            try:
                opened.append(open_monitor_socket(host, wanted))
            except (OSError, OverflowError) as error:
                reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
                raise SetupError(f"cannot listen on {format_address((host, wanted))}: {reason}") from None
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return opened


def serve_command(args: argparse.Namespace) -> int:
    """``yieldio serve``; returns the exit status."""
    urls: list[ListenURL] = args.listen_urls
    reuse_port = args.workers > 1
    outside = _OutsideTheKernel()
    outside.install()
    try:
        tls = _tls_context(args, urls)
        if args.metrics is not None:
            prometheus()  # the optional extra is there, or one line now, before anything listens
        if args.trace_file:
            _check_writable(args.trace_file, reuse_port)
        # with --workers, every listener once per worker, held here for as long as the server runs
        slots = (
            open_for_workers(urls, backlog=args.backlog, workers=args.workers)
            if reuse_port
            else [open_listeners(urls, backlog=args.backlog)]
        )
    except (SetupError, MetricsUnavailable) as error:
        print(f"yieldio: {error}", file=sys.stderr)
        return 1
    listeners = slots[0]
    held = list({id(listener): listener for slot in slots for listener in slot}.values())
    metrics: list[Listener] = []
    if args.metrics is not None:
        try:
            metrics = open_listeners([ListenURL("tcp", *args.metrics)], backlog=args.backlog)
        except SetupError as error:
            close_all(held)
            print(f"yieldio: metrics: {error}", file=sys.stderr)
            return 1
    monitors: list[socket.socket] = []
    if args.monitor is not None:
        try:
            monitors = _open_monitors(args.monitor, len(slots))
        except SetupError as error:
            close_all(held + metrics)
            print(f"yieldio: monitor: {error}", file=sys.stderr)
            return 1
    monitor_token = token_for(args.monitor[0], args.monitor_token) if args.monitor is not None else None
    monitor_addresses = [format_address(sock.getsockname()[:2]) for sock in monitors]
    monitor_urls = [
        f"http://{address}/" + (f"?token={monitor_token}" if monitor_token else "") for address in monitor_addresses
    ]
    _raise_descriptor_limit()
    faults = _faults(args)
    options = EchoOptions(
        prefix=args.prefix,
        framing=args.framing,
        max_line=args.max_line,
        banner=args.banner,
        faults=faults,
        server=ServerOptions(
            max_clients=args.max_clients,
            idle_timeout=args.idle_timeout,
            ssl=tls,
            handshake_timeout=args.tls_handshake_timeout,
            proxy_protocol=args.proxy_protocol,
            proxy_timeout=args.proxy_timeout,
            quiet_probes=True,  # the echo waits for its client anyway: a health probe is not news
        ),
    )
    labels = [(listener.label, listener.url.is_stream) for listener in listeners + metrics]

    def say_where() -> None:
        announce.info("echo loop: %s", ECHO_LOOP)
        if faults.on:
            announce.warning("faults injected: %s", _describe_faults(faults))
        for label, is_stream in labels[: len(listeners)]:
            proxied = ", PROXY protocol" if args.proxy_protocol and is_stream else ""
            prefix = args.prefix.fill(label)
            shown = str(prefix) if prefix.per_client else prefix.render()  # the bytes, as far as they are known
            announce.info("listening on %s (echo, framing=%s, prefix=%r%s)", label, args.framing, shown, proxied)
        for label, _ in labels[len(listeners) :]:
            announce.info("metrics on http://%s/metrics", label)
        for slot, url in enumerate(monitor_urls):
            announce.info("monitor on %s%s", url, f" (worker {slot + 1} of {len(slots)})" if reuse_port else "")

    def serve_here(listeners: list[Listener], gatherer: socket.socket | None = None, slot: int = 0) -> int:
        async def echo_server() -> None:
            if outside.kernel_starts():
                return
            counted = [(listener.label, listener.stats) for listener in listeners]
            endpoint = None
            if gatherer is not None:  # a worker: the metrics process asks for its counts
                await spawn(answer_gatherer(Socket(gatherer), counted), daemon=True)
            elif metrics:
                endpoint = (metrics[0], make_metrics_handler(local_source(counted)))
            await serve_all(listeners, options, endpoint)

        extensions: list[Extension] = []
        if args.trace_file:
            extensions.append(trace_file(_trace_path(args.trace_file, reuse_port)))
        if monitors:
            from ..observe.monitor_web import monitor_extension  # an HTTP server: only when asked for

            about = {"worker": f"{slot + 1} of {len(slots)}", "workers": monitor_addresses}
            extensions.append(
                monitor_extension(
                    monitors[slot],
                    token=monitor_token,
                    read_only=args.monitor_read_only,
                    about=about if reuse_port else {},
                    say=lambda endpoint: None,  # said by say_where, with the listeners
                )
            )
        run(echo_server, trace=args.trace, extensions=extensions)
        outside.kernel_done()
        log.info("stopped")
        return 0

    if not reuse_port:
        outside.defer()
        say_where()
        return serve_here(listeners)

    # Each worker serves the TCP, TLS and UDP sockets of its slot (SO_REUSEPORT: the system balances
    # between them) and the one Unix socket they share; with --metrics, the metrics process asks
    # each worker for its counts over the socket pair of its slot (observe.metrics.Gatherer).
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in slots] if metrics else []

    def keep_only(kept: list[Listener], ends: list[socket.socket]) -> None:
        """In a child: close what the parent holds for the others (their sockets stay open there)."""
        close_all([listener for listener in held + metrics if all(listener is not mine for mine in kept)])
        for end in (end for pair in pairs for end in pair if end not in ends):
            end.close()

    def worker(slot: int, ready: Callable[[], None]) -> int:
        outside.defer()
        gatherer = pairs[slot][1] if pairs else None
        keep_only(slots[slot], [] if gatherer is None else [gatherer])
        for other in monitors[:slot] + monitors[slot + 1 :]:  # one monitor per worker: its slot's
            other.close()
        ready()
        return serve_here(slots[slot], gatherer, slot)

    def metrics_process(ready: Callable[[], None]) -> int:
        outside.defer()
        keep_only(metrics, [mine for mine, _ in pairs])
        for sock in monitors:
            sock.close()
        gatherer = Gatherer([Socket(mine) for mine, _ in pairs])
        ready()

        async def endpoint() -> None:
            if outside.kernel_starts():
                return
            await serve_all([], options, (metrics[0], make_metrics_handler(gatherer.gather)))

        run(endpoint)
        outside.kernel_done()
        return 0

    def let_go() -> None:
        close_all(held + metrics)
        for pair in pairs:
            for end in pair:
                end.close()
        for sock in monitors:
            sock.close()

    try:
        return supervise(
            args.workers,
            worker,
            on_ready=say_where,  # said once every worker listens
            on_stop=let_go,  # the ports are free once the workers have closed theirs
            aside=Aside("metrics process", metrics_process) if metrics else None,
        )
    finally:
        let_go()
        log.info("stopped")


class _OutsideTheKernel:
    """SIGTERM and SIGINT while no kernel of this process handles them.

    At first a signal does what it always did: the process ends by it. From :meth:`defer` on (this
    process will run a kernel: it is about to say that it listens, or it is a worker) a signal is
    kept, and the kernel, as it starts, stops at once (:meth:`kernel_starts`): a supervisor that
    sends SIGTERM as soon as it reads ``listening on`` gets a clean exit. Once the kernel has run,
    the server has stopped and the process is on its way out: a repeated signal (a supervisor
    that sends SIGTERM twice, a second Ctrl-C) is ignored, so that the process ends with exit
    status 0, not by that signal. In between, the kernel's own handlers are in place (the first
    signal shuts the server down, a second closes what is left), and they give these back when it
    ends. A worker's parent waits for signals itself, blocked, and ignores them once it has stopped
    (``supervise``).
    """

    def __init__(self) -> None:
        self.deferred = False
        self.kept: int | None = None
        self.kernel_started = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.received)

    def defer(self) -> None:
        self.deferred = True

    def received(self, signum: int, frame: FrameType | None) -> None:
        if self.kernel_started:
            return
        if self.deferred:
            self.kept = self.kept or signum
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def kernel_starts(self) -> bool:
        """Called first thing in the kernel: whether a signal came before it, and it must stop at once."""
        self.kernel_started = True
        if self.kept is not None:
            log.info("%s received: shutting down", signal.Signals(self.kept).name)
        return self.kept is not None

    def kernel_done(self) -> None:
        """Ignore them from now on in the system itself: Python puts back the default action of every
        signal it handles as it finalizes, and a signal that came then would still end the process."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)


def _tls_context(args: argparse.Namespace, urls: list[ListenURL]) -> ssl.SSLContext | None:
    if not any(url.kind == "tls" for url in urls):
        if args.tls_cert or args.tls_key:
            log.warning("--tls-cert and --tls-key are for tls:// listeners; there is none")
        return None
    if not args.tls_cert or not args.tls_key:
        raise SetupError("a tls:// listener needs --tls-cert FILE and --tls-key FILE")
    return load_tls_context(args.tls_cert, args.tls_key)


def _trace_path(path: str, per_worker: bool) -> str:
    """--trace-file's FILE; a worker's own: trace.json becomes trace-PID.json."""
    if not per_worker:
        return path
    stem, suffix = os.path.splitext(path)
    return f"{stem}-{os.getpid()}{suffix}"


def _check_writable(path: str, per_worker: bool) -> None:
    """Refuse at start a trace file that cannot be written, rather than once the server has begun
    (the workers' files are named by their pids: their directory is checked)."""
    if per_worker:
        directory = os.path.dirname(path) or "."
        if not os.access(directory, os.W_OK):
            raise SetupError(f"cannot write the trace files in {directory}")
        return
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as error:
        raise SetupError(f"cannot write the trace file {path}: {error.strerror}") from None


def _raise_descriptor_limit() -> None:
    """One descriptor per client: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            log.debug("could not raise the descriptor limit from %d", soft)
