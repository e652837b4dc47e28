"""The load client's request step, compiled (``request_step`` in yieldio/_speedups.c) and pure
(``_pure_request_step`` in clients/load.py), over real sockets.

Both must behave alike: an exact echo is timed on time.perf_counter()'s clock and the next
request goes out; anything else comes back as bytes, with the next request unsent, for the
byte-by-byte check. test_load.py runs `yieldio load` with each against the same server.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from yieldio.clients.load import _pure_request_step
from yieldio.compiled import RequestStep, request_step

needs_compiled = pytest.mark.skipif(
    request_step is None, reason="the compiled step is not in use (a pure build, or YIELDIO_PURE=1)"
)

PREFIX = b"GOT:"
MESSAGE = b"0123456789"
FOLLOWING = b"next request"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(ours, theirs): ours non-blocking, as the load's sockets are."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(5)
    with ours, theirs:
        yield ours, theirs


@pytest.fixture(params=["pure", "compiled"])
def make_step(request: pytest.FixtureRequest) -> Callable[[socket.socket], RequestStep]:
    """The step for a socket: the pure one is made per socket, the compiled one takes its descriptor."""
    if request.param == "pure":
        return _pure_request_step
    if request_step is None:
        pytest.skip("the compiled step is not in use (a pure build, or YIELDIO_PURE=1)")
    compiled = request_step
    return lambda _: compiled


Step = Callable[..., object]


@pytest.fixture
def step(make_step: Callable[[socket.socket], RequestStep]) -> Step:
    """step(ours, following=FOLLOWING): one call of the step, expecting PREFIX + MESSAGE."""

    def call(ours: socket.socket, following: bytes | None = FOLLOWING) -> object:
        return make_step(ours)(ours.fileno(), bytearray(64), PREFIX, MESSAGE, following)

    return call


def test_an_exact_echo_is_timed_and_the_next_request_sent(
    pair: tuple[socket.socket, socket.socket], step: Step
) -> None:
    ours, theirs = pair
    assert step(ours) is None  # nothing to read yet
    theirs.sendall(PREFIX + MESSAGE)
    before = time.perf_counter()
    matched = step(ours)
    after = time.perf_counter()
    assert isinstance(matched, float)
    assert before <= matched <= after  # perf_counter's clock: it ends one latency and starts the next
    assert theirs.recv(100) == FOLLOWING
    theirs.sendall(PREFIX + MESSAGE)
    assert isinstance(step(ours, following=None), float)  # nothing to send: open loop
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(100)


@pytest.mark.parametrize(
    "echo",
    [b"GOT:012345678", b"GOT:0123456789!", b"GOT:0123456788", b"NOT:0123456789", b"0123456789GOT:"],
    ids=["short", "long", "wrong-message", "wrong-prefix", "swapped"],
)
def test_any_other_read_comes_back_as_bytes_and_nothing_is_sent(
    pair: tuple[socket.socket, socket.socket], echo: bytes, step: Step
) -> None:
    ours, theirs = pair
    theirs.sendall(echo)
    assert step(ours) == echo
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(100)  # the next request stays with the caller


def test_end_of_input_and_a_reset(pair: tuple[socket.socket, socket.socket], step: Step) -> None:
    ours, theirs = pair
    theirs.shutdown(socket.SHUT_WR)
    assert step(ours) == b""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with client, server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: a reset
            server.close()
            client.setblocking(False)
            for _ in range(100):  # the RST is on loopback at once; a few tries at most
                try:
                    outcome = step(client)
                except ConnectionResetError:
                    break
                assert outcome is None
                time.sleep(0.01)
            else:
                pytest.fail("no ConnectionResetError")


def test_a_next_request_sent_in_part_says_how_much_went(
    pair: tuple[socket.socket, socket.socket], make_step: Callable[[socket.socket], RequestStep]
) -> None:
    ours, theirs = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    filler = b"x" * 65536
    while True:  # fill what the peer has not read, so the next send can take only part (or nothing)
        try:
            ours.send(filler)
        except BlockingIOError:
            break
    theirs.sendall(PREFIX + MESSAGE)
    big = b"y" * (1 << 20)
    outcome = make_step(ours)(ours.fileno(), bytearray(64), PREFIX, MESSAGE, big)
    assert isinstance(outcome, tuple), outcome
    matched, sent = outcome
    assert isinstance(matched, float) and 0 <= sent < len(big)


@needs_compiled
def test_bad_arguments_are_refused_before_any_read(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    assert request_step is not None
    theirs.sendall(PREFIX + MESSAGE)
    with pytest.raises(ValueError, match="longer than the echo"):
        request_step(ours.fileno(), bytearray(len(PREFIX + MESSAGE)), PREFIX, MESSAGE, None)
    with pytest.raises(TypeError):
        request_step(ours.fileno(), bytearray(64), PREFIX, "text", None)  # type: ignore[arg-type]
    with pytest.raises(BufferError):
        request_step(ours.fileno(), bytes(64), PREFIX, MESSAGE, None)  # type: ignore[arg-type]  # not writable
    with pytest.raises(ValueError, match="descriptor"):
        request_step(-1, bytearray(64), PREFIX, MESSAGE, None)
    assert isinstance(request_step(ours.fileno(), bytearray(64), PREFIX, MESSAGE, None), float)  # still there
