"""Fixtures: thin wrappers around tests/harness.py, for tests/ and tests/faults/ alike."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
