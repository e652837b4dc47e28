"""curio echo server: ``curio.tcp_server`` with ``recv``/``sendall``."""

from __future__ import annotations

import argparse

import curio

READ_SIZE = 65536


async def handle(client: curio.io.Socket, addr: tuple[str, int]) -> None:
    """Echo until EOF; curio closes the socket when the handler returns."""
    try:
        while data := await client.recv(READ_SIZE):
            await client.sendall(data)
    except ConnectionError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    curio.run(curio.tcp_server(args.host, args.port, handle, backlog=4096))


if __name__ == "__main__":
    main()
