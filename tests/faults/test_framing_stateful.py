"""The framers as a state machine: many feeds and closes interleaved, checked against a byte-at-a-time model.

tests/test_echo.py checks that the bytes come back for one stream cut at random. This checks more,
over long random sequences of ``feed`` and ``close`` (a close ends one stream; the framer is then
fed the next, as the handler's drain does):

- each reply is *exactly* what a byte-at-a-time reference framer answers: so every reply piece is
  a whole line, or exactly ``max_line`` bytes of a longer one, or (on close) the partial line;
  a piece is never longer than ``max_line``, never empty, and never answered late;
- what the framer holds back is always less than ``max_line`` bytes with no newline in it (the
  memory bound the handler relies on), and held + answered == fed, at every step;
- the chunk framer, fed the same stream, answers ``prefix + chunk`` for each chunk, nothing on close.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from yieldio import ChunkFramer, LineFramer


class ReferenceLineFramer:
    """The line framing's specification, one byte at a time."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.line = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        pieces = []
        for byte in data:
            self.line.append(byte)
            if byte == 0x0A or len(self.line) == self.max_line:
                pieces.append(bytes(self.line))
                self.line.clear()
        return pieces

    def close(self) -> bytes:
        piece = bytes(self.line)
        self.line.clear()
        return piece


chunks = st.one_of(
    st.binary(max_size=64),
    st.lists(st.sampled_from([b"\n", b"a", b"bc", b"\x00", b"\xff\xfe", b"GOT:", b"\r\n", b"\n\n"]), max_size=40).map(
        b"".join
    ),
    st.tuples(st.integers(min_value=0, max_value=400), st.sampled_from([b"", b"\n"])).map(lambda t: b"x" * t[0] + t[1]),
)


class FramerMachine(RuleBasedStateMachine):
    @initialize(
        prefix=st.sampled_from([b"GOT:", b"", b"\n", b">\n<", b"\x00\xff"]),
        max_line=st.one_of(st.integers(min_value=1, max_value=8), st.integers(min_value=9, max_value=300)),
    )
    def start(self, prefix: bytes, max_line: int) -> None:
        self.prefix = prefix
        self.max_line = max_line
        self.line = LineFramer(prefix, max_line)
        self.model = ReferenceLineFramer(max_line)
        self.chunk = ChunkFramer(prefix)
        self.fed = bytearray()  # the current stream, since the last close
        self.answered = bytearray()  # its bytes answered so far, prefixes taken out
        self.streams = 0

    @rule(data=chunks)
    def feed(self, data: bytes) -> None:
        reply = self.line.feed(data)
        pieces = self.model.feed(data)
        assert reply == b"".join(self.prefix + piece for piece in pieces)
        for piece in pieces:
            assert 0 < len(piece) <= self.max_line
            assert piece.endswith(b"\n") or len(piece) == self.max_line
            assert b"\n" not in piece[:-1]
        self.fed += data
        self.answered += b"".join(pieces)
        assert self.chunk.feed(data) == (self.prefix + data if data else b"")

    @precondition(lambda self: self.fed)
    @rule(data=chunks)
    def feed_then_close(self, data: bytes) -> None:
        self.feed(data)
        self.close()

    @rule()
    def close(self) -> None:
        reply = self.line.close()
        piece = self.model.close()
        assert reply == (self.prefix + piece if piece else b"")
        assert len(piece) < self.max_line and b"\n" not in piece
        self.answered += piece
        assert self.answered == self.fed, "a stream's bytes were lost, duplicated or reordered"
        assert self.line.close() == b"", "a second close answered again"
        assert self.chunk.close() == b""
        self.fed.clear()
        self.answered.clear()
        self.streams += 1

    @invariant()
    def holds_back_only_a_partial_line(self) -> None:
        if not hasattr(self, "line"):
            return
        held = self.fed[len(self.answered) :]
        assert self.fed.startswith(self.answered)
        assert len(held) < self.max_line, "the framer holds max_line bytes or more"
        assert b"\n" not in held, "a complete line was held back"
        assert len(self.line._partial) == len(held)


TestFramerMachine = FramerMachine.TestCase
TestFramerMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
