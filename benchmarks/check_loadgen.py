#!/usr/bin/env python3
"""Check that the load generator catches broken echo servers.

Why: a benchmark whose client would accept wrong bytes measures nothing.
This starts small deliberately faulty servers in threads on loopback (one
that prefixes ``GOT:``, one that reverses each chunk, one that echoes a message
twice, one that closes after the first reply, one that mixes up
connections) plus a correct one, runs loadgen against each for a second,
and asserts errors are reported for the faulty ones and none for the
correct one.  Exit status 0 means every expectation held.

    python benchmarks/check_loadgen.py
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

from run import BUILD_DIR, LOADGEN_SRC, ensure_built  # run.py sits beside this script

Transform = Callable[[socket.socket, bytes], None]


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


def serve(listener: socket.socket, transform: Transform, stop: threading.Event) -> None:
    """Accept loop; a thread per connection applies ``transform`` to each chunk."""
    listener.settimeout(0.2)

    def handle(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    transform(conn, data)
            except OSError:
                pass

    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        conn.settimeout(5)
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def run_loadgen(transform: Transform, conns: int, size: int) -> dict:
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0), backlog=128) as listener:
        port = listener.getsockname()[1]
        t = threading.Thread(target=serve, args=(listener, transform, stop), daemon=True)
        t.start()
        try:
            out = subprocess.run(
                [
                    str(BUILD_DIR / "loadgen"),
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
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
        finally:
            stop.set()
            t.join(timeout=2)
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ensure_built(LOADGEN_SRC, BUILD_DIR / "loadgen")
    cases: list[tuple[str, Transform, bool]] = [
        ("correct", correct, False),
        ("prefix GOT:", prefix, True),
        ("reversed bytes", reverse, True),
        ("duplicated echo", duplicate, True),
        ("closes after first reply", close_after_first, True),
        ("cross-wired connections", cross_wire, True),
    ]
    failures = 0
    for name, transform, expect_errors in cases:
        for conns, size in ((4, 1024), (2, 100 * 1024)):
            res = run_loadgen(transform, conns, size)
            got_errors = res["errors"] > 0
            ok = got_errors == expect_errors and (expect_errors or res["requests"] > 0)
            failures += not ok
            print(
                f"{'ok ' if ok else 'BAD'} {name:26s} conns={conns} size={size:6d}: "
                f"requests={res['requests']} mismatches={res['mismatches']} resets={res['resets']}"
            )
    print(f"{len(cases) * 2 - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
