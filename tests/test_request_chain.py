"""The load client's request chain, compiled (``RequestChain`` in yieldio/_speedups.c) and pure
(``_PureRequestChain`` in clients/load.py), over real sockets.

Both must behave alike. While the echoes come back exact, the chain times each one, sends the
connection's next request and yields its wait to read; it stops (the iteration ends) on a read
that is not the exact echo, after an echo it may not follow (``left`` or the tickets), and after
a next request that went out in part. test_load.py runs ``yieldio load`` with each against the
same server.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from yieldio.clients.echo_check import Framing
from yieldio.clients.load import Load, LoadPlan, RequestChain, Tally, _PureRequestChain
from yieldio.compiled import RequestChain as CompiledRequestChain
from yieldio.io.urls import parse_listen_url

PREFIX = b"GOT:"
SIZE = 10
CONNECTIONS = 3  # request numbers on one connection go up by this
INDEX = 1

MakeChain = Callable[[socket.socket, Load], RequestChain]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(ours, theirs): ours non-blocking, as the load's sockets are."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(5)
    with ours, theirs:
        yield ours, theirs


def new_load(framing: Framing = "chunk", requests: int | None = None) -> Load:
    plan = LoadPlan(
        target=parse_listen_url("tcp://127.0.0.1:9"),
        connections=CONNECTIONS,
        size=SIZE,
        prefix=PREFIX,
        framing=framing,
        requests=requests,
    )
    load = Load(plan, Tally())
    load.tally.measuring = True
    return load


@pytest.fixture(params=["pure", "compiled"])
def make_chain(request: pytest.FixtureRequest) -> MakeChain:
    """A chain over a socket, for request INDEX's connection, starting at its first request."""

    def make(sock: socket.socket, load: Load) -> RequestChain:
        trap = ("recv", sock.fileno())
        if request.param == "pure":
            chain: RequestChain = _PureRequestChain(sock, trap, load, INDEX)
        elif CompiledRequestChain is None:
            pytest.skip("the compiled chain is not in use (a pure build, or YIELDIO_PURE=1)")
        else:
            chain = CompiledRequestChain(sock.fileno(), trap, load, INDEX)
        chain.number, chain.began, chain.left, chain.done = INDEX, time.perf_counter(), -1, 0
        return chain

    return make


def nothing_more(theirs: socket.socket) -> None:
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(100)


def test_exact_echoes_are_timed_and_each_is_followed_by_the_next_request(
    pair: tuple[socket.socket, socket.socket], make_chain: MakeChain
) -> None:
    ours, theirs = pair
    load = new_load()
    chain = make_chain(ours, load)
    steps = iter(chain)
    assert next(steps) == ("recv", ours.fileno())  # nothing to read yet: the wait
    for done in (1, 2, 3):
        number = INDEX + (done - 1) * CONNECTIONS
        theirs.sendall(PREFIX + load.messages[number])
        before = time.perf_counter()
        assert next(steps) == ("recv", ours.fileno())
        after = time.perf_counter()
        assert chain.done == done
        assert chain.number == number + CONNECTIONS
        assert theirs.recv(100) == load.messages[number + CONNECTIONS]  # the next request went out
        assert before <= chain.began <= after  # perf_counter's clock: it ends one latency and starts the next
        assert load.inflight[INDEX] == chain.began
    assert len(load.tally.latencies) == 3
    assert all(0 <= latency < 5_000_000 for latency in load.tally.latencies)
    nothing_more(theirs)


def test_latencies_are_kept_only_while_measuring(
    pair: tuple[socket.socket, socket.socket], make_chain: MakeChain
) -> None:
    ours, theirs = pair
    load = new_load()
    load.tally.measuring = False  # the warm-up
    chain = make_chain(ours, load)
    theirs.sendall(PREFIX + load.messages[INDEX])
    assert next(iter(chain)) == ("recv", ours.fileno())
    assert chain.done == 1 and len(load.tally.latencies) == 0


@pytest.mark.parametrize(
    "change",
    [lambda echo: echo[:-1], lambda echo: echo + b"!", lambda echo: echo[:-1] + b"?", lambda echo: b"NOT:" + echo[4:]],
    ids=["short", "long", "wrong-message", "wrong-prefix"],
)
def test_any_other_read_stops_the_chain_with_it_and_sends_nothing(
    pair: tuple[socket.socket, socket.socket], make_chain: MakeChain, change: Callable[[bytes], bytes]
) -> None:
    ours, theirs = pair
    load = new_load(requests=5)
    chain = make_chain(ours, load)
    echo = change(PREFIX + load.messages[INDEX])
    theirs.sendall(echo)
    with pytest.raises(StopIteration):
        next(iter(chain))
    assert chain.reply == echo
    assert (chain.done, chain.number, chain.sent, load.remaining) == (0, INDEX, -1, 5)  # no ticket taken
    assert len(load.tally.latencies) == 0
    nothing_more(theirs)


def test_end_of_input_stops_it_with_an_empty_reply(
    pair: tuple[socket.socket, socket.socket], make_chain: MakeChain
) -> None:
    ours, theirs = pair
    chain = make_chain(ours, new_load())
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(StopIteration):
        next(iter(chain))
    assert chain.reply == b""


def test_a_reset_is_raised(make_chain: MakeChain) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with client, server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: a reset
            server.close()
            client.setblocking(False)
            chain = make_chain(client, new_load())
            assert select.select([client], [], [], 5)[0], "the reset did not arrive"  # it makes the socket readable
            with pytest.raises(ConnectionResetError):
                next(iter(chain))


def test_left_says_how_many_requests_it_may_send_itself(
    pair: tuple[socket.socket, socket.socket], make_chain: MakeChain
) -> None:
    ours, theirs = pair
    load = new_load()
    chain = make_chain(ours, load)
    chain.left = 1  # churn's end after two requests, or open loop's 0
    theirs.sendall(PREFIX + load.messages[INDEX])
    assert next(iter(chain)) == ("recv", ours.fileno())
    assert theirs.recv(100) == load.messages[INDEX + CONNECTIONS]
    theirs.sendall(PREFIX + load.messages[INDEX + CONNECTIONS])
    with pytest.raises(StopIteration):
        next(iter(chain))
    assert (chain.done, chain.left, chain.reply, chain.sent) == (2, 0, None, -1)
    assert len(load.tally.latencies) == 2  # the last one timed too
    nothing_more(theirs)


def test_the_tickets_are_taken_one_per_request_sent(
    pair: tuple[socket.socket, socket.socket], make_chain: MakeChain
) -> None:
    ours, theirs = pair
    load = new_load(requests=1)  # one more request may start, over all connections
    chain = make_chain(ours, load)
    theirs.sendall(PREFIX + load.messages[INDEX])
    assert next(iter(chain)) == ("recv", ours.fileno())
    assert load.remaining == 0
    theirs.sendall(PREFIX + load.messages[INDEX + CONNECTIONS])
    with pytest.raises(StopIteration):
        next(iter(chain))  # its echo is back, and there is no ticket for another
    assert (chain.done, chain.number, load.remaining) == (2, INDEX + CONNECTIONS, 0)
    assert theirs.recv(100) == load.messages[INDEX + CONNECTIONS]
    nothing_more(theirs)


def test_a_next_request_sent_in_part_stops_it_saying_how_much_went(
    pair: tuple[socket.socket, socket.socket], make_chain: MakeChain
) -> None:
    ours, theirs = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    while True:  # fill what the peer has not read, so the next send takes nothing
        try:
            ours.send(b"x" * 65536)
        except BlockingIOError:
            break
    load = new_load(requests=5)
    chain = make_chain(ours, load)
    theirs.sendall(PREFIX + load.messages[INDEX])
    with pytest.raises(StopIteration):
        next(iter(chain))
    assert 0 <= chain.sent < SIZE
    assert (chain.done, chain.number, load.remaining) == (1, INDEX + CONNECTIONS, 4)  # it is on its way


def test_a_send_that_fails_gives_its_ticket_and_number_back(
    pair: tuple[socket.socket, socket.socket], make_chain: MakeChain
) -> None:
    ours, theirs = pair
    load = new_load(requests=5)
    chain = make_chain(ours, load)
    theirs.sendall(PREFIX + load.messages[INDEX])
    theirs.shutdown(socket.SHUT_RD)  # the echo is there; the next request has nowhere to go
    ours.shutdown(socket.SHUT_WR)
    with pytest.raises(BrokenPipeError):
        next(iter(chain))
    assert (chain.done, chain.number, load.remaining) == (1, INDEX, 5)


def test_lines_are_messages_of_their_own_not_slices_of_the_pool(
    pair: tuple[socket.socket, socket.socket], make_chain: MakeChain
) -> None:
    ours, theirs = pair
    load = new_load(framing="line")
    assert load.messages.slicing()[0] is None
    chain = make_chain(ours, load)
    theirs.sendall(PREFIX + load.messages[INDEX])
    assert next(iter(chain)) == ("recv", ours.fileno())
    following = theirs.recv(100)
    assert following == load.messages[INDEX + CONNECTIONS] and following.endswith(b"\n")
    theirs.sendall(PREFIX + following[:-1] + b"?")
    with pytest.raises(StopIteration):
        next(iter(chain))
    assert chain.reply == PREFIX + following[:-1] + b"?"


def test_the_compiled_chain_refuses_what_is_not_a_load(pair: tuple[socket.socket, socket.socket]) -> None:
    if CompiledRequestChain is None:
        pytest.skip("the compiled chain is not in use (a pure build, or YIELDIO_PURE=1)")
    ours, _ = pair
    trap = ("recv", ours.fileno())
    with pytest.raises(AttributeError):
        CompiledRequestChain(ours.fileno(), trap, object(), 0)
    with pytest.raises(TypeError, match="index"):
        CompiledRequestChain(ours.fileno(), trap, new_load(), CONNECTIONS)  # one past the last connection
    with pytest.raises(ValueError, match="descriptor"):
        CompiledRequestChain(-1, trap, new_load(), 0)
    with pytest.raises(TypeError, match="arguments"):
        CompiledRequestChain(ours.fileno(), trap, new_load(), index=0)  # type: ignore[call-arg]
