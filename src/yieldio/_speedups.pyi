"""Types of the compiled module (src/yieldio/_speedups.c), which the build makes when it finds a C compiler."""

from collections.abc import Iterator
from typing import Any

SOURCE_SHA256: str  # the SHA-256 of the _speedups.c it was compiled from

def echo_step(fd: int, buffer: memoryview, head: int, /) -> int | tuple[int, int] | None: ...

class RequestChain(Iterator[tuple[str, int]]):
    number: int
    began: float
    left: int
    done: int
    sent: int
    reply: bytes | None
    def __init__(self, fd: int, trap: tuple[str, int], load: Any, index: int, /) -> None: ...
    def __next__(self) -> tuple[str, int]: ...
