"""The command line: ``yieldio serve`` runs the echo server, ``yieldio connect`` talks to one.

Errors a user can make (a wrong flag, a bad port, a busy address) end in one
readable line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import ssl
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, NoReturn

from ..core.runner import SignalRoute, new_kernel, run
from ..version import __version__
from .client import STDIN, Outcome, nonblocking, stdin_is_open, talk
from .echo import DEFAULT_MAX_LINE, make_echo_handler
from .listen_urls import BadListenURL, ListenURL, parse_listen_list, parse_listen_url
from .listeners import EchoOptions, Listener, SetupError, close_all, load_tls_context, open_listeners, serve_all
from .metrics import MetricsUnavailable, make_registry, prometheus
from .metrics import make_handler as make_metrics_handler
from .workers import supervise

log = logging.getLogger("yieldio")
# Where the server listens is said whatever --log-level is: with --port 0 it is the only
# way to learn the port, and a supervisor or a test waits for this line to know it is ready.
announce = logging.getLogger("yieldio.announce")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _bounded(convert: Callable[[str], Any], what: str, low: float, high: float | None = None) -> Callable[[str], Any]:
    """An argparse type: ``convert`` the text, and refuse values outside [low, high] in one line."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, not {text!r}") from None
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be between {low} and {high}, not {text}")
        if not value >= low:
            raise argparse.ArgumentTypeError(f"{what} must be at least {low}, not {text}")
        return value

    return parse


def _listen_url(text: str) -> ListenURL:
    try:
        return parse_listen_url(text)
    except BadListenURL as error:
        raise argparse.ArgumentTypeError(str(error)) from None


_listen_port = _bounded(int, "port", 0, 65535)
_connect_port = _bounded(int, "port", 1, 65535)
_count = _bounded(int, "the number", 1)
_seconds = _bounded(float, "the number of seconds", 0.001)


class _FromEnvironment:
    """Flags that an environment variable can also set (how containers are configured).

    Each flag is declared with ``default=None`` so that "not on the command line"
    can be told apart; after parsing, a missing flag takes its variable's value,
    checked by the flag's own type and choices, else its default. A flag given on
    the command line wins. A bad value is one line naming the variable.
    """

    def __init__(self) -> None:
        self.options: list[tuple[argparse.Action, str, Any]] = []  # (action, variable, default)

    def add(self, parser: argparse.ArgumentParser, flag: str, env: str, default: Any, help: str, **kwargs: Any) -> None:
        shown = "" if default is None or kwargs.get("action") == "store_true" else f" (default: {default})"
        action = parser.add_argument(flag, default=None, help=f"{help}{shown} [env {env}]", **kwargs)
        self.options.append((action, env, default))

    def apply(self, parser: argparse.ArgumentParser, args: argparse.Namespace, environ: dict[str, str]) -> None:
        for action, env, default in self.options:
            if getattr(args, action.dest, None) is not None:
                continue
            text = environ.get(env)
            value = default if text is None else self._convert(parser, action, env, text)
            setattr(args, action.dest, value)

    @staticmethod
    def _convert(parser: argparse.ArgumentParser, action: argparse.Action, env: str, text: str) -> Any:
        if action.nargs == 0:  # a switch (store_true)
            if text.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if text.strip().lower() in ("", "0", "false", "no", "off"):
                return False
            parser.error(f"{env}={text!r}: use 1 or 0")
        try:
            value = action.type(text) if callable(action.type) else text
        except (argparse.ArgumentTypeError, ValueError) as error:
            parser.error(f"{env}={text!r}: {error}")
        if action.choices is not None and value not in action.choices:
            parser.error(f"{env}={text!r}: choose from {', '.join(map(str, action.choices))}")
        return value


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, _FromEnvironment]]:
    """The parser, and for each command the flags its environment variables may set."""
    parser = _Parser(prog="yieldio", description="A generator-based cooperative scheduler and its echo server.")
    parser.add_argument("--version", action="version", version=f"yieldio {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    serve = commands.add_parser(
        "serve",
        help="run the echo server",
        description="Run the echo server: every message received is answered with PREFIX + message. "
        "Every flag can also be set by the environment variable named in its help; a flag given here wins.",
    )
    env = _FromEnvironment()
    serve.add_argument(
        "--listen",
        action="append",
        type=_listen_url,
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
    env.add(serve, "--port", "YIELDIO_PORT", 25000, type=_listen_port, help="TCP port; 0 picks a free one")
    env.add(serve, "--tls-cert", "YIELDIO_TLS_CERT", None, metavar="FILE", help="certificate chain for tls:// (PEM)")
    env.add(serve, "--tls-key", "YIELDIO_TLS_KEY", None, metavar="FILE", help="its private key (PEM)")
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
        "--metrics",
        "YIELDIO_METRICS",
        None,
        type=_metrics_address,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (needs yieldio[metrics])",
    )
    env.add(
        serve, "--prefix", "YIELDIO_PREFIX", "GOT:", help="bytes put before each reply; '' gives a plain RFC 862 echo"
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
        type=_count,
        metavar="BYTES",
        help="with --framing line, answer longer lines in pieces of this size",
    )
    env.add(
        serve,
        "--max-clients",
        "YIELDIO_MAX_CLIENTS",
        None,
        type=_count,
        metavar="N",
        help="stop accepting while N connections are open (default: no limit)",
    )
    env.add(
        serve,
        "--idle-timeout",
        "YIELDIO_IDLE_TIMEOUT",
        None,
        type=_seconds,
        metavar="SECONDS",
        help="close a connection that has sent nothing for this long "
        "(default: never; 300 is sensible on the open internet)",
    )
    env.add(
        serve,
        "--workers",
        "YIELDIO_WORKERS",
        1,
        type=_count,
        metavar="N",
        help="run N processes sharing the port with SO_REUSEPORT (Linux); the parent restarts any that dies",
    )
    env.add(serve, "--backlog", "YIELDIO_BACKLOG", 1024, type=_count, metavar="N", help="listen backlog")
    env.add(
        serve,
        "--trace",
        "YIELDIO_TRACE",
        False,
        action="store_true",
        help="print every scheduling event to stderr",
    )
    _add_log_level(serve, env, "info")
    serve.set_defaults(func=serve_command)

    connect = commands.add_parser(
        "connect",
        help="talk to a server: lines typed go out, replies are printed",
        description=(
            "Connect to HOST:PORT; send what is typed (or piped in) and print what the server sends. "
            "At the end of input (Ctrl-D) the connection is half-closed and the replies still on their way "
            "are printed before exiting. Exit status: 0 when the server closed the connection, 1 when it "
            "could not be made or broke, 130 on Ctrl-C."
        ),
    )
    connect.add_argument("host", metavar="HOST", help="name or address of the server")
    connect.add_argument("port", metavar="PORT", type=_connect_port, help="its TCP port")
    connect_env = _FromEnvironment()
    _add_log_level(connect, connect_env, "warning")
    connect.set_defaults(func=connect_command)
    return parser, {"serve": env, "connect": connect_env}


def _add_log_level(parser: argparse.ArgumentParser, env: _FromEnvironment, default: str) -> None:
    """The one flag every command has; only its default differs (a server says more than a client)."""
    env.add(
        parser,
        "--log-level",
        "YIELDIO_LOG_LEVEL",
        default,
        choices=("debug", "info", "warning", "error"),
        help="how much to log on stderr",
    )


def _listen_urls(parser: argparse.ArgumentParser, args: argparse.Namespace, environ: dict[str, str]) -> list[ListenURL]:
    """--listen URLs (or YIELDIO_LISTEN's), else the --host/--port shorthand for one TCP listener."""
    if args.listen:
        return list(args.listen)
    if environ.get("YIELDIO_LISTEN", "").strip():
        try:
            return parse_listen_list(environ["YIELDIO_LISTEN"])
        except BadListenURL as error:
            parser.error(f"YIELDIO_LISTEN: {error}")
    return [ListenURL("tcp", host=args.host, port=args.port)]


def _metrics_address(text: str) -> tuple[str, int]:
    """--metrics HOST:PORT (an empty host is every address; IPv6 in brackets)."""
    try:
        url = parse_listen_url(f"tcp://{text}")
    except BadListenURL:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (':9090' for every address), not {text!r}") from None
    return url.host, url.port


def serve_command(args: argparse.Namespace) -> int:
    """``yieldio serve``: the echo server on every listener, in this process or in ``--workers`` processes.

    Everything that can be refused is checked before anything is served: the listeners are
    opened (all or none), the certificate loaded, the metrics library found.
    """
    urls: list[ListenURL] = args.listen_urls
    reuse_port = args.workers > 1
    try:
        tls = _tls_context(args, urls)
        if args.metrics is not None:
            prometheus()  # the optional extra is there, or one line now, before anything listens
            if reuse_port:
                raise SetupError("--metrics with --workers is not supported: each worker counts only its own traffic")
        listeners = open_listeners(urls, backlog=args.backlog, reuse_port=reuse_port)
    except (SetupError, MetricsUnavailable) as error:
        print(f"yieldio: {error}", file=sys.stderr)
        return 1
    metrics: list[Listener] = []
    if args.metrics is not None:
        try:
            metrics = open_listeners([ListenURL("tcp", *args.metrics)], backlog=args.backlog)
        except SetupError as error:
            close_all(listeners)
            print(f"yieldio: metrics: {error}", file=sys.stderr)
            return 1
    _raise_descriptor_limit()
    prefix = os.fsencode(args.prefix)  # the bytes given, even those that are not UTF-8
    options = EchoOptions(
        handler=make_echo_handler(prefix, args.framing, args.max_line),
        prefix=prefix,
        max_clients=args.max_clients,
        idle_timeout=args.idle_timeout,
        proxy_protocol=args.proxy_protocol,
        tls=tls,
    )
    labels = [(listener.label, listener.url.is_stream) for listener in listeners + metrics]

    def say_where() -> None:
        for label, is_stream in labels[: len(listeners)]:
            proxied = ", PROXY protocol" if args.proxy_protocol and is_stream else ""
            announce.info("listening on %s (echo, framing=%s, prefix=%r%s)", label, args.framing, prefix, proxied)
        for label, _ in labels[len(listeners) :]:
            announce.info("metrics on http://%s/metrics", label)

    def serve_here(listeners: list[Listener]) -> int:
        async def echo_server() -> None:
            endpoint = None
            if metrics:
                registry = make_registry([(listener.label, listener.stats) for listener in listeners])
                endpoint = (metrics[0], make_metrics_handler(registry))
            await serve_all(listeners, options, endpoint)

        run(echo_server, trace=args.trace)
        log.info("stopped")
        return 0

    if not reuse_port:
        say_where()
        return serve_here(listeners)

    # Each worker opens TCP, TLS and UDP sockets of its own on the ports the check above got
    # (SO_REUSEPORT: the kernel balances between them); a Unix socket is shared, opened once.
    shared = [listener for listener in listeners if listener.url.kind == "unix"]
    ports = [listener.url for listener in listeners if listener.url.kind != "unix"]
    close_all([listener for listener in listeners if listener.url.kind != "unix"])

    def worker(ready: Callable[[], None]) -> int:
        opened = shared + open_listeners(ports, backlog=args.backlog, reuse_port=True)
        ready()
        return serve_here(opened)

    try:
        return supervise(args.workers, worker, on_ready=say_where)  # said once every worker listens
    finally:
        close_all(shared)


def _tls_context(args: argparse.Namespace, urls: list[ListenURL]) -> ssl.SSLContext | None:
    if not any(url.kind == "tls" for url in urls):
        if args.tls_cert or args.tls_key:
            log.warning("--tls-cert and --tls-key are for tls:// listeners; there is none")
        return None
    if not args.tls_cert or not args.tls_key:
        raise SetupError("a tls:// listener needs --tls-cert FILE and --tls-key FILE")
    return load_tls_context(args.tls_cert, args.tls_key)


def connect_command(args: argparse.Namespace) -> int:
    """``yieldio connect HOST PORT``; returns the exit status."""
    stdin = STDIN if stdin_is_open() else None
    kernel = new_kernel()
    with nonblocking(STDIN) if stdin is not None else nullcontext(), SignalRoute(kernel) as signals:
        outcome: Outcome | None = kernel.run(talk(args.host, args.port, stdin))
    if outcome is None:  # the session was cancelled on SIGINT or SIGTERM
        assert signals.received is not None
        return 128 + signals.received
    status, message = outcome
    if message:
        print(f"yieldio: {message}", file=sys.stderr)
    return status


def _raise_descriptor_limit() -> None:
    """One descriptor per client: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            log.debug("could not raise the descriptor limit from %d", soft)


def main(argv: Sequence[str] | None = None) -> int:
    parser, from_environment = build_parser()
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    from_environment[args.command].apply(parser, args, environ)
    if args.command == "serve":
        args.listen_urls = _listen_urls(parser, args, environ)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    announce.setLevel(logging.INFO)
    result: Any = args.func(args)
    return int(result)
