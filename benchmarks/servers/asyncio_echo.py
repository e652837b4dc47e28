"""asyncio echo servers (streams and Protocol), on the stock loop or uvloop.

Why two APIs: streams (``start_server`` + reader/writer) are what most
application code uses; a bare ``Protocol`` whose ``data_received`` calls
``transport.write`` is the fastest thing asyncio offers.  Running both on
both loops separates the cost of the API from the cost of the event loop.

With ``--tls-cert``/``--tls-key`` every connection is TLS: the loop's own
TLS layer (``ssl=context``) wraps the same handlers, so the TLS figures
compare TLS implementations, not echo code.  The context is built as
yieldio's ``serve`` builds its own (``ssl.create_default_context`` for
client authentication, TLS 1.2 or newer), so both sides offer the same.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

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


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


async def serve(api: str, host: str, port: int, tls: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    if api == "streams":
        server = await asyncio.start_server(handle_stream, host, port, backlog=BACKLOG, ssl=tls)
    else:
        server = await loop.create_server(EchoProtocol, host, port, backlog=BACKLOG, ssl=tls)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api", choices=["streams", "proto"], default="streams")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--tls-cert", help="certificate chain (PEM): serve TLS instead of plain TCP")
    parser.add_argument("--tls-key", help="its private key (PEM)")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.api, args.host, args.port, tls))
    else:
        asyncio.run(serve(args.api, args.host, args.port, tls))


if __name__ == "__main__":
    main()
