"""The echo server and a client, over TLS, in one program.

    python examples/tls_echo.py        # a throwaway CA and certificate, made with trustme
    python examples/tls_echo.py --cert server.pem --key server.key [--cafile ca.pem] [--hostname NAME]

It starts the server on a free port of 127.0.0.1, connects to it with the client (which
checks the server's certificate against --hostname), sends one line, prints the reply, and
exits. The handler is the README's echo handler, unchanged: over TLS it still reads and
writes plaintext.
"""

from __future__ import annotations

import argparse
import ssl
import sys
from typing import Any

import yieldio


async def echo(client: yieldio.Socket, address: Any) -> None:
    while data := await client.recv(65536):
        await client.sendall(b"GOT:" + data)


def make_contexts(args: argparse.Namespace) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(the server's context, the client's): TLS 1.2 or newer, the ssl module's secure defaults."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if args.cert:
        server.load_cert_chain(args.cert, args.key)
        client = ssl.create_default_context(cafile=args.cafile or args.cert)  # trusts that alone
    else:
        try:
            import trustme
        except ImportError:
            sys.exit("tls_echo.py: give --cert and --key, or install trustme for a throwaway certificate")
        authority = trustme.CA()
        authority.issue_cert(args.hostname).configure_cert(server)
        client = ssl.create_default_context(cadata=authority.cert_pem.bytes().decode())
    return server, client


async def main(server_context: ssl.SSLContext, client_context: ssl.SSLContext, hostname: str) -> bytes:
    with yieldio.tcp_listen(("127.0.0.1", 0)) as listener:
        server = await yieldio.spawn(yieldio.serve(listener, echo, yieldio.ServerOptions(ssl=server_context)))
        port = listener.getsockname()[1]
        async with await yieldio.open_connection(
            "127.0.0.1", port, ssl=client_context, server_hostname=hostname
        ) as sock:
            await sock.sendall(b"Hello over TLS\n")
            reply = b""
            while not reply.endswith(b"\n") and (data := await sock.recv(65536)):
                reply += data
        await server.cancel()
    return reply


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The echo server and client over TLS.")
    parser.add_argument("--cert", help="the server's certificate chain (PEM); without it, a throwaway one")
    parser.add_argument("--key", help="the server's private key (PEM), if not in --cert")
    parser.add_argument("--cafile", help="what the client trusts (default: --cert itself, for a self-signed one)")
    parser.add_argument("--hostname", default="localhost", help="the name the certificate must carry")
    args = parser.parse_args()
    try:
        contexts = make_contexts(args)
    except (OSError, ssl.SSLError) as error:
        sys.exit(f"tls_echo.py: {error}")
    sys.stdout.write(yieldio.run(main(*contexts, args.hostname)).decode())
