"""Placeholders in ``--banner`` and ``--prefix``: which server answered, on which listener, to whom.

Behind a Service that spreads connections over many pods, a reply that says who sent it is how a
user tells them apart (``--banner 'pod {env:POD_NAME} on {env:NODE_NAME}'``, filled in by
Kubernetes' downward API). A text may hold:

- ``{hostname}``: the machine's name (``socket.gethostname()``; a pod's name in Kubernetes);
- ``{env:NAME}``: the variable NAME of the server's environment;
- ``{listener}``: the listener, as the log names it (``127.0.0.1:9000``, ``udp://[::]:9000``, ``unix:/path``);
- ``{client}``: the client (``203.0.113.7:51234``), the original one behind a PROXY header;

and ``{{`` or ``}}`` for a brace. Each is filled in as early as it is known, so that the
per-message path never formats anything: the first two when the text is read (an unknown
placeholder or a variable that is not set is refused then, before anything listens),
``{listener}`` once per listener, ``{client}`` once per connection (or per datagram).

Pure: no I/O, only strings and bytes. A text is bytes in the end (a prefix may be any bytes:
literal text is encoded as the command line was, with ``os.fsencode``; values as UTF-8).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

KNOWN = "{hostname}, {listener}, {client}, {env:NAME}"
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class PlaceholderError(ValueError):
    """A text with an unknown placeholder, a lone brace, or a variable that is not set."""


@dataclass(frozen=True)
class Template:
    """A text whose ``{listener}`` and ``{client}`` may still be to fill: literal bytes, and those names."""

    parts: tuple[bytes | str, ...]

    @classmethod
    def parse(cls, text: str, environ: Mapping[str, str] | None = None, hostname: str | None = None) -> Template:
        """Read ``text``, filling in ``{hostname}`` and ``{env:NAME}`` now; PlaceholderError if it can't."""
        environ = os.environ if environ is None else environ
        parts: list[bytes | str] = []
        position = 0
        for token in _TOKEN.finditer(text):
            parts.append(os.fsencode(text[position : token.start()]))
            position = token.end()
            whole, name = token.group(0), token.group(1)
            if whole in ("{{", "}}"):
                parts.append(whole[0].encode())
            elif name is None:
                raise PlaceholderError(f"a lone {whole!r}: write {whole * 2!r} for a brace")
            elif name == "hostname":
                parts.append((hostname or socket.gethostname()).encode())
            elif name in ("listener", "client"):
                parts.append(name)
            elif name.startswith("env:"):
                variable = name[4:]
                if not _VARIABLE.fullmatch(variable):
                    raise PlaceholderError(f"{{{name}}}: {variable!r} is not a variable's name")
                if variable not in environ:
                    raise PlaceholderError(f"{{{name}}}: the variable {variable} is not set")
                parts.append(os.fsencode(environ[variable]))
            else:
                raise PlaceholderError(f"unknown placeholder {{{name}}} (known: {KNOWN}; {{{{ for a brace)")
        parts.append(os.fsencode(text[position:]))
        return cls(_joined(parts))

    @classmethod
    def plain(cls, data: bytes) -> Template:
        """A text with no placeholder."""
        return cls((data,))

    @property
    def per_client(self) -> bool:
        """Whether it differs from one client to the next (it holds ``{client}``)."""
        return "client" in self.parts

    def fill(self, listener: str) -> Template:
        """``{listener}`` filled in."""
        return Template(_joined([listener.encode() if part == "listener" else part for part in self.parts]))

    def render(self, client: str = "") -> bytes:
        """The bytes, ``{client}`` filled in (and ``{listener}``, if still there, left empty: fill it first)."""
        return b"".join(
            part if isinstance(part, bytes) else client.encode() if part == "client" else b"" for part in self.parts
        )

    def __str__(self) -> str:
        """As the log and the help show it: the bytes, with what is still to fill as its placeholder."""
        return "".join(os.fsdecode(part) if isinstance(part, bytes) else f"{{{part}}}" for part in self.parts)


def _joined(parts: list[bytes | str]) -> tuple[bytes | str, ...]:
    """Neighbouring literal pieces as one, empty ones dropped."""
    joined: list[bytes | str] = []
    for part in parts:
        if isinstance(part, bytes) and joined and isinstance(joined[-1], bytes):
            joined[-1] += part
        elif part != b"":
            joined.append(part)
    return tuple(joined) or (b"",)
