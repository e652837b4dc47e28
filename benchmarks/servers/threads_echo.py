"""Thread-per-connection echo server on plain blocking sockets.

Why: it is what code without any event loop does, and it is the natural
comparison for memory per idle connection (a thread stack each).
"""

from __future__ import annotations

import argparse
import socketserver

READ_SIZE = 65536


class EchoHandler(socketserver.BaseRequestHandler):
    """Echo until EOF on the connection this thread owns."""

    def handle(self) -> None:
        sock = self.request
        try:
            while data := sock.recv(READ_SIZE):
                sock.sendall(data)
        except ConnectionError:
            pass


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True  # do not wait for client threads on shutdown
    request_queue_size = 4096  # listen backlog
    block_on_close = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with Server((args.host, args.port), EchoHandler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
