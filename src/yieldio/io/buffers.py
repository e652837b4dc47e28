"""Receive buffers placed where the kernel's copy into them runs at full speed.

What a socket receives reaches user space through one copy, the kernel's, and
what it sends through another; on x86 processors that announce fast short
``rep movsb`` (FSRM), Linux copies with that instruction. On AMD's Zen cores it
slows down sharply when destination and source lie at nearly the same offset
within their 4 KiB pages, the same offset included (glibc bug 30994, where
memcpy stopped using it for that reason; the kernel's copy still does). An
ordinary ``bytearray`` large enough for a big read lands in the worst place:
glibc's malloc maps anything of 128 KiB or more on its own and hands it out
16 bytes past a page boundary. A smaller one lands wherever the heap happens
to be, which makes the speed of every large read a matter of chance from one
process to the next.

So :func:`receive_buffer` maps its own memory and starts the payload half a
page past a boundary, the offset that measured best (benchmarks/README.md
says how much, and against which others). The pages are mapped lazily, so a
buffer costs memory only for what reads have filled. Elsewhere the placement
is harmless: half a page is as good as any offset to a processor without the
fault.
"""

from __future__ import annotations

import mmap

PAGE_SIZE = mmap.PAGESIZE
PAYLOAD_OFFSET = PAGE_SIZE // 2  # where in its page the payload starts


def receive_buffer(size: int, head: bytes = b"") -> memoryview:
    """A writable buffer of ``len(head) + size`` bytes that begins with ``head``, its payload
    (the ``size`` bytes after the head) starting :data:`PAYLOAD_OFFSET` bytes into a page.

    ``head`` is what is sent before every payload (the echo's prefix): the buffer is both read
    into, after the head, and sent from, head included, in one piece. The memory is the
    buffer's own and lives as long as the returned view.
    """
    if size <= 0:
        raise ValueError(f"a receive buffer needs room: size {size}")
    start = (PAYLOAD_OFFSET - len(head)) % PAGE_SIZE
    memory = mmap.mmap(-1, start + len(head) + size)  # anonymous: page-aligned, zero-filled, lazily mapped
    buffer = memoryview(memory)[start : start + len(head) + size]
    buffer[: len(head)] = head
    return buffer
