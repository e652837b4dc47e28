"""gevent echo server: ``gevent.server.StreamServer``, one greenlet per connection."""

from __future__ import annotations

import argparse
import socket

from gevent.server import StreamServer

READ_SIZE = 65536


def handle(sock: socket.socket, address: tuple[str, int]) -> None:
    """Echo until EOF on gevent's cooperative socket."""
    try:
        while data := sock.recv(READ_SIZE):
            sock.sendall(data)
    except ConnectionError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = StreamServer((args.host, args.port), handle, backlog=4096)
    server.serve_forever()


if __name__ == "__main__":
    main()
