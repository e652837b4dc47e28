"""trio echo server: ``trio.serve_tcp`` with ``receive_some``/``send_all``."""

from __future__ import annotations

import argparse
from functools import partial

import trio

READ_SIZE = 65536


async def handle(stream: trio.SocketStream) -> None:
    """Echo until EOF; a reset by the client just ends this connection."""
    try:
        while data := await stream.receive_some(READ_SIZE):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    trio.run(partial(trio.serve_tcp, handle, args.port, host=args.host, backlog=4096))


if __name__ == "__main__":
    main()
