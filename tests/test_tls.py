"""TLS: yieldio's TLS server and client against each other, Python's ssl module and `openssl s_client`.

Certificates come from trustme: a throwaway CA, and a server certificate for localhost,
127.0.0.1 and ::1. Each test runs its server as a task and its clients in the same kernel
(blocking clients through run_in_thread), so no assertion runs in a helper thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import select
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

import yieldio
from yieldio import Socket, Task, open_connection, run_in_thread, spawn, timeout_after, traps

from .harness import ROOT, python_env

MIB = 1024 * 1024


def serve_and_run(
    handler: Callable[[Socket, Any], Any], client: Callable[[int], Any], context: ssl.SSLContext | None, **options: Any
) -> Any:
    """Serve ``handler`` (over TLS with ``context``) as a task, run ``client(port)`` beside it; its result."""

    async def main() -> Any:
        with yieldio.tcp_listen(("127.0.0.1", 0)) as listener:
            server = await spawn(yieldio.serve(listener, handler, yieldio.ServerOptions(ssl=context, **options)))
            try:
                return await client(listener.getsockname()[1])
            finally:
                await server.cancel()

    return yieldio.run(main)


async def echo(client: Socket, address: Any) -> None:
    while data := await client.recv(65536):
        await client.sendall(data)


async def read_exactly(sock: Socket, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        data = await sock.recv(size - len(received))
        if not data:
            break
        received += data
    return bytes(received)


async def read_line(sock: Socket) -> bytes:
    """One byte at a time, so nothing after the newline is taken (STARTTLS needs that)."""
    line = bytearray()
    while not line.endswith(b"\n") and (byte := await sock.recv(1)):
        line += byte
    return bytes(line)


def blocking_tls_exchange(port: int, context: ssl.SSLContext, payload: bytes) -> tuple[bytes, str | None]:
    """Python's ssl module as the client: send, read the same length back; (reply, TLS version)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with raw, context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(payload)
        reply = bytearray()
        while len(reply) < len(payload) and (data := tls.recv(65536)):
            reply += data
        return bytes(reply), tls.version()


def test_python_ssl_client_against_yieldio_server(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async def client(port: int) -> Any:
        return await run_in_thread(blocking_tls_exchange, port, client_context, b"Hello over TLS")

    reply, version = serve_and_run(echo, client, server_context)
    assert reply == b"Hello over TLS"
    assert version in ("TLSv1.2", "TLSv1.3")


def test_openssl_s_client_against_yieldio_server(
    ca: trustme.CA, server_context: ssl.SSLContext, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def one_line(client: Socket, address: Any) -> None:
        await client.sendall(b"GOT:" + await read_line(client))  # then close: s_client -quiet waits for that

    async def client(port: int) -> subprocess.CompletedProcess[bytes]:
        command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost"]
        command += ["-CAfile", str(ca_file), "-verify_return_error", "-quiet"]
        return await run_in_thread(
            lambda: subprocess.run(command, input=b"hello\n", capture_output=True, timeout=20, check=False)
        )

    done = serve_and_run(one_line, client, server_context)
    assert done.stdout == b"GOT:hello\n", done.stderr.decode(errors="replace")


@pytest.mark.parametrize("style", ["coroutine", "generator"])
def test_open_connection_with_ssl_against_yieldio_server(
    style: str, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async def coroutine_client(port: int) -> tuple[bytes, str]:
        # a name: resolved on a thread, and the certificate checked against it
        async with await open_connection("localhost", port, ssl=client_context) as sock:
            await sock.sendall(b"ping")
            return await read_exactly(sock, 4), sock.version()

    def generator_client(port: int) -> Any:
        sock = yield from open_connection("127.0.0.1", port, ssl=client_context, server_hostname="localhost")
        with sock:
            yield from sock.sendall(b"ping")
            reply = yield from sock.recv(4)
            return reply, sock.version()

    async def client(port: int) -> tuple[bytes, str]:
        if style == "coroutine":
            return await coroutine_client(port)
        outcome: tuple[bytes, str] = await traps.run_awaitable(generator_client(port))
        return outcome

    reply, version = serve_and_run(echo, client, server_context)
    assert reply == b"ping"
    assert version in ("TLSv1.2", "TLSv1.3")


def test_start_tls_upgrades_a_plaintext_connection(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    async def starttls_server(client: Socket, address: Any) -> None:
        if await read_line(client) == b"STARTTLS\n":
            await client.sendall(b"OK\n")
            await client.start_tls(server_context, server_side=True)
            await echo(client, address)

    async def client(port: int) -> tuple[bytes, bool, bytes, str]:
        async with await open_connection("127.0.0.1", port) as sock:
            await sock.sendall(b"STARTTLS\n")
            answer = await read_line(sock)
            tls_before = isinstance(sock.socket, ssl.SSLSocket)
            await sock.start_tls(client_context, server_hostname="localhost")
            await sock.sendall(b"secret")
            return answer, tls_before, await read_exactly(sock, 6), sock.version()

    answer, tls_before, reply, version = serve_and_run(starttls_server, client, None)
    assert (answer, tls_before) == (b"OK\n", False)
    assert reply == b"secret"
    assert version in ("TLSv1.2", "TLSv1.3")


def test_silent_client_is_dropped_after_the_handshake_timeout_and_others_are_served(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="yieldio")
    served: list[Any] = []

    async def counting_echo(client: Socket, address: Any) -> None:
        served.append(address)
        await echo(client, address)

    async def client(port: int) -> tuple[list[str], str, float]:
        events: list[str] = []
        silent = await open_connection("127.0.0.1", port)  # connects, never says a word
        silent_address = yieldio.format_address(silent.getsockname())
        connected = time.monotonic()

        async def wait_for_close() -> float:
            data = await timeout_after(10, silent.recv(1))
            events.append(f"silent client read {data!r}")
            return time.monotonic() - connected

        watcher = await spawn(wait_for_close())
        async with await open_connection("127.0.0.1", port, ssl=client_context, server_hostname="localhost") as other:
            await other.sendall(b"meanwhile")
            events.append(f"other client got {await read_exactly(other, 9)!r}")
        held = await watcher.join()
        silent.close()
        return events, silent_address, held

    # 2 s: the other client's handshake and echo must come first, even on a busy machine
    events, silent_address, held = serve_and_run(counting_echo, client, server_context, handshake_timeout=2.0)
    assert events == ["other client got b'meanwhile'", "silent client read b''"]
    assert held >= 2.0  # the server's timer can't fire early
    assert len(served) == 1  # the handler never saw the silent client
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"connection {silent_address}: TLS handshake failed: TLS handshake not done after 2.0s"]


def test_client_without_certificate_is_refused_and_the_server_goes_on(
    ca: trustme.CA, client_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="yieldio")
    requiring = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(requiring)
    requiring.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(requiring)
    with_certificate = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(with_certificate)
    ca.issue_cert("client@example.test").configure_cert(with_certificate)
    served: list[Any] = []

    async def counting_echo(client: Socket, address: Any) -> None:
        served.append(address)
        await echo(client, address)

    async def without_certificate(port: int) -> tuple[str, str]:
        sock = await open_connection("127.0.0.1", port, ssl=client_context, server_hostname="localhost")
        address = yieldio.format_address(sock.getsockname())
        # With TLS 1.3 the client's side of the handshake ends before the server has looked at
        # its certificate: the refusal arrives as an alert at the first read.
        with sock:
            try:
                await sock.sendall(b"anyone there?")
                return address, f"read {await sock.recv(100)!r}"
            except ssl.SSLError as error:
                return address, f"alert {error.reason}"

    async def client(port: int) -> tuple[str, str, bytes]:
        address, outcome = await without_certificate(port)
        async with await open_connection("127.0.0.1", port, ssl=with_certificate, server_hostname="localhost") as sock:
            await sock.sendall(b"me")
            return address, outcome, await read_exactly(sock, 2)

    address, outcome, reply = serve_and_run(counting_echo, client, requiring)
    assert outcome in ("alert TLSV13_ALERT_CERTIFICATE_REQUIRED", "read b''"), outcome
    assert reply == b"me"
    assert len(served) == 1  # only the client with a certificate reached the handler
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"connection {address}: TLS handshake failed: ")
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in warning


@pytest.mark.parametrize(
    ("trusted", "hostname", "reason"),
    [
        ("another CA", "localhost", "unable to get local issuer certificate"),
        ("our CA", "wrong.example", "Hostname mismatch, certificate is not valid for 'wrong.example'"),
    ],
)
def test_failed_verification_raises_cert_verification_error_naming_the_reason(
    trusted: str, hostname: str, reason: str, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    context = client_context
    if trusted == "another CA":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        trustme.CA().configure_trust(context)

    async def client(port: int) -> ssl.SSLCertVerificationError:
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            await open_connection("127.0.0.1", port, ssl=context, server_hostname=hostname)
        return caught.value

    error = serve_and_run(echo, client, server_context)
    assert reason in str(error)


def test_close_sends_close_notify(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    async def say_bye(client: Socket, address: Any) -> None:
        await client.sendall(b"bye")  # then the handler returns: the server closes the connection

    def strict_client(port: int) -> tuple[bytes, str]:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        # suppress_ragged_eofs=False: a close without close_notify raises SSLEOFError instead of reading b""
        with raw, client_context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as tls:
            received = bytearray()
            try:
                while data := tls.recv(100):
                    received += data
            except ssl.SSLEOFError:
                return bytes(received), "ragged EOF"
            return bytes(received), "close_notify"

    async def client(port: int) -> tuple[bytes, str]:
        return await run_in_thread(strict_client, port)

    assert serve_and_run(say_bye, client, server_context) == (b"bye", "close_notify")


def test_idle_timeout_and_byte_counts_work_over_tls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    counts: list[tuple[int, int]] = []
    waiting: list[Task] = []

    async def counting_echo(client: Socket, address: Any) -> None:
        try:
            await echo(client, address)
        finally:
            counts.append((client.bytes_in, client.bytes_out))
            yieldio.current_kernel().wake_all(waiting)

    async def client(port: int) -> bytes:
        async with await open_connection("127.0.0.1", port, ssl=client_context, server_hostname="localhost") as sock:
            await sock.sendall(b"12345")
            assert await read_exactly(sock, 5) == b"12345"
            eof: bytes = await timeout_after(10, sock.recv(100))  # then silence, until the idle timeout closes it
        if not counts:
            await traps.park(waiting)
        return eof

    # 1 s: idle from the accept, the handshake included, which a busy machine can make last a while
    assert serve_and_run(counting_echo, client, server_context, idle_timeout=1.0) == b""
    assert counts == [(5, 5)]  # plaintext bytes


def _handshake_in_memory(server: ssl.SSLContext, client: ssl.SSLContext) -> str | None:
    """Handshake two contexts over a socketpair, no network, no kernel: the version they agree on."""
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        right.setblocking(False)
        ends = [server.wrap_socket(left, server_side=True, do_handshake_on_connect=False)]
        ends.append(client.wrap_socket(right, server_hostname="localhost", do_handshake_on_connect=False))
        done = [False, False]
        for _ in range(100):
            for i, end in enumerate(ends):
                if not done[i]:
                    try:
                        end.do_handshake()
                        done[i] = True
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
            if all(done):
                return ends[0].version()
        return None


def _allowing_tls_1_1(context: ssl.SSLContext) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # on purpose: the versions this test is about
        context.minimum_version = ssl.TLSVersion.TLSv1
        if context.protocol == ssl.PROTOCOL_TLS_CLIENT:
            context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def _old_contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(client, server) contexts that allow TLS 1.1, the client trusting ``ca``, the server with a certificate from it."""
    old_client = _allowing_tls_1_1(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ca.configure_trust(old_client)
    old_server = _allowing_tls_1_1(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ca.issue_cert("localhost").configure_cert(old_server)
    return old_client, old_server


def test_contexts_that_allow_tls_below_1_2_are_refused(ca: trustme.CA) -> None:
    # whether or not this machine's OpenSSL could still speak TLS 1.1: the context says it may, that is enough
    old_client, old_server = _old_contexts(ca)
    with pytest.raises(ValueError, match=r"TLS 1\.2 or newer"):
        yieldio.run(open_connection("127.0.0.1", 1, ssl=old_client))
    with yieldio.tcp_listen(("127.0.0.1", 0)) as listener, pytest.raises(ValueError, match=r"TLS 1\.2 or newer"):
        yieldio.run(yieldio.serve(listener, echo, yieldio.ServerOptions(ssl=old_server)))


def test_a_client_offering_only_tls_1_1_is_refused(
    ca: trustme.CA, server_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="yieldio")
    old_client, old_server = _old_contexts(ca)
    # Would this machine's OpenSSL speak TLS 1.1 at all? Ask a server that allows it.
    try:
        agreed = _handshake_in_memory(old_server, old_client)
    except ssl.SSLError as error:
        pytest.skip(
            f"this OpenSSL ({ssl.OPENSSL_VERSION}) won't negotiate TLS 1.1 even when both ends allow it: {error}"
        )
    assert agreed == "TLSv1.1"

    # yieldio's server refuses a client that offers nothing newer (Python's ssl module as that client)
    def old_client_exchange(port: int) -> str:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with raw:
            try:
                with old_client.wrap_socket(raw, server_hostname="localhost") as tls:
                    return f"connected with {tls.version()}"
            except ssl.SSLError as error:
                return str(error.reason)

    async def client(port: int) -> str:
        return await run_in_thread(old_client_exchange, port)

    assert serve_and_run(echo, client, server_context) == "TLSV1_ALERT_PROTOCOL_VERSION"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "UNSUPPORTED_PROTOCOL" in warning


def test_several_mib_each_way_arrive_byte_exact(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    upload = os.urandom(4 * MIB)

    async def client(port: int) -> tuple[str, int]:
        async with await open_connection("127.0.0.1", port, ssl=client_context, server_hostname="localhost") as sock:
            reader = await spawn(read_exactly(sock, len(upload)))  # the echo comes back while we still send
            await sock.sendall(upload)
            echoed = await reader.join()
            return hashlib.sha256(echoed).hexdigest(), sock.bytes_out

    digest, sent = serve_and_run(echo, client, server_context)
    assert digest == hashlib.sha256(upload).hexdigest()
    assert sent == len(upload)


def _tls_pair(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> Callable[[], Awaitable[Any]]:
    """A coroutine function returning two yieldio Sockets, TLS between them over a socketpair."""

    async def pair() -> tuple[Socket, Socket]:
        left, right = socket.socketpair()
        server, client = Socket(left), Socket(right)
        handshake = await spawn(server.start_tls(server_context, server_side=True))
        await client.start_tls(client_context, server_hostname="localhost")
        await handshake.join()
        return server, client

    return pair


def test_wait_readable_returns_at_once_when_openssl_holds_plaintext(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    pair = _tls_pair(server_context, client_context)

    async def main() -> tuple[bytes, int, list[Any], bytes]:
        server, client = await pair()
        with server, client:
            await client.sendall(b"x" * 10_000)  # one TLS record
            first = await server.recv(10)  # OpenSSL decrypted all of it: the rest is in the SSL object...
            pending = server.socket.pending()
            kernel_buffer = select.select([server.fileno()], [], [], 0)[0]  # ...and nothing in the kernel's
            await timeout_after(5, server.wait_readable())  # nothing more will ever arrive: parking would hang
            return first, pending, kernel_buffer, await server.recv(20_000)

    first, pending, kernel_buffer, rest = yieldio.run(main)
    assert (first, pending, kernel_buffer) == (b"x" * 10, 9_990, [])
    assert rest == b"x" * 9_990


def test_no_half_close_and_no_second_start_over_tls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    pair = _tls_pair(server_context, client_context)

    async def main() -> None:
        server, client = await pair()
        with server, client:
            with pytest.raises(TypeError, match="no half-close over TLS"):
                client.shutdown_write()
            with pytest.raises(TypeError, match="speaks TLS already"):
                await client.start_tls(client_context, server_hostname="localhost")
            await client.sendall(b"still fine")
            assert await read_exactly(server, 10) == b"still fine"

    yieldio.run(main)


def test_tls_echo_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tls_echo.py")],
        env=python_env(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout == b"GOT:Hello over TLS\n"
