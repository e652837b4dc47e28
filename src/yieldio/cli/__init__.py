"""The ``yieldio`` command: one module per subcommand, and what they share.

- :mod:`.serve`: ``yieldio serve``, the echo server on every listener;
- :mod:`.connect`: ``yieldio connect``, an interactive client on the kernel;
- :mod:`.load`: ``yieldio load``, load over TCP, TLS, UDP or Unix, every echo checked and timed;
- :mod:`.report`: ``yieldio report``, saved load results merged into one report;
- :mod:`.monitor`: ``yieldio ps``, ``where``, ``cancel``, ``top``: a running program's monitor;
- :mod:`.results`: what ``load`` and ``report`` share: counts and histograms, text and JSON;
- :mod:`.flags`: the parser, ``YIELDIO_*`` variables, logging.

A subcommand's module has ``add_parser(commands)``, which declares its flags and returns
those an environment variable may set; the parser's ``func`` runs it and returns the exit
status. Errors a user can make (a wrong flag, a bad port, a busy address) end in one readable
line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..version import __version__
from . import connect, load, monitor, report, serve
from .flags import CommandParser, setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = CommandParser(prog="yieldio", description="A generator-based cooperative scheduler and its echo server.")
    parser.add_argument("--version", action="version", version=f"yieldio {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    commands.required = True
    environments = {"serve": serve.add_parser(commands), "connect": connect.add_parser(commands)}
    load.add_parser(commands)
    report.add_parser(commands)
    environments |= monitor.add_parsers(commands)
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    if args.command in environments:
        environments[args.command].apply(parser, args, environ)
    resolve = getattr(args, "resolve", None)
    if resolve is not None:
        resolve(parser, args, environ)
    setup_logging(getattr(args, "log_level", "warning"), getattr(args, "log_format", "text"))
    return int(args.func(args))
