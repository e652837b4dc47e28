"""asyncio echo servers (streams and Protocol), on the stock loop or uvloop.

Why two APIs: streams (``start_server`` + reader/writer) are what most
application code uses; a bare ``Protocol`` whose ``data_received`` calls
``transport.write`` is the fastest thing asyncio offers.  Running both on
both loops separates the cost of the API from the cost of the event loop.
"""

from __future__ import annotations

import argparse
import asyncio

READ_SIZE = 65536
BACKLOG = 4096


async def handle_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, awaiting drain() so a slow client applies back-pressure."""
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class EchoProtocol(asyncio.Protocol):
    """Echo every chunk straight back from the transport callback."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def serve(api: str, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    if api == "streams":
        server = await asyncio.start_server(handle_stream, host, port, backlog=BACKLOG)
    else:
        server = await loop.create_server(EchoProtocol, host, port, backlog=BACKLOG)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api", choices=["streams", "proto"], default="streams")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.api, args.host, args.port))
    else:
        asyncio.run(serve(args.api, args.host, args.port))


if __name__ == "__main__":
    main()
