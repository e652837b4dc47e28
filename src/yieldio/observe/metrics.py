"""Prometheus metrics for ``yieldio serve --metrics HOST:PORT``, with one worker or many.

The servers count what they do anyway (:class:`~yieldio.servers.stream.ServerStats`,
:class:`~yieldio.servers.udp.DatagramCounters`), in plain integers, on
paths that run once per connection or per datagram. Nothing here adds to
them: a scrape reads them (:func:`snapshot`), so the per-message path pays
nothing for metrics, and a server nobody scrapes pays nothing at all.

With ``--workers N`` each worker counts its own traffic, and a scrape must
show the sum, exact at the time of the scrape, whichever worker served what.
The metrics endpoint then runs in a process of its own beside the workers
(the supervisor's ``aside``), and at each scrape it asks every worker for
its snapshot over a socket pair of the worker's slot (:class:`Gatherer`
here, :func:`answer_gatherer` in each worker) and adds them up. A worker
that dies takes no count back with it: its last snapshot stays in the sum,
and its replacement (same slot, new pid) counts from zero on top of it, so
no counter goes backwards; what a worker served between the last scrape and
its death is lost (it was never told to anyone). A worker that does not
answer within :data:`GATHER_TIMEOUT` (busy, or being restarted) is counted
with its last snapshot.

Why not ``prometheus_client``'s multiprocess mode: it sums what each process
wrote to its files, which is exact only if every count is written as it
happens; the byte totals here are summed from the sockets' own counters when
asked, and writing them per message would put a file write (an mmap store
behind a lock) on the echo's per-message path. It also needs a writable
directory shared by the processes, which a read-only container has not.

The text comes from ``prometheus_client`` (the optional extra
``yieldio[metrics]``): its exposition format is its business. The HTTP
endpoint is a listener like the others, served by a kernel: a scrape is one
more short connection, read with a :class:`~yieldio.Stream`, with a
deadline, so a client that never finishes its request holds nothing for
long. Only ``GET /metrics`` (and ``HEAD``) is answered.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import types
from collections.abc import Callable, Generator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from ..core.kernel import running_kernel
from ..core.scopes import TaskTimeout, timeout_after
from ..io.sockets import Socket, format_address
from ..io.streams import IncompleteReadError, LimitOverrunError, Stream
from ..servers.stream import ServerStats
from ..servers.udp import DatagramCounters

log = logging.getLogger("yieldio")

REQUEST_TIMEOUT = 5.0  # seconds a scraper has to send its request
MAX_REQUEST = 8192  # bytes of request head accepted
GATHER_TIMEOUT = 1.0  # seconds the workers have to answer a scrape (a liveness probe allows 2)
MAX_ANSWER = 1 << 20  # bytes of one worker's snapshot (JSON: a few hundred per listener)


class MetricsUnavailable(RuntimeError):
    """``prometheus_client`` is not installed."""


def prometheus() -> types.ModuleType:
    """``prometheus_client``, imported when --metrics first needs it, not with this module: it is an
    optional extra, and a server without --metrics should not carry its 5 MiB."""
    try:
        importlib.import_module("prometheus_client.core")
        return importlib.import_module("prometheus_client")
    except ImportError:
        raise MetricsUnavailable("--metrics needs prometheus_client: pip install 'yieldio[metrics]'") from None


Counted = tuple[str, ServerStats | DatagramCounters]  # (listener label, its counters)

# The metrics, each with its help text and where a server keeps it: (name, help, attribute), per kind
# of listener. Every one is a counter (``_total`` is added) but yieldio_connections_open, a gauge.
_STREAM = (
    ("yieldio_connections_open", "Connections open now", "open"),
    ("yieldio_connections_accepted", "Connections accepted", "accepted"),
    ("yieldio_received_bytes", "Bytes received", "bytes_in"),
    ("yieldio_sent_bytes", "Bytes sent", "bytes_out"),
    ("yieldio_accept_pauses", "Times accepting paused for lack of descriptors or memory", "accept_pauses"),
    ("yieldio_tls_handshake_failures", "TLS handshakes that failed", "handshake_failures"),
    ("yieldio_proxy_header_rejections", "Connections closed for a bad PROXY header", "proxy_rejections"),
)
_DATAGRAM = (
    ("yieldio_received_bytes", "Bytes received", "bytes_in"),
    ("yieldio_sent_bytes", "Bytes sent", "bytes_out"),
    ("yieldio_datagrams_received", "Datagrams received", "datagrams_in"),
    ("yieldio_datagrams_sent", "Datagrams sent", "datagrams_out"),
    ("yieldio_datagrams_too_large", "Datagrams over the size limit, dropped", "truncated"),
    ("yieldio_replies_dropped", "Replies too large for one datagram, dropped, never split", "dropped_replies"),
)
_GAUGES = {"yieldio_connections_open"}
# Faults injected on purpose (servers.faults), counted by name: only those that are on are shown.
_FAULTS = "yieldio_faults_injected"
_FAULTS_HELP = (
    "Faults injected on purpose, by fault: replies delayed, connections reset or closed at the byte limit, "
    "replies held back by the throttle, datagrams dropped"
)
_HELP = {name: text for name, text, _ in _STREAM + _DATAGRAM}
_ORDER = list(dict.fromkeys(name for name, _, _ in _STREAM[:4] + _DATAGRAM[2:] + _STREAM[4:]))


@dataclass
class Snapshot:
    """What the servers of one process (or of all workers, added up) had counted when it was taken:
    per listener label, each metric's value; and the tasks its kernel ran."""

    listeners: dict[str, dict[str, int]] = field(default_factory=dict)
    tasks: int = 0

    def add(self, other: Snapshot, *, gauges: bool = True) -> None:
        """Add ``other``'s counts to these (with ``gauges=False``, its counters only: a process that is gone)."""
        for label, counts in other.listeners.items():
            mine = self.listeners.setdefault(label, {})
            for name, value in counts.items():
                if gauges or name not in _GAUGES:
                    mine[name] = mine.get(name, 0) + value
                else:
                    mine.setdefault(name, 0)
        if gauges:
            self.tasks += other.tasks

    @classmethod
    def from_answer(cls, answer: dict[str, Any]) -> Snapshot:
        """The snapshot in a worker's answer (:func:`answer_gatherer`)."""
        return cls(answer["listeners"], answer["tasks"])


def snapshot(listeners: list[Counted]) -> Snapshot:
    """This process's counts now (read from the servers' counters; the byte totals from the open sockets)."""
    taken = Snapshot()
    for label, stats in listeners:
        table = _STREAM if isinstance(stats, ServerStats) else _DATAGRAM
        counts = taken.listeners[label] = {name: getattr(stats, attribute) for name, _, attribute in table}
        counts.update({f"{_FAULTS}:{fault}": injected for fault, injected in stats.faults.items()})
    kernel = running_kernel()  # a scrape is served by the kernel itself
    taken.tasks = 0 if kernel is None else len(kernel.tasks())
    return taken


def render(taken: Snapshot) -> bytes:
    """``taken`` in Prometheus' text format, by ``prometheus_client``."""
    client_library = prometheus()
    families = client_library.core
    metrics: dict[str, Any] = {}
    for name in _ORDER:
        kind = families.GaugeMetricFamily if name in _GAUGES else families.CounterMetricFamily
        metrics[name] = kind(name, _HELP[name], labels=["listener"])
    faults = families.CounterMetricFamily(_FAULTS, _FAULTS_HELP, labels=["listener", "fault"])
    for label, counts in taken.listeners.items():
        for name, value in counts.items():
            family, _, fault = name.partition(":")
            if fault:
                faults.add_metric([label, fault], value)
            else:
                metrics[family].add_metric([label], value)
    if faults.samples:
        metrics[_FAULTS] = faults
    tasks = families.GaugeMetricFamily("yieldio_tasks_alive", "Tasks the kernels run now", value=taken.tasks)

    class Collector:
        def collect(self) -> Any:
            yield from metrics.values()
            yield tasks

    registry = client_library.CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return bytes(client_library.generate_latest(registry))


Source = Callable[[], Generator[Any, Any, Snapshot]]  # what a scrape shows: a snapshot, maybe waited for


def local_source(listeners: list[Counted]) -> Source:
    """The snapshot of this process's listeners (one process serves everything)."""

    @types.coroutine
    def taken() -> Generator[Any, Any, Snapshot]:
        return snapshot(listeners)
        yield  # a generator that never waits

    return taken


@types.coroutine
def answer_gatherer(sock: Socket, listeners: list[Counted]) -> Generator[Any, Any, None]:
    """In a worker: answer each request on ``sock`` (its slot's end of the pair) with this process's
    snapshot, its pid and the request's number, until the other end closes."""
    while request := (yield from sock.recv(64)):
        taken = snapshot(listeners)
        answer = {"pid": os.getpid(), "seq": int(request), "listeners": taken.listeners, "tasks": taken.tasks}
        try:
            sock.socket.send(json.dumps(answer).encode())
        except BlockingIOError:
            log.debug("metrics: the gatherer is not reading; an answer dropped")


@dataclass
class _Slot:
    """What the gatherer knows of the worker in one slot: its pid, its latest snapshot and which scrape it answered."""

    pid: int
    latest: Snapshot
    answered: int


class Gatherer:
    """In the metrics process: the workers' snapshots, asked for at each scrape, added up (see the module)."""

    def __init__(self, slots: list[Socket]) -> None:
        self.sockets = slots  # this process's end of each slot's pair
        self.slots: list[_Slot | None] = [None] * len(slots)
        self.gone = Snapshot()  # the counters of workers that have been replaced
        self.asked = 0

    @types.coroutine
    def gather(self) -> Generator[Any, Any, Snapshot]:
        """Ask every worker, wait for their answers (GATHER_TIMEOUT at most), and add them up."""
        self.asked += 1
        request = str(self.asked).encode()
        for index, sock in enumerate(self.sockets):
            self._take_waiting(index, sock)  # answers that came too late for an earlier scrape
            try:
                sock.socket.send(request)
            except BlockingIOError:  # a worker that has not read the earlier ones (restarting): its last counts stand
                log.debug("metrics: worker slot %d has not taken earlier requests", index)
        with suppress(TaskTimeout):
            yield from timeout_after(GATHER_TIMEOUT, self._answers())
        for index, known in enumerate(self.slots):
            if known is None or known.answered != self.asked:
                log.warning(
                    "metrics: worker slot %d did not answer in %ss: its last counts are used", index, GATHER_TIMEOUT
                )
        return self.total()

    @types.coroutine
    def _answers(self) -> Generator[Any, Any, None]:
        for index, sock in enumerate(self.sockets):
            while (known := self.slots[index]) is None or known.answered != self.asked:
                self._take(index, (yield from sock.recv(MAX_ANSWER)))

    def _take_waiting(self, index: int, sock: Socket) -> None:
        while True:
            try:
                answer = sock.socket.recv(MAX_ANSWER)
            except BlockingIOError:
                return
            self._take(index, answer)

    def _take(self, index: int, answer: bytes) -> None:
        data = json.loads(answer)
        known = self.slots[index]
        if known is not None and known.pid != data["pid"]:
            self.gone.add(known.latest, gauges=False)  # a replacement: the one it replaced keeps its counts
        self.slots[index] = _Slot(data["pid"], Snapshot.from_answer(data), data["seq"])

    def total(self) -> Snapshot:
        added = Snapshot()
        added.add(self.gone, gauges=False)
        for known in self.slots:
            if known is not None:
                added.add(known.latest)
        return added


def make_handler(source: Source) -> Callable[[Socket, Any], Generator[Any, Any, None]]:
    """The HTTP handler of the metrics endpoint (one request per connection), showing what ``source`` gives."""

    @types.coroutine
    def metrics_endpoint(client: Socket, address: Any) -> Generator[Any, Any, None]:
        stream = Stream(client)
        try:
            head: bytes = yield from timeout_after(REQUEST_TIMEOUT, stream.readuntil(b"\r\n\r\n", MAX_REQUEST))
        except (TaskTimeout, IncompleteReadError, LimitOverrunError, OSError) as error:
            log.debug("metrics: %s: no request (%s)", format_address(address), type(error).__name__)
            return
        method, _, rest = head.partition(b" ")
        target = rest.partition(b" ")[0]
        if method not in (b"GET", b"HEAD"):
            yield from _respond(
                client, b"405 Method Not Allowed", b"text/plain", b"GET /metrics\n", b"Allow: GET, HEAD\r\n"
            )
        elif target.partition(b"?")[0] != b"/metrics":
            yield from _respond(client, b"404 Not Found", b"text/plain", b"try /metrics\n")
        else:
            body = render((yield from source()))
            content_type = prometheus().CONTENT_TYPE_LATEST.encode()
            yield from _respond(client, b"200 OK", content_type, body, head_only=method == b"HEAD")

    return metrics_endpoint


@types.coroutine
def _respond(
    client: Socket, status: bytes, content_type: bytes, body: bytes, extra: bytes = b"", head_only: bool = False
) -> Generator[Any, Any, None]:
    head = (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type + b"\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\nConnection: close\r\n" + extra + b"\r\n"
    )  # fmt: skip
    yield from client.sendall(head if head_only else head + body)
