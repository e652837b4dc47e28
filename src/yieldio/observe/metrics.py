"""Prometheus metrics for ``yieldio serve --metrics HOST:PORT``.

The servers count what they do anyway (:class:`~yieldio.servers.stream.ServerStats`,
:class:`~yieldio.servers.udp.DatagramCounters`), in plain integers, on
paths that run once per connection or per datagram. Nothing here adds to
them: a custom collector reads them when Prometheus scrapes, so the
per-message path pays nothing for metrics, and a server nobody scrapes
pays nothing at all.

The text comes from ``prometheus_client`` (the optional extra
``yieldio[metrics]``): its exposition format is its business. The HTTP
endpoint is a listener like the others, served by the same kernel: a scrape
is one more short connection, read with a :class:`~yieldio.Stream`, with a
deadline, so a client that never finishes its request holds nothing for
long. Only ``GET /metrics`` (and ``HEAD``) is answered.
"""

from __future__ import annotations

import importlib
import logging
import types
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

from ..core.kernel import running_kernel
from ..core.scopes import TaskTimeout, timeout_after
from ..io.sockets import Socket, format_address
from ..io.streams import IncompleteReadError, LimitOverrunError, Stream
from ..servers.stream import ServerStats
from ..servers.udp import DatagramCounters

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger("yieldio")

REQUEST_TIMEOUT = 5.0  # seconds a scraper has to send its request
MAX_REQUEST = 8192  # bytes of request head accepted


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


class EchoCollector:
    """Reads the servers' counters at scrape time and gives them to ``prometheus_client``."""

    def __init__(self, listeners: list[Counted]) -> None:
        self.listeners = listeners
        self.families = prometheus().core

    def collect(self) -> Iterator[Metric]:
        counter_family, gauge_family = self.families.CounterMetricFamily, self.families.GaugeMetricFamily

        def counter(name: str, text: str) -> Any:
            return counter_family(name, text, labels=["listener"])

        open_ = gauge_family("yieldio_connections_open", "Connections open now", labels=["listener"])
        accepted = counter("yieldio_connections_accepted", "Connections accepted")
        bytes_in = counter("yieldio_received_bytes", "Bytes received")
        bytes_out = counter("yieldio_sent_bytes", "Bytes sent")
        datagrams_in = counter("yieldio_datagrams_received", "Datagrams received")
        datagrams_out = counter("yieldio_datagrams_sent", "Datagrams sent")
        too_large = counter("yieldio_datagrams_too_large", "Datagrams over the size limit, dropped")
        dropped = counter("yieldio_replies_dropped", "Replies too large for one datagram, dropped, never split")
        pauses = counter("yieldio_accept_pauses", "Times accepting paused for lack of descriptors or memory")
        handshakes = counter("yieldio_tls_handshake_failures", "TLS handshakes that failed")
        rejections = counter("yieldio_proxy_header_rejections", "Connections closed for a bad PROXY header")
        for label, stats in self.listeners:
            bytes_in.add_metric([label], stats.bytes_in)  # both kinds count bytes
            bytes_out.add_metric([label], stats.bytes_out)
            if isinstance(stats, ServerStats):
                open_.add_metric([label], stats.open)
                accepted.add_metric([label], stats.accepted)
                pauses.add_metric([label], stats.accept_pauses)
                handshakes.add_metric([label], stats.handshake_failures)
                rejections.add_metric([label], stats.proxy_rejections)
            else:
                datagrams_in.add_metric([label], stats.datagrams_in)
                datagrams_out.add_metric([label], stats.datagrams_out)
                too_large.add_metric([label], stats.truncated)
                dropped.add_metric([label], stats.dropped_replies)
        yield from (open_, accepted, bytes_in, bytes_out, datagrams_in, datagrams_out, too_large, dropped)
        yield from (pauses, handshakes, rejections)
        kernel = running_kernel()  # the scrape is served by the kernel itself
        alive = 0 if kernel is None else len(kernel.tasks())
        yield gauge_family("yieldio_tasks_alive", "Tasks the kernel runs now", value=alive)


def make_registry(listeners: list[Counted]) -> Any:
    registry = prometheus().CollectorRegistry(auto_describe=False)
    registry.register(EchoCollector(listeners))
    return registry


def make_handler(registry: Any) -> Callable[[Socket, Any], Generator[Any, Any, None]]:
    """The HTTP handler of the metrics endpoint (one request per connection)."""

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
            client_library = prometheus()
            body = client_library.generate_latest(registry)
            content_type = client_library.CONTENT_TYPE_LATEST.encode()
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
