"""What every subcommand shares: its parser, the flags that ``YIELDIO_*`` variables can set, logging.

A usage error is one line and exit status 2, never a usage block or a traceback; a
value from the environment is checked by its flag's own type and choices, and a bad
one names the variable and its flag (a bad flag, its variable too).

Logs go to stderr as text, or as JSON lines (``--log-format json``), one object per line
that a cluster's log collector reads without a pattern: ``time`` (UTC, ISO 8601),
``level``, ``message``, and what a line about a connection adds (``listener``,
``client``; at its close ``bytes_in`` and ``bytes_out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from ..io.urls import BadListenURL, ListenURL, parse_listen_url

# Where a server listens is said whatever --log-level is: with --port 0 it is the only
# way to learn the port, and a supervisor or a test waits for this line to know it is ready.
announce = logging.getLogger("yieldio.announce")


class CommandParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not a usage block; a bad flag's line names its variable."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.variables: dict[str, str] = {}  # flag -> the variable that may set it (FromEnvironment)

    def error(self, message: str) -> NoReturn:
        flag = message.removeprefix("argument ").partition(":")[0] if message.startswith("argument --") else ""
        if flag in self.variables:
            message += f" [env {self.variables[flag]}]"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def bounded(convert: Callable[[str], Any], what: str, low: float, high: float | None = None) -> Callable[[str], Any]:
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


listen_port = bounded(int, "port", 0, 65535)
connect_port = bounded(int, "port", 1, 65535)
count = bounded(int, "the number", 1)
seconds = bounded(float, "the number of seconds", 0.001)


def listen_url(text: str) -> ListenURL:
    """An argparse type: a URL in ``--listen``'s syntax (:mod:`yieldio.io.urls`)."""
    try:
        return parse_listen_url(text)
    except BadListenURL as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class FromEnvironment:
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
        if isinstance(parser, CommandParser):
            parser.variables[flag] = env

    def apply(self, parser: argparse.ArgumentParser, args: argparse.Namespace, environ: dict[str, str]) -> None:
        for action, env, default in self.options:
            if getattr(args, action.dest, None) is not None:
                continue
            text = environ.get(env)
            value = default if text is None else self._convert(parser, action, env, text)
            setattr(args, action.dest, value)

    @staticmethod
    def _convert(parser: argparse.ArgumentParser, action: argparse.Action, env: str, text: str) -> Any:
        flag = f" [flag {action.option_strings[0]}]"
        if action.nargs == 0:  # a switch (store_true)
            if text.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if text.strip().lower() in ("", "0", "false", "no", "off"):
                return False
            parser.error(f"{env}={text!r}: use 1 or 0{flag}")
        try:
            value = action.type(text) if callable(action.type) else text
        except (argparse.ArgumentTypeError, ValueError) as error:
            parser.error(f"{env}={text!r}: {error}{flag}")
        if action.choices is not None and value not in action.choices:
            parser.error(f"{env}={text!r}: choose from {', '.join(map(str, action.choices))}{flag}")
        return value


def add_log_level(parser: argparse.ArgumentParser, env: FromEnvironment, default: str) -> None:
    """The one flag every command has; only its default differs (a server says more than a client)."""
    env.add(
        parser,
        "--log-level",
        "YIELDIO_LOG_LEVEL",
        default,
        choices=("debug", "info", "warning", "error"),
        help="how much to log on stderr",
    )


def add_log_format(parser: argparse.ArgumentParser, env: FromEnvironment) -> None:
    """--log-format: text for a person, JSON lines for a cluster's log collector."""
    env.add(
        parser,
        "--log-format",
        "YIELDIO_LOG_FORMAT",
        "text",
        choices=("text", "json"),
        help="text, or json: one object per line (time, level, message; listener, client, "
        "and bytes_in, bytes_out at a connection's close)",
    )


class JsonLines(logging.Formatter):
    """A log record as one JSON object on one line (see the module)."""

    FIELDS = ("listener", "client", "bytes_in", "bytes_out")

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for name in self.FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging(level: str, log_format: str = "text") -> None:
    """Log lines on stderr at ``level``, as text or JSON lines; the announcements (where a server listens)
    at any level."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    announce.setLevel(logging.INFO)
