"""What every subcommand shares: its parser, the flags that ``YIELDIO_*`` variables can set, logging.

A usage error is one line and exit status 2, never a usage block or a traceback; a
value from the environment is checked by its flag's own type and choices, and a bad
one names the variable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from ..io.urls import BadListenURL, ListenURL, parse_listen_url

# Where a server listens is said whatever --log-level is: with --port 0 it is the only
# way to learn the port, and a supervisor or a test waits for this line to know it is ready.
announce = logging.getLogger("yieldio.announce")


class CommandParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not a usage block."""

    def error(self, message: str) -> NoReturn:
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


def setup_logging(level: str) -> None:
    """Log lines on stderr at ``level``; the announcements (where a server listens) at any level."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    announce.setLevel(logging.INFO)
