"""The monitor's HTTP endpoint (``--monitor``, ``YIELDIO_MONITOR``), its page, and the client of the commands.

*Why the standard library's HTTP server, in a thread.* The monitor must answer
while the kernel it watches is blocked, so it cannot be served by that kernel;
it needs a thread, and a thread can block on its sockets. ``http.server``
does that with nothing to install, and a monitor gets a handful of requests
from one person, not thousands. The alternatives the project knows, sans-I/O
h11 and wsproto, pay off when the I/O is the kernel's; here it is not.

*Why server-sent events.* The page is updated as things happen, pushed, not
polled: one long ``GET /api/events`` response of ``data:`` lines
(``EventSource`` in the browser, which reconnects by itself). Commands go the
other way as plain POSTs. WebSocket would add a handshake and framing for a
channel that needs only one direction. A push carries a fresh state at most
ten times a second, and only when an event happened (or every second, for
the clocks); when the kernel's part of a snapshot grows (thousands of tasks),
pushes are spaced so that it stays under 5 % of the kernel's time.

*Safety.* Off by default, and on loopback unless another address is named
(``--monitor PORT`` and ``:PORT`` mean 127.0.0.1). Every other address needs
a token, made and printed at start if none is given; a token given is
required on loopback too. Each request is checked, in this order:

- its ``Host`` header must name the address the client connected to (or, on
  loopback, ``localhost``, ``127.0.0.1`` or ``[::1]``) with the monitor's
  port: a web page whose name was rebound to this address (DNS rebinding)
  sends its own name, and is refused;
- the token, as ``Authorization: Bearer TOKEN`` or ``?token=TOKEN`` (the
  page's own requests; ``EventSource`` cannot send headers);
- a request that changes something (cancel, pause, step, resume) is a POST,
  and one that comes from a page of another origin (its ``Origin`` header) is
  refused; with ``--monitor-read-only`` every one is refused.

The page is package data (``monitor_page/``): HTML, CSS and JavaScript, no
framework, nothing fetched from elsewhere (its Content-Security-Policy says
so).
"""

from __future__ import annotations

import contextlib
import hmac
import importlib.resources
import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..core.kernel import Kernel
from ..core.runner import Extension
from ..io.sockets import format_address
from .monitor import BLOCKED_AFTER, Json, Monitor, Refused, UnknownTask
from .monitor_address import (  # (where to find a monitor: light, for the commands)
    is_loopback,
    plain_address,
)

log = logging.getLogger("yieldio")

PAGE_LIMIT = 200  # tasks per list in a page's push (the counts say how many there are)
PUSH_INTERVAL = 0.1  # at most ten pushes a second
PUSH_EVERY = 1.0  # and one a second at least, for the clocks and to notice a closed page
KERNEL_SHARE = 0.05  # pushes are spaced so that taking snapshots costs the kernel at most this share
PAGE_FILES = {
    "/": ("index.html", "text/html"),
    "/monitor.js": ("monitor.js", "text/javascript"),
    "/monitor.css": ("monitor.css", "text/css"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
TASK_PATH = re.compile(r"/api/task/(\d+)(/cancel)?")


@dataclass
class _Settings:
    monitor: Monitor
    token: str | None
    bound_host: str
    closing: threading.Event = field(default_factory=threading.Event)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a page's stream must not keep the program alive
    settings: _Settings

    def __init__(self, sock: socket.socket, settings: _Settings) -> None:
        self.address_family = sock.family
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()  # the one made by the constructor: the endpoint serves the socket opened earlier
        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        self.settings = settings

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("monitor: request from %s failed", format_address(client_address))


class MonitorEndpoint:
    """Serves a :class:`~yieldio.observe.monitor.Monitor` over HTTP on ``sock``, in threads of its own."""

    def __init__(self, monitor: Monitor, sock: socket.socket, token: str | None) -> None:
        self.settings = _Settings(monitor, token, sock.getsockname()[0])
        self.server = _Server(sock, self.settings)
        self.thread = threading.Thread(target=self.server.serve_forever, name="yieldio monitor: http", daemon=True)

    @property
    def address(self) -> str:
        return format_address(self.server.server_address)

    def url(self) -> str:
        token = self.settings.token
        return f"http://{self.address}/" + ("" if token is None else f"?token={token}")

    def start(self) -> None:
        self.settings.monitor.start()
        self.thread.start()

    def close(self) -> None:
        self.settings.closing.set()  # ends the pages' streams
        self.server.shutdown()
        self.server.server_close()
        self.settings.monitor.close()


def monitor_extension(
    sock: socket.socket,
    *,
    token: str | None,
    read_only: bool,
    about: Json,
    say: Callable[[MonitorEndpoint], None],
) -> Extension:
    """A :data:`~yieldio.core.runner.Extension` that serves a monitor of the kernel on ``sock`` while it
    runs; ``say(endpoint)`` once it answers (where a program says where its monitor is)."""

    @contextlib.contextmanager
    def serve_monitor(kernel: Kernel) -> Iterator[MonitorEndpoint]:
        address = {"monitor": format_address(sock.getsockname()[:2])}
        endpoint = MonitorEndpoint(Monitor(kernel, read_only=read_only, about=about | address), sock, token)
        endpoint.start()
        try:
            say(endpoint)
            yield endpoint
        finally:
            endpoint.close()

    return serve_monitor


def allowed_hosts(local: tuple[Any, ...], bound_host: str) -> set[str]:
    """The Host headers a request may carry, with the port: the address the client connected to, the one
    the monitor is bound to (unless it is a wildcard), and on loopback the usual names of loopback."""
    address, port = str(plain_address(str(local[0]))), int(local[1])
    names = {address}
    if bound_host not in ("0.0.0.0", "::"):
        names.add(bound_host)
    if is_loopback(address):
        names |= {"localhost", "127.0.0.1", "::1"}
    hosts = {f"[{name}]" if ":" in name else name for name in names}
    return {f"{host}:{port}" for host in hosts} | (hosts if port == 80 else set())


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "yieldio-monitor"
    timeout = 30  # seconds a connection may sit idle (a browser opens some ahead, and may never use them)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("monitor: %s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve(changing=False)

    def do_POST(self) -> None:
        self._serve(changing=True)

    # -- checks

    def _refusal(self, changing: bool, query: dict[str, list[str]]) -> tuple[int, str] | None:
        settings = self.server.settings
        allowed = allowed_hosts(self.connection.getsockname(), settings.bound_host)
        host = (self.headers.get("Host") or "").strip().lower()
        if host not in allowed:
            return 403, f"Host {host or '(none)'} is not this monitor's address: refused (DNS rebinding)"
        token = settings.token
        if token is not None:
            given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip() or query.get("token", [""])[0]
            if not hmac.compare_digest(given.encode(), token.encode()):
                return 401, "this monitor needs its token (?token=TOKEN, or Authorization: Bearer TOKEN)"
        if changing:
            origin = self.headers.get("Origin")
            if origin is not None and origin.lower() not in {f"http://{name}" for name in allowed}:
                return 403, f"a request from {origin} may not change anything here: refused"
        return None

    # -- routes

    def _serve(self, changing: bool) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        refusal = self._refusal(changing, query)
        if refusal is not None:
            self._send_json(refusal[0], {"error": refusal[1]})
            return
        monitor = self.server.settings.monitor
        try:
            blocked_after = float(query.get("blocked_after", [BLOCKED_AFTER])[0])
            if not 0 < blocked_after <= 60:
                raise ValueError
        except ValueError:
            self._send_json(400, {"error": "blocked_after must be a number of seconds, more than 0, at most 60"})
            return
        path = url.path
        task = TASK_PATH.fullmatch(path)
        try:
            if not changing and path in PAGE_FILES:
                self._send_file(*PAGE_FILES[path])
            elif not changing and path == "/api/state":
                self._send_json(200, monitor.state(blocked_after))
            elif not changing and path == "/api/events":
                self._stream(monitor, blocked_after)
            elif task is not None and changing == bool(task.group(2)):
                task_id = int(task.group(1))
                self._send_json(200, monitor.cancel(task_id) if changing else monitor.task(task_id, blocked_after))
            elif changing and path in ("/api/pause", "/api/resume", "/api/step"):
                action = {"/api/pause": monitor.pause, "/api/resume": monitor.resume, "/api/step": monitor.step}
                self._send_json(200, action[path]())
            else:
                self._send_json(404, {"error": f"no {self.command} {path} here"})
        except UnknownTask as missing:
            self._send_json(404, {"error": f"no task {missing.args[0]}"})
        except Refused as refused:
            self._send_json(409, {"error": str(refused)})

    def _headers(self, status: int, content_type: str, length: int | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send_json(self, status: int, body: Json) -> None:
        data = json.dumps(body).encode()
        self._headers(status, "application/json", len(data))
        self.wfile.write(data)

    def _send_file(self, name: str, content_type: str) -> None:
        data = importlib.resources.files(__package__).joinpath("monitor_page", name).read_bytes()
        self._headers(200, f"{content_type}; charset=utf-8", len(data))
        self.wfile.write(data)

    def _stream(self, monitor: Monitor, blocked_after: float) -> None:
        """Server-sent events: a state (and the events, and a step's report) whenever something happened."""
        closing = self.server.settings.closing
        self._headers(200, "text/event-stream", None)
        monitor.page_opened()
        try:
            self.wfile.write(b"retry: 1000\n\n")
            seen_event, seen_step, pushed = -1, -1, 0.0
            while not closing.is_set():
                now = time.monotonic()
                event, step = monitor.feed.seq, monitor.steps_reported
                busy = monitor.feed.busy is not None  # events come in bursts: push at the steady pace
                if event != seen_event or step != seen_step or busy or now - pushed >= PUSH_EVERY:
                    state = monitor.state(blocked_after, limit=PAGE_LIMIT)
                    message = {
                        "state": state,
                        "events": monitor.events(after=seen_event),
                        "step": monitor.last_step if step != seen_step else None,
                    }
                    self.wfile.write(b"data: " + json.dumps(message).encode() + b"\n\n")
                    self.wfile.flush()
                    seen_event, seen_step, pushed = event, step, now
                closing.wait(max(PUSH_INTERVAL, monitor.gather_seconds / KERNEL_SHARE))
        except OSError:  # the page went away
            pass
        finally:
            monitor.page_closed()


# -- the commands' side --------------------------------------------------------------------


class MonitorUnavailable(Exception):
    """No monitor answered, or it refused: one line for the user."""


class MonitorClient:
    """The requests ``yieldio ps``, ``where``, ``cancel`` and ``top`` make, with their errors in one line."""

    def __init__(self, address: tuple[str, int], token: str | None = None, timeout: float = 10.0) -> None:
        self.address = address
        self.where = format_address(address)
        self.token = token
        self.timeout = timeout
        # loopback or not, a monitor is never reached through an HTTP proxy from the environment
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def state(self, blocked_after: float = BLOCKED_AFTER) -> Json:
        return self._request("GET", f"/api/state?blocked_after={blocked_after:g}")

    def task(self, task_id: int, blocked_after: float = BLOCKED_AFTER) -> Json:
        return self._request("GET", f"/api/task/{task_id}?blocked_after={blocked_after:g}")

    def cancel(self, task_id: int) -> Json:
        return self._request("POST", f"/api/task/{task_id}/cancel")

    def _request(self, method: str, path: str) -> Json:
        request = urllib.request.Request(f"http://{self.where}{path}", method=method)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                answer: Json = json.load(response)
                return answer
        except urllib.error.HTTPError as error:
            try:
                reason = json.load(error)["error"]
            except (ValueError, KeyError, TypeError):
                reason = f"HTTP {error.code} {error.reason}"
            raise MonitorUnavailable(f"the monitor at {self.where}: {reason}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            reason = getattr(reason, "strerror", None) or reason
            raise MonitorUnavailable(f"no monitor at {self.where}: {reason}") from None
        except ValueError:
            raise MonitorUnavailable(f"what answers at {self.where} is not a yieldio monitor") from None
