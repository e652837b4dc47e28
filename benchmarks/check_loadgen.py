#!/usr/bin/env python3
"""Check that the load generator catches broken echo servers.

Why: a benchmark whose client would accept wrong bytes measures nothing.
This starts small deliberately faulty servers in threads on loopback (one
that prefixes ``GOT:``, one that reverses each chunk, one that echoes a message
twice, one that closes after the first reply, one that mixes up
connections) plus a correct one, runs loadgen against each for a second,
and asserts errors are reported for the faulty ones and none for the
correct one.  Exit status 0 means every expectation held.

The same servers then speak TLS (the ``ssl`` module, a certificate made for
the check) to loadgen's ``--tls`` echo loop and to its ``--handshakes`` mode,
whose every connection must complete a full handshake (none resumed).  In
that mode closing after the first reply is what a correct server does (each
connection carries one echo), so it must count no error; and a server that
does not speak TLS at all must fail every handshake.

    python benchmarks/check_loadgen.py
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from run import ensure_loadgen, make_tls_files  # run.py sits beside this script

Transform = Callable[[socket.socket, bytes], None]
Case = tuple[str, Transform, bool]  # name, server behaviour, whether loadgen must report errors
# name, the server's TLS context (None: plain TCP), loadgen flags, (conns, size) shapes, cases
Mode = tuple[str, ssl.SSLContext | None, list[str], Sequence[tuple[int, int]], list[Case]]


def correct(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)


def prefix(sock: socket.socket, data: bytes) -> None:
    sock.sendall(b"GOT:" + data)


def reverse(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data[::-1])


def duplicate(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data + data)


def close_after_first(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.close()
    raise ConnectionAbortedError


_shared: list[bytes] = []
_shared_lock = threading.Lock()


def cross_wire(sock: socket.socket, data: bytes) -> None:
    """Reply with the chunk another connection sent last: misrouted bytes."""
    with _shared_lock:
        _shared.append(data)
        reply = _shared.pop(0) if len(_shared) > 1 else data
    sock.sendall(reply)


def serve(listener: socket.socket, transform: Transform, stop: threading.Event, tls: ssl.SSLContext | None) -> None:
    """Accept loop; a thread per connection (TLS-wrapped with ``tls``) applies ``transform`` to each chunk."""
    listener.settimeout(0.2)

    def handle(conn: socket.socket) -> None:
        try:
            if tls is not None:
                conn = tls.wrap_socket(conn, server_side=True)  # the handshake, in this thread
            with conn:
                while data := conn.recv(65536):
                    transform(conn, data)
        except OSError:  # ssl.SSLError included: the client's verdict is what the check reads
            conn.close()

    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        conn.settimeout(5)
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def run_loadgen(
    loadgen: Path, transform: Transform, conns: int, size: int, tls: ssl.SSLContext | None, flags: list[str]
) -> dict[str, Any]:
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0), backlog=128) as listener:
        port = listener.getsockname()[1]
        t = threading.Thread(target=serve, args=(listener, transform, stop, tls), daemon=True)
        t.start()
        try:
            out = subprocess.run(
                [
                    str(loadgen),
                    "--port",
                    str(port),
                    "--conns",
                    str(conns),
                    "--size",
                    str(size),
                    "--warmup",
                    "0.2",
                    "--duration",
                    "0.8",
                    "--connect-timeout",
                    "5",
                    *flags,
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
        finally:
            stop.set()
            t.join(timeout=2)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def server_tls_context(directory: Path) -> ssl.SSLContext:
    files = make_tls_files(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)
    return context


def main() -> int:
    loadgen = ensure_loadgen()
    cases: list[Case] = [
        ("correct", correct, False),
        ("prefix GOT:", prefix, True),
        ("reversed bytes", reverse, True),
        ("duplicated echo", duplicate, True),
        ("closes after first reply", close_after_first, True),
        ("cross-wired connections", cross_wire, True),
    ]
    with tempfile.TemporaryDirectory(prefix="check-loadgen-") as tmp:
        tls = server_tls_context(Path(tmp))
        modes: list[Mode] = [
            ("plain", None, [], ((4, 1024), (2, 100 * 1024)), cases),
            ("tls", tls, ["--tls"], ((4, 1024), (2, 100 * 1024)), cases),
            (
                "handshakes",
                tls,
                ["--tls", "--handshakes"],
                ((4, 1024),),
                [(name, t, expect and t is not close_after_first) for name, t, expect in cases],
            ),
            ("handshakes", None, ["--tls", "--handshakes"], ((4, 1024),), [("no TLS on the server", correct, True)]),
        ]
        failures = checks = 0
        for mode, server_tls, flags, shapes, mode_cases in modes:
            for name, transform, expect_errors in mode_cases:
                for conns, size in shapes:
                    res = run_loadgen(loadgen, transform, conns, size, server_tls, flags)
                    got_errors = res["errors"] > 0
                    ok = got_errors == expect_errors and (expect_errors or res["requests"] > 0)
                    ok = ok and res.get("sessions_reused", 0) == 0
                    checks += 1
                    failures += not ok
                    print(
                        f"{'ok ' if ok else 'BAD'} {mode:10s} {name:26s} conns={conns} size={size:6d}: "
                        f"requests={res['requests']} mismatches={res['mismatches']} resets={res['resets']} "
                        f"handshake_failed={res.get('handshake_failed', 0)}"
                    )
    print(f"{checks - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
