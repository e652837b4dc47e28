"""A TCP port forwarder: every connection to the local port is relayed to a target.

    python examples/port_forward.py --to HOST:PORT [--host 127.0.0.1] [--port 25002]

Each connection is two tasks in a :class:`yieldio.TaskGroup`, one copying
client to target, one target to client. A byte stream has two directions
that end separately, so the forwarder passes a *half-close* on instead of
closing: when one side has sent everything (``recv`` returns ``b""``), the
copy towards the other side shuts down writing, and the other direction
keeps flowing until it ends too. ``printf 'Hello\\n' | nc -N 127.0.0.1 PORT``
through the forwarder to an echo server therefore still gets its reply.
If either copy fails (a reset, say) the group cancels the other one, and
both sockets close.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import yieldio
from yieldio import Socket, TaskGroup

log = logging.getLogger("forward")

CHUNK = 65536


async def copy(source: Socket, destination: Socket) -> int:
    """Copy until ``source`` ends, then half-close ``destination``; the number of bytes copied."""
    copied = 0
    while data := await source.recv(CHUNK):
        await destination.sendall(data)
        copied += len(data)
    destination.shutdown_write()
    return copied


def make_handler(target_host: str, target_port: int) -> Any:
    async def forward(client: Socket, address: Any) -> None:
        peer = yieldio.format_address(address)
        try:
            target = await yieldio.open_connection(target_host, target_port)
        except OSError as error:
            log.warning("%s: cannot reach %s:%d: %s", peer, target_host, target_port, error.strerror or error)
            return
        with target:
            async with TaskGroup() as group:
                upstream = await group.spawn(copy(client, target), name=f"{peer} -> target")
                downstream = await group.spawn(copy(target, client), name=f"target -> {peer}")
            log.info("%s: %d bytes up, %d bytes down", peer, upstream.result, downstream.result)

    return forward


def parse_target(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description="Relay every connection on a local port to HOST:PORT.")
    parser.add_argument("--to", type=parse_target, required=True, metavar="HOST:PORT")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=25002, help="0 picks a free one")
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    yieldio.run(yieldio.tcp_server((args.host, args.port), make_handler(*args.to)))


if __name__ == "__main__":
    main()
