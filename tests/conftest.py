"""Fixtures: thin wrappers around tests/harness.py, for tests/ and tests/faults/ alike; and the flagship rule.

The flagship rule: a test marked ``flagship`` stands for one of the project's claims (5,000 connections
at once; an address that never answers holds up no other). Where the environment cannot run one it is
skipped, as any test would be, but not under CI (``CI=1`` or ``CI=true``, as CI services set it): there
the skip is a failure, so that a CI machine that quietly lost the ability to run it does not pass.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import trustme

from .harness import ChildProcess, Netcat, ProcessServers, ServerProcess, ThreadServers

# test_connect's fixture for an address that never answers: every test using it is about that address,
# and tests nothing without it
NEEDS_A_BLACK_HOLE = "black_hole"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "flagship: one of the project's claims; under CI (CI=1, CI=true) a skip of it is a failure"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if NEEDS_A_BLACK_HOLE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.flagship)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("flagship") and in_ci():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid}: a flagship test may not be skipped under CI (CI={os.environ['CI']}): {reason}"
        )
    return report


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


@pytest.fixture
def programs() -> Iterator[list[ChildProcess]]:
    """Programs a test starts (append them); each killed by its PID at the end."""
    started: list[ChildProcess] = []
    yield started
    for program in started:
        program.kill()


@pytest.fixture
def netcats() -> Iterator[list[Netcat]]:
    """``nc`` clients a test starts (append them); each closed at the end."""
    started: list[Netcat] = []
    yield started
    for client in started:
        client.close()
