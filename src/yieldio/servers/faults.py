"""Faults injected on purpose, for testing clients against a misbehaving server: off by default.

``yieldio serve`` can make its echo slow, stingy or rude, so that a client, a proxy or a mesh
can be tried against what real networks do:

- ``delay``: each reply waits this long (seconds), ``± jitter`` drawn uniformly;
- ``reset_after``: once a connection has received that many bytes, it is reset (RST, not FIN:
  ``SO_LINGER`` 0), the bytes up to there answered;
- ``close_after``: the same, but closed cleanly: everything received is answered, then FIN;
- ``throttle``: each connection's replies go out at most that many bytes per second;
- ``udp_drop``: each datagram is dropped, unanswered, with that probability.

The random draws (jitter, drops) come from generators seeded with ``seed``, one per fault and per
listener, so that a run can be repeated and a test can count exactly: the n-th datagram of a
listener is dropped or not as the n-th ``random.Random(seed).random() < udp_drop`` says.

Every fault injected is counted (:class:`Injector`'s ``counts``: a delayed reply, a reset, a
close, a reply held back by the throttle, a dropped datagram), for the metrics. None of this
touches the echo's ordinary loops: with no fault on, the server runs exactly what it runs
without this module (:func:`~yieldio.servers.echo.make_echo_handler` picks the loop).

The decisions are here, without I/O; the loop that acts on them is in :mod:`.echo` (streams)
and :mod:`.udp` (datagrams).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

STREAM_FAULTS = ("delay", "reset", "close", "throttle")


@dataclass(frozen=True)
class Faults:
    """Which faults to inject, and how (see the module). The defaults inject none."""

    delay: float = 0.0  # seconds before each reply
    jitter: float = 0.0  # the delay varies by up to this much either way (at most the delay)
    reset_after: int | None = None  # bytes received, then RST
    close_after: int | None = None  # bytes received, then everything answered and FIN
    throttle: int | None = None  # reply bytes per second, per connection
    udp_drop: float = 0.0  # the probability that a datagram is dropped
    seed: int | None = None  # of the random draws; None: a new one each run

    def __post_init__(self) -> None:
        if self.delay < 0 or self.jitter < 0 or self.jitter > self.delay:
            raise ValueError("the delay must be at least 0, and its jitter between 0 and the delay")
        if not 0.0 <= self.udp_drop <= 1.0:
            raise ValueError("udp_drop is a probability, between 0 and 1")
        if self.throttle is not None and self.throttle < 1:
            raise ValueError("throttle must be at least 1 byte per second")
        for limit in (self.reset_after, self.close_after):
            if limit is not None and limit < 0:
                raise ValueError("reset_after and close_after count bytes: at least 0")

    @property
    def on(self) -> tuple[str, ...]:
        """The faults this injects, by the names they are counted under."""
        names = (
            ("delay", self.delay > 0),
            ("reset", self.reset_after is not None),
            ("close", self.close_after is not None),
            ("throttle", self.throttle is not None),
            ("udp_drop", self.udp_drop > 0),
        )
        return tuple(name for name, injected in names if injected)

    @property
    def on_streams(self) -> bool:
        """Whether a stream connection needs the loop with faults."""
        return any(name in STREAM_FAULTS for name in self.on)

    @property
    def limit(self) -> int | None:
        """Bytes a connection may send before it is reset or closed (the lower of the two)."""
        limits = [limit for limit in (self.reset_after, self.close_after) if limit is not None]
        return min(limits) if limits else None

    @property
    def resets(self) -> bool:
        """Whether a connection at :attr:`limit` is reset (else closed)."""
        return self.reset_after is not None and (self.close_after is None or self.reset_after <= self.close_after)


NO_FAULTS = Faults()


class Injector:
    """The faults of one listener: its own random draws (seeded), and the count of each fault injected."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.counts = dict.fromkeys(faults.on, 0)
        self._jitter = random.Random(faults.seed)
        self._drops = random.Random(faults.seed)

    def delay(self) -> float:
        """Seconds the next reply waits (0: none); a delay is counted."""
        faults = self.faults
        if not faults.delay:
            return 0.0
        self.counts["delay"] += 1
        if not faults.jitter:
            return faults.delay
        return faults.delay + self._jitter.uniform(-faults.jitter, faults.jitter)

    def drops(self) -> bool:
        """Whether the next datagram is dropped (one draw per datagram); a drop is counted."""
        if self._drops.random() < self.faults.udp_drop:
            self.counts["udp_drop"] += 1
            return True
        return False

    def ended(self) -> None:
        """A connection reached the byte limit: count its reset or close."""
        self.counts["reset" if self.faults.resets else "close"] += 1


class Pace:
    """A connection's throttle: when each piece of its replies may go out, ``rate`` bytes a second."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.piece = max(1, rate // 20)  # pieces of 50 ms each: the rate holds over any tenth of a second
        self._free_at = 0.0  # when the bytes already let through have had their time

    def wait(self, now: float, size: int) -> float:
        """Seconds to wait before ``size`` more bytes (at most :attr:`piece`) may go out at ``now``."""
        start = max(now, self._free_at)
        self._free_at = start + size / self.rate
        return start - now
