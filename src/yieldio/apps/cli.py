"""The command line: ``yieldio serve`` runs the echo server, ``yieldio connect`` talks to one.

Errors a user can make (a wrong flag, a bad port, a busy address) end in one
readable line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, NoReturn

from ..core.runner import SignalRoute, new_kernel, run
from ..io.sockets import Socket, format_address
from ..servers.tcp import serve, tcp_listen
from ..version import __version__
from .client import STDIN, Outcome, nonblocking, stdin_is_open, talk
from .echo import DEFAULT_MAX_LINE, make_echo_handler
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


_listen_port = _bounded(int, "port", 0, 65535)
_connect_port = _bounded(int, "port", 1, 65535)
_count = _bounded(int, "the number", 1)
_seconds = _bounded(float, "the number of seconds", 0.001)


def _add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    """The one flag every command has; only its default differs (a server says more than a client)."""
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=default,
        help="how much to log on stderr (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="yieldio", description="A generator-based cooperative scheduler and its echo server.")
    parser.add_argument("--version", action="version", version=f"yieldio {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    serve = commands.add_parser(
        "serve",
        help="run the echo server",
        description="Run the echo server: every message received is answered with PREFIX + message.",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; '' or 0.0.0.0 for all IPv4, :: for all IPv6 (default: %(default)s)",
    )
    serve.add_argument(
        "--port", type=_listen_port, default=25000, help="TCP port; 0 picks a free one (default: %(default)s)"
    )
    serve.add_argument(
        "--prefix",
        default="GOT:",
        help="bytes put before each reply; '' gives a plain RFC 862 echo (default: %(default)s)",
    )
    serve.add_argument(
        "--framing",
        choices=("chunk", "line"),
        default="chunk",
        help="answer each chunk received, or each line (default: %(default)s)",
    )
    serve.add_argument(
        "--max-line",
        type=_count,
        default=DEFAULT_MAX_LINE,
        metavar="BYTES",
        help="with --framing line, answer longer lines in pieces of this size (default: %(default)s)",
    )
    serve.add_argument(
        "--max-clients",
        type=_count,
        default=None,
        metavar="N",
        help="stop accepting while N connections are open (default: no limit)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="close a connection that has sent nothing for this long "
        "(default: never; 300 is sensible on the open internet)",
    )
    serve.add_argument(
        "--workers",
        type=_count,
        default=1,
        metavar="N",
        help="run N processes sharing the port with SO_REUSEPORT (Linux); "
        "the parent restarts any that dies (default: %(default)s)",
    )
    serve.add_argument(
        "--backlog", type=_count, default=1024, metavar="N", help="listen backlog (default: %(default)s)"
    )
    serve.add_argument(
        "--trace", action="store_true", help="print every scheduling event to stderr (as YIELDIO_TRACE=1 does)"
    )
    _add_log_level(serve, "info")
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
    _add_log_level(connect, "warning")
    connect.set_defaults(func=connect_command)
    return parser


def serve_command(args: argparse.Namespace) -> int:
    """``yieldio serve``: the echo server, in this process or in ``--workers`` processes."""
    reuse_port = args.workers > 1
    try:
        listener = tcp_listen((args.host, args.port), backlog=args.backlog, reuse_port=reuse_port)
    except (OSError, UnicodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        print(f"yieldio: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return 1
    _raise_descriptor_limit()
    prefix = os.fsencode(args.prefix)  # the bytes given, even those that are not UTF-8
    handler = make_echo_handler(prefix, args.framing, args.max_line)
    address = listener.getsockname()
    announce.info("listening on %s (echo, framing=%s, prefix=%r)", format_address(address), args.framing, prefix)

    def serve_here(listener: Socket) -> int:
        async def accept_loop() -> None:
            with listener:
                await serve(listener, handler, max_clients=args.max_clients, idle_timeout=args.idle_timeout)

        run(accept_loop, trace=args.trace)
        log.info("stopped")
        return 0

    if not reuse_port:
        return serve_here(listener)

    def worker() -> int:
        # each worker listens on a socket of its own, so the kernel balances connections between them
        return serve_here(tcp_listen((args.host, address[1]), backlog=args.backlog, reuse_port=True))

    listener.close()  # it only checked the address: a socket nobody accepts on would strand clients
    return supervise(args.workers, worker)


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
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    announce.setLevel(logging.INFO)
    result: Any = args.func(args)
    return int(result)
