"""Fixtures: thin wrappers around tests/harness.py, for tests/ and tests/faults/ alike."""

from __future__ import annotations

import shutil
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from .harness import ProcessServers, ServerProcess, ThreadServers


@pytest.fixture
def serve_process() -> Iterator[ProcessServers]:
    """``serve_process(*args)`` starts ``yieldio serve --port 0 ARGS``; each is killed by its PID at teardown."""
    servers = ProcessServers()
    yield servers
    servers.close()


@pytest.fixture
def echo_server(serve_process: ProcessServers) -> ServerProcess:
    """A ``yieldio serve`` process with the default options."""
    return serve_process()


@pytest.fixture
def serve_thread() -> Iterator[ThreadServers]:
    """``serve_thread(handler, **options)`` serves ``handler`` on a kernel in a thread; all stopped at teardown."""
    servers = ThreadServers()
    yield servers
    servers.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A certificate authority made for the test module (trustme)."""
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate for localhost, 127.0.0.1 and ::1, issued by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1", "::1").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``ca`` alone."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    return context


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory of the test's own: a socket path is limited to ~107 bytes, and tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="yio-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
