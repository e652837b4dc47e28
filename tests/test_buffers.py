"""yieldio.io.buffers: where a receive buffer's payload lies within its page (half a page in,
away from where the kernel's pages of socket data begin), for the buffers the echo and the load
client really read into, and that it is a plain buffer to a real socket: read into after the
head, sent from whole."""

from __future__ import annotations

import ctypes
import socket

import pytest

from yieldio.clients.load import Load, LoadPlan, Tally
from yieldio.io.buffers import PAGE_SIZE, PAYLOAD_OFFSET, receive_buffer
from yieldio.io.urls import parse_listen_url
from yieldio.servers.echo import READ_SIZE, _scratch_buffer


def page_offset(view: memoryview) -> int:
    """Where the view's first byte lies within its page, from its real address."""
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % PAGE_SIZE


def test_the_payload_starts_half_a_page_in_whatever_the_head() -> None:
    assert PAYLOAD_OFFSET == PAGE_SIZE // 2
    for head in (b"", b"GOT:", b"x" * (PAGE_SIZE - 1), b"y" * (PAGE_SIZE + 3)):
        for size in (1, 1024, 64 * 1024, 1024 * 1024):
            buffer = receive_buffer(size, head)
            assert len(buffer) == len(head) + size
            assert not buffer.readonly
            assert buffer[: len(head)] == head
            assert page_offset(buffer[len(head) :]) == PAYLOAD_OFFSET, (len(head), size)


def test_a_buffer_of_no_size_is_refused() -> None:
    with pytest.raises(ValueError, match="size 0"):
        receive_buffer(0)


def test_a_socket_reads_into_it_behind_the_head_and_it_sends_whole() -> None:
    head = b"GOT:"
    buffer = receive_buffer(64 * 1024, head)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.settimeout(5)
        ours.settimeout(5)
        theirs.sendall(b"hello")
        received = ours.recv_into(buffer[len(head) :])
        ours.sendall(buffer[: len(head) + received])
        assert theirs.recv(64) == b"GOT:hello"


def test_the_echo_and_the_load_client_read_into_such_buffers() -> None:
    """What the echo loops and `yieldio load` really use: before, the echo's quarter-megabyte
    bytearray began 16 bytes into a page (malloc maps one that large on its own), the slow place."""
    for prefix in (b"", b"GOT:"):
        whole, into = _scratch_buffer(prefix)
        assert len(into) == READ_SIZE and bytes(whole[: len(prefix)]) == prefix
        assert page_offset(into) == PAYLOAD_OFFSET
    for size in (10, 1024 * 1024):
        plan = LoadPlan(target=parse_listen_url("tcp://127.0.0.1:9"), size=size)
        load = Load(plan, Tally())
        assert len(load.receive_buffer) > len(plan.prefix) + size
        assert page_offset(load.receive_buffer) == PAYLOAD_OFFSET
