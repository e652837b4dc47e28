"""The messages a load sends, and the check of every echo: protocol logic without I/O.

An echo server answers what it receives with ``prefix + data``, but in pieces of its own
choosing: with chunk framing each read it happens to make is answered at once, so one
message may come back as several ``prefix + piece`` replies. So a reply is checked as a
stream: :class:`EchoCheck` is fed whatever arrives and says when the whole message has
come back, or at which byte it went wrong.

To make that stream unambiguous, a message never contains the prefix's first byte: a
byte equal to it can then only begin a piece's prefix, never be data. Messages are
otherwise random (:class:`Messages`): each is a different slice of a random pool, found
again from its number alone, so a datagram's echo can be checked by its sequence number
without keeping what was sent.
"""

from __future__ import annotations

import random
import struct
from typing import Literal

Framing = Literal["chunk", "line"]
SEQUENCE = struct.Struct("!Q")  # a datagram's first 8 bytes: its sequence number
_POOL = 1 << 20  # random bytes beyond the message size, to slice messages from
_PRINTABLE = bytes(range(0x20, 0x7F))


class Messages:
    """Message ``n`` (``n`` = 0, 1, 2...) for a load of ``size``-byte messages.

    Chunk framing: random bytes. Line framing: random printable bytes, the last one a
    newline. Neither ever contains ``prefix[0]``. With ``sequenced`` (datagrams), the first
    8 bytes are ``n`` itself.
    """

    __slots__ = ("_line", "_pool", "_span", "_step", "head", "size")

    def __init__(self, size: int, prefix: bytes, framing: Framing = "chunk", *, seed: int = 0, sequenced: bool = False):
        self.head = SEQUENCE.size if sequenced else 0
        if size < self.head + (framing == "line"):
            raise ValueError(f"a message must be at least {self.head + (framing == 'line')} bytes")
        self.size = size
        rng = random.Random(seed)
        body = size - self.head
        alphabet = _PRINTABLE if framing == "line" else bytes(range(256))
        if prefix:
            alphabet = alphabet.replace(prefix[:1], b"")
        self._pool = bytes(rng.choices(alphabet, k=body + _POOL))
        self._span = _POOL + 1  # the offsets a message may start at
        self._step = 7919 if framing == "chunk" else 7907  # primes: successive messages overlap little
        self._line = framing == "line"

    def slicing(self) -> tuple[bytes | None, int, int]:
        """(pool, step, span): message ``n`` is ``pool[s : s + size]`` with ``s = n * step % span``, for a
        loop that slices them itself; pool is None when messages are more than a slice (lines, datagrams)."""
        plain = not self._line and not self.head
        return (self._pool if plain else None), self._step, self._span

    def __getitem__(self, n: int) -> bytes:
        start = (n * self._step) % self._span
        body = self._pool[start : start + self.size - self.head - self._line]
        if self.head:
            body = SEQUENCE.pack(n) + body
        return body + b"\n" if self._line else body


class Mismatch(Exception):
    """The echo differs from the message: ``offset`` is the first wrong byte, counted in the
    message (prefixes left out); ``got`` and ``wanted`` a few bytes from there."""

    def __init__(self, offset: int, got: bytes, wanted: bytes) -> None:
        super().__init__(f"echo differs at byte {offset}: got {got!r}, wanted {wanted!r}")
        self.offset = offset
        self.got = got
        self.wanted = wanted


class EchoCheck:
    """Checks the echo of one message as it arrives, in as many ``prefix + piece`` replies as the
    server chose. :meth:`feed` returns True once all of it has come back; it raises
    :class:`Mismatch` at the first byte that is not what an echo of ``message`` can be (bytes
    beyond the message included)."""

    __slots__ = ("_in_prefix", "done", "message", "prefix")

    def __init__(self, message: bytes, prefix: bytes) -> None:
        self.message = message
        self.prefix = prefix
        self.done = 0  # bytes of the message echoed so far
        self._in_prefix = 0 if not prefix else -len(prefix)  # -k: k bytes of a prefix still to come

    def feed(self, data: bytes) -> bool:
        message, prefix, size = self.message, self.prefix, len(self.message)
        i, end = 0, len(data)
        while i < end:
            if self._in_prefix:
                k = len(prefix) + self._in_prefix  # the prefix's bytes already seen
                piece = data[i : i - self._in_prefix]
                if piece != prefix[k : k + len(piece)]:
                    raise self._mismatch(data, i, prefix[k:])
                i += len(piece)
                self._in_prefix += len(piece)
                continue
            if self.done == size:
                raise self._mismatch(data, i, b"")  # more than the message came back
            header = data.find(prefix[:1], i) if prefix else -1
            stop = min(end if header < 0 else header, i + size - self.done)
            if data[i:stop] != message[self.done : self.done + stop - i]:
                raise self._mismatch(data, i, message[self.done :])
            self.done += stop - i
            i = stop
            if i == header:
                self._in_prefix = -len(prefix)
        return self.done == size and not self._in_prefix

    def _mismatch(self, data: bytes, at: int, wanted: bytes) -> Mismatch:
        """Where, in the message, the first differing byte is (from ``data[at:]`` on)."""
        got = data[at:]
        same = 0
        while same < min(len(got), len(wanted)) and got[same] == wanted[same]:
            same += 1
        offset = self.done + (same if not self._in_prefix else 0)
        return Mismatch(offset, got[same : same + 8], wanted[same : same + 8])
